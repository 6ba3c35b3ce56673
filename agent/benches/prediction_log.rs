//! Prediction-log append benchmark: `cargo bench -p outpost-agent --bench prediction_log`.
//!
//! Appends 1,000,000 records of a breast_cancer-sized prediction (30 FP32 inputs kept, a
//! label and two probabilities) through the public API — id allocation, one channel send per
//! record, the writer's sled batches — with a 64 MiB disk budget so eviction runs too, then
//! flushes and prints records/s, disk use, evictions and the process's peak RSS. Target
//! (DESIGN §8): ≥ 100,000 records/s with bounded memory.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::time::Instant;

use outpost_agent::prediction_log::{PredictionLog, PredictionLogConfig};
use outpost_shared::protocol::records::{PredictionRecord, RecordedInputs, RecordedTensor};

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

fn main() {
    let n: u64 = std::env::var("BENCH_RECORDS").ok().and_then(|s| s.parse().ok()).unwrap_or(1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let config = PredictionLogConfig { max_bytes: 64 * 1024 * 1024, ..PredictionLogConfig::default() };
    let log = PredictionLog::open(dir.path(), &config).unwrap();
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
    let started = Instant::now();
    for _ in 0..n {
        let mut record = template.clone();
        record.id = log.allocate_ids(1).expect("ids reserve on a healthy disk");
        log.append(vec![record]).unwrap();
    }
    let handed_over = started.elapsed();
    log.flush().unwrap();
    let elapsed = started.elapsed();
    let stats = log.stats();
    let rate = n as f64 / elapsed.as_secs_f64();
    println!(
        "  handed to the writer in {:.2} s; written and flushed in {:.2} s",
        handed_over.as_secs_f64(),
        elapsed.as_secs_f64()
    );
    println!(
        "  {rate:.0} records/s (target ≥ 100,000) — {}",
        if rate >= 100_000.0 { "meets" } else { "MISSES" }
    );
    println!(
        "  on disk {:.1} MiB in {} segments; evicted {} records in {} segments",
        stats.disk_bytes as f64 / 1048576.0,
        stats.segments,
        stats.evicted,
        stats.evicted_segments
    );
    println!("  peak RSS of the whole benchmark process: {:.1} MiB", peak_rss_mib());
}
