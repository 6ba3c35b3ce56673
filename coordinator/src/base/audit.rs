//! The audit log: every mutation through the API — who, what, on what, when, and how it
//! ended — as an append-only, hash-chained JSON-lines file (`<data_dir>/audit.log`).
//!
//! Each entry carries the hash of the entry before it and its own hash: sha256 over the
//! previous hash and the entry's canonical JSON without its `hash` field. The newest sequence
//! number and hash are also kept in the state database (tree `meta`, key `audit_head`), so
//! [`verify`] detects an edited entry (its hash no longer matches), a removed one (the chain
//! or the numbering breaks) and a truncated tail (the file ends before the recorded head).
//! Entries are fsynced before the API answers; one writer thread fsyncs whatever is waiting at
//! once (group commit), so concurrent requests share an fsync and none holds the executor.
//!
//! On PostgreSQL ([`pg`](self::pg), migration 9) the log is table `outpost_audit` (one row per
//! entry, the JSON it was hashed from) and its head a row of `outpost_audit_head`. Every replica
//! appends to the one chain: a group is chained from the head row, which its transaction locks,
//! so replicas take turns and the numbering has no gaps; an entry is durable when that
//! transaction commits. [`verify`] checks the rows exactly as it checks the file.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::base::pg::store::PgStore;
use crate::base::store::{Store, StoreError, now_ms};

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// The key of the chain's head in tree `meta` (a backup cuts the log there).
pub(crate) const HEAD_KEY: &[u8] = b"audit_head";

/// One audited action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditEntry {
    pub seq: u64,
    pub at_ms: u64,
    /// Token name (or `device:<id>`).
    pub actor: String,
    pub role: String,
    /// e.g. `model.push`, `deploy`, `token.create`.
    pub action: String,
    /// e.g. `bc@1.1.0`.
    pub target: String,
    /// `ok`, `refused` or `failed`.
    pub outcome: String,
    pub detail: String,
    pub prev: String,
    pub hash: String,
}

impl AuditEntry {
    fn compute_hash(&self) -> Result<String, StoreError> {
        let mut unsigned = self.clone();
        unsigned.hash = String::new();
        let body = crate::base::store::encode(&format!("audit entry {}", self.seq), &unsigned)?;
        let mut input = self.prev.as_bytes().to_vec();
        input.extend_from_slice(&body);
        Ok(outpost_shared::bundle::sha256_hex(&input))
    }
}

/// Why the audit log does not verify, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Broken {
    #[error("cannot read the audit log: {0}")]
    Unreadable(String),
    #[error("line {line} is not an audit entry: {detail}")]
    NotAnEntry { line: u64, detail: String },
    #[error("entry {expected} is missing (line {line} holds seq {found})")]
    Missing { expected: u64, line: usize, found: u64 },
    #[error("entry {seq} does not follow entry {previous}: the chain is broken", previous = seq - 1)]
    ChainBroken { seq: u64 },
    #[error("entry {0} was edited: its hash does not match its content")]
    Edited(u64),
    #[error("the state database records no audit head, but the log has entries")]
    NoHead,
    #[error("the log ends at entry {count} but entry {head} was written: entries were removed")]
    Removed { count: u64, head: u64 },
    #[error("the log has {count} entries but only {head} were written: entries were added")]
    Added { count: u64, head: u64 },
    #[error("entry {0} is not the one recorded as the newest")]
    NotNewest(u64),
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("audit log storage: {0}")]
    Storage(String),
}

struct Head {
    seq: u64,
    hash: String,
}

/// What a caller asks to append.
struct Pending {
    actor: String,
    role: String,
    action: String,
    target: String,
    outcome: String,
    detail: String,
}

/// Where the writer sends the outcome.
enum Reply {
    Blocking(std::sync::mpsc::SyncSender<Result<AuditEntry, AuditError>>),
    Async(tokio::sync::oneshot::Sender<Result<AuditEntry, AuditError>>),
}

struct Job {
    pending: Pending,
    reply: Reply,
}

/// Entries one fsync covers at most.
const GROUP: usize = 256;

/// The open log. Appends go to one writer thread, which writes every entry waiting at that moment
/// and makes them durable with one fsync (group commit), then answers each caller: an entry is on
/// disk before [`AuditLog::record`] or [`AuditLog::append`] returns, and no caller's fsync blocks
/// the async executor.
pub struct AuditLog {
    backend: Backend,
    jobs: std::sync::mpsc::Sender<Job>,
}

/// Where the entries are kept.
#[derive(Clone)]
enum Backend {
    /// A JSON-lines file, its head in the state database's tree `meta`.
    File {
        path: PathBuf,
        meta: sled::Tree,
        store: Store,
    },
    Postgres(PgStore),
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").field("at", &self.location()).finish_non_exhaustive()
    }
}

fn read_head(meta: &sled::Tree) -> Result<Option<(u64, String)>, AuditError> {
    let raw = meta.get(HEAD_KEY).map_err(|e| AuditError::Storage(e.to_string()))?;
    Ok(raw.and_then(|v| parse_head(&v)))
}

fn parse_head(raw: &[u8]) -> Option<(u64, String)> {
    let text = std::str::from_utf8(raw).ok()?;
    let (seq, hash) = text.split_once(' ')?;
    Some((seq.parse().ok()?, hash.to_owned()))
}

/// The entry count a stored head value records (0 if it is unreadable: the restore's chain
/// check then says what is wrong).
pub(crate) fn head_seq_of(raw: &[u8]) -> u64 {
    parse_head(raw).map_or(0, |(seq, _)| seq)
}

/// The writer thread's state: where it writes, and (for the file) the chain's head as last made
/// durable. On PostgreSQL the head is read, locked, in each group's transaction instead: another
/// replica may have moved it.
struct Writer {
    backend: Backend,
    head: Head,
}

/// Chains `group` after the entry numbered `seq` whose hash is `prev`, stamped `at_ms`.
fn chain<'a>(
    seq: u64,
    prev: &str,
    at_ms: u64,
    group: impl Iterator<Item = &'a Pending>,
) -> Result<Vec<AuditEntry>, StoreError> {
    let (mut seq, mut prev) = (seq, prev.to_owned());
    let mut entries = Vec::new();
    for p in group {
        seq += 1;
        let mut entry = AuditEntry {
            seq,
            at_ms,
            actor: p.actor.clone(),
            role: p.role.clone(),
            action: p.action.clone(),
            target: p.target.clone(),
            outcome: p.outcome.clone(),
            detail: p.detail.chars().take(2000).collect(),
            prev: prev.clone(),
            hash: String::new(),
        };
        entry.hash = entry.compute_hash()?;
        prev = entry.hash.clone();
        entries.push(entry);
    }
    Ok(entries)
}

impl Writer {
    fn run(mut self, jobs: std::sync::mpsc::Receiver<Job>) {
        while let Ok(first) = jobs.recv() {
            let mut group = vec![first];
            while group.len() < GROUP {
                match jobs.try_recv() {
                    Ok(job) => group.push(job),
                    Err(_) => break,
                }
            }
            let pending: Vec<&Pending> = group.iter().map(|j| &j.pending).collect();
            let written = self.write(&pending);
            for (i, job) in group.into_iter().enumerate() {
                let outcome = match &written {
                    Ok(entries) => Ok(entries[i].clone()),
                    // Each caller gets its own copy of what went wrong.
                    Err(e) => Err(AuditError::Storage(e.to_string())),
                };
                match job.reply {
                    Reply::Blocking(tx) => drop(tx.send(outcome)),
                    Reply::Async(tx) => drop(tx.send(outcome)),
                }
            }
        }
    }

    /// Chains, writes and makes durable a group; the head moves only once it all is.
    fn write(&mut self, group: &[&Pending]) -> Result<Vec<AuditEntry>, AuditError> {
        let (path, meta, store) = match &self.backend {
            Backend::File { path, meta, store } => (path, meta, store),
            Backend::Postgres(store) => return Ok(pg::append(store, group)?),
        };
        let entries = chain(self.head.seq, &self.head.hash, now_ms(), group.iter().copied())?;
        let mut bytes = Vec::new();
        for entry in &entries {
            bytes.extend(crate::base::store::encode(&format!("audit entry {}", entry.seq), entry)?);
            bytes.push(b'\n');
        }
        let Some(last) = entries.last() else { return Ok(entries) };
        let io = |source| AuditError::Io { path: path.clone(), source };
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(io)?;
        file.write_all(&bytes).map_err(io)?;
        file.sync_data().map_err(io)?;
        meta.insert(HEAD_KEY, format!("{} {}", last.seq, last.hash).as_bytes())
            .map_err(|e| AuditError::Storage(e.to_string()))?;
        store.flush()?;
        self.head = Head { seq: last.seq, hash: last.hash.clone() };
        Ok(entries)
    }
}

impl AuditLog {
    /// Opens the log and starts its writer; the chain continues from the head recorded in the
    /// state database.
    pub fn open(data_dir: &Path, store: &Store) -> Result<AuditLog, AuditError> {
        let meta = store.tree("meta")?;
        let (seq, hash) = read_head(&meta)?.unwrap_or((0, GENESIS.to_owned()));
        let path = data_dir.join("audit.log");
        AuditLog::start(Backend::File { path, meta, store: store.clone() }, Head { seq, hash })
    }

    /// The log on PostgreSQL, one chain shared by every replica on `store`.
    pub fn open_postgres(store: &PgStore) -> Result<AuditLog, AuditError> {
        AuditLog::start(Backend::Postgres(store.clone()), Head { seq: 0, hash: GENESIS.to_owned() })
    }

    fn start(backend: Backend, head: Head) -> Result<AuditLog, AuditError> {
        let writer = Writer { backend: backend.clone(), head };
        let (jobs, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|source| AuditError::Io { path: PathBuf::from("audit-writer"), source })?;
        Ok(AuditLog { backend, jobs })
    }

    /// Where the log is, for people: its file, or the (masked) database.
    pub fn location(&self) -> String {
        match &self.backend {
            Backend::File { path, .. } => path.display().to_string(),
            Backend::Postgres(store) => store.masked_url().to_owned(),
        }
    }

    /// The sequence number of the newest durable entry (0 for an empty log, or one that cannot
    /// be read): cheap to poll.
    pub fn head_seq(&self) -> u64 {
        match &self.backend {
            Backend::File { meta, .. } => read_head(meta).ok().flatten().map_or(0, |(seq, _)| seq),
            Backend::Postgres(store) => pg::head(store).map_or(0, |(seq, _)| seq),
        }
    }

    fn job(
        actor: &str,
        role: &str,
        action: &str,
        target: &str,
        outcome: &str,
        detail: &str,
        reply: Reply,
    ) -> Job {
        let pending = Pending {
            actor: actor.to_owned(),
            role: role.to_owned(),
            action: action.to_owned(),
            target: target.to_owned(),
            outcome: outcome.to_owned(),
            detail: detail.to_owned(),
        };
        Job { pending, reply }
    }

    fn stopped() -> AuditError {
        AuditError::Storage("the audit writer has stopped".into())
    }

    /// Appends one entry and returns once it is durable (blocking: for threads that may block).
    pub fn record(
        &self,
        actor: &str,
        role: &str,
        action: &str,
        target: &str,
        outcome: &str,
        detail: &str,
    ) -> Result<AuditEntry, AuditError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let job = Self::job(actor, role, action, target, outcome, detail, Reply::Blocking(tx));
        self.jobs.send(job).map_err(|_| Self::stopped())?;
        rx.recv().map_err(|_| Self::stopped())?
    }

    /// [`AuditLog::append`] for a caller whose action already happened: a failure to audit is
    /// logged loudly and counted in `metrics` (`outpost_audit_failures_total`), not returned.
    #[allow(clippy::too_many_arguments)]
    pub async fn append_or_count(
        &self,
        metrics: &crate::base::metrics::Metrics,
        actor: &str,
        role: &str,
        action: &str,
        target: &str,
        outcome: &str,
        detail: &str,
    ) {
        if let Err(e) = self.append(actor, role, action, target, outcome, detail).await {
            tracing::error!(error = %e, action, target, "CANNOT WRITE THE AUDIT LOG");
            metrics.audit_failures.inc();
        }
    }

    /// [`AuditLog::record`] for async callers: waits without holding an executor thread.
    pub async fn append(
        &self,
        actor: &str,
        role: &str,
        action: &str,
        target: &str,
        outcome: &str,
        detail: &str,
    ) -> Result<AuditEntry, AuditError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job = Self::job(actor, role, action, target, outcome, detail, Reply::Async(tx));
        self.jobs.send(job).map_err(|_| Self::stopped())?;
        rx.await.map_err(|_| Self::stopped())?
    }

    /// The newest `limit` entries, oldest first.
    pub fn tail(&self, limit: usize) -> Result<Vec<AuditEntry>, AuditError> {
        match &self.backend {
            Backend::File { path, .. } => {
                let entries = read_entries(path).map_err(|e| AuditError::Storage(e.to_string()))?;
                let skip = entries.len().saturating_sub(limit);
                Ok(entries.into_iter().skip(skip).collect())
            }
            Backend::Postgres(store) => Ok(pg::tail(store, limit)?),
        }
    }

    /// [`AuditLog::verify`] of the log in `data_dir` without opening it for writing (no writer
    /// thread holds the store afterwards): for a restore's check.
    pub fn verify_stored(data_dir: &Path, store: &Store) -> Result<u64, Broken> {
        let meta = store.tree("meta").map_err(|e| Broken::Unreadable(e.to_string()))?;
        let head = read_head(&meta).map_err(|e| Broken::Unreadable(e.to_string()))?;
        verify(&data_dir.join("audit.log"), head)
    }

    /// The entries of the log in `data_dir` up to its recorded head, each checked against the
    /// one before, with the line it was read from: what a copy of the chain elsewhere takes
    /// (`outpost-coordinator migrate`). Lines past the head — a group a crash wrote but kept from
    /// moving the head — were never acknowledged to anyone, and are left out as a backup leaves
    /// them.
    pub fn entries_to_head(data_dir: &Path, store: &Store) -> Result<Vec<(AuditEntry, String)>, Broken> {
        let meta = store.tree("meta").map_err(|e| Broken::Unreadable(e.to_string()))?;
        let head = read_head(&meta).map_err(|e| Broken::Unreadable(e.to_string()))?;
        let path = data_dir.join("audit.log");
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(Broken::Unreadable(format!("{}: {e}", path.display()))),
        };
        let through = head.as_ref().map_or(0, |(seq, _)| usize::try_from(*seq).unwrap_or(usize::MAX));
        let mut chain = Chain::default();
        let mut out = Vec::new();
        for (i, line) in text.lines().take(through).enumerate() {
            let entry: AuditEntry = serde_json::from_str(line)
                .map_err(|e| Broken::NotAnEntry { line: i as u64 + 1, detail: e.to_string() })?;
            chain.follow(&entry)?;
            out.push((entry, line.to_owned()));
        }
        chain.ends_at(head)?;
        Ok(out)
    }

    /// Checks the whole chain against the recorded head.
    pub fn verify(&self) -> Result<u64, Broken> {
        match &self.backend {
            Backend::File { path, meta, .. } => {
                let head = read_head(meta).map_err(|e| Broken::Unreadable(e.to_string()))?;
                verify(path, head)
            }
            Backend::Postgres(store) => pg::verify(store),
        }
    }
}

fn read_entries(path: &Path) -> Result<Vec<AuditEntry>, Broken> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Broken::Unreadable(format!("{}: {e}", path.display()))),
    };
    let mut entries = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| Broken::Unreadable(format!("line {}: {e}", i + 1)))?;
        let entry: AuditEntry = serde_json::from_str(&line)
            .map_err(|e| Broken::NotAnEntry { line: i as u64 + 1, detail: e.to_string() })?;
        entries.push(entry);
    }
    Ok(entries)
}

/// Verifies a log file against the head (`seq`, `hash`) recorded elsewhere; returns the number
/// of entries, or what is wrong and where.
pub fn verify(path: &Path, head: Option<(u64, String)>) -> Result<u64, Broken> {
    let mut chain = Chain::default();
    for entry in read_entries(path)? {
        chain.follow(&entry)?;
    }
    chain.ends_at(head)
}

/// A chain checked entry by entry, from the first: the numbering, each link and each hash.
struct Chain {
    count: u64,
    prev: String,
}

impl Default for Chain {
    fn default() -> Chain {
        Chain { count: 0, prev: GENESIS.to_owned() }
    }
}

impl Chain {
    /// Checks that `entry` is the next one.
    fn follow(&mut self, entry: &AuditEntry) -> Result<(), Broken> {
        let expected = self.count + 1;
        if entry.seq != expected {
            return Err(Broken::Missing { expected, line: expected as usize, found: entry.seq });
        }
        if entry.prev != self.prev {
            return Err(Broken::ChainBroken { seq: entry.seq });
        }
        if entry.compute_hash().map_err(|e| Broken::Unreadable(e.to_string()))? != entry.hash {
            return Err(Broken::Edited(entry.seq));
        }
        self.count = expected;
        self.prev.clone_from(&entry.hash);
        Ok(())
    }

    /// Checks that the chain ends at the recorded `head`; returns its length.
    fn ends_at(self, head: Option<(u64, String)>) -> Result<u64, Broken> {
        let count = self.count;
        match head {
            None if count == 0 => Ok(0),
            None => Err(Broken::NoHead),
            Some((seq, hash)) => {
                if count < seq {
                    Err(Broken::Removed { count, head: seq })
                } else if count > seq {
                    Err(Broken::Added { count, head: seq })
                } else if self.prev != hash {
                    Err(Broken::NotNewest(seq))
                } else {
                    Ok(count)
                }
            }
        }
    }
}

mod pg;

#[cfg(test)]
mod tests;
