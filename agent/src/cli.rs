//! Command-line interface of `outpost-agent` and its exit codes.
//!
//! Exit codes: 0 success (or drained after SIGTERM/SIGINT); 1 runtime failure (cannot bind,
//! grace period expired; `probe`: not healthy, for any reason); 2 bad usage or configuration; 3 no model could be loaded and
//! validated (`serve`), the model is invalid (`check-model`), or a bundle is refused (`import`:
//! bad signature, untrusted key, altered model, failed validation, other bytes for a version,
//! older than the release floor), or a carried desired state is refused (`import-desired`:
//! replayed, expired, forged, for another device, a bundle not matching its hash).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::check_model::CheckModelArgs;
use crate::config::{Config, LogFormat, ModelConfig};
use crate::{check_model, logging, server};

pub use crate::exit::ExitStatus;

#[derive(Debug, Parser)]
#[command(
    name = "outpost-agent",
    version,
    about = "Outpost edge agent: serves ONNX models over the KServe Open Inference Protocol (V2)."
)]
pub struct Cli {
    /// Log line format (overrides `log.format`).
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve models over HTTP (V2 inference protocol) until SIGTERM/SIGINT.
    Serve(ServeArgs),
    /// Load a model, print its inputs and outputs, validate it and time a few runs.
    CheckModel(CheckModelArgs),
    /// Register this device with a coordinator using a one-time token.
    Enroll(EnrollArgs),
    /// Write every unacknowledged telemetry message to a file (to carry across an air gap).
    ExportTelemetry(TransferArgs),
    /// Apply an ack file from `outpostctl telemetry import`: frees what it acknowledges.
    ImportAck(TransferArgs),
    /// Install a signed model bundle from a file (air-gapped delivery); a serving agent picks
    /// it up within a second when activated.
    Import(ImportArgs),
    /// Apply a desired state carried from `outpostctl device export-desired` (air gap): the
    /// same rules as over MQTT — signed by the coordinator key from enrolment, for this device,
    /// newer than the applied revision, not expired — with its bundles from the folder. A
    /// serving agent picks the change up within a second.
    ImportDesired(ImportDesiredArgs),
    /// Go back to an earlier local version of a bundle-managed model (works offline).
    Rollback(RollbackArgs),
    /// Health probe for container HEALTHCHECKs: exit 0 when the agent answers ready, 1 if not.
    Probe(ProbeArgs),
    /// Encryption at rest: show the keyring, start a new data key, or re-wrap the keys under a
    /// new key-encryption key. Safe beside a serving agent (it picks a new data key up at its
    /// next start; every record stays readable).
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Load-test a coordinator: enrol and run many simulated agents in this one process (own
    /// identity, MQTT connection, signed reports and reconcile loop each; no models run).
    Simulate(SimulateArgs),
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// The key source, the key-encryption key's fingerprint and the data keys.
    Status(DataDirArgs),
    /// A new data key for new records; the older ones stay to read what they sealed.
    Rotate(DataDirArgs),
    /// Re-wrap every data key under a new key-encryption key (then point `[encryption] key`
    /// at it); no record is rewritten.
    Rewrap(RewrapArgs),
}

#[derive(Debug, Args)]
pub struct RewrapArgs {
    /// The new key's source: `file:PATH`, `env:NAME` or `credential:NAME`.
    #[arg(long)]
    pub to: String,
    #[command(flatten)]
    pub data: DataDirArgs,
}

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// The coordinator's API URL.
    #[arg(long)]
    pub coordinator: String,
    /// File holding an admin token (one enrolment token is created per simulated device).
    #[arg(long)]
    pub token_file: PathBuf,
    /// CA certificate (PEM) of an https:// coordinator.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub devices: u64,
    /// Seconds between each device's reports.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub interval_secs: u64,
    /// Devices starting to connect per second.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub ramp_per_sec: u32,
    /// Labels of every simulated device, e.g. `tier=sim` (each also gets `sim=<0-99>`).
    #[arg(long, value_delimiter = ',')]
    pub labels: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// The endpoint that must answer 200.
    #[arg(long, default_value = "http://127.0.0.1:8080/v2/health/ready")]
    pub url: String,
    /// CA certificate (PEM) for an https:// URL.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 2)]
    pub timeout_secs: u64,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The bundle file (`outpostctl bundle export` or `bundle create` + `bundle sign`).
    pub file: PathBuf,
    /// Make it the active version (otherwise it is only stored).
    #[arg(long)]
    pub activate: bool,
    /// TOML configuration file (for `data_dir` and `registry.trusted_keys`).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Overrides the configuration's `data_dir`.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ImportDesiredArgs {
    /// The folder `outpostctl device export-desired` wrote (`desired.bin` and the bundles).
    pub dir: PathBuf,
    #[command(flatten)]
    pub data: DataDirArgs,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// How many activations to go back.
    #[arg(default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub steps: u32,
    /// The model (needed when several are installed).
    #[arg(long)]
    pub model: Option<String>,
    /// TOML configuration file (for `data_dir`).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Overrides the configuration's `data_dir`.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// Where the agent's data lives: the config file's `data_dir`, or `--data-dir`.
#[derive(Debug, Args)]
pub struct DataDirArgs {
    /// TOML configuration file (for `data_dir`).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Overrides the configuration's `data_dir`.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

impl DataDirArgs {
    fn resolve(&self) -> Result<PathBuf, ExitCode> {
        self.load().map(|c| c.data_dir)
    }

    /// The configuration, with `--data-dir` applied.
    fn load(&self) -> Result<Config, ExitCode> {
        let mut config = Config::load(self.config.as_deref()).map_err(|e| {
            eprintln!("error: {e}");
            ExitCode::from(ExitStatus::Usage)
        })?;
        if let Some(dir) = &self.data_dir {
            config.data_dir = dir.clone();
        }
        Ok(config)
    }

    /// The configuration and how its stores are kept at rest (a key that cannot be used is
    /// exit 2, naming its source).
    fn at_rest(&self) -> Result<(Config, crate::at_rest::AtRest), ExitCode> {
        let config = self.load()?;
        let at_rest = crate::at_rest::for_config(&config.data_dir, &config.encryption).map_err(|e| {
            eprintln!("error: {e}");
            ExitCode::from(ExitStatus::Usage)
        })?;
        Ok((config, at_rest))
    }
}

#[derive(Debug, Args)]
pub struct EnrollArgs {
    /// Coordinator API URL, e.g. http://127.0.0.1:7400.
    #[arg(long)]
    pub coordinator: String,
    /// One-time enrolment token from `outpostctl device token create`.
    #[arg(long, required_unless_present = "token_file", conflicts_with = "token_file")]
    pub token: Option<String>,
    /// File holding the token (keeps it out of the process list).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// The CA certificate (PEM) that signed the coordinator API's certificate; needed for an
    /// https:// coordinator (`<coordinator data_dir>/pki/ca.pem` unless the operator brought
    /// their own).
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    #[command(flatten)]
    pub data: DataDirArgs,
}

#[derive(Debug, Args)]
pub struct TransferArgs {
    /// The file to write (export) or read (import).
    pub file: PathBuf,
    #[command(flatten)]
    pub data: DataDirArgs,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML configuration file; `OUTPOST_*` environment variables override its keys.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// A model to serve, as NAME=PATH.onnx (repeatable; adds to the config file's models).
    #[arg(long = "model", value_name = "NAME=PATH", value_parser = ModelConfig::parse_cli)]
    pub models: Vec<ModelConfig>,
    /// Listen address, e.g. 127.0.0.1:8080 (port 0 picks a free port).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Inference worker threads (0 = one per core).
    #[arg(long)]
    pub workers: Option<usize>,
}

/// Parses arguments, runs the command, and returns the process exit code.
pub fn main() -> ExitCode {
    main_from(std::env::args_os())
}

/// Like [`main`], with the arguments given (the first is the program name), so a multi-call
/// binary (`outpost agent …`) can run this command line.
pub fn main_from(args: impl IntoIterator<Item = std::ffi::OsString>) -> ExitCode {
    let cli = Cli::parse_from(args);
    match cli.command {
        Command::Serve(args) => serve(args, cli.log_format),
        Command::CheckModel(args) => {
            if let Err(e) = logging::init(cli.log_format.unwrap_or(LogFormat::Text), "warn") {
                eprintln!("error: {e}");
                return ExitCode::from(ExitStatus::Usage);
            }
            check_model::run(&args)
        }
        Command::Enroll(args) => transfer::enroll(&args),
        Command::ExportTelemetry(args) => transfer::export(&args),
        Command::ImportAck(args) => transfer::import_ack(&args),
        Command::Import(args) => bundles::import(&args),
        Command::ImportDesired(args) => bundles::import_desired(&args),
        Command::Rollback(args) => bundles::rollback(&args),
        Command::Simulate(args) => simulate(&args),
        Command::Keys(command) => keys::run(&command),
        Command::Probe(args) => outpost_shared::tls::ProbeTarget {
            url: args.url,
            ca_file: args.ca_file,
            timeout_secs: args.timeout_secs,
        }
        .run(),
    }
}

mod bundles;

mod keys;

mod transfer;

fn serve(args: ServeArgs, log_format: Option<LogFormat>) -> ExitCode {
    let mut config = match Config::load(args.config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(ExitStatus::Usage);
        }
    };
    config.models.extend(args.models);
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(workers) = args.workers {
        config.runtime.workers = workers;
    }
    if let Some(format) = log_format {
        config.log.format = format;
    }
    if let Err(e) = config.validate() {
        eprintln!("error: {e}");
        return ExitCode::from(ExitStatus::Usage);
    }
    if let Err(e) = logging::init(config.log.format, &config.log.level) {
        eprintln!("error: {e}");
        return ExitCode::from(ExitStatus::Usage);
    }
    let links = outpost_shared::env::service_links(crate::config::ENV_PREFIX);
    if !links.is_empty() {
        tracing::debug!(variables = ?links, "ignored environment variables shaped like Kubernetes service links");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(error = %e, "cannot start async runtime");
            return ExitCode::from(ExitStatus::Failure);
        }
    };
    let result = runtime.block_on(server::serve(config, server::termination_signal()));
    // A model file that never finishes reading (a stalled mount, a FIFO) must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(stopped) => ExitCode::from(stopped.exit()),
        Err(e) => {
            tracing::error!(error = %e, "agent failed");
            ExitCode::from(e.exit())
        }
    }
}

/// `outpost-agent simulate`: enrol, then run until Ctrl-C, printing the fleet's counters.
fn simulate(args: &SimulateArgs) -> ExitCode {
    let fail = |message: String| {
        eprintln!("error: {message}");
        ExitCode::from(ExitStatus::Usage)
    };
    let admin_token = match std::fs::read_to_string(&args.token_file) {
        Ok(t) => t.trim().to_owned(),
        Err(e) => return fail(format!("cannot read {}: {e}", args.token_file.display())),
    };
    let ca_pem = match &args.ca_file {
        Some(path) => match std::fs::read(path) {
            Ok(pem) => Some(pem),
            Err(e) => return fail(format!("cannot read {}: {e}", path.display())),
        },
        None => None,
    };
    let mut labels = std::collections::BTreeMap::new();
    for pair in args.labels.iter().filter(|l| !l.is_empty()) {
        match pair.split_once('=') {
            Some((k, v)) if !k.is_empty() => labels.insert(k.to_owned(), v.to_owned()),
            _ => return fail(format!("label `{pair}` must look like key=value")),
        };
    }
    let plan = crate::simulate::Plan {
        api_url: args.coordinator.clone(),
        admin_token,
        ca_pem,
        devices: args.devices as usize,
        labels,
        parallel: 8,
    };
    let started = std::time::Instant::now();
    let devices = match crate::simulate::enrol_all(&plan, &|n| eprintln!("enrolled {n}/{}", plan.devices)) {
        Ok(devices) => devices,
        Err(e) => {
            eprintln!("error: enrolment failed: {e}");
            return ExitCode::from(ExitStatus::Failure);
        }
    };
    eprintln!("enrolled {} devices in {:.1} s", devices.len(), started.elapsed().as_secs_f64());
    let Ok(runtime) = tokio::runtime::Builder::new_multi_thread().enable_all().build() else {
        return fail("cannot start the async runtime".into());
    };
    let stats = std::sync::Arc::new(crate::simulate::Stats::default());
    runtime.block_on(async {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let interval = std::time::Duration::from_secs(args.interval_secs);
        let fleet = tokio::spawn(crate::simulate::run(
            devices,
            interval,
            args.ramp_per_sec,
            std::sync::Arc::clone(&stats),
            stop_rx,
        ));
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = tokio::time::sleep(std::time::Duration::from_secs(10)) => {
                    eprintln!(
                        "{} connected, {} reports sent, {} desired states received ({} refused)",
                        stats.connected.load(std::sync::atomic::Ordering::Relaxed),
                        stats.reports.load(std::sync::atomic::Ordering::Relaxed),
                        stats.desired.load(std::sync::atomic::Ordering::Relaxed),
                        stats.refused.load(std::sync::atomic::Ordering::Relaxed),
                    );
                }
            }
        }
        let _ = stop_tx.send(true);
        let _ = fleet.await;
    });
    ExitCode::SUCCESS
}
