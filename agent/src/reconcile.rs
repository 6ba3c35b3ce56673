//! Applies the local bundle store to what the agent serves: whenever the store's generation
//! moves (an `import --activate`, a `rollback`, a desired state from the coordinator), every
//! bundle-managed model whose active version differs from the one serving is read, verified
//! against the trusted keys again (a file on disk is outside data too), loaded and validated
//! off the executor, and swapped in with one pointer swap — requests in flight finish on the
//! old version, new ones get the new one, none fails. A version that does not verify or
//! validate never serves: the old one serves on, and the reason goes to the log and, as an
//! event, to the coordinator.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use outpost_shared::protocol::messages::{EventKind, SlotMode};
use tokio::sync::watch;

use crate::config::RecordInputs;
use crate::metrics::Metrics;
use crate::model_store::{ModelStore, StoreState, StoredCandidate};
use crate::models::{CandidateSlot, ModelState, ModelTable, load_bundle};
use crate::telemetry::Reporter;

fn describe(mode: SlotMode) -> String {
    match mode {
        SlotMode::Canary { percent } => format!("canary ({percent}% of requests)"),
        SlotMode::Standby => "standby (loaded, serving only requests that name it)".into(),
        SlotMode::Shadow => "shadow (runs on copies of the primary's requests, answers nothing)".into(),
    }
}

/// How often the store's state file is checked.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// The store-to-table reconciler.
pub struct Reconciler {
    pub store: ModelStore,
    /// Who may sign bundles (the trust root's release role, or the configured keys).
    pub trust: Arc<crate::trust_root::Trust>,
    pub models: Arc<ModelTable>,
    pub metrics: Arc<Metrics>,
    pub reporter: Option<Arc<Reporter>>,
    /// Drift windows for the versions it loads.
    pub drift: crate::drift::DriftConfig,
    /// Dynamic batching by model name (`[batching]`).
    pub batching: crate::batching::BatchingTable,
}

/// What one pass did for one model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    Unchanged,
    Swapped { from: Option<String>, to: String },
    Refused { version: String, reason: String },
}

/// Why a stored version could not be loaded.
#[derive(Debug, thiserror::Error)]
enum LoadFailure {
    #[error(transparent)]
    Store(#[from] crate::model_store::StoreError),
    #[error("{0}")]
    Invalid(String),
    #[error("loader crashed: {0}")]
    Crashed(String),
}

impl Reconciler {
    /// Applies the store now and then whenever it changes, until `stop` turns true.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut applied: Option<u64> = None;
        let mut refused: HashMap<(String, String), u64> = HashMap::new();
        let mut last_error: Option<String> = None;
        loop {
            let this = Arc::clone(&self);
            match tokio::task::spawn_blocking(move || this.store.state()).await {
                Ok(Ok(state)) if applied != Some(state.generation) => {
                    last_error = None;
                    self.apply(&state, &mut refused).await;
                    applied = Some(state.generation);
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    let text = e.to_string();
                    if last_error.as_deref() != Some(&text) {
                        tracing::error!(error = %text, "cannot read the model store");
                        last_error = Some(text);
                    }
                }
                Err(e) => tracing::error!(error = %e, "model store task failed"),
            }
            tokio::select! {
                _ = tokio::time::sleep(POLL_INTERVAL) => {}
                _ = stop.changed() => return,
            }
        }
    }

    async fn apply(&self, state: &StoreState, refused: &mut HashMap<(String, String), u64>) {
        self.apply_primaries(state, refused).await;
        for (name, stored) in &state.models {
            let key = (
                name.clone(),
                stored.candidate.as_ref().map_or(String::new(), |c| format!("candidate {}", c.version)),
            );
            if refused.get(&key) == Some(&state.generation) {
                continue;
            }
            if let Some((version, reason)) = self.apply_candidate(name, stored.candidate.as_ref()).await {
                refused.insert(key, state.generation);
                self.metrics.model_refusals.with_label_values(&[name.as_str()]).inc();
                tracing::error!(model = %name, %version, %reason, "candidate refused; the primary serves alone");
                self.event(
                    EventKind::ModelRefused,
                    format!("model `{name}` candidate {version} refused: {reason}"),
                )
                .await;
            }
        }
    }

    /// Brings `name`'s candidate slot to what the store says; returns a refusal.
    async fn apply_candidate(&self, name: &str, want: Option<&StoredCandidate>) -> Option<(String, String)> {
        if self.models.named(name).iter().any(|e| !e.managed) {
            return None;
        }
        let entry = self.models.managed(name);
        let have = entry.candidate();
        let message = match (want, have) {
            (None, None) => return None,
            (None, Some(old)) => {
                entry.set_candidate(None);
                format!("model `{name}` candidate {} ({}) removed", old.served.version, old.mode.slot())
            }
            (Some(w), Some(old)) if old.served.version == w.version => {
                if old.mode == w.mode {
                    return None;
                }
                entry.set_candidate(Some(CandidateSlot { mode: w.mode, served: old.served }));
                format!("model `{name}` candidate {} is now {}", w.version, describe(w.mode))
            }
            (Some(w), _) => {
                let outcome = self.load(name, &w.version).await;
                match outcome {
                    Ok(validated) => {
                        tracing::info!(model = name, version = %w.version, slot = %w.mode.slot(), validation = %validated.evidence, "candidate validated");
                        entry.set_candidate(Some(CandidateSlot {
                            mode: w.mode,
                            served: Arc::new(validated.served),
                        }));
                        format!("model `{name}` candidate {} loaded as {}", w.version, describe(w.mode))
                    }
                    Err(failure) => {
                        let reason = failure.to_string();
                        entry.set_refusal(Some(format!("{} (candidate): {reason}", w.version)));
                        return Some((w.version.clone(), reason));
                    }
                }
            }
        };
        tracing::info!(model = name, "{message}");
        self.event(EventKind::ModelActivated, message).await;
        if let Some(reporter) = &self.reporter {
            let reporter = Arc::clone(reporter);
            let _ = tokio::task::spawn_blocking(move || reporter.state_if_changed()).await;
        }
        None
    }

    async fn apply_primaries(&self, state: &StoreState, refused: &mut HashMap<(String, String), u64>) {
        for (name, stored) in &state.models {
            // A version refused in this generation is not retried until the store changes.
            let key = (name.clone(), stored.active.clone());
            if refused.get(&key) == Some(&state.generation) {
                continue;
            }
            match self.apply_one(name, &stored.active).await {
                Applied::Unchanged => {}
                Applied::Swapped { from, to } => {
                    let message = match &from {
                        Some(from) => format!("model `{name}` switched from {from} to {to}"),
                        None => format!("model `{name}` {to} serving"),
                    };
                    tracing::info!(model = %name, from = from.as_deref().unwrap_or("-"), to = %to, "model version swapped in");
                    self.metrics.model_swaps.with_label_values(&[name.as_str()]).inc();
                    self.event(EventKind::ModelActivated, message).await;
                    if let Some(reporter) = &self.reporter {
                        let reporter = Arc::clone(reporter);
                        let _ = tokio::task::spawn_blocking(move || reporter.state_if_changed()).await;
                    }
                }
                Applied::Refused { version, reason } => {
                    refused.insert(key, state.generation);
                    self.metrics.model_refusals.with_label_values(&[name.as_str()]).inc();
                    self.event(
                        EventKind::ModelRefused,
                        format!("model `{name}` {version} refused: {reason}"),
                    )
                    .await;
                    let good = match self.models.managed(name).ready() {
                        Some(serving) => Some(serving.version.clone()),
                        // Nothing serves (a start-up): the newest earlier version that loads.
                        None => self.fall_back(name, &stored.history, &version).await,
                    };
                    match &good {
                        Some(good) => {
                            tracing::error!(model = %name, %version, %reason, serving = %good, "version refused; the last good version serves");
                            let (store, (n, g, v)) =
                                (self.store.clone(), (name.clone(), good.clone(), version.clone()));
                            match tokio::task::spawn_blocking(move || store.restore(&n, &g, &v)).await {
                                Ok(Ok(_)) => {}
                                Ok(Err(e)) => {
                                    tracing::error!(error = %e, "cannot point the store back at the good version")
                                }
                                Err(e) => tracing::error!(error = %e, "store task failed"),
                            }
                        }
                        None => {
                            tracing::error!(model = %name, %version, %reason, "version refused and no earlier version loads: model not served");
                        }
                    }
                }
            }
        }
    }

    /// Tries the earlier versions, newest first; the first that loads serves.
    async fn fall_back(&self, name: &str, history: &[String], refused: &str) -> Option<String> {
        for version in history.iter().rev() {
            if let Applied::Swapped { to, .. } = self.apply_one(name, version).await {
                self.metrics.forget_model_state(name, refused);
                tracing::warn!(model = name, version = %to, "fell back to an earlier version");
                return Some(to);
            }
        }
        None
    }

    async fn event(&self, kind: EventKind, message: String) {
        if let Some(reporter) = &self.reporter {
            let reporter = Arc::clone(reporter);
            let _ = tokio::task::spawn_blocking(move || reporter.event(kind, message)).await;
        }
    }

    /// Reads `name@version` from the store, verifies it against the trusted keys again, loads
    /// and validates it, off the executor.
    async fn load(&self, name: &str, version: &str) -> Result<crate::models::Validated, LoadFailure> {
        let (store, release, drift) = (self.store.clone(), self.trust.release(), self.drift.clone());
        let batching = self.batching.get(name).copied();
        let (n, v, trust) = (name.to_owned(), version.to_owned(), Arc::clone(&self.trust));
        tokio::task::spawn_blocking(move || {
            let mut bundle = store.read(&n, &v, &release)?;
            // An encrypted model is opened in memory only, straight into the runtime.
            bundle.decrypt(trust.bundle_keys()).map_err(|e| LoadFailure::Invalid(e.to_string()))?;
            let mut validated = load_bundle(&bundle, RecordInputs::default(), &drift)
                .map_err(|e| LoadFailure::Invalid(e.reason))?;
            validated.served = validated.served.with_batching(batching.as_ref());
            Ok(validated)
        })
        .await
        .unwrap_or_else(|e| Err(LoadFailure::Crashed(e.to_string())))
    }

    /// Brings model `name` to `version`.
    pub async fn apply_one(&self, name: &str, version: &str) -> Applied {
        if self.models.named(name).iter().any(|e| !e.managed) {
            // No managed entry may shadow a configured one, so the refusal is only logged.
            return Applied::Refused {
                version: version.to_owned(),
                reason: format!(
                    "model `{name}` is also configured from a file in [[models]]; remove one of them"
                ),
            };
        }
        let entry = self.models.managed(name);
        let serving = entry.ready().map(|m| m.version.clone());
        if serving.as_deref() == Some(version) {
            return Applied::Unchanged;
        }
        // A loaded candidate of that version becomes the primary with one pointer swap: the
        // blue-green switch (or a promoted canary) needs no reload.
        if let Some(slot) = entry.candidate().filter(|c| c.served.version == version) {
            if let Some(old) = &serving {
                self.metrics.forget_model_state(name, old);
            }
            self.metrics.set_model_state(name, version, "ready");
            entry.set(Some(version.to_owned()), ModelState::Ready(slot.served));
            entry.set_candidate(None);
            entry.set_refusal(None);
            return Applied::Swapped { from: serving, to: version.to_owned() };
        }
        let outcome = self.load(name, version).await;
        match outcome {
            Ok(validated) => {
                if let Some(old) = &serving {
                    self.metrics.forget_model_state(name, old);
                }
                self.metrics
                    .model_load_duration
                    .with_label_values(&[name, version])
                    .set(validated.load_time.as_secs_f64());
                self.metrics.set_model_state(name, version, "ready");
                tracing::info!(model = name, version, validation = %validated.evidence, "bundle validated");
                entry.set(Some(version.to_owned()), ModelState::Ready(Arc::new(validated.served)));
                entry.set_refusal(None);
                Applied::Swapped { from: serving, to: version.to_owned() }
            }
            Err(failure) => {
                let reason = failure.to_string();
                entry.set_refusal(Some(format!("{version}: {reason}")));
                if serving.is_none() {
                    self.metrics.set_model_state(name, version, "failed");
                    entry.set(Some(version.to_owned()), ModelState::Failed(reason.clone()));
                }
                Applied::Refused { version: version.to_owned(), reason }
            }
        }
    }
}
