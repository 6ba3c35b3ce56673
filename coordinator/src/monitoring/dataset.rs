//! Datasets for retraining: the predictions devices uploaded (with the inputs their
//! `record_inputs` policy kept), joined with the ground-truth labels that arrived for them.
//!
//! Index: sled tree `predictions`, key `model \0 device \0 prediction_id (u64 BE)` — the same
//! layout as the labels tree, so a prediction and its label join by key — value JSON
//! [`LoggedPrediction`] (upserted at ingest, so resends add nothing). On PostgreSQL ([`pg`]):
//! table `outpost_predictions` (migration `0007_monitoring.sql`), the same keys and values.
//!
//! Export format (CSV, one row per prediction, oldest first per device):
//! `device,prediction_id,version,predicted_at_ms,<feature columns…>,predicted,label` — feature
//! names from the version's bundle baseline when registered (else `f0…`), `predicted`/`label`
//! empty when unknown. Rows whose inputs were hashed or dropped cannot be exported and are
//! counted instead.

use std::fmt::Write as _;

use outpost_shared::protocol::messages::PredictionBatch;
use outpost_shared::protocol::records::{PredictionRecord, RecordedInputs};
use serde::{Deserialize, Serialize};

use crate::base::store::{Store, StoreError};
use crate::monitoring::quality::{Labels, StoredLabel};

mod pg;

/// What is kept of one uploaded prediction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoggedPrediction {
    pub version: String,
    pub at_ms: u64,
    /// The first input's values for this row (FP32/FP64 inputs that were kept).
    pub features: Option<Vec<f64>>,
    pub predicted: Option<i64>,
}

/// What an export held.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExportSummary {
    pub rows: u64,
    pub labelled: u64,
    /// Predictions skipped because their inputs were not kept (hashed or dropped).
    pub without_inputs: u64,
    pub features: usize,
    /// The earliest and latest prediction exported (unix ms).
    pub from_ms: Option<u64>,
    pub to_ms: Option<u64>,
}

fn key_prefix(model: &str) -> Vec<u8> {
    let mut k = model.as_bytes().to_vec();
    k.push(0);
    k
}

fn key(model: &str, device: &str, id: u64) -> Vec<u8> {
    let mut k = key_prefix(model);
    k.extend_from_slice(device.as_bytes());
    k.push(0);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

fn floats(datatype: &str, data: &[u8]) -> Option<Vec<f64>> {
    match datatype {
        "FP32" => Some(
            data.chunks_exact(4).map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]]))).collect(),
        ),
        "FP64" => Some(
            data.chunks_exact(8)
                .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect(),
        ),
        _ => None,
    }
}

fn slim(record: &PredictionRecord) -> LoggedPrediction {
    let features = match &record.inputs {
        RecordedInputs::Kept(tensors) => tensors.first().and_then(|t| floats(&t.datatype, &t.data)),
        RecordedInputs::Hashed(_) | RecordedInputs::Dropped => None,
    };
    let predicted = record
        .outputs
        .iter()
        .find(|t| t.datatype == "INT64" && t.data.len() == 8)
        .map(|t| i64::from_le_bytes(t.data[..8].try_into().unwrap_or([0; 8])));
    LoggedPrediction { version: record.version.clone(), at_ms: record.at_ms, features, predicted }
}

/// The prediction index.
#[derive(Debug, Clone)]
pub struct Predictions {
    backend: Backend,
}

#[derive(Debug, Clone)]
enum Backend {
    Sled { tree: sled::Tree, store: Store },
    Postgres(pg::PgPredictions),
}

impl Predictions {
    pub fn open(store: &Store) -> Result<Predictions, StoreError> {
        Ok(Predictions { backend: Backend::Sled { tree: store.tree("predictions")?, store: store.clone() } })
    }

    /// The index in PostgreSQL (its schema brought up to date first: [`crate::base::pg::migrate`]).
    pub fn open_postgres(store: &crate::base::pg::store::PgStore) -> Predictions {
        Predictions { backend: Backend::Postgres(pg::PgPredictions::open(store)) }
    }

    /// Indexes one uploaded batch.
    pub fn put(&self, device: &str, batch: &PredictionBatch) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sled { tree, store } => {
                let mut writes = sled::Batch::default();
                for r in &batch.records {
                    writes.insert(
                        key(&r.model, device, r.id),
                        crate::base::store::encode("prediction", &slim(r))?,
                    );
                }
                tree.apply_batch(writes).map_err(|e| store.storage_error(e))
            }
            Backend::Postgres(p) => {
                let rows: Vec<(&str, u64, LoggedPrediction)> =
                    batch.records.iter().map(|r| (r.model.as_str(), r.id, slim(r))).collect();
                p.put(device, &rows)
            }
        }
    }

    /// Calls `each(device, prediction_id, prediction)` for `model`'s predictions, by device then
    /// id; one that does not decode is left out.
    fn each(
        &self,
        model: &str,
        mut each: impl FnMut(String, u64, LoggedPrediction),
    ) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sled { tree, store } => {
                let prefix = key_prefix(model);
                for item in tree.scan_prefix(&prefix) {
                    let (k, v) = item.map_err(|e| store.storage_error(e))?;
                    let Ok(p) = serde_json::from_slice::<LoggedPrediction>(&v) else { continue };
                    let rest = &k[prefix.len()..];
                    let Some(split) = rest.iter().position(|b| *b == 0) else { continue };
                    let device = String::from_utf8_lossy(&rest[..split]).into_owned();
                    let id = u64::from_be_bytes(rest[split + 1..].try_into().unwrap_or([0; 8]));
                    each(device, id, p);
                }
                Ok(())
            }
            Backend::Postgres(p) => p.each(model, each),
        }
    }

    /// The model's predictions from `since_ms` on (all, or only labelled ones) as CSV.
    /// `feature_names` names the columns when they fit the data.
    pub fn export_csv(
        &self,
        labels: &Labels,
        model: &str,
        since_ms: u64,
        labelled_only: bool,
        feature_names: &dyn Fn(&str) -> Vec<String>,
    ) -> Result<(String, ExportSummary), StoreError> {
        let mut summary = ExportSummary::default();
        let mut rows: Vec<(String, u64, LoggedPrediction, Option<StoredLabel>)> = Vec::new();
        let mut found = Vec::new();
        self.each(model, |device, id, p| {
            if p.at_ms >= since_ms {
                found.push((device, id, p));
            }
        })?;
        let keys: Vec<(String, u64)> = found.iter().map(|(device, id, _)| (device.clone(), *id)).collect();
        let found_labels = labels.get_many(model, &keys)?;
        for ((device, id, p), label) in found.into_iter().zip(found_labels) {
            if labelled_only && label.is_none() {
                continue;
            }
            if p.features.is_none() {
                summary.without_inputs += 1;
                continue;
            }
            rows.push((device, id, p, label));
        }
        let width = rows.iter().filter_map(|r| r.2.features.as_ref().map(Vec::len)).max().unwrap_or(0);
        let names = rows
            .first()
            .map(|r| feature_names(&r.2.version))
            .filter(|n| n.len() == width)
            .unwrap_or_else(|| (0..width).map(|i| format!("f{i}")).collect());
        let mut csv = String::new();
        let _ =
            writeln!(csv, "device,prediction_id,version,predicted_at_ms,{},predicted,label", names.join(","));
        for (device, id, p, label) in &rows {
            let features = p.features.as_deref().unwrap_or_default();
            if features.len() != width {
                summary.without_inputs += 1;
                continue;
            }
            let values: Vec<String> = features.iter().map(|v| v.to_string()).collect();
            let predicted = p.predicted.map(|v| v.to_string()).unwrap_or_default();
            let label_text = label.as_ref().map(|l| l.label.to_string()).unwrap_or_default();
            let _ = writeln!(
                csv,
                "{device},{id},{},{},{},{predicted},{label_text}",
                p.version,
                p.at_ms,
                values.join(",")
            );
            summary.rows += 1;
            summary.labelled += u64::from(label.is_some());
            summary.from_ms = Some(summary.from_ms.map_or(p.at_ms, |m| m.min(p.at_ms)));
            summary.to_ms = Some(summary.to_ms.map_or(p.at_ms, |m| m.max(p.at_ms)));
        }
        summary.features = width;
        Ok((csv, summary))
    }
}
