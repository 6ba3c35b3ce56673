//! Following a model's records on PostgreSQL, whichever replica stores them (migration 13): by
//! the id of the transaction that stored each row.
//!
//! A look reads the rows whose transaction id is at or above the last look's horizon and below
//! the current one, `pg_snapshot_xmin(pg_current_snapshot())`: every transaction below it has
//! ended, so no row with such an id can appear later, and a transaction still running keeps the
//! horizon below its own id until it ends — its rows are read at a later look. Each row is read
//! by exactly one look. A long transaction anywhere in the database holds the horizon back: the
//! follower lags (never loses) until it ends.

use postgres::Row;

use super::Record;
use crate::base::pg::store::{PgStore, seq_from_sql, to_sql};
use crate::base::store::StoreError;
use crate::monitoring::quality::StoredLabel;
use crate::monitoring::slo::TrafficWindow;
use crate::monitoring::slo::pg::{count, histogram};

/// Rows read per query.
const PAGE: i64 = 10_000;

/// The current horizon: every transaction with a lower id has ended.
pub(super) fn horizon(store: &PgStore) -> Result<u64, StoreError> {
    let text: String = store
        .with(|c| c.query_one("SELECT pg_snapshot_xmin(pg_current_snapshot())::text", &[])?.try_get(0))?;
    text.parse()
        .map_err(|e| StoreError::Corrupt { key: "pg_snapshot_xmin".into(), detail: format!("{text}: {e}") })
}

/// Hands `each` `model`'s report and shadow windows ending at or after `from_ms` and its label
/// changes, stored by transactions with ids in `[since, until)`.
pub(super) fn read(
    store: &PgStore,
    model: &str,
    from_ms: u64,
    since: u64,
    until: u64,
    each: &mut dyn FnMut(Record),
) -> Result<(), StoreError> {
    if until <= since {
        return Ok(());
    }
    let (since, until) = (since.to_string(), until.to_string());
    let from = to_sql(from_ms);
    for table in ["outpost_traffic", "outpost_shadow"] {
        let columns =
            if table == "outpost_traffic" { "requests, errors, latency" } else { "compared, agreed, 0" };
        let sql = format!(
            "SELECT xid::text, end_ms, device, version, {columns} FROM {table}
             WHERE model = $1 AND xid >= $2::text::xid8 AND xid < $3::text::xid8 AND end_ms >= $4
               AND (xid, end_ms, device, version) > ($5::text::xid8, $6, $7, $8)
             ORDER BY xid, end_ms, device, version LIMIT $9"
        );
        let mut after = (since.clone(), i64::MIN, String::new(), String::new());
        loop {
            let rows = store.with(|c| {
                c.query(&sql, &[&model, &since, &until, &from, &after.0, &after.1, &after.2, &after.3, &PAGE])
            })?;
            for row in &rows {
                let record = window(table, model, row).map_err(|e| store.error(e))?;
                each(record);
            }
            match rows.last() {
                Some(last) if rows.len() as i64 == PAGE => {
                    after = (
                        last.try_get(0).map_err(|e| store.error(e))?,
                        last.try_get(1).map_err(|e| store.error(e))?,
                        last.try_get(2).map_err(|e| store.error(e))?,
                        last.try_get(3).map_err(|e| store.error(e))?,
                    );
                }
                _ => break,
            }
        }
    }
    let sql =
        "SELECT xid::text, device, prediction_id, label::text, replaced::text FROM outpost_label_changes
               WHERE model = $1 AND xid >= $2::text::xid8 AND xid < $3::text::xid8
                 AND (xid, device, prediction_id) > ($4::text::xid8, $5, $6)
               ORDER BY xid, device, prediction_id LIMIT $7";
    let mut after = (since.clone(), String::new(), i64::MIN);
    loop {
        let rows =
            store.with(|c| c.query(sql, &[&model, &since, &until, &after.0, &after.1, &after.2, &PAGE]))?;
        for row in &rows {
            if let Some(record) = label(row).map_err(|e| store.error(e))? {
                each(record);
            }
        }
        match rows.last() {
            Some(last) if rows.len() as i64 == PAGE => {
                after = (
                    last.try_get(0).map_err(|e| store.error(e))?,
                    last.try_get(1).map_err(|e| store.error(e))?,
                    last.try_get(2).map_err(|e| store.error(e))?,
                );
            }
            _ => break,
        }
    }
    Ok(())
}

fn window(table: &str, model: &str, row: &Row) -> Result<Record, postgres::Error> {
    let end_ms = u64::try_from(row.try_get::<_, i64>(1)?).unwrap_or(0);
    let (device, version): (String, String) = (row.try_get(2)?, row.try_get(3)?);
    Ok(if table == "outpost_traffic" {
        let latency_us =
            histogram(row.try_get(6)?, || format!("traffic {model} {end_ms} {device} {version}"));
        let window = TrafficWindow { requests: count(row, 4)?, errors: count(row, 5)?, latency_us };
        Record::Traffic { device, version, end_ms, window }
    } else {
        Record::Shadow { device, version, end_ms, compared: count(row, 4)?, agreed: count(row, 5)? }
    })
}

/// A label change as a record (one whose label does not decode is skipped, as on sled).
fn label(row: &Row) -> Result<Option<Record>, postgres::Error> {
    let (device, id): (String, i64) = (row.try_get(1)?, row.try_get(2)?);
    let text: String = row.try_get(3)?;
    let replaced: Option<String> = row.try_get(4)?;
    let Ok(label) = serde_json::from_str::<StoredLabel>(&text) else { return Ok(None) };
    let replaced = replaced.and_then(|r| serde_json::from_str(&r).ok());
    Ok(Some(Record::Label { device, prediction_id: seq_from_sql(id), label, replaced }))
}
