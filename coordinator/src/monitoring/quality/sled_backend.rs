//! Labels and their roll-ups in sled (the layout is in the parent module's header):
//! [`Labels`](super::Labels) dispatches here when the store is the embedded one.

use std::collections::BTreeMap;

use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionalTree};

use super::{LABELS, LabelCounts, LabelWrite, StoredLabel, parse_key};
use crate::base::feed::Change;
use crate::base::store::{Store, StoreError};
use crate::monitoring::slo::rollup::{self, Width};

fn key(model: &str, device: &str, prediction_id: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(model.len() + device.len() + 10);
    k.extend_from_slice(model.as_bytes());
    k.push(0);
    k.extend_from_slice(device.as_bytes());
    k.push(0);
    k.extend_from_slice(&prediction_id.to_be_bytes());
    k
}

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

#[derive(Debug, Clone)]
pub(super) struct SledLabels {
    tree: sled::Tree,
    /// [`LabelCounts`] roll-ups per model version and minute / hour of prediction.
    minutes: sled::Tree,
    hours: sled::Tree,
    /// The same per value of each device label.
    label_minutes: sled::Tree,
    label_hours: sled::Tree,
    store: Store,
}

impl SledLabels {
    pub(super) fn open(store: &Store) -> Result<SledLabels, StoreError> {
        let labels = SledLabels {
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

    pub(super) fn ensure_rolled_up_by_label(
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

    pub(super) fn put_many(&self, writes: &[LabelWrite<'_>], devices: &str) -> Result<(), StoreError> {
        // Each label's key, encoding and device label parts (`label \0 value`).
        let mut prepared = Vec::with_capacity(writes.len());
        for w in writes {
            let parts: Vec<String> = w.device_labels.iter().map(|(k, v)| rollup::label_part(k, v)).collect();
            let encoded = crate::base::store::encode("label", &w.label)?;
            prepared.push((key(w.model, w.device, w.prediction_id), encoded, parts));
        }
        let trees = (&self.tree, &self.minutes, &self.hours, &self.label_minutes, &self.label_hours);
        let outcome = self.store.feed().commit(|| {
            let outcome = trees.transaction(|(tree, minutes, hours, label_minutes, label_hours)| {
                let (mut readable, mut changes) = (true, Vec::new());
                for (w, (key, encoded, device_labels)) in writes.iter().zip(&prepared) {
                    let value = &w.label;
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
                                readable &= move_label(t, width, w.model, part, l, sign)?;
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
        rollup::settle(
            &self.store,
            &[rollup::LABELS_MARKER, rollup::LABELS_BY_LABEL_MARKER],
            "label",
            devices,
            outcome,
        )
    }

    /// The tree of labels (keys as [`parse_key`] reads), for a follower.
    pub(super) fn label_tree(&self) -> &sled::Tree {
        &self.tree
    }

    /// Calls `each(bucket_start, label, value, version, counts)` for `model`'s buckets starting
    /// in each `(width, from, until)` of `spans`: per version (`label` and `value` empty) or,
    /// `by_label`, per value of each device label and version.
    pub(super) fn each_bucket(
        &self,
        by_label: bool,
        model: &str,
        spans: &[(Width, u64, u64)],
        mut each: impl FnMut(u64, &str, &str, &str, LabelCounts),
    ) -> Result<(), StoreError> {
        let (marker, what) = if by_label {
            (rollup::LABELS_BY_LABEL_MARKER, "label by device label")
        } else {
            (rollup::LABELS_MARKER, "label")
        };
        for &(width, from, until) in spans {
            let tree = match (by_label, width) {
                (false, Width::Minute) => &self.minutes,
                (false, Width::Hour) => &self.hours,
                (true, Width::Minute) => &self.label_minutes,
                (true, Width::Hour) => &self.label_hours,
            };
            rollup::each_bucket(&self.store, tree, marker, what, model, from, until, |at, part, counts| {
                if !by_label {
                    each(at, "", "", part, counts);
                } else if let Some((label, value, Some(version))) = rollup::parse_label_part(part) {
                    each(at, label, value, version, counts);
                }
            })?;
        }
        Ok(())
    }

    pub(super) fn get(
        &self,
        model: &str,
        device: &str,
        prediction_id: u64,
    ) -> Result<Option<StoredLabel>, StoreError> {
        let found =
            self.tree.get(key(model, device, prediction_id)).map_err(|e| self.store.storage_error(e))?;
        Ok(found.and_then(|v| serde_json::from_slice(&v).ok()))
    }

    /// Calls `each(device, label)` for every label of `model` (of `device` only, when given),
    /// by device, oldest prediction first within a device; a label that does not decode comes
    /// as an error naming it.
    pub(super) fn each_label(
        &self,
        model: &str,
        device: Option<&str>,
        mut each: impl FnMut(&str, Result<StoredLabel, StoreError>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut prefix = model.as_bytes().to_vec();
        prefix.push(0);
        let skip = prefix.len();
        if let Some(device) = device {
            prefix.extend_from_slice(device.as_bytes());
            prefix.push(0);
        }
        for item in self.tree.scan_prefix(prefix) {
            let (k, v) = item.map_err(|e| self.store.storage_error(e))?;
            let rest = &k[skip..];
            let device = String::from_utf8_lossy(rest.split(|b| *b == 0).next().unwrap_or_default());
            let label = serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt {
                key: format!("labels/{model}/{device}"),
                detail: e.to_string(),
            });
            each(&device, label)?;
        }
        Ok(())
    }
}
