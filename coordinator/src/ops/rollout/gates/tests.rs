//! Unit tests of the gates: parsing, and each gate's three-way verdict on hand-computed cases.

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
