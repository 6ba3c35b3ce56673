//! Service-level objectives per model: availability (share of successful requests), a latency
//! percentile under a threshold, and an accuracy floor — with compliance over a rolling window
//! and the error-budget burn rate, computed fleet-wide from summed counts and merged latency
//! histograms (never from averaged percentiles).
//!
//! Data: every report window devices send is kept per model in sled tree `traffic`, key
//! `model \0 window_end_ms (u64 BE) \0 device \0 version`, value JSON [`TrafficWindow`] (the
//! first arrival; a resend changes nothing), and added into its version's minute and hour
//! buckets ([`rollup`]), and its device's labels' buckets, in the same transaction; objectives
//! live in tree `slos`, one JSON
//! [`SloSpec`] per model. Availability and latency are read from the buckets, so an objective
//! over 30 days costs the same at 10 devices as at 10,000; the window starts at the minute
//! holding `now − window`. Rollouts, which compare sets of devices, keep running sums of the raw
//! windows as they are stored ([`crate::monitoring::follow`]). Stored windows are published to the
//! store's feed ([`crate::base::feed`]).
//! Accuracy comes from ground-truth labels ([`crate::monitoring::quality`]) for predictions made
//! inside the window.
//!
//! Burn rate = the share of bad events ÷ the share the objective allows: 1 spends the budget
//! exactly over the window, 10 spends it ten times as fast. Bad events: failed requests
//! (availability), requests slower than the threshold (latency; the objective "p95 < 200 ms"
//! allows 5 % of requests above 200 ms), wrong labelled predictions (accuracy).

use std::collections::BTreeMap;

use outpost_shared::histogram::LogHistogram;
use outpost_shared::protocol::messages::{Report, ShadowReport};
use serde::{Deserialize, Serialize};

use sled::Transactional;

use crate::base::feed::Change;
use crate::base::store::{Store, StoreError, encode};

pub mod rollup;
mod status;

pub use status::{Objective, SloStatus};

use rollup::{HOUR_MS, MINUTE_MS};

/// A model's objectives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SloSpec {
    /// Target share of successful requests, e.g. 0.99.
    pub availability: Option<f64>,
    /// e.g. p95 < 200 ms: `{"percentile": 0.95, "threshold_ms": 200}`.
    pub latency: Option<LatencyObjective>,
    /// Floor for accuracy on labelled predictions, e.g. 0.85.
    pub accuracy: Option<f64>,
    /// The rolling window compliance is judged over.
    pub window_secs: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencyObjective {
    pub percentile: f64,
    pub threshold_ms: f64,
}

/// What is wrong with an objective.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SloError {
    #[error("`{field}` must be a share in (0, 1), e.g. 0.99; got {value}")]
    NotAShare { field: &'static str, value: f64 },
    #[error("`latency.threshold_ms` must be above 0; got {0}")]
    Threshold(f64),
    #[error("give at least one objective: availability, latency or accuracy")]
    NoObjective,
    #[error("`window_secs` must be between 60 (1 minute) and 7776000 (90 days)")]
    Window,
}

impl SloSpec {
    pub fn validate(&self) -> Result<(), SloError> {
        let share = |field: &'static str, v: Option<f64>| match v {
            Some(value) if !(value > 0.0 && value < 1.0) => Err(SloError::NotAShare { field, value }),
            _ => Ok(()),
        };
        share("availability", self.availability)?;
        share("accuracy", self.accuracy)?;
        if let Some(l) = self.latency {
            share("latency.percentile", Some(l.percentile))?;
            if !(l.threshold_ms.is_finite() && l.threshold_ms > 0.0) {
                return Err(SloError::Threshold(l.threshold_ms));
            }
        }
        if self.availability.is_none() && self.latency.is_none() && self.accuracy.is_none() {
            return Err(SloError::NoObjective);
        }
        if !(60..=90 * 86_400).contains(&self.window_secs) {
            return Err(SloError::Window);
        }
        Ok(())
    }
}

/// One device's traffic of one model version in one report window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrafficWindow {
    pub requests: u64,
    pub errors: u64,
    pub latency_us: LogHistogram,
}

/// Which roll-up tree a window's bucket is in, as [`Slos::put_reports`] sums them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Bucket {
    Minute,
    Hour,
    LabelMinute,
    LabelHour,
}

/// A shadow's agreement with its primary in one device's window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShadowCounts {
    pub primary: String,
    pub compared: u64,
    pub agreed: u64,
}

/// Equal time buckets over `[from_ms, to_ms]`: the one bucket geometry the dashboard's charts
/// and the timelines feeding them (traffic here, labels in `quality`) share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeBuckets {
    pub from_ms: u64,
    pub to_ms: u64,
    pub width_ms: u64,
    pub count: usize,
}

impl TimeBuckets {
    pub fn new(from_ms: u64, to_ms: u64, count: usize) -> TimeBuckets {
        let count = count.max(1);
        let width_ms = (to_ms.saturating_sub(from_ms) / count as u64).max(1);
        TimeBuckets { from_ms, to_ms, width_ms, count }
    }

    /// The bucket holding `at_ms` (a time at the very end falls in the last one).
    pub fn index(&self, at_ms: u64) -> usize {
        ((at_ms.saturating_sub(self.from_ms) / self.width_ms) as usize).min(self.count - 1)
    }

    /// Each bucket's start (unix ms).
    pub fn starts(&self) -> Vec<u64> {
        (0..self.count as u64).map(|i| self.from_ms + i * self.width_ms).collect()
    }
}

/// Objectives and traffic history.
#[derive(Debug, Clone)]
pub struct Slos {
    specs: sled::Tree,
    traffic: sled::Tree,
    /// Shadow agreement per window: same keys as `traffic` (the shadow's version), JSON
    /// [`ShadowCounts`].
    shadow: sled::Tree,
    /// Roll-ups of `traffic` per model version: 1-minute and 1-hour buckets ([`rollup`]).
    minutes: sled::Tree,
    hours: sled::Tree,
    /// The same per value of each device label ([`rollup::label_part`]).
    label_minutes: sled::Tree,
    label_hours: sled::Tree,
    store: Store,
}

/// `(model, window_end_ms, device, version)` of a `traffic` or `shadow` key.
pub fn parse_traffic_key(key: &[u8]) -> Option<(&str, u64, &str, &str)> {
    let split = key.iter().position(|b| *b == 0)?;
    let model = std::str::from_utf8(&key[..split]).ok()?;
    let at = u64::from_be_bytes(key.get(split + 1..split + 9)?.try_into().ok()?);
    let rest = key.get(split + 10..)?;
    let mut parts = rest.splitn(2, |b| *b == 0);
    let (device, version) = (parts.next()?, parts.next()?);
    Some((model, at, std::str::from_utf8(device).ok()?, std::str::from_utf8(version).ok()?))
}

/// The key of what `device` reported about `model`'s `version` at `at_ms`: `model \0 at_ms (u64
/// BE) \0 device \0 version` — report windows, shadow windows and drift verdicts alike.
pub(crate) fn record_key(model: &str, at_ms: u64, device: &str, version: &str) -> Vec<u8> {
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

/// The trees of report windows, as their changes are published ([`crate::base::feed`]).
pub const TRAFFIC: &str = "traffic";
pub const SHADOW: &str = "shadow";

impl Slos {
    pub fn open(store: &Store) -> Result<Slos, StoreError> {
        let slos = Slos {
            specs: store.tree("slos")?,
            traffic: store.tree(TRAFFIC)?,
            shadow: store.tree(SHADOW)?,
            minutes: store.tree("traffic_1m")?,
            hours: store.tree("traffic_1h")?,
            label_minutes: store.tree("traffic_by_label_1m")?,
            label_hours: store.tree("traffic_by_label_1h")?,
            store: store.clone(),
        };
        rollup::ensure_built(store, &slos.traffic, &slos.minutes, &slos.hours)?;
        Ok(slos)
    }

    /// Rolls every stored window up by its device's labels unless that was done (a data
    /// directory from before these roll-ups, a restore, or one where a bucket was unreadable).
    /// Devices belong to the floor above: the caller reads their labels, only when the build is
    /// due. Ingest calls this before it stores anything.
    pub fn ensure_rolled_up_by_label(
        &self,
        labels: impl FnOnce() -> Result<rollup::LabelsByDevice, StoreError>,
    ) -> Result<(), StoreError> {
        rollup::ensure_built_by_label(
            &self.store,
            &self.traffic,
            &self.label_minutes,
            &self.label_hours,
            labels,
        )
    }

    fn err(&self, e: sled::Error) -> StoreError {
        self.store.storage_error(e)
    }

    /// Keeps a report's traffic per model version, and adds each window new to the store into
    /// its minute and hour buckets, per version and per value of each of the device's `labels`,
    /// in the same transaction (a resend adds nothing).
    pub fn put_report(
        &self,
        device: &str,
        labels: &BTreeMap<String, String>,
        report: &Report,
    ) -> Result<(), StoreError> {
        self.put_reports(&[(device, labels, report)])
    }

    /// [`Slos::put_report`] for many reports (device, its labels, report) in one transaction: the
    /// windows new to the store are summed per bucket first, so a bucket that every window of a
    /// batch goes into — a model version's minute, a site's — is read and written once, not once
    /// per window. The same window twice in `reports` counts once.
    pub fn put_reports(
        &self,
        reports: &[(&str, &BTreeMap<String, String>, &Report)],
    ) -> Result<(), StoreError> {
        // Per window: raw key, encoded value, bucket keys (minute, hour, then per device label
        // minute and hour, each tagged with its tree), value.
        let mut windows = Vec::new();
        for (device, labels, report) in reports {
            let end = report.window_end_ms;
            let (minute_start, hour_start) = (end - end % MINUTE_MS, end - end % HOUR_MS);
            let parts: Vec<String> = labels.iter().map(|(k, v)| rollup::label_part(k, v)).collect();
            for w in report.models.iter().filter(|w| w.requests > 0) {
                let value = TrafficWindow {
                    requests: w.requests,
                    errors: w.errors,
                    latency_us: w.latency_us.clone(),
                };
                let raw = record_key(&w.model, end, device, &w.version);
                let encoded = encode("traffic window", &value)?;
                let mut buckets = vec![
                    (Bucket::Minute, rollup::key(&w.model, minute_start, &w.version)),
                    (Bucket::Hour, rollup::key(&w.model, hour_start, &w.version)),
                ];
                for p in &parts {
                    buckets.push((Bucket::LabelMinute, rollup::key(&w.model, minute_start, p)));
                    buckets.push((Bucket::LabelHour, rollup::key(&w.model, hour_start, p)));
                }
                windows.push((raw, encoded, buckets, value));
            }
        }
        if windows.is_empty() {
            return Ok(());
        }
        let trees = (&self.traffic, &self.minutes, &self.hours, &self.label_minutes, &self.label_hours);
        let outcome = self.store.feed().commit(|| {
            let outcome = trees.transaction(|(raw, minutes, hours, label_minutes, label_hours)| {
                let mut new = Vec::new();
                let mut sums: BTreeMap<&(Bucket, Vec<u8>), TrafficWindow> = BTreeMap::new();
                for (i, (key, encoded, buckets, value)) in windows.iter().enumerate() {
                    // (A window met earlier in this transaction reads as stored: its insert.)
                    if raw.get(key)?.is_some() {
                        continue;
                    }
                    raw.insert(key.as_slice(), encoded.as_slice())?;
                    new.push(i);
                    for bucket in buckets {
                        rollup::add(sums.entry(bucket).or_default(), value);
                    }
                }
                let mut readable = true;
                for ((which, key), sum) in sums {
                    let tree = match which {
                        Bucket::Minute => minutes,
                        Bucket::Hour => hours,
                        Bucket::LabelMinute => label_minutes,
                        Bucket::LabelHour => label_hours,
                    };
                    readable &= rollup::update_in(tree, key, |b: &mut TrafficWindow| rollup::add(b, &sum))?;
                }
                Ok((readable, new))
            });
            let changes = outcome.as_ref().map_or_else(
                |_| Vec::new(),
                |(_, new)| {
                    new.iter()
                        .map(|&i| Change {
                            tree: TRAFFIC,
                            key: windows[i].0.clone(),
                            before: None,
                            after: windows[i].1.clone(),
                        })
                        .collect()
                },
            );
            (outcome.map(|(readable, _)| readable), changes)
        });
        let devices = match reports {
            [(device, ..)] => (*device).to_owned(),
            _ => format!("{} reports", reports.len()),
        };
        rollup::settle(&self.store, &[rollup::MARKER, rollup::BY_LABEL_MARKER], "traffic", &devices, outcome)
    }

    /// Keeps a shadow report's agreement per model version.
    /// (The first arrival of a window is kept; a resend changes nothing.)
    pub fn put_shadow(&self, device: &str, report: &ShadowReport) -> Result<(), StoreError> {
        let mut windows = Vec::new();
        for w in &report.models {
            let value = ShadowCounts { primary: w.primary.clone(), compared: w.compared, agreed: w.agreed };
            let key = record_key(&w.model, report.window_end_ms, device, &w.version);
            windows.push((key, encode("shadow window", &value)?));
        }
        self.store.feed().commit(|| {
            let outcome = self.shadow.transaction(|tree| {
                let mut new = Vec::new();
                for (key, encoded) in &windows {
                    if tree.get(key)?.is_none() {
                        tree.insert(key.as_slice(), encoded.as_slice())?;
                        new.push(Change {
                            tree: SHADOW,
                            key: key.clone(),
                            before: None,
                            after: encoded.clone(),
                        });
                    }
                }
                Ok::<_, sled::transaction::ConflictableTransactionError<()>>(new)
            });
            match outcome {
                Ok(changes) => (Ok(()), changes),
                Err(e) => (Err(self.transaction_error(e)), Vec::new()),
            }
        })
    }

    fn transaction_error(&self, e: sled::transaction::TransactionError<()>) -> StoreError {
        match e {
            sled::transaction::TransactionError::Abort(()) => {
                StoreError::Corrupt { key: "shadow".into(), detail: "transaction aborted".into() }
            }
            sled::transaction::TransactionError::Storage(e) => self.err(e),
        }
    }

    /// Rows compared and agreed of shadow windows of `model` ending in `[from_ms, to_ms]`
    /// whose device and version `keep` accepts.
    pub fn shadow_where(
        &self,
        model: &str,
        from_ms: u64,
        to_ms: u64,
        keep: impl Fn(&str, &str) -> bool,
    ) -> Result<(u64, u64), StoreError> {
        let (mut compared, mut agreed) = (0, 0);
        self.windows_where(&self.shadow, model, from_ms, to_ms, keep, |_, _, _, v| {
            if let Ok(c) = serde_json::from_slice::<ShadowCounts>(v) {
                compared += c.compared;
                agreed += c.agreed;
            }
        })?;
        Ok((compared, agreed))
    }

    /// Calls `each(device, value)` for the windows of `model` in `tree` (keys as in `traffic`)
    /// ending in `[from_ms, to_ms]` whose device and version `keep` accepts.
    fn windows_where(
        &self,
        tree: &sled::Tree,
        model: &str,
        from_ms: u64,
        to_ms: u64,
        keep: impl Fn(&str, &str) -> bool,
        mut each: impl FnMut(u64, &str, &str, &[u8]),
    ) -> Result<(), StoreError> {
        let mut start = model.as_bytes().to_vec();
        start.push(0);
        let mut end = start.clone();
        start.extend_from_slice(&from_ms.to_be_bytes());
        end.extend_from_slice(&to_ms.saturating_add(1).to_be_bytes());
        for item in tree.range(start..end) {
            let (k, v) = item.map_err(|e| self.err(e))?;
            let Some((_, at, device, version)) = parse_traffic_key(&k) else { continue };
            if keep(device, version) {
                each(at, device, version, &v);
            }
        }
        Ok(())
    }

    /// The trees of report windows and of shadow windows (keys as [`parse_traffic_key`] reads),
    /// for a reader that follows them ([`crate::monitoring::follow`]).
    pub(crate) fn window_trees(&self) -> (&sled::Tree, &sled::Tree) {
        (&self.traffic, &self.shadow)
    }

    pub fn set(&self, model: &str, spec: &SloSpec) -> Result<(), StoreError> {
        self.specs
            .insert(model.as_bytes(), encode(&format!("slos/{model}"), spec)?)
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub fn get(&self, model: &str) -> Result<Option<SloSpec>, StoreError> {
        Ok(self
            .specs
            .get(model.as_bytes())
            .map_err(|e| self.err(e))?
            .and_then(|v| serde_json::from_slice(&v).ok()))
    }

    /// Every model with objectives.
    pub fn all(&self) -> Result<Vec<(String, SloSpec)>, StoreError> {
        let mut out = Vec::new();
        for item in self.specs.iter() {
            let (k, v) = item.map_err(|e| self.err(e))?;
            if let Ok(spec) = serde_json::from_slice(&v) {
                out.push((String::from_utf8_lossy(&k).into_owned(), spec));
            }
        }
        Ok(out)
    }

    /// Calls `each(bucket_start, version, bucket)` for `model`'s buckets in `tree` (minutes or
    /// hours) starting in `[from_ms, until_ms)`.
    fn buckets(
        &self,
        tree: &sled::Tree,
        model: &str,
        from_ms: u64,
        until_ms: u64,
        each: impl FnMut(u64, &str, TrafficWindow),
    ) -> Result<(), StoreError> {
        rollup::each_bucket(&self.store, tree, rollup::MARKER, "traffic", model, from_ms, until_ms, each)
    }

    /// Summed counts and the merged latency histogram of `model`'s windows ending in the whole
    /// minutes from the one holding `from_ms` to the one holding `to_ms`, from the roll-ups:
    /// hour buckets for the whole hours in between, minute buckets at both ends.
    pub fn rolled_up(&self, model: &str, from_ms: u64, to_ms: u64) -> Result<TrafficWindow, StoreError> {
        let mut total = TrafficWindow::default();
        let trees = [&self.minutes, &self.hours];
        rollup::each_spanning(
            &self.store,
            trees,
            rollup::MARKER,
            "traffic",
            model,
            from_ms,
            to_ms,
            |_, _, w| rollup::add(&mut total, &w),
        )?;
        Ok(total)
    }

    /// `model`'s traffic (every version) per `(device label, value)` over the whole minutes from
    /// the one holding `from_ms` to the one holding `to_ms`, from the roll-ups by device label:
    /// what a per-label breakdown shows. Devices without a label are in no value of it.
    pub fn rolled_up_by_label(
        &self,
        model: &str,
        from_ms: u64,
        to_ms: u64,
    ) -> Result<BTreeMap<(String, String), TrafficWindow>, StoreError> {
        let mut out: BTreeMap<(String, String), TrafficWindow> = BTreeMap::new();
        rollup::each_spanning(
            &self.store,
            [&self.label_minutes, &self.label_hours],
            rollup::BY_LABEL_MARKER,
            "traffic by label",
            model,
            from_ms,
            to_ms,
            |_, part, bucket: TrafficWindow| {
                if let Some((label, value, _)) = rollup::parse_label_part(part) {
                    rollup::add(out.entry((label.to_owned(), value.to_owned())).or_default(), &bucket);
                }
            },
        )?;
        Ok(out)
    }

    /// Like the fleet-wide sum, for the windows of the devices and versions `keep` accepts
    /// (a rollout's candidate or baseline side).
    pub fn traffic_where(
        &self,
        model: &str,
        from_ms: u64,
        to_ms: u64,
        keep: impl Fn(&str, &str) -> bool,
    ) -> Result<(u64, u64, LogHistogram, usize), StoreError> {
        let (mut requests, mut errors, mut latency) = (0, 0, LogHistogram::default());
        let mut devices = std::collections::BTreeSet::new();
        self.windows_where(&self.traffic, model, from_ms, to_ms, keep, |_, device, _, v| {
            if let Ok(w) = serde_json::from_slice::<TrafficWindow>(v) {
                requests += w.requests;
                errors += w.errors;
                let _ = latency.merge(&w.latency_us);
                devices.insert(device.to_owned());
            }
        })?;
        Ok((requests, errors, latency, devices.len()))
    }

    /// Requests, errors and latency of `model` per device over `[from_ms, to_ms]` (every
    /// version), from the raw windows: the reference the roll-ups by label are checked (and
    /// benchmarked) against.
    pub fn traffic_by_device(
        &self,
        model: &str,
        from_ms: u64,
        to_ms: u64,
    ) -> Result<BTreeMap<String, TrafficWindow>, StoreError> {
        let mut out: BTreeMap<String, TrafficWindow> = BTreeMap::new();
        self.windows_where(
            &self.traffic,
            model,
            from_ms,
            to_ms,
            |_, _| true,
            |_, device, _, v| {
                if let Ok(w) = serde_json::from_slice::<TrafficWindow>(v) {
                    let total = out.entry(device.to_owned()).or_insert_with(|| TrafficWindow {
                        requests: 0,
                        errors: 0,
                        latency_us: LogHistogram::default(),
                    });
                    total.requests += w.requests;
                    total.errors += w.errors;
                    let _ = total.latency_us.merge(&w.latency_us);
                }
            },
        )?;
        Ok(out)
    }

    /// When the oldest window `keep` accepts in `[from_ms, to_ms]` ended, if there is one: how
    /// far back a fleet that only started reporting has data.
    pub fn oldest_window_where(
        &self,
        model: &str,
        from_ms: u64,
        to_ms: u64,
        keep: impl Fn(&str, &str) -> bool,
    ) -> Result<Option<u64>, StoreError> {
        let mut oldest: Option<u64> = None;
        self.windows_where(&self.traffic, model, from_ms, to_ms, keep, |at, _, _, _| {
            oldest = Some(oldest.map_or(at, |o| o.min(at)));
        })?;
        Ok(oldest)
    }

    /// `model`'s traffic in each of `grid`'s buckets, per version: (requests, errors, merged
    /// latency histogram in µs). For the dashboard's charts: read from the minute roll-ups (a
    /// minute goes to the chart bucket holding its start) when the chart's buckets are a minute
    /// or wider, else from the raw windows (by their end).
    pub fn timeline(
        &self,
        model: &str,
        grid: &TimeBuckets,
    ) -> Result<Vec<BTreeMap<String, TrafficWindow>>, StoreError> {
        let mut out = vec![BTreeMap::new(); grid.count];
        let mut cell = |at: u64, version: &str, w: &TrafficWindow| {
            rollup::add(out[grid.index(at)].entry(version.to_owned()).or_default(), w);
        };
        if grid.width_ms >= MINUTE_MS {
            let from = grid.from_ms - grid.from_ms % MINUTE_MS;
            self.buckets(&self.minutes, model, from, grid.to_ms.saturating_add(1), |at, version, w| {
                cell(at, version, &w)
            })?;
        } else {
            self.windows_where(
                &self.traffic,
                model,
                grid.from_ms,
                grid.to_ms,
                |_, _| true,
                |at, _, version, v| {
                    if let Ok(w) = serde_json::from_slice::<TrafficWindow>(v) {
                        cell(at, version, &w)
                    }
                },
            )?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
