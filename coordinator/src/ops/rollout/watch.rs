//! Watching a rollout's moved devices for a watchdog's revert without reading their records
//! every tick: each moved device's record is read once, when it is moved; after that only the
//! records the fleet publishes because an envelope brought an event
//! ([`crate::fleet::devices::DEVICES`]) are looked at. The subscription is taken before the
//! first read, so an event is seen by the read, by the subscription, or by both — never by
//! neither. Kept in memory per active rollout; a restarted coordinator reads once again.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use super::sends::watchdog_tripped;
use super::{Rollout, RolloutError};
use crate::base::feed::Subscription;
use crate::fleet::devices::{DeviceRecord, Devices, record_of};

/// What one rollout's watch holds.
#[derive(Debug)]
struct Watch {
    subscription: Subscription,
    /// Moved devices whose records have been read.
    read: HashSet<String>,
}

/// The watches of active rollouts, by rollout id.
#[derive(Debug, Clone, Default)]
pub struct Watches {
    watches: Arc<Mutex<HashMap<String, Watch>>>,
}

impl Watches {
    /// The first moved device of `r` whose watchdog switched the candidate back since the
    /// rollout began, and its reason ([`watchdog_tripped`]).
    pub fn tripped(&self, devices: &Devices, r: &Rollout) -> Result<Option<(String, String)>, RolloutError> {
        let mut watches = self.watches.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let watch = watches
            .entry(r.id.clone())
            .or_insert_with(|| Watch { subscription: devices.subscribe_events(), read: HashSet::new() });
        let published = match watch.subscription.drain() {
            Ok(changes) => changes,
            Err(e) => {
                tracing::warn!(rollout = %r.id, error = %e, "the watchdog watch fell behind; reading the moved devices again");
                *watch = Watch { subscription: devices.subscribe_events(), read: HashSet::new() };
                Vec::new()
            }
        };
        // Published records of devices moved (and read) before: events since the last look.
        let mut records: Vec<DeviceRecord> =
            published.iter().filter_map(record_of).filter(|d| watch.read.contains(&d.id)).collect();
        // Devices moved since the last look: their whole record, once.
        for id in r.moved.iter().filter(|id| !watch.read.contains(*id)).cloned().collect::<Vec<_>>() {
            if let Some(d) = devices.get(&id)?.filter(|d| d.revoked.is_none()) {
                records.push(d);
            }
            watch.read.insert(id);
        }
        Ok(watchdog_tripped(&records, r))
    }

    /// Drops the watches of rollouts not in `active`.
    pub fn keep_only(&self, active: &std::collections::BTreeSet<String>) {
        self.watches
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|id, _| active.contains(id));
    }
}
