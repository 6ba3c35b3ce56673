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
    let mut r = Rollout {
        id: "r-1".into(),
        spec: spec(r#"{"model": "bc", "version": "1.1.0", "waves": [1, 20, 60, 100]}"#),
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
        incident: None,
        timeline: vec![],
        created_by: "t".into(),
        created_ms: 0,
        finished_ms: None,
    };
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
