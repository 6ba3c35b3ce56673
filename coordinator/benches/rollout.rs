//! A rollout over a 10,000-device fleet: how long one engine tick takes while the rollout
//! applies a wave and bakes it, and, as the same run's baseline, how long reading the gates'
//! evidence by scanning every stored window of the rollout's span takes (what each tick did
//! before the evidence was kept incrementally).
//!
//! `cargo bench -p outpost-coordinator --bench rollout` (env `BENCH_ROLLOUT_DEVICES`, default
//! 10000; `BENCH_ROLLOUT_BAKE_SECS`, default 300; `BENCH_ROLLOUT_FINISHED`, default 20: finished
//! rollouts of the same targets stored beside it, which a tick used to read too). Devices report every 10 s of a simulated
//! clock, as real agents do; the engine ticks once per report round (in production it ticks
//! every second, so a tick slower than a second is the engine falling behind, and it holds the
//! engine's lock — an operator's pause or abort waits for it).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use outpost_coordinator::base::clock::Clock;
use outpost_coordinator::base::metrics::Metrics;
use outpost_coordinator::base::secrets::Secrets;
use outpost_coordinator::base::store::Store;
use outpost_coordinator::fleet::ca::Authority;
use outpost_coordinator::fleet::desired::Desired;
use outpost_coordinator::fleet::devices::{DeviceRecord, Devices, TokenRecord};
use outpost_coordinator::fleet::liveness::FleetConfig;
use outpost_coordinator::models::packaging::{BuildSpec, build};
use outpost_coordinator::models::registry::{Registry, Stage};
use outpost_coordinator::monitoring::slo::Slos;
use outpost_coordinator::ops::deploy::Deployer;
use outpost_coordinator::ops::rollout::evidence::EvidenceSource;
use outpost_coordinator::ops::rollout::{Phase, RolloutSpec, Rollouts, Writer};
use outpost_shared::histogram::LogHistogram;
use outpost_shared::protocol::keys::SigningKey;
use outpost_shared::protocol::messages::{LoadState, ModelState, ModelWindow, Report, Slot};

/// Simulated time between two reports of a device.
const STEP_MS: u64 = 10_000;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn bundle(version: &str) -> Vec<u8> {
    let fixture = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/models")
        .join(format!("breast_cancer-{version}.onnx"));
    let spec =
        BuildSpec { model: fixture, name: "bc".into(), version: version.into(), ..BuildSpec::default() };
    build(&spec, 0).unwrap().0.to_bytes()
}

struct Fleet {
    ids: Vec<String>,
    devices: Devices,
    deployer: Deployer,
    slos: Slos,
    clock: Clock,
    seq: u64,
}

impl Fleet {
    /// Every device runs its desired primary and reports one window of 200 requests on it.
    fn report(&mut self) {
        let now = self.clock.now_ms();
        for (i, id) in self.ids.iter().enumerate() {
            let version = self.deployer.desired().get(id).unwrap().unwrap().models["bc"].version.clone();
            let models = vec![ModelState {
                name: "bc".into(),
                version: version.clone(),
                slot: Slot::Primary,
                state: LoadState::Ready,
                reason: None,
            }];
            self.seq += 1;
            self.devices
                .store_envelope_at(id, self.seq, &self.seq.to_be_bytes(), now, |r: &mut DeviceRecord| {
                    r.models = models.clone();
                })
                .unwrap();
            let mut latency_us = LogHistogram::default();
            for j in 0..20u64 {
                latency_us.record_n(500.0 + ((i as u64 * 31 + j * 97) % 4_000) as f64, 10);
            }
            let report = Report {
                window_start_ms: now - STEP_MS,
                window_end_ms: now,
                models: vec![ModelWindow {
                    model: "bc".into(),
                    version,
                    slot: Slot::Primary,
                    requests: 200,
                    errors: u64::from(self.seq.is_multiple_of(200)),
                    rows: 200,
                    latency_us,
                    top_score: LogHistogram::default(),
                    label_counts: BTreeMap::new(),
                }],
                system: Default::default(),
                prediction_log: Default::default(),
                outbox: Default::default(),
            };
            self.slos.put_report(id, &Default::default(), &report).unwrap();
        }
    }
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn main() {
    let n = env("BENCH_ROLLOUT_DEVICES", 10_000) as usize;
    let bake_secs = env("BENCH_ROLLOUT_BAKE_SECS", 300).max(30);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let registry = Registry::open(&store, dir.path()).unwrap();
    let devices = Devices::open(&store).unwrap();
    let key = SigningKey::generate().unwrap().0;
    for v in ["1.0.0", "1.1.0"] {
        registry.push(&bundle(v), "bench", &key).unwrap();
        registry.set_validation("bc", v, serde_json::json!({}), true, "bench").unwrap();
    }
    let ids: Vec<String> = (0..n).map(|i| format!("dev-{i:05}")).collect();
    for (i, id) in ids.iter().enumerate() {
        let token = format!("token-{i}");
        let record = TokenRecord {
            labels: BTreeMap::new(),
            created_at_ms: 0,
            expires_at_ms: u64::MAX,
            used_by: None,
            used_at_ms: None,
        };
        devices.add_token(&token, &record).unwrap();
        let mut public = [0u8; 32];
        public[..8].copy_from_slice(&(i as u64).to_be_bytes());
        devices.enrol(&token, |t| DeviceRecord::new(id, &public, t.labels.clone())).unwrap().unwrap();
    }
    let authority = Arc::new(Authority::load_or_create(dir.path(), &Secrets::clear()).unwrap());
    let (outgoing, _rx) = tokio::sync::mpsc::channel(1);
    let deployer = Deployer::new(
        registry.clone(),
        devices.clone(),
        Desired::open(&store).unwrap(),
        authority,
        outgoing,
        Default::default(),
    );
    deployer.set_primary(&ids, "bc", "1.0.0", "bench", false).unwrap();
    registry.transition("bc", "1.0.0", Stage::Production, "bench", "first").unwrap();
    let clock = Clock::manual(1_800_000_000_000);
    let mut fleet =
        Fleet { ids, devices, deployer: deployer.clone(), slos: Slos::open(&store).unwrap(), clock, seq: 0 };

    // One bake of the old version before the rollout: the waves' baseline.
    let started = Instant::now();
    for _ in 0..bake_secs * 1000 / STEP_MS {
        fleet.clock.advance(STEP_MS);
        fleet.report();
    }
    eprintln!(
        "{n} devices enrolled; {} report windows of 1.0.0 stored in {:.1} s",
        fleet.seq,
        started.elapsed().as_secs_f64()
    );

    let engine = Rollouts::new(
        &outpost_coordinator::base::backing::Backing::Sled(store.clone()),
        deployer,
        FleetConfig::default(),
        Metrics::new(),
        fleet.clock.clone(),
    )
    .unwrap();
    let spec: RolloutSpec = serde_json::from_value(serde_json::json!({
        "model": "bc", "version": "1.1.0", "waves": [1, 100], "bake_secs": bake_secs,
        "gates": ["error_rate<=1.5x+0.2%", "p99<=1.2x"], "max_extensions": 2,
    }))
    .unwrap();
    let id = engine.start(spec, "bench").unwrap().id;
    // Rollouts finished before, each holding its 10,000 targets, as a coordinator's history does.
    let finished = env("BENCH_ROLLOUT_FINISHED", 20);
    let template = engine.get(&id).unwrap().unwrap();
    for k in 0..finished {
        let mut old = template.clone();
        old.id = format!("r-old-{k:03}");
        old.phase = Phase::Succeeded;
        old.revision = 0;
        engine.repo().put(&mut old, Writer::Operator).unwrap();
    }
    let evidence = EvidenceSource::open(&store).unwrap();

    // (phase and wave, tick ms) of every tick; the scan baseline at the end of each bake.
    let mut ticks: Vec<(String, f64)> = Vec::new();
    let mut scans: Vec<(String, usize, f64)> = Vec::new();
    let time = |f: &dyn Fn() -> usize| {
        let samples: Vec<f64> = (0..5)
            .map(|_| {
                let t = Instant::now();
                assert!(f() <= finished as usize + 1);
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        median(samples)
    };
    let mut listing = String::new();
    loop {
        let t = Instant::now();
        engine.tick().unwrap();
        let tick_ms = t.elapsed().as_secs_f64() * 1e3;
        let r = engine.get(&id).unwrap().unwrap();
        let label = format!("{} wave {}/2", r.phase.as_str(), r.wave + 1);
        ticks.push((label.clone(), tick_ms));
        if !r.phase.active() || r.phase == Phase::Paused {
            assert_eq!(r.phase, Phase::Succeeded, "{:#?}", r.timeline);
            break;
        }
        let now = fleet.clock.now_ms();
        if r.phase == Phase::Baking && r.bake_until_ms.is_some_and(|u| now + STEP_MS >= u) {
            // What a tick read before: every window of the rollout's span, scanned, for the
            // candidate on the moved devices and for each target's previous version.
            let moved: Vec<String> = r.moved.clone();
            let previous = r.previous_versions();
            let mut samples = Vec::new();
            for _ in 0..3 {
                let t = Instant::now();
                let c = evidence.evidence("bc", "1.1.0", &moved, r.created_ms, now).unwrap();
                let b = evidence
                    .evidence_of_each("bc", &previous, r.created_ms.saturating_sub(bake_secs * 1000), now)
                    .unwrap();
                samples.push(t.elapsed().as_secs_f64() * 1e3);
                assert!(c.requests > 0 && b.requests > 0);
            }
            let windows = (now - r.created_ms + bake_secs * 1000) / STEP_MS * n as u64;
            scans.push((label, windows as usize, median(samples)));
            listing = format!(
                "  rollouts a tick reads, {finished} finished ones stored: the active one {:.2} ms; baseline: every stored rollout {:.2} ms",
                time(&|| engine.repo().active().unwrap().len()),
                time(&|| engine.repo().list().unwrap().len()),
            );
        }
        fleet.clock.advance(STEP_MS);
        fleet.report();
    }

    println!(
        "rollout of 1.1.0 in waves of 1 % and 100 % over {n} devices reporting every 10 s, bake {bake_secs} s"
    );
    let mut by_phase: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for (label, ms) in &ticks {
        by_phase.entry(label.clone()).or_default().push(*ms);
    }
    for (label, samples) in by_phase {
        let max = samples.iter().copied().fold(0.0, f64::max);
        println!(
            "  tick while {label:<22} median {:>9.2} ms  max {:>9.2} ms  ({} ticks)",
            median(samples.clone()),
            max,
            samples.len()
        );
    }
    println!("{listing}");
    for (label, windows, ms) in scans {
        println!(
            "  baseline: the evidence by scanning every window at the end of {label:<14} {ms:>9.2} ms ({windows} windows in the span)"
        );
    }
}
