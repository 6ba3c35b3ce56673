//! The desired states a rollout sends: a step's version to its devices, every moved device back,
//! and the watchdog events that trip a rollout.

use outpost_shared::protocol::messages::{EventKind, SlotMode};

use super::{Rollout, RolloutError, Step};
use crate::fleet::desired::Outgoing;
use crate::fleet::devices::DeviceRecord;
use crate::ops::deploy::Deployer;

/// A moved device whose agent switched the candidate back by itself since the rollout began:
/// the device and the watchdog's reason. (Agents before 0.2 send an event without the model
/// and versions; such a device is not matched here — it stops reporting the candidate ready,
/// which the apply timeout catches.)
/// `moved` holds the records of the rollout's moved devices.
pub(super) fn watchdog_tripped(moved: &[DeviceRecord], r: &Rollout) -> Option<(String, String)> {
    moved.iter().find_map(|d| {
        d.recent_events.iter().filter(|e| e.at_ms >= r.created_ms).find_map(|e| match &e.kind {
            EventKind::WatchdogReverted { model, from, reason, .. }
                if *model == r.spec.model && *from == r.spec.version =>
            {
                Some((d.id.clone(), reason.clone()))
            }
            _ => None,
        })
    })
}

/// Brings `devices`' desired state for `model` to what `step` asks of `version`; returns the
/// sealed states of the devices that changed (none when every one already says so).
pub(super) fn send_step(
    deployer: &Deployer,
    devices: &[String],
    model: &str,
    version: &str,
    step: Step,
) -> Result<Vec<Outgoing>, RolloutError> {
    const BY: &str = "rollout-engine";
    let mode = match step {
        Step::Wave(_) | Step::Switch => return Ok(deployer.set_primary(devices, model, version, BY, true)?),
        Step::Canary(p) => SlotMode::Canary { percent: p },
        Step::Standby => SlotMode::Standby,
        Step::Shadow => SlotMode::Shadow,
    };
    Ok(deployer.set_candidate(devices, model, version, mode, BY, true)?)
}

/// Sends every moved device back to what it had before the rollout.
pub(super) fn revert(deployer: &Deployer, r: &Rollout, by: &str) -> Result<Vec<Outgoing>, RolloutError> {
    let mut out = Vec::new();
    for device in &r.moved {
        let before = r.previous.get(device).cloned().flatten();
        out.extend(deployer.restore(device, &r.spec.model, before.as_ref(), by)?);
    }
    Ok(out)
}
