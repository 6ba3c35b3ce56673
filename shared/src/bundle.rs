//! The model bundle: one file that carries a model version and everything needed to judge it —
//! a manifest (name, semver version, the model's sha256, its input/output schema, training
//! facts, baseline feature statistics for drift, reference input/output pairs from the
//! training runtime, the model card), the ONNX bytes, and Ed25519 signatures over the manifest.
//!
//! Layout (format version 1, integers little-endian):
//!
//! ```text
//! "OPBUNDLE"            8 bytes magic
//! format version        u32 (= 1)
//! manifest length       u32, then the manifest (UTF-8 JSON, at most 64 MiB)
//! signature count       u32 (at most 16), then per signature: key id (8 bytes) + Ed25519 (64)
//! model length          u64, then the ONNX bytes; nothing may follow
//! ```
//!
//! A signature covers [`SIGNING_CONTEXT`] followed by the exact manifest bytes; the manifest
//! names the model's sha256 and size, so a signature binds the model too. Signatures sit
//! outside the signed bytes, so an offline key can add one to a built bundle
//! (`outpostctl bundle sign`) and a bundle can carry the old and the new key's signature while
//! keys rotate. [`Bundle::parse`] checks structure only (for `inspect`); [`Bundle::open`] also
//! checks the model hash and requires a valid signature by a trusted key — use it before
//! anything is loaded.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::protocol::keys::{PublicKey, SigningKey};
use crate::reference::Reference;
use crate::runtime::Signature;

/// Magic bytes at the start of every bundle.
pub const MAGIC: &[u8; 8] = b"OPBUNDLE";
/// The bundle format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// What a signature covers, before the manifest bytes.
pub const SIGNING_CONTEXT: &[u8] = b"outpost bundle manifest v1\n";
/// Largest manifest accepted.
pub const MAX_MANIFEST_BYTES: usize = 64 * 1024 * 1024;
/// Most signatures a bundle may carry.
pub const MAX_SIGNATURES: usize = 16;
/// Most rows kept in a baseline's reference sample.
pub const BASELINE_SAMPLE_ROWS: usize = 500;
/// Quantiles stored per baseline feature: q = 0, 0.01, …, 1.
pub const BASELINE_QUANTILES: usize = 101;

/// Why a bundle cannot be read or trusted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BundleError {
    #[error("not an Outpost bundle (bad magic bytes)")]
    Magic,
    #[error("bundle format version {0} is not supported (this build reads {FORMAT_VERSION})")]
    UnsupportedFormat(u32),
    #[error("bundle is truncated: {0}")]
    Truncated(&'static str),
    #[error("cannot read the bundle: {0}")]
    Read(String),
    #[error("bundle has {0} bytes after the model")]
    TrailingBytes(u64),
    #[error("bundle manifest is {0} bytes, more than {MAX_MANIFEST_BYTES}")]
    ManifestTooLarge(usize),
    #[error("bundle carries {0} signatures, more than {MAX_SIGNATURES}")]
    TooManySignatures(usize),
    #[error("bundle manifest is not valid: {0}")]
    Manifest(String),
    #[error("bundle model is {found} bytes, the manifest says {expected}")]
    ModelSize { expected: u64, found: u64 },
    #[error("bundle model sha256 is {found}, the manifest says {expected}: the model was altered")]
    ModelHash { expected: String, found: String },
    #[error("bundle is unsigned")]
    Unsigned,
    #[error("bundle signature by key {0} does not verify: the manifest was altered or the signature forged")]
    BadSignature(String),
    #[error("bundle is signed by untrusted key(s) {found}; trusted: {trusted}")]
    UntrustedKey { found: String, trusted: String },
    #[error("bundle is already signed by key {0}")]
    AlreadySigned(String),
    #[error("bundle encryption: {0}")]
    Encryption(String),
    #[error(
        "{id} is encrypted to bundle key {key_id}, which is not held here (held: {held}; registry.bundle_keys)"
    )]
    NoBundleKey { id: String, key_id: String, held: String },
    #[error(
        "bundle is signed by {valid} of the {threshold} release keys the trust root requires (valid: {signers}; \
         release keys: {trusted})"
    )]
    BelowThreshold { valid: usize, threshold: usize, signers: String, trusted: String },
}

/// A declared input or output, as V2 metadata names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorSchema {
    pub name: String,
    pub datatype: String,
    /// -1 where the size varies (the batch).
    pub shape: Vec<i64>,
}

impl TensorSchema {
    /// The schemas of a loaded model's inputs and outputs.
    pub fn of(signature: &Signature) -> (Vec<TensorSchema>, Vec<TensorSchema>) {
        let map = |specs: &[crate::TensorSpec]| {
            specs
                .iter()
                .map(|s| TensorSchema {
                    name: s.name.clone(),
                    datatype: s.datatype.v2_name().to_owned(),
                    shape: s.shape.iter().map(crate::Dim::v2).collect(),
                })
                .collect()
        };
        (map(&signature.inputs), map(&signature.outputs))
    }
}

/// What to do with NaN or infinite values in a request's float inputs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NanPolicy {
    /// Refuse the request with 400, naming the element.
    #[default]
    Reject,
    /// Pass the values to the model.
    Allow,
}

/// The model file inside the bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFile {
    /// Lowercase hex.
    pub sha256: String,
    pub size: u64,
}

/// How the version was made.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Training {
    /// As the operator gave it (e.g. `2026-11-20`).
    pub date: Option<String>,
    /// sha256 (hex) of the training dataset.
    pub dataset_sha256: Option<String>,
    pub hyperparameters: BTreeMap<String, String>,
    /// The version this one was derived from (retraining).
    pub parent_version: Option<String>,
}

/// One feature's distribution in the reference dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureStats {
    pub name: String,
    /// Rows with a finite value.
    pub count: u64,
    /// Rows with NaN, infinity or an empty cell.
    pub missing: u64,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
    /// Population standard deviation.
    pub std: f64,
    /// [`BASELINE_QUANTILES`] values at q = 0, 0.01, …, 1 (linear interpolation, as numpy's default).
    pub quantiles: Vec<f64>,
}

/// The reference dataset's feature statistics, for drift detection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Baseline {
    pub rows: u64,
    /// sha256 (hex) of the file the statistics came from.
    pub source_sha256: String,
    pub features: Vec<FeatureStats>,
    /// Up to [`BASELINE_SAMPLE_ROWS`] rows taken at an even stride (`null` = missing).
    pub sample: Vec<Vec<Option<f64>>>,
}

impl Baseline {
    /// Computes statistics over `rows` (one value per feature in `names`; NaN = missing).
    pub fn compute(
        names: &[String],
        rows: &[Vec<f64>],
        source_sha256: &str,
    ) -> Result<Baseline, ManifestError> {
        if rows.is_empty() {
            return Err(ManifestError::NoBaselineRows);
        }
        if let Some((i, row)) = rows.iter().enumerate().find(|(_, r)| r.len() != names.len()) {
            return Err(ManifestError::BaselineRow { row: i + 1, values: row.len(), expected: names.len() });
        }
        let features = names
            .iter()
            .enumerate()
            .map(|(j, name)| {
                let mut values: Vec<f64> = rows.iter().map(|r| r[j]).filter(|v| v.is_finite()).collect();
                values.sort_by(f64::total_cmp);
                let count = values.len();
                let missing = (rows.len() - count) as u64;
                if count == 0 {
                    return FeatureStats {
                        name: name.clone(),
                        count: 0,
                        missing,
                        min: 0.0,
                        max: 0.0,
                        mean: 0.0,
                        std: 0.0,
                        quantiles: Vec::new(),
                    };
                }
                let mean = values.iter().sum::<f64>() / count as f64;
                let var = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / count as f64;
                let quantiles = (0..BASELINE_QUANTILES)
                    .map(|k| quantile_sorted(&values, k as f64 / (BASELINE_QUANTILES - 1) as f64))
                    .collect();
                FeatureStats {
                    name: name.clone(),
                    count: count as u64,
                    missing,
                    min: values[0],
                    max: values[count - 1],
                    mean,
                    std: var.sqrt(),
                    quantiles,
                }
            })
            .collect();
        let stride = rows.len().div_ceil(BASELINE_SAMPLE_ROWS);
        let sample = rows
            .iter()
            .step_by(stride)
            .map(|r| r.iter().map(|v| v.is_finite().then_some(*v)).collect())
            .collect();
        Ok(Baseline { rows: rows.len() as u64, source_sha256: source_sha256.to_owned(), features, sample })
    }
}

/// The q-quantile of sorted values, interpolating linearly between neighbours.
fn quantile_sorted(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// Everything a bundle says about its model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    /// Semantic version.
    pub version: String,
    /// When the bundle was built (Unix seconds).
    pub created_at: u64,
    pub model: ModelFile,
    pub inputs: Vec<TensorSchema>,
    pub outputs: Vec<TensorSchema>,
    #[serde(default)]
    pub nan_policy: NanPolicy,
    #[serde(default)]
    pub training: Training,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    #[serde(default)]
    pub baseline: Option<Baseline>,
    /// Input/output pairs from the training runtime: every device must reproduce them
    /// before the version may serve.
    #[serde(default)]
    pub reference: Option<Reference>,
    /// The model card (Markdown).
    #[serde(default)]
    pub card: Option<String>,
    /// Set when the model is encrypted to a bundle key ([`encryption`]); `model` then describes
    /// the ciphertext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<ModelEncryption>,
}

/// What is wrong with a manifest (or the baseline or name going into one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error(transparent)]
    Name(#[from] crate::names::NameError),
    #[error("version `{version}`: {detail}")]
    Version { version: String, detail: String },
    #[error("version `{0}` carries build metadata, which semver ignores in ordering")]
    BuildMetadata(String),
    #[error("{what} `{value}` is not 64 lowercase hex digits")]
    Sha256 { what: &'static str, value: String },
    #[error("the model schema must name at least one input and one output")]
    EmptySchema,
    #[error("baseline sample row has {values} values for {features} features")]
    SampleRow { values: usize, features: usize },
    #[error("reference format version {0} is not supported")]
    ReferenceFormat(u32),
    #[error("the baseline dataset has no rows")]
    NoBaselineRows,
    #[error("baseline row {row} has {values} values, expected {expected}")]
    BaselineRow { row: usize, values: usize, expected: usize },
}

/// Why a bundle's model cannot serve.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LoadError {
    #[error("{0}")]
    Model(String),
    #[error("the model's schema ({actual}) is not the one the manifest declares ({declared})")]
    Schema { actual: String, declared: String },
    #[error("does not reproduce the bundle's reference outputs: {0}")]
    Reference(String),
    #[error("sample run failed: {0}")]
    Sample(String),
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl Manifest {
    /// Checks what the types cannot express.
    pub fn validate(&self) -> Result<(), ManifestError> {
        crate::names::check_model(&self.name)?;
        crate::names::check("version", &self.version)?;
        let version = semver::Version::parse(&self.version)
            .map_err(|e| ManifestError::Version { version: self.version.clone(), detail: e.to_string() })?;
        if !version.build.is_empty() {
            return Err(ManifestError::BuildMetadata(self.version.clone()));
        }
        if !is_sha256_hex(&self.model.sha256) {
            return Err(ManifestError::Sha256 { what: "model sha256", value: self.model.sha256.clone() });
        }
        for (what, hash) in [
            ("training.dataset_sha256", self.training.dataset_sha256.as_deref()),
            ("baseline.source_sha256", self.baseline.as_ref().map(|b| b.source_sha256.as_str())),
            ("encryption.plain.sha256", self.encryption.as_ref().map(|e| e.plain.sha256.as_str())),
        ] {
            if let Some(hash) = hash.filter(|h| !is_sha256_hex(h)) {
                return Err(ManifestError::Sha256 { what, value: hash.to_owned() });
            }
        }
        if self.inputs.is_empty() || self.outputs.is_empty() {
            return Err(ManifestError::EmptySchema);
        }
        if let Some(baseline) = &self.baseline
            && let Some(row) = baseline.sample.iter().find(|r| r.len() != baseline.features.len())
        {
            return Err(ManifestError::SampleRow { values: row.len(), features: baseline.features.len() });
        }
        if let Some(reference) = &self.reference
            && reference.format_version != crate::reference::FORMAT_VERSION
        {
            return Err(ManifestError::ReferenceFormat(reference.format_version));
        }
        Ok(())
    }

    /// `name@version`.
    pub fn id(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }
}

/// One signature: the signing key's id and the Ed25519 signature.
#[derive(Clone, PartialEq, Eq)]
pub struct BundleSignature {
    pub key_id: [u8; 8],
    pub signature: [u8; 64],
}

impl BundleSignature {
    pub fn key_id_hex(&self) -> String {
        hex(&self.key_id)
    }
}

impl fmt::Debug for BundleSignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BundleSignature").field("key_id", &self.key_id_hex()).finish_non_exhaustive()
    }
}

/// A bundle read into memory.
#[derive(Debug, Clone, PartialEq)]
pub struct Bundle {
    pub manifest: Manifest,
    /// The exact manifest bytes the signatures cover.
    pub manifest_bytes: Vec<u8>,
    pub signatures: Vec<BundleSignature>,
    pub model: Vec<u8>,
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// sha256 of `bytes`, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

/// Reads a bundle's parts from any source, knowing how many bytes it holds in all: every length
/// is checked against what is left before anything is allocated or read.
struct Reader<R> {
    src: R,
    rest: u64,
}

impl<R: std::io::Read> Reader<R> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<Vec<u8>, BundleError> {
        if self.rest < n as u64 {
            return Err(BundleError::Truncated(what));
        }
        let mut out = vec![0u8; n];
        self.src.read_exact(&mut out).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => BundleError::Truncated(what),
            _ => BundleError::Read(e.to_string()),
        })?;
        self.rest -= n as u64;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], BundleError> {
        let mut out = [0u8; N];
        out.copy_from_slice(&self.take(N, what)?);
        Ok(out)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, BundleError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, BundleError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
}

impl Bundle {
    /// Builds an unsigned bundle; `manifest.model` is filled in from `model`.
    pub fn build(mut manifest: Manifest, model: Vec<u8>) -> Result<Bundle, BundleError> {
        manifest.model = ModelFile { sha256: sha256_hex(&model), size: model.len() as u64 };
        manifest.validate().map_err(|e| BundleError::Manifest(e.to_string()))?;
        let manifest_bytes =
            serde_json::to_vec_pretty(&manifest).map_err(|e| BundleError::Manifest(e.to_string()))?;
        if manifest_bytes.len() > MAX_MANIFEST_BYTES {
            return Err(BundleError::ManifestTooLarge(manifest_bytes.len()));
        }
        Ok(Bundle { manifest, manifest_bytes, signatures: Vec::new(), model })
    }

    /// Adds a signature by `key` over the manifest.
    pub fn sign(&mut self, key: &SigningKey) -> Result<(), BundleError> {
        let key_id = key_id_bytes(&key.public_key());
        if self.signatures.iter().any(|s| s.key_id == key_id) {
            return Err(BundleError::AlreadySigned(hex(&key_id)));
        }
        if self.signatures.len() >= MAX_SIGNATURES {
            return Err(BundleError::TooManySignatures(self.signatures.len() + 1));
        }
        let signature = key.sign(&signed_message(&self.manifest_bytes));
        self.signatures.push(BundleSignature { key_id, signature });
        Ok(())
    }

    /// The file's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            32 + self.manifest_bytes.len() + 72 * self.signatures.len() + self.model.len(),
        );
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&(self.manifest_bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.manifest_bytes);
        out.extend_from_slice(&(self.signatures.len() as u32).to_le_bytes());
        for s in &self.signatures {
            out.extend_from_slice(&s.key_id);
            out.extend_from_slice(&s.signature);
        }
        out.extend_from_slice(&(self.model.len() as u64).to_le_bytes());
        out.extend_from_slice(&self.model);
        out
    }

    /// Reads the structure and the manifest; checks nothing about signatures or the model hash.
    pub fn parse(bytes: &[u8]) -> Result<Bundle, BundleError> {
        Bundle::read(bytes, bytes.len() as u64)
    }

    /// [`Bundle::parse`] from a source holding `len` bytes (a file a large upload was spooled to):
    /// the structure, the manifest and the model's declared size are checked before the model is
    /// read, so a malformed file costs a few reads, not its size in memory.
    pub fn read(src: impl std::io::Read, len: u64) -> Result<Bundle, BundleError> {
        let mut r = Reader { src, rest: len };
        let magic = r.take(MAGIC.len(), "no magic bytes").map_err(|e| match e {
            BundleError::Truncated(_) => BundleError::Magic,
            other => other,
        })?;
        if magic != MAGIC {
            return Err(BundleError::Magic);
        }
        let format = r.u32("no format version")?;
        if format != FORMAT_VERSION {
            return Err(BundleError::UnsupportedFormat(format));
        }
        let manifest_len = r.u32("no manifest length")? as usize;
        if manifest_len > MAX_MANIFEST_BYTES {
            return Err(BundleError::ManifestTooLarge(manifest_len));
        }
        let manifest_bytes = r.take(manifest_len, "the manifest is cut short")?;
        let count = r.u32("no signature count")? as usize;
        if count > MAX_SIGNATURES {
            return Err(BundleError::TooManySignatures(count));
        }
        let mut signatures = Vec::with_capacity(count);
        for _ in 0..count {
            let raw: [u8; 72] = r.array("a signature is cut short")?;
            let mut key_id = [0u8; 8];
            let mut signature = [0u8; 64];
            key_id.copy_from_slice(&raw[..8]);
            signature.copy_from_slice(&raw[8..]);
            signatures.push(BundleSignature { key_id, signature });
        }
        let model_len = r.u64("no model length")?;
        let found = r.rest;
        if found < model_len {
            return Err(BundleError::Truncated("the model is cut short"));
        }
        if found > model_len {
            return Err(BundleError::TrailingBytes(found - model_len));
        }
        let manifest: Manifest =
            serde_json::from_slice(&manifest_bytes).map_err(|e| BundleError::Manifest(e.to_string()))?;
        manifest.validate().map_err(|e| BundleError::Manifest(e.to_string()))?;
        if manifest.model.size != model_len {
            return Err(BundleError::ModelSize { expected: manifest.model.size, found: model_len });
        }
        let model_len = usize::try_from(model_len)
            .map_err(|_| BundleError::Read("the model does not fit in this machine's memory".into()))?;
        let model = r.take(model_len, "the model is cut short")?;
        Ok(Bundle { manifest, manifest_bytes, signatures, model })
    }

    /// Checks the model against the manifest's hash.
    pub fn verify_model(&self) -> Result<(), BundleError> {
        let found = sha256_hex(&self.model);
        if found != self.manifest.model.sha256 {
            return Err(BundleError::ModelHash { expected: self.manifest.model.sha256.clone(), found });
        }
        Ok(())
    }

    /// Requires a valid signature by one of `trusted`; returns that key's id (hex).
    pub fn verify_signature(&self, trusted: &[PublicKey]) -> Result<String, BundleError> {
        if self.signatures.is_empty() {
            return Err(BundleError::Unsigned);
        }
        let message = signed_message(&self.manifest_bytes);
        for s in &self.signatures {
            if let Some(key) = trusted.iter().find(|k| key_id_bytes(k) == s.key_id) {
                key.verify(&message, &s.signature).map_err(|_| BundleError::BadSignature(s.key_id_hex()))?;
                return Ok(s.key_id_hex());
            }
        }
        Err(BundleError::UntrustedKey {
            found: self.signatures.iter().map(BundleSignature::key_id_hex).collect::<Vec<_>>().join(", "),
            trusted: if trusted.is_empty() {
                "none configured".into()
            } else {
                trusted.iter().map(PublicKey::key_id).collect::<Vec<_>>().join(", ")
            },
        })
    }

    /// Requires *every* signature to be by one of `trusted` and to verify; returns their key
    /// ids (hex). For a registry, which lists who signed: an unknown key or a forged signature
    /// is an error naming that key, never a name in the list. An unsigned bundle passes (the
    /// registry signs it itself).
    pub fn verify_every_signature(&self, trusted: &[PublicKey]) -> Result<Vec<String>, BundleError> {
        let message = signed_message(&self.manifest_bytes);
        let mut ids = Vec::with_capacity(self.signatures.len());
        for s in &self.signatures {
            let Some(key) = trusted.iter().find(|k| key_id_bytes(k) == s.key_id) else {
                return Err(BundleError::UntrustedKey {
                    found: s.key_id_hex(),
                    trusted: if trusted.is_empty() {
                        "none configured".into()
                    } else {
                        trusted.iter().map(PublicKey::key_id).collect::<Vec<_>>().join(", ")
                    },
                });
            };
            key.verify(&message, &s.signature).map_err(|_| BundleError::BadSignature(s.key_id_hex()))?;
            ids.push(s.key_id_hex());
        }
        Ok(ids)
    }

    /// Parses and fully verifies: structure, model hash, and a trusted signature.
    pub fn open(bytes: &[u8], trusted: &[PublicKey]) -> Result<Bundle, BundleError> {
        Bundle::open_release(bytes, &ReleaseKeys::any(trusted.to_vec()))
    }
}

impl Bundle {
    /// Loads the model with our runtime and checks it against the manifest: its schema must be
    /// the declared one, and it must reproduce the reference outputs (or, without references,
    /// run once on an all-zero sample). Returns the model and what was checked. Check the
    /// signature first ([`Bundle::open`]); this is the expensive part.
    pub fn load_model(&self) -> Result<(crate::Model, String), LoadError> {
        let manifest = &self.manifest;
        let model =
            crate::Model::load_bytes(&self.model, None).map_err(|e| LoadError::Model(e.to_string()))?;
        let (inputs, outputs) = TensorSchema::of(model.signature());
        if inputs != manifest.inputs || outputs != manifest.outputs {
            return Err(LoadError::Schema {
                actual: describe_schema(&inputs, &outputs),
                declared: describe_schema(&manifest.inputs, &manifest.outputs),
            });
        }
        let evidence = match &manifest.reference {
            Some(reference) => {
                let report = reference.verify(&model).map_err(|e| LoadError::Reference(e.to_string()))?;
                let compared: Vec<String> = report
                    .outputs
                    .iter()
                    .map(|(name, n, diff)| format!("{name}: {n} values, max diff {diff:.2e}"))
                    .collect();
                format!("reproduced the bundle's reference outputs ({})", compared.join("; "))
            }
            None => {
                model
                    .sample_inputs(1)
                    .and_then(|inputs| model.run(inputs))
                    .and_then(|outputs| model.check_outputs(&outputs))
                    .map_err(|e| LoadError::Sample(e.to_string()))?;
                "ran an all-zero sample (the bundle has no reference outputs)".to_owned()
            }
        };
        Ok((model, evidence))
    }
}

fn describe_schema(inputs: &[TensorSchema], outputs: &[TensorSchema]) -> String {
    let one = |t: &TensorSchema| format!("{} {} {:?}", t.name, t.datatype, t.shape);
    format!(
        "inputs {}; outputs {}",
        inputs.iter().map(one).collect::<Vec<_>>().join(", "),
        outputs.iter().map(one).collect::<Vec<_>>().join(", ")
    )
}

fn signed_message(manifest: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNING_CONTEXT.len() + manifest.len());
    m.extend_from_slice(SIGNING_CONTEXT);
    m.extend_from_slice(manifest);
    m
}

fn key_id_bytes(key: &PublicKey) -> [u8; 8] {
    let digest = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    let mut id = [0u8; 8];
    id.copy_from_slice(&digest.as_ref()[..8]);
    id
}

mod encryption;
mod release;
pub use encryption::{CIPHER, ModelEncryption, bundle_key_id};
pub use release::ReleaseKeys;

#[cfg(test)]
mod tests;
