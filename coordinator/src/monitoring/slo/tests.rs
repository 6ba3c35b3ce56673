//! The SLO store's units: roll-ups (per version and per device label) against a scan of every
//! window, resends, upgrades, a flipped bucket, status and chart geometry. The behaviours both
//! backends share run on each (`on_sled::…`, `on_postgres::…`, the latter against the real
//! PostgreSQL of `TEST_POSTGRES_URL`, a database per test), with replicas racing on PostgreSQL.

use super::status::objective;
use super::*;
use crate::base::pg::store::testing::{Backing, TestDatabase};
use crate::monitoring::quality::Labels;
use outpost_shared::protocol::messages::{LogWindow, ModelWindow, OutboxStats, SystemStats};
use outpost_shared::protocol::vocab::Slot;

/// A report from one device ending at `end_ms` with `requests` to `version` of `bc`.
fn report(end_ms: u64, version: &str, requests: u64, slow_ms: f64) -> Report {
    let mut latency_us = LogHistogram::default();
    for i in 0..requests {
        latency_us.record(1_000.0 + (i % 7) as f64 * 300.0 + slow_ms * 1000.0);
    }
    Report {
        window_start_ms: end_ms.saturating_sub(10_000),
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
            label_counts: Default::default(),
        }],
        system: SystemStats::default(),
        prediction_log: LogWindow::default(),
        outbox: OutboxStats::default(),
    }
}

/// The devices' labels: two sites, a second label on one, a device without any.
fn device_labels(device: &str) -> BTreeMap<String, String> {
    let pairs: &[(&str, &str)] = match device {
        "dev-0" => &[("site", "berlin"), ("tier", "edge")],
        "dev-1" => &[("site", "oslo")],
        "dev-2" => &[("site", "berlin")],
        _ => &[],
    };
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// Four devices and two versions reporting every 10 s from 00:59:30 to 03:10:00, in order:
/// (device, report).
fn fleet_reports() -> Vec<(String, Report)> {
    let mut out = Vec::new();
    for (i, end) in (3_570_000..=11_400_000u64).step_by(10_000).enumerate() {
        for d in 0..4u64 {
            let version = if d % 2 == 0 { "1.0.0" } else { "1.1.0" };
            let n = 5 + (i as u64 * 7 + d * 3) % 40;
            out.push((format!("dev-{d}"), report(end + d, version, n, (i % 13) as f64)));
        }
    }
    out
}

fn sled() -> (Slos, Backing) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    (Slos::open(&store).unwrap(), Backing::Sled(dir, store))
}

fn postgres() -> (Slos, Backing) {
    let db = TestDatabase::new();
    (Slos::open_postgres(&db.store()), Backing::Postgres(db))
}

/// A fresh repository on one backend.
type Open = fn() -> (Slos, Backing);

crate::base::pg::store::testing::on_both_backends!(
    sled, postgres;
    a_batch_of_reports_rolls_up_what_the_same_reports_one_by_one_do,
    the_rollups_sum_exactly_what_a_scan_of_every_window_sums,
    the_rollups_by_device_label_sum_what_a_scan_grouped_by_the_devices_labels_sums,
    a_resent_report_adds_nothing_to_the_rollups,
    status_over_a_window_reads_the_rollups_from_the_minute_holding_its_start,
    the_dashboard_timeline_from_minute_buckets_matches_the_windows,
    objectives_are_kept_per_model,
    shadow_windows_are_kept_as_first_stored,
);

/// [`fleet_reports`] stored one by one.
fn filled_one_by_one(open: Open) -> (Slos, Backing) {
    let (slos, backing) = open();
    for (device, report) in fleet_reports() {
        slos.put_report(&device, &device_labels(&device), &report).unwrap();
    }
    (slos, backing)
}

/// [`fleet_reports`] stored in batches of 8 (as ingest stores them; a batch is checked against
/// reports one by one in `a_batch_of_reports_rolls_up_what_the_same_reports_one_by_one_do`).
fn filled(open: Open) -> (Slos, Backing) {
    let (slos, backing) = open();
    let reports = fleet_reports();
    let labels: Vec<_> = reports.iter().map(|(d, _)| device_labels(d)).collect();
    for (chunk, labels) in reports.chunks(8).zip(labels.chunks(8)) {
        let batch: Vec<_> = chunk.iter().zip(labels).map(|((d, r), l)| (d.as_str(), l, r)).collect();
        slos.put_reports(&batch).unwrap();
    }
    (slos, backing)
}

/// [`fleet_reports`] stored one by one on sled (for the sled-only behaviours).
fn filled_sled() -> (tempfile::TempDir, Store, Slos) {
    let (slos, backing) = filled_one_by_one(sled);
    let Backing::Sled(dir, store) = backing else { unreachable!("sled") };
    (dir, store, slos)
}

fn a_batch_of_reports_rolls_up_what_the_same_reports_one_by_one_do(open: Open) {
    let (one_by_one, _one) = filled_one_by_one(open);
    let (batched, _two) = open();
    let reports = fleet_reports();
    let labels: Vec<_> = reports.iter().map(|(d, _)| device_labels(d)).collect();
    // Batches of 37 cross minutes and hours; each also carries a resend of its first report
    // (twice in one batch) and one of the batch before's with other counts: neither adds.
    let mut previous: Option<(String, Report)> = None;
    for (chunk, labels) in reports.chunks(37).zip(labels.chunks(37)) {
        let mut batch: Vec<(&str, &BTreeMap<String, String>, &Report)> =
            chunk.iter().zip(labels).map(|((d, r), l)| (d.as_str(), l, r)).collect();
        batch.push(batch[0]);
        let resend = previous.as_ref().map(|(d, r)| {
            let mut r = r.clone();
            r.models[0].requests += 1_000;
            (d.clone(), device_labels(d), r)
        });
        if let Some((d, l, r)) = &resend {
            batch.insert(5.min(batch.len()), (d.as_str(), l, r));
        }
        batched.put_reports(&batch).unwrap();
        previous = chunk.last().cloned();
    }
    for (from, to) in
        [(3_540_000, 3_599_999), (3_600_000, 7_259_999), (4_020_000, 11_459_999), (0, 20_000_000)]
    {
        let what = format!("{from}..{to}");
        let expected = one_by_one.rolled_up("bc", from, to).unwrap();
        assert!(expected.requests > 0, "{what}");
        assert_eq!(batched.rolled_up("bc", from, to).unwrap(), expected, "{what}");
        assert_eq!(
            batched.rolled_up_by_label("bc", from, to).unwrap(),
            one_by_one.rolled_up_by_label("bc", from, to).unwrap(),
            "{what} by label"
        );
        // The raw windows are the first arrivals, each once.
        let (raw, reference) = (
            batched.traffic_where("bc", from, to, |_, _| true).unwrap(),
            one_by_one.traffic_where("bc", from, to, |_, _| true).unwrap(),
        );
        assert_eq!((raw.0, raw.1, raw.3), (reference.0, reference.1, reference.3), "{what} raw");
    }
}

fn same(rolled: &TrafficWindow, raw: (u64, u64, LogHistogram, usize), what: &str) {
    assert_eq!((rolled.requests, rolled.errors), (raw.0, raw.1), "{what}");
    assert_eq!(rolled.latency_us.count(), raw.2.count(), "{what}");
    for q in [0.5, 0.95, 0.99] {
        assert_eq!(rolled.latency_us.quantile(q), raw.2.quantile(q), "{what} q{q}");
    }
    assert_eq!(rolled.latency_us.count_above(5_000.0), raw.2.count_above(5_000.0), "{what}");
}

fn the_rollups_sum_exactly_what_a_scan_of_every_window_sums(open: Open) {
    let (slos, _backing) = filled(open);
    // Ranges within a minute, across an hour, over whole hours, and open at the end.
    for (from, to) in [
        (3_540_000, 3_599_999),
        (3_600_000, 3_659_999),
        (3_540_000, 7_259_999),
        (3_600_000, 10_799_999),
        (4_020_000, 11_459_999),
        (0, 20_000_000),
        (7_200_000, 7_200_000 + 59_999),
    ] {
        let raw = slos.traffic_where("bc", from, to, |_, _| true).unwrap();
        assert!(raw.0 > 0, "{from}..{to} has traffic");
        same(&slos.rolled_up("bc", from, to).unwrap(), raw, &format!("{from}..{to}"));
    }
    assert_eq!(slos.rolled_up("other", 0, u64::MAX).unwrap().requests, 0);
}

/// What a scan of every window says per `(label, value)`, the devices without a label under
/// `(label, "(none)")`.
fn scanned_by_label(
    slos: &Slos,
    from: u64,
    to: u64,
) -> BTreeMap<(String, String), (u64, u64, LogHistogram, usize)> {
    let mut out: BTreeMap<(String, String), (u64, u64, LogHistogram, usize)> = BTreeMap::new();
    for (device, w) in slos.traffic_by_device("bc", from, to).unwrap() {
        let labels = device_labels(&device);
        for label in ["site", "tier"] {
            let value = labels.get(label).map_or("(none)", String::as_str);
            let sum = out.entry((label.to_owned(), value.to_owned())).or_default();
            sum.0 += w.requests;
            sum.1 += w.errors;
            sum.2.merge(&w.latency_us).unwrap();
            sum.3 += 1;
        }
    }
    out
}

fn the_rollups_by_device_label_sum_what_a_scan_grouped_by_the_devices_labels_sums(open: Open) {
    let (slos, _backing) = filled(open);
    for (from, to) in
        [(3_540_000, 3_599_999), (3_540_000, 7_259_999), (4_020_000, 11_459_999), (0, 20_000_000)]
    {
        let what = format!("{from}..{to}");
        let rolled = slos.rolled_up_by_label("bc", from, to).unwrap();
        let mut scanned = scanned_by_label(&slos, from, to);
        let keys: Vec<_> = rolled.keys().cloned().collect();
        assert_eq!(keys.len(), 3, "{what}: berlin, oslo, edge");
        for key in &keys {
            let raw = scanned.remove(key).unwrap_or_else(|| panic!("{what}: {key:?} in the scan"));
            same(&rolled[key], raw, &format!("{what} {key:?}"));
        }
        // Devices without a label: the total less every value's (as the dashboard shows them).
        for label in ["site", "tier"] {
            let mut rest = slos.rolled_up("bc", from, to).unwrap();
            for (_, w) in rolled.iter().filter(|((l, _), _)| l == label) {
                rest.requests -= w.requests;
                rest.errors -= w.errors;
                rest.latency_us.subtract(&w.latency_us).unwrap();
            }
            let raw = scanned.remove(&(label.to_owned(), "(none)".to_owned())).unwrap();
            same(&rest, raw, &format!("{what} {label}=(none)"));
        }
        assert!(scanned.is_empty(), "{what}: {scanned:?}");
    }
}

#[test]
fn a_store_from_before_rollups_by_label_is_rolled_up_once_by_the_devices_labels() {
    let (_dir, store, slos) = filled_sled();
    let expected = slos.rolled_up_by_label("bc", 0, 20_000_000).unwrap();
    rollup::invalidate(&store, rollup::BY_LABEL_MARKER).unwrap();
    for tree in ["traffic_by_label_1m", "traffic_by_label_1h"] {
        store.tree(tree).unwrap().clear().unwrap();
    }
    assert!(slos.rolled_up_by_label("bc", 0, 20_000_000).unwrap().is_empty());
    let labels =
        || Ok(["dev-0", "dev-1", "dev-2"].into_iter().map(|d| (d.to_owned(), device_labels(d))).collect());
    slos.ensure_rolled_up_by_label(labels).unwrap();
    assert_eq!(slos.rolled_up_by_label("bc", 0, 20_000_000).unwrap(), expected);
    slos.ensure_rolled_up_by_label(|| {
        Err(StoreError::Corrupt { key: "devices".into(), detail: "read".into() })
    })
    .unwrap();
}

fn a_resent_report_adds_nothing_to_the_rollups(open: Open) {
    let (slos, _backing) = filled(open);
    let before = slos.rolled_up("bc", 0, 20_000_000).unwrap();
    let by_label = slos.rolled_up_by_label("bc", 0, 20_000_000).unwrap();
    slos.put_report("dev-1", &device_labels("dev-1"), &report(3_600_001, "1.1.0", 999, 0.0)).unwrap();
    slos.put_report("dev-2", &device_labels("dev-2"), &report(3_570_002, "1.0.0", 5, 0.0)).unwrap();
    assert_eq!(slos.rolled_up("bc", 0, 20_000_000).unwrap(), before, "resends add nothing");
    assert_eq!(slos.rolled_up_by_label("bc", 0, 20_000_000).unwrap(), by_label, "by label neither");
    let raw = slos.traffic_where("bc", 0, 20_000_000, |_, _| true).unwrap();
    assert_eq!(raw.0, before.requests, "the first arrival stays the raw window too");
}

#[test]
fn a_store_from_before_rollups_is_rolled_up_when_opened() {
    let (_dir, store, slos) = filled_sled();
    let expected = slos.traffic_where("bc", 0, 20_000_000, |_, _| true).unwrap();
    // What a data directory written by a coordinator without roll-ups looks like.
    rollup::invalidate(&store, rollup::MARKER).unwrap();
    store.tree("traffic_1m").unwrap().clear().unwrap();
    store.tree("traffic_1h").unwrap().clear().unwrap();
    let reopened = Slos::open(&store).unwrap();
    same(&reopened.rolled_up("bc", 0, 20_000_000).unwrap(), expected, "rebuilt");
    let part = slos.traffic_where("bc", 3_600_000, 7_259_999, |_, _| true).unwrap();
    same(&reopened.rolled_up("bc", 3_600_000, 7_259_999).unwrap(), part, "rebuilt, in part");
    assert!(store.tree("traffic_1h").unwrap().len() >= 3);
}

#[test]
fn an_unreadable_bucket_is_left_out_then_rebuilt_from_the_raw_windows_at_the_next_start() {
    let (_dir, store, slos) = filled_sled();
    let expected = slos.traffic_where("bc", 0, 20_000_000, |_, _| true).unwrap();
    // A worn card flips the hour bucket from 01:00 of 1.0.0 into garbage.
    let hours = store.tree("traffic_1h").unwrap();
    hours.insert(rollup::key("bc", 3_600_000, "1.0.0"), &[0xff, 0xff, 0xff][..]).unwrap();
    let short = slos.rolled_up("bc", 0, 20_000_000).unwrap();
    assert!(short.requests < expected.0, "the unreadable bucket is left out, not guessed");
    // A report into that bucket starts it afresh instead of failing ingest.
    slos.put_report("dev-9", &Default::default(), &report(3_600_500, "1.0.0", 3, 0.0)).unwrap();
    let meta = store.tree("meta").unwrap();
    assert!(!meta.contains_key(rollup::MARKER).unwrap());
    assert!(
        !meta.contains_key(rollup::BY_LABEL_MARKER).unwrap(),
        "both are rebuilt: one transaction moved both"
    );
    let expected = slos.traffic_where("bc", 0, 20_000_000, |_, _| true).unwrap();
    let reopened = Slos::open(&store).unwrap();
    same(&reopened.rolled_up("bc", 0, 20_000_000).unwrap(), expected, "rebuilt after the flip");
}

fn status_over_a_window_reads_the_rollups_from_the_minute_holding_its_start(open: Open) {
    let (slos, _backing) = filled(open);
    let spec = SloSpec {
        availability: Some(0.95),
        latency: Some(LatencyObjective { percentile: 0.95, threshold_ms: 5.0 }),
        accuracy: None,
        window_secs: 3_600,
    };
    let dir = tempfile::tempdir().unwrap();
    let labels = Labels::open(&Store::open(dir.path()).unwrap()).unwrap();
    let status = slos.status(&labels, "bc", &spec, 11_430_000).unwrap();
    assert_eq!(status.from_ms, 7_800_000, "11,430,000 − 1 h = 7,830,000, in the minute from 7,800,000");
    let raw = slos.traffic_where("bc", 7_800_000, 11_430_000, |_, _| true).unwrap();
    let availability = &status.objectives[0];
    assert_eq!((availability.events, availability.bad_events), (raw.0, raw.1));
    assert_eq!(status.objectives[1].bad_events, raw.2.count_above(5_000.0));
}

fn the_dashboard_timeline_from_minute_buckets_matches_the_windows(open: Open) {
    let (slos, _backing) = filled(open);
    // Ten-minute chart buckets from 01:00 to 03:00 (the windows at 03:00:00 are past it).
    let grid = TimeBuckets { from_ms: 3_600_000, to_ms: 10_799_999, width_ms: 600_000, count: 12 };
    let rolled = slos.timeline("bc", &grid).unwrap();
    for (i, start) in grid.starts().into_iter().enumerate() {
        for version in ["1.0.0", "1.1.0"] {
            let raw =
                slos.traffic_where("bc", start, start + grid.width_ms - 1, |_, v| v == version).unwrap();
            same(&rolled[i][version], raw, &format!("bucket {i} {version}"));
        }
    }
}

fn objectives_are_kept_per_model(open: Open) {
    let (slos, _backing) = open();
    assert_eq!(slos.get("bc").unwrap(), None);
    let latency = LatencyObjective { percentile: 0.95, threshold_ms: 200.0 };
    let first = SloSpec { availability: Some(0.99), latency: None, accuracy: None, window_secs: 3600 };
    let second =
        SloSpec { availability: None, latency: Some(latency), accuracy: Some(0.8), window_secs: 86_400 };
    slos.set("bc", &first).unwrap();
    slos.set("iris", &first).unwrap();
    slos.set("bc", &second).unwrap();
    assert_eq!(slos.get("bc").unwrap(), Some(second.clone()), "a later spec replaces the earlier");
    assert_eq!(slos.all().unwrap(), vec![("bc".to_owned(), second), ("iris".to_owned(), first)]);
}

fn shadow_windows_are_kept_as_first_stored(open: Open) {
    use outpost_shared::protocol::messages::ShadowWindow;
    let (slos, _backing) = open();
    let shadow = |end_ms: u64, version: &str, compared: u64, agreed: u64| ShadowReport {
        window_start_ms: end_ms - 10_000,
        window_end_ms: end_ms,
        models: vec![ShadowWindow {
            model: "bc".into(),
            version: version.into(),
            primary: "1.0.0".into(),
            compared,
            agreed,
        }],
    };
    slos.put_shadow("d1", &shadow(60_000, "2.0.0", 10, 9)).unwrap();
    slos.put_shadow("d1", &shadow(60_000, "2.0.0", 50, 0)).unwrap();
    slos.put_shadow("d2", &shadow(60_000, "2.0.0", 20, 20)).unwrap();
    slos.put_shadow("d2", &shadow(70_000, "2.1.0", 5, 1)).unwrap();
    slos.put_shadow("d2", &shadow(90_000, "2.0.0", 7, 7)).unwrap();
    assert_eq!(
        slos.shadow_where("bc", 0, u64::MAX, |_, _| true).unwrap(),
        (42, 37),
        "the resend adds nothing"
    );
    assert_eq!(slos.shadow_where("bc", 60_000, 70_000, |d, _| d == "d2").unwrap(), (25, 21));
    assert_eq!(slos.shadow_where("bc", 0, 89_999, |_, v| v == "2.0.0").unwrap(), (30, 29));
    assert_eq!(slos.shadow_where("other", 0, u64::MAX, |_, _| true).unwrap(), (0, 0));
}

/// Three replicas (each a pool and a shard of its own) store one fleet's reports at once, in
/// batches that overlap: every window counts once and the roll-ups sum exactly what the raw
/// windows do, as one replica storing them one by one gives.
#[test]
fn on_postgres_replicas_storing_overlapping_batches_at_once_count_each_window_once() {
    let db = TestDatabase::new();
    let replicas: Vec<Slos> = (0..3).map(|_| Slos::open_postgres(&db.store())).collect();
    let reports = fleet_reports();
    let labels: Vec<_> = reports.iter().map(|(d, _)| device_labels(d)).collect();
    std::thread::scope(|s| {
        for (n, slos) in replicas.iter().enumerate() {
            let (reports, labels) = (&reports, &labels);
            s.spawn(move || {
                // Each replica stores every report, from its own starting point, in batches of
                // 64: each window arrives three times, often at the same moment.
                let mut batch: Vec<(&str, &BTreeMap<String, String>, &Report)> = Vec::new();
                let count = reports.len();
                for i in 0..count {
                    let j = (i + n * count / 3) % count;
                    batch.push((reports[j].0.as_str(), &labels[j], &reports[j].1));
                    if batch.len() == 64 || i + 1 == count {
                        slos.put_reports(&batch).unwrap();
                        batch.clear();
                    }
                }
            });
        }
    });
    let (reference, _backing) = filled(postgres);
    for (from, to) in [(3_540_000, 3_599_999), (3_600_000, 7_259_999), (0, 20_000_000)] {
        let what = format!("{from}..{to}");
        let raw = replicas[0].traffic_where("bc", from, to, |_, _| true).unwrap();
        assert_eq!(raw.0, reference.traffic_where("bc", from, to, |_, _| true).unwrap().0, "{what}");
        same(&replicas[1].rolled_up("bc", from, to).unwrap(), raw, &what);
        assert_eq!(
            replicas[2].rolled_up_by_label("bc", from, to).unwrap(),
            reference.rolled_up_by_label("bc", from, to).unwrap(),
            "{what} by label"
        );
    }
}

#[test]
fn time_buckets_cover_the_range_and_the_end_falls_in_the_last() {
    let g = TimeBuckets::new(1_000, 61_000, 6);
    assert_eq!((g.width_ms, g.starts()), (10_000, vec![1_000, 11_000, 21_000, 31_000, 41_000, 51_000]));
    assert_eq!((g.index(1_000), g.index(10_999), g.index(11_000), g.index(61_000)), (0, 0, 1, 5));
    assert_eq!(TimeBuckets::new(5, 5, 0).count, 1);
}

#[test]
fn burn_rate_is_the_bad_share_over_the_allowed_share() {
    let o = objective("availability", 0.99, Some(0.95), 100, 5, false);
    assert!((o.burn_rate - 5.0).abs() < 1e-9, "{o:?}");
    assert_eq!(o.budget_remaining, 0.0);
    let calm = objective("availability", 0.99, Some(0.998), 1000, 2, true);
    assert!((calm.burn_rate - 0.2).abs() < 1e-9 && (calm.budget_remaining - 0.8).abs() < 1e-9);
}

#[test]
fn specs_are_checked() {
    let spec = SloSpec { availability: Some(1.5), latency: None, accuracy: None, window_secs: 3600 };
    assert!(spec.validate().unwrap_err().to_string().contains("availability"));
    let empty = SloSpec { availability: None, latency: None, accuracy: None, window_secs: 3600 };
    assert!(empty.validate().unwrap_err().to_string().contains("at least one"));
    let latency = LatencyObjective { percentile: 0.95, threshold_ms: 200.0 };
    let ok =
        SloSpec { availability: Some(0.99), latency: Some(latency), accuracy: Some(0.85), window_secs: 3600 };
    ok.validate().unwrap();
}
