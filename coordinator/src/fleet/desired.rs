//! Desired state: which model versions each device should run, as a signed, retained MQTT
//! message per device with a strictly increasing revision.
//!
//! `deploy` changes the record of every targeted device (by label selector or by id) in one
//! pass, bumps each device's revision, seals the state with the coordinator's key and hands
//! it to the link, which publishes it retained on `outpost/v1/{device}/desired`. On every
//! (re)connect the link republishes every device's state (a broker may have lost its retained
//! messages); agents ignore a revision they have already applied.
//!
//! Every sealed state carries the trust root chain ([`crate::fleet::roots`]), so a device
//! catches up on root changes with its next revision.
//!
//! Every state expires `desired_ttl_secs` after it is sealed ([`DesiredState::expires_at_ms`]);
//! [`Desired::refresh_due`] gives every device a new revision with the same models once half of
//! that has passed, so agents tell a quiet coordinator from a cut-off or frozen one.
//!
//! State: sled tree `desired`, device id → [`DesiredRecord`] (JSON); or, on PostgreSQL, table
//! `outpost_desired` (migration 10, [`pg`](self::pg)), where a change locks its devices' rows in
//! id order, so replicas deploying to overlapping devices take turns and no revision is used
//! twice.

use std::collections::BTreeMap;

use outpost_shared::protocol::messages::{self, CoordinatorMessage, DesiredModel, DesiredState};
use outpost_shared::protocol::topics::{self, Channel};
use outpost_shared::protocol::{self};
use serde::{Deserialize, Serialize};

use crate::base::pg::store::PgStore;
use crate::base::store::{Store, StoreError, now_ms};
use crate::fleet::ca::Authority;
use crate::fleet::devices::{DeviceRecord, Devices};
use crate::fleet::roots::RootChain;

/// A device's desired state as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredRecord {
    pub revision: u64,
    /// name → (version, bundle sha256)
    pub models: BTreeMap<String, DesiredModel>,
    pub updated_at_ms: u64,
    pub updated_by: String,
    /// When the revision was last bumped only to renew its expiry (0: never).
    #[serde(default)]
    pub refreshed_at_ms: u64,
}

/// Seven days: how long a sealed desired state stays current by default.
pub const DEFAULT_TTL_SECS: u64 = 7 * 24 * 3600;

/// A message for the link to publish retained.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub topic: String,
    pub payload: Vec<u8>,
}

#[derive(Clone)]
pub struct Desired {
    backend: Backend,
    devices: Devices,
    /// The trust root chain every sealed state carries ([`crate::fleet::roots`]).
    roots: RootChain,
    ttl_ms: u64,
    /// On PostgreSQL, an engine's lease every change checks in its transaction
    /// ([`Desired::fenced`]); `None`: an operator's change, or sled.
    fence: Option<crate::base::pg::store::Fence>,
}

#[derive(Clone)]
enum Backend {
    Sled { tree: sled::Tree, store: Store },
    Postgres(PgStore),
}

/// What a change does to one device's record: `false` leaves it as it was.
type Change<'a> = &'a (dyn Fn(&mut DesiredRecord) -> bool + Sync);

impl std::fmt::Debug for Desired {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Desired").finish_non_exhaustive()
    }
}

/// Does `device` match every `key=value` of `selector`? (An empty selector matches all.)
pub fn matches(device: &DeviceRecord, selector: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| device.labels.get(k) == Some(v))
}

impl Desired {
    pub fn open(store: &Store) -> Result<Desired, StoreError> {
        Ok(Desired {
            backend: Backend::Sled { tree: store.tree("desired")?, store: store.clone() },
            devices: Devices::open(store)?,
            roots: RootChain::open(store)?,
            ttl_ms: DEFAULT_TTL_SECS * 1000,
            fence: None,
        })
    }

    /// The desired states on PostgreSQL (with the devices and the root chain there too).
    pub fn open_postgres(store: &PgStore) -> Desired {
        Desired {
            backend: Backend::Postgres(store.clone()),
            devices: Devices::open_postgres(store),
            roots: RootChain::open_postgres(store),
            ttl_ms: DEFAULT_TTL_SECS * 1000,
            fence: None,
        }
    }

    /// The same states, changed only while `fence`'s lease is this replica's: on PostgreSQL
    /// every change checks the term in its transaction, so an engine deposed mid-step sends
    /// nothing late (`StoreError::Fenced`). Sled has one process and no lease.
    pub fn fenced(&self, fence: Option<crate::base::pg::store::Fence>) -> Desired {
        Desired { fence, ..self.clone() }
    }

    /// Sealed states expire `secs` after sealing (`[fleet] desired_ttl_secs`).
    pub fn with_ttl(mut self, secs: u64) -> Desired {
        self.ttl_ms = secs.max(1).saturating_mul(1000);
        self
    }

    /// How long a sealed state stays current.
    pub fn ttl_ms(&self) -> u64 {
        self.ttl_ms
    }

    /// Gives every device whose state was sealed more than half a TTL ago a new revision with
    /// the same models (so a freshly sealed one goes out); returns the new records.
    pub fn refresh_due(&self, now: u64) -> Result<Vec<(String, DesiredRecord)>, StoreError> {
        let half = self.ttl_ms / 2;
        let due = |record: &DesiredRecord| {
            now.saturating_sub(record.updated_at_ms.max(record.refreshed_at_ms)) >= half
        };
        let candidates: Vec<String> =
            self.all()?.into_iter().filter(|(_, record)| due(record)).map(|(device, _)| device).collect();
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        // Due again under the lock: another replica may have refreshed it meanwhile.
        self.modify(&candidates, &|record| {
            if !due(record) {
                return false;
            }
            record.revision += 1;
            record.refreshed_at_ms = now;
            true
        })
    }

    pub fn get(&self, device: &str) -> Result<Option<DesiredRecord>, StoreError> {
        match &self.backend {
            Backend::Sled { tree, store } => Ok(tree
                .get(device.as_bytes())
                .map_err(|e| store.storage_error(e))?
                .and_then(|v| serde_json::from_slice(&v).ok())),
            Backend::Postgres(store) => pg::get(store, device),
        }
    }

    /// Every device's record, by device id (one that does not decode is left out).
    pub fn all(&self) -> Result<Vec<(String, DesiredRecord)>, StoreError> {
        match &self.backend {
            Backend::Sled { tree, store } => {
                let mut all = Vec::new();
                for item in tree.iter() {
                    let (k, v) = item.map_err(|e| store.storage_error(e))?;
                    if let (Ok(device), Ok(record)) =
                        (String::from_utf8(k.to_vec()), serde_json::from_slice::<DesiredRecord>(&v))
                    {
                        all.push((device, record));
                    }
                }
                Ok(all)
            }
            Backend::Postgres(store) => pg::all(store),
        }
    }

    /// Gives each device a new revision with the same models (a new trust root goes out with
    /// it); returns the new records.
    pub fn bump(&self, devices: &[String], by: &str) -> Result<Vec<(String, DesiredRecord)>, StoreError> {
        self.rewrite(devices, by, |_| {})
    }

    /// Sets `model` on each device to `target` (None removes it); returns the new records.
    pub fn set(
        &self,
        devices: &[String],
        model: &str,
        target: Option<&DesiredModel>,
        by: &str,
    ) -> Result<Vec<(String, DesiredRecord)>, StoreError> {
        self.update(devices, model, |_| target.cloned(), by)
    }

    /// Sets `model` on each device to what `change` makes of its current entry (None removes
    /// it); returns the new records.
    pub fn update(
        &self,
        devices: &[String],
        model: &str,
        change: impl Fn(Option<&DesiredModel>) -> Option<DesiredModel> + Sync,
        by: &str,
    ) -> Result<Vec<(String, DesiredRecord)>, StoreError> {
        self.rewrite(devices, by, |record| {
            match change(record.models.get(model)) {
                Some(t) => record.models.insert(model.to_owned(), t),
                None => record.models.remove(model),
            };
        })
    }

    /// Applies `change` to each device's record under a new revision.
    fn rewrite(
        &self,
        devices: &[String],
        by: &str,
        change: impl Fn(&mut DesiredRecord) + Sync,
    ) -> Result<Vec<(String, DesiredRecord)>, StoreError> {
        let now = now_ms();
        self.modify(devices, &|record| {
            change(record);
            record.revision += 1;
            record.updated_at_ms = now;
            record.updated_by = by.to_owned();
            true
        })
    }

    /// Runs `change` on each device's record (a default one where there is none) and stores
    /// those it changed, durably, before it returns them. On PostgreSQL in one transaction that
    /// holds the rows' locks.
    fn modify(
        &self,
        devices: &[String],
        change: Change<'_>,
    ) -> Result<Vec<(String, DesiredRecord)>, StoreError> {
        let (tree, store) = match &self.backend {
            Backend::Sled { tree, store } => (tree, store),
            Backend::Postgres(store) => return pg::modify(store, self.fence.as_ref(), devices, change),
        };
        let mut changed = Vec::new();
        for device in devices {
            let mut record = self.get(device)?.unwrap_or_default();
            if !change(&mut record) {
                continue;
            }
            let value = crate::base::store::encode(&format!("desired/{device}"), &record)?;
            tree.insert(device.as_bytes(), value).map_err(|e| store.storage_error(e))?;
            changed.push((device.clone(), record));
        }
        store.flush()?;
        Ok(changed)
    }

    /// The sealed, signed message for a device's record.
    pub fn seal(
        &self,
        authority: &Authority,
        device: &str,
        record: &DesiredRecord,
    ) -> Result<Outgoing, StoreError> {
        self.seal_with(authority, device, record, self.roots()?)
    }

    /// [`Desired::seal`] of many records, the trust root chain read once for all of them.
    pub fn seal_many(
        &self,
        authority: &Authority,
        records: &[(String, DesiredRecord)],
    ) -> Result<Vec<Outgoing>, StoreError> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let roots = self.roots()?;
        // One reservation of seqs and one lookup of key choices for the whole batch: on
        // PostgreSQL a round trip per device was most of a 10,000-device deploy's time.
        let mut wanted: BTreeMap<&str, u64> = BTreeMap::new();
        for (device, _) in records {
            *wanted.entry(device.as_str()).or_default() += 1;
        }
        let pairs: Vec<(&str, u64)> = wanted.iter().map(|(d, n)| (*d, *n)).collect();
        let last = self.devices.reserve_outgoing_seqs(&pairs)?;
        let ids: Vec<&str> = wanted.keys().copied().collect();
        let legacy = self.devices.control_by_release_keys(&ids)?;
        // A device named n times gets the n seqs up to its last, in order.
        let mut next: BTreeMap<&str, u64> = wanted
            .iter()
            .map(|(d, n)| (*d, last.get(*d).copied().unwrap_or(*n).saturating_sub(n - 1)))
            .collect();
        records
            .iter()
            .map(|(device, record)| {
                let seq = next.get_mut(device.as_str()).map_or(1, |s| {
                    *s += 1;
                    *s - 1
                });
                self.seal_at(authority, device, record, roots.clone(), seq, legacy.contains(device))
            })
            .collect()
    }

    /// The trust root chain every sealed state carries, in file form.
    pub fn roots(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        self.roots.bytes()
    }

    /// [`Desired::seal`] with the chain already read ([`Desired::roots`]).
    pub fn seal_with(
        &self,
        authority: &Authority,
        device: &str,
        record: &DesiredRecord,
        roots: Vec<Vec<u8>>,
    ) -> Result<Outgoing, StoreError> {
        let seq = self.devices.next_outgoing_seq(device)?;
        let release = self.devices.control_by_release_key(device)?;
        self.seal_at(authority, device, record, roots, seq, release)
    }

    /// Seals `record` for `device` as envelope `seq`, with the release key when `release` (a
    /// device enrolled before the roles were split) or else the online key.
    fn seal_at(
        &self,
        authority: &Authority,
        device: &str,
        record: &DesiredRecord,
        roots: Vec<Vec<u8>>,
        seq: u64,
        release: bool,
    ) -> Result<Outgoing, StoreError> {
        let now = now_ms();
        let state = DesiredState {
            device: device.to_owned(),
            revision: record.revision,
            models: record.models.values().cloned().collect(),
            expires_at_ms: now.saturating_add(self.ttl_ms),
            roots,
        };
        let body = messages::encode(&CoordinatorMessage::Desired(state));
        let key = authority.control_key(release);
        let payload = protocol::seal(&key, seq, now, &body).map_err(|e| StoreError::Corrupt {
            key: format!("desired state for {device}"),
            detail: e.to_string(),
        })?;
        let topic = topics::topic(device, Channel::Desired)
            .map_err(|e| StoreError::Corrupt { key: device.into(), detail: e.to_string() })?;
        Ok(Outgoing { topic, payload })
    }
}

mod pg;

#[cfg(test)]
mod tests;
