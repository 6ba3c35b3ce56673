//! Unit tests of the prediction log: segments, eviction, budgets, recovery.

use std::time::Duration;

use super::*;
use outpost_shared::protocol::records::{RecordedInputs, RecordedTensor};
use outpost_shared::protocol::vocab::Slot;

fn record(id: u64, at_ms: u64, payload: usize) -> PredictionRecord {
    PredictionRecord {
        id,
        at_ms,
        model: "bc".into(),
        version: "1.0.0".into(),
        slot: Slot::Primary,
        latency_us: 5,
        inputs: RecordedInputs::Kept(vec![RecordedTensor {
            name: "input".into(),
            datatype: "FP32".into(),
            shape: vec![1, (payload / 4) as u64],
            data: vec![(id % 251) as u8; payload],
        }]),
        outputs: vec![],
        top_score: None,
    }
}

fn append_n(log: &PredictionLog, n: u64, at_ms: u64, payload: usize) -> Vec<u64> {
    let mut ids = Vec::new();
    for _ in 0..n {
        let id = log.allocate_ids(1).expect("ids reserve on a healthy disk");
        log.append(vec![record(id, at_ms, payload)]).unwrap();
        ids.push(id);
    }
    ids
}

fn config() -> PredictionLogConfig {
    PredictionLogConfig { flush_interval_ms: 50, ..PredictionLogConfig::default() }
}

#[test]
fn records_are_readable_by_id_and_ids_continue_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let ids = {
        let log = PredictionLog::open(dir.path(), &config(), &AtRest::clear()).unwrap();
        let ids = append_n(&log, 100, now_ms(), 120);
        log.flush().unwrap();
        assert_eq!(
            log.get(ids[42]).unwrap().unwrap(),
            record(ids[42], log.get(ids[42]).unwrap().unwrap().at_ms, 120)
        );
        assert_eq!(log.get(10_000).unwrap(), None);
        assert_eq!(log.stats().appended, 100);
        ids
    };
    let log = PredictionLog::open(dir.path(), &config(), &AtRest::clear()).unwrap();
    assert_eq!(log.next_id(), ids[99] + 1, "ids continue after a restart");
    assert!(log.get(ids[0]).unwrap().is_some(), "records survive a restart");
}

#[test]
fn disk_use_stays_within_the_budget_and_evictions_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let budget = 2 * 1024 * 1024;
    let config = PredictionLogConfig { max_bytes: budget, segments: 4, ..config() };
    let log = PredictionLog::open(dir.path(), &config, &AtRest::clear()).unwrap();
    let ids = append_n(&log, 40_000, now_ms(), 200);
    log.flush().unwrap();
    let stats = log.stats();
    // Slack: one write batch, at ≈ 2× its data on disk.
    let slack = (BATCH_RECORDS * 260 * 2) as u64;
    assert!(stats.disk_bytes <= budget + slack, "{} bytes on disk, budget {budget}", stats.disk_bytes);
    assert!(stats.evicted > 0 && stats.evicted_segments > 0, "{stats:?}");
    assert_eq!(stats.appended, 40_000);
    assert!(log.get(ids[0]).unwrap().is_none(), "oldest records were evicted first");
    assert!(log.get(ids[39_999]).unwrap().is_some(), "newest records are kept");
    let on_disk: u64 = walk(&dir.path().join("predictions"));
    assert!(on_disk <= budget + slack + 64 * 1024, "directory holds {on_disk} bytes");
}

#[test]
fn old_segments_are_evicted_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let config = PredictionLogConfig { max_bytes: 1024 * 1024, segments: 4, max_age_secs: 3600, ..config() };
    let log = PredictionLog::open(dir.path(), &config, &AtRest::clear()).unwrap();
    let old = append_n(&log, 3_000, now_ms() - 2 * 3_600_000, 200);
    log.flush().unwrap();
    // 3,000 records span several 256 KiB segments; all but the newest may age out (the
    // writer may already have started while they were being written).
    let fresh = append_n(&log, 10, now_ms(), 200);
    log.flush().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while log.get(old[0]).unwrap().is_some() {
        assert!(std::time::Instant::now() < deadline, "old records never aged out");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(log.get(fresh[9]).unwrap().is_some());
    assert!(log.stats().evicted > 0);
}

fn walk(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => walk(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn sealed_records_leave_no_input_bytes_on_disk_and_a_flipped_one_is_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let at_rest = AtRest::sealed(Arc::new(crate::at_rest::Sealer::ephemeral().unwrap()));
    // Distinctive input bytes, easy to find in the segment files if they were there.
    let marker: Vec<u8> = 1234.5678f32.to_le_bytes().repeat(8);
    let ids = {
        let log = PredictionLog::open(dir.path(), &config(), &at_rest).unwrap();
        let ids: Vec<u64> = (0..50)
            .map(|_| {
                let id = log.allocate_ids(1).unwrap();
                let mut r = record(id, now_ms(), 32);
                if let RecordedInputs::Kept(t) = &mut r.inputs {
                    t[0].data = marker.clone();
                }
                log.append(vec![r]).unwrap();
                id
            })
            .collect();
        log.flush().unwrap();
        ids
    };
    let mut on_disk = Vec::new();
    for entry in files_in(&dir.path().join("predictions")) {
        on_disk.extend(std::fs::read(entry).unwrap());
    }
    assert!(
        !on_disk.windows(marker.len()).any(|w| w == marker.as_slice()),
        "input bytes in the clear on disk"
    );

    // Flip one byte of record 10's sealed value, as a worn card would.
    flip_stored_byte(dir.path(), ids[10], 3);
    std::thread::sleep(Duration::from_millis(200));
    let log = PredictionLog::open(dir.path(), &config(), &at_rest).unwrap();
    let read = log.read_from(ids[0], 100).unwrap();
    assert_eq!(read.len(), 49, "the damaged record is skipped, the others read");
    assert!(read.iter().all(|r| r.id != ids[10]));
    assert!(matches!(log.get(ids[10]), Err(LogError::Unreadable { .. })));
    assert_eq!(log.stats().unreadable, 1);
    // Re-reading the same range is not a new loss.
    log.read_from(ids[0], 100).unwrap();
    assert_eq!(log.stats().unreadable, 1);
    // Without the keys, sealed records do not read at all.
    drop(log);
    std::thread::sleep(Duration::from_millis(200));
    let clear = PredictionLog::open(dir.path(), &config(), &AtRest::clear()).unwrap();
    assert!(matches!(clear.get(ids[0]), Err(LogError::Unreadable { why: Unreadable::NoKeys, .. })));
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().filter_map(Result::ok) {
        let path = entry.path();
        if path.is_dir() { out.extend(files_in(&path)) } else { out.push(path) }
    }
    out
}
