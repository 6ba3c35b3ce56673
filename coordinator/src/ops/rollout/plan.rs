//! Plan before you roll: from the fleet's current request and label rates, how long each step
//! of a rollout needs before its gates can decide — for an unchanged candidate to pass, and for
//! a regression of a stated size to be caught — and warnings where that is longer than the bake
//! and its extensions allow (`outpostctl rollout plan`, also printed by `rollout start`).
//!
//! The estimate runs the real gates ([`super::gates::evaluate`]) on *expected* evidence: the
//! counts the measured rates give after `t` seconds, on the devices each step moves, carried
//! across steps as the engine carries them ([`super::bake`]). To stand for 95 % of rollouts
//! rather than the median one, the candidate's counts are shifted 1.645 standard deviations
//! against the verdict sought (more errors and fewer right answers when planning a pass, fewer
//! when planning a catch). Latency keeps the baseline's measured histogram shape, scaled.

use outpost_shared::histogram::LogHistogram;
use serde::Serialize;

use super::gates::{self, Bound, Evidence, Gate, Metric, Verdict};
use super::{RolloutSpec, SpecError, Step};

/// z for the 95 % planning quantile.
const Z_PLAN: f64 = 1.644_853_626_951_472_2;

/// The longest time a plan looks ahead (7 days).
const HORIZON_SECS: u64 = 7 * 86_400;

/// What the targets did recently, per device, on the baseline version.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetRates {
    pub targets: usize,
    pub window_secs: u64,
    pub requests_per_s: f64,
    pub labels_per_s: f64,
    pub error_rate: f64,
    pub accuracy: Option<f64>,
    /// The baseline's latency histogram over the window (its shape is what is used).
    pub latency_us: LogHistogram,
}

/// One gate in one step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GatePlan {
    pub gate: String,
    /// The regression planned for, in words.
    pub regression: String,
    /// Seconds into the step until an unchanged candidate passes (95 % of rollouts), if within
    /// the horizon.
    pub pass_after_secs: Option<u64>,
    /// Seconds into the step until the regression fails the gate (95 % power).
    pub catch_after_secs: Option<u64>,
}

/// One step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepPlan {
    pub step: String,
    /// Devices running the candidate in this step.
    pub devices: usize,
    pub candidate_requests_per_s: f64,
    pub candidate_labels_per_s: f64,
    /// The bake with every extension.
    pub budget_secs: u64,
    pub gates: Vec<GatePlan>,
}

/// The whole plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    pub targets: usize,
    pub window_secs: u64,
    pub requests_per_s_per_device: f64,
    pub labels_per_s_per_device: f64,
    pub baseline_error_rate: f64,
    pub baseline_accuracy: Option<f64>,
    pub steps: Vec<StepPlan>,
    pub warnings: Vec<String>,
}

/// What the candidate is assumed to do.
#[derive(Debug, Clone, Copy)]
struct Behaviour {
    error_rate: f64,
    accuracy: f64,
    latency_scale: f64,
    agreement: f64,
}

/// Expected evidence of `n_req` requests and `n_lab` labels, shifted by `shift` standard
/// deviations towards "worse" (positive) or "better" (negative).
fn expected(rates: &FleetRates, b: Behaviour, n_req: f64, n_lab: f64, shift: f64) -> Evidence {
    let worse = |p: f64, n: f64| (n * p + shift * (n * p * (1.0 - p)).sqrt()).clamp(0.0, n);
    let better = |p: f64, n: f64| (n * p - shift * (n * p * (1.0 - p)).sqrt()).clamp(0.0, n);
    let requests = n_req.round() as u64;
    let labelled = n_lab.round() as u64;
    let mut latency_us = LogHistogram::default();
    let total = rates.latency_us.count().max(1) as f64;
    let mut previous = rates.latency_us.count();
    for (value, above) in rates.latency_us.values_with_count_above() {
        let share = (previous - above) as f64 / total;
        previous = above;
        latency_us.record_n(value * b.latency_scale, (share * n_req).round() as u64);
    }
    Evidence {
        requests,
        errors: worse(b.error_rate, n_req).round() as u64,
        latency_us,
        labelled,
        correct: better(b.accuracy, n_lab).round() as u64,
        compared: requests,
        agreed: better(b.agreement, n_req).round() as u64,
        devices: 0,
    }
}

/// The regression a gate is planned against, and the candidate behaving so. For latency: every
/// request 25 % slower than the limit allows at the gate's percentile (slack included).
fn regression(gate: &Gate, base: Behaviour, rates: &FleetRates, slack_ms: f64) -> (String, Behaviour) {
    match (gate.metric, gate.bound) {
        (Metric::Accuracy, Bound::Relative { ratio, delta }) => {
            let limit = ratio * base.accuracy + delta;
            let a = (limit - 0.03).max(0.0);
            (
                format!("accuracy {:.1} points lower", (base.accuracy - a) * 100.0),
                Behaviour { accuracy: a, ..base },
            )
        }
        (Metric::Accuracy, Bound::Share(s)) => {
            let a = (s - 0.03).max(0.0);
            (format!("accuracy {:.1} %", a * 100.0), Behaviour { accuracy: a, ..base })
        }
        (Metric::ErrorRate, bound) => {
            let limit = match bound {
                Bound::Relative { ratio, delta } => ratio * base.error_rate + delta,
                Bound::Share(s) => s,
                Bound::Millis(_) => base.error_rate,
            };
            let e = (limit + (0.5 * (limit - base.error_rate)).max(0.005)).min(1.0);
            (format!("error rate {:.2} %", e * 100.0), Behaviour { error_rate: e, ..base })
        }
        (Metric::Latency(q), bound) => {
            let now_ms = rates.latency_us.quantile(q).map(|us| us / 1000.0).filter(|ms| *ms > 0.0);
            let scale = match (bound, now_ms) {
                (Bound::Relative { ratio, .. }, Some(now)) => 1.25 * (ratio + slack_ms / now),
                (Bound::Relative { ratio, .. }, None) => 1.25 * ratio,
                (Bound::Millis(ms), Some(now)) => (1.25 * ms / now).max(1.25),
                _ => 1.5,
            };
            (format!("every latency ×{scale:.2}"), Behaviour { latency_scale: scale, ..base })
        }
        (Metric::Agreement, Bound::Share(s)) => {
            let a = (s - 0.05).max(0.0);
            (format!("agreement {:.1} %", a * 100.0), Behaviour { agreement: a, ..base })
        }
        _ => ("(none)".into(), base),
    }
}

/// Times at which the plan looks: 10 s, then 10 % more each time, up to the horizon.
fn grid() -> Vec<u64> {
    let mut out = Vec::new();
    let mut t = 10.0_f64;
    while (t as u64) <= HORIZON_SECS {
        out.push(t as u64);
        t = (t * 1.1).max(t + 10.0);
    }
    out
}

fn duration(secs: u64) -> String {
    match secs {
        s if s >= 3600 => format!("{:.1} h", s as f64 / 3600.0),
        s if s >= 120 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

/// Plans `spec` on a fleet with `rates`.
pub fn plan(spec: &RolloutSpec, rates: &FleetRates) -> Result<Plan, SpecError> {
    let gate_list = spec.validate()?;
    let t = spec.thresholds(gate_list.len());
    let n = rates.targets.max(1) as f64;
    let base = Behaviour {
        error_rate: rates.error_rate,
        accuracy: rates.accuracy.unwrap_or(0.95),
        latency_scale: 1.0,
        agreement: 1.0,
    };
    let budget = spec.bake_secs * (1 + u64::from(spec.max_extensions));
    let mut warnings = Vec::new();
    if rates.requests_per_s <= 0.0 {
        warnings.push(format!(
            "the {} target(s) served no requests of this model in the last {}: no gate can decide, and the \
             rollout would pause",
            rates.targets,
            duration(rates.window_secs)
        ));
    }
    if gate_list.iter().any(|g| g.metric == Metric::Accuracy) && rates.labels_per_s <= 0.0 {
        warnings.push(format!(
            "no labelled predictions came back in the last {}: accuracy gates cannot decide (send ground \
             truth to the agents' /v1/feedback)",
            duration(rates.window_secs)
        ));
    }
    let bake_s = spec.bake_secs as f64;
    // Evidence carried into each step: (candidate requests, labels), (baseline requests, labels).
    let lookback = |per_s: f64| per_s * n * bake_s;
    let mut carried = (0.0, 0.0);
    let mut base_carried = (0.0, 0.0);
    let plan_steps = spec.plan();
    let mut steps = Vec::new();
    let times = grid();
    for (i, step) in plan_steps.iter().enumerate() {
        // Per second in this step: candidate and baseline requests.
        let (cand_share, base_share, label) = match *step {
            Step::Wave(p) => {
                let k = ((p / 100.0) * n).ceil().clamp(1.0, n);
                (k, n - k, format!("wave {}/{} ({p}%)", i + 1, plan_steps.len()))
            }
            Step::Canary(p) => {
                let f = f64::from(p) / 100.0;
                (n * f, n * (1.0 - f), format!("step {}/{} (canary {p}%)", i + 1, plan_steps.len()))
            }
            Step::Switch => (n, 0.0, format!("step {}/{} (switch)", i + 1, plan_steps.len())),
            Step::Shadow => (n, n, format!("step {}/{} (shadow)", i + 1, plan_steps.len())),
            Step::Standby => {
                continue;
            }
        };
        let same_devices = matches!(step, Step::Canary(_) | Step::Shadow);
        let (rq, lb) = (rates.requests_per_s, rates.labels_per_s);
        let evidence_at = |secs: f64, b: Behaviour, shift: f64| {
            let c = expected(
                rates,
                b,
                carried.0 + cand_share * rq * secs,
                carried.1 + cand_share * lb * secs,
                shift,
            );
            let extra = if same_devices { (0.0, 0.0) } else { (lookback(rq), lookback(lb)) };
            let bl = expected(
                rates,
                base,
                base_carried.0 + extra.0 + base_share * rq * secs,
                base_carried.1 + extra.1 + base_share * lb * secs,
                0.0,
            );
            (c, bl)
        };
        let mut gate_plans = Vec::new();
        for g in &gate_list {
            let (what, bad) = regression(g, base, rates, t.latency_slack_ms);
            let first = |b: Behaviour, shift: f64, wanted: Verdict| {
                times.iter().copied().find(|&s| {
                    let (c, bl) = evidence_at(s as f64, b, shift);
                    gates::evaluate(g, &c, &bl, t).verdict == wanted
                })
            };
            let pass_after_secs = first(base, Z_PLAN, Verdict::Pass);
            let catch_after_secs = first(bad, -Z_PLAN, Verdict::Fail);
            match pass_after_secs {
                Some(s) if s <= budget => {}
                Some(s) => warnings.push(format!(
                    "{label}, `{}`: an unchanged version needs ~{} to pass, longer than the bake with its \
                     extensions ({}): the rollout would pause there",
                    g.text,
                    duration(s),
                    duration(budget)
                )),
                None => warnings.push(format!(
                    "{label}, `{}`: an unchanged version would not pass within {} at this traffic",
                    g.text,
                    duration(HORIZON_SECS)
                )),
            }
            match catch_after_secs {
                Some(s) if s <= budget => {}
                Some(s) => warnings.push(format!(
                    "{label}, `{}`: {what} is caught with 95 % power only after ~{}, longer than the bake \
                     with its extensions ({})",
                    g.text,
                    duration(s),
                    duration(budget)
                )),
                None => warnings.push(format!(
                    "{label}, `{}`: {what} would not be caught within {}",
                    g.text,
                    duration(HORIZON_SECS)
                )),
            }
            gate_plans.push(GatePlan {
                gate: g.text.clone(),
                regression: what,
                pass_after_secs,
                catch_after_secs,
            });
        }
        steps.push(StepPlan {
            step: label,
            devices: cand_share.ceil() as usize,
            candidate_requests_per_s: cand_share * rq,
            candidate_labels_per_s: cand_share * lb,
            budget_secs: budget,
            gates: gate_plans,
        });
        // The engine moves on after the bake when the gates pass: carry one bake's evidence.
        carried.0 += cand_share * rq * bake_s;
        carried.1 += cand_share * lb * bake_s;
        base_carried.0 += base_share * rq * bake_s;
        base_carried.1 += base_share * lb * bake_s;
    }
    Ok(Plan {
        targets: rates.targets,
        window_secs: rates.window_secs,
        requests_per_s_per_device: rates.requests_per_s,
        labels_per_s_per_device: rates.labels_per_s,
        baseline_error_rate: rates.error_rate,
        baseline_accuracy: rates.accuracy,
        steps,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> RolloutSpec {
        serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}"))
    }

    fn rates(requests_per_s: f64, labels_per_s: f64) -> FleetRates {
        let mut latency_us = LogHistogram::default();
        for i in 0..1000 {
            latency_us.record(8000.0 + f64::from(i) * 4.0);
        }
        FleetRates {
            targets: 20,
            window_secs: 600,
            requests_per_s,
            labels_per_s,
            error_rate: 0.01,
            accuracy: Some(0.95),
            latency_us,
        }
    }

    #[test]
    fn busy_fleets_decide_within_the_bake_and_quiet_ones_are_warned_about() {
        let s = spec(r#"{"model": "m", "version": "2"}"#);
        let busy = plan(&s, &rates(50.0, 25.0)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(busy.steps.len(), 3);
        assert_eq!(busy.steps[0].devices, 2);
        assert!(busy.warnings.is_empty(), "{:#?}", busy.warnings);
        for g in &busy.steps[0].gates {
            assert!(g.pass_after_secs.is_some_and(|s| s <= 1800), "{g:?}");
            assert!(g.catch_after_secs.is_some_and(|s| s <= 1800), "{g:?}");
        }
        // 0.3 labels/s per device: a 5-point drop needs far longer than 3 × 10 min in wave 1.
        let quiet = plan(&s, &rates(2.0, 0.3)).unwrap_or_else(|e| panic!("{e}"));
        let acc = &quiet.steps[0].gates[2];
        assert_eq!(acc.gate, "accuracy>=-2%");
        assert_eq!(acc.regression, "accuracy 5.0 points lower");
        assert!(acc.catch_after_secs.is_none_or(|s| s > 1800), "{acc:?}");
        assert!(
            quiet.warnings.iter().any(|w| w
                .contains("wave 1/3 (10%), `accuracy>=-2%`: accuracy 5.0 points lower is caught")
                || w.contains(
                    "wave 1/3 (10%), `accuracy>=-2%`: accuracy 5.0 points lower would not be caught"
                )),
            "{:#?}",
            quiet.warnings
        );
        let none = plan(&s, &rates(0.0, 0.0)).unwrap_or_else(|e| panic!("{e}"));
        assert!(none.warnings[0].contains("served no requests"), "{:#?}", none.warnings);
    }

    #[test]
    fn a_bad_spec_is_refused_by_name() {
        let s = spec(r#"{"model": "m", "version": "2", "gates": ["p99<2x"]}"#);
        assert!(plan(&s, &rates(1.0, 1.0)).unwrap_err().to_string().contains("no `<=`"));
    }
}
