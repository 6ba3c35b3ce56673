//! The labels store's units: roll-ups (per version and per device label) against a scan of
//! every label, replaced and resent labels, quality from confusion counts, upgrades and a
//! flipped bucket. The behaviours both backends share run on each (`on_sled::…`,
//! `on_postgres::…`, the latter against the real PostgreSQL of `TEST_POSTGRES_URL`, a database
//! per test), with replicas racing on PostgreSQL.

use super::*;
use crate::base::pg::store::testing::{Backing, TestDatabase};
use outpost_shared::protocol::messages::LabelledPrediction;
use outpost_shared::protocol::vocab::Slot;

fn batch(labels: &[(u64, &str, u64, Option<i64>, i64)]) -> FeedbackBatch {
    FeedbackBatch {
        labels: labels
            .iter()
            .map(|&(id, version, at, predicted, label)| LabelledPrediction {
                prediction_id: id,
                model: "bc".into(),
                version: version.into(),
                slot: Slot::Primary,
                predicted_at_ms: at,
                labelled_at_ms: at + 5,
                predicted,
                label,
            })
            .collect(),
        unknown: 0,
        evicted: 0,
    }
}

/// What a scan of every label says for `[from, to]` (the roll-ups answer for whole
/// minutes: the tests end ranges at a minute's last ms).
fn scanned(labels: &Labels, from: u64, to: u64) -> Tally {
    labels.scan_tally("bc", from, to).unwrap()
}

/// The devices' labels: two sites, a second label on one, and devices without any.
fn device_labels(device: &str) -> BTreeMap<String, String> {
    let pairs: &[(&str, &str)] = match device {
        "dev-0" => &[("site", "berlin"), ("tier", "edge")],
        "dev-1" => &[("site", "oslo")],
        _ => &[],
    };
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

fn labels_by_device() -> rollup::LabelsByDevice {
    ["dev-0", "dev-1", "dev-2", "dev-7"].into_iter().map(|d| (d.to_owned(), device_labels(d))).collect()
}

/// Quality split by `by` from the roll-ups equals the one from every label.
fn assert_split_quality_is_the_scans(labels: &Labels, since: Option<u64>, by: &str) {
    let rolled = labels.quality("bc", since, Some(by)).unwrap();
    let scanned =
        labels.scan_quality("bc", since, by, |device| Ok(device_labels(device).get(by).cloned())).unwrap();
    assert_eq!(rolled.by.as_deref(), Some(by));
    assert_eq!(rolled.versions, scanned.versions, "by {by} since {since:?}");
}

/// Three devices' feedback: 400 labels each over two versions, some without a prediction.
fn fleet_batches() -> Vec<(String, FeedbackBatch)> {
    (0..3u64)
        .map(|d| {
            let rows: Vec<_> = (0..400u64)
                .map(|i| {
                    let version = if i % 3 == 0 { "1.1.0" } else { "1.0.0" };
                    let predicted = (i % 11 != 0).then_some((i % 2) as i64);
                    (i, version, 3_000_000 + i * 23_456 + d, predicted, ((i / 2) % 2) as i64)
                })
                .collect();
            (format!("dev-{d}"), batch(&rows))
        })
        .collect()
}

fn sled() -> (Labels, Backing) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    (Labels::open(&store).unwrap(), Backing::Sled(dir, store))
}

fn postgres() -> (Labels, Backing) {
    let db = TestDatabase::new();
    (Labels::open_postgres(&db.store()), Backing::Postgres(db))
}

/// A fresh repository on one backend.
type Open = fn() -> (Labels, Backing);

crate::base::pg::store::testing::on_both_backends!(
    sled, postgres;
    the_label_rollups_count_what_a_scan_of_every_label_counts,
    quality_from_the_rollups_is_the_quality_of_every_label,
    a_replaced_label_moves_its_count_and_a_resend_moves_nothing,
    labels_of_many_batches_in_one_transaction_count_as_the_same_batches_one_by_one,
    a_label_is_read_back_by_its_prediction_and_counted_on_its_devices,
);

/// [`fleet_batches`] stored one by one.
fn filled(open: Open) -> (Labels, Backing) {
    let (labels, backing) = open();
    for (device, batch) in fleet_batches() {
        labels.put(&device, &device_labels(&device), &batch).unwrap();
    }
    (labels, backing)
}

/// [`fleet_batches`] stored one by one on sled (for the sled-only behaviours).
fn filled_sled() -> (tempfile::TempDir, Store, Labels) {
    let (labels, backing) = filled(sled);
    let Backing::Sled(dir, store) = backing else { unreachable!("sled") };
    (dir, store, labels)
}

fn the_label_rollups_count_what_a_scan_of_every_label_counts(open: Open) {
    let (labels, _backing) = filled(open);
    for (from, to) in
        [(0, u64::MAX / 2), (3_600_000, 7_199_999), (4_000_000, 9_959_999), (3_000_000, 3_059_999)]
    {
        let want = scanned(&labels, from - from % MINUTE_MS, to);
        assert!(want.labelled > 0, "{from}..{to}");
        assert_eq!(labels.rolled_up("bc", from, to).unwrap(), want, "{from}..{to}");
    }
}

fn quality_from_the_rollups_is_the_quality_of_every_label(open: Open) {
    let (labels, _backing) = filled(open);
    // Three classes, so the macro and weighted averages have something to weigh.
    let three = batch(&[(1, "1.0.0", 5_000_000, Some(2), 2), (2, "1.0.0", 5_000_100, Some(2), 0)]);
    labels.put("dev-7", &device_labels("dev-7"), &three).unwrap();
    for since in [None, Some(3_600_000), Some(6_000_000)] {
        let rolled = labels.quality("bc", since, None).unwrap();
        let scanned = labels.scan_quality("bc", since, "site", |_| Ok(None)).unwrap();
        assert_eq!(rolled.versions.keys().collect::<Vec<_>>(), scanned.versions.keys().collect::<Vec<_>>());
        for (version, q) in &rolled.versions {
            let s = &scanned.versions[version];
            assert_eq!((q.labelled, q.without_prediction), (s.labelled, s.without_prediction), "{version}");
            assert_eq!(q.metrics, s.metrics, "{version} since {since:?}");
            assert!(q.segments.is_empty());
        }
        // Split by a device label: one segment per value, devices without it in `(none)`.
        for by in ["site", "tier", "no-such-label"] {
            assert_split_quality_is_the_scans(&labels, since, by);
        }
    }
    let split = labels.quality("bc", None, Some("site")).unwrap();
    let segments: Vec<_> = split.versions["1.0.0"].segments.keys().map(String::as_str).collect();
    assert_eq!(segments, ["(none)", "berlin", "oslo"]);
    assert!(labels.quality("bc", None, None).unwrap().versions["1.0.0"].metrics.classes.len() == 3);
    assert!(labels.quality("bc", Some(u64::MAX / 4), None).unwrap().versions.is_empty());
}

fn a_replaced_label_moves_its_count_and_a_resend_moves_nothing(open: Open) {
    let (labels, _backing) = filled(open);
    let all = |l: &Labels| l.rolled_up("bc", 0, u64::MAX / 2).unwrap();
    let before = all(&labels);
    // Prediction 1 of dev-0 (predicted 1, label 0: wrong) is labelled again, now 1: right.
    let again = [(1, "1.0.0", 3_000_000 + 23_456, Some(1), 0)];
    let site = labels.quality("bc", None, Some("site")).unwrap();
    let dev0 = device_labels("dev-0");
    labels.put("dev-0", &dev0, &batch(&again)).unwrap();
    assert_eq!(all(&labels), before, "a resend of the same label moves nothing");
    assert_eq!(labels.quality("bc", None, Some("site")).unwrap(), site, "nor by device label");
    labels.put("dev-0", &dev0, &batch(&[(1, "1.0.0", 3_000_000 + 23_456, Some(1), 1)])).unwrap();
    let after = all(&labels);
    assert_eq!((after.labelled, after.correct), (before.labelled, before.correct + 1));
    assert_eq!(after, scanned(&labels, 0, u64::MAX / 2));
    // From the hour buckets, and from 00:50 on (the minute buckets up to 01:00 too).
    for since in [None, Some(3_000_000)] {
        assert_split_quality_is_the_scans(&labels, since, "site");
        assert_split_quality_is_the_scans(&labels, since, "tier");
    }
    // A label now without a prediction leaves the counts.
    labels.put("dev-0", &dev0, &batch(&[(1, "1.0.0", 3_000_000 + 23_456, None, 1)])).unwrap();
    assert_eq!(all(&labels).labelled, before.labelled - 1);
    for since in [None, Some(3_000_000)] {
        assert_split_quality_is_the_scans(&labels, since, "site");
    }
}

fn labels_of_many_batches_in_one_transaction_count_as_the_same_batches_one_by_one(open: Open) {
    let (one_by_one, _one) = filled(open);
    let (together, _two) = open();
    // `filled`'s batches, then within the same transaction: prediction 1 of dev-0 labelled
    // again (now right), resent unchanged, then labelled a third time without a prediction
    // and under another version — each replacing the one before, in order.
    let batches = fleet_batches();
    let at = 3_000_000 + 23_456;
    let later = [
        batch(&[(1, "1.0.0", at, Some(1), 1)]),
        batch(&[(1, "1.0.0", at, Some(1), 1)]),
        batch(&[(1, "1.1.0", at, None, 1), (2, "1.0.0", at + 23_456, Some(1), 1)]),
    ];
    let dev0 = device_labels("dev-0");
    let labels: Vec<_> = batches.iter().map(|(d, _)| device_labels(d)).collect();
    let mut all: Vec<(&str, &BTreeMap<String, String>, &FeedbackBatch)> =
        batches.iter().zip(&labels).map(|((d, b), l)| (d.as_str(), l, b)).collect();
    all.extend(later.iter().map(|b| ("dev-0", &dev0, b)));
    together.put_many(&all).unwrap();
    for b in &later {
        one_by_one.put("dev-0", &dev0, b).unwrap();
    }
    let sum = |l: &Labels| l.rolled_up("bc", 0, u64::MAX / 2).unwrap();
    assert_eq!(sum(&together), sum(&one_by_one));
    assert_eq!(sum(&together), scanned(&together, 0, u64::MAX / 2));
    for since in [None, Some(3_000_000), Some(6_000_000)] {
        assert_eq!(
            together.quality("bc", since, None).unwrap(),
            one_by_one.quality("bc", since, None).unwrap()
        );
        for by in ["site", "tier"] {
            assert_eq!(
                together.quality("bc", since, Some(by)).unwrap(),
                one_by_one.quality("bc", since, Some(by)).unwrap(),
                "by {by} since {since:?}"
            );
            assert_split_quality_is_the_scans(&together, since, by);
        }
    }
}

#[test]
fn labels_from_before_rollups_or_behind_a_flipped_bucket_are_rolled_up_at_the_next_start() {
    let (_dir, store, labels) = filled_sled();
    let want = scanned(&labels, 0, u64::MAX / 2);
    // A data directory written before roll-ups: labels, no buckets, no marker.
    rollup::invalidate(&store, rollup::LABELS_MARKER).unwrap();
    store.tree("labels_1m").unwrap().clear().unwrap();
    store.tree("labels_1h").unwrap().clear().unwrap();
    let reopened = Labels::open(&store).unwrap();
    assert_eq!(reopened.rolled_up("bc", 0, u64::MAX / 2).unwrap(), want);
    // A flipped bucket is left out, not guessed, and the next start rebuilds it.
    let hours = store.tree("labels_1h").unwrap();
    let (k, _) = hours.iter().next().unwrap().unwrap();
    hours.insert(k, &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff][..]).unwrap();
    assert!(reopened.rolled_up("bc", 0, u64::MAX / 2).unwrap().labelled < want.labelled);
    assert!(!store.tree("meta").unwrap().contains_key(rollup::LABELS_MARKER).unwrap());
    assert_eq!(Labels::open(&store).unwrap().rolled_up("bc", 0, u64::MAX / 2).unwrap(), want);
}

#[test]
fn labels_are_rolled_up_by_device_label_once_when_a_start_finds_them_missing() {
    let (_dir, store, labels) = filled_sled();
    let want = labels.quality("bc", None, Some("site")).unwrap();
    // A data directory from before these roll-ups (or a restore): no buckets, no marker.
    rollup::invalidate(&store, rollup::LABELS_BY_LABEL_MARKER).unwrap();
    for tree in ["labels_by_label_1m", "labels_by_label_1h"] {
        store.tree(tree).unwrap().clear().unwrap();
    }
    assert!(labels.quality("bc", None, Some("site")).unwrap().versions["1.0.0"].segments.len() == 1);
    let reopened = Labels::open(&store).unwrap();
    let reads = std::cell::Cell::new(0);
    let read = || {
        reads.set(reads.get() + 1);
        Ok(labels_by_device())
    };
    reopened.ensure_rolled_up_by_label(read).unwrap();
    assert_eq!(reopened.quality("bc", None, Some("site")).unwrap(), want);
    reopened.ensure_rolled_up_by_label(read).unwrap();
    assert_eq!(reads.get(), 1, "rolled up once: the next start does not read the devices");
    // A flipped bucket is left out and removes the marker, so the next start rebuilds.
    let hours = store.tree("labels_by_label_1h").unwrap();
    let (k, _) = hours.iter().next().unwrap().unwrap();
    hours.insert(k, &[0xff; 11][..]).unwrap();
    assert_ne!(reopened.quality("bc", None, Some("site")).unwrap(), want);
    assert!(!store.tree("meta").unwrap().contains_key(rollup::LABELS_BY_LABEL_MARKER).unwrap());
    reopened.ensure_rolled_up_by_label(|| Ok(labels_by_device())).unwrap();
    assert_eq!(reopened.quality("bc", None, Some("site")).unwrap(), want);
}

fn a_label_is_read_back_by_its_prediction_and_counted_on_its_devices(open: Open) {
    let (labels, _backing) = filled(open);
    // fleet_batches: dev-1's prediction 4 is 1.0.0, predicted 0, label 0, at 3,093,825.
    let stored = labels.get("bc", "dev-1", 4).unwrap().unwrap();
    assert_eq!((stored.version.as_str(), stored.predicted, stored.label), ("1.0.0", Some(0), 0));
    assert_eq!(stored.predicted_at_ms, 3_000_000 + 4 * 23_456 + 1);
    assert_eq!(labels.get("bc", "dev-1", 400).unwrap(), None);
    assert_eq!(labels.get("other", "dev-1", 4).unwrap(), None);
    // Prediction ids at both ends of u64 are kept apart and in order.
    let ends = batch(&[(0, "1.0.0", 9_000_000, Some(1), 1), (u64::MAX, "1.0.0", 9_000_001, Some(1), 0)]);
    labels.put("dev-9", &BTreeMap::new(), &ends).unwrap();
    assert_eq!(labels.get("bc", "dev-9", 0).unwrap().unwrap().label, 1);
    assert_eq!(labels.get("bc", "dev-9", u64::MAX).unwrap().unwrap().label, 0);
    // Many at once, in the order asked, a prediction without a label as None.
    let keys: Vec<(String, u64)> = [("dev-9", u64::MAX), ("dev-1", 400), ("dev-1", 4), ("dev-9", 0)]
        .map(|(d, id)| (d.to_owned(), id))
        .into();
    let many = labels.get_many("bc", &keys).unwrap();
    let got: Vec<Option<i64>> = many.iter().map(|l| l.as_ref().map(|l| l.label)).collect();
    assert_eq!(got, [Some(0), None, Some(0), Some(1)]);
    assert_eq!(many[2].as_ref(), Some(&stored));
    // What a rollout's evidence reads: a version's labels on a set of devices in a range.
    let devices = ["dev-0".to_owned(), "dev-2".to_owned(), "dev-9".to_owned()];
    let (mut labelled, mut correct) = (0, 0);
    for (_, batch) in fleet_batches().iter().filter(|(d, _)| devices.contains(d)) {
        for l in batch.labels.iter().filter(|l| l.version == "1.0.0" && l.predicted_at_ms <= 6_000_000) {
            if let Some(p) = l.predicted {
                labelled += 1;
                correct += u64::from(p == l.label);
            }
        }
    }
    assert!(labelled > 0);
    assert_eq!(labels.correct_on("bc", "1.0.0", &devices, 0, 6_000_000).unwrap(), (labelled, correct));
    assert_eq!(labels.correct_on("bc", "1.0.0", &devices, 9_000_000, 9_000_001).unwrap(), (2, 1));
}

/// Three replicas (each a pool and a shard of its own) store the same labels at once, then each
/// relabels a third of them: every prediction is counted once, with its last label, though a
/// label may be taken away in another shard than the one that counted it.
#[test]
fn on_postgres_replicas_labelling_the_same_predictions_at_once_count_each_once() {
    let db = TestDatabase::new();
    let replicas: Vec<Labels> = (0..3).map(|_| Labels::open_postgres(&db.store())).collect();
    let batches = fleet_batches();
    std::thread::scope(|s| {
        for labels in &replicas {
            let batches = &batches;
            s.spawn(move || {
                for (device, batch) in batches {
                    labels.put(device, &device_labels(device), batch).unwrap();
                }
            });
        }
    });
    // Replica n flips the truth of the predictions with id % 3 == n.
    std::thread::scope(|s| {
        for (n, labels) in replicas.iter().enumerate() {
            let batches = &batches;
            s.spawn(move || {
                for (device, batch) in batches {
                    let mut flipped = batch.clone();
                    flipped.labels.retain(|l| l.prediction_id % 3 == n as u64);
                    for l in &mut flipped.labels {
                        l.label = 1 - l.label;
                    }
                    labels.put(device, &device_labels(device), &flipped).unwrap();
                }
            });
        }
    });
    let (reference, _backing) = postgres();
    for (device, batch) in &batches {
        let mut flipped = batch.clone();
        for l in &mut flipped.labels {
            l.label = 1 - l.label;
        }
        reference.put(device, &device_labels(device), &flipped).unwrap();
    }
    let all = |l: &Labels| l.rolled_up("bc", 0, u64::MAX / 2).unwrap();
    assert_eq!(all(&replicas[0]), all(&reference));
    assert_eq!(all(&replicas[1]), scanned(&replicas[2], 0, u64::MAX / 2));
    for by in ["site", "tier"] {
        assert_eq!(
            replicas[2].quality("bc", Some(3_000_000), Some(by)).unwrap(),
            reference.quality("bc", Some(3_000_000), Some(by)).unwrap(),
            "by {by}"
        );
    }
}
