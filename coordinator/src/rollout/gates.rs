//! Rollout gates: what a candidate version must show, compared with the baseline version, before
//! a rollout may take its next step.
//!
//! A gate is written `METRIC OP BOUND`:
//! - `error_rate<=1.5x+0.2%` — the candidate's error rate at most 1.5 × the baseline's plus 0.2
//!   points; `error_rate<=2x` and `error_rate<=+0.5%` are the two halves alone; `error_rate<=1%`
//!   is an absolute ceiling;
//! - `p99<=1.2x` (also `p50`, `p90`, `p95`, `p999`) — the candidate's latency percentile at most
//!   1.2 × the baseline's (plus the rollout's `latency_slack_ms`, so microsecond models are not
//!   judged on scheduler noise); `p99<=50ms` — an absolute ceiling;
//! - `accuracy>=-2%` — the candidate's accuracy on labelled predictions at most 2 points below
//!   the baseline's; `accuracy>=90%` — an absolute floor;
//! - `agreement>=95%` — a shadow's answers equal its primary's on at least 95 % of rows.
//!
//! **Three-way verdicts on confidence bounds.** Each gate measures how far the candidate is past
//! its limit ("excess": positive is worse) and builds a confidence interval for it that is valid
//! at every look at once ([`stats`]): the gate **fails** when the interval's low end is above 0
//! (worse than the limit beyond doubt), **passes** only when its high end is at or below 0
//! (within the limit beyond doubt), and is **inconclusive** otherwise. Thin evidence is wide, so it
//! can never pass; an effect sitting exactly on the limit never passes either. Each gate gets an
//! equal share of the rollout's error budget `alpha` ([`Thresholds::alpha`]), so the chance that
//! any gate ever gives a wrong verdict during a whole rollout is at most `alpha`.
//!
//! Rates (error rate, accuracy, agreement) use Wilson intervals per side combined by MOVER.
//! Latency is judged on the tail, not on two noisy percentiles: with `q` the gate's quantile,
//! the baseline's q-quantile gets a confidence interval from its histogram (the values above
//! which its share of requests is surely ≤ or surely > `1 − q`), the limit is `ratio × that +
//! slack`, and the gate tests the *share of candidate requests above the limit* against `1 − q`
//! (a binomial test on the tail — the candidate's q-quantile is above the limit exactly when more
//! than `1 − q` of its requests are). Failing uses the baseline's upper quantile bound; passing its
//! lower one, so the baseline's own sampling noise counts against neither side.
//!
//! `min_requests` and `min_labels` stay as floors: no verdict on fewer samples, whatever the
//! bounds say.

use outpost_shared::histogram::LogHistogram;
use serde::{Deserialize, Serialize};

use super::stats::{Share, mover};

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
    /// `ratio × baseline + delta` (delta a share: `+0.5%` → 0.005, `-2%` → -0.02).
    Relative { ratio: f64, delta: f64 },
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

/// Why a gate expression cannot be used (the message names the gate and the rule).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("gate `{gate}`: {problem}")]
pub struct GateError {
    pub gate: String,
    pub problem: String,
}

const USAGE: &str = "write METRIC<=BOUND or accuracy>=BOUND, e.g. `error_rate<=1.5x+0.2%`, `p99<=1.2x`, \
                     `p95<=40ms`, `accuracy>=-2%`";

impl Gate {
    /// Parses `METRIC OP BOUND` (spaces allowed), naming what is wrong.
    pub fn parse(text: &str) -> Result<Gate, GateError> {
        let fail = |problem: String| GateError { gate: text.trim().to_owned(), problem };
        let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        let (name, op, bound) = if let Some((n, b)) = compact.split_once("<=") {
            (n, "<=", b)
        } else if let Some((n, b)) = compact.split_once(">=") {
            (n, ">=", b)
        } else {
            return Err(fail(format!("no `<=` or `>=`: {USAGE}")));
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
                return Err(fail(format!(
                    "unknown metric `{other}` (error_rate, accuracy, agreement, p50, p90, p95, p99, p999)"
                )));
            }
        };
        let wanted = if matches!(metric, Metric::Accuracy | Metric::Agreement) { ">=" } else { "<=" };
        if op != wanted {
            let kind = if wanted == ">=" { "lower" } else { "upper" };
            return Err(fail(format!("`{name}` takes `{wanted}` (a {kind} limit)")));
        }
        let number = |s: &str| -> Result<f64, GateError> {
            s.parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| fail(format!("`{s}` is not a number")))
        };
        // `RATIOx`, `RATIOx+D%`, `±D%`, `S%`, `Nms`.
        let (ratio_text, rest) = match bound.split_once('x') {
            Some((r, rest)) => (Some(r), rest),
            None => (None, bound),
        };
        let ratio = ratio_text.map(number).transpose()?;
        if let Some(r) = ratio {
            match metric {
                Metric::Latency(_) | Metric::ErrorRate => {}
                _ => return Err(fail("a ratio (`1.5x`) is for error_rate and latency gates only".into())),
            }
            if r < 1.0 {
                return Err(fail("a ratio below 1x would fail identical versions".into()));
            }
        }
        let bound = if let Some(ms) = rest.strip_suffix("ms") {
            if ratio.is_some() || !matches!(metric, Metric::Latency(_)) {
                return Err(fail("milliseconds are for latency gates only, alone (`p99<=50ms`)".into()));
            }
            let v = number(ms)?;
            if v <= 0.0 {
                return Err(fail("the latency limit must be above 0 ms".into()));
            }
            Bound::Millis(v)
        } else if rest.is_empty() {
            match ratio {
                Some(r) if matches!(metric, Metric::Latency(_) | Metric::ErrorRate) => {
                    Bound::Relative { ratio: r, delta: 0.0 }
                }
                _ => {
                    return Err(fail(format!(
                        "the bound `{bound}` needs a unit (`%`, `x` or `ms`): {USAGE}"
                    )));
                }
            }
        } else if let Some(pct) = rest.strip_suffix('%') {
            if matches!(metric, Metric::Latency(_)) {
                return Err(fail("a latency gate takes a ratio (`1.2x`) or `ms`".into()));
            }
            let signed = pct.starts_with('+') || pct.starts_with('-');
            let v = number(pct)? / 100.0;
            if metric == Metric::Agreement && signed {
                return Err(fail(
                    "agreement is already measured against the primary: give a floor, e.g. `agreement>=95%`"
                        .into(),
                ));
            }
            if ratio.is_some() && !signed {
                return Err(fail("after a ratio, add points with a sign: `1.5x+0.2%`".into()));
            }
            if signed {
                let right_way = if metric == Metric::Accuracy { v <= 0.0 } else { v >= 0.0 };
                if !right_way {
                    let form = if metric == Metric::Accuracy { "-X%" } else { "+X%" };
                    return Err(fail(format!(
                        "the delta must allow the candidate to be no better than the baseline ({form} for {name})"
                    )));
                }
                Bound::Relative { ratio: ratio.unwrap_or(1.0), delta: v }
            } else {
                if !(0.0..=1.0).contains(&v) {
                    return Err(fail("a share must be between 0% and 100%".into()));
                }
                Bound::Share(v)
            }
        } else {
            return Err(fail(format!("the bound `{bound}` needs a unit (`%`, `x` or `ms`): {USAGE}")));
        };
        Ok(Gate { text: text.trim().to_owned(), metric, bound })
    }

    /// Whether the gate compares with the baseline (and so needs baseline evidence).
    pub fn relative(&self) -> bool {
        matches!(self.bound, Bound::Relative { .. })
    }
}

/// The gates a rollout uses when its spec names none (chosen with `gate-sim`; the README's
/// rollout section shows their operating characteristics).
pub const DEFAULT_GATES: [&str; 3] = ["error_rate<=1.5x+0.2%", "p99<=1.2x", "accuracy>=-2%"];

/// The `shadow` strategy's defaults: a shadow gets no labels, but its agreement is measured.
pub const DEFAULT_SHADOW_GATES: [&str; 3] = ["error_rate<=1.5x+0.2%", "p99<=1.2x", "agreement>=95%"];

/// The rollout-wide error budget when a spec names none: the chance that any gate of a rollout
/// ever gives a wrong verdict (a false rollback or a false pass) is at most this.
pub const DEFAULT_ALPHA: f64 = 0.01;

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
    /// The limit the candidate was held to (from the baseline's point estimate).
    pub limit: Option<f64>,
    /// Samples behind each side (requests, or labelled predictions for accuracy).
    pub candidate_samples: u64,
    pub baseline_samples: u64,
    /// The minimum sample each side needs.
    pub min_samples: u64,
    pub detail: String,
    /// The confidence interval of the candidate's excess over its limit (positive is worse; a
    /// share, or for latency the share of candidate requests above the limit minus `1 − q`):
    /// fail when `excess_low > 0`, pass when `excess_high <= 0`.
    #[serde(default)]
    pub excess_low: Option<f64>,
    #[serde(default)]
    pub excess_high: Option<f64>,
    /// This gate's share of the rollout's error budget.
    #[serde(default)]
    pub alpha: Option<f64>,
}

/// Sample sizes, slack and error budget a rollout judges with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    pub min_requests: u64,
    pub min_labels: u64,
    pub latency_slack_ms: f64,
    /// Each gate's error budget (the rollout's `alpha` divided by its number of gates).
    pub alpha: f64,
}

impl Thresholds {
    /// Where the time-uniform boundary is tightest: ten times the floor, where decisions on
    /// moderate effects are expected.
    fn n0(&self, min: u64) -> f64 {
        (min.max(1) * 10) as f64
    }
}

fn pct(v: f64) -> String {
    format!("{:.2}%", v * 100.0)
}

/// Judges one gate.
pub fn evaluate(gate: &Gate, candidate: &Evidence, baseline: &Evidence, t: Thresholds) -> GateResult {
    let mut result = match gate.metric {
        Metric::ErrorRate => rate_gate(
            gate,
            (candidate.errors, candidate.requests),
            (baseline.errors, baseline.requests),
            t.min_requests,
            true,
            t,
        ),
        Metric::Accuracy => rate_gate(
            gate,
            (candidate.correct, candidate.labelled),
            (baseline.correct, baseline.labelled),
            t.min_labels,
            false,
            t,
        ),
        Metric::Latency(q) => latency_gate(gate, q, candidate, baseline, t),
        Metric::Agreement => {
            rate_gate(gate, (candidate.agreed, candidate.compared), (0, 0), t.min_requests, false, t)
        }
    };
    result.alpha = Some(t.alpha);
    result
}

fn empty(gate: &Gate, candidate_samples: u64, baseline_samples: u64, min: u64) -> GateResult {
    GateResult {
        gate: gate.text.clone(),
        verdict: Verdict::Inconclusive,
        candidate: None,
        baseline: None,
        limit: None,
        candidate_samples,
        baseline_samples,
        min_samples: min,
        detail: String::new(),
        excess_low: None,
        excess_high: None,
        alpha: None,
    }
}

/// The three-way rule on the excess interval.
fn verdict(low: f64, high: f64) -> Verdict {
    if low > 0.0 {
        Verdict::Fail
    } else if high <= 0.0 {
        Verdict::Pass
    } else {
        Verdict::Inconclusive
    }
}

/// A share gate: error rate (an upper limit) or accuracy and agreement (lower ones).
fn rate_gate(
    gate: &Gate,
    cand: (u64, u64),
    base: (u64, u64),
    min: u64,
    upper: bool,
    t: Thresholds,
) -> GateResult {
    let what = match gate.metric {
        Metric::ErrorRate => "requests",
        Metric::Agreement => "shadow rows compared",
        _ => "labelled predictions",
    };
    let mut result = empty(gate, cand.1, base.1, min);
    let share = |(hits, n): (u64, u64)| (n > 0).then(|| hits as f64 / n as f64);
    result.candidate = share(cand);
    result.baseline = share(base);
    if cand.1 < min {
        result.detail = format!("candidate has {} {what}, needs {min}", cand.1);
        return result;
    }
    if gate.relative() && base.1 < min {
        result.detail = format!("baseline has {} {what}, needs {min}", base.1);
        return result;
    }
    let n0 = t.n0(min);
    let c = Share::sequential(cand.0, cand.1, t.alpha, n0);
    let b = Share::sequential(base.0, base.1, t.alpha, n0);
    // excess = candidate − limit for an upper limit, limit − candidate for a lower one.
    let (limit, low, high) = match gate.bound {
        Bound::Relative { ratio, delta } => {
            let limit = ratio * b.estimate + delta;
            let (_, low, high) =
                if upper { mover(1.0, c, ratio, b, -delta) } else { flip(mover(1.0, c, ratio, b, -delta)) };
            (limit, low, high)
        }
        Bound::Share(s) => {
            if upper {
                (s, c.low - s, c.high - s)
            } else {
                (s, s - c.high, s - c.low)
            }
        }
        Bound::Millis(_) => (f64::NAN, f64::NAN, f64::NAN),
    };
    result.limit = Some(limit);
    result.excess_low = Some(low);
    result.excess_high = Some(high);
    result.verdict = verdict(low, high);
    let side = if upper { "above" } else { "below" };
    let interval = format!("[{}, {}]", signed_pct(low), signed_pct(high));
    result.detail = match result.verdict {
        Verdict::Fail => format!(
            "{} is {side} the limit {} beyond doubt: excess {interval} (α = {:.2}%)",
            pct(c.estimate),
            pct(limit),
            t.alpha * 100.0
        ),
        Verdict::Pass => format!(
            "{} is within the limit {}: excess {interval} is at most 0 (α = {:.2}%)",
            pct(c.estimate),
            pct(limit),
            t.alpha * 100.0
        ),
        Verdict::Inconclusive => format!(
            "{} vs the limit {}: excess {interval} still spans 0 — more {what} needed",
            pct(c.estimate),
            pct(limit)
        ),
    };
    result
}

/// Turns the interval of `c − limit` into the interval of `limit − c`.
fn flip((e, low, high): (f64, f64, f64)) -> (f64, f64, f64) {
    (-e, -high, -low)
}

fn signed_pct(v: f64) -> String {
    format!("{:+.2}pt", v * 100.0)
}

/// The baseline's q-quantile bounds from its histogram: `(low, high)` such that, at level
/// `alpha`, the true quantile lies in `[low, high]`. `low` is 0 when the histogram cannot show
/// any value below it; `high` is `None` when it cannot show any value above it.
fn quantile_bounds(h: &LogHistogram, q: f64, alpha: f64, n0: f64) -> (f64, Option<f64>) {
    let n = h.count();
    let tail = 1.0 - q;
    let (mut low, mut high) = (0.0, None);
    for (value, above) in h.values_with_count_above() {
        let s = Share::sequential(above, n, alpha, n0);
        // Surely more than `tail` of the requests are above `value`: the quantile is above it.
        if s.low > tail {
            low = value;
        }
        // Surely at most `tail` are above it: the quantile is at or below it.
        if high.is_none() && s.high <= tail {
            high = Some(value);
        }
    }
    (low, high)
}

fn latency_gate(gate: &Gate, q: f64, cand: &Evidence, base: &Evidence, t: Thresholds) -> GateResult {
    let tail = 1.0 - q;
    let (nc, nb) = (cand.latency_us.count(), base.latency_us.count());
    let mut result = empty(gate, nc, nb, t.min_requests);
    let ms = |h: &LogHistogram| h.quantile(q).map(|us| us / 1000.0);
    result.candidate = ms(&cand.latency_us);
    result.baseline = ms(&base.latency_us);
    if nc < t.min_requests {
        result.detail = format!("candidate has {nc} timed requests, needs {}", t.min_requests);
        return result;
    }
    if gate.relative() && nb < t.min_requests {
        result.detail = format!("baseline has {nb} timed requests, needs {}", t.min_requests);
        return result;
    }
    let n0 = t.n0(t.min_requests);
    // The limit is known from the baseline only within its own interval: half the budget each.
    let (alpha_side, limits) = match gate.bound {
        Bound::Relative { ratio, .. } => {
            let (low, high) = quantile_bounds(&base.latency_us, q, t.alpha / 2.0, n0);
            let at = |us: f64| ratio * us / 1000.0 + t.latency_slack_ms;
            result.limit = result.baseline.map(|b| ratio * b + t.latency_slack_ms);
            (t.alpha / 2.0, (at(low), high.map(at)))
        }
        Bound::Millis(m) => {
            result.limit = Some(m);
            (t.alpha, (m, Some(m)))
        }
        Bound::Share(_) => return result,
    };
    let (pass_limit, fail_limit) = limits;
    let share_above =
        |ms: f64| Share::sequential(cand.latency_us.count_above(ms * 1000.0), nc, alpha_side, n0);
    // Pass: even against the lowest limit the baseline allows, the candidate's tail is small enough.
    let pass = share_above(pass_limit);
    let high = pass.high - tail;
    // Fail: even against the highest limit, its tail is too large.
    let fail = fail_limit.map(share_above);
    let low = fail.map_or(f64::NEG_INFINITY, |s| s.low - tail);
    result.excess_low = Some(low).filter(|v| v.is_finite());
    result.excess_high = Some(high);
    result.verdict = verdict(low, high);
    let p = format!("p{}", (q * 1000.0).round() / 10.0);
    result.detail = match (result.verdict, fail) {
        (Verdict::Fail, Some(s)) => format!(
            "{} of candidate requests took longer than {:.3} ms (the most the limit can be): {p} is above it beyond doubt \
             (at least {} > {})",
            pct(s.estimate),
            fail_limit.unwrap_or_default(),
            pct(s.low),
            pct(tail)
        ),
        (Verdict::Pass, _) => format!(
            "{} of candidate requests took longer than {pass_limit:.3} ms (the least the limit can be): {p} is within it \
             (at most {} ≤ {})",
            pct(pass.estimate),
            pct(pass.high),
            pct(tail)
        ),
        _ => format!(
            "{} of candidate requests above {pass_limit:.3} ms (at most {}, allowed {}): more requests needed",
            pct(pass.estimate),
            pct(pass.high),
            pct(tail)
        ),
    };
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The default budget split over three gates, as a default rollout judges.
    const T: Thresholds =
        Thresholds { min_requests: 200, min_labels: 50, latency_slack_ms: 1.0, alpha: 0.01 / 3.0 };

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

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-6)
    }

    #[test]
    fn gates_parse_and_bad_ones_are_named() {
        assert_eq!(gate("error_rate<=+0.5%").bound, Bound::Relative { ratio: 1.0, delta: 0.005 });
        assert_eq!(gate("error_rate<=1.5x+0.2%").bound, Bound::Relative { ratio: 1.5, delta: 0.002 });
        assert_eq!(gate("error_rate <= 2x").bound, Bound::Relative { ratio: 2.0, delta: 0.0 });
        assert_eq!(gate("p99 <= 1.2x").metric, Metric::Latency(0.99));
        assert_eq!(gate("p99<=1.2x").bound, Bound::Relative { ratio: 1.2, delta: 0.0 });
        assert_eq!(gate("p95<=40ms").bound, Bound::Millis(40.0));
        assert_eq!(gate("accuracy>=-1%").bound, Bound::Relative { ratio: 1.0, delta: -0.01 });
        assert_eq!(gate("accuracy>=90%").bound, Bound::Share(0.9));
        for (bad, says) in [
            ("p99<1.2x", "no `<=`"),
            ("latency<=2x", "unknown metric"),
            ("accuracy<=1%", "takes `>=`"),
            ("agreement>=-1%", "already measured against the primary"),
            ("agreement<=90%", "takes `>=`"),
            ("accuracy>=1.1x", "error_rate and latency gates only"),
            ("error_rate<=1.5x0.2%", "with a sign"),
            ("p99<=5%", "ratio"),
            ("p99<=1.2x+1%", "ratio"),
            ("p99<=0.5x", "below 1x"),
            ("accuracy>=+1%", "no better"),
            ("error_rate<=-1%", "no better"),
            ("error_rate<=150%", "between 0% and 100%"),
            ("p99<=abcms", "not a number"),
            ("p99<=12", "needs a unit"),
            ("error_rate<=5ms", "latency gates only"),
        ] {
            let e = Gate::parse(bad).unwrap_err();
            assert!(e.to_string().contains(says), "{bad}: {e}");
            assert!(e.to_string().starts_with(&format!("gate `{bad}`")), "{e}");
        }
    }

    // The expected intervals below were computed independently from the formulas (Wilson with
    // the normal-mixture critical value, α = 1%/3, n0 = 10 × the floor; MOVER combination).

    #[test]
    fn accuracy_three_way_on_hand_computed_intervals() {
        let g = gate("accuracy>=-2%");
        // 90.0 % vs 98.0 % on 1,000 labels each: the limit is 96 %; excess 6 points, in
        // [1.951, 10.469] points: worse beyond doubt.
        let r = evaluate(&g, &labelled(1000, 900), &labelled(1000, 980), T);
        assert_eq!(r.verdict, Verdict::Fail, "{r:?}");
        assert!(close(r.excess_low, 0.019_510_238) && close(r.excess_high, 0.104_687_240), "{r:?}");
        assert!(close(r.limit, 0.96) && close(r.candidate, 0.9), "{r:?}");
        // 97.5 % vs 98.0 %: within the limit by the point estimate, but the interval
        // [-4.400, +1.478] still reaches past it: inconclusive, never a pass.
        let r = evaluate(&g, &labelled(1000, 975), &labelled(1000, 980), T);
        assert_eq!(r.verdict, Verdict::Inconclusive, "{r:?}");
        assert!(close(r.excess_low, -0.044_001_237) && close(r.excess_high, 0.014_782_504), "{r:?}");
        // 98.5 % vs 98.0 % on 20,000 each: [-3.060, -1.948]: within the limit beyond doubt.
        let r = evaluate(&g, &labelled(20_000, 19_700), &labelled(20_000, 19_600), T);
        assert_eq!(r.verdict, Verdict::Pass, "{r:?}");
        assert!(close(r.excess_low, -0.030_596_192) && close(r.excess_high, -0.019_480_383), "{r:?}");
        // Exactly on the limit (96 % vs 98 %): never passes, whatever the sample.
        let r = evaluate(&g, &labelled(10_000, 9_600), &labelled(10_000, 9_800), T);
        assert_eq!(r.verdict, Verdict::Inconclusive, "{r:?}");
        assert!(close(r.excess_high, 0.010_179_232), "{r:?}");
        // 50 of 50 right on both sides: the point estimate is perfect, the evidence is thin.
        let r = evaluate(&g, &labelled(50, 50), &labelled(50, 50), T);
        assert_eq!(r.verdict, Verdict::Inconclusive, "{r:?}");
        assert!(close(r.excess_high, 0.293_525_948), "{r:?}");
    }

    #[test]
    fn thin_evidence_is_inconclusive_never_pass() {
        let r = evaluate(&gate("error_rate<=+1%"), &traffic(199, 0, 1.0), &traffic(1000, 0, 1.0), T);
        assert_eq!(r.verdict, Verdict::Inconclusive, "{r:?}");
        assert!(r.detail.contains("candidate has 199 requests, needs 200"), "{}", r.detail);
        let r = evaluate(&gate("p99<=1.2x"), &traffic(500, 0, 1.0), &traffic(10, 0, 1.0), T);
        assert_eq!(r.verdict, Verdict::Inconclusive, "{r:?}");
        assert!(r.detail.contains("baseline"), "{}", r.detail);
        // No errors in 200 requests is no proof of an error rate under 0.2 %: the Wilson upper
        // limit of 0/200 is about 7 %. Interval of the excess: [-0.436, +10.048] points.
        let r = evaluate(&gate("error_rate<=1.5x+0.2%"), &traffic(200, 0, 1.0), &traffic(10_000, 0, 1.0), T);
        assert_eq!(r.verdict, Verdict::Inconclusive, "{r:?}");
        assert!(close(r.excess_low, -0.004_357_269) && close(r.excess_high, 0.100_478_812), "{r:?}");
    }

    #[test]
    fn error_rate_against_a_ratio_plus_points() {
        let g = gate("error_rate<=1.5x+0.2%");
        // 4 % vs 1 % on 1,000 each: limit 1.7 %, but [-1.473, +5.704] points: not yet clear.
        let r = evaluate(&g, &traffic(1000, 40, 1.0), &traffic(1000, 10, 1.0), T);
        assert_eq!(r.verdict, Verdict::Inconclusive, "{r:?}");
        assert!(close(r.excess_low, -0.014_734_318), "{r:?}");
        // The same rates on 10,000 each: [+1.291, +3.282] points.
        let r = evaluate(&g, &traffic(10_000, 400, 1.0), &traffic(10_000, 100, 1.0), T);
        assert_eq!(r.verdict, Verdict::Fail, "{r:?}");
        assert!(close(r.excess_low, 0.012_914_806) && close(r.excess_high, 0.032_819_311), "{r:?}");
        // 0.5 % vs 0.5 % on 20,000 / 40,000: [-0.750, -0.141] points.
        let r = evaluate(&g, &traffic(20_000, 100, 1.0), &traffic(40_000, 200, 1.0), T);
        assert_eq!(r.verdict, Verdict::Pass, "{r:?}");
        assert!(close(r.excess_low, -0.007_504_845) && close(r.excess_high, -0.001_405_155), "{r:?}");
        // A baseline with no errors at all: the 0.2 points carry a candidate with 10 in 20,000.
        let r = evaluate(&g, &traffic(20_000, 10, 1.0), &traffic(20_000, 0, 1.0), T);
        assert_eq!(r.verdict, Verdict::Pass, "{r:?}");
        assert!(close(r.excess_high, -0.000_336_943), "{r:?}");
        // Everything failing against an absolute ceiling is clear at once.
        let r = evaluate(&gate("error_rate<=0%"), &traffic(200, 200, 1.0), &Evidence::default(), T);
        assert_eq!(r.verdict, Verdict::Fail, "{r:?}");
    }

    #[test]
    fn agreement_is_a_floor_on_the_shadow_alone() {
        let shadow = |compared, agreed| Evidence { compared, agreed, ..Evidence::default() };
        let g = gate("agreement>=95%");
        // 60 % agreement on 200 rows: excess over the floor [+20.309, +51.741] points.
        let r = evaluate(&g, &shadow(200, 120), &Evidence::default(), T);
        assert_eq!(r.verdict, Verdict::Fail, "{r:?}");
        assert!(close(r.candidate, 0.6) && close(r.excess_low, 0.203_085_755), "{r:?}");
        // 199 of 200 could still be a 94 % shadow; 1,990 of 2,000 cannot.
        let r = evaluate(&g, &shadow(200, 199), &Evidence::default(), T);
        assert_eq!(r.verdict, Verdict::Inconclusive, "{r:?}");
        assert!(close(r.excess_high, 0.061_252_338), "{r:?}");
        let r = evaluate(&g, &shadow(2000, 1990), &Evidence::default(), T);
        assert_eq!(r.verdict, Verdict::Pass, "{r:?}");
        assert!(close(r.excess_high, -0.034_121_384), "{r:?}");
        let r = evaluate(&g, &shadow(50, 10), &Evidence::default(), T);
        assert_eq!(r.verdict, Verdict::Inconclusive, "{r:?}");
        assert!(r.detail.contains("50 shadow rows compared, needs 200"), "{}", r.detail);
    }

    #[test]
    fn latency_is_judged_on_the_candidates_tail() {
        let g = gate("p99<=1.2x");
        // Both at 0.5 ms on 5,000 requests: no candidate request above the least possible
        // limit (1 ms of slack over a baseline quantile known to be ≥ 0): pass.
        let r = evaluate(&g, &traffic(5000, 0, 0.5), &traffic(5000, 0, 0.5), T);
        assert_eq!(r.verdict, Verdict::Pass, "{r:?}");
        // 150 ms against 0.05 ms on 500 baseline requests: the baseline's p99 cannot be bounded
        // from above yet (its slowest 1 % could all be unseen: 0.99^500 = 0.7 %), so no verdict.
        let r = evaluate(&g, &traffic(500, 0, 150.0), &traffic(500, 0, 0.05), T);
        assert_eq!(r.verdict, Verdict::Inconclusive, "{r:?}");
        // On 5,000 baseline requests it can: every candidate request is past any possible limit.
        let r = evaluate(&g, &traffic(500, 0, 150.0), &traffic(5000, 0, 0.05), T);
        assert_eq!(r.verdict, Verdict::Fail, "{r:?}");
        assert!(r.candidate.unwrap() > 140.0 && r.limit.unwrap() < 1.1, "{r:?}");
        // Baseline: 1 % of 10,000 requests at 20 ms, the rest at 10 ms (p99 known to be ≤ 20 ms,
        // so the most the limit can be is 1.2 × 20 + 1 = 25 ms). Candidate: 3 % at 40 ms.
        let mut base = traffic(9_900, 0, 10.0);
        base.latency_us.record_n(20_000.0, 100);
        let mut cand = traffic(9_700, 0, 10.0);
        cand.latency_us.record_n(40_000.0, 300);
        let r = evaluate(&g, &cand, &base, T);
        assert_eq!(r.verdict, Verdict::Fail, "{r:?}");
        assert!(r.detail.contains("3.00% of candidate requests took longer than 25.1"), "{}", r.detail);
        // The same tail on 300 requests is not yet clear: 9 slow ones could be luck.
        let mut few = traffic(291, 0, 10.0);
        few.latency_us.record_n(40_000.0, 9);
        let r = evaluate(&g, &few, &base, T);
        assert_eq!(r.verdict, Verdict::Inconclusive, "{r:?}");
        // An absolute ceiling needs no baseline.
        let r = evaluate(&gate("p99<=50ms"), &traffic(5000, 0, 1.0), &Evidence::default(), T);
        assert_eq!(r.verdict, Verdict::Pass, "{r:?}");
    }

    proptest::proptest! {
        /// Gate text comes from API bodies and spec files: whatever it is, parsing names the
        /// gate or succeeds, and a parsed gate judges any evidence without panicking.
        #[test]
        fn any_gate_text_parses_or_is_refused_by_name(
            metric in "(error_rate|accuracy|agreement|p50|p99|p999|lat)",
            op in "(<=|>=|<|=)",
            bound in "[-+]?[0-9.eNa]{0,6}(x|%|ms|x\\+[0-9.]{1,4}%)?",
            noise in "\\PC{0,3}",
            counts in proptest::collection::vec(0u64..5_000, 6),
        ) {
            let text = format!("{metric}{op}{bound}{noise}");
            match Gate::parse(&text) {
                Ok(g) => {
                    let side = |i: usize| {
                        let (n, k) = (counts[i].max(counts[i + 1]), counts[i].min(counts[i + 1]));
                        let mut e = traffic(n, k, 1.0 + counts[4] as f64 / 100.0);
                        e.labelled = n;
                        e.correct = k;
                        e.compared = n;
                        e.agreed = k;
                        e
                    };
                    let r = evaluate(&g, &side(0), &side(2), T);
                    if let (Some(lo), Some(hi)) = (r.excess_low, r.excess_high) {
                        proptest::prop_assert!(lo <= hi + 1e-12, "{r:?}");
                    }
                }
                Err(e) => proptest::prop_assert!(e.to_string().starts_with("gate `"), "{e}"),
            }
        }
    }

    #[test]
    fn a_gates_budget_is_reported() {
        let r = evaluate(&gate("accuracy>=-2%"), &labelled(10, 10), &labelled(10, 10), T);
        assert!(close(r.alpha, 0.01 / 3.0), "{r:?}");
    }
}
