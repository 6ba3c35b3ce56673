//! A 30-day SLO status over a 10,000-device fleet: how long the coordinator takes to answer
//! availability, latency and accuracy over its minute and hour roll-ups, against the baseline of
//! summing every stored report window and reading every label (what it did before roll-ups), in
//! the same run on the same data. Then the dashboard's per-label breakdown (devices carry a
//! `site`, one of 20, and a `tier`, one of 3) and quality split by site from the roll-ups by
//! device label, against summing every window per device and reading every label; and what
//! storing a window with two device labels' roll-ups costs against one without labels. Last, a
//! 30-day drift report (`BENCH_SLO_DRIFT_PER_DEVICE` verdict sets per device, default 10, ten
//! features each) from the drift roll-ups against folding every stored verdict.
//!
//! `cargo bench -p outpost-coordinator --bench slo` (env `BENCH_SLO_DEVICES`, default 10000;
//! `BENCH_SLO_REPORTS_PER_DEVICE`, default 30, spread evenly over the 30 days). A real fleet
//! reports every 10 s (259,200 windows per device in 30 days); the roll-ups' size does not
//! depend on that (one bucket per minute and hour and version), the scan's does: its time is
//! printed as measured and scaled to that cadence.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fixtures;

use std::collections::BTreeMap;
use std::time::Instant;

use outpost_coordinator::base::store::Store;
use outpost_coordinator::monitoring::quality::Labels;
use outpost_coordinator::monitoring::report::{DriftHistory, History};
use outpost_coordinator::monitoring::slo::{LatencyObjective, SloSpec, SloStatus, Slos};
use outpost_shared::histogram::LogHistogram;
use outpost_shared::protocol::messages::{
    DriftReport, FeedbackBatch, LabelledPrediction, LogWindow, ModelDrift, ModelWindow, OutboxStats, Report,
    SystemStats,
};
use outpost_shared::protocol::vocab::Slot;

const DAY_MS: u64 = 86_400_000;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn report(end_ms: u64, version: &str, seed: u64) -> Report {
    let mut latency_us = LogHistogram::default();
    for j in 0..200 {
        latency_us.record(400.0 + ((seed * 31 + j * 17) % 9_000) as f64);
    }
    Report {
        window_start_ms: end_ms - 10_000,
        window_end_ms: end_ms,
        models: vec![ModelWindow {
            model: "breast_cancer".into(),
            version: version.into(),
            slot: Slot::Primary,
            requests: 200,
            errors: seed % 3,
            rows: 200,
            latency_us,
            top_score: LogHistogram::default(),
            label_counts: BTreeMap::new(),
        }],
        system: SystemStats::default(),
        prediction_log: LogWindow::default(),
        outbox: OutboxStats::default(),
    }
}

/// Device `d`'s labels: one of 20 sites and one of 3 tiers.
/// The `n`th window stored (device `d`'s `r`th): device `d` reports at evenly spread times, so
/// every minute of the 30 days has traffic; half the fleet runs 1.1.0 from day 15, as after a
/// rollout. (device, end, version, report)
fn fleet_window(from_ms: u64, step: u64, n: u64, d: u64, r: u64) -> (String, u64, &'static str, Report) {
    let end = from_ms + 1 + n * step;
    let version = if d % 2 == 1 && end > from_ms + 15 * DAY_MS { "1.1.0" } else { "1.0.0" };
    (format!("dev-{d:05}"), end, version, report(end, version, d * 7 + r))
}

/// The largest feedback message an agent sends: 10,000 labels from prediction `first` on.
fn big_feedback(first: u64, now_ms: u64) -> FeedbackBatch {
    FeedbackBatch {
        labels: (0..10_000u64)
            .map(|i| LabelledPrediction {
                prediction_id: first + i,
                model: "breast_cancer".into(),
                version: "1.0.0".into(),
                slot: Slot::Primary,
                predicted_at_ms: now_ms - 3_600_000 + i * 360,
                labelled_at_ms: now_ms,
                predicted: Some((i % 2) as i64),
                label: (i % 3 == 0) as i64,
            })
            .collect(),
        unknown: 0,
        evicted: 0,
    }
}

/// The one ground-truth label each window's device sends (right 9 times in 10).
fn feedback(d: u64, r: u64, end: u64, version: &str) -> FeedbackBatch {
    let label = LabelledPrediction {
        prediction_id: r,
        model: "breast_cancer".into(),
        version: version.into(),
        slot: Slot::Primary,
        predicted_at_ms: end - 5_000,
        labelled_at_ms: end,
        predicted: Some(1),
        label: i64::from(!(d + r).is_multiple_of(10)),
    };
    FeedbackBatch { labels: vec![label], unknown: 0, evicted: 0 }
}

fn device_labels(d: u64) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("site".to_owned(), format!("site-{:02}", d % 20)),
        ("tier".to_owned(), format!("t{}", d % 3)),
    ])
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn main() {
    let devices = env("BENCH_SLO_DEVICES", 10_000);
    let per_device = env("BENCH_SLO_REPORTS_PER_DEVICE", 30).max(1);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let slos = Slos::open(&store).unwrap();
    let labels = Labels::open(&store).unwrap();
    let now_ms = 1_800_000_000_000u64;
    let from_ms = now_ms - 30 * DAY_MS;

    let total = devices * per_device;
    let step = 30 * DAY_MS / total;
    let started = Instant::now();
    let mut n = 0u64;
    for r in 0..per_device {
        for d in 0..devices {
            let (device, end, version, window) = fleet_window(from_ms, step, n, d, r);
            slos.put_report(&device, &device_labels(d), &window).unwrap();
            // Each window's device also sends one ground-truth label (right 9 times in 10).
            labels.put(&device, &device_labels(d), &feedback(d, r, end, version)).unwrap();
            n += 1;
            if n.is_multiple_of(100_000) {
                eprintln!("  stored {n} of {total} report windows");
            }
        }
    }
    store.flush().unwrap();
    let stored = total as f64 / started.elapsed().as_secs_f64();
    // The largest feedback message an agent sends: 10,000 labels in one batch, one transaction.
    let big: Vec<FeedbackBatch> = (0..5).map(|b| big_feedback(1_000_000 + b * 10_000, now_ms)).collect();
    let mut samples = Vec::new();
    for b in &big {
        let t = Instant::now();
        labels.put("dev-big", &Default::default(), b).unwrap();
        samples.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let big_batch = median(samples);
    let count = |trees: &[&str]| trees.iter().map(|t| store.tree(t).unwrap().len()).sum::<usize>();
    let minutes = count(&["traffic_1m", "labels_1m"]);
    let hours = count(&["traffic_1h", "labels_1h"]);
    let by_label = (
        count(&["traffic_by_label_1m", "labels_by_label_1m"]),
        count(&["traffic_by_label_1h", "labels_by_label_1h"]),
    );
    println!(
        "30-day SLO status, {devices} devices, {total} report windows ({per_device} per device) and as many labels stored at {stored:.0}/s with their roll-ups"
    );
    println!("  roll-ups: {minutes} minute and {hours} hour buckets (two versions)");
    println!(
        "  by device label: {} minute and {} hour buckets (23 label values × two versions)",
        by_label.0, by_label.1
    );
    println!(
        "  a feedback batch of 10,000 labels stored with its roll-ups in {big_batch:.1} ms (median of 5)"
    );

    let spec = SloSpec {
        availability: Some(0.99),
        latency: Some(LatencyObjective { percentile: 0.95, threshold_ms: 8.0 }),
        accuracy: Some(0.85),
        window_secs: 30 * 86_400,
    };
    let mut samples = Vec::new();
    let mut status = None;
    for _ in 0..21 {
        let t = Instant::now();
        status = Some(slos.status(&labels, "breast_cancer", &spec, now_ms).unwrap());
        samples.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let status = status.unwrap();
    let rolled = median(samples);

    // The baseline: what status did before roll-ups — every window summed, every label read.
    let (mut windows_ms, mut labels_ms) = (Vec::new(), Vec::new());
    let mut raw = None;
    for _ in 0..3 {
        let t = Instant::now();
        let traffic = slos.traffic_where("breast_cancer", status.from_ms, now_ms, |_, _| true).unwrap();
        windows_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        let t = Instant::now();
        let labelled = labels.scan_tally("breast_cancer", status.from_ms, now_ms).unwrap().labelled;
        labels_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        raw = Some((traffic, labelled));
    }
    let ((requests, errors, latency, _), labelled) = raw.unwrap();
    let (windows_ms, labels_ms) = (median(windows_ms), median(labels_ms));
    let availability = &status.objectives[0];
    assert_eq!(
        (availability.events, availability.bad_events),
        (requests, errors),
        "the roll-ups and the scan must count the same requests"
    );
    assert_eq!(status.objectives[1].bad_events, latency.count_above(8_000.0));
    assert_eq!(status.objectives[2].events, labelled, "the roll-ups and the scan must count the same labels");
    let real_windows = devices as f64 * 30.0 * 8_640.0;
    println!(
        "  status from the roll-ups (availability, p95, accuracy) {rolled:>9.2} ms (median of 21; target ≤ 200 ms)"
    );
    println!(
        "  baseline: summing every stored window, then every label {:>9.2} ms ({windows_ms:.2} + {labels_ms:.2}; median of 3)",
        windows_ms + labels_ms
    );
    println!(
        "  the windows' part at a 10 s cadence ({real_windows:.2e} windows)  {:>9.0} s (scaled)",
        windows_ms / 1000.0 * real_windows / total as f64
    );
    // A quality report (per class, per version) without segments, from the roll-ups, against
    // the same report split by a device label, which reads every label.
    let time = |f: &dyn Fn() -> u64| {
        let mut samples = Vec::new();
        let mut rows = 0;
        for _ in 0..5 {
            let t = Instant::now();
            rows = f();
            samples.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        (median(samples), rows)
    };
    let rows = |q: outpost_coordinator::monitoring::quality::QualityReport| -> u64 {
        q.versions.values().map(|v| v.metrics.rows).sum()
    };
    let (rolled_quality, rolled_rows) =
        time(&|| rows(labels.quality("breast_cancer", Some(status.from_ms), None).unwrap()));
    // `dev-big` (the large feedback batches) has no labels.
    let value_of = |device: &str, label: &str| {
        device.trim_start_matches("dev-").parse().ok().and_then(|d| device_labels(d).remove(label))
    };
    let site_of = |device: &str| Ok(value_of(device, "site"));
    let (split_quality, split_rows) =
        time(&|| rows(labels.quality("breast_cancer", Some(status.from_ms), Some("site")).unwrap()));
    let (scanned_quality, scanned_rows) =
        time(&|| rows(labels.scan_quality("breast_cancer", Some(status.from_ms), "site", site_of).unwrap()));
    assert_eq!(
        (rolled_rows, split_rows),
        (scanned_rows, scanned_rows),
        "the quality reports count the same labels"
    );
    let segments = |q: &outpost_coordinator::monitoring::quality::QualityReport| {
        q.versions.values().map(|v| v.segments.clone()).collect::<Vec<_>>()
    };
    assert_eq!(
        segments(&labels.quality("breast_cancer", Some(status.from_ms), Some("site")).unwrap()),
        segments(&labels.scan_quality("breast_cancer", Some(status.from_ms), "site", site_of).unwrap()),
        "the split from the roll-ups is the split from every label"
    );
    println!(
        "  quality report per class, 30 days: roll-ups {rolled_quality:.2} ms; split by site: roll-ups {split_quality:.2} ms, baseline every label {scanned_quality:.2} ms"
    );
    // The dashboard's breakdown by site and tier over its longest range (7 days): the traffic and
    // labelled predictions per label value from the roll-ups, against the baseline of summing
    // every window per device and reading every label once per label shown.
    let week = now_ms - 7 * DAY_MS;
    let (breakdown_ms, values) = time(&|| {
        let traffic = slos.rolled_up_by_label("breast_cancer", week, now_ms).unwrap();
        let labelled = labels.rolled_up_by_label("breast_cancer", week, now_ms, None).unwrap();
        (traffic.len() + labelled.len()) as u64
    });
    let (scan_breakdown_ms, devices_seen) = time(&|| {
        let per_device = slos.traffic_by_device("breast_cancer", week, now_ms).unwrap();
        for label in ["site", "tier"] {
            let label_of = |device: &str| Ok(value_of(device, label));
            labels.scan_quality("breast_cancer", Some(week), label, label_of).unwrap();
        }
        per_device.len() as u64
    });
    let rolled_site: u64 = slos
        .rolled_up_by_label("breast_cancer", week, now_ms)
        .unwrap()
        .iter()
        .filter(|((label, _), _)| label == "site")
        .map(|(_, w)| w.requests)
        .sum();
    let scanned_all: u64 =
        slos.traffic_by_device("breast_cancer", week, now_ms).unwrap().values().map(|w| w.requests).sum();
    assert_eq!(rolled_site, scanned_all, "the sites' requests from the roll-ups are every device's");
    println!(
        "  7-day breakdown by site and tier: roll-ups {breakdown_ms:.2} ms ({values} value × version sums); baseline every window per device and every label {scan_breakdown_ms:.2} ms ({devices_seen} devices)"
    );
    println!(
        "  the baseline's windows at a 10 s cadence ({:.2e} windows in 7 days) would take ~{:.0} s (scaled)",
        devices as f64 * 7.0 * 8_640.0,
        scan_breakdown_ms / 1000.0 * (devices as f64 * 7.0 * 8_640.0) / (total as f64 * 7.0 / 30.0)
    );
    // What the two labels' roll-ups cost a window as it is stored: the same 20,000 windows into
    // fresh stores, from devices without labels and with site and tier.
    let store_rate = |labelled: bool| {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let slos = Slos::open(&store).unwrap();
        let none = BTreeMap::new();
        let t = Instant::now();
        for i in 0..20_000u64 {
            let d = i % 2_000;
            let device_labels = if labelled { device_labels(d) } else { none.clone() };
            slos.put_report(&format!("dev-{d:05}"), &device_labels, &report(now_ms + i * 500, "1.0.0", i))
                .unwrap();
        }
        store.flush().unwrap();
        20_000.0 / t.elapsed().as_secs_f64()
    };
    let (plain, with_labels) = (store_rate(false), store_rate(true));
    let (plain2, with_labels2) = (store_rate(false), store_rate(true));
    println!(
        "  storing a report window with its roll-ups: {:.0}/s without device labels, {:.0}/s with two (two runs each, alternating: {plain:.0}, {plain2:.0} / {with_labels:.0}, {with_labels2:.0})",
        (plain + plain2) / 2.0,
        (with_labels + with_labels2) / 2.0
    );
    println!(
        "  both read {requests} requests, {errors} failed, {labelled} labels; p95 {:.2} ms, accuracy {:.3}",
        status.objectives[1].actual.unwrap_or(f64::NAN),
        status.objectives[2].actual.unwrap_or(f64::NAN)
    );
    on_postgres(devices, per_device, now_ms, &status);
    drift_report(&store, devices, now_ms);
}

/// The same windows and labels on PostgreSQL, stored by two replicas at once in batches of 512
/// (as ingest stores a link batch), and the same 30-day status from its roll-up rows; it must
/// count what sled's did.
fn on_postgres(devices: u64, per_device: u64, now_ms: u64, on_sled: &SloStatus) {
    let Some(db) = fixtures::BenchDatabase::new("slo") else { return };
    let replicas: Vec<(Slos, Labels)> =
        (0..2).map(|_| db.store()).map(|s| (Slos::open_postgres(&s), Labels::open_postgres(&s))).collect();
    let from_ms = now_ms - 30 * DAY_MS;
    let total = devices * per_device;
    let step = 30 * DAY_MS / total;
    let started = Instant::now();
    std::thread::scope(|s| {
        for (i, (slos, labels)) in replicas.iter().enumerate() {
            s.spawn(move || {
                let mut n = 0u64;
                let mut batch = Vec::new();
                for r in 0..per_device {
                    for d in 0..devices {
                        if (n / 512) % 2 == i as u64 {
                            let (device, end, version, window) = fleet_window(from_ms, step, n, d, r);
                            batch.push((device, device_labels(d), window, feedback(d, r, end, version)));
                        }
                        n += 1;
                        if batch.len() == 512 || (n == total && !batch.is_empty()) {
                            let reports: Vec<_> =
                                batch.iter().map(|(d, l, w, _)| (d.as_str(), l, w)).collect();
                            slos.put_reports(&reports).unwrap();
                            let feedback: Vec<_> =
                                batch.iter().map(|(d, l, _, f)| (d.as_str(), l, f)).collect();
                            labels.put_many(&feedback).unwrap();
                            batch.clear();
                        }
                    }
                }
            });
        }
    });
    let stored = total as f64 / started.elapsed().as_secs_f64();
    let (slos, labels) = &replicas[0];
    let mut samples = Vec::new();
    for b in 0..5 {
        let batch = big_feedback(1_000_000 + b * 10_000, now_ms);
        let t = Instant::now();
        labels.put("dev-big", &Default::default(), &batch).unwrap();
        samples.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let big_batch = median(samples);
    let mut samples = Vec::new();
    let mut status = None;
    for _ in 0..21 {
        let t = Instant::now();
        status = Some(slos.status(labels, "breast_cancer", &on_sled.spec, now_ms).unwrap());
        samples.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let status = status.unwrap();
    let counts = |s: &SloStatus| s.objectives.iter().map(|o| (o.events, o.bad_events)).collect::<Vec<_>>();
    assert_eq!(counts(&status), counts(on_sled), "PostgreSQL's roll-ups must count what sled's do");
    let rows = |table: &str| -> i64 {
        let sql = format!("SELECT count(*) FROM {table} WHERE NOT by_label");
        db.store().with(|c| c.query_one(&sql, &[])?.try_get(0)).unwrap()
    };
    println!(
        "  on PostgreSQL, 2 replicas storing batches of 512 windows and labels at once ({stored:.0} windows and labels/s with their roll-ups; {} traffic and {} label version bucket rows):",
        rows("outpost_traffic_rollups"),
        rows("outpost_label_rollups")
    );
    println!(
        "    status from the roll-up rows (availability, p95, accuracy) {:>9.2} ms (median of 21; target ≤ 200 ms); same counts as sled",
        median(samples)
    );
    println!(
        "    a feedback batch of 10,000 labels stored with its roll-ups in {big_batch:.1} ms (median of 5)"
    );
}

/// The drift report over 30 days from the roll-ups, against folding every verdict.
fn drift_report(store: &Store, devices: u64, now_ms: u64) {
    let per_device = env("BENCH_SLO_DRIFT_PER_DEVICE", 10).max(1);
    let history = History::open(store).unwrap();
    let from_ms = now_ms - 30 * DAY_MS;
    let total = devices * per_device;
    let step = 30 * DAY_MS / total;
    let started = Instant::now();
    let mut n = 0u64;
    for r in 0..per_device {
        for d in 0..devices {
            let at = from_ms + 1 + n * step;
            let version = if d % 2 == 1 && at > from_ms + 15 * DAY_MS { "1.1.0" } else { "1.0.0" };
            let features = fixtures::ten_features(d + r, d, 1_000);
            let m = ModelDrift {
                model: "breast_cancer".into(),
                version: version.into(),
                window_rows: 1_000,
                rows_seen: 1_000 * (r + 1),
                features,
                prediction: None,
            };
            history.put(&format!("dev-{d:05}"), &DriftReport { at_ms: at, models: vec![m] }).unwrap();
            n += 1;
        }
    }
    store.flush().unwrap();
    let stored = total as f64 / started.elapsed().as_secs_f64();
    let time = |f: &dyn Fn() -> DriftHistory| {
        let mut samples = Vec::new();
        let mut out = None;
        for _ in 0..3 {
            let t = Instant::now();
            out = Some(f());
            samples.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        (median(samples), out.unwrap())
    };
    let (rolled_ms, rolled) = time(&|| DriftHistory::build(&history, "breast_cancer", from_ms).unwrap());
    let (scanned_ms, scanned) =
        time(&|| DriftHistory::from_verdicts(&history, "breast_cancer", from_ms, None).unwrap());
    assert_eq!(rolled, scanned, "the report from the roll-ups is the report from every verdict");
    println!(
        "30-day drift report, {devices} devices, {total} verdict sets of 10 features stored at {stored:.0}/s with their roll-ups"
    );
    println!(
        "  from the roll-ups {rolled_ms:>9.2} ms; baseline folding every verdict {scanned_ms:>9.2} ms (median of 3; {} windows, {} devices, {} version changes)",
        rolled.windows,
        rolled.devices,
        rolled.version_changes.iter().map(|c| c.devices).sum::<u64>()
    );
    let real = devices as f64 * 30.0 * 8_640.0;
    println!(
        "  the baseline at a 10 s drift interval ({real:.2e} verdict sets) ~{:.0} s (scaled)",
        scanned_ms / 1000.0 * real / total as f64
    );
}
