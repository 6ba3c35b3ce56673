//! The rules of a bake, as pure functions: which evidence a step is judged on, and what the
//! gates' verdicts make the engine do. The engine ([`super::Rollouts`]) and the gate simulator
//! ([`super::simulate`]) both call these, so the simulator's operating characteristics are the
//! engine's.
//!
//! **Evidence spans the rollout.** The candidate's evidence is everything the new version did
//! on the moved devices since the rollout began — it is not reset at each wave, because the
//! devices moved earlier keep running it. The gates' confidence sequences ([`super::stats`]) are
//! valid at every look, so one budget covers every look of every step, and a regression seen in
//! wave 1 is still counted in wave 3. The baseline is the old version on the targets:
//! - canary and shadow steps: on the same devices in the same window (both versions run on each
//!   device, so host load hits both alike);
//! - waves and switches: on the targets since a lookback of one bake before the rollout began
//!   (the not-yet-moved devices keep adding to it during the rollout), so a last wave or a
//!   blue-green switch, with no device left on the old version, still has a baseline.

use super::Step;
use super::gates::{GateResult, Verdict};

/// The time ranges a step's gates read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EvidenceWindow {
    /// The candidate's window: `[from_ms, to_ms]`.
    pub from_ms: u64,
    pub to_ms: u64,
    /// The baseline's window starts here and ends at `to_ms`.
    pub baseline_from_ms: u64,
    /// Whether both versions run on the same devices in the same window.
    pub same_devices: bool,
}

/// The evidence window of a step at `now` for a rollout created at `created_ms`.
pub fn evidence_window(step: Step, created_ms: u64, now: u64, bake_secs: u64) -> EvidenceWindow {
    let same_devices = matches!(step, Step::Canary(_) | Step::Shadow);
    let baseline_from_ms =
        if same_devices { created_ms } else { created_ms.saturating_sub(bake_secs.saturating_mul(1000)) };
    EvidenceWindow { from_ms: created_ms, to_ms: now, baseline_from_ms, same_devices }
}

/// What a bake's gate verdicts make the engine do.
#[derive(Debug, Clone, PartialEq)]
pub enum BakeDecision {
    /// A gate failed: roll every moved device back.
    RollBack(GateResult),
    /// The bake has not ended and nothing failed: keep watching.
    Continue,
    /// The bake ended with every gate passing: take the next step.
    Passed,
    /// The bake ended with some gate inconclusive: bake again (the reasons, one per gate).
    Extend(Vec<String>),
    /// Inconclusive after every extension: stop for an operator.
    Pause(Vec<String>),
}

/// Decides on a bake's newest verdicts. A failure acts at once; passing needs the whole bake.
pub fn bake_decision(
    gates: &[GateResult],
    now: u64,
    bake_until_ms: u64,
    extensions: u32,
    max_extensions: u32,
) -> BakeDecision {
    if let Some(failed) = gates.iter().find(|g| g.verdict == Verdict::Fail) {
        return BakeDecision::RollBack(failed.clone());
    }
    if now < bake_until_ms {
        return BakeDecision::Continue;
    }
    let thin: Vec<String> = gates
        .iter()
        .filter(|g| g.verdict == Verdict::Inconclusive)
        .map(|g| format!("{}: {}", g.gate, g.detail))
        .collect();
    if thin.is_empty() {
        BakeDecision::Passed
    } else if extensions < max_extensions {
        BakeDecision::Extend(thin)
    } else {
        BakeDecision::Pause(thin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(verdict: Verdict) -> GateResult {
        GateResult {
            gate: "g".into(),
            verdict,
            candidate: None,
            baseline: None,
            limit: None,
            candidate_samples: 0,
            baseline_samples: 0,
            min_samples: 0,
            detail: "d".into(),
            excess_low: None,
            excess_high: None,
            alpha: None,
        }
    }

    #[test]
    fn a_failure_acts_before_the_bake_ends_and_a_pass_waits_for_it() {
        let (pass, fail, thin) =
            (result(Verdict::Pass), result(Verdict::Fail), result(Verdict::Inconclusive));
        assert_eq!(
            bake_decision(&[pass.clone(), fail.clone()], 10, 100, 0, 2),
            BakeDecision::RollBack(fail.clone())
        );
        assert_eq!(bake_decision(std::slice::from_ref(&pass), 10, 100, 0, 2), BakeDecision::Continue);
        assert_eq!(bake_decision(std::slice::from_ref(&pass), 100, 100, 0, 2), BakeDecision::Passed);
        assert_eq!(
            bake_decision(&[pass.clone(), thin.clone()], 100, 100, 1, 2),
            BakeDecision::Extend(vec!["g: d".into()])
        );
        assert_eq!(bake_decision(&[thin], 100, 100, 2, 2), BakeDecision::Pause(vec!["g: d".into()]));
        // No gates at all is a pass: the spec decides what is checked.
        assert_eq!(bake_decision(&[], 100, 100, 0, 2), BakeDecision::Passed);
    }

    #[test]
    fn evidence_spans_the_rollout_and_waves_look_back_one_bake() {
        let w = evidence_window(Step::Wave(50.0), 1_000_000, 2_000_000, 600);
        assert_eq!(
            w,
            EvidenceWindow {
                from_ms: 1_000_000,
                to_ms: 2_000_000,
                baseline_from_ms: 400_000,
                same_devices: false
            }
        );
        let c = evidence_window(Step::Canary(5), 1_000_000, 2_000_000, 600);
        assert_eq!(c.baseline_from_ms, 1_000_000);
        assert!(c.same_devices);
        assert_eq!(evidence_window(Step::Switch, 100, 200, 600).baseline_from_ms, 0);
    }
}
