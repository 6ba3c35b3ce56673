//! The fleet's repository: enrolment tokens, devices, and every telemetry envelope a device
//! sent, stored once.
//!
//! # Layout (trees of the coordinator's database, `<data_dir>/state/`)
//! - `tokens`: sha256(token) hex → [`TokenRecord`] (JSON). The token itself is never
//!   stored, so a copy of the database does not enrol anyone.
//! - `devices`: device id → [`DeviceRecord`] (JSON). A record rewritten because an envelope
//!   brought an event is published to the store's feed ([`DEVICES`]).
//! - `device_keys`: key id → device id (find the device of an envelope read from a file).
//! - `envelopes`: `device id ‖ 0x00 ‖ seq (big-endian u64)` → the envelope's wire bytes,
//!   exactly as received and verified. Keys sort by device, then seq. Kept for
//!   `retention.envelope_days` ([`retention`](self::retention)); below a device's
//!   `pruned_through_seq` a seq counts as stored.
//! - `envelope_arrivals`: the same key → when the coordinator stored it (big-endian u64 ms, the
//!   coordinator's clock), what retention goes by (a device's clock may be a day or a year off).
//!   Envelopes stored before this tree existed have no entry; retention reads their sent time.
//! - `meta`: `ack_seq/<device>` → big-endian u64, the last seq of an ack sent to it.
//! - `revoked`: device id → [`Revocation`] (JSON): every device ever revoked, deleted ones
//!   included, with its certificate's serial — the source of the CA's revocation list.
//!
//! # Invariants
//! - An envelope is stored at most once per (device, seq); storing and the device's counters
//!   change in one transaction, so counts always equal what is stored.
//! - An ack is published only after the store was flushed to disk (end-to-end ack).
//! - A token is consumed in the same transaction that creates the device: a token enrols
//!   exactly one device.
//! - A revoked device stays revoked: its record is marked (and left out of [`Devices::all`],
//!   so no engine targets it), its entry in `revoked` is never removed, and enrolment refuses
//!   its id again, deleted or not.
//!
//! Engines and handlers reach devices only through [`Devices`]; its methods speak in records,
//! never in sled types, so a second backend changes this file and nothing above it.

use serde::Serialize;
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use crate::base::feed::{Change, Subscription};
use crate::base::store::{Store, StoreError, encode, now_ms};

mod record;

pub use record::*;

/// Why a token could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefused {
    #[error("enrolment token is not known")]
    Unknown,
    #[error("enrolment token was already used")]
    Used,
    #[error("enrolment token has expired")]
    Expired,
    #[error("device `{0}` is already enrolled with another key")]
    DeviceExists(String),
    #[error("key `{0}` is already enrolled as another device")]
    KeyExists(String),
    #[error("device `{0}` was revoked: it cannot enrol again (a new key makes a new device)")]
    Revoked(String),
}

/// The outcome of storing one verified envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    New,
    /// The same bytes were stored before (a retransmission or a replay).
    Duplicate,
    /// Different bytes under an already stored seq.
    Conflict,
}

/// How one verified envelope changes its device's record.
pub trait DeviceUpdate: Fn(&mut DeviceRecord) {}
impl<F: Fn(&mut DeviceRecord)> DeviceUpdate for F {}

/// The fleet's records (see the module header for the layout).
#[derive(Clone)]
pub struct Devices {
    store: Store,
    tokens: sled::Tree,
    devices: sled::Tree,
    device_keys: sled::Tree,
    envelopes: sled::Tree,
    /// When each envelope was stored, by the coordinator's clock (for retention).
    arrivals: sled::Tree,
    meta: sled::Tree,
    revoked: sled::Tree,
    /// Devices enrolled when one key signed releases and control messages: their desired
    /// states and acks are still signed with the release key they were given (until they
    /// enrol again).
    legacy_control: sled::Tree,
}

/// Set in `meta` once the devices enrolled before the key roles were split are marked.
const ROLES_SPLIT: &[u8] = b"control_key_roles_split_at_ms";

impl std::fmt::Debug for Devices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Devices").field("store", &self.store).finish_non_exhaustive()
    }
}

fn envelope_key(device: &str, seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(device.len() + 9);
    key.extend_from_slice(device.as_bytes());
    key.push(0);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// [`encode`] inside a sled transaction: a value that cannot be encoded fails the transaction
/// as a storage error naming what it was.
fn encode_in_tx<T: Serialize, E>(what: &str, value: &T) -> Result<Vec<u8>, ConflictableTransactionError<E>> {
    serde_json::to_vec(value).map_err(|e| {
        ConflictableTransactionError::Storage(sled::Error::Unsupported(format!(
            "cannot encode the {what}: {e}"
        )))
    })
}

fn abort<E>(e: E) -> ConflictableTransactionError<E> {
    ConflictableTransactionError::Abort(e)
}

/// The tree of device records. A record rewritten because an envelope brought an event (a
/// watchdog's revert, a model that failed) is published to the store's feed
/// ([`crate::base::feed`]): what a rollout watches instead of reading its devices every tick.
pub const DEVICES: &str = "devices";

/// The device record a published change holds, if it is one.
pub fn record_of(change: &Change) -> Option<DeviceRecord> {
    (change.tree == DEVICES).then(|| serde_json::from_slice(&change.after).ok()).flatten()
}

impl Devices {
    /// Subscribes to device records rewritten from now on because an envelope brought an
    /// event (read them with [`record_of`]).
    pub fn subscribe_events(&self) -> Subscription {
        self.store.feed().subscribe(&[DEVICES])
    }

    pub fn open(store: &Store) -> Result<Devices, StoreError> {
        let devices = Devices {
            tokens: store.tree("tokens")?,
            devices: store.tree(DEVICES)?,
            device_keys: store.tree("device_keys")?,
            envelopes: store.tree("envelopes")?,
            arrivals: store.tree("envelope_arrivals")?,
            meta: store.tree("meta")?,
            revoked: store.tree("revoked")?,
            legacy_control: store.tree("legacy_control")?,
            store: store.clone(),
        };
        devices.mark_legacy_control()?;
        Ok(devices)
    }

    /// Once per store: every device enrolled by a coordinator that had one key for both roles
    /// is marked, so its control messages stay verifiable with the key it holds.
    fn mark_legacy_control(&self) -> Result<(), StoreError> {
        if self.meta.get(ROLES_SPLIT).map_err(|e| self.storage(e))?.is_some() {
            return Ok(());
        }
        let mut marked = 0;
        for item in self.devices.iter() {
            let (id, _) = item.map_err(|e| self.storage(e))?;
            self.legacy_control.insert(id, &[][..]).map_err(|e| self.storage(e))?;
            marked += 1;
        }
        self.meta.insert(ROLES_SPLIT, &now_ms().to_be_bytes()).map_err(|e| self.storage(e))?;
        self.flush()?;
        if marked > 0 {
            tracing::warn!(
                devices = marked,
                "these devices were enrolled when one coordinator key signed releases and control messages: their \
                 desired states and acks stay signed with the release key until they enrol again (new enrolments \
                 get the separate online key)"
            );
        }
        Ok(())
    }

    /// Whether `id`'s control messages are signed with the release key (a device enrolled
    /// before the roles were split).
    pub fn control_by_release_key(&self, id: &str) -> Result<bool, StoreError> {
        self.legacy_control.contains_key(id.as_bytes()).map_err(|e| self.storage(e))
    }

    /// `id` now holds a trust root: its control messages are signed with the online key.
    pub fn clear_legacy_control(&self, id: &str) -> Result<(), StoreError> {
        if self.legacy_control.remove(id.as_bytes()).map_err(|e| self.storage(e))?.is_some() {
            tracing::info!(
                device = id,
                "device holds a trust root: its control messages are signed with the online key from now on"
            );
        }
        Ok(())
    }

    fn storage(&self, source: sled::Error) -> StoreError {
        self.store.storage_error(source)
    }

    /// Writes everything to disk; returns once it is there (before an ack goes out).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.store.flush()
    }

    pub fn add_token(&self, token_hash: &str, record: &TokenRecord) -> Result<(), StoreError> {
        let value = encode(&format!("tokens/{token_hash}"), record)?;
        self.tokens.insert(token_hash.as_bytes(), value).map_err(|e| self.storage(e))?;
        self.flush()
    }

    /// Consumes a token and creates the device in one transaction.
    pub fn enrol(
        &self,
        token_hash: &str,
        make_device: impl Fn(&TokenRecord) -> DeviceRecord,
    ) -> Result<Result<DeviceRecord, TokenRefused>, StoreError> {
        let now = now_ms();
        let result = (&self.tokens, &self.devices, &self.device_keys, &self.revoked, &self.legacy_control)
            .transaction(|(tokens, devices, keys, revoked, legacy)| {
                let Some(raw) = tokens.get(token_hash.as_bytes())? else {
                    return Err(abort(TokenRefused::Unknown));
                };
                let mut token: TokenRecord =
                    serde_json::from_slice(&raw).map_err(|_| abort(TokenRefused::Unknown))?;
                if token.used_by.is_some() {
                    return Err(abort(TokenRefused::Used));
                }
                if token.expires_at_ms <= now {
                    return Err(abort(TokenRefused::Expired));
                }
                let device = make_device(&token);
                if revoked.get(device.id.as_bytes())?.is_some() {
                    return Err(abort(TokenRefused::Revoked(device.id.clone())));
                }
                if let Some(existing) = devices.get(device.id.as_bytes())? {
                    let existing: DeviceRecord = serde_json::from_slice(&existing)
                        .map_err(|_| abort(TokenRefused::DeviceExists(device.id.clone())))?;
                    if existing.public_key != device.public_key {
                        return Err(abort(TokenRefused::DeviceExists(device.id.clone())));
                    }
                }
                if let Some(owner) = keys.get(device.key_id.as_bytes())?
                    && owner.as_ref() != device.id.as_bytes()
                {
                    return Err(abort(TokenRefused::KeyExists(device.key_id.clone())));
                }
                token.used_by = Some(device.id.clone());
                token.used_at_ms = Some(now);
                tokens.insert(token_hash.as_bytes(), encode_in_tx("token", &token)?)?;
                devices.insert(device.id.as_bytes(), encode_in_tx("device", &device)?)?;
                keys.insert(device.key_id.as_bytes(), device.id.as_bytes())?;
                // Enrolled now: it holds the online key for control messages.
                legacy.remove(device.id.as_bytes())?;
                Ok(device)
            });
        let outcome = match result {
            Ok(device) => Ok(device),
            Err(TransactionError::Abort(refused)) => Err(refused),
            Err(TransactionError::Storage(e)) => return Err(self.storage(e)),
        };
        self.flush()?;
        Ok(outcome)
    }

    /// The device `id`, if enrolled.
    pub fn get(&self, id: &str) -> Result<Option<DeviceRecord>, StoreError> {
        match self.devices.get(id.as_bytes()).map_err(|e| self.storage(e))? {
            None => Ok(None),
            Some(raw) => serde_json::from_slice(&raw)
                .map(Some)
                .map_err(|e| StoreError::Corrupt { key: format!("devices/{id}"), detail: e.to_string() }),
        }
    }

    /// The device enrolled with key `key_id`.
    pub fn get_by_key(&self, key_id: &str) -> Result<Option<DeviceRecord>, StoreError> {
        match self.device_keys.get(key_id.as_bytes()).map_err(|e| self.storage(e))? {
            None => Ok(None),
            Some(id) => self.get(&String::from_utf8_lossy(&id)),
        }
    }

    /// A [`DeviceGlance`] of every enrolled device that is not revoked: what `/metrics` counts.
    /// Far cheaper than [`Devices::all`] on a large fleet (the rest of each record is skipped,
    /// not built).
    pub fn glances(&self) -> Result<Vec<DeviceGlance>, StoreError> {
        Ok(self.decode_each::<DeviceGlance>()?.into_iter().filter(|g| g.revoked.is_none()).collect())
    }

    /// A [`LabelGlance`] of every device record, revoked ones (not yet deleted) included.
    pub fn label_glances(&self) -> Result<Vec<LabelGlance>, StoreError> {
        self.decode_each()
    }

    /// Every device's labels, revoked ones (not yet deleted) included: what monitoring's
    /// roll-ups by device label are rebuilt from.
    pub fn labels_by_device(&self) -> Result<crate::monitoring::slo::rollup::LabelsByDevice, StoreError> {
        Ok(self.label_glances()?.into_iter().map(|g| (g.id, g.labels)).collect())
    }

    /// Every stored record, decoded as `T` (a view that skips what it does not name).
    fn decode_each<T: serde::de::DeserializeOwned>(&self) -> Result<Vec<T>, StoreError> {
        let mut out = Vec::new();
        for item in self.devices.iter() {
            let (key, raw) = item.map_err(|e| self.storage(e))?;
            out.push(serde_json::from_slice(&raw).map_err(|e| StoreError::Corrupt {
                key: format!("devices/{}", String::from_utf8_lossy(&key)),
                detail: e.to_string(),
            })?);
        }
        Ok(out)
    }

    /// Every enrolled device that is not revoked: what engines target and watch.
    pub fn all(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        Ok(self.every()?.into_iter().filter(|d| d.revoked.is_none()).collect())
    }

    /// Every device record, revoked ones (not yet deleted) included: what the fleet view lists.
    pub fn every(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        let mut out = Vec::new();
        for item in self.devices.iter() {
            let (key, raw) = item.map_err(|e| self.storage(e))?;
            out.push(serde_json::from_slice(&raw).map_err(|e| StoreError::Corrupt {
                key: format!("devices/{}", String::from_utf8_lossy(&key)),
                detail: e.to_string(),
            })?);
        }
        Ok(out)
    }

    /// Revokes device `id` (`by` names who): its record is marked and its revocation kept for
    /// good. `None` when there is no such device; revoking twice changes nothing.
    pub fn revoke(&self, id: &str, by: &str) -> Result<Option<Revocation>, StoreError> {
        let result = (&self.devices, &self.revoked).transaction(|(devices, revoked)| {
            if let Some(raw) = revoked.get(id.as_bytes())? {
                return serde_json::from_slice::<Revocation>(&raw).map(Some).map_err(|_| abort(()));
            }
            let Some(raw) = devices.get(id.as_bytes())? else { return Ok(None) };
            let mut record: DeviceRecord = serde_json::from_slice(&raw).map_err(|_| abort(()))?;
            let revocation = Revocation {
                device_id: record.id.clone(),
                key_id: record.key_id.clone(),
                cert_serial: record.cert_serial.clone(),
                at_ms: now_ms(),
                by: by.to_owned(),
                deleted_at_ms: None,
            };
            record.revoked = Some(revocation.clone());
            devices.insert(id.as_bytes(), encode_in_tx("device", &record)?)?;
            revoked.insert(id.as_bytes(), encode_in_tx("revocation", &revocation)?)?;
            Ok(Some(revocation))
        });
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(TransactionError::Abort(())) => {
                return Err(StoreError::Corrupt {
                    key: format!("devices/{id}"),
                    detail: "unreadable".into(),
                });
            }
            Err(TransactionError::Storage(e)) => return Err(self.storage(e)),
        };
        self.flush()?;
        Ok(outcome)
    }

    /// Deletes device `id` from the fleet, revoking it first if it was not: its record and key
    /// index go, its revocation (and stored telemetry) stay. `None` when there is no such device.
    pub fn delete(&self, id: &str, by: &str) -> Result<Option<Revocation>, StoreError> {
        let Some(record) = self.get(id)? else { return Ok(None) };
        let Some(mut revocation) = self.revoke(id, by)? else { return Ok(None) };
        revocation.deleted_at_ms = Some(now_ms());
        let value = encode(&format!("revoked/{id}"), &revocation)?;
        self.revoked.insert(id.as_bytes(), value).map_err(|e| self.storage(e))?;
        self.devices.remove(id.as_bytes()).map_err(|e| self.storage(e))?;
        self.device_keys.remove(record.key_id.as_bytes()).map_err(|e| self.storage(e))?;
        self.flush()?;
        Ok(Some(revocation))
    }

    /// The revocation of device `id`, if it was ever revoked (deleted devices included).
    pub fn revocation(&self, id: &str) -> Result<Option<Revocation>, StoreError> {
        match self.revoked.get(id.as_bytes()).map_err(|e| self.storage(e))? {
            None => Ok(None),
            Some(raw) => serde_json::from_slice(&raw)
                .map(Some)
                .map_err(|e| StoreError::Corrupt { key: format!("revoked/{id}"), detail: e.to_string() }),
        }
    }

    /// Every revocation, oldest first: the content of the CA's revocation list.
    pub fn revocations(&self) -> Result<Vec<Revocation>, StoreError> {
        let mut out = Vec::new();
        for item in self.revoked.iter() {
            let (key, raw) = item.map_err(|e| self.storage(e))?;
            out.push(serde_json::from_slice::<Revocation>(&raw).map_err(|e| StoreError::Corrupt {
                key: format!("revoked/{}", String::from_utf8_lossy(&key)),
                detail: e.to_string(),
            })?);
        }
        out.sort_by_key(|r| r.at_ms);
        Ok(out)
    }

    /// Stores a verified envelope once and applies `update` to its device, atomically.
    pub fn store_envelope(
        &self,
        device: &str,
        seq: u64,
        wire: &[u8],
        update: impl DeviceUpdate,
    ) -> Result<Stored, StoreError> {
        self.store_envelope_at(device, seq, wire, now_ms(), update)
    }

    /// [`Devices::store_envelope`], arriving at `received_ms` by the coordinator's clock.
    pub fn store_envelope_at(
        &self,
        device: &str,
        seq: u64,
        wire: &[u8],
        received_ms: u64,
        update: impl DeviceUpdate,
    ) -> Result<Stored, StoreError> {
        let key = envelope_key(device, seq);
        let trees = (&self.devices, &self.envelopes, &self.arrivals);
        let result = self.store.feed().commit(|| {
            let result = self.store_envelope_in(trees, device, seq, &key, wire, received_ms, update);
            let change = match &result {
                Ok((_, Some(record))) => {
                    vec![Change {
                        tree: DEVICES,
                        key: device.as_bytes().to_vec(),
                        before: None,
                        after: record.clone(),
                    }]
                }
                _ => Vec::new(),
            };
            (result.map(|(outcome, _)| outcome), change)
        });
        match result {
            Ok(outcome) => Ok(outcome),
            Err(TransactionError::Abort(())) => Err(StoreError::Corrupt {
                key: format!("devices/{device}"),
                detail: "missing or unreadable".into(),
            }),
            Err(TransactionError::Storage(e)) => Err(self.storage(e)),
        }
    }

    /// The storing transaction of [`Devices::store_envelope_at`]; with the record as written
    /// when the envelope brought an event (published: what rollouts watch for watchdogs).
    #[allow(clippy::too_many_arguments)]
    fn store_envelope_in(
        &self,
        trees: (&sled::Tree, &sled::Tree, &sled::Tree),
        device: &str,
        seq: u64,
        key: &[u8],
        wire: &[u8],
        received_ms: u64,
        update: impl DeviceUpdate,
    ) -> sled::transaction::TransactionResult<(Stored, Option<Vec<u8>>), ()> {
        trees.transaction(|(devices, envelopes, arrivals)| {
            let Some(raw) = devices.get(device.as_bytes())? else { return Err(abort(())) };
            let mut record: DeviceRecord = serde_json::from_slice(&raw).map_err(|_| abort(()))?;
            let outcome = match envelopes.get(key)? {
                Some(existing) if existing.as_ref() == wire => Stored::Duplicate,
                Some(_) => Stored::Conflict,
                // Removed by retention (or older than what was): stored as far as anyone knows.
                None if record.pruned_through_seq.is_some_and(|mark| seq <= mark) => Stored::Duplicate,
                None => {
                    envelopes.insert(key, wire)?;
                    arrivals.insert(key, &received_ms.to_be_bytes())?;
                    Stored::New
                }
            };
            record.last_seen_ms = Some(received_ms);
            let events = record.counts.events;
            match outcome {
                Stored::New => {
                    record.counts.envelopes += 1;
                    record.highest_seq = Some(record.highest_seq.map_or(seq, |h| h.max(seq)));
                    update(&mut record);
                }
                Stored::Duplicate | Stored::Conflict => record.counts.duplicates += 1,
            }
            let encoded = encode_in_tx("device", &record)?;
            devices.insert(device.as_bytes(), encoded.as_slice())?;
            Ok((outcome, (record.counts.events != events).then_some(encoded)))
        })
    }

    /// Records a verified presence from agent session `session`, unless the device already
    /// has one from a newer session (then it is a replay). `None` for an unknown device.
    pub fn set_presence(
        &self,
        device: &str,
        presence: &str,
        session: u64,
    ) -> Result<Option<bool>, StoreError> {
        let mut outcome = None;
        self.devices
            .fetch_and_update(device.as_bytes(), |old| {
                let old = old?;
                let mut record: DeviceRecord = serde_json::from_slice(old).ok()?;
                if record.presence_session.is_some_and(|newest| session < newest) {
                    outcome = Some(false);
                    return Some(old.to_vec());
                }
                outcome = Some(true);
                record.presence = Some(presence.to_owned());
                record.presence_session = Some(session);
                record.presence_at_ms = Some(now_ms());
                serde_json::to_vec(&record).ok()
            })
            .map_err(|e| self.storage(e))?;
        Ok(outcome)
    }

    /// Stored envelopes of a device, in seq order.
    pub fn envelopes(&self, device: &str) -> impl Iterator<Item = Result<(u64, Vec<u8>), StoreError>> + '_ {
        let mut prefix = device.as_bytes().to_vec();
        prefix.push(0);
        self.envelopes.scan_prefix(prefix).map(move |item| {
            let (key, value) = item.map_err(|e| self.storage(e))?;
            let mut seq = [0u8; 8];
            let n = key.len();
            seq.copy_from_slice(&key[n.saturating_sub(8)..]);
            Ok((u64::from_be_bytes(seq), value.to_vec()))
        })
    }

    /// The next seq for an envelope the coordinator sends to `device` (persisted).
    pub fn next_outgoing_seq(&self, device: &str) -> Result<u64, StoreError> {
        let key = format!("ack_seq/{device}");
        let new = self
            .meta
            .update_and_fetch(key.as_bytes(), |old| {
                let current = old.and_then(|b| b.try_into().ok()).map(u64::from_be_bytes).unwrap_or(0);
                Some((current + 1).to_be_bytes().to_vec())
            })
            .map_err(|e| self.storage(e))?;
        Ok(new.and_then(|b| b.as_ref().try_into().ok()).map(u64::from_be_bytes).unwrap_or(1))
    }
}

mod retention;

#[cfg(test)]
mod tests;
