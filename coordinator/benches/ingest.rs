//! Coordinator ingest rate: signed window reports verified (Ed25519) and stored once in sled,
//! then acked — the path every MQTT message takes, without the network.
//!
//! `cargo bench -p outpost-coordinator --bench ingest` (env `BENCH_REPORTS`, default 20000;
//! `BENCH_BURST_DEVICES`, default 10000). Prints reports/s for: signature verification alone
//! (the baseline), and the full ingest (decode, verify, dedupe, store, counters) with a flush
//! and a signed ack per 512 messages, as the broker link does — the batch's traffic stored in
//! one transaction (`Ingest::ingest_many`), against the same envelopes each on its own as before
//! (`Ingest::ingest`), in alternating passes — from devices without labels, then from devices
//! with two (`site`, `tier`: their windows also go into the roll-ups by device label), then
//! without again, and drift verdict sets of ten features both ways; then a deploy's burst: one actual state from each of many devices, so every
//! message costs its device an ack of its own — in sled, then with the fleet's records on
//! PostgreSQL (`BENCH_POSTGRES_URL`, default the machine's `postgres://postgres@127.0.0.1:5432/postgres`;
//! a database of its own, dropped after) and 1, 2 and 3 replicas sharing the burst as an MQTT 5
//! shared subscription would (batches of 512 dealt out in turn), each its own connection pool and
//! thread. An actual state changes only its device's record, so this path is all on PostgreSQL;
//! then the window reports the same way (the fleet's records and the traffic with its roll-ups
//! on PostgreSQL: a report's whole path).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fixtures;

use outpost_shared::protocol::vocab::Slot;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use outpost_coordinator::base::metrics::Metrics;
use outpost_coordinator::base::store::Store;
use outpost_coordinator::fleet::ca::Authority;
use outpost_coordinator::fleet::devices::{DeviceRecord, TokenRecord};
use outpost_coordinator::fleet::ingest::{Ingest, Outcome};
use outpost_shared::histogram::LogHistogram;
use outpost_shared::protocol::messages::{
    self, ActualState, AgentMessage, DriftReport, LogWindow, ModelDrift, ModelState, ModelWindow,
    OutboxStats, Report, SystemStats,
};
use outpost_shared::protocol::vocab::LoadState;
use outpost_shared::protocol::{self, SigningKey};

fn report(i: u64) -> Vec<u8> {
    let mut latency_us = LogHistogram::default();
    for j in 0..200 {
        latency_us.record(50.0 + ((i * 31 + j) % 400) as f64);
    }
    messages::encode(&AgentMessage::Report(Report {
        window_start_ms: i * 10_000,
        window_end_ms: (i + 1) * 10_000,
        models: vec![ModelWindow {
            model: "breast_cancer".into(),
            version: "1.0.0".into(),
            slot: Slot::Primary,
            requests: 200,
            errors: 1,
            rows: 200,
            latency_us,
            top_score: LogHistogram::default(),
            label_counts: BTreeMap::from([("0".into(), 120), ("1".into(), 80)]),
        }],
        system: SystemStats::default(),
        prediction_log: LogWindow::default(),
        outbox: OutboxStats::default(),
    }))
}

fn main() {
    let n: u64 = std::env::var("BENCH_REPORTS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let dir = tempfile::tempdir().unwrap();
    let authority = Arc::new(
        Authority::load_or_create(dir.path(), &outpost_coordinator::base::secrets::Secrets::clear()).unwrap(),
    );
    let store = Store::open(dir.path()).unwrap();
    let metrics = Metrics::new();
    let ingest = Ingest::new(store.clone(), authority.clone(), metrics.ingest.clone()).expect("ingest opens");

    // 100 devices, each with its own key: the verification baseline's.
    let devices = enrol(&ingest, "verify", 100, &BTreeMap::new());
    let sealed_with = |devices: &[(String, SigningKey)], body: fn(u64) -> Vec<u8>| -> Vec<(usize, Vec<u8>)> {
        (0..n)
            .map(|i| {
                let d = (i % 100) as usize;
                (d, protocol::seal(&devices[d].1, i / 100 + 1, i, &body(i)).unwrap())
            })
            .collect()
    };
    let sealed = |devices: &[(String, SigningKey)]| sealed_with(devices, report);
    let wires = sealed(&devices);
    let size = wires.iter().map(|(_, w)| w.len()).sum::<usize>() / wires.len();

    let started = Instant::now();
    for (d, wire) in &wires {
        let key = devices[*d].1.public_key();
        protocol::open(wire, |_| Some(key)).unwrap();
    }
    let verify = n as f64 / started.elapsed().as_secs_f64();
    // Each pass from devices of its own (fresh envelopes), batched then one by one, alternating.
    let site =
        BTreeMap::from([("site".to_owned(), "berlin-3".to_owned()), ("tier".to_owned(), "edge".to_owned())]);
    let pass = |name: &str, labels: &BTreeMap<String, String>, one_by_one: bool| {
        let devices = enrol(&ingest, name, 100, labels);
        ingest_all(&ingest, &store, &devices, &sealed(&devices), one_by_one)
    };
    let full = pass("bench", &BTreeMap::new(), false);
    let full_single = pass("single", &BTreeMap::new(), true);
    let with_labels = pass("labelled", &site, false);
    let with_labels_single = pass("labelled-single", &site, true);
    let full_again = pass("again", &BTreeMap::new(), false);
    let full_single_again = pass("single-again", &BTreeMap::new(), true);
    // Drift verdict sets (ten features), which agents send as often as window reports.
    let drift_pass = |name: &str, one_by_one: bool| {
        let devices = enrol(&ingest, name, 100, &BTreeMap::new());
        ingest_all(&ingest, &store, &devices, &sealed_with(&devices, drift), one_by_one)
    };
    let (drift_batched, drift_single) = (drift_pass("drift", false), drift_pass("drift-single", true));
    println!("coordinator ingest, {n} signed window reports of {size} bytes from 100 devices per pass");
    println!("  baseline: Ed25519 verification alone  {verify:>10.0} reports/s");
    println!("  full ingest (verify + store + ack), batches of 512 | one by one (before):");
    println!("    devices without labels              {full:>10.0} | {full_single:>6.0} reports/s");
    println!(
        "    devices with two labels             {with_labels:>10.0} | {with_labels_single:>6.0} reports/s"
    );
    println!(
        "    without labels, again               {full_again:>10.0} | {full_single_again:>6.0} reports/s"
    );
    println!("    drift verdict sets of 10 features   {drift_batched:>10.0} | {drift_single:>6.0} per s");
    println!("  10,000 agents reporting every 10 s need 1,000 reports/s: {:.0}x headroom", full / 1000.0);

    // A deploy's burst: every device reports its new actual state once.
    let burst: usize =
        std::env::var("BENCH_BURST_DEVICES").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let started = Instant::now();
    let fleet = enrol(&ingest, "fleet", burst, &BTreeMap::new());
    let enrolled = started.elapsed().as_secs_f64();
    let states: Vec<(usize, Vec<u8>)> = fleet
        .iter()
        .enumerate()
        .map(|(d, (_, key))| (d, protocol::seal(key, 1, 0, &state()).unwrap()))
        .collect();
    let rate = ingest_all(&ingest, &store, &fleet, &states, false);
    println!("a deploy's burst: one actual state from each of {burst} devices (enrolled in {enrolled:.1} s)");
    println!(
        "  full ingest (verify + store + an ack each) {rate:>6.0} states/s: the whole fleet in {:.2} s (sled)",
        burst as f64 / rate
    );
    on_postgres(&authority, &fleet, (rate, (full + full_again) / 2.0), n);
}

/// The same burst, then the same window reports, with the fleet's records and the traffic on
/// PostgreSQL and 1, 2, 3 replicas (module header); each run's messages carry seqs and windows
/// of their own, so every one is new.
fn on_postgres(authority: &Arc<Authority>, fleet: &[(String, SigningKey)], sled: (f64, f64), reports: u64) {
    let Some(db) = fixtures::BenchDatabase::new("ingest") else { return };
    let replicas: Vec<Ingest> = (0..3)
        .map(|_| Ingest::with_postgres(&db.store(), authority.clone(), Metrics::new().ingest))
        .collect();
    let started = Instant::now();
    for (id, key) in fleet {
        let token = TokenRecord {
            labels: BTreeMap::new(),
            created_at_ms: 0,
            expires_at_ms: u64::MAX,
            used_by: None,
            used_at_ms: None,
        };
        let devices = replicas[0].devices();
        devices.add_token(id, &token).unwrap();
        let record = DeviceRecord::new(id, key.public_key().as_bytes(), BTreeMap::new());
        devices.enrol(id, |_| record.clone()).unwrap().unwrap();
    }
    let enrolled = started.elapsed().as_secs_f64();
    println!("  the same fleet on PostgreSQL (enrolled in {enrolled:.1} s, one enrolment per transaction):");
    // Each kind starts with a pass by all three, untimed: pools filled, tables and plans warm
    // (the first pass after enrolment ran at half the speed of the same pass again).
    let runs = [3usize, 1, 2, 3, 1];
    for (run, count) in runs.into_iter().enumerate() {
        let seq = run as u64 + 1;
        let states: Vec<(usize, Vec<u8>)> = fleet
            .iter()
            .enumerate()
            .map(|(d, (_, key))| (d, protocol::seal(key, seq, 0, &state()).unwrap()))
            .collect();
        let rate = shared_by(&replicas, count, fleet, &states);
        if run > 0 {
            print_rate("states", count, rate, states.len(), sled.0);
        }
    }
    // Window reports from the fleet's first 100 devices, as in the passes on sled.
    println!("  {reports} window reports (as above, devices without labels) on PostgreSQL:");
    let first = runs.len() as u64 + 1;
    for (run, count) in runs.into_iter().enumerate() {
        let offset = run as u64 * reports;
        let wires: Vec<(usize, Vec<u8>)> = (0..reports)
            .map(|i| {
                let d = (i % 100) as usize;
                let seq = first + run as u64 * reports.div_ceil(100) + i / 100;
                (d, protocol::seal(&fleet[d].1, seq, i, &report(offset + i)).unwrap())
            })
            .collect();
        let rate = shared_by(&replicas, count, fleet, &wires);
        if run > 0 {
            print_rate("reports", count, rate, wires.len(), sled.1);
        }
    }
}

/// The rate `count` of `replicas` ingest `wires` at, batches of 512 dealt out in turn.
fn shared_by(
    replicas: &[Ingest],
    count: usize,
    fleet: &[(String, SigningKey)],
    wires: &[(usize, Vec<u8>)],
) -> f64 {
    let batches: Vec<&[(usize, Vec<u8>)]> = wires.chunks(512).collect();
    let started = Instant::now();
    std::thread::scope(|s| {
        for (r, ingest) in replicas.iter().take(count).enumerate() {
            let mine: Vec<&[(usize, Vec<u8>)]> = batches.iter().skip(r).step_by(count).copied().collect();
            s.spawn(move || {
                for batch in mine {
                    acked_batch(ingest, fleet, batch);
                }
            });
        }
    });
    wires.len() as f64 / started.elapsed().as_secs_f64()
}

fn print_rate(what: &str, count: usize, rate: f64, total: usize, sled_rate: f64) {
    println!(
        "    {count} replica{}  {rate:>6.0} {what}/s: all {total} in {:.2} s ({:.2}x sled)",
        if count == 1 { " " } else { "s" },
        total as f64 / rate,
        rate / sled_rate
    );
}

/// One batch as the broker link handles it: ingested together, flushed, then the devices' acks
/// sealed together.
fn acked_batch(ingest: &Ingest, devices: &[(String, SigningKey)], chunk: &[(usize, Vec<u8>)]) {
    let batch: Vec<(&str, &[u8])> =
        chunk.iter().map(|(d, w)| (devices[*d].0.as_str(), w.as_slice())).collect();
    let outcomes = ingest.ingest_many(&batch).unwrap();
    let mut acks: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for ((id, _), outcome) in batch.iter().zip(outcomes) {
        match outcome {
            Outcome::Stored { seq } => acks.entry(id).or_default().push(seq),
            other => panic!("unexpected {other:?}"),
        }
    }
    ingest.devices().flush().unwrap();
    ingest.seal_acks_many(acks.into_iter().map(|(id, seqs)| (id.to_owned(), seqs)).collect()).unwrap();
}

/// A drift verdict set of `breast_cancer` 1.0.0 over ten features, one in thirteen drifted.
fn drift(i: u64) -> Vec<u8> {
    let features = fixtures::ten_features(i, i, 200);
    messages::encode(&AgentMessage::Drift(DriftReport {
        at_ms: (i + 1) * 10_000,
        models: vec![ModelDrift {
            model: "breast_cancer".into(),
            version: "1.0.0".into(),
            window_rows: 200,
            rows_seen: 200 * (i + 1),
            features,
            prediction: None,
        }],
    }))
}

/// `count` enrolled devices named `{prefix}-{i}`, each with its own key and `labels`.
fn enrol(
    ingest: &Ingest,
    prefix: &str,
    count: usize,
    labels: &BTreeMap<String, String>,
) -> Vec<(String, SigningKey)> {
    (0..count)
        .map(|i| {
            let (key, _) = SigningKey::generate().unwrap();
            let id = format!("{prefix}-{i:05}");
            ingest
                .devices()
                .add_token(
                    &id,
                    &TokenRecord {
                        labels: labels.clone(),
                        created_at_ms: 0,
                        expires_at_ms: u64::MAX,
                        used_by: None,
                        used_at_ms: None,
                    },
                )
                .unwrap();
            let record = DeviceRecord::new(&id, key.public_key().as_bytes(), labels.clone());
            ingest.devices().enrol(&id, |_| record.clone()).unwrap().unwrap();
            (id, key)
        })
        .collect()
}

/// Ingests `wires` (device index, envelope) as the broker link does: batches of 512
/// (`Ingest::ingest_many`: their traffic in one transaction), a flush, then the signed acks
/// (`Ingest::seal_acks_many`);
/// returns messages/s. `one_by_one`: each envelope on its own (`Ingest::ingest`), as the link
/// did before batches — the baseline.
fn ingest_all(
    ingest: &Ingest,
    store: &Store,
    devices: &[(String, SigningKey)],
    wires: &[(usize, Vec<u8>)],
    one_by_one: bool,
) -> f64 {
    let started = Instant::now();
    for chunk in wires.chunks(512) {
        let batch: Vec<(&str, &[u8])> =
            chunk.iter().map(|(d, w)| (devices[*d].0.as_str(), w.as_slice())).collect();
        let outcomes = if one_by_one {
            batch.iter().map(|(id, wire)| ingest.ingest(id, wire).unwrap()).collect()
        } else {
            ingest.ingest_many(&batch).unwrap()
        };
        let mut acks: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
        for ((id, _), outcome) in batch.iter().zip(outcomes) {
            match outcome {
                Outcome::Stored { seq } => acks.entry(id).or_default().push(seq),
                other => panic!("unexpected {other:?}"),
            }
        }
        store.flush().unwrap();
        ingest.seal_acks_many(acks.into_iter().map(|(id, seqs)| (id.to_owned(), seqs)).collect()).unwrap();
    }
    wires.len() as f64 / started.elapsed().as_secs_f64()
}

fn state() -> Vec<u8> {
    messages::encode(&AgentMessage::State(ActualState {
        agent_version: "0.1.0".into(),
        models: vec![ModelState {
            name: "breast_cancer".into(),
            version: "1.1.0".into(),
            slot: Slot::Primary,
            state: LoadState::Ready,
            reason: None,
        }],
    }))
}
