//! Dynamic batching, opt-in per model (as Triton's dynamic batcher): concurrent requests to the
//! same model version run as one tract batch and each gets its own rows back.
//!
//! There is no batching thread. The inference worker that finds no batch forming becomes its
//! leader. It gathers until the batch holds `max_batch` rows, or its oldest request has waited
//! `max_queue_delay_us`, or no more requests are on their way (nothing queued for the workers
//! and no other worker busy: waiting could only add latency). While it gathers it does not
//! sleep: it takes queued jobs off the worker pool and runs them itself, so requests for its
//! model join the batch sooner and no core idles. Then it runs the model once on the joined
//! rows and finishes every request in it (prediction log, telemetry summary, response) through
//! the request's own callback. Workers that bring a request while a batch forms add it and go
//! back to the queue at once, so a batch can hold many more requests than there are workers.
//! Requests join in arrival order; one that would push the batch past `max_batch` waits for
//! the next. A leader inside another leader's gathering (a job it took off the queue) runs
//! its batch at once, without gathering. A panic or an
//! error inside the model fails that batch's requests (each answers 500) and leaves the
//! batcher working. The batch lives in the served version ([`crate::models::ServedModel`]),
//! so requests for two versions never share a run.

use std::cell::Cell;
use std::collections::{BTreeMap, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use outpost_shared::Tensor;
use outpost_shared::runtime::batch::{join_rows, split_rows};
use serde::{Deserialize, Serialize};

/// Largest `max_batch` accepted: beyond it one run's memory and latency stop being small.
pub const MAX_BATCH_LIMIT: usize = 4096;
/// Longest `max_queue_delay_us` accepted (one second).
pub const MAX_QUEUE_DELAY_LIMIT_US: u64 = 1_000_000;

/// `[batching.<model>]`: how one model's requests are batched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchingConfig {
    /// Most rows one model run takes (2–4096). A request with this many rows or more runs alone.
    pub max_batch: usize,
    /// Longest a request waits for others to join its batch, in microseconds (0–1,000,000).
    #[serde(default = "default_delay_us")]
    pub max_queue_delay_us: u64,
}

fn default_delay_us() -> u64 {
    500
}

impl BatchingConfig {
    /// What is wrong with this model's batching settings: the key and the problem.
    pub fn validate(&self, model: &str) -> Result<(), (String, String)> {
        if !(2..=MAX_BATCH_LIMIT).contains(&self.max_batch) {
            return Err((
                format!("batching.{model}.max_batch"),
                format!(
                    "is {}; it must be between 2 and {MAX_BATCH_LIMIT} (remove [batching.{model}] to turn batching off)",
                    self.max_batch
                ),
            ));
        }
        if self.max_queue_delay_us > MAX_QUEUE_DELAY_LIMIT_US {
            return Err((
                format!("batching.{model}.max_queue_delay_us"),
                format!(
                    "is {}; it must be at most {MAX_QUEUE_DELAY_LIMIT_US} (one second)",
                    self.max_queue_delay_us
                ),
            ));
        }
        Ok(())
    }

    fn delay(&self) -> Duration {
        Duration::from_micros(self.max_queue_delay_us)
    }
}

/// Batching settings by model name (the `[batching]` table).
pub type BatchingTable = BTreeMap<String, BatchingConfig>;

/// What one batched run gives back to one request.
#[derive(Debug)]
pub struct Ran {
    /// The request's inputs, returned (the prediction log and the drift window read them).
    pub inputs: Vec<Tensor>,
    /// The request's rows of every output, in the model's output order.
    pub outputs: Vec<Tensor>,
    /// How long the batch's model run took.
    pub compute: Duration,
}

/// Finishes one request once its batch ran (or failed, with the reason).
pub type Finish = Box<dyn FnOnce(Result<Ran, String>) + Send>;

/// One request waiting in a batch.
pub struct Pending {
    /// Inputs in the model's order, checked against its signature.
    pub inputs: Vec<Tensor>,
    /// Rows in this request (its inputs' first dimension).
    pub rows: usize,
    pub finish: Finish,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").field("rows", &self.rows).finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Forming {
    waiting: VecDeque<(Pending, Instant)>,
    rows: usize,
    /// A worker is gathering this batch (and will run it).
    led: bool,
}

/// One served version's batch queue.
pub struct Batcher {
    config: BatchingConfig,
    forming: Mutex<Forming>,
    /// Signalled when the forming batch reaches `max_batch` rows.
    full: Condvar,
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher").field("config", &self.config).finish_non_exhaustive()
    }
}

/// What a leader may ask of the other workers while its batch forms.
pub trait Help {
    /// Whether more requests may be on their way (jobs queued, or another worker busy).
    fn more_coming(&self) -> bool;
    /// Runs one queued job on this thread; false when none was queued.
    fn run_one(&self) -> bool;
}

impl Help for crate::pool::Helper {
    fn more_coming(&self) -> bool {
        crate::pool::Helper::more_coming(self)
    }

    fn run_one(&self) -> bool {
        crate::pool::Helper::run_one(self)
    }
}

/// A leader with no pool behind it (a thread that is not a worker): nothing else is coming
/// and nothing is queued for it, so its batch runs at once.
#[derive(Debug, Clone, Copy)]
pub struct Alone;

impl Help for Alone {
    fn more_coming(&self) -> bool {
        false
    }

    fn run_one(&self) -> bool {
        false
    }
}

thread_local! {
    /// This thread is gathering a batch (a job it runs meanwhile must not gather another).
    static GATHERING: Cell<bool> = const { Cell::new(false) };
}

/// Clears [`GATHERING`] however the gathering ends.
struct Gathering;

impl Gathering {
    fn start() -> Option<Gathering> {
        GATHERING.with(|g| (!g.replace(true)).then_some(Gathering))
    }
}

impl Drop for Gathering {
    fn drop(&mut self) {
        GATHERING.with(|g| g.set(false));
    }
}

/// What a worker brings to a batch it may lead: the pool to help while it gathers, and who
/// hears of each batch run (for `/metrics`).
#[derive(Clone, Copy)]
pub struct Leader<'a> {
    pub help: &'a dyn Help,
    pub ran: &'a dyn Fn(BatchRun),
}

/// How a batch ran: rows and requests (for `/metrics`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchRun {
    pub rows: usize,
    pub requests: usize,
}

impl Batcher {
    pub fn new(config: BatchingConfig) -> Batcher {
        Batcher { config, forming: Mutex::new(Forming::default()), full: Condvar::new() }
    }

    pub fn config(&self) -> BatchingConfig {
        self.config
    }

    /// Whether a request of `rows` rows goes through the batch (smaller than `max_batch`).
    pub fn takes(&self, rows: usize) -> bool {
        rows < self.config.max_batch
    }

    fn lock(&self) -> MutexGuard<'_, Forming> {
        // A panic never happens while the lock is held (model runs and callbacks are outside it).
        self.forming.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a request. When no other worker is gathering a batch, this one leads: it gathers
    /// (helping the pool through `leader.help` meanwhile), runs with `run` and finishes batches
    /// until none is waiting without a leader; otherwise it returns at once and the leader
    /// finishes the request. `leader.ran` hears of every batch run.
    pub fn submit(
        &self,
        pending: Pending,
        run: &dyn Fn(Vec<Tensor>) -> Result<Vec<Tensor>, String>,
        leader: Leader<'_>,
    ) {
        let Leader { help, ran } = leader;
        let mut forming = self.lock();
        forming.rows += pending.rows;
        forming.waiting.push_back((pending, Instant::now()));
        if forming.led {
            // Wake the leader: its batch grew (it may be full, or waiting for this request).
            self.full.notify_one();
            return;
        }
        forming.led = true;
        loop {
            forming = match Gathering::start() {
                Some(_gathering) => self.gather(forming, help),
                // Inside another batch's gathering: run what is here at once.
                None => forming,
            };
            let batch = self.take(&mut forming);
            forming.led = false;
            drop(forming);
            let rows = batch.iter().map(|p| p.rows).sum();
            ran(BatchRun { rows, requests: batch.len() });
            run_batch(batch, run);
            forming = self.lock();
            // Requests left behind (they did not fit) and no one else gathering: lead again.
            if forming.led || forming.waiting.is_empty() {
                return;
            }
            forming.led = true;
        }
    }

    /// Gathers until the batch is full, its oldest request has waited `max_queue_delay_us`,
    /// or no more requests are on their way; runs queued jobs meanwhile instead of sleeping.
    fn gather<'a>(
        &'a self,
        mut forming: MutexGuard<'a, Forming>,
        help: &dyn Help,
    ) -> MutexGuard<'a, Forming> {
        while forming.rows < self.config.max_batch {
            let Some((_, oldest)) = forming.waiting.front() else { break };
            let deadline = *oldest + self.config.delay();
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            drop(forming);
            let helped = help.run_one();
            forming = self.lock();
            if helped {
                continue;
            }
            if !help.more_coming() {
                break;
            }
            // Another worker is busy (perhaps with a request for this batch): wait for it, but
            // look again soon, as its job may not be one of ours.
            let wait = (deadline - now).min(Duration::from_micros(50));
            forming = self.full.wait_timeout(forming, wait).unwrap_or_else(|p| p.into_inner()).0;
        }
        forming
    }

    /// Takes requests in arrival order up to `max_batch` rows (always at least one).
    fn take(&self, forming: &mut Forming) -> Vec<Pending> {
        let mut batch = Vec::new();
        let mut rows = 0;
        while let Some((next, _)) = forming.waiting.front() {
            if !batch.is_empty() && rows + next.rows > self.config.max_batch {
                break;
            }
            rows += next.rows;
            if let Some((pending, _)) = forming.waiting.pop_front() {
                batch.push(pending);
            }
        }
        forming.rows -= rows;
        batch
    }
}

/// Runs one batch and finishes each of its requests.
fn run_batch(batch: Vec<Pending>, run: &dyn Fn(Vec<Tensor>) -> Result<Vec<Tensor>, String>) {
    let started = Instant::now();
    let rows: Vec<usize> = batch.iter().map(|p| p.rows).collect();
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let inputs: Vec<&[Tensor]> = batch.iter().map(|p| p.inputs.as_slice()).collect();
        let joined = join_rows(&inputs).map_err(|e| e.to_string())?;
        let outputs = run(joined)?;
        split_rows(&outputs, &rows).map_err(|e| e.to_string())
    }))
    .unwrap_or_else(|payload| {
        Err(format!("the model panicked: {}", crate::pool::panic_message(payload.as_ref())))
    });
    let compute = started.elapsed();
    match outcome {
        Ok(parts) => {
            for (pending, outputs) in batch.into_iter().zip(parts) {
                let Pending { inputs, finish, .. } = pending;
                // A callback that panics drops its reply: that request answers 500, the rest go on.
                let _ = catch_unwind(AssertUnwindSafe(|| finish(Ok(Ran { inputs, outputs, compute }))));
            }
        }
        Err(why) => {
            for pending in batch {
                let _ = catch_unwind(AssertUnwindSafe(|| (pending.finish)(Err(why.clone()))));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::sync::{Arc, Barrier};

    use super::*;

    fn config(max_batch: usize, delay_us: u64) -> BatchingConfig {
        BatchingConfig { max_batch, max_queue_delay_us: delay_us }
    }

    /// A pool with nothing queued: `busy` says whether another worker is still at work.
    struct Idle {
        busy: bool,
    }

    impl Help for Idle {
        fn more_coming(&self) -> bool {
            self.busy
        }

        fn run_one(&self) -> bool {
            false
        }
    }

    /// Others are busy: the leader waits out the delay (or a full batch).
    const WAITS: Idle = Idle { busy: true };

    /// One request of `rows` rows whose values are `tag`; its answer goes to `tx`.
    fn pending(tag: f32, rows: usize, tx: mpsc::Sender<(f32, Result<Ran, String>)>) -> Pending {
        let input = Tensor::from_shape(&[rows, 2], &vec![tag; rows * 2]).unwrap();
        Pending {
            inputs: vec![input],
            rows,
            finish: Box::new(move |result| {
                let _ = tx.send((tag, result));
            }),
        }
    }

    /// The "model": doubles every value.
    fn double(inputs: Vec<Tensor>) -> Result<Vec<Tensor>, String> {
        let x = &inputs[0];
        let doubled: Vec<f32> = outpost_shared::tensor::slice::<f32>(x)
            .map_err(|e| e.to_string())?
            .iter()
            .map(|v| v * 2.0)
            .collect();
        Tensor::from_shape(x.shape(), &doubled).map(|t| vec![t]).map_err(|e| e.to_string())
    }

    #[test]
    fn settings_out_of_range_are_refused_naming_the_key() {
        assert!(config(32, 500).validate("digits").is_ok());
        let (key, problem) = config(1, 500).validate("digits").unwrap_err();
        assert_eq!(key, "batching.digits.max_batch");
        assert!(problem.starts_with("is 1;"), "{problem}");
        let (key, problem) = config(8, 2_000_000).validate("digits").unwrap_err();
        assert_eq!(key, "batching.digits.max_queue_delay_us");
        assert!(problem.starts_with("is 2000000;"), "{problem}");
    }

    #[test]
    fn concurrent_requests_share_one_run_and_each_gets_its_own_rows() {
        let batcher = Arc::new(Batcher::new(config(64, 200_000)));
        let runs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let start = Arc::new(Barrier::new(8));
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let (batcher, runs, tx, start) =
                    (Arc::clone(&batcher), Arc::clone(&runs), tx.clone(), Arc::clone(&start));
                std::thread::spawn(move || {
                    start.wait();
                    let ran = |run: BatchRun| runs.lock().unwrap().push(run);
                    batcher.submit(
                        pending(i as f32, 1 + i % 3, tx),
                        &double,
                        Leader { help: &WAITS, ran: &ran },
                    );
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(tx);
        let answers: Vec<_> = rx.iter().collect();
        assert_eq!(answers.len(), 8);
        for (tag, result) in answers {
            let ran = result.unwrap();
            let rows = 1 + (tag as usize) % 3;
            assert_eq!(ran.outputs[0].shape(), &[rows, 2]);
            assert!(
                outpost_shared::tensor::slice::<f32>(&ran.outputs[0])
                    .unwrap()
                    .iter()
                    .all(|&v| v == tag * 2.0)
            );
            assert_eq!(ran.inputs[0].shape(), &[rows, 2], "inputs come back");
        }
        let runs = runs.lock().unwrap();
        assert_eq!(runs.iter().map(|r| r.requests).sum::<usize>(), 8);
        assert!(runs.len() < 8, "8 requests arriving together ran in {} runs: {runs:?}", runs.len());
    }

    #[test]
    fn a_batch_runs_when_full_or_when_its_oldest_request_has_waited_the_delay() {
        // Full: a lone leader with a one-second delay is released by the request filling it.
        let batcher = Arc::new(Batcher::new(config(4, 1_000_000)));
        let (tx, rx) = mpsc::channel();
        let started = Instant::now();
        let leader = {
            let (batcher, tx) = (Arc::clone(&batcher), tx.clone());
            std::thread::spawn(move || {
                batcher.submit(pending(1.0, 1, tx), &double, Leader { help: &WAITS, ran: &|_| {} })
            })
        };
        std::thread::sleep(Duration::from_millis(20));
        batcher.submit(pending(2.0, 3, tx.clone()), &double, Leader { help: &WAITS, ran: &|_| {} });
        leader.join().unwrap();
        assert_eq!(rx.iter().take(2).count(), 2);
        assert!(started.elapsed() < Duration::from_millis(900), "a full batch waited for the delay");

        // Not full: it runs once the delay has passed.
        let batcher = Batcher::new(config(4, 30_000));
        let started = Instant::now();
        batcher.submit(pending(3.0, 1, tx), &double, Leader { help: &WAITS, ran: &|_| {} });
        assert!(started.elapsed() >= Duration::from_millis(30));
        assert!(rx.recv().unwrap().1.is_ok());
    }

    #[test]
    fn requests_that_do_not_fit_run_in_the_next_batch() {
        let batcher = Batcher::new(config(4, 0));
        let (tx, rx) = mpsc::channel();
        let runs = Mutex::new(Vec::new());
        // Queue three requests under the lock as if they arrived while another batch ran.
        {
            let mut forming = batcher.lock();
            for (tag, rows) in [(1.0, 3), (2.0, 3)] {
                forming.rows += rows;
                forming.waiting.push_back((pending(tag, rows, tx.clone()), Instant::now()));
            }
        }
        batcher.submit(
            pending(3.0, 1, tx),
            &double,
            Leader { help: &WAITS, ran: &|run| runs.lock().unwrap().push(run) },
        );
        let runs = runs.into_inner().unwrap();
        assert_eq!(
            runs,
            vec![BatchRun { rows: 3, requests: 1 }, BatchRun { rows: 4, requests: 2 }],
            "3 + 3 rows do not fit in 4: the second waits for the next run"
        );
        assert_eq!(rx.iter().filter(|(_, r)| r.is_ok()).count(), 3);
    }

    #[test]
    fn a_panicking_model_fails_its_batch_and_the_next_batch_runs() {
        let batcher = Batcher::new(config(8, 0));
        let (tx, rx) = mpsc::channel();
        let boom = |_: Vec<Tensor>| -> Result<Vec<Tensor>, String> { panic!("kernel exploded") };
        batcher.submit(pending(1.0, 1, tx.clone()), &boom, Leader { help: &WAITS, ran: &|_| {} });
        let (_, result) = rx.recv().unwrap();
        let why = result.unwrap_err();
        assert!(why.contains("the model panicked: kernel exploded"), "{why}");
        batcher.submit(pending(2.0, 1, tx), &double, Leader { help: &WAITS, ran: &|_| {} });
        assert!(rx.recv().unwrap().1.is_ok(), "the batcher still works after a panic");
    }

    #[test]
    fn a_lone_request_runs_at_once_when_nothing_more_is_coming() {
        let batcher = Batcher::new(config(32, 1_000_000));
        let (tx, rx) = mpsc::channel();
        let started = Instant::now();
        batcher.submit(pending(1.0, 1, tx), &double, Leader { help: &Idle { busy: false }, ran: &|_| {} });
        assert!(started.elapsed() < Duration::from_millis(500), "it waited for a batch nobody would join");
        assert!(rx.recv().unwrap().1.is_ok());
    }

    /// The queue holds three requests for the same model: the leader runs them itself while
    /// it gathers, and they join its batch (one run of four requests).
    struct Queued<'a> {
        batcher: &'a Batcher,
        jobs: Mutex<Vec<Pending>>,
    }

    impl Help for Queued<'_> {
        fn more_coming(&self) -> bool {
            !self.jobs.lock().unwrap().is_empty()
        }

        fn run_one(&self) -> bool {
            let Some(job) = self.jobs.lock().unwrap().pop() else { return false };
            self.batcher.submit(
                job,
                &double,
                Leader { help: self, ran: &|_| panic!("a follower never runs a batch") },
            );
            true
        }
    }

    #[test]
    fn the_leader_runs_queued_jobs_while_it_gathers_and_they_join_its_batch() {
        let batcher = Batcher::new(config(32, 1_000_000));
        let (tx, rx) = mpsc::channel();
        let help = Queued {
            batcher: &batcher,
            jobs: Mutex::new((2..5).map(|i| pending(i as f32, 1, tx.clone())).collect()),
        };
        let runs = Mutex::new(Vec::new());
        let started = Instant::now();
        batcher.submit(
            pending(1.0, 1, tx),
            &double,
            Leader { help: &help, ran: &|run| runs.lock().unwrap().push(run) },
        );
        assert_eq!(runs.into_inner().unwrap(), vec![BatchRun { rows: 4, requests: 4 }]);
        assert!(started.elapsed() < Duration::from_millis(500), "it waited after the queue emptied");
        assert_eq!(rx.iter().filter(|(_, r)| r.is_ok()).count(), 4);
    }
}
