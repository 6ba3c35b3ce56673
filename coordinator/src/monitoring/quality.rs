//! Model quality from ground truth: labels that agents joined to their logged predictions
//! (`POST /v1/feedback` on the agent) are kept here, one per (model, device, prediction), and
//! turned into accuracy, precision, recall and F1 per class — per model version and per value of
//! a device label (site, hardware: the subgroup view model cards need), with scikit-learn's
//! definitions ([`crate::models::validation::Metrics`]).
//!
//! Layout: sled tree `labels`, key `model \0 device \0 prediction_id (u64 BE)`, value JSON
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

use std::collections::{BTreeMap, HashMap};

use outpost_shared::protocol::messages::FeedbackBatch;
use serde::{Deserialize, Serialize};

use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionalTree};

use crate::base::feed::Change;
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

fn key(model: &str, device: &str, prediction_id: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(model.len() + device.len() + 10);
    k.extend_from_slice(model.as_bytes());
    k.push(0);
    k.extend_from_slice(device.as_bytes());
    k.push(0);
    k.extend_from_slice(&prediction_id.to_be_bytes());
    k
}

/// Per version: (labelled predictions with a predicted label, correct ones).
pub type Correct = BTreeMap<String, (u64, u64)>;

/// The segment of devices without the label a report is split by.
pub const NO_VALUE: &str = "(none)";

/// Adds (`sign` true) or takes away `label` in the bucket of `tree` that `part` names; answers
/// `false` when the bucket was unreadable (started afresh).
fn move_label(
    tree: &TransactionalTree,
    width: Width,
    model: &str,
    part: &str,
    label: &StoredLabel,
    sign: bool,
) -> Result<bool, ConflictableTransactionError<StoreError>> {
    let at = label.predicted_at_ms;
    let key = rollup::key(model, at - at % width.ms(), part);
    let one = LabelCounts::one(label);
    rollup::update_in(
        tree,
        &key,
        |bucket: &mut LabelCounts| if sign { bucket.add(&one) } else { bucket.take(&one) },
    )
}

/// The labels store.
#[derive(Debug, Clone)]
pub struct Labels {
    tree: sled::Tree,
    /// [`LabelCounts`] roll-ups per model version and minute / hour of prediction.
    minutes: sled::Tree,
    hours: sled::Tree,
    /// The same per value of each device label.
    label_minutes: sled::Tree,
    label_hours: sled::Tree,
    store: Store,
}

/// The tree of labels, as its changes are published ([`crate::base::feed`]).
pub const LABELS: &str = "labels";

impl Labels {
    pub fn open(store: &Store) -> Result<Labels, StoreError> {
        let labels = Labels {
            tree: store.tree(LABELS)?,
            minutes: store.tree("labels_1m")?,
            hours: store.tree("labels_1h")?,
            label_minutes: store.tree("labels_by_label_1m")?,
            label_hours: store.tree("labels_by_label_1h")?,
            store: store.clone(),
        };
        labels.ensure_rolled_up()?;
        Ok(labels)
    }

    /// Rolls every stored label up unless `meta` says it was done (a data directory from before
    /// roll-ups, or one where a bucket was found unreadable).
    fn ensure_rolled_up(&self) -> Result<(), StoreError> {
        rollup::once(&self.store, rollup::LABELS_MARKER, || {
            self.roll_up_all([&self.minutes, &self.hours], "", |_, l| vec![l.version.clone()])
        })
    }

    /// Rolls every stored label up by its device's labels unless that was done (see
    /// [`crate::monitoring::slo::Slos::ensure_rolled_up_by_label`]).
    pub fn ensure_rolled_up_by_label(
        &self,
        labels: impl FnOnce() -> Result<rollup::LabelsByDevice, StoreError>,
    ) -> Result<(), StoreError> {
        rollup::once(&self.store, rollup::LABELS_BY_LABEL_MARKER, || {
            let labels = labels()?;
            self.roll_up_all([&self.label_minutes, &self.label_hours], " by device label", |device, l| {
                labels
                    .get(device)
                    .map(|device_labels| {
                        device_labels
                            .iter()
                            .map(|(k, v)| format!("{}\0{}", rollup::label_part(k, v), l.version))
                            .collect()
                    })
                    .unwrap_or_default()
            })
        })
    }

    /// Rolls every stored label up into the buckets of `trees` (minutes, hours) that
    /// `parts(device, label)` names.
    fn roll_up_all(
        &self,
        trees: [&sled::Tree; 2],
        what: &str,
        parts: impl Fn(&str, &StoredLabel) -> Vec<String>,
    ) -> Result<(), StoreError> {
        let err = |e| self.store.storage_error(e);
        let started = std::time::Instant::now();
        let stored = self.tree.len();
        if stored > 0 {
            tracing::info!(
                labels = stored,
                "rolling up the stored labels{what} into minute and hour buckets (once, after an upgrade or a restore)"
            );
        }
        // Labels are keyed by device, not time: the buckets are summed in memory (a few bytes
        // per pair of classes seen in a minute).
        let mut sums: [BTreeMap<Vec<u8>, LabelCounts>; 2] = Default::default();
        let mut labels = 0u64;
        for item in self.tree.iter() {
            let (k, v) = item.map_err(err)?;
            let Some((model, device, _)) = parse_key(&k) else { continue };
            let Ok(label) = serde_json::from_slice::<StoredLabel>(&v) else { continue };
            let one = LabelCounts::one(&label);
            let parts = parts(device, &label);
            for (i, width) in [Width::Minute, Width::Hour].into_iter().enumerate() {
                let at = label.predicted_at_ms - label.predicted_at_ms % width.ms();
                for part in &parts {
                    sums[i].entry(rollup::key(model, at, part)).or_default().add(&one);
                }
            }
            labels += 1;
        }
        for (tree, sums) in trees.into_iter().zip(sums) {
            tree.clear().map_err(err)?;
            let mut batch = sled::Batch::default();
            for (k, counts) in sums {
                batch.insert(k, postcard::to_stdvec(&counts).unwrap_or_default());
            }
            tree.apply_batch(batch).map_err(err)?;
        }
        if labels > 0 {
            tracing::info!(
                labels,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "rolled up the stored labels{what} into minute and hour buckets"
            );
        }
        Ok(())
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
        // Each batch's device label parts (`label \0 value`), and each label's write.
        let parts: Vec<Vec<String>> = batches
            .iter()
            .map(|(_, labels, _)| labels.iter().map(|(k, v)| rollup::label_part(k, v)).collect())
            .collect();
        let mut writes = Vec::new();
        for ((device, _, batch), device_labels) in batches.iter().zip(&parts) {
            for l in &batch.labels {
                let value = StoredLabel {
                    version: l.version.clone(),
                    slot: l.slot,
                    predicted: l.predicted,
                    label: l.label,
                    predicted_at_ms: l.predicted_at_ms,
                    labelled_at_ms: l.labelled_at_ms,
                };
                let encoded = crate::base::store::encode("label", &value)?;
                writes.push((
                    l.model.as_str(),
                    key(&l.model, device, l.prediction_id),
                    encoded,
                    value,
                    device_labels,
                ));
            }
        }
        if writes.is_empty() {
            return Ok(());
        }
        let trees = (&self.tree, &self.minutes, &self.hours, &self.label_minutes, &self.label_hours);
        let outcome = self.store.feed().commit(|| {
            let outcome = trees.transaction(|(tree, minutes, hours, label_minutes, label_hours)| {
                let (mut readable, mut changes) = (true, Vec::new());
                for (model, key, encoded, value, device_labels) in &writes {
                    let raw = tree.insert(key.as_slice(), encoded.as_slice())?;
                    let old = raw.as_ref().and_then(|v| serde_json::from_slice::<StoredLabel>(v).ok());
                    if old.as_ref() == Some(value) {
                        continue;
                    }
                    changes.push(Change {
                        tree: LABELS,
                        key: key.clone(),
                        before: raw.map(|v| v.to_vec()),
                        after: encoded.clone(),
                    });
                    // The replaced label out, the new one in: its version's buckets, and each
                    // device label value's (`label \0 value \0 version`).
                    for (l, sign) in old.iter().map(|o| (o, false)).chain([(value, true)]) {
                        let own = std::slice::from_ref(&l.version);
                        let by_label: Vec<String> =
                            device_labels.iter().map(|p| format!("{p}\0{}", l.version)).collect();
                        for (t, width, parts) in [
                            (minutes, Width::Minute, own),
                            (hours, Width::Hour, own),
                            (label_minutes, Width::Minute, &by_label[..]),
                            (label_hours, Width::Hour, &by_label[..]),
                        ] {
                            for part in parts {
                                readable &= move_label(t, width, model, part, l, sign)?;
                            }
                        }
                    }
                }
                Ok((readable, changes))
            });
            match outcome {
                Ok((readable, changes)) => (Ok(readable), changes),
                Err(e) => (Err(e), Vec::new()),
            }
        });
        let devices = match batches {
            [(device, ..)] => (*device).to_owned(),
            _ => format!("{} feedback batches", batches.len()),
        };
        rollup::settle(
            &self.store,
            &[rollup::LABELS_MARKER, rollup::LABELS_BY_LABEL_MARKER],
            "label",
            &devices,
            outcome,
        )
    }

    /// The tree of labels (keys as [`parse_key`] reads), for a reader that follows it
    /// ([`crate::monitoring::follow`]).
    pub(crate) fn label_tree(&self) -> &sled::Tree {
        &self.tree
    }

    /// Calls `each(bucket_start, version, counts)` for `model`'s buckets of `width` starting in
    /// `[from_ms, until_ms)`.
    fn buckets(
        &self,
        width: Width,
        model: &str,
        from_ms: u64,
        until_ms: u64,
        each: impl FnMut(u64, &str, LabelCounts),
    ) -> Result<(), StoreError> {
        let tree = match width {
            Width::Minute => &self.minutes,
            Width::Hour => &self.hours,
        };
        rollup::each_bucket(&self.store, tree, rollup::LABELS_MARKER, "label", model, from_ms, until_ms, each)
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
        for item in self.scan(model) {
            let (_, l) = item?;
            if (from_ms..=to_ms).contains(&l.predicted_at_ms)
                && let Some(predicted) = l.predicted
            {
                t.labelled += 1;
                t.correct += u64::from(predicted == l.label);
            }
        }
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
        let trees = [&self.minutes, &self.hours];
        rollup::each_spanning(
            &self.store,
            trees,
            rollup::LABELS_MARKER,
            "label",
            model,
            from_ms,
            to_ms,
            |_, version, counts: LabelCounts| out.entry(version.to_owned()).or_default().add(&counts),
        )?;
        Ok(out)
    }

    /// The label of one prediction, if one arrived.
    pub fn get(
        &self,
        model: &str,
        device: &str,
        prediction_id: u64,
    ) -> Result<Option<StoredLabel>, StoreError> {
        let found =
            self.tree.get(key(model, device, prediction_id)).map_err(|e| self.store.storage_error(e))?;
        Ok(found.and_then(|v| serde_json::from_slice(&v).ok()))
    }

    /// Every label of `model` (device id, label), oldest prediction first within a device.
    fn scan<'a>(
        &'a self,
        model: &'a str,
    ) -> impl Iterator<Item = Result<(String, StoredLabel), StoreError>> + 'a {
        let mut prefix = model.as_bytes().to_vec();
        prefix.push(0);
        let skip = prefix.len();
        self.tree.scan_prefix(prefix).map(move |item| {
            let (k, v) = item.map_err(|e| self.store.storage_error(e))?;
            let rest = &k[skip..];
            let device = rest.split(|b| *b == 0).next().unwrap_or_default();
            let label: StoredLabel = serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt {
                key: format!("labels/{model}/{}", String::from_utf8_lossy(device)),
                detail: e.to_string(),
            })?;
            Ok((String::from_utf8_lossy(device).into_owned(), label))
        })
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
            let mut prefix = model.as_bytes().to_vec();
            prefix.push(0);
            prefix.extend_from_slice(device.as_bytes());
            prefix.push(0);
            for item in self.tree.scan_prefix(prefix) {
                let (_, v) = item.map_err(|e| self.store.storage_error(e))?;
                let Ok(label) = serde_json::from_slice::<StoredLabel>(&v) else { continue };
                if label.version != version || !(from_ms..=to_ms).contains(&label.predicted_at_ms) {
                    continue;
                }
                let Some(predicted) = label.predicted else { continue };
                labelled += 1;
                correct += u64::from(predicted == label.label);
            }
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
            self.buckets(Width::Minute, model, from, grid.to_ms.saturating_add(1), |at, version, counts| {
                let t = counts.tally();
                let cell = out[grid.index(at)].entry(version.to_owned()).or_default();
                cell.0 += t.labelled;
                cell.1 += t.correct;
            })?;
            return Ok(out);
        }
        for item in self.scan(model) {
            let (_, l) = item?;
            let Some(predicted) = l.predicted else { continue };
            if !(grid.from_ms..=grid.to_ms).contains(&l.predicted_at_ms) {
                continue;
            }
            let cell: &mut (u64, u64) = out[grid.index(l.predicted_at_ms)].entry(l.version).or_default();
            cell.0 += 1;
            cell.1 += u64::from(predicted == l.label);
        }
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
        rollup::each_spanning(
            &self.store,
            [&self.label_minutes, &self.label_hours],
            rollup::LABELS_BY_LABEL_MARKER,
            "label by device label",
            model,
            from_ms,
            to_ms,
            |_, part, counts: LabelCounts| {
                if let Some((label, value, Some(version))) = rollup::parse_label_part(part)
                    && only.is_none_or(|only| only == label)
                {
                    let key = (label.to_owned(), value.to_owned(), version.to_owned());
                    out.entry(key).or_default().add(&counts);
                }
            },
        )?;
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
        for item in self.scan(model) {
            let (device, l) = item?;
            if since_ms.is_some_and(|since| l.predicted_at_ms < since) {
                continue;
            }
            let entry = acc.entry(l.version.clone()).or_default();
            entry.2 += 1;
            let Some(predicted) = l.predicted else {
                entry.3 += 1;
                continue;
            };
            entry.0.0.push(l.label);
            entry.0.1.push(predicted);
            if !segment_of.contains_key(&device) {
                let value = label_of(&device)?.unwrap_or_else(|| NO_VALUE.to_owned());
                segment_of.insert(device.clone(), value);
            }
            let segment = segment_of.get(&device).cloned().unwrap_or_default();
            let pairs = entry.1.entry(segment).or_default();
            pairs.0.push(l.label);
            pairs.1.push(predicted);
        }
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

#[cfg(test)]
mod tests;
