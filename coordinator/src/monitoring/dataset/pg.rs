//! The prediction index in PostgreSQL: table `outpost_predictions` of migration
//! `0007_monitoring.sql`, read a page at a time.

use super::LoggedPrediction;
use crate::base::pg::store::{PgStore, seq_from_sql, seq_to_sql, to_sql};
use crate::base::store::StoreError;

/// Predictions read per query.
const PAGE: i64 = 10_000;

#[derive(Debug, Clone)]
pub(super) struct PgPredictions {
    store: PgStore,
}

impl PgPredictions {
    pub(super) fn open(store: &PgStore) -> PgPredictions {
        PgPredictions { store: store.clone() }
    }

    /// Upserts `rows` (model, prediction id, what is kept) of `device` in one statement; the last
    /// of a key in `rows` wins, as on sled.
    pub(super) fn put(&self, device: &str, rows: &[(&str, u64, LoggedPrediction)]) -> Result<(), StoreError> {
        let mut last = std::collections::BTreeMap::new();
        for (model, id, p) in rows {
            let json = serde_json::to_string(p).map_err(|e| StoreError::Corrupt {
                key: "prediction".into(),
                detail: format!("cannot encode: {e}"),
            })?;
            last.insert((*model, seq_to_sql(*id)), (to_sql(p.at_ms), json));
        }
        if last.is_empty() {
            return Ok(());
        }
        let models: Vec<&str> = last.keys().map(|k| k.0).collect();
        let ids: Vec<i64> = last.keys().map(|k| k.1).collect();
        let times: Vec<i64> = last.values().map(|v| v.0).collect();
        let records: Vec<&str> = last.values().map(|v| v.1.as_str()).collect();
        self.store.with(|c| {
            c.execute(
                "INSERT INTO outpost_predictions (model, device, prediction_id, at_ms, record)
                 SELECT u.model, $2, u.id, u.at_ms, u.record::json
                 FROM unnest($1::text[], $3::bigint[], $4::text[], $5::bigint[]) AS u(model, id, record, at_ms)
                 ON CONFLICT (model, device, prediction_id)
                 DO UPDATE SET record = excluded.record, at_ms = excluded.at_ms",
                &[&models, &device, &ids, &records, &times],
            )
        })?;
        Ok(())
    }

    pub(super) fn each(
        &self,
        model: &str,
        mut each: impl FnMut(String, u64, LoggedPrediction),
    ) -> Result<(), StoreError> {
        let sql = |op: &str| {
            format!(
                "SELECT device, prediction_id, record::text FROM outpost_predictions
                 WHERE model = $1 AND (device, prediction_id) {op} ($2, $3)
                 ORDER BY device, prediction_id
                 LIMIT $4"
            )
        };
        let (from_start, after_last) = (sql(">="), sql(">"));
        let mut after: (String, i64) = (String::new(), i64::MIN);
        let mut first = true;
        loop {
            let query = if first { &from_start } else { &after_last };
            let rows: Vec<(String, i64, String)> = self.store.with(|c| {
                c.query(query, &[&model, &after.0, &after.1, &PAGE])?
                    .iter()
                    .map(|row| Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)))
                    .collect()
            })?;
            first = false;
            let full = rows.len() as i64 == PAGE;
            for (device, id, text) in rows {
                after = (device.clone(), id);
                if let Ok(p) = serde_json::from_str::<LoggedPrediction>(&text) {
                    each(device, seq_from_sql(id), p);
                }
            }
            if !full {
                return Ok(());
            }
        }
    }
}
