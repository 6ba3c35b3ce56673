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

use std::collections::{BTreeMap, HashMap};

use outpost_shared::protocol::messages::FeedbackBatch;
use serde::{Deserialize, Serialize};

use crate::base::store::{Store, StoreError};
use crate::models::validation::Metrics;

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
    /// Only predictions made at or after this time (unix ms) count.
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

/// Reads label `label` (second argument) of device `device` (first).
pub type LabelOf<'a> = dyn Fn(&str, &str) -> Result<Option<String>, StoreError> + 'a;

/// A device label to split quality by, and how to read a device's value of it (`device id,
/// label name → value`; `None` when the device has no such label).
#[derive(Clone, Copy)]
pub struct SegmentBy<'a> {
    pub label: &'a str,
    pub label_of: &'a LabelOf<'a>,
}

impl std::fmt::Debug for SegmentBy<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentBy").field("label", &self.label).finish_non_exhaustive()
    }
}

/// The labels store.
#[derive(Debug, Clone)]
pub struct Labels {
    tree: sled::Tree,
    store: Store,
}

impl Labels {
    pub fn open(store: &Store) -> Result<Labels, StoreError> {
        Ok(Labels { tree: store.tree("labels")?, store: store.clone() })
    }

    /// Keeps the labels of one feedback batch from `device` (upsert).
    pub fn put(&self, device: &str, batch: &FeedbackBatch) -> Result<(), StoreError> {
        let mut writes = sled::Batch::default();
        for l in &batch.labels {
            let value = StoredLabel {
                version: l.version.clone(),
                slot: l.slot,
                predicted: l.predicted,
                label: l.label,
                predicted_at_ms: l.predicted_at_ms,
                labelled_at_ms: l.labelled_at_ms,
            };
            writes
                .insert(key(&l.model, device, l.prediction_id), crate::base::store::encode("label", &value)?);
        }
        self.tree.apply_batch(writes).map_err(|e| self.store.storage_error(e))
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
    /// version: (labelled with a prediction, correct).
    pub fn timeline(
        &self,
        model: &str,
        grid: &crate::monitoring::slo::TimeBuckets,
    ) -> Result<Vec<Correct>, StoreError> {
        let mut out = vec![BTreeMap::new(); grid.count];
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

    /// Quality of `model` per version, split by a device label when `by` is given (the label's
    /// name, and how to read a device's value of it: devices belong to the fleet floor, above
    /// this one).
    pub fn quality(
        &self,
        model: &str,
        since_ms: Option<u64>,
        by: Option<SegmentBy<'_>>,
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
            if let Some(by) = &by {
                if !segment_of.contains_key(&device) {
                    let value = (by.label_of)(&device, by.label)?.unwrap_or_else(|| "(none)".to_owned());
                    segment_of.insert(device.clone(), value);
                }
                let segment = segment_of.get(&device).cloned().unwrap_or_default();
                let pairs = entry.1.entry(segment).or_default();
                pairs.0.push(l.label);
                pairs.1.push(predicted);
            }
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
        Ok(QualityReport { model: model.to_owned(), since_ms, by: by.map(|b| b.label.to_owned()), versions })
    }
}
