//! Unit tests of the message bodies: round trips, and every refusal of outside bytes.
use super::*;
use proptest::prelude::*;

fn report(latencies: &[f64]) -> Report {
    let mut latency_us = LogHistogram::default();
    for &l in latencies {
        latency_us.record(l);
    }
    Report {
        window_start_ms: 1,
        window_end_ms: 10_001,
        models: vec![ModelWindow {
            model: "bc".into(),
            version: "1.0.0".into(),
            slot: Slot::Primary,
            requests: latencies.len() as u64,
            errors: 0,
            rows: latencies.len() as u64,
            latency_us,
            top_score: LogHistogram::default(),
            label_counts: BTreeMap::from([("0".into(), 3)]),
        }],
        system: SystemStats::default(),
        prediction_log: LogWindow::default(),
        outbox: OutboxStats::default(),
    }
}

#[test]
fn acks_merge_seqs_into_ranges() {
    let ack = Ack::from_seqs("d", [5, 1, 2, 3, 9, 3, 10, u64::MAX]);
    assert_eq!(ack.ranges, vec![(1, 3), (5, 5), (9, 10), (u64::MAX, u64::MAX)]);
    assert!(ack.covers(2) && ack.covers(10) && !ack.covers(4));
}

#[test]
fn refuses_bad_bodies() {
    assert_eq!(decode_agent(&[]), Err(MessageError::Empty));
    assert_eq!(decode_agent(&[7, 0]), Err(MessageError::UnsupportedFormat { found: 7 }));
    let mut bytes = encode(&AgentMessage::Report(report(&[1.0])));
    bytes.push(0);
    assert_eq!(decode_agent(&bytes), Err(MessageError::TrailingBytes(1)));
    let shadow = AgentMessage::Shadow(ShadowReport {
        window_start_ms: 0,
        window_end_ms: 1,
        models: vec![ShadowWindow {
            model: "bc".into(),
            version: "2.0.0".into(),
            primary: "1.0.0".into(),
            compared: 3,
            agreed: 4,
        }],
    });
    assert!(
        matches!(decode_agent(&encode(&shadow)), Err(MessageError::Malformed(m)) if m.contains("agrees on 4 of 3 rows"))
    );
    let reversed = CoordinatorMessage::Ack(Ack { device: "d".into(), ranges: vec![(5, 2)] });
    assert_eq!(decode_coordinator(&encode(&reversed)), Err(MessageError::ReversedRange(5, 2)));
}

#[test]
fn refuses_a_message_naming_a_model_or_version_outside_the_name_grammar() {
    for (model, version) in [("a\0b", "1.0.0"), ("bc", "1.0\u{1b}[2J"), ("", "1.0.0"), ("../x", "1.0.0")] {
        let mut r = report(&[1.0]);
        r.models[0].model = model.into();
        r.models[0].version = version.into();
        let refused = decode_agent(&encode(&AgentMessage::Report(r)));
        assert!(
            matches!(&refused, Err(MessageError::Malformed(m)) if m.contains("must")),
            "{model:?} {version:?}: {refused:?}"
        );
    }
    let state = |name: &str| {
        AgentMessage::State(ActualState {
            agent_version: "0.1.0".into(),
            models: vec![ModelState {
                name: name.into(),
                version: "1.0.0".into(),
                slot: Slot::Primary,
                state: LoadState::Ready,
                reason: None,
            }],
        })
    };
    assert!(decode_agent(&encode(&state("bc"))).is_ok());
    let refused = decode_agent(&encode(&state("b\0c"))).unwrap_err().to_string();
    assert!(refused.contains("model name `b\\0c` may only contain"), "{refused}");
    assert!(decode_agent(&encode(&AgentMessage::Report(report(&[1.0])))).is_ok());
}

#[test]
fn refuses_a_report_whose_histogram_does_not_add_up() {
    let mut r = report(&[1.0, 2.0]);
    // Forge the histogram's total through its serialized form.
    let mut json = serde_json::to_value(&r.models[0].latency_us).unwrap();
    json["count"] = serde_json::json!(99);
    r.models[0].latency_us = serde_json::from_value(json).unwrap();
    let bytes = encode(&AgentMessage::Report(r));
    assert!(matches!(decode_agent(&bytes), Err(MessageError::Histogram(_))));
}

#[test]
fn drift_reports_round_trip_and_a_nan_score_is_refused() {
    let verdict = FeatureDrift {
        feature: "mean radius".into(),
        test: crate::drift::DriftTest::Ks,
        score: 0.003,
        threshold: 0.05,
        drifted: true,
        reference_rows: 114,
        current_rows: 200,
        missing: 0,
    };
    let mut drift = DriftReport {
        at_ms: 5,
        models: vec![ModelDrift {
            model: "bc".into(),
            version: "1.0.0".into(),
            window_rows: 200,
            rows_seen: 456,
            features: vec![verdict.clone()],
            prediction: Some(FeatureDrift { feature: "_prediction".into(), ..verdict }),
        }],
    };
    let message = AgentMessage::Drift(drift.clone());
    assert_eq!(decode_agent(&encode(&message)).unwrap(), message);
    drift.models[0].features[0].score = f64::NAN;
    let err = decode_agent(&encode(&AgentMessage::Drift(drift))).unwrap_err();
    assert!(err.to_string().contains("mean radius"), "{err}");
}

proptest! {
    #[test]
    fn reports_round_trip(latencies in proptest::collection::vec(0.5f64..1e6, 0..200)) {
        let message = AgentMessage::Report(report(&latencies));
        prop_assert_eq!(decode_agent(&encode(&message)).unwrap(), message);
    }

    #[test]
    fn acks_round_trip(seqs in proptest::collection::vec(any::<u64>(), 0..100)) {
        let message = CoordinatorMessage::Ack(Ack::from_seqs("dev-1", seqs));
        prop_assert_eq!(decode_coordinator(&encode(&message)).unwrap(), message);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_agent(&bytes);
        let _ = decode_coordinator(&bytes);
    }
}
