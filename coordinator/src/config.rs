//! Coordinator settings: a TOML file (`--config`) with every key overridable by
//! `OUTPOST_COORDINATOR_*` environment variables (`__` separates nesting, e.g.
//! `OUTPOST_COORDINATOR_BROKER__URL`). Unknown keys are refused with their name.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

pub use crate::fleet::liveness::FleetConfig;

pub const ENV_PREFIX: &str = "OUTPOST_COORDINATOR_";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    MissingFile(PathBuf),
    #[error("invalid configuration: {0}")]
    Invalid(String),
    #[error("invalid configuration: `{key}` {problem}")]
    Key { key: String, problem: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the coordinator keeps its state, CA and keys.
    pub data_dir: PathBuf,
    pub api: ApiConfig,
    pub broker: BrokerConfig,
    pub enrolment: EnrolmentConfig,
    pub fleet: FleetConfig,
    pub log: LogConfig,
    /// Alert rules and where alerts go (Alertmanager, a JSON webhook).
    pub alerts: crate::ops::alerts::AlertsConfig,
    /// Retraining hooks per model.
    pub retraining: crate::ops::retraining::RetrainingConfig,
    /// How long monitoring history is kept.
    pub retention: crate::monitoring::retention::RetentionConfig,
    /// Which keys' signatures the registry accepts on pushed bundles.
    pub registry: crate::models::registry::RegistryConfig,
    /// The rollback policy sent with every deployed version: agents watch the new version and
    /// go back to the one before on their own when it crashes them or breaches these limits.
    pub watchdog: outpost_shared::protocol::messages::WatchdogPolicy,
    /// The coordinator's own secrets at rest: the CA key, the root, release and online keys,
    /// the admin token.
    pub secrets: SecretsConfig,
    /// Where the coordinator's records live.
    pub store: StoreConfig,
}

/// Where the coordinator's records live.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `sled`: an embedded database in `<data_dir>/state/` (the default; nothing to run).
    /// `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE`: PostgreSQL (off this host over TLS,
    /// see `ca_file`), shared by any number of replicas with the same configuration and keys,
    /// behind an external MQTT broker (`broker.url`) with shared subscriptions. Pass a password
    /// by `OUTPOST_COORDINATOR_STORE__URL` rather than in a file; every message shows it masked.
    pub url: String,
    /// PostgreSQL: how long an engine's lease (rollouts, alerts, retention, retraining
    /// triggers, desired-state renewal) lasts unless its replica renews it — the longest a
    /// dead leader's engines wait for another replica to take over. 3 to 300.
    pub lease_ttl_secs: u64,
    /// PostgreSQL: the CA certificate (PEM) that signed the server's certificate. Given, every
    /// connection is TLS and the server's certificate and host name are verified; without it
    /// only a server on this host (loopback or a Unix socket) is accepted.
    pub ca_file: Option<PathBuf>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig { url: "sled".into(), lease_ttl_secs: 15, ca_file: None }
    }
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreConfig")
            .field("url", &crate::base::pg::mask(&self.url))
            .field("lease_ttl_secs", &self.lease_ttl_secs)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// The store `[store] url` names.
#[derive(Debug, Clone)]
pub enum StoreBackend {
    Sled,
    Postgres(Box<crate::base::pg::PgUrl>),
}

impl StoreConfig {
    /// The backend `url` names; an error names the URL with its password masked.
    pub fn backend(&self) -> Result<StoreBackend, ConfigError> {
        if !(3..=300).contains(&self.lease_ttl_secs) {
            return Err(ConfigError::Key {
                key: "store.lease_ttl_secs".into(),
                problem: format!("{} is not between 3 and 300 seconds", self.lease_ttl_secs),
            });
        }
        if self.url == "sled" {
            return Ok(StoreBackend::Sled);
        }
        if self.url.starts_with("postgres://") || self.url.starts_with("postgresql://") {
            let ca = match &self.ca_file {
                Some(path) => Some(std::fs::read(path).map_err(|e| ConfigError::Key {
                    key: "store.ca_file".into(),
                    problem: format!("cannot read {}: {e}", path.display()),
                })?),
                None => None,
            };
            return crate::base::pg::PgUrl::parse_with_ca(&self.url, ca.as_deref())
                .map(|url| StoreBackend::Postgres(Box::new(url)))
                .map_err(|e| ConfigError::Invalid(e.to_string()));
        }
        Err(ConfigError::Key {
            key: "store.url".into(),
            problem: format!(
                "`{}` is neither `sled` nor a postgres:// URL (the sled database lives in data_dir: move that \
                 to move it)",
                crate::base::pg::mask(&self.url)
            ),
        })
    }
}

/// How the coordinator keeps its secrets on disk.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecretsConfig {
    /// Seal every secret under this key: `file:PATH`, `env:NAME` or `credential:NAME` (a systemd
    /// credential, TPM2-sealable with `LoadCredentialEncrypted=`); 32 bytes as 64 hex digits.
    /// Secrets found in the clear are sealed at start. Unset: kept in the clear, 0600.
    pub key: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("outpost-coordinator-data"),
            api: ApiConfig::default(),
            broker: BrokerConfig::default(),
            enrolment: EnrolmentConfig::default(),
            fleet: FleetConfig::default(),
            log: LogConfig::default(),
            alerts: crate::ops::alerts::AlertsConfig::default(),
            retraining: crate::ops::retraining::RetrainingConfig::default(),
            retention: crate::monitoring::retention::RetentionConfig::default(),
            registry: crate::models::registry::RegistryConfig::default(),
            watchdog: Default::default(),
            secrets: SecretsConfig::default(),
            store: StoreConfig::default(),
        }
    }
}

/// Whether the API speaks HTTPS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    #[default]
    Auto,
    On,
    Off,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// API address.
    pub listen: SocketAddr,
    /// The URL agents are told to reach the API at (defaults to `https://<bound address>`, or
    /// `http://` when TLS is off).
    pub advertised_url: Option<String>,
    /// `auto`: HTTPS unless `listen` is a loopback address; `on`: always HTTPS; `off`: plain
    /// HTTP, allowed only on loopback.
    pub tls: TlsMode,
    /// Operator-supplied certificate chain and key (PEM) for the API; default: a certificate
    /// from the coordinator's own CA for `localhost`, the loopback addresses, the listen
    /// address and `tls_names`.
    pub cert_file: Option<PathBuf>,
    /// The private key (PEM) for `cert_file`.
    pub key_file: Option<PathBuf>,
    /// The CA devices should trust for the API when `cert_file` is the operator's.
    pub ca_file: Option<PathBuf>,
    /// More DNS names or IP addresses for the coordinator-issued certificate.
    pub tls_names: Vec<String>,
    /// Largest body of an upload (a bundle push, a validation dataset, a telemetry import), in
    /// bytes; only authenticated callers may send one. Uploads are streamed to
    /// `<data_dir>/uploads/`, so this much free disk, not memory, is what one needs.
    pub max_body_bytes: usize,
    /// Largest body of every other request (JSON: enrolment, tokens, deployments, rollouts…).
    pub max_json_bytes: usize,
    /// Requests per second each API token may make (sustained), and its burst.
    pub rate_limit_per_sec: u32,
    /// Requests a token may make at once above its sustained rate.
    pub rate_limit_burst: u32,
    /// Failed authentications (401, or a refused enrolment token) one source address may make
    /// in a minute; past it, every request from that address gets 429 until the minute is over.
    pub failed_auth_per_minute: u32,
    /// Connections open at once; one more is closed on arrival (and counted).
    pub max_connections: usize,
    /// Longest a client may take to send a request's headers, and longest a kept-alive
    /// connection may sit idle between requests.
    pub header_read_timeout_secs: u64,
    /// Longest a whole request may take, body included, before it gets 408 (a body trickled
    /// a byte at a time cannot outlive it). Long enough for `max_body_bytes` on a slow link.
    pub request_timeout_secs: u64,
}

impl ApiConfig {
    /// The front door's limits.
    pub fn limits(&self) -> outpost_shared::front::Limits {
        outpost_shared::front::Limits {
            max_connections: self.max_connections,
            header_read_timeout: std::time::Duration::from_secs(self.header_read_timeout_secs),
            request_timeout: std::time::Duration::from_secs(self.request_timeout_secs),
        }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7400)),
            advertised_url: None,
            tls: TlsMode::Auto,
            cert_file: None,
            key_file: None,
            ca_file: None,
            tls_names: Vec::new(),
            max_body_bytes: 512 * 1024 * 1024,
            max_json_bytes: 1024 * 1024,
            rate_limit_per_sec: 50,
            rate_limit_burst: 200,
            failed_auth_per_minute: 30,
            max_connections: 1024,
            header_read_timeout_secs: 30,
            request_timeout_secs: 900,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// `mqtts://host:port` of an external broker (Mosquitto, EMQX, …). Unset: the coordinator
    /// runs its embedded broker on `embedded_listen`.
    pub url: Option<String>,
    /// Where the embedded broker listens (TLS, client certificates required).
    pub embedded_listen: SocketAddr,
    /// CA that signed the broker's server certificate (PEM). Defaults to the coordinator's own
    /// CA, which is right when the broker's certificate came from `outpost-coordinator cert`.
    pub ca_file: Option<PathBuf>,
    /// The URL agents are told at enrolment (defaults to `url`).
    pub advertised_url: Option<String>,
    /// Extra DNS names or IP addresses for the embedded broker's certificate (e.g. a Kubernetes
    /// Service name). The host of `advertised_url` is always included.
    pub tls_names: Vec<String>,
    /// Largest MQTT packet, in bytes (prediction batches are the big ones).
    pub max_packet_bytes: usize,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            url: None,
            embedded_listen: SocketAddr::from(([127, 0, 0, 1], 8883)),
            ca_file: None,
            advertised_url: None,
            tls_names: Vec::new(),
            max_packet_bytes: 4 * 1024 * 1024 + 4096,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnrolmentConfig {
    /// How long a new enrolment token stays usable.
    pub token_ttl_secs: u64,
    /// Validity of device client certificates.
    pub certificate_days: u32,
}

impl Default for EnrolmentConfig {
    fn default() -> Self {
        EnrolmentConfig { token_ttl_secs: 24 * 3600, certificate_days: 365 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` (for people) or `json` (one object per line, for a log pipeline).
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `outpost_coordinator=debug,info`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { format: LogFormat::Text, level: "info,rumqttd=warn".into() }
    }
}

impl Config {
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError::MissingFile(path.to_owned()));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        // Kubernetes service links (`OUTPOST_COORDINATOR_SERVICE_HOST`, `…_PORT`, …) are not
        // configuration: skipped, see `outpost_shared::env`.
        figment = figment.merge(
            Env::prefixed(ENV_PREFIX)
                .filter(|key| !outpost_shared::env::is_service_link(key.as_str()))
                .split("__"),
        );
        let mut config: Config =
            figment.extract().map_err(|e| ConfigError::Invalid(outpost_shared::env::config_error(&e)))?;
        if let Some(dir) = file.and_then(Path::parent) {
            if config.data_dir.is_relative() {
                config.data_dir = dir.join(&config.data_dir);
            }
            if let Some(ca) = config.broker.ca_file.as_mut().filter(|p| p.is_relative()) {
                *ca = dir.join(&*ca);
            }
        }
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let key = |key: &str, problem: &str| ConfigError::Key { key: key.into(), problem: problem.into() };
        self.store.backend()?;
        self.watchdog.validate().map_err(|e| ConfigError::Invalid(e.to_string()))?;
        self.registry.keys().map_err(|(entry, problem)| key(&entry, &problem))?;
        if let Some(spec) = &self.secrets.key {
            outpost_shared::keysource::KeySource::parse(spec, "OUTPOST_COORDINATOR_")
                .map_err(|e| key("secrets.key", &e.to_string()))?;
        }
        if !self.registry.sign_on_push && self.registry.trusted_keys.is_empty() {
            return Err(key(
                "registry.sign_on_push",
                "is false, so pushed bundles need an offline signature: list the offline public keys in registry.trusted_keys",
            ));
        }
        for (name, secs) in [
            ("api.header_read_timeout_secs", self.api.header_read_timeout_secs),
            ("api.request_timeout_secs", self.api.request_timeout_secs),
        ] {
            if secs == 0 || secs > 86_400 {
                return Err(key(name, "must be between 1 and 86400 seconds"));
            }
        }
        if self.api.max_connections == 0 || self.api.max_connections > 1_000_000 {
            return Err(key("api.max_connections", "must be between 1 and 1000000"));
        }
        if self.api.failed_auth_per_minute == 0 {
            return Err(key("api.failed_auth_per_minute", "must be at least 1"));
        }
        if self.api.listen.ip().is_unspecified() && self.api.advertised_url.is_none() {
            return Err(key(
                "api.advertised_url",
                "is needed when api.listen is a wildcard address: devices must be told where to reach the API",
            ));
        }
        if let Some(url) = &self.api.advertised_url {
            let tls = outpost_shared::endpoints::check_api_url(url)
                .map_err(|p| key("api.advertised_url", &p.to_string()))?;
            if tls != self.api_tls() {
                return Err(key(
                    "api.advertised_url",
                    "must use https:// exactly when the API speaks TLS (api.tls)",
                ));
            }
        }
        match &self.broker.url {
            None if self.broker.embedded_listen.ip().is_unspecified()
                && self.broker.advertised_url.is_none() =>
            {
                return Err(key(
                    "broker.advertised_url",
                    "is required when the embedded broker listens on all interfaces (devices need an address to reach)",
                ));
            }
            None => {}
            Some(url) => {
                parse_mqtts_url(url).map_err(|problem| key("broker.url", &problem.to_string()))?;
            }
        }
        if let Some(url) = &self.broker.advertised_url {
            parse_mqtts_url(url).map_err(|problem| key("broker.advertised_url", &problem.to_string()))?;
        }
        if let Some(bad) = self.broker.tls_names.iter().find(|n| {
            n.is_empty()
                || !n.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '*'))
        }) {
            return Err(key("broker.tls_names", &format!("`{bad}` is not a DNS name or IP address")));
        }
        if self.enrolment.token_ttl_secs == 0 {
            return Err(key("enrolment.token_ttl_secs", "must be at least 1"));
        }
        if !(1..=3650).contains(&self.enrolment.certificate_days) {
            return Err(key("enrolment.certificate_days", "must be between 1 and 3650"));
        }
        if self.fleet.stale_after_secs == 0 || self.fleet.offline_after_secs < self.fleet.stale_after_secs {
            return Err(key("fleet.offline_after_secs", "must be at least fleet.stale_after_secs (> 0)"));
        }
        if self.api.tls == TlsMode::Off && !self.api.listen.ip().is_loopback() {
            return Err(key(
                "api.tls",
                "is `off` but api.listen is not a loopback address: tokens would cross the network in the clear",
            ));
        }
        if self.api.cert_file.is_some() != self.api.key_file.is_some() {
            return Err(key("api.cert_file", "and api.key_file go together"));
        }
        if let Err((k, problem)) = self
            .alerts
            .validate()
            .and_then(|()| self.retraining.validate())
            .and_then(|()| self.retention.validate())
        {
            return Err(ConfigError::Key { key: k, problem });
        }
        if self.broker.max_packet_bytes < 64 * 1024 {
            return Err(key("broker.max_packet_bytes", "must be at least 65536"));
        }
        Ok(())
    }

    pub fn api_url(&self) -> String {
        let scheme = if self.api_tls() { "https" } else { "http" };
        self.api.advertised_url.clone().unwrap_or_else(|| format!("{scheme}://{}", self.api.listen))
    }

    /// Whether the API serves HTTPS.
    pub fn api_tls(&self) -> bool {
        match self.api.tls {
            TlsMode::On => true,
            TlsMode::Off => false,
            TlsMode::Auto => !self.api.listen.ip().is_loopback(),
        }
    }

    /// The broker URL devices are given at enrolment.
    pub fn advertised_broker_url(&self) -> String {
        self.broker
            .advertised_url
            .clone()
            .or_else(|| self.broker.url.clone())
            .unwrap_or_else(|| format!("mqtts://{}", self.broker.embedded_listen))
    }

    /// The names the embedded broker's certificate carries beyond its listen address: the host
    /// devices are told to reach (`broker.advertised_url`) and `broker.tls_names`.
    pub fn embedded_broker_names(&self) -> Vec<String> {
        let mut names = self.broker.tls_names.clone();
        if let Some(url) = &self.broker.advertised_url
            && let Ok((host, _)) = parse_mqtts_url(url)
            && !names.contains(&host)
        {
            names.push(host);
        }
        names
    }

    /// Where the coordinator itself connects: the external broker, or its embedded one.
    pub fn broker_endpoint(&self) -> Result<(String, u16), ConfigError> {
        match &self.broker.url {
            Some(url) => parse_mqtts_url(url).map_err(|problem| ConfigError::Key {
                key: "broker.url".into(),
                problem: problem.to_string(),
            }),
            None => {
                let listen = self.broker.embedded_listen;
                let host = if listen.ip().is_unspecified() {
                    "127.0.0.1".to_owned()
                } else {
                    listen.ip().to_string()
                };
                Ok((host, listen.port()))
            }
        }
    }
}

pub use outpost_shared::endpoints::parse_mqtts_url;

#[cfg(test)]
mod tests {
    use super::*;

    /// The store's lease TTL and PostgreSQL CA are checked by name: a TTL out of range, a CA
    /// file that cannot be read or holds no certificate.
    #[test]
    fn the_store_settings_are_checked_by_name() {
        let store = |url: &str, ttl: u64, ca: Option<&Path>| StoreConfig {
            url: url.into(),
            lease_ttl_secs: ttl,
            ca_file: ca.map(Into::into),
        };
        let err = store("sled", 2, None).backend().unwrap_err().to_string();
        assert!(err.contains("store.lease_ttl_secs") && err.contains("between 3 and 300"), "{err}");
        let missing = Path::new("/nonexistent/postgres-ca.pem");
        let remote = "postgres://outpost:hunter2@db.example.org/outpost";
        let err = store(remote, 15, Some(missing)).backend().unwrap_err().to_string();
        assert!(err.contains("store.ca_file") && err.contains("/nonexistent/postgres-ca.pem"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("ca.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let err = store(remote, 15, Some(&junk)).backend().unwrap_err().to_string();
        assert!(err.contains("store.ca_file") && !err.contains("hunter2"), "{err}");
        assert!(matches!(store("sled", 15, None).backend(), Ok(StoreBackend::Sled)));
    }

    #[test]
    fn the_watchdog_policy_is_checked_by_name() {
        let config: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string("[watchdog]\nmax_crashes = 5\nprobation_secs = 0\n"))
            .extract()
            .unwrap();
        assert_eq!(config.watchdog.max_crashes, 5);
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("watchdog.probation_secs"), "{err}");
    }

    #[test]
    fn the_embedded_broker_certificate_names_the_advertised_host() {
        let mut config = Config::default();
        config.broker.embedded_listen = "0.0.0.0:8883".parse().unwrap();
        config.broker.advertised_url = Some("mqtts://outpost-coordinator.outpost.svc:8883".into());
        config.broker.tls_names = vec!["10.0.0.5".into(), "outpost-coordinator.outpost.svc".into()];
        config.validate().unwrap();
        assert_eq!(config.embedded_broker_names(), vec!["10.0.0.5", "outpost-coordinator.outpost.svc"]);
        config.broker.tls_names = vec!["bad name/".into()];
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("broker.tls_names") && err.contains("bad name/"), "{err}");
    }

    #[test]
    fn an_offline_release_key_needs_the_offline_keys_listed() {
        let mut config = Config::default();
        config.registry.sign_on_push = false;
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("registry.sign_on_push") && err.contains("registry.trusted_keys"), "{err}");
        config.registry.trusted_keys = vec!["ab".repeat(32)];
        config.validate().unwrap();
    }

    #[test]
    fn refuses_a_non_loopback_api_and_an_unreachable_embedded_broker() {
        let mut config = Config::default();
        config.validate().unwrap();
        assert_eq!(config.advertised_broker_url(), "mqtts://127.0.0.1:8883");
        config.broker.embedded_listen = "0.0.0.0:8883".parse().unwrap();
        assert!(config.validate().unwrap_err().to_string().contains("broker.advertised_url"));
        assert_eq!(config.broker_endpoint().unwrap(), ("127.0.0.1".into(), 8883));
        config.broker.url = Some("mqtts://127.0.0.1:8883".into());
        config.validate().unwrap();
        config.api.listen = "0.0.0.0:7400".parse().unwrap();
        assert!(config.validate().unwrap_err().to_string().contains("api.advertised_url"));
        config.api.advertised_url = Some("https://coord.example:7400".into());
        config.validate().unwrap();
        assert!(config.api_tls());
        config.api.tls = TlsMode::Off;
        assert!(config.validate().unwrap_err().to_string().contains("api.tls"));
    }
}
