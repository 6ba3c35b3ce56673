//! The coordinator's desired state, applied: verify → fetch → install → activate.
//!
//! A desired state arrives retained on `outpost/v1/{device}/desired`. It is applied only if
//! its envelope verifies against an online key of the device's trust root ([`crate::trust_root`];
//! the root statements the state carries are applied first, by their own signatures), it names this device,
//! and its revision is newer than the last one applied (kept in `<data_dir>/models/desired.json`,
//! so a replayed or reordered message is refused even after a restart). Each model it names is
//! then made active in the local store: a bundle not on disk yet is downloaded from the
//! coordinator's artifact endpoint (HTTPS with the CA from enrolment; plain HTTP only to
//! loopback) in `download_chunk_bytes` pieces with HTTP `Range`, appended
//! to `<data_dir>/models/downloads/<sha256>.part` (with encryption at rest on, as sealed frames
//! in `<sha256>.sealed-part`: no model byte reaches the disk in the clear) — so a download cut
//! by a crash, a reboot or a dropped link resumes where it stopped — then checked against the sha256 the signed desired
//! state names, and installed only if it is signed by the root's release keys (to its threshold)
//! ([`ModelStore::install`]). The store's reconciler swaps the served version. Every refusal is
//! logged and reported as an event; the version serving stays.
//!
//! Freeze protection: a desired state carries an expiry. One already expired by the agent's
//! trusted time ([`crate::trusted_time`]: the coordinator's signed time, never the device's
//! clock) is refused; and when the state in force expires with nothing newer arriving — the
//! coordinator renews every state well before — the agent reports `stale-control`
//! (`outpost_agent_control_stale`, a WARN, a `ControlStale` event) and serves on.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use outpost_shared::protocol::messages::{self, CoordinatorMessage, DesiredState, EventKind};
use outpost_shared::protocol::{self};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use crate::at_rest::{AtRest, Store};
use crate::model_store::{ModelStore, StoredCandidate};
use crate::telemetry::Reporter;
use crate::trust_root::Trust;

/// How bundles are fetched.
#[derive(Debug, Clone)]
pub struct Fetch {
    /// The coordinator API, e.g. `http://127.0.0.1:7400`.
    pub api_url: String,
    pub chunk_bytes: u64,
    /// 0 = unlimited.
    pub max_bytes_per_sec: u64,
    /// The CA that signed the API's certificate (HTTPS).
    pub ca_pem: Option<Vec<u8>>,
    /// This device's client certificate and key (PEM): how it proves itself for downloads.
    pub client_tls: Option<(Vec<u8>, Vec<u8>)>,
    /// A folder carried from `outpostctl device export-desired` (air gap): bundles are taken
    /// from `<dir>/<sha256>.bundle` instead of downloaded.
    pub local_dir: Option<PathBuf>,
}

impl Fetch {
    /// No coordinator to download from: bundles only from `local_dir` (an air-gap folder), if any.
    pub fn offline(local_dir: Option<PathBuf>) -> Fetch {
        Fetch {
            api_url: String::new(),
            chunk_bytes: 1,
            max_bytes_per_sec: 0,
            ca_pem: None,
            client_tls: None,
            local_dir,
        }
    }
}

/// Applies desired states as they arrive.
pub struct DesiredApplier {
    pub device_id: String,
    /// Who may sign desired states (online role) and bundles (release role).
    pub trust: Arc<Trust>,
    pub store: ModelStore,
    pub fetch: Fetch,
    pub reporter: Option<Arc<Reporter>>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The coordinator's signed time (acks and desired states move it forward).
    pub clock: Arc<crate::trusted_time::TrustedClock>,
}

/// The last applied revision, and when it stops being current (0: never).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Applied {
    revision: u64,
    #[serde(default)]
    expires_at_ms: u64,
}

/// How often the agent checks whether the state in force has expired.
const FRESHNESS_EVERY: Duration = Duration::from_secs(5);

/// Why a desired state was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DesiredError {
    #[error("desired state does not verify: {0}")]
    Signature(String),
    #[error("desired state refused for the trust root it carries: {0}")]
    Root(String),
    #[error("desired state is for device `{0}`, not this one")]
    OtherDevice(String),
    #[error("desired state revision {found} is not newer than the applied revision {applied}")]
    Stale { found: u64, applied: u64 },
    #[error(
        "desired state revision {revision} expired at {expired_at_ms} (unix ms), before the coordinator's signed time \
         {now_ms}: an old message (freeze or replay), refused"
    )]
    Expired { revision: u64, expired_at_ms: u64, now_ms: u64 },
    #[error("{0}")]
    Refused(String),
    /// Worth retrying (the coordinator is unreachable, a download broke off).
    #[error("{0}")]
    Transient(String),
}

impl DesiredApplier {
    fn applied_path(&self) -> PathBuf {
        self.store.dir().join("desired.json")
    }

    fn applied(&self) -> u64 {
        self.applied_record().revision
    }

    fn applied_record(&self) -> Applied {
        std::fs::read(self.applied_path())
            .ok()
            .and_then(|b| serde_json::from_slice::<Applied>(&b).ok())
            .unwrap_or_default()
    }

    fn set_applied(&self, revision: u64, expires_at_ms: u64) -> Result<(), DesiredError> {
        let bytes = serde_json::to_vec(&Applied { revision, expires_at_ms }).unwrap_or_default();
        outpost_shared::files::write_atomic(&self.applied_path(), &bytes)
            .map_err(|e| DesiredError::Refused(format!("cannot record the applied revision: {e}")))
    }

    /// Verifies a raw desired-state message. The trust root statements it carries come first:
    /// each is checked by its own signatures (never by the envelope's), and the newest may name
    /// the online key that sealed the envelope.
    pub fn open(&self, payload: &[u8]) -> Result<DesiredState, DesiredError> {
        let before = self.trust.version();
        if let Ok(envelope) = protocol::decode(payload)
            && let Ok(CoordinatorMessage::Desired(unverified)) = messages::decode_coordinator(&envelope.body)
        {
            self.trust.update(&unverified.roots).map_err(|e| DesiredError::Root(e.to_string()))?;
        }
        // The message that brings a device its first root was sealed with the key it trusted
        // until then (its enrolment key), which vouched for that root.
        let opened = protocol::open(payload, |id| {
            self.trust
                .control_key(id)
                .or_else(|| if before == 0 { self.trust.enrolled_key(id) } else { None })
        })
        .map_err(|e| DesiredError::Signature(e.to_string()))?;
        let state = match messages::decode_coordinator(&opened.body) {
            Ok(CoordinatorMessage::Desired(state)) => state,
            Ok(_) => {
                return Err(DesiredError::Signature(
                    "the message on the desired topic is not a desired state".into(),
                ));
            }
            Err(e) => return Err(DesiredError::Signature(e.to_string())),
        };
        if state.device != self.device_id {
            return Err(DesiredError::OtherDevice(state.device));
        }
        self.clock.observe(opened.sent_at_ms);
        if let Some(now_ms) = self.clock.now_ms()
            && state.expires_at_ms != 0
            && state.expires_at_ms <= now_ms
        {
            return Err(DesiredError::Expired {
                revision: state.revision,
                expired_at_ms: state.expires_at_ms,
                now_ms,
            });
        }
        let applied = self.applied();
        if state.revision <= applied {
            return Err(DesiredError::Stale { found: state.revision, applied });
        }
        Ok(state)
    }

    /// Applies a verified state (blocking: downloads and disk writes).
    pub fn apply(&self, state: &DesiredState) -> Result<Vec<String>, DesiredError> {
        let mut done = Vec::new();
        for model in &state.models {
            let current = self.store.state().map_err(|e| DesiredError::Refused(e.to_string()))?;
            let stored = current.models.get(&model.name);
            if stored.map(|m| m.active.as_str()) != Some(model.version.as_str()) {
                self.ensure_installed(&model.name, &model.version, &model.bundle_sha256)?;
                self.store
                    .activate_watched(
                        &model.name,
                        &model.version,
                        model.watchdog,
                        outpost_shared::endpoints::now_ms(),
                    )
                    .map_err(|e| DesiredError::Refused(e.to_string()))?;
                done.push(format!("{}@{}", model.name, model.version));
            }
            let want = match &model.candidate {
                Some(c) => {
                    self.ensure_installed(&model.name, &c.version, &c.bundle_sha256)?;
                    Some(StoredCandidate { version: c.version.clone(), mode: c.mode })
                }
                None => None,
            };
            let had = self
                .store
                .state()
                .ok()
                .and_then(|s| s.models.get(&model.name).and_then(|m| m.candidate.clone()));
            if had != want {
                self.store
                    .set_candidate(&model.name, want.clone())
                    .map_err(|e| DesiredError::Refused(e.to_string()))?;
                done.push(match want {
                    Some(c) => format!("{}@{} as {}", model.name, c.version, c.mode.slot()),
                    None => format!("{} candidate removed", model.name),
                });
            }
        }
        self.set_applied(state.revision, state.expires_at_ms)?;
        Ok(done)
    }

    /// Freeze detection: whether the state in force has expired by the trusted time, said once
    /// per change (metric, log, event); keeps the trusted time on disk as it goes.
    async fn check_freshness(self: &Arc<Self>, was_stale: bool) -> bool {
        let this = Arc::clone(self);
        let applied = tokio::task::spawn_blocking(move || {
            if let Err(e) = this.clock.persist() {
                tracing::warn!(error = %e, "cannot keep the trusted time on disk");
            }
            this.applied_record()
        })
        .await
        .unwrap_or_default();
        let now = self.clock.now_ms();
        let stale = applied.expires_at_ms != 0 && now.is_some_and(|now| now >= applied.expires_at_ms);
        if stale == was_stale {
            return stale;
        }
        self.metrics.control_stale.set(i64::from(stale));
        let message = if stale {
            let message = format!(
                "stale-control: desired state revision {} expired at {} (unix ms, by the coordinator's signed time) \
                 and nothing newer arrived; the control channel is cut or frozen — serving what is installed",
                applied.revision, applied.expires_at_ms
            );
            tracing::warn!(revision = applied.revision, expired_at_ms = applied.expires_at_ms, "{message}");
            message
        } else {
            let message = format!(
                "control channel fresh again: desired state revision {} is current",
                applied.revision
            );
            tracing::info!(revision = applied.revision, "{message}");
            message
        };
        let kind = EventKind::ControlStale {
            stale,
            revision: applied.revision,
            expired_at_ms: applied.expires_at_ms,
        };
        self.event(kind, message).await;
        stale
    }

    /// Downloads and installs `name@version` unless it is on disk.
    fn ensure_installed(&self, name: &str, version: &str, sha256: &str) -> Result<(), DesiredError> {
        // A desired state naming a model outside the grammar is refused before any download.
        let path = self
            .store
            .bundle_path(name, version)
            .map_err(|e| DesiredError::Refused(format!("{name}@{version} refused: {e}")))?;
        if path.is_file() {
            return Ok(());
        }
        let bytes = match &self.fetch.local_dir {
            Some(dir) => local_bundle(dir, sha256)?,
            None => self.download(sha256)?,
        };
        let manifest = self
            .store
            .install(&bytes, &self.trust.release())
            .map_err(|e| DesiredError::Refused(format!("{name}@{version} refused: {e}")))?;
        if let Some(e) = &manifest.encryption
            && !self.trust.bundle_keys().iter().any(|k| outpost_shared::bundle::bundle_key_id(k) == e.key_id)
        {
            return Err(DesiredError::Refused(format!(
                "{name}@{version} is encrypted to bundle key {}, which this device does not hold (registry.bundle_keys)",
                e.key_id
            )));
        }
        if manifest.name != name || manifest.version != version {
            return Err(DesiredError::Refused(format!(
                "artifact {sha256} holds {}, not {name}@{version}",
                manifest.id()
            )));
        }
        let _ = std::fs::remove_file(self.part_path(sha256));
        Ok(())
    }

    fn pending_path(&self) -> PathBuf {
        self.store.dir().join("desired-pending.bin")
    }

    /// Keeps a verified state that is not applied yet, so a restart picks it up again even
    /// if the broker does not redeliver it.
    fn keep_pending(&self, payload: &[u8]) {
        if let Err(e) = outpost_shared::files::write_atomic(&self.pending_path(), payload) {
            tracing::warn!(error = %e, "cannot keep the pending desired state on disk");
        }
    }

    fn drop_pending(&self) {
        let _ = std::fs::remove_file(self.pending_path());
    }

    fn part_path(&self, sha256: &str) -> PathBuf {
        let suffix = if self.store.at_rest().is_on() { "sealed-part" } else { "part" };
        self.store.dir().join("downloads").join(format!("{sha256}.{suffix}"))
    }

    /// Downloads an artifact, resuming a partial file; checks its sha256.
    fn download(&self, sha256: &str) -> Result<Vec<u8>, DesiredError> {
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(DesiredError::Refused(format!("`{sha256}` is not a sha256")));
        }
        let part = self.part_path(sha256);
        if let Some(dir) = part.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| DesiredError::Transient(format!("{}: {e}", dir.display())))?;
        }
        let url = format!("{}/api/v1/artifacts/{sha256}", self.fetch.api_url.trim_end_matches('/'));
        let client = self.fetch.client_tls.as_ref().map(|(c, k)| (c.as_slice(), k.as_slice()));
        let agent = outpost_shared::tls::api_client_as(
            &self.fetch.api_url,
            self.fetch.ca_pem.as_deref(),
            client,
            Duration::from_secs(60),
        )
        .map_err(|e| DesiredError::Refused(e.to_string()))?;
        let at_rest = self.store.at_rest();
        let mut have = part_bytes(at_rest, &part, sha256)
            .map_err(|e| DesiredError::Transient(format!("{}: {e}", part.display())))?
            .len() as u64;
        if have > 0 {
            tracing::info!(artifact = sha256, bytes = have, "resuming download");
        }
        let started = Instant::now();
        let mut fetched = 0u64;
        loop {
            let end = have + self.fetch.chunk_bytes - 1;
            let mut response = agent
                .get(&url)
                .header("Range", format!("bytes={have}-{end}"))
                .call()
                .map_err(|e| DesiredError::Transient(format!("cannot reach {url}: {e}")))?;
            let status = response.status().as_u16();
            let total = match status {
                206 => response
                    .headers()
                    .get("content-range")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.rsplit_once('/'))
                    .and_then(|(_, t)| t.parse::<u64>().ok())
                    .ok_or_else(|| DesiredError::Transient("206 without a usable Content-Range".into()))?,
                416 if have > 0 => {
                    // The part file is longer than the artifact: start over.
                    let _ = std::fs::remove_file(&part);
                    return Err(DesiredError::Transient(format!(
                        "partial download of {sha256} was longer than the artifact; restarting"
                    )));
                }
                404 => {
                    return Err(DesiredError::Refused(format!("the coordinator has no artifact {sha256}")));
                }
                other => return Err(DesiredError::Transient(format!("artifact download answered {other}"))),
            };
            let chunk = response
                .body_mut()
                .with_config()
                .limit(self.fetch.chunk_bytes)
                .read_to_vec()
                .map_err(|e| DesiredError::Transient(format!("download of {sha256} broke off: {e}")))?;
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&part)
                .map_err(|e| DesiredError::Transient(format!("{}: {e}", part.display())))?;
            let n = chunk.len() as u64;
            let framed = part_frame(at_rest, sha256, have, chunk);
            file.write_all(&framed)
                .and_then(|()| file.sync_data())
                .map_err(|e| DesiredError::Transient(format!("{}: {e}", part.display())))?;
            have += n;
            fetched += n;
            self.metrics.bundle_download_bytes.inc_by(n);
            if have >= total || n == 0 {
                break;
            }
            if self.fetch.max_bytes_per_sec > 0 {
                let due = Duration::from_secs_f64(fetched as f64 / self.fetch.max_bytes_per_sec as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
        }
        let bytes = part_bytes(at_rest, &part, sha256)
            .map_err(|e| DesiredError::Transient(format!("{}: {e}", part.display())))?;
        let found = outpost_shared::bundle::sha256_hex(&bytes);
        if found != sha256 {
            let _ = std::fs::remove_file(&part);
            return Err(DesiredError::Refused(format!(
                "downloaded artifact has sha256 {found}, the desired state names {sha256}: discarded"
            )));
        }
        tracing::info!(artifact = sha256, bytes = bytes.len(), fetched, "artifact downloaded and verified");
        Ok(bytes)
    }

    /// Says so when the trust root moved past `before` (metric, log, event).
    async fn root_moved(&self, before: u64) {
        let version = self.trust.version();
        self.metrics.trust_root_version.set(i64::try_from(version).unwrap_or(i64::MAX));
        if version != before {
            let message = format!("trust root version {version} adopted (was {before})");
            tracing::info!(version, before, "{message}");
            self.event(EventKind::TrustRoot { version }, message).await;
        }
    }

    async fn event(&self, kind: EventKind, message: String) {
        if let Some(reporter) = &self.reporter {
            let reporter = Arc::clone(reporter);
            let _ = tokio::task::spawn_blocking(move || reporter.event(kind, message)).await;
        }
    }

    /// Applies desired states from the link until `stop`; transient failures retry with backoff.
    pub async fn run(
        self: Arc<Self>,
        mut incoming: mpsc::Receiver<Vec<u8>>,
        mut stop: watch::Receiver<bool>,
    ) {
        self.metrics.desired_revision.set(i64::try_from(self.applied()).unwrap_or(i64::MAX));
        self.metrics.trust_root_version.set(i64::try_from(self.trust.version()).unwrap_or(i64::MAX));
        // A state received before a restart and not applied yet is taken up again.
        let mut pending: Option<DesiredState> =
            std::fs::read(self.pending_path()).ok().and_then(|payload| match self.open(&payload) {
                Ok(state) => {
                    tracing::info!(
                        revision = state.revision,
                        "resuming a desired state received before the restart"
                    );
                    Some(state)
                }
                Err(_) => {
                    self.drop_pending();
                    None
                }
            });
        let mut failures = 0u32;
        // Apply a resumed state at once rather than after a backoff.
        let mut first = pending.is_some();
        let mut stale = false;
        let mut freshness =
            tokio::time::interval_at(tokio::time::Instant::now() + FRESHNESS_EVERY, FRESHNESS_EVERY);
        loop {
            let wait = if first {
                Duration::ZERO
            } else if pending.is_some() {
                outpost_shared::endpoints::backoff(failures)
            } else {
                Duration::from_secs(3600)
            };
            first = false;
            tokio::select! {
                _ = stop.changed() => return,
                _ = freshness.tick() => {
                    stale = self.check_freshness(stale).await;
                    continue;
                }
                message = incoming.recv() => {
                    let Some(payload) = message else { return };
                    let root_before = self.trust.version();
                    let opened = self.open(&payload);
                    self.root_moved(root_before).await;
                    match opened {
                        Ok(state) => {
                            tracing::info!(revision = state.revision, models = state.models.len(), "desired state received");
                            self.keep_pending(&payload);
                            pending = Some(state);
                            failures = 0;
                        }
                        Err(DesiredError::Stale { found, applied }) if found == applied => {
                            // The retained copy of what is already applied (every reconnect).
                            continue;
                        }
                        Err(e) => {
                            self.metrics.desired_refusals.inc();
                            tracing::warn!(error = %e, "desired state refused");
                            self.event(EventKind::ModelRefused, e.to_string()).await;
                            continue;
                        }
                    }
                }
                _ = tokio::time::sleep(wait) => {}
            }
            let Some(state) = pending.clone() else { continue };
            let this = Arc::clone(&self);
            let outcome = tokio::task::spawn_blocking(move || this.apply(&state))
                .await
                .unwrap_or_else(|e| Err(DesiredError::Refused(format!("apply task failed: {e}"))));
            match outcome {
                Ok(done) => {
                    let revision = pending.as_ref().map_or(0, |s| s.revision);
                    self.metrics.desired_revision.set(i64::try_from(revision).unwrap_or(i64::MAX));
                    tracing::info!(revision, activated = ?done, "desired state applied");
                    self.drop_pending();
                    pending = None;
                }
                Err(DesiredError::Transient(reason)) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(%reason, retry_in_ms = outpost_shared::endpoints::backoff(failures).as_millis() as u64, "desired state not applied yet");
                }
                Err(e) => {
                    self.metrics.desired_refusals.inc();
                    tracing::error!(error = %e, "desired state refused; the versions serving stay");
                    self.event(EventKind::ModelRefused, e.to_string()).await;
                    // Not retried: the same state would be refused again. A newer one is awaited.
                    if let Some(state) = &pending {
                        let _ = self.set_applied(state.revision, state.expires_at_ms);
                    }
                    self.drop_pending();
                    pending = None;
                }
            }
        }
    }
}

/// `<dir>/<sha256>.bundle`, checked against the sha256 the signed desired state names.
fn local_bundle(dir: &std::path::Path, sha256: &str) -> Result<Vec<u8>, DesiredError> {
    if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(DesiredError::Refused(format!("`{sha256}` is not a sha256")));
    }
    let path = dir.join(format!("{sha256}.bundle"));
    let bytes = std::fs::read(&path).map_err(|e| {
        DesiredError::Refused(format!(
            "{}: {e} (the desired state names this bundle; export it with the state)",
            path.display()
        ))
    })?;
    let found = outpost_shared::bundle::sha256_hex(&bytes);
    if found != sha256 {
        return Err(DesiredError::Refused(format!(
            "{} has sha256 {found}, the desired state names {sha256}: refused",
            path.display()
        )));
    }
    Ok(bytes)
}

/// A downloaded chunk as it goes into the part file: the bytes, or with encryption at rest on
/// a frame `[length: u32 BE][chunk sealed at sha256 ‖ offset]`.
fn part_frame(at_rest: &AtRest, sha256: &str, offset: u64, chunk: Vec<u8>) -> Vec<u8> {
    if !at_rest.is_on() {
        return chunk;
    }
    let sealed = at_rest.write(Store::Download, &part_place(sha256, offset), chunk);
    let mut frame = (sealed.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&sealed);
    frame
}

fn part_place(sha256: &str, offset: u64) -> Vec<u8> {
    [sha256.as_bytes(), &offset.to_be_bytes()[..]].concat()
}

/// What a part file holds so far, in the clear (in memory). A sealed part file is cut back to
/// its last whole frame that reads (a crash mid-write leaves a torn one).
fn part_bytes(at_rest: &AtRest, path: &std::path::Path, sha256: &str) -> std::io::Result<Vec<u8>> {
    let stored = match std::fs::read(path) {
        Ok(stored) => stored,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    if !at_rest.is_on() {
        return Ok(stored);
    }
    let (mut clear, mut at) = (Vec::new(), 0usize);
    while let Some(len) =
        stored.get(at..at + 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    {
        let Some(sealed) = stored.get(at + 4..at + 4 + len) else { break };
        match at_rest.read(Store::Download, &part_place(sha256, clear.len() as u64), sealed) {
            Ok(chunk) => clear.extend_from_slice(&chunk),
            Err(_) => break,
        }
        at += 4 + len;
    }
    if at < stored.len() {
        tracing::warn!(part = %path.display(), kept = at, dropped = stored.len() - at, "partial download: a torn or damaged last frame is cut off");
        let file = std::fs::OpenOptions::new().write(true).open(path)?;
        file.set_len(at as u64)?;
    }
    Ok(clear)
}

#[cfg(test)]
mod tests;
