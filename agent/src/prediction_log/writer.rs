//! The prediction log's writer thread: the single owner of every write — batches into the
//! active segment, group commits for `sync` durability, rolls segments and evicts the oldest,
//! and logs repeated failures at most once per interval.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError};
use outpost_shared::endpoints::now_ms;
use outpost_shared::protocol::records::PredictionRecord;

use super::segment::{Segment, put_frame, total_size};
use super::{BATCH_RECORDS, Command, Counters, Durability, PredictionLogConfig, encode};
use crate::at_rest::AtRest;

/// The single owner of all writes.
pub(super) struct Writer {
    pub(super) root: PathBuf,
    pub(super) config: PredictionLogConfig,
    pub(super) segments: Arc<RwLock<Vec<Segment>>>,
    pub(super) counters: Arc<Counters>,
    /// Seals each record (or writes it in the clear with encryption off).
    pub(super) at_rest: AtRest,
    /// Write failures are logged once per [`ERROR_LOG_INTERVAL`] with how many there were: on
    /// a full disk shared with the journal, a line per batch would make things worse.
    pub(super) failures: FailureLog,
    /// The filesystem's free bytes, and when they were read ([`FREE_SPACE_EVERY`]).
    pub(super) free_space: std::cell::Cell<Option<(std::time::Instant, u64)>>,
    /// The batch being encoded (kept between batches: no allocation per batch).
    pub(super) buf: std::cell::RefCell<Vec<u8>>,
}

/// How long a reading of the filesystem's free space is used.
const FREE_SPACE_EVERY: Duration = Duration::from_secs(1);

/// Smallest segment the budget is split into.
const MIN_SEGMENT_BYTES: u64 = 256 * 1024;

/// How often repeated write failures are logged.
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(30);

/// Counts repeated failures and logs them at most once per interval (the writer thread owns it).
#[derive(Default)]
pub(super) struct FailureLog {
    logged_at: std::cell::Cell<Option<std::time::Instant>>,
    since: std::cell::Cell<u64>,
    records: std::cell::Cell<u64>,
}

impl FailureLog {
    /// Notes a failed batch of `records`; logs when the interval since the last line is over.
    fn failed(&self, error: &dyn std::fmt::Display, records: u64) {
        self.since.set(self.since.get() + 1);
        self.records.set(self.records.get() + records);
        if self.logged_at.get().is_some_and(|at| at.elapsed() < ERROR_LOG_INTERVAL) {
            return;
        }
        tracing::error!(
            error = %error,
            failed_writes = self.since.get(),
            records_lost = self.records.get(),
            "prediction log: writes are failing; records lost (logged at most every 30 s, counted in outpost_agent_prediction_log_write_errors_total)"
        );
        self.logged_at.set(Some(std::time::Instant::now()));
        self.since.set(0);
        self.records.set(0);
    }
}

impl Writer {
    /// While records flow, the writer polls the channel every `BUSY_POLL` instead of sleeping
    /// in `recv`: a sleeping receiver must be woken by every sender, which on a 2-core device
    /// costs each request a thread wake-up. After a quiet second it blocks again, so an idle
    /// agent does not spin.
    pub(super) fn run(self, receiver: Receiver<Command>) {
        const BUSY_POLL: Duration = Duration::from_millis(5);
        const QUIET: Duration = Duration::from_secs(1);
        let tick = Duration::from_millis(self.config.flush_interval_ms.max(10));
        let mut pending: Vec<PredictionRecord> = Vec::with_capacity(BATCH_RECORDS);
        let mut waiting: Vec<tokio::sync::oneshot::Sender<Result<(), String>>> = Vec::new();
        let mut last_record = std::time::Instant::now() - QUIET;
        let mut last_maintenance = std::time::Instant::now();
        loop {
            // Under `sync` every request waits for the writer: block in `recv` so an append
            // wakes it at once, rather than waiting out a poll interval.
            let polling = self.config.durability == Durability::Batch && last_record.elapsed() < QUIET;
            let first = if polling {
                match receiver.try_recv() {
                    Ok(command) => Ok(command),
                    Err(crossbeam_channel::TryRecvError::Empty) => {
                        std::thread::sleep(BUSY_POLL);
                        Err(RecvTimeoutError::Timeout)
                    }
                    Err(crossbeam_channel::TryRecvError::Disconnected) => Err(RecvTimeoutError::Disconnected),
                }
            } else {
                receiver.recv_timeout(tick)
            };
            match first {
                Ok(command) => {
                    last_record = std::time::Instant::now();
                    let errors_before = self.counters.write_errors.load(Ordering::Relaxed);
                    self.handle(command, &mut pending, &mut waiting);
                    // Take whatever else is already waiting, a batch at a time.
                    while let Ok(command) = receiver.try_recv() {
                        self.handle(command, &mut pending, &mut waiting);
                    }
                    self.write(&mut pending);
                    if !waiting.is_empty() {
                        self.commit(&mut waiting, errors_before);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    let errors_before = self.counters.write_errors.load(Ordering::Relaxed);
                    self.write(&mut pending);
                    if waiting.is_empty() {
                        if let Err(e) = self.flush() {
                            tracing::error!(error = %e, "prediction log: final flush failed");
                        }
                    } else {
                        self.commit(&mut waiting, errors_before);
                    }
                    return;
                }
            }
            if last_maintenance.elapsed() >= tick {
                last_maintenance = std::time::Instant::now();
                self.maintain();
            }
        }
    }

    fn handle(
        &self,
        command: Command,
        pending: &mut Vec<PredictionRecord>,
        waiting: &mut Vec<tokio::sync::oneshot::Sender<Result<(), String>>>,
    ) {
        match command {
            Command::Append(records) => {
                pending.extend(records);
                if pending.len() >= BATCH_RECORDS {
                    self.write(pending);
                }
            }
            Command::AppendDurable(records, done) => {
                pending.extend(records);
                waiting.push(done);
                if pending.len() >= BATCH_RECORDS {
                    self.write(pending);
                }
            }
            Command::Flush(ack) => {
                self.write(pending);
                let _ = ack.send(self.flush());
            }
        }
    }

    fn write(&self, pending: &mut Vec<PredictionRecord>) {
        if pending.is_empty() {
            return;
        }
        // Ids reach the writer almost in order; in order on disk, reads by id stay cheap.
        pending.sort_unstable_by_key(|r| r.id);
        let mut buf = self.buf.borrow_mut();
        buf.clear();
        let mut frames = Vec::with_capacity(pending.len());
        let mut newest = 0;
        for record in pending.iter() {
            frames.push((record.id, buf.len()));
            put_frame(&mut buf, record.id, &encode(&self.at_rest, record));
            newest = newest.max(record.at_ms);
        }
        let count = pending.len() as u64;
        pending.clear();
        let mut segments = self.segments.write().unwrap_or_else(|p| p.into_inner());
        let mut written = Self::append_active(&mut segments, &buf, &frames, newest);
        // A full disk: make room by evicting the oldest segment, then try once more, before
        // anything is dropped.
        if let Err(e) = &written
            && is_disk_full(e)
            && segments.len() > 1
        {
            self.evict_oldest(&mut segments, "disk full");
            written = Self::append_active(&mut segments, &buf, &frames, newest);
        }
        match written {
            Ok(()) => {
                self.counters.appended.fetch_add(count, Ordering::Relaxed);
            }
            Err(e) => {
                self.counters.write_errors.fetch_add(1, Ordering::Relaxed);
                self.counters.dropped.fetch_add(count, Ordering::Relaxed);
                self.failures.failed(&e, count);
                return;
            }
        }
        drop(segments);
        drop(buf);
        self.roll_and_evict();
    }

    fn append_active(
        segments: &mut [Segment],
        buf: &[u8],
        frames: &[(u64, usize)],
        newest: u64,
    ) -> std::io::Result<()> {
        match segments.last_mut() {
            Some(active) => active.append(buf, frames, newest),
            None => Err(std::io::Error::other("the prediction log has no segment to write to")),
        }
    }

    /// One fsync for every durable append waiting, then their answers: an error if a write
    /// failed since `errors_before` or the sync did.
    fn commit(
        &self,
        waiting: &mut Vec<tokio::sync::oneshot::Sender<Result<(), String>>>,
        errors_before: u64,
    ) {
        let synced = {
            let mut segments = self.segments.write().unwrap_or_else(|p| p.into_inner());
            segments.last_mut().map_or(Ok(()), Segment::sync)
        };
        let outcome = match synced {
            Err(e) => Err(format!("the prediction log could not sync to disk: {e}")),
            Ok(_) if self.counters.write_errors.load(Ordering::Relaxed) != errors_before => {
                Err("the prediction log could not write the records (see the agent's log)".to_owned())
            }
            Ok(_) => Ok(()),
        };
        for done in waiting.drain(..) {
            let _ = done.send(outcome.clone());
        }
    }

    fn flush(&self) -> Result<(), std::io::Error> {
        let mut segments = self.segments.write().unwrap_or_else(|p| p.into_inner());
        for segment in segments.iter_mut() {
            segment.sync()?;
        }
        drop(segments);
        self.refresh_disk_stats();
        Ok(())
    }

    /// Bytes still free for an unprivileged writer on the log's filesystem (read at most once
    /// per [`FREE_SPACE_EVERY`]); `None` when the filesystem cannot tell.
    fn free_space(&self) -> Option<u64> {
        if let Some((at, bytes)) = self.free_space.get()
            && at.elapsed() < FREE_SPACE_EVERY
        {
            return Some(bytes);
        }
        let stats = rustix::fs::statvfs(&self.root).ok()?;
        let bytes = stats.f_bavail.saturating_mul(stats.f_frsize);
        self.free_space.set(Some((std::time::Instant::now(), bytes)));
        Some(bytes)
    }

    /// The budget in force for a log of `own` bytes: `max_bytes`, or `max_disk_share` of what
    /// the log could have on this disk (its own bytes plus the free ones) when that is less.
    fn budget(&self, own: u64) -> u64 {
        let budget = match self.free_space() {
            Some(free) => {
                let reachable = own.saturating_add(free) as f64;
                self.config.max_bytes.min((reachable * self.config.max_disk_share) as u64)
            }
            None => self.config.max_bytes,
        };
        self.counters.budget_bytes.store(budget, Ordering::Relaxed);
        budget
    }

    fn segment_budget(&self, budget: u64) -> u64 {
        (budget / u64::from(self.config.segments.max(1))).max(MIN_SEGMENT_BYTES)
    }

    /// Starts a new segment when the active one is full; evicts the oldest while over budget.
    fn roll_and_evict(&self) {
        let mut segments = self.segments.write().unwrap_or_else(|p| p.into_inner());
        let mut size = total_size(&segments);
        let budget = self.budget(size);
        let segment_budget = self.segment_budget(budget);
        let active_full = segments.last().is_some_and(|s| s.records > 0 && s.size() >= segment_budget);
        if let Some(active) = segments.last_mut().filter(|_| active_full) {
            // The full segment is complete: on disk before the next one starts.
            if let Err(e) = active.sync() {
                self.counters.write_errors.fetch_add(1, Ordering::Relaxed);
                self.failures.failed(&format!("cannot sync a full segment: {e}"), 0);
            }
            let first_id = active.max_id.max(active.first_id) + 1;
            match Segment::create(&self.root, first_id) {
                Ok(segment) => segments.push(segment),
                Err(e) => {
                    self.counters.write_errors.fetch_add(1, Ordering::Relaxed);
                    self.failures.failed(&format!("cannot start a new segment: {e}"), 0);
                }
            }
        }
        // A segment just started is empty: `size` stays right until something is evicted.
        while segments.len() > 1 && size > budget {
            let reason = if budget < self.config.max_bytes { "disk share" } else { "disk budget" };
            self.evict_oldest(&mut segments, reason);
            size = total_size(&segments);
        }
        drop(segments);
        self.refresh_disk_stats();
    }

    /// Periodic work: what was written reaches the disk, age eviction, fresh disk figures.
    fn maintain(&self) {
        let cutoff = now_ms().saturating_sub(self.config.max_age_secs.saturating_mul(1000));
        let mut segments = self.segments.write().unwrap_or_else(|p| p.into_inner());
        if let Some(Err(e)) = segments.last_mut().map(Segment::sync) {
            self.counters.write_errors.fetch_add(1, Ordering::Relaxed);
            self.failures.failed(&format!("cannot sync the prediction log: {e}"), 0);
        }
        while segments.len() > 1 && segments.first().is_some_and(|s| s.newest_at_ms < cutoff) {
            self.evict_oldest(&mut segments, "age");
        }
        drop(segments);
        self.refresh_disk_stats();
    }

    fn evict_oldest(&self, segments: &mut Vec<Segment>, reason: &str) {
        let segment = segments.remove(0);
        let records = segment.records;
        let dir = segment.path.clone();
        drop(segment);
        if let Err(e) = std::fs::remove_file(&dir) {
            self.counters.write_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, dir = %dir.display(), "prediction log: cannot remove evicted segment");
        }
        self.counters.evicted.fetch_add(records, Ordering::Relaxed);
        self.counters.evicted_segments.fetch_add(1, Ordering::Relaxed);
        tracing::info!(records, reason, dir = %dir.display(), "prediction log: evicted oldest segment");
    }

    pub(super) fn refresh_disk_stats(&self) {
        let segments = self.segments.read().unwrap_or_else(|p| p.into_inner());
        self.counters.disk_bytes.store(total_size(&segments), Ordering::Relaxed);
        self.counters.segments.store(segments.len() as u64, Ordering::Relaxed);
    }
}

/// Whether a write failed because the filesystem is full.
fn is_disk_full(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::StorageFull
        || e.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error())
}
