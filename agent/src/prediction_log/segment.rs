//! One segment of the prediction log: its own sled database under
//! `predictions/seg-<first id>/`, opened with a panic inside sled contained, and moved to
//! `predictions/quarantine/` when its files are damaged.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{LogError, PredictionLogConfig, decode};
use crate::at_rest::AtRest;

/// How many records from the end a segment's open looks through for its newest readable one.
const NEWEST_TRIES: usize = 64;

pub(super) struct Segment {
    pub(super) dir: PathBuf,
    pub(super) db: sled::Db,
    /// Newest record time in this segment (unix ms), for age eviction.
    pub(super) newest_at_ms: u64,
    pub(super) records: u64,
}

/// Why a segment did not open: damage (quarantine it) or anything else (report it).
pub(super) enum Opened {
    Damaged(String),
    Failed(LogError),
}

/// Opens a segment with a panic inside sled contained: sled 0.34 panics on some damaged
/// bytes (`tried to serialize Uninitialized`) instead of returning an error.
pub(super) fn open_contained(
    dir: &Path,
    config: &PredictionLogConfig,
    at_rest: &AtRest,
) -> Result<Segment, Opened> {
    match crate::damage::contained(|| open_segment(dir, config, at_rest)) {
        Ok(Ok(segment)) => Ok(segment),
        Ok(Err(LogError::Storage { source, path })) if is_damage(&source) => {
            Err(Opened::Damaged(format!("{}: {source}", path.display())))
        }
        Ok(Err(e)) => Err(Opened::Failed(e)),
        Err(panicked) => Err(Opened::Damaged(panicked)),
    }
}

pub(super) use crate::damage::is_damage;

/// Moves a damaged segment to `root/quarantine/` (kept for inspection, out of the budget).
pub(super) fn quarantine(root: &Path, dir: &Path, why: &str) -> Result<(), LogError> {
    let target = crate::damage::move_aside(dir, &root.join("quarantine"))
        .map_err(|source| LogError::Io { path: dir.to_owned(), source })?;
    tracing::error!(
        segment = %dir.display(),
        moved_to = %target.display(),
        why,
        "prediction log segment is damaged: quarantined, serving goes on (its records are lost to feedback joins)"
    );
    Ok(())
}

pub(super) fn open_segment(
    dir: &Path,
    config: &PredictionLogConfig,
    at_rest: &AtRest,
) -> Result<Segment, LogError> {
    let open = || {
        sled::Config::new()
            .path(dir)
            .cache_capacity(config.cache_bytes)
            .flush_every_ms(Some(config.flush_interval_ms.max(1)))
            .open()
    };
    // sled releases its file lock from a background thread after the last handle is dropped,
    // so a reopen right after a close (or a restart overlapping the old process's exit) may
    // find it still held for a moment: retry briefly before reporting the lock as taken.
    let mut attempts = 0;
    let db = loop {
        match open() {
            Ok(db) => break db,
            Err(e) if attempts < 30 && e.to_string().contains("could not acquire lock") => {
                attempts += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(source) => return Err(LogError::Storage { path: dir.to_owned(), source }),
        }
    };
    let storage = |source| LogError::Storage { path: dir.to_owned(), source };
    // The newest record that still reads (one that fails authentication is skipped here and
    // counted when it is read).
    let mut newest_at_ms = 0;
    for item in db.iter().rev().take(NEWEST_TRIES) {
        let (key, value) = item.map_err(storage)?;
        if let Ok(record) = decode(at_rest, key_id(&key), &value) {
            newest_at_ms = record.at_ms;
            break;
        }
    }
    // A count at open only (sled's len() is a scan); the writer keeps it current afterwards.
    let records = db.len() as u64;
    Ok(Segment { dir: dir.to_owned(), db, newest_at_ms, records })
}

pub(super) fn key_id(key: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    let n = key.len().min(8);
    bytes[8 - n..].copy_from_slice(&key[key.len() - n..]);
    u64::from_be_bytes(bytes)
}

pub(super) fn segment_dir(root: &Path, first_id: u64) -> PathBuf {
    root.join(format!("seg-{first_id:020}"))
}

pub(super) fn total_size(segments: &[Segment]) -> u64 {
    segments.iter().map(|s| s.db.size_on_disk().unwrap_or(0)).sum()
}
