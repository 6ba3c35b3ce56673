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
//!
//! On PostgreSQL, where another replica may have stored the record, a follower reads by the
//! id of the transaction that stored each row instead ([`pg`](self::pg)):
//! [`Follower::start_postgres`].

use std::collections::HashMap;
use std::ops::Bound;

use crate::base::feed::{Change, Overflowed, Subscription};
use crate::base::pg::store::PgStore;
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
    source: Source,
}

/// Where the changes come from.
#[derive(Debug)]
enum Source {
    /// This process's feed of sled commits.
    Feed(Subscription),
    /// PostgreSQL rows by transaction id, from `horizon` on (see [`pg`](self::pg)).
    Postgres { store: PgStore, horizon: u64 },
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
        let subscription = store.feed().subscribe(&[TRAFFIC, SHADOW, LABELS]);
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
                    let changes = subscription.drain();
                    let mut rows = Vec::with_capacity(CHUNK);
                    for item in tree.range((next.clone(), Bound::Excluded(model_end.clone()))).take(CHUNK) {
                        rows.push(item.map_err(|e| store.storage_error(e))?);
                    }
                    Ok::<_, FollowError>((rows, changes?))
                })?;
                for change in changes {
                    if behind(&read, &change) {
                        hand_on(model, from_ms, &change, &mut each);
                    }
                }
                for (k, v) in &rows {
                    let change = Change { tree: name, key: k.to_vec(), before: None, after: v.to_vec() };
                    hand_on(model, from_ms, &change, &mut each);
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
        Ok(Follower { model: model.to_owned(), from_ms, source: Source::Feed(subscription) })
    }

    /// [`Follower::start`] on PostgreSQL: hands `each` every record of `model` stored by a
    /// transaction that has ended (windows ending at or after `from_ms`, every label change);
    /// later looks read what later transactions stored, whichever replica ran them.
    pub fn start_postgres(
        store: &PgStore,
        model: &str,
        from_ms: u64,
        mut each: impl FnMut(Record),
    ) -> Result<Follower, FollowError> {
        let horizon = pg::horizon(store)?;
        pg::read(store, model, from_ms, 0, horizon, &mut each)?;
        Ok(Follower {
            model: model.to_owned(),
            from_ms,
            source: Source::Postgres { store: store.clone(), horizon },
        })
    }

    /// Hands `each` every record of the model stored since the last look (on sled in commit
    /// order; on PostgreSQL by transaction id).
    pub fn changes(&mut self, mut each: impl FnMut(Record)) -> Result<(), FollowError> {
        match &mut self.source {
            Source::Feed(subscription) => {
                for change in subscription.drain()? {
                    hand_on(&self.model, self.from_ms, &change, &mut each);
                }
            }
            Source::Postgres { store, horizon } => {
                let now = pg::horizon(store)?;
                pg::read(store, &self.model, self.from_ms, *horizon, now, &mut each)?;
                *horizon = now;
            }
        }
        Ok(())
    }
}

/// Decodes a change of `model`'s records and hands it on (other models' and records that do
/// not decode are skipped, and windows ending before `from_ms`).
fn hand_on(model: &str, from_ms: u64, change: &Change, each: &mut impl FnMut(Record)) {
    match decode(model, change) {
        Some(Record::Traffic { end_ms, .. } | Record::Shadow { end_ms, .. }) if end_ms < from_ms => {}
        Some(record) => each(record),
        None => {}
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

mod pg;

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

    /// Looks until the follower's horizon has passed every transaction that ended before this
    /// call. Transactions of other tests on the same server hold the horizon back a moment (it
    /// is the whole server's), so a look right after a write may not see it yet.
    fn catch_up(follower: &mut Follower, store: &PgStore, mut each: impl FnMut(Record)) {
        let target: u64 = store
            .with(|c| {
                c.query_one("SELECT pg_snapshot_xmax(pg_current_snapshot())::text", &[])?
                    .try_get::<_, String>(0)
            })
            .unwrap()
            .parse()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            follower.changes(&mut each).unwrap();
            let Source::Postgres { horizon, .. } = &follower.source else {
                panic!("a follower on PostgreSQL")
            };
            if *horizon >= target {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "the horizon did not pass {target}");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// The same on PostgreSQL, with the writers as replicas (each its own pool): a follower
    /// started while they write, looking again and again, is handed every window once and every
    /// label change once (a replaced label with the one it replaced), exactly what a read of
    /// everything afterwards counts.
    #[test]
    fn on_postgres_a_follower_is_handed_every_record_once_while_replicas_keep_writing() {
        use crate::base::pg::store::testing::TestDatabase;
        let db = TestDatabase::new();
        let replica = || (Slos::open_postgres(&db.store()), Labels::open_postgres(&db.store()));
        let (slos, labels) = replica();
        for d in 0..8 {
            write(&slos, &labels, d, 0..20);
        }
        let writers: Vec<_> = (0..3)
            .map(|t| {
                let (slos, labels) = replica();
                std::thread::spawn(move || {
                    for d in 0..8 {
                        if d % 3 == t {
                            write(&slos, &labels, d, 20..60);
                        }
                    }
                })
            })
            .collect();
        let reader = db.store();
        let mut followed = Sums::default();
        let mut follower = Follower::start_postgres(&reader, "bc", 0, |r| add(&mut followed, r)).unwrap();
        let mut looks = 0;
        while writers.iter().any(|w| !w.is_finished()) {
            follower.changes(|r| add(&mut followed, r)).unwrap();
            looks += 1;
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        for w in writers {
            w.join().unwrap();
        }
        catch_up(&mut follower, &reader, |r| add(&mut followed, r));
        assert!(looks > 1, "the follower looked while the replicas wrote");

        let mut scanned = Sums::default();
        let mut scan = Follower::start_postgres(&reader, "bc", 0, |r| add(&mut scanned, r)).unwrap();
        catch_up(&mut scan, &reader, |r| add(&mut scanned, r));
        let (requests, ..) = slos.traffic_where("bc", 0, u64::MAX, |_, _| true).unwrap();
        let (compared, _) = slos.shadow_where("bc", 0, u64::MAX, |_, _| true).unwrap();
        assert_eq!(scanned.requests, requests);
        assert_eq!(scanned.compared, compared);
        assert_eq!(scanned.labels, 8 * 30, "a label per two rounds per device");
        assert_eq!(followed, scanned, "nothing missed, nothing counted twice");
        assert_eq!(followed.compared, 8 * 60 * 3);
        let mut again = Vec::new();
        follower.changes(|r| again.push(r)).unwrap();
        assert!(again.is_empty(), "nothing new: {again:?}");
    }

    #[test]
    fn on_postgres_other_models_and_windows_before_the_start_are_not_handed_on() {
        use crate::base::pg::store::testing::TestDatabase;
        let db = TestDatabase::new();
        let store = db.store();
        let slos = Slos::open_postgres(&store);
        slos.put_report("d", &Default::default(), &report(50_000, "1.0.0", 5)).unwrap();
        slos.put_report("d", &Default::default(), &report(90_000, "1.0.0", 7)).unwrap();
        let mut other = report(95_000, "1.0.0", 100);
        other.models[0].model = "bcx".into();
        slos.put_report("d", &Default::default(), &other).unwrap();
        let mut seen = Vec::new();
        let mut follower = Follower::start_postgres(&store, "bc", 60_000, |r| seen.push(r)).unwrap();
        catch_up(&mut follower, &store, |r| seen.push(r));
        assert!(matches!(&seen[..], [Record::Traffic { end_ms: 90_000, .. }]), "{seen:?}");
        slos.put_report("d", &Default::default(), &other).unwrap();
        slos.put_report("d", &Default::default(), &report(100_000, "1.0.0", 9)).unwrap();
        slos.put_report("d", &Default::default(), &report(90_000, "1.0.0", 7)).unwrap();
        slos.put_report("d", &Default::default(), &report(55_000, "1.0.0", 9)).unwrap();
        let mut later = Vec::new();
        catch_up(&mut follower, &store, |r| later.push(r));
        assert!(matches!(&later[..], [Record::Traffic { end_ms: 100_000, .. }]), "{later:?}");
    }

    /// A transaction that stays open holds the horizon back: its rows, and rows committed after
    /// it began, wait for it; none is lost when it commits.
    #[test]
    fn on_postgres_a_slow_writer_is_waited_for_not_skipped() {
        use crate::base::pg::store::testing::TestDatabase;
        let db = TestDatabase::new();
        let store = db.store();
        let slos = Slos::open_postgres(&store);
        let mut follower = Follower::start_postgres(&store, "bc", 0, |_| {}).unwrap();
        catch_up(&mut follower, &store, |_| {});
        // The slow writer: inserts, says so, and commits only when told.
        let ((inserted, on_insert), (commit, on_commit)) =
            (std::sync::mpsc::channel(), std::sync::mpsc::channel::<()>());
        let slow_store = db.store();
        let slow = std::thread::spawn(move || {
            slow_store
                .with(move |c| {
                    let mut tx = c.transaction()?;
                    tx.execute(
                        "INSERT INTO outpost_shadow (model, end_ms, device, version, primary_version, compared, agreed)
                         VALUES ('bc', 1000, 'slow', '1.1.0', '1.0.0', 4, 4)",
                        &[],
                    )?;
                    inserted.send(()).ok();
                    on_commit.recv().ok();
                    tx.commit()
                })
                .unwrap();
        });
        on_insert.recv().unwrap();
        slos.put_report("d", &Default::default(), &report(100_000, "1.0.0", 9)).unwrap();
        let mut seen = Vec::new();
        follower.changes(|r| seen.push(r)).unwrap();
        assert!(seen.is_empty(), "the fast write waits behind the open transaction: {seen:?}");
        commit.send(()).unwrap();
        slow.join().unwrap();
        catch_up(&mut follower, &store, |r| seen.push(r));
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert!(seen.iter().any(|r| matches!(r, Record::Shadow { device, .. } if device == "slow")));
    }
}
