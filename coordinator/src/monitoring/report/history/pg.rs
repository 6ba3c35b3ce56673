//! The drift history in PostgreSQL: the tables of migration `0007_drift.sql`.
//! [`History`](super::History) dispatches here when the store is PostgreSQL.
//!
//! A batch of reports is one transaction: verdict sets are inserted `ON CONFLICT DO NOTHING`,
//! and only the new ones are counted. What each device reported of a model is a row locked
//! (`FOR UPDATE`, created empty if missing) while its verdicts are counted in report order, so
//! replicas counting two reports of one device take turns and a version change is seen once.
//! Buckets are merged here into this replica's shard's rows ([`PgStore::shard`]); a read merges
//! a bucket's shards.

use std::collections::{BTreeMap, HashSet};

use outpost_shared::protocol::messages::{DriftReport, ModelDrift};
use postgres::Transaction;

use super::{DeviceDrift, DriftBucket, count_verdict, encode, versions_per_model};
use crate::base::pg::store::{PgStore, to_sql};
use crate::base::store::StoreError;
use crate::monitoring::slo::rollup::{MINUTE_MS, Width};

#[derive(Debug, Clone)]
pub(super) struct PgHistory {
    store: PgStore,
}

/// A stored postcard value; one that does not decode (not written by this code) starts
/// afresh, with an error naming it.
fn decode<T: serde::de::DeserializeOwned + Default>(bytes: &[u8], what: impl FnOnce() -> String) -> T {
    postcard::from_bytes(bytes).unwrap_or_else(|e| {
        tracing::error!(record = what(), error = %e, "a stored drift record is unreadable: started afresh");
        T::default()
    })
}

/// A verdict set's key: (model, at, device, version).
type VerdictKey = (String, i64, String, String);

/// A bucket's key: (model, width, start, version).
type BucketKey = (String, i64, i64, String);

impl PgHistory {
    pub(super) fn open(store: &PgStore) -> PgHistory {
        PgHistory { store: store.clone() }
    }

    pub(super) fn put_many(&self, reports: &[(&str, &DriftReport)]) -> Result<(), StoreError> {
        // Every verdict set, in report order; the first of each key is the one that counts.
        let mut seen = HashSet::new();
        let mut rows: Vec<(usize, VerdictKey, String, &ModelDrift)> = Vec::new();
        for (i, (device, report)) in reports.iter().enumerate() {
            for m in &report.models {
                let key = (m.model.clone(), to_sql(report.at_ms), (*device).to_owned(), m.version.clone());
                if seen.insert(key.clone()) {
                    let json = serde_json::to_string(m).map_err(|e| StoreError::Corrupt {
                        key: "drift verdict".into(),
                        detail: format!("cannot encode: {e}"),
                    })?;
                    rows.push((i, key, json, m));
                }
            }
        }
        let per_report: Vec<_> = reports.iter().map(|(_, r)| versions_per_model(r)).collect();
        let models: Vec<&str> = rows.iter().map(|r| r.1.0.as_str()).collect();
        let ats: Vec<i64> = rows.iter().map(|r| r.1.1).collect();
        let devices: Vec<&str> = rows.iter().map(|r| r.1.2.as_str()).collect();
        let versions: Vec<&str> = rows.iter().map(|r| r.1.3.as_str()).collect();
        let verdicts: Vec<&str> = rows.iter().map(|r| r.2.as_str()).collect();
        self.store.transaction(|tx| {
            let inserted = tx.query(
                "INSERT INTO outpost_drift_verdicts (model, at_ms, device, version, verdicts)
                 SELECT u.model, u.at_ms, u.device, u.version, u.verdicts::json
                 FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[])
                   AS u(model, at_ms, device, version, verdicts)
                 ON CONFLICT DO NOTHING
                 RETURNING model, at_ms, device, version",
                &[&models, &ats, &devices, &versions, &verdicts],
            )?;
            let mut new = HashSet::new();
            for row in inserted {
                new.insert((row.try_get::<_, String>(0)?, row.try_get(1)?, row.try_get(2)?, row.try_get(3)?));
            }
            let counted: Vec<_> = rows.iter().filter(|r| new.contains(&r.1)).collect();
            if counted.is_empty() {
                return Ok(Ok(()));
            }
            let pairs: std::collections::BTreeSet<(&str, &str)> =
                counted.iter().map(|r| (r.1.0.as_str(), r.1.2.as_str())).collect();
            let mut states = self.lock_devices(tx, &pairs)?;
            let mut buckets: BTreeMap<BucketKey, DriftBucket> = BTreeMap::new();
            for (i, (model, _, device, version), _, m) in counted {
                let at = reports[*i].1.at_ms;
                let state = states.entry((model.clone(), device.clone())).or_default();
                let one = count_verdict(state, at, m, &per_report[*i][model.as_str()]);
                for width in [Width::Minute, Width::Hour] {
                    let key =
                        (model.clone(), to_sql(width.ms()), to_sql(at - at % width.ms()), version.clone());
                    buckets.entry(key).or_default().add(&one);
                }
            }
            let (m, d): (Vec<&str>, Vec<&str>) = states.keys().map(|(m, d)| (m.as_str(), d.as_str())).unzip();
            let records: Vec<Vec<u8>> = states.values().map(encode).collect();
            tx.execute(
                "UPDATE outpost_drift_devices r SET record = u.record
                 FROM unnest($1::text[], $2::text[], $3::bytea[]) AS u(model, device, record)
                 WHERE (r.model, r.device) = (u.model, u.device)",
                &[&m, &d, &records],
            )?;
            self.add_into_buckets(tx, &buckets)?;
            Ok(Ok(()))
        })?
    }

    /// What each `(model, device)` of `pairs` reported, its row created if missing and locked
    /// until the transaction ends.
    fn lock_devices(
        &self,
        tx: &mut Transaction<'_>,
        pairs: &std::collections::BTreeSet<(&str, &str)>,
    ) -> Result<BTreeMap<(String, String), DeviceDrift>, postgres::Error> {
        let (models, devices): (Vec<&str>, Vec<&str>) = pairs.iter().copied().unzip();
        let empty = encode(&DeviceDrift::default());
        tx.execute(
            "INSERT INTO outpost_drift_devices (model, device, record)
             SELECT u.model, u.device, $3 FROM unnest($1::text[], $2::text[]) AS u(model, device)
             ORDER BY 1, 2
             ON CONFLICT DO NOTHING",
            &[&models, &devices, &empty],
        )?;
        let rows = tx.query(
            "SELECT r.model, r.device, r.record
             FROM outpost_drift_devices r JOIN unnest($1::text[], $2::text[]) AS u(model, device)
               USING (model, device)
             ORDER BY 1, 2
             FOR UPDATE OF r",
            &[&models, &devices],
        )?;
        let mut out = BTreeMap::new();
        for row in &rows {
            let key: (String, String) = (row.try_get(0)?, row.try_get(1)?);
            let state = decode(row.try_get(2)?, || format!("drift device {key:?}"));
            out.insert(key, state);
        }
        Ok(out)
    }

    /// Merges `buckets` into this shard's rows within `tx` (created empty if missing, locked in
    /// key order).
    fn add_into_buckets(
        &self,
        tx: &mut Transaction<'_>,
        buckets: &BTreeMap<BucketKey, DriftBucket>,
    ) -> Result<(), postgres::Error> {
        let models: Vec<&str> = buckets.keys().map(|k| k.0.as_str()).collect();
        let widths: Vec<i64> = buckets.keys().map(|k| k.1).collect();
        let starts: Vec<i64> = buckets.keys().map(|k| k.2).collect();
        let versions: Vec<&str> = buckets.keys().map(|k| k.3.as_str()).collect();
        let shard = self.store.shard();
        let keys = "unnest($1::text[], $2::bigint[], $3::bigint[], $4::text[]) AS k(model, width_ms, start_ms, version)";
        tx.execute(
            &format!(
                "INSERT INTO outpost_drift_rollups (model, width_ms, start_ms, version, shard, bucket)
                 SELECT k.*, $5, $6 FROM {keys}
                 ORDER BY 1, 2, 3, 4
                 ON CONFLICT DO NOTHING"
            ),
            &[&models, &widths, &starts, &versions, &shard, &encode(&DriftBucket::default())],
        )?;
        let locked = tx.query(
            &format!(
                "SELECT r.model, r.width_ms, r.start_ms, r.version, r.bucket
                 FROM outpost_drift_rollups r JOIN {keys} USING (model, width_ms, start_ms, version)
                 WHERE r.shard = $5
                 ORDER BY 1, 2, 3, 4
                 FOR UPDATE OF r"
            ),
            &[&models, &widths, &starts, &versions, &shard],
        )?;
        let mut stored: BTreeMap<BucketKey, DriftBucket> = BTreeMap::new();
        for row in &locked {
            let key: BucketKey = (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?, row.try_get(3)?);
            let bucket = decode(row.try_get(4)?, || format!("drift roll-up {key:?}"));
            stored.insert(key, bucket);
        }
        let merged: Vec<Vec<u8>> = buckets
            .iter()
            .map(|(key, add)| {
                let mut total = stored.remove(key).unwrap_or_default();
                total.add(add);
                encode(&total)
            })
            .collect();
        tx.execute(
            "UPDATE outpost_drift_rollups r SET bucket = u.bucket
             FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::text[], $6::bytea[])
               AS u(model, width_ms, start_ms, version, bucket)
             WHERE (r.model, r.width_ms, r.start_ms, r.version, r.shard)
                 = (u.model, u.width_ms, u.start_ms, u.version, $5)",
            &[&models, &widths, &starts, &versions, &shard, &merged],
        )?;
        Ok(())
    }

    pub(super) fn extent(
        &self,
        model: &str,
        since_ms: u64,
        version: Option<&str>,
    ) -> Result<Option<(u64, u64)>, StoreError> {
        let (since, width) = (to_sql(since_ms), to_sql(MINUTE_MS));
        let found: (Option<i64>, Option<i64>) = self.store.with(|c| {
            let row = c.query_one(
                "SELECT min(start_ms), max(start_ms) FROM outpost_drift_rollups
                 WHERE model = $1 AND width_ms = $2 AND start_ms >= $3 AND ($4::text IS NULL OR version = $4)",
                &[&model, &width, &since, &version],
            )?;
            Ok((row.try_get(0)?, row.try_get(1)?))
        })?;
        let ms = |v: i64| u64::try_from(v).unwrap_or(0);
        Ok(match found {
            (Some(first), Some(last)) => Some((ms(first), ms(last).max(ms(first)))),
            _ => None,
        })
    }

    pub(super) fn devices_since(
        &self,
        model: &str,
        since_ms: u64,
        version: Option<&str>,
    ) -> Result<usize, StoreError> {
        let rows: Vec<Vec<u8>> = self.store.with(|c| {
            c.query("SELECT record FROM outpost_drift_devices WHERE model = $1", &[&model])?
                .iter()
                .map(|row| row.try_get(0))
                .collect()
        })?;
        Ok(rows
            .iter()
            .filter_map(|bytes| postcard::from_bytes::<DeviceDrift>(bytes).ok())
            .filter(|seen| {
                let newest = match version {
                    Some(version) => seen.newest.get(version).copied(),
                    None => seen.newest.values().copied().max(),
                };
                newest.is_some_and(|at| at >= since_ms)
            })
            .count())
    }

    /// Calls `each(bucket_start, version, bucket)` for `model`'s buckets of `width` starting in
    /// `[from_ms, until_ms)`, each bucket's shards merged, in start then version order.
    pub(super) fn buckets(
        &self,
        width: Width,
        model: &str,
        from_ms: u64,
        until_ms: u64,
        mut each: impl FnMut(u64, &str, DriftBucket),
    ) -> Result<(), StoreError> {
        let (width, from, until) = (to_sql(width.ms()), to_sql(from_ms), to_sql(until_ms));
        let rows: Vec<(i64, String, Vec<u8>)> = self.store.with(|c| {
            c.query(
                "SELECT start_ms, version, bucket FROM outpost_drift_rollups
                 WHERE model = $1 AND width_ms = $2 AND start_ms >= $3 AND start_ms < $4
                 ORDER BY start_ms, version, shard",
                &[&model, &width, &from, &until],
            )?
            .iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)))
            .collect()
        })?;
        let mut merged: BTreeMap<(i64, &str), DriftBucket> = BTreeMap::new();
        for (at, version, bytes) in &rows {
            let bucket: DriftBucket = decode(bytes, || format!("drift roll-up {model} {at} {version}"));
            merged.entry((*at, version.as_str())).or_default().add(&bucket);
        }
        for ((at, version), bucket) in merged {
            each(u64::try_from(at).unwrap_or(0), version, bucket);
        }
        Ok(())
    }

    pub(super) fn scan(
        &self,
        model: &str,
        since_ms: u64,
    ) -> Result<Vec<(u64, String, ModelDrift)>, StoreError> {
        let since = to_sql(since_ms);
        let rows: Vec<(i64, String, String)> = self.store.with(|c| {
            c.query(
                "SELECT at_ms, device, verdicts::text FROM outpost_drift_verdicts
                 WHERE model = $1 AND at_ms >= $2
                 ORDER BY at_ms, device, version",
                &[&model, &since],
            )?
            .iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)))
            .collect()
        })?;
        Ok(rows
            .into_iter()
            .filter_map(|(at, device, text)| {
                Some((u64::try_from(at).ok()?, device, serde_json::from_str::<ModelDrift>(&text).ok()?))
            })
            .collect())
    }
}
