//! Message bodies carried inside envelopes.
//!
//! Agent → coordinator (topic `…/report`): [`AgentMessage`] — a window [`Report`], a
//! [`PredictionBatch`], an [`Event`], the agent's [`ActualState`], a [`DriftReport`] or a
//! [`FeedbackBatch`].
//! Coordinator → agent: [`Ack`] (topic `…/ack`, and in ack files across an air gap) and
//! [`DesiredState`] (topic `…/desired`, retained).
//!
//! Bodies are `[BODY_FORMAT] ‖ postcard(message)`. Decoders refuse unknown formats, trailing
//! bytes and histograms that do not add up, and never panic (fuzz target `message_decode`).

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::records::PredictionRecord;
pub use super::vocab::{LoadState, Sampling, Slot, UnknownWord};
use crate::histogram::{HistogramError, LogHistogram};

/// The body format this build writes and reads.
pub const BODY_FORMAT: u8 = 1;

/// Most seq ranges one ack carries.
pub const MAX_ACK_RANGES: usize = 4096;

/// What an agent sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AgentMessage {
    Report(Report),
    Predictions(PredictionBatch),
    Event(Event),
    State(ActualState),
    /// Appended after the first four, so their bodies decode as before.
    Drift(DriftReport),
    Feedback(FeedbackBatch),
    /// Appended last: how often a shadow candidate agreed with the primary.
    Shadow(ShadowReport),
}

impl AgentMessage {
    /// Short name for logs and metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            AgentMessage::Report(_) => "report",
            AgentMessage::Predictions(_) => "predictions",
            AgentMessage::Event(_) => "event",
            AgentMessage::State(_) => "state",
            AgentMessage::Drift(_) => "drift",
            AgentMessage::Feedback(_) => "feedback",
            AgentMessage::Shadow(_) => "shadow",
        }
    }
}

/// One reporting window of an agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub window_start_ms: u64,
    pub window_end_ms: u64,
    /// One entry per (model, version, slot) that saw traffic or is loaded.
    pub models: Vec<ModelWindow>,
    pub system: SystemStats,
    pub prediction_log: LogWindow,
    pub outbox: OutboxStats,
}

/// Traffic of one model version in one window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelWindow {
    pub model: String,
    pub version: String,
    pub slot: Slot,
    /// Inference requests answered (successfully or not) in the window.
    pub requests: u64,
    /// Requests that failed (4xx after reaching the model, 5xx).
    pub errors: u64,
    /// Rows predicted (a batch request counts its batch size).
    pub rows: u64,
    /// Per-request time on the inference worker, in microseconds.
    pub latency_us: LogHistogram,
    /// Per-row top score (a classifier's confidence), where the model has one.
    pub top_score: LogHistogram,
    /// Per-row predicted label counts, where the model has an integer label output.
    pub label_counts: BTreeMap<String, u64>,
}

/// System metrics sampled at the end of the window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SystemStats {
    pub cpu_percent: f32,
    pub memory_used_bytes: u64,
    pub memory_total_bytes: u64,
    pub process_rss_bytes: u64,
    pub disk_free_bytes: u64,
    pub disk_total_bytes: u64,
}

/// The prediction log's state: totals since the agent started, and its disk use.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LogWindow {
    pub appended_total: u64,
    pub evicted_total: u64,
    pub disk_bytes: u64,
    pub max_bytes: u64,
}

/// The outbox backlog when the report was built.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OutboxStats {
    pub messages: u64,
    pub bytes: u64,
    pub oldest_age_ms: u64,
}

/// Sampled prediction records, in id order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PredictionBatch {
    /// The sampling that selected them, e.g. `all`, `1/10`.
    pub sampling: Sampling,
    pub records: Vec<PredictionRecord>,
}

/// Shadow candidates in one reporting window: each ran on copies of the requests its primary
/// answered, off the response path; `agreed` of `compared` rows gave the primary's prediction
/// (the same label; or, for a model without one, the same top score within 1e-6).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShadowReport {
    pub window_start_ms: u64,
    pub window_end_ms: u64,
    pub models: Vec<ShadowWindow>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShadowWindow {
    pub model: String,
    /// The shadow candidate's version, and the primary it was compared with.
    pub version: String,
    pub primary: String,
    pub compared: u64,
    pub agreed: u64,
}

/// Something that happened on the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub at_ms: u64,
    pub kind: EventKind,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    AgentStarted,
    AgentStopping,
    ModelReady,
    ModelFailed,
    LogEvicted,
    OutboxFull,
    /// A bundle-managed model switched version (import, rollback, desired state).
    ModelActivated,
    /// A bundle or desired state was refused; the message says why.
    ModelRefused,
    /// The agent's watchdog took a model back to its previous version on its own (the new one
    /// crashed the agent, or breached the error or latency limit of its policy). Sent by agents
    /// before 0.2; the message is for people only — [`EventKind::WatchdogReverted`] says what.
    WatchdogRolledBack,
    /// The watchdog took `model` from `from` back to `to` on its own, for `reason`.
    /// Appended last, so the variants before it decode as before.
    WatchdogReverted {
        model: String,
        from: String,
        to: String,
        reason: String,
    },
    /// A damaged store (`outbox`, `model_store`, `prediction_log`) was moved aside at start and
    /// the agent went on without it; `lost` says what went with it. Appended last.
    StorageQuarantined {
        store: String,
        lost: String,
    },
    /// How the agent keeps its stores on disk, sent at start: `on (chacha20-poly1305, key from
    /// …)` or `off`. Appended last.
    AtRest {
        encryption: String,
    },
    /// The desired state in force expired by the agent's trusted time (`stale` true): nothing
    /// newer arrived, so the control channel is cut or frozen; the agent serves on. Sent again
    /// with `stale` false when a fresh one arrives. Appended last.
    ControlStale {
        stale: bool,
        revision: u64,
        expired_at_ms: u64,
    },
    /// The coordinator's clock minus the device's, in ms, as the agent measured it from signed
    /// acks (positive: the device is behind); sent when first measured and when it moves by a
    /// minute. Appended last.
    ClockSkew {
        skew_ms: i64,
    },
    /// The device adopted trust root `version` ([`super::root`]); sent when it moves, so the
    /// coordinator can tell when every device has left an old root behind. Appended last.
    TrustRoot {
        version: u64,
    },
}

impl EventKind {
    /// The kind's name, without its fields.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::AgentStarted => "AgentStarted",
            EventKind::AgentStopping => "AgentStopping",
            EventKind::ModelReady => "ModelReady",
            EventKind::ModelFailed => "ModelFailed",
            EventKind::LogEvicted => "LogEvicted",
            EventKind::OutboxFull => "OutboxFull",
            EventKind::ModelActivated => "ModelActivated",
            EventKind::ModelRefused => "ModelRefused",
            EventKind::WatchdogRolledBack | EventKind::WatchdogReverted { .. } => "WatchdogRolledBack",
            EventKind::StorageQuarantined { .. } => "StorageQuarantined",
            EventKind::AtRest { .. } => "AtRest",
            EventKind::ControlStale { .. } => "ControlStale",
            EventKind::ClockSkew { .. } => "ClockSkew",
            EventKind::TrustRoot { .. } => "TrustRoot",
        }
    }
}

/// Drift of what each monitored model version saw recently, against its bundle's baseline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftReport {
    pub at_ms: u64,
    pub models: Vec<ModelDrift>,
}

/// One model version's drift window and verdicts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelDrift {
    pub model: String,
    pub version: String,
    /// Rows in the sliding window the verdicts were computed on.
    pub window_rows: u64,
    /// Rows this version has seen since it loaded.
    pub rows_seen: u64,
    /// One verdict per input feature with enough values in the window.
    pub features: Vec<FeatureDrift>,
    /// The verdict on the model's predictions (label or score), where it has one.
    pub prediction: Option<FeatureDrift>,
}

/// One feature's drift verdict (see `crate::drift::detect`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureDrift {
    pub feature: String,
    pub test: crate::drift::DriftTest,
    /// The p-value (`ks`, `chisquare`) or the distance.
    pub score: f64,
    pub threshold: f64,
    pub drifted: bool,
    pub reference_rows: u64,
    pub current_rows: u64,
    /// Window values that were missing (NaN or infinite), left out of the test.
    pub missing: u64,
}

/// Ground-truth labels joined to logged predictions (`POST /v1/feedback` on the agent), and
/// the labels that found no prediction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeedbackBatch {
    pub labels: Vec<LabelledPrediction>,
    /// Labels for ids the agent never issued.
    pub unknown: u64,
    /// Labels for predictions the log had already evicted (its disk or age budget).
    pub evicted: u64,
}

/// One prediction and the label that arrived for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelledPrediction {
    pub prediction_id: u64,
    pub model: String,
    pub version: String,
    pub slot: Slot,
    /// When the prediction was made / when its label arrived (unix ms).
    pub predicted_at_ms: u64,
    pub labelled_at_ms: u64,
    /// The model's label output for that row (`None` for a model without one).
    pub predicted: Option<i64>,
    pub label: i64,
}

/// What the agent runs right now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActualState {
    pub agent_version: String,
    pub models: Vec<ModelState>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelState {
    pub name: String,
    pub version: String,
    pub slot: Slot,
    pub state: LoadState,
    pub reason: Option<String>,
}

/// What a coordinator sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CoordinatorMessage {
    Ack(Ack),
    Desired(DesiredState),
}

/// End-to-end acknowledgement: the coordinator has durably stored these envelopes of
/// `device` (inclusive seq ranges). The agent deletes exactly these from its outbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub device: String,
    pub ranges: Vec<(u64, u64)>,
}

impl Ack {
    /// Builds an ack from seqs in any order, merging adjacent ones into ranges.
    pub fn from_seqs(device: &str, seqs: impl IntoIterator<Item = u64>) -> Ack {
        let mut seqs: Vec<u64> = seqs.into_iter().collect();
        seqs.sort_unstable();
        seqs.dedup();
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for seq in seqs {
            match ranges.last_mut() {
                Some((_, end)) if end.checked_add(1) == Some(seq) => *end = seq,
                _ => ranges.push((seq, seq)),
            }
        }
        Ack { device: device.to_owned(), ranges }
    }

    /// Whether `seq` is covered.
    pub fn covers(&self, seq: u64) -> bool {
        self.ranges.iter().any(|&(a, b)| a <= seq && seq <= b)
    }
}

/// The models a device should run (applied by the reconcile loop of the registry work).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredState {
    pub device: String,
    /// Strictly increasing per device.
    pub revision: u64,
    pub models: Vec<DesiredModel>,
    /// Unix ms after which this state no longer counts as current: the coordinator signs a new
    /// revision well before, so an agent still holding it past this time has been cut off from
    /// its control channel, or is being fed an old message (freeze). 0: never expires.
    pub expires_at_ms: u64,
    /// Trust root statements ([`super::root`], file form), oldest first: the chain from the
    /// first root to the coordinator's current one, so a device at any version can catch up.
    /// Each is checked by its own signatures — before the envelope, whose key the newest root
    /// may have just named.
    pub roots: Vec<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredModel {
    pub name: String,
    pub version: String,
    pub bundle_sha256: String,
    /// What the agent watches after switching to this version, and when it switches back to
    /// the version before on its own — with or without a coordinator to ask.
    #[serde(default)]
    pub watchdog: Option<WatchdogPolicy>,
    /// A second version beside this one (the primary): a canary taking a share of the
    /// requests, or a standby loaded and validated but serving nothing (blue-green).
    #[serde(default)]
    pub candidate: Option<Candidate>,
}

/// The candidate slot of a desired model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    pub version: String,
    pub bundle_sha256: String,
    pub mode: SlotMode,
}

/// What a candidate does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SlotMode {
    /// Answers `percent` of the requests that name no version (sticky by request id).
    Canary { percent: u8 },
    /// Loaded and validated, answers only requests that name its version.
    Standby,
    /// Runs on a copy of every request the primary answers, off the response path; its
    /// answers are compared with the primary's and never returned.
    Shadow,
}

impl SlotMode {
    /// The slot it serves in.
    pub fn slot(self) -> Slot {
        match self {
            SlotMode::Canary { .. } => Slot::Canary,
            SlotMode::Standby => Slot::Standby,
            SlotMode::Shadow => Slot::Shadow,
        }
    }
}

/// The agent-side rollback policy for a newly activated version (its "probation").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WatchdogPolicy {
    /// How long after the switch the version is watched.
    pub probation_secs: u32,
    /// Unclean exits of the agent while on probation that are tolerated; one more and the
    /// agent starts on the previous version.
    pub max_crashes: u32,
    /// Failed inferences (the model's or the agent's fault, not the client's) allowed, per
    /// thousand requests, once `min_requests` were served.
    pub max_error_permille: u32,
    /// Requests the new version must have served before the error and latency limits apply.
    pub min_requests: u32,
    /// p99 latency limit in ms once `min_requests` were served; 0 = none.
    pub max_p99_ms: u32,
}

impl Default for WatchdogPolicy {
    fn default() -> Self {
        WatchdogPolicy {
            probation_secs: 600,
            max_crashes: 2,
            max_error_permille: 50,
            min_requests: 50,
            max_p99_ms: 0,
        }
    }
}

impl WatchdogPolicy {
    /// Checks the values, naming the first bad one.
    pub fn validate(&self) -> Result<(), PolicyOutOfRange> {
        let bad = |field, allowed| Err(PolicyOutOfRange { field, allowed });
        if !(1..=7 * 86_400).contains(&self.probation_secs) {
            return bad("probation_secs", "between 1 and 604800");
        }
        if self.max_crashes > 100 {
            return bad("max_crashes", "at most 100");
        }
        if self.max_error_permille > 1000 {
            return bad("max_error_permille", "at most 1000");
        }
        if self.min_requests == 0 {
            return bad("min_requests", "at least 1");
        }
        Ok(())
    }
}

/// A watchdog setting outside what it may be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("watchdog.{field} must be {allowed}")]
pub struct PolicyOutOfRange {
    pub field: &'static str,
    pub allowed: &'static str,
}

/// Why a body cannot be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MessageError {
    #[error("message body is empty")]
    Empty,
    #[error("message body format {found} is not supported (this build reads {BODY_FORMAT})")]
    UnsupportedFormat { found: u8 },
    #[error("message body is malformed: {0}")]
    Malformed(String),
    #[error("message body is malformed: {0}")]
    UnknownWord(UnknownWord),
    #[error("message body has {0} bytes after the message")]
    TrailingBytes(usize),
    #[error("histogram in message: {0}")]
    Histogram(#[from] HistogramError),
    #[error("ack carries {0} ranges, more than {MAX_ACK_RANGES}")]
    TooManyRanges(usize),
    #[error("ack range {0}..={1} is reversed")]
    ReversedRange(u64, u64),
}

/// Encodes a message body with its format byte.
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    let bytes = vec![BODY_FORMAT];
    // Serializing owned plain data into a Vec cannot fail.
    postcard::to_extend(message, bytes).unwrap_or_else(|_| vec![BODY_FORMAT])
}

fn decode_raw<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, MessageError> {
    let (&format, rest) = bytes.split_first().ok_or(MessageError::Empty)?;
    if format != BODY_FORMAT {
        return Err(MessageError::UnsupportedFormat { found: format });
    }
    let _ = super::vocab::take_unknown();
    let (message, trailing) =
        postcard::take_from_bytes::<T>(rest).map_err(|e| match super::vocab::take_unknown() {
            Some(word) => MessageError::UnknownWord(word),
            None => MessageError::Malformed(e.to_string()),
        })?;
    if !trailing.is_empty() {
        return Err(MessageError::TrailingBytes(trailing.len()));
    }
    Ok(message)
}

/// The model names and versions `message` carries: what the coordinator keys its records by.
fn names(message: &AgentMessage) -> Vec<(&'static str, &str)> {
    const MODEL: &str = "model name";
    const VERSION: &str = "version";
    match message {
        AgentMessage::Report(r) => {
            r.models.iter().flat_map(|w| [(MODEL, w.model.as_str()), (VERSION, w.version.as_str())]).collect()
        }
        AgentMessage::Shadow(s) => s
            .models
            .iter()
            .flat_map(|w| {
                [(MODEL, w.model.as_str()), (VERSION, w.version.as_str()), (VERSION, w.primary.as_str())]
            })
            .collect(),
        AgentMessage::Drift(d) => {
            d.models.iter().flat_map(|m| [(MODEL, m.model.as_str()), (VERSION, m.version.as_str())]).collect()
        }
        AgentMessage::Feedback(f) => {
            f.labels.iter().flat_map(|l| [(MODEL, l.model.as_str()), (VERSION, l.version.as_str())]).collect()
        }
        AgentMessage::Predictions(p) => p
            .records
            .iter()
            .flat_map(|r| [(MODEL, r.model.as_str()), (VERSION, r.version.as_str())])
            .collect(),
        AgentMessage::State(s) => {
            s.models.iter().flat_map(|m| [(MODEL, m.name.as_str()), (VERSION, m.version.as_str())]).collect()
        }
        AgentMessage::Event(_) => Vec::new(),
    }
}

/// Decodes and checks an agent message from outside bytes. Every model name and version it
/// carries must pass the name grammar ([`crate::names`]): the coordinator keys its records by
/// them, and a NUL or a control character there would garble a sled key or fail a PostgreSQL
/// row for good.
pub fn decode_agent(bytes: &[u8]) -> Result<AgentMessage, MessageError> {
    let message: AgentMessage = decode_raw(bytes)?;
    if let Some(bad) =
        names(&message).into_iter().find_map(|(what, name)| crate::names::check(what, name).err())
    {
        return Err(MessageError::Malformed(bad.to_string()));
    }
    if let AgentMessage::Report(report) = &message {
        for window in &report.models {
            window.latency_us.validate()?;
            window.top_score.validate()?;
        }
    }
    if let AgentMessage::Shadow(shadow) = &message
        && let Some(bad) = shadow.models.iter().find(|w| w.agreed > w.compared)
    {
        return Err(MessageError::Malformed(format!(
            "shadow window of `{}` {} agrees on {} of {} rows",
            bad.model, bad.version, bad.agreed, bad.compared
        )));
    }
    if let AgentMessage::Drift(drift) = &message {
        let verdicts = drift.models.iter().flat_map(|m| m.features.iter().chain(&m.prediction));
        if let Some(bad) =
            verdicts.into_iter().find(|f| f.score.is_nan() || f.score < 0.0 || !f.threshold.is_finite())
        {
            return Err(MessageError::Malformed(format!(
                "drift verdict for `{}` has score {} and threshold {}",
                bad.feature, bad.score, bad.threshold
            )));
        }
    }
    Ok(message)
}

/// Decodes and checks a coordinator message from outside bytes.
pub fn decode_coordinator(bytes: &[u8]) -> Result<CoordinatorMessage, MessageError> {
    let message: CoordinatorMessage = decode_raw(bytes)?;
    if let CoordinatorMessage::Desired(state) = &message
        && state.roots.len() > super::root::MAX_CHAIN
    {
        return Err(MessageError::Malformed(format!(
            "desired state carries {} root statements, more than {}",
            state.roots.len(),
            super::root::MAX_CHAIN
        )));
    }
    if let CoordinatorMessage::Ack(ack) = &message {
        if ack.ranges.len() > MAX_ACK_RANGES {
            return Err(MessageError::TooManyRanges(ack.ranges.len()));
        }
        if let Some(&(a, b)) = ack.ranges.iter().find(|(a, b)| a > b) {
            return Err(MessageError::ReversedRange(a, b));
        }
    }
    Ok(message)
}

#[cfg(test)]
mod tests;
