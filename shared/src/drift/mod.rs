//! Drift statistics: is the data a model sees now distributed like the data it was built on?
//!
//! One implementation serves the agent's drift windows, the coordinator's monitoring and the
//! rollout gates. Every function agrees with the scipy function named on it to within 1e-9 on
//! the fixtures in `tests/fixtures/drift/` (made by `tests/fixtures/make_drift_expected.py`).
//!
//! - [`ks_2samp`]: two-sample Kolmogorov–Smirnov (numeric features, small samples);
//! - [`chisquare`]: Pearson's chi-square goodness of fit (categorical features, small samples);
//! - [`wasserstein_distance`] / [`wasserstein_normed`]: earth mover's distance, normalised by
//!   the reference's standard deviation (numeric features, large samples);
//! - [`jensenshannon`]: Jensen–Shannon distance of two frequency vectors (categorical, large);
//! - [`psi`]: Population Stability Index, on the binning documented there.
//!
//! [`detect`] picks the test by sample size the way Evidently's defaults do — p-value tests
//! (KS, chi-square; drift when p < 0.05) while both samples hold at most 1,000 values, where
//! p-values are informative, and distances (normalised Wasserstein, Jensen–Shannon; drift when
//! ≥ 0.1) above, where any tiny shift becomes "significant" — and lets a model's policy choose
//! another test or threshold per feature.

mod kolmogorov;
mod ks;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use kolmogorov::{kstwo_cdf, kstwo_sf, smirnov_sf};
pub use ks::{KsMethod, KsResult, ks_2samp};

/// `scipy.stats.wasserstein_distance(u, v)`: the area between the two empirical CDFs.
/// `None` for an empty sample or a non-finite value.
pub fn wasserstein_distance(u: &[f64], v: &[f64]) -> Option<f64> {
    if u.is_empty() || v.is_empty() || u.iter().chain(v).any(|x| !x.is_finite()) {
        return None;
    }
    let mut u = u.to_vec();
    let mut v = v.to_vec();
    u.sort_by(f64::total_cmp);
    v.sort_by(f64::total_cmp);
    let mut all: Vec<f64> = u.iter().chain(&v).copied().collect();
    all.sort_by(f64::total_cmp);
    let (nu, nv) = (u.len() as f64, v.len() as f64);
    let mut total = 0.0;
    for pair in all.windows(2) {
        let x = pair[0];
        let cu = u.partition_point(|a| *a <= x) as f64 / nu;
        let cv = v.partition_point(|a| *a <= x) as f64 / nv;
        total += (cu - cv).abs() * (pair[1] - pair[0]);
    }
    Some(total)
}

/// The Wasserstein distance divided by the reference's (population) standard deviation, so one
/// threshold fits every feature's scale (Evidently's `wasserstein`). `None` when the reference
/// has no spread.
pub fn wasserstein_normed(reference: &[f64], current: &[f64]) -> Option<f64> {
    let std = population_std(reference)?;
    if std == 0.0 {
        return None;
    }
    Some(wasserstein_distance(reference, current)? / std)
}

fn population_std(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    Some((values.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n).sqrt())
}

/// `scipy.spatial.distance.jensenshannon(p, q, base)`: both vectors are normalised first; natural
/// logarithm unless `base` is given (base 2 bounds the distance by 1). `None` for vectors of
/// different lengths, negative or non-finite entries, or an all-zero vector.
pub fn jensenshannon(p: &[f64], q: &[f64], base: Option<f64>) -> Option<f64> {
    if p.len() != q.len() || p.is_empty() || p.iter().chain(q).any(|x| !x.is_finite() || *x < 0.0) {
        return None;
    }
    let (sp, sq) = (p.iter().sum::<f64>(), q.iter().sum::<f64>());
    if sp <= 0.0 || sq <= 0.0 {
        return None;
    }
    let mut left = 0.0;
    let mut right = 0.0;
    for (a, b) in p.iter().zip(q) {
        let (a, b) = (a / sp, b / sq);
        let m = (a + b) / 2.0;
        left += rel_entr(a, m);
        right += rel_entr(b, m);
    }
    let mut js = left + right;
    if let Some(base) = base {
        js /= base.ln();
    }
    Some((js / 2.0).sqrt())
}

/// `x·ln(x/y)`, with `0·ln(0/y) = 0`.
fn rel_entr(x: f64, y: f64) -> f64 {
    if x > 0.0 && y > 0.0 {
        x * (x / y).ln()
    } else if x == 0.0 && y >= 0.0 {
        0.0
    } else {
        f64::INFINITY
    }
}

/// Pearson's chi-square test's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ChiSquare {
    pub statistic: f64,
    pub pvalue: f64,
    pub dof: usize,
}

/// Why a chi-square test cannot run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ChiSquareError {
    #[error("chi-square needs at least two categories, got {0}")]
    TooFewCategories(usize),
    #[error("observed and expected counts differ in length ({0} vs {1})")]
    LengthMismatch(usize, usize),
    #[error("counts must be finite and non-negative")]
    BadCount,
    #[error("observed counts sum to {observed} but expected counts to {expected}; they must agree")]
    SumMismatch { observed: f64, expected: f64 },
}

/// `scipy.stats.chisquare(f_obs, f_exp)`: statistic `Σ (o − e)²/e`, p-value from the chi-square
/// distribution with `k − 1` degrees of freedom. Without `f_exp`, every category is expected
/// equally often. An expected count of 0 where something was observed gives an infinite
/// statistic and p = 0 (a category the reference never saw).
pub fn chisquare(f_obs: &[f64], f_exp: Option<&[f64]>) -> Result<ChiSquare, ChiSquareError> {
    let k = f_obs.len();
    if k < 2 {
        return Err(ChiSquareError::TooFewCategories(k));
    }
    let observed: f64 = f_obs.iter().sum();
    let uniform;
    let f_exp = match f_exp {
        Some(e) => e,
        None => {
            uniform = vec![observed / k as f64; k];
            &uniform
        }
    };
    if f_exp.len() != k {
        return Err(ChiSquareError::LengthMismatch(k, f_exp.len()));
    }
    if f_obs.iter().chain(f_exp).any(|x| !x.is_finite() || *x < 0.0) {
        return Err(ChiSquareError::BadCount);
    }
    let expected: f64 = f_exp.iter().sum();
    // scipy's tolerance for the two totals.
    if (observed - expected).abs() > 1.5e-8 * observed.max(expected) {
        return Err(ChiSquareError::SumMismatch { observed, expected });
    }
    let statistic: f64 = f_obs
        .iter()
        .zip(f_exp)
        .map(|(o, e)| {
            let d = o - e;
            if *e == 0.0 { if d == 0.0 { 0.0 } else { f64::INFINITY } } else { d * d / e }
        })
        .sum();
    let dof = k - 1;
    Ok(ChiSquare { statistic, pvalue: chi2_sf(statistic, dof as f64), dof })
}

/// The chi-square distribution's survival function: `Q(dof/2, x/2)`.
fn chi2_sf(x: f64, dof: f64) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    if x <= 0.0 {
        return 1.0;
    }
    if x.is_infinite() {
        return 0.0;
    }
    statrs::function::gamma::gamma_ur(dof / 2.0, x / 2.0).clamp(0.0, 1.0)
}

/// `numpy.histogram_bin_edges(values, bins)`: `bins` equal-width bins from the minimum to the
/// maximum (a constant sample gets the range `[v − 0.5, v + 0.5]`). `None` for no values, a
/// non-finite value or zero bins.
pub fn histogram_edges(values: &[f64], bins: usize) -> Option<Vec<f64>> {
    if values.is_empty() || bins == 0 || values.iter().any(|x| !x.is_finite()) {
        return None;
    }
    let mut lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let mut hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if lo == hi {
        lo -= 0.5;
        hi += 0.5;
    }
    let step = (hi - lo) / bins as f64;
    let mut edges: Vec<f64> = (0..=bins).map(|i| i as f64 * step + lo).collect();
    edges[bins] = hi;
    Some(edges)
}

/// `numpy.histogram(values, edges)`: bin `i` holds `edges[i] ≤ x < edges[i+1]`, the last bin
/// also its right edge; values outside the edges are not counted.
pub fn histogram_counts(values: &[f64], edges: &[f64]) -> Vec<u64> {
    let bins = edges.len().saturating_sub(1);
    let mut counts = vec![0u64; bins];
    if bins == 0 {
        return counts;
    }
    let (lo, hi) = (edges[0], edges[bins]);
    for &x in values {
        if !(lo..=hi).contains(&x) {
            continue;
        }
        let bin = if x == hi { bins - 1 } else { edges.partition_point(|e| *e <= x) - 1 };
        counts[bin] += 1;
    }
    counts
}

/// The share given to an empty bin in [`psi`], so the logarithm stays finite (as Evidently does).
pub const PSI_EMPTY_BIN_SHARE: f64 = 1e-4;

/// Population Stability Index: `Σ (c − r)·ln(c / r)` over bins, where `r` and `c` are the shares
/// of the reference and current values per bin. The bins are 10 equal-width bins spanning both
/// samples together (`numpy.histogram_bin_edges(concat(reference, current), 10)`), and an empty
/// bin's share is [`PSI_EMPTY_BIN_SHARE`]. Conventional reading: < 0.1 stable, 0.1–0.25
/// moderate shift, > 0.25 major shift.
pub fn psi(reference: &[f64], current: &[f64]) -> Option<f64> {
    if reference.is_empty() || current.is_empty() {
        return None;
    }
    let all: Vec<f64> = reference.iter().chain(current).copied().collect();
    let edges = histogram_edges(&all, 10)?;
    let shares = |values: &[f64]| -> Vec<f64> {
        let n = values.len() as f64;
        histogram_counts(values, &edges)
            .into_iter()
            .map(|c| if c == 0 { PSI_EMPTY_BIN_SHARE } else { c as f64 / n })
            .collect()
    };
    let (r, c) = (shares(reference), shares(current));
    Some(r.iter().zip(&c).map(|(r, c)| (c - r) * (c / r).ln()).sum())
}

/// Whether a feature's values are measurements or category codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FeatureKind {
    #[default]
    Numeric,
    Categorical,
}

/// A drift test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DriftTest {
    /// Two-sample Kolmogorov–Smirnov; drift when p < threshold.
    Ks,
    /// Chi-square on category counts; drift when p < threshold.
    Chisquare,
    /// Wasserstein distance / reference std; drift when ≥ threshold.
    Wasserstein,
    /// Jensen–Shannon distance of category shares (natural log); drift when ≥ threshold.
    JensenShannon,
    /// Population Stability Index; drift when ≥ threshold.
    Psi,
}

impl DriftTest {
    /// The name used in configuration, metrics labels and reports (`ks`, `jensen_shannon`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            DriftTest::Ks => "ks",
            DriftTest::Chisquare => "chisquare",
            DriftTest::Wasserstein => "wasserstein",
            DriftTest::JensenShannon => "jensen_shannon",
            DriftTest::Psi => "psi",
        }
    }

    /// Whether the score is a p-value (drift below the threshold) rather than a distance.
    pub fn is_p_value(self) -> bool {
        matches!(self, DriftTest::Ks | DriftTest::Chisquare)
    }

    /// The conventional threshold: p < 0.05 for tests, 0.1 for distances and PSI.
    pub fn default_threshold(self) -> f64 {
        if self.is_p_value() { 0.05 } else { 0.1 }
    }
}

/// Which test and threshold to use; unset fields follow the sample-size rule.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DriftPolicy {
    pub test: Option<DriftTest>,
    pub threshold: Option<f64>,
}

/// Up to this many values in the larger sample, p-value tests are used by default.
pub const SMALL_SAMPLE_ROWS: usize = 1000;

/// The default test for a feature: by kind, and by the larger of the two sample sizes (a big
/// current window makes a p-value test flag negligible shifts even when the reference is small).
pub fn default_test(kind: FeatureKind, reference_rows: usize, current_rows: usize) -> DriftTest {
    let small = reference_rows.max(current_rows) <= SMALL_SAMPLE_ROWS;
    match (kind, small) {
        (FeatureKind::Numeric, true) => DriftTest::Ks,
        (FeatureKind::Numeric, false) => DriftTest::Wasserstein,
        (FeatureKind::Categorical, true) => DriftTest::Chisquare,
        (FeatureKind::Categorical, false) => DriftTest::JensenShannon,
    }
}

/// One feature's drift verdict.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DriftResult {
    pub test: DriftTest,
    /// The p-value (for KS and chi-square) or the distance.
    pub score: f64,
    pub threshold: f64,
    pub drifted: bool,
    pub reference_rows: usize,
    pub current_rows: usize,
}

/// Why a drift test could not give a verdict.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DriftError {
    #[error("no values in the {0} sample")]
    Empty(&'static str),
    #[error("a value in the {0} sample is not finite")]
    NotFinite(&'static str),
    #[error("{test:?} does not apply to {kind:?} features")]
    WrongKind { test: DriftTest, kind: FeatureKind },
    #[error("the reference has no spread, so the normalised Wasserstein distance is undefined")]
    ConstantReference,
    #[error("the threshold {0} is not a number in (0, ∞)")]
    BadThreshold(f64),
    #[error(transparent)]
    ChiSquare(#[from] ChiSquareError),
}

/// Tests `current` against `reference` with the policy's test, or the sample-size default.
/// Missing values must be removed (and counted) by the caller.
pub fn detect(
    kind: FeatureKind,
    reference: &[f64],
    current: &[f64],
    policy: DriftPolicy,
) -> Result<DriftResult, DriftError> {
    for (name, sample) in [("reference", reference), ("current", current)] {
        if sample.is_empty() {
            return Err(DriftError::Empty(name));
        }
        if sample.iter().any(|x| !x.is_finite()) {
            return Err(DriftError::NotFinite(name));
        }
    }
    let test = policy.test.unwrap_or_else(|| default_test(kind, reference.len(), current.len()));
    let threshold = policy.threshold.unwrap_or_else(|| test.default_threshold());
    if !(threshold.is_finite() && threshold > 0.0) {
        return Err(DriftError::BadThreshold(threshold));
    }
    let wrong_kind = Err(DriftError::WrongKind { test, kind });
    let score = match (test, kind) {
        (DriftTest::Ks, FeatureKind::Numeric) => {
            ks_2samp(reference, current, KsMethod::Auto).ok_or(DriftError::Empty("reference"))?.pvalue
        }
        (DriftTest::Wasserstein, FeatureKind::Numeric) => {
            wasserstein_normed(reference, current).ok_or(DriftError::ConstantReference)?
        }
        (DriftTest::Ks | DriftTest::Wasserstein, FeatureKind::Categorical) => return wrong_kind,
        (DriftTest::Chisquare, FeatureKind::Categorical) => {
            let (r, c) = category_counts(reference, current);
            let scale = current.len() as f64 / reference.len() as f64;
            let expected: Vec<f64> = r.iter().map(|x| x * scale).collect();
            chisquare(&c, Some(&expected))?.pvalue
        }
        (DriftTest::JensenShannon, FeatureKind::Categorical) => {
            let (r, c) = category_counts(reference, current);
            jensenshannon(&r, &c, None).ok_or(DriftError::Empty("reference"))?
        }
        (DriftTest::Chisquare | DriftTest::JensenShannon, FeatureKind::Numeric) => return wrong_kind,
        (DriftTest::Psi, _) => psi(reference, current).ok_or(DriftError::Empty("reference"))?,
    };
    let drifted = if test.is_p_value() { score < threshold } else { score >= threshold };
    Ok(DriftResult {
        test,
        score,
        threshold,
        drifted,
        reference_rows: reference.len(),
        current_rows: current.len(),
    })
}

/// Counts per category over the union of both samples' categories, in ascending order.
fn category_counts(reference: &[f64], current: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let mut table: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
    // Keyed by the bit pattern of the (finite) code, with −0 folded into 0.
    let key = |x: f64| if x == 0.0 { 0.0f64.to_bits() } else { x.to_bits() };
    for x in reference {
        table.entry(key(*x)).or_default().0 += 1.0;
    }
    for x in current {
        table.entry(key(*x)).or_default().1 += 1.0;
    }
    table.into_values().unzip()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_serialized_ones() {
        for t in [
            DriftTest::Ks,
            DriftTest::Chisquare,
            DriftTest::Wasserstein,
            DriftTest::JensenShannon,
            DriftTest::Psi,
        ] {
            assert_eq!(serde_json::to_value(t).unwrap(), t.as_str());
        }
    }

    #[test]
    fn sample_size_picks_the_test() {
        assert_eq!(default_test(FeatureKind::Numeric, 500, 1000), DriftTest::Ks);
        assert_eq!(default_test(FeatureKind::Numeric, 500, 1001), DriftTest::Wasserstein);
        assert_eq!(default_test(FeatureKind::Categorical, 1000, 10), DriftTest::Chisquare);
        assert_eq!(default_test(FeatureKind::Categorical, 5000, 10), DriftTest::JensenShannon);
    }

    #[test]
    fn a_shifted_sample_drifts_and_an_equal_one_does_not() {
        let reference: Vec<f64> = (0..300).map(|i| f64::from(i % 100)).collect();
        let same: Vec<f64> = (0..200).map(|i| f64::from((i * 7) % 100)).collect();
        let shifted: Vec<f64> = same.iter().map(|x| x + 30.0).collect();
        let policy = DriftPolicy::default();
        let calm = detect(FeatureKind::Numeric, &reference, &same, policy).expect("valid");
        let moved = detect(FeatureKind::Numeric, &reference, &shifted, policy).expect("valid");
        assert_eq!(calm.test, DriftTest::Ks);
        assert!(!calm.drifted && moved.drifted, "{calm:?} / {moved:?}");
    }

    #[test]
    fn a_category_the_reference_never_saw_is_drift() {
        let reference = [0.0, 1.0, 0.0, 1.0, 1.0, 0.0];
        let current = [0.0, 1.0, 2.0, 2.0];
        let r =
            detect(FeatureKind::Categorical, &reference, &current, DriftPolicy::default()).expect("valid");
        assert_eq!((r.test, r.score, r.drifted), (DriftTest::Chisquare, 0.0, true));
    }

    #[test]
    fn tests_that_do_not_fit_the_feature_kind_are_refused() {
        let policy = DriftPolicy { test: Some(DriftTest::Ks), threshold: None };
        let err = detect(FeatureKind::Categorical, &[1.0], &[1.0], policy).unwrap_err();
        assert!(matches!(err, DriftError::WrongKind { .. }), "{err}");
        let bad = DriftPolicy { test: None, threshold: Some(-1.0) };
        assert!(matches!(
            detect(FeatureKind::Numeric, &[1.0], &[1.0], bad),
            Err(DriftError::BadThreshold(_))
        ));
    }

    proptest::proptest! {
        #[test]
        fn every_statistic_stays_in_range_on_arbitrary_samples(
            a in proptest::collection::vec(-1e6f64..1e6, 1..300),
            b in proptest::collection::vec(-1e6f64..1e6, 1..300),
        ) {
            let r = ks_2samp(&a, &b, KsMethod::Auto).expect("non-empty finite samples");
            proptest::prop_assert!((0.0..=1.0).contains(&r.statistic) && (0.0..=1.0).contains(&r.pvalue));
            let asymp = ks_2samp(&a, &b, KsMethod::Asymp).expect("non-empty finite samples");
            proptest::prop_assert!((0.0..=1.0).contains(&asymp.pvalue));
            proptest::prop_assert!(wasserstein_distance(&a, &b).expect("finite") >= 0.0);
            proptest::prop_assert!(psi(&a, &b).expect("finite") >= 0.0);
            for kind in [FeatureKind::Numeric, FeatureKind::Categorical] {
                let rounded: Vec<f64> = a.iter().map(|x| (x / 2e5).round()).collect();
                let other: Vec<f64> = b.iter().map(|x| (x / 2e5).round()).collect();
                let r = detect(kind, &rounded, &other, DriftPolicy::default());
                // A constant reference has no normalised Wasserstein distance; nothing else fails.
                proptest::prop_assert!(r.is_ok() || matches!(r, Err(DriftError::ConstantReference)));
            }
        }

        #[test]
        fn the_kolmogorov_tail_is_a_probability_everywhere(n in 1u64..400, x in 0.0f64..=1.0) {
            let sf = kstwo_sf(n, x);
            proptest::prop_assert!((0.0..=1.0).contains(&sf), "kstwo_sf({n}, {x}) = {sf}");
            proptest::prop_assert!((0.0..=1.0).contains(&smirnov_sf(n, x)));
        }
    }

    #[test]
    fn histogram_counts_the_right_edge_in_the_last_bin() {
        let values = [0.0, 1.0, 2.0, 3.0, 4.0];
        let edges = histogram_edges(&values, 2).expect("edges");
        assert_eq!(edges, vec![0.0, 2.0, 4.0]);
        assert_eq!(histogram_counts(&values, &edges), vec![2, 3]);
    }
}
