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
//! State: sled tree `desired`, device id → [`DesiredRecord`] (JSON).

use std::collections::BTreeMap;

use outpost_shared::protocol::messages::{self, CoordinatorMessage, DesiredModel, DesiredState};
use outpost_shared::protocol::topics::{self, Channel};
use outpost_shared::protocol::{self};
use serde::{Deserialize, Serialize};

use crate::base::store::{Store, StoreError, now_ms};

use crate::fleet::ca::Authority;
use crate::fleet::devices::{DeviceRecord, Devices};

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
    tree: sled::Tree,
    store: Store,
    devices: Devices,
    /// The trust root chain every sealed state carries ([`crate::fleet::roots`]).
    roots: sled::Tree,
    ttl_ms: u64,
}

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
            tree: store.tree("desired")?,
            store: store.clone(),
            devices: Devices::open(store)?,
            roots: crate::fleet::roots::tree(store)?,
            ttl_ms: DEFAULT_TTL_SECS * 1000,
        })
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
        let mut refreshed = Vec::new();
        for (device, mut record) in self.all() {
            if now.saturating_sub(record.updated_at_ms.max(record.refreshed_at_ms)) < self.ttl_ms / 2 {
                continue;
            }
            record.revision += 1;
            record.refreshed_at_ms = now;
            let value = crate::base::store::encode(&format!("desired/{device}"), &record)?;
            self.tree
                .insert(device.as_bytes(), value)
                .map_err(|e| StoreError::Corrupt { key: device.clone(), detail: e.to_string() })?;
            refreshed.push((device, record));
        }
        if !refreshed.is_empty() {
            self.store.flush()?;
        }
        Ok(refreshed)
    }

    pub fn get(&self, device: &str) -> Result<Option<DesiredRecord>, StoreError> {
        Ok(self
            .tree
            .get(device.as_bytes())
            .map_err(|e| StoreError::Corrupt { key: device.into(), detail: e.to_string() })?
            .and_then(|v| serde_json::from_slice(&v).ok()))
    }

    /// Every device's record.
    pub fn all(&self) -> Vec<(String, DesiredRecord)> {
        self.tree
            .iter()
            .filter_map(Result::ok)
            .filter_map(|(k, v)| {
                Some((String::from_utf8(k.to_vec()).ok()?, serde_json::from_slice(&v).ok()?))
            })
            .collect()
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
        change: impl Fn(Option<&DesiredModel>) -> Option<DesiredModel>,
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
        change: impl Fn(&mut DesiredRecord),
    ) -> Result<Vec<(String, DesiredRecord)>, StoreError> {
        let mut changed = Vec::new();
        for device in devices {
            let mut record = self.get(device)?.unwrap_or_default();
            change(&mut record);
            record.revision += 1;
            record.updated_at_ms = now_ms();
            record.updated_by = by.to_owned();
            let value = crate::base::store::encode(&format!("desired/{device}"), &record)?;
            self.tree
                .insert(device.as_bytes(), value)
                .map_err(|e| StoreError::Corrupt { key: device.clone(), detail: e.to_string() })?;
            changed.push((device.clone(), record));
        }
        self.store.flush()?;
        Ok(changed)
    }

    /// The sealed, signed message for a device's record.
    pub fn seal(
        &self,
        authority: &Authority,
        device: &str,
        record: &DesiredRecord,
    ) -> Result<Outgoing, StoreError> {
        let now = now_ms();
        let state = DesiredState {
            device: device.to_owned(),
            revision: record.revision,
            models: record.models.values().cloned().collect(),
            expires_at_ms: now.saturating_add(self.ttl_ms),
            roots: crate::fleet::roots::chain_bytes(&self.roots),
        };
        let body = messages::encode(&CoordinatorMessage::Desired(state));
        let seq = self.devices.next_outgoing_seq(device)?;
        let key = authority.control_key(self.devices.control_by_release_key(device)?);
        let payload = protocol::seal(&key, seq, now, &body).map_err(|e| StoreError::Corrupt {
            key: format!("desired state for {device}"),
            detail: e.to_string(),
        })?;
        let topic = topics::topic(device, Channel::Desired)
            .map_err(|e| StoreError::Corrupt { key: device.into(), detail: e.to_string() })?;
        Ok(Outgoing { topic, payload })
    }
}
