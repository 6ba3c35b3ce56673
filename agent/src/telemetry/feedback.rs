//! The feedback spool: joined labels wait here and leave the agent together, one
//! `FeedbackBatch` a linger ([`Reporter::feedback`]), so a client that labels every prediction
//! as it is answered costs the coordinator one envelope a second, not one a label.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use outpost_shared::protocol::messages::{AgentMessage, FeedbackBatch, LabelledPrediction};

use super::Reporter;

/// Feedback labels waiting to leave as one message (see [`Reporter::feedback`]).
#[derive(Default)]
pub struct FeedbackSpool {
    pending: Mutex<PendingFeedback>,
    /// Held while a flush takes what waits and appends it, so flushes that meet queue up and
    /// the next one takes everything that arrived meanwhile (a group commit).
    flushing: Mutex<()>,
    wake: tokio::sync::Notify,
}

#[derive(Default)]
struct PendingFeedback {
    labels: Vec<LabelledPrediction>,
    unknown: u64,
    evicted: u64,
    /// Requests answered once their labels are in the outbox.
    waiters: Vec<std::sync::mpsc::Sender<Result<(), String>>>,
}

/// Most labels in one feedback message, so it fits an envelope (also the most one feedback
/// request may carry).
pub const FEEDBACK_MESSAGE_LABELS: usize = 10_000;

impl Reporter {
    /// Takes joined feedback labels (and the counts of labels that found no prediction). They
    /// wait in memory for `feedback_linger_ms`, or until `batch_max_records` wait, and leave
    /// together as one message: a client that posts one label per prediction costs the
    /// coordinator one envelope a linger, not one a label. With `durable` (the prediction log's
    /// `sync` durability) they leave now, with whatever else waits, and the answer says whether
    /// they reached the outbox. Without it, a crash loses at most one linger of labels, as the
    /// log's `batch` durability loses at most one flush interval of predictions.
    pub fn feedback(&self, batch: FeedbackBatch, durable: bool) -> Result<(), String> {
        let spool = &self.feedback_spool;
        let (done, full) = {
            let mut pending = spool.pending.lock().unwrap_or_else(|p| p.into_inner());
            pending.labels.extend(batch.labels);
            pending.unknown += batch.unknown;
            pending.evicted += batch.evicted;
            let done = durable.then(|| {
                let (tx, rx) = std::sync::mpsc::channel();
                pending.waiters.push(tx);
                rx
            });
            (done, pending.labels.len() >= self.config.batch_max_records.max(1))
        };
        if durable || full || self.config.feedback_linger_ms == 0 {
            self.flush_feedback();
        } else {
            spool.wake.notify_one();
        }
        match done {
            // Answered by whichever flush took these labels, before it let this one in.
            Some(done) => done.recv().unwrap_or_else(|_| Err("the feedback spool was dropped".into())),
            None => Ok(()),
        }
    }

    /// Appends every label waiting in the spool (in messages of at most
    /// [`FEEDBACK_MESSAGE_LABELS`]) and answers the requests that wait for them.
    pub fn flush_feedback(&self) {
        let spool = &self.feedback_spool;
        let _one_at_a_time = spool.flushing.lock().unwrap_or_else(|p| p.into_inner());
        let pending = std::mem::take(&mut *spool.pending.lock().unwrap_or_else(|p| p.into_inner()));
        let PendingFeedback { labels, mut unknown, mut evicted, waiters } = pending;
        let mut result = Ok(());
        let mut labels = labels.into_iter().peekable();
        while labels.peek().is_some() || unknown > 0 || evicted > 0 {
            let batch = FeedbackBatch {
                labels: labels.by_ref().take(FEEDBACK_MESSAGE_LABELS).collect(),
                unknown: std::mem::take(&mut unknown),
                evicted: std::mem::take(&mut evicted),
            };
            if let Err(e) = self.outbox.append(&self.key, &AgentMessage::Feedback(batch), None) {
                tracing::error!(error = %e, "cannot record feedback in the outbox");
                result = Err(e.to_string());
                break;
            }
        }
        for waiter in waiters {
            let _ = waiter.send(result.clone());
        }
    }

    /// Flushes the feedback spool one linger after labels arrive in it, until `stop` (what
    /// still waits then goes with the final tick).
    pub(super) async fn run_feedback_spool(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let linger = Duration::from_millis(self.config.feedback_linger_ms);
        loop {
            tokio::select! {
                _ = self.feedback_spool.wake.notified() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            tokio::select! {
                _ = tokio::time::sleep(linger) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let me = Arc::clone(&self);
            if let Err(e) = tokio::task::spawn_blocking(move || me.flush_feedback()).await {
                tracing::error!(error = %e, "feedback task failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::Outbox;
    use crate::telemetry::{TelemetryConfig, Window};
    use outpost_shared::protocol::SigningKey;
    use outpost_shared::protocol::messages::SystemStats;
    use outpost_shared::protocol::vocab::Slot;
    use std::collections::HashMap;

    /// A reporter over an outbox in `dir`, with no log, models or clock.
    fn reporter(dir: &std::path::Path, config: TelemetryConfig) -> Reporter {
        let outbox = Outbox::open(dir, 1 << 24, &crate::at_rest::AtRest::clear()).unwrap();
        Reporter {
            config,
            window: Arc::new(Window::new()),
            outbox: Arc::new(outbox),
            key: Arc::new(SigningKey::generate().unwrap().0),
            log: None,
            log_max_bytes: 0,
            sampling: HashMap::new(),
            system: Box::new(SystemStats::default),
            models: Box::new(Vec::new),
            sent: Mutex::new((None, 0)),
            clock_skew: Box::new(|| None),
            feedback_spool: FeedbackSpool::default(),
        }
    }

    fn labels(ids: std::ops::Range<u64>) -> FeedbackBatch {
        FeedbackBatch {
            labels: ids
                .map(|id| LabelledPrediction {
                    prediction_id: id,
                    model: "bc".into(),
                    version: "1".into(),
                    slot: Slot::Primary,
                    predicted: Some(1),
                    label: 1,
                    predicted_at_ms: 1,
                    labelled_at_ms: 2,
                })
                .collect(),
            unknown: 0,
            evicted: 0,
        }
    }

    /// The feedback messages in the outbox, in order.
    fn feedback_messages(reporter: &Reporter) -> Vec<FeedbackBatch> {
        reporter
            .outbox
            .pending_after(None, 1000)
            .unwrap()
            .into_iter()
            .filter_map(|(_, wire)| {
                let body = outpost_shared::protocol::decode(&wire).unwrap().body;
                match outpost_shared::protocol::messages::decode_agent(&body).unwrap() {
                    AgentMessage::Feedback(batch) => Some(batch),
                    _ => None,
                }
            })
            .collect()
    }

    #[test]
    fn labels_posted_one_at_a_time_leave_as_one_message() {
        let dir = tempfile::tempdir().unwrap();
        let reporter = reporter(dir.path(), TelemetryConfig::default());
        for id in 1..=40 {
            reporter.feedback(labels(id..id + 1), false).unwrap();
        }
        reporter.feedback(FeedbackBatch { labels: vec![], unknown: 2, evicted: 1 }, false).unwrap();
        assert!(feedback_messages(&reporter).is_empty(), "sent before the linger was over");
        reporter.flush_feedback();
        let sent = feedback_messages(&reporter);
        assert_eq!(sent.len(), 1);
        let ids: Vec<u64> = sent[0].labels.iter().map(|l| l.prediction_id).collect();
        assert_eq!(ids, (1..=40).collect::<Vec<_>>(), "in the order they came");
        assert_eq!((sent[0].unknown, sent[0].evicted), (2, 1));
        // Nothing waits: a flush appends nothing more, and a tick does not repeat them.
        reporter.flush_feedback();
        reporter.tick(false).unwrap();
        assert_eq!(feedback_messages(&reporter).len(), 1);
    }

    #[test]
    fn a_full_spool_leaves_at_once_and_a_big_one_is_split_to_fit_an_envelope() {
        let dir = tempfile::tempdir().unwrap();
        let config = TelemetryConfig { batch_max_records: 50, ..TelemetryConfig::default() };
        let reporter = reporter(dir.path(), config);
        reporter.feedback(labels(1..50), false).unwrap();
        assert!(feedback_messages(&reporter).is_empty());
        reporter.feedback(labels(50..51), false).unwrap();
        assert_eq!(feedback_messages(&reporter).iter().map(|b| b.labels.len()).collect::<Vec<_>>(), [50]);
        let big = FEEDBACK_MESSAGE_LABELS as u64 + 10;
        reporter.feedback(labels(1000..1000 + big), false).unwrap();
        let sizes: Vec<usize> = feedback_messages(&reporter).iter().map(|b| b.labels.len()).collect();
        assert_eq!(sizes, [50, FEEDBACK_MESSAGE_LABELS, 10]);
    }

    #[test]
    fn durable_feedback_is_in_the_outbox_when_answered_and_a_failure_is_said() {
        let dir = tempfile::tempdir().unwrap();
        let reporter = Arc::new(reporter(dir.path(), TelemetryConfig::default()));
        reporter.feedback(labels(1..3), false).unwrap();
        // Concurrent durable requests: each is answered only once its labels are in the outbox.
        let threads: Vec<_> = (0..8u64)
            .map(|i| {
                let reporter = Arc::clone(&reporter);
                std::thread::spawn(move || {
                    reporter.feedback(labels(10 + i * 10..10 + i * 10 + 5), true).unwrap();
                    let ids: Vec<u64> = feedback_messages(&reporter)
                        .iter()
                        .flat_map(|b| b.labels.iter().map(|l| l.prediction_id))
                        .collect();
                    assert!(ids.contains(&(10 + i * 10)), "answered before its labels were kept");
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let sent = feedback_messages(&reporter);
        assert_eq!(sent.iter().map(|b| b.labels.len()).sum::<usize>(), 42, "the waiting ones went along");
        assert!(sent.len() <= 8, "{} messages for 8 requests", sent.len());
        // Storage that fails (here: the outbox's directory replaced by a file, which no write
        // gets past, root's included) is an error for the waiting request, not a silent loss.
        std::fs::remove_dir_all(dir.path().join("outbox")).unwrap();
        std::fs::write(dir.path().join("outbox"), b"not a directory").unwrap();
        let refused = reporter.feedback(labels(500..501), true).unwrap_err();
        assert!(refused.contains("outbox storage error"), "{refused}");
    }
}
