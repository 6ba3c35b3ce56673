//! What a rollout is as stored and shown: its phase, timeline, incident and the per-device view.

use std::collections::BTreeMap;

use outpost_shared::protocol::messages::DesiredModel;
use serde::{Deserialize, Serialize};

use super::gates::GateResult;
use super::{RolloutSpec, Step};

/// Where a rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Sending the wave's desired states and waiting for its devices to report the version.
    Applying,
    /// The wave runs the version; gates are watched until the bake ends.
    Baking,
    Paused,
    Succeeded,
    RolledBack,
    Aborted,
}

impl Phase {
    pub fn active(self) -> bool {
        matches!(self, Phase::Applying | Phase::Baking | Phase::Paused)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Applying => "applying",
            Phase::Baking => "baking",
            Phase::Paused => "paused",
            Phase::Succeeded => "succeeded",
            Phase::RolledBack => "rolled_back",
            Phase::Aborted => "aborted",
        }
    }
}

/// One line of a rollout's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimelineEntry {
    pub at_ms: u64,
    pub message: String,
}

/// The gates judged once, as the analysis over time keeps them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub at_ms: u64,
    /// The step (wave or canary step) being baked.
    pub step: usize,
    /// Bake extensions granted in this step so far (inconclusive gates).
    pub extension: u32,
    pub gates: Vec<GatePoint>,
}

/// One gate in an [`Evaluation`]: its verdict and the values it compared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GatePoint {
    pub gate: String,
    pub verdict: super::gates::Verdict,
    pub candidate: Option<f64>,
    pub baseline: Option<f64>,
    pub limit: Option<f64>,
}

impl Evaluation {
    /// Points a step's bake is drawn with, about.
    pub const POINTS_PER_STEP: u64 = 60;

    /// The least time between two kept evaluations of one step: a sixtieth of the bake, at
    /// least a second.
    pub fn spacing_ms(bake_secs: u64) -> u64 {
        (bake_secs.saturating_mul(1000) / Self::POINTS_PER_STEP).max(1000)
    }

    /// `gates` as kept.
    pub fn of(at_ms: u64, step: usize, extension: u32, gates: &[GateResult]) -> Evaluation {
        Evaluation {
            at_ms,
            step,
            extension,
            gates: gates
                .iter()
                .map(|g| GatePoint {
                    gate: g.gate.clone(),
                    verdict: g.verdict,
                    candidate: g.candidate,
                    baseline: g.baseline,
                    limit: g.limit,
                })
                .collect(),
        }
    }

    fn verdicts(&self) -> Vec<super::gates::Verdict> {
        self.gates.iter().map(|g| g.verdict).collect()
    }
}

/// Evaluations a rollout keeps at most (the oldest go first): a bound on the stored record.
pub const MAX_HISTORY: usize = 2000;

/// A rollout as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    pub id: String,
    pub spec: RolloutSpec,
    /// The version the candidate is compared with and rolled back to.
    pub baseline: String,
    /// The targeted devices, in wave order.
    pub targets: Vec<String>,
    /// What each target's desired state said for the model before the rollout.
    pub previous: BTreeMap<String, Option<DesiredModel>>,
    pub phase: Phase,
    /// Index into `spec.waves`.
    pub wave: usize,
    /// Devices sent the candidate so far.
    pub moved: Vec<String>,
    /// Devices the `skip` policy stopped waiting for.
    pub skipped: Vec<String>,
    pub wave_started_ms: u64,
    pub bake_started_ms: Option<u64>,
    pub bake_until_ms: Option<u64>,
    pub extensions: u32,
    /// Operator asked to skip the remaining waves.
    pub promoted: bool,
    pub paused_reason: Option<String>,
    /// The newest gate evaluation, and what the baseline side was.
    pub gates: Vec<GateResult>,
    pub baseline_scope: String,
    pub evaluated_ms: Option<u64>,
    /// The gates' evaluations over time, for the analysis chart: at most one per
    /// [`Evaluation::spacing_ms`] within a step, plus every change of a verdict.
    #[serde(default)]
    pub history: Vec<Evaluation>,
    pub incident: Option<String>,
    pub timeline: Vec<TimelineEntry>,
    pub created_by: String,
    pub created_ms: u64,
    pub finished_ms: Option<u64>,
    /// How many times it was stored: a write names the revision it read, and one that finds
    /// another stored meanwhile (another replica's engine or API) is refused
    /// ([`crate::base::store::StoreError::Stale`]).
    #[serde(default)]
    pub revision: u64,
    /// On PostgreSQL: the `rollouts` lease term of the replica that last stepped it; a new
    /// term stepping it is a takeover, written in the timeline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine_term: Option<i64>,
}

impl Rollout {
    /// What each target ran before the rollout (targets that ran no version are left out).
    pub fn previous_versions(&self) -> BTreeMap<String, String> {
        self.previous
            .iter()
            .filter_map(|(device, m)| m.as_ref().map(|m| (device.clone(), m.version.clone())))
            .collect()
    }

    /// Devices per version the targets ran before the rollout: the baseline's mix.
    pub fn baseline_mix(&self) -> BTreeMap<String, usize> {
        let mut mix = BTreeMap::new();
        for version in self.previous_versions().into_values() {
            *mix.entry(version).or_insert(0) += 1;
        }
        mix
    }

    /// The baseline as people read it: `1.0.0` when every target ran it, else the mix
    /// (`1.1.0 on 4 devices, 1.0.0 on 1 device`), the most common first.
    pub fn baseline_mix_text(&self) -> String {
        let mix = self.baseline_mix();
        if mix.len() <= 1 {
            return self.baseline.clone();
        }
        let mut parts: Vec<(String, usize)> = mix.into_iter().collect();
        parts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        parts
            .iter()
            .map(|(v, n)| format!("{v} on {}", crate::base::numbers::count(*n, "device")))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Keeps `e` in the history when its step's last kept evaluation is older than the spacing,
    /// when a verdict changed, or when it opens a step or an extension.
    pub fn remember(&mut self, e: Evaluation) {
        let spacing = Evaluation::spacing_ms(self.spec.bake_secs);
        let keep = match self.history.last() {
            None => true,
            Some(last) => {
                last.step != e.step
                    || last.extension != e.extension
                    || last.verdicts() != e.verdicts()
                    || e.at_ms.saturating_sub(last.at_ms) >= spacing
            }
        };
        if keep {
            self.history.push(e);
            if self.history.len() > MAX_HISTORY {
                let extra = self.history.len() - MAX_HISTORY;
                self.history.drain(..extra);
            }
        }
    }

    pub(super) fn step_at(&self, index: usize) -> Step {
        self.spec.plan().get(index).copied().unwrap_or(Step::Switch)
    }

    pub(super) fn steps(&self) -> usize {
        self.spec.plan().len()
    }

    /// Devices the step at `index` involves (a wave: the first ones; otherwise all targets).
    pub fn wave_devices(&self, index: usize) -> &[String] {
        match self.step_at(index) {
            Step::Wave(pct) => {
                let n = ((pct / 100.0) * self.targets.len() as f64).ceil() as usize;
                &self.targets[..n.clamp(1, self.targets.len())]
            }
            _ => &self.targets,
        }
    }

    pub(super) fn log(&mut self, at_ms: u64, message: impl Into<String>) {
        let message = message.into();
        tracing::info!(rollout = self.id, model = self.spec.model, version = self.spec.version, "{message}");
        self.timeline.push(TimelineEntry { at_ms, message });
    }

    pub(super) fn label(&self) -> String {
        let (i, n) = (self.wave + 1, self.steps());
        match self.step_at(self.wave) {
            Step::Wave(p) => format!("wave {i}/{n} ({p}%)"),
            Step::Canary(p) => format!("step {i}/{n} (canary {p}% of requests)"),
            Step::Standby => format!("step {i}/{n} (standby on every target)"),
            Step::Switch => format!("step {i}/{n} (switch every target)"),
            Step::Shadow => format!("step {i}/{n} (shadow on every target)"),
        }
    }
}

/// An automatic rollback, kept for people.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    pub id: String,
    pub rollout: String,
    pub model: String,
    pub version: String,
    pub baseline: String,
    pub opened_ms: u64,
    /// Why the rollout was rolled back, in a sentence.
    pub reason: String,
    /// The gate that failed (when a gate did), with its numbers.
    pub gate: Option<GateResult>,
    /// Every gate's verdict at that moment.
    pub gates: Vec<GateResult>,
    pub baseline_scope: String,
    pub devices_rolled_back: Vec<String>,
    pub timeline: Vec<TimelineEntry>,
    pub closed_ms: Option<u64>,
    pub closed_by: Option<String>,
}

/// A target's progress, for `rollout status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceProgress {
    pub device: String,
    /// The wave it belongs to (1-based).
    pub wave: usize,
    pub desired: Option<String>,
    pub actual: Option<String>,
    /// `ready`, `loading`, `failed` (the actual model's state), or none.
    pub actual_state: Option<outpost_shared::protocol::vocab::LoadState>,
    /// `online`, `stale`, `offline` or `never_seen`.
    pub liveness: String,
    /// The candidate slot the device reports, e.g. `1.1.0 canary (ready)`.
    pub candidate: Option<String>,
    pub skipped: bool,
}

/// A rollout with its devices' live state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutView {
    #[serde(flatten)]
    pub rollout: Rollout,
    /// Devices per version the targets ran before the rollout: what the baseline side is.
    #[serde(default)]
    pub baseline_mix: BTreeMap<String, usize>,
    pub devices: Vec<DeviceProgress>,
}
