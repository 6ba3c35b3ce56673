//! The bounded inference worker pool: a fixed set of OS threads (one per core by default)
//! fed by a bounded queue.
//!
//! CPU work — decoding request tensors, running tract, encoding outputs — never runs on the
//! async executor. A request that finds the queue full is refused at once (the caller answers
//! 503) instead of waiting without limit. A job that panics is caught, reported to its caller
//! and leaves its worker alive. Dropping the pool closes the queue; workers finish what is
//! queued and exit.

use std::cell::OnceCell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};
use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send + 'static>;

/// Why a job was not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubmitError {
    #[error("inference queue is full ({0} requests waiting)")]
    Full(usize),
    #[error("inference pool is shutting down")]
    Closed,
}

/// Why a job gave no result.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JobError {
    #[error("inference job panicked: {0}")]
    Panicked(String),
}

/// What a caught panic said.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}

/// A fixed pool of inference threads behind a bounded queue.
pub struct WorkerPool {
    sender: Option<Sender<Job>>,
    workers: Vec<JoinHandle<()>>,
    capacity: usize,
    busy: Arc<AtomicUsize>,
}

/// Where a deferred job ([`WorkerPool::try_submit_deferred`]) sends its result, once.
pub struct Reply<R> {
    tx: Option<oneshot::Sender<Result<R, JobError>>>,
}

impl<R> Reply<R> {
    pub fn send(mut self, value: R) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Ok(value));
        }
    }
}

impl<R> Drop for Reply<R> {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            let why = if std::thread::panicking() {
                "inference job panicked before answering"
            } else {
                "inference job ended without answering"
            };
            let _ = tx.send(Err(JobError::Panicked(why.to_owned())));
        }
    }
}

/// What a job may ask of its own pool while it waits for others' work (a dynamic batch's
/// leader, see [`crate::batching`]): whether more work is on its way, and to run one queued
/// job on its own thread instead of sleeping. Each worker thread has one ([`with_worker`]);
/// it holds no sender, so it never keeps the pool open.
pub struct Helper {
    receiver: Receiver<Job>,
    busy: Arc<AtomicUsize>,
}

impl Helper {
    /// Jobs are queued, or another worker is running one.
    pub fn more_coming(&self) -> bool {
        !self.receiver.is_empty() || self.busy.load(Ordering::Relaxed) > 1
    }

    /// Runs one queued job on this thread (a worker already counted busy); false when none
    /// was queued.
    pub fn run_one(&self) -> bool {
        match self.receiver.try_recv() {
            Ok(job) => {
                job();
                true
            }
            Err(_) => false,
        }
    }
}

thread_local! {
    /// The pool this thread works for, when it is a worker (set once, at its start).
    static WORKER: OnceCell<Helper> = const { OnceCell::new() };
}

/// Calls `f` with the [`Helper`] of the pool this thread works for (`None` off the pool's
/// threads). Jobs reach their pool this way, so a request costs no handle of its own.
pub fn with_worker<T>(f: impl FnOnce(Option<&Helper>) -> T) -> T {
    WORKER.with(|worker| f(worker.get()))
}

impl std::fmt::Debug for WorkerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerPool")
            .field("workers", &self.workers.len())
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl WorkerPool {
    /// Starts `workers` threads behind a queue of `capacity` waiting jobs.
    pub fn new(workers: usize, capacity: usize) -> std::io::Result<WorkerPool> {
        let (sender, receiver) = bounded::<Job>(capacity);
        let busy = Arc::new(AtomicUsize::new(0));
        let mut handles = Vec::with_capacity(workers);
        for i in 0..workers.max(1) {
            let receiver = receiver.clone();
            let busy = Arc::clone(&busy);
            let handle = std::thread::Builder::new().name(format!("infer-{i}")).spawn(move || {
                WORKER.with(|worker| {
                    let helper = worker.get_or_init(|| Helper { receiver, busy });
                    for job in helper.receiver.iter() {
                        helper.busy.fetch_add(1, Ordering::Relaxed);
                        job();
                        helper.busy.fetch_sub(1, Ordering::Relaxed);
                    }
                });
            })?;
            handles.push(handle);
        }
        Ok(WorkerPool { sender: Some(sender), workers: handles, capacity, busy })
    }

    /// Queues `f` and returns a receiver for its result, or refuses at once if the queue is full.
    /// If the caller drops the receiver before the job starts (the client went away), `f` still
    /// runs; jobs that want to skip work check `reply_wanted` themselves.
    pub fn try_submit<F, R>(&self, f: F) -> Result<oneshot::Receiver<Result<R, JobError>>, SubmitError>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            if tx.is_closed() {
                return; // nobody waits for this answer any more
            }
            let result = catch_unwind(AssertUnwindSafe(f))
                .map_err(|payload| JobError::Panicked(panic_message(&*payload)));
            let _ = tx.send(result);
        });
        self.enqueue(job).map(|()| rx)
    }

    /// Like [`WorkerPool::try_submit`], for a job that may answer later, from another thread:
    /// `f` gets the [`Reply`] and sends through it when it is done (a dynamic batch's leader
    /// answers for the requests it ran). A reply dropped unsent — `f` panicked, or forgot —
    /// answers with a [`JobError`], so the caller never waits forever.
    pub fn try_submit_deferred<F, R>(
        &self,
        f: F,
    ) -> Result<oneshot::Receiver<Result<R, JobError>>, SubmitError>
    where
        F: FnOnce(Reply<R>) + Send + 'static,
        R: Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            if tx.is_closed() {
                return; // nobody waits for this answer any more
            }
            // A panic drops the reply on its way out, which answers for it.
            let _ = catch_unwind(AssertUnwindSafe(|| f(Reply { tx: Some(tx) })));
        });
        self.enqueue(job).map(|()| rx)
    }

    fn enqueue(&self, job: Job) -> Result<(), SubmitError> {
        let sender = self.sender.as_ref().ok_or(SubmitError::Closed)?;
        sender.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => SubmitError::Full(self.capacity),
            TrySendError::Disconnected(_) => SubmitError::Closed,
        })
    }

    /// Jobs waiting for a worker.
    pub fn queue_depth(&self) -> usize {
        self.sender.as_ref().map_or(0, Sender::len)
    }

    /// Queue capacity.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Worker threads.
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// Workers running a job right now.
    pub fn busy(&self) -> usize {
        self.busy.load(Ordering::Relaxed)
    }
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        self.sender.take();
        for handle in self.workers.drain(..) {
            let _ = handle.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Barrier;

    #[tokio::test]
    async fn runs_jobs_and_returns_results() {
        let pool = WorkerPool::new(2, 4).unwrap();
        let rx = pool.try_submit(|| 21 * 2).unwrap();
        assert_eq!(rx.await.unwrap(), Ok(42));
    }

    #[tokio::test]
    async fn refuses_at_once_when_the_queue_is_full() {
        let pool = WorkerPool::new(1, 1).unwrap();
        let gate = Arc::new(Barrier::new(2));
        let g = Arc::clone(&gate);
        let running = pool.try_submit(move || g.wait()).unwrap();
        // Wait until the worker holds the first job, so the queue itself is empty.
        while pool.busy() == 0 {
            tokio::task::yield_now().await;
        }
        let queued = pool.try_submit(|| 1).unwrap();
        assert_eq!(pool.queue_depth(), 1);
        assert_eq!(pool.try_submit(|| 2).unwrap_err(), SubmitError::Full(1));
        gate.wait();
        running.await.unwrap().unwrap();
        assert_eq!(queued.await.unwrap(), Ok(1));
    }

    #[tokio::test]
    async fn a_panicking_job_is_reported_and_the_worker_survives() {
        let pool = WorkerPool::new(1, 2).unwrap();
        let rx = pool.try_submit(|| -> u8 { panic!("boom") }).unwrap();
        assert_eq!(rx.await.unwrap(), Err(JobError::Panicked("boom".into())));
        assert_eq!(pool.try_submit(|| 7).unwrap().await.unwrap(), Ok(7));
    }

    #[tokio::test]
    async fn a_deferred_job_answers_from_another_thread_and_never_leaves_its_caller_waiting() {
        let pool = WorkerPool::new(1, 4).unwrap();
        let later = pool
            .try_submit_deferred(|reply: Reply<u8>| {
                std::thread::spawn(move || reply.send(9));
            })
            .unwrap();
        assert_eq!(later.await.unwrap(), Ok(9));
        let forgotten = pool.try_submit_deferred(|reply: Reply<u8>| drop(reply)).unwrap();
        assert!(
            matches!(forgotten.await.unwrap(), Err(JobError::Panicked(why)) if why.contains("without answering"))
        );
        let panicked = pool.try_submit_deferred(|_reply: Reply<u8>| panic!("boom")).unwrap();
        assert!(matches!(panicked.await.unwrap(), Err(JobError::Panicked(why)) if why.contains("panicked")));
        assert_eq!(pool.try_submit(|| 7).unwrap().await.unwrap(), Ok(7), "the worker survives");
    }

    #[tokio::test]
    async fn a_job_reaches_its_own_pool_and_other_threads_reach_none() {
        let pool = WorkerPool::new(1, 4).unwrap();
        assert!(with_worker(|h| h.is_none()), "not a worker thread");
        let (gate_tx, gate_rx) = bounded::<()>(0);
        // The worker sees the second job queued behind the first, and runs it itself.
        let first = pool
            .try_submit(move || {
                gate_rx.recv().unwrap();
                with_worker(|h| {
                    let h = h.expect("a worker has its pool's helper");
                    (h.more_coming(), h.run_one(), h.run_one())
                })
            })
            .unwrap();
        while pool.busy() == 0 {
            tokio::task::yield_now().await;
        }
        let second = pool.try_submit(|| 2).unwrap();
        gate_tx.send(()).unwrap();
        assert_eq!(first.await.unwrap(), Ok((true, true, false)));
        assert_eq!(second.await.unwrap(), Ok(2));
    }

    #[test]
    fn dropping_the_pool_finishes_queued_jobs() {
        let counter = Arc::new(AtomicUsize::new(0));
        let pool = WorkerPool::new(1, 8).unwrap();
        let mut receivers = Vec::new();
        for _ in 0..5 {
            let c = Arc::clone(&counter);
            receivers.push(pool.try_submit(move || c.fetch_add(1, Ordering::SeqCst)).unwrap());
        }
        drop(pool);
        assert_eq!(counter.load(Ordering::SeqCst), 5);
    }
}
