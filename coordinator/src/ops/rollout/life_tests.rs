//! A rollout's whole life on a simulated clock: the real engine, store, registry, deployer and
//! evidence, with simulated agents that follow their desired state and report traffic. Runs in
//! well under a second: time is a number the test moves.

use std::collections::BTreeMap;

use outpost_shared::histogram::LogHistogram;
use outpost_shared::protocol::keys::SigningKey;
use outpost_shared::protocol::messages::{LoadState, ModelState, ModelWindow, Report, Slot, SlotMode};

use super::*;
use crate::base::pg::store::Fence;
use crate::base::pg::store::testing::{later, take_lease};
use crate::base::store::Store;
use crate::fleet::ca::Authority;
use crate::fleet::desired::Desired;
use crate::fleet::devices::{Devices, TokenRecord};
use crate::models::packaging::{BuildSpec, build};
use crate::models::registry::Registry;
use crate::monitoring::slo::Slos;

const DEVICES: usize = 5;
/// Simulated seconds between two reports of a device (and two engine ticks).
const STEP_MS: u64 = 10_000;

struct Fleet {
    _dir: tempfile::TempDir,
    store: FleetStore,
    devices: Devices,
    registry: Registry,
    deployer: Deployer,
    slos: Slos,
    clock: Clock,
    seq: u64,
    /// Candidate's error rate per mille while it runs.
    candidate_errors_per_mille: u64,
    /// Requests each device answers per report.
    requests: u64,
    /// Devices that have gone quiet (they neither follow nor report).
    silent: Vec<String>,
}

/// Where the fleet's records are.
#[allow(clippy::large_enum_variant)]
enum FleetStore {
    Sled(Store),
    Postgres(crate::base::pg::store::testing::TestDatabase),
}

fn bundle(version: &str) -> Vec<u8> {
    let fixture = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/models")
        .join(format!("breast_cancer-{version}.onnx"));
    let spec =
        BuildSpec { model: fixture, name: "bc".into(), version: version.into(), ..BuildSpec::default() };
    build(&spec, 0).unwrap().0.to_bytes()
}

impl Fleet {
    fn new() -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        Fleet::on(dir, FleetStore::Sled(store))
    }

    /// The same fleet with every record on PostgreSQL.
    fn on_postgres() -> Fleet {
        Fleet::on(
            tempfile::tempdir().unwrap(),
            FleetStore::Postgres(crate::base::pg::store::testing::TestDatabase::new()),
        )
    }

    fn on(dir: tempfile::TempDir, store: FleetStore) -> Fleet {
        let (registry, devices, desired, slos) = match &store {
            FleetStore::Sled(s) => (
                Registry::open(s, dir.path()).unwrap(),
                Devices::open(s).unwrap(),
                Desired::open(s).unwrap(),
                Slos::open(s).unwrap(),
            ),
            FleetStore::Postgres(db) => {
                let pg = db.store();
                (
                    Registry::open_postgres(&pg),
                    Devices::open_postgres(&pg),
                    Desired::open_postgres(&pg),
                    Slos::open_postgres(&pg),
                )
            }
        };
        let key = SigningKey::generate().unwrap().0;
        for v in ["1.0.0", "1.1.0"] {
            registry.push(&bundle(v), "test", &key).unwrap();
            registry.set_validation("bc", v, serde_json::json!({}), true, "test").unwrap();
        }
        for i in 0..DEVICES {
            let token = format!("token-{i}");
            // Two sites: dev-0 and dev-1 at `a`, the rest at `b`.
            let site = if i < 2 { "a" } else { "b" };
            let record = TokenRecord {
                labels: BTreeMap::from([("site".to_owned(), site.to_owned())]),
                created_at_ms: 0,
                expires_at_ms: u64::MAX,
                used_by: None,
                used_at_ms: None,
            };
            devices.add_token(&token, &record).unwrap();
            let id = format!("dev-{i}");
            devices
                .enrol(&token, |t| DeviceRecord::new(&id, &[i as u8; 32], t.labels.clone()))
                .unwrap()
                .unwrap();
        }
        let authority =
            Arc::new(Authority::load_or_create(dir.path(), &crate::base::secrets::Secrets::clear()).unwrap());
        let (outgoing, _) = tokio::sync::mpsc::channel(1);
        let deployer = Deployer::new(
            registry.clone(),
            devices.clone(),
            desired,
            authority,
            outgoing,
            outpost_shared::protocol::messages::WatchdogPolicy::default(),
        );
        let ids: Vec<String> = (0..DEVICES).map(|i| format!("dev-{i}")).collect();
        deployer.set_primary(&ids, "bc", "1.0.0", "test", false).unwrap();
        registry.transition("bc", "1.0.0", Stage::Production, "test", "first").unwrap();
        let mut fleet = Fleet {
            _dir: dir,
            store,
            devices,
            registry,
            deployer,
            slos,
            clock: Clock::manual(1_800_000_000_000),
            seq: 0,
            candidate_errors_per_mille: 0,
            requests: 400,
            silent: Vec::new(),
        };
        // An hour of the old version before anything starts: the baseline.
        for _ in 0..360 {
            fleet.clock.advance(STEP_MS);
            fleet.report();
        }
        fleet
    }

    fn engine(&self) -> Rollouts {
        let FleetStore::Sled(store) = &self.store else { return self.replica(Fence::new(ENGINE)) };
        Rollouts::new(
            &Backing::Sled(store.clone()),
            self.deployer.clone(),
            FleetConfig::default(),
            Metrics::new(),
            self.clock.clone(),
        )
        .unwrap()
    }

    /// An engine of another replica on the fleet's PostgreSQL, under `fence`.
    fn replica(&self, fence: Fence) -> Rollouts {
        let FleetStore::Postgres(db) = &self.store else { panic!("replicas share a PostgreSQL store") };
        let shared = crate::base::backing::Shared::with_fences(db.store(), "replica", vec![fence]);
        Rollouts::new(
            &Backing::Postgres(shared),
            self.deployer.clone(),
            FleetConfig::default(),
            Metrics::new(),
            self.clock.clone(),
        )
        .unwrap()
    }

    /// Every device runs what its desired state says (as an agent would after reconciling)
    /// and reports one window of traffic on it.
    fn report(&mut self) {
        let now = self.clock.now_ms();
        for i in 0..DEVICES {
            let id = format!("dev-{i}");
            if self.silent.contains(&id) {
                continue;
            }
            let desired = self.deployer.desired().get(&id).unwrap().unwrap();
            let m = &desired.models["bc"];
            let mut models = vec![ModelState {
                name: "bc".into(),
                version: m.version.clone(),
                slot: Slot::Primary,
                state: LoadState::Ready,
                reason: None,
            }];
            if let Some(c) = &m.candidate {
                models.push(ModelState {
                    name: "bc".into(),
                    version: c.version.clone(),
                    slot: c.mode.slot(),
                    state: LoadState::Ready,
                    reason: None,
                });
            }
            self.seq += 1;
            let wire = self.seq.to_be_bytes();
            self.devices
                .store_envelope(&id, self.seq, &wire, |r: &mut DeviceRecord| {
                    r.models = models.clone();
                    r.last_seen_ms = Some(now);
                })
                .unwrap();
            // A canary answers its share of the requests; the primary the rest.
            let share = match m.candidate.as_ref().map(|c| c.mode) {
                Some(SlotMode::Canary { percent }) => u64::from(percent),
                _ => 0,
            };
            let candidate_requests = self.requests * share / 100;
            let mut windows =
                vec![self.window(&m.version, Slot::Primary, self.requests - candidate_requests)];
            if let Some(c) = m.candidate.as_ref().filter(|_| candidate_requests > 0) {
                windows.push(self.window(&c.version, Slot::Canary, candidate_requests));
            }
            let report = Report {
                window_start_ms: now - STEP_MS,
                window_end_ms: now,
                models: windows,
                system: Default::default(),
                prediction_log: Default::default(),
                outbox: Default::default(),
            };
            self.slos.put_report(&id, &Default::default(), &report).unwrap();
        }
    }

    /// One window of `requests` answered by `version` in `slot`.
    fn window(&self, version: &str, slot: Slot, requests: u64) -> ModelWindow {
        let errors = if version == "1.1.0" { requests * self.candidate_errors_per_mille / 1000 } else { 0 };
        let mut latency_us = LogHistogram::default();
        latency_us.record_n(800.0, requests);
        ModelWindow {
            model: "bc".into(),
            version: version.to_owned(),
            slot,
            requests,
            errors,
            rows: requests,
            latency_us,
            top_score: LogHistogram::default(),
            label_counts: BTreeMap::new(),
        }
    }

    /// Ticks the engine, lets the devices follow, moves the clock on; until the rollout ends or
    /// `limit` simulated seconds pass. Returns the rollout as it stands.
    fn run(&mut self, engine: &Rollouts, id: &str, limit_secs: u64) -> Rollout {
        let until = self.clock.now_ms() + limit_secs * 1000;
        while self.clock.now_ms() < until {
            engine.tick().unwrap();
            let r = engine.get(id).unwrap().unwrap();
            if !r.phase.active() || r.phase == Phase::Paused {
                return r;
            }
            self.clock.advance(STEP_MS);
            self.report();
        }
        engine.get(id).unwrap().unwrap()
    }

    fn primary_of(&self, device: &str) -> String {
        self.deployer.desired().get(device).unwrap().unwrap().models["bc"].version.clone()
    }
}

fn spec(waves: &str, extra: &str) -> RolloutSpec {
    spec_with(&format!(r#""waves": {waves}{extra}"#))
}

fn spec_with(fields: &str) -> RolloutSpec {
    serde_json::from_str(&format!(
        r#"{{"model": "bc", "version": "1.1.0", "bake_secs": 120,
            "gates": ["error_rate<=+3%"], "max_extensions": 3, {fields}}}"#
    ))
    .unwrap()
}

fn saw(r: &Rollout, needle: &str) -> bool {
    r.timeline.iter().any(|e| e.message.contains(needle))
}

#[test]
fn a_rollout_lives_its_whole_life_on_a_simulated_clock() {
    let mut fleet = Fleet::new();
    // Thin traffic at first: the first bake cannot decide and is extended.
    fleet.requests = 2;
    let engine = fleet.engine();
    let started = engine.start(spec("[20, 60, 100]", ""), "alice").unwrap();
    assert_eq!(started.phase, Phase::Applying);
    assert_eq!(started.baseline, "1.0.0");
    assert_eq!(started.created_ms, fleet.clock.now_ms(), "the rollout reads the engine's clock");

    let r = fleet.run(&engine, &started.id, 300);
    assert_eq!(r.phase, Phase::Baking, "{:#?}", r.timeline);
    assert_eq!(r.moved, ["dev-0"], "wave 1 is 20 % of 5 devices");
    assert_eq!(fleet.primary_of("dev-0"), "1.1.0");
    assert_eq!(fleet.primary_of("dev-1"), "1.0.0");
    assert!(saw(&r, "INCONCLUSIVE"), "thin traffic extends the bake: {:#?}", r.timeline);
    assert!(r.extensions >= 1);

    // Enough traffic now; the coordinator restarts mid-rollout and a new engine resumes it.
    fleet.requests = 400;
    drop(engine);
    let engine = fleet.engine();
    let r = fleet.run(&engine, &started.id, 3_600);
    assert_eq!(r.phase, Phase::Succeeded, "{:#?}", r.timeline);
    assert_eq!(r.moved.len(), DEVICES);
    for i in 0..DEVICES {
        assert_eq!(fleet.primary_of(&format!("dev-{i}")), "1.1.0");
    }
    assert!(saw(&r, "wave 2/3"), "{:#?}", r.timeline);
    assert!(saw(&r, "wave 3/3"), "{:#?}", r.timeline);
    assert!(saw(&r, "gates passed"));
    assert!(saw(&r, "is production"));
    assert_eq!(fleet.registry.production("bc").unwrap().unwrap().version, "1.1.0");
    // Three bakes of 120 s and the extensions: simulated minutes, not wall-clock ones.
    let took = r.finished_ms.unwrap() - r.created_ms;
    assert!(took >= 3 * 120_000, "took {took} ms of simulated time");
    assert!(r.timeline.windows(2).all(|w| w[0].at_ms <= w[1].at_ms), "timeline in clock order");
}

#[test]
fn the_baseline_is_what_each_target_ran_when_the_fleet_ran_a_mix() {
    let mut fleet = Fleet::new();
    // dev-3 and dev-4 run 1.1.0 (which fails 20 % of requests here); the rest 1.0.0.
    fleet.candidate_errors_per_mille = 200;
    let both: Vec<String> = vec!["dev-3".into(), "dev-4".into()];
    fleet.deployer.set_primary(&both, "bc", "1.1.0", "test", false).unwrap();
    for _ in 0..30 {
        fleet.clock.advance(STEP_MS);
        fleet.report();
    }
    let key = SigningKey::generate().unwrap().0;
    fleet.registry.push(&bundle("2.0.0-bad"), "test", &key).unwrap();
    fleet.registry.set_validation("bc", "2.0.0-bad", serde_json::json!({}), true, "test").unwrap();
    let engine = fleet.engine();
    let mut rollout = spec_with(r#""waves": [20, 100]"#);
    rollout.version = "2.0.0-bad".into();
    let started = engine.start(rollout, "alice").unwrap();
    assert_eq!(started.baseline, "1.0.0", "the production version names the baseline");
    assert_eq!(started.baseline_mix(), BTreeMap::from([("1.0.0".to_owned(), 3), ("1.1.0".to_owned(), 2)]));
    assert_eq!(started.baseline_mix_text(), "1.0.0 on 3 devices, 1.1.0 on 2 devices");
    let view = engine.view(started.clone()).unwrap();
    assert_eq!(view.baseline_mix, started.baseline_mix());

    // The first judgement compares the candidate with that mix: 2 of 5 devices at 20 %.
    let mut r = started.clone();
    for _ in 0..30 {
        engine.tick().unwrap();
        r = engine.get(&started.id).unwrap().unwrap();
        if !r.gates.is_empty() {
            break;
        }
        fleet.clock.advance(STEP_MS);
        fleet.report();
    }
    let gate = r.gates.iter().find(|g| g.gate == "error_rate<=+3%").expect("judged");
    let baseline = gate.baseline.unwrap();
    assert!((baseline - 0.08).abs() < 0.01, "the mix's error rate, not 1.0.0's alone: {baseline}");
    assert!(r.baseline_scope.contains("1.0.0 on 3 devices, 1.1.0 on 2 devices"), "{}", r.baseline_scope);
    // A rollback sends each device back to what it ran.
    engine.command(&started.id, "abort-revert", "alice").unwrap();
    assert_eq!(fleet.primary_of("dev-0"), "1.0.0");
    assert_eq!(fleet.primary_of("dev-4"), "1.1.0");
}

#[test]
fn a_breach_rolls_every_moved_device_back_and_opens_an_incident() {
    let mut fleet = Fleet::new();
    fleet.candidate_errors_per_mille = 200;
    let engine = fleet.engine();
    let started = engine.start(spec("[40, 100]", ""), "alice").unwrap();
    let r = fleet.run(&engine, &started.id, 3_600);
    assert_eq!(r.phase, Phase::RolledBack, "{:#?}", r.timeline);
    assert_eq!(r.moved, ["dev-0", "dev-1"]);
    for i in 0..DEVICES {
        assert_eq!(fleet.primary_of(&format!("dev-{i}")), "1.0.0", "dev-{i} runs the old version again");
    }
    let incident = engine.repo().incident(r.incident.as_deref().unwrap()).unwrap().unwrap();
    assert_eq!(incident.gate.as_ref().unwrap().gate, "error_rate<=+3%");
    assert_eq!(incident.devices_rolled_back, ["dev-0", "dev-1"]);
    assert_eq!(engine.repo().open_incidents().unwrap().len(), 1);
    assert_eq!(fleet.registry.get("bc", "1.1.0").unwrap().stage, Stage::Validated);
    // Caught within the first bake: failing is decided as soon as it is beyond doubt.
    assert!(r.finished_ms.unwrap() - r.created_ms <= 120_000 + STEP_MS, "{:#?}", r.timeline);
    engine.close_incident(&incident.id, "bob").unwrap();
    assert!(engine.repo().open_incidents().unwrap().is_empty());
}

/// `device` sends an envelope with a watchdog's event about `model`@`from`.
fn watchdog_event(fleet: &mut Fleet, device: &str, model: &str, from: &str) {
    use outpost_shared::protocol::messages::{Event, EventKind};
    let event = Event {
        at_ms: fleet.clock.now_ms(),
        kind: EventKind::WatchdogReverted {
            model: model.into(),
            from: from.into(),
            to: "1.0.0".into(),
            reason: "3 crashes in 60 s".into(),
        },
        message: "switched back".into(),
    };
    fleet.seq += 1;
    let wire = fleet.seq.to_be_bytes();
    // As ingest applies an event: counted, and kept among the recent ones.
    fleet
        .devices
        .store_envelope(device, fleet.seq, &wire, |r: &mut DeviceRecord| {
            r.counts.events += 1;
            r.recent_events.push(event.clone());
        })
        .unwrap();
}

/// Starts a rollout in waves of 40 % and 100 % and runs it into wave 1's bake.
fn baking_wave_1(fleet: &mut Fleet, engine: &Rollouts) -> Rollout {
    let started = engine.start(spec("[40, 100]", ""), "alice").unwrap();
    while engine.get(&started.id).unwrap().unwrap().phase != Phase::Baking {
        engine.tick().unwrap();
        fleet.clock.advance(STEP_MS);
        fleet.report();
    }
    started
}

#[test]
fn a_watchdog_revert_on_a_moved_device_rolls_back_and_one_elsewhere_does_not() {
    let mut fleet = Fleet::new();
    let engine = fleet.engine();
    // Into wave 1's bake: dev-0 and dev-1 run the candidate; the engine watches them.
    let started = baking_wave_1(&mut fleet, &engine);
    // Not moved, or about another version or model: nothing trips.
    watchdog_event(&mut fleet, "dev-3", "bc", "1.1.0");
    watchdog_event(&mut fleet, "dev-0", "bc", "0.9.0");
    watchdog_event(&mut fleet, "dev-1", "other", "1.1.0");
    engine.tick().unwrap();
    assert_eq!(engine.get(&started.id).unwrap().unwrap().phase, Phase::Baking);
    // A moved device's watchdog switches the candidate back: the next tick rolls back.
    watchdog_event(&mut fleet, "dev-1", "bc", "1.1.0");
    engine.tick().unwrap();
    let r = engine.get(&started.id).unwrap().unwrap();
    assert_eq!(r.phase, Phase::RolledBack, "{:#?}", r.timeline);
    assert!(
        saw(&r, "device dev-1's watchdog switched 1.1.0 back on its own (3 crashes in 60 s)"),
        "{:#?}",
        r.timeline
    );
}

#[test]
fn a_watchdog_revert_before_a_restart_is_found_by_the_new_engine() {
    let mut fleet = Fleet::new();
    let engine = fleet.engine();
    let started = baking_wave_1(&mut fleet, &engine);
    drop(engine);
    // Arrives while no engine watches; a restarted one reads the moved devices once.
    watchdog_event(&mut fleet, "dev-0", "bc", "1.1.0");
    let engine = fleet.engine();
    engine.tick().unwrap();
    let r = engine.get(&started.id).unwrap().unwrap();
    assert_eq!(r.phase, Phase::RolledBack, "{:#?}", r.timeline);
    assert!(saw(&r, "device dev-0's watchdog"), "{:#?}", r.timeline);
}

#[test]
fn a_quiet_device_is_skipped_under_the_skip_policy_and_fails_the_rollout_under_fail() {
    for (policy, expect) in [("skip", Phase::Succeeded), ("fail", Phase::RolledBack)] {
        let mut fleet = Fleet::new();
        let engine = fleet.engine();
        let extra = format!(r#", "offline": "{policy}""#);
        // dev-4 stops reporting: five minutes of silence make it offline.
        fleet.silent.push("dev-4".into());
        for _ in 0..30 {
            fleet.clock.advance(STEP_MS);
            fleet.report();
        }
        let started = engine.start(spec("[100]", &extra), "alice").unwrap();
        let r = fleet.run(&engine, &started.id, 3_600);
        assert_eq!(r.phase, expect, "{policy}: {:#?}", r.timeline);
        assert!(saw(&r, "dev-4"), "{policy}: the quiet device is named: {:#?}", r.timeline);
    }
}

#[test]
fn a_canary_answers_growing_shares_then_every_target_switches() {
    let mut fleet = Fleet::new();
    let engine = fleet.engine();
    let canary = spec_with(r#""strategy": "canary", "steps": [10, 50, 100]"#);
    let started = engine.start(canary, "alice").unwrap();
    let r = fleet.run(&engine, &started.id, 30);
    assert_eq!(r.phase, Phase::Baking, "{:#?}", r.timeline);
    // Step 1: every target keeps 1.0.0 as its primary and runs 1.1.0 as a 10 % canary.
    for i in 0..DEVICES {
        let desired = fleet.deployer.desired().get(&format!("dev-{i}")).unwrap().unwrap();
        let m = &desired.models["bc"];
        assert_eq!(m.version, "1.0.0");
        assert_eq!(m.candidate.as_ref().unwrap().mode, SlotMode::Canary { percent: 10 });
    }
    let view = engine.view(r.clone()).unwrap();
    assert!(view.devices.iter().all(|d| d.candidate.as_deref() == Some("1.1.0 canary (ready)")), "{view:#?}");
    let r = fleet.run(&engine, &started.id, 3_600);
    assert_eq!(r.phase, Phase::Succeeded, "{:#?}", r.timeline);
    assert!(saw(&r, "as a canary answering 50% of requests"), "{:#?}", r.timeline);
    for i in 0..DEVICES {
        let desired = fleet.deployer.desired().get(&format!("dev-{i}")).unwrap().unwrap();
        let m = &desired.models["bc"];
        assert_eq!((m.version.as_str(), m.candidate.is_none()), ("1.1.0", true));
    }
}

#[test]
fn blue_green_loads_a_standby_everywhere_then_switches_at_once() {
    let mut fleet = Fleet::new();
    let engine = fleet.engine();
    let started = engine.start(spec_with(r#""strategy": "blue-green""#), "alice").unwrap();
    let r = fleet.run(&engine, &started.id, 3_600);
    assert_eq!(r.phase, Phase::Succeeded, "{:#?}", r.timeline);
    assert!(saw(&r, "as a standby"), "{:#?}", r.timeline);
    assert!(saw(&r, "switching them all at once"), "{:#?}", r.timeline);
    assert_eq!(fleet.primary_of("dev-3"), "1.1.0");
}

#[test]
fn operators_pause_resume_promote_and_abort() {
    let mut fleet = Fleet::new();
    let engine = fleet.engine();
    let started = engine.start(spec("[20, 60, 100]", ""), "alice").unwrap();
    // A second rollout of the same model is refused while this one is active.
    let again = engine.start(spec("[100]", ""), "bob").unwrap_err();
    assert!(matches!(again, RolloutError::Conflict(_)), "{again}");
    let r = fleet.run(&engine, &started.id, 30);
    assert_eq!(r.moved.len(), 1);

    let (paused, sent) = engine.command(&started.id, "pause", "carol").unwrap();
    assert_eq!((paused.phase, sent.len()), (Phase::Paused, 0));
    fleet.clock.advance(600_000);
    engine.tick().unwrap();
    assert_eq!(engine.get(&started.id).unwrap().unwrap().moved.len(), 1, "a paused rollout does not move");
    assert!(matches!(engine.command(&started.id, "sideways", "carol"), Err(RolloutError::Invalid(_))));

    let (resumed, _) = engine.command(&started.id, "resume", "carol").unwrap();
    assert_eq!(resumed.phase, Phase::Applying);
    let (promoted, _) = engine.command(&started.id, "promote", "carol").unwrap();
    assert!(promoted.promoted);
    let r = fleet.run(&engine, &started.id, 120);
    assert_eq!(r.phase, Phase::Succeeded, "{:#?}", r.timeline);
    assert!(saw(&r, "promoted by carol"));
    assert_eq!(fleet.primary_of("dev-4"), "1.1.0", "promote sends every target the version");
    assert!(matches!(engine.command(&started.id, "pause", "carol"), Err(RolloutError::Conflict(_))));

    // Back to 1.0.0 — archived once 1.1.0 became production — only when asked for, with a new
    // rollout aborted with a revert once it moved devices.
    let back = r#"{"model": "bc", "version": "1.0.0", "waves": [40, 100], "gates": ["error_rate<=+3%"]"#;
    let refused = engine.start(serde_json::from_str(&format!("{back}}}")).unwrap(), "dave");
    assert!(
        matches!(&refused, Err(RolloutError::Conflict(m)) if m.contains("--allow-archived")),
        "{refused:?}"
    );
    let back: RolloutSpec = serde_json::from_str(&format!(r#"{back}, "allow_archived": true}}"#)).unwrap();
    let second = engine.start(back, "dave").unwrap();
    let r = fleet.run(&engine, &second.id, 30);
    assert_eq!(r.moved, ["dev-0", "dev-1"]);
    assert_eq!(fleet.primary_of("dev-0"), "1.0.0");
    let (aborted, sent) = engine.command(&second.id, "abort-revert", "dave").unwrap();
    assert_eq!((aborted.phase, sent.len()), (Phase::Aborted, 2));
    assert_eq!(fleet.primary_of("dev-0"), "1.1.0", "moved devices go back to what they ran");
    assert!(matches!(engine.command("r-999999", "pause", "dave"), Err(RolloutError::NotFound(_))));
}

/// The finding: a rollout to 1 of 5 devices ended "succeeded: … is production" and archived
/// the version 4 devices still ran. While devices outside a rollout run another version, its
/// success now changes no stage unless `promote` says so; the rollout that brings the last of
/// them over makes it production.
#[test]
fn a_rollout_to_part_of_the_fleet_leaves_production_alone_unless_promoted() {
    let mut fleet = Fleet::new();
    let engine = fleet.engine();
    let site =
        |s: &str, extra: &str| spec_with(&format!(r#""waves": [100], "selector": {{"site": "{s}"}}{extra}"#));
    let started = engine.start(site("a", ""), "alice").unwrap();
    let r = fleet.run(&engine, &started.id, 3_600);
    assert_eq!(r.phase, Phase::Succeeded, "{:#?}", r.timeline);
    assert!(saw(&r, "succeeded (partial: 2 of 5 devices running bc have 1.1.0)"), "{:#?}", r.timeline);
    assert!(!saw(&r, "is production"), "{:#?}", r.timeline);
    assert_eq!(fleet.registry.production("bc").unwrap().unwrap().version, "1.0.0");
    assert_eq!((fleet.primary_of("dev-1"), fleet.primary_of("dev-2")), ("1.1.0".into(), "1.0.0".into()));
    // The rest of the fleet: now every device runs it, so it is production.
    let started = engine.start(site("b", ""), "alice").unwrap();
    let r = fleet.run(&engine, &started.id, 3_600);
    assert!(saw(&r, "succeeded: bc@1.1.0 is production"), "{:#?}", r.timeline);
    assert_eq!(fleet.registry.get("bc", "1.0.0").unwrap().stage, Stage::Archived);

    // `promote` makes a partial rollout production at once.
    let mut fleet = Fleet::new();
    let engine = fleet.engine();
    let started = engine.start(site("b", r#", "promote": true"#), "alice").unwrap();
    let r = fleet.run(&engine, &started.id, 3_600);
    assert!(saw(&r, "3 of 5 devices running bc have 1.1.0, promoted as asked"), "{:#?}", r.timeline);
    assert_eq!(fleet.registry.production("bc").unwrap().unwrap().version, "1.1.0");
}

#[test]
fn a_plan_reads_the_targets_recent_traffic() {
    let fleet = Fleet::new();
    let engine = fleet.engine();
    let plan = engine.plan(&spec("[20, 60, 100]", "")).unwrap();
    let text = serde_json::to_string(&plan).unwrap();
    assert!(text.contains("error_rate<=+3%"), "{text}");
    let none: RolloutSpec =
        serde_json::from_str(r#"{"model": "bc", "version": "1.1.0", "selector": {"site": "nowhere"}}"#)
            .unwrap();
    assert!(matches!(engine.plan(&none), Err(RolloutError::Invalid(_))));
    let missing: RolloutSpec = serde_json::from_str(r#"{"model": "bc", "version": "9.9.9"}"#).unwrap();
    assert!(matches!(engine.start(missing, "x"), Err(RolloutError::NotFound(_))));
}

/// Two replicas on one PostgreSQL: the engine of the one holding the `rollouts` lease steps the
/// rollout; the other's does nothing. The lease passes mid-bake; the deposed engine (which still
/// believes it holds it: its deadline is not over) has its next step refused by the term check,
/// and the new holder finishes the rollout from where it stood — every wave sent once.
#[test]
fn on_postgres_a_rollout_finishes_on_the_replica_that_takes_the_lease() {
    let mut fleet = Fleet::on_postgres();
    let FleetStore::Postgres(db) = &fleet.store else { unreachable!("on PostgreSQL") };
    let pg = db.store();
    let (first, second) = (Fence::new(ENGINE), Fence::new(ENGINE));
    let (one, two) = (fleet.replica(first.clone()), fleet.replica(second.clone()));
    first.hold(take_lease(&pg, ENGINE, "one"), later());

    let r = baking_wave_1(&mut fleet, &one);
    let baking = one.get(&r.id).unwrap().unwrap();
    assert_eq!((baking.phase, baking.moved.len()), (Phase::Baking, 2), "{:?}", baking.timeline);
    fleet.clock.advance(STEP_MS);
    fleet.report();
    let idle = two.tick().unwrap();
    assert!(idle.is_empty() && two.get(&r.id).unwrap().unwrap() == baking, "no lease, no step");

    second.hold(take_lease(&pg, ENGINE, "two"), later());
    fleet.clock.advance(STEP_MS);
    fleet.report();
    // The deposed engine still thinks it leads: its step is refused by the term, nothing changes.
    let before = one.get(&r.id).unwrap().unwrap();
    one.tick().unwrap();
    let after = one.get(&r.id).unwrap().unwrap();
    assert_eq!(after.revision, before.revision, "the deposed engine wrote nothing");

    let done = fleet.run(&two, &r.id, 3_600);
    assert_eq!(done.phase, Phase::Succeeded, "{:?}", done.timeline);
    for i in 0..DEVICES {
        assert_eq!(fleet.primary_of(&format!("dev-{i}")), "1.1.0");
    }
    let sends: Vec<&str> =
        done.timeline.iter().map(|e| e.message.as_str()).filter(|m| m.contains(": sending 1.1.0")).collect();
    assert_eq!(sends.len(), 2, "each wave sent once: {sends:?}");
    assert!(sends[0].contains("to 2 device(s)") && sends[1].contains("to 3 device(s)"), "{sends:?}");
}
