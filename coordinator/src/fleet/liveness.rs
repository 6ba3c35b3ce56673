//! Liveness: whether a device is online, stale, offline or never seen — one rule, used by the
//! API, the dashboard, rollouts and alerts alike.
//!
//! A device whose last will fired (a signed `presence = offline`) is offline until it reports
//! again (a report that arrives after the presence outranks it). Otherwise its age is the
//! time since its last report, in milliseconds: below `stale_after_secs` it is online, from there
//! below `offline_after_secs` stale, and from `offline_after_secs` on offline. A device exactly at
//! a threshold is already past it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::fleet::devices::{DeviceGlance, DeviceRecord};

/// The `[fleet]` settings: when silence makes a device stale, then offline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FleetConfig {
    /// A device with no report for this long is `stale`.
    pub stale_after_secs: u64,
    /// A device with no report for this long (or whose last will fired) is `offline`.
    pub offline_after_secs: u64,
    /// A desired state expires this long after it is signed. The coordinator signs a fresh
    /// revision (same models) for every device once half of it has passed, so an agent that
    /// hears nothing newer for a whole period knows its control channel is cut or frozen
    /// (`stale-control`) — and an old desired state replayed to it is refused as expired.
    pub desired_ttl_secs: u64,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig { stale_after_secs: 60, offline_after_secs: 300, desired_ttl_secs: 7 * 24 * 3600 }
    }
}

/// The whole fleet counted for `/metrics`: devices by liveness, and how many run each
/// (model, version, slot, load state) per their actual states.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Census {
    pub by_liveness: BTreeMap<Liveness, i64>,
    pub running: BTreeMap<[String; 4], i64>,
}

impl Census {
    pub fn of(devices: &[DeviceGlance], fleet: &FleetConfig, now_ms: u64) -> Census {
        let mut census = Census::default();
        for device in devices {
            *census.by_liveness.entry(Liveness::of_glance(device, fleet, now_ms)).or_insert(0) += 1;
            for m in &device.models {
                let key = [
                    m.name.clone(),
                    m.version.clone(),
                    m.slot.as_str().to_owned(),
                    m.state.as_str().to_owned(),
                ];
                *census.running.entry(key).or_insert(0) += 1;
            }
        }
        census
    }
}

/// How a device looks now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Liveness {
    Online,
    Stale,
    Offline,
    NeverSeen,
}

impl Liveness {
    /// `device`'s liveness at `now_ms` under `fleet`'s thresholds.
    pub fn of(device: &DeviceRecord, fleet: &FleetConfig, now_ms: u64) -> Liveness {
        Liveness::from_parts(
            device.last_seen_ms,
            device.presence.as_deref(),
            device.presence_at_ms,
            fleet,
            now_ms,
        )
    }

    /// The same rule, from a [`DeviceGlance`].
    pub fn of_glance(device: &DeviceGlance, fleet: &FleetConfig, now_ms: u64) -> Liveness {
        Liveness::from_parts(
            device.last_seen_ms,
            device.presence.as_deref(),
            device.presence_at_ms,
            fleet,
            now_ms,
        )
    }

    fn from_parts(
        last_seen_ms: Option<u64>,
        presence: Option<&str>,
        presence_at_ms: Option<u64>,
        fleet: &FleetConfig,
        now_ms: u64,
    ) -> Liveness {
        let Some(seen) = last_seen_ms else { return Liveness::NeverSeen };
        let reported_since = presence_at_ms.is_some_and(|at| seen > at);
        if presence == Some("offline") && !reported_since {
            return Liveness::Offline;
        }
        let age = now_ms.saturating_sub(seen);
        if age >= fleet.offline_after_secs.saturating_mul(1000) {
            Liveness::Offline
        } else if age >= fleet.stale_after_secs.saturating_mul(1000) {
            Liveness::Stale
        } else {
            Liveness::Online
        }
    }

    /// The name the API, the dashboard and `outpostctl` show.
    pub fn as_str(self) -> &'static str {
        match self {
            Liveness::Online => "online",
            Liveness::Stale => "stale",
            Liveness::Offline => "offline",
            Liveness::NeverSeen => "never_seen",
        }
    }
}

impl std::fmt::Display for Liveness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen_at(ms: u64) -> DeviceRecord {
        DeviceRecord { last_seen_ms: Some(ms), ..DeviceRecord::default() }
    }

    #[test]
    fn a_glance_of_a_stored_record_counts_as_the_whole_record_does() {
        use outpost_shared::protocol::messages::ModelState;
        use outpost_shared::protocol::vocab::{LoadState, Slot};
        let fleet = FleetConfig::default();
        let model = |version: &str| ModelState {
            name: "bc".into(),
            version: version.into(),
            slot: Slot::Primary,
            state: LoadState::Ready,
            reason: None,
        };
        let records = [
            DeviceRecord { models: vec![model("1.0.0")], ..seen_at(90_000) },
            DeviceRecord { models: vec![model("1.1.0")], ..seen_at(30_000) },
            DeviceRecord { presence: Some("offline".into()), presence_at_ms: Some(900), ..seen_at(800) },
            DeviceRecord::default(),
            DeviceRecord {
                revoked: Some(crate::fleet::devices::Revocation {
                    device_id: "gone".into(),
                    key_id: "k".into(),
                    cert_serial: None,
                    at_ms: 1,
                    by: "admin".into(),
                    deleted_at_ms: None,
                }),
                models: vec![model("1.0.0")],
                ..seen_at(1_000)
            },
        ];
        let now = 100_000;
        let glances: Vec<DeviceGlance> = records
            .iter()
            .map(|r| serde_json::from_slice(&serde_json::to_vec(r).unwrap()).unwrap())
            .collect();
        for (record, glance) in records.iter().zip(&glances) {
            assert_eq!(Liveness::of(record, &fleet, now), Liveness::of_glance(glance, &fleet, now));
            assert_eq!(record.models, glance.models);
        }
        // `Devices::glances` leaves the revoked one out, as `Devices::all` does.
        let live: Vec<DeviceGlance> = glances.into_iter().take(4).collect();
        let census = Census::of(&live, &fleet, now);
        let all = [Liveness::Online, Liveness::Stale, Liveness::Offline, Liveness::NeverSeen];
        assert_eq!(all.map(|l| census.by_liveness.get(&l).copied()), [Some(1); 4]);
        let running =
            |v: &str| census.running.get(&["bc".into(), v.into(), "primary".into(), "ready".into()]);
        assert_eq!((running("1.0.0"), running("1.1.0")), (Some(&1), Some(&1)));
    }

    #[test]
    fn a_device_exactly_at_a_threshold_is_past_it() {
        let fleet = FleetConfig { stale_after_secs: 60, offline_after_secs: 300, ..FleetConfig::default() };
        let d = seen_at(1_000_000);
        assert_eq!(Liveness::of(&d, &fleet, 1_000_000 + 59_999), Liveness::Online);
        assert_eq!(Liveness::of(&d, &fleet, 1_000_000 + 60_000), Liveness::Stale);
        assert_eq!(Liveness::of(&d, &fleet, 1_000_000 + 299_999), Liveness::Stale);
        assert_eq!(Liveness::of(&d, &fleet, 1_000_000 + 300_000), Liveness::Offline);
        // Sub-second ages count: 60.5 s is not rounded down to 60 s, nor 59.9 s up.
        assert_eq!(Liveness::of(&d, &fleet, 1_000_000 + 60_500), Liveness::Stale);
    }

    #[test]
    fn a_last_will_makes_a_device_offline_at_once() {
        let fleet = FleetConfig::default();
        let d = DeviceRecord { presence: Some("offline".into()), ..seen_at(1_000) };
        assert_eq!(Liveness::of(&d, &fleet, 1_000), Liveness::Offline);
        assert_eq!(Liveness::of(&DeviceRecord::default(), &fleet, 1_000), Liveness::NeverSeen);
        let after =
            DeviceRecord { presence: Some("offline".into()), presence_at_ms: Some(900), ..seen_at(800) };
        assert_eq!(Liveness::of(&after, &fleet, 1_000), Liveness::Offline);
        // A report that arrived after the last will outranks it: the device is back.
        let back = DeviceRecord { presence_at_ms: Some(900), ..seen_at(950) };
        let back = DeviceRecord { presence: Some("offline".into()), ..back };
        assert_eq!(Liveness::of(&back, &fleet, 1_000), Liveness::Online);
    }

    #[test]
    fn a_clock_behind_the_last_report_reads_online() {
        let d = seen_at(10_000);
        assert_eq!(Liveness::of(&d, &FleetConfig::default(), 5_000), Liveness::Online);
    }
}
