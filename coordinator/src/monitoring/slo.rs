//! Service-level objectives per model: availability (share of successful requests), a latency
//! percentile under a threshold, and an accuracy floor — with compliance over a rolling window
//! and the error-budget burn rate, computed fleet-wide from summed counts and merged latency
//! histograms (never from averaged percentiles).
//!
//! Data (sled, [`sled_backend`]): every report window devices send is kept per model in tree
//! `traffic`, key
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
//! On PostgreSQL ([`pg`], migration `0005_traffic.sql`): the same records in tables — windows
//! by `(model, end, device, version)`, roll-ups by `(model, by label, width, start, label,
//! value, shard)` — where a 30-day objective is one indexed query over at most 720 hour and 118
//! minute rows per version and shard.
//!
//! Burn rate = the share of bad events ÷ the share the objective allows: 1 spends the budget
//! exactly over the window, 10 spends it ten times as fast. Bad events: failed requests
//! (availability), requests slower than the threshold (latency; the objective "p95 < 200 ms"
//! allows 5 % of requests above 200 ms), wrong labelled predictions (accuracy).

use std::collections::{BTreeMap, BTreeSet};

use outpost_shared::histogram::LogHistogram;
use outpost_shared::protocol::messages::{Report, ShadowReport};
use serde::{Deserialize, Serialize};

use crate::base::pg::store::PgStore;
use crate::base::store::{Store, StoreError};

pub(crate) mod pg;
pub mod rollup;
mod sled_backend;
mod status;

pub use status::{Objective, SloStatus};

use rollup::{HOUR_MS, MINUTE_MS, Width};

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

/// One report window new to the store, as both backends store it.
pub(crate) struct NewWindow<'a> {
    model: &'a str,
    end_ms: u64,
    device: &'a str,
    version: &'a str,
    window: TrafficWindow,
    /// The sending device's labels (its by-label buckets).
    labels: &'a BTreeMap<String, String>,
}

impl NewWindow<'_> {
    /// The starts of the minute and the hour holding the window's end.
    fn bucket_starts(&self) -> (u64, u64) {
        (self.end_ms - self.end_ms % MINUTE_MS, self.end_ms - self.end_ms % HOUR_MS)
    }
}

/// Objectives and traffic history.
#[derive(Debug, Clone)]
pub struct Slos {
    backend: Backend,
}

#[derive(Debug, Clone)]
enum Backend {
    Sled(sled_backend::SledSlos),
    Postgres(pg::PgSlos),
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

impl Slos {
    /// Objectives and traffic in the coordinator's sled database (its roll-ups built first if
    /// it is from before them).
    pub fn open(store: &Store) -> Result<Slos, StoreError> {
        Ok(Slos { backend: Backend::Sled(sled_backend::SledSlos::open(store)?) })
    }

    /// Objectives and traffic in PostgreSQL (its schema brought up to date first:
    /// [`crate::base::pg::migrate`]).
    pub fn open_postgres(store: &PgStore) -> Slos {
        Slos { backend: Backend::Postgres(pg::PgSlos::open(store)) }
    }

    /// Rolls every stored window up by its device's labels unless that was done (a data
    /// directory from before these roll-ups, a restore, or one where a bucket was unreadable).
    /// Devices belong to the floor above: the caller reads their labels, only when the build is
    /// due. Ingest calls this before it stores anything. On PostgreSQL every window has been
    /// rolled up by label as it was stored: nothing to do.
    pub fn ensure_rolled_up_by_label(
        &self,
        labels: impl FnOnce() -> Result<rollup::LabelsByDevice, StoreError>,
    ) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sled(s) => s.ensure_rolled_up_by_label(labels),
            Backend::Postgres(_) => Ok(()),
        }
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
    /// per window. The same window twice in `reports` counts once (the first).
    pub fn put_reports(
        &self,
        reports: &[(&str, &BTreeMap<String, String>, &Report)],
    ) -> Result<(), StoreError> {
        let mut windows = Vec::new();
        for (device, labels, report) in reports {
            for w in report.models.iter().filter(|w| w.requests > 0) {
                windows.push(NewWindow {
                    model: &w.model,
                    end_ms: report.window_end_ms,
                    device,
                    version: &w.version,
                    window: TrafficWindow {
                        requests: w.requests,
                        errors: w.errors,
                        latency_us: w.latency_us.clone(),
                    },
                    labels,
                });
            }
        }
        if windows.is_empty() {
            return Ok(());
        }
        let devices = match reports {
            [(device, ..)] => (*device).to_owned(),
            _ => format!("{} reports", reports.len()),
        };
        dispatch!(self.put_windows(&windows, &devices))
    }

    /// Keeps a shadow report's agreement per model version.
    /// (The first arrival of a window is kept; a resend changes nothing.)
    pub fn put_shadow(&self, device: &str, report: &ShadowReport) -> Result<(), StoreError> {
        dispatch!(self.put_shadow(device, report))
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
        let each = |_, device: &str, version: &str, c: ShadowCounts| {
            if keep(device, version) {
                compared += c.compared;
                agreed += c.agreed;
            }
        };
        dispatch!(self.each_shadow(model, from_ms, to_ms, each))?;
        Ok((compared, agreed))
    }

    /// Calls `each(end_ms, device, version, window)` for the report windows of `model` ending
    /// in `[from_ms, to_ms]`.
    fn each_window(
        &self,
        model: &str,
        from_ms: u64,
        to_ms: u64,
        each: impl FnMut(u64, &str, &str, TrafficWindow),
    ) -> Result<(), StoreError> {
        dispatch!(self.each_window(model, from_ms, to_ms, each))
    }

    /// The trees of report windows and of shadow windows (keys as [`parse_traffic_key`] reads),
    /// for a reader that follows them ([`crate::monitoring::follow`]); `None` on PostgreSQL,
    /// where records are not followed yet.
    /// The PostgreSQL store the windows are on, if they are (what a follower reads there).
    pub(crate) fn postgres(&self) -> Option<&PgStore> {
        match &self.backend {
            Backend::Sled(_) => None,
            Backend::Postgres(p) => Some(&p.store),
        }
    }

    pub(crate) fn window_trees(&self) -> Option<(&sled::Tree, &sled::Tree)> {
        match &self.backend {
            Backend::Sled(s) => Some(s.window_trees()),
            Backend::Postgres(_) => None,
        }
    }

    pub fn set(&self, model: &str, spec: &SloSpec) -> Result<(), StoreError> {
        dispatch!(self.set(model, spec))
    }

    pub fn get(&self, model: &str) -> Result<Option<SloSpec>, StoreError> {
        dispatch!(self.get(model))
    }

    /// Every model with objectives.
    pub fn all(&self) -> Result<Vec<(String, SloSpec)>, StoreError> {
        dispatch!(self.all())
    }

    /// Summed counts and the merged latency histogram of `model`'s windows ending in the whole
    /// minutes from the one holding `from_ms` to the one holding `to_ms`, from the roll-ups:
    /// hour buckets for the whole hours in between, minute buckets at both ends.
    pub fn rolled_up(&self, model: &str, from_ms: u64, to_ms: u64) -> Result<TrafficWindow, StoreError> {
        let mut total = TrafficWindow::default();
        let spans = rollup::spans(from_ms, to_ms);
        dispatch!(self.each_bucket(false, model, &spans, |_, _, _, w| rollup::add(&mut total, &w)))?;
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
        let spans = rollup::spans(from_ms, to_ms);
        let each = |_, label: &str, value: &str, bucket: TrafficWindow| {
            rollup::add(out.entry((label.to_owned(), value.to_owned())).or_default(), &bucket);
        };
        dispatch!(self.each_bucket(true, model, &spans, each))?;
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
        let mut total = TrafficWindow::default();
        let mut devices = BTreeSet::new();
        self.each_window(model, from_ms, to_ms, |_, device, version, w| {
            if keep(device, version) {
                rollup::add(&mut total, &w);
                devices.insert(device.to_owned());
            }
        })?;
        Ok((total.requests, total.errors, total.latency_us, devices.len()))
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
        self.each_window(model, from_ms, to_ms, |_, device, _, w| {
            rollup::add(out.entry(device.to_owned()).or_default(), &w);
        })?;
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
        self.each_window(model, from_ms, to_ms, |at, device, version, _| {
            if keep(device, version) {
                oldest = Some(oldest.map_or(at, |o| o.min(at)));
            }
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
            let spans = [(Width::Minute, from, grid.to_ms.saturating_add(1))];
            dispatch!(self.each_bucket(false, model, &spans, |at, _, version, w| cell(at, version, &w)))?;
        } else {
            self.each_window(model, grid.from_ms, grid.to_ms, |at, _, version, w| cell(at, version, &w))?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
