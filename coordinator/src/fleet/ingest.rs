//! Telemetry ingest: verify an envelope against its device's enrolled key, store it once,
//! and say what to acknowledge. The same path serves live MQTT traffic and imported files.
//!
//! Checks, in order: the envelope decodes and has a supported format version; the device
//! named by the topic (or file) is enrolled; the envelope's key id is that device's key; the
//! Ed25519 signature verifies; then the body is stored by (device, seq). A second copy of a
//! stored envelope (retransmission or replay) is counted as a duplicate, not stored again,
//! and acknowledged again so the agent can let go of it.
//!
//! The link ingests a batch at a time ([`Ingest::ingest_many`]): every envelope is checked, the
//! verified ones are stored together (on PostgreSQL in one transaction), and the traffic, labels
//! and drift verdicts the batch brings go to monitoring afterwards, one transaction each, so a
//! roll-up bucket is written once per batch.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use outpost_shared::protocol::messages::{
    self, Ack, AgentMessage, CoordinatorMessage, DriftReport, EventKind,
};
use outpost_shared::protocol::{self, EnvelopeError, PublicKey};
use prometheus::IntCounterVec;

use crate::base::store::{Store, StoreError, now_ms};

use crate::fleet::ca::Authority;
use crate::fleet::devices::{Arrival, DeviceRecord, Devices, Stored};

/// Why an envelope was refused (also the `result` label of the ingest counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    Malformed,
    UnsupportedVersion,
    UnknownDevice,
    WrongKey,
    BadSignature,
    Conflict,
    /// The device was revoked (or deleted after a revocation).
    Revoked,
}

impl Rejection {
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Malformed => "malformed",
            Rejection::UnsupportedVersion => "unsupported_version",
            Rejection::UnknownDevice => "unknown_device",
            Rejection::WrongKey => "wrong_key",
            Rejection::BadSignature => "bad_signature",
            Rejection::Conflict => "conflict",
            Rejection::Revoked => "revoked",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Stored { seq: u64 },
    Duplicate { seq: u64 },
    Rejected { reason: Rejection, detail: String },
}

impl Outcome {
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Stored { .. } => "stored",
            Outcome::Duplicate { .. } => "duplicate",
            Outcome::Rejected { reason, .. } => reason.as_str(),
        }
    }

    /// The seq to acknowledge, if any.
    pub fn ack_seq(&self) -> Option<u64> {
        match self {
            Outcome::Stored { seq } | Outcome::Duplicate { seq } => Some(*seq),
            Outcome::Rejected { .. } => None,
        }
    }
}

/// Most envelopes ingested together: the broker link's batch, and a telemetry file's
/// ([`Ingest::ingest_from_file`]).
pub const BATCH: usize = 512;

/// Each device's sealed acks (device, wires), as [`Ingest::seal_acks_many`] answers them.
pub type SealedAcks = Vec<(String, Vec<Vec<u8>>)>;

/// How a verified envelope changes its device's record.
type Update<'a> = dyn Fn(&mut DeviceRecord) + Send + Sync + 'a;

/// An envelope after its checks ([`Ingest::verify`]).
enum Checked {
    /// Refused before storing: its outcome.
    Refused(Outcome),
    Verified(Verified),
}

/// A verified envelope: its seq, its device's labels, and its body (an unreadable one is
/// stored all the same).
struct Verified {
    seq: u64,
    labels: BTreeMap<String, String>,
    message: Result<AgentMessage, messages::MessageError>,
}

/// Traffic, labels and drift verdicts of a batch's envelopes, stored together after the envelopes
/// ([`Ingest::ingest_many`]): (device, its labels, what it sent).
#[derive(Default)]
struct Deferred {
    reports: Vec<(String, BTreeMap<String, String>, messages::Report)>,
    feedback: Vec<(String, BTreeMap<String, String>, messages::FeedbackBatch)>,
    drift: Vec<(String, DriftReport)>,
}

#[derive(Clone)]
pub struct Ingest {
    devices: Devices,
    labels: crate::monitoring::quality::Labels,
    drift_history: crate::monitoring::report::History,
    slos: crate::monitoring::slo::Slos,
    predictions: crate::monitoring::dataset::Predictions,
    hysteresis: DriftHysteresis,
    authority: Arc<Authority>,
    counter: IntCounterVec,
}

impl std::fmt::Debug for Ingest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingest").finish_non_exhaustive()
    }
}

/// How many drift windows in a row start sustained drift, and how many clean ones end it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DriftHysteresis {
    pub windows: u32,
    pub clear_windows: u32,
}

impl Default for DriftHysteresis {
    fn default() -> Self {
        DriftHysteresis { windows: 3, clear_windows: 3 }
    }
}

/// Folds one drift report into the device's streaks.
fn update_streaks(record: &mut DeviceRecord, report: &DriftReport, h: DriftHysteresis) {
    for model in &report.models {
        for verdict in model.features.iter().chain(&model.prediction) {
            let index = match record
                .drift_streaks
                .iter()
                .position(|s| s.model == model.model && s.feature == verdict.feature)
            {
                Some(i) => i,
                None => {
                    record.drift_streaks.push(crate::fleet::devices::DriftStreak {
                        model: model.model.clone(),
                        feature: verdict.feature.clone(),
                        drifted_run: 0,
                        clean_run: 0,
                        sustained: false,
                        since_ms: None,
                    });
                    record.drift_streaks.len() - 1
                }
            };
            let s = &mut record.drift_streaks[index];
            if verdict.drifted {
                s.drifted_run = s.drifted_run.saturating_add(1);
                s.clean_run = 0;
                if !s.sustained && s.drifted_run >= h.windows {
                    s.sustained = true;
                    s.since_ms = Some(report.at_ms);
                }
            } else {
                s.clean_run = s.clean_run.saturating_add(1);
                s.drifted_run = 0;
                if s.sustained && s.clean_run >= h.clear_windows {
                    s.sustained = false;
                    s.since_ms = None;
                }
            }
        }
    }
}

fn apply(message: &AgentMessage, seq: u64, record: &mut DeviceRecord, hysteresis: DriftHysteresis) {
    match message {
        AgentMessage::Report(report) => {
            record.counts.reports += 1;
            record.backlog = report.outbox.clone();
            record.last_windows = report
                .models
                .iter()
                .map(|w| crate::fleet::devices::WindowSummary {
                    model: w.model.clone(),
                    version: w.version.clone(),
                    requests: w.requests,
                    errors: w.errors,
                    at_ms: report.window_end_ms,
                })
                .collect();
        }
        AgentMessage::Predictions(batch) => {
            record.counts.prediction_batches += 1;
            record.counts.predictions += batch.records.len() as u64;
        }
        AgentMessage::Event(event) => {
            record.counts.events += 1;
            match &event.kind {
                EventKind::AtRest { encryption } => record.at_rest = Some(encryption.clone()),
                EventKind::ClockSkew { skew_ms } => record.clock_skew_ms = Some(*skew_ms),
                EventKind::TrustRoot { version } => record.root_version = Some(*version),
                EventKind::ControlStale { stale, revision, expired_at_ms } => {
                    record.control_stale = stale.then(|| crate::fleet::devices::StaleControl {
                        revision: *revision,
                        expired_at_ms: *expired_at_ms,
                    });
                }
                _ => {}
            }
            record.recent_events.push(event.clone());
            let excess = record.recent_events.len().saturating_sub(crate::fleet::devices::RECENT_EVENTS);
            record.recent_events.drain(..excess);
        }
        AgentMessage::State(state) => {
            record.counts.states += 1;
            // Sent ahead of the backlog: one older than the state held is history, not news.
            if record.state_seq.is_none_or(|held| seq > held) {
                record.state_seq = Some(seq);
                record.models = state.models.clone();
                record.agent_version = Some(state.agent_version.clone());
            }
        }
        AgentMessage::Drift(report) => {
            record.counts.drift_reports += 1;
            // The newest verdicts per model (every report stays in the envelope store).
            for model in &report.models {
                record.drift.retain(|d| d.model != model.model);
                record.drift.push(model.clone());
            }
            record.drift.sort_by(|a, b| a.model.cmp(&b.model));
            record.drift_at_ms = Some(report.at_ms);
            update_streaks(record, report, hysteresis);
        }
        // Kept in the `shadow` tree (below); the device record has nothing to update.
        AgentMessage::Shadow(_) => {}
        AgentMessage::Feedback(batch) => {
            record.counts.labels += batch.labels.len() as u64;
            record.counts.labels_unknown += batch.unknown;
            record.counts.labels_evicted += batch.evicted;
        }
    }
}

/// The rejection for an envelope that does not decode.
fn undecodable(error: &EnvelopeError) -> Outcome {
    let reason = match error {
        EnvelopeError::UnsupportedVersion { .. } => Rejection::UnsupportedVersion,
        _ => Rejection::Malformed,
    };
    Outcome::Rejected { reason, detail: error.to_string() }
}

impl Ingest {
    /// `counter` is `outpost_coordinator_ingest_total{result}`.
    pub fn new(
        store: Store,
        authority: Arc<Authority>,
        counter: IntCounterVec,
    ) -> Result<Ingest, StoreError> {
        let ingest = Ingest {
            devices: Devices::open(&store)?,
            slos: crate::monitoring::slo::Slos::open(&store)?,
            labels: crate::monitoring::quality::Labels::open(&store)?,
            drift_history: crate::monitoring::report::History::open(&store)?,
            predictions: crate::monitoring::dataset::Predictions::open(&store)?,
            hysteresis: DriftHysteresis::default(),
            authority,
            counter,
        };
        ingest.roll_up_by_label()?;
        Ok(ingest)
    }

    /// An ingest that keeps everything it writes — the fleet's records and monitoring's — in
    /// PostgreSQL (`pg`). What the benchmarks measure replicas sharing a PostgreSQL store with;
    /// `serve` does not start this way yet.
    pub fn with_postgres(
        pg: &crate::base::pg::store::PgStore,
        authority: Arc<Authority>,
        counter: IntCounterVec,
    ) -> Ingest {
        Ingest {
            devices: Devices::open_postgres(pg),
            slos: crate::monitoring::slo::Slos::open_postgres(pg),
            labels: crate::monitoring::quality::Labels::open_postgres(pg),
            drift_history: crate::monitoring::report::History::open_postgres(pg),
            predictions: crate::monitoring::dataset::Predictions::open_postgres(pg),
            hysteresis: DriftHysteresis::default(),
            authority,
            counter,
        }
    }

    fn roll_up_by_label(&self) -> Result<(), StoreError> {
        let (devices, slos, labels) = (&self.devices, &self.slos, &self.labels);
        // Before anything is stored: a data directory from before the roll-ups by device label
        // (or a restore) gets them from what it holds.
        slos.ensure_rolled_up_by_label(|| devices.labels_by_device())?;
        labels.ensure_rolled_up_by_label(|| devices.labels_by_device())
    }

    /// Sets how many drift windows start and end sustained drift (`alerts.drift_windows`).
    pub fn with_drift_hysteresis(mut self, hysteresis: DriftHysteresis) -> Ingest {
        self.hysteresis = hysteresis;
        self
    }

    /// The fleet's records this ingest writes to.
    pub fn devices(&self) -> &Devices {
        &self.devices
    }

    /// Ground-truth labels joined to predictions.
    pub fn labels(&self) -> &crate::monitoring::quality::Labels {
        &self.labels
    }

    /// Uploaded predictions, for export.
    pub fn predictions(&self) -> &crate::monitoring::dataset::Predictions {
        &self.predictions
    }

    /// Objectives and the traffic history they are judged on.
    pub fn slos(&self) -> &crate::monitoring::slo::Slos {
        &self.slos
    }

    /// Every drift verdict devices reported.
    pub fn drift_history(&self) -> &crate::monitoring::report::History {
        &self.drift_history
    }

    /// Verifies and records a presence that arrived on `device`'s presence topic: it must be
    /// signed by the device's key, from its newest session or a later one. Counted in the
    /// ingest counter as `presence`, or `presence_refused` (unsigned, foreign key, unknown or
    /// revoked device, replayed session) with a warning naming why.
    pub fn presence(&self, device: &str, wire: &[u8]) -> Result<(), StoreError> {
        let refused = |why: String| {
            self.counter.with_label_values(&["presence_refused"]).inc();
            tracing::warn!(device, why, "presence refused");
            Ok(())
        };
        let Some(record) = self.devices.get(device)?.filter(|r| r.revoked.is_none()) else {
            return refused("no such device, or it is revoked".into());
        };
        let Some(key) = hex::decode(&record.public_key).ok().and_then(|b| PublicKey::from_bytes(&b).ok())
        else {
            return refused("the device's stored key is unreadable".into());
        };
        let (session, presence) = match protocol::presence::open(wire, &key) {
            Ok(opened) => opened,
            Err(e) => return refused(e.to_string()),
        };
        match self.devices.set_presence(device, presence.as_str(), session)? {
            Some(true) => {
                self.counter.with_label_values(&["presence"]).inc();
                Ok(())
            }
            Some(false) => refused(format!("session {session} is older than the newest seen: a replay")),
            None => refused("no such device".into()),
        }
    }

    /// Verifies and stores one envelope that arrived for `device`.
    pub fn ingest(&self, device: &str, wire: &[u8]) -> Result<Outcome, StoreError> {
        self.ingest_many(&[(device, wire)])?.pop().ok_or_else(|| StoreError::Corrupt {
            key: format!("envelopes/{device}"),
            detail: "ingest answered no outcome".into(),
        })
    }

    /// Ingests `envelopes` (device named by the topic, wire) in order, each as
    /// [`Ingest::ingest`] does, and answers their outcomes in the same order: every envelope
    /// is verified, then the verified ones are stored together ([`Devices::store_envelopes`]:
    /// on PostgreSQL one transaction), then what they bring goes to monitoring — the traffic,
    /// labels and drift verdicts one transaction each, so a roll-up bucket that many of them
    /// go into (a model version's minute, a site's) is written once per batch, not once per
    /// window. After an error nothing of the batch is acknowledged, so its devices send it
    /// again and the resend stores what the first arrival did not.
    pub fn ingest_many(&self, envelopes: &[(&str, &[u8])]) -> Result<Vec<Outcome>, StoreError> {
        let ids: Vec<&str> = envelopes
            .iter()
            .map(|(d, _)| *d)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let records = self.devices.get_many(&ids)?;
        let mut checked = Vec::with_capacity(envelopes.len());
        for (device, wire) in envelopes {
            checked.push(self.verify(device, wire, records.get(*device))?);
        }
        let updates: Vec<Box<Update<'_>>> = checked
            .iter()
            .filter_map(|c| match c {
                Checked::Verified(v) => Some(v),
                Checked::Refused(_) => None,
            })
            .map(|v| {
                let update: Box<Update<'_>> = Box::new(move |r: &mut DeviceRecord| match &v.message {
                    Ok(message) => apply(message, v.seq, r, self.hysteresis),
                    Err(_) => r.counts.unreadable_bodies += 1,
                });
                update
            })
            .collect();
        let received_ms = now_ms();
        let arrivals: Vec<Arrival<'_>> = checked
            .iter()
            .zip(envelopes)
            .filter_map(|(c, (device, wire))| match c {
                Checked::Verified(v) => Some((v, device, wire)),
                Checked::Refused(_) => None,
            })
            .zip(&updates)
            .map(|((v, device, wire), update)| Arrival {
                device,
                seq: v.seq,
                wire,
                received_ms,
                update: &**update,
            })
            .collect();
        let mut stored = self.devices.store_envelopes(&arrivals)?.into_iter();
        drop(arrivals);
        drop(updates);
        let mut deferred = Deferred::default();
        let mut outcomes = Vec::with_capacity(envelopes.len());
        for (c, (device, _)) in checked.into_iter().zip(envelopes) {
            outcomes.push(match c {
                Checked::Refused(outcome) => outcome,
                Checked::Verified(v) => {
                    let Some(stored) = stored.next() else {
                        return Err(StoreError::Corrupt {
                            key: format!("envelopes/{device}"),
                            detail: "the store answered fewer outcomes than it was given envelopes".into(),
                        });
                    };
                    self.follow_up(device, v, stored, &mut deferred)?
                }
            });
        }
        self.store_deferred(&deferred)?;
        for ((device, _), outcome) in envelopes.iter().zip(&outcomes) {
            self.count(device, outcome);
        }
        Ok(outcomes)
    }

    /// Stores the traffic, labels and drift verdicts envelopes brought, one transaction each.
    fn store_deferred(&self, deferred: &Deferred) -> Result<(), StoreError> {
        let reports: Vec<_> = deferred.reports.iter().map(|(d, l, r)| (d.as_str(), l, r)).collect();
        self.slos.put_reports(&reports)?;
        let feedback: Vec<_> = deferred.feedback.iter().map(|(d, l, b)| (d.as_str(), l, b)).collect();
        self.labels.put_many(&feedback)?;
        let drift: Vec<_> = deferred.drift.iter().map(|(d, r)| (d.as_str(), r)).collect();
        self.drift_history.put_many(&drift)
    }

    /// Counts an outcome (`outpost_coordinator_ingest_total{result}`), and logs a refusal.
    fn count(&self, device: &str, outcome: &Outcome) {
        self.counter.with_label_values(&[outcome.label()]).inc();
        if let Outcome::Rejected { reason, detail } = outcome {
            tracing::warn!(device, reason = reason.as_str(), detail, "envelope rejected");
        }
    }

    /// Checks an envelope for `device` (its `record`, if enrolled): it decodes, the device is
    /// enrolled and not revoked, the envelope is signed with its key; then its body is decoded
    /// (an unreadable body is still stored, counted as such).
    fn verify(
        &self,
        device: &str,
        wire: &[u8],
        record: Option<&DeviceRecord>,
    ) -> Result<Checked, StoreError> {
        let rejected = |reason, detail: String| Ok(Checked::Refused(Outcome::Rejected { reason, detail }));
        let envelope = match protocol::decode(wire) {
            Ok(envelope) => envelope,
            Err(e) => return Ok(Checked::Refused(undecodable(&e))),
        };
        // A revocation marks its device's record in the same transaction; a deleted device has
        // no record left, only its revocation (one lookup, for a device that is not enrolled).
        let revoked = match record {
            Some(record) => record.revoked.clone(),
            None => self.devices.revocation(device)?,
        };
        if let Some(revoked) = revoked {
            let detail = format!("device `{device}` was revoked by {} at {} ms", revoked.by, revoked.at_ms);
            return rejected(Rejection::Revoked, detail);
        }
        let Some(record) = record else {
            return rejected(Rejection::UnknownDevice, format!("device `{device}` is not enrolled"));
        };
        if envelope.key_id != record.key_id {
            return rejected(
                Rejection::WrongKey,
                format!(
                    "signed with key `{}`, device `{device}` has key `{}`",
                    envelope.key_id, record.key_id
                ),
            );
        }
        let key = hex::decode(&record.public_key).ok().and_then(|b| PublicKey::from_bytes(&b).ok());
        let opened = match protocol::open(wire, |_| key) {
            Ok(opened) => opened,
            Err(e) => return rejected(Rejection::BadSignature, e.to_string()),
        };
        let message = messages::decode_agent(&opened.body);
        if let Err(e) = &message {
            tracing::warn!(device, seq = opened.seq, error = %e, "signed envelope with an unreadable body: stored as is");
        }
        Ok(Checked::Verified(Verified { seq: opened.seq, labels: record.labels.clone(), message }))
    }

    /// What follows storing a verified envelope: labels, drift verdicts, traffic, shadow windows
    /// and predictions go to their own trees, on the first arrival and again on a resend
    /// (upsert), so an interruption between the two writes loses none (traffic, labels and drift
    /// verdicts wait for the rest of the batch in `deferred`); and its outcome.
    fn follow_up(
        &self,
        device: &str,
        verified: Verified,
        stored: Stored,
        deferred: &mut Deferred,
    ) -> Result<Outcome, StoreError> {
        let Verified { seq, labels, message } = verified;
        match (message, &stored) {
            (Ok(AgentMessage::Feedback(batch)), Stored::New | Stored::Duplicate) => {
                deferred.feedback.push((device.to_owned(), labels, batch))
            }
            (Ok(AgentMessage::Drift(report)), Stored::New | Stored::Duplicate) => {
                deferred.drift.push((device.to_owned(), report))
            }
            (Ok(AgentMessage::Report(report)), Stored::New | Stored::Duplicate) => {
                deferred.reports.push((device.to_owned(), labels, report))
            }
            (Ok(AgentMessage::Shadow(report)), Stored::New | Stored::Duplicate) => {
                self.slos.put_shadow(device, &report)?
            }
            (Ok(AgentMessage::Predictions(batch)), Stored::New | Stored::Duplicate) => {
                self.predictions.put(device, &batch)?
            }
            // A device that holds a trust root checks control messages against its online keys:
            // one enrolled when a single key did both roles stops getting release-key signatures.
            (Ok(AgentMessage::Event(event)), Stored::New | Stored::Duplicate) if matches!(event.kind, EventKind::TrustRoot { version } if version > 0) => {
                self.devices.clear_legacy_control(device)?
            }
            _ => {}
        }
        Ok(match stored {
            Stored::New => Outcome::Stored { seq },
            Stored::Duplicate => Outcome::Duplicate { seq },
            Stored::Conflict => Outcome::Rejected {
                reason: Rejection::Conflict,
                detail: format!("seq {seq} was stored before with different bytes"),
            },
        })
    }

    /// Ingests envelopes read from a file (an air-gapped device's telemetry), each from the
    /// device enrolled with its key, as [`Ingest::ingest_many`] does, [`BATCH`] at a time;
    /// answers (device, outcome) for each, in order.
    pub fn ingest_from_file(&self, wires: &[Vec<u8>]) -> Result<Vec<(Option<String>, Outcome)>, StoreError> {
        let mut out = Vec::with_capacity(wires.len());
        let mut by_key: HashMap<String, Option<String>> = HashMap::new();
        for chunk in wires.chunks(BATCH) {
            let mut outcomes: Vec<Option<(Option<String>, Outcome)>> = vec![None; chunk.len()];
            let mut found: Vec<(usize, String)> = Vec::new();
            for (i, wire) in chunk.iter().enumerate() {
                let refused = match protocol::decode(wire) {
                    Ok(envelope) => {
                        let device = match by_key.get(&envelope.key_id) {
                            Some(device) => device.clone(),
                            None => {
                                let device = self.devices.get_by_key(&envelope.key_id)?.map(|r| r.id);
                                by_key.insert(envelope.key_id.clone(), device.clone());
                                device
                            }
                        };
                        if let Some(device) = device {
                            found.push((i, device));
                            continue;
                        }
                        Outcome::Rejected {
                            reason: Rejection::UnknownDevice,
                            detail: format!("no device is enrolled with key `{}`", envelope.key_id),
                        }
                    }
                    Err(e) => undecodable(&e),
                };
                self.counter.with_label_values(&[refused.label()]).inc();
                outcomes[i] = Some((None, refused));
            }
            let batch: Vec<(&str, &[u8])> =
                found.iter().map(|(i, d)| (d.as_str(), chunk[*i].as_slice())).collect();
            for ((i, device), outcome) in found.iter().zip(self.ingest_many(&batch)?) {
                outcomes[*i] = Some((Some(device.clone()), outcome));
            }
            out.extend(outcomes.into_iter().flatten());
        }
        Ok(out)
    }

    /// Signed acks for `seqs` of `device` (call only after [`Store::flush`]); more than one
    /// when the seqs form more ranges than one ack may carry.
    pub fn seal_acks(
        &self,
        device: &str,
        seqs: impl IntoIterator<Item = u64>,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut sealed = self.seal_acks_many(vec![(device.to_owned(), seqs.into_iter().collect())])?;
        Ok(sealed.pop().map(|(_, wires)| wires).unwrap_or_default())
    }

    /// [`Ingest::seal_acks`] for a batch's devices (each once): their key roles read and their
    /// outgoing seqs reserved together (on PostgreSQL a query each for the whole batch, not one
    /// per device). Answers each device's acks, in the order given.
    pub fn seal_acks_many(&self, acks: Vec<(String, Vec<u64>)>) -> Result<SealedAcks, StoreError> {
        let messages: Vec<(String, Vec<Ack>)> = acks
            .into_iter()
            .map(|(device, seqs)| {
                let all = Ack::from_seqs(&device, seqs);
                let acks = all
                    .ranges
                    .chunks(messages::MAX_ACK_RANGES)
                    .map(|ranges| Ack { device: device.clone(), ranges: ranges.to_vec() })
                    .collect();
                (device, acks)
            })
            .collect();
        let ids: Vec<&str> = messages.iter().map(|(d, _)| d.as_str()).collect();
        let legacy = self.devices.control_by_release_keys(&ids)?;
        let wanted: Vec<(&str, u64)> =
            messages.iter().map(|(d, acks)| (d.as_str(), acks.len() as u64)).collect();
        let last = self.devices.reserve_outgoing_seqs(&wanted)?;
        let mut out = Vec::with_capacity(messages.len());
        for (device, acks) in messages {
            let key = self.authority.control_key(legacy.contains(&device));
            let Some(&last) = last.get(&device) else {
                return Err(StoreError::Corrupt {
                    key: format!("ack seq of {device}"),
                    detail: "not reserved".into(),
                });
            };
            let first = last + 1 - acks.len() as u64;
            let mut wires = Vec::with_capacity(acks.len());
            for (seq, ack) in (first..).zip(acks) {
                let body = messages::encode(&CoordinatorMessage::Ack(ack));
                let wire = protocol::seal(&key, seq, now_ms(), &body).map_err(|e| StoreError::Corrupt {
                    key: format!("ack for {device}"),
                    detail: e.to_string(),
                })?;
                wires.push(wire);
            }
            out.push((device, wires));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
