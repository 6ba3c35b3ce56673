//! The fleet's records in PostgreSQL: the tables of migration `0002_devices.sql`, one per sled
//! tree of the parent module's layout. [`Devices`](super::Devices) dispatches here when the
//! store is PostgreSQL.
//!
//! Every change that reads a device's record and writes it back locks the row first (`SELECT …
//! FOR UPDATE`), so replicas changing one device take turns and the read-then-decide steps
//! (is this seq stored? is this token used?) see what the last writer committed. Rows are
//! decoded with `try_get`: a row that does not hold what the schema says is an error, never a
//! panic.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use postgres::Transaction;
use serde::de::DeserializeOwned;

use super::{
    Arrival, DeviceRecord, DeviceUpdate, Revocation, Stored, TokenRecord, TokenRefused, arrive, present,
    revocation_of, usable,
};
use crate::base::pg::store::{PgStore, seq_from_sql, seq_to_sql, to_sql};
use crate::base::store::{StoreError, now_ms};

/// Envelopes read per query when listing a device's, and removed per transaction by retention.
const PAGE: i64 = 2048;

#[derive(Clone)]
pub(super) struct PgDevices {
    pub(super) store: PgStore,
}

/// `text` (a record's JSON) decoded as `T`; a record that does not decode names its key.
fn decode<T: DeserializeOwned>(key: impl FnOnce() -> String, text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt { key: key(), detail: e.to_string() })
}

/// `value` as the JSON text a `jsonb` column is written from (`$n::text::json`).
fn json<T: serde::Serialize>(key: impl FnOnce() -> String, value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value)
        .map_err(|e| StoreError::Corrupt { key: key(), detail: format!("cannot encode: {e}") })
}

/// The record of device `id`, locked until `tx` ends; `None` when there is no such device.
fn lock_device(tx: &mut Transaction<'_>, id: &str) -> Result<Option<String>, postgres::Error> {
    tx.query_opt("SELECT record::text FROM outpost_devices WHERE id = $1 FOR UPDATE", &[&id])?
        .map(|row| row.try_get(0))
        .transpose()
}

fn write_device(tx: &mut Transaction<'_>, id: &str, record: &str) -> Result<u64, postgres::Error> {
    tx.execute("UPDATE outpost_devices SET record = $2::text::json WHERE id = $1", &[&id, &record])
}

impl PgDevices {
    pub(super) fn open(store: &PgStore) -> PgDevices {
        PgDevices { store: store.clone() }
    }

    pub(super) fn control_by_release_key(&self, id: &str) -> Result<bool, StoreError> {
        self.store.with(|c| {
            Ok(c.query_opt("SELECT 1 FROM outpost_legacy_control WHERE device = $1", &[&id])?.is_some())
        })
    }

    pub(super) fn clear_legacy_control(&self, id: &str) -> Result<bool, StoreError> {
        self.store
            .with(|c| Ok(c.execute("DELETE FROM outpost_legacy_control WHERE device = $1", &[&id])? > 0))
    }

    pub(super) fn add_token(&self, token_hash: &str, record: &TokenRecord) -> Result<(), StoreError> {
        let record = json(|| format!("tokens/{token_hash}"), record)?;
        self.store.with(|c| {
            c.execute(
                "INSERT INTO outpost_tokens (hash, record) VALUES ($1, $2::text::json)
                 ON CONFLICT (hash) DO UPDATE SET record = excluded.record",
                &[&token_hash, &record],
            )
            .map(drop)
        })
    }

    pub(super) fn enrol(
        &self,
        token_hash: &str,
        make_device: impl Fn(&TokenRecord) -> DeviceRecord + Send + Sync,
    ) -> Result<Result<DeviceRecord, TokenRefused>, StoreError> {
        let now = now_ms();
        let outcome = self.store.transaction(|tx| {
            let token = tx.query_opt(
                "SELECT record::text FROM outpost_tokens WHERE hash = $1 FOR UPDATE",
                &[&token_hash],
            )?;
            let Some(token) = token.map(|row| row.try_get::<_, String>(0)).transpose()? else {
                return Ok(Err(Refusal::Refused(TokenRefused::Unknown)));
            };
            let Ok(mut token) = serde_json::from_str::<TokenRecord>(&token) else {
                return Ok(Err(Refusal::Refused(TokenRefused::Unknown)));
            };
            if let Err(refused) = usable(&token, now) {
                return Ok(Err(Refusal::Refused(refused)));
            }
            let device = make_device(&token);
            let id = device.id.as_str();
            if tx.query_opt("SELECT 1 FROM outpost_revocations WHERE device = $1", &[&id])?.is_some() {
                return Ok(Err(Refusal::Refused(TokenRefused::Revoked(device.id.clone()))));
            }
            let existing = lock_device(tx, id)?;
            if let Some(existing) = &existing {
                let same_key = serde_json::from_str::<DeviceRecord>(existing)
                    .is_ok_and(|existing| existing.public_key == device.public_key);
                if !same_key {
                    return Ok(Err(Refusal::Refused(TokenRefused::DeviceExists(device.id.clone()))));
                }
            }
            let owner: Option<String> = tx
                .query_opt("SELECT id FROM outpost_devices WHERE key_id = $1", &[&device.key_id])?
                .map(|row| row.try_get(0))
                .transpose()?;
            if owner.is_some_and(|owner| owner != device.id) {
                return Ok(Err(Refusal::Refused(TokenRefused::KeyExists(device.key_id.clone()))));
            }
            token.used_by = Some(device.id.clone());
            token.used_at_ms = Some(now);
            let (token_json, device_json) = match (
                json(|| format!("tokens/{token_hash}"), &token),
                json(|| format!("devices/{id}"), &device),
            ) {
                (Ok(t), Ok(d)) => (t, d),
                (Err(e), _) | (_, Err(e)) => return Ok(Err(Refusal::Store(e))),
            };
            tx.execute(
                "UPDATE outpost_tokens SET record = $2::text::json WHERE hash = $1",
                &[&token_hash, &token_json],
            )?;
            if existing.is_some() {
                tx.execute(
                    "UPDATE outpost_devices SET key_id = $2, record = $3::text::json WHERE id = $1",
                    &[&id, &device.key_id, &device_json],
                )?;
            } else {
                // Two replicas enrolling one id at once: the second's insert fails as a unique
                // violation, and its retry finds the first's row.
                tx.execute(
                    "INSERT INTO outpost_devices (id, key_id, record) VALUES ($1, $2, $3::text::json)",
                    &[&id, &device.key_id, &device_json],
                )?;
            }
            // Enrolled now: it holds the online key for control messages.
            tx.execute("DELETE FROM outpost_legacy_control WHERE device = $1", &[&id])?;
            Ok(Ok(device))
        })?;
        match outcome {
            Ok(device) => Ok(Ok(device)),
            Err(Refusal::Refused(refused)) => Ok(Err(refused)),
            Err(Refusal::Store(e)) => Err(e),
        }
    }

    pub(super) fn get(&self, id: &str) -> Result<Option<DeviceRecord>, StoreError> {
        let text = self.store.text_by_key("SELECT record::text FROM outpost_devices WHERE id = $1", id)?;
        text.map(|t| decode(|| format!("devices/{id}"), &t)).transpose()
    }

    pub(super) fn get_by_key(&self, key_id: &str) -> Result<Option<DeviceRecord>, StoreError> {
        let found: Option<(String, String)> = self.store.with(|c| {
            c.query_opt("SELECT id, record::text FROM outpost_devices WHERE key_id = $1", &[&key_id])?
                .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
                .transpose()
        })?;
        found.map(|(id, t)| decode(|| format!("devices/{id}"), &t)).transpose()
    }

    pub(super) fn decode_each<T: DeserializeOwned>(&self) -> Result<Vec<T>, StoreError> {
        let rows = self.store.keyed_texts("SELECT id, record::text FROM outpost_devices ORDER BY id", &[])?;
        rows.iter().map(|(id, t)| decode(|| format!("devices/{id}"), t)).collect()
    }

    pub(super) fn revoke(&self, id: &str, by: &str) -> Result<Option<Revocation>, StoreError> {
        self.store.transaction(|tx| revoke_in(tx, id, by))?
    }

    pub(super) fn delete(&self, id: &str, by: &str) -> Result<Option<Revocation>, StoreError> {
        self.store.transaction(|tx| {
            if lock_device(tx, id)?.is_none() {
                return Ok(Ok(None));
            }
            let mut revocation = match revoke_in(tx, id, by)? {
                Ok(Some(revocation)) => revocation,
                other => return Ok(other),
            };
            tx.execute("DELETE FROM outpost_devices WHERE id = $1", &[&id])?;
            revocation.deleted_at_ms = Some(now_ms());
            let text = match json(|| format!("revoked/{id}"), &revocation) {
                Ok(text) => text,
                Err(e) => return Ok(Err(e)),
            };
            tx.execute(
                "UPDATE outpost_revocations SET record = $2::text::json WHERE device = $1",
                &[&id, &text],
            )?;
            Ok(Ok(Some(revocation)))
        })?
    }

    pub(super) fn revocation(&self, id: &str) -> Result<Option<Revocation>, StoreError> {
        let text =
            self.store.text_by_key("SELECT record::text FROM outpost_revocations WHERE device = $1", id)?;
        text.map(|t| decode(|| format!("revoked/{id}"), &t)).transpose()
    }

    pub(super) fn revocations(&self) -> Result<Vec<Revocation>, StoreError> {
        let rows = self.store.keyed_texts("SELECT device, record::text FROM outpost_revocations", &[])?;
        rows.iter().map(|(id, t)| decode(|| format!("revoked/{id}"), t)).collect()
    }

    pub(super) fn store_envelope_at(
        &self,
        device: &str,
        seq: u64,
        wire: &[u8],
        received_ms: u64,
        update: impl DeviceUpdate,
    ) -> Result<(Stored, Option<Vec<u8>>), StoreError> {
        let sql_seq = seq_to_sql(seq);
        self.store.transaction(|tx| {
            let Some(text) = lock_device(tx, device)? else {
                return Ok(Err(StoreError::Corrupt {
                    key: format!("devices/{device}"),
                    detail: "missing".into(),
                }));
            };
            let mut record: DeviceRecord = match decode(|| format!("devices/{device}"), &text) {
                Ok(record) => record,
                Err(e) => return Ok(Err(e)),
            };
            let existing: Option<Vec<u8>> = tx
                .query_opt(
                    "SELECT wire FROM outpost_envelopes WHERE device = $1 AND seq = $2",
                    &[&device, &sql_seq],
                )?
                .map(|row| row.try_get(0))
                .transpose()?;
            let (outcome, events) = arrive(&mut record, seq, existing.as_deref(), wire, received_ms, &update);
            if outcome == Stored::New {
                tx.execute(
                    "INSERT INTO outpost_envelopes (device, seq, wire, received_ms) VALUES ($1, $2, $3, $4)",
                    &[&device, &sql_seq, &wire, &to_sql(received_ms)],
                )?;
            }
            let text = match json(|| format!("devices/{device}"), &record) {
                Ok(text) => text,
                Err(e) => return Ok(Err(e)),
            };
            write_device(tx, device, &text)?;
            Ok(Ok((outcome, events.then(|| text.into_bytes()))))
        })?
    }

    /// [`super::Devices::store_envelopes`] in one transaction: the outcomes, and each record
    /// rewritten because an envelope brought an event, as written (device id, JSON), in order.
    #[allow(clippy::type_complexity)]
    pub(super) fn store_envelopes(
        &self,
        arrivals: &[Arrival<'_>],
    ) -> Result<(Vec<Stored>, Vec<(String, Vec<u8>)>), StoreError> {
        if arrivals.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let ids: Vec<&str> = arrivals.iter().map(|a| a.device).collect::<BTreeSet<_>>().into_iter().collect();
        let devices: Vec<&str> = arrivals.iter().map(|a| a.device).collect();
        let seqs: Vec<i64> = arrivals.iter().map(|a| seq_to_sql(a.seq)).collect();
        self.store.transaction(|tx| {
            // Locked in id order: two batches sharing devices never wait on each other in a circle.
            let mut records = HashMap::new();
            for row in tx.query(
                "SELECT id, record::text FROM outpost_devices WHERE id = ANY($1) ORDER BY id FOR UPDATE",
                &[&ids],
            )? {
                let (id, text): (String, String) = (row.try_get(0)?, row.try_get(1)?);
                match decode::<DeviceRecord>(|| format!("devices/{id}"), &text) {
                    Ok(record) => records.insert(id, record),
                    Err(e) => return Ok(Err(e)),
                };
            }
            if let Some(missing) = ids.iter().find(|id| !records.contains_key(**id)) {
                return Ok(Err(StoreError::Corrupt { key: format!("devices/{missing}"), detail: "missing".into() }));
            }
            let mut stored: HashMap<(String, i64), Vec<u8>> = HashMap::new();
            for row in tx.query(
                "SELECT e.device, e.seq, e.wire FROM outpost_envelopes e
                 JOIN unnest($1::text[], $2::int8[]) AS a(device, seq) ON e.device = a.device AND e.seq = a.seq",
                &[&devices, &seqs],
            )? {
                stored.insert((row.try_get(0)?, row.try_get(1)?), row.try_get(2)?);
            }
            let (mut outcomes, mut published) = (Vec::with_capacity(arrivals.len()), Vec::new());
            let mut new: (Vec<&str>, Vec<i64>, Vec<&[u8]>, Vec<i64>) = Default::default();
            for (a, &seq) in arrivals.iter().zip(&seqs) {
                let Some(record) = records.get_mut(a.device) else { continue };
                let key = (a.device.to_owned(), seq);
                let (outcome, events) = arrive(record, a.seq, stored.get(&key).map(Vec::as_slice), a.wire, a.received_ms, &a.update);
                if outcome == Stored::New {
                    stored.insert(key, a.wire.to_vec());
                    new.0.push(a.device);
                    new.1.push(seq);
                    new.2.push(a.wire);
                    new.3.push(to_sql(a.received_ms));
                }
                if events {
                    match json(|| format!("devices/{}", a.device), &*record) {
                        Ok(text) => published.push((a.device.to_owned(), text.into_bytes())),
                        Err(e) => return Ok(Err(e)),
                    }
                }
                outcomes.push(outcome);
            }
            tx.execute(
                "INSERT INTO outpost_envelopes (device, seq, wire, received_ms)
                 SELECT * FROM unnest($1::text[], $2::int8[], $3::bytea[], $4::int8[])",
                &[&new.0, &new.1, &new.2, &new.3],
            )?;
            let mut written: (Vec<&str>, Vec<String>) = Default::default();
            for (id, record) in &records {
                match json(|| format!("devices/{id}"), record) {
                    Ok(text) => {
                        written.0.push(id);
                        written.1.push(text);
                    }
                    Err(e) => return Ok(Err(e)),
                }
            }
            tx.execute(
                "UPDATE outpost_devices AS d SET record = w.record::json
                 FROM unnest($1::text[], $2::text[]) AS w(id, record) WHERE d.id = w.id",
                &[&written.0, &written.1],
            )?;
            Ok(Ok((outcomes, published)))
        })?
    }

    pub(super) fn set_presence(
        &self,
        device: &str,
        presence: &str,
        session: u64,
    ) -> Result<Option<bool>, StoreError> {
        self.store.transaction(|tx| {
            let Some(text) = lock_device(tx, device)? else { return Ok(Ok(None)) };
            // An unreadable record takes no presence (as on sled).
            let Ok(mut record) = serde_json::from_str::<DeviceRecord>(&text) else { return Ok(Ok(None)) };
            if !present(&mut record, presence, session) {
                return Ok(Ok(Some(false)));
            }
            match json(|| format!("devices/{device}"), &record) {
                Ok(text) => write_device(tx, device, &text).map(|_| Ok(Some(true))),
                Err(e) => Ok(Err(e)),
            }
        })?
    }

    pub(super) fn envelopes(&self, device: &str) -> Envelopes<'_> {
        Envelopes { devices: self, device: device.to_owned(), from: Some(i64::MIN), page: VecDeque::new() }
    }

    /// Reserves, for each `(device, n)` (devices unique), the next `n` seqs of envelopes to
    /// it, in one statement; answers the last of each, by device. Rows are written in id order,
    /// so replicas reserving for overlapping devices take turns.
    pub(super) fn reserve_outgoing_seqs(
        &self,
        wanted: &[(&str, u64)],
    ) -> Result<HashMap<String, u64>, StoreError> {
        let sorted: BTreeMap<&str, i64> = wanted.iter().map(|(d, n)| (*d, to_sql(*n))).collect();
        let (devices, counts): (Vec<&str>, Vec<i64>) = sorted.into_iter().unzip();
        self.store.transaction(|tx| {
            let rows = tx.query(
                "INSERT INTO outpost_ack_seqs (device, seq)
                 SELECT device, n FROM unnest($1::text[], $2::int8[]) AS w(device, n) ORDER BY device
                 ON CONFLICT (device) DO UPDATE SET seq = outpost_ack_seqs.seq + excluded.seq RETURNING device, seq",
                &[&devices, &counts],
            )?;
            let mut last = HashMap::with_capacity(rows.len());
            for row in rows {
                let seq: i64 = row.try_get(1)?;
                last.insert(row.try_get(0)?, u64::try_from(seq).unwrap_or(0));
            }
            Ok(Ok(last))
        })?
    }

    /// The devices among `ids` whose control messages are signed with the release key.
    pub(super) fn control_by_release_keys(&self, ids: &[&str]) -> Result<HashSet<String>, StoreError> {
        self.store.with(|c| {
            c.query("SELECT device FROM outpost_legacy_control WHERE device = ANY($1)", &[&ids])?
                .into_iter()
                .map(|row| row.try_get(0))
                .collect()
        })
    }

    /// The records of the devices among `ids` that are enrolled.
    pub(super) fn get_many(&self, ids: &[&str]) -> Result<HashMap<String, DeviceRecord>, StoreError> {
        let rows = self
            .store
            .keyed_texts("SELECT id, record::text FROM outpost_devices WHERE id = ANY($1)", &[&ids])?;
        rows.into_iter().map(|(id, t)| Ok((id.clone(), decode(|| format!("devices/{id}"), &t)?))).collect()
    }

    /// Retention (see `retention.rs` for the rules): per device, the oldest envelopes up to
    /// the first one stored after `cutoff_ms`, [`PAGE`] at a time, each page removed and the
    /// device's mark raised in one transaction.
    pub(super) fn prune_envelopes(&self, cutoff_ms: u64) -> Result<u64, StoreError> {
        let devices: Vec<String> = self.store.with(|c| {
            c.query("SELECT DISTINCT device FROM outpost_envelopes ORDER BY device", &[])?
                .into_iter()
                .map(|row| row.try_get(0))
                .collect()
        })?;
        let mut removed = 0;
        for device in devices {
            loop {
                let seqs = self.prunable(&device, cutoff_ms)?;
                if seqs.is_empty() {
                    break;
                }
                removed += self.remove(&device, &seqs)?;
                if (seqs.len() as i64) < PAGE {
                    break;
                }
            }
        }
        Ok(removed)
    }

    /// Up to [`PAGE`] of `device`'s oldest seqs (as stored) that arrived before `cutoff_ms`,
    /// stopping at the first one that did not. Envelopes from before arrival times were kept
    /// go by the time their device sent them.
    fn prunable(&self, device: &str, cutoff_ms: u64) -> Result<Vec<i64>, StoreError> {
        let rows: Vec<(i64, Option<i64>, Option<Vec<u8>>)> = self.store.with(|c| {
            c.query(
                "SELECT seq, received_ms, CASE WHEN received_ms IS NULL THEN wire END
                 FROM outpost_envelopes WHERE device = $1 ORDER BY seq LIMIT $2",
                &[&device, &PAGE],
            )?
            .into_iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)))
            .collect()
        })?;
        let mut seqs = Vec::new();
        for (seq, received, wire) in rows {
            let at = match (received, wire) {
                (Some(ms), _) => u64::try_from(ms).ok(),
                (None, Some(wire)) => outpost_shared::protocol::decode(&wire).map(|e| e.sent_at_ms).ok(),
                (None, None) => None,
            };
            if at.is_none_or(|t| t >= cutoff_ms) {
                break;
            }
            seqs.push(seq);
        }
        Ok(seqs)
    }

    /// Removes `seqs` (ascending, as stored) of `device` and raises its mark to the last.
    fn remove(&self, device: &str, seqs: &[i64]) -> Result<u64, StoreError> {
        let Some(&last) = seqs.last() else { return Ok(0) };
        self.store.transaction(|tx| {
            let record = lock_device(tx, device)?;
            let gone = tx.execute(
                "DELETE FROM outpost_envelopes WHERE device = $1 AND seq = ANY($2)",
                &[&device, &seqs],
            )?;
            if let Some(text) = record {
                let mut record: DeviceRecord = match decode(|| format!("devices/{device}"), &text) {
                    Ok(record) => record,
                    Err(e) => return Ok(Err(e)),
                };
                let last = seq_from_sql(last);
                record.pruned_through_seq = Some(record.pruned_through_seq.map_or(last, |m| m.max(last)));
                record.counts.pruned_envelopes += gone;
                match json(|| format!("devices/{device}"), &record) {
                    Ok(text) => write_device(tx, device, &text)?,
                    Err(e) => return Ok(Err(e)),
                };
            }
            Ok(Ok(gone))
        })?
    }
}

/// Why an enrolment ended without a device.
enum Refusal {
    Refused(TokenRefused),
    Store(StoreError),
}

/// Revokes `id` inside `tx` (see [`super::Devices::revoke`]).
fn revoke_in(
    tx: &mut Transaction<'_>,
    id: &str,
    by: &str,
) -> Result<Result<Option<Revocation>, StoreError>, postgres::Error> {
    let text = lock_device(tx, id)?;
    let existing: Option<String> = tx
        .query_opt("SELECT record::text FROM outpost_revocations WHERE device = $1", &[&id])?
        .map(|row| row.try_get(0))
        .transpose()?;
    if let Some(existing) = existing {
        return Ok(decode(|| format!("revoked/{id}"), &existing).map(Some));
    }
    let Some(text) = text else { return Ok(Ok(None)) };
    let mut record: DeviceRecord = match decode(|| format!("devices/{id}"), &text) {
        Ok(record) => record,
        Err(e) => return Ok(Err(e)),
    };
    let revocation = revocation_of(&record, by);
    record.revoked = Some(revocation.clone());
    let (record_json, revocation_json) =
        match (json(|| format!("devices/{id}"), &record), json(|| format!("revoked/{id}"), &revocation)) {
            (Ok(r), Ok(v)) => (r, v),
            (Err(e), _) | (_, Err(e)) => return Ok(Err(e)),
        };
    write_device(tx, id, &record_json)?;
    tx.execute(
        "INSERT INTO outpost_revocations (device, record) VALUES ($1, $2::text::json)",
        &[&id, &revocation_json],
    )?;
    Ok(Ok(Some(revocation)))
}

/// A device's stored envelopes in seq order, read [`PAGE`] at a time.
pub(super) struct Envelopes<'a> {
    devices: &'a PgDevices,
    device: String,
    /// The stored seq to read from next; `None` once the last page was read.
    from: Option<i64>,
    page: VecDeque<(u64, Vec<u8>)>,
}

impl Iterator for Envelopes<'_> {
    type Item = Result<(u64, Vec<u8>), StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.page.is_empty() {
            let from = self.from?;
            let device = self.device.as_str();
            let rows: Result<Vec<(i64, Vec<u8>)>, StoreError> = self.devices.store.with(|c| {
                c.query(
                    "SELECT seq, wire FROM outpost_envelopes WHERE device = $1 AND seq >= $2 ORDER BY seq LIMIT $3",
                    &[&device, &from, &PAGE],
                )?
                .into_iter()
                .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
                .collect()
            });
            let rows = match rows {
                Ok(rows) => rows,
                Err(e) => {
                    self.from = None;
                    return Some(Err(e));
                }
            };
            self.from = match rows.last() {
                Some((last, _)) if (rows.len() as i64) == PAGE => last.checked_add(1),
                _ => None,
            };
            self.page = rows.into_iter().map(|(seq, wire)| (seq_from_sql(seq), wire)).collect();
        }
        self.page.pop_front().map(Ok)
    }
}
