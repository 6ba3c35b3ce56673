//! What the fleet's repository stores per device and token, as records ([`DeviceRecord`],
//! [`TokenRecord`] and their parts), apart from how [`super::Devices`] keeps them.

use std::collections::BTreeMap;

use outpost_shared::protocol::messages::{Event, ModelState, OutboxStats};
use serde::{Deserialize, Serialize};

use crate::base::store::now_ms;

/// An enrolment token as stored (by hash).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub labels: BTreeMap<String, String>,
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
    pub used_by: Option<String>,
    pub used_at_ms: Option<u64>,
}

/// The fields of a [`DeviceRecord`] that say whether a device is alive and what it runs,
/// decoded from the same stored JSON (the rest is skipped).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct DeviceGlance {
    #[serde(default)]
    pub last_seen_ms: Option<u64>,
    #[serde(default)]
    pub presence: Option<String>,
    #[serde(default)]
    pub presence_at_ms: Option<u64>,
    #[serde(default)]
    pub models: Vec<ModelState>,
    #[serde(default)]
    pub(super) revoked: Option<serde::de::IgnoredAny>,
}

/// A device's labels and the windows of its newest report, decoded from the stored JSON (the
/// rest is skipped): what breakdowns by device label read.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct LabelGlance {
    pub id: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub last_windows: Vec<WindowSummary>,
    #[serde(default)]
    revoked: Option<serde::de::IgnoredAny>,
}

impl LabelGlance {
    pub fn is_revoked(&self) -> bool {
        self.revoked.is_some()
    }
}

/// What the coordinator knows about a device.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceRecord {
    pub id: String,
    pub key_id: String,
    /// Ed25519 public key, hex.
    pub public_key: String,
    pub labels: BTreeMap<String, String>,
    pub enrolled_at_ms: u64,
    /// When the last valid envelope arrived.
    pub last_seen_ms: Option<u64>,
    /// What the device's signed presence said last (`online`/`offline`), the agent session it
    /// came from (a presence from an older session is a replay), and when it arrived.
    pub presence: Option<String>,
    #[serde(default)]
    pub presence_session: Option<u64>,
    #[serde(default)]
    pub presence_at_ms: Option<u64>,
    pub highest_seq: Option<u64>,
    /// Envelopes up to this seq were removed by retention ([`Devices::prune_envelopes`]); one at
    /// or below it counts as stored.
    #[serde(default)]
    pub pruned_through_seq: Option<u64>,
    pub counts: Counts,
    pub backlog: OutboxStats,
    pub models: Vec<ModelState>,
    /// The seq of the actual state `models` came from. Agents send a new actual state ahead of
    /// their telemetry backlog, and a lost one is resent later, so an older state can arrive
    /// after a newer one: it is counted and stored, and does not replace the newer.
    #[serde(default)]
    pub state_seq: Option<u64>,
    pub agent_version: Option<String>,
    /// The device's newest events (at most [`RECENT_EVENTS`]): starts, swaps, refusals and
    /// why, evictions.
    #[serde(default)]
    pub recent_events: Vec<Event>,
    /// The newest drift verdicts per model, and when the agent computed them.
    #[serde(default)]
    pub drift: Vec<outpost_shared::protocol::messages::ModelDrift>,
    #[serde(default)]
    pub drift_at_ms: Option<u64>,
    /// Per (model, feature): how many drift windows in a row drifted / were clean, and whether
    /// drift counts as sustained (see `alerts`: it needs `drift_windows` in a row to start and
    /// `drift_clear_windows` clean ones to end, so one noisy window neither pages nor clears).
    #[serde(default)]
    pub drift_streaks: Vec<DriftStreak>,
    /// Traffic per model version in the device's newest report window.
    #[serde(default)]
    pub last_windows: Vec<WindowSummary>,
    /// The serial number (hex) of the client certificate enrolment issued it.
    #[serde(default)]
    pub cert_serial: Option<String>,
    /// How the agent keeps its stores on disk, as it said at its last start: `on (cipher, key
    /// from …)` or `off`.
    #[serde(default)]
    pub at_rest: Option<String>,
    /// Set while the agent says its desired state expired with nothing newer arriving (its
    /// control channel is cut or frozen): the revision it holds and when that expired.
    #[serde(default)]
    pub control_stale: Option<StaleControl>,
    /// The coordinator's clock minus the device's, in ms, as the agent last measured it.
    #[serde(default)]
    pub clock_skew_ms: Option<i64>,
    /// The trust root version the device last said it holds (None: it has not said).
    #[serde(default)]
    pub root_version: Option<u64>,
    /// When it was revoked and by whom; a revoked device's telemetry is refused.
    #[serde(default)]
    pub revoked: Option<Revocation>,
}

/// A device's revocation, kept for good (the revocation list is built from these).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    pub device_id: String,
    pub key_id: String,
    /// Its client certificate's serial (hex); devices enrolled before serials were kept have none.
    pub cert_serial: Option<String>,
    pub at_ms: u64,
    pub by: String,
    /// When it was also deleted from the fleet (its record gone; the revocation stays).
    pub deleted_at_ms: Option<u64>,
}

/// Consecutive drift verdicts of one feature of one model on one device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriftStreak {
    pub model: String,
    pub feature: String,
    pub drifted_run: u32,
    pub clean_run: u32,
    pub sustained: bool,
    /// When drift became sustained (unix ms).
    pub since_ms: Option<u64>,
}

/// One model version's traffic in a report window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowSummary {
    pub model: String,
    pub version: String,
    pub requests: u64,
    pub errors: u64,
    /// The window's end (unix ms, the device's clock).
    pub at_ms: u64,
}

/// Events kept per device in its record (all of them stay in the envelope store).
pub const RECENT_EVENTS: usize = 20;

/// What a device said when its control channel went stale.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaleControl {
    pub revision: u64,
    pub expired_at_ms: u64,
}

impl DeviceRecord {
    /// A device as enrolment creates it: nothing seen yet.
    pub fn new(id: &str, public_key: &[u8; 32], labels: BTreeMap<String, String>) -> DeviceRecord {
        DeviceRecord {
            id: id.to_owned(),
            key_id: outpost_shared::protocol::keys::key_id_of(public_key),
            public_key: hex::encode(public_key),
            labels,
            enrolled_at_ms: now_ms(),
            last_seen_ms: None,
            presence: None,
            presence_session: None,
            presence_at_ms: None,
            highest_seq: None,
            pruned_through_seq: None,
            counts: Counts::default(),
            backlog: OutboxStats::default(),
            models: Vec::new(),
            state_seq: None,
            agent_version: None,
            recent_events: Vec::new(),
            drift: Vec::new(),
            drift_at_ms: None,
            drift_streaks: Vec::new(),
            last_windows: Vec::new(),
            cert_serial: None,
            revoked: None,
            at_rest: None,
            control_stale: None,
            clock_skew_ms: None,
            root_version: None,
        }
    }
}

/// Envelopes stored per kind, and how many arrived again.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub envelopes: u64,
    pub reports: u64,
    pub prediction_batches: u64,
    pub predictions: u64,
    pub events: u64,
    pub states: u64,
    #[serde(default)]
    pub drift_reports: u64,
    /// Ground-truth labels joined to this device's predictions, and labels that found none
    /// (an id it never issued, a prediction its log had evicted).
    #[serde(default)]
    pub labels: u64,
    #[serde(default)]
    pub labels_unknown: u64,
    #[serde(default)]
    pub labels_evicted: u64,
    pub unreadable_bodies: u64,
    pub duplicates: u64,
    /// Envelopes removed by retention (`envelopes` still counts them).
    #[serde(default)]
    pub pruned_envelopes: u64,
}
