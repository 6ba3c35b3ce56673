//! Objectives and traffic history in sled (the layout is in the parent module's header):
//! [`Slos`](super::Slos) dispatches here when the store is the embedded one.

use std::collections::BTreeMap;

use outpost_shared::protocol::messages::ShadowReport;
use sled::Transactional;

use super::rollup::{self, Width};
use super::{
    NewWindow, SHADOW, ShadowCounts, SloSpec, TRAFFIC, TrafficWindow, parse_traffic_key, record_key,
};
use crate::base::feed::Change;
use crate::base::store::{Store, StoreError, encode};

/// Which roll-up tree a window's bucket is in, as [`SledSlos::put_windows`] sums them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Bucket {
    Minute,
    Hour,
    LabelMinute,
    LabelHour,
}

#[derive(Debug, Clone)]
pub(super) struct SledSlos {
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
    pub(super) store: Store,
}

impl SledSlos {
    pub(super) fn open(store: &Store) -> Result<SledSlos, StoreError> {
        let slos = SledSlos {
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

    pub(super) fn ensure_rolled_up_by_label(
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

    /// Stores the windows new to the store and adds them into their buckets, in one transaction
    /// (a bucket every window goes into is read and written once).
    pub(super) fn put_windows(&self, new: &[NewWindow<'_>], devices: &str) -> Result<(), StoreError> {
        // Per window: raw key, encoded value, bucket keys (minute, hour, then per device label
        // minute and hour, each tagged with its tree), value.
        let mut windows = Vec::new();
        for w in new {
            let (minute_start, hour_start) = w.bucket_starts();
            let raw = record_key(w.model, w.end_ms, w.device, w.version);
            let encoded = encode("traffic window", &w.window)?;
            let mut buckets = vec![
                (Bucket::Minute, rollup::key(w.model, minute_start, w.version)),
                (Bucket::Hour, rollup::key(w.model, hour_start, w.version)),
            ];
            for (k, v) in w.labels {
                let part = rollup::label_part(k, v);
                buckets.push((Bucket::LabelMinute, rollup::key(w.model, minute_start, &part)));
                buckets.push((Bucket::LabelHour, rollup::key(w.model, hour_start, &part)));
            }
            windows.push((raw, encoded, buckets, &w.window));
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
        rollup::settle(&self.store, &[rollup::MARKER, rollup::BY_LABEL_MARKER], "traffic", devices, outcome)
    }

    pub(super) fn put_shadow(&self, device: &str, report: &ShadowReport) -> Result<(), StoreError> {
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

    /// Calls `each(end_ms, device, version, value)` for the windows of `model` in `tree` (keys
    /// as in `traffic`) ending in `[from_ms, to_ms]`, in key order.
    fn each_in(
        &self,
        tree: &sled::Tree,
        model: &str,
        from_ms: u64,
        to_ms: u64,
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
            each(at, device, version, &v);
        }
        Ok(())
    }

    pub(super) fn each_window(
        &self,
        model: &str,
        from_ms: u64,
        to_ms: u64,
        mut each: impl FnMut(u64, &str, &str, TrafficWindow),
    ) -> Result<(), StoreError> {
        self.each_in(&self.traffic, model, from_ms, to_ms, |at, device, version, v| {
            if let Ok(w) = serde_json::from_slice::<TrafficWindow>(v) {
                each(at, device, version, w);
            }
        })
    }

    pub(super) fn each_shadow(
        &self,
        model: &str,
        from_ms: u64,
        to_ms: u64,
        mut each: impl FnMut(u64, &str, &str, ShadowCounts),
    ) -> Result<(), StoreError> {
        self.each_in(&self.shadow, model, from_ms, to_ms, |at, device, version, v| {
            if let Ok(c) = serde_json::from_slice::<ShadowCounts>(v) {
                each(at, device, version, c);
            }
        })
    }

    /// The trees of report windows and of shadow windows, for a follower.
    pub(super) fn window_trees(&self) -> (&sled::Tree, &sled::Tree) {
        (&self.traffic, &self.shadow)
    }

    pub(super) fn set(&self, model: &str, spec: &SloSpec) -> Result<(), StoreError> {
        self.specs
            .insert(model.as_bytes(), encode(&format!("slos/{model}"), spec)?)
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub(super) fn get(&self, model: &str) -> Result<Option<SloSpec>, StoreError> {
        Ok(self
            .specs
            .get(model.as_bytes())
            .map_err(|e| self.err(e))?
            .and_then(|v| serde_json::from_slice(&v).ok()))
    }

    pub(super) fn all(&self) -> Result<Vec<(String, SloSpec)>, StoreError> {
        let mut out = Vec::new();
        for item in self.specs.iter() {
            let (k, v) = item.map_err(|e| self.err(e))?;
            if let Ok(spec) = serde_json::from_slice(&v) {
                out.push((String::from_utf8_lossy(&k).into_owned(), spec));
            }
        }
        Ok(out)
    }

    /// Calls `each(bucket_start, label, value, bucket)` for `model`'s buckets starting in each
    /// `(width, from, until)` of `spans`: per version (`label` empty, `value` the version) or,
    /// `by_label`, per value of each device label.
    pub(super) fn each_bucket(
        &self,
        by_label: bool,
        model: &str,
        spans: &[(Width, u64, u64)],
        mut each: impl FnMut(u64, &str, &str, TrafficWindow),
    ) -> Result<(), StoreError> {
        let (marker, what) = if by_label {
            (rollup::BY_LABEL_MARKER, "traffic by label")
        } else {
            (rollup::MARKER, "traffic")
        };
        for &(width, from, until) in spans {
            let tree = match (by_label, width) {
                (false, Width::Minute) => &self.minutes,
                (false, Width::Hour) => &self.hours,
                (true, Width::Minute) => &self.label_minutes,
                (true, Width::Hour) => &self.label_hours,
            };
            rollup::each_bucket(&self.store, tree, marker, what, model, from, until, |at, part, w| {
                if !by_label {
                    each(at, "", part, w);
                } else if let Some((label, value, _)) = rollup::parse_label_part(part) {
                    each(at, label, value, w);
                }
            })?;
        }
        Ok(())
    }
}
