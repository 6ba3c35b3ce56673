//! Model quality from ground truth: labels that agents joined to their logged predictions
//! (`POST /v1/feedback` on the agent) are kept here, one per (model, device, prediction), and
//! turned into accuracy, precision, recall and F1 per class — per model version and per value of
//! a device label (site, hardware: the subgroup view model cards need), with scikit-learn's
//! definitions ([`crate::models::validation::Metrics`]).
//!
//! Layout (sled, [`sled_backend`]): tree `labels`, key `model \0 device \0 prediction_id (u64 BE)`, value JSON
//! [`StoredLabel`]. A second label for the same prediction replaces the first. Labels are
//! written when their envelope is first stored, and again if it arrives a second time (so a
//! crash between the two writes loses nothing: the agent resends until acked).
//!
//! Roll-ups: per model version, labels are counted into 1-minute and 1-hour buckets by
//! prediction time ([`LabelCounts`]: the `(truth, predicted)` pairs, and those without a
//! predicted label; trees `labels_1m` and `labels_1h`, keys as in
//! [`crate::monitoring::slo::rollup`], value postcard), in the same transaction as the label: a
//! replaced label moves its count, a resend moves nothing. A bucket never holds more entries
//! than labels arrived in it. The same counts go per value of each label the device carries
//! (trees `labels_by_label_1m` / `_1h`, key `model \0 bucket_start \0 label \0 value \0 version`;
//! a device's labels never change after it enrols). The SLO accuracy objective, the dashboard's
//! accuracy chart and breakdowns, and quality reports read these (metrics from the summed
//! confusion counts are the same as from the pairs), never every label. Each label
//! stored or replaced is published to the store's feed ([`crate::base::feed`]) with the one it
//! replaced, for rollouts' running evidence ([`crate::monitoring::follow`]).
//!
//! On PostgreSQL ([`pg`], migration `0006_labels.sql`): labels by `(model, device, prediction)`
//! and the same buckets as rows, each replica adding signed counts into its own shard's rows.

use std::collections::{BTreeMap, HashMap};

use outpost_shared::protocol::messages::FeedbackBatch;
use serde::{Deserialize, Serialize};

use crate::base::pg::store::PgStore;
use crate::base::store::{Store, StoreError};
use crate::models::validation::Metrics;
use crate::monitoring::slo::rollup::{self, MINUTE_MS, Width};

/// Labelled predictions with a predicted label, and how many of them were right.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    pub labelled: u64,
    pub correct: u64,
}

/// One roll-up bucket of labels: how many had no predicted label, and how many of each
/// `(truth, predicted)` pair the rest were.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelCounts {
    pub without_prediction: u64,
    pub confusion: BTreeMap<(i64, i64), u64>,
}

impl LabelCounts {
    fn one(label: &StoredLabel) -> LabelCounts {
        let mut counts = LabelCounts::default();
        match label.predicted {
            Some(predicted) => {
                counts.confusion.insert((label.label, predicted), 1);
            }
            None => counts.without_prediction = 1,
        }
        counts
    }

    fn add(&mut self, other: &LabelCounts) {
        self.without_prediction += other.without_prediction;
        for (pair, n) in &other.confusion {
            *self.confusion.entry(*pair).or_insert(0) += n;
        }
    }

    /// Takes `other` away (never below zero; pairs counted zero times are dropped).
    fn take(&mut self, other: &LabelCounts) {
        self.without_prediction = self.without_prediction.saturating_sub(other.without_prediction);
        for (pair, n) in &other.confusion {
            if let Some(have) = self.confusion.get_mut(pair) {
                *have = have.saturating_sub(*n);
                if *have == 0 {
                    self.confusion.remove(pair);
                }
            }
        }
    }

    /// Labels with a predicted label, and the right ones.
    pub fn tally(&self) -> Tally {
        Tally {
            labelled: self.confusion.values().sum(),
            correct: self.confusion.iter().filter(|((t, p), _)| t == p).map(|(_, n)| n).sum(),
        }
    }
}

/// One stored label.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredLabel {
    pub version: String,
    pub slot: outpost_shared::protocol::vocab::Slot,
    pub predicted: Option<i64>,
    pub label: i64,
    pub predicted_at_ms: u64,
    pub labelled_at_ms: u64,
}

/// Quality of one model, per version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QualityReport {
    pub model: String,
    /// Only predictions made at or after this time (unix ms) count: the start of the minute
    /// holding the time asked for, as the roll-ups count.
    pub since_ms: Option<u64>,
    /// The device label the segments are split by.
    pub by: Option<String>,
    pub versions: BTreeMap<String, VersionQuality>,
}

/// One version's labelled predictions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionQuality {
    /// Labels that arrived for this version's predictions.
    pub labelled: u64,
    /// Of those, predictions without a label output (not counted in the metrics).
    pub without_prediction: u64,
    pub metrics: Metrics,
    /// Per value of the `by` device label (`(none)` for devices without it).
    pub segments: BTreeMap<String, Metrics>,
}

/// `(model, device, prediction_id)` of a `labels` key.
pub fn parse_key(key: &[u8]) -> Option<(&str, &str, u64)> {
    let mut parts = key.splitn(3, |b| *b == 0);
    let (model, device, id) = (parts.next()?, parts.next()?, parts.next()?);
    Some((
        std::str::from_utf8(model).ok()?,
        std::str::from_utf8(device).ok()?,
        u64::from_be_bytes(id.try_into().ok()?),
    ))
}

/// Per version: (labelled predictions with a predicted label, correct ones).
pub type Correct = BTreeMap<String, (u64, u64)>;

/// The segment of devices without the label a report is split by.
pub const NO_VALUE: &str = "(none)";

/// One label to store, as both backends store it.
pub(crate) struct LabelWrite<'a> {
    model: &'a str,
    device: &'a str,
    prediction_id: u64,
    label: StoredLabel,
    /// The sending device's labels (its by-label buckets).
    device_labels: &'a BTreeMap<String, String>,
}

/// The labels store.
#[derive(Debug, Clone)]
pub struct Labels {
    backend: Backend,
}

#[derive(Debug, Clone)]
enum Backend {
    Sled(sled_backend::SledLabels),
    Postgres(pg::PgLabels),
}

/// Calls `$method` on whichever backend `$self` was opened on.
macro_rules! dispatch {
    ($self:ident.$method:ident($($arg:expr),*)) => {
        match &$self.backend {
            Backend::Sled(s) => s.$method($($arg),*),
            Backend::Postgres(p) => p.$method($($arg),*),
        }
    };
}

/// The tree of labels, as its changes are published ([`crate::base::feed`]).
pub const LABELS: &str = "labels";

impl Labels {
    /// Labels in the coordinator's sled database (rolled up first if it is from before the
    /// roll-ups).
    pub fn open(store: &Store) -> Result<Labels, StoreError> {
        Ok(Labels { backend: Backend::Sled(sled_backend::SledLabels::open(store)?) })
    }

    /// Labels in PostgreSQL (its schema brought up to date first: [`crate::base::pg::migrate`]).
    pub fn open_postgres(store: &PgStore) -> Labels {
        Labels { backend: Backend::Postgres(pg::PgLabels::open(store)) }
    }

    /// Rolls every stored label up by its device's labels unless that was done (see
    /// [`crate::monitoring::slo::Slos::ensure_rolled_up_by_label`]); nothing to do on
    /// PostgreSQL, where every label is rolled up by device label as it is stored.
    pub fn ensure_rolled_up_by_label(
        &self,
        labels: impl FnOnce() -> Result<rollup::LabelsByDevice, StoreError>,
    ) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sled(s) => s.ensure_rolled_up_by_label(labels),
            Backend::Postgres(_) => Ok(()),
        }
    }

    /// Keeps the labels of one feedback batch from `device` (a second label for a prediction
    /// replaces the first), moving the roll-ups' counts — per version and per value of each of
    /// the device's `labels` — in the same transaction.
    pub fn put(
        &self,
        device: &str,
        labels: &BTreeMap<String, String>,
        batch: &FeedbackBatch,
    ) -> Result<(), StoreError> {
        self.put_many(&[(device, labels, batch)])
    }

    /// [`Labels::put`] for many feedback batches (device, its labels, batch), in order, in one
    /// transaction: a bucket many labels move is written to the store once.
    pub fn put_many(
        &self,
        batches: &[(&str, &BTreeMap<String, String>, &FeedbackBatch)],
    ) -> Result<(), StoreError> {
        let mut writes = Vec::new();
        for (device, device_labels, batch) in batches {
            for l in &batch.labels {
                writes.push(LabelWrite {
                    model: &l.model,
                    device,
                    prediction_id: l.prediction_id,
                    label: StoredLabel {
                        version: l.version.clone(),
                        slot: l.slot,
                        predicted: l.predicted,
                        label: l.label,
                        predicted_at_ms: l.predicted_at_ms,
                        labelled_at_ms: l.labelled_at_ms,
                    },
                    device_labels,
                });
            }
        }
        if writes.is_empty() {
            return Ok(());
        }
        let devices = match batches {
            [(device, ..)] => (*device).to_owned(),
            _ => format!("{} feedback batches", batches.len()),
        };
        dispatch!(self.put_many(&writes, &devices))
    }

    /// The tree of labels (keys as [`parse_key`] reads), for a reader that follows it
    /// ([`crate::monitoring::follow`]); `None` on PostgreSQL, where labels are not followed yet.
    pub(crate) fn label_tree(&self) -> Option<&sled::Tree> {
        match &self.backend {
            Backend::Sled(s) => Some(s.label_tree()),
            Backend::Postgres(_) => None,
        }
    }

    /// Calls `each(bucket_start, version, counts)` for `model`'s minute buckets starting in
    /// `[from_ms, until_ms)`.
    fn minutes(
        &self,
        model: &str,
        from_ms: u64,
        until_ms: u64,
        mut each: impl FnMut(u64, &str, LabelCounts),
    ) -> Result<(), StoreError> {
        let spans = [(Width::Minute, from_ms, until_ms)];
        dispatch!(
            self.each_bucket(false, model, &spans, |at, _, _, version, counts| each(at, version, counts))
        )
    }

    /// Calls `each(device, label)` for every label of `model` (of `device` only, when given);
    /// a label that does not decode is an error naming it.
    fn scan(
        &self,
        model: &str,
        device: Option<&str>,
        mut each: impl FnMut(&str, StoredLabel) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        dispatch!(self.each_label(model, device, |device, label| each(device, label?)))
    }

    /// Labelled predictions of `model` (every version) made in the whole minutes from the one
    /// holding `from_ms` to the one holding `to_ms`, from the roll-ups.
    pub fn rolled_up(&self, model: &str, from_ms: u64, to_ms: u64) -> Result<Tally, StoreError> {
        let mut total = Tally::default();
        for (_, counts) in self.rolled_up_per_version(model, from_ms, to_ms)? {
            let t = counts.tally();
            total.labelled += t.labelled;
            total.correct += t.correct;
        }
        Ok(total)
    }

    /// What [`Labels::rolled_up`] answers, counted from every label of `model` predicted in
    /// `[from_ms, to_ms]`: the check on the roll-ups (tests, `--bench slo`'s baseline).
    pub fn scan_tally(&self, model: &str, from_ms: u64, to_ms: u64) -> Result<Tally, StoreError> {
        let mut t = Tally::default();
        self.scan(model, None, |_, l| {
            if (from_ms..=to_ms).contains(&l.predicted_at_ms)
                && let Some(predicted) = l.predicted
            {
                t.labelled += 1;
                t.correct += u64::from(predicted == l.label);
            }
            Ok(())
        })?;
        Ok(t)
    }

    /// The summed [`LabelCounts`] of `model` per version over the whole minutes from the one
    /// holding `from_ms` to the one holding `to_ms`.
    fn rolled_up_per_version(
        &self,
        model: &str,
        from_ms: u64,
        to_ms: u64,
    ) -> Result<BTreeMap<String, LabelCounts>, StoreError> {
        let mut out: BTreeMap<String, LabelCounts> = BTreeMap::new();
        let spans = rollup::spans(from_ms, to_ms);
        let each = |_, _: &str, _: &str, version: &str, counts: LabelCounts| {
            out.entry(version.to_owned()).or_default().add(&counts)
        };
        dispatch!(self.each_bucket(false, model, &spans, each))?;
        Ok(out)
    }

    /// The label of one prediction, if one arrived.
    pub fn get(
        &self,
        model: &str,
        device: &str,
        prediction_id: u64,
    ) -> Result<Option<StoredLabel>, StoreError> {
        dispatch!(self.get(model, device, prediction_id))
    }

    /// The labels of `model`'s predictions `keys` (device, prediction id), in their order:
    /// what a dataset export joins (on PostgreSQL one query per 10,000, not one per row).
    pub fn get_many(
        &self,
        model: &str,
        keys: &[(String, u64)],
    ) -> Result<Vec<Option<StoredLabel>>, StoreError> {
        match &self.backend {
            Backend::Sled(s) => keys.iter().map(|(device, id)| s.get(model, device, *id)).collect(),
            Backend::Postgres(p) => p.get_many(model, keys),
        }
    }

    /// Labelled predictions of `model@version` made on `devices` in `[from_ms, to_ms]` that have
    /// a predicted label, and how many of them were right.
    pub fn correct_on(
        &self,
        model: &str,
        version: &str,
        devices: &[String],
        from_ms: u64,
        to_ms: u64,
    ) -> Result<(u64, u64), StoreError> {
        let (mut labelled, mut correct) = (0, 0);
        for device in devices {
            dispatch!(self.each_label(model, Some(device), |_, label| {
                // (A label that does not decode is left out of a rollout's evidence.)
                let Ok(label) = label else { return Ok(()) };
                if label.version != version || !(from_ms..=to_ms).contains(&label.predicted_at_ms) {
                    return Ok(());
                }
                if let Some(predicted) = label.predicted {
                    labelled += 1;
                    correct += u64::from(predicted == label.label);
                }
                Ok(())
            }))?;
        }
        Ok((labelled, correct))
    }

    /// Labelled predictions of `model` in each of `grid`'s buckets by prediction time, per
    /// version: (labelled with a prediction, correct). From the minute roll-ups (a minute goes
    /// to the chart bucket holding its start) when the chart's buckets are a minute or wider.
    pub fn timeline(
        &self,
        model: &str,
        grid: &crate::monitoring::slo::TimeBuckets,
    ) -> Result<Vec<Correct>, StoreError> {
        let mut out: Vec<Correct> = vec![BTreeMap::new(); grid.count];
        if grid.width_ms >= MINUTE_MS {
            let from = grid.from_ms - grid.from_ms % MINUTE_MS;
            self.minutes(model, from, grid.to_ms.saturating_add(1), |at, version, counts| {
                let t = counts.tally();
                let cell = out[grid.index(at)].entry(version.to_owned()).or_default();
                cell.0 += t.labelled;
                cell.1 += t.correct;
            })?;
            return Ok(out);
        }
        self.scan(model, None, |_, l| {
            if let Some(predicted) = l.predicted
                && (grid.from_ms..=grid.to_ms).contains(&l.predicted_at_ms)
            {
                let cell: &mut (u64, u64) = out[grid.index(l.predicted_at_ms)].entry(l.version).or_default();
                cell.0 += 1;
                cell.1 += u64::from(predicted == l.label);
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// Per `(device label, value, version)`: the summed [`LabelCounts`] of `model` over the
    /// whole minutes from the one holding `from_ms` to the one holding `to_ms`, from the roll-ups
    /// by device label (only the label `only` when given).
    pub fn rolled_up_by_label(
        &self,
        model: &str,
        from_ms: u64,
        to_ms: u64,
        only: Option<&str>,
    ) -> Result<BTreeMap<(String, String, String), LabelCounts>, StoreError> {
        let mut out: BTreeMap<(String, String, String), LabelCounts> = BTreeMap::new();
        let spans = rollup::spans(from_ms, to_ms);
        let each = |_, label: &str, value: &str, version: &str, counts: LabelCounts| {
            if only.is_none_or(|only| only == label) {
                let key = (label.to_owned(), value.to_owned(), version.to_owned());
                out.entry(key).or_default().add(&counts);
            }
        };
        dispatch!(self.each_bucket(true, model, &spans, each))?;
        Ok(out)
    }

    /// Quality of `model` per version from the roll-ups, split by the device label `by` when
    /// given (one segment per value, [`NO_VALUE`] for devices without the label). Predictions
    /// count from the start of the minute holding `since_ms`.
    pub fn quality(
        &self,
        model: &str,
        since_ms: Option<u64>,
        by: Option<&str>,
    ) -> Result<QualityReport, StoreError> {
        let since_ms = since_ms.map(|s| s - s % MINUTE_MS);
        let (from_ms, to_ms) = (since_ms.unwrap_or(0), u64::MAX / 2);
        let mut segments: BTreeMap<String, BTreeMap<String, LabelCounts>> = BTreeMap::new();
        if let Some(by) = by {
            for ((_, value, version), counts) in self.rolled_up_by_label(model, from_ms, to_ms, Some(by))? {
                segments.entry(version).or_default().insert(value, counts);
            }
        }
        let versions = self
            .rolled_up_per_version(model, from_ms, to_ms)?
            .into_iter()
            .filter(|(_, c)| c.without_prediction > 0 || !c.confusion.is_empty())
            .map(|(version, c)| {
                let metrics = Metrics::from_confusion(&c.confusion);
                let mut split = BTreeMap::new();
                if by.is_some() {
                    // Devices without the label: the version's counts less every value's.
                    let mut none = c.clone();
                    for (value, counts) in segments.remove(&version).unwrap_or_default() {
                        none.take(&counts);
                        if !counts.confusion.is_empty() {
                            split.insert(value, Metrics::from_confusion(&counts.confusion));
                        }
                    }
                    if !none.confusion.is_empty() {
                        split.insert(NO_VALUE.to_owned(), Metrics::from_confusion(&none.confusion));
                    }
                }
                let quality = VersionQuality {
                    labelled: metrics.rows + c.without_prediction,
                    without_prediction: c.without_prediction,
                    metrics,
                    segments: split,
                };
                (version, quality)
            })
            .collect();
        Ok(QualityReport { model: model.to_owned(), since_ms, by: by.map(str::to_owned), versions })
    }

    /// [`Labels::quality`] split by `by`, counted from every label of `model` with each
    /// device's value of it from `label_of`: the check on the roll-ups (tests, `--bench slo`'s
    /// baseline). Predictions count from `since_ms` exactly.
    pub fn scan_quality(
        &self,
        model: &str,
        since_ms: Option<u64>,
        by: &str,
        label_of: impl Fn(&str) -> Result<Option<String>, StoreError>,
    ) -> Result<QualityReport, StoreError> {
        // version → (truth, predicted, per-segment (truth, predicted), labelled, without).
        type Pairs = (Vec<i64>, Vec<i64>);
        let mut acc: BTreeMap<String, (Pairs, BTreeMap<String, Pairs>, u64, u64)> = BTreeMap::new();
        let mut segment_of: HashMap<String, String> = HashMap::new();
        self.scan(model, None, |device, l| {
            if since_ms.is_some_and(|since| l.predicted_at_ms < since) {
                return Ok(());
            }
            let entry = acc.entry(l.version.clone()).or_default();
            entry.2 += 1;
            let Some(predicted) = l.predicted else {
                entry.3 += 1;
                return Ok(());
            };
            entry.0.0.push(l.label);
            entry.0.1.push(predicted);
            if !segment_of.contains_key(device) {
                let value = label_of(device)?.unwrap_or_else(|| NO_VALUE.to_owned());
                segment_of.insert(device.to_owned(), value);
            }
            let segment = segment_of.get(device).cloned().unwrap_or_default();
            let pairs = entry.1.entry(segment).or_default();
            pairs.0.push(l.label);
            pairs.1.push(predicted);
            Ok(())
        })?;
        let versions = acc
            .into_iter()
            .map(|(version, ((truth, predicted), segments, labelled, without))| {
                let quality = VersionQuality {
                    labelled,
                    without_prediction: without,
                    metrics: Metrics::compute(&truth, &predicted),
                    segments: segments.into_iter().map(|(s, (t, p))| (s, Metrics::compute(&t, &p))).collect(),
                };
                (version, quality)
            })
            .collect();
        Ok(QualityReport { model: model.to_owned(), since_ms, by: Some(by.to_owned()), versions })
    }
}

/// A sled label bucket's bytes as a PostgreSQL shard's (`outpost-coordinator migrate`);
/// `None` when they are not a bucket.
pub(crate) fn counts_as_shard(sled_bytes: &[u8]) -> Option<Vec<u8>> {
    pg::counts_as_shard(sled_bytes)
}

mod pg;
mod sled_backend;

#[cfg(test)]
mod tests;
