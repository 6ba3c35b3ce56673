//! Prediction ids that are never handed out twice, even across a SIGKILL or a power cut.
//!
//! Records reach disk on the writer's periodic sync, so after a crash the newest *logged* id
//! can be behind the newest id a client was *answered* with. Starting again one past the newest
//! logged id would hand those ids out a second time, and a late feedback label would join the
//! wrong prediction. So ids are reserved on disk ahead of use: `predictions/ids.reserved`
//! holds a mark below which ids may have been handed out, written (atomically, synced) a block
//! of [`ID_BLOCK`] ids ahead before any id past the previous mark is returned. A clean close
//! writes the exact next id. At open, ids continue from the mark; the ids between the newest
//! logged one and the mark are reported as skipped (after an unclean stop, predictions
//! answered with some of them were lost: they show up in that count, never as a reused id).
//!
//! If the mark cannot be written (a full or failing disk), no id is handed out: the request is
//! still answered, but not logged, and the failure is counted.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Ids reserved on disk at a time: one synced write per this many predictions.
pub const ID_BLOCK: u64 = 65_536;
/// How far ids jump past the newest logged one when the reservation file is unreadable (a
/// flipped bit): far enough that no run could have handed out that many unlogged ids.
pub const ID_JUMP_WHEN_UNSURE: u64 = 1 << 32;
/// After a failed reservation write, how long requests go unlogged before the next attempt
/// (so a full disk costs one failed write a second, not one per request).
const RETRY_AFTER: Duration = Duration::from_secs(1);

const FILE: &str = "ids.reserved";

/// A range of ids skipped at open: `first..=last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Skipped {
    pub first: u64,
    pub last: u64,
}

impl Skipped {
    pub fn count(&self) -> u64 {
        self.last - self.first + 1
    }
}

/// The next id to hand out and the mark reserved on disk.
#[derive(Debug)]
pub struct Ids {
    path: PathBuf,
    next: AtomicU64,
    /// Every id below this may have been handed out (it is on disk).
    reserved: AtomicU64,
    /// Serialises mark writes; holds when the last one failed.
    writing: Mutex<Option<Instant>>,
    failures: AtomicU64,
}

/// The 16 bytes of a mark: the value and its complement, so a damaged file is detected.
fn encode(mark: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&mark.to_be_bytes());
    out[8..].copy_from_slice(&(!mark).to_be_bytes());
    out
}

fn decode(bytes: &[u8]) -> Option<u64> {
    let value = u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
    let check = u64::from_be_bytes(bytes.get(8..16)?.try_into().ok()?);
    (bytes.len() == 16 && check == !value).then_some(value)
}

impl Ids {
    /// Opens the reservation in `root` (the log's directory); `logged_next` is one past the
    /// newest logged id. Returns the ids and the range skipped, if any.
    pub fn open(root: &Path, logged_next: u64) -> (Ids, Option<Skipped>) {
        let path = root.join(FILE);
        let next = match std::fs::read(&path).map(|bytes| decode(&bytes)) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => logged_next,
            Ok(Some(mark)) => mark.max(logged_next),
            Ok(None) => {
                tracing::warn!(path = %path.display(), "the prediction-id reservation is damaged; ids jump ahead so none can repeat");
                logged_next.saturating_add(ID_JUMP_WHEN_UNSURE)
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the prediction-id reservation; ids jump ahead so none can repeat");
                logged_next.saturating_add(ID_JUMP_WHEN_UNSURE)
            }
        };
        let skipped = (next > logged_next).then(|| Skipped { first: logged_next, last: next - 1 });
        let ids = Ids {
            path,
            next: AtomicU64::new(next),
            reserved: AtomicU64::new(next),
            writing: Mutex::new(None),
            failures: AtomicU64::new(0),
        };
        (ids, skipped)
    }

    /// Hands out `n` consecutive ids and returns the first — only once a mark past them is on
    /// disk. `None` when the mark cannot be written (counted; see [`Ids::failures`]).
    pub fn allocate(&self, n: u64) -> Option<u64> {
        let first = self.next.fetch_add(n, Ordering::SeqCst);
        let end = first + n;
        if end <= self.reserved.load(Ordering::Acquire) {
            return Some(first);
        }
        let mut failed_at = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        if end <= self.reserved.load(Ordering::Acquire) {
            return Some(first);
        }
        if failed_at.is_some_and(|at| at.elapsed() < RETRY_AFTER) {
            self.failures.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let mark = end + ID_BLOCK;
        match outpost_shared::files::write_atomic(&self.path, &encode(mark)) {
            Ok(()) => {
                if failed_at.take().is_some() {
                    tracing::info!(path = %self.path.display(), "prediction ids are reserved on disk again; predictions are logged again");
                }
                self.reserved.store(mark, Ordering::Release);
                Some(first)
            }
            Err(e) => {
                if failed_at.is_none() {
                    tracing::error!(path = %self.path.display(), error = %e, "cannot reserve prediction ids on disk: requests are answered but not logged until it works again");
                }
                *failed_at = Some(Instant::now());
                self.failures.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// The next id that will be handed out.
    pub fn next(&self) -> u64 {
        self.next.load(Ordering::SeqCst)
    }

    /// Requests answered without ids because no mark could be written.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// At a clean close: the exact next id, so the next start skips nothing that was logged.
    pub fn close(&self) {
        if let Err(e) = outpost_shared::files::write_atomic(&self.path, &encode(self.next())) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot write the prediction-id mark at close; the next start skips ahead");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_reserved_before_use_and_a_crash_skips_instead_of_repeating() {
        let dir = tempfile::tempdir().unwrap();
        let (ids, skipped) = Ids::open(dir.path(), 1);
        assert_eq!(skipped, None);
        assert_eq!(ids.allocate(3), Some(1));
        assert_eq!(decode(&std::fs::read(dir.path().join(FILE)).unwrap()), Some(4 + ID_BLOCK));
        // A crash (no close) with ids 1..=3 answered but only 1 logged: the next start skips.
        drop(ids);
        let (ids, skipped) = Ids::open(dir.path(), 2);
        assert_eq!(skipped, Some(Skipped { first: 2, last: 3 + ID_BLOCK }));
        assert_eq!(ids.allocate(1), Some(4 + ID_BLOCK));
        // A clean close after everything was logged: nothing skipped, ids continue.
        ids.close();
        let (ids, skipped) = Ids::open(dir.path(), 5 + ID_BLOCK);
        assert_eq!((skipped, ids.next()), (None, 5 + ID_BLOCK));
    }

    #[test]
    fn a_damaged_mark_jumps_ahead_and_an_unwritable_one_hands_out_nothing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), [0xAB; 16]).unwrap();
        let (ids, skipped) = Ids::open(dir.path(), 10);
        assert_eq!(skipped.map(|s| s.count()), Some(ID_JUMP_WHEN_UNSURE));
        assert_eq!(ids.next(), 10 + ID_JUMP_WHEN_UNSURE);
        // The mark's directory is gone (a pulled card): no id is handed out, and it is counted.
        let gone = dir.path().join("gone");
        let (ids, _) = Ids::open(&gone, 1);
        std::fs::write(&gone, b"a file where the directory should be").unwrap();
        assert_eq!(ids.allocate(1), None);
        assert_eq!(ids.allocate(1), None, "within the retry pause");
        assert_eq!(ids.failures(), 2);
        assert!(ids.next() > 1, "ids taken while failing are skipped, not reused");
    }
}
