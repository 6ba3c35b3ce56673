//! Rollout gates: what a candidate version must show, compared with the baseline version, before
//! a rollout may take its next step.
//!
//! A gate is written `METRIC OP BOUND`:
//! - `error_rate<=+0.5%` — the candidate's error rate at most 0.5 points above the baseline's;
//!   `error_rate<=1%` — at most 1 % whatever the baseline does;
//! - `p99<=1.2x` (also `p50`, `p90`, `p95`, `p999`) — the candidate's latency percentile at most
//!   1.2 × the baseline's (plus the rollout's `latency_slack_ms`, so microsecond models are not
//!   judged on scheduler noise); `p99<=50ms` — an absolute ceiling;
//! - `accuracy>=-1%` — the candidate's accuracy on labelled predictions at most 1 point below
//!   the baseline's; `accuracy>=90%` — an absolute floor.
//!
//! Verdicts are honest about thin evidence: a gate is **inconclusive** until both sides have
//! their minimum sample (`min_requests` for error rate and latency, `min_labels` for accuracy).
//! With enough samples, a candidate within its bound passes. One outside it fails only when the
//! breach is statistically clear for rates (one-sided two-proportion z-test at 95 %: the
//! candidate is worse than the bound allows beyond sampling noise); a breach inside the noise
//! stays inconclusive, and the rollout gathers more evidence. Latency percentiles have no such
//! test: past the minimum sample, the merged histograms' percentile is judged as it is.

use outpost_shared::histogram::LogHistogram;
use serde::{Deserialize, Serialize};

/// z for a one-sided 95 % test.
const Z_95: f64 = 1.644_853_626_951_472_2;

/// What a gate measures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Metric {
    ErrorRate,
    /// A latency quantile in (0, 1).
    Latency(f64),
    Accuracy,
    /// A shadow's rows predicted as its primary did (an absolute floor).
    Agreement,
}

/// The limit a gate sets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Bound {
    /// Baseline + delta, as a share (`+0.5%` → 0.005, `-1%` → -0.01).
    Delta(f64),
    /// Baseline × ratio (latency).
    Ratio(f64),
    /// An absolute latency in ms.
    Millis(f64),
    /// An absolute share (`1%` → 0.01).
    Share(f64),
}

/// A parsed gate.
#[derive(Debug, Clone, PartialEq)]
pub struct Gate {
    pub text: String,
    pub metric: Metric,
    pub bound: Bound,
}

impl Gate {
    /// Parses `METRIC OP BOUND` (spaces allowed), naming what is wrong.
    pub fn parse(text: &str) -> Result<Gate, String> {
        let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        let usage = "write METRIC<=BOUND or accuracy>=BOUND, e.g. `error_rate<=+0.5%`, `p99<=1.2x`, \
                     `p95<=40ms`, `accuracy>=-1%`";
        let (name, op, bound) = if let Some((n, b)) = compact.split_once("<=") {
            (n, "<=", b)
        } else if let Some((n, b)) = compact.split_once(">=") {
            (n, ">=", b)
        } else {
            return Err(format!("gate `{text}` has no `<=` or `>=`: {usage}"));
        };
        let metric = match name {
            "error_rate" => Metric::ErrorRate,
            "accuracy" => Metric::Accuracy,
            "agreement" => Metric::Agreement,
            "p50" => Metric::Latency(0.5),
            "p90" => Metric::Latency(0.9),
            "p95" => Metric::Latency(0.95),
            "p99" => Metric::Latency(0.99),
            "p999" => Metric::Latency(0.999),
            other => {
                return Err(format!(
                    "gate `{text}`: unknown metric `{other}` (error_rate, accuracy, agreement, p50, p90, p95, p99, p999)"
                ));
            }
        };
        let wanted = if matches!(metric, Metric::Accuracy | Metric::Agreement) { ">=" } else { "<=" };
        if op != wanted {
            return Err(format!(
                "gate `{text}`: `{name}` takes `{wanted}` (a {} limit)",
                match wanted {
                    ">=" => "lower",
                    _ => "upper",
                }
            ));
        }
        let number = |s: &str| -> Result<f64, String> {
            s.parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| format!("gate `{text}`: `{s}` is not a number"))
        };
        let bound = if let Some(ratio) = bound.strip_suffix('x') {
            if !matches!(metric, Metric::Latency(_)) {
                return Err(format!("gate `{text}`: a ratio (`1.2x`) is for latency gates only"));
            }
            let r = number(ratio)?;
            if r < 1.0 {
                return Err(format!("gate `{text}`: a latency ratio below 1x would fail identical versions"));
            }
            Bound::Ratio(r)
        } else if let Some(ms) = bound.strip_suffix("ms") {
            if !matches!(metric, Metric::Latency(_)) {
                return Err(format!("gate `{text}`: milliseconds are for latency gates only"));
            }
            let v = number(ms)?;
            if v <= 0.0 {
                return Err(format!("gate `{text}`: the latency limit must be above 0 ms"));
            }
            Bound::Millis(v)
        } else if let Some(pct) = bound.strip_suffix('%') {
            if matches!(metric, Metric::Latency(_)) {
                return Err(format!("gate `{text}`: a latency gate takes a ratio (`1.2x`) or `ms`"));
            }
            let v = number(pct)? / 100.0;
            if metric == Metric::Agreement && (pct.starts_with('+') || pct.starts_with('-')) {
                return Err(format!(
                    "gate `{text}`: agreement is already measured against the primary: give a floor, e.g. `agreement>=95%`"
                ));
            }
            if pct.starts_with('+') || pct.starts_with('-') {
                let right_way = if metric == Metric::Accuracy { v <= 0.0 } else { v >= 0.0 };
                if !right_way {
                    return Err(format!(
                        "gate `{text}`: the delta must allow the candidate to be no better than the \
                         baseline ({} for {name})",
                        if metric == Metric::Accuracy { "-X%" } else { "+X%" }
                    ));
                }
                Bound::Delta(v)
            } else {
                if !(0.0..=1.0).contains(&v) {
                    return Err(format!("gate `{text}`: a share must be between 0% and 100%"));
                }
                Bound::Share(v)
            }
        } else {
            return Err(format!(
                "gate `{text}`: the bound `{bound}` needs a unit (`%`, `x` or `ms`): {usage}"
            ));
        };
        Ok(Gate { text: text.trim().to_owned(), metric, bound })
    }

    /// Whether the gate compares with the baseline (and so needs baseline evidence).
    pub fn relative(&self) -> bool {
        matches!(self.bound, Bound::Delta(_) | Bound::Ratio(_))
    }
}

/// The gates a rollout uses when its spec names none.
pub const DEFAULT_GATES: [&str; 3] = ["error_rate<=+1%", "p99<=1.5x", "accuracy>=-2%"];

/// The `shadow` strategy's defaults: a shadow gets no labels, but its agreement is measured.
pub const DEFAULT_SHADOW_GATES: [&str; 3] = ["error_rate<=+1%", "p99<=1.5x", "agreement>=95%"];

/// What one side (candidate or baseline) did in the evaluation window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    pub requests: u64,
    pub errors: u64,
    pub latency_us: LogHistogram,
    pub labelled: u64,
    pub correct: u64,
    /// Shadow rows compared with the primary's answers, and how many agreed.
    pub compared: u64,
    pub agreed: u64,
    /// Devices that contributed.
    pub devices: usize,
}

/// A gate's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Fail,
    Inconclusive,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
            Verdict::Inconclusive => "inconclusive",
        }
    }
}

/// One gate's judgement with its numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateResult {
    pub gate: String,
    pub verdict: Verdict,
    /// The candidate's and the baseline's value (share or ms), where measurable.
    pub candidate: Option<f64>,
    pub baseline: Option<f64>,
    /// The limit the candidate was held to.
    pub limit: Option<f64>,
    /// Samples behind each side (requests, or labelled predictions for accuracy).
    pub candidate_samples: u64,
    pub baseline_samples: u64,
    /// The minimum sample each side needs.
    pub min_samples: u64,
    pub detail: String,
}

/// Sample sizes and slack a rollout judges with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    pub min_requests: u64,
    pub min_labels: u64,
    pub latency_slack_ms: f64,
}

fn pct(v: f64) -> String {
    format!("{:.2}%", v * 100.0)
}

/// Judges one gate.
pub fn evaluate(gate: &Gate, candidate: &Evidence, baseline: &Evidence, t: Thresholds) -> GateResult {
    match gate.metric {
        Metric::ErrorRate => rate_gate(
            gate,
            (candidate.errors, candidate.requests),
            (baseline.errors, baseline.requests),
            t.min_requests,
            true,
        ),
        Metric::Accuracy => rate_gate(
            gate,
            (candidate.correct, candidate.labelled),
            (baseline.correct, baseline.labelled),
            t.min_labels,
            false,
        ),
        Metric::Latency(q) => latency_gate(gate, q, candidate, baseline, t),
        Metric::Agreement => {
            rate_gate(gate, (candidate.agreed, candidate.compared), (0, 0), t.min_requests, false)
        }
    }
}

/// A share gate: error rate (an upper limit) or accuracy (a lower one).
fn rate_gate(gate: &Gate, cand: (u64, u64), base: (u64, u64), min: u64, upper: bool) -> GateResult {
    let what = match gate.metric {
        Metric::ErrorRate => "requests",
        Metric::Agreement => "shadow rows compared",
        _ => "labelled predictions",
    };
    let share = |(hits, n): (u64, u64)| (n > 0).then(|| hits as f64 / n as f64);
    let (c, b) = (share(cand), share(base));
    let mut result = GateResult {
        gate: gate.text.clone(),
        verdict: Verdict::Inconclusive,
        candidate: c,
        baseline: b,
        limit: None,
        candidate_samples: cand.1,
        baseline_samples: base.1,
        min_samples: min,
        detail: String::new(),
    };
    if cand.1 < min {
        result.detail = format!("candidate has {} {what}, needs {min}", cand.1);
        return result;
    }
    if gate.relative() && base.1 < min {
        result.detail = format!("baseline has {} {what}, needs {min}", base.1);
        return result;
    }
    let c = c.unwrap_or_default();
    let (limit, variance) = match gate.bound {
        Bound::Delta(d) => {
            let b = b.unwrap_or_default();
            (b + d, c * (1.0 - c) / cand.1 as f64 + b * (1.0 - b) / base.1 as f64)
        }
        Bound::Share(s) => (s, c * (1.0 - c) / cand.1 as f64),
        Bound::Ratio(_) | Bound::Millis(_) => (f64::NAN, 0.0),
    };
    result.limit = Some(limit);
    let within = if upper { c <= limit } else { c >= limit };
    if within {
        result.verdict = Verdict::Pass;
        result.detail = format!("{} within the limit {}", pct(c), pct(limit));
        return result;
    }
    // How many standard errors past the limit the candidate is.
    let gap = if upper { c - limit } else { limit - c };
    let z = if variance > 0.0 { gap / variance.sqrt() } else { f64::INFINITY };
    if z >= Z_95 {
        result.verdict = Verdict::Fail;
        result.detail = format!(
            "{} is {} the limit {} (z = {:.2}, significant at 95%)",
            pct(c),
            if upper { "above" } else { "below" },
            pct(limit),
            z.min(99.0)
        );
    } else {
        result.detail = format!(
            "{} is {} the limit {}, but within sampling noise (z = {z:.2} < {Z_95:.2}): more evidence needed",
            pct(c),
            if upper { "above" } else { "below" },
            pct(limit)
        );
    }
    result
}

fn latency_gate(gate: &Gate, q: f64, cand: &Evidence, base: &Evidence, t: Thresholds) -> GateResult {
    let ms = |h: &LogHistogram| h.quantile(q).map(|us| us / 1000.0);
    let (c, b) = (ms(&cand.latency_us), ms(&base.latency_us));
    let mut result = GateResult {
        gate: gate.text.clone(),
        verdict: Verdict::Inconclusive,
        candidate: c,
        baseline: b,
        limit: None,
        candidate_samples: cand.latency_us.count(),
        baseline_samples: base.latency_us.count(),
        min_samples: t.min_requests,
        detail: String::new(),
    };
    if result.candidate_samples < t.min_requests {
        result.detail =
            format!("candidate has {} timed requests, needs {}", result.candidate_samples, t.min_requests);
        return result;
    }
    if gate.relative() && result.baseline_samples < t.min_requests {
        result.detail =
            format!("baseline has {} timed requests, needs {}", result.baseline_samples, t.min_requests);
        return result;
    }
    let (Some(c), b) = (c, b.unwrap_or_default()) else { return result };
    let limit = match gate.bound {
        Bound::Ratio(r) => r * b + t.latency_slack_ms,
        Bound::Millis(m) => m,
        Bound::Delta(_) | Bound::Share(_) => f64::NAN,
    };
    result.limit = Some(limit);
    if c <= limit {
        result.verdict = Verdict::Pass;
        result.detail = format!("{c:.3} ms within the limit {limit:.3} ms");
    } else {
        result.verdict = Verdict::Fail;
        result.detail = format!("{c:.3} ms is above the limit {limit:.3} ms");
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Thresholds = Thresholds { min_requests: 100, min_labels: 50, latency_slack_ms: 1.0 };

    fn gate(text: &str) -> Gate {
        Gate::parse(text).unwrap()
    }

    fn traffic(requests: u64, errors: u64, latency_ms: f64) -> Evidence {
        let mut latency_us = LogHistogram::default();
        latency_us.record_n(latency_ms * 1000.0, requests);
        Evidence { requests, errors, latency_us, ..Evidence::default() }
    }

    fn labelled(labelled: u64, correct: u64) -> Evidence {
        Evidence { labelled, correct, ..Evidence::default() }
    }

    #[test]
    fn gates_parse_and_bad_ones_are_named() {
        assert_eq!(gate("error_rate<=+0.5%").bound, Bound::Delta(0.005));
        assert_eq!(gate("p99 <= 1.2x").metric, Metric::Latency(0.99));
        assert_eq!(gate("p95<=40ms").bound, Bound::Millis(40.0));
        assert_eq!(gate("accuracy>=-1%").bound, Bound::Delta(-0.01));
        assert_eq!(gate("accuracy>=90%").bound, Bound::Share(0.9));
        for (bad, says) in [
            ("p99<1.2x", "no `<=`"),
            ("latency<=2x", "unknown metric"),
            ("accuracy<=1%", "takes `>=`"),
            ("agreement>=-1%", "already measured against the primary"),
            ("agreement<=90%", "takes `>=`"),
            ("error_rate<=1.2x", "latency gates only"),
            ("p99<=5%", "ratio"),
            ("p99<=0.5x", "below 1x"),
            ("accuracy>=+1%", "no better"),
            ("error_rate<=-1%", "no better"),
            ("error_rate<=150%", "between 0% and 100%"),
            ("p99<=abcms", "not a number"),
            ("p99<=12", "needs a unit"),
        ] {
            let e = Gate::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn thin_evidence_is_inconclusive_never_pass() {
        let r = evaluate(&gate("error_rate<=+1%"), &traffic(99, 0, 1.0), &traffic(1000, 0, 1.0), T);
        assert_eq!(r.verdict, Verdict::Inconclusive, "{r:?}");
        assert!(r.detail.contains("candidate has 99 requests, needs 100"), "{}", r.detail);
        let r = evaluate(&gate("p99<=1.2x"), &traffic(500, 0, 1.0), &traffic(10, 0, 1.0), T);
        assert_eq!(r.verdict, Verdict::Inconclusive, "{r:?}");
        assert!(r.detail.contains("baseline"), "{}", r.detail);
        // An absolute gate needs no baseline.
        let r = evaluate(&gate("p99<=50ms"), &traffic(500, 0, 1.0), &Evidence::default(), T);
        assert_eq!(r.verdict, Verdict::Pass, "{r:?}");
    }

    #[test]
    fn accuracy_fails_only_on_a_clear_drop() {
        // 60 % vs 98 % on 60 labels each: far past noise.
        let r = evaluate(&gate("accuracy>=-1%"), &labelled(60, 36), &labelled(60, 59), T);
        assert_eq!(r.verdict, Verdict::Fail, "{r:?}");
        assert!(
            (r.candidate.unwrap() - 0.6).abs() < 1e-12
                && (r.limit.unwrap() - (59.0 / 60.0 - 0.01)).abs() < 1e-12
        );
        // 95 % vs 98 % on 60 each: below the limit but inside the noise.
        let r = evaluate(&gate("accuracy>=-1%"), &labelled(60, 57), &labelled(60, 59), T);
        assert_eq!(r.verdict, Verdict::Inconclusive, "{r:?}");
        // The same gap on 20,000 each is clear.
        let r = evaluate(&gate("accuracy>=-1%"), &labelled(20_000, 19_000), &labelled(20_000, 19_600), T);
        assert_eq!(r.verdict, Verdict::Fail, "{r:?}");
        let r = evaluate(&gate("accuracy>=-1%"), &labelled(60, 59), &labelled(60, 59), T);
        assert_eq!(r.verdict, Verdict::Pass, "{r:?}");
    }

    #[test]
    fn agreement_is_a_floor_on_the_shadow_alone() {
        let shadow = |compared, agreed| Evidence { compared, agreed, ..Evidence::default() };
        let r = evaluate(&gate("agreement>=95%"), &shadow(200, 120), &Evidence::default(), T);
        assert_eq!(r.verdict, Verdict::Fail, "{r:?}");
        assert!((r.candidate.unwrap() - 0.6).abs() < 1e-12, "{r:?}");
        let r = evaluate(&gate("agreement>=95%"), &shadow(200, 199), &Evidence::default(), T);
        assert_eq!(r.verdict, Verdict::Pass, "{r:?}");
        let r = evaluate(&gate("agreement>=95%"), &shadow(50, 10), &Evidence::default(), T);
        assert_eq!(r.verdict, Verdict::Inconclusive, "{r:?}");
        assert!(r.detail.contains("50 shadow rows compared, needs 100"), "{}", r.detail);
    }

    #[test]
    fn error_rate_against_the_baseline_and_absolute() {
        let r = evaluate(&gate("error_rate<=+0.5%"), &traffic(1000, 80, 1.0), &traffic(1000, 5, 1.0), T);
        assert_eq!(r.verdict, Verdict::Fail, "{r:?}");
        let r = evaluate(&gate("error_rate<=+0.5%"), &traffic(1000, 8, 1.0), &traffic(1000, 5, 1.0), T);
        assert_eq!(r.verdict, Verdict::Pass, "{r:?}");
        // No errors at all on a zero-variance limit: a breach is clear.
        let r = evaluate(&gate("error_rate<=0%"), &traffic(200, 200, 1.0), &Evidence::default(), T);
        assert_eq!(r.verdict, Verdict::Fail, "{r:?}");
    }

    #[test]
    fn latency_is_judged_with_ratio_and_slack() {
        // 0.05 ms vs 0.02 ms: 2.5x, but inside 1.2 × 0.02 + 1 ms of slack.
        let r = evaluate(&gate("p99<=1.2x"), &traffic(200, 0, 0.05), &traffic(200, 0, 0.02), T);
        assert_eq!(r.verdict, Verdict::Pass, "{r:?}");
        let r = evaluate(&gate("p99<=1.2x"), &traffic(200, 0, 150.0), &traffic(200, 0, 0.05), T);
        assert_eq!(r.verdict, Verdict::Fail, "{r:?}");
        assert!(r.candidate.unwrap() > 140.0 && r.limit.unwrap() < 1.1, "{r:?}");
    }
}
