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
    // Slack: one write batch (records of ≈ 260 bytes and their frames).
    let slack = (BATCH_RECORDS * 290) as u64;
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
    assert!(matches!(log.get(ids[10]), Err(LogError::Damaged { .. })), "named damaged, not unknown");
    assert_eq!(log.stats().unreadable, 1, "counted once, at open");
    // Re-reading the same range is not a new loss.
    log.read_from(ids[0], 100).unwrap();
    assert_eq!(log.stats().unreadable, 1);
    // Without the keys, sealed records do not read at all.
    drop(log);
    std::thread::sleep(Duration::from_millis(200));
    let clear = PredictionLog::open(dir.path(), &config(), &AtRest::clear()).unwrap();
    assert!(matches!(clear.get(ids[0]), Err(LogError::Unreadable { why: Unreadable::NoKeys, .. })));
}

#[test]
fn disk_use_is_within_a_fifth_of_the_data_and_eviction_gives_the_space_back() {
    let dir = tempfile::tempdir().unwrap();
    let config = PredictionLogConfig { max_bytes: 4 * 1024 * 1024, segments: 4, ..config() };
    let log = PredictionLog::open(dir.path(), &config, &AtRest::clear()).unwrap();
    let data_per_record = encode(&AtRest::clear(), &record(1, now_ms(), 200)).len() as u64;
    append_n(&log, 5_000, now_ms(), 200);
    log.flush().unwrap();
    let stats = log.stats();
    assert_eq!(stats.evicted, 0, "under the budget so far: {stats:?}");
    let on_disk = walk(&dir.path().join("predictions"));
    let data = 5_000 * data_per_record;
    assert!(on_disk as f64 <= 1.2 * data as f64, "{on_disk} bytes on disk for {data} bytes of records");
    // Past the budget: evicted segments' files are gone, their space free at once.
    append_n(&log, 20_000, now_ms(), 200);
    log.flush().unwrap();
    let stats = log.stats();
    assert!(stats.evicted_segments > 0, "{stats:?}");
    let on_disk = walk(&dir.path().join("predictions"));
    assert_eq!(on_disk, stats.disk_bytes + 16, "the files are the segments (and the id mark) alone");
    let held = (stats.appended - stats.evicted) * data_per_record;
    assert!(on_disk as f64 <= 1.2 * held as f64, "{on_disk} bytes on disk for {held} bytes held");
}

#[test]
fn records_read_in_id_order_even_when_they_reach_the_writer_out_of_order() {
    let dir = tempfile::tempdir().unwrap();
    let log = PredictionLog::open(dir.path(), &config(), &AtRest::clear()).unwrap();
    let ids: Vec<u64> = (0..500).map(|_| log.allocate_ids(1).unwrap()).collect();
    // Pairs swapped, and the first record of all appended last (a request that was slow to
    // hand its record over).
    for pair in ids[1..].chunks(2) {
        log.append(pair.iter().rev().map(|&id| record(id, now_ms(), 20)).collect()).unwrap();
        log.flush().unwrap();
    }
    log.append(vec![record(ids[0], now_ms(), 20)]).unwrap();
    log.flush().unwrap();
    let first_ten: Vec<u64> = log.read_from(ids[0], 10).unwrap().iter().map(|r| r.id).collect();
    assert_eq!(first_ten, ids[..10].to_vec());
    let all: Vec<u64> = log.read_from(0, 1_000).unwrap().iter().map(|r| r.id).collect();
    assert_eq!(all, ids);
    for &id in &ids {
        assert_eq!(log.get(id).unwrap().map(|r| r.id), Some(id));
    }
}

#[test]
fn a_torn_write_at_the_end_is_cut_off_and_the_log_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let ids = {
        let log = PredictionLog::open(dir.path(), &config(), &AtRest::clear()).unwrap();
        let ids = append_n(&log, 100, now_ms(), 100);
        log.flush().unwrap();
        ids
    };
    // Half a record at the end, as a write cut short by a power cut leaves it.
    let segment = files_in(&dir.path().join("predictions"))
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "log"))
        .unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    let mut half = Vec::new();
    segment::put_frame(&mut half, ids[99] + 1, &[9u8; 300]);
    bytes.extend_from_slice(&half[..150]);
    std::fs::write(&segment, bytes).unwrap();
    let log = PredictionLog::open(dir.path(), &config(), &AtRest::clear()).unwrap();
    assert_eq!(log.read_from(0, 1_000).unwrap().len(), 100, "every whole record reads");
    assert_eq!(log.stats().unreadable, 0, "a torn tail is not damage");
    let more = append_n(&log, 10, now_ms(), 100);
    log.flush().unwrap();
    assert!(log.get(more[9]).unwrap().is_some(), "appends go on after the cut");
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().filter_map(Result::ok) {
        let path = entry.path();
        if path.is_dir() { out.extend(files_in(&path)) } else { out.push(path) }
    }
    out
}
