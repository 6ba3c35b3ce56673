//! The model registry: immutable, signed versions with their stage history.
//!
//! A pushed bundle is parsed, its model hash checked, its model loaded with the shared runtime
//! and checked against its own manifest (schema, reference outputs) — then signed with the
//! coordinator's release key and stored. Artifacts are content-addressed by the sha256 of the
//! signed bundle file, gzip-compressed under `<data_dir>/artifacts/`, written atomically and
//! never overwritten. A version is immutable: the same version with another model is refused
//! ([`RegistryError::Conflict`], HTTP 409); the same model again is a no-op.
//!
//! Stages: `registered → validated → canary → production → archived`, every transition kept
//! with who and when. Only a version whose validation passed may move past `registered`. The
//! last three production versions of a model, and anything not archived, cannot be purged.
//!
//! State: [`store::RegistryStore`] — sled trees and artifact files, or PostgreSQL tables (the
//! artifacts in chunks), so every replica reads one registry.

use std::collections::{BTreeMap, VecDeque};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use store::RegistryStore;

use outpost_shared::bundle::{Bundle, NanPolicy, TensorSchema, Training, sha256_hex};
use outpost_shared::protocol::keys::{PublicKey, SigningKey};
use serde::{Deserialize, Serialize};

use crate::base::store::{Store, StoreError, now_ms};

/// A stage name that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown stage `{0}` (stages: registered, validated, canary, production, archived)")]
pub struct UnknownStage(pub String);

/// Production versions per model that purge never removes.
pub const KEEP_PRODUCTION: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{id} already exists with another model (sha256 {existing}); versions are immutable")]
    Conflict { id: String, existing: String },
    #[error("no version {0} in the registry")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    /// A pushed bundle carries a signature by a key the registry does not trust, or one that
    /// does not verify (the error names the key id).
    #[error("refused: {0}")]
    Signature(outpost_shared::bundle::BundleError),
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("artifact store {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// `[registry]` in the coordinator's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// Ed25519 public keys (hex, as `outpostctl key show` prints them) whose signatures a pushed
    /// bundle may carry besides the coordinator's own release key — an offline signing key, say.
    /// A bundle signed by any other key is refused on push.
    pub trusted_keys: Vec<String>,
    /// Whether the registry signs every pushed bundle with the coordinator's release key
    /// (`pki/signing.pk8`). `false` keeps the release role off the coordinator host: a pushed
    /// bundle must already carry a signature by one of `trusted_keys` (an offline key,
    /// `outpostctl bundle sign` on another machine), the registry adds none, and retraining
    /// (which would need the coordinator to sign) cannot register versions. Agents then list
    /// only the offline keys in their `trusted_keys`.
    pub sign_on_push: bool,
    /// Keys that open bundles encrypted to a bundle key (`file:PATH`, `env:NAME` or
    /// `credential:NAME`, 32 bytes as 64 hex digits), so the validation gate can run here.
    /// Without one, encrypted bundles are stored and deployed as they are and validated where
    /// the key is.
    pub bundle_keys: Vec<String>,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig { trusted_keys: Vec::new(), sign_on_push: true, bundle_keys: Vec::new() }
    }
}

impl RegistryConfig {
    /// The trusted keys, parsed; the error names the entry (`registry.trusted_keys[1]`) and why.
    pub fn keys(&self) -> Result<Vec<PublicKey>, (String, String)> {
        self.trusted_keys
            .iter()
            .enumerate()
            .map(|(i, text)| {
                PublicKey::from_hex(text).map_err(|e| {
                    (
                        format!("registry.trusted_keys[{i}]"),
                        format!("is not an Ed25519 public key in hex: {e}"),
                    )
                })
            })
            .collect()
    }
}

/// Where a version is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Registered,
    Validated,
    Canary,
    Production,
    Archived,
}

impl Stage {
    pub fn parse(text: &str) -> Result<Stage, UnknownStage> {
        serde_json::from_value(serde_json::Value::String(text.to_owned()))
            .map_err(|_| UnknownStage(text.to_owned()))
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Registered => "registered",
            Stage::Validated => "validated",
            Stage::Canary => "canary",
            Stage::Production => "production",
            Stage::Archived => "archived",
        }
    }
}

/// One stage change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    pub from: Option<Stage>,
    pub to: Stage,
    pub by: String,
    pub at_ms: u64,
    pub note: String,
}

/// What the registry shows of a manifest without opening the artifact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestSummary {
    pub created_at: u64,
    pub inputs: Vec<TensorSchema>,
    pub outputs: Vec<TensorSchema>,
    pub nan_policy: NanPolicy,
    pub training: Training,
    pub metadata: BTreeMap<String, String>,
    pub baseline_rows: Option<u64>,
    pub baseline_features: Vec<String>,
    pub reference_outputs: bool,
    pub card: Option<String>,
    /// The bundle key the model is encrypted to (its id), if it is.
    #[serde(default)]
    pub encrypted_to: Option<String>,
}

/// A registered version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionRecord {
    pub name: String,
    pub version: String,
    /// sha256 of the signed bundle file: the artifact's address.
    pub bundle_sha256: String,
    pub bundle_size: u64,
    pub model_sha256: String,
    pub stage: Stage,
    pub transitions: Vec<Transition>,
    pub pushed_by: String,
    pub pushed_at_ms: u64,
    /// Key ids that signed the stored bundle.
    pub signed_by: Vec<String>,
    /// What the model was checked with at push.
    pub evidence: String,
    pub manifest: ManifestSummary,
    /// The validation gate's latest result (see `validation`).
    pub validation: Option<serde_json::Value>,
    /// Whether the latest validation passed.
    pub validation_passed: Option<bool>,
}

impl VersionRecord {
    pub fn id(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }
}

/// What a push did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pushed {
    pub record: VersionRecord,
    /// False when the same model was already registered under this version.
    pub created: bool,
}

#[derive(Clone)]
pub struct Registry {
    records: RegistryStore,
    /// Newest first: (sha256, signed bundle bytes).
    cache: ArtifactCache,
    /// Keys whose signatures a pushed bundle may carry besides the release key: configured
    /// (`registry.trusted_keys`, e.g. an offline key) and the trust root's release keys.
    trusted: Arc<Vec<PublicKey>>,
    root_release: Arc<std::sync::RwLock<Vec<PublicKey>>>,
    /// Keys that open encrypted bundles here (`[registry] bundle_keys`).
    bundle_keys: Arc<Vec<outpost_shared::keysource::SourcedKey>>,
    /// `registry.sign_on_push`: add the release key's signature to pushed bundles.
    sign_on_push: bool,
}

/// Signed bundle bytes by sha256, newest first.
type ArtifactCache = Arc<Mutex<VecDeque<(String, Arc<Vec<u8>>)>>>;

/// Decompressed artifacts kept in memory, by count and by total bytes.
const CACHED_ARTIFACTS: usize = 4;
const CACHED_ARTIFACT_BYTES: usize = 512 * 1024 * 1024;

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").field("artifacts", &self.records.location()).finish_non_exhaustive()
    }
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl Registry {
    pub fn open(store: &Store, data_dir: &std::path::Path) -> Result<Registry, RegistryError> {
        Ok(Registry::with(RegistryStore::open(store, data_dir)?))
    }

    /// The registry on PostgreSQL (records, policies and artifacts), shared by every replica.
    pub fn open_postgres(store: &crate::base::pg::store::PgStore) -> Registry {
        Registry::with(RegistryStore::open_postgres(store))
    }

    fn with(records: RegistryStore) -> Registry {
        Registry {
            records,
            cache: Default::default(),
            trusted: Arc::default(),
            root_release: Arc::default(),
            bundle_keys: Arc::default(),
            sign_on_push: true,
        }
    }

    /// With `false`, pushed bundles must carry an offline signature by a trusted key, and the
    /// registry adds none (`registry.sign_on_push`).
    pub fn signing_on_push(mut self, sign: bool) -> Registry {
        self.sign_on_push = sign;
        self
    }

    /// One version.
    pub fn get(&self, name: &str, version: &str) -> Result<VersionRecord, RegistryError> {
        self.records.get(name, version)?.ok_or_else(|| RegistryError::NotFound(format!("{name}@{version}")))
    }

    /// Every version, by name then semver.
    pub fn list(&self) -> Result<Vec<VersionRecord>, RegistryError> {
        let mut all = self.records.list()?;
        all.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| semver_cmp(&a.version, &b.version)));
        Ok(all)
    }

    /// The versions of one model, oldest first.
    pub fn versions(&self, name: &str) -> Result<Vec<VersionRecord>, RegistryError> {
        Ok(self.list()?.into_iter().filter(|r| r.name == name).collect())
    }

    /// Stores a pushed bundle (the caller runs this off the async executor: it loads the model).
    /// Every signature it carries must be by the release key or a trusted key and verify —
    /// `signed_by` lists only signatures that were checked; the registry then adds its own.
    pub fn push(&self, bytes: &[u8], by: &str, release_key: &SigningKey) -> Result<Pushed, RegistryError> {
        let bundle = Bundle::parse(bytes).map_err(|e| RegistryError::Invalid(e.to_string()))?;
        self.push_bundle(bundle, by, release_key)
    }

    /// [`Registry::push`] of a bundle already read (an upload read from its spool file).
    pub fn push_bundle(
        &self,
        mut bundle: Bundle,
        by: &str,
        release_key: &SigningKey,
    ) -> Result<Pushed, RegistryError> {
        bundle.verify_model().map_err(|e| RegistryError::Invalid(e.to_string()))?;
        let others = self.signers();
        let mut trusted = Vec::with_capacity(others.len() + 1);
        trusted.push(release_key.public_key());
        trusted.extend(others.iter().cloned());
        bundle.verify_every_signature(&trusted).map_err(RegistryError::Signature)?;
        let offline_signed = bundle.signatures.iter().any(|s| {
            s.key_id_hex() != release_key.key_id() && others.iter().any(|k| k.key_id() == s.key_id_hex())
        });
        if !self.sign_on_push && !offline_signed {
            return Err(RegistryError::Invalid(format!(
                "{} carries no signature by a key in [registry] trusted_keys, and this registry does not sign \
                 (sign_on_push = false): sign it offline with `outpostctl bundle sign` first",
                bundle.manifest.id()
            )));
        }
        let (name, version) = (bundle.manifest.name.clone(), bundle.manifest.version.clone());
        match self.get(&name, &version) {
            Ok(existing) if existing.model_sha256 == bundle.manifest.model.sha256 => {
                return Ok(Pushed { record: existing, created: false });
            }
            Ok(existing) => {
                return Err(RegistryError::Conflict { id: existing.id(), existing: existing.model_sha256 });
            }
            Err(RegistryError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        let evidence = self.check_serves(&bundle)?;
        if self.sign_on_push && !bundle.signatures.iter().any(|s| s.key_id_hex() == release_key.key_id()) {
            bundle.sign(release_key).map_err(|e| RegistryError::Invalid(e.to_string()))?;
        }
        let signed = bundle.to_bytes();
        let sha = sha256_hex(&signed);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        let compressed = gz.write_all(&signed).and_then(|()| gz.finish());
        let compressed =
            compressed.map_err(|e| RegistryError::Invalid(format!("cannot compress {sha}: {e}")))?;
        // The artifact first: a version is never stored without the bytes it names.
        self.records.put_blob(&sha, &compressed)?;
        let m = &bundle.manifest;
        let now = now_ms();
        let record = VersionRecord {
            name: name.clone(),
            version: version.clone(),
            bundle_sha256: sha,
            bundle_size: signed.len() as u64,
            model_sha256: m.model.sha256.clone(),
            stage: Stage::Registered,
            transitions: vec![Transition {
                from: None,
                to: Stage::Registered,
                by: by.to_owned(),
                at_ms: now,
                note: "pushed".into(),
            }],
            pushed_by: by.to_owned(),
            pushed_at_ms: now,
            signed_by: bundle.signatures.iter().map(|s| s.key_id_hex()).collect(),
            evidence,
            manifest: ManifestSummary {
                created_at: m.created_at,
                inputs: m.inputs.clone(),
                outputs: m.outputs.clone(),
                nan_policy: m.nan_policy,
                training: m.training.clone(),
                metadata: m.metadata.clone(),
                baseline_rows: m.baseline.as_ref().map(|b| b.rows),
                baseline_features: m
                    .baseline
                    .as_ref()
                    .map(|b| b.features.iter().map(|f| f.name.clone()).collect())
                    .unwrap_or_default(),
                reference_outputs: m.reference.is_some(),
                card: m.card.clone(),
                encrypted_to: m.encryption.as_ref().map(|e| e.key_id.clone()),
            },
            validation: None,
            validation_passed: None,
        };
        // Two pushes of one new version race here (in one process or on two replicas): only
        // the first insert wins.
        if let Some(existing) = self.records.insert_new(&record)? {
            if existing.model_sha256 == record.model_sha256 {
                return Ok(Pushed { record: existing, created: false });
            }
            return Err(RegistryError::Conflict { id: existing.id(), existing: existing.model_sha256 });
        }
        Ok(Pushed { record, created: true })
    }

    /// The signed bundle file of an artifact.
    ///
    /// Decompressed and hash-checked artifacts are cached (a few, bounded in bytes): a fleet
    /// downloads one bundle in many Range pieces, and each piece must not decompress it again.
    pub fn artifact(&self, sha256: &str) -> Result<Arc<Vec<u8>>, RegistryError> {
        if !is_sha256(sha256) {
            return Err(RegistryError::Invalid(format!(
                "`{sha256}` is not a sha256 (64 lowercase hex digits)"
            )));
        }
        {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((_, bytes)) = cache.iter().find(|(k, _)| k == sha256) {
                return Ok(Arc::clone(bytes));
            }
        }
        let compressed = self
            .records
            .blob(sha256)?
            .ok_or_else(|| RegistryError::NotFound(format!("artifact {sha256}")))?;
        let mut bytes = Vec::new();
        if let Err(e) = flate2::read::GzDecoder::new(&compressed[..]).read_to_end(&mut bytes) {
            return Err(RegistryError::Refused(format!(
                "artifact {sha256} in {} is corrupt (it does not decompress: {e})",
                self.records.location()
            )));
        }
        if sha256_hex(&bytes) != sha256 {
            return Err(RegistryError::Refused(format!(
                "artifact {sha256} in {} is corrupt (hash mismatch)",
                self.records.location()
            )));
        }
        let bytes = Arc::new(bytes);
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.retain(|(k, _)| k != sha256);
        cache.push_front((sha256.to_owned(), Arc::clone(&bytes)));
        while cache.len() > CACHED_ARTIFACTS
            || (cache.len() > 1 && cache.iter().map(|(_, b)| b.len()).sum::<usize>() > CACHED_ARTIFACT_BYTES)
        {
            cache.pop_back();
        }
        Ok(bytes)
    }

    /// Records a validation result; a pass moves `registered` to `validated`.
    /// Runs the validation gate on `dataset` (CSV bytes) and stores the result (blocking);
    /// returns the report and a one-line detail for the audit log.
    pub fn validate(
        &self,
        name: &str,
        version: &str,
        dataset: &[u8],
        q: &crate::models::validation::ValidateOptions,
        by: &str,
    ) -> Result<(crate::models::validation::Report, String), RegistryError> {
        use crate::models::validation::{self, Policy};
        // The model's stored thresholds, each overridable for this run.
        let stored = self.policy(name)?;
        let policy = Policy {
            min_accuracy: q.min_accuracy.or(stored.min_accuracy),
            max_accuracy_drop: q.max_accuracy_drop.unwrap_or(stored.max_accuracy_drop),
            max_f1_drop: q.max_f1_drop.unwrap_or(stored.max_f1_drop),
            max_p99_ratio: q.max_p99_ratio.unwrap_or(stored.max_p99_ratio),
            p99_slack_ms: q.p99_slack_ms.unwrap_or(stored.p99_slack_ms),
        };
        policy.validate().map_err(|e| RegistryError::Invalid(e.to_string()))?;
        let record = self.get(name, version)?;
        let bundle_bytes = self.artifact(&record.bundle_sha256)?;
        let bundle = Bundle::parse(&bundle_bytes).map_err(|e| {
            RegistryError::Store(StoreError::Corrupt {
                key: format!("artifact of {}", record.id()),
                detail: e.to_string(),
            })
        })?;
        // The gate runs where the key is: an encrypted model is opened here only with a bundle key.
        let bundle = self.opened(&bundle).map_err(|e| {
            RegistryError::Invalid(format!("{e}: list that key in [registry] bundle_keys to validate here"))
        })?;
        let table = crate::models::packaging::Table::parse(dataset, "the dataset")
            .map_err(|e| RegistryError::Invalid(e.to_string()))?;
        let production = self.production(name)?.filter(|p| p.version != version);
        let production_report = production
            .as_ref()
            .and_then(|p| p.validation.clone())
            .and_then(|v| serde_json::from_value::<validation::Report>(v).ok());
        // Its bundle, if the registry still holds it, so its latency is timed beside the
        // candidate's; a purged or unreadable one falls back to its recorded figures.
        let production_bundle = production
            .as_ref()
            .filter(|_| production_report.is_some())
            .and_then(|p| self.artifact(&p.bundle_sha256).ok())
            .and_then(|bytes| Bundle::parse(&bytes).ok())
            .and_then(|b| self.opened(&b).ok());
        let production = production_report
            .as_ref()
            .map(|report| validation::Production { report, bundle: production_bundle.as_ref() });
        let report =
            validation::run(&bundle, &table, &q.label, q.segment.as_deref(), &policy, production.as_ref())
                .map_err(|e| RegistryError::Invalid(e.to_string()))?;
        let value = serde_json::to_value(&report).map_err(|e| {
            RegistryError::Store(StoreError::Corrupt {
                key: format!("validation of {}", record.id()),
                detail: e.to_string(),
            })
        })?;
        self.set_validation(name, version, value, report.passed, by)?;
        let detail = if report.passed {
            format!("passed: accuracy {:.4}", report.metrics.accuracy)
        } else {
            format!("failed: {}", report.failures.join("; "))
        };
        Ok((report, detail))
    }

    pub fn set_validation(
        &self,
        name: &str,
        version: &str,
        result: serde_json::Value,
        passed: bool,
        by: &str,
    ) -> Result<VersionRecord, RegistryError> {
        let id = format!("{name}@{version}");
        let versions = self.records.change_model(name, &|versions| {
            let i = index_of(versions, version, &id)?;
            let record = &mut versions[i];
            record.validation = Some(result.clone());
            record.validation_passed = Some(passed);
            if passed && record.stage == Stage::Registered {
                push_transition(record, Stage::Validated, by, "validation passed");
            }
            Ok(vec![i])
        })?;
        versions.into_iter().find(|r| r.version == version).ok_or(RegistryError::NotFound(id))
    }

    /// Moves a version to `to`; only validated versions may go past `registered`.
    pub fn transition(
        &self,
        name: &str,
        version: &str,
        to: Stage,
        by: &str,
        note: &str,
    ) -> Result<VersionRecord, RegistryError> {
        let id = format!("{name}@{version}");
        let versions = self.records.change_model(name, &|versions| {
            let i = index_of(versions, version, &id)?;
            let record = &mut versions[i];
            if record.stage == to {
                return Ok(Vec::new());
            }
            if matches!(to, Stage::Validated | Stage::Canary | Stage::Production)
                && record.validation_passed != Some(true)
            {
                return Err(RegistryError::Refused(format!(
                    "{id} has not passed validation: run `outpostctl model validate {id}` first"
                )));
            }
            if to == Stage::Registered {
                return Err(RegistryError::Refused("a version cannot go back to `registered`".into()));
            }
            push_transition(record, to, by, note);
            let mut changed = vec![i];
            if to == Stage::Production {
                // The model's previous production version steps down (kept for rollback).
                for (j, other) in versions.iter_mut().enumerate() {
                    if j != i && other.stage == Stage::Production {
                        push_transition(other, Stage::Archived, by, &format!("superseded by {version}"));
                        changed.push(j);
                    }
                }
            }
            Ok(changed)
        })?;
        versions.into_iter().find(|r| r.version == version).ok_or(RegistryError::NotFound(id))
    }

    /// The current production version of a model, if any.
    pub fn production(&self, name: &str) -> Result<Option<VersionRecord>, RegistryError> {
        Ok(self.versions(name)?.into_iter().find(|r| r.stage == Stage::Production))
    }

    /// The model's versions most recently promoted to production, newest first.
    pub fn production_history(&self, name: &str) -> Result<Vec<VersionRecord>, RegistryError> {
        let mut promoted: Vec<(u64, VersionRecord)> = self
            .versions(name)?
            .into_iter()
            .filter_map(|r| {
                let at = r.transitions.iter().filter(|t| t.to == Stage::Production).map(|t| t.at_ms).max()?;
                Some((at, r))
            })
            .collect();
        promoted.sort_by_key(|p| std::cmp::Reverse(p.0));
        Ok(promoted.into_iter().map(|(_, r)| r).collect())
    }

    /// The validation thresholds of a model (defaults until an operator sets them).
    pub fn policy(&self, name: &str) -> Result<crate::models::validation::Policy, RegistryError> {
        Ok(self.records.policy(name)?.unwrap_or_default())
    }

    /// Stores a model's validation thresholds.
    pub fn set_policy(
        &self,
        name: &str,
        policy: &crate::models::validation::Policy,
    ) -> Result<(), RegistryError> {
        outpost_shared::names::check_model(name).map_err(|e| RegistryError::Invalid(e.to_string()))?;
        self.records.set_policy(name, policy)
    }

    /// Deletes an archived version and its artifact (unless another version shares it).
    pub fn purge(&self, name: &str, version: &str) -> Result<VersionRecord, RegistryError> {
        let record = self.get(name, version)?;
        if record.stage != Stage::Archived {
            return Err(RegistryError::Refused(format!(
                "{} is `{}`: only archived versions can be purged",
                record.id(),
                record.stage.as_str()
            )));
        }
        if self.production_history(name)?.iter().take(KEEP_PRODUCTION).any(|r| r.version == version) {
            return Err(RegistryError::Refused(format!(
                "{} is one of the last {KEEP_PRODUCTION} production versions of `{name}`, kept for rollback",
                record.id()
            )));
        }
        self.records.remove(name, version)?;
        if self.records.remove_unused_blob(&record.bundle_sha256)? {
            self.cache.lock().unwrap_or_else(|p| p.into_inner()).retain(|(k, _)| *k != record.bundle_sha256);
        }
        Ok(record)
    }
}

/// Where `version` is among a model's versions.
fn index_of(versions: &[VersionRecord], version: &str, id: &str) -> Result<usize, RegistryError> {
    versions.iter().position(|r| r.version == version).ok_or_else(|| RegistryError::NotFound(id.to_owned()))
}

fn push_transition(record: &mut VersionRecord, to: Stage, by: &str, note: &str) {
    record.transitions.push(Transition {
        from: Some(record.stage),
        to,
        by: by.to_owned(),
        at_ms: now_ms(),
        note: note.to_owned(),
    });
    record.stage = to;
}

/// Orders versions by semver when both parse, else as text.
pub fn semver_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    match (semver::Version::parse(a), semver::Version::parse(b)) {
        (Ok(a), Ok(b)) => a.cmp(&b),
        _ => a.cmp(b),
    }
}

mod keys;
pub mod store;

#[cfg(test)]
mod tests;
