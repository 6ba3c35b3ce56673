//! Desired states on PostgreSQL: table `outpost_desired` (migration 10), one row per device.

use std::collections::BTreeMap;

use super::{Change, DesiredRecord};
use crate::base::pg::store::PgStore;
use crate::base::store::StoreError;

fn decode(device: &str, text: &str) -> Result<DesiredRecord, StoreError> {
    serde_json::from_str(text)
        .map_err(|e| StoreError::Corrupt { key: format!("desired/{device}"), detail: e.to_string() })
}

pub(super) fn get(store: &PgStore, device: &str) -> Result<Option<DesiredRecord>, StoreError> {
    let text = store.text_by_key("SELECT record::text FROM outpost_desired WHERE device = $1", device)?;
    // A record that does not decode is none, as on sled.
    Ok(text.and_then(|t| decode(device, &t).ok()))
}

pub(super) fn all(store: &PgStore) -> Result<Vec<(String, DesiredRecord)>, StoreError> {
    let rows = store.keyed_texts("SELECT device, record::text FROM outpost_desired ORDER BY device", &[])?;
    Ok(rows
        .into_iter()
        .filter_map(|(device, text)| Some((device.clone(), decode(&device, &text).ok()?)))
        .collect())
}

/// Makes sure each device has a row, locks them all in id order, runs `change` on each record
/// and writes back those it changed: one transaction, so a concurrent change of the same
/// devices (another replica's deploy) waits and then sees this one's revisions. With `fence`
/// (an engine's change) the lease's term is checked first in the same transaction.
pub(super) fn modify(
    store: &PgStore,
    fence: Option<&crate::base::pg::store::Fence>,
    devices: &[String],
    change: Change<'_>,
) -> Result<Vec<(String, DesiredRecord)>, StoreError> {
    let mut ids: Vec<&str> = devices.iter().map(String::as_str).collect();
    ids.sort_unstable();
    ids.dedup();
    let empty = serde_json::to_string(&DesiredRecord::default())
        .map_err(|e| StoreError::Corrupt { key: "desired".into(), detail: e.to_string() })?;
    let changed = store.fenced(fence, |tx| {
        // Rows that may not exist yet cannot be locked: make them first (a default record is
        // what a missing one reads as), in id order like the locks.
        let created: Vec<String> = tx
            .query(
                "INSERT INTO outpost_desired (device, record)
                 SELECT id, $2::text::json FROM unnest($1::text[]) AS id ORDER BY id
                 ON CONFLICT (device) DO NOTHING RETURNING device",
                &[&ids, &empty],
            )?
            .iter()
            .map(|row| row.try_get(0))
            .collect::<Result<_, _>>()?;
        let rows = tx.query(
            "SELECT device, record::text FROM outpost_desired WHERE device = ANY($1) ORDER BY device FOR UPDATE",
            &[&ids],
        )?;
        let mut records = BTreeMap::new();
        for row in rows {
            let (device, text): (String, String) = (row.try_get(0)?, row.try_get(1)?);
            // One that does not decode starts again from the default, as on sled.
            records.insert(device.clone(), decode(&device, &text).unwrap_or_default());
        }
        let mut changed = BTreeMap::new();
        let (mut keys, mut texts) = (Vec::new(), Vec::new());
        for (device, mut record) in records {
            if !change(&mut record) {
                continue;
            }
            match serde_json::to_string(&record) {
                Ok(text) => texts.push(text),
                Err(e) => {
                    return Ok(Err(StoreError::Corrupt {
                        key: format!("desired/{device}"),
                        detail: format!("cannot encode: {e}"),
                    }));
                }
            }
            keys.push(device.clone());
            changed.insert(device, record);
        }
        tx.execute(
            "UPDATE outpost_desired AS d SET record = u.record::json
             FROM unnest($1::text[], $2::text[]) AS u(device, record) WHERE d.device = u.device",
            &[&keys, &texts],
        )?;
        // A row made only to be locked, then left as it was, goes: there was no record.
        let unused: Vec<&String> = created.iter().filter(|d| !changed.contains_key(*d)).collect();
        if !unused.is_empty() {
            tx.execute("DELETE FROM outpost_desired WHERE device = ANY($1)", &[&unused])?;
        }
        Ok(Ok(changed))
    })??;
    // In the order the caller named them.
    let mut out = Vec::with_capacity(changed.len());
    let mut changed = changed;
    for device in devices {
        if let Some(record) = changed.remove(device) {
            out.push((device.clone(), record));
        }
    }
    Ok(out)
}
