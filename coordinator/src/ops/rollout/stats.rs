//! Confidence sequences for the rollout gates: intervals that stay valid however often they are
//! looked at.
//!
//! The engine judges a bake every second on evidence that only grows. A fixed-sample test
//! (a z-test at 95 %) looked at that often rejects a true null far more often than 5 % — which
//! is why identical versions used to be rolled back in 4–8 % of rollouts. Here every interval
//! is built with a **time-uniform** critical value: Robbins' normal-mixture boundary
//! ([`sequential_z`]), whose crossing probability over *all* sample sizes at once is at most `α`
//! (Ville's inequality on the mixture martingale; the mSPRT of Johari et al. uses the same
//! boundary). The price is a wider interval at any one look (≈ 3.9 instead of 2.7 standard
//! errors at α = 0.33 %): more samples per decision, but no error inflation from looking.
//!
//! Proportions use **Wilson score** intervals with that critical value (sound for rare rates,
//! where a Wald interval collapses to zero width on zero events), and a difference or a linear
//! combination of two proportions (`candidate − R × baseline − d`) uses the **MOVER**
//! construction (Newcombe's hybrid score interval for R = 1; Zou & Donner for the general
//! combination), which recovers each side's asymmetric Wilson limits. These are asymptotic
//! confidence sequences (a Gaussian approximation with a time-uniform boundary); the gate
//! simulation (`gate-sim`) measures their real error rates on the engine's own code.

/// The normal-mixture boundary in standard errors after `n` samples: with probability at least
/// `1 − alpha`, `|estimate − truth| < sequential_z(..) × standard error` at every `n` at once.
///
/// `n0` is the sample size where the boundary is tightest (the mixture's spread is tuned to it);
/// the boundary is wider before it and grows like `sqrt(ln n)` after it.
pub fn sequential_z(n: f64, alpha: f64, n0: f64) -> f64 {
    if n.is_nan() || n <= 0.0 {
        return f64::INFINITY;
    }
    let alpha = alpha.clamp(1e-12, 0.5);
    let l = 2.0 * (1.0 / alpha).ln();
    // ρ² = L / n0 puts the minimum of the boundary (in standard errors) near n0.
    let x = l * n / n0.max(1.0);
    ((1.0 + x) / x * (l + (1.0 + x).ln())).sqrt()
}

/// The Wilson score interval of `hits` out of `n` at critical value `z`: `(low, high)`.
/// `n = 0` gives `(0, 1)`: nothing is known.
pub fn wilson(hits: u64, n: u64, z: f64) -> (f64, f64) {
    if n == 0 || !z.is_finite() {
        return (0.0, 1.0);
    }
    let hits = hits.min(n);
    let (nf, p) = (n as f64, hits as f64 / n as f64);
    let z2 = z * z;
    let denom = 1.0 + z2 / nf;
    let center = (p + z2 / (2.0 * nf)) / denom;
    let half = z / denom * (p * (1.0 - p) / nf + z2 / (4.0 * nf * nf)).sqrt();
    let low = if hits == 0 { 0.0 } else { (center - half).max(0.0) };
    let high = if hits == n { 1.0 } else { (center + half).min(1.0) };
    (low, high)
}

/// A proportion with its interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Share {
    pub estimate: f64,
    pub low: f64,
    pub high: f64,
}

impl Share {
    /// `hits` of `n` with a time-uniform Wilson interval at level `alpha`, tightest near `n0`.
    pub fn sequential(hits: u64, n: u64, alpha: f64, n0: f64) -> Share {
        let (low, high) = wilson(hits, n, sequential_z(n as f64, alpha, n0));
        let estimate = if n == 0 { 0.0 } else { hits.min(n) as f64 / n as f64 };
        Share { estimate, low, high }
    }
}

/// The MOVER interval of `a·x − b·y + c` for proportions `x`, `y` with their own intervals and
/// weights `a, b ≥ 0`: `(estimate, low, high)`.
pub fn mover(a: f64, x: Share, b: f64, y: Share, c: f64) -> (f64, f64, f64) {
    let estimate = a * x.estimate - b * y.estimate + c;
    let low =
        estimate - (a * a * (x.estimate - x.low).powi(2) + b * b * (y.high - y.estimate).powi(2)).sqrt();
    let high =
        estimate + (a * a * (x.high - x.estimate).powi(2) + b * b * (y.estimate - y.low).powi(2)).sqrt();
    (estimate, low, high)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn wilson_matches_the_textbook_interval() {
        // 8 of 10 at z = 1.96: (0.4902, 0.9433) — Newcombe (1998), Table I.
        let (lo, hi) = wilson(8, 10, 1.959_964);
        assert!(close(lo, 0.4902, 5e-4) && close(hi, 0.9433, 5e-4), "{lo} {hi}");
        // Zero events still have an upper limit: z² / (n + z²).
        let (lo, hi) = wilson(0, 100, 2.0);
        assert_eq!(lo, 0.0);
        assert!(close(hi, 4.0 / 104.0, 1e-12), "{hi}");
        assert_eq!(wilson(5, 5, 2.0).1, 1.0);
        assert_eq!(wilson(0, 0, 2.0), (0.0, 1.0));
    }

    #[test]
    fn the_sequential_boundary_is_hand_computable_and_wider_than_a_single_look() {
        // α = 0.01: L = 2 ln 100 = 9.2103; at n = n0, x = L:
        // z = sqrt((1 + L)/L × (L + ln(1 + L))) = sqrt(1.10857 × 11.5339) = 3.5759.
        let z = sequential_z(1000.0, 0.01, 1000.0);
        assert!(close(z, 3.5759, 1e-3), "{z}");
        // A single two-sided look at 1 % needs 2.576: the time-uniform boundary is wider.
        assert!(z > 2.576);
        // Tightest near n0, wider far before it, slowly wider after it.
        assert!(sequential_z(50.0, 0.01, 1000.0) > z);
        assert!(sequential_z(100_000.0, 0.01, 1000.0) > z);
        assert!(sequential_z(0.0, 0.01, 1000.0).is_infinite());
    }

    #[test]
    fn mover_reduces_to_newcombes_difference() {
        // Newcombe (1998) example: 56/70 vs 48/80 at 95 %: difference 0.2 in (0.0524, 0.3339).
        let z = 1.959_964;
        let s = |h, n| {
            let (low, high) = wilson(h, n, z);
            Share { estimate: h as f64 / n as f64, low, high }
        };
        let (d, lo, hi) = mover(1.0, s(56, 70), 1.0, s(48, 80), 0.0);
        assert!(close(d, 0.2, 1e-12) && close(lo, 0.0524, 5e-4) && close(hi, 0.3339, 5e-4), "{lo} {hi}");
    }
}
