//! Telemetry: window reports and sampled prediction batches, appended to the outbox.
//!
//! Every `interval_secs` the reporter turns the current [`Window`] into a
//! [`Report`] (per model version: requests, errors, rows, a mergeable latency histogram, the
//! top-score histogram and predicted-label counts; system metrics; prediction-log and outbox
//! state) and reads the prediction log forward from the outbox's cursor into
//! [`PredictionBatch`]es, sampled per model (`sample_predictions`: `all`, `none` or `1/N`).
//! Records are read only once they are a second old, so a record whose id was allocated
//! before a newer one was written is not skipped. Feedback labels wait in a spool and leave
//! together (see [`Reporter::feedback`]); the actual state is appended as urgent, so it is sent
//! ahead of any backlog. What leaves here goes to the outbox; the link (`crate::link`) sends it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outpost_shared::histogram::LogHistogram;
use outpost_shared::protocol::SigningKey;
use outpost_shared::protocol::messages::{
    ActualState, AgentMessage, Event, EventKind, LogWindow, ModelState, ModelWindow, PredictionBatch, Report,
    ShadowReport, ShadowWindow, SystemStats,
};
use outpost_shared::protocol::records::PredictionRecord;
use outpost_shared::protocol::vocab::Slot;
use outpost_shared::tensor::{datatype_of, slice};
use outpost_shared::{DataType, Tensor};
use serde::{Deserialize, Serialize};

mod feedback;

pub use feedback::{FEEDBACK_MESSAGE_LABELS, FeedbackSpool};

use crate::outbox::{Outbox, now_ms};
use crate::prediction_log::{PredictionLog, top_score};

/// `[telemetry]` settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Build reports and batches at all.
    pub enabled: bool,
    /// Reporting window, in seconds.
    pub interval_secs: u64,
    /// Bound on unacknowledged envelope bytes in the outbox (oldest dropped beyond it, counted).
    pub outbox_max_bytes: u64,
    /// Most prediction records in one batch message; also how many feedback labels make the
    /// spool leave before its linger is over.
    pub batch_max_records: usize,
    /// How long feedback labels wait for others before they leave as one message, in ms (0:
    /// one message per request). With `prediction_log.durability = "sync"` a request is
    /// answered once its labels are in the outbox, without waiting.
    pub feedback_linger_ms: u64,
    /// Resend unacknowledged messages after this long without an ack.
    pub ack_timeout_secs: u64,
    /// Most messages sent and not yet acknowledged.
    pub max_in_flight: usize,
    /// Overrides the broker URL received at enrolment (`mqtts://host:port`).
    pub broker_url: Option<String>,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            enabled: true,
            interval_secs: 10,
            outbox_max_bytes: 256 * 1024 * 1024,
            batch_max_records: 500,
            feedback_linger_ms: 1000,
            ack_timeout_secs: 15,
            max_in_flight: 64,
            broker_url: None,
        }
    }
}

pub use outpost_shared::protocol::vocab::Sampling;

/// What one served request contributes to the window.
#[derive(Debug, Clone, Default)]
pub struct RowSummary {
    pub rows: usize,
    pub top_scores: Vec<f32>,
    pub labels: Vec<String>,
}

impl RowSummary {
    /// Reads a request's rows straight from the model's outputs: each row's top score (the
    /// largest value of the first float output with several values per row), and its label
    /// (the first INT64 output with one value per row).
    pub fn from_outputs(outputs: &[(&str, &Tensor)], batch: usize) -> RowSummary {
        let batch = batch.max(1);
        RowSummary {
            rows: batch,
            top_scores: (0..batch).filter_map(|row| top_score(outputs, batch, row)).collect(),
            labels: outputs.iter().find_map(|(_, t)| row_labels(t, batch)).unwrap_or_default(),
        }
    }
}

/// One INT64 value per row (a batched `[batch]`/`[batch, 1]` tensor, or a single value shared
/// by every row), as label strings.
fn row_labels(tensor: &Tensor, batch: usize) -> Option<Vec<String>> {
    if datatype_of(tensor).ok()? != DataType::I64 {
        return None;
    }
    let values = slice::<i64>(tensor).ok()?;
    let batched = tensor.shape().first() == Some(&batch);
    match values {
        _ if batched && values.len() == batch => Some(values.iter().map(i64::to_string).collect()),
        [only] if !batched => Some(vec![only.to_string(); batch]),
        _ => None,
    }
}

#[derive(Debug, Default)]
struct Acc {
    /// The slot the version answered from (`primary`, `canary`, `standby`).
    slot: Option<Slot>,
    requests: u64,
    errors: u64,
    rows: u64,
    latency_us: LogHistogram,
    top_score: LogHistogram,
    labels: BTreeMap<String, u64>,
    /// Shadow runs: rows compared with the primary's, rows that agreed, and that primary.
    compared: u64,
    agreed: u64,
    primary: String,
}

/// How many of two summaries' rows predict the same: the same label, or for a model without
/// labels the same top score within 1e-6 (relative). Returns (compared, agreed).
pub fn agreement(primary: &RowSummary, shadow: &RowSummary) -> (u64, u64) {
    if !primary.labels.is_empty() && primary.labels.len() == shadow.labels.len() {
        let agreed = primary.labels.iter().zip(&shadow.labels).filter(|(a, b)| a == b).count();
        return (primary.labels.len() as u64, agreed as u64);
    }
    if !primary.top_scores.is_empty() && primary.top_scores.len() == shadow.top_scores.len() {
        let agreed = primary
            .top_scores
            .iter()
            .zip(&shadow.top_scores)
            .filter(|(a, b)| (**a - **b).abs() <= 1e-6 * a.abs().max(1.0))
            .count();
        return (primary.top_scores.len() as u64, agreed as u64);
    }
    (0, 0)
}

/// Accumulators per model, then version, with the window's start time (unix ms).
type WindowState = (u64, HashMap<String, HashMap<String, Acc>>);

/// The current reporting window, fed by every inference request.
#[derive(Debug, Default)]
pub struct Window {
    inner: Mutex<WindowState>,
}

/// Most label values tracked per model version (the rest count under `_other`).
const MAX_LABELS: usize = 256;

impl Window {
    pub fn new() -> Window {
        Window { inner: Mutex::new((now_ms(), HashMap::new())) }
    }

    /// Records one answered request.
    pub fn observe(
        &self,
        model: &str,
        version: &str,
        slot: Slot,
        ok: bool,
        latency_us: f64,
        summary: Option<&RowSummary>,
    ) {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        // Keys are allocated only the first time a version is seen in a window.
        let models = &mut guard.1;
        if !models.contains_key(model) {
            models.insert(model.to_owned(), HashMap::new());
        }
        let Some(versions) = models.get_mut(model) else { return };
        if !versions.contains_key(version) {
            versions.insert(version.to_owned(), Acc::default());
        }
        let Some(acc) = versions.get_mut(version) else { return };
        acc.slot = Some(slot);
        acc.requests += 1;
        if !ok {
            acc.errors += 1;
        }
        acc.latency_us.record(latency_us);
        if let Some(summary) = summary {
            acc.rows += summary.rows as u64;
            for &score in &summary.top_scores {
                acc.top_score.record(f64::from(score));
            }
            for label in &summary.labels {
                let known = acc.labels.len() < MAX_LABELS || acc.labels.contains_key(label);
                let key = if known { label.clone() } else { "_other".to_owned() };
                *acc.labels.entry(key).or_insert(0) += 1;
            }
        }
    }

    /// Records how a shadow run of `version` compared with `primary`'s answer.
    pub fn compare(&self, model: &str, version: &str, primary: &str, compared: u64, agreed: u64) {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let acc = guard.1.entry(model.to_owned()).or_default().entry(version.to_owned()).or_default();
        acc.compared += compared;
        acc.agreed += agreed;
        if acc.primary != primary {
            acc.primary = primary.to_owned();
        }
    }

    /// Takes the window's contents and starts a new one.
    fn take(&self) -> (u64, Vec<ModelWindow>, Vec<ShadowWindow>) {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let started = std::mem::replace(&mut guard.0, now_ms());
        let accs = std::mem::take(&mut guard.1);
        drop(guard);
        let mut shadows: Vec<ShadowWindow> = accs
            .iter()
            .flat_map(|(model, versions)| {
                versions.iter().filter(|(_, a)| a.compared > 0).map(move |(version, a)| ShadowWindow {
                    model: model.clone(),
                    version: version.clone(),
                    primary: a.primary.clone(),
                    compared: a.compared,
                    agreed: a.agreed,
                })
            })
            .collect();
        shadows.sort_by(|a, b| (&a.model, &a.version).cmp(&(&b.model, &b.version)));
        let mut models: Vec<ModelWindow> = accs
            .into_iter()
            .flat_map(|(model, versions)| {
                versions.into_iter().map(move |(version, a)| (model.clone(), version, a))
            })
            .map(|(model, version, a)| ModelWindow {
                model,
                version,
                slot: a.slot.unwrap_or(Slot::Primary),
                requests: a.requests,
                errors: a.errors,
                rows: a.rows,
                latency_us: a.latency_us,
                top_score: a.top_score,
                label_counts: a.labels,
            })
            .collect();
        models.sort_by(|a, b| (&a.model, &a.version).cmp(&(&b.model, &b.version)));
        (started, models, shadows)
    }
}

/// Everything the reporter needs.
pub struct Reporter {
    pub config: TelemetryConfig,
    pub window: Arc<Window>,
    pub outbox: Arc<Outbox>,
    pub key: Arc<SigningKey>,
    pub log: Option<Arc<PredictionLog>>,
    pub log_max_bytes: u64,
    /// Sampling per model name (models not listed: `all`).
    pub sampling: HashMap<String, Sampling>,
    pub system: Box<dyn Fn() -> SystemStats + Send + Sync>,
    /// The models' current states; a change is sent as the agent's actual state.
    pub models: Box<dyn Fn() -> Vec<ModelState> + Send + Sync>,
    /// (last model states sent, prediction-log evictions already reported).
    pub sent: Mutex<(Option<Vec<ModelState>>, u64)>,
    /// The device clock's skew against the coordinator when it is news (first measured, or
    /// moved by a minute): sent as a `ClockSkew` event.
    pub clock_skew: Box<dyn Fn() -> Option<i64> + Send + Sync>,
    /// Feedback labels not yet in the outbox.
    pub feedback_spool: FeedbackSpool,
}

impl std::fmt::Debug for Reporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reporter").finish_non_exhaustive()
    }
}

/// How long a record must be in the log before it is batched (see the module docs).
const SETTLE_MS: u64 = 1000;

impl Reporter {
    /// Appends an event (best effort: a full disk is logged, not fatal).
    pub fn event(&self, kind: EventKind, message: String) {
        let event = AgentMessage::Event(Event { at_ms: now_ms(), kind, message });
        if let Err(e) = self.outbox.append(&self.key, &event, None) {
            tracing::error!(error = %e, "cannot record an event in the outbox");
        }
    }

    /// Appends drift verdicts (best effort, like events).
    pub fn drift(&self, models: Vec<outpost_shared::protocol::messages::ModelDrift>) {
        let report =
            AgentMessage::Drift(outpost_shared::protocol::messages::DriftReport { at_ms: now_ms(), models });
        if let Err(e) = self.outbox.append(&self.key, &report, None) {
            tracing::error!(error = %e, "cannot record drift verdicts in the outbox");
        }
    }

    /// Appends the agent's actual state, to be sent ahead of any backlog.
    pub fn state(&self, models: Vec<ModelState>) {
        let state =
            AgentMessage::State(ActualState { agent_version: env!("CARGO_PKG_VERSION").into(), models });
        if let Err(e) = self.outbox.append_urgent(&self.key, &state) {
            tracing::error!(error = %e, "cannot record the agent state in the outbox");
        }
    }

    /// Closes the window into a report, and batches settled predictions. `final_pass` batches
    /// everything in the log regardless of age (at shutdown, once the log is flushed).
    /// Appends the actual state now if it changed since the last one sent (after a swap, so
    /// the coordinator learns at once instead of at the next tick).
    pub fn state_if_changed(&self) {
        let models = (self.models)();
        let changed = {
            let mut sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
            let changed = sent.0.as_ref() != Some(&models);
            if changed {
                sent.0 = Some(models.clone());
            }
            changed
        };
        if changed {
            self.state(models);
        }
    }

    pub fn tick(&self, final_pass: bool) -> Result<(), crate::outbox::OutboxError> {
        self.state_if_changed();
        self.flush_feedback();
        let evicted = self.log.as_ref().map_or(0, |l| l.stats().evicted);
        let newly_evicted = {
            let mut sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
            let newly = evicted.saturating_sub(sent.1);
            sent.1 = evicted;
            newly
        };
        if newly_evicted > 0 {
            self.event(
                EventKind::LogEvicted,
                format!("prediction log bound evicted {newly_evicted} records"),
            );
        }
        if let Some(skew_ms) = (self.clock_skew)() {
            self.event(EventKind::ClockSkew { skew_ms }, crate::link::skew_text(skew_ms));
        }
        self.batch_predictions(final_pass)?;
        let (started, models, shadows) = self.window.take();
        let stats = self.log.as_ref().map(|l| l.stats()).unwrap_or_default();
        let ended = now_ms();
        if !shadows.is_empty() {
            let shadow = ShadowReport { window_start_ms: started, window_end_ms: ended, models: shadows };
            self.outbox.append(&self.key, &AgentMessage::Shadow(shadow), None)?;
        }
        let report = Report {
            window_start_ms: started,
            window_end_ms: ended,
            models,
            system: (self.system)(),
            prediction_log: LogWindow {
                appended_total: stats.appended,
                evicted_total: stats.evicted,
                disk_bytes: stats.disk_bytes,
                max_bytes: self.log_max_bytes,
            },
            outbox: self.outbox.stats(),
        };
        self.outbox.append(&self.key, &AgentMessage::Report(report), None)?;
        Ok(())
    }

    fn batch_predictions(&self, final_pass: bool) -> Result<(), crate::outbox::OutboxError> {
        let Some(log) = &self.log else { return Ok(()) };
        let mut cursor = self.outbox.prediction_cursor()?.unwrap_or(1);
        let settled_before = if final_pass { u64::MAX } else { now_ms().saturating_sub(SETTLE_MS) };
        let limit = self.config.batch_max_records.max(1);
        loop {
            let records = match log.read_from(cursor, limit) {
                Ok(records) => records,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the prediction log for telemetry");
                    return Ok(());
                }
            };
            let settled: Vec<PredictionRecord> =
                records.into_iter().take_while(|r| r.at_ms <= settled_before).collect();
            let Some(last) = settled.last().map(|r| r.id) else { return Ok(()) };
            let full = settled.len() == limit;
            // One batch per sampling policy present, so each batch names its sampling.
            let mut by_policy: BTreeMap<Sampling, Vec<PredictionRecord>> = BTreeMap::new();
            for record in settled {
                let sampling = self.sampling.get(&record.model).copied().unwrap_or_default();
                if sampling.keeps(record.id) {
                    by_policy.entry(sampling).or_default().push(record);
                }
            }
            let batches: Vec<_> = by_policy.into_iter().collect();
            if batches.is_empty() {
                // Nothing sampled: move the cursor alone.
                self.outbox.set_cursor(last + 1)?;
            }
            let count = batches.len();
            for (i, (sampling, records)) in batches.into_iter().enumerate() {
                let message = AgentMessage::Predictions(PredictionBatch { sampling, records });
                // The cursor moves with the last batch of this read.
                let moved = (i + 1 == count).then_some(last + 1);
                self.outbox.append(&self.key, &message, moved)?;
            }
            cursor = last + 1;
            if !full {
                return Ok(());
            }
        }
    }

    /// Runs until `stop` resolves: a tick every interval (the caller makes a final one when
    /// stopping), and the feedback spool's flushes.
    pub async fn run(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let spool = tokio::spawn(Arc::clone(&self).run_feedback_spool(stop.clone()));
        let mut interval = tokio::time::interval(Duration::from_secs(self.config.interval_secs.max(1)));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval.tick().await;
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = stop.wait_for(|s| *s) => break,
            }
            let me = Arc::clone(&self);
            match tokio::task::spawn_blocking(move || me.tick(false)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "cannot append the report to the outbox"),
                Err(e) => tracing::error!(error = %e, "report task failed"),
            }
        }
        let _ = spool.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_from_the_outputs_matches_the_logged_records() {
        use crate::config::RecordInputs;
        use crate::prediction_log::{RequestInfo, records_for_request};
        let probabilities = Tensor::from_shape(&[3, 2], &[0.9f32, 0.1, 0.2, 0.8, 0.55, 0.45]).unwrap();
        let labels = Tensor::from_shape(&[3], &[0i64, 1, 0]).unwrap();
        let outputs = [("label", &labels), ("probabilities", &probabilities)];
        let summary = RowSummary::from_outputs(&outputs, 3);
        assert_eq!(summary.rows, 3);
        assert_eq!(summary.labels, ["0", "1", "0"]);
        assert_eq!(summary.top_scores, [0.9, 0.8, 0.55]);
        // The records the log keeps carry the same labels and scores, row by row.
        let info = RequestInfo {
            model: "m",
            version: "1",
            slot: Slot::Primary,
            latency_us: 1,
            record_inputs: RecordInputs::Drop,
        };
        let records = records_for_request(1, 3, &info, &[], &outputs).unwrap();
        let logged: Vec<String> = records
            .iter()
            .map(|r| {
                let t = r.outputs.iter().find(|t| t.datatype == "INT64").unwrap();
                i64::from_le_bytes(t.data[..8].try_into().unwrap()).to_string()
            })
            .collect();
        assert_eq!(logged, summary.labels);
        assert_eq!(records.iter().filter_map(|r| r.top_score).collect::<Vec<_>>(), summary.top_scores);
        // A regressor's single float per row has no top score and no label.
        let values = Tensor::from_shape(&[2, 1], &[1.5f32, 2.5]).unwrap();
        let regression = RowSummary::from_outputs(&[("y", &values)], 2);
        assert_eq!((regression.rows, regression.top_scores.len(), regression.labels.len()), (2, 0, 0));
    }

    #[test]
    fn sampling_parses_and_keeps_one_in_n() {
        assert_eq!("all".parse::<Sampling>().unwrap(), Sampling::All);
        assert_eq!("1/1".parse::<Sampling>().unwrap(), Sampling::All);
        assert_eq!("1/10".parse::<Sampling>().unwrap(), Sampling::OneIn(10));
        assert!("1/0".parse::<Sampling>().is_err());
        assert!("half".parse::<Sampling>().unwrap_err().to_string().contains("1/N"));
        let kept = (1..=100).filter(|&id| Sampling::OneIn(10).keeps(id)).count();
        assert_eq!(kept, 10);
    }

    #[test]
    fn the_window_counts_and_resets() {
        let window = Window::new();
        let summary =
            RowSummary { rows: 2, top_scores: vec![0.9, 0.8], labels: vec!["1".into(), "0".into()] };
        window.observe("bc", "1.0.0", Slot::Primary, true, 120.0, Some(&summary));
        window.observe("bc", "1.0.0", Slot::Primary, false, 80.0, None);
        let (_, models, shadows) = window.take();
        assert!(shadows.is_empty());
        assert_eq!(models.len(), 1);
        let m = &models[0];
        assert_eq!((m.requests, m.errors, m.rows), (2, 1, 2));
        assert_eq!(m.latency_us.count(), 2);
        assert_eq!(m.label_counts.get("1"), Some(&1));
        assert!(window.take().1.is_empty());
        // A shadow run: counted as the candidate's traffic in slot `shadow`, and its agreement.
        let shadow = RowSummary { rows: 2, top_scores: vec![0.7, 0.8], labels: vec!["0".into(), "0".into()] };
        assert_eq!(agreement(&summary, &shadow), (2, 1));
        window.observe("bc", "2.0.0", Slot::Shadow, true, 90.0, Some(&shadow));
        window.compare("bc", "2.0.0", "1.0.0", 2, 1);
        let (_, models, shadows) = window.take();
        assert_eq!((models.len(), models[0].slot), (1, Slot::Shadow));
        assert_eq!(
            shadows,
            vec![ShadowWindow {
                model: "bc".into(),
                version: "2.0.0".into(),
                primary: "1.0.0".into(),
                compared: 2,
                agreed: 1
            }]
        );
        let unlabelled = RowSummary { rows: 1, top_scores: vec![0.5], labels: vec![] };
        assert_eq!(
            agreement(&unlabelled, &RowSummary { rows: 1, top_scores: vec![0.5], labels: vec![] }),
            (1, 1)
        );
    }
}
