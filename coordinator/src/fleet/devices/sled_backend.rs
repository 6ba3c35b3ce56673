//! The fleet's records in sled (the embedded store): trees of the coordinator's database, laid
//! out as the parent module's header says. [`Devices`](super::Devices) dispatches here when the
//! store is sled.

use serde::Serialize;
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use super::{
    DEVICES, DeviceRecord, DeviceUpdate, Revocation, Stored, TokenRecord, TokenRefused, arrive, present,
    revocation_of, usable,
};
use crate::base::store::{Store, StoreError, encode, now_ms};

/// The fleet's records in sled (see the parent module's header for the layout).
#[derive(Clone)]
pub(super) struct SledDevices {
    pub(super) store: Store,
    pub(super) tokens: sled::Tree,
    pub(super) devices: sled::Tree,
    pub(super) device_keys: sled::Tree,
    pub(super) envelopes: sled::Tree,
    /// When each envelope was stored, by the coordinator's clock (for retention).
    pub(super) arrivals: sled::Tree,
    pub(super) meta: sled::Tree,
    pub(super) revoked: sled::Tree,
    /// Devices enrolled when one key signed releases and control messages: their desired
    /// states and acks are still signed with the release key they were given (until they
    /// enrol again).
    pub(super) legacy_control: sled::Tree,
}

/// Set in `meta` once the devices enrolled before the key roles were split are marked.
const ROLES_SPLIT: &[u8] = b"control_key_roles_split_at_ms";

pub(super) fn envelope_key(device: &str, seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(device.len() + 9);
    key.extend_from_slice(device.as_bytes());
    key.push(0);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// [`encode`] inside a sled transaction: a value that cannot be encoded fails the transaction
/// as a storage error naming what it was.
pub(super) fn encode_in_tx<T: Serialize, E>(
    what: &str,
    value: &T,
) -> Result<Vec<u8>, ConflictableTransactionError<E>> {
    serde_json::to_vec(value).map_err(|e| {
        ConflictableTransactionError::Storage(sled::Error::Unsupported(format!(
            "cannot encode the {what}: {e}"
        )))
    })
}

pub(super) fn abort<E>(e: E) -> ConflictableTransactionError<E> {
    ConflictableTransactionError::Abort(e)
}

impl SledDevices {
    pub(super) fn open(store: &Store) -> Result<SledDevices, StoreError> {
        let devices = SledDevices {
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
    pub(super) fn control_by_release_key(&self, id: &str) -> Result<bool, StoreError> {
        self.legacy_control.contains_key(id.as_bytes()).map_err(|e| self.storage(e))
    }

    /// `id` now holds a trust root; whether it was marked.
    pub(super) fn clear_legacy_control(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self.legacy_control.remove(id.as_bytes()).map_err(|e| self.storage(e))?.is_some())
    }

    pub(super) fn storage(&self, source: sled::Error) -> StoreError {
        self.store.storage_error(source)
    }

    /// Writes everything to disk; returns once it is there (before an ack goes out).
    pub(super) fn flush(&self) -> Result<(), StoreError> {
        self.store.flush()
    }

    pub(super) fn add_token(&self, token_hash: &str, record: &TokenRecord) -> Result<(), StoreError> {
        let value = encode(&format!("tokens/{token_hash}"), record)?;
        self.tokens.insert(token_hash.as_bytes(), value).map_err(|e| self.storage(e))?;
        self.flush()
    }

    /// Consumes a token and creates the device in one transaction.
    pub(super) fn enrol(
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
                usable(&token, now).map_err(abort)?;
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
    pub(super) fn get(&self, id: &str) -> Result<Option<DeviceRecord>, StoreError> {
        match self.devices.get(id.as_bytes()).map_err(|e| self.storage(e))? {
            None => Ok(None),
            Some(raw) => serde_json::from_slice(&raw)
                .map(Some)
                .map_err(|e| StoreError::Corrupt { key: format!("devices/{id}"), detail: e.to_string() }),
        }
    }

    /// The device enrolled with key `key_id`.
    pub(super) fn get_by_key(&self, key_id: &str) -> Result<Option<DeviceRecord>, StoreError> {
        match self.device_keys.get(key_id.as_bytes()).map_err(|e| self.storage(e))? {
            None => Ok(None),
            Some(id) => self.get(&String::from_utf8_lossy(&id)),
        }
    }

    /// Every stored record, decoded as `T` (a view that skips what it does not name).
    pub(super) fn decode_each<T: serde::de::DeserializeOwned>(&self) -> Result<Vec<T>, StoreError> {
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
    pub(super) fn revoke(&self, id: &str, by: &str) -> Result<Option<Revocation>, StoreError> {
        let result = (&self.devices, &self.revoked).transaction(|(devices, revoked)| {
            if let Some(raw) = revoked.get(id.as_bytes())? {
                return serde_json::from_slice::<Revocation>(&raw).map(Some).map_err(|_| abort(()));
            }
            let Some(raw) = devices.get(id.as_bytes())? else { return Ok(None) };
            let mut record: DeviceRecord = serde_json::from_slice(&raw).map_err(|_| abort(()))?;
            let revocation = revocation_of(&record, by);
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
    pub(super) fn delete(&self, id: &str, by: &str) -> Result<Option<Revocation>, StoreError> {
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
    pub(super) fn revocation(&self, id: &str) -> Result<Option<Revocation>, StoreError> {
        match self.revoked.get(id.as_bytes()).map_err(|e| self.storage(e))? {
            None => Ok(None),
            Some(raw) => serde_json::from_slice(&raw)
                .map(Some)
                .map_err(|e| StoreError::Corrupt { key: format!("revoked/{id}"), detail: e.to_string() }),
        }
    }

    /// Every revocation, oldest first: the content of the CA's revocation list.
    pub(super) fn revocations(&self) -> Result<Vec<Revocation>, StoreError> {
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

    /// Stores a verified envelope once and applies `update` to its device, atomically; with
    /// the record as written when the envelope brought an event (for the feed).
    pub(super) fn store_envelope_at(
        &self,
        device: &str,
        seq: u64,
        wire: &[u8],
        received_ms: u64,
        update: impl DeviceUpdate,
    ) -> Result<(Stored, Option<Vec<u8>>), StoreError> {
        let key = envelope_key(device, seq);
        let trees = (&self.devices, &self.envelopes, &self.arrivals);
        match self.store_envelope_in(trees, device, seq, &key, wire, received_ms, update) {
            Ok(outcome) => Ok(outcome),
            Err(TransactionError::Abort(())) => Err(StoreError::Corrupt {
                key: format!("devices/{device}"),
                detail: "missing or unreadable".into(),
            }),
            Err(TransactionError::Storage(e)) => Err(self.storage(e)),
        }
    }

    /// The storing transaction of [`SledDevices::store_envelope_at`]; with the record as written
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
            let existing = envelopes.get(key)?;
            let (outcome, events) = arrive(&mut record, seq, existing.as_deref(), wire, received_ms, &update);
            if outcome == Stored::New {
                envelopes.insert(key, wire)?;
                arrivals.insert(key, &received_ms.to_be_bytes())?;
            }
            let encoded = encode_in_tx("device", &record)?;
            devices.insert(device.as_bytes(), encoded.as_slice())?;
            Ok((outcome, events.then_some(encoded)))
        })
    }

    /// Records a verified presence from agent session `session`, unless the device already
    /// has one from a newer session (then it is a replay). `None` for an unknown device.
    pub(super) fn set_presence(
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
                let accepted = present(&mut record, presence, session);
                outcome = Some(accepted);
                if !accepted {
                    return Some(old.to_vec());
                }
                serde_json::to_vec(&record).ok()
            })
            .map_err(|e| self.storage(e))?;
        Ok(outcome)
    }

    /// Stored envelopes of a device, in seq order.
    pub(super) fn envelopes(
        &self,
        device: &str,
    ) -> impl Iterator<Item = Result<(u64, Vec<u8>), StoreError>> + '_ {
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
    /// Reserves the next `n` (≥ 1) seqs for envelopes to `device`; answers the last.
    pub(super) fn reserve_outgoing_seqs(&self, device: &str, n: u64) -> Result<u64, StoreError> {
        let key = format!("ack_seq/{device}");
        let new = self
            .meta
            .update_and_fetch(key.as_bytes(), |old| {
                let current = old.and_then(|b| b.try_into().ok()).map(u64::from_be_bytes).unwrap_or(0);
                Some((current + n).to_be_bytes().to_vec())
            })
            .map_err(|e| self.storage(e))?;
        Ok(new.and_then(|b| b.as_ref().try_into().ok()).map(u64::from_be_bytes).unwrap_or(n))
    }
}
