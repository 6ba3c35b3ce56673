//! The durable outbox: signed envelopes waiting for the coordinator's end-to-end ack.
//!
//! # On-disk layout (`<data_dir>/outbox/`)
//! - `<seq, 20 digits>.env`, one file per envelope: `[FORMAT] ‖ cursor u64 LE ‖ crc32 u32 LE ‖
//!   stored bytes`, where the stored bytes are the sealed envelope's wire bytes (encrypted at
//!   their seq when encryption at rest is on, [`crate::at_rest`]) and `cursor` is the
//!   prediction cursor that moved with it (0: none). Written to a temporary name, synced and
//!   renamed, so a file is whole or absent. An envelope is sealed once, when it is appended,
//!   so every retransmission is byte-identical and the coordinator's dedupe by (device, seq)
//!   recognises it; an entry that fails authentication is removed when met, counted and
//!   logged, never sent.
//! - `meta`: `next_seq` and `prediction_cursor` (the next prediction-log id to batch) with a
//!   checksum, replaced atomically when the cursor moves alone and when entries leave.
//! - `lock`: held (`flock`) while an outbox is open, so a second process is refused.
//!
//! # Urgent entries
//! The agent's actual state is appended with [`Outbox::append_urgent`]: the link sends it
//! ahead of the backlog ([`Outbox::urgent`]), so a device that is hours of telemetry behind
//! still tells the coordinator at once that it runs a new version (a rollout waits on that).
//! The mark lives in memory only: after a restart every entry is sent oldest first, and the
//! agent appends its current state again with its first report. The coordinator keeps the
//! state with the highest seq, so a state that arrives late never replaces a newer one.
//!
//! # Memory
//! An entry's seq and size (a map, ≈ 50 bytes an entry) and nothing else: envelopes are read
//! from their files when they are sent. The backlog an unenrolled or partitioned device
//! builds up (up to `telemetry.outbox_max_bytes`) stays on disk, not in memory. (The sled
//! database this replaced held memory in proportion to its size: 425 MB of RSS for a full
//! outbox, measured in docs/performance.md.)
//!
//! # Invariants
//! - Seqs strictly increase across restarts: `next_seq` is the highest of the meta file's,
//!   one past the newest entry, and one past the high-water mark (below).
//! - A prediction batch and the cursor that says which records it covers move together: the
//!   cursor is in the batch's own file, so after a crash a record is batched exactly once.
//! - Entries leave only when an ack covering them is applied ([`Outbox::apply_ack`]), or when
//!   the byte bound forces the oldest out (counted in `dropped`, never silent).
//! - Damage never stops the agent and never repeats a seq. Every append first writes its seq
//!   to `<data_dir>/outbox.seq` (atomically, synced, with a checksum): the high-water mark of
//!   what the outbox ever handed out. An outbox with a file that does not read (a checksum
//!   that fails, a name that is not a seq) is moved to `<data_dir>/quarantine/` and a fresh one
//!   starts above that mark; one that holds fewer seqs than the mark says were handed out
//!   (the last append cut short) goes on above the mark too. Either way the coordinator
//!   stores what follows as new, never as replays of what was lost, and the loss is reported
//!   ([`Outbox::recovered`]). Without a readable mark, a replacement starts at the current unix
//!   time in milliseconds, above any count of messages a device sends.
//! - An outbox written by an earlier version (a sled database) is rewritten into this layout
//!   at the first open ([`migrate`]).

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use outpost_shared::protocol::messages::{self, Ack, AgentMessage, OutboxStats};
use outpost_shared::protocol::{self, SigningKey};

use crate::at_rest::{AtRest, Store, Unreadable};

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox storage error in {path}: {source}")]
    Storage { path: PathBuf, source: std::io::Error },
    #[error("cannot seal an outbox message: {0}")]
    Seal(String),
    #[error("the outbox in {0} is in use by another process (stop the agent before exporting or importing)")]
    Locked(PathBuf),
}

pub use outpost_shared::endpoints::now_ms;

/// The high-water mark file beside the outbox.
const SEQ_FILE: &str = "outbox.seq";
const META_FILE: &str = "meta";
const LOCK_FILE: &str = "lock";
/// The first byte of every entry file.
const FORMAT: u8 = 1;
/// Format byte, cursor and checksum.
const ENTRY_HEADER: usize = 1 + 8 + 4;

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

/// What changes together: the entries held, the next seq and the cursor.
#[derive(Debug, Default)]
struct State {
    /// seq → bytes stored (the envelope as kept on disk).
    entries: BTreeMap<u64, u64>,
    next_seq: u64,
    cursor: Option<u64>,
    /// Entries to send ahead of the backlog (see the module docs); always a subset of `entries`.
    urgent: std::collections::BTreeSet<u64>,
}

impl State {
    /// Removes an entry from the index; returns its size if it was there.
    fn forget(&mut self, seq: u64) -> Option<u64> {
        self.urgent.remove(&seq);
        self.entries.remove(&seq)
    }
}

pub struct Outbox {
    dir: PathBuf,
    /// `<data_dir>/outbox.seq`: the high-water mark.
    seq_file: PathBuf,
    /// Held open with an exclusive `flock` while this outbox is open.
    _lock: File,
    /// Set when the outbox found at start was damaged.
    recovered: Option<Recovery>,
    state: Mutex<State>,
    max_bytes: u64,
    bytes: AtomicU64,
    dropped: AtomicU64,
    /// Entries removed because they did not read (failed authentication).
    unreadable: AtomicU64,
    /// The oldest entry's seq and when it was sealed (read from its file once, not at every
    /// report or scrape).
    oldest_sent: Mutex<Option<(u64, u64)>>,
    at_rest: AtRest,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox").field("dir", &self.dir).finish_non_exhaustive()
    }
}

/// What a scan of the outbox's directory found.
struct Scanned {
    entries: BTreeMap<u64, u64>,
    /// The meta file's `(next_seq, cursor)`, when it reads.
    meta: Option<(u64, Option<u64>)>,
    /// The highest cursor carried by an entry.
    entry_cursor: Option<u64>,
    /// Why the outbox is damaged, if it is.
    damage: Option<String>,
}

impl Outbox {
    /// Opens (or creates) the outbox. `max_bytes` bounds the envelope bytes kept. A damaged
    /// outbox is quarantined and replaced, and one recovered short goes on above the mark (see
    /// [`Outbox::recovered`]); only a lock held by another process or a disk that cannot be
    /// used is an error.
    pub fn open(data_dir: &Path, max_bytes: u64, at_rest: &AtRest) -> Result<Outbox, OutboxError> {
        let dir = data_dir.join("outbox");
        let seq_file = data_dir.join(SEQ_FILE);
        let storage = |source| OutboxError::Storage { path: dir.clone(), source };
        migrate::finish_interrupted(data_dir)?;
        if migrate::is_sled(&dir) {
            migrate::from_sled(data_dir, &dir)?;
        }
        std::fs::create_dir_all(&dir).map_err(storage)?;
        let mut lock = take_lock(&dir)?;
        let mark = read_high_water(&seq_file);
        let mut scanned = scan(&dir).map_err(storage)?;
        let mut recovered = None;
        if let Some(why) = scanned.damage.take() {
            drop(lock);
            let moved_to = crate::damage::move_aside(&dir, &data_dir.join("quarantine")).map_err(storage)?;
            let next_seq = match mark {
                Some(high) => high + 1,
                None => now_ms().max(1),
            };
            std::fs::create_dir_all(&dir).map_err(storage)?;
            lock = take_lock(&dir)?;
            write_meta(&dir, next_seq, None).map_err(storage)?;
            scanned = Scanned {
                entries: BTreeMap::new(),
                meta: Some((next_seq, None)),
                entry_cursor: None,
                damage: None,
            };
            let what = format!(
                "the outbox is damaged ({why}): quarantined; telemetry not yet acknowledged (seqs below \
                 {next_seq}) is lost"
            );
            recovered = Some(Recovery { what, moved_to: Some(moved_to), next_seq });
        }
        let (meta_next, meta_cursor) = scanned.meta.unwrap_or((1, None));
        let newest = scanned.entries.keys().next_back().map_or(0, |seq| seq + 1);
        let mut next_seq = meta_next.max(newest).max(1);
        let cursor = match (meta_cursor, scanned.entry_cursor) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        if recovered.is_none()
            && let Some(high) = mark
            && high >= next_seq
        {
            let stored = next_seq;
            next_seq = high + 1;
            write_meta(&dir, next_seq, cursor).map_err(storage)?;
            recovered = Some(Recovery {
                what: format!(
                    "the outbox recovered short: seqs up to {high} were handed out, its files go on \
                     from {stored}; telemetry {stored}–{high} not yet acknowledged is lost"
                ),
                moved_to: None,
                next_seq,
            });
        }
        if scanned.meta.is_none() && recovered.is_none() {
            // A new outbox (or one whose meta file went missing): the figures on disk.
            write_meta(&dir, next_seq, cursor).map_err(storage)?;
        }
        if let Some(r) = &recovered {
            tracing::error!(
                outbox = %dir.display(),
                moved_to = ?r.moved_to,
                next_seq = r.next_seq,
                "{}; serving goes on",
                r.what
            );
        }
        let bytes = scanned.entries.values().sum();
        Ok(Outbox {
            dir,
            seq_file,
            _lock: lock,
            recovered,
            state: Mutex::new(State {
                entries: scanned.entries,
                next_seq,
                cursor,
                urgent: Default::default(),
            }),
            max_bytes,
            bytes: AtomicU64::new(bytes),
            dropped: AtomicU64::new(0),
            unreadable: AtomicU64::new(0),
            oldest_sent: Mutex::new(None),
            at_rest: at_rest.clone(),
        })
    }

    /// The damage this outbox found and went past at start, if any.
    pub fn recovered(&self) -> Option<&Recovery> {
        self.recovered.as_ref()
    }

    fn storage(&self, source: std::io::Error) -> OutboxError {
        OutboxError::Storage { path: self.dir.clone(), source }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Seals `message` with the next seq and stores it durably; with `cursor`, also moves the
    /// prediction cursor with it (in the same file). Returns the seq.
    pub fn append(
        &self,
        key: &SigningKey,
        message: &AgentMessage,
        cursor: Option<u64>,
    ) -> Result<u64, OutboxError> {
        self.append_as(key, message, cursor, false)
    }

    /// Like [`Outbox::append`], and marks the entry to be sent ahead of the backlog (see the
    /// module docs).
    pub fn append_urgent(&self, key: &SigningKey, message: &AgentMessage) -> Result<u64, OutboxError> {
        self.append_as(key, message, None, true)
    }

    fn append_as(
        &self,
        key: &SigningKey,
        message: &AgentMessage,
        cursor: Option<u64>,
        urgent: bool,
    ) -> Result<u64, OutboxError> {
        let body = messages::encode(message);
        let mut state = self.state();
        let seq = state.next_seq;
        // The mark first: whatever happens to the entry, this seq is never handed out again.
        write_high_water(&self.seq_file, seq)
            .map_err(|source| OutboxError::Storage { path: self.seq_file.clone(), source })?;
        let wire = protocol::seal(key, seq, now_ms(), &body).map_err(|e| OutboxError::Seal(e.to_string()))?;
        let stored = self.at_rest.write(Store::Outbox, &seq.to_be_bytes(), wire);
        outpost_shared::files::write_atomic(&entry_path(&self.dir, seq), &entry_bytes(cursor, &stored))
            .map_err(|e| self.storage(e))?;
        state.next_seq = seq + 1;
        if cursor.is_some() {
            state.cursor = cursor;
        }
        state.entries.insert(seq, stored.len() as u64);
        if urgent {
            state.urgent.insert(seq);
        }
        self.bytes.fetch_add(stored.len() as u64, Ordering::Relaxed);
        self.enforce_bound(&mut state)?;
        Ok(seq)
    }

    /// Drops the oldest entries while over the byte bound (never the newest one).
    fn enforce_bound(&self, state: &mut State) -> Result<(), OutboxError> {
        let mut dropped_any = false;
        while self.bytes.load(Ordering::Relaxed) > self.max_bytes && state.entries.len() > 1 {
            let Some(&seq) = state.entries.keys().next() else { break };
            let size = state.forget(seq).unwrap_or_default();
            remove_entry(&self.dir, seq).map_err(|e| self.storage(e))?;
            self.bytes.fetch_sub(size, Ordering::Relaxed);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            dropped_any = true;
            tracing::warn!(
                seq,
                max_bytes = self.max_bytes,
                "outbox full: dropped the oldest unacknowledged message"
            );
        }
        if dropped_any {
            self.entries_left(state)?;
        }
        Ok(())
    }

    /// After entries leave: the cursor they carried stays in the meta file.
    fn entries_left(&self, state: &State) -> Result<(), OutboxError> {
        sync_dir(&self.dir).map_err(|e| self.storage(e))?;
        write_meta(&self.dir, state.next_seq, state.cursor).map_err(|e| self.storage(e))
    }

    /// The next prediction-log id to batch (`None` when nothing was batched yet).
    pub fn prediction_cursor(&self) -> Result<Option<u64>, OutboxError> {
        Ok(self.state().cursor)
    }

    /// Moves the prediction cursor without a message (when nothing was sampled).
    pub fn set_cursor(&self, cursor: u64) -> Result<(), OutboxError> {
        let mut state = self.state();
        state.cursor = Some(cursor);
        write_meta(&self.dir, state.next_seq, state.cursor).map_err(|e| self.storage(e))
    }

    /// Up to `limit` entries with seq > `after`, in seq order.
    pub fn pending_after(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, OutboxError> {
        let start = after.map_or(0, |s| s.saturating_add(1));
        let seqs: Vec<u64> = self.state().entries.range(start..).take(limit).map(|(seq, _)| *seq).collect();
        self.read_seqs(seqs)
    }

    /// The seqs of the urgent entries still waiting for an ack, oldest first.
    pub fn urgent(&self) -> Vec<u64> {
        self.state().urgent.iter().copied().collect()
    }

    /// The wire bytes of these entries, in the order given; an entry acked since is skipped,
    /// and one that does not read is removed (counted, logged) and skipped.
    pub fn read_seqs(&self, seqs: Vec<u64>) -> Result<Vec<(u64, Vec<u8>)>, OutboxError> {
        let mut out = Vec::with_capacity(seqs.len());
        let mut bad = Vec::new();
        for seq in seqs {
            let stored = match read_entry(&self.dir, seq) {
                Ok(Some((_, stored))) => stored,
                // Acked (or dropped) since the seqs were listed.
                Ok(None) if !self.state().entries.contains_key(&seq) => continue,
                Ok(None) => {
                    bad.push((seq, "its file is gone or its checksum fails".to_owned()));
                    continue;
                }
                Err(e) => return Err(self.storage(e)),
            };
            match self.at_rest.read(Store::Outbox, &seq.to_be_bytes(), &stored) {
                Ok(wire) => out.push((seq, wire)),
                // Sealed under keys this agent does not have now: kept (the right key brings
                // them back), not sent.
                Err(Unreadable::NoKeys | Unreadable::UnknownKey(_)) => {}
                Err(why) => bad.push((seq, why.to_string())),
            }
        }
        if !bad.is_empty() {
            let mut state = self.state();
            for (seq, why) in bad {
                // Damaged: never sent, and never left to block the queue: removed, counted, logged.
                if let Some(size) = state.forget(seq) {
                    remove_entry(&self.dir, seq).map_err(|e| self.storage(e))?;
                    self.bytes.fetch_sub(size, Ordering::Relaxed);
                    self.unreadable.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(
                        seq,
                        outbox = %self.dir.display(),
                        error = %why,
                        "outbox entry does not read: removed, never sent (counted in outpost_agent_unreadable_records_total)"
                    );
                }
            }
            self.entries_left(&state)?;
        }
        Ok(out)
    }

    /// The seq of the oldest envelope still waiting for an ack.
    pub fn oldest(&self) -> Result<Option<u64>, OutboxError> {
        Ok(self.state().entries.keys().next().copied())
    }

    /// How many entries have seq ≤ `last`, counting at most `cap`.
    pub fn count_through(&self, last: u64, cap: usize) -> usize {
        self.state().entries.range(..=last).take(cap).count()
    }

    /// Deletes every entry the ack covers; returns how many were deleted.
    pub fn apply_ack(&self, ack: &Ack) -> Result<u64, OutboxError> {
        let mut state = self.state();
        let mut removed = Vec::new();
        for &(first, last) in &ack.ranges {
            if first > last {
                continue;
            }
            removed.extend(state.entries.range(first..=last).map(|(seq, size)| (*seq, *size)));
        }
        if removed.is_empty() {
            return Ok(0);
        }
        for &(seq, size) in &removed {
            state.forget(seq);
            remove_entry(&self.dir, seq).map_err(|e| self.storage(e))?;
            self.bytes.fetch_sub(size, Ordering::Relaxed);
        }
        self.entries_left(&state)?;
        Ok(removed.len() as u64)
    }

    /// Backlog figures for reports and metrics.
    pub fn stats(&self) -> OutboxStats {
        let (oldest, messages) = {
            let state = self.state();
            (state.entries.keys().next().copied(), state.entries.len() as u64)
        };
        let sent_at = oldest.and_then(|seq| {
            let mut cached = self.oldest_sent.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some((at_seq, sent_at)) = *cached
                && at_seq == seq
            {
                return Some(sent_at);
            }
            let (_, stored) = read_entry(&self.dir, seq).ok().flatten()?;
            let wire = self.at_rest.read(Store::Outbox, &seq.to_be_bytes(), &stored).ok()?;
            let sent_at = protocol::decode(&wire).ok()?.sent_at_ms;
            *cached = Some((seq, sent_at));
            Some(sent_at)
        });
        let oldest_age_ms = sent_at.map_or(0, |at| now_ms().saturating_sub(at));
        OutboxStats { messages, bytes: self.bytes.load(Ordering::Relaxed), oldest_age_ms }
    }

    /// Entries removed since start because they did not read (failed authentication).
    pub fn unreadable(&self) -> u64 {
        self.unreadable.load(Ordering::Relaxed)
    }

    /// Messages dropped by the byte bound since start.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Disk used by the outbox's files (the envelopes and their 13-byte headers).
    pub fn disk_bytes(&self) -> u64 {
        let state = self.state();
        self.bytes.load(Ordering::Relaxed) + state.entries.len() as u64 * ENTRY_HEADER as u64
    }

    /// Everything appended is on disk already (each append syncs); kept for callers that
    /// flush before they stop.
    pub fn flush(&self) -> Result<(), OutboxError> {
        Ok(())
    }
}

/// Takes the outbox's lock, or says another process holds it.
fn take_lock(dir: &Path) -> Result<File, OutboxError> {
    let path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| OutboxError::Storage { path: path.clone(), source })?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(file),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(OutboxError::Locked(dir.to_owned())),
        Err(e) => Err(OutboxError::Storage { path, source: e.into() }),
    }
}

fn entry_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.env"))
}

fn entry_bytes(cursor: Option<u64>, stored: &[u8]) -> Vec<u8> {
    let cursor = cursor.unwrap_or(0);
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&cursor.to_le_bytes());
    hasher.update(stored);
    let mut out = Vec::with_capacity(ENTRY_HEADER + stored.len());
    out.push(FORMAT);
    out.extend_from_slice(&cursor.to_le_bytes());
    out.extend_from_slice(&hasher.finalize().to_le_bytes());
    out.extend_from_slice(stored);
    out
}

/// An entry file's `(cursor, stored bytes)`, or `None` when it does not check out.
fn parse_entry(bytes: &[u8]) -> Option<(Option<u64>, Vec<u8>)> {
    if bytes.len() < ENTRY_HEADER || bytes[0] != FORMAT {
        return None;
    }
    let cursor = u64::from_le_bytes(bytes[1..9].try_into().ok()?);
    let crc = u32::from_le_bytes(bytes[9..13].try_into().ok()?);
    let stored = &bytes[ENTRY_HEADER..];
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&cursor.to_le_bytes());
    hasher.update(stored);
    (hasher.finalize() == crc).then(|| ((cursor != 0).then_some(cursor), stored.to_vec()))
}

/// Entry `seq`: `Ok(None)` when its file is gone or does not check out.
fn read_entry(dir: &Path, seq: u64) -> std::io::Result<Option<(Option<u64>, Vec<u8>)>> {
    match std::fs::read(entry_path(dir, seq)) {
        Ok(bytes) => Ok(parse_entry(&bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn remove_entry(dir: &Path, seq: u64) -> std::io::Result<()> {
    match std::fs::remove_file(entry_path(dir, seq)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Reads every entry (checking each) and the meta file; leftovers of an interrupted write
/// are removed.
fn scan(dir: &Path) -> std::io::Result<Scanned> {
    let mut scanned = Scanned { entries: BTreeMap::new(), meta: None, entry_cursor: None, damage: None };
    let mut damaged = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == LOCK_FILE {
            continue;
        }
        if name.starts_with('.') && name.contains(".tmp-") {
            // A write that never finished: its seq is covered by the mark.
            let _ = std::fs::remove_file(entry.path());
            continue;
        }
        if name == META_FILE {
            match read_meta(&entry.path()) {
                Some(meta) => scanned.meta = Some(meta),
                None => damaged.push(format!("{name} does not read")),
            }
            continue;
        }
        let Some(seq) = name.strip_suffix(".env").and_then(|s| s.parse::<u64>().ok()) else {
            damaged.push(format!("{name} is not an outbox file"));
            continue;
        };
        match parse_entry(&std::fs::read(entry.path())?) {
            Some((cursor, stored)) => {
                scanned.entries.insert(seq, stored.len() as u64);
                if let Some(cursor) = cursor {
                    scanned.entry_cursor = Some(scanned.entry_cursor.map_or(cursor, |c| c.max(cursor)));
                }
            }
            None => damaged.push(format!("entry {seq}'s checksum fails")),
        }
    }
    if !damaged.is_empty() {
        damaged.sort();
        let more = damaged.len().saturating_sub(3);
        damaged.truncate(3);
        let mut why = format!("{}: {}", dir.display(), damaged.join(", "));
        if more > 0 {
            why.push_str(&format!(" and {more} more"));
        }
        scanned.damage = Some(why);
    }
    Ok(scanned)
}

/// The checksum beside a number: damage to the file reads as no number, never as another.
fn check(what: &str, value: &str) -> String {
    outpost_shared::bundle::sha256_hex(format!("outpost outbox {what} {value}").as_bytes())[..16].to_owned()
}

fn write_meta(dir: &Path, next_seq: u64, cursor: Option<u64>) -> std::io::Result<()> {
    let value = format!("{next_seq} {}", cursor.map_or("-".to_owned(), |c| c.to_string()));
    outpost_shared::files::write_atomic(
        &dir.join(META_FILE),
        format!("{value} {}\n", check("meta", &value)).as_bytes(),
    )
}

/// The meta file's `(next_seq, cursor)`, when it reads and its checksum holds.
fn read_meta(path: &Path) -> Option<(u64, Option<u64>)> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut parts = text.split_whitespace();
    let (next, cursor, sum) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || sum != check("meta", &format!("{next} {cursor}")) {
        return None;
    }
    let cursor = if cursor == "-" { None } else { Some(cursor.parse().ok()?) };
    Some((next.parse().ok()?, cursor))
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

mod migrate;

#[cfg(test)]
mod tests;
