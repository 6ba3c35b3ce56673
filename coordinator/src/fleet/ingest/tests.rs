//! Ingest's units: refusals named and counted, batches and telemetry files stored as their
//! envelopes one by one would be, late actual states, every kind of telemetry read back. Each
//! runs with everything in sled and with everything in PostgreSQL (`on_sled::…`,
//! `on_postgres::…`, the latter against the real PostgreSQL of `TEST_POSTGRES_URL`, a database
//! per test).

use super::*;
use crate::base::pg::store::testing::TestDatabase;
use outpost_shared::protocol::SigningKey;
use outpost_shared::protocol::messages::{Event, EventKind};
use std::collections::BTreeMap;

fn body(message: &str) -> Vec<u8> {
    messages::encode(&AgentMessage::Event(Event {
        at_ms: 1,
        kind: EventKind::AgentStarted,
        message: message.into(),
    }))
}

/// What keeps a test's stores alive: the CA's directory, and the database on PostgreSQL.
#[allow(dead_code)]
struct Backing(tempfile::TempDir, Option<TestDatabase>);

/// An ingest with everything in sled or in PostgreSQL, and the metrics it counts in.
type Open = fn() -> (Backing, Ingest, crate::base::metrics::Metrics);

fn authority(dir: &std::path::Path) -> Arc<Authority> {
    Arc::new(Authority::load_or_create(dir, &crate::base::secrets::Secrets::clear()).unwrap())
}

fn sled() -> (Backing, Ingest, crate::base::metrics::Metrics) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let metrics = crate::base::metrics::Metrics::new();
    let ingest = Ingest::new(store, authority(dir.path()), metrics.ingest.clone()).unwrap();
    (Backing(dir, None), ingest, metrics)
}

fn postgres() -> (Backing, Ingest, crate::base::metrics::Metrics) {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDatabase::new();
    let metrics = crate::base::metrics::Metrics::new();
    let ingest = Ingest::with_postgres(&db.store(), authority(dir.path()), metrics.ingest.clone());
    (Backing(dir, Some(db)), ingest, metrics)
}

crate::base::pg::store::testing::on_both_backends!(
    sled, postgres;
    every_refusal_is_named_and_counted,
    a_batch_stores_each_envelope_and_its_traffic_once,
    a_report_naming_a_model_outside_the_name_grammar_is_stored_acked_and_kept_out_of_monitoring,
    a_telemetry_file_longer_than_a_batch_is_stored_whole_and_answered_in_order,
    an_older_actual_state_arriving_late_does_not_replace_a_newer_one,
    every_kind_of_telemetry_in_a_batch_is_stored_once_and_read_back,
);

/// An ingest with one enrolled device `d1` (its key returned), and the metrics it counts in.
fn enrolled(open: Open) -> (Backing, Ingest, SigningKey, crate::base::metrics::Metrics) {
    let (backing, ingest, metrics) = open();
    let (key, _) = SigningKey::generate().unwrap();
    ingest
        .devices()
        .add_token(
            "t",
            &crate::fleet::devices::TokenRecord {
                labels: BTreeMap::new(),
                created_at_ms: 0,
                expires_at_ms: u64::MAX,
                used_by: None,
                used_at_ms: None,
            },
        )
        .unwrap();
    ingest
        .devices()
        .enrol("t", |_| DeviceRecord::new("d1", key.public_key().as_bytes(), BTreeMap::new()))
        .unwrap()
        .unwrap();
    (backing, ingest, key, metrics)
}

fn every_refusal_is_named_and_counted(open: Open) {
    let (_backing, ingest, key, metrics) = enrolled(open);

    let genuine = protocol::seal(&key, 1, 0, &body("a")).unwrap();
    let reason = |o: Outcome| match o {
        Outcome::Rejected { reason, .. } => Some(reason),
        _ => None,
    };
    assert_eq!(ingest.ingest("d1", &genuine).unwrap(), Outcome::Stored { seq: 1 });
    assert_eq!(ingest.ingest("d1", &genuine).unwrap(), Outcome::Duplicate { seq: 1 });
    assert_eq!(reason(ingest.ingest("nobody", &genuine).unwrap()), Some(Rejection::UnknownDevice));
    let (other, _) = SigningKey::generate().unwrap();
    let foreign = protocol::seal(&other, 2, 0, &body("b")).unwrap();
    assert_eq!(reason(ingest.ingest("d1", &foreign).unwrap()), Some(Rejection::WrongKey));
    let same_seq_other_bytes = protocol::seal(&key, 1, 0, &body("changed")).unwrap();
    assert_eq!(reason(ingest.ingest("d1", &same_seq_other_bytes).unwrap()), Some(Rejection::Conflict));
    assert_eq!(reason(ingest.ingest("d1", b"\x01junk").unwrap()), Some(Rejection::Malformed));
    let from_file = ingest.ingest_from_file(&[foreign.clone(), genuine.clone()]).unwrap();
    assert_eq!(from_file[0].0, None);
    assert_eq!(reason(from_file[0].1.clone()), Some(Rejection::UnknownDevice));
    assert_eq!(from_file[1], (Some("d1".to_owned()), Outcome::Duplicate { seq: 1 }));

    let text = metrics.render();
    for (result, n) in [
        ("stored", 1),
        ("duplicate", 2),
        ("unknown_device", 2),
        ("wrong_key", 1),
        ("conflict", 1),
        ("malformed", 1),
    ] {
        let line = format!("outpost_coordinator_ingest_total{{result=\"{result}\"}} {n}");
        assert!(text.contains(&line), "missing `{line}` in\n{text}");
    }
    let record = ingest.devices().get("d1").unwrap().unwrap();
    assert_eq!((record.counts.envelopes, record.counts.events), (1, 1));
}

/// The link hands ingest a batch at a time: each envelope gets the outcome it would get on
/// its own, and the batch's traffic is stored once per window, with the duplicate in the
/// batch and a refused envelope adding nothing.
/// A window report of `requests` to `bc` 1.0.0 from `key`'s device, sealed with `seq`.
fn report_wire(key: &SigningKey, seq: u64, requests: u64) -> Vec<u8> {
    report_of(key, seq, requests, "bc")
}

/// [`report_wire`] naming model `model`.
fn report_of(key: &SigningKey, seq: u64, requests: u64, model: &str) -> Vec<u8> {
    use outpost_shared::histogram::LogHistogram;
    use outpost_shared::protocol::messages::{LogWindow, ModelWindow, OutboxStats, Report, SystemStats};
    let mut latency_us = LogHistogram::default();
    latency_us.record(1_000.0);
    let body = messages::encode(&AgentMessage::Report(Report {
        window_start_ms: 600_000 + seq * 10_000,
        window_end_ms: 610_000 + seq * 10_000,
        models: vec![ModelWindow {
            model: model.into(),
            version: "1.0.0".into(),
            slot: protocol::vocab::Slot::Primary,
            requests,
            errors: 1,
            rows: requests,
            latency_us,
            top_score: LogHistogram::default(),
            label_counts: BTreeMap::new(),
        }],
        system: SystemStats::default(),
        prediction_log: LogWindow::default(),
        outbox: OutboxStats::default(),
    }));
    protocol::seal(key, seq, 0, &body).unwrap()
}

fn a_batch_stores_each_envelope_and_its_traffic_once(open: Open) {
    let (_backing, ingest, key, metrics) = enrolled(open);
    let report = |seq: u64, requests: u64| report_wire(&key, seq, requests);
    let wires: Vec<Vec<u8>> = (1..=5).map(|seq| report(seq, 10 * seq)).collect();
    let (other, _) = SigningKey::generate().unwrap();
    let foreign = protocol::seal(&other, 6, 0, &body("b")).unwrap();
    let batch: Vec<(&str, &[u8])> = vec![
        ("d1", &wires[0]),
        ("d1", &wires[1]),
        ("d1", &wires[2]),
        ("d1", &wires[2]),
        ("d1", &foreign),
        ("d1", &wires[3]),
        ("d1", &wires[4]),
    ];
    let outcomes = ingest.ingest_many(&batch).unwrap();
    let labels: Vec<_> = outcomes.iter().map(Outcome::label).collect();
    assert_eq!(labels, ["stored", "stored", "stored", "duplicate", "wrong_key", "stored", "stored"]);
    assert_eq!(outcomes[3], Outcome::Duplicate { seq: 3 });
    let traffic = ingest.slos().rolled_up("bc", 0, u64::MAX / 2).unwrap();
    assert_eq!((traffic.requests, traffic.errors), (10 + 20 + 30 + 40 + 50, 5));
    // The same batch again: every envelope a duplicate, the traffic unchanged.
    let again = ingest.ingest_many(&batch).unwrap();
    assert_eq!(again.iter().filter(|o| matches!(o, Outcome::Duplicate { .. })).count(), 6);
    assert_eq!(ingest.slos().rolled_up("bc", 0, u64::MAX / 2).unwrap(), traffic);
    let record = ingest.devices().get("d1").unwrap().unwrap();
    assert_eq!(record.counts.envelopes, 5);
    let text = metrics.render();
    for line in [
        "outpost_coordinator_ingest_total{result=\"stored\"} 5",
        "outpost_coordinator_ingest_total{result=\"duplicate\"} 7",
        "outpost_coordinator_ingest_total{result=\"wrong_key\"} 2",
    ] {
        assert!(text.contains(line), "missing `{line}` in\n{text}");
    }
}

/// A signed report naming a model outside the name grammar (a NUL in it) is kept and acked —
/// the device must not resend it for ever — but counted as an unreadable body and kept out of
/// monitoring, whose records are keyed by model name.
fn a_report_naming_a_model_outside_the_name_grammar_is_stored_acked_and_kept_out_of_monitoring(open: Open) {
    let (_backing, ingest, key, _metrics) = enrolled(open);
    let wires = [report_of(&key, 1, 10, "bc\0x"), report_wire(&key, 2, 20)];
    let outcomes = ingest.ingest_many(&[("d1", &wires[0]), ("d1", &wires[1])]).unwrap();
    assert_eq!(outcomes, [Outcome::Stored { seq: 1 }, Outcome::Stored { seq: 2 }]);
    let record = ingest.devices().get("d1").unwrap().unwrap();
    assert_eq!((record.counts.envelopes, record.counts.unreadable_bodies), (2, 1));
    assert_eq!(ingest.slos().rolled_up("bc", 0, u64::MAX / 2).unwrap().requests, 20);
    // (PostgreSQL refuses a NUL in any text, so there the name cannot even be asked for.)
    if let Ok(garbled) = ingest.slos().rolled_up("bc\0x", 0, u64::MAX / 2) {
        assert_eq!(garbled.requests, 0);
    }
}

/// An air-gapped device's file of weeks of telemetry goes in batches: every envelope is
/// answered in order and its traffic counted once, across batch boundaries.
fn a_telemetry_file_longer_than_a_batch_is_stored_whole_and_answered_in_order(open: Open) {
    let (_backing, ingest, key, _metrics) = enrolled(open);
    let mut wires: Vec<Vec<u8>> = (1..=2 * BATCH as u64 + 100).map(|seq| report_wire(&key, seq, 2)).collect();
    let (other, _) = SigningKey::generate().unwrap();
    wires.insert(BATCH - 1, protocol::seal(&other, 1, 0, &body("stranger")).unwrap());
    wires.insert(BATCH + 3, wires[BATCH + 1].clone());
    wires.push(b"\x01junk".to_vec());
    let answered = ingest.ingest_from_file(&wires).unwrap();
    assert_eq!(answered.len(), wires.len());
    let labels: Vec<&str> = answered.iter().map(|(_, o)| o.label()).collect();
    assert_eq!(labels[BATCH - 1], "unknown_device");
    assert_eq!(labels[BATCH + 3], "duplicate");
    assert_eq!(labels[wires.len() - 1], "malformed");
    assert_eq!(labels.iter().filter(|l| **l == "stored").count(), 2 * BATCH + 100);
    assert_eq!(answered[BATCH + 3], (Some("d1".to_owned()), Outcome::Duplicate { seq: BATCH as u64 + 1 }));
    let stored_seqs: Vec<u64> = answered
        .iter()
        .filter_map(|(_, o)| match o {
            Outcome::Stored { seq } => Some(*seq),
            _ => None,
        })
        .collect();
    assert_eq!(stored_seqs, (1..=2 * BATCH as u64 + 100).collect::<Vec<_>>());
    let traffic = ingest.slos().rolled_up("bc", 0, u64::MAX / 2).unwrap();
    assert_eq!(traffic.requests, 2 * (2 * BATCH as u64 + 100));
}

/// Agents send a new actual state ahead of their backlog, and resend a lost one later: the
/// state with the higher seq is the device's, whatever order they arrive in.
fn an_older_actual_state_arriving_late_does_not_replace_a_newer_one(open: Open) {
    use outpost_shared::protocol::messages::{ActualState, ModelState};
    let (_backing, ingest, key, _metrics) = enrolled(open);
    let state = |seq: u64, version: &str| {
        let models = vec![ModelState {
            name: "bc".into(),
            version: version.into(),
            slot: protocol::vocab::Slot::Primary,
            state: protocol::vocab::LoadState::Ready,
            reason: None,
        }];
        let body = messages::encode(&AgentMessage::State(ActualState { agent_version: "1".into(), models }));
        protocol::seal(&key, seq, 0, &body).unwrap()
    };
    let held = |ingest: &Ingest| {
        let record = ingest.devices().get("d1").unwrap().unwrap();
        (record.models[0].version.clone(), record.state_seq, record.counts.states)
    };
    assert_eq!(ingest.ingest("d1", &state(40, "1.1.0")).unwrap(), Outcome::Stored { seq: 40 });
    assert_eq!(held(&ingest), ("1.1.0".to_owned(), Some(40), 1));
    // The older state, resent after the newer one was stored: kept and acked, not applied.
    assert_eq!(ingest.ingest("d1", &state(7, "1.0.0")).unwrap(), Outcome::Stored { seq: 7 });
    assert_eq!(held(&ingest), ("1.1.0".to_owned(), Some(40), 2));
    assert_eq!(ingest.ingest("d1", &state(41, "2.0.0")).unwrap(), Outcome::Stored { seq: 41 });
    assert_eq!(held(&ingest), ("2.0.0".to_owned(), Some(41), 3));
}

/// A batch holding a report, a shadow report, labels, a drift verdict set and uploaded
/// predictions: each is stored where monitoring reads it, once — the same batch again changes
/// nothing — and a prediction joins its label in the dataset export.
fn every_kind_of_telemetry_in_a_batch_is_stored_once_and_read_back(open: Open) {
    use outpost_shared::drift::DriftTest;
    use outpost_shared::protocol::messages::{
        DriftReport, FeatureDrift, FeedbackBatch, LabelledPrediction, ModelDrift, PredictionBatch,
        ShadowReport, ShadowWindow,
    };
    use outpost_shared::protocol::records::{PredictionRecord, RecordedInputs, RecordedTensor};
    use outpost_shared::protocol::vocab::Sampling;
    let (_backing, ingest, key, _metrics) = enrolled(open);
    let sealed =
        |seq: u64, message: AgentMessage| protocol::seal(&key, seq, 0, &messages::encode(&message)).unwrap();
    let slot = protocol::vocab::Slot::Primary;
    let prediction = |id: u64, predicted: i64| PredictionRecord {
        id,
        at_ms: 700_000 + id,
        model: "bc".into(),
        version: "1.0.0".into(),
        slot,
        latency_us: 900,
        inputs: RecordedInputs::Kept(vec![RecordedTensor {
            name: "x".into(),
            datatype: "FP32".into(),
            shape: vec![1, 2],
            data: [1.5f32, id as f32].iter().flat_map(|v| v.to_le_bytes()).collect(),
        }]),
        outputs: vec![RecordedTensor {
            name: "label".into(),
            datatype: "INT64".into(),
            shape: vec![1],
            data: predicted.to_le_bytes().to_vec(),
        }],
        top_score: Some(0.9),
    };
    let label = |id: u64, truth: i64| LabelledPrediction {
        prediction_id: id,
        model: "bc".into(),
        version: "1.0.0".into(),
        slot,
        predicted_at_ms: 700_000 + id,
        labelled_at_ms: 800_000,
        predicted: Some(1),
        label: truth,
    };
    let verdict = FeatureDrift {
        feature: "mean_radius".into(),
        test: DriftTest::Ks,
        score: 0.001,
        threshold: 0.05,
        drifted: true,
        reference_rows: 100,
        current_rows: 150,
        missing: 0,
    };
    let wires = [
        report_wire(&key, 1, 40),
        sealed(
            2,
            AgentMessage::Shadow(ShadowReport {
                window_start_ms: 600_000,
                window_end_ms: 610_000,
                models: vec![ShadowWindow {
                    model: "bc".into(),
                    version: "2.0.0".into(),
                    primary: "1.0.0".into(),
                    compared: 40,
                    agreed: 37,
                }],
            }),
        ),
        sealed(
            3,
            AgentMessage::Predictions(PredictionBatch {
                sampling: Sampling::All,
                records: vec![prediction(1, 1), prediction(2, 1)],
            }),
        ),
        sealed(
            4,
            AgentMessage::Feedback(FeedbackBatch {
                labels: vec![label(1, 1), label(2, 0)],
                unknown: 0,
                evicted: 0,
            }),
        ),
        sealed(
            5,
            AgentMessage::Drift(DriftReport {
                at_ms: 900_000,
                models: vec![ModelDrift {
                    model: "bc".into(),
                    version: "1.0.0".into(),
                    window_rows: 150,
                    rows_seen: 150,
                    features: vec![verdict],
                    prediction: None,
                }],
            }),
        ),
    ];
    let batch: Vec<(&str, &[u8])> = wires.iter().map(|w| ("d1", w.as_slice())).collect();
    let read_back = |ingest: &Ingest| {
        let traffic = ingest.slos().rolled_up("bc", 0, u64::MAX / 2).unwrap().requests;
        let shadow = ingest.slos().shadow_where("bc", 0, u64::MAX / 2, |_, _| true).unwrap();
        let tally = ingest.labels().rolled_up("bc", 0, u64::MAX / 2).unwrap();
        let drift = crate::monitoring::report::DriftHistory::build(ingest.drift_history(), "bc", 0).unwrap();
        let (csv, summary) =
            ingest.predictions().export_csv(ingest.labels(), "bc", 0, false, &|_| Vec::new()).unwrap();
        (
            traffic,
            shadow,
            (tally.labelled, tally.correct),
            (drift.windows, drift.devices),
            csv,
            summary.labelled,
        )
    };
    let outcomes = ingest.ingest_many(&batch).unwrap();
    assert!(outcomes.iter().all(|o| matches!(o, Outcome::Stored { .. })), "{outcomes:?}");
    let first = read_back(&ingest);
    assert_eq!((first.0, first.1, first.2, first.3, first.5), (40, (40, 37), (2, 1), (1, 1), 2));
    assert!(first.4.contains("d1,1,1.0.0,700001,1.5,1,1,1"), "{}", first.4);
    assert!(first.4.contains("d1,2,1.0.0,700002,1.5,2,1,0"), "{}", first.4);
    let again = ingest.ingest_many(&batch).unwrap();
    assert!(again.iter().all(|o| matches!(o, Outcome::Duplicate { .. })), "{again:?}");
    assert_eq!(read_back(&ingest), first, "a resent batch changes nothing");
}
