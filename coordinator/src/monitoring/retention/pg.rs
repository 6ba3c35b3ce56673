//! Retention on PostgreSQL: the same monitoring history as on sled ([`super::prune`]), removed
//! from the tables of migrations 5 to 7 and 13 with `DELETE`s of at most [`CHUNK`] rows each, so a
//! first pass over months of history never holds one long transaction.

use super::Pruned;
use crate::base::pg::store::{PgStore, to_sql};
use crate::base::store::StoreError;

/// Rows removed per statement.
const CHUNK: i64 = 10_000;

/// Deletes the rows of `table` that `older` (a condition on `$1`, the cutoff) picks, a chunk at
/// a time; answers how many went.
fn prune_table(store: &PgStore, table: &str, older: &str, cutoff: i64) -> Result<u64, StoreError> {
    let sql = format!("DELETE FROM {table} WHERE ctid IN (SELECT ctid FROM {table} WHERE {older} LIMIT $2)");
    let mut removed = 0;
    loop {
        let n = store.with(|c| c.execute(&sql, &[&cutoff, &CHUNK]))?;
        removed += n;
        if (n as i64) < CHUNK {
            return Ok(removed);
        }
    }
}

/// Removes monitoring history older than `cutoff_ms`, as [`super::prune`] does on sled: windows
/// by their end, roll-up rows once their whole bucket is older, drift verdicts by when they were
/// computed (and what a device reported once none of its verdicts is left), predictions and
/// labels by when the prediction was made.
pub fn prune(store: &PgStore, cutoff_ms: u64) -> Result<Pruned, StoreError> {
    let cutoff = to_sql(cutoff_ms);
    // (`start_ms + width_ms` is indexed: the bucket's end, exclusive.)
    let bucket_gone = "start_ms + width_ms <= $1";
    let mut rollups = 0;
    for table in ["outpost_traffic_rollups", "outpost_label_rollups", "outpost_drift_rollups"] {
        rollups += prune_table(store, table, bucket_gone, cutoff)?;
    }
    // What followers read of the labels (not counted: on sled the feed holds it in memory).
    prune_table(store, "outpost_label_changes", "predicted_at_ms < $1", cutoff)?;
    let verdicts = prune_table(store, "outpost_drift_verdicts", "at_ms < $1", cutoff)?;
    let devices = store.with(|c| {
        c.execute(
            "DELETE FROM outpost_drift_devices d WHERE NOT EXISTS
                 (SELECT 1 FROM outpost_drift_verdicts v WHERE v.model = d.model AND v.device = d.device)",
            &[],
        )
    })?;
    Ok(Pruned {
        traffic: prune_table(store, "outpost_traffic", "end_ms < $1", cutoff)?,
        rollups,
        drift_history: verdicts + devices,
        predictions: prune_table(store, "outpost_predictions", "at_ms < $1", cutoff)?,
        labels: prune_table(store, "outpost_labels", "predicted_at_ms < $1", cutoff)?,
        shadow: prune_table(store, "outpost_shadow", "end_ms < $1", cutoff)?,
    })
}
