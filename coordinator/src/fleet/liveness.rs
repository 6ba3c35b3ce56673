//! Liveness: whether a device is online, stale, offline or never seen — one rule, used by the
//! API, the dashboard, rollouts and alerts alike.
//!
//! A device whose last will fired (a signed `presence = offline`) is offline until it reports
//! again (a report that arrives after the presence outranks it). Otherwise its age is the
//! time since its last report, in milliseconds: below `stale_after_secs` it is online, from there
//! below `offline_after_secs` stale, and from `offline_after_secs` on offline. A device exactly at
//! a threshold is already past it.

use serde::{Deserialize, Serialize};

use crate::fleet::devices::DeviceRecord;

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
        let Some(seen) = device.last_seen_ms else { return Liveness::NeverSeen };
        let reported_since = device.presence_at_ms.is_some_and(|at| seen > at);
        if device.presence.as_deref() == Some("offline") && !reported_since {
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
