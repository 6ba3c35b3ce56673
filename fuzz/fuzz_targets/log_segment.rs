//! Arbitrary bytes as a prediction-log segment file (what a worn card, a cut power or a
//! neighbour with write access leaves): opening the log must never panic nor hang, every
//! record it reads back must be whole, and appends must go on after it.
#![no_main]

use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;
use outpost_agent::at_rest::AtRest;
use outpost_agent::prediction_log::{PredictionLog, PredictionLogConfig};

fn data_dir() -> PathBuf {
    std::env::temp_dir().join(format!("outpost-fuzz-log-{}", std::process::id()))
}

fuzz_target!(|data: &[u8]| {
    let dir = data_dir();
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("predictions")).expect("a temporary directory");
    // A real header first half of the time, so the frames behind it are reached too.
    let mut bytes = Vec::with_capacity(data.len() + 8);
    if data.first().is_some_and(|b| b % 2 == 0) {
        bytes.extend_from_slice(b"OPLOG\0\0\x01");
    }
    bytes.extend_from_slice(data);
    std::fs::write(dir.join("predictions/seg-00000000000000000001.log"), &bytes).expect("written");
    let config = PredictionLogConfig { flush_interval_ms: 10, ..PredictionLogConfig::default() };
    let log = PredictionLog::open(&dir, &config, &AtRest::clear()).expect("damage never stops the log");
    let read = log.read_from(0, 10_000).expect("reads");
    assert!(read.windows(2).all(|w| w[0].id < w[1].id), "in id order, each once");
    for record in read.iter().take(16) {
        assert_eq!(log.get(record.id).expect("reads").map(|r| r.id), Some(record.id));
    }
    let id = log.allocate_ids(1).expect("an id");
    assert!(read.iter().all(|r| r.id < id), "ids go on past what is there");
});
