//! `shared::drift` against scipy: every case in `tests/fixtures/drift/expected.json` (written by
//! `tests/fixtures/make_drift_expected.py` with the pinned numpy/scipy) must agree within 1e-9
//! (absolute, or relative for values above 1). Small p-values are held to a relative bound too,
//! so a tail that is wrong by orders of magnitude cannot hide under the absolute one.

use std::path::PathBuf;

use outpost_shared::drift::{self, KsMethod};
use serde::Deserialize;

const TOLERANCE: f64 = 1e-9;
/// Relative bound for values in (1e-300, 1e-9), where the absolute bound says nothing.
const TAIL_RELATIVE: f64 = 1e-6;

#[derive(Deserialize)]
struct Expected {
    ks_2samp: Vec<KsCase>,
    kstwo_sf: Vec<KstwoCase>,
    wasserstein: Vec<WassersteinCase>,
    jensenshannon: Vec<JsCase>,
    chisquare: Vec<ChiCase>,
    histogram: Vec<HistogramCase>,
    psi: Vec<PsiCase>,
}

#[derive(Deserialize)]
struct KsCase {
    name: String,
    a: Vec<f64>,
    b: Vec<f64>,
    method: KsMethod,
    statistic: f64,
    pvalue: f64,
}

#[derive(Deserialize)]
struct KstwoCase {
    n: u64,
    d: f64,
    sf: f64,
}

#[derive(Deserialize)]
struct WassersteinCase {
    name: String,
    u: Vec<f64>,
    v: Vec<f64>,
    distance: f64,
    normed: f64,
}

#[derive(Deserialize)]
struct JsCase {
    name: String,
    p: Vec<f64>,
    q: Vec<f64>,
    base: Option<f64>,
    distance: f64,
}

#[derive(Deserialize)]
struct ChiCase {
    name: String,
    f_obs: Vec<f64>,
    f_exp: Option<Vec<f64>>,
    statistic: f64,
    pvalue: f64,
}

#[derive(Deserialize)]
struct HistogramCase {
    name: String,
    data: Vec<f64>,
    bins: usize,
    edges: Vec<f64>,
    counts: Vec<u64>,
}

#[derive(Deserialize)]
struct PsiCase {
    name: String,
    reference: Vec<f64>,
    current: Vec<f64>,
    psi: f64,
}

fn expected() -> Expected {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/drift/expected.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Collects every mismatch so one run shows them all.
#[derive(Default)]
struct Mismatches(Vec<String>);

impl Mismatches {
    fn check(&mut self, what: &str, got: f64, want: f64) {
        let scale = want.abs().max(1.0);
        let mut ok = (got - want).abs() <= TOLERANCE * scale || (got.is_infinite() && got == want);
        if ok && want > 1e-300 && want < TOLERANCE {
            ok = (got - want).abs() <= TAIL_RELATIVE * want;
        }
        if !ok {
            self.0.push(format!("{what}: got {got:e}, scipy {want:e} (diff {:e})", got - want));
        }
    }

    fn assert_none(self, section: &str, cases: usize) {
        assert!(
            self.0.is_empty(),
            "{} of {cases} {section} cases disagree with scipy:\n{}",
            self.0.len(),
            self.0.join("\n")
        );
    }
}

#[test]
fn ks_2samp_matches_scipy() {
    let cases = expected().ks_2samp;
    assert!(cases.len() >= 40, "fixture has only {} KS cases", cases.len());
    let mut bad = Mismatches::default();
    for c in &cases {
        let r = drift::ks_2samp(&c.a, &c.b, c.method).unwrap_or_else(|| panic!("{}: refused", c.name));
        bad.check(&format!("{} statistic", c.name), r.statistic, c.statistic);
        bad.check(&format!("{} p-value ({:?})", c.name, r.method), r.pvalue, c.pvalue);
    }
    bad.assert_none("ks_2samp", cases.len());
}

#[test]
fn kolmogorov_distribution_matches_scipy_kstwo() {
    let cases = expected().kstwo_sf;
    let mut bad = Mismatches::default();
    for c in &cases {
        bad.check(&format!("kstwo.sf({}, n={})", c.d, c.n), drift::kstwo_sf(c.n, c.d), c.sf);
    }
    bad.assert_none("kstwo_sf", cases.len());
}

#[test]
fn wasserstein_matches_scipy() {
    let cases = expected().wasserstein;
    let mut bad = Mismatches::default();
    for c in &cases {
        let got = drift::wasserstein_distance(&c.u, &c.v).unwrap_or_else(|| panic!("{}: refused", c.name));
        bad.check(&c.name, got, c.distance);
        let normed = drift::wasserstein_normed(&c.u, &c.v).unwrap_or_else(|| panic!("{}: refused", c.name));
        bad.check(&format!("{} normed", c.name), normed, c.normed);
    }
    bad.assert_none("wasserstein", cases.len());
}

#[test]
fn jensenshannon_matches_scipy() {
    let cases = expected().jensenshannon;
    let mut bad = Mismatches::default();
    for c in &cases {
        let got = drift::jensenshannon(&c.p, &c.q, c.base).unwrap_or_else(|| panic!("{}: refused", c.name));
        bad.check(&c.name, got, c.distance);
    }
    bad.assert_none("jensenshannon", cases.len());
}

#[test]
fn chisquare_matches_scipy() {
    let cases = expected().chisquare;
    let mut bad = Mismatches::default();
    for c in &cases {
        let r = drift::chisquare(&c.f_obs, c.f_exp.as_deref()).unwrap_or_else(|e| panic!("{}: {e}", c.name));
        bad.check(&format!("{} statistic", c.name), r.statistic, c.statistic);
        bad.check(&format!("{} p-value", c.name), r.pvalue, c.pvalue);
    }
    bad.assert_none("chisquare", cases.len());
}

#[test]
fn histogram_binning_matches_numpy() {
    let cases = expected().histogram;
    let mut bad = Mismatches::default();
    for c in &cases {
        let edges = drift::histogram_edges(&c.data, c.bins).unwrap_or_else(|| panic!("{}: refused", c.name));
        assert_eq!(edges.len(), c.edges.len(), "{}: number of edges", c.name);
        for (i, (got, want)) in edges.iter().zip(&c.edges).enumerate() {
            bad.check(&format!("{} edge {i}", c.name), *got, *want);
        }
        // Counts must match numpy's exactly, computed on numpy's own edges.
        assert_eq!(drift::histogram_counts(&c.data, &c.edges), c.counts, "{}: counts", c.name);
    }
    bad.assert_none("histogram", cases.len());
}

#[test]
fn psi_matches_the_documented_numpy_computation() {
    let cases = expected().psi;
    let mut bad = Mismatches::default();
    for c in &cases {
        let got = drift::psi(&c.reference, &c.current).unwrap_or_else(|| panic!("{}: refused", c.name));
        bad.check(&c.name, got, c.psi);
    }
    bad.assert_none("psi", cases.len());
}
