//! Unit tests of rollout specs and wave sizes.

use super::*;

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
fn bare(spec_json: &str) -> Rollout {
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
