//! The drift-history store: every verdict as it came, its minute and hour roll-ups, and what
//! each device reported per model (see [`super`] for the layout and what counts as a version
//! change).

use std::collections::{BTreeMap, BTreeSet};

use outpost_shared::drift::DriftTest;
use outpost_shared::protocol::messages::{DriftReport, FeatureDrift, ModelDrift};
use serde::{Deserialize, Serialize};
use sled::Transactional;

use crate::base::store::{Store, StoreError};
use crate::monitoring::slo::record_key as key;
use crate::monitoring::slo::rollup::{self, HOUR_MS, MINUTE_MS, Width};

/// The drift-history store.
#[derive(Debug, Clone)]
pub struct History {
    tree: sled::Tree,
    minutes: sled::Tree,
    hours: sled::Tree,
    devices: sled::Tree,
    store: Store,
}

/// `(model, at_ms, device)` of a `drift_history` key (with or without the version).
fn parse_key(key: &[u8]) -> Option<(&str, u64, &str)> {
    let split = key.iter().position(|b| *b == 0)?;
    let model = std::str::from_utf8(&key[..split]).ok()?;
    let at = u64::from_be_bytes(key.get(split + 1..split + 9)?.try_into().ok()?);
    let rest = key.get(split + 10..)?;
    let device = rest.split(|b| *b == 0).next()?;
    Some((model, at, std::str::from_utf8(device).ok()?))
}

fn device_key(model: &str, device: &str) -> Vec<u8> {
    [model.as_bytes(), &[0], device.as_bytes()].concat()
}

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

/// A rebuild of the roll-ups from the stored verdicts, in key order: the open buckets, and the
/// current model's devices.
#[derive(Default)]
struct Rebuild {
    open: [BTreeMap<Vec<u8>, DriftBucket>; 2],
    devices: BTreeMap<String, DeviceDrift>,
    current: Option<(String, [u64; 2])>,
}

impl Rebuild {
    /// Counts one report's verdicts of a model from one device (`(model, at_ms, device)`).
    fn fold(
        &mut self,
        history: &History,
        (model, at, device): (String, u64, String),
        rows: &[ModelDrift],
    ) -> Result<(), StoreError> {
        let starts = [at - at % MINUTE_MS, at - at % HOUR_MS];
        let new_model = self.current.as_ref().is_some_and(|(c, _)| *c != model);
        for (i, tree) in [&history.minutes, &history.hours].into_iter().enumerate() {
            if new_model || self.current.as_ref().is_some_and(|(_, s)| s[i] != starts[i]) {
                history.write_buckets(tree, &mut self.open[i])?;
            }
        }
        if new_model && let Some((previous, _)) = &self.current {
            history.write_devices(previous, &mut self.devices)?;
        }
        let report: BTreeSet<String> = rows.iter().map(|m| m.version.clone()).collect();
        let seen = self.devices.entry(device).or_default();
        for m in rows {
            let one = count_verdict(seen, at, m, &report);
            for (i, start) in starts.into_iter().enumerate() {
                self.open[i].entry(rollup::key(&model, start, &m.version)).or_default().add(&one);
            }
        }
        self.current = Some((model, starts));
        Ok(())
    }

    fn finish(mut self, history: &History) -> Result<(), StoreError> {
        for (i, tree) in [&history.minutes, &history.hours].into_iter().enumerate() {
            history.write_buckets(tree, &mut self.open[i])?;
        }
        if let Some((model, _)) = &self.current {
            history.write_devices(model, &mut self.devices)?;
        }
        Ok(())
    }
}

impl History {
    pub fn open(store: &Store) -> Result<History, StoreError> {
        let history = History {
            tree: store.tree("drift_history")?,
            minutes: store.tree("drift_1m")?,
            hours: store.tree("drift_1h")?,
            devices: store.tree("drift_devices")?,
            store: store.clone(),
        };
        rollup::once(store, rollup::DRIFT_MARKER, || history.roll_up_all())?;
        Ok(history)
    }

    fn err(&self, e: sled::Error) -> StoreError {
        self.store.storage_error(e)
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
        let mut rows = Vec::new();
        let mut per_report = Vec::with_capacity(reports.len());
        for (i, (device, report)) in reports.iter().enumerate() {
            for m in &report.models {
                rows.push((
                    i,
                    key(&m.model, report.at_ms, device, &m.version),
                    crate::base::store::encode("drift verdict", m)?,
                    m,
                ));
            }
            per_report.push(versions_per_model(report));
        }
        if rows.is_empty() {
            return Ok(());
        }
        let trees = (&self.tree, &self.minutes, &self.hours, &self.devices);
        let outcome = trees.transaction(|(raw, minutes, hours, devices)| {
            let mut readable = true;
            for (i, key, encoded, m) in &rows {
                // (A verdict met earlier in this transaction reads as stored: its insert.)
                if raw.get(key)?.is_some() {
                    continue;
                }
                let ((device, report), per_model) = (reports[*i], &per_report[*i]);
                let at = report.at_ms;
                raw.insert(key.as_slice(), encoded.as_slice())?;
                let dkey = device_key(&m.model, device);
                let mut seen: DeviceDrift = match devices.get(&dkey)? {
                    Some(bytes) => postcard::from_bytes(&bytes).unwrap_or_else(|_| {
                        readable = false;
                        DeviceDrift::default()
                    }),
                    None => DeviceDrift::default(),
                };
                let one = count_verdict(&mut seen, at, m, &per_model[m.model.as_str()]);
                devices.insert(dkey, encode(&seen))?;
                for (tree, width) in [(minutes, Width::Minute), (hours, Width::Hour)] {
                    let bucket = rollup::key(&m.model, at - at % width.ms(), &m.version);
                    readable &= rollup::update_in(tree, &bucket, |b: &mut DriftBucket| b.add(&one))?;
                }
            }
            Ok(readable)
        });
        let devices = match reports {
            [(device, _)] => (*device).to_owned(),
            _ => format!("{} drift reports", reports.len()),
        };
        rollup::settle(&self.store, &[rollup::DRIFT_MARKER], "drift", &devices, outcome)
    }

    /// Rolls up every stored verdict (after an upgrade, a restore, or an unreadable bucket).
    fn roll_up_all(&self) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        let stored = self.tree.len();
        if stored > 0 {
            tracing::info!(
                verdicts = stored,
                "rolling up the stored drift verdicts into minute and hour buckets (once, after an upgrade or a restore)"
            );
        }
        for tree in [&self.minutes, &self.hours, &self.devices] {
            tree.clear().map_err(|e| self.err(e))?;
        }
        // Verdicts are keyed by model, then time: a bucket is complete once a verdict past it (or
        // another model) comes, so only the open buckets and the model's devices are in memory.
        // One report's verdicts of a model (its versions) are next to each other.
        let mut rebuild = Rebuild::default();
        let mut group: Option<((String, u64, String), Vec<ModelDrift>)> = None;
        let mut verdicts = 0u64;
        for item in self.tree.iter() {
            let (k, v) = item.map_err(|e| self.err(e))?;
            let Some((model, at, device)) = parse_key(&k) else { continue };
            let Ok(m) = serde_json::from_slice::<ModelDrift>(&v) else { continue };
            let id = (model.to_owned(), at, device.to_owned());
            if group.as_ref().is_some_and(|(g, _)| *g != id)
                && let Some((g, rows)) = group.take()
            {
                rebuild.fold(self, g, &rows)?;
            }
            group.get_or_insert_with(|| (id, Vec::new())).1.push(m);
            verdicts += 1;
        }
        if let Some((g, rows)) = group.take() {
            rebuild.fold(self, g, &rows)?;
        }
        rebuild.finish(self)?;
        if verdicts > 0 {
            tracing::info!(
                verdicts,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "rolled up the stored drift verdicts into minute and hour buckets"
            );
        }
        Ok(())
    }

    fn write_buckets(
        &self,
        tree: &sled::Tree,
        open: &mut BTreeMap<Vec<u8>, DriftBucket>,
    ) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for (k, bucket) in std::mem::take(open) {
            batch.insert(k, encode(&bucket));
        }
        tree.apply_batch(batch).map_err(|e| self.err(e))
    }

    fn write_devices(
        &self,
        model: &str,
        devices: &mut BTreeMap<String, DeviceDrift>,
    ) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for (device, versions) in std::mem::take(devices) {
            batch.insert(device_key(model, &device), encode(&versions));
        }
        self.devices.apply_batch(batch).map_err(|e| self.err(e))
    }

    /// The first and last minute-bucket starts of `model` (of `version` only, when given) from
    /// `since_ms` on.
    pub(super) fn extent(
        &self,
        model: &str,
        since_ms: u64,
        version: Option<&str>,
    ) -> Result<Option<(u64, u64)>, StoreError> {
        let range = || self.minutes.range(rollup::key(model, since_ms, "")..rollup::key(model, u64::MAX, ""));
        let at = |item: Option<sled::Result<(sled::IVec, sled::IVec)>>| -> Result<Option<(u64, bool)>, StoreError> {
            let Some(item) = item else { return Ok(None) };
            let (k, _) = item.map_err(|e| self.err(e))?;
            Ok(rollup::parse(&k, model.len()).map(|(at, v)| (at, version.is_none_or(|want| want == v))))
        };
        let mut forward = range();
        let first = loop {
            match at(forward.next())? {
                None => return Ok(None),
                Some((at, true)) => break at,
                Some(_) => {}
            }
        };
        let mut backward = range();
        let last = loop {
            match at(backward.next_back())? {
                None => break first,
                Some((at, true)) => break at,
                Some(_) => {}
            }
        };
        Ok(Some((first, last.max(first))))
    }

    /// Devices with a verdict of `model` (of `version`, when given) at or after `since_ms`.
    pub(super) fn devices_since(
        &self,
        model: &str,
        since_ms: u64,
        version: Option<&str>,
    ) -> Result<usize, StoreError> {
        let mut n = 0;
        for item in self.devices.scan_prefix([model.as_bytes(), &[0]].concat()) {
            let (_, v) = item.map_err(|e| self.err(e))?;
            let Ok(seen) = postcard::from_bytes::<DeviceDrift>(&v) else { continue };
            let newest = match version {
                Some(version) => seen.newest.get(version).copied(),
                None => seen.newest.values().copied().max(),
            };
            n += usize::from(newest.is_some_and(|at| at >= since_ms));
        }
        Ok(n)
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
        let tree = match width {
            Width::Minute => &self.minutes,
            Width::Hour => &self.hours,
        };
        rollup::each_bucket(&self.store, tree, rollup::DRIFT_MARKER, "drift", model, from_ms, until_ms, each)
    }

    /// Every verdict of `model` from `since_ms` on: (at_ms, device, verdicts), in time order —
    /// what [`DriftHistory::from_verdicts`] reads.
    pub(super) fn scan(
        &self,
        model: &str,
        since_ms: u64,
    ) -> Result<Vec<(u64, String, ModelDrift)>, StoreError> {
        let mut out = Vec::new();
        let (from, to) =
            ([model.as_bytes(), &[0], &since_ms.to_be_bytes()].concat(), [model.as_bytes(), &[1]].concat());
        for item in self.tree.range(from..to) {
            let (k, v) = item.map_err(|e| self.err(e))?;
            let Some((_, at_ms, device)) = parse_key(&k) else { continue };
            if let Ok(m) = serde_json::from_slice::<ModelDrift>(&v) {
                out.push((at_ms, device.to_owned(), m));
            }
        }
        Ok(out)
    }
}
