//! The drift history in sled (the layout is in [`crate::monitoring::report`]'s header):
//! [`History`](super::History) dispatches here when the store is the embedded one.

use std::collections::{BTreeMap, BTreeSet};

use outpost_shared::protocol::messages::{DriftReport, ModelDrift};
use sled::Transactional;

use super::{DeviceDrift, DriftBucket, count_verdict, encode, versions_per_model};
use crate::base::store::{Store, StoreError};
use crate::monitoring::slo::record_key as key;
use crate::monitoring::slo::rollup::{self, HOUR_MS, MINUTE_MS, Width};

#[derive(Debug, Clone)]
pub(super) struct SledHistory {
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
        history: &SledHistory,
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

    fn finish(mut self, history: &SledHistory) -> Result<(), StoreError> {
        for (i, tree) in [&history.minutes, &history.hours].into_iter().enumerate() {
            history.write_buckets(tree, &mut self.open[i])?;
        }
        if let Some((model, _)) = &self.current {
            history.write_devices(model, &mut self.devices)?;
        }
        Ok(())
    }
}

impl SledHistory {
    pub(super) fn open(store: &Store) -> Result<SledHistory, StoreError> {
        let history = SledHistory {
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

    pub(super) fn put_many(&self, reports: &[(&str, &DriftReport)]) -> Result<(), StoreError> {
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
