//! The durable outbox: signed envelopes waiting for the coordinator's end-to-end ack.
//!
//! # On-disk layout (`<data_dir>/outbox/`, one sled database)
//! - tree `entries`: seq (big-endian u64) → the sealed envelope's wire bytes. An envelope is
//!   sealed once, when it is appended, so every retransmission is byte-identical and the
//!   coordinator's dedupe by (device, seq) recognises it. With encryption at rest on, the
//!   value is those bytes encrypted at their seq ([`crate::at_rest`]); an entry that fails
//!   authentication (flipped on disk) is removed when met, counted and logged, never sent.
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
//! - Damage never stops the agent and never repeats a seq. Every append first writes its seq
//!   to `<data_dir>/outbox.seq` (atomically, synced, with a checksum): the high-water mark of
//!   what the outbox ever handed out, outside sled. An outbox whose files sled cannot open (or
//!   panics on) is moved to `<data_dir>/quarantine/` and a fresh one starts above that mark;
//!   one that sled opens but recovered short (damage cut its log, so it would hand out seqs
//!   already sent) goes on above the mark too. Either way the coordinator stores what follows
//!   as new, never as replays of what was lost, and the loss is reported ([`Outbox::recovered`]).
//!   Without a readable mark, a replacement starts at the current unix time in milliseconds,
//!   above any count of messages a device sends.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use outpost_shared::protocol::messages::{self, Ack, AgentMessage, OutboxStats};
use outpost_shared::protocol::{self, SigningKey};
use sled::Transactional;

use crate::at_rest::{AtRest, Store, Unreadable};
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
/// The high-water mark file beside the outbox.
const SEQ_FILE: &str = "outbox.seq";
const CURSOR: &[u8] = b"prediction_cursor";

fn be(bytes: Option<&[u8]>) -> Option<u64> {
    bytes.and_then(|b| b.try_into().ok()).map(u64::from_be_bytes)
}

/// What damage found at start took, and how the outbox went on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// What was wrong and what was done (for the log, an event and the coordinator).
    pub what: String,
    /// Where the damaged files went, when they were moved aside.
    pub moved_to: Option<PathBuf>,
    /// The first seq from now on: what was lost had seqs below it.
    pub next_seq: u64,
}

pub struct Outbox {
    path: PathBuf,
    /// `<data_dir>/outbox.seq`: the high-water mark.
    seq_file: PathBuf,
    /// One append at a time: its seq goes to the mark before sled has it.
    appending: std::sync::Mutex<()>,
    /// Set when the outbox found at start was damaged.
    recovered: Option<Recovery>,
    db: sled::Db,
    entries: sled::Tree,
    meta: sled::Tree,
    max_bytes: u64,
    messages: AtomicU64,
    bytes: AtomicU64,
    dropped: AtomicU64,
    /// Entries removed because they did not read (failed authentication).
    unreadable: AtomicU64,
    at_rest: AtRest,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox").field("path", &self.path).finish_non_exhaustive()
    }
}

impl Outbox {
    /// Opens (or creates) the outbox. `max_bytes` bounds the envelope bytes kept. A damaged
    /// outbox is quarantined and replaced, and one recovered short goes on above the mark (see
    /// [`Outbox::recovered`]); only a lock held by another process or a disk that cannot be
    /// used is an error.
    pub fn open(data_dir: &Path, max_bytes: u64, at_rest: &AtRest) -> Result<Outbox, OutboxError> {
        let path = data_dir.join("outbox");
        let seq_file = data_dir.join(SEQ_FILE);
        let mark = read_high_water(&seq_file);
        let storage = |source: sled::Error| OutboxError::Storage { path: path.clone(), source };
        let (db, entries, meta, counts, recovered) = match open_db(&path) {
            Ok((db, entries, meta, counts)) => {
                let stored = be(meta.get(NEXT_SEQ).map_err(storage)?.as_deref()).unwrap_or(1);
                let recovered = match mark {
                    Some(high) if high >= stored => {
                        meta.insert(NEXT_SEQ, &(high + 1).to_be_bytes()).map_err(storage)?;
                        db.flush().map_err(storage)?;
                        Some(Recovery {
                            what: format!(
                                "the outbox recovered short: seqs up to {high} were handed out, its files go on \
                                 from {stored}; telemetry {stored}–{high} not yet acknowledged is lost"
                            ),
                            moved_to: None,
                            next_seq: high + 1,
                        })
                    }
                    _ => None,
                };
                (db, entries, meta, counts, recovered)
            }
            Err(Opened::Failed(e)) => return Err(e),
            Err(Opened::Damaged(why)) => {
                let moved_to = crate::damage::move_aside(&path, &data_dir.join("quarantine"))
                    .map_err(|e| storage(sled::Error::Io(e)))?;
                let next_seq = match mark {
                    Some(high) => high + 1,
                    None => now_ms().max(1),
                };
                let (db, entries, meta, counts) = open_db(&path).map_err(|e| match e {
                    Opened::Failed(e) => e,
                    Opened::Damaged(why) => {
                        storage(sled::Error::Unsupported(format!("a fresh outbox is damaged too: {why}")))
                    }
                })?;
                meta.insert(NEXT_SEQ, &next_seq.to_be_bytes()).map_err(storage)?;
                db.flush().map_err(storage)?;
                let what = format!(
                    "the outbox is damaged ({why}): quarantined; telemetry not yet acknowledged (seqs below \
                     {next_seq}) is lost"
                );
                (db, entries, meta, counts, Some(Recovery { what, moved_to: Some(moved_to), next_seq }))
            }
        };
        if let Some(r) = &recovered {
            tracing::error!(
                outbox = %path.display(),
                moved_to = ?r.moved_to,
                next_seq = r.next_seq,
                "{}; serving goes on",
                r.what
            );
        }
        Ok(Outbox {
            path,
            seq_file,
            appending: std::sync::Mutex::new(()),
            recovered,
            db,
            entries,
            meta,
            max_bytes,
            messages: AtomicU64::new(counts.0),
            bytes: AtomicU64::new(counts.1),
            dropped: AtomicU64::new(0),
            unreadable: AtomicU64::new(0),
            at_rest: at_rest.clone(),
        })
    }

    /// The damage this outbox found and went past at start, if any.
    pub fn recovered(&self) -> Option<&Recovery> {
        self.recovered.as_ref()
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
        let at_rest = &self.at_rest;
        let _one = self.appending.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // The mark first: whatever sled loses later, this seq is never handed out again.
        let next = be(self.meta.get(NEXT_SEQ).map_err(|e| self.storage(e))?.as_deref()).unwrap_or(1);
        write_high_water(&self.seq_file, next)
            .map_err(|e| OutboxError::Storage { path: self.seq_file.clone(), source: sled::Error::Io(e) })?;
        let result = (&self.entries, &self.meta).transaction(|(entries, meta)| {
            let seq = be(meta.get(NEXT_SEQ)?.as_deref()).unwrap_or(1);
            let wire = protocol::seal(key, seq, now_ms(), &body)
                .map_err(|e| ConflictableTransactionError::Abort(e.to_string()))?;
            let stored = at_rest.write(Store::Outbox, &seq.to_be_bytes(), wire);
            entries.insert(&seq.to_be_bytes(), stored.as_slice())?;
            meta.insert(NEXT_SEQ, &(seq + 1).to_be_bytes())?;
            if let Some(cursor) = cursor {
                meta.insert(CURSOR, &cursor.to_be_bytes())?;
            }
            Ok((seq, stored.len() as u64))
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
        let mut bad = Vec::new();
        for item in self.entries.range(start.to_be_bytes()..).take(limit) {
            let (key, value) = item.map_err(|e| self.storage(e))?;
            let seq = be(Some(&key)).unwrap_or(0);
            match self.at_rest.read(Store::Outbox, &key, &value) {
                Ok(wire) => out.push((seq, wire)),
                Err(why) => bad.push((key, value.len() as u64, seq, why)),
            }
        }
        for (key, size, seq, why) in bad {
            if matches!(why, Unreadable::NoKeys | Unreadable::UnknownKey(_)) {
                // Sealed under keys this agent does not have now: kept (the right key brings
                // them back), not sent.
                continue;
            }
            // Damaged: never sent, and never left to block the queue: removed, counted, logged.
            if self.entries.remove(&key).map_err(|e| self.storage(e))?.is_some() {
                self.messages.fetch_sub(1, Ordering::Relaxed);
                self.bytes.fetch_sub(size, Ordering::Relaxed);
                self.unreadable.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    seq,
                    outbox = %self.path.display(),
                    error = %why,
                    "outbox entry does not read: removed, never sent (counted in outpost_agent_unreadable_records_total)"
                );
            }
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
            .and_then(|(key, stored)| self.at_rest.read(Store::Outbox, &key, &stored).ok())
            .and_then(|wire| protocol::decode(&wire).ok())
            .map_or(0, |e| now_ms().saturating_sub(e.sent_at_ms));
        OutboxStats {
            messages: self.messages.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            oldest_age_ms,
        }
    }

    /// Entries removed since start because they did not read (failed authentication).
    pub fn unreadable(&self) -> u64 {
        self.unreadable.load(Ordering::Relaxed)
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

/// The checksum beside a mark: damage to the file reads as no mark, never as another number.
fn mark_check(seq: u64) -> String {
    outpost_shared::bundle::sha256_hex(format!("outpost outbox seq {seq}").as_bytes())[..16].to_owned()
}

fn write_high_water(file: &Path, seq: u64) -> std::io::Result<()> {
    outpost_shared::files::write_atomic(file, format!("{seq} {}\n", mark_check(seq)).as_bytes())
}

/// The mark in `outbox.seq`, when it reads and its checksum holds.
fn read_high_water(file: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(file).ok()?;
    let (seq, check) = text.trim().split_once(' ')?;
    let seq: u64 = seq.parse().ok()?;
    (check == mark_check(seq)).then_some(seq)
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_shared::protocol::messages::{Event, EventKind};

    fn event(n: usize) -> AgentMessage {
        AgentMessage::Event(Event { at_ms: 1, kind: EventKind::AgentStarted, message: "x".repeat(n) })
    }

    #[test]
    fn sealed_entries_hide_the_telemetry_and_a_flipped_one_is_removed_never_sent() {
        let dir = tempfile::tempdir().unwrap();
        let (key, _) = SigningKey::generate().unwrap();
        let at_rest = AtRest::sealed(std::sync::Arc::new(crate::at_rest::Sealer::ephemeral().unwrap()));
        let marker = "telemetry-marker-31415";
        {
            let outbox = Outbox::open(dir.path(), 1 << 20, &at_rest).unwrap();
            for _ in 0..5 {
                let message = AgentMessage::Event(Event {
                    at_ms: 1,
                    kind: EventKind::AgentStarted,
                    message: marker.into(),
                });
                outbox.append(&key, &message, None).unwrap();
            }
            // What goes to the coordinator is the signed envelope, in the clear.
            let sent = outbox.pending_after(None, 10).unwrap();
            assert_eq!(sent.len(), 5);
            assert!(protocol::open(&sent[0].1, |_| Some(key.public_key())).is_ok());
            outbox.flush().unwrap();
        }
        let mut on_disk = Vec::new();
        for entry in std::fs::read_dir(dir.path().join("outbox")).unwrap().filter_map(Result::ok) {
            if entry.path().is_file() {
                on_disk.extend(std::fs::read(entry.path()).unwrap());
            }
        }
        assert!(
            !on_disk.windows(marker.len()).any(|w| w == marker.as_bytes()),
            "telemetry in the clear on disk"
        );
        {
            let db = sled::open(dir.path().join("outbox")).unwrap();
            let entries = db.open_tree("entries").unwrap();
            let mut value = entries.get(3u64.to_be_bytes()).unwrap().unwrap().to_vec();
            value[20] ^= 0x08;
            entries.insert(3u64.to_be_bytes(), value).unwrap();
            db.flush().unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        let outbox = Outbox::open(dir.path(), 1 << 20, &at_rest).unwrap();
        let seqs: Vec<u64> = outbox.pending_after(None, 10).unwrap().into_iter().map(|(s, _)| s).collect();
        assert_eq!(seqs, vec![1, 2, 4, 5]);
        assert_eq!((outbox.unreadable(), outbox.stats().messages), (1, 4));
        // Without the keys nothing is sent and nothing is removed: the right key brings it back.
        drop(outbox);
        std::thread::sleep(std::time::Duration::from_millis(200));
        let clear = Outbox::open(dir.path(), 1 << 20, &AtRest::clear()).unwrap();
        assert!(clear.pending_after(None, 10).unwrap().is_empty());
        assert_eq!((clear.unreadable(), clear.stats().messages), (0, 4));
    }

    #[test]
    fn seqs_survive_reopen_and_acks_free_exactly_what_they_cover() {
        let dir = tempfile::tempdir().unwrap();
        let (key, _) = SigningKey::generate().unwrap();
        {
            let outbox = Outbox::open(dir.path(), 1 << 20, &AtRest::clear()).unwrap();
            assert_eq!(outbox.append(&key, &event(10), None).unwrap(), 1);
            assert_eq!(outbox.append(&key, &event(10), Some(42)).unwrap(), 2);
        }
        let outbox = Outbox::open(dir.path(), 1 << 20, &AtRest::clear()).unwrap();
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
        let outbox = Outbox::open(dir.path(), 2_000, &AtRest::clear()).unwrap();
        for _ in 0..10 {
            outbox.append(&key, &event(400), None).unwrap();
        }
        let stats = outbox.stats();
        assert!(stats.bytes <= 2_000, "{stats:?}");
        assert_eq!(stats.messages + outbox.dropped(), 10);
        let first = outbox.pending_after(None, 1).unwrap()[0].0;
        assert_eq!(first, 10 - stats.messages + 1, "the oldest go first");
    }

    /// A healthy outbox in `dir` that handed out `n` seqs (closed again); returns the last.
    fn filled(dir: &Path, key: &SigningKey, n: usize) -> u64 {
        let outbox = Outbox::open(dir, 1 << 20, &AtRest::clear()).unwrap();
        assert!(outbox.recovered().is_none());
        (0..n).map(|_| outbox.append(key, &event(50), Some(3)).unwrap()).last().unwrap_or(0)
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
    fn a_damaged_outbox_is_quarantined_and_seqs_continue_above_the_mark() {
        let dir = tempfile::tempdir().unwrap();
        let (key, _) = SigningKey::generate().unwrap();
        filled(dir.path(), &key, 3);
        assert_eq!(read_high_water(&dir.path().join(SEQ_FILE)), Some(3));
        ruin(&dir.path().join("outbox"));
        let outbox = Outbox::open(dir.path(), 1 << 20, &AtRest::clear()).unwrap();
        let r = outbox.recovered().expect("the damage was noticed").clone();
        assert_eq!(r.next_seq, 4, "above every seq the damaged outbox handed out");
        let moved_to = r.moved_to.expect("moved aside");
        assert!(moved_to.starts_with(dir.path().join("quarantine")) && moved_to.exists(), "{moved_to:?}");
        assert!(r.what.contains("seqs below 4"), "{}", r.what);
        assert_eq!(outbox.stats().messages, 0, "what was in it is gone, and said so");
        assert_eq!(outbox.prediction_cursor().unwrap(), None);
        assert_eq!(outbox.append(&key, &event(10), None).unwrap(), 4);
        drop(outbox);
        // Healthy again: nothing to recover, no gap.
        let outbox = Outbox::open(dir.path(), 1 << 20, &AtRest::clear()).unwrap();
        assert!(outbox.recovered().is_none());
        assert_eq!(outbox.append(&key, &event(10), None).unwrap(), 5);
    }

    #[test]
    fn an_outbox_recovered_short_goes_on_above_the_mark() {
        let dir = tempfile::tempdir().unwrap();
        let (key, _) = SigningKey::generate().unwrap();
        filled(dir.path(), &key, 3);
        // As if sled had lost seqs 4–10 after handing them out (damage cut its log short).
        write_high_water(&dir.path().join(SEQ_FILE), 10).unwrap();
        let outbox = Outbox::open(dir.path(), 1 << 20, &AtRest::clear()).unwrap();
        let r = outbox.recovered().expect("noticed").clone();
        assert_eq!((r.next_seq, r.moved_to), (11, None));
        assert!(r.what.contains("telemetry 4–10"), "{}", r.what);
        assert_eq!(outbox.stats().messages, 3, "what it still holds stays");
        assert_eq!(outbox.append(&key, &event(10), None).unwrap(), 11);
    }

    #[test]
    fn without_a_readable_mark_a_replacement_starts_at_the_clock() {
        let dir = tempfile::tempdir().unwrap();
        let (key, _) = SigningKey::generate().unwrap();
        filled(dir.path(), &key, 1);
        // A flipped digit: the checksum no longer holds, so it is no mark at all.
        let text = std::fs::read_to_string(dir.path().join(SEQ_FILE)).unwrap();
        std::fs::write(dir.path().join(SEQ_FILE), text.replacen('1', "7", 1)).unwrap();
        assert_eq!(read_high_water(&dir.path().join(SEQ_FILE)), None);
        ruin(&dir.path().join("outbox"));
        let before = now_ms();
        let outbox = Outbox::open(dir.path(), 1 << 20, &AtRest::clear()).unwrap();
        let next = outbox.recovered().expect("quarantined").next_seq;
        assert!(next >= before, "{next} < {before}");
        assert_eq!(outbox.append(&key, &event(10), None).unwrap(), next);
        assert_eq!(read_high_water(&dir.path().join(SEQ_FILE)), Some(next), "written again");
    }

    #[test]
    fn a_locked_outbox_is_an_error_not_damage() {
        let dir = tempfile::tempdir().unwrap();
        let _held = Outbox::open(dir.path(), 1 << 20, &AtRest::clear()).unwrap();
        assert!(matches!(Outbox::open(dir.path(), 1 << 20, &AtRest::clear()), Err(OutboxError::Locked(_))));
        assert!(!dir.path().join("quarantine").exists(), "nothing moved aside");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 32, ..Default::default() })]

        /// Bytes flipped anywhere in the outbox's files: it opens (damaged or not), and every
        /// new seq is above every seq handed out before — never a replay at the coordinator.
        #[test]
        fn flipped_bytes_anywhere_never_stop_the_outbox_nor_reuse_a_seq(
            flips in proptest::collection::vec((0usize..4, 0.0f64..1.0, 1u8..=255), 1..40)
        ) {
            let dir = tempfile::tempdir().unwrap();
            let (key, _) = SigningKey::generate().unwrap();
            let used = filled(dir.path(), &key, 20);
            let mut files: Vec<PathBuf> = std::fs::read_dir(dir.path().join("outbox"))
                .unwrap()
                .filter_map(|e| Some(e.ok()?.path()).filter(|p| p.is_file()))
                .collect();
            files.sort();
            for (file, at, mask) in flips {
                let path = &files[file % files.len()];
                let mut bytes = std::fs::read(path).unwrap();
                if bytes.is_empty() {
                    continue;
                }
                let i = ((bytes.len() - 1) as f64 * at) as usize;
                bytes[i] ^= mask;
                std::fs::write(path, bytes).unwrap();
            }
            let outbox = Outbox::open(dir.path(), 1 << 20, &AtRest::clear()).unwrap();
            let next = outbox.append(&key, &event(50), None).unwrap();
            proptest::prop_assert!(next > used, "seq {next} after {used}");
        }
    }
}
