//! Objectives and traffic history in PostgreSQL: the tables of migration `0005_traffic.sql`.
//! [`Slos`](super::Slos) dispatches here when the store is PostgreSQL.
//!
//! A batch of report windows is one transaction: the windows are inserted `ON CONFLICT DO
//! NOTHING`, and only those that were new are added into their buckets. The buckets are this
//! replica's shard's rows ([`PgStore::shard`]): created empty
//! if missing, then locked in key order, their latency histograms merged here and their counts
//! summed by the `UPDATE`. Replicas on other shards never wait for each other; two writers on one
//! shard take turns on its rows, so no sum is lost. Reads sum every shard.
//!
//! Raw windows are read in pages of [`PAGE`] in key order (a range over months is never held at
//! once); bucket reads are one query joining the spans ([`rollup::spans`]) to the primary key.

use std::collections::{BTreeMap, HashSet};

use outpost_shared::histogram::LogHistogram;
use outpost_shared::protocol::messages::ShadowReport;
use postgres::Row;

use super::rollup::{self, Width};
use super::{NewWindow, ShadowCounts, SloSpec, TrafficWindow};
use crate::base::pg::store::{PgStore, to_sql};
use crate::base::store::StoreError;

/// Raw windows read per query.
const PAGE: i64 = 10_000;

#[derive(Debug, Clone)]
pub(super) struct PgSlos {
    pub(super) store: PgStore,
}

/// A histogram as stored (postcard: a struct of numbers and a map, which cannot fail to encode).
pub(crate) fn histogram_bytes(h: &LogHistogram) -> Vec<u8> {
    postcard::to_stdvec(h).unwrap_or_default()
}

/// A stored histogram; one that does not decode (not written by this code) is left out of the
/// latency, with an error naming where it was.
pub(crate) fn histogram(bytes: &[u8], what: impl FnOnce() -> String) -> LogHistogram {
    postcard::from_bytes(bytes).unwrap_or_else(|e| {
        tracing::error!(record = what(), error = %e, "a stored latency histogram is unreadable: left out");
        LogHistogram::default()
    })
}

/// A `bigint` column read back as the count or time it holds (never negative when written here).
pub(crate) fn count(row: &Row, column: usize) -> Result<u64, postgres::Error> {
    Ok(u64::try_from(row.try_get::<_, i64>(column)?).unwrap_or(0))
}

/// `columns` of every shard's row of `model`'s buckets in roll-up `table` (aliased `r`) starting
/// in each `(width, from, until)` of `spans`, per version or (`by_label`) per device label
/// value: one query joining the spans to the primary key — what every roll-up read runs.
pub(crate) fn spanned_rows(
    store: &PgStore,
    table: &str,
    columns: &str,
    model: &str,
    by_label: bool,
    spans: &[(Width, u64, u64)],
) -> Result<Vec<Row>, StoreError> {
    let [widths, froms, untils] = rollup::span_columns(spans);
    let sql = format!(
        "SELECT {columns}
         FROM unnest($3::bigint[], $4::bigint[], $5::bigint[]) AS s(width_ms, from_ms, until_ms)
         JOIN {table} r
           ON r.model = $1 AND r.by_label = $2 AND r.width_ms = s.width_ms
          AND r.start_ms >= s.from_ms AND r.start_ms < s.until_ms"
    );
    store.with(|c| c.query(&sql, &[&model, &by_label, &widths, &froms, &untils]))
}

/// A bucket's key: (model, by label, width, start, label, value).
type BucketKey = (String, bool, i64, i64, String, String);

/// Which of the two raw tables a page is read from.
#[derive(Clone, Copy)]
enum Raw {
    Traffic,
    Shadow,
}

impl PgSlos {
    pub(super) fn open(store: &PgStore) -> PgSlos {
        PgSlos { store: store.clone() }
    }

    pub(super) fn put_windows(&self, windows: &[NewWindow<'_>], _devices: &str) -> Result<(), StoreError> {
        // The first of each key in the batch (the one that counts, as on sled).
        let mut seen = HashSet::new();
        let firsts: Vec<&NewWindow<'_>> =
            windows.iter().filter(|w| seen.insert((w.model, w.end_ms, w.device, w.version))).collect();
        let models: Vec<&str> = firsts.iter().map(|w| w.model).collect();
        let ends: Vec<i64> = firsts.iter().map(|w| to_sql(w.end_ms)).collect();
        let devices: Vec<&str> = firsts.iter().map(|w| w.device).collect();
        let versions: Vec<&str> = firsts.iter().map(|w| w.version).collect();
        let requests: Vec<i64> = firsts.iter().map(|w| to_sql(w.window.requests)).collect();
        let errors: Vec<i64> = firsts.iter().map(|w| to_sql(w.window.errors)).collect();
        let latency: Vec<Vec<u8>> = firsts.iter().map(|w| histogram_bytes(&w.window.latency_us)).collect();
        let empty = histogram_bytes(&LogHistogram::default());
        self.store.transaction(|tx| {
            let stored = tx.query(
                "INSERT INTO outpost_traffic (model, end_ms, device, version, requests, errors, latency)
                 SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::bigint[],
                                      $6::bigint[], $7::bytea[])
                 ON CONFLICT DO NOTHING
                 RETURNING model, end_ms, device, version",
                &[&models, &ends, &devices, &versions, &requests, &errors, &latency],
            )?;
            let mut new = HashSet::new();
            for row in stored {
                new.insert((
                    row.try_get::<_, String>(0)?,
                    row.try_get::<_, i64>(1)?,
                    row.try_get::<_, String>(2)?,
                    row.try_get::<_, String>(3)?,
                ));
            }
            let mut sums: BTreeMap<BucketKey, TrafficWindow> = BTreeMap::new();
            for w in &firsts {
                let key = (w.model.to_owned(), to_sql(w.end_ms), w.device.to_owned(), w.version.to_owned());
                if !new.contains(&key) {
                    continue;
                }
                let (minute, hour) = w.bucket_starts();
                let parts = std::iter::once((false, "", w.version))
                    .chain(w.labels.iter().map(|(k, v)| (true, k.as_str(), v.as_str())));
                for (by_label, label, value) in parts {
                    for (width, start) in [(Width::Minute, minute), (Width::Hour, hour)] {
                        let key = (
                            w.model.to_owned(),
                            by_label,
                            to_sql(width.ms()),
                            to_sql(start),
                            label.to_owned(),
                            value.to_owned(),
                        );
                        rollup::add(sums.entry(key).or_default(), &w.window);
                    }
                }
            }
            if sums.is_empty() {
                return Ok(Ok(()));
            }
            self.add_into_buckets(tx, &sums, &empty).map(Ok)
        })?
    }

    /// Adds `sums` into this shard's buckets within `tx` (see the module header).
    fn add_into_buckets(
        &self,
        tx: &mut postgres::Transaction<'_>,
        sums: &BTreeMap<BucketKey, TrafficWindow>,
        empty: &[u8],
    ) -> Result<(), postgres::Error> {
        let models: Vec<&str> = sums.keys().map(|k| k.0.as_str()).collect();
        let by_label: Vec<bool> = sums.keys().map(|k| k.1).collect();
        let widths: Vec<i64> = sums.keys().map(|k| k.2).collect();
        let starts: Vec<i64> = sums.keys().map(|k| k.3).collect();
        let labels: Vec<&str> = sums.keys().map(|k| k.4.as_str()).collect();
        let values: Vec<&str> = sums.keys().map(|k| k.5.as_str()).collect();
        let keys = "unnest($1::text[], $2::bool[], $3::bigint[], $4::bigint[], $5::text[], $6::text[])
                    AS k(model, by_label, width_ms, start_ms, label, value)";
        tx.execute(
            &format!(
                "INSERT INTO outpost_traffic_rollups
                     (model, by_label, width_ms, start_ms, label, value, shard, requests, errors, latency)
                 SELECT k.*, $7, 0, 0, $8 FROM {keys}
                 ORDER BY 1, 2, 3, 4, 5, 6
                 ON CONFLICT DO NOTHING"
            ),
            &[&models, &by_label, &widths, &starts, &labels, &values, &self.store.shard(), &empty],
        )?;
        let locked = tx.query(
            &format!(
                "SELECT r.model, r.by_label, r.width_ms, r.start_ms, r.label, r.value, r.latency
                 FROM outpost_traffic_rollups r JOIN {keys}
                   USING (model, by_label, width_ms, start_ms, label, value)
                 WHERE r.shard = $7
                 ORDER BY 1, 2, 3, 4, 5, 6
                 FOR UPDATE OF r"
            ),
            &[&models, &by_label, &widths, &starts, &labels, &values, &self.store.shard()],
        )?;
        let mut stored: BTreeMap<BucketKey, LogHistogram> = BTreeMap::new();
        for row in &locked {
            let key: BucketKey = (
                row.try_get(0)?,
                row.try_get(1)?,
                row.try_get(2)?,
                row.try_get(3)?,
                row.try_get(4)?,
                row.try_get(5)?,
            );
            let latency = histogram(row.try_get(6)?, || format!("traffic roll-up {key:?}"));
            stored.insert(key, latency);
        }
        // Every key has a row now (inserted above if it had none), locked until the commit.
        let merged: Vec<Vec<u8>> = sums
            .iter()
            .map(|(key, sum)| {
                let mut latency = stored.remove(key).unwrap_or_default();
                let _ = latency.merge(&sum.latency_us);
                histogram_bytes(&latency)
            })
            .collect();
        let requests: Vec<i64> = sums.values().map(|s| to_sql(s.requests)).collect();
        let errors: Vec<i64> = sums.values().map(|s| to_sql(s.errors)).collect();
        tx.execute(
            "UPDATE outpost_traffic_rollups r
             SET requests = r.requests + u.requests, errors = r.errors + u.errors, latency = u.latency
             FROM unnest($1::text[], $2::bool[], $3::bigint[], $4::bigint[], $5::text[], $6::text[],
                         $8::bigint[], $9::bigint[], $10::bytea[])
               AS u(model, by_label, width_ms, start_ms, label, value, requests, errors, latency)
             WHERE (r.model, r.by_label, r.width_ms, r.start_ms, r.label, r.value, r.shard)
                 = (u.model, u.by_label, u.width_ms, u.start_ms, u.label, u.value, $7)",
            &[
                &models,
                &by_label,
                &widths,
                &starts,
                &labels,
                &values,
                &self.store.shard(),
                &requests,
                &errors,
                &merged,
            ],
        )?;
        Ok(())
    }

    pub(super) fn put_shadow(&self, device: &str, report: &ShadowReport) -> Result<(), StoreError> {
        if report.models.is_empty() {
            return Ok(());
        }
        let models: Vec<&str> = report.models.iter().map(|w| w.model.as_str()).collect();
        let versions: Vec<&str> = report.models.iter().map(|w| w.version.as_str()).collect();
        let primaries: Vec<&str> = report.models.iter().map(|w| w.primary.as_str()).collect();
        let compared: Vec<i64> = report.models.iter().map(|w| to_sql(w.compared)).collect();
        let agreed: Vec<i64> = report.models.iter().map(|w| to_sql(w.agreed)).collect();
        let end = to_sql(report.window_end_ms);
        self.store.with(|c| {
            c.execute(
                "INSERT INTO outpost_shadow (model, end_ms, device, version, primary_version, compared, agreed)
                 SELECT u.model, $2, $3, u.version, u.primary_version, u.compared, u.agreed
                 FROM unnest($1::text[], $4::text[], $5::text[], $6::bigint[], $7::bigint[])
                   AS u(model, version, primary_version, compared, agreed)
                 ON CONFLICT DO NOTHING",
                &[&models, &end, &device, &versions, &primaries, &compared, &agreed],
            )
        })?;
        Ok(())
    }

    /// Calls `each(end_ms, device, version, row)` for `model`'s rows of `raw` ending in
    /// `[from_ms, to_ms]`, in key order, a page at a time.
    fn each_raw(
        &self,
        raw: Raw,
        model: &str,
        from_ms: u64,
        to_ms: u64,
        mut each: impl FnMut(u64, &str, &str, &Row) -> Result<(), postgres::Error>,
    ) -> Result<(), StoreError> {
        let (table, columns) = match raw {
            Raw::Traffic => ("outpost_traffic", "requests, errors, latency"),
            Raw::Shadow => ("outpost_shadow", "primary_version, compared, agreed"),
        };
        let sql = format!(
            "SELECT end_ms, device, version, {columns} FROM {table}
             WHERE model = $1 AND (end_ms, device, version) > ($2, $3, $4) AND end_ms <= $5
             ORDER BY end_ms, device, version
             LIMIT $6"
        );
        // Device ids are never empty: (from, "", "") is before every row ending at `from`.
        let mut after: (i64, String, String) = (to_sql(from_ms), String::new(), String::new());
        let to = to_sql(to_ms);
        loop {
            let rows =
                self.store.with(|c| c.query(&sql, &[&model, &after.0, &after.1, &after.2, &to, &PAGE]))?;
            let full = rows.len() as i64 == PAGE;
            for row in &rows {
                let at: i64 = row.try_get(0).map_err(|e| self.store.error(e))?;
                let device: &str = row.try_get(1).map_err(|e| self.store.error(e))?;
                let version: &str = row.try_get(2).map_err(|e| self.store.error(e))?;
                each(u64::try_from(at).unwrap_or(0), device, version, row)
                    .map_err(|e| self.store.error(e))?;
            }
            match rows.last() {
                Some(last) if full => {
                    after = (
                        last.try_get(0).map_err(|e| self.store.error(e))?,
                        last.try_get(1).map_err(|e| self.store.error(e))?,
                        last.try_get(2).map_err(|e| self.store.error(e))?,
                    );
                }
                _ => return Ok(()),
            }
        }
    }

    pub(super) fn each_window(
        &self,
        model: &str,
        from_ms: u64,
        to_ms: u64,
        mut each: impl FnMut(u64, &str, &str, TrafficWindow),
    ) -> Result<(), StoreError> {
        self.each_raw(Raw::Traffic, model, from_ms, to_ms, |at, device, version, row| {
            let latency_us =
                histogram(row.try_get(5)?, || format!("traffic {model} {at} {device} {version}"));
            each(
                at,
                device,
                version,
                TrafficWindow { requests: count(row, 3)?, errors: count(row, 4)?, latency_us },
            );
            Ok(())
        })
    }

    pub(super) fn each_shadow(
        &self,
        model: &str,
        from_ms: u64,
        to_ms: u64,
        mut each: impl FnMut(u64, &str, &str, ShadowCounts),
    ) -> Result<(), StoreError> {
        self.each_raw(Raw::Shadow, model, from_ms, to_ms, |at, device, version, row| {
            let counts =
                ShadowCounts { primary: row.try_get(3)?, compared: count(row, 4)?, agreed: count(row, 5)? };
            each(at, device, version, counts);
            Ok(())
        })
    }

    pub(super) fn set(&self, model: &str, spec: &SloSpec) -> Result<(), StoreError> {
        let text = serde_json::to_string(spec).map_err(|e| StoreError::Corrupt {
            key: format!("slos/{model}"),
            detail: format!("cannot encode: {e}"),
        })?;
        self.store.with(|c| {
            c.execute(
                "INSERT INTO outpost_slo_specs (model, spec) VALUES ($1, $2::text::json)
                 ON CONFLICT (model) DO UPDATE SET spec = excluded.spec",
                &[&model, &text],
            )
        })?;
        Ok(())
    }

    pub(super) fn get(&self, model: &str) -> Result<Option<SloSpec>, StoreError> {
        let text =
            self.store.text_by_key("SELECT spec::text FROM outpost_slo_specs WHERE model = $1", model)?;
        Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
    }

    pub(super) fn all(&self) -> Result<Vec<(String, SloSpec)>, StoreError> {
        let rows =
            self.store.keyed_texts("SELECT model, spec::text FROM outpost_slo_specs ORDER BY model", &[])?;
        Ok(rows
            .into_iter()
            .filter_map(|(model, text)| Some((model, serde_json::from_str(&text).ok()?)))
            .collect())
    }

    /// Calls `each(bucket_start, label, value, bucket)` for every shard's row of `model`'s buckets
    /// starting in each `(width, from, until)` of `spans` (see [`super::sled_backend`]): one query.
    pub(super) fn each_bucket(
        &self,
        by_label: bool,
        model: &str,
        spans: &[(Width, u64, u64)],
        mut each: impl FnMut(u64, &str, &str, TrafficWindow),
    ) -> Result<(), StoreError> {
        let columns = "r.start_ms, r.label, r.value, r.requests, r.errors, r.latency";
        let rows = spanned_rows(&self.store, "outpost_traffic_rollups", columns, model, by_label, spans)?;
        for row in &rows {
            let read = || -> Result<_, postgres::Error> {
                let at: i64 = row.try_get(0)?;
                let (label, value): (&str, &str) = (row.try_get(1)?, row.try_get(2)?);
                let latency_us =
                    histogram(row.try_get(5)?, || format!("traffic roll-up {model} {at} {value}"));
                let bucket = TrafficWindow { requests: count(row, 3)?, errors: count(row, 4)?, latency_us };
                Ok((u64::try_from(at).unwrap_or(0), label, value, bucket))
            };
            let (at, label, value, bucket) = read().map_err(|e| self.store.error(e))?;
            each(at, label, value, bucket);
        }
        Ok(())
    }
}
