//! Unit tests of rollout specs and wave sizes.

use super::*;
use crate::base::store::Store;

fn spec(text: &str) -> RolloutSpec {
    serde_json::from_str(text).unwrap()
}

#[test]
fn specs_are_checked_by_name() {
    let ok = spec(r#"{"model": "bc", "version": "1.1.0"}"#);
    assert_eq!(ok.validate().unwrap().len(), 3);
    for (text, says) in [
        (r#"{"model": "bc", "version": "1", "strategy": "shadow", "gates": ["accuracy>=-1%"]}"#, "no labels"),
        (r#"{"model": "bc", "version": "1", "gates": ["agreement>=95%"]}"#, "`shadow` strategy only"),
        (r#"{"model": "bc", "version": "1", "strategy": "canary", "steps": [5, 2.5, 100]}"#, "increase"),
        (
            r#"{"model": "bc", "version": "1", "strategy": "canary", "steps": [2.5, 100]}"#,
            "whole percentages",
        ),
        (r#"{"model": "bc", "version": "1", "strategy": "canary", "steps": [5, 50]}"#, "`steps` must be 100"),
        (r#"{"model": "bc", "version": "1", "waves": [50, 10, 100]}"#, "increase"),
        (r#"{"model": "bc", "version": "1", "waves": [10, 50]}"#, "`waves` must be 100"),
        (r#"{"model": "bc", "version": "1", "bake_secs": 0}"#, "bake_secs"),
        (r#"{"model": "bc", "version": "1", "min_labels": 0}"#, "at least 1"),
        (r#"{"model": "bc", "version": "1", "gates": ["p99<2x"]}"#, "no `<=`"),
        // Flags the strategy does not use are refused by name, not silently ignored.
        (
            r#"{"model": "bc", "version": "1", "strategy": "canary", "waves": [20, 60, 100]}"#,
            "`waves` (--waves) does not apply to the canary strategy",
        ),
        (
            r#"{"model": "bc", "version": "1", "steps": [5, 100]}"#,
            "`steps` (--steps) does not apply to the waves",
        ),
        (
            r#"{"model": "bc", "version": "1", "strategy": "blue-green", "waves": [100]}"#,
            "blue-green strategy",
        ),
    ] {
        let e = spec(text).validate().unwrap_err();
        assert!(e.to_string().contains(says), "{text}: {e}");
    }
    assert!(serde_json::from_str::<RolloutSpec>(r#"{"model": "bc", "version": "1", "wave": [1]}"#).is_err());
    let e = serde_json::from_str::<RolloutSpec>(r#"{"model": "bc", "version": "1", "strategy": "yolo"}"#)
        .unwrap_err();
    assert!(e.to_string().contains("unknown strategy `yolo` (waves, canary, blue-green, shadow)"), "{e}");
}

#[test]
fn waves_cover_a_growing_prefix_of_the_targets() {
    let mut r = bare(r#"{"model": "bc", "version": "1.1.0", "waves": [1, 20, 60, 100]}"#);
    assert_eq!(
        spec(r#"{"model": "bc", "version": "1", "strategy": "canary"}"#).plan(),
        vec![Step::Canary(5), Step::Canary(25), Step::Canary(50), Step::Switch]
    );
    assert_eq!(
        spec(r#"{"model": "bc", "version": "1", "strategy": "blue-green"}"#).plan(),
        vec![Step::Standby, Step::Switch]
    );
    // 1 % of 5 devices is still one device; each wave includes the ones before.
    let sizes: Vec<usize> = (0..4).map(|w| r.wave_devices(w).len()).collect();
    assert_eq!(sizes, vec![1, 1, 3, 5]);
    r.targets.truncate(1);
    assert_eq!(r.wave_devices(0), ["d0".to_owned()]);
}

/// A rollout of five targets as just started, with `spec_json`.
pub(super) fn bare(spec_json: &str) -> Rollout {
    Rollout {
        id: "r-1".into(),
        spec: spec(spec_json),
        baseline: "1.0.0".into(),
        targets: (0..5).map(|i| format!("d{i}")).collect(),
        previous: BTreeMap::new(),
        phase: Phase::Applying,
        wave: 0,
        moved: vec![],
        skipped: vec![],
        wave_started_ms: 0,
        bake_started_ms: None,
        bake_until_ms: None,
        extensions: 0,
        promoted: false,
        paused_reason: None,
        gates: vec![],
        baseline_scope: String::new(),
        evaluated_ms: None,
        history: vec![],
        incident: None,
        timeline: vec![],
        created_by: "t".into(),
        created_ms: 0,
        finished_ms: None,
        revision: 0,
        engine_term: None,
    }
}

#[test]
fn the_analysis_keeps_one_evaluation_per_spacing_and_every_verdict_change() {
    use super::gates::Verdict;
    let mut r = bare(r#"{"model": "bc", "version": "1.1.0", "bake_secs": 600}"#);
    assert_eq!(Evaluation::spacing_ms(600), 10_000);
    let at = |ms: u64, step: usize, extension: u32, verdict: Verdict| Evaluation {
        at_ms: ms,
        step,
        extension,
        gates: vec![GatePoint {
            gate: "p99<=1.2x".into(),
            verdict,
            candidate: Some(1.0),
            baseline: Some(1.0),
            limit: Some(1.2),
        }],
    };
    // A tick every second for a minute: one kept per ten seconds.
    for s in 0..60 {
        r.remember(at(s * 1000, 0, 0, Verdict::Inconclusive));
    }
    assert_eq!(r.history.len(), 6);
    // A verdict change, an extension and a new step are kept at once.
    r.remember(at(60_500, 0, 0, Verdict::Pass));
    r.remember(at(61_000, 0, 1, Verdict::Pass));
    r.remember(at(61_500, 1, 0, Verdict::Pass));
    r.remember(at(62_000, 1, 0, Verdict::Pass));
    assert_eq!(r.history.len(), 9);
    // Bounded.
    for s in 0..(MAX_HISTORY as u64 + 50) {
        r.remember(at(100_000 + s * 10_000, 2, 0, Verdict::Inconclusive));
    }
    assert_eq!(r.history.len(), MAX_HISTORY);
    assert_eq!(r.history.last().unwrap().at_ms, 100_000 + (MAX_HISTORY as u64 + 49) * 10_000);
}

/// The running sums a tick reads equal a scan of the same window, whatever arrives when: windows
/// before the span, resends, a device clock ahead, labels replaced, shadow windows, devices that
/// are not targets, a target whose previous version differs from the rest.
#[test]
fn running_evidence_equals_a_scan_of_the_same_window() {
    use super::evidence::EvidenceSource;
    use super::gates::Evidence;
    use super::running::Running;
    use crate::monitoring::quality::Labels;
    use crate::monitoring::slo::Slos;
    use outpost_shared::histogram::LogHistogram;
    use outpost_shared::protocol::messages::{
        DesiredModel, FeedbackBatch, LabelledPrediction, ModelWindow, Report, ShadowReport, ShadowWindow,
    };

    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (slos, labels) = (Slos::open(&store).unwrap(), Labels::open(&store).unwrap());
    let source = EvidenceSource::open(&store).unwrap();
    let mut r = bare(r#"{"model": "bc", "version": "1.1.0", "waves": [40, 100], "bake_secs": 100}"#);
    r.created_ms = 1_000_000;
    let was = |v: &str| {
        Some(DesiredModel {
            name: "bc".into(),
            version: v.into(),
            bundle_sha256: String::new(),
            watchdog: None,
            candidate: None,
        })
    };
    r.previous = (0..5).map(|i| (format!("d{i}"), was(if i == 4 { "0.9.0" } else { "1.0.0" }))).collect();

    let window = |d: usize, end: u64, version: &str| {
        let mut latency_us = LogHistogram::default();
        latency_us.record_n(300.0 + (d as f64) * 211.0 + (end % 7_000) as f64, 5 + (end / 10_000) % 9);
        Report {
            window_start_ms: end - 10_000,
            window_end_ms: end,
            models: vec![ModelWindow {
                model: "bc".into(),
                version: version.into(),
                slot: Slot::Primary,
                requests: 20 + d as u64,
                errors: (end / 10_000 + d as u64) % 3,
                rows: 20,
                latency_us,
                top_score: LogHistogram::default(),
                label_counts: BTreeMap::new(),
            }],
            system: Default::default(),
            prediction_log: Default::default(),
            outbox: Default::default(),
        }
    };
    // d0 and d1 move to 1.1.0 at 1,020,000; d5 is no target; d4 ran 0.9.0.
    let version_of = |d: usize, end: u64| match d {
        0 | 1 if end >= 1_020_000 => "1.1.0",
        4 => "0.9.0",
        _ => "1.0.0",
    };
    let write = |ends: std::ops::Range<u64>, truth: i64| {
        for end in ends.step_by(10_000) {
            for d in 0..6 {
                let device = format!("d{d}");
                let version = version_of(d, end);
                slos.put_report(&device, &Default::default(), &window(d, end, version)).unwrap();
                let label = LabelledPrediction {
                    prediction_id: end / 20_000,
                    model: "bc".into(),
                    version: version.into(),
                    slot: Slot::Primary,
                    predicted_at_ms: end - 1,
                    labelled_at_ms: end + 5,
                    predicted: (end % 30_000 != 0).then_some(1),
                    label: truth + (end % 4) as i64,
                };
                labels
                    .put(
                        &device,
                        &Default::default(),
                        &FeedbackBatch { labels: vec![label], unknown: 0, evicted: 0 },
                    )
                    .unwrap();
                let shadow = ShadowReport {
                    window_start_ms: end - 10_000,
                    window_end_ms: end,
                    models: vec![ShadowWindow {
                        model: "bc".into(),
                        version: "1.1.0".into(),
                        primary: version.into(),
                        compared: 10,
                        agreed: 9 - d as u64 % 2,
                    }],
                };
                slos.put_shadow(&device, &shadow).unwrap();
            }
        }
    };
    write(850_000..1_050_001, 1);
    // d2's clock runs 1000 s ahead: its window counts only once that time has come.
    slos.put_report("d2", &Default::default(), &window(2, 2_000_000, "1.0.0")).unwrap();

    let scan = |now: u64, same_devices: bool, moved: &[String]| {
        let from = if same_devices { r.created_ms } else { r.created_ms - 100_000 };
        (
            source.evidence("bc", "1.1.0", moved, r.created_ms, now).unwrap(),
            source.evidence_of_each("bc", &r.previous_versions(), from, now).unwrap(),
        )
    };
    let same = |running: (Evidence, Evidence), scanned: (Evidence, Evidence), at: &str| {
        for (side, (a, b)) in [("candidate", (running.0, scanned.0)), ("baseline", (running.1, scanned.1))] {
            assert!(b.requests > 0 && b.labelled > 0, "{at} {side}: the data has evidence: {b:?}");
            let counts = |e: &Evidence| {
                (
                    e.requests,
                    e.errors,
                    e.labelled,
                    e.correct,
                    e.compared,
                    e.agreed,
                    e.devices,
                    e.latency_us.count(),
                )
            };
            assert_eq!(counts(&a), counts(&b), "{at} {side}");
            for q in [0.5, 0.95, 0.99] {
                assert_eq!(a.latency_us.quantile(q), b.latency_us.quantile(q), "{at} {side} q{q}");
            }
        }
    };

    // The moved set grows wave by wave, and shrinks when the skip policy drops a device.
    let (first, both, second) =
        (vec!["d0".to_owned()], vec!["d0".to_owned(), "d1".to_owned()], vec!["d1".to_owned()]);
    let mut running = Running::start(Some(&store), &slos, &labels, &r, 1_050_000).unwrap();
    for same_devices in [false, true] {
        same(running.evidence(&first, same_devices), scan(1_050_000, same_devices, &first), "at start");
    }
    // More windows, resends of old ones, and every label sent again with another truth.
    write(1_060_000..1_200_001, 2);
    write(850_000..1_200_001, 3);
    running.read(1_200_000).unwrap();
    for same_devices in [false, true] {
        same(
            running.evidence(&both, same_devices),
            scan(1_200_000, same_devices, &both),
            "after more arrived",
        );
    }
    write(1_210_000..1_250_001, 4);
    running.read(1_250_000).unwrap();
    same(running.evidence(&both, false), scan(1_250_000, false, &both), "the same set again");
    same(running.evidence(&second, false), scan(1_250_000, false, &second), "after d0 was skipped");
    running.read(2_000_000).unwrap();
    let (_, baseline) = running.evidence(&second, false);
    same(
        running.evidence(&second, false),
        scan(2_000_000, false, &second),
        "once the early window's time came",
    );
    assert!(
        baseline.requests > scan(1_999_999, false, &second).1.requests,
        "the clock-ahead window counts from its time"
    );
}
