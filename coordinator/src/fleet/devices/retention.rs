//! Retention of the raw envelope store: the signed envelopes devices sent are kept for
//! `retention.envelope_days` after the coordinator stored them and then removed, so the
//! coordinator's disk follows the fleet's size, not its age. The age is the coordinator's: a
//! device whose clock is a year behind (a lost real-time clock) would otherwise have its
//! envelopes removed at the next pass, and one a year ahead keep them a year too long. Envelopes
//! stored before arrival times were kept go by their sent time. What was derived from them (traffic, labels, predictions, drift) was stored when
//! they arrived, before the ack, and follows `retention.monitoring_days`.
//!
//! Per device, only a prefix goes: envelopes in seq order, up to the first one sent after the
//! cutoff. The last seq removed becomes the device's `pruned_through_seq`: an envelope at or below
//! it counts as stored — a resend is acked as a duplicate, a replay is refused as one — so
//! removing an envelope never lets its seq be taken again. The mark and the removals change in
//! one transaction with the device's record, like storing does.
//!
//! This file holds the sled side; the PostgreSQL side (`pg.rs`) removes the same prefix with
//! one `DELETE` per device and transaction.

use sled::Transactional;
use sled::transaction::TransactionError;

use super::DeviceRecord;
use super::sled_backend::{SledDevices, abort, encode_in_tx, envelope_key};
use crate::base::store::StoreError;

/// Envelopes removed per transaction.
const PER_TRANSACTION: usize = 2048;

impl SledDevices {
    /// Removes every device's envelopes stored before `cutoff_ms` (see the module header);
    /// returns how many went.
    pub(super) fn prune_envelopes(&self, cutoff_ms: u64) -> Result<u64, StoreError> {
        let mut removed = 0;
        for device in self.envelope_devices()? {
            loop {
                let seqs = self.prunable(&device, cutoff_ms)?;
                if seqs.is_empty() {
                    break;
                }
                removed += self.remove_prefix(&device, &seqs)?;
                if seqs.len() < PER_TRANSACTION {
                    break;
                }
            }
        }
        if removed > 0 {
            self.flush()?;
        }
        Ok(removed)
    }

    /// The ids that have envelopes stored (deleted devices' included), one seek per device.
    fn envelope_devices(&self) -> Result<Vec<String>, StoreError> {
        let mut found = Vec::new();
        let mut from = Vec::new();
        while let Some(item) = self.envelopes.range(from.clone()..).next() {
            let (key, _) = item.map_err(|e| self.storage(e))?;
            let Some(end) = key.iter().position(|b| *b == 0) else { break };
            found.push(String::from_utf8_lossy(&key[..end]).into_owned());
            // The next device's keys start after `id ‖ 0x00 ‖ every seq`.
            from = key[..end].to_vec();
            from.push(1);
        }
        Ok(found)
    }

    /// Up to [`PER_TRANSACTION`] of `device`'s oldest seqs whose envelopes were stored before
    /// `cutoff_ms`, stopping at the first one that was not.
    fn prunable(&self, device: &str, cutoff_ms: u64) -> Result<Vec<u64>, StoreError> {
        let mut seqs = Vec::new();
        for item in self.envelopes(device) {
            let (seq, wire) = item?;
            let arrived = self.arrivals.get(envelope_key(device, seq)).map_err(|e| self.storage(e))?;
            let at = match arrived.and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok()) {
                Some(ms) => Some(u64::from_be_bytes(ms)),
                // Stored before arrivals were kept: its sent time. Only verified envelopes are
                // stored; one that does not decode now stays.
                None => outpost_shared::protocol::decode(&wire).map(|e| e.sent_at_ms).ok(),
            };
            if at.is_none_or(|t| t >= cutoff_ms) || seqs.len() == PER_TRANSACTION {
                break;
            }
            seqs.push(seq);
        }
        Ok(seqs)
    }

    /// Removes `seqs` (ascending) of `device` and raises its mark to the last, atomically.
    fn remove_prefix(&self, device: &str, seqs: &[u64]) -> Result<u64, StoreError> {
        let Some(&last) = seqs.last() else { return Ok(0) };
        let trees = (&self.devices, &self.envelopes, &self.arrivals);
        let result = trees.transaction(|(devices, envelopes, arrivals)| {
            for seq in seqs {
                envelopes.remove(envelope_key(device, *seq))?;
                arrivals.remove(envelope_key(device, *seq))?;
            }
            if let Some(raw) = devices.get(device.as_bytes())? {
                let mut record: DeviceRecord = serde_json::from_slice(&raw).map_err(|_| abort(()))?;
                record.pruned_through_seq = Some(record.pruned_through_seq.map_or(last, |m| m.max(last)));
                record.counts.pruned_envelopes += seqs.len() as u64;
                devices.insert(device.as_bytes(), encode_in_tx("device", &record)?)?;
            }
            Ok(())
        });
        match result {
            Ok(()) => Ok(seqs.len() as u64),
            Err(TransactionError::Abort(())) => {
                Err(StoreError::Corrupt { key: format!("devices/{device}"), detail: "unreadable".into() })
            }
            Err(TransactionError::Storage(e)) => Err(self.storage(e)),
        }
    }
}
