//! Traffic roll-ups: each report window a device sends is also added into its model version's
//! 1-minute and 1-hour buckets, so an objective over 30 days reads at most 720 hour buckets and
//! 118 minute buckets per version instead of every device's every window (10,000 devices
//! reporting every 10 s leave 2.6 billion windows in 30 days).
//!
//! Data: sled trees `traffic_1m` and `traffic_1h`, key `model \0 bucket_start_ms (u64 BE) \0
//! version` (the raw `traffic` key without the device), value a postcard [`TrafficWindow`]. A
//! window goes into the buckets holding its end, in the same transaction that stores it raw, and
//! only when its raw key is new: a resend adds nothing, so a bucket is exactly the sum of the raw
//! windows stored into it. Retention prunes a bucket once all of it is older than the cutoff.
//!
//! Labels are rolled up the same way by [`crate::monitoring::quality`] (trees `labels_1m`,
//! `labels_1h`), with the geometry of [`spans`].
//!
//! By device label: trees `traffic_by_label_1m` / `traffic_by_label_1h` hold the same sums per
//! value of each label the sending device carries, key `model \0 bucket_start \0 label \0 value`
//! ([`label_part`]); `labels_by_label_1m` / `_1h` likewise for labels, `… \0 label \0 value \0
//! version`. A device's labels are set when it enrols and never change, so these equal the raw
//! windows grouped by their devices' labels: what the dashboard's per-label breakdowns and
//! quality split by a label read, instead of every window in the range. A device with L labels
//! moves 2 + 2L traffic buckets per window.
//!
//! A data directory from before roll-ups (no `meta` key [`MARKER`]) is rolled up from its raw
//! windows once, when it is opened; a bucket found unreadable is started afresh and the marker
//! removed, so the next start rolls everything up again from the raw windows. Backups leave the
//! markers out, so a restored coordinator rolls up afresh what it restored.

use std::sync::Mutex;

use sled::transaction::{ConflictableTransactionError, TransactionalTree};

use super::TrafficWindow;
use crate::base::store::{Store, StoreError};

pub const MINUTE_MS: u64 = 60_000;
pub const HOUR_MS: u64 = 3_600_000;

/// `meta` key present once every raw window stored is in the roll-ups.
pub const MARKER: &[u8] = crate::base::store::DERIVED_MARKERS[0];

/// `meta` key present once every stored label is in the label roll-ups
/// ([`crate::monitoring::quality`]).
pub const LABELS_MARKER: &[u8] = crate::base::store::DERIVED_MARKERS[1];

/// `meta` key present once every raw window is in the roll-ups by device label.
pub const BY_LABEL_MARKER: &[u8] = crate::base::store::DERIVED_MARKERS[2];

/// `meta` key present once every stored label is in the label roll-ups by device label.
pub const LABELS_BY_LABEL_MARKER: &[u8] = crate::base::store::DERIVED_MARKERS[3];

/// `meta` key present once every stored drift verdict is in the drift roll-ups
/// ([`crate::monitoring::report`]).
pub const DRIFT_MARKER: &[u8] = crate::base::store::DERIVED_MARKERS[4];

/// What follows the bucket start in a by-label key: `label \0 value` (device labels are letters,
/// digits, `-`, `_` and `.`, never `\0`).
pub fn label_part(label: &str, value: &str) -> String {
    format!("{label}\0{value}")
}

/// `(label, value, the rest)` of what follows the bucket start in a by-label key.
pub fn parse_label_part(part: &str) -> Option<(&str, &str, Option<&str>)> {
    let mut pieces = part.splitn(3, '\0');
    Some((pieces.next()?, pieces.next()?, pieces.next()))
}

/// Every device's labels (revoked ones too: their windows stay in the history).
pub type LabelsByDevice = std::collections::HashMap<String, std::collections::BTreeMap<String, String>>;

/// The key of `model`'s `version` bucket starting at `start_ms`.
pub fn key(model: &str, start_ms: u64, version: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(model.len() + version.len() + 10);
    k.extend_from_slice(model.as_bytes());
    k.push(0);
    k.extend_from_slice(&start_ms.to_be_bytes());
    k.push(0);
    k.extend_from_slice(version.as_bytes());
    k
}

/// The bucket start and version of a roll-up key (the model is the caller's prefix).
pub fn parse(key: &[u8], model_len: usize) -> Option<(u64, &str)> {
    let at = u64::from_be_bytes(key.get(model_len + 1..model_len + 9)?.try_into().ok()?);
    let version = std::str::from_utf8(key.get(model_len + 10..)?).ok()?;
    Some((at, version))
}

/// A bucket width: a minute or an hour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Width {
    Minute,
    Hour,
}

impl Width {
    pub fn ms(self) -> u64 {
        match self {
            Width::Minute => MINUTE_MS,
            Width::Hour => HOUR_MS,
        }
    }
}

/// The buckets that cover the whole minutes from the one holding `from_ms` to the one holding
/// `to_ms`: `(width, first bucket start, end of the starts (exclusive))` — hour buckets for the
/// whole hours in between, minute buckets at both ends; at most 118 minutes and one hour per
/// hour of range.
pub fn spans(from_ms: u64, to_ms: u64) -> Vec<(Width, u64, u64)> {
    let from = from_ms - from_ms % MINUTE_MS;
    let until = to_ms.saturating_add(1);
    let first_hour = from.div_ceil(HOUR_MS).saturating_mul(HOUR_MS);
    let last_hour = to_ms - to_ms % HOUR_MS;
    if first_hour < last_hour {
        vec![
            (Width::Minute, from, first_hour),
            (Width::Hour, first_hour, last_hour),
            (Width::Minute, last_hour, until),
        ]
    } else {
        vec![(Width::Minute, from, until)]
    }
}

/// `spans` as the three `bigint` columns a PostgreSQL roll-up read joins its rows to
/// (`unnest(widths, firsts, ends)`): each span's width, first bucket start, and end of its starts.
pub fn span_columns(spans: &[(Width, u64, u64)]) -> [Vec<i64>; 3] {
    use crate::base::pg::store::to_sql;
    [
        spans.iter().map(|s| to_sql(s.0.ms())).collect(),
        spans.iter().map(|s| to_sql(s.1)).collect(),
        spans.iter().map(|s| to_sql(s.2)).collect(),
    ]
}

/// Adds `window` into `into` (histograms were validated at ingest; one that does not merge
/// is left out of the latency, as everywhere else).
pub fn add(into: &mut TrafficWindow, window: &TrafficWindow) {
    into.requests += window.requests;
    into.errors += window.errors;
    let _ = into.latency_us.merge(&window.latency_us);
}

fn encode<T: serde::Serialize>(bucket: &T) -> Vec<u8> {
    // Structs of integers, floats and maps: postcard cannot fail on them.
    postcard::to_stdvec(bucket).unwrap_or_default()
}

/// Changes the bucket at `key` with `change` within a transaction (an absent one starts at
/// `T::default()`); answers `false` when the bucket held unreadable bytes (started afresh).
pub fn update_in<T>(
    tree: &TransactionalTree,
    key: &[u8],
    change: impl FnOnce(&mut T),
) -> Result<bool, ConflictableTransactionError<StoreError>>
where
    T: Default + serde::Serialize + serde::de::DeserializeOwned,
{
    let (mut bucket, readable) = match tree.get(key)? {
        Some(bytes) => match postcard::from_bytes::<T>(&bytes) {
            Ok(b) => (b, true),
            Err(_) => (T::default(), false),
        },
        None => (T::default(), true),
    };
    change(&mut bucket);
    tree.insert(key, encode(&bucket))?;
    Ok(readable)
}

/// The end of a transaction that stored records and moved their buckets (`Ok(false)`: a bucket
/// was unreadable and was started afresh — logged, and `markers` removed so the next start
/// rebuilds the roll-ups of `what` from the records).
pub fn settle(
    store: &Store,
    markers: &[&[u8]],
    what: &str,
    device: &str,
    outcome: sled::transaction::TransactionResult<bool, StoreError>,
) -> Result<(), StoreError> {
    match outcome {
        Ok(true) => Ok(()),
        Ok(false) => {
            tracing::error!(
                device,
                "a {what} roll-up bucket was unreadable and was started afresh; the roll-ups are rebuilt at the next start"
            );
            markers.iter().try_for_each(|marker| invalidate(store, marker))
        }
        Err(sled::transaction::TransactionError::Abort(e)) => Err(e),
        Err(sled::transaction::TransactionError::Storage(e)) => Err(store.storage_error(e)),
    }
}

/// Runs `build` unless `meta` holds `marker`, then sets the marker and flushes; one build at a
/// time in this process (a coordinator opens its repositories from more than one engine).
pub fn once(
    store: &Store,
    marker: &[u8],
    build: impl FnOnce() -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    static BUILDING: Mutex<()> = Mutex::new(());
    let err = |e| store.storage_error(e);
    let meta = store.tree("meta")?;
    if meta.contains_key(marker).map_err(err)? {
        return Ok(());
    }
    let _one = BUILDING.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if meta.contains_key(marker).map_err(err)? {
        return Ok(());
    }
    build()?;
    meta.insert(marker, &b"1"[..]).map_err(err)?;
    store.flush()
}

/// Calls `each(bucket_start, version, bucket)` for `model`'s buckets in `tree` starting in
/// `[from_ms, until_ms)`, each a postcard `T`. One that does not decode is left out with an
/// error naming it (`what`: "traffic", "label"), and `marker` is removed so the next start
/// rebuilds the roll-ups.
#[allow(clippy::too_many_arguments)]
pub fn each_bucket<T: serde::de::DeserializeOwned>(
    store: &Store,
    tree: &sled::Tree,
    marker: &[u8],
    what: &str,
    model: &str,
    from_ms: u64,
    until_ms: u64,
    mut each: impl FnMut(u64, &str, T),
) -> Result<(), StoreError> {
    if from_ms >= until_ms {
        return Ok(());
    }
    for item in tree.range(key(model, from_ms, "")..key(model, until_ms, "")) {
        let (k, v) = item.map_err(|e| store.storage_error(e))?;
        let Some((at, version)) = parse(&k, model.len()) else { continue };
        match postcard::from_bytes::<T>(&v) {
            Ok(bucket) => each(at, version, bucket),
            Err(e) => {
                tracing::error!(
                    model,
                    at_ms = at,
                    version,
                    error = %e,
                    "a {what} roll-up bucket is unreadable: left out; the roll-ups are rebuilt at the next start"
                );
                invalidate(store, marker)?;
            }
        }
    }
    Ok(())
}

/// [`each_bucket`] over the buckets of `[minutes, hours]` that cover the whole minutes from the
/// one holding `from_ms` to the one holding `to_ms` ([`spans`]): what every roll-up sum reads.
#[allow(clippy::too_many_arguments)]
pub fn each_spanning<T: serde::de::DeserializeOwned>(
    store: &Store,
    [minutes, hours]: [&sled::Tree; 2],
    marker: &[u8],
    what: &str,
    model: &str,
    from_ms: u64,
    to_ms: u64,
    mut each: impl FnMut(u64, &str, T),
) -> Result<(), StoreError> {
    for (width, from, until) in spans(from_ms, to_ms) {
        let tree = match width {
            Width::Minute => minutes,
            Width::Hour => hours,
        };
        each_bucket(store, tree, marker, what, model, from, until, &mut each)?;
    }
    Ok(())
}

/// Answers `None` for a raw `traffic` key that does not parse: `(model, end_ms, device, version)`.
fn parse_raw(key: &[u8]) -> Option<(&str, u64, &str, &str)> {
    let model_len = key.iter().position(|b| *b == 0)?;
    let model = std::str::from_utf8(&key[..model_len]).ok()?;
    let end = u64::from_be_bytes(key.get(model_len + 1..model_len + 9)?.try_into().ok()?);
    let rest = key.get(model_len + 10..)?;
    let device_len = rest.iter().position(|b| *b == 0)?;
    let device = std::str::from_utf8(&rest[..device_len]).ok()?;
    let version = std::str::from_utf8(&rest[device_len + 1..]).ok()?;
    Some((model, end, device, version))
}

/// Rolls up every raw window of `traffic` into `minutes` and `hours` unless `meta` says it
/// was done.
pub fn ensure_built(
    store: &Store,
    traffic: &sled::Tree,
    minutes: &sled::Tree,
    hours: &sled::Tree,
) -> Result<(), StoreError> {
    once(store, MARKER, || build(store, traffic, [minutes, hours], "", |_, version| vec![version.to_owned()]))
}

/// Rolls up every raw window of `traffic` by its device's labels (from `labels`, read only when
/// the build is due) into `minutes` and `hours`, unless `meta` says it was done.
pub fn ensure_built_by_label(
    store: &Store,
    traffic: &sled::Tree,
    minutes: &sled::Tree,
    hours: &sled::Tree,
    labels: impl FnOnce() -> Result<LabelsByDevice, StoreError>,
) -> Result<(), StoreError> {
    once(store, BY_LABEL_MARKER, || {
        let labels = labels()?;
        build(store, traffic, [minutes, hours], " by device label", |device, _| {
            labels.get(device).map(|l| l.iter().map(|(k, v)| label_part(k, v)).collect()).unwrap_or_default()
        })
    })
}

/// Rolls up every raw window into the buckets `parts(device, version)` names (what follows the
/// bucket start in each key).
fn build(
    store: &Store,
    traffic: &sled::Tree,
    [minutes, hours]: [&sled::Tree; 2],
    what: &str,
    parts: impl Fn(&str, &str) -> Vec<String>,
) -> Result<(), StoreError> {
    let err = |e| store.storage_error(e);
    let started = std::time::Instant::now();
    let stored = traffic.len();
    if stored > 0 {
        tracing::info!(
            windows = stored,
            "rolling up the stored traffic windows{what} into minute and hour buckets (once, after an upgrade or a restore)"
        );
    }
    minutes.clear().map_err(err)?;
    hours.clear().map_err(err)?;
    // Raw keys are ordered by model, then window end: a bucket is complete once a window past
    // it (or another model) comes, so only the open buckets are held in memory.
    let mut open: [std::collections::BTreeMap<Vec<u8>, TrafficWindow>; 2] = Default::default();
    let trees = [minutes, hours];
    let (mut windows, mut buckets) = (0u64, 0u64);
    let mut current: Option<(String, [u64; 2])> = None;
    let mut write = |open: &mut std::collections::BTreeMap<Vec<u8>, TrafficWindow>,
                     tree: &sled::Tree|
     -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for (k, w) in std::mem::take(open) {
            batch.insert(k, encode(&w));
            buckets += 1;
        }
        tree.apply_batch(batch).map_err(err)
    };
    for item in traffic.iter() {
        let (k, v) = item.map_err(err)?;
        let Some((model, end, device, version)) = parse_raw(&k) else { continue };
        let Ok(window) = serde_json::from_slice::<TrafficWindow>(&v) else { continue };
        let starts = [end - end % MINUTE_MS, end - end % HOUR_MS];
        let parts = parts(device, version);
        for i in 0..2 {
            let moved = match &current {
                Some((m, s)) => m != model || s[i] != starts[i],
                None => false,
            };
            if moved {
                write(&mut open[i], trees[i])?;
            }
            for part in &parts {
                add(open[i].entry(key(model, starts[i], part)).or_default(), &window);
            }
        }
        current = Some((model.to_owned(), starts));
        windows += 1;
        if windows.is_multiple_of(1_000_000) {
            tracing::info!(windows, of = stored, "rolling up the stored traffic windows{what}");
        }
    }
    for i in 0..2 {
        write(&mut open[i], trees[i])?;
    }
    if windows > 0 {
        tracing::info!(
            windows,
            buckets,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "rolled up the stored traffic windows{what} into minute and hour buckets"
        );
    }
    Ok(())
}

/// Forgets that the roll-ups `marker` names are complete: the next start rolls them up again
/// from what they sum.
pub fn invalidate(store: &Store, marker: &[u8]) -> Result<(), StoreError> {
    let meta = store.tree("meta")?;
    meta.remove(marker).map(|_| ()).map_err(|e| store.storage_error(e))
}
