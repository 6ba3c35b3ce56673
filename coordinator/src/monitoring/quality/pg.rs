//! Labels and their roll-ups in PostgreSQL: the tables of migration `0006_labels.sql`.
//! [`Labels`](super::Labels) dispatches here when the store is PostgreSQL.
//!
//! A batch of labels is one transaction. The last label of each prediction in the batch counts
//! (what storing them in order leaves). Labels new to the store are inserted `ON CONFLICT DO
//! NOTHING`; the rest are locked (`FOR UPDATE`), and where the stored label differs it is replaced
//! and taken out of its buckets. A replica racing to insert the same prediction's label waits
//! for the first insert's commit and then takes the replace path, so a label is never counted
//! twice. Bucket counts are signed deltas in this replica's shard ([`PgStore::shard`]): created
//! empty if missing, locked in key order, merged here; reads sum a bucket's shards before they
//! clamp it to counts.

use std::collections::{BTreeMap, HashMap, HashSet};

use postgres::Transaction;
use serde::{Deserialize, Serialize};

use super::{LabelCounts, LabelWrite, StoredLabel};
use crate::base::pg::store::{PgStore, seq_from_sql, seq_to_sql, to_sql};
use crate::base::store::StoreError;
use crate::monitoring::slo::pg::spanned_rows;
use crate::monitoring::slo::rollup::Width;

/// Labels read per query when scanning.
const PAGE: i64 = 10_000;

#[derive(Debug, Clone)]
pub(super) struct PgLabels {
    store: PgStore,
}

/// A bucket's counts as one shard holds them: signed, since a replica takes a replaced label
/// away in its own shard, which may not be the one that counted it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Delta {
    without_prediction: i64,
    confusion: BTreeMap<(i64, i64), i64>,
}

impl Delta {
    fn count(&mut self, label: &StoredLabel, sign: i64) {
        match label.predicted {
            Some(predicted) => *self.confusion.entry((label.label, predicted)).or_insert(0) += sign,
            None => self.without_prediction += sign,
        }
    }

    fn add(&mut self, other: &Delta) {
        self.without_prediction += other.without_prediction;
        for (pair, n) in &other.confusion {
            *self.confusion.entry(*pair).or_insert(0) += n;
        }
        self.confusion.retain(|_, n| *n != 0);
    }

    /// The counts the sum of a bucket's shards stands for (never below zero).
    fn counts(&self) -> LabelCounts {
        LabelCounts {
            without_prediction: u64::try_from(self.without_prediction).unwrap_or(0),
            confusion: self
                .confusion
                .iter()
                .filter_map(|(pair, n)| u64::try_from(*n).ok().filter(|n| *n > 0).map(|n| (*pair, n)))
                .collect(),
        }
    }

    fn bytes(&self) -> Vec<u8> {
        // Integers and a map: postcard cannot fail on them.
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// A stored shard's counts; one that does not decode (not written by this code) is left
    /// out, with an error naming it.
    fn read(bytes: &[u8], what: impl FnOnce() -> String) -> Delta {
        postcard::from_bytes(bytes).unwrap_or_else(|e| {
            tracing::error!(bucket = what(), error = %e, "a stored label roll-up is unreadable: left out");
            Delta::default()
        })
    }
}

/// A sled bucket's counts (postcard [`LabelCounts`]) as one shard's stored counts here (what
/// `outpost-coordinator migrate` copies).
pub(super) fn counts_as_shard(sled_bytes: &[u8]) -> Option<Vec<u8>> {
    let counts: LabelCounts = postcard::from_bytes(sled_bytes).ok()?;
    let delta = Delta {
        without_prediction: i64::try_from(counts.without_prediction).ok()?,
        confusion: counts
            .confusion
            .into_iter()
            .map(|(pair, n)| i64::try_from(n).map(|n| (pair, n)))
            .collect::<Result<_, _>>()
            .ok()?,
    };
    Some(delta.bytes())
}

/// A bucket's key: (model, by label, width, start, label, value, version).
type BucketKey = (String, bool, i64, i64, String, String, String);

/// A label's key as stored: (model, device, prediction id − 2⁶³).
type LabelKey = (String, String, i64);

fn label_json(label: &StoredLabel) -> Result<String, StoreError> {
    serde_json::to_string(label)
        .map_err(|e| StoreError::Corrupt { key: "label".into(), detail: format!("cannot encode: {e}") })
}

impl PgLabels {
    pub(super) fn open(store: &PgStore) -> PgLabels {
        PgLabels { store: store.clone() }
    }

    pub(super) fn put_many(&self, writes: &[LabelWrite<'_>], _devices: &str) -> Result<(), StoreError> {
        // The last label of each prediction, in key order (the order rows are locked in).
        let mut last: BTreeMap<LabelKey, &LabelWrite<'_>> = BTreeMap::new();
        for w in writes {
            last.insert((w.model.to_owned(), w.device.to_owned(), seq_to_sql(w.prediction_id)), w);
        }
        let mut records = Vec::with_capacity(last.len());
        for w in last.values() {
            records.push(label_json(&w.label)?);
        }
        let models: Vec<&str> = last.keys().map(|k| k.0.as_str()).collect();
        let devices: Vec<&str> = last.keys().map(|k| k.1.as_str()).collect();
        let ids: Vec<i64> = last.keys().map(|k| k.2).collect();
        let times: Vec<i64> = last.values().map(|w| to_sql(w.label.predicted_at_ms)).collect();
        self.store.transaction(|tx| {
            let inserted = tx.query(
                "INSERT INTO outpost_labels (model, device, prediction_id, predicted_at_ms, record)
                 SELECT u.model, u.device, u.id, u.at_ms, u.record::json
                 FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::bigint[])
                   AS u(model, device, id, record, at_ms)
                 ORDER BY 1, 2, 3
                 ON CONFLICT DO NOTHING
                 RETURNING model, device, prediction_id",
                &[&models, &devices, &ids, &records, &times],
            )?;
            let mut new = HashSet::new();
            for row in inserted {
                new.insert((
                    row.try_get::<_, String>(0)?,
                    row.try_get::<_, String>(1)?,
                    row.try_get::<_, i64>(2)?,
                ));
            }
            let old = self.lock_stored(tx, &last, &new)?;
            let mut deltas: BTreeMap<BucketKey, Delta> = BTreeMap::new();
            let mut replaced: Vec<usize> = Vec::new();
            for (i, (key, w)) in last.iter().enumerate() {
                if !new.contains(key) {
                    let before = old.get(key).and_then(|text| serde_json::from_str::<StoredLabel>(text).ok());
                    if before.as_ref() == Some(&w.label) {
                        continue;
                    }
                    replaced.push(i);
                    if let Some(before) = &before {
                        count_into(&mut deltas, w, before, -1);
                    }
                }
                count_into(&mut deltas, w, &w.label, 1);
            }
            if !replaced.is_empty() {
                let texts: Vec<&str> = replaced.iter().map(|&i| records[i].as_str()).collect();
                let (m, d): (Vec<&str>, Vec<&str>) =
                    replaced.iter().map(|&i| (models[i], devices[i])).unzip();
                let id: Vec<i64> = replaced.iter().map(|&i| ids[i]).collect();
                let at: Vec<i64> = replaced.iter().map(|&i| times[i]).collect();
                tx.execute(
                    "UPDATE outpost_labels l SET record = u.record::json, predicted_at_ms = u.at_ms
                     FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::bigint[])
                       AS u(model, device, id, record, at_ms)
                     WHERE (l.model, l.device, l.prediction_id) = (u.model, u.device, u.id)",
                    &[&m, &d, &id, &texts, &at],
                )?;
            }
            // What a follower reads (monitoring/follow/pg.rs): each label stored or replaced,
            // with the one it replaced.
            let keys: Vec<&LabelKey> = last.keys().collect();
            let changed: Vec<usize> = (0..keys.len())
                .filter(|i| new.contains(keys[*i]) || replaced.binary_search(i).is_ok())
                .collect();
            if !changed.is_empty() {
                let before: Vec<Option<&str>> =
                    changed.iter().map(|&i| old.get(keys[i]).map(String::as_str)).collect();
                tx.execute(
                    "INSERT INTO outpost_label_changes (model, device, prediction_id, predicted_at_ms, label, replaced)
                     SELECT u.model, u.device, u.id, u.at_ms, u.label::json, u.replaced::json
                     FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::text[], $6::text[])
                       AS u(model, device, id, at_ms, label, replaced)",
                    &[
                        &changed.iter().map(|&i| models[i]).collect::<Vec<_>>(),
                        &changed.iter().map(|&i| devices[i]).collect::<Vec<_>>(),
                        &changed.iter().map(|&i| ids[i]).collect::<Vec<_>>(),
                        &changed.iter().map(|&i| times[i]).collect::<Vec<_>>(),
                        &changed.iter().map(|&i| records[i].as_str()).collect::<Vec<_>>(),
                        &before,
                    ],
                )?;
            }
            if !deltas.is_empty() {
                self.add_into_buckets(tx, &deltas)?;
            }
            Ok(Ok(()))
        })?
    }

    /// The stored records of the labels in `last` that `new` does not hold, locked until the
    /// transaction ends.
    fn lock_stored(
        &self,
        tx: &mut Transaction<'_>,
        last: &BTreeMap<LabelKey, &LabelWrite<'_>>,
        new: &HashSet<LabelKey>,
    ) -> Result<HashMap<LabelKey, String>, postgres::Error> {
        let rest: Vec<&LabelKey> = last.keys().filter(|k| !new.contains(*k)).collect();
        if rest.is_empty() {
            return Ok(HashMap::new());
        }
        let models: Vec<&str> = rest.iter().map(|k| k.0.as_str()).collect();
        let devices: Vec<&str> = rest.iter().map(|k| k.1.as_str()).collect();
        let ids: Vec<i64> = rest.iter().map(|k| k.2).collect();
        let rows = tx.query(
            "SELECT l.model, l.device, l.prediction_id, l.record::text
             FROM outpost_labels l JOIN unnest($1::text[], $2::text[], $3::bigint[]) AS u(model, device, id)
               ON (l.model, l.device, l.prediction_id) = (u.model, u.device, u.id)
             ORDER BY 1, 2, 3
             FOR UPDATE OF l",
            &[&models, &devices, &ids],
        )?;
        rows.iter()
            .map(|row| Ok(((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?), row.try_get(3)?)))
            .collect()
    }

    /// Adds `deltas` into this shard's buckets within `tx` (see the module header).
    fn add_into_buckets(
        &self,
        tx: &mut Transaction<'_>,
        deltas: &BTreeMap<BucketKey, Delta>,
    ) -> Result<(), postgres::Error> {
        let models: Vec<&str> = deltas.keys().map(|k| k.0.as_str()).collect();
        let by_label: Vec<bool> = deltas.keys().map(|k| k.1).collect();
        let widths: Vec<i64> = deltas.keys().map(|k| k.2).collect();
        let starts: Vec<i64> = deltas.keys().map(|k| k.3).collect();
        let labels: Vec<&str> = deltas.keys().map(|k| k.4.as_str()).collect();
        let values: Vec<&str> = deltas.keys().map(|k| k.5.as_str()).collect();
        let versions: Vec<&str> = deltas.keys().map(|k| k.6.as_str()).collect();
        let shard = self.store.shard();
        let keys =
            "unnest($1::text[], $2::bool[], $3::bigint[], $4::bigint[], $5::text[], $6::text[], $7::text[])
                    AS k(model, by_label, width_ms, start_ms, label, value, version)";
        tx.execute(
            &format!(
                "INSERT INTO outpost_label_rollups
                     (model, by_label, width_ms, start_ms, label, value, version, shard, counts)
                 SELECT k.*, $8, $9 FROM {keys}
                 ORDER BY 1, 2, 3, 4, 5, 6, 7
                 ON CONFLICT DO NOTHING"
            ),
            &[
                &models,
                &by_label,
                &widths,
                &starts,
                &labels,
                &values,
                &versions,
                &shard,
                &Delta::default().bytes(),
            ],
        )?;
        let locked = tx.query(
            &format!(
                "SELECT r.model, r.by_label, r.width_ms, r.start_ms, r.label, r.value, r.version, r.counts
                 FROM outpost_label_rollups r JOIN {keys}
                   USING (model, by_label, width_ms, start_ms, label, value, version)
                 WHERE r.shard = $8
                 ORDER BY 1, 2, 3, 4, 5, 6, 7
                 FOR UPDATE OF r"
            ),
            &[&models, &by_label, &widths, &starts, &labels, &values, &versions, &shard],
        )?;
        let mut stored: BTreeMap<BucketKey, Delta> = BTreeMap::new();
        for row in &locked {
            let key: BucketKey = (
                row.try_get(0)?,
                row.try_get(1)?,
                row.try_get(2)?,
                row.try_get(3)?,
                row.try_get(4)?,
                row.try_get(5)?,
                row.try_get(6)?,
            );
            let delta = Delta::read(row.try_get(7)?, || format!("{key:?}"));
            stored.insert(key, delta);
        }
        // Every key has a row now (inserted above if it had none), locked until the commit.
        let merged: Vec<Vec<u8>> = deltas
            .iter()
            .map(|(key, delta)| {
                let mut total = stored.remove(key).unwrap_or_default();
                total.add(delta);
                total.bytes()
            })
            .collect();
        tx.execute(
            "UPDATE outpost_label_rollups r SET counts = u.counts
             FROM unnest($1::text[], $2::bool[], $3::bigint[], $4::bigint[], $5::text[], $6::text[], $7::text[],
                         $9::bytea[])
               AS u(model, by_label, width_ms, start_ms, label, value, version, counts)
             WHERE (r.model, r.by_label, r.width_ms, r.start_ms, r.label, r.value, r.version, r.shard)
                 = (u.model, u.by_label, u.width_ms, u.start_ms, u.label, u.value, u.version, $8)",
            &[&models, &by_label, &widths, &starts, &labels, &values, &versions, &shard, &merged],
        )?;
        Ok(())
    }

    /// Calls `each(bucket_start, label, value, version, counts)` for `model`'s buckets starting
    /// in each `(width, from, until)` of `spans`, each bucket's shards summed: one query.
    pub(super) fn each_bucket(
        &self,
        by_label: bool,
        model: &str,
        spans: &[(Width, u64, u64)],
        mut each: impl FnMut(u64, &str, &str, &str, LabelCounts),
    ) -> Result<(), StoreError> {
        let columns = "r.width_ms, r.start_ms, r.label, r.value, r.version, r.counts";
        let rows = spanned_rows(&self.store, "outpost_label_rollups", columns, model, by_label, spans)?;
        let mut buckets: BTreeMap<(i64, i64, &str, &str, &str), Delta> = BTreeMap::new();
        for row in &rows {
            let read = || -> Result<_, postgres::Error> {
                let key =
                    (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?, row.try_get(3)?, row.try_get(4)?);
                Ok((key, row.try_get::<_, &[u8]>(5)?))
            };
            let (key, bytes) = read().map_err(|e| self.store.error(e))?;
            let delta = Delta::read(bytes, || format!("{model} {key:?}"));
            buckets.entry(key).or_default().add(&delta);
        }
        for ((_, at, label, value, version), delta) in buckets {
            each(u64::try_from(at).unwrap_or(0), label, value, version, delta.counts());
        }
        Ok(())
    }

    pub(super) fn get(
        &self,
        model: &str,
        device: &str,
        prediction_id: u64,
    ) -> Result<Option<StoredLabel>, StoreError> {
        let id = seq_to_sql(prediction_id);
        let text: Option<String> = self.store.with(|c| {
            c.query_opt(
                "SELECT record::text FROM outpost_labels WHERE model = $1 AND device = $2 AND prediction_id = $3",
                &[&model, &device, &id],
            )?
            .map(|row| row.try_get(0))
            .transpose()
        })?;
        Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
    }

    pub(super) fn get_many(
        &self,
        model: &str,
        keys: &[(String, u64)],
    ) -> Result<Vec<Option<StoredLabel>>, StoreError> {
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(PAGE as usize) {
            let devices: Vec<&str> = chunk.iter().map(|(d, _)| d.as_str()).collect();
            let ids: Vec<i64> = chunk.iter().map(|(_, id)| seq_to_sql(*id)).collect();
            let texts: Vec<Option<String>> = self.store.with(|c| {
                c.query(
                    "SELECT l.record::text
                     FROM unnest($2::text[], $3::bigint[]) WITH ORDINALITY AS u(device, id, n)
                     LEFT JOIN outpost_labels l
                       ON l.model = $1 AND l.device = u.device AND l.prediction_id = u.id
                     ORDER BY u.n",
                    &[&model, &devices, &ids],
                )?
                .iter()
                .map(|row| row.try_get(0))
                .collect()
            })?;
            out.extend(texts.into_iter().map(|t| t.and_then(|t| serde_json::from_str(&t).ok())));
        }
        Ok(out)
    }

    /// Calls `each(device, label)` for every label of `model` (of `device` only, when given),
    /// by device, then prediction id, a page at a time; a label that does not decode comes as an
    /// error naming it.
    pub(super) fn each_label(
        &self,
        model: &str,
        device: Option<&str>,
        mut each: impl FnMut(&str, Result<StoredLabel, StoreError>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let sql = |op: &str| {
            format!(
                "SELECT device, prediction_id, record::text FROM outpost_labels
                 WHERE model = $1 AND ($2::text IS NULL OR device = $2) AND (device, prediction_id) {op} ($3, $4)
                 ORDER BY device, prediction_id
                 LIMIT $5"
            )
        };
        let (from_start, after_last) = (sql(">="), sql(">"));
        // ("", i64::MIN) is at or before every row (of `device`'s: (device, i64::MIN)).
        let mut after: (String, i64) = (device.unwrap_or_default().to_owned(), i64::MIN);
        let mut first = true;
        loop {
            let query = if first { &from_start } else { &after_last };
            let rows = self.store.with(|c| c.query(query, &[&model, &device, &after.0, &after.1, &PAGE]))?;
            first = false;
            for row in &rows {
                let read = || -> Result<(String, i64, String), postgres::Error> {
                    Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?))
                };
                let (device, id, text) = read().map_err(|e| self.store.error(e))?;
                let label = serde_json::from_str(&text).map_err(|e| StoreError::Corrupt {
                    key: format!("labels/{model}/{device}/{}", seq_from_sql(id)),
                    detail: e.to_string(),
                });
                each(&device, label)?;
                after = (device, id);
            }
            if (rows.len() as i64) < PAGE {
                return Ok(());
            }
        }
    }
}

/// Counts `label` (`sign` 1) or takes it away (−1) in the buckets of `w`'s model it goes to:
/// its version's minute and hour, and each of the device's label values'.
fn count_into(deltas: &mut BTreeMap<BucketKey, Delta>, w: &LabelWrite<'_>, label: &StoredLabel, sign: i64) {
    let at = label.predicted_at_ms;
    let parts = std::iter::once((false, "", ""))
        .chain(w.device_labels.iter().map(|(k, v)| (true, k.as_str(), v.as_str())));
    for (by_label, name, value) in parts {
        for width in [Width::Minute, Width::Hour] {
            let key = (
                w.model.to_owned(),
                by_label,
                to_sql(width.ms()),
                to_sql(at - at % width.ms()),
                name.to_owned(),
                value.to_owned(),
                label.version.clone(),
            );
            deltas.entry(key).or_default().count(label, sign);
        }
    }
}
