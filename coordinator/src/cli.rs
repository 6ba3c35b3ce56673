//! `outpost-coordinator` commands.
//!
//! Exit codes: 0 success, 1 runtime failure (`probe`: not healthy, for any reason), 2 bad usage or configuration.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod backup;
mod migrate;

use crate::config::{Config, LogFormat};
use crate::fleet::ca::Authority;

#[derive(Debug, Parser)]
#[command(
    name = "outpost-coordinator",
    version,
    about = "Outpost coordinator: fleet enrolment and telemetry ingest"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the API and ingest telemetry from the broker.
    Serve(ServeArgs),
    /// Issue certificates from the fleet CA (for a broker, or a tool that talks to it).
    #[command(subcommand)]
    Cert(CertCommand),
    /// Health probe for container HEALTHCHECKs: exit 0 when `/healthz` answers, 1 if not.
    Probe(ProbeArgs),
    /// Print the admin token (opened with `[secrets] key` when it is sealed), for outpostctl.
    AdminToken(AdminTokenArgs),
    /// Back up the whole coordinator — state, registry, CA and keys, audit log — into one
    /// encrypted file; works while it serves.
    Backup(backup::BackupArgs),
    /// Rebuild a data directory from a backup (into a new or empty directory; the chain and
    /// every count are checked).
    Restore(backup::RestoreArgs),
    /// Move a stopped single-node coordinator's state from sled into PostgreSQL, for replicas
    /// (one transaction; every count and the audit chain checked).
    Migrate(migrate::MigrateArgs),
}

#[derive(Debug, clap::Args)]
pub struct AdminTokenArgs {
    /// Coordinator data directory.
    #[arg(long, default_value = "outpost-coordinator-data")]
    pub data_dir: PathBuf,
    /// The key the token is sealed with (`[secrets] key`: file:PATH, env:NAME or credential:NAME).
    #[arg(long, env = "OUTPOST_COORDINATOR_SECRETS__KEY")]
    pub secrets_key: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct ProbeArgs {
    /// The endpoint that must answer 200.
    #[arg(long, default_value = "http://127.0.0.1:7400/healthz")]
    pub url: String,
    /// CA certificate (PEM) for an https:// URL (`<data_dir>/pki/ca.pem`).
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 2)]
    pub timeout_secs: u64,
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// TOML config file.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Overrides `data_dir`.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Overrides `api.listen`.
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
    /// An external broker, `mqtts://host:port` (overrides `broker.url`). Without one the
    /// coordinator runs its embedded broker.
    #[arg(long, conflicts_with = "broker_listen")]
    pub broker: Option<String>,
    /// Where the embedded broker listens (overrides `broker.embedded_listen`).
    #[arg(long)]
    pub broker_listen: Option<std::net::SocketAddr>,
    /// Overrides `broker.ca_file`.
    #[arg(long)]
    pub broker_ca: Option<PathBuf>,
    /// Overrides `log.format`.
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
}

#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// A server certificate for a broker (e.g. Mosquitto) that devices trust through the fleet CA.
    Server(CertArgs),
    /// A client certificate (for a tool or an extra coordinator connection).
    Client(CertArgs),
}

#[derive(Debug, clap::Args)]
pub struct CertArgs {
    /// DNS names or IP addresses (server), or the common name (client).
    #[arg(long = "name", required = true)]
    pub names: Vec<String>,
    /// Directory for `<kind>.pem`, `<kind>.key` (0600) and `ca.pem`.
    #[arg(long)]
    pub out_dir: PathBuf,
    /// Coordinator data directory holding the CA.
    #[arg(long, default_value = "outpost-coordinator-data")]
    pub data_dir: PathBuf,
    #[arg(long, default_value_t = 365)]
    pub days: u32,
    /// The key the CA key is sealed with (`[secrets] key`: file:PATH, env:NAME or credential:NAME).
    #[arg(long, env = "OUTPOST_COORDINATOR_SECRETS__KEY")]
    pub secrets_key: Option<String>,
}

/// Why logging could not start.
#[derive(Debug, thiserror::Error)]
enum LoggingError {
    #[error("invalid log level `{level}`: {detail}")]
    Level { level: String, detail: String },
    #[error("logging was already set up: {0}")]
    Init(String),
}

fn init_logging(format: LogFormat, level: &str) -> Result<(), LoggingError> {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .map_err(|e| LoggingError::Level { level: level.to_owned(), detail: e.to_string() })?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    }
    .map_err(|e| LoggingError::Init(e.to_string()))
}

pub fn main() -> ExitCode {
    main_from(std::env::args_os())
}

/// Like [`main`], with the arguments given (the first is the program name), so a multi-call
/// binary (`outpost coordinator …`) can run this command line.
pub fn main_from(args: impl IntoIterator<Item = std::ffi::OsString>) -> ExitCode {
    let cli = Cli::parse_from(args);
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Cert(command) => cert(command),
        Command::AdminToken(args) => admin_token(&args),
        Command::Backup(args) => backup::backup(&args),
        Command::Restore(args) => backup::restore(&args),
        Command::Migrate(args) => migrate::migrate(&args),
        Command::Probe(args) => outpost_shared::tls::ProbeTarget {
            url: args.url,
            ca_file: args.ca_file,
            timeout_secs: args.timeout_secs,
        }
        .run(),
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    let mut config = match Config::load(args.config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    if let Some(listen) = args.listen {
        config.api.listen = listen;
    }
    if let Some(url) = args.broker {
        config.broker.url = Some(url);
    }
    if let Some(listen) = args.broker_listen {
        config.broker.embedded_listen = listen;
    }
    if let Some(ca) = args.broker_ca {
        config.broker.ca_file = Some(ca);
    }
    if let Some(format) = args.log_format {
        config.log.format = format;
    }
    if let Err(e) = init_logging(config.log.format, &config.log.level) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let links = outpost_shared::env::service_links(crate::config::ENV_PREFIX);
    if !links.is_empty() {
        tracing::debug!(variables = ?links, "ignored environment variables shaped like Kubernetes service links");
    }
    if let Err(e) = config.validate() {
        tracing::error!(error = %e, "configuration refused");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(crate::http::server::serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is_configuration() => {
            tracing::error!(error = %e, "configuration refused");
            ExitCode::from(2)
        }
        Err(e) => {
            tracing::error!(error = %e, "coordinator failed");
            ExitCode::from(1)
        }
    }
}

fn admin_token(args: &AdminTokenArgs) -> ExitCode {
    let path = args.data_dir.join("admin.token");
    let token = crate::base::secrets::Secrets::from_spec(args.secrets_key.as_deref())
        .and_then(|secrets| secrets.read(&path));
    match token {
        Ok(Some(token)) => {
            println!("{}", String::from_utf8_lossy(&token).trim());
            ExitCode::SUCCESS
        }
        Ok(None) => {
            eprintln!(
                "error: {} does not exist (the coordinator makes it at its first start)",
                path.display()
            );
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn cert(command: CertCommand) -> ExitCode {
    let (kind, args) = match command {
        CertCommand::Server(args) => ("server", args),
        CertCommand::Client(args) => ("client", args),
    };
    let result = (|| -> anyhow::Result<()> {
        let secrets = crate::base::secrets::Secrets::from_spec(args.secrets_key.as_deref())?;
        let authority = Authority::load_or_create(&args.data_dir, &secrets)?;
        let (cert, key) = match kind {
            "server" => authority.issue_server(&args.names, args.days)?,
            _ => authority.issue_client(&args.names[0], args.days)?,
        };
        std::fs::create_dir_all(&args.out_dir)?;
        outpost_shared::files::write_atomic(&args.out_dir.join(format!("{kind}.pem")), cert.as_bytes())?;
        outpost_shared::files::write_private(&args.out_dir.join(format!("{kind}.key")), key.as_bytes())?;
        outpost_shared::files::write_atomic(&args.out_dir.join("ca.pem"), authority.ca_pem().as_bytes())?;
        eprintln!("wrote {kind}.pem, {kind}.key and ca.pem to {}", args.out_dir.display());
        Ok(())
    })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
