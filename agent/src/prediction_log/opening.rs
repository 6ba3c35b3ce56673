//! Opening the prediction log's segments: files that cannot be read at all are quarantined,
//! damage inside one is counted, and a log written by an earlier version (one sled database
//! per `seg-<first id>/` directory) is rewritten into segment files, record for record.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use super::segment::{Segment, put_frame, quarantine, segment_path};
use super::{Counters, LogError};
use crate::at_rest::AtRest;

/// Bytes of frames written at a time while rewriting an old segment.
const MIGRATE_CHUNK: usize = 1 << 20;

/// The log's segments in id order, after rewriting any old sled ones.
pub(super) fn open_segments(
    root: &Path,
    at_rest: &AtRest,
    counters: &Counters,
) -> Result<Vec<Segment>, LogError> {
    for (first, dir) in entries(root, |name| name.strip_prefix("seg-")?.parse().ok(), true)? {
        migrate_sled_segment(root, &dir, first, counters)?;
    }
    let mut segments = Vec::new();
    for (first, path) in
        entries(root, |name| name.strip_prefix("seg-")?.strip_suffix(".log")?.parse().ok(), false)?
    {
        match Segment::open(&path, first, at_rest) {
            Ok((segment, damage)) => {
                counters.unreadable.fetch_add(damage.regions, Ordering::Relaxed);
                segments.push(segment);
            }
            Err(LogError::Io { source, .. }) if unreadable_file(&source) => {
                quarantine(root, &path, &source.to_string())?;
                counters.quarantined.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(segments)
}

/// An error that says the file's bytes cannot be had (a failing card), not that the operator
/// must act (permissions, a missing directory).
fn unreadable_file(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof)
        || e.raw_os_error() == Some(rustix::io::Errno::IO.raw_os_error())
}

/// `(first id, path)` of the entries under `root` whose names `parse` reads, directories or
/// files, in id order.
fn entries(
    root: &Path,
    parse: impl Fn(&str) -> Option<u64>,
    directories: bool,
) -> Result<Vec<(u64, PathBuf)>, LogError> {
    let mut found: Vec<(u64, PathBuf)> = std::fs::read_dir(root)
        .map_err(|source| LogError::Io { path: root.to_owned(), source })?
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir() == directories))
        .filter_map(|e| Some((parse(e.file_name().to_str()?)?, e.path())))
        // Ids stay far below overflowing (see `segment::MAX_ID`); such a name is not ours.
        .filter(|(first, _)| *first < 1 << 62)
        .collect();
    found.sort_unstable();
    Ok(found)
}

/// Rewrites an earlier version's sled segment into a segment file, then removes it. The stored
/// values are the frames' payloads unchanged (sealed at the same id). A damaged database — an
/// error naming corruption, or a panic inside sled — is quarantined instead.
fn migrate_sled_segment(root: &Path, dir: &Path, first: u64, counters: &Counters) -> Result<(), LogError> {
    let opened = crate::damage::contained(|| sled::Config::new().path(dir).open());
    let db = match opened {
        Ok(Ok(db)) => db,
        Ok(Err(e)) if crate::damage::is_damage(&e) => {
            counters.quarantined.fetch_add(1, Ordering::Relaxed);
            return quarantine(root, dir, &e.to_string());
        }
        Ok(Err(source)) => return Err(LogError::Storage { path: dir.to_owned(), source }),
        Err(panicked) => {
            counters.quarantined.fetch_add(1, Ordering::Relaxed);
            return quarantine(root, dir, &panicked);
        }
    };
    // A rewrite cut short last time starts over.
    let target = segment_path(root, first);
    if target.exists() {
        std::fs::remove_file(&target).map_err(|source| LogError::Io { path: target.clone(), source })?;
    }
    let mut segment = Segment::create(root, first)?;
    let io = |source| LogError::Io { path: target.clone(), source };
    let (mut buf, mut frames, mut records, mut lost) = (Vec::new(), Vec::new(), 0u64, 0u64);
    for item in db.iter() {
        match item {
            Ok((key, value)) => {
                let mut id = [0u8; 8];
                let n = key.len().min(8);
                id[8 - n..].copy_from_slice(&key[key.len() - n..]);
                let id = u64::from_be_bytes(id);
                frames.push((id, buf.len()));
                put_frame(&mut buf, id, &value);
                records += 1;
                if buf.len() >= MIGRATE_CHUNK {
                    segment.append(&buf, &frames, 0).map_err(io)?;
                    buf.clear();
                    frames.clear();
                }
            }
            Err(e) => {
                // The rest of a damaged tree does not read: keep what did.
                lost += 1;
                tracing::error!(segment = %dir.display(), error = %e, "prediction log: an old segment stops reading part way; keeping the records read so far");
                break;
            }
        }
    }
    segment.append(&buf, &frames, 0).map_err(io)?;
    segment.sync().map_err(io)?;
    drop(segment);
    drop(db);
    counters.unreadable.fetch_add(lost, Ordering::Relaxed);
    std::fs::remove_dir_all(dir).map_err(|source| LogError::Io { path: dir.to_owned(), source })?;
    tracing::info!(segment = %dir.display(), records, "prediction log: rewrote a segment from the earlier sled format");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prediction_log::{PredictionLog, PredictionLogConfig};
    use outpost_shared::protocol::records::{PredictionRecord, RecordedInputs};
    use outpost_shared::protocol::vocab::Slot;

    #[test]
    fn a_log_written_by_the_sled_version_is_rewritten_and_every_record_reads() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("predictions");
        let at_rest = AtRest::clear();
        // Two segments the way the sled version wrote them: big-endian id keys, encoded values.
        for (first, ids) in [(1u64, 1u64..=300), (301, 301..=450)] {
            let db = sled::open(root.join(format!("seg-{first:020}"))).unwrap();
            for id in ids {
                let record = PredictionRecord {
                    id,
                    at_ms: 1_000 + id,
                    model: "bc".into(),
                    version: "1.0.0".into(),
                    slot: Slot::Primary,
                    latency_us: 3,
                    inputs: RecordedInputs::Dropped,
                    outputs: vec![],
                    top_score: None,
                };
                db.insert(id.to_be_bytes(), crate::prediction_log::encode(&at_rest, &record)).unwrap();
            }
            db.flush().unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        let log = PredictionLog::open(dir.path(), &PredictionLogConfig::default(), &at_rest).unwrap();
        assert_eq!(log.get(123).unwrap().unwrap().at_ms, 1_123);
        let all = log.read_from(1, 1_000).unwrap();
        assert_eq!(all.len(), 450);
        assert!(all.windows(2).all(|w| w[0].id + 1 == w[1].id));
        assert!(log.next_id() > 450, "ids go on after the migrated ones");
        let left: Vec<String> = std::fs::read_dir(&root)
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(left.is_empty(), "old directories removed: {left:?}");
    }
}
