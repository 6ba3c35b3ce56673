//! The table of served models: every configured model, its lifecycle state
//! (`loading → ready | failed`), and — once validated — the shared runtime that serves it.
//!
//! A model becomes `ready` only after it loaded, optimized, and reproduced its reference
//! outputs (`<model>.reference.json` beside the file, or the configured path) — or, when it
//! has no references, ran once on an all-zero sample and produced outputs of the declared
//! types and shapes. A model that fails never serves; its reason stays visible in metadata.

use std::cmp::Ordering;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, RwLock};

use outpost_shared::protocol::messages::SlotMode;

use outpost_shared::bundle::Bundle;
use std::time::{Duration, Instant};

use outpost_shared::reference::Reference;
use outpost_shared::{Model, Signature};

use crate::batching::{Batcher, BatchingConfig};
use crate::config::{ModelConfig, NanPolicy, RecordInputs};

/// Version reported when neither the config nor the model file names one.
pub const DEFAULT_VERSION: &str = "1";

/// A validated model, ready to serve.
#[derive(Debug)]
pub struct ServedModel {
    pub name: String,
    pub version: String,
    pub model: Model,
    pub nan_policy: NanPolicy,
    pub record_inputs: RecordInputs,
    /// Drift window against the bundle's baseline (bundles with a baseline only).
    pub drift: Option<crate::drift::SharedMonitor>,
    /// This version's dynamic batch (`[batching.<name>]`, models that can batch only).
    pub batcher: Option<Batcher>,
}

impl ServedModel {
    pub fn signature(&self) -> &Signature {
        self.model.signature()
    }

    /// Turns dynamic batching on when it is configured for this model and the model can batch;
    /// a model that cannot is served unbatched, with a warning naming why.
    pub fn with_batching(mut self, config: Option<&BatchingConfig>) -> ServedModel {
        self.batcher = config.and_then(|config| match self.signature().batch_dimension() {
            Ok(_) => {
                tracing::info!(
                    model = %self.name,
                    version = %self.version,
                    max_batch = config.max_batch,
                    max_queue_delay_us = config.max_queue_delay_us,
                    "dynamic batching on"
                );
                Some(Batcher::new(*config))
            }
            Err(why) => {
                tracing::warn!(
                    model = %self.name,
                    version = %self.version,
                    "[batching.{}] is set but this version cannot be batched, so it is served unbatched: {why}",
                    self.name
                );
                None
            }
        });
        self
    }
}

/// Where a configured model is in its lifecycle.
#[derive(Debug, Clone)]
pub enum ModelState {
    Loading,
    Ready(Arc<ServedModel>),
    Failed(String),
}

impl ModelState {
    pub fn label(&self) -> &'static str {
        match self {
            ModelState::Loading => "loading",
            ModelState::Ready(_) => "ready",
            ModelState::Failed(_) => "failed",
        }
    }
}

/// A validated version beside the primary one (bundle-managed models only).
#[derive(Debug, Clone)]
pub struct CandidateSlot {
    pub mode: SlotMode,
    pub served: Arc<ServedModel>,
}

/// One served model: from a file in the config, or managed through signed bundles.
#[derive(Debug)]
pub struct ModelEntry {
    pub config: ModelConfig,
    /// Served from the local bundle store; its version changes by atomic swaps.
    pub managed: bool,
    inner: RwLock<(Option<String>, ModelState)>,
    /// The last version refused for this model and why (cleared by the next swap).
    refusal: RwLock<Option<String>>,
    candidate: RwLock<Option<CandidateSlot>>,
    /// Requests without an id so far, for an exact canary split.
    split: AtomicU64,
}

/// FNV-1a: a stable hash of a request id, the same on every device and release.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

impl ModelEntry {
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The version, once known (from the config, or from the file once it loaded).
    pub fn version(&self) -> Option<String> {
        self.read().0
    }

    pub fn state(&self) -> ModelState {
        self.read().1
    }

    /// The served model, if ready.
    pub fn ready(&self) -> Option<Arc<ServedModel>> {
        match self.read().1 {
            ModelState::Ready(m) => Some(m),
            _ => None,
        }
    }

    fn read(&self) -> (Option<String>, ModelState) {
        // A poisoned lock only means a writer panicked mid-update; the value is still whole.
        let guard = self.inner.read().unwrap_or_else(|p| p.into_inner());
        guard.clone()
    }

    /// Why the last version offered for this model was refused, if it was.
    pub fn refusal(&self) -> Option<String> {
        self.refusal.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn set_refusal(&self, refusal: Option<String>) {
        *self.refusal.write().unwrap_or_else(|p| p.into_inner()) = refusal;
    }

    /// The candidate beside the primary, if one is loaded.
    pub fn candidate(&self) -> Option<CandidateSlot> {
        self.candidate.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn set_candidate(&self, slot: Option<CandidateSlot>) {
        *self.candidate.write().unwrap_or_else(|p| p.into_inner()) = slot;
    }

    /// Whether a request goes to a canary taking `percent` of the traffic: by a hash of its
    /// id when it has one (the same id always lands on the same side), else by counting, so
    /// every 100 requests without an id send exactly `percent` to the canary.
    pub fn to_canary(&self, percent: u8, request_id: Option<&str>) -> bool {
        let percent = u64::from(percent.min(100));
        match request_id {
            Some(id) => fnv1a(id) % 100 < percent,
            None => {
                let n = self.split.fetch_add(1, AtomicOrdering::Relaxed);
                (n * percent) % 100 < percent
            }
        }
    }

    pub(crate) fn set(&self, version: Option<String>, state: ModelState) {
        let mut guard = self.inner.write().unwrap_or_else(|p| p.into_inner());
        *guard = (version, state);
    }
}

/// Result of looking a model up by name and optional version.
#[derive(Debug)]
pub enum Lookup {
    Found(Arc<ModelEntry>),
    UnknownModel,
    UnknownVersion,
}

/// Every served model. Entries are only ever added (a bundle-managed model appears when its
/// first version is installed); versions change inside an entry.
#[derive(Debug)]
pub struct ModelTable {
    entries: RwLock<Vec<Arc<ModelEntry>>>,
}

impl ModelTable {
    pub fn new(configs: &[ModelConfig]) -> ModelTable {
        let entries = configs
            .iter()
            .map(|c| {
                Arc::new(ModelEntry {
                    inner: RwLock::new((c.version.clone(), ModelState::Loading)),
                    config: c.clone(),
                    managed: false,
                    refusal: RwLock::new(None),
                    candidate: RwLock::new(None),
                    split: AtomicU64::new(0),
                })
            })
            .collect();
        ModelTable { entries: RwLock::new(entries) }
    }

    /// A snapshot of the entries.
    pub fn entries(&self) -> Vec<Arc<ModelEntry>> {
        self.entries.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The bundle-managed entry for `name`, created (state `loading`) when missing.
    pub fn managed(&self, name: &str) -> Arc<ModelEntry> {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = entries.iter().find(|e| e.managed && e.name() == name) {
            return Arc::clone(entry);
        }
        let config = ModelConfig {
            name: name.to_owned(),
            path: std::path::PathBuf::from("(bundle store)"),
            version: None,
            reference: None,
            nan_policy: NanPolicy::default(),
            record_inputs: RecordInputs::default(),
            sample_predictions: Default::default(),
        };
        let entry = Arc::new(ModelEntry {
            inner: RwLock::new((None, ModelState::Loading)),
            config,
            managed: true,
            refusal: RwLock::new(None),
            candidate: RwLock::new(None),
            split: AtomicU64::new(0),
        });
        entries.push(Arc::clone(&entry));
        entry
    }

    /// True when every model is validated and serving.
    pub fn all_ready(&self) -> bool {
        let entries = self.entries();
        !entries.is_empty() && entries.iter().all(|e| e.ready().is_some())
    }

    /// All entries with this name.
    pub fn named(&self, name: &str) -> Vec<Arc<ModelEntry>> {
        self.entries().into_iter().filter(|e| e.name() == name).collect()
    }

    /// Finds the entry for `name` at `version`; without a version, the highest ready version
    /// (semver order), or — when none is ready — the first configured one, so its state shows.
    pub fn lookup(&self, name: &str, version: Option<&str>) -> Lookup {
        let named = self.named(name);
        if named.is_empty() {
            return Lookup::UnknownModel;
        }
        match version {
            Some(v) => named
                .iter()
                .find(|e| e.version().as_deref() == Some(v))
                .or_else(|| named.iter().find(|e| e.candidate().is_some_and(|c| c.served.version == v)))
                .map_or(Lookup::UnknownVersion, |e| Lookup::Found(Arc::clone(e))),
            None => {
                let all: Vec<&Arc<ModelEntry>> = named.iter().collect();
                let best = all
                    .iter()
                    .filter_map(|e| e.ready().map(|m| (e, m.version.clone())))
                    .max_by(|a, b| compare_versions(&a.1, &b.1))
                    .map(|(e, _)| *e)
                    .or_else(|| all.first().copied());
                best.map_or(Lookup::UnknownModel, |e| Lookup::Found(Arc::clone(e)))
            }
        }
    }
}

/// Orders versions by semver when both parse, else as plain strings.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    match (semver::Version::parse(a), semver::Version::parse(b)) {
        (Ok(a), Ok(b)) => a.cmp(&b),
        (Ok(_), Err(_)) => Ordering::Greater,
        (Err(_), Ok(_)) => Ordering::Less,
        (Err(_), Err(_)) => a.cmp(b),
    }
}

/// What loading and validating a model established.
#[derive(Debug)]
pub struct Validated {
    pub served: ServedModel,
    pub load_time: Duration,
    /// How the model was validated, for the log.
    pub evidence: String,
}

/// Why a model may not serve.
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
pub struct ValidationFailure {
    /// The version, if the file got far enough to tell.
    pub version: Option<String>,
    pub reason: String,
}

/// Loads a model, resolves its version, and validates it (blocking: run it off the executor).
pub fn load_and_validate(config: &ModelConfig) -> Result<Validated, ValidationFailure> {
    let started = Instant::now();
    let fail = |version: Option<String>, reason: String| ValidationFailure { version, reason };
    let model = Model::load_file(&config.path).map_err(|e| fail(config.version.clone(), e.to_string()))?;
    let version = config
        .version
        .clone()
        .or_else(|| model.metadata().get("outpost.version").cloned())
        .unwrap_or_else(|| DEFAULT_VERSION.to_owned());
    let reference_path = config.reference.clone().or_else(|| {
        let beside = Reference::path_beside(&config.path);
        beside.is_file().then_some(beside)
    });
    let evidence = match reference_path {
        Some(path) => {
            let reference = Reference::load(&path).map_err(|e| fail(Some(version.clone()), e.to_string()))?;
            let report = reference.verify(&model).map_err(|e| {
                fail(Some(version.clone()), format!("does not reproduce {}: {e}", path.display()))
            })?;
            let compared: Vec<String> = report
                .outputs
                .iter()
                .map(|(name, n, diff)| format!("{name}: {n} values, max diff {diff:.2e}"))
                .collect();
            format!("reproduced {} ({})", path.display(), compared.join("; "))
        }
        None => {
            let run = model
                .sample_inputs(1)
                .and_then(|inputs| model.run(inputs))
                .and_then(|outputs| model.check_outputs(&outputs));
            run.map_err(|e| fail(Some(version.clone()), format!("sample run failed: {e}")))?;
            "ran an all-zero sample (no reference outputs found)".to_owned()
        }
    };
    Ok(Validated {
        served: ServedModel {
            name: config.name.clone(),
            version,
            model,
            nan_policy: config.nan_policy,
            record_inputs: config.record_inputs,
            drift: None,
            batcher: None,
        },
        load_time: started.elapsed(),
        evidence,
    })
}

/// Loads a verified bundle's model and validates it: its schema must be the one the manifest
/// declares, and it must reproduce the manifest's reference outputs (or, without references,
/// run once on an all-zero sample). The caller has checked the bundle's signature. A bundle
/// with a baseline gets its drift window (see [`crate::drift`]).
pub fn load_bundle(
    bundle: &Bundle,
    record_inputs: RecordInputs,
    drift: &crate::drift::DriftConfig,
) -> Result<Validated, ValidationFailure> {
    let started = Instant::now();
    let manifest = &bundle.manifest;
    let (model, evidence) = bundle
        .load_model()
        .map_err(|e| ValidationFailure { version: Some(manifest.version.clone()), reason: e.to_string() })?;
    let monitor = manifest.baseline.as_ref().and_then(|baseline| {
        match crate::drift::DriftMonitor::new(&model, &manifest.name, baseline, drift) {
            Ok(monitor) => Some(Arc::new(monitor)),
            Err(why) => {
                tracing::info!(model = %manifest.name, version = %manifest.version, "no drift monitoring: {why}");
                None
            }
        }
    });
    Ok(Validated {
        served: ServedModel {
            name: manifest.name.clone(),
            version: manifest.version.clone(),
            model,
            nan_policy: manifest.nan_policy,
            record_inputs,
            drift: monitor,
            batcher: None,
        },
        load_time: started.elapsed(),
        evidence,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_order_by_semver_then_text() {
        assert_eq!(compare_versions("1.10.0", "1.9.0"), Ordering::Greater);
        assert_eq!(compare_versions("2.0.0-bad", "1.1.0"), Ordering::Greater);
        assert_eq!(compare_versions("1", "1.0.0"), Ordering::Less);
        assert_eq!(compare_versions("b", "a"), Ordering::Greater);
    }

    #[test]
    fn lookup_distinguishes_unknown_model_and_version() {
        let table = ModelTable::new(&[ModelConfig {
            version: Some("1.0.0".into()),
            ..ModelConfig::parse_cli("bc=x.onnx").unwrap()
        }]);
        assert!(matches!(table.lookup("nope", None), Lookup::UnknownModel));
        assert!(matches!(table.lookup("bc", Some("9")), Lookup::UnknownVersion));
        assert!(matches!(table.lookup("bc", Some("1.0.0")), Lookup::Found(_)));
        assert!(matches!(table.lookup("bc", None), Lookup::Found(_)));
        assert!(!table.all_ready());
    }

    #[test]
    fn the_canary_split_is_exact_without_ids_and_sticky_with_them() {
        let table = ModelTable::new(&[]);
        let entry = table.managed("bc");
        let to_canary = (0..2000).filter(|_| entry.to_canary(10, None)).count();
        assert_eq!(to_canary, 200);
        assert_eq!((0..100).filter(|_| entry.to_canary(0, None)).count(), 0);
        assert_eq!((0..100).filter(|_| entry.to_canary(100, None)).count(), 100);
        for id in ["req-1", "req-2", "a-much-longer-request-id-42"] {
            let first = entry.to_canary(30, Some(id));
            assert!((0..10).all(|_| entry.to_canary(30, Some(id)) == first), "{id} changed sides");
        }
        let ids = (0..5000).filter(|i| entry.to_canary(30, Some(&format!("request-{i}")))).count();
        assert!((1350..=1650).contains(&ids), "{ids} of 5000 ids hashed to a 30% canary");
    }

    #[test]
    fn a_missing_file_fails_validation_with_its_path() {
        let config = ModelConfig::parse_cli("bc=/nonexistent/model.onnx").unwrap();
        let err = load_and_validate(&config).unwrap_err();
        assert!(err.reason.contains("/nonexistent/model.onnx"), "{}", err.reason);
    }
}
