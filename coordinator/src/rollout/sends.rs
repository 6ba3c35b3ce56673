//! The desired states a rollout sends: a step's version to its devices, every moved device back,
//! and the watchdog events that trip a rollout.

use outpost_shared::protocol::messages::{Candidate, DesiredModel, SlotMode};

use super::{Rollout, RolloutError, Step};
use crate::api::AppState;
use crate::desired::Outgoing;
use crate::store::{DeviceRecord, StoreError};

/// A moved device whose agent switched the candidate back by itself since the rollout began.
pub(super) fn watchdog_tripped(devices: &[DeviceRecord], r: &Rollout) -> Option<(String, String)> {
    let needle = format!("model `{}` {} ->", r.spec.model, r.spec.version);
    devices.iter().filter(|d| r.moved.contains(&d.id)).find_map(|d| {
        d.recent_events
            .iter()
            .find(|e| {
                e.kind == outpost_shared::protocol::messages::EventKind::WatchdogRolledBack
                    && e.at_ms >= r.created_ms
                    && e.message.contains(&needle)
            })
            .map(|e| (d.id.clone(), e.message.clone()))
    })
}

/// Brings `devices`' desired state for `model` to what `step` asks of `version`; returns the
/// sealed states of the devices that changed (none when every one already says so).
pub(super) fn send_step(
    st: &AppState,
    devices: &[String],
    model: &str,
    version: &str,
    step: Step,
) -> Result<Vec<Outgoing>, StoreError> {
    let mode = match step {
        Step::Wave(_) | Step::Switch => return send(st, devices, model, version, "rollout-engine"),
        Step::Canary(p) => SlotMode::Canary { percent: p },
        Step::Standby => SlotMode::Standby,
        Step::Shadow => SlotMode::Shadow,
    };
    let record = st
        .registry
        .get(model, version)
        .map_err(|e| StoreError::Corrupt { key: format!("{model}@{version}"), detail: e.to_string() })?;
    let candidate = Candidate { version: version.to_owned(), bundle_sha256: record.bundle_sha256, mode };
    let mut need = Vec::new();
    for d in devices {
        let current = st.desired.get(d)?.and_then(|rec| rec.models.get(model).cloned());
        if current.is_some_and(|m| m.candidate.as_ref() != Some(&candidate)) {
            need.push(d.clone());
        }
    }
    let changed = st.desired.update(
        &need,
        model,
        |current| {
            current.cloned().map(|mut m| {
                m.candidate = Some(candidate.clone());
                m
            })
        },
        "rollout-engine",
    )?;
    changed.into_iter().map(|(device, rec)| st.desired.seal(&st.authority, &device, &rec)).collect()
}

/// Sets `model` to `version` on `devices` whose desired state says otherwise.
pub(super) fn send(
    st: &AppState,
    devices: &[String],
    model: &str,
    version: &str,
    by: &str,
) -> Result<Vec<Outgoing>, StoreError> {
    let record = st
        .registry
        .get(model, version)
        .map_err(|e| StoreError::Corrupt { key: format!("{model}@{version}"), detail: e.to_string() })?;
    let target = DesiredModel {
        name: model.to_owned(),
        version: version.to_owned(),
        bundle_sha256: record.bundle_sha256,
        watchdog: Some(st.config.watchdog),
        candidate: None,
    };
    let mut need = Vec::new();
    for d in devices {
        if st.desired.get(d)?.and_then(|rec| rec.models.get(model).cloned()).as_ref() != Some(&target) {
            need.push(d.clone());
        }
    }
    let mut out = Vec::new();
    for (device, rec) in st.desired.set(&need, model, Some(&target), by)? {
        out.push(st.desired.seal(&st.authority, &device, &rec)?);
    }
    Ok(out)
}

/// Sends every moved device back to what it had before the rollout.
pub(super) fn revert(st: &AppState, r: &Rollout, by: &str) -> Result<Vec<Outgoing>, RolloutError> {
    let mut out = Vec::new();
    for device in &r.moved {
        let before = r.previous.get(device).cloned().flatten();
        let now = st.desired.get(device)?.and_then(|rec| rec.models.get(&r.spec.model).cloned());
        if now == before {
            continue;
        }
        for (d, rec) in st.desired.set(std::slice::from_ref(device), &r.spec.model, before.as_ref(), by)? {
            out.push(st.desired.seal(&st.authority, &d, &rec)?);
        }
    }
    Ok(out)
}
