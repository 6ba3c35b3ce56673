//! The prediction log: every served prediction, kept on disk within a byte and an age budget,
//! oldest first out.
//!
//! # On-disk layout
//! `<data_dir>/predictions/seg-<first id, 20 digits>.log` — append-only segment files of
//! checksummed frames, one per record ([`segment`] has the format). A frame's payload is
//! `[RECORD_FORMAT] ‖ postcard(PredictionRecord)` (`outpost_shared::protocol::records`),
//! sealed at its id when encryption at rest is on ([`crate::at_rest`]: the payload is then
//! `[0xE5] …`; a record that fails authentication is skipped, counted and logged, never sent).
//! A log written by an earlier version (one sled database per `seg-<first id>/` directory) is
//! rewritten into segment files at the first open, record for record.
//!
//! # Bounds
//! Only the newest segment takes appends; once its size reaches `max_bytes / segments` a new
//! one starts; whenever the segments together exceed the budget, or the oldest segment's
//! newest record is older than `max_age_secs`, the oldest segment's file is removed (its space
//! is free at once) and its records are counted as evicted. Disk use is the records plus 20
//! bytes each, within the budget plus one write batch. Memory is the write queue
//! (`queue_capacity`), one batch being encoded and ≈ 0.5 bytes of index per record held: the
//! log keeps no cache (reads go through the OS's page cache), so load does not grow it.
//!
//! # Invariants
//! - Ids strictly increase across segments and restarts, and are never handed out twice, even
//!   after a SIGKILL: they are reserved on disk ahead of use ([`ids`]); a restart after an
//!   unclean stop skips the reserved-but-unlogged range and reports it. A record is readable
//!   by id until its segment is evicted.
//! - The newest segment is never evicted, so appends always have a home.
//! - Damage never stops the agent: a frame whose checksum fails (a flipped byte) costs that
//!   record alone — skipped, counted (`…_unreadable_records_total`), answered "unreadable" to
//!   feedback — and a tail cut short by a crash is cut off at open. A segment file that cannot
//!   be read at all is moved to `predictions/quarantine/` and counted.
//! - On the request path appending costs one bounded channel send; one writer thread owns
//!   every write. If the writer falls behind, the send waits (backpressure), it never drops.
//!   A full disk makes the writer evict the oldest segment and retry before it drops anything.
//! - With `durability = "batch"` (the default) records reach the OS at once (a SIGKILL loses
//!   nothing the writer took) and the disk within `flush_interval_ms` (a power cut can lose
//!   the last interval — and the ids of what was lost are reported at the next start). With
//!   `durability = "sync"` a request is answered only once its records are on disk: the
//!   writer group-commits, one `fdatasync` for every request waiting
//!   ([`PredictionLog::append_durable`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;

use crossbeam_channel::{Sender, bounded};
use outpost_shared::DataType;
use outpost_shared::Tensor;
use outpost_shared::endpoints::now_ms;
use outpost_shared::protocol::records::{PredictionRecord, RecordError, RecordedInputs, RecordedTensor};
use outpost_shared::protocol::vocab::Slot;
use outpost_shared::tensor::{TensorError, datatype_of, slice, tensor_to_le_bytes};
use serde::{Deserialize, Serialize};

use crate::at_rest::{AtRest, Store, Unreadable};

/// What the prediction log keeps of a request's inputs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordInputs {
    /// The input values themselves.
    #[default]
    Keep,
    /// A SHA-256 of the input bytes only.
    Hash,
    /// Nothing.
    Drop,
}

/// Most records written in one batch.
pub const BATCH_RECORDS: usize = 1024;

/// When an answered prediction's record is on disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Within `flush_interval_ms` of the answer (a crash can lose the last interval).
    #[default]
    Batch,
    /// Before the answer: requests wait for the writer's next fsync (group commit).
    Sync,
}

/// Waits for one durable append: `Ok` once the records are on disk.
pub type Durable = tokio::sync::oneshot::Receiver<Result<(), String>>;

/// Prediction log settings (`[prediction_log]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PredictionLogConfig {
    /// Record predictions at all.
    pub enabled: bool,
    /// Disk budget for all segments together, in bytes.
    pub max_bytes: u64,
    /// Share of its filesystem the log may use: the budget is the smaller of `max_bytes` and
    /// this share of (the log's own size + the space still free), so on a disk that fills up —
    /// a small card, or the application beside it writing — the log evicts its oldest records
    /// instead of failing to write new ones.
    pub max_disk_share: f64,
    /// Records older than this are evicted (a segment at a time).
    pub max_age_secs: u64,
    /// Segments the budget is split into (eviction granularity).
    pub segments: u32,
    /// Records waiting for the writer; a full queue makes appends wait.
    pub queue_capacity: usize,
    /// How often written records are synced to disk (`fdatasync`), in milliseconds.
    pub flush_interval_ms: u64,
    /// No longer used (the log keeps no page cache of its own since it stopped using sled);
    /// accepted so that older configuration files still load, with a warning at start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_bytes: Option<u64>,
    /// `batch` (default) or `sync`: whether a request waits until its records are on disk.
    pub durability: Durability,
}

impl Default for PredictionLogConfig {
    fn default() -> Self {
        PredictionLogConfig {
            enabled: true,
            max_bytes: 256 * 1024 * 1024,
            max_disk_share: 0.5,
            max_age_secs: 7 * 24 * 3600,
            segments: 4,
            queue_capacity: 16_384,
            flush_interval_ms: 500,
            cache_bytes: None,
            durability: Durability::Batch,
        }
    }
}

/// Why the log cannot be opened or read.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("cannot use prediction log directory {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("prediction log storage error in {path}: {source}")]
    Storage { path: PathBuf, source: sled::Error },
    #[error("prediction log record {id} is damaged on disk (its checksum fails) in {path}")]
    Damaged { id: u64, path: PathBuf },
    #[error("prediction log record {id} is unreadable: {source}")]
    Record { id: u64, source: RecordError },
    #[error("prediction log record {id} is unreadable: {why}")]
    Unreadable { id: u64, why: Unreadable },
    #[error("prediction log writer has stopped")]
    WriterGone,
}

/// Counters the writer keeps; read them with [`PredictionLog::stats`].
#[derive(Debug, Default)]
struct Counters {
    appended: AtomicU64,
    evicted: AtomicU64,
    evicted_segments: AtomicU64,
    write_errors: AtomicU64,
    /// Records lost to writes that failed.
    dropped: AtomicU64,
    disk_bytes: AtomicU64,
    /// The budget in force: `max_bytes`, or less when the disk's free space says so.
    budget_bytes: AtomicU64,
    segments: AtomicU64,
    quarantined: AtomicU64,
    /// Records that failed to decode or authenticate when read (each counted once).
    unreadable: AtomicU64,
    /// The highest unreadable id counted so far (reads move forward; a re-read is not a new loss).
    unreadable_mark: AtomicU64,
}

/// A snapshot of the log's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogStats {
    pub appended: u64,
    pub evicted: u64,
    pub evicted_segments: u64,
    pub write_errors: u64,
    /// Records lost because their write failed (a full or failing disk).
    pub dropped: u64,
    pub disk_bytes: u64,
    /// The disk budget in force (see [`PredictionLogConfig::max_disk_share`]).
    pub budget_bytes: u64,
    pub segments: u64,
    pub queued: u64,
    /// Ids skipped when the log opened: reserved before an unclean stop and never logged, so
    /// predictions answered with some of them were lost (their ids are not reused).
    pub ids_skipped: u64,
    /// Requests answered without a prediction id: no id reservation could be written.
    pub unlogged: u64,
    /// Segment files that could not be read at all, moved to `predictions/quarantine/` when
    /// the log opened.
    pub quarantined_segments: u64,
    /// Records skipped: damaged on disk (found at open or on read), failed authentication or
    /// to decode.
    pub unreadable: u64,
}

enum Command {
    Append(Vec<PredictionRecord>),
    /// Append, then answer once the records are on disk.
    AppendDurable(Vec<PredictionRecord>, tokio::sync::oneshot::Sender<Result<(), String>>),
    Flush(std::sync::mpsc::Sender<Result<(), std::io::Error>>),
}

/// The prediction log. Cheap to share behind an `Arc`; dropping it flushes and stops the writer.
pub struct PredictionLog {
    sender: Option<Sender<Command>>,
    ids: ids::Ids,
    /// Ids skipped at open (reserved before an unclean stop, never logged).
    skipped: Option<ids::Skipped>,
    segments: Arc<RwLock<Vec<Segment>>>,
    counters: Arc<Counters>,
    writer: Option<JoinHandle<()>>,
    durability: Durability,
    at_rest: AtRest,
}

impl std::fmt::Debug for PredictionLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PredictionLog").field("stats", &self.stats()).finish_non_exhaustive()
    }
}

/// What a request's records share.
#[derive(Debug, Clone, Copy)]
pub struct RequestInfo<'a> {
    pub model: &'a str,
    pub version: &'a str,
    /// `primary`, or the candidate's slot (`canary`, `standby`).
    pub slot: Slot,
    pub latency_us: u32,
    pub record_inputs: RecordInputs,
}

/// A tensor cut into per-row pieces: `(datatype, row shape, bytes per row)`, or the whole
/// tensor for every row when its first dimension is not the batch.
struct Rows {
    name: String,
    datatype: DataType,
    shape: Vec<u64>,
    bytes: Vec<u8>,
    row_len: Option<usize>,
}

impl Rows {
    fn new(name: &str, tensor: &Tensor, batch: usize) -> Result<Rows, TensorError> {
        let datatype = datatype_of(tensor)?;
        let bytes = tensor_to_le_bytes(tensor)?;
        let shape = tensor.shape();
        let batched = shape.first() == Some(&batch) && batch > 0;
        let (row_shape, row_len) = if batched {
            let mut row_shape: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
            row_shape[0] = 1;
            (row_shape, Some(bytes.len() / batch))
        } else {
            (shape.iter().map(|&d| d as u64).collect(), None)
        };
        Ok(Rows { name: name.to_owned(), datatype, shape: row_shape, bytes, row_len })
    }

    fn row(&self, i: usize) -> &[u8] {
        match self.row_len {
            Some(len) => &self.bytes[i * len..(i + 1) * len],
            None => &self.bytes,
        }
    }

    fn recorded(&self, i: usize) -> RecordedTensor {
        RecordedTensor {
            name: self.name.clone(),
            datatype: self.datatype.v2_name().to_owned(),
            shape: self.shape.clone(),
            data: self.row(i).to_vec(),
        }
    }
}

/// Row `row`'s top score: the largest value of the first float output with several values
/// per row (a classifier's probabilities).
pub fn top_score(outputs: &[(&str, &Tensor)], batch: usize, row: usize) -> Option<f32> {
    outputs.iter().find_map(|(_, t)| {
        let per_row = t.len().checked_div(batch)?;
        if per_row < 2 || t.shape().first() != Some(&batch) {
            return None;
        }
        let range = row * per_row..(row + 1) * per_row;
        match datatype_of(t).ok()? {
            DataType::F32 => slice::<f32>(t).ok()?.get(range)?.iter().copied().reduce(f32::max),
            DataType::F64 => {
                slice::<f64>(t).ok()?.get(range)?.iter().copied().reduce(f64::max).map(|x| x as f32)
            }
            _ => None,
        }
    })
}

/// The number of rows in a request: the first input's first dimension (at least 1).
pub fn batch_rows(first_input: &Tensor) -> usize {
    first_input.shape().first().copied().unwrap_or(1).max(1)
}

/// Builds one record per row of a served request, with ids `first_id..first_id + batch`.
/// `inputs` may be empty when the model's policy drops them; `batch` comes from the caller,
/// which sized the id range with it.
pub fn records_for_request(
    first_id: u64,
    batch: usize,
    info: &RequestInfo<'_>,
    inputs: &[(&str, &Tensor)],
    outputs: &[(&str, &Tensor)],
) -> Result<Vec<PredictionRecord>, TensorError> {
    let batch = batch.max(1);
    let input_rows = match info.record_inputs {
        RecordInputs::Drop => Vec::new(),
        _ => inputs.iter().map(|(n, t)| Rows::new(n, t, batch)).collect::<Result<Vec<_>, _>>()?,
    };
    let output_rows = outputs.iter().map(|(n, t)| Rows::new(n, t, batch)).collect::<Result<Vec<_>, _>>()?;
    let at_ms = now_ms();
    Ok((0..batch)
        .map(|i| {
            let recorded_inputs = match info.record_inputs {
                RecordInputs::Keep => {
                    RecordedInputs::Kept(input_rows.iter().map(|r| r.recorded(i)).collect())
                }
                RecordInputs::Hash => {
                    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
                    for rows in &input_rows {
                        ctx.update(rows.row(i));
                    }
                    let mut hash = [0u8; 32];
                    hash.copy_from_slice(ctx.finish().as_ref());
                    RecordedInputs::Hashed(hash)
                }
                RecordInputs::Drop => RecordedInputs::Dropped,
            };
            PredictionRecord {
                id: first_id + i as u64,
                at_ms,
                model: info.model.to_owned(),
                version: info.version.to_owned(),
                slot: info.slot,
                latency_us: info.latency_us,
                inputs: recorded_inputs,
                outputs: output_rows.iter().map(|r| r.recorded(i)).collect(),
                top_score: top_score(outputs, batch, i),
            }
        })
        .collect())
}

impl PredictionLog {
    /// Opens (or creates) the log under `data_dir/predictions` and starts its writer.
    pub fn open(
        data_dir: &Path,
        config: &PredictionLogConfig,
        at_rest: &AtRest,
    ) -> Result<PredictionLog, LogError> {
        let root = data_dir.join("predictions");
        std::fs::create_dir_all(&root).map_err(|source| LogError::Io { path: root.clone(), source })?;
        if config.cache_bytes.is_some() {
            tracing::warn!(
                "prediction_log.cache_bytes no longer has an effect (the log keeps no cache of its own); remove it from the configuration"
            );
        }
        let counters = Arc::new(Counters::default());
        let segments = open_segments(&root, at_rest, &counters)?;
        // Damage counted at open is not counted again when those records are asked for.
        let damaged_mark = segments.iter().filter_map(Segment::damaged_max).max().unwrap_or(0);
        counters.unreadable_mark.store(damaged_mark, Ordering::Relaxed);
        let next_id = segments.iter().map(|s| s.max_id + 1).max().unwrap_or(1);
        let (ids, skipped) = ids::Ids::open(&root, next_id);
        let mut segments = segments;
        if segments.is_empty() {
            // Named by the first id it can hold (after a quarantine, past every reserved id).
            segments.push(Segment::create(&root, ids.next().max(next_id))?);
        }
        if let Some(s) = skipped {
            tracing::warn!(
                first = s.first,
                last = s.last,
                count = s.count(),
                "prediction ids {}–{} were reserved before the agent last stopped but never logged: predictions answered with any of them are lost; the ids are skipped, not reused",
                s.first,
                s.last
            );
        }
        let segments = Arc::new(RwLock::new(segments));
        let (sender, receiver) = bounded(config.queue_capacity.max(1));
        let writer = Writer {
            root,
            config: config.clone(),
            segments: Arc::clone(&segments),
            counters: Arc::clone(&counters),
            at_rest: at_rest.clone(),
            failures: FailureLog::default(),
            free_space: std::cell::Cell::new(None),
            buf: std::cell::RefCell::new(Vec::new()),
        };
        writer.refresh_disk_stats();
        let handle = std::thread::Builder::new()
            .name("prediction-log".into())
            .spawn(move || writer.run(receiver))
            .map_err(|source| LogError::Io { path: data_dir.to_owned(), source })?;
        Ok(PredictionLog {
            sender: Some(sender),
            ids,
            skipped,
            segments,
            counters,
            writer: Some(handle),
            durability: config.durability,
            at_rest: at_rest.clone(),
        })
    }

    /// Reserves `n` consecutive ids and returns the first; `None` when no id can be reserved
    /// durably (the request is then answered without ids and not logged; counted).
    pub fn allocate_ids(&self, n: u64) -> Option<u64> {
        self.ids.allocate(n)
    }

    /// The ids skipped when the log opened (see [`ids`]).
    pub fn skipped(&self) -> Option<ids::Skipped> {
        self.skipped
    }

    /// Hands records to the writer: one channel send, which waits only if the writer is
    /// `queue_capacity` batches behind.
    pub fn append(&self, records: Vec<PredictionRecord>) -> Result<(), LogError> {
        if records.is_empty() {
            return Ok(());
        }
        let sender = self.sender.as_ref().ok_or(LogError::WriterGone)?;
        sender.send(Command::Append(records)).map_err(|_| LogError::WriterGone)
    }

    /// Whether requests wait for their records to reach disk.
    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// Hands records to the writer and returns what to wait on until they are on disk: the
    /// writer answers every append waiting after one fsync (group commit), so concurrent
    /// requests share it.
    pub fn append_durable(&self, records: Vec<PredictionRecord>) -> Result<Durable, LogError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sender = self.sender.as_ref().ok_or(LogError::WriterGone)?;
        sender.send(Command::AppendDurable(records, tx)).map_err(|_| LogError::WriterGone)?;
        Ok(rx)
    }

    /// Writes everything appended so far to disk and returns once it is there.
    pub fn flush(&self) -> Result<(), LogError> {
        let sender = self.sender.as_ref().ok_or(LogError::WriterGone)?;
        let (tx, rx) = std::sync::mpsc::channel();
        sender.send(Command::Flush(tx)).map_err(|_| LogError::WriterGone)?;
        match rx.recv() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(LogError::Io {
                path: PathBuf::from("predictions"),
                source: std::io::Error::other(message),
            }),
            Err(_) => Err(LogError::WriterGone),
        }
    }

    /// Reads a record by id; `None` if it never existed or was evicted.
    pub fn get(&self, id: u64) -> Result<Option<PredictionRecord>, LogError> {
        let segments = self.segments.read().unwrap_or_else(|p| p.into_inner());
        // Newest first: most lookups are for recent predictions.
        for segment in segments.iter().rev() {
            let found =
                segment.find(id).map_err(|source| LogError::Io { path: segment.path.clone(), source })?;
            match found {
                None => continue,
                Some(Found::Stored(stored)) => {
                    return decode(&self.at_rest, id, &stored)
                        .map(Some)
                        .inspect_err(|e| self.unreadable(e, &segment.path));
                }
                Some(Found::Damaged) => {
                    let e = LogError::Damaged { id, path: segment.path.clone() };
                    self.unreadable(&e, &segment.path);
                    return Err(e);
                }
            }
        }
        Ok(None)
    }

    /// Records with id ≥ `from`, in id order, at most `limit` of them (what the writer has
    /// written; records still queued for it are not seen yet).
    pub fn read_from(&self, from: u64, limit: usize) -> Result<Vec<PredictionRecord>, LogError> {
        let segments = self.segments.read().unwrap_or_else(|p| p.into_inner());
        let mut frames = Vec::new();
        let paths: Vec<PathBuf> = segments.iter().map(|s| s.path.clone()).collect();
        for (tag, segment) in segments.iter().enumerate() {
            segment
                .collect_from(from, limit, tag, &mut frames)
                .map_err(|source| LogError::Io { path: segment.path.clone(), source })?;
        }
        drop(segments);
        // A damaged frame's header may name another record's id: a whole frame wins.
        frames.sort_unstable_by_key(|(id, _, stored)| (*id, stored.is_err()));
        frames.dedup_by_key(|(id, _, _)| *id);
        frames.truncate(limit);
        let mut out = Vec::with_capacity(frames.len());
        for (id, tag, stored) in frames {
            let path = &paths[tag];
            // A record that does not read is skipped (counted, logged with its place), never
            // sent: the batch goes on with the next one.
            let read = match stored {
                Ok(stored) => decode(&self.at_rest, id, &stored),
                Err(()) => Err(LogError::Damaged { id, path: path.clone() }),
            };
            match read {
                Ok(record) => out.push(record),
                Err(e) => self.unreadable(&e, path),
            }
        }
        Ok(out)
    }

    /// The next id that will be handed out.
    pub fn next_id(&self) -> u64 {
        self.ids.next()
    }

    pub fn stats(&self) -> LogStats {
        let c = &self.counters;
        LogStats {
            appended: c.appended.load(Ordering::Relaxed),
            evicted: c.evicted.load(Ordering::Relaxed),
            evicted_segments: c.evicted_segments.load(Ordering::Relaxed),
            write_errors: c.write_errors.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            disk_bytes: c.disk_bytes.load(Ordering::Relaxed),
            budget_bytes: c.budget_bytes.load(Ordering::Relaxed),
            segments: c.segments.load(Ordering::Relaxed),
            queued: self.sender.as_ref().map_or(0, |s| s.len() as u64),
            ids_skipped: self.skipped.map_or(0, |s| s.count()),
            unlogged: self.ids.failures(),
            quarantined_segments: c.quarantined.load(Ordering::Relaxed),
            unreadable: c.unreadable.load(Ordering::Relaxed),
        }
    }
}

impl PredictionLog {
    /// Counts and logs a record that did not read (once per id: reads move forward).
    fn unreadable(&self, error: &LogError, segment: &Path) {
        let id = match error {
            LogError::Record { id, .. } | LogError::Unreadable { id, .. } | LogError::Damaged { id, .. } => {
                *id
            }
            _ => return,
        };
        if self.counters.unreadable_mark.fetch_max(id, Ordering::Relaxed) >= id {
            return;
        }
        self.counters.unreadable.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            id,
            segment = %segment.display(),
            error = %error,
            "prediction log record skipped: it does not read (never served or sent; counted in outpost_agent_unreadable_records_total)"
        );
    }
}

/// A record as it goes to disk: `[RECORD_FORMAT] ‖ postcard`, sealed at its id when encryption
/// is on.
pub(crate) fn encode(at_rest: &AtRest, record: &PredictionRecord) -> Vec<u8> {
    at_rest.write(Store::PredictionLog, &record.id.to_be_bytes(), record.encode())
}

/// The record stored under `id`.
pub(crate) fn decode(at_rest: &AtRest, id: u64, value: &[u8]) -> Result<PredictionRecord, LogError> {
    let clear = at_rest
        .read(Store::PredictionLog, &id.to_be_bytes(), value)
        .map_err(|why| LogError::Unreadable { id, why })?;
    PredictionRecord::decode(&clear).map_err(|source| LogError::Record { id, source })
}

impl Drop for PredictionLog {
    fn drop(&mut self) {
        // Closing the channel tells the writer to write what is queued, flush, and stop.
        self.sender.take();
        if let Some(handle) = self.writer.take() {
            let _ = handle.join();
        }
        // Everything handed out is written (or counted as a write error): the next start
        // continues from here and skips nothing.
        self.ids.close();
    }
}

#[cfg(test)]
mod tests;

/// Tests only: flips one byte (`back` bytes from the end) of record `id`'s stored payload in
/// the segment files under `data_dir`, as a worn card would; the log must be closed.
#[cfg(test)]
pub(crate) fn flip_stored_byte(data_dir: &Path, id: u64, back: usize) {
    for entry in std::fs::read_dir(data_dir.join("predictions")).unwrap().filter_map(Result::ok) {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "log") {
            continue;
        }
        let mut bytes = std::fs::read(&path).unwrap();
        if let Some(end) = segment::frame_end(&bytes, id) {
            bytes[end - back] ^= 0x10;
            std::fs::write(&path, bytes).unwrap();
            return;
        }
    }
    panic!("record {id} is in no segment file");
}

pub mod ids;
mod segment;
mod writer;

mod opening;

use opening::open_segments;
use segment::{Found, Segment};
use writer::{FailureLog, Writer};
