//! The drift report's units: the report from the roll-ups against one from every verdict,
//! version changes and canaries, resends, upgrades and a flipped bucket, both formats. The
//! behaviours both backends share run on each (`on_sled::…`, `on_postgres::…`, the latter
//! against the real PostgreSQL of `TEST_POSTGRES_URL`, a database per test), with replicas
//! racing on PostgreSQL.

use outpost_shared::drift::DriftTest;
use outpost_shared::protocol::messages::{DriftReport, FeatureDrift, ModelDrift};

use super::*;
use crate::base::pg::store::testing::{Backing, TestDatabase};
use crate::base::store::Store;

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

fn sled() -> (History, Backing) {
    let (dir, store, history) = opened();
    (history, Backing::Sled(dir, store))
}

fn postgres() -> (History, Backing) {
    let db = TestDatabase::new();
    (History::open_postgres(&db.store()), Backing::Postgres(db))
}

/// A fresh repository on one backend.
type Open = fn() -> (History, Backing);

crate::base::pg::store::testing::on_both_backends!(
    sled, postgres;
    a_drift_episode_and_a_version_change_show_in_both_formats,
    a_batch_of_drift_reports_counts_what_the_same_reports_one_by_one_do,
    the_report_from_the_rollups_is_the_report_from_every_verdict,
    a_resent_report_adds_nothing,
);

fn a_drift_episode_and_a_version_change_show_in_both_formats(open: Open) {
    let (history, _backing) = open();
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
/// of 1.2.0 beside their primary from a quarter of the time to seven eighths. In order:
/// (device, report).
fn fleet_reports(hours: u64) -> Vec<(String, DriftReport)> {
    let start = 7_200_000 + 90_000;
    let rounds = hours * 12;
    let mut out = Vec::new();
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
            out.push((format!("dev-{d:02}"), DriftReport { at_ms: at + d * 1_000, models }));
        }
    }
    out
}

/// [`fleet_reports`] stored one by one.
fn fleet_one_by_one(history: &History, hours: u64) {
    for (device, report) in fleet_reports(hours) {
        history.put(&device, &report).unwrap();
    }
}

/// [`fleet_reports`] stored a round (40 devices' reports) at a time, as ingest stores a batch.
fn fleet(history: &History, hours: u64) {
    for round in fleet_reports(hours).chunks(40) {
        let batch: Vec<(&str, &DriftReport)> = round.iter().map(|(d, r)| (d.as_str(), r)).collect();
        history.put_many(&batch).unwrap();
    }
}

fn a_batch_of_drift_reports_counts_what_the_same_reports_one_by_one_do(open: Open) {
    let hours = 12;
    let (one_by_one, _one) = open();
    fleet_one_by_one(&one_by_one, hours);
    let (batched, _two) = open();
    let reports = fleet_reports(hours);
    // Batches of 97 hold each device's reports of two or three rounds (its version changes
    // among them), and a resend of the batch's first report.
    for chunk in reports.chunks(97) {
        let mut batch: Vec<(&str, &DriftReport)> = chunk.iter().map(|(d, r)| (d.as_str(), r)).collect();
        batch.push(batch[0]);
        batched.put_many(&batch).unwrap();
    }
    let end = 7_200_000 + hours * HOUR_MS;
    for since in [0, 7_200_000 + 95 * 60_000 + 30_000, end - 2 * HOUR_MS] {
        for version in [None, Some("1.1.0"), Some("1.2.0")] {
            let expected = DriftHistory::build_for(&one_by_one, "bc", since, version).unwrap();
            assert_eq!(
                DriftHistory::build_for(&batched, "bc", since, version).unwrap(),
                expected,
                "since {since} {version:?}"
            );
            assert_eq!(DriftHistory::from_verdicts(&batched, "bc", since, version).unwrap(), expected);
        }
    }
    let h = DriftHistory::build(&batched, "bc", 0).unwrap();
    assert_eq!(h.version_changes.iter().map(|c| c.devices).sum::<u64>(), 25);
}

fn the_report_from_the_rollups_is_the_report_from_every_verdict(open: Open) {
    for hours in [3, 40] {
        let (history, _backing) = open();
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
        assert_eq!((moved("1.0.0", "1.1.0"), moved("1.1.0", "1.0.0")), (20, 5), "{:?}", h.version_changes);
        assert_eq!(h.version_changes.iter().map(|c| c.devices).sum::<u64>(), 25);
        if hours > 24 {
            assert_eq!(h.bucket_ms % HOUR_MS, 0, "past a day, whole hours");
        }
    }
}

fn a_resent_report_adds_nothing(open: Open) {
    let (history, _backing) = open();
    fleet(&history, 2);
    let before = DriftHistory::build(&history, "bc", 0).unwrap();
    let again =
        DriftReport { at_ms: 7_200_000 + 90_000 + 300_000 + 3_000, models: vec![model("1.0.0", 9, true)] };
    history.put("dev-03", &again).unwrap();
    assert_eq!(DriftHistory::build(&history, "bc", 0).unwrap(), before);
}

#[test]
fn verdicts_from_before_the_rollups_or_behind_a_flipped_bucket_are_rolled_up_at_the_next_start() {
    let (_dir, store, history) = opened();
    fleet_one_by_one(&history, 30);
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

/// Three replicas store the same fleet's drift reports at once, each from its own starting
/// round: every verdict set counts once, and each version change once, as one store given them
/// in order counts them.
#[test]
fn on_postgres_replicas_storing_the_same_reports_at_once_count_each_once() {
    let db = TestDatabase::new();
    let replicas: Vec<History> = (0..3).map(|_| History::open_postgres(&db.store())).collect();
    let reports = fleet_reports(6);
    let rounds: Vec<&[(String, DriftReport)]> = reports.chunks(40).collect();
    std::thread::scope(|s| {
        for (n, history) in replicas.iter().enumerate() {
            let rounds = &rounds;
            s.spawn(move || {
                // Round by round, each replica a few rounds behind the one before it.
                for r in 0..rounds.len() + 6 {
                    let Some(round) = r.checked_sub(n * 3).and_then(|r| rounds.get(r)) else { continue };
                    let batch: Vec<(&str, &DriftReport)> =
                        round.iter().map(|(d, r)| (d.as_str(), r)).collect();
                    history.put_many(&batch).unwrap();
                }
            });
        }
    });
    let (reference, _backing) = postgres();
    fleet(&reference, 6);
    let h = DriftHistory::build(&replicas[1], "bc", 0).unwrap();
    assert_eq!(h, DriftHistory::build(&reference, "bc", 0).unwrap());
    assert_eq!(h.version_changes.iter().map(|c| c.devices).sum::<u64>(), 25);
    assert_eq!(DriftHistory::from_verdicts(&replicas[2], "bc", 0, None).unwrap(), h);
}
