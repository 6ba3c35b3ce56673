//! Agent configuration: a TOML file, then `OUTPOST_*` environment overrides, then CLI flags.
//!
//! Every section is a plain struct with named defaults and `deny_unknown_fields`, so a typo
//! fails at start with the key named instead of being ignored. Environment variables map to
//! keys with `__` between levels: `OUTPOST_HTTP__MAX_BODY_BYTES=1048576` sets
//! `http.max_body_bytes`. Relative model paths in a file are resolved against the file's folder.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;

use crate::batching::BatchingConfig;
use crate::prediction_log::PredictionLogConfig;
pub use crate::prediction_log::RecordInputs;
use crate::telemetry::{Sampling, TelemetryConfig};
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

pub use crate::ENV_PREFIX;

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    MissingFile(PathBuf),
    #[error("invalid configuration: {0}")]
    Invalid(String),
    #[error("invalid configuration: `{key}` {problem}")]
    Key { key: String, problem: String },
}

/// The whole agent configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address the V2 HTTP API listens on. Port 0 picks a free port (logged at start).
    pub listen: SocketAddr,
    pub http: HttpConfig,
    pub runtime: RuntimeConfig,
    pub shutdown: ShutdownConfig,
    pub log: LogConfig,
    /// Where the agent keeps its state (the prediction log); relative paths are relative to
    /// the working directory.
    pub data_dir: PathBuf,
    pub prediction_log: PredictionLogConfig,
    /// Reports, prediction batches and the link to the coordinator.
    pub telemetry: TelemetryConfig,
    /// Signed model bundles: trusted keys and the local store.
    pub registry: RegistryConfig,
    /// Drift windows of bundle-managed models against their baselines.
    pub drift: crate::drift::DriftConfig,
    /// Dynamic batching, opt-in per model name (file-served or bundle-managed):
    /// `[batching.<model>] max_batch = 32, max_queue_delay_us = 500`. Concurrent requests to
    /// one version run as one batch of at most `max_batch` rows; a request waits at most
    /// `max_queue_delay_us` for others, and not at all when no other request is on its way.
    /// Off for every model not named here.
    pub batching: BTreeMap<String, BatchingConfig>,
    /// Encryption at rest of the prediction log, outbox and installed bundles.
    pub encryption: crate::at_rest::EncryptionConfig,
    /// Models to serve from files (bundle-managed models come from the local store).
    pub models: Vec<ModelConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            http: HttpConfig::default(),
            runtime: RuntimeConfig::default(),
            shutdown: ShutdownConfig::default(),
            log: LogConfig::default(),
            data_dir: PathBuf::from("outpost-data"),
            prediction_log: PredictionLogConfig::default(),
            telemetry: TelemetryConfig::default(),
            registry: RegistryConfig::default(),
            drift: crate::drift::DriftConfig::default(),
            batching: Default::default(),
            encryption: crate::at_rest::EncryptionConfig::default(),
            models: Vec::new(),
        }
    }
}

/// HTTP limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Largest request body accepted; larger ones get 413.
    pub max_body_bytes: usize,
    /// Longest wait for the next piece of a request body before it gets 408.
    pub body_timeout_secs: u64,
    /// Longest a whole request may take — body, queue and inference — before it gets 408
    /// (a body trickled a byte at a time cannot outlive it).
    pub request_timeout_secs: u64,
    /// Longest a client may take to send a request's headers, and longest a kept-alive
    /// connection may sit idle between requests.
    pub header_read_timeout_secs: u64,
    /// Connections open at once; one more is closed on arrival (and counted).
    pub max_connections: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_body_bytes: 4 * 1024 * 1024,
            body_timeout_secs: 30,
            request_timeout_secs: 120,
            header_read_timeout_secs: 60,
            max_connections: 1024,
        }
    }
}

impl HttpConfig {
    /// The front door's limits.
    pub fn limits(&self) -> outpost_shared::front::Limits {
        outpost_shared::front::Limits {
            max_connections: self.max_connections,
            header_read_timeout: std::time::Duration::from_secs(self.header_read_timeout_secs),
            request_timeout: std::time::Duration::from_secs(self.request_timeout_secs),
        }
    }
}

/// Signed model bundles (`outpost-agent import`, desired state from the coordinator).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// Ed25519 public keys (64 hex digits each) whose bundle signatures this agent accepts (any
    /// one suffices); list the old and the new key while keys rotate. Set, they override the
    /// trust root's release role (a device that takes only its owner's offline key). Empty: an
    /// enrolled device follows its trust root's release keys and threshold; one without a root
    /// refuses bundles.
    pub trusted_keys: Vec<String>,
    /// Keys that open bundles encrypted to a bundle key (`outpostctl bundle encrypt`):
    /// `file:PATH`, `env:NAME` or `credential:NAME`, 32 bytes as 64 hex digits. A bundle
    /// encrypted to a key not listed here is refused, naming the key it needs.
    pub bundle_keys: Vec<String>,
    /// Versions per model kept on disk for local rollback (the active one included).
    pub keep_versions: usize,
    /// Bundles download in pieces of this size (HTTP Range); a cut download resumes from the
    /// last whole piece.
    pub download_chunk_bytes: u64,
    /// Bandwidth cap for bundle downloads on a constrained link; 0 = none.
    pub download_max_bytes_per_sec: u64,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            trusted_keys: Vec::new(),
            bundle_keys: Vec::new(),
            keep_versions: 3,
            download_chunk_bytes: 1024 * 1024,
            download_max_bytes_per_sec: 0,
        }
    }
}

impl RegistryConfig {
    /// The trusted keys, parsed; the error names the entry.
    pub fn keys(&self) -> Result<Vec<outpost_shared::protocol::keys::PublicKey>, ConfigError> {
        self.trusted_keys
            .iter()
            .enumerate()
            .map(|(i, text)| {
                outpost_shared::protocol::keys::PublicKey::from_hex(text).map_err(|problem| {
                    ConfigError::Key {
                        key: format!("registry.trusted_keys[{i}]"),
                        problem: format!("is not an Ed25519 public key in hex: {problem}"),
                    }
                })
            })
            .collect()
    }

    /// The bundle keys, loaded from their sources; the error names the entry.
    pub fn load_bundle_keys(&self) -> Result<Vec<outpost_shared::keysource::SourcedKey>, ConfigError> {
        self.bundle_keys
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                let bad =
                    |problem: String| ConfigError::Key { key: format!("registry.bundle_keys[{i}]"), problem };
                let source = outpost_shared::keysource::KeySource::parse(spec, ENV_PREFIX)
                    .map_err(|e| bad(e.to_string()))?;
                outpost_shared::keysource::SourcedKey::load(&source, false).map_err(|e| bad(e.to_string()))
            })
            .collect()
    }
}

/// The inference worker pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Worker threads running models; 0 means one per CPU core.
    pub workers: usize,
    /// Requests waiting for a worker; when full, new requests get 503 at once.
    pub queue_capacity: usize,
    /// FOR TESTS ONLY (cargo feature `fault-injection`, which release builds do not have: there
    /// the key is unknown and refused): extra milliseconds every inference of a model takes,
    /// keyed `name` or `name@version` — to rehearse latency gates, SLO burn and rollbacks.
    #[cfg(feature = "fault-injection")]
    pub test_delay_ms: BTreeMap<String, u64>,
    /// FOR TESTS ONLY (feature `fault-injection`): `name@version`s whose first inference aborts
    /// the whole agent process — a crash-looping version, to rehearse the watchdog.
    #[cfg(feature = "fault-injection")]
    pub test_crash: Vec<String>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            workers: 0,
            queue_capacity: 256,
            #[cfg(feature = "fault-injection")]
            test_delay_ms: Default::default(),
            #[cfg(feature = "fault-injection")]
            test_crash: Vec::new(),
        }
    }
}

impl RuntimeConfig {
    /// The injected delay for a model version (`name@version` first, then `name`).
    #[cfg(feature = "fault-injection")]
    pub fn test_delay(&self, name: &str, version: &str) -> Option<std::time::Duration> {
        self.test_delay_ms
            .get(&format!("{name}@{version}"))
            .or_else(|| self.test_delay_ms.get(name))
            .filter(|ms| **ms > 0)
            .map(|ms| std::time::Duration::from_millis(*ms))
    }

    /// Without the `fault-injection` feature nothing is slowed down.
    #[cfg(not(feature = "fault-injection"))]
    pub fn test_delay(&self, _name: &str, _version: &str) -> Option<std::time::Duration> {
        None
    }

    /// Whether an inference of this version must abort the process (`test_crash`).
    #[cfg(feature = "fault-injection")]
    pub fn test_crash(&self, name: &str, version: &str) -> bool {
        !self.test_crash.is_empty() && self.test_crash.iter().any(|v| *v == format!("{name}@{version}"))
    }

    /// Without the `fault-injection` feature nothing aborts on purpose.
    #[cfg(not(feature = "fault-injection"))]
    pub fn test_crash(&self, _name: &str, _version: &str) -> bool {
        false
    }

    /// The number of workers to start.
    pub fn effective_workers(&self) -> usize {
        if self.workers > 0 {
            self.workers
        } else {
            std::thread::available_parallelism().map(usize::from).unwrap_or(1)
        }
    }
}

/// Graceful shutdown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// How long in-flight requests may take to finish after SIGTERM/SIGINT.
    pub grace_secs: u64,
    /// After draining, how long the prediction log and the outbox may take to reach disk and
    /// close. Past it the agent exits 1 without them: storage that cannot close (its data
    /// directory gone, a failing card) must not keep the process alive.
    pub close_timeout_secs: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig { grace_secs: 30, close_timeout_secs: 10 }
    }
}

/// Log output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A default level and `target=level` directives, such as `info` or
    /// `outpost_agent=debug,info` (no span or field filters).
    pub level: String,
    /// `text` (for people) or `json` (one object per line, for a log pipeline).
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { level: "info".into(), format: LogFormat::Text }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// What to do with NaN or infinite values in a request's float inputs (also a bundle field).
pub use outpost_shared::bundle::NanPolicy;

/// One model to serve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Name clients use in `/v2/models/{name}`.
    pub name: String,
    /// The ONNX file.
    pub path: PathBuf,
    /// Version to report; default: the file's `outpost.version` metadata, else "1".
    #[serde(default)]
    pub version: Option<String>,
    /// Reference outputs to check at start-up; default: `<path stem>.reference.json` if present.
    #[serde(default)]
    pub reference: Option<PathBuf>,
    /// NaN or infinite inputs: `reject` (400) or `allow`.
    #[serde(default)]
    pub nan_policy: NanPolicy,
    /// What the prediction log keeps of the inputs.
    #[serde(default)]
    pub record_inputs: RecordInputs,
    /// Which predictions travel to the coordinator in batches: `all`, `none` or `1/N`.
    #[serde(default)]
    pub sample_predictions: Sampling,
}

impl ModelConfig {
    /// Parses the CLI form `NAME=PATH`.
    pub fn parse_cli(spec: &str) -> Result<ModelConfig, ModelSpecError> {
        let (name, path) =
            spec.split_once('=').ok_or_else(|| ModelSpecError::NotNamePath(spec.to_owned()))?;
        if path.is_empty() {
            return Err(ModelSpecError::NoPath(spec.to_owned()));
        }
        outpost_shared::names::check_model(name)?;
        Ok(ModelConfig {
            name: name.to_owned(),
            path: PathBuf::from(path),
            version: None,
            reference: None,
            nan_policy: NanPolicy::default(),
            record_inputs: RecordInputs::default(),
            sample_predictions: Sampling::default(),
        })
    }
}

/// What is wrong with `--model NAME=PATH`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelSpecError {
    #[error("`{0}` is not NAME=PATH.onnx")]
    NotNamePath(String),
    #[error("`{0}` has no path after `=`")]
    NoPath(String),
    #[error(transparent)]
    Name(#[from] outpost_shared::names::NameError),
}

impl Config {
    /// Loads the file (if given) and applies `OUTPOST_*` environment overrides.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError::MissingFile(path.to_owned()));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        // The coordinator's and outpostctl's variables may share the environment (a demo shell);
        // Kubernetes service links (`OUTPOST_…_SERVICE_HOST`, `…_PORT`, …) are not configuration
        // either: see `outpost_shared::env`.
        figment = figment.merge(
            Env::prefixed(ENV_PREFIX)
                .filter(|key| {
                    // Keys keep the environment's case (`COORDINATOR_…`).
                    !key.as_str().to_ascii_lowercase().starts_with("coordinator_")
                        && !outpost_shared::env::is_service_link(key.as_str())
                })
                .split("__"),
        );
        let mut config: Config =
            figment.extract().map_err(|e| ConfigError::Invalid(outpost_shared::env::config_error(&e)))?;
        if let Some(dir) = file.and_then(Path::parent) {
            for model in &mut config.models {
                if model.path.is_relative() {
                    model.path = dir.join(&model.path);
                }
                if let Some(reference) = model.reference.as_mut().filter(|r| r.is_relative()) {
                    *reference = dir.join(&*reference);
                }
            }
        }
        Ok(config)
    }

    /// Checks values a type cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let key = |key: &str, problem: &str| ConfigError::Key { key: key.into(), problem: problem.into() };
        if self.http.max_body_bytes < 1024 {
            return Err(key("http.max_body_bytes", "must be at least 1024"));
        }
        #[cfg(feature = "fault-injection")]
        if let Some((model, ms)) = self.runtime.test_delay_ms.iter().find(|(_, ms)| **ms > 60_000) {
            return Err(key(&format!("runtime.test_delay_ms.{model}"), &format!("{ms} ms is over a minute")));
        }
        if let Err((k, problem)) = self.drift.validate() {
            return Err(ConfigError::Key { key: k, problem });
        }
        for (model, batching) in &self.batching {
            if let Err(e) = outpost_shared::names::check_model(model) {
                return Err(key(&format!("batching.{model}"), &format!("does not name a model: {e}")));
            }
            batching.validate(model).map_err(|(key, problem)| ConfigError::Key { key, problem })?;
        }
        for (name, secs) in [
            ("http.body_timeout_secs", self.http.body_timeout_secs),
            ("http.request_timeout_secs", self.http.request_timeout_secs),
            ("http.header_read_timeout_secs", self.http.header_read_timeout_secs),
        ] {
            if secs == 0 || secs > 86_400 {
                return Err(key(name, "must be between 1 and 86400 seconds"));
            }
        }
        if self.http.max_connections == 0 || self.http.max_connections > 1_000_000 {
            return Err(key("http.max_connections", "must be between 1 and 1000000"));
        }
        if self.runtime.workers > 1024 {
            return Err(key("runtime.workers", "must be at most 1024 (0 = one per core)"));
        }
        if self.runtime.queue_capacity == 0 || self.runtime.queue_capacity > 1_000_000 {
            return Err(key("runtime.queue_capacity", "must be between 1 and 1000000"));
        }
        let log = &self.prediction_log;
        if !(1..=64).contains(&log.segments) {
            return Err(key("prediction_log.segments", "must be between 1 and 64"));
        }
        if log.max_bytes < u64::from(log.segments) * 256 * 1024 {
            return Err(key("prediction_log.max_bytes", "must be at least 256 KiB per segment"));
        }
        if !(log.max_disk_share > 0.0 && log.max_disk_share <= 1.0) {
            return Err(key(
                "prediction_log.max_disk_share",
                "must be above 0 and at most 1 (a share of the filesystem)",
            ));
        }
        if log.queue_capacity == 0 || log.queue_capacity > 1_000_000 {
            return Err(key("prediction_log.queue_capacity", "must be between 1 and 1000000"));
        }
        if log.flush_interval_ms == 0 {
            return Err(key("prediction_log.flush_interval_ms", "must be at least 1"));
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(key("data_dir", "must not be empty"));
        }
        let t = &self.telemetry;
        if !(1..=86_400).contains(&t.interval_secs) {
            return Err(key("telemetry.interval_secs", "must be between 1 and 86400"));
        }
        if t.outbox_max_bytes < 1024 * 1024 {
            return Err(key("telemetry.outbox_max_bytes", "must be at least 1 MiB"));
        }
        if !(1..=10_000).contains(&t.batch_max_records) {
            return Err(key("telemetry.batch_max_records", "must be between 1 and 10000"));
        }
        if t.feedback_linger_ms > 60_000 {
            return Err(key("telemetry.feedback_linger_ms", "must be between 0 and 60000"));
        }
        if t.ack_timeout_secs == 0 {
            return Err(key("telemetry.ack_timeout_secs", "must be at least 1"));
        }
        if !(1..=10_000).contains(&t.max_in_flight) {
            return Err(key("telemetry.max_in_flight", "must be between 1 and 10000"));
        }
        if let Some(url) = &t.broker_url {
            crate::link::parse_mqtts_url(url).map_err(|p| key("telemetry.broker_url", &p.to_string()))?;
        }
        self.registry.keys()?;
        if !(2..=20).contains(&self.registry.keep_versions) {
            return Err(key("registry.keep_versions", "must be between 2 and 20"));
        }
        if !(1024..=1024 * 1024 * 1024).contains(&self.registry.download_chunk_bytes) {
            return Err(key("registry.download_chunk_bytes", "must be between 1 KiB and 1 GiB"));
        }
        // An enrolled device's trust root names release keys: it may start empty and wait.
        let holds_root = crate::trust_root::path(&self.data_dir.join("identity")).exists();
        if self.models.is_empty() && self.registry.trusted_keys.is_empty() && !holds_root {
            return Err(ConfigError::Invalid(
                "no models to serve: add [[models]] to the config file, pass --model NAME=PATH.onnx, set registry.trusted_keys, or enrol (the trust root names release keys) to serve signed bundles".into(),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, model) in self.models.iter().enumerate() {
            outpost_shared::names::check_model(&model.name)
                .map_err(|p| key(&format!("models[{i}].name"), &p.to_string()))?;
            if model.path.as_os_str().is_empty() {
                return Err(key(&format!("models[{i}].path"), "must not be empty"));
            }
            if let Some(version) = &model.version {
                outpost_shared::names::check("version", version)
                    .map_err(|p| key(&format!("models[{i}].version"), &p.to_string()))?;
                if !seen.insert((model.name.as_str(), version.as_str())) {
                    return Err(key(
                        &format!("models[{i}]"),
                        &format!("repeats model `{}` version `{version}`", model.name),
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
// figment's Jail closures return figment's own (large) error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use figment::Jail;

    fn jailed(f: impl FnOnce(&mut Jail) -> figment::error::Result<()>) {
        Jail::expect_with(f);
    }

    #[test]
    fn file_values_and_env_overrides_apply_and_paths_resolve_beside_the_file() {
        jailed(|jail| {
            jail.create_file(
                "agent.toml",
                "listen = \"127.0.0.1:9000\"\n[runtime]\nworkers = 3\n[[models]]\nname = \"bc\"\npath = \"m.onnx\"\nnan_policy = \"allow\"\n",
            )?;
            jail.set_env("OUTPOST_RUNTIME__QUEUE_CAPACITY", "17");
            let path = jail.directory().join("agent.toml");
            let config = Config::load(Some(&path)).unwrap();
            assert_eq!(config.listen.port(), 9000);
            assert_eq!(config.runtime.workers, 3);
            assert_eq!(config.runtime.queue_capacity, 17);
            assert_eq!(config.models[0].path, jail.directory().join("m.onnx"));
            assert_eq!(config.models[0].nan_policy, NanPolicy::Allow);
            config.validate().unwrap();
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_rejected_by_name() {
        jailed(|jail| {
            jail.create_file("agent.toml", "[runtime]\nworkerz = 3\n")?;
            let err = Config::load(Some(&jail.directory().join("agent.toml"))).unwrap_err().to_string();
            assert!(err.contains("unknown field") && err.contains("workerz"), "{err}");
            Ok(())
        });
        jailed(|jail| {
            jail.set_env("OUTPOST_LISTN", "x");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.contains("listn") && err.contains("did you mean `listen`?"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn the_coordinators_variables_and_kubernetes_service_links_are_not_agent_keys() {
        jailed(|jail| {
            jail.set_env("OUTPOST_COORDINATOR_API__TLS", "on");
            jail.set_env("OUTPOST_COORDINATOR_PORT", "tcp://10.96.0.11:7400");
            jail.set_env("OUTPOST_SERVICE_HOST", "10.96.0.12");
            jail.set_env("OUTPOST_PORT_9000_TCP_ADDR", "10.96.0.12");
            jail.set_env("OUTPOST_RUNTIME__WORKERS", "3");
            let config = Config::load(None).unwrap();
            assert_eq!(config.runtime.workers, 3);
            Ok(())
        });
    }

    #[test]
    fn bad_values_name_their_key() {
        jailed(|jail| {
            jail.set_env("OUTPOST_RUNTIME__WORKERS", "many");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.to_lowercase().contains("runtime.workers") && err.contains("many"), "{err}");
            Ok(())
        });
        let mut config = Config::default();
        config.models.push(ModelConfig::parse_cli("a=x.onnx").unwrap());
        config.runtime.queue_capacity = 0;
        assert_eq!(
            config.validate().unwrap_err().to_string(),
            "invalid configuration: `runtime.queue_capacity` must be between 1 and 1000000"
        );
    }

    #[test]
    fn missing_file_and_empty_model_list_are_errors() {
        let err = Config::load(Some(Path::new("/nonexistent/agent.toml"))).unwrap_err();
        assert!(matches!(err, ConfigError::MissingFile(_)));
        let err = Config::default().validate().unwrap_err().to_string();
        assert!(err.contains("no models to serve"), "{err}");
    }

    #[test]
    fn registry_keys_and_limits_name_their_key() {
        let mut config = Config::default();
        config.registry.trusted_keys = vec!["ab".repeat(32), "zz".into()];
        let err = config.validate().unwrap_err().to_string();
        assert!(
            err.contains("registry.trusted_keys[1]") && err.contains("not an Ed25519 public key"),
            "{err}"
        );
        config.registry.trusted_keys = vec!["ab".repeat(31)];
        assert!(config.validate().unwrap_err().to_string().contains("32 bytes, got 31"));
        config.registry.trusted_keys = vec!["ab".repeat(32)];
        // Bundles only: no [[models]] needed.
        config.validate().unwrap();
        config.registry.keep_versions = 1;
        assert!(config.validate().unwrap_err().to_string().contains("registry.keep_versions"));
        config.registry.keep_versions = 3;
        config.registry.download_chunk_bytes = 10;
        assert!(config.validate().unwrap_err().to_string().contains("registry.download_chunk_bytes"));
    }

    #[test]
    fn cli_model_specs_are_checked() {
        assert_eq!(ModelConfig::parse_cli("bc=/m/x.onnx").unwrap().path, PathBuf::from("/m/x.onnx"));
        assert!(ModelConfig::parse_cli("bc").unwrap_err().to_string().contains("NAME=PATH"));
        assert!(ModelConfig::parse_cli("b c=x.onnx").unwrap_err().to_string().contains("may only contain"));
        assert!(ModelConfig::parse_cli("bc=").unwrap_err().to_string().contains("no path"));
    }
}
