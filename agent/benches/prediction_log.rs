//! Prediction-log append benchmark: `cargo bench -p outpost-agent --bench prediction_log`.
//!
//! Appends 1,000,000 records of a breast_cancer-sized prediction (30 FP32 inputs kept, a
//! label and two probabilities) through the public API — id allocation, one channel send per
//! record, the writer's sled batches — with a 64 MiB disk budget so eviction runs too, then
//! flushes and prints records/s, disk use against the data held (target ≤ 1.2×), evictions and
//! the process's peak RSS — once with encryption at rest off and once on (ChaCha20-Poly1305,
//! [`outpost_agent::at_rest`]), side by side. Target (#23): ≥ 200,000 records/s with bounded
//! memory.
//!
//! Then `durability = "batch"` against `"sync"` side by side, with 1 and 16 clients each
//! appending one record per request for `BENCH_SECS` (default 5) seconds: a `sync` client
//! waits for the writer's fsync before its next request (as the agent's answer does), a
//! `batch` client does not. Printed: records/s and the append-to-durable wait (p50/p99).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::time::Instant;

use std::sync::Arc;
use std::time::Duration;

use outpost_agent::at_rest::{AtRest, Sealer};
use outpost_agent::prediction_log::{Durability, LogStats, PredictionLog, PredictionLogConfig};
use outpost_shared::protocol::records::{PredictionRecord, RecordedInputs, RecordedTensor};

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

/// `clients` threads each appending one record per request for `secs`; records/s and the
/// p50/p99 of each append's wait (to the hand-over for `batch`, to the fsync for `sync`).
fn concurrent(
    template: &PredictionRecord,
    durability: Durability,
    clients: usize,
    secs: u64,
) -> (f64, f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let config =
        PredictionLogConfig { max_bytes: 64 * 1024 * 1024, durability, ..PredictionLogConfig::default() };
    let log = Arc::new(PredictionLog::open(dir.path(), &config, &AtRest::clear()).unwrap());
    let started = Instant::now();
    let until = started + Duration::from_secs(secs);
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (log, template) = (Arc::clone(&log), template.clone());
            std::thread::spawn(move || {
                let mut waits = Vec::new();
                while Instant::now() < until {
                    let mut record = template.clone();
                    record.id = log.allocate_ids(1).expect("ids reserve on a healthy disk");
                    let asked = Instant::now();
                    match durability {
                        Durability::Batch => log.append(vec![record]).unwrap(),
                        Durability::Sync => {
                            log.append_durable(vec![record]).unwrap().blocking_recv().unwrap().unwrap();
                        }
                    }
                    waits.push(asked.elapsed().as_secs_f64() * 1e6);
                }
                waits
            })
        })
        .collect();
    let mut waits: Vec<f64> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    let elapsed = started.elapsed().as_secs_f64();
    log.flush().unwrap();
    waits.sort_by(f64::total_cmp);
    let at = |q: f64| {
        waits
            .get(((waits.len() as f64 * q) as usize).min(waits.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    (waits.len() as f64 / elapsed, at(0.5), at(0.99))
}

/// `n` records appended one per call through the public API, then flushed: records/s, the
/// seconds to hand them over and to have them on disk, and the log's counters.
fn bulk(template: &PredictionRecord, n: u64, at_rest: &AtRest) -> (f64, f64, f64, LogStats) {
    let dir = tempfile::tempdir().unwrap();
    let config = PredictionLogConfig { max_bytes: 64 * 1024 * 1024, ..PredictionLogConfig::default() };
    let log = PredictionLog::open(dir.path(), &config, at_rest).unwrap();
    let started = Instant::now();
    for _ in 0..n {
        let mut record = template.clone();
        record.id = log.allocate_ids(1).expect("ids reserve on a healthy disk");
        log.append(vec![record]).unwrap();
    }
    let handed_over = started.elapsed().as_secs_f64();
    log.flush().unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    (n as f64 / elapsed, handed_over, elapsed, log.stats())
}

fn main() {
    let n: u64 = std::env::var("BENCH_RECORDS").ok().and_then(|s| s.parse().ok()).unwrap_or(1_000_000);
    let template = PredictionRecord {
        id: 0,
        at_ms: 1_764_000_000_000,
        model: "breast_cancer".into(),
        version: "1.0.0".into(),
        slot: outpost_shared::protocol::vocab::Slot::Primary,
        latency_us: 3,
        inputs: RecordedInputs::Kept(vec![RecordedTensor {
            name: "input".into(),
            datatype: "FP32".into(),
            shape: vec![1, 30],
            data: vec![7; 120],
        }]),
        outputs: vec![
            RecordedTensor {
                name: "label".into(),
                datatype: "INT64".into(),
                shape: vec![1],
                data: vec![1; 8],
            },
            RecordedTensor {
                name: "probabilities".into(),
                datatype: "FP32".into(),
                shape: vec![1, 2],
                data: vec![3; 8],
            },
        ],
        top_score: Some(0.97),
    };
    let record_bytes = template.encode().len();
    println!("prediction log append benchmark: {n} records of {record_bytes} bytes, 64 MiB budget");
    println!(
        "  {:<11} {:>12} {:>9} {:>11} {:>12} {:>10} {:>10} {:>10} {:>9}",
        "encryption",
        "records/s",
        "vs off",
        "handed s",
        "flushed s",
        "disk MiB",
        "disk/data",
        "evicted",
        "peak MiB"
    );
    let sealed = AtRest::sealed(Arc::new(Sealer::ephemeral().unwrap()));
    let mut off_rate = 0.0;
    for (name, at_rest) in [("off", AtRest::clear()), ("on", sealed)] {
        let (rate, handed, flushed, stats) = bulk(&template, n, &at_rest);
        if !at_rest.is_on() {
            off_rate = rate;
        }
        // The data held: the records still in the log, at their encoded size.
        let held = (stats.appended - stats.evicted) as f64 * record_bytes as f64;
        let ratio = stats.disk_bytes as f64 / held.max(1.0);
        println!(
            "  {name:<11} {rate:>12.0} {:>9} {handed:>11.2} {flushed:>12.2} {:>10.1} {:>9.3}x {:>10} {:>9.1}   (target ≥ 200,000/s: {}; ≤ 1.2x: {})",
            format!("{:.1}%", 100.0 * rate / f64::max(off_rate, 1.0)),
            stats.disk_bytes as f64 / 1048576.0,
            ratio,
            stats.evicted,
            peak_rss_mib(),
            if rate >= 200_000.0 { "meets" } else { "MISSES" },
            if ratio <= 1.2 { "meets" } else { "misses (sealing adds 33 bytes a record)" }
        );
    }
    println!(
        "  peak MiB: the benchmark process's peak RSS so far (the records are built on the caller's side too)"
    );

    let secs: u64 = std::env::var("BENCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    println!("durability, one record per request, {secs} s per run:");
    println!(
        "  {:<6} {:>7} {:>12} {:>10} {:>14} {:>14}",
        "mode", "clients", "records/s", "vs batch", "wait p50 µs", "wait p99 µs"
    );
    for clients in [1, 16] {
        let mut batch_rate = 0.0;
        for (mode, durability) in [("batch", Durability::Batch), ("sync", Durability::Sync)] {
            let (rate, p50, p99) = concurrent(&template, durability, clients, secs);
            if durability == Durability::Batch {
                batch_rate = rate;
            }
            let share = format!("{:.1}%", 100.0 * rate / f64::max(batch_rate, 1.0));
            println!("  {mode:<6} {clients:>7} {rate:>12.0} {share:>10} {p50:>14.1} {p99:>14.1}");
        }
    }
}
