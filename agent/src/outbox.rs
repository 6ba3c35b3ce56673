//! The durable outbox: signed envelopes waiting for the coordinator's end-to-end ack.
//!
//! # On-disk layout (`<data_dir>/outbox/`, one sled database)
//! - tree `entries`: seq (big-endian u64) → the sealed envelope's wire bytes. An envelope is
//!   sealed once, when it is appended, so every retransmission is byte-identical and the
//!   coordinator's dedupe by (device, seq) recognises it.
//! - tree `meta`: `next_seq` and `prediction_cursor` (the next prediction-log id to batch),
//!   each a big-endian u64.
//!
//! # Invariants
//! - Seqs strictly increase across restarts: the counter and the entry are written in one
//!   transaction, and every append is flushed before it returns.
//! - A prediction batch and the cursor that says which records it covers move together in
//!   the same transaction: after a crash a record is batched exactly once.
//! - Entries leave only when an ack covering them is applied ([`Outbox::apply_ack`]), or when
//!   the byte bound forces the oldest out (counted in `dropped`, never silent).
//! - The byte bound counts envelope bytes; sled's files hold up to about twice that (it does
//!   not give space back), which is the stated slack.
//! - Damage never stops the agent: an outbox whose files sled cannot open (or panics on) is
//!   moved to `<data_dir>/quarantine/`, and a fresh one starts — its seqs continue above every
//!   seq the damaged one may have handed out, read from `<data_dir>/outbox.seq`, a reservation
//!   written (atomically, synced) [`SEQ_RESERVE`] seqs ahead of use. Without a readable
//!   reservation, the fresh outbox starts at the current unix time in milliseconds, above any
//!   count of messages a device sends. The coordinator never mistakes a new message for a
//!   replay of a lost one.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use outpost_shared::protocol::messages::{self, Ack, AgentMessage, OutboxStats};
use outpost_shared::protocol::{self, SigningKey};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox storage error in {path}: {source}")]
    Storage { path: PathBuf, source: sled::Error },
    #[error("cannot seal an outbox message: {0}")]
    Seal(String),
    #[error("the outbox in {0} is in use by another process (stop the agent before exporting or importing)")]
    Locked(PathBuf),
}

pub use outpost_shared::endpoints::now_ms;

const NEXT_SEQ: &[u8] = b"next_seq";
/// Seqs reserved on disk ahead of use (one small synced write per this many messages).
pub const SEQ_RESERVE: u64 = 1024;
/// The reservation file beside the outbox.
const SEQ_FILE: &str = "outbox.seq";
const CURSOR: &[u8] = b"prediction_cursor";

fn be(bytes: Option<&[u8]>) -> Option<u64> {
    bytes.and_then(|b| b.try_into().ok()).map(u64::from_be_bytes)
}

/// What a damaged outbox took with it when it was quarantined at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    /// Where the damaged files went.
    pub moved_to: PathBuf,
    /// What was wrong.
    pub why: String,
    /// The first seq of the fresh outbox: the lost messages had seqs below it.
    pub next_seq: u64,
}

pub struct Outbox {
    path: PathBuf,
    /// `<data_dir>/outbox.seq`.
    seq_file: PathBuf,
    /// The highest seq reserved on disk.
    reserved: std::sync::Mutex<u64>,
    /// Set when the outbox found at start was damaged and replaced.
    quarantined: Option<Quarantined>,
    db: sled::Db,
    entries: sled::Tree,
    meta: sled::Tree,
    max_bytes: u64,
    messages: AtomicU64,
    bytes: AtomicU64,
    dropped: AtomicU64,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox").field("path", &self.path).finish_non_exhaustive()
    }
}

impl Outbox {
    /// Opens (or creates) the outbox. `max_bytes` bounds the envelope bytes kept. A damaged
    /// outbox is quarantined and replaced (see [`Outbox::quarantined`]); only a lock held by
    /// another process or a disk that cannot be used is an error.
    pub fn open(data_dir: &Path, max_bytes: u64) -> Result<Outbox, OutboxError> {
        let path = data_dir.join("outbox");
        let seq_file = data_dir.join(SEQ_FILE);
        let reserved = read_reservation(&seq_file);
        let (db, entries, meta, counts, quarantined) = match open_db(&path) {
            Ok((db, entries, meta, counts)) => (db, entries, meta, counts, None),
            Err(Opened::Failed(e)) => return Err(e),
            Err(Opened::Damaged(why)) => {
                let aside = data_dir.join("quarantine");
                let moved_to = crate::damage::move_aside(&path, &aside)
                    .map_err(|e| OutboxError::Storage { path: path.clone(), source: sled::Error::Io(e) })?;
                let next_seq = match reserved {
                    Some(r) => r + 1,
                    None => now_ms().max(1),
                };
                let (db, entries, meta, counts) = open_db(&path).map_err(|e| match e {
                    Opened::Failed(e) => e,
                    Opened::Damaged(why) => OutboxError::Storage {
                        path: path.clone(),
                        source: sled::Error::Unsupported(format!("a fresh outbox is damaged too: {why}")),
                    },
                })?;
                meta.insert(NEXT_SEQ, &next_seq.to_be_bytes())
                    .and_then(|_| db.flush().map(|_| ()))
                    .map_err(|source| OutboxError::Storage { path: path.clone(), source })?;
                tracing::error!(
                    outbox = %path.display(),
                    moved_to = %moved_to.display(),
                    why,
                    next_seq,
                    "the outbox is damaged: quarantined; telemetry not yet acknowledged by the coordinator \
                     (seqs below {next_seq}) is lost, and serving goes on with a fresh outbox"
                );
                (db, entries, meta, counts, Some(Quarantined { moved_to, why, next_seq }))
            }
        };
        let outbox = Outbox {
            path,
            seq_file,
            reserved: std::sync::Mutex::new(reserved.unwrap_or(0)),
            quarantined,
            db,
            entries,
            meta,
            max_bytes,
            messages: AtomicU64::new(counts.0),
            bytes: AtomicU64::new(counts.1),
            dropped: AtomicU64::new(0),
        };
        outbox.reserve()?;
        Ok(outbox)
    }

    /// The damaged outbox this one replaced at start, if it did.
    pub fn quarantined(&self) -> Option<&Quarantined> {
        self.quarantined.as_ref()
    }

    /// The next seq to hand out.
    fn next_seq(&self) -> Result<u64, OutboxError> {
        Ok(be(self.meta.get(NEXT_SEQ).map_err(|e| self.storage(e))?.as_deref()).unwrap_or(1))
    }

    /// Keeps the reservation on disk ahead of the next seq (a synced write once per
    /// [`SEQ_RESERVE`] seqs), so a replacement outbox can start above every seq used.
    fn reserve(&self) -> Result<(), OutboxError> {
        let next = self.next_seq()?;
        let mut reserved = self.reserved.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // A margin for appends racing this check: each takes one seq.
        if next + 64 <= *reserved {
            return Ok(());
        }
        let bound = next + SEQ_RESERVE;
        outpost_shared::files::write_atomic(&self.seq_file, format!("{bound}\n").as_bytes())
            .map_err(|e| OutboxError::Storage { path: self.seq_file.clone(), source: sled::Error::Io(e) })?;
        *reserved = bound;
        Ok(())
    }

    fn storage(&self, source: sled::Error) -> OutboxError {
        OutboxError::Storage { path: self.path.clone(), source }
    }

    /// Seals `message` with the next seq and stores it durably; with `cursor`, also moves the
    /// prediction cursor in the same transaction. Returns the seq.
    pub fn append(
        &self,
        key: &SigningKey,
        message: &AgentMessage,
        cursor: Option<u64>,
    ) -> Result<u64, OutboxError> {
        let body = messages::encode(message);
        self.reserve()?;
        let result = (&self.entries, &self.meta).transaction(|(entries, meta)| {
            let seq = be(meta.get(NEXT_SEQ)?.as_deref()).unwrap_or(1);
            let wire = protocol::seal(key, seq, now_ms(), &body)
                .map_err(|e| ConflictableTransactionError::Abort(e.to_string()))?;
            entries.insert(&seq.to_be_bytes(), wire.as_slice())?;
            meta.insert(NEXT_SEQ, &(seq + 1).to_be_bytes())?;
            if let Some(cursor) = cursor {
                meta.insert(CURSOR, &cursor.to_be_bytes())?;
            }
            Ok((seq, wire.len() as u64))
        });
        let (seq, size) = match result {
            Ok(ok) => ok,
            Err(TransactionError::Abort(message)) => return Err(OutboxError::Seal(message)),
            Err(TransactionError::Storage(e)) => return Err(self.storage(e)),
        };
        self.messages.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(size, Ordering::Relaxed);
        self.enforce_bound()?;
        self.db.flush().map_err(|e| self.storage(e))?;
        Ok(seq)
    }

    /// Drops the oldest entries while over the byte bound (never the newest one).
    fn enforce_bound(&self) -> Result<(), OutboxError> {
        while self.bytes.load(Ordering::Relaxed) > self.max_bytes && self.messages.load(Ordering::Relaxed) > 1
        {
            let Some((key, value)) = self.entries.pop_min().map_err(|e| self.storage(e))? else { break };
            self.messages.fetch_sub(1, Ordering::Relaxed);
            self.bytes.fetch_sub(value.len() as u64, Ordering::Relaxed);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                seq = be(Some(&key)),
                max_bytes = self.max_bytes,
                "outbox full: dropped the oldest unacknowledged message"
            );
        }
        Ok(())
    }

    /// The next prediction-log id to batch (1 when nothing was batched yet).
    pub fn prediction_cursor(&self) -> Result<Option<u64>, OutboxError> {
        Ok(be(self.meta.get(CURSOR).map_err(|e| self.storage(e))?.as_deref()))
    }

    /// Moves the prediction cursor without a message (when nothing was sampled).
    pub fn set_cursor(&self, cursor: u64) -> Result<(), OutboxError> {
        self.meta.insert(CURSOR, &cursor.to_be_bytes()).map_err(|e| self.storage(e))?;
        Ok(())
    }

    /// Up to `limit` entries with seq > `after`, in seq order.
    pub fn pending_after(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, OutboxError> {
        let start = after.map_or(0, |s| s.saturating_add(1));
        let mut out = Vec::with_capacity(limit.min(256));
        for item in self.entries.range(start.to_be_bytes()..).take(limit) {
            let (key, value) = item.map_err(|e| self.storage(e))?;
            out.push((be(Some(&key)).unwrap_or(0), value.to_vec()));
        }
        Ok(out)
    }

    /// The seq of the oldest envelope still waiting for an ack.
    pub fn oldest(&self) -> Result<Option<u64>, OutboxError> {
        let first = self.entries.first().map_err(|e| self.storage(e))?;
        Ok(first.and_then(|(key, _)| be(Some(&key))))
    }

    /// How many entries have seq ≤ `last`, counting at most `cap` (reads keys, copies nothing).
    pub fn count_through(&self, last: u64, cap: usize) -> usize {
        self.entries.range(..=last.to_be_bytes()).take(cap).count()
    }

    /// Deletes every entry the ack covers; returns how many were deleted.
    pub fn apply_ack(&self, ack: &Ack) -> Result<u64, OutboxError> {
        let mut batch = sled::Batch::default();
        let mut removed = Vec::new();
        for &(first, last) in &ack.ranges {
            for item in self.entries.range(first.to_be_bytes()..=last.to_be_bytes()) {
                let (key, value) = item.map_err(|e| self.storage(e))?;
                batch.remove(key.clone());
                removed.push(value.len() as u64);
            }
        }
        if removed.is_empty() {
            return Ok(0);
        }
        self.entries.apply_batch(batch).map_err(|e| self.storage(e))?;
        self.db.flush().map_err(|e| self.storage(e))?;
        self.messages.fetch_sub(removed.len() as u64, Ordering::Relaxed);
        self.bytes.fetch_sub(removed.iter().sum::<u64>(), Ordering::Relaxed);
        Ok(removed.len() as u64)
    }

    /// Backlog figures for reports and metrics.
    pub fn stats(&self) -> OutboxStats {
        let oldest_age_ms = self
            .entries
            .first()
            .ok()
            .flatten()
            .and_then(|(_, wire)| protocol::decode(&wire).ok())
            .map_or(0, |e| now_ms().saturating_sub(e.sent_at_ms));
        OutboxStats {
            messages: self.messages.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            oldest_age_ms,
        }
    }

    /// Messages dropped by the byte bound since start.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Disk used by the outbox's files.
    pub fn disk_bytes(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    pub fn flush(&self) -> Result<(), OutboxError> {
        self.db.flush().map(|_| ()).map_err(|e| self.storage(e))
    }
}

/// Why an outbox did not open: damage (quarantine it) or anything else (report it).
enum Opened {
    Damaged(String),
    Failed(OutboxError),
}

type Parts = (sled::Db, sled::Tree, sled::Tree, (u64, u64));

/// Opens the outbox's database and counts its entries (messages, bytes), with damage told
/// apart and a panic inside sled contained.
fn open_db(path: &Path) -> Result<Parts, Opened> {
    let classify = |source: sled::Error| {
        if source.to_string().contains("could not acquire lock") {
            Opened::Failed(OutboxError::Locked(path.to_owned()))
        } else if crate::damage::is_damage(&source) {
            Opened::Damaged(format!("{}: {source}", path.display()))
        } else {
            Opened::Failed(OutboxError::Storage { path: path.to_owned(), source })
        }
    };
    let open = || -> Result<Parts, Opened> {
        let db = sled::Config::new().path(path).cache_capacity(2 * 1024 * 1024).open().map_err(classify)?;
        let entries = db.open_tree("entries").map_err(classify)?;
        let meta = db.open_tree("meta").map_err(classify)?;
        let (mut messages, mut bytes) = (0u64, 0u64);
        for item in entries.iter() {
            let (_, value) = item.map_err(classify)?;
            messages += 1;
            bytes += value.len() as u64;
        }
        be(meta.get(NEXT_SEQ).map_err(classify)?.as_deref());
        Ok((db, entries, meta, (messages, bytes)))
    };
    crate::damage::contained(open).unwrap_or_else(|panicked| Err(Opened::Damaged(panicked)))
}

/// The reservation in `outbox.seq`, when it reads as a number.
fn read_reservation(file: &Path) -> Option<u64> {
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_shared::protocol::messages::{Event, EventKind};

    fn event(n: usize) -> AgentMessage {
        AgentMessage::Event(Event { at_ms: 1, kind: EventKind::AgentStarted, message: "x".repeat(n) })
    }

    #[test]
    fn seqs_survive_reopen_and_acks_free_exactly_what_they_cover() {
        let dir = tempfile::tempdir().unwrap();
        let (key, _) = SigningKey::generate().unwrap();
        {
            let outbox = Outbox::open(dir.path(), 1 << 20).unwrap();
            assert_eq!(outbox.append(&key, &event(10), None).unwrap(), 1);
            assert_eq!(outbox.append(&key, &event(10), Some(42)).unwrap(), 2);
        }
        let outbox = Outbox::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(outbox.prediction_cursor().unwrap(), Some(42));
        assert_eq!(outbox.append(&key, &event(10), None).unwrap(), 3);
        assert_eq!(outbox.stats().messages, 3);
        let pending: Vec<u64> =
            outbox.pending_after(Some(1), 10).unwrap().into_iter().map(|(s, _)| s).collect();
        assert_eq!(pending, vec![2, 3]);
        assert_eq!(outbox.count_through(2, 64), 2);
        assert_eq!(outbox.count_through(2, 1), 1);
        assert_eq!(outbox.apply_ack(&Ack::from_seqs("d", [1, 3, 99])).unwrap(), 2);
        assert_eq!(outbox.apply_ack(&Ack::from_seqs("d", [1, 3])).unwrap(), 0, "acks are idempotent");
        let left: Vec<u64> = outbox.pending_after(None, 10).unwrap().into_iter().map(|(s, _)| s).collect();
        assert_eq!(left, vec![2]);
        // Every stored envelope opens with the device key and carries its seq.
        let (seq, wire) = &outbox.pending_after(None, 1).unwrap()[0];
        assert_eq!(protocol::open(wire, |_| Some(key.public_key())).unwrap().seq, *seq);
    }

    #[test]
    fn the_byte_bound_drops_the_oldest_and_counts_it() {
        let dir = tempfile::tempdir().unwrap();
        let (key, _) = SigningKey::generate().unwrap();
        let outbox = Outbox::open(dir.path(), 2_000).unwrap();
        for _ in 0..10 {
            outbox.append(&key, &event(400), None).unwrap();
        }
        let stats = outbox.stats();
        assert!(stats.bytes <= 2_000, "{stats:?}");
        assert_eq!(stats.messages + outbox.dropped(), 10);
        let first = outbox.pending_after(None, 1).unwrap()[0].0;
        assert_eq!(first, 10 - stats.messages + 1, "the oldest go first");
    }

    /// Overwrites every file of the outbox's database with garbage of the same size (what a
    /// dying card leaves), keeping the directory.
    fn ruin(outbox_dir: &Path) {
        for entry in std::fs::read_dir(outbox_dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                let len = std::fs::metadata(&path).unwrap().len().max(64) as usize;
                std::fs::write(&path, vec![0xA5; len]).unwrap();
            }
        }
    }

    #[test]
    fn a_damaged_outbox_is_quarantined_and_seqs_continue_above_the_reservation() {
        let dir = tempfile::tempdir().unwrap();
        let (key, _) = SigningKey::generate().unwrap();
        {
            let outbox = Outbox::open(dir.path(), 1 << 20).unwrap();
            for _ in 0..3 {
                outbox.append(&key, &event(10), Some(7)).unwrap();
            }
            assert!(outbox.quarantined().is_none());
        }
        assert_eq!(read_reservation(&dir.path().join(SEQ_FILE)), Some(1 + SEQ_RESERVE));
        ruin(&dir.path().join("outbox"));
        let outbox = Outbox::open(dir.path(), 1 << 20).unwrap();
        let q = outbox.quarantined().expect("the damage was noticed").clone();
        assert_eq!(q.next_seq, 2 + SEQ_RESERVE, "above every seq the damaged outbox could have used");
        assert!(q.moved_to.starts_with(dir.path().join("quarantine")) && q.moved_to.exists(), "{q:?}");
        assert_eq!(outbox.stats().messages, 0, "what was in it is gone, and said so");
        assert_eq!(outbox.prediction_cursor().unwrap(), None);
        assert_eq!(outbox.append(&key, &event(10), None).unwrap(), 2 + SEQ_RESERVE);
        drop(outbox);
        // Healthy again: no second quarantine, seqs go on.
        let outbox = Outbox::open(dir.path(), 1 << 20).unwrap();
        assert!(outbox.quarantined().is_none());
        assert_eq!(outbox.append(&key, &event(10), None).unwrap(), 3 + SEQ_RESERVE);
    }

    #[test]
    fn without_a_readable_reservation_a_replacement_starts_at_the_clock() {
        let dir = tempfile::tempdir().unwrap();
        let (key, _) = SigningKey::generate().unwrap();
        {
            let outbox = Outbox::open(dir.path(), 1 << 20).unwrap();
            outbox.append(&key, &event(10), None).unwrap();
        }
        std::fs::write(dir.path().join(SEQ_FILE), b"\x00\xff not a number").unwrap();
        ruin(&dir.path().join("outbox"));
        let before = now_ms();
        let outbox = Outbox::open(dir.path(), 1 << 20).unwrap();
        let next = outbox.quarantined().expect("quarantined").next_seq;
        assert!(next >= before, "{next} < {before}");
        assert_eq!(outbox.append(&key, &event(10), None).unwrap(), next);
        assert_eq!(read_reservation(&dir.path().join(SEQ_FILE)), Some(next + SEQ_RESERVE), "rewritten");
    }

    #[test]
    fn a_locked_outbox_is_an_error_not_damage() {
        let dir = tempfile::tempdir().unwrap();
        let _held = Outbox::open(dir.path(), 1 << 20).unwrap();
        assert!(matches!(Outbox::open(dir.path(), 1 << 20), Err(OutboxError::Locked(_))));
        assert!(!dir.path().join("quarantine").exists(), "nothing moved aside");
    }
}
