//! The rollout engine: moves a model version onto a fleet step by step, judging each step on
//! the candidate's live numbers against the baseline's, and rolls every touched device back by
//! itself when a gate is breached.
//!
//! A rollout targets the devices a label selector matches when it starts (fixed, in id order).
//! Its strategy makes the steps ([`RolloutSpec::plan`]):
//! - `waves` (`waves = [10, 50, 100]`: percent of the targets, cumulative): each wave's devices
//!   switch their primary version;
//! - `canary` (`steps = [5, 25, 50, 100]`): every target runs the version in its candidate slot,
//!   answering that percent of its requests; the final 100 switches every target;
//! - `blue-green`: every target loads and validates it as a standby (no bake), then all switch;
//! - `shadow`: every target runs it on copies of the requests its primary answers; the gates
//!   judge its agreement with the primary; it is removed afterwards, nothing switches.
//!
//! Each step is *applied* (desired states sent; it waits until every device of the step reports
//! the version ready in the right slot), then *bakes* for `bake_secs` while the gates
//! ([`gates`]) compare the **candidate** (the new version on the moved devices, over the whole
//! rollout) with the **baseline** (the old version on the targets: the same devices in the same
//! window for canary and shadow steps; for waves and switches, from one bake before the rollout
//! began — see [`bake`]).
//!
//! Every gate's verdict is three-way on a confidence sequence ([`stats`]): a gate that is worse
//! than its limit beyond doubt fails and stops the rollout at once: every moved device goes back
//! to the version it had, an [`Incident`] keeps the gate, the numbers and the timeline, and an
//! alert fires until an operator closes the incident. At the end of the bake, all gates passing
//! (within their limits beyond doubt) takes the next wave; any inconclusive gate extends the bake
//! (up to `max_extensions` times), then pauses the rollout for an operator — thin evidence never
//! passes. The rollout's `alpha` (default 1 %) bounds the chance of any wrong verdict over the
//! whole rollout; `gate-sim` measures it. After the last wave the version becomes `production`.
//!
//! Devices that go quiet during a wave are shown `stale`/`offline` and handled by the spec's
//! `offline` policy: `wait` for them, `skip` them (they get the version when they return), or
//! count them as a `fail`ure (rollback). A device that reports the candidate `failed` (refused,
//! or failed its validation) is a failure; so is a wave not applied within `apply_timeout_secs`.
//!
//! State: sled trees `rollouts` (id → JSON [`Rollout`]) and `incidents` (id → JSON
//! [`Incident`]). Every step is written before it is acted on and acting is idempotent (a
//! device whose desired state already says the version is not sent it again), so a coordinator
//! killed at any moment resumes every rollout where it was: timers are absolute times. The gates'
//! evidence is kept in memory as running sums per active rollout ([`running`]: read once at the
//! rollout's first look, then only what arrives), so a tick costs what arrived since the last
//! one, not a scan of everything the targets reported since the rollout began.

pub mod bake;
pub mod evidence;
pub mod gates;
mod machine;
mod persistence;
pub mod plan;
mod records;
mod running;
mod sends;
pub mod simulate;
mod spec;
pub mod stats;
mod watch;

pub use persistence::{ENGINE, RolloutStore, Writer};
pub use records::{
    DeviceProgress, Evaluation, GatePoint, Incident, MAX_HISTORY, Phase, Rollout, RolloutView, TimelineEntry,
};
use sends::revert;
pub use spec::{OfflinePolicy, RolloutSpec, SpecError, Step, Strategy};

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::base::backing::Backing;
use crate::base::clock::Clock;
use crate::base::metrics::Metrics;
use crate::base::store::StoreError;
use crate::fleet::desired::{Outgoing, matches};
use crate::fleet::devices::DeviceRecord;
use crate::fleet::devices::Devices;
use crate::fleet::liveness::{FleetConfig, Liveness};
use crate::models::registry::Stage;
use crate::ops::deploy::{DeployError, Deployer};
use evidence::EvidenceSource;
use outpost_shared::protocol::vocab::Slot;

/// How often the engine looks at every active rollout.
pub const TICK: Duration = Duration::from_secs(1);

/// Errors of operator requests.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Deploy(#[from] DeployError),
    #[error(transparent)]
    Spec(#[from] SpecError),
}

/// The engine: its stored rollouts and the narrow handles it acts through.
pub struct Rollouts {
    repo: RolloutStore,
    /// Device records (what each device reports running).
    devices: Devices,
    evidence: EvidenceSource,
    /// Moved devices watched for a watchdog's revert.
    watches: watch::Watches,
    deployer: Deployer,
    /// What the engine's steps send through: on PostgreSQL every desired state it changes
    /// checks the `rollouts` lease's term, so a leader deposed mid-step sends nothing late.
    /// Operators' commands use `deployer` and go through on any replica.
    steps: Deployer,
    fleet: FleetConfig,
    metrics: Metrics,
    clock: Clock,
    /// Serialises changes between the engine and operator requests.
    lock: Mutex<()>,
    /// On PostgreSQL, the `rollouts` lease as this replica holds it (and the replica's id): the
    /// engine ticks only while it is held, and its writes check it.
    fence: Option<(crate::base::pg::store::Fence, String)>,
}

impl std::fmt::Debug for Rollouts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rollouts").finish_non_exhaustive()
    }
}

fn actual_of<'a>(
    d: Option<&'a DeviceRecord>,
    model: &str,
) -> Option<&'a outpost_shared::protocol::messages::ModelState> {
    d?.models.iter().find(|m| m.name == model && m.slot == Slot::Primary)
}

impl Rollouts {
    /// The engine on `backing`. On PostgreSQL every record it reads and writes is shared with
    /// the other replicas; it steps rollouts only while this replica holds the `rollouts`
    /// lease (its fence, kept by the lease keeper), and every step it stores checks that
    /// lease's term.
    pub fn new(
        backing: &Backing,
        deployer: Deployer,
        fleet: FleetConfig,
        metrics: Metrics,
        clock: Clock,
    ) -> Result<Rollouts, StoreError> {
        let (repo, devices, evidence, fence) = match backing {
            Backing::Sled(store) => {
                (RolloutStore::open(store)?, Devices::open(store)?, EvidenceSource::open(store)?, None)
            }
            Backing::Postgres(shared) => {
                let fence = shared.fence(ENGINE);
                (
                    RolloutStore::open_postgres(&shared.store, fence.clone()),
                    Devices::open_postgres(&shared.store),
                    EvidenceSource::open_postgres(&shared.store),
                    Some((fence, shared.replica.clone())),
                )
            }
        };
        Ok(Rollouts {
            repo,
            devices,
            evidence,
            watches: watch::Watches::default(),
            steps: deployer.fenced(fence.as_ref().map(|(f, _)| f.clone())),
            deployer,
            fleet,
            metrics,
            clock,
            lock: Mutex::new(()),
            fence,
        })
    }

    /// The stored rollouts and incidents.
    pub fn repo(&self) -> &RolloutStore {
        &self.repo
    }

    pub fn get(&self, id: &str) -> Result<Option<Rollout>, StoreError> {
        self.repo.get(id)
    }

    pub fn list(&self) -> Result<Vec<Rollout>, StoreError> {
        self.repo.list()
    }

    pub fn incidents(&self) -> Result<Vec<Incident>, StoreError> {
        self.repo.incidents()
    }

    /// Marks an incident handled (its alert resolves).
    pub fn close_incident(&self, id: &str, by: &str) -> Result<Incident, RolloutError> {
        let _g = self.guard();
        let mut i =
            self.repo.incident(id)?.ok_or_else(|| RolloutError::NotFound(format!("no incident `{id}`")))?;
        if i.closed_ms.is_none() {
            let now = self.clock.now_ms();
            i.closed_ms = Some(now);
            i.closed_by = Some(by.to_owned());
            i.timeline.push(TimelineEntry { at_ms: now, message: format!("closed by {by}") });
            self.repo.put_incident(&i, Writer::Operator)?;
        }
        Ok(i)
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The view of one rollout with its devices' live state.
    pub fn view(&self, r: Rollout) -> Result<RolloutView, StoreError> {
        let (fleet, desired) = (&self.fleet, self.deployer.desired());
        let now = self.clock.now_ms();
        let devices: BTreeMap<String, DeviceRecord> =
            self.devices.all()?.into_iter().map(|d| (d.id.clone(), d)).collect();
        let mut progress = Vec::new();
        for (i, id) in r.targets.iter().enumerate() {
            let wave = (0..r.steps()).find(|&w| i < r.wave_devices(w).len()).unwrap_or(0) + 1;
            let d = devices.get(id);
            let actual = actual_of(d, &r.spec.model);
            progress.push(DeviceProgress {
                device: id.clone(),
                wave,
                desired: desired
                    .get(id)?
                    .and_then(|rec| rec.models.get(&r.spec.model).map(|m| m.version.clone())),
                actual: actual.map(|m| m.version.clone()),
                actual_state: actual.map(|m| m.state),
                liveness: d.map_or(Liveness::NeverSeen, |d| Liveness::of(d, fleet, now)).as_str().to_owned(),
                candidate: d.and_then(|d| {
                    d.models
                        .iter()
                        .find(|m| m.name == r.spec.model && m.slot != Slot::Primary)
                        .map(|m| format!("{} {} ({})", m.version, m.slot, m.state))
                }),
                skipped: r.skipped.contains(id),
            });
        }
        Ok(RolloutView { baseline_mix: r.baseline_mix(), rollout: r, devices: progress })
    }

    /// How long `spec`'s gates need on the targets' traffic of the last ten minutes
    /// ([`plan::plan`]); nothing is started or written.
    pub fn plan(&self, spec: &RolloutSpec) -> Result<plan::Plan, RolloutError> {
        const WINDOW_SECS: u64 = 600;
        spec.validate()?;
        self.deployer
            .registry()
            .get(&spec.model, &spec.version)
            .map_err(|e| RolloutError::NotFound(e.to_string()))?;
        let targets: Vec<String> =
            self.devices.all()?.into_iter().filter(|d| matches(d, &spec.selector)).map(|d| d.id).collect();
        if targets.is_empty() {
            return Err(RolloutError::Invalid("the selector matches no enrolled device".into()));
        }
        let now = self.clock.now_ms();
        let from = now.saturating_sub(WINDOW_SECS * 1000);
        let traffic = self.evidence.traffic_except(&spec.model, &spec.version, &targets, from, now)?;
        // A fleet that started reporting minutes ago has only those minutes of data (a window
        // covers about one report interval before its end).
        let window_secs = traffic
            .oldest_ms
            .map_or(WINDOW_SECS, |o| (now.saturating_sub(o) / 1000 + 10).clamp(10, WINDOW_SECS));
        let mut running = BTreeSet::new();
        for id in &targets {
            if let Some(m) =
                self.deployer.desired().get(id)?.and_then(|rec| rec.models.get(&spec.model).cloned())
            {
                running.insert(m.version);
            }
        }
        let (mut labelled, mut correct) = (0, 0);
        for version in running.iter().filter(|v| **v != spec.version) {
            let (l, c) = self.evidence.correct_on(&spec.model, version, &targets, from, now)?;
            labelled += l;
            correct += c;
        }
        let per_device_s = (targets.len() as u64 * window_secs) as f64;
        let rates = plan::FleetRates {
            targets: targets.len(),
            window_secs,
            requests_per_s: traffic.requests as f64 / per_device_s,
            labels_per_s: labelled as f64 / per_device_s,
            error_rate: if traffic.requests > 0 {
                traffic.errors as f64 / traffic.requests as f64
            } else {
                0.0
            },
            accuracy: (labelled > 0).then(|| correct as f64 / labelled as f64),
            latency_us: traffic.latency_us,
        };
        Ok(plan::plan(spec, &rates)?)
    }

    /// Starts a rollout (validated spec; the version must have passed validation).
    pub fn start(&self, spec: RolloutSpec, by: &str) -> Result<Rollout, RolloutError> {
        spec.validate()?;
        let registry = self.deployer.registry();
        let record =
            registry.get(&spec.model, &spec.version).map_err(|e| RolloutError::NotFound(e.to_string()))?;
        if record.validation_passed != Some(true) {
            return Err(RolloutError::Conflict(format!(
                "{} cannot roll out: it has not passed validation (`outpostctl model validate`)",
                record.id()
            )));
        }
        if record.stage == Stage::Archived && !spec.allow_archived {
            return Err(RolloutError::Conflict(format!(
                "{} is archived (a later version replaced it as production); pass --allow-archived to roll it out again",
                record.id()
            )));
        }
        let _g = self.guard();
        if let Some(active) = self.repo.active()?.into_iter().find(|r| r.spec.model == spec.model) {
            return Err(RolloutError::Conflict(format!(
                "rollout {} of {}@{} is still {}: pause, promote or abort it first",
                active.id,
                active.spec.model,
                active.spec.version,
                active.phase.as_str()
            )));
        }
        let mut targets: Vec<String> =
            self.devices.all()?.into_iter().filter(|d| matches(d, &spec.selector)).map(|d| d.id).collect();
        targets.sort();
        if targets.is_empty() {
            return Err(RolloutError::Invalid("the selector matches no enrolled device".into()));
        }
        let mut previous = BTreeMap::new();
        let mut running: BTreeMap<String, usize> = BTreeMap::new();
        for id in &targets {
            let before =
                self.deployer.desired().get(id)?.and_then(|rec| rec.models.get(&spec.model).cloned());
            if let Some(m) = &before {
                *running.entry(m.version.clone()).or_default() += 1;
            }
            previous.insert(id.clone(), before);
        }
        let production = registry.production(&spec.model).ok().flatten().map(|r| r.version);
        let baseline = production
            .filter(|p| running.contains_key(p))
            .or_else(|| running.iter().max_by_key(|(_, n)| **n).map(|(v, _)| v.clone()))
            .ok_or_else(|| {
                RolloutError::Conflict(format!(
                    "no targeted device runs `{}` yet, so there is no baseline to compare with: \
                     deploy a first version with `outpostctl deploy`",
                    spec.model
                ))
            })?;
        if baseline == spec.version {
            return Err(RolloutError::Conflict(format!(
                "the targets already run {}@{}",
                spec.model, spec.version
            )));
        }
        let now = self.clock.now_ms();
        let mut r = Rollout {
            id: self.repo.next_id("r")?,
            spec,
            baseline,
            targets,
            previous,
            phase: Phase::Applying,
            wave: 0,
            moved: Vec::new(),
            skipped: Vec::new(),
            wave_started_ms: now,
            bake_started_ms: None,
            bake_until_ms: None,
            extensions: 0,
            promoted: false,
            paused_reason: None,
            gates: Vec::new(),
            baseline_scope: String::new(),
            evaluated_ms: None,
            history: Vec::new(),
            incident: None,
            timeline: Vec::new(),
            created_by: by.to_owned(),
            created_ms: now,
            finished_ms: None,
            revision: 0,
            engine_term: None,
        };
        r.log(
            now,
            format!(
                "started by {by}: {}@{} on {} device(s), {} (baseline {}), bake {} s",
                r.spec.model,
                r.spec.version,
                r.targets.len(),
                r.spec.movement(),
                r.baseline,
                r.spec.bake_secs
            ),
        );
        if record.stage != Stage::Production && r.spec.strategy != Strategy::Shadow {
            let _ = registry.transition(
                &r.spec.model,
                &r.spec.version,
                Stage::Canary,
                by,
                &format!("rollout {}", r.id),
            );
        }
        self.repo.put(&mut r, Writer::Operator).map_err(|e| match e {
            // Another replica stored a rollout under this id first (ids are handed out once:
            // only a store that lost its counter does this).
            StoreError::Stale { key, .. } => RolloutError::Conflict(format!("{key} exists already")),
            other => RolloutError::Store(other),
        })?;
        Ok(r)
    }

    /// `pause`, `resume`, `promote`, `abort --keep` / `abort --revert` (returns what to publish).
    ///
    /// The rollout is read again and the command applied again when the engine (on another
    /// replica) stored a step in between: an operator's pause is never lost to a tick, nor a
    /// tick's step to a pause.
    pub fn command(&self, id: &str, verb: &str, by: &str) -> Result<(Rollout, Vec<Outgoing>), RolloutError> {
        const ATTEMPTS: usize = 5;
        let _g = self.guard();
        let mut sent = Vec::new();
        let mut attempt = 1;
        loop {
            let outcome = self.apply_command(id, verb, by, &mut sent);
            match outcome {
                Err(RolloutError::Store(StoreError::Stale { .. })) if attempt < ATTEMPTS => {
                    tracing::debug!(rollout = id, verb, attempt, "the rollout changed meanwhile: again");
                    attempt += 1;
                }
                outcome => return outcome.map(|r| (r, sent)),
            }
        }
    }

    /// One attempt of [`Rollouts::command`]; what it sends goes to `out` as it is sent.
    fn apply_command(
        &self,
        id: &str,
        verb: &str,
        by: &str,
        out: &mut Vec<Outgoing>,
    ) -> Result<Rollout, RolloutError> {
        let now = self.clock.now_ms();
        let mut r = self.repo.get(id)?.ok_or_else(|| RolloutError::NotFound(format!("no rollout `{id}`")))?;
        if !r.phase.active() {
            return Err(RolloutError::Conflict(format!("rollout {id} has ended ({})", r.phase.as_str())));
        }
        match verb {
            "pause" => {
                if r.phase == Phase::Paused {
                    return Ok(r);
                }
                r.phase = Phase::Paused;
                r.paused_reason = Some(format!("paused by {by}"));
                r.log(now, format!("paused by {by} at {}", r.label()));
            }
            "resume" => {
                if r.phase != Phase::Paused {
                    return Err(RolloutError::Conflict(format!("rollout {id} is not paused")));
                }
                r.phase = Phase::Applying;
                r.paused_reason = None;
                r.extensions = 0;
                r.wave_started_ms = now;
                r.bake_started_ms = None;
                r.bake_until_ms = None;
                r.log(
                    now,
                    format!("resumed by {by} at {}: the bake starts again once the wave runs", r.label()),
                );
            }
            "promote" => {
                r.promoted = true;
                r.wave = r.steps() - 1;
                r.phase = Phase::Applying;
                r.paused_reason = None;
                r.wave_started_ms = now;
                r.log(
                    now,
                    format!(
                        "promoted by {by}: every target gets {} now, without further gates",
                        r.spec.version
                    ),
                );
            }
            "abort-keep" => {
                r.phase = Phase::Aborted;
                r.finished_ms = Some(now);
                r.log(
                    now,
                    format!("aborted by {by}; {} moved device(s) keep {}", r.moved.len(), r.spec.version),
                );
            }
            "abort-revert" => {
                out.extend(revert(&self.deployer, &r, by)?);
                r.phase = Phase::Aborted;
                r.finished_ms = Some(now);
                r.log(
                    now,
                    format!("aborted by {by}; {} moved device(s) sent back to {}", r.moved.len(), r.baseline),
                );
                let _ = self.deployer.registry().transition(
                    &r.spec.model,
                    &r.spec.version,
                    Stage::Validated,
                    by,
                    &format!("rollout {id} aborted"),
                );
            }
            other => return Err(RolloutError::Invalid(format!("unknown action `{other}`"))),
        }
        self.repo.put(&mut r, Writer::Operator)?;
        Ok(r)
    }
}

/// The engine loop: one tick a second until shutdown; publishes what each tick sends.
pub async fn run(rollouts: Arc<Rollouts>, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let engine = Arc::clone(&rollouts);
        match tokio::task::spawn_blocking(move || engine.tick()).await {
            Ok(Ok(outgoing)) => rollouts.deployer.publish(outgoing).await,
            Ok(Err(e)) => tracing::error!(error = %e, "rollout engine step failed"),
            Err(e) => tracing::error!(error = %e, "rollout engine step panicked"),
        }
    }
}

#[cfg(test)]
mod life_tests;
#[cfg(test)]
mod tests;
