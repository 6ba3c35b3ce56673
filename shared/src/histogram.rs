//! A mergeable histogram with bounded relative error (the DDSketch construction).
//!
//! Values go into logarithmic buckets: bucket `i` holds values in `(γ^(i-1), γ^i]` with
//! `γ = (1 + α) / (1 − α)`, so any quantile read back is within relative error `α` of a value
//! that was really recorded at that rank. Histograms with the same `α` merge by adding bucket
//! counts, which is what lets the coordinator compute fleet-wide percentiles from many devices'
//! reports instead of averaging per-device percentiles (which is wrong).
//!
//! Values ≤ [`MIN_POSITIVE`] (including zero and negatives, which latencies and scores never
//! are) are counted in a separate zero bucket. Memory is bounded: a histogram never holds
//! more than [`MAX_BUCKETS`] buckets; beyond that the two lowest buckets are collapsed into one
//! (low quantiles lose precision first, high ones — the interesting ones — never).
//!
//! Histograms arrive from outside (in reports), so [`LogHistogram::validate`] checks one
//! decoded from bytes before it is merged or read.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Relative accuracy used across Outpost (1 %).
pub const DEFAULT_ALPHA: f64 = 0.01;

/// Most buckets one histogram keeps.
pub const MAX_BUCKETS: usize = 2048;

/// Values at or below this count as zero.
pub const MIN_POSITIVE: f64 = 1e-9;

/// A DDSketch-style histogram. See the module docs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogHistogram {
    alpha: f64,
    /// Bucket index → count.
    buckets: BTreeMap<i32, u64>,
    zero_count: u64,
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
}

/// Why two histograms cannot be merged or a decoded one cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HistogramError {
    #[error("histograms with different accuracy cannot be merged ({0} vs {1})")]
    AlphaMismatch(f64, f64),
    #[error("histogram accuracy {0} is outside (0, 0.5)")]
    BadAlpha(f64),
    #[error("histogram has {0} buckets, more than {MAX_BUCKETS}")]
    TooManyBuckets(usize),
    #[error("histogram counts do not add up: buckets hold {buckets}, total says {total}")]
    CountMismatch { buckets: u64, total: u64 },
    #[error("histogram summary is not finite or inconsistent")]
    BadSummary,
}

impl Default for LogHistogram {
    fn default() -> Self {
        LogHistogram::new(DEFAULT_ALPHA)
    }
}

impl LogHistogram {
    /// An empty histogram with relative accuracy `alpha` (clamped to (0.0001, 0.25)).
    pub fn new(alpha: f64) -> LogHistogram {
        let alpha = if alpha.is_finite() { alpha.clamp(0.0001, 0.25) } else { DEFAULT_ALPHA };
        LogHistogram {
            alpha,
            buckets: BTreeMap::new(),
            zero_count: 0,
            count: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }

    fn gamma(&self) -> f64 {
        (1.0 + self.alpha) / (1.0 - self.alpha)
    }

    fn index_of(&self, value: f64) -> i32 {
        // Bucket i covers (γ^(i-1), γ^i]; the cast saturates for absurd values.
        (value.ln() / self.gamma().ln()).ceil() as i32
    }

    /// Records one value. Non-finite values are ignored (and not counted).
    pub fn record(&mut self, value: f64) {
        self.record_n(value, 1);
    }

    /// Records `n` copies of `value`.
    pub fn record_n(&mut self, value: f64, n: u64) {
        if !value.is_finite() || n == 0 {
            return;
        }
        if value <= MIN_POSITIVE {
            self.zero_count += n;
        } else {
            *self.buckets.entry(self.index_of(value)).or_insert(0) += n;
            self.collapse();
        }
        self.count += n;
        self.sum += value * n as f64;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
    }

    fn collapse(&mut self) {
        while self.buckets.len() > MAX_BUCKETS {
            let mut lowest = self.buckets.iter();
            let (Some((&a, &ca)), Some((&b, _))) = (lowest.next(), lowest.next()) else { return };
            self.buckets.remove(&a);
            *self.buckets.entry(b).or_insert(0) += ca;
        }
    }

    /// Adds another histogram's counts into this one.
    pub fn merge(&mut self, other: &LogHistogram) -> Result<(), HistogramError> {
        if (self.alpha - other.alpha).abs() > 1e-12 {
            return Err(HistogramError::AlphaMismatch(self.alpha, other.alpha));
        }
        for (&index, &n) in &other.buckets {
            *self.buckets.entry(index).or_insert(0) += n;
        }
        self.collapse();
        self.zero_count += other.zero_count;
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        Ok(())
    }

    /// Takes away the counts of `part`, a histogram merged into this one: what the rest of a
    /// merged whole holds (the fleet's latency less some devices'). Exact for the counts; the
    /// sum loses float precision, and min and max stay the whole's (bounds, not values, of the
    /// rest). Fails, leaving this one unchanged, when `part` holds counts this one does not
    /// (it was not merged in, or the lowest buckets were collapsed differently).
    pub fn subtract(&mut self, part: &LogHistogram) -> Result<(), HistogramError> {
        if (self.alpha - part.alpha).abs() > 1e-12 {
            return Err(HistogramError::AlphaMismatch(self.alpha, part.alpha));
        }
        let mismatch = HistogramError::CountMismatch { buckets: part.count, total: self.count };
        if part.zero_count > self.zero_count || part.count > self.count {
            return Err(mismatch);
        }
        let mut buckets = self.buckets.clone();
        for (index, &n) in &part.buckets {
            let have = buckets.get_mut(index).filter(|have| **have >= n).ok_or(mismatch.clone())?;
            *have -= n;
            if *have == 0 {
                buckets.remove(index);
            }
        }
        self.buckets = buckets;
        self.zero_count -= part.zero_count;
        self.count -= part.count;
        self.sum = if self.count == 0 { 0.0 } else { (self.sum - part.sum).max(0.0) };
        if self.count == 0 {
            (self.min, self.max) = (f64::INFINITY, f64::NEG_INFINITY);
        }
        Ok(())
    }

    /// Number of recorded values.
    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn sum(&self) -> f64 {
        self.sum
    }

    pub fn alpha(&self) -> f64 {
        self.alpha
    }

    /// Mean of the recorded values, if any.
    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum / self.count as f64)
    }

    pub fn min(&self) -> Option<f64> {
        (self.count > 0).then_some(self.min)
    }

    pub fn max(&self) -> Option<f64> {
        (self.count > 0).then_some(self.max)
    }

    /// How many recorded values exceed `threshold` (exact except for values within relative
    /// error α of it, which count by their bucket's representative value).
    pub fn count_above(&self, threshold: f64) -> u64 {
        if threshold < MIN_POSITIVE {
            return self.count - if threshold < 0.0 { 0 } else { self.zero_count };
        }
        let gamma = self.gamma();
        self.buckets
            .iter()
            .filter(|&(&index, _)| 2.0 * gamma.powi(index) / (gamma + 1.0) > threshold)
            .map(|(_, &n)| n)
            .sum()
    }

    /// Every non-empty bucket's representative value, ascending, with how many recorded values
    /// lie in higher buckets — what [`LogHistogram::count_above`] returns for that value.
    pub fn values_with_count_above(&self) -> Vec<(f64, u64)> {
        let gamma = self.gamma();
        let mut above = self.count.saturating_sub(self.zero_count);
        self.buckets
            .iter()
            .map(|(&index, &n)| {
                above = above.saturating_sub(n);
                (2.0 * gamma.powi(index) / (gamma + 1.0), above)
            })
            .collect()
    }

    /// The value at quantile `q` (0 ≤ q ≤ 1), within relative error α; `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 || !(0.0..=1.0).contains(&q) {
            return None;
        }
        // Rank of the wanted value among the sorted recorded values, 0-based.
        let rank = (q * (self.count - 1) as f64).floor() as u64;
        if rank < self.zero_count {
            return Some(self.min.min(0.0).max(self.min));
        }
        let mut seen = self.zero_count;
        let gamma = self.gamma();
        for (&index, &n) in &self.buckets {
            seen += n;
            if seen > rank {
                // The bucket's representative value: 2γ^i / (γ + 1) has relative error ≤ α
                // against any value in (γ^(i-1), γ^i].
                let value = 2.0 * gamma.powi(index) / (gamma + 1.0);
                return Some(value.clamp(self.min, self.max));
            }
        }
        Some(self.max)
    }

    /// Checks a histogram decoded from outside bytes before it is merged or read.
    pub fn validate(&self) -> Result<(), HistogramError> {
        if !(self.alpha > 0.0 && self.alpha < 0.5) {
            return Err(HistogramError::BadAlpha(self.alpha));
        }
        if self.buckets.len() > MAX_BUCKETS {
            return Err(HistogramError::TooManyBuckets(self.buckets.len()));
        }
        let in_buckets = self
            .buckets
            .values()
            .try_fold(self.zero_count, |acc, &n| acc.checked_add(n))
            .ok_or(HistogramError::CountMismatch { buckets: u64::MAX, total: self.count })?;
        if in_buckets != self.count {
            return Err(HistogramError::CountMismatch { buckets: in_buckets, total: self.count });
        }
        let finite = self.sum.is_finite() && self.min.is_finite() && self.max.is_finite();
        if self.count > 0 && (!finite || self.min > self.max) {
            return Err(HistogramError::BadSummary);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn counts_values_above_a_threshold() {
        let mut h = LogHistogram::default();
        for v in [0.0, 1.0, 2.0, 50.0, 80.0, 81.0, 1000.0] {
            h.record(v);
        }
        assert_eq!(h.count_above(60.0), 3);
        assert_eq!(h.count_above(10_000.0), 0);
        assert_eq!(h.count_above(0.0), 6, "zero is not above zero");
        // Each bucket's value with what count_above says for it.
        let listed = h.values_with_count_above();
        // 80 and 81 share a bucket (1 % relative accuracy); zero is in none.
        assert_eq!(listed.len(), 5);
        assert_eq!(listed.last(), Some(&(listed[4].0, 0)));
        for (value, above) in listed {
            assert_eq!(above, h.count_above(value), "{value}");
        }
    }

    use super::*;
    use proptest::prelude::*;

    fn exact_quantile(sorted: &[f64], q: f64) -> f64 {
        sorted[(q * (sorted.len() - 1) as f64).floor() as usize]
    }

    #[test]
    fn quantiles_are_within_the_relative_error() {
        let mut h = LogHistogram::default();
        let values: Vec<f64> = (1..=10_000).map(|i| i as f64 * 0.37).collect();
        for &v in &values {
            h.record(v);
        }
        for q in [0.0, 0.01, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0] {
            let exact = exact_quantile(&values, q);
            let got = h.quantile(q).unwrap();
            assert!((got - exact).abs() <= exact * DEFAULT_ALPHA * 1.0001, "q={q}: {got} vs {exact}");
        }
        assert_eq!(h.count(), 10_000);
        assert_eq!(h.min(), Some(0.37));
    }

    #[test]
    fn merged_histograms_equal_one_fed_everything() {
        let mut a = LogHistogram::default();
        let mut b = LogHistogram::default();
        let mut all = LogHistogram::default();
        for i in 0..1000 {
            let v = (i as f64 * 1.7) % 230.0 + 0.5;
            if i % 3 == 0 {
                a.record(v)
            } else {
                b.record(v)
            }
            all.record(v);
        }
        let mut rest = all.clone();
        rest.subtract(&b).unwrap();
        assert_eq!(rest.buckets, a.buckets, "the whole less one part is the other part");
        assert_eq!((rest.count(), rest.quantile(0.5)), (a.count(), a.quantile(0.5)));
        rest.subtract(&a).unwrap();
        assert_eq!((rest.count(), rest.quantile(0.5)), (0, None));
        assert!(rest.subtract(&b).is_err(), "nothing left to take");
        a.merge(&b).unwrap();
        assert_eq!(a.buckets, all.buckets);
        assert_eq!(a.count(), all.count());
        assert_eq!(a.quantile(0.99), all.quantile(0.99));
        assert!(a.merge(&LogHistogram::new(0.02)).is_err());
    }

    #[test]
    fn zeros_and_non_finite_values() {
        let mut h = LogHistogram::default();
        h.record(0.0);
        h.record(f64::NAN);
        h.record(f64::INFINITY);
        h.record(5.0);
        assert_eq!(h.count(), 2);
        assert_eq!(h.quantile(0.0), Some(0.0));
        assert!((h.quantile(1.0).unwrap() - 5.0).abs() <= 0.05);
        assert_eq!(LogHistogram::default().quantile(0.5), None);
    }

    #[test]
    fn bucket_count_stays_bounded() {
        let mut h = LogHistogram::new(0.0001);
        for i in 0..200_000 {
            h.record(1.0 + i as f64);
        }
        assert!(h.buckets.len() <= MAX_BUCKETS);
        h.validate().unwrap();
        let p99 = h.quantile(0.99).unwrap();
        assert!((p99 - 198_000.0).abs() / 198_000.0 < 0.001, "{p99}");
    }

    #[test]
    fn validate_refuses_inconsistent_input() {
        let mut h = LogHistogram::default();
        h.record(3.0);
        let mut bad = h.clone();
        bad.count = 7;
        assert!(matches!(bad.validate(), Err(HistogramError::CountMismatch { .. })));
        let mut bad = h.clone();
        bad.alpha = 0.9;
        assert!(bad.validate().is_err());
        let mut bad = h;
        bad.buckets.insert(5, u64::MAX);
        assert!(bad.validate().is_err());
    }

    proptest! {
        #[test]
        fn any_values_keep_the_error_bound(values in proptest::collection::vec(0.001f64..1e6, 1..400), q in 0.0f64..=1.0) {
            let mut h = LogHistogram::default();
            for &v in &values { h.record(v); }
            let mut sorted = values.clone();
            sorted.sort_by(f64::total_cmp);
            let exact = exact_quantile(&sorted, q);
            let got = h.quantile(q).unwrap();
            prop_assert!((got - exact).abs() <= exact * DEFAULT_ALPHA * 1.0001);
            h.validate().unwrap();
        }
    }
}
