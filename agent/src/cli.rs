//! Command-line interface of `outpost-agent` and its exit codes.
//!
//! Exit codes: 0 success (or drained after SIGTERM/SIGINT); 1 runtime failure (cannot bind,
//! grace period expired); 2 bad usage or configuration; 3 no model could be loaded and
//! validated (`serve`) or the model is invalid (`check-model`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, LogFormat, ModelConfig};
use crate::{check_model, logging, server};

pub const EXIT_FAILURE: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_MODEL_INVALID: u8 = 3;

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

#[derive(Debug, Args)]
pub struct CheckModelArgs {
    /// The ONNX file. A `<stem>.reference.json` beside it is checked too.
    pub file: PathBuf,
    /// Timed runs after validation.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub runs: u32,
    /// Batch size of the timed runs.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub batch: u32,
}

/// Parses arguments, runs the command, and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args, cli.log_format),
        Command::CheckModel(args) => {
            if let Err(e) = logging::init(cli.log_format.unwrap_or(LogFormat::Text), "warn") {
                eprintln!("error: {e}");
                return ExitCode::from(EXIT_USAGE);
            }
            check_model::run(&args)
        }
    }
}

fn serve(args: ServeArgs, log_format: Option<LogFormat>) -> ExitCode {
    let mut config = match Config::load(args.config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_USAGE);
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
        return ExitCode::from(EXIT_USAGE);
    }
    if let Err(e) = logging::init(config.log.format, &config.log.level) {
        eprintln!("error: {e}");
        return ExitCode::from(EXIT_USAGE);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(error = %e, "cannot start async runtime");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let result = runtime.block_on(server::serve(config, server::termination_signal()));
    // A model file that never finishes reading (a stalled mount, a FIFO) must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(status) => ExitCode::from(status.code()),
        Err(e) => {
            tracing::error!(error = %e, "agent failed");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}
