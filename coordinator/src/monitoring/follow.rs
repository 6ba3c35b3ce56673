//! Following a model's monitoring records as they are stored: a reader that keeps running sums
//! over them (a rollout's evidence) reads every stored report window, shadow window and label
//! of the model once ([`Follower::start`]), then only what was stored since its last look
//! ([`Follower::changes`]) — instead of scanning the history on every look.
//!
//! Built on the store's feed ([`crate::base::feed`]): the follower subscribes first, then reads
//! the three trees in chunks under the feed's lock. A change drained at a chunk was committed
//! before that chunk was read: to a key behind the read it is handed on (the read missed it), to
//! a key at or ahead of it, or to a tree not read yet, it is dropped (the read sees it). So
//! every record reaches the reader exactly once, and a replaced label arrives with the label it
//! replaced, which the reader takes away.

use std::collections::HashMap;
use std::ops::Bound;

use crate::base::feed::{Change, Overflowed, Subscription};
use crate::base::store::{Store, StoreError};
use crate::monitoring::quality::{self, LABELS, Labels, StoredLabel};
use crate::monitoring::slo::{SHADOW, ShadowCounts, Slos, TRAFFIC, TrafficWindow, parse_traffic_key};

/// Keys read per chunk: writers wait for at most one chunk's read.
const CHUNK: usize = 10_000;

/// One record of the followed model, as stored.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// A report window (kept as first stored: never replaced).
    Traffic { device: String, version: String, end_ms: u64, window: TrafficWindow },
    /// A shadow window (kept as first stored).
    Shadow { device: String, version: String, end_ms: u64, compared: u64, agreed: u64 },
    /// A label for prediction `prediction_id`; `replaced`: the label it replaced, to take away.
    Label { device: String, prediction_id: u64, label: StoredLabel, replaced: Option<StoredLabel> },
}

#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The follower fell behind and lost changes: start again.
    #[error(transparent)]
    Overflowed(#[from] Overflowed),
}

/// A subscription to one model's records.
#[derive(Debug)]
pub struct Follower {
    model: String,
    from_ms: u64,
    subscription: Subscription,
}

/// How far the first read of one tree has come.
#[derive(Clone, PartialEq)]
enum Read {
    /// Nothing read yet (what comes before the read's start is not the follower's).
    NotYet,
    /// Keys up to this one have been read.
    Through(Vec<u8>),
    Done,
}

impl Follower {
    /// Subscribes to `model`'s records, then hands `each` every one already stored: report and
    /// shadow windows ending at or after `from_ms`, every label. Records stored meanwhile are
    /// handed over exactly once, by this read or by the next [`Follower::changes`].
    pub fn start(
        store: &Store,
        slos: &Slos,
        labels: &Labels,
        model: &str,
        from_ms: u64,
        mut each: impl FnMut(Record),
    ) -> Result<Follower, FollowError> {
        let follower = Follower {
            model: model.to_owned(),
            from_ms,
            subscription: store.feed().subscribe(&[TRAFFIC, SHADOW, LABELS]),
        };
        let (Some((traffic, shadow)), Some(label_tree)) = (slos.window_trees(), labels.label_tree()) else {
            return Err(StoreError::NotOnPostgres("following a model's monitoring records").into());
        };
        let mut labels_from = model.as_bytes().to_vec();
        labels_from.push(0);
        let mut windows_from = labels_from.clone();
        windows_from.extend_from_slice(&from_ms.to_be_bytes());
        let mut model_end = model.as_bytes().to_vec();
        model_end.push(1);
        let trees = [
            (TRAFFIC, traffic, windows_from.clone()),
            (SHADOW, shadow, windows_from),
            (LABELS, label_tree, labels_from),
        ];
        let mut read: HashMap<&str, Read> = trees.iter().map(|(name, _, _)| (*name, Read::NotYet)).collect();
        for (name, tree, start) in &trees {
            let mut next = Bound::Included(start.clone());
            loop {
                let (rows, changes) = store.feed().locked(|| {
                    let changes = follower.subscription.drain();
                    let mut rows = Vec::with_capacity(CHUNK);
                    for item in tree.range((next.clone(), Bound::Excluded(model_end.clone()))).take(CHUNK) {
                        rows.push(item.map_err(|e| store.storage_error(e))?);
                    }
                    Ok::<_, FollowError>((rows, changes?))
                })?;
                for change in changes {
                    if behind(&read, &change) {
                        follower.hand_on(&change, &mut each);
                    }
                }
                for (k, v) in &rows {
                    let change = Change { tree: name, key: k.to_vec(), before: None, after: v.to_vec() };
                    follower.hand_on(&change, &mut each);
                }
                let full = rows.len() == CHUNK;
                match rows.last() {
                    Some((k, _)) if full => {
                        read.insert(name, Read::Through(k.to_vec()));
                        next = Bound::Excluded(k.to_vec());
                    }
                    _ => break,
                }
            }
            read.insert(name, Read::Done);
        }
        Ok(follower)
    }

    /// Hands `each` every record of the model stored since the last look, in commit order.
    pub fn changes(&mut self, mut each: impl FnMut(Record)) -> Result<(), FollowError> {
        for change in self.subscription.drain()? {
            self.hand_on(&change, &mut each);
        }
        Ok(())
    }

    /// Decodes a change of this model's records and hands it on (other models' and records
    /// that do not decode are skipped).
    fn hand_on(&self, change: &Change, each: &mut impl FnMut(Record)) {
        match decode(&self.model, change) {
            Some(Record::Traffic { end_ms, .. } | Record::Shadow { end_ms, .. }) if end_ms < self.from_ms => {
            }
            Some(record) => each(record),
            None => {}
        }
    }
}

/// Whether the first read had passed `change`'s key when it was committed.
fn behind(read: &HashMap<&str, Read>, change: &Change) -> bool {
    match read.get(change.tree) {
        Some(Read::Done) => true,
        Some(Read::Through(k)) => change.key <= *k,
        Some(Read::NotYet) | None => false,
    }
}

fn decode(model: &str, change: &Change) -> Option<Record> {
    match change.tree {
        TRAFFIC | SHADOW => {
            let (m, end_ms, device, version) = parse_traffic_key(&change.key)?;
            if m != model {
                return None;
            }
            let (device, version) = (device.to_owned(), version.to_owned());
            if change.tree == TRAFFIC {
                let window: TrafficWindow = serde_json::from_slice(&change.after).ok()?;
                Some(Record::Traffic { device, version, end_ms, window })
            } else {
                let c: ShadowCounts = serde_json::from_slice(&change.after).ok()?;
                Some(Record::Shadow { device, version, end_ms, compared: c.compared, agreed: c.agreed })
            }
        }
        LABELS => {
            let (m, device, prediction_id) = quality::parse_key(&change.key)?;
            if m != model {
                return None;
            }
            let label: StoredLabel = serde_json::from_slice(&change.after).ok()?;
            let replaced = change.before.as_ref().and_then(|b| serde_json::from_slice(b).ok());
            Some(Record::Label { device: device.to_owned(), prediction_id, label, replaced })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use outpost_shared::histogram::LogHistogram;
    use outpost_shared::protocol::messages::{
        FeedbackBatch, LabelledPrediction, ModelWindow, Report, ShadowReport, ShadowWindow, Slot,
    };

    use super::*;

    fn report(end_ms: u64, version: &str, requests: u64) -> Report {
        let mut latency_us = LogHistogram::default();
        latency_us.record_n(700.0 + (end_ms % 97) as f64, requests);
        Report {
            window_start_ms: end_ms - 10_000,
            window_end_ms: end_ms,
            models: vec![ModelWindow {
                model: "bc".into(),
                version: version.into(),
                slot: Slot::Primary,
                requests,
                errors: requests / 10,
                rows: requests,
                latency_us,
                top_score: LogHistogram::default(),
                label_counts: BTreeMap::new(),
            }],
            system: Default::default(),
            prediction_log: Default::default(),
            outbox: Default::default(),
        }
    }

    fn label(id: u64, truth: i64) -> FeedbackBatch {
        FeedbackBatch {
            labels: vec![LabelledPrediction {
                prediction_id: id,
                model: "bc".into(),
                version: "1.0.0".into(),
                slot: Slot::Primary,
                predicted_at_ms: 1_000 + id,
                labelled_at_ms: 2_000 + id,
                predicted: Some(1),
                label: truth,
            }],
            unknown: 0,
            evicted: 0,
        }
    }

    /// (requests, compared, labelled right) summed over what a follower was handed.
    #[derive(Debug, Default, PartialEq)]
    struct Sums {
        requests: u64,
        compared: u64,
        right: i64,
        labels: i64,
    }

    fn add(sums: &mut Sums, record: Record) {
        match record {
            Record::Traffic { window, .. } => sums.requests += window.requests,
            Record::Shadow { compared, .. } => sums.compared += compared,
            Record::Label { label, replaced, .. } => {
                sums.labels += 1;
                sums.right += i64::from(label.predicted == Some(label.label));
                if let Some(r) = replaced {
                    sums.labels -= 1;
                    sums.right -= i64::from(r.predicted == Some(r.label));
                }
            }
        }
    }

    /// Writes report windows, shadow windows and labels (half of them replacing earlier ones,
    /// alternately right and wrong) for device `d`, rounds `rounds`.
    fn write(slos: &Slos, labels: &Labels, d: usize, rounds: std::ops::Range<u64>) {
        for r in rounds {
            let device = format!("dev-{d}");
            slos.put_report(
                &device,
                &Default::default(),
                &report(1_000_000 + r * 10_000, "1.0.0", 10 + r % 7),
            )
            .unwrap();
            // A resend of the same window adds nothing.
            slos.put_report(
                &device,
                &Default::default(),
                &report(1_000_000 + r * 10_000, "1.0.0", 10 + r % 7),
            )
            .unwrap();
            let shadow = ShadowReport {
                window_start_ms: 1_000_000 + r * 10_000 - 10_000,
                window_end_ms: 1_000_000 + r * 10_000,
                models: vec![ShadowWindow {
                    model: "bc".into(),
                    version: "1.1.0".into(),
                    primary: "1.0.0".into(),
                    compared: 3,
                    agreed: 2,
                }],
            };
            slos.put_shadow(&device, &shadow).unwrap();
            labels.put(&device, &Default::default(), &label(r / 2, (r % 2) as i64 + d as i64 % 2)).unwrap();
        }
    }

    #[test]
    fn a_follower_is_handed_every_record_once_while_writers_keep_writing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (slos, labels) = (Slos::open(&store).unwrap(), Labels::open(&store).unwrap());
        // Enough stored first that the read takes several chunks.
        for d in 0..40 {
            write(&slos, &labels, d, 0..300);
        }
        let mut followed = Sums::default();
        let writers: Vec<_> = (0..3)
            .map(|t| {
                let (slos, labels) = (slos.clone(), labels.clone());
                std::thread::spawn(move || {
                    for d in 0..40 {
                        if d % 3 == t {
                            write(&slos, &labels, d, 300..420);
                        }
                    }
                })
            })
            .collect();
        let mut follower =
            Follower::start(&store, &slos, &labels, "bc", 0, |r| add(&mut followed, r)).unwrap();
        for w in writers {
            w.join().unwrap();
        }
        follower.changes(|r| add(&mut followed, r)).unwrap();

        // What a scan of everything stored now sums.
        let mut scanned = Sums::default();
        let _ = Follower::start(&store, &slos, &labels, "bc", 0, |r| add(&mut scanned, r)).unwrap();
        let (requests, ..) = slos.traffic_where("bc", 0, u64::MAX, |_, _| true).unwrap();
        let (compared, _) = slos.shadow_where("bc", 0, u64::MAX, |_, _| true).unwrap();
        assert_eq!(scanned.requests, requests);
        assert_eq!(scanned.compared, compared);
        assert_eq!(scanned.labels, 40 * 210, "a label per two rounds per device");
        assert_eq!(followed, scanned, "nothing missed, nothing counted twice");
        assert_eq!(followed.compared, 40 * 420 * 3);
    }

    #[test]
    fn other_models_and_windows_before_the_start_are_not_handed_on() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (slos, labels) = (Slos::open(&store).unwrap(), Labels::open(&store).unwrap());
        slos.put_report("d", &Default::default(), &report(50_000, "1.0.0", 5)).unwrap();
        slos.put_report("d", &Default::default(), &report(90_000, "1.0.0", 7)).unwrap();
        let mut other = report(95_000, "1.0.0", 100);
        other.models[0].model = "bcx".into();
        slos.put_report("d", &Default::default(), &other).unwrap();
        let mut seen = Vec::new();
        let mut follower = Follower::start(&store, &slos, &labels, "bc", 60_000, |r| seen.push(r)).unwrap();
        assert!(matches!(&seen[..], [Record::Traffic { end_ms: 90_000, .. }]), "{seen:?}");
        slos.put_report("d", &Default::default(), &other).unwrap();
        let mut newer = report(99_000, "1.0.0", 100);
        newer.models[0].model = "bcx".into();
        slos.put_report("d", &Default::default(), &newer).unwrap();
        slos.put_report("d", &Default::default(), &report(100_000, "1.0.0", 9)).unwrap();
        slos.put_report("d", &Default::default(), &report(55_000, "1.0.0", 9)).unwrap();
        let mut later = Vec::new();
        follower.changes(|r| later.push(r)).unwrap();
        assert!(matches!(&later[..], [Record::Traffic { end_ms: 100_000, .. }]), "{later:?}");
    }
}
