//! The drift report an ML team reads weekly: per-feature drift over time, the features that
//! moved most, how the predictions' distribution changed, and the model versions serving at
//! the time — so drift can be told apart from a rollout.
//!
//! History: every drift verdict devices report is kept in sled tree `drift_history`, key
//! `model \0 at_ms (u64 BE) \0 device \0 version` (a canary's verdicts in the same report as the
//! primary's are kept beside them; keys written before had no version), value JSON `ModelDrift`
//! (the first arrival; a resend changes nothing) — what retention prunes and the roll-ups are
//! rebuilt from. In the same
//! transaction a new verdict is counted into its version's minute and hour buckets (`drift_1m`,
//! `drift_1h`, keys as in [`rollup`], value postcard [`DriftBucket`]: per feature the verdicts,
//! the drifted ones and the worst score; the devices that came to the version from another one)
//! and what the device reported is kept (`drift_devices`, key `model \0 device`, value postcard
//! [`DeviceDrift`]). A device *changed* version when its newest report has a version its
//! previous one had not, in place of one that is gone (1.0.0 → 1.1.0, or back); a canary
//! starting beside the primary, or a version missing from one report, is no change.
//!
//! [`DriftHistory::build`] reads the buckets, not the verdicts: the minutes for a report that
//! spans up to a day (at most 1,440 per version), else the hours and the minutes at both ends —
//! so a report costs the same at 10 devices as at 10,000. It folds them into at most
//! [`MAX_BUCKETS`] buckets spanning the verdicts present (whole minutes, or whole hours past a
//! day), and [`render_markdown`] / [`render_html`] write it out; the HTML is self-contained
//! (inline SVG, no scripts, no CDN). A data directory from before the roll-ups (no `meta` key
//! [`rollup::DRIFT_MARKER`]) is rolled up from its verdicts once, when it is opened.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use outpost_shared::drift::DriftTest;
use outpost_shared::protocol::messages::{DriftReport, FeatureDrift, ModelDrift};
use serde::{Deserialize, Serialize};
use sled::Transactional;

use crate::base::store::{Store, StoreError};
use crate::models::packaging::utc;
use crate::monitoring::slo::rollup::{self, HOUR_MS, MINUTE_MS, Width};

/// Most time buckets in a report.
pub const MAX_BUCKETS: usize = 24;

const DAY_MS: u64 = 24 * HOUR_MS;

/// The drift-history store.
#[derive(Debug, Clone)]
pub struct History {
    tree: sled::Tree,
    minutes: sled::Tree,
    hours: sled::Tree,
    devices: sled::Tree,
    store: Store,
}

fn key(model: &str, at_ms: u64, device: &str, version: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(model.len() + device.len() + version.len() + 11);
    k.extend_from_slice(model.as_bytes());
    k.push(0);
    k.extend_from_slice(&at_ms.to_be_bytes());
    k.push(0);
    k.extend_from_slice(device.as_bytes());
    k.push(0);
    k.extend_from_slice(version.as_bytes());
    k
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
    fn add(&mut self, later: &FeatureCell) {
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
    /// Per input feature, and [`PREDICTION`] for the predictions.
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
fn count_verdict(
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
        let at = report.at_ms;
        let mut rows = Vec::with_capacity(report.models.len());
        for m in &report.models {
            rows.push((
                key(&m.model, at, device, &m.version),
                crate::base::store::encode("drift verdict", m)?,
                m,
            ));
        }
        if rows.is_empty() {
            return Ok(());
        }
        let per_model = versions_per_model(report);
        let trees = (&self.tree, &self.minutes, &self.hours, &self.devices);
        let outcome = trees.transaction(|(raw, minutes, hours, devices)| {
            let mut readable = true;
            for (key, encoded, m) in &rows {
                if raw.get(key)?.is_some() {
                    continue;
                }
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
        rollup::settle(&self.store, &[rollup::DRIFT_MARKER], "drift", device, outcome)
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
    fn extent(
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
    fn devices_since(&self, model: &str, since_ms: u64, version: Option<&str>) -> Result<usize, StoreError> {
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
    fn buckets(
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
    fn scan(&self, model: &str, since_ms: u64) -> Result<Vec<(u64, String, ModelDrift)>, StoreError> {
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

/// One feature's drift over the report's buckets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureSeries {
    pub feature: String,
    /// Per bucket: (windows with a verdict, windows that drifted); `None` = no verdict.
    pub buckets: Vec<Option<(u64, u64)>>,
    pub windows: u64,
    pub drifted: u64,
    /// The largest distance / smallest p-value seen, with the test that produced it.
    pub worst_score: f64,
    pub test: String,
}

impl FeatureSeries {
    /// Share of windows that drifted.
    pub fn drift_share(&self) -> f64 {
        if self.windows == 0 { 0.0 } else { self.drifted as f64 / self.windows as f64 }
    }
}

/// Devices that changed from one version to another within a bucket of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionChange {
    /// The start of the report's bucket (unix ms).
    pub at_ms: u64,
    pub from: String,
    pub to: String,
    pub devices: u64,
}

/// The data behind a report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftHistory {
    pub model: String,
    pub since_ms: u64,
    /// Bucket start times (unix ms) and the bucket width.
    pub bucket_starts_ms: Vec<u64>,
    pub bucket_ms: u64,
    pub devices: usize,
    pub windows: u64,
    /// Input features, most drifted first.
    pub features: Vec<FeatureSeries>,
    pub prediction: Option<FeatureSeries>,
    /// Per bucket, the versions that reported.
    pub versions: Vec<BTreeSet<String>>,
    /// Devices that changed version, per bucket and change.
    pub version_changes: Vec<VersionChange>,
}

/// What a report folds, bucket by bucket, before it is sorted out.
struct Fold {
    first: u64,
    bucket_ms: u64,
    count: usize,
    windows: u64,
    series: BTreeMap<String, (FeatureSeries, FeatureCell)>,
    versions: Vec<BTreeSet<String>>,
    changes: BTreeMap<(usize, String, String), u64>,
}

impl Fold {
    fn new(first: u64, bucket_ms: u64, count: usize) -> Fold {
        Fold {
            first,
            bucket_ms,
            count,
            windows: 0,
            series: BTreeMap::new(),
            versions: vec![BTreeSet::new(); count],
            changes: BTreeMap::new(),
        }
    }

    /// Adds `bucket` of `version` at `at_ms` into the report's bucket holding it.
    fn add(&mut self, at_ms: u64, version: &str, bucket: &DriftBucket) {
        let b = (((at_ms - self.first) / self.bucket_ms) as usize).min(self.count - 1);
        if bucket.windows > 0 {
            self.versions[b].insert(version.to_owned());
        }
        self.windows += bucket.windows;
        for (feature, cell) in &bucket.features {
            let count = self.count;
            let (s, worst) = self.series.entry(feature.clone()).or_insert_with(|| {
                let series = FeatureSeries {
                    feature: feature.clone(),
                    buckets: vec![None; count],
                    windows: 0,
                    drifted: 0,
                    worst_score: 0.0,
                    test: String::new(),
                };
                (series, FeatureCell::default())
            });
            let c = s.buckets[b].get_or_insert((0, 0));
            c.0 += cell.windows;
            c.1 += cell.drifted;
            s.windows += cell.windows;
            s.drifted += cell.drifted;
            worst.add(cell);
        }
        for (from, n) in &bucket.arrived_from {
            *self.changes.entry((b, from.clone(), version.to_owned())).or_default() += n;
        }
    }

    fn finish(self, model: &str, since_ms: u64, devices: usize) -> DriftHistory {
        let mut series: BTreeMap<String, FeatureSeries> = self
            .series
            .into_iter()
            .map(|(feature, (mut s, worst))| {
                s.worst_score = worst.worst_score;
                s.test = worst.test.map(|t| t.as_str().to_owned()).unwrap_or_default();
                (feature, s)
            })
            .collect();
        let prediction = series.remove(PREDICTION);
        let mut features: Vec<FeatureSeries> = series.into_values().collect();
        features.sort_by(|a, b| b.drift_share().total_cmp(&a.drift_share()).then(a.feature.cmp(&b.feature)));
        let (first, width) = (self.first, self.bucket_ms);
        DriftHistory {
            model: model.to_owned(),
            since_ms,
            bucket_starts_ms: (0..self.count).map(|i| first + i as u64 * width).collect(),
            bucket_ms: width,
            devices,
            windows: self.windows,
            features,
            prediction,
            versions: self.versions,
            version_changes: self
                .changes
                .into_iter()
                .map(|((b, from, to), devices)| VersionChange {
                    at_ms: first + b as u64 * width,
                    from,
                    to,
                    devices,
                })
                .collect(),
        }
    }
}

impl DriftHistory {
    pub fn build(history: &History, model: &str, since_ms: u64) -> Result<DriftHistory, StoreError> {
        DriftHistory::build_for(history, model, since_ms, None)
    }

    /// [`DriftHistory::build`] over one version's verdicts only, when `version` is given. From
    /// the roll-ups: verdicts count from the minute holding `since_ms`.
    pub fn build_for(
        history: &History,
        model: &str,
        since_ms: u64,
        version: Option<&str>,
    ) -> Result<DriftHistory, StoreError> {
        let since = since_ms - since_ms % MINUTE_MS;
        let devices = history.devices_since(model, since, version)?;
        let Some((first, last)) = history.extent(model, since, version)? else {
            return Ok(Fold::new(since, MINUTE_MS, 1).finish(model, since_ms, devices));
        };
        // Up to a day: minutes; past it, whole hours (the hours between, minutes at both ends).
        let span = last + MINUTE_MS - first;
        let (unit, reads) = if span <= DAY_MS {
            (MINUTE_MS, vec![(Width::Minute, first, last + 1)])
        } else {
            (HOUR_MS, rollup::spans(first, last))
        };
        let bucket_ms = span.div_ceil(MAX_BUCKETS as u64).div_ceil(unit).max(1) * unit;
        let mut fold = Fold::new(first, bucket_ms, ((last - first) / bucket_ms) as usize + 1);
        for (width, from, until) in reads {
            history.buckets(width, model, from, until, |at, v, bucket| {
                if version.is_none_or(|want| want == v) {
                    fold.add(at, v, &bucket);
                }
            })?;
        }
        Ok(fold.finish(model, since_ms, devices))
    }

    /// The same report from every stored verdict, into the same buckets: the check on the
    /// roll-ups (tests) and `--bench slo`'s baseline — what the report cost before them.
    pub fn from_verdicts(
        history: &History,
        model: &str,
        since_ms: u64,
        version: Option<&str>,
    ) -> Result<DriftHistory, StoreError> {
        let since = since_ms - since_ms % MINUTE_MS;
        // Every verdict, those before the range too: whether a device changed version depends
        // on them.
        let rows = history.scan(model, 0)?;
        let counted =
            |r: &&(u64, String, ModelDrift)| r.0 >= since && version.is_none_or(|want| want == r.2.version);
        let (Some(first), Some(last)) = (rows.iter().find(counted), rows.iter().rev().find(counted)) else {
            return Ok(Fold::new(since, MINUTE_MS, 1).finish(model, since_ms, 0));
        };
        let (first, last) = (first.0 - first.0 % MINUTE_MS, last.0 - last.0 % MINUTE_MS);
        let span = last + MINUTE_MS - first;
        let unit = if span <= DAY_MS { MINUTE_MS } else { HOUR_MS };
        let bucket_ms = span.div_ceil(MAX_BUCKETS as u64).div_ceil(unit).max(1) * unit;
        let mut fold = Fold::new(first, bucket_ms, ((last - first) / bucket_ms) as usize + 1);
        // Past a day an hour goes to the report's bucket holding its start, as the roll-ups'
        // hours do (the minutes at both ends go by their own start).
        let (first_hour, last_hour) = (first.div_ceil(HOUR_MS) * HOUR_MS, last - last % HOUR_MS);
        // The versions of each report, each device's view of them, then every verdict in turn.
        let mut reports: BTreeMap<(u64, &str), BTreeSet<String>> = BTreeMap::new();
        for (at, device, m) in &rows {
            reports.entry((*at, device.as_str())).or_default().insert(m.version.clone());
        }
        let mut seen: BTreeMap<&str, DeviceDrift> = BTreeMap::new();
        for row in &rows {
            let (at, device, m) = row;
            let report = &reports[&(*at, device.as_str())];
            let one = count_verdict(seen.entry(device.as_str()).or_default(), *at, m, report);
            if counted(&row) {
                let hour = unit == HOUR_MS && (first_hour..last_hour).contains(at);
                fold.add(if hour { at - at % HOUR_MS } else { at - at % MINUTE_MS }, &m.version, &one);
            }
        }
        let devices = seen
            .values()
            .filter(|d| match version {
                Some(version) => d.newest.get(version).is_some_and(|at| *at >= since),
                None => d.newest.values().any(|at| *at >= since),
            })
            .count();
        Ok(fold.finish(model, since_ms, devices))
    }
}

/// The name agents report prediction drift under.
pub const PREDICTION: &str = "_prediction";

fn cell_text(cell: Option<(u64, u64)>) -> String {
    match cell {
        None => "·".into(),
        Some((n, d)) => format!("{}%", (100 * d).checked_div(n).unwrap_or(0)),
    }
}

fn bucket_label(h: &DriftHistory, i: usize) -> String {
    let at = h.bucket_starts_ms[i] / 1000;
    utc(at).replace('T', " ").trim_end_matches('Z').to_owned()
}

/// When a change happened: within its bucket of the report.
fn change_time(h: &DriftHistory, c: &VersionChange) -> String {
    let shown = |ms: u64| utc(ms / 1000).replace('T', " ").trim_end_matches('Z').to_owned();
    format!("{} – {}", shown(c.at_ms), shown(c.at_ms + h.bucket_ms))
}

/// The report as Markdown.
pub fn render_markdown(h: &DriftHistory) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Drift report: {}\n", h.model);
    if h.windows == 0 {
        let _ = writeln!(
            out,
            "No drift verdicts since {} (bundles with a baseline report them once traffic flows).",
            utc(h.since_ms / 1000)
        );
        return out;
    }
    let _ = writeln!(
        out,
        "{} drift windows from {} devices, {} to {} (buckets of {} s).\n",
        h.windows,
        h.devices,
        bucket_label(h, 0),
        bucket_label(h, h.bucket_starts_ms.len() - 1),
        h.bucket_ms / 1000
    );
    let _ = writeln!(out, "## Features that moved most\n");
    let _ = writeln!(out, "| feature | windows drifted | share | worst score | test |");
    let _ = writeln!(out, "|---|---:|---:|---:|---|");
    for f in h.features.iter().filter(|f| f.drifted > 0) {
        let _ = writeln!(
            out,
            "| {} | {} of {} | {:.0}% | {} | {} |",
            f.feature,
            f.drifted,
            f.windows,
            100.0 * f.drift_share(),
            crate::base::numbers::p_value(f.worst_score),
            f.test
        );
    }
    let stable = h.features.iter().filter(|f| f.drifted == 0).count();
    let _ = writeln!(out, "\n{stable} other feature(s) never drifted.\n");
    let _ = writeln!(out, "## Drift over time (share of windows that drifted)\n");
    let shown: Vec<&FeatureSeries> =
        h.features.iter().filter(|f| f.drifted > 0).chain(&h.prediction).collect();
    let _ = write!(out, "| bucket |");
    for f in &shown {
        let _ = write!(out, " {} |", f.feature);
    }
    let _ = writeln!(out, " versions |");
    let _ = writeln!(out, "|---|{}---|", "---:|".repeat(shown.len()));
    for i in 0..h.bucket_starts_ms.len() {
        let _ = write!(out, "| {} |", bucket_label(h, i));
        for f in &shown {
            let _ = write!(out, " {} |", cell_text(f.buckets[i]));
        }
        let versions: Vec<&str> = h.versions[i].iter().map(String::as_str).collect();
        let _ = writeln!(out, " {} |", versions.join(", "));
    }
    let _ = writeln!(out, "\n## Predictions\n");
    match &h.prediction {
        Some(p) => {
            let _ = writeln!(
                out,
                "The prediction distribution drifted in {} of {} windows ({:.0}%; worst {} score {}).",
                p.drifted,
                p.windows,
                100.0 * p.drift_share(),
                p.test,
                crate::base::numbers::p_value(p.worst_score)
            );
        }
        None => {
            let _ = writeln!(out, "No prediction drift verdicts (the model has no label or score output).");
        }
    }
    let _ = writeln!(out, "\n## Version changes\n");
    if h.version_changes.is_empty() {
        let _ = writeln!(out, "No device changed version in this period: drift here is not a rollout.");
    }
    for c in &h.version_changes {
        let _ = writeln!(out, "- {}: {} → {} on {} device(s)", change_time(h, c), c.from, c.to, c.devices);
    }
    out
}

/// Text made safe for HTML content and double-quoted attributes (the reports, the model card,
/// the dashboard).
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// One row of heat cells as inline SVG (darker = more windows drifted).
fn heat_row(f: &FeatureSeries) -> String {
    let (w, h) = (16, 16);
    let mut svg = format!(
        "<svg width=\"{}\" height=\"{h}\" role=\"img\" aria-label=\"drift of {}\">",
        w * f.buckets.len(),
        escape(&f.feature)
    );
    for (i, cell) in f.buckets.iter().enumerate() {
        let (fill, title) = match cell {
            None => ("#eeeeee".to_owned(), "no verdict".to_owned()),
            Some((n, d)) => {
                let share = *d as f64 / (*n).max(1) as f64;
                let shade = (235.0 - 200.0 * share) as u8;
                (format!("rgb(235,{shade},{shade})"), format!("{d} of {n} windows drifted"))
            }
        };
        let _ = write!(
            svg,
            "<rect x=\"{}\" y=\"0\" width=\"{}\" height=\"{h}\" fill=\"{fill}\"><title>{title}</title></rect>",
            i * w,
            w - 1
        );
    }
    svg.push_str("</svg>");
    svg
}

/// The report as a self-contained HTML page.
pub fn render_html(h: &DriftHistory) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Drift report: {m}</title>\
         <style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}\
         td,th{{padding:2px 8px;text-align:left}}</style></head><body><h1>Drift report: {m}</h1>",
        m = escape(&h.model)
    );
    if h.windows == 0 {
        out.push_str("<p>No drift verdicts in this period.</p></body></html>");
        return out;
    }
    let _ = write!(
        out,
        "<p>{} drift windows from {} devices, {} to {}.</p><h2>Drift over time</h2><table>\
         <tr><th>feature</th><th>drifted</th><th>over time (each cell {} s)</th></tr>",
        h.windows,
        h.devices,
        escape(&bucket_label(h, 0)),
        escape(&bucket_label(h, h.bucket_starts_ms.len() - 1)),
        h.bucket_ms / 1000
    );
    for f in h.features.iter().chain(&h.prediction) {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{:.0}% of {}</td><td>{}</td></tr>",
            escape(&f.feature),
            100.0 * f.drift_share(),
            f.windows,
            heat_row(f)
        );
    }
    out.push_str("</table><h2>Version changes</h2><ul>");
    if h.version_changes.is_empty() {
        out.push_str("<li>No device changed version in this period.</li>");
    }
    for c in &h.version_changes {
        let _ = write!(
            out,
            "<li>{}: {} → {} on {} device(s)</li>",
            escape(&change_time(h, c)),
            escape(&c.from),
            escape(&c.to),
            c.devices
        );
    }
    out.push_str("</ul></body></html>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_shared::protocol::messages::FeatureDrift;

    fn verdict(feature: &str, drifted: bool, score: f64) -> FeatureDrift {
        FeatureDrift {
            feature: feature.into(),
            test: DriftTest::Ks,
            score: if drifted { score * 1e-4 } else { 0.3 + score },
            threshold: 0.05,
            drifted,
            reference_rows: 100,
            current_rows: 150,
            missing: 0,
        }
    }

    fn model(version: &str, i: u64, drifted: bool) -> ModelDrift {
        ModelDrift {
            model: "bc".into(),
            version: version.into(),
            window_rows: 150,
            rows_seen: 150 * (i + 1),
            features: vec![
                verdict("mean_radius", drifted, (i % 7) as f64 / 10.0),
                verdict("mean_area", false, (i % 5) as f64 / 10.0),
            ],
            prediction: Some(verdict(PREDICTION, drifted && i.is_multiple_of(2), 0.1)),
        }
    }

    fn opened() -> (tempfile::TempDir, Store, History) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let history = History::open(&store).unwrap();
        (dir, store, history)
    }

    #[test]
    fn a_drift_episode_and_a_version_change_show_in_both_formats() {
        let (_dir, _store, history) = opened();
        for i in 0..30u64 {
            let version = if i < 25 { "1.0.0" } else { "1.1.0" };
            let report = DriftReport {
                at_ms: 1_020_000 + i * 60_000,
                models: vec![model(version, i, (10..20).contains(&i))],
            };
            history.put("dev-1", &report).unwrap();
        }
        let h = DriftHistory::build(&history, "bc", 0).unwrap();
        assert_eq!((h.windows, h.devices), (30, 1));
        assert_eq!(h.features[0].feature, "mean_radius", "most drifted first");
        assert_eq!(h.features[0].drifted, 10);
        assert_eq!(h.version_changes.len(), 1);
        assert_eq!(h.version_changes[0].devices, 1);
        let md = render_markdown(&h);
        assert!(md.contains("| mean_radius | 10 of 30 | 33% |"), "{md}");
        assert!(md.contains("1 other feature(s) never drifted"), "{md}");
        assert!(md.contains(": 1.0.0 → 1.1.0 on 1 device(s)"), "{md}");
        let html = render_html(&h);
        assert!(html.contains("<svg") && html.contains("mean_radius") && !html.contains("<script"), "{html}");
        assert!(html.contains("1.0.0 → 1.1.0 on 1 device(s)"), "{html}");
        let later = DriftHistory::build(&history, "bc", 1_020_000 + 30 * 60_000).unwrap();
        assert_eq!(later.windows, 0);
        assert!(render_markdown(&later).contains("No drift verdicts"));
    }

    /// Forty devices over `hours` hours, one verdict set each every 5 minutes: 1.0.0 first, half
    /// of them moved to 1.1.0 in the middle, a quarter of those back later; four run a canary
    /// of 1.2.0 beside their primary from a quarter of the time to seven eighths.
    fn fleet(history: &History, hours: u64) {
        let start = 7_200_000 + 90_000;
        let rounds = hours * 12;
        for r in 0..rounds {
            let at = start + r * 300_000;
            for d in 0..40u64 {
                let mut version = "1.0.0";
                if d % 2 == 0 && r >= rounds / 2 {
                    version = "1.1.0";
                }
                if d % 8 == 0 && r >= rounds * 3 / 4 {
                    version = "1.0.0";
                }
                let mut models = vec![model(version, r + d, (r + d) % 9 < 3)];
                if d < 4 && (rounds / 4..rounds * 7 / 8).contains(&r) {
                    models.push(model("1.2.0", r, r.is_multiple_of(5)));
                }
                history.put(&format!("dev-{d:02}"), &DriftReport { at_ms: at + d * 1_000, models }).unwrap();
            }
        }
    }

    #[test]
    fn the_report_from_the_rollups_is_the_report_from_every_verdict() {
        for hours in [3, 40] {
            let (_dir, _store, history) = opened();
            fleet(&history, hours);
            let end = 7_200_000 + hours * HOUR_MS;
            for since in [0, 7_200_000 + 95 * 60_000 + 30_000, end - 2 * HOUR_MS, end + 60_000] {
                for version in [None, Some("1.1.0"), Some("1.2.0")] {
                    let rolled = DriftHistory::build_for(&history, "bc", since, version).unwrap();
                    let scanned = DriftHistory::from_verdicts(&history, "bc", since, version).unwrap();
                    assert_eq!(rolled, scanned, "{hours} h since {since} {version:?}");
                }
            }
            let h = DriftHistory::build(&history, "bc", 0).unwrap();
            assert_eq!(h.devices, 40);
            assert!((20..=MAX_BUCKETS).contains(&h.bucket_starts_ms.len()), "{:?}", h.bucket_starts_ms);
            let rounds = hours * 12;
            assert_eq!(h.windows, rounds * 40 + 4 * (rounds * 7 / 8 - rounds / 4));
            // 20 moved to 1.1.0, 5 of them back; the canaries beside 1.0.0 are no change.
            let moved = |from: &str, to: &str| -> u64 {
                h.version_changes.iter().filter(|c| c.from == from && c.to == to).map(|c| c.devices).sum()
            };
            assert_eq!(
                (moved("1.0.0", "1.1.0"), moved("1.1.0", "1.0.0")),
                (20, 5),
                "{:?}",
                h.version_changes
            );
            assert_eq!(h.version_changes.iter().map(|c| c.devices).sum::<u64>(), 25);
            if hours > 24 {
                assert_eq!(h.bucket_ms % HOUR_MS, 0, "past a day, whole hours");
            }
        }
    }

    #[test]
    fn a_resent_report_adds_nothing() {
        let (_dir, _store, history) = opened();
        fleet(&history, 2);
        let before = DriftHistory::build(&history, "bc", 0).unwrap();
        let again = DriftReport {
            at_ms: 7_200_000 + 90_000 + 300_000 + 3_000,
            models: vec![model("1.0.0", 9, true)],
        };
        history.put("dev-03", &again).unwrap();
        assert_eq!(DriftHistory::build(&history, "bc", 0).unwrap(), before);
    }

    #[test]
    fn verdicts_from_before_the_rollups_or_behind_a_flipped_bucket_are_rolled_up_at_the_next_start() {
        let (_dir, store, history) = opened();
        fleet(&history, 30);
        let want = DriftHistory::build(&history, "bc", 0).unwrap();
        // A data directory from before the roll-ups: verdicts, no buckets, no marker.
        rollup::invalidate(&store, rollup::DRIFT_MARKER).unwrap();
        for tree in ["drift_1m", "drift_1h", "drift_devices"] {
            store.tree(tree).unwrap().clear().unwrap();
        }
        let reopened = History::open(&store).unwrap();
        assert_eq!(DriftHistory::build(&reopened, "bc", 0).unwrap(), want);
        // A flipped bucket is left out, not guessed, and the next start rebuilds.
        let hours = store.tree("drift_1h").unwrap();
        let (k, _) = hours.iter().nth(3).unwrap().unwrap();
        hours.insert(k, &[0xff; 9][..]).unwrap();
        assert!(DriftHistory::build(&reopened, "bc", 0).unwrap().windows < want.windows);
        assert!(!store.tree("meta").unwrap().contains_key(rollup::DRIFT_MARKER).unwrap());
        assert_eq!(DriftHistory::build(&History::open(&store).unwrap(), "bc", 0).unwrap(), want);
    }
}
