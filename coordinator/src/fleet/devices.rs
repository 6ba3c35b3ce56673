//! The fleet's repository: enrolment tokens, devices, and every telemetry envelope a device
//! sent, stored once — in sled (the embedded default, [`sled_backend`](self::sled_backend)) or in PostgreSQL
//! ([`pg`](self::pg), tables of migration `0002_devices.sql` mirroring the trees below).
//!
//! # Layout (trees of the coordinator's sled database, `<data_dir>/state/`)
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
//! Both backends keep these invariants; on PostgreSQL "flushed" is "committed", and a device's
//! row is locked (`FOR UPDATE`) by whoever changes it, so replicas storing envelopes of one
//! device at once take turns.
//!
//! Engines and handlers reach devices only through [`Devices`]; its methods speak in records,
//! never in a backend's types, and dispatch to the backend the store was opened on.

use std::collections::{HashMap, HashSet};

use crate::base::feed::{Change, Feed, Subscription};
use crate::base::pg::store::PgStore;
use crate::base::store::{Store, StoreError, now_ms};

mod pg;
mod record;
mod retention;
mod sled_backend;

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

/// A stored envelope: its seq and its wire bytes.
pub type StoredEnvelope = (u64, Vec<u8>);

/// One verified envelope to store ([`Devices::store_envelopes`]).
pub struct Arrival<'a> {
    pub device: &'a str,
    pub seq: u64,
    pub wire: &'a [u8],
    /// When the coordinator received it, by its clock.
    pub received_ms: u64,
    /// How it changes its device's record when it is new.
    pub update: &'a (dyn Fn(&mut DeviceRecord) + Send + Sync),
}

/// How one verified envelope changes its device's record.
pub trait DeviceUpdate: Fn(&mut DeviceRecord) + Send + Sync {}
impl<F: Fn(&mut DeviceRecord) + Send + Sync> DeviceUpdate for F {}

/// The fleet's records (see the module header for the layout).
#[derive(Clone)]
pub struct Devices {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Sled(sled_backend::SledDevices),
    Postgres(pg::PgDevices),
}

impl std::fmt::Debug for Devices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.backend {
            Backend::Sled(s) => f.debug_struct("Devices").field("store", &s.store).finish_non_exhaustive(),
            Backend::Postgres(p) => {
                f.debug_struct("Devices").field("store", &p.store).finish_non_exhaustive()
            }
        }
    }
}

/// Calls `$method` on whichever backend `$self` was opened on.
macro_rules! dispatch {
    ($self:ident.$method:ident($($arg:expr),*)) => {
        match &$self.backend {
            Backend::Sled(s) => s.$method($($arg),*),
            Backend::Postgres(p) => p.$method($($arg),*),
        }
    };
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
    /// The fleet's records in the coordinator's sled database.
    pub fn open(store: &Store) -> Result<Devices, StoreError> {
        Ok(Devices { backend: Backend::Sled(sled_backend::SledDevices::open(store)?) })
    }

    /// The fleet's records in PostgreSQL (its schema brought up to date first:
    /// [`crate::base::pg::migrate`]).
    pub fn open_postgres(store: &PgStore) -> Devices {
        Devices { backend: Backend::Postgres(pg::PgDevices::open(store)) }
    }

    fn feed(&self) -> &Feed {
        match &self.backend {
            Backend::Sled(s) => s.store.feed(),
            Backend::Postgres(p) => p.store.feed(),
        }
    }

    /// Subscribes to device records rewritten from now on because an envelope brought an
    /// event (read them with [`record_of`]). On PostgreSQL: those this process wrote.
    pub fn subscribe_events(&self) -> Subscription {
        self.feed().subscribe(&[DEVICES])
    }

    /// Whether `id`'s control messages are signed with the release key (a device enrolled
    /// before the roles were split).
    pub fn control_by_release_key(&self, id: &str) -> Result<bool, StoreError> {
        dispatch!(self.control_by_release_key(id))
    }

    /// `id` now holds a trust root: its control messages are signed with the online key.
    pub fn clear_legacy_control(&self, id: &str) -> Result<(), StoreError> {
        if dispatch!(self.clear_legacy_control(id))? {
            tracing::info!(
                device = id,
                "device holds a trust root: its control messages are signed with the online key from now on"
            );
        }
        Ok(())
    }

    /// Writes everything to disk; returns once it is there (before an ack goes out). On
    /// PostgreSQL every write is committed when its call returns: nothing to do.
    pub fn flush(&self) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sled(s) => s.flush(),
            Backend::Postgres(_) => Ok(()),
        }
    }

    pub fn add_token(&self, token_hash: &str, record: &TokenRecord) -> Result<(), StoreError> {
        dispatch!(self.add_token(token_hash, record))
    }

    /// Consumes a token and creates the device in one transaction.
    pub fn enrol(
        &self,
        token_hash: &str,
        make_device: impl Fn(&TokenRecord) -> DeviceRecord + Send + Sync,
    ) -> Result<Result<DeviceRecord, TokenRefused>, StoreError> {
        dispatch!(self.enrol(token_hash, make_device))
    }

    /// The device `id`, if enrolled.
    pub fn get(&self, id: &str) -> Result<Option<DeviceRecord>, StoreError> {
        dispatch!(self.get(id))
    }

    /// The device enrolled with key `key_id`.
    pub fn get_by_key(&self, key_id: &str) -> Result<Option<DeviceRecord>, StoreError> {
        dispatch!(self.get_by_key(key_id))
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

    /// Every stored record in id order, decoded as `T` (a view that skips what it does not name).
    fn decode_each<T: serde::de::DeserializeOwned>(&self) -> Result<Vec<T>, StoreError> {
        match &self.backend {
            Backend::Sled(s) => s.decode_each(),
            Backend::Postgres(p) => p.decode_each(),
        }
    }

    /// Every enrolled device that is not revoked: what engines target and watch.
    pub fn all(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        Ok(self.every()?.into_iter().filter(|d| d.revoked.is_none()).collect())
    }

    /// Every device record in id order, revoked ones (not yet deleted) included: what the fleet
    /// view lists.
    pub fn every(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        self.decode_each()
    }

    /// Revokes device `id` (`by` names who): its record is marked and its revocation kept for
    /// good. `None` when there is no such device; revoking twice changes nothing.
    pub fn revoke(&self, id: &str, by: &str) -> Result<Option<Revocation>, StoreError> {
        dispatch!(self.revoke(id, by))
    }

    /// Deletes device `id` from the fleet, revoking it first if it was not: its record and key
    /// index go, its revocation (and stored telemetry) stay. `None` when there is no such device.
    pub fn delete(&self, id: &str, by: &str) -> Result<Option<Revocation>, StoreError> {
        dispatch!(self.delete(id, by))
    }

    /// The revocation of device `id`, if it was ever revoked (deleted devices included).
    pub fn revocation(&self, id: &str) -> Result<Option<Revocation>, StoreError> {
        dispatch!(self.revocation(id))
    }

    /// Every revocation, oldest first: the content of the CA's revocation list.
    pub fn revocations(&self) -> Result<Vec<Revocation>, StoreError> {
        let mut out = dispatch!(self.revocations())?;
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

    /// [`Devices::store_envelope`], arriving at `received_ms` by the coordinator's clock. A
    /// record rewritten because the envelope brought an event is published ([`DEVICES`]).
    pub fn store_envelope_at(
        &self,
        device: &str,
        seq: u64,
        wire: &[u8],
        received_ms: u64,
        update: impl DeviceUpdate,
    ) -> Result<Stored, StoreError> {
        self.feed().commit(|| {
            let result = dispatch!(self.store_envelope_at(device, seq, wire, received_ms, &update));
            let change = match &result {
                Ok((_, Some(record))) => vec![Change {
                    tree: DEVICES,
                    key: device.as_bytes().to_vec(),
                    before: None,
                    after: record.clone(),
                }],
                _ => Vec::new(),
            };
            (result.map(|(outcome, _)| outcome), change)
        })
    }

    /// Stores `arrivals` in order, each as [`Devices::store_envelope_at`] does (a seq met twice
    /// in them is stored once), and answers their outcomes in the same order. On sled each is
    /// its own transaction; on PostgreSQL the batch is one, its devices' rows locked in id
    /// order, so replicas storing batches that share devices take turns instead of deadlocking.
    /// After an error nothing is answered; on PostgreSQL nothing of the batch was stored.
    pub fn store_envelopes(&self, arrivals: &[Arrival<'_>]) -> Result<Vec<Stored>, StoreError> {
        match &self.backend {
            Backend::Sled(_) => arrivals
                .iter()
                .map(|a| self.store_envelope_at(a.device, a.seq, a.wire, a.received_ms, a.update))
                .collect(),
            Backend::Postgres(p) => self.feed().commit(|| match p.store_envelopes(arrivals) {
                Ok((outcomes, published)) => {
                    let changes = published
                        .into_iter()
                        .map(|(device, after)| Change {
                            tree: DEVICES,
                            key: device.into_bytes(),
                            before: None,
                            after,
                        })
                        .collect();
                    (Ok(outcomes), changes)
                }
                Err(e) => (Err(e), Vec::new()),
            }),
        }
    }

    /// Records a verified presence from agent session `session`, unless the device already
    /// has one from a newer session (then it is a replay). `None` for an unknown device.
    pub fn set_presence(
        &self,
        device: &str,
        presence: &str,
        session: u64,
    ) -> Result<Option<bool>, StoreError> {
        dispatch!(self.set_presence(device, presence, session))
    }

    /// Stored envelopes of a device, in seq order.
    pub fn envelopes(
        &self,
        device: &str,
    ) -> Box<dyn Iterator<Item = Result<StoredEnvelope, StoreError>> + '_> {
        match &self.backend {
            Backend::Sled(s) => Box::new(s.envelopes(device)),
            Backend::Postgres(p) => Box::new(p.envelopes(device)),
        }
    }

    /// The next seq for an envelope the coordinator sends to `device` (persisted).
    pub fn next_outgoing_seq(&self, device: &str) -> Result<u64, StoreError> {
        Ok(self.reserve_outgoing_seqs(&[(device, 1)])?.get(device).copied().unwrap_or(1))
    }

    /// Reserves, for each `(device, n)` (n ≥ 1, each device once), the next `n` seqs of
    /// envelopes the coordinator sends it (persisted); answers the last of each, by device.
    /// On PostgreSQL one statement for them all.
    pub fn reserve_outgoing_seqs(&self, wanted: &[(&str, u64)]) -> Result<HashMap<String, u64>, StoreError> {
        match &self.backend {
            Backend::Sled(s) => wanted
                .iter()
                .map(|(device, n)| Ok(((*device).to_owned(), s.reserve_outgoing_seqs(device, *n)?)))
                .collect(),
            Backend::Postgres(p) => p.reserve_outgoing_seqs(wanted),
        }
    }

    /// The devices among `ids` whose control messages are signed with the release key
    /// ([`Devices::control_by_release_key`] for many at once).
    pub fn control_by_release_keys(&self, ids: &[&str]) -> Result<HashSet<String>, StoreError> {
        match &self.backend {
            Backend::Sled(s) => {
                let mut marked = HashSet::new();
                for id in ids {
                    if s.control_by_release_key(id)? {
                        marked.insert((*id).to_owned());
                    }
                }
                Ok(marked)
            }
            Backend::Postgres(p) => p.control_by_release_keys(ids),
        }
    }

    /// The records of the devices among `ids` that are enrolled ([`Devices::get`] for many at
    /// once: on PostgreSQL one query).
    pub fn get_many(&self, ids: &[&str]) -> Result<HashMap<String, DeviceRecord>, StoreError> {
        match &self.backend {
            Backend::Sled(s) => {
                let mut found = HashMap::new();
                for id in ids {
                    if let Some(record) = s.get(id)? {
                        found.insert((*id).to_owned(), record);
                    }
                }
                Ok(found)
            }
            Backend::Postgres(p) => p.get_many(ids),
        }
    }

    /// Removes every device's envelopes stored before `cutoff_ms` ([`retention`](self::retention));
    /// returns how many went.
    pub fn prune_envelopes(&self, cutoff_ms: u64) -> Result<u64, StoreError> {
        dispatch!(self.prune_envelopes(cutoff_ms))
    }
}

/// Whether `token` may enrol a device at `now`.
fn usable(token: &TokenRecord, now: u64) -> Result<(), TokenRefused> {
    if token.used_by.is_some() {
        return Err(TokenRefused::Used);
    }
    if token.expires_at_ms <= now {
        return Err(TokenRefused::Expired);
    }
    Ok(())
}

/// How a verified envelope of `seq` changes its device's `record`, given the bytes already
/// stored under that seq (`existing`): the outcome (the caller stores `wire` when it is
/// [`Stored::New`]), and whether the record's events changed (then it is published).
fn arrive(
    record: &mut DeviceRecord,
    seq: u64,
    existing: Option<&[u8]>,
    wire: &[u8],
    received_ms: u64,
    update: &impl DeviceUpdate,
) -> (Stored, bool) {
    let outcome = match existing {
        Some(existing) if existing == wire => Stored::Duplicate,
        Some(_) => Stored::Conflict,
        // Removed by retention (or older than what was): stored as far as anyone knows.
        None if record.pruned_through_seq.is_some_and(|mark| seq <= mark) => Stored::Duplicate,
        None => Stored::New,
    };
    record.last_seen_ms = Some(received_ms);
    let events = record.counts.events;
    match outcome {
        Stored::New => {
            record.counts.envelopes += 1;
            record.highest_seq = Some(record.highest_seq.map_or(seq, |h| h.max(seq)));
            update(record);
        }
        Stored::Duplicate | Stored::Conflict => record.counts.duplicates += 1,
    }
    (outcome, record.counts.events != events)
}

/// The revocation of `record`, by `by`, now.
fn revocation_of(record: &DeviceRecord, by: &str) -> Revocation {
    Revocation {
        device_id: record.id.clone(),
        key_id: record.key_id.clone(),
        cert_serial: record.cert_serial.clone(),
        at_ms: now_ms(),
        by: by.to_owned(),
        deleted_at_ms: None,
    }
}

/// Records `presence` from agent session `session` in `record`, unless it holds one from a
/// newer session (a replay): whether it was taken.
fn present(record: &mut DeviceRecord, presence: &str, session: u64) -> bool {
    if record.presence_session.is_some_and(|newest| session < newest) {
        return false;
    }
    record.presence = Some(presence.to_owned());
    record.presence_session = Some(session);
    record.presence_at_ms = Some(now_ms());
    true
}

#[cfg(test)]
mod tests;
