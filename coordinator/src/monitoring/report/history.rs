//! The drift-history store: every verdict as it came, its minute and hour roll-ups, and what
//! each device reported per model (see [`super`] for the layout and what counts as a version
//! change).

use std::collections::{BTreeMap, BTreeSet};

use outpost_shared::drift::DriftTest;
use outpost_shared::protocol::messages::{DriftReport, FeatureDrift, ModelDrift};
use serde::{Deserialize, Serialize};

use crate::base::pg::store::PgStore;
use crate::base::store::{Store, StoreError};
use crate::monitoring::slo::rollup::Width;

mod pg;
mod sled_backend;

/// One feature's verdicts in a bucket.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FeatureCell {
    pub windows: u64,
    pub drifted: u64,
    /// The smallest p-value or largest distance seen, and the test that produced it.
    pub worst_score: f64,
    pub test: Option<DriftTest>,
}

impl FeatureCell {
    fn of(f: &FeatureDrift) -> FeatureCell {
        FeatureCell { windows: 1, drifted: u64::from(f.drifted), worst_score: f.score, test: Some(f.test) }
    }

    /// Adds `later`'s verdicts; its worst score replaces this one's when it is worse by its test.
    pub(super) fn add(&mut self, later: &FeatureCell) {
        let worse = match later.test {
            Some(test) if test.is_p_value() => later.worst_score <= self.worst_score,
            Some(_) => later.worst_score >= self.worst_score,
            None => false,
        };
        if later.test.is_some() && (worse || self.test.is_none()) {
            self.worst_score = later.worst_score;
            self.test = later.test;
        }
        self.windows += later.windows;
        self.drifted += later.drifted;
    }
}

/// One version's drift verdicts in a minute or an hour.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DriftBucket {
    /// Verdict sets (one per device and evaluation).
    pub windows: u64,
    /// Per input feature, and [`super::PREDICTION`] for the predictions.
    pub features: BTreeMap<String, FeatureCell>,
    /// Devices that changed to this version here, per the version they came from.
    pub arrived_from: BTreeMap<String, u64>,
}

impl DriftBucket {
    fn add(&mut self, other: &DriftBucket) {
        self.windows += other.windows;
        for (feature, cell) in &other.features {
            self.features.entry(feature.clone()).or_default().add(cell);
        }
        for (from, n) in &other.arrived_from {
            *self.arrived_from.entry(from.clone()).or_default() += n;
        }
    }
}

/// What a device reported of one model: the versions in its newest report and in the one before,
/// and when it last reported each version.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceDrift {
    /// The newest report's time.
    pub at_ms: u64,
    pub now: BTreeSet<String>,
    pub before: BTreeSet<String>,
    pub newest: BTreeMap<String, u64>,
}

/// The newest verdict time in a stored [`DeviceDrift`] (what retention prunes it by).
pub fn newest_verdict(stored: &[u8]) -> Option<u64> {
    let device: DeviceDrift = postcard::from_bytes(stored).ok()?;
    device.newest.values().copied().max()
}

/// Folds one verdict set of a device at `at_ms` into what it reported (`report`: the versions
/// of the model in the same report), and answers what it adds to its version's bucket (a
/// version change as the module header says; a report older than the newest changes nothing).
pub(super) fn count_verdict(
    device: &mut DeviceDrift,
    at_ms: u64,
    m: &ModelDrift,
    report: &BTreeSet<String>,
) -> DriftBucket {
    let newest = device.newest.entry(m.version.clone()).or_insert(at_ms);
    *newest = (*newest).max(at_ms);
    let mut bucket = DriftBucket { windows: 1, ..DriftBucket::default() };
    for f in m.features.iter().chain(&m.prediction) {
        bucket.features.entry(f.feature.clone()).or_default().add(&FeatureCell::of(f));
    }
    if at_ms < device.at_ms {
        return bucket;
    }
    if at_ms > device.at_ms {
        device.before = std::mem::take(&mut device.now);
        device.at_ms = at_ms;
    }
    device.now.extend(report.iter().cloned());
    if !device.before.contains(&m.version)
        && let Some(gone) = device.before.iter().find(|v| !report.contains(*v))
    {
        bucket.arrived_from.insert(gone.clone(), 1);
    }
    bucket
}

/// Per model, the versions `report` has verdicts for.
fn versions_per_model(report: &DriftReport) -> BTreeMap<&str, BTreeSet<String>> {
    let mut out: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for m in &report.models {
        out.entry(m.model.as_str()).or_default().insert(m.version.clone());
    }
    out
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Maps of strings and integers: postcard cannot fail on them.
    postcard::to_stdvec(value).unwrap_or_default()
}

/// The drift-history store.
#[derive(Debug, Clone)]
pub struct History {
    backend: Backend,
}

#[derive(Debug, Clone)]
enum Backend {
    Sled(sled_backend::SledHistory),
    Postgres(pg::PgHistory),
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

impl History {
    /// The drift history in the coordinator's sled database (rolled up first if it is from
    /// before the roll-ups).
    pub fn open(store: &Store) -> Result<History, StoreError> {
        Ok(History { backend: Backend::Sled(sled_backend::SledHistory::open(store)?) })
    }

    /// The drift history in PostgreSQL (its schema brought up to date first:
    /// [`crate::base::pg::migrate`]).
    pub fn open_postgres(store: &PgStore) -> History {
        History { backend: Backend::Postgres(pg::PgHistory::open(store)) }
    }

    /// Keeps one device's drift report, and counts each verdict set new to the store into its
    /// version's buckets and what the device reported, in one transaction (a resend adds
    /// nothing).
    pub fn put(&self, device: &str, report: &DriftReport) -> Result<(), StoreError> {
        self.put_many(&[(device, report)])
    }

    /// [`History::put`] for many reports (device, report), in order, in one transaction: a
    /// bucket many verdicts go into is written to the store once.
    pub fn put_many(&self, reports: &[(&str, &DriftReport)]) -> Result<(), StoreError> {
        if reports.iter().all(|(_, r)| r.models.is_empty()) {
            return Ok(());
        }
        dispatch!(self.put_many(reports))
    }

    /// The first and last minute-bucket starts of `model` (of `version` only, when given) from
    /// `since_ms` on.
    pub(super) fn extent(
        &self,
        model: &str,
        since_ms: u64,
        version: Option<&str>,
    ) -> Result<Option<(u64, u64)>, StoreError> {
        dispatch!(self.extent(model, since_ms, version))
    }

    /// Devices with a verdict of `model` (of `version`, when given) at or after `since_ms`.
    pub(super) fn devices_since(
        &self,
        model: &str,
        since_ms: u64,
        version: Option<&str>,
    ) -> Result<usize, StoreError> {
        dispatch!(self.devices_since(model, since_ms, version))
    }

    /// Calls `each(bucket_start, version, bucket)` for `model`'s buckets of `width` starting in
    /// `[from_ms, until_ms)`.
    pub(super) fn buckets(
        &self,
        width: Width,
        model: &str,
        from_ms: u64,
        until_ms: u64,
        each: impl FnMut(u64, &str, DriftBucket),
    ) -> Result<(), StoreError> {
        dispatch!(self.buckets(width, model, from_ms, until_ms, each))
    }

    /// Every verdict of `model` from `since_ms` on: (at_ms, device, verdicts), in time order —
    /// what [`DriftHistory::from_verdicts`](super::DriftHistory::from_verdicts) reads.
    pub(super) fn scan(
        &self,
        model: &str,
        since_ms: u64,
    ) -> Result<Vec<(u64, String, ModelDrift)>, StoreError> {
        dispatch!(self.scan(model, since_ms))
    }
}
