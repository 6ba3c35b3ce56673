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
//! killed at any moment resumes every rollout where it was: timers are absolute times.

pub mod bake;
pub mod gates;
mod persistence;
pub mod plan;
mod records;
mod sends;
pub mod simulate;
mod spec;
pub mod stats;

pub use records::{DeviceProgress, Incident, Phase, Rollout, RolloutView, TimelineEntry};
use sends::{revert, send_step, watchdog_tripped};
pub use spec::{OfflinePolicy, RolloutSpec, Step};

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::api::AppState;
use crate::desired::{Outgoing, matches};
use crate::quality::Labels;
use crate::registry::Stage;
use crate::slo::Slos;
use crate::store::{DeviceRecord, Store, StoreError, now_ms};
use bake::BakeDecision;
use gates::{Evidence, GateResult};

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
}

/// The engine's state and stores.
pub struct Rollouts {
    tree: sled::Tree,
    incidents: sled::Tree,
    store: Store,
    slos: Slos,
    labels: Labels,
    /// Serialises changes between the engine and operator requests.
    lock: Mutex<()>,
}

impl std::fmt::Debug for Rollouts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rollouts").finish_non_exhaustive()
    }
}

/// How a device looks now: `online`, `stale`, `offline` or `never_seen`.
pub fn liveness(d: &DeviceRecord, fleet: &crate::config::FleetConfig, now: u64) -> &'static str {
    let Some(seen) = d.last_seen_ms else { return "never_seen" };
    let age = now.saturating_sub(seen);
    if d.presence.as_deref() == Some("offline") || age > fleet.offline_after_secs * 1000 {
        "offline"
    } else if age > fleet.stale_after_secs * 1000 {
        "stale"
    } else {
        "online"
    }
}

fn actual_of<'a>(
    d: Option<&'a DeviceRecord>,
    model: &str,
) -> Option<&'a outpost_shared::protocol::messages::ModelState> {
    d?.models.iter().find(|m| m.name == model && m.slot == "primary")
}

impl Rollouts {
    pub fn open(store: &Store) -> Result<Rollouts, StoreError> {
        Ok(Rollouts {
            tree: store.tree("rollouts")?,
            incidents: store.tree("incidents")?,
            store: store.clone(),
            slos: Slos::open(store)?,
            labels: Labels::open(store)?,
            lock: Mutex::new(()),
        })
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The view of one rollout with its devices' live state.
    pub fn view(
        &self,
        r: Rollout,
        fleet: &crate::config::FleetConfig,
        desired: &crate::desired::Desired,
    ) -> Result<RolloutView, StoreError> {
        let now = now_ms();
        let devices: BTreeMap<String, DeviceRecord> =
            self.store.devices()?.into_iter().map(|d| (d.id.clone(), d)).collect();
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
                actual_state: actual.map(|m| m.state.clone()),
                liveness: d.map_or("never_seen", |d| liveness(d, fleet, now)).to_owned(),
                candidate: d.and_then(|d| {
                    d.models
                        .iter()
                        .find(|m| m.name == r.spec.model && m.slot != "primary")
                        .map(|m| format!("{} {} ({})", m.version, m.slot, m.state))
                }),
                skipped: r.skipped.contains(id),
            });
        }
        Ok(RolloutView { rollout: r, devices: progress })
    }

    /// How long `spec`'s gates need on the targets' traffic of the last ten minutes
    /// ([`plan::plan`]); nothing is started or written.
    pub fn plan(&self, st: &AppState, spec: &RolloutSpec) -> Result<plan::Plan, RolloutError> {
        const WINDOW_SECS: u64 = 600;
        spec.validate().map_err(RolloutError::Invalid)?;
        st.registry.get(&spec.model, &spec.version).map_err(|e| RolloutError::NotFound(e.to_string()))?;
        let targets: Vec<String> =
            st.store.devices()?.into_iter().filter(|d| matches(d, &spec.selector)).map(|d| d.id).collect();
        if targets.is_empty() {
            return Err(RolloutError::Invalid("the selector matches no enrolled device".into()));
        }
        let now = now_ms();
        let from = now.saturating_sub(WINDOW_SECS * 1000);
        let set: BTreeSet<&str> = targets.iter().map(String::as_str).collect();
        let keep = |d: &str, v: &str| set.contains(d) && v != spec.version;
        let (requests, errors, latency_us, _) = self.slos.traffic_where(&spec.model, from, now, keep)?;
        // A fleet that started reporting minutes ago has only those minutes of data (a window
        // covers about one report interval before its end).
        let oldest = self.slos.oldest_window_where(&spec.model, from, now, keep)?;
        let window_secs =
            oldest.map_or(WINDOW_SECS, |o| (now.saturating_sub(o) / 1000 + 10).clamp(10, WINDOW_SECS));
        let mut running = BTreeSet::new();
        for id in &targets {
            if let Some(m) = st.desired.get(id)?.and_then(|rec| rec.models.get(&spec.model).cloned()) {
                running.insert(m.version);
            }
        }
        let (mut labelled, mut correct) = (0, 0);
        for version in running.iter().filter(|v| **v != spec.version) {
            let (l, c) = self.labels.correct_on(&spec.model, version, &targets, from, now)?;
            labelled += l;
            correct += c;
        }
        let per_device_s = (targets.len() as u64 * window_secs) as f64;
        let rates = plan::FleetRates {
            targets: targets.len(),
            window_secs,
            requests_per_s: requests as f64 / per_device_s,
            labels_per_s: labelled as f64 / per_device_s,
            error_rate: if requests > 0 { errors as f64 / requests as f64 } else { 0.0 },
            accuracy: (labelled > 0).then(|| correct as f64 / labelled as f64),
            latency_us,
        };
        plan::plan(spec, &rates).map_err(RolloutError::Invalid)
    }

    /// Starts a rollout (validated spec; the version must have passed validation).
    pub fn start(&self, st: &AppState, spec: RolloutSpec, by: &str) -> Result<Rollout, RolloutError> {
        spec.validate().map_err(RolloutError::Invalid)?;
        let record =
            st.registry.get(&spec.model, &spec.version).map_err(|e| RolloutError::NotFound(e.to_string()))?;
        if record.validation_passed != Some(true) {
            return Err(RolloutError::Conflict(format!(
                "{} cannot roll out: it has not passed validation (`outpostctl model validate`)",
                record.id()
            )));
        }
        let _g = self.guard();
        if let Some(active) =
            self.list()?.into_iter().find(|r| r.phase.active() && r.spec.model == spec.model)
        {
            return Err(RolloutError::Conflict(format!(
                "rollout {} of {}@{} is still {}: pause, promote or abort it first",
                active.id,
                active.spec.model,
                active.spec.version,
                active.phase.as_str()
            )));
        }
        let mut targets: Vec<String> =
            st.store.devices()?.into_iter().filter(|d| matches(d, &spec.selector)).map(|d| d.id).collect();
        targets.sort();
        if targets.is_empty() {
            return Err(RolloutError::Invalid("the selector matches no enrolled device".into()));
        }
        let mut previous = BTreeMap::new();
        let mut running: BTreeMap<String, usize> = BTreeMap::new();
        for id in &targets {
            let before = st.desired.get(id)?.and_then(|rec| rec.models.get(&spec.model).cloned());
            if let Some(m) = &before {
                *running.entry(m.version.clone()).or_default() += 1;
            }
            previous.insert(id.clone(), before);
        }
        let production = st.registry.production(&spec.model).ok().flatten().map(|r| r.version);
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
        let now = now_ms();
        let mut r = Rollout {
            id: self.next_id("r")?,
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
            incident: None,
            timeline: Vec::new(),
            created_by: by.to_owned(),
            created_ms: now,
            finished_ms: None,
        };
        r.log(format!(
            "started by {by}: {}@{} on {} device(s) in waves {:?} (baseline {}), bake {} s",
            r.spec.model,
            r.spec.version,
            r.targets.len(),
            r.spec.waves,
            r.baseline,
            r.spec.bake_secs
        ));
        if record.stage != Stage::Production && r.spec.strategy != "shadow" {
            let _ = st.registry.transition(
                &r.spec.model,
                &r.spec.version,
                Stage::Canary,
                by,
                &format!("rollout {}", r.id),
            );
        }
        self.put(&r)?;
        Ok(r)
    }

    /// `pause`, `resume`, `promote`, `abort --keep` / `abort --revert` (returns what to publish).
    pub fn command(
        &self,
        st: &AppState,
        id: &str,
        verb: &str,
        by: &str,
    ) -> Result<(Rollout, Vec<Outgoing>), RolloutError> {
        let _g = self.guard();
        let mut r = self.get(id)?.ok_or_else(|| RolloutError::NotFound(format!("no rollout `{id}`")))?;
        if !r.phase.active() {
            return Err(RolloutError::Conflict(format!("rollout {id} has ended ({})", r.phase.as_str())));
        }
        let mut out = Vec::new();
        match verb {
            "pause" => {
                if r.phase == Phase::Paused {
                    return Ok((r, out));
                }
                r.phase = Phase::Paused;
                r.paused_reason = Some(format!("paused by {by}"));
                r.log(format!("paused by {by} at {}", r.label()));
            }
            "resume" => {
                if r.phase != Phase::Paused {
                    return Err(RolloutError::Conflict(format!("rollout {id} is not paused")));
                }
                r.phase = Phase::Applying;
                r.paused_reason = None;
                r.extensions = 0;
                r.wave_started_ms = now_ms();
                r.bake_started_ms = None;
                r.bake_until_ms = None;
                r.log(format!("resumed by {by} at {}: the bake starts again once the wave runs", r.label()));
            }
            "promote" => {
                r.promoted = true;
                r.wave = r.steps() - 1;
                r.phase = Phase::Applying;
                r.paused_reason = None;
                r.wave_started_ms = now_ms();
                r.log(format!(
                    "promoted by {by}: every target gets {} now, without further gates",
                    r.spec.version
                ));
            }
            "abort-keep" => {
                r.phase = Phase::Aborted;
                r.finished_ms = Some(now_ms());
                r.log(format!("aborted by {by}; {} moved device(s) keep {}", r.moved.len(), r.spec.version));
            }
            "abort-revert" => {
                out = revert(st, &r, by)?;
                r.phase = Phase::Aborted;
                r.finished_ms = Some(now_ms());
                r.log(format!(
                    "aborted by {by}; {} moved device(s) sent back to {}",
                    r.moved.len(),
                    r.baseline
                ));
                let _ = st.registry.transition(
                    &r.spec.model,
                    &r.spec.version,
                    Stage::Validated,
                    by,
                    &format!("rollout {id} aborted"),
                );
            }
            other => return Err(RolloutError::Invalid(format!("unknown action `{other}`"))),
        }
        self.put(&r)?;
        Ok((r, out))
    }

    /// Evidence of `version` on `devices` for windows in `[from, to]`.
    fn evidence(
        &self,
        model: &str,
        version: &str,
        devices: &[String],
        from: u64,
        to: u64,
    ) -> Result<Evidence, StoreError> {
        let set: BTreeSet<&str> = devices.iter().map(String::as_str).collect();
        let (requests, errors, latency_us, n) =
            self.slos.traffic_where(model, from, to, |d, v| v == version && set.contains(d))?;
        let (labelled, correct) = self.labels.correct_on(model, version, devices, from, to)?;
        let (compared, agreed) =
            self.slos.shadow_where(model, from, to, |d, v| v == version && set.contains(d))?;
        Ok(Evidence { requests, errors, latency_us, labelled, correct, compared, agreed, devices: n })
    }

    /// The gates' verdicts for the current bake, on the evidence [`bake::evidence_window`] names.
    fn judge(&self, r: &mut Rollout, now: u64) -> Result<(), StoreError> {
        let Ok(gates) = r.spec.validate() else { return Ok(()) };
        let step = r.step_at(r.wave);
        let w = bake::evidence_window(step, r.created_ms, now, r.spec.bake_secs);
        let moved: Vec<String> = r.moved.iter().filter(|d| !r.skipped.contains(d)).cloned().collect();
        let candidate = self.evidence(&r.spec.model, &r.spec.version, &moved, w.from_ms, w.to_ms)?;
        let baseline = self.evidence(&r.spec.model, &r.baseline, &r.targets, w.baseline_from_ms, w.to_ms)?;
        let since = (now.saturating_sub(w.from_ms)) / 1000;
        r.baseline_scope = if w.same_devices {
            format!(
                "{} as the primary on the same {} device(s) in the same {since} s since the rollout began",
                r.baseline,
                r.targets.len()
            )
        } else {
            format!(
                "{} on the {} target(s) from {} s before the rollout began (the devices not yet moved since), \
                 against {} on {} moved device(s) over the rollout's {since} s",
                r.baseline,
                r.targets.len(),
                r.spec.bake_secs,
                r.spec.version,
                moved.len()
            )
        };
        let t = r.spec.thresholds(gates.len());
        r.gates = gates.iter().map(|g| gates::evaluate(g, &candidate, &baseline, t)).collect();
        r.evaluated_ms = Some(now);
        Ok(())
    }

    /// Rolls the rollout back: every moved device to its previous version, an incident.
    fn roll_back(
        &self,
        st: &AppState,
        r: &mut Rollout,
        reason: String,
        gate: Option<GateResult>,
    ) -> Result<Vec<Outgoing>, StoreError> {
        let out = revert(st, r, "rollout-engine").map_err(|e| match e {
            RolloutError::Store(s) => s,
            other => StoreError::Corrupt { key: format!("rollouts/{}", r.id), detail: other.to_string() },
        })?;
        r.log(format!("ROLLED BACK: {reason}; {} device(s) sent back to {}", r.moved.len(), r.baseline));
        r.phase = Phase::RolledBack;
        r.finished_ms = Some(now_ms());
        let incident = Incident {
            id: self.next_id("inc")?,
            rollout: r.id.clone(),
            model: r.spec.model.clone(),
            version: r.spec.version.clone(),
            baseline: r.baseline.clone(),
            opened_ms: now_ms(),
            reason: reason.clone(),
            gate,
            gates: r.gates.clone(),
            baseline_scope: r.baseline_scope.clone(),
            devices_rolled_back: r.moved.clone(),
            timeline: r.timeline.clone(),
            closed_ms: None,
            closed_by: None,
        };
        self.put_incident(&incident)?;
        r.incident = Some(incident.id.clone());
        st.metrics.rollout_rollbacks.with_label_values(&[&r.spec.model]).inc();
        tracing::warn!(
            rollout = r.id,
            incident = incident.id,
            model = r.spec.model,
            version = r.spec.version,
            reason,
            "rollout rolled back"
        );
        let _ = st.registry.transition(
            &r.spec.model,
            &r.spec.version,
            Stage::Validated,
            "rollout-engine",
            &format!("rolled back by rollout {} ({})", r.id, incident.id),
        );
        Ok(out)
    }

    /// One step of every active rollout (blocking); returns the desired states to publish.
    pub fn tick(&self, st: &AppState) -> Result<Vec<Outgoing>, StoreError> {
        let _g = self.guard();
        let mut out = Vec::new();
        let mut active = 0;
        for mut r in self.list()?.into_iter().filter(|r| r.phase.active()) {
            active += 1;
            let before = r.clone();
            out.extend(self.step(st, &mut r)?);
            if r != before {
                self.put(&r)?;
            }
        }
        st.metrics.rollouts_active.set(active);
        Ok(out)
    }

    fn step(&self, st: &AppState, r: &mut Rollout) -> Result<Vec<Outgoing>, StoreError> {
        let now = now_ms();
        let mut out = Vec::new();
        if matches!(r.phase, Phase::Applying | Phase::Baking)
            && let Some((device, message)) = watchdog_tripped(&st.store.devices()?, r)
        {
            let reason =
                format!("device {device}'s watchdog switched {} back on its own ({message})", r.spec.version);
            out.extend(self.roll_back(st, r, reason, None)?);
            return Ok(out);
        }
        match r.phase {
            Phase::Paused | Phase::Succeeded | Phase::RolledBack | Phase::Aborted => {}
            Phase::Applying => {
                let wave: Vec<String> = r.wave_devices(r.wave).to_vec();
                let step = r.step_at(r.wave);
                let new: Vec<String> = wave.iter().filter(|d| !r.moved.contains(d)).cloned().collect();
                if !new.is_empty() {
                    r.moved.extend(new);
                    // Written first: a restart after this point re-sends, never forgets a device.
                    self.put(r)?;
                }
                let sent = send_step(st, &wave, &r.spec.model, &r.spec.version, step)?;
                if !sent.is_empty() {
                    let what = match step {
                        Step::Wave(_) | Step::Switch => "as the primary version".to_owned(),
                        Step::Canary(p) => format!("as a canary answering {p}% of requests"),
                        Step::Standby => "as a standby".to_owned(),
                        Step::Shadow => "as a shadow answering copies of requests".to_owned(),
                    };
                    r.log(format!(
                        "{}: sending {} {what} to {} device(s)",
                        r.label(),
                        r.spec.version,
                        sent.len()
                    ));
                    out.extend(sent);
                }
                let devices: BTreeMap<String, DeviceRecord> =
                    st.store.devices()?.into_iter().map(|d| (d.id.clone(), d)).collect();
                let mut waiting = Vec::new();
                for id in &wave {
                    if r.skipped.contains(id) {
                        continue;
                    }
                    let d = devices.get(id);
                    let actual = actual_of(d, &r.spec.model);
                    let slot = match step {
                        Step::Canary(_) => "canary",
                        Step::Standby => "standby",
                        Step::Shadow => "shadow",
                        Step::Wave(_) | Step::Switch => "primary",
                    };
                    let running = d.is_some_and(|d| {
                        d.models.iter().any(|m| {
                            m.name == r.spec.model
                                && m.version == r.spec.version
                                && m.slot == slot
                                && m.state == "ready"
                        })
                    });
                    if running {
                        continue;
                    }
                    if let Some(m) = actual.filter(|m| m.version == r.spec.version && m.state == "failed") {
                        let why = m.reason.clone().unwrap_or_else(|| "no reason given".into());
                        out.extend(self.roll_back(
                            st,
                            r,
                            format!("device {id} failed to run {}: {why}", r.spec.version),
                            None,
                        )?);
                        return Ok(out);
                    }
                    let live = d.map_or("never_seen", |d| liveness(d, &st.config.fleet, now));
                    if live != "online" {
                        match r.spec.offline {
                            OfflinePolicy::Wait => {}
                            OfflinePolicy::Skip => {
                                r.skipped.push(id.clone());
                                r.log(format!(
                                    "{}: skipping {id} ({live}); it gets {} when it returns",
                                    r.label(),
                                    r.spec.version
                                ));
                                continue;
                            }
                            OfflinePolicy::Fail => {
                                let reason =
                                    format!("device {id} is {live} during {} (policy: fail)", r.label());
                                out.extend(self.roll_back(st, r, reason, None)?);
                                return Ok(out);
                            }
                        }
                    }
                    waiting.push(id.clone());
                }
                if waiting.is_empty() {
                    if r.promoted {
                        self.succeed(st, r);
                    } else if step == Step::Standby {
                        r.log(format!(
                            "{}: every target runs {} as a standby, validated; switching them all at once",
                            r.label(),
                            r.spec.version
                        ));
                        r.wave += 1;
                        r.wave_started_ms = now;
                    } else {
                        r.phase = Phase::Baking;
                        r.bake_started_ms = Some(now);
                        r.bake_until_ms = Some(now + r.spec.bake_secs * 1000);
                        r.extensions = 0;
                        r.log(format!(
                            "{}: {} device(s) run {}; baking {} s",
                            r.label(),
                            wave.len() - r.skipped.iter().filter(|s| wave.contains(s)).count(),
                            r.spec.version,
                            r.spec.bake_secs
                        ));
                    }
                } else if now.saturating_sub(r.wave_started_ms) > r.spec.apply_timeout_secs * 1000
                    && waiting.iter().any(|id| {
                        devices.get(id).is_some_and(|d| liveness(d, &st.config.fleet, now) == "online")
                    })
                {
                    // Online yet not running it in time (quiet devices are the offline policy's).
                    let reason = format!(
                        "{}: {} device(s) did not report {} ready within {} s: {}",
                        r.label(),
                        waiting.len(),
                        r.spec.version,
                        r.spec.apply_timeout_secs,
                        waiting.join(", ")
                    );
                    out.extend(self.roll_back(st, r, reason, None)?);
                }
            }
            Phase::Baking => {
                self.judge(r, now)?;
                let decision = bake::bake_decision(
                    &r.gates,
                    now,
                    r.bake_until_ms.unwrap_or(0),
                    r.extensions,
                    r.spec.max_extensions,
                );
                match decision {
                    BakeDecision::RollBack(failed) => {
                        let reason = format!(
                            "gate `{}` failed at {}: {} (baseline: {})",
                            failed.gate,
                            r.label(),
                            failed.detail,
                            r.baseline_scope
                        );
                        out.extend(self.roll_back(st, r, reason, Some(failed))?);
                    }
                    BakeDecision::Continue => {}
                    BakeDecision::Passed => {
                        let summary: Vec<String> =
                            r.gates.iter().map(|g| format!("{} pass ({})", g.gate, g.detail)).collect();
                        r.log(format!(
                            "{}: gates passed against {}: {}",
                            r.label(),
                            r.baseline_scope,
                            summary.join("; ")
                        ));
                        if r.step_at(r.wave) == Step::Shadow {
                            // Evidence gathered; the shadow goes, nothing switched.
                            out.extend(revert(st, r, "rollout-engine").map_err(|e| StoreError::Corrupt {
                                key: format!("rollouts/{}", r.id),
                                detail: e.to_string(),
                            })?);
                            r.phase = Phase::Succeeded;
                            r.finished_ms = Some(now);
                            r.log(format!(
                                "succeeded: {}@{} matched its primary in shadow; the shadow is removed and nothing \
                                 switched — roll it out with `canary` or `blue-green`",
                                r.spec.model, r.spec.version
                            ));
                        } else if r.wave + 1 == r.steps() {
                            self.succeed(st, r);
                        } else {
                            r.wave += 1;
                            r.phase = Phase::Applying;
                            r.wave_started_ms = now;
                            r.bake_started_ms = None;
                            r.bake_until_ms = None;
                        }
                    }
                    BakeDecision::Extend(why) => {
                        r.extensions += 1;
                        r.bake_until_ms = Some(now + r.spec.bake_secs * 1000);
                        r.log(format!(
                            "{}: INCONCLUSIVE ({}); bake extended {}/{}",
                            r.label(),
                            why.join("; "),
                            r.extensions,
                            r.spec.max_extensions
                        ));
                    }
                    BakeDecision::Pause(why) => {
                        r.phase = Phase::Paused;
                        let reason =
                            format!("inconclusive after {} extension(s): {}", r.extensions, why.join("; "));
                        r.log(format!("{}: PAUSED, {reason}", r.label()));
                        r.paused_reason = Some(reason);
                    }
                }
            }
        }
        Ok(out)
    }

    fn succeed(&self, st: &AppState, r: &mut Rollout) {
        r.phase = Phase::Succeeded;
        r.finished_ms = Some(now_ms());
        let note = format!("rollout {}", r.id);
        match st.registry.transition(
            &r.spec.model,
            &r.spec.version,
            Stage::Production,
            "rollout-engine",
            &note,
        ) {
            Ok(_) => r.log(format!("succeeded: {}@{} is production", r.spec.model, r.spec.version)),
            Err(e) => r.log(format!("succeeded, but the registry refused the stage change: {e}")),
        }
    }

    /// Open incidents, for the alert engine.
    pub fn open_incidents(&self) -> Vec<Incident> {
        self.incidents().unwrap_or_default().into_iter().filter(|i| i.closed_ms.is_none()).collect()
    }
}

/// The engine loop: one tick a second until shutdown.
pub async fn run(state: Arc<AppState>, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let st = Arc::clone(&state);
        let result = tokio::task::spawn_blocking(move || st.rollouts.tick(&st)).await;
        match result {
            Ok(Ok(outgoing)) => {
                for o in outgoing {
                    if state.outgoing.send(o).await.is_err() {
                        tracing::error!("the broker link is gone; desired states go out on reconnect");
                    }
                }
            }
            Ok(Err(e)) => tracing::error!(error = %e, "rollout engine step failed"),
            Err(e) => tracing::error!(error = %e, "rollout engine step panicked"),
        }
    }
}

#[cfg(test)]
mod tests;
