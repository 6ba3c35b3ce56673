//! `outpostctl` (also `outpost ctl`): the operator's command line for a coordinator.
//!
//! Talks to the coordinator's API (`--url`, env `OUTPOSTCTL_URL`; `https://` needs `--ca-file`)
//! with a token (`--token` / env `OUTPOSTCTL_TOKEN`, or `--token-file`, e.g.
//! `<data_dir>/admin.token`). `bundle create|sign|inspect` and `key` work offline.
//! Exit codes, one table for every command ([`EXIT_CODES`]): 0 success, 1 the coordinator
//! refused or failed (or a local step failed), 2 bad usage, 3 what was named does not exist,
//! 4 the coordinator cannot be reached.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::http::api::{DeviceView, ImportReport, TokenResponse};
use clap::Parser;
use client::Api;

/// `println!` that ends the program quietly (exit 0) when standard output has gone away, e.g.
/// `outpostctl … | head` — instead of panicking on the broken pipe.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if writeln!(std::io::stdout(), $($arg)*).is_err() {
            std::process::exit(0);
        }
    }};
}

/// `print!` with the same behaviour as [`say!`].
macro_rules! say_raw {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if write!(std::io::stdout(), $($arg)*).is_err() {
            std::process::exit(0);
        }
    }};
}

mod admin;
mod args;
mod client;
mod fleet;
mod models;
mod monitoring;
mod offline;
mod rollout;
mod roots;
mod table;

use args::*;
use table::Table;

/// `-o` / `--output`, as kubectl spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    /// Columns for people (the default).
    Table,
    /// The table with more columns (ids, hashes, full times).
    Wide,
    /// The coordinator's answer as JSON.
    Json,
    /// The same data as YAML.
    Yaml,
}

impl Cli {
    fn output(&self) -> Output {
        if self.json_flag { Output::Json } else { self.output.unwrap_or(Output::Table) }
    }

    /// Whether to print the data itself (`-o json|yaml`, `--json`) instead of a table.
    fn structured(&self) -> bool {
        matches!(self.output(), Output::Json | Output::Yaml)
    }

    /// Whether the table gets its extra columns (`-o wide`).
    fn wide(&self) -> bool {
        self.output() == Output::Wide
    }
}

/// `value` as `-o json` (pretty) or `-o yaml` asks.
fn render<T: serde::Serialize + ?Sized>(cli: &Cli, value: &T) -> String {
    match cli.output() {
        Output::Yaml => serde_yaml::to_string(value)
            .unwrap_or_else(|e| format!("# cannot write this answer as YAML: {e}"))
            .trim_end()
            .to_owned(),
        _ => serde_json::to_string_pretty(value).unwrap_or_default(),
    }
}

/// Why a command failed; each is one row of [`EXIT_CODES`].
#[derive(Debug)]
enum Failure {
    /// 2.
    Usage(String),
    /// 1.
    Refused(String),
    /// 3.
    NotFound(String),
    /// 4.
    Unreachable(String),
}

impl Failure {
    fn code(&self) -> u8 {
        match self {
            Failure::Refused(_) => 1,
            Failure::Usage(_) => 2,
            Failure::NotFound(_) => 3,
            Failure::Unreachable(_) => 4,
        }
    }
}

/// Runs `outpostctl` with this command line (`args[0]` is the program name): the
/// `outpostctl` binary and `outpost ctl` both come here.
pub fn main_from(args: impl IntoIterator<Item = std::ffi::OsString>) -> ExitCode {
    let cli = Cli::parse_from(args);
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            let (Failure::Usage(message)
            | Failure::Refused(message)
            | Failure::NotFound(message)
            | Failure::Unreachable(message)) = &failure;
            eprintln!("error: {message}");
            ExitCode::from(failure.code())
        }
    }
}

/// `NAME@VERSION`.
fn split_target(target: &str) -> Result<(String, String), Failure> {
    target
        .split_once('@')
        .filter(|(n, v)| !n.is_empty() && !v.is_empty())
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .ok_or_else(|| Failure::Usage(format!("`{target}` is not NAME@VERSION")))
}

fn parse_labels(labels: &[String]) -> Result<BTreeMap<String, String>, Failure> {
    labels
        .iter()
        .filter(|l| !l.is_empty())
        .map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .ok_or_else(|| Failure::Usage(format!("label `{l}` must look like key=value")))
        })
        .collect()
}

/// `99%` or `0.99` → 0.99.
fn parse_share(text: &str) -> Result<f64, String> {
    let value = match text.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|v| v / 100.0),
        None => text.trim().parse::<f64>(),
    }
    .map_err(|_| format!("`{text}` is not a share like 99% or 0.99"))?;
    if value > 0.0 && value < 1.0 {
        Ok(value)
    } else {
        Err(format!("`{text}` must be between 0 and 100% (exclusive)"))
    }
}

/// `p95<200ms` → (0.95, 200.0).
fn parse_latency_objective(text: &str) -> Result<(f64, f64), String> {
    let bad = || format!("`{text}` is not a latency objective like p95<200ms");
    let (p, ms) = text.strip_prefix('p').and_then(|r| r.split_once('<')).ok_or_else(bad)?;
    let percentile = p.trim().parse::<f64>().map_err(|_| bad())? / 100.0;
    let threshold = ms.trim().strip_suffix("ms").ok_or_else(bad)?.trim().parse::<f64>().map_err(|_| bad())?;
    if !(percentile > 0.0 && percentile < 1.0 && threshold > 0.0) {
        return Err(bad());
    }
    Ok((percentile, threshold))
}

/// `7d`, `12h`, `30m`, `45s` → milliseconds.
fn parse_age(text: &str) -> Result<u64, String> {
    crate::base::clock::parse_span(text).map_err(|e| e.to_string())
}

fn ago(ms: Option<u64>) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    match ms {
        None => "never".into(),
        Some(ms) => format!("{}s ago", now.saturating_sub(ms) / 1000),
    }
}

/// A bundle key from `file:PATH`, `env:NAME` or `credential:NAME`.
fn load_bundle_key(spec: &str) -> Result<outpost_shared::keysource::SourcedKey, Failure> {
    let source = outpost_shared::keysource::KeySource::parse(spec, "OUTPOST_COORDINATOR_")
        .map_err(|e| Failure::Usage(e.to_string()))?;
    outpost_shared::keysource::SourcedKey::load(&source, false).map_err(|e| Failure::Usage(e.to_string()))
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn run(cli: &Cli) -> Result<(), Failure> {
    if let Some(result) = offline::run_offline(&cli.command) {
        return result;
    }
    let api = Api::new(cli)?;
    match &cli.command {
        Command::Device(_)
        | Command::Devices { .. }
        | Command::Deploy { .. }
        | Command::Rollback { .. }
        | Command::Telemetry(_) => fleet::run(cli, &api),
        Command::Report(_) | Command::Slo(_) | Command::Data(_) | Command::Alerts { .. } => {
            monitoring::run(cli, &api)
        }
        Command::Model(_) | Command::Retrain(_) | Command::Bundle(_) | Command::Key(_) => {
            models::run(cli, &api)
        }
        Command::Token(_) | Command::Audit(_) | Command::Cluster(_) => admin::run(cli, &api),
        Command::Rollout(command) => rollout::rollout(cli, &api, command),
        Command::Incident(command) => rollout::incident(cli, &api, command),
        Command::Root(command) => roots::run(cli, &api, command),
    }
}
