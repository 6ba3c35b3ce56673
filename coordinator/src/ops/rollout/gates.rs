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
mod tests;
