//! Coordinator ingest rate: signed window reports verified (Ed25519) and stored once in sled,
//! then acked — the path every MQTT message takes, without the network.
//!
//! `cargo bench -p outpost-coordinator --bench ingest` (env `BENCH_REPORTS`, default 20000;
//! `BENCH_BURST_DEVICES`, default 10000). Prints reports/s for: signature verification alone
//! (the baseline), and the full ingest (decode, verify, dedupe, store, counters) with a flush
//! and a signed ack per 512 messages, as the broker link does — from devices without labels,
//! then from devices with two (`site`, `tier`: their windows also go into the roll-ups by device
//! label), then without again; then a deploy's burst: one actual state from each of many
//! devices, so every message costs its device an ack of its own.
#![allow(clippy::unwrap_used, clippy::expect_used)]

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
    self, ActualState, AgentMessage, LogWindow, ModelState, ModelWindow, OutboxStats, Report, SystemStats,
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
    let ingest = Ingest::new(store.clone(), authority, metrics.ingest.clone()).expect("ingest opens");

    // 100 devices, each with its own key.
    let devices = enrol(&ingest, "bench", 100, &BTreeMap::new());
    let sealed = |devices: &[(String, SigningKey)]| -> Vec<(usize, Vec<u8>)> {
        (0..n)
            .map(|i| {
                let d = (i % 100) as usize;
                (d, protocol::seal(&devices[d].1, i / 100 + 1, i, &report(i)).unwrap())
            })
            .collect()
    };
    let wires = sealed(&devices);
    let size = wires.iter().map(|(_, w)| w.len()).sum::<usize>() / wires.len();

    let started = Instant::now();
    for (d, wire) in &wires {
        let key = devices[*d].1.public_key();
        protocol::open(wire, |_| Some(key)).unwrap();
    }
    let verify = n as f64 / started.elapsed().as_secs_f64();
    let full = ingest_all(&ingest, &store, &devices, &wires);
    let site =
        BTreeMap::from([("site".to_owned(), "berlin-3".to_owned()), ("tier".to_owned(), "edge".to_owned())]);
    let labelled = enrol(&ingest, "labelled", 100, &site);
    let with_labels = ingest_all(&ingest, &store, &labelled, &sealed(&labelled));
    let again = enrol(&ingest, "again", 100, &BTreeMap::new());
    let full_again = ingest_all(&ingest, &store, &again, &sealed(&again));
    println!("coordinator ingest, {n} signed window reports of {size} bytes from 100 devices");
    println!("  baseline: Ed25519 verification alone  {verify:>10.0} reports/s");
    println!("  full ingest (verify + store + ack)    {full:>10.0} reports/s");
    println!("  the same from devices with two labels {with_labels:>10.0} reports/s");
    println!("  the same without labels, again        {full_again:>10.0} reports/s");
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
    let rate = ingest_all(&ingest, &store, &fleet, &states);
    println!("a deploy's burst: one actual state from each of {burst} devices (enrolled in {enrolled:.1} s)");
    println!(
        "  full ingest (verify + store + an ack each) {rate:>6.0} states/s: the whole fleet in {:.2} s",
        burst as f64 / rate
    );
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

/// Ingests `wires` (device index, envelope) as the broker link does: batches of 512, a flush,
/// then the signed acks; returns messages/s.
fn ingest_all(
    ingest: &Ingest,
    store: &Store,
    devices: &[(String, SigningKey)],
    wires: &[(usize, Vec<u8>)],
) -> f64 {
    let started = Instant::now();
    for chunk in wires.chunks(512) {
        let mut acks: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
        for (d, wire) in chunk {
            let id = devices[*d].0.as_str();
            match ingest.ingest(id, wire).unwrap() {
                Outcome::Stored { seq } => acks.entry(id).or_default().push(seq),
                other => panic!("unexpected {other:?}"),
            }
        }
        store.flush().unwrap();
        for (id, seqs) in acks {
            ingest.seal_acks(id, seqs).unwrap();
        }
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
