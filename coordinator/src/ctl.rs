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
use clap::{Parser, Subcommand};
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
mod client;
mod fleet;
mod models;
mod monitoring;
mod offline;
mod rollout;
mod table;

use table::Table;

/// The exit codes every command follows (also in `--help`).
const EXIT_CODES: &str = "Exit codes (every command):\n  0  done\n  1  the coordinator refused or failed (its message is printed), or a local step failed\n  2  bad usage: arguments, files, token or URL that cannot be used\n  3  not found: the device, model, version, rollout … named does not exist\n  4  cannot reach the coordinator";

#[derive(Debug, Parser)]
#[command(name = "outpostctl", version, about = "Operate an Outpost coordinator", after_help = EXIT_CODES)]
struct Cli {
    /// Coordinator API URL.
    #[arg(
        long,
        env = "OUTPOSTCTL_URL",
        default_value = "http://127.0.0.1:7400",
        global = true,
        help_heading = "Global options"
    )]
    url: String,
    /// API token (the admin bootstrap token, or one from `token create` with its role).
    #[arg(
        long,
        env = "OUTPOSTCTL_TOKEN",
        global = true,
        help_heading = "Global options",
        hide_env_values = true
    )]
    token: Option<String>,
    /// File holding the token (the coordinator writes the admin one to `<data_dir>/admin.token`).
    #[arg(long, global = true, help_heading = "Global options")]
    token_file: Option<PathBuf>,
    /// CA certificate (PEM) of an https:// coordinator (`<data_dir>/pki/ca.pem` by default on
    /// the coordinator's machine).
    #[arg(long, env = "OUTPOSTCTL_CA_FILE", global = true, help_heading = "Global options")]
    ca_file: Option<PathBuf>,
    /// Print JSON instead of a table (the same as `-o json`).
    #[arg(long = "json", global = true, help_heading = "Global options")]
    json_flag: bool,
    /// Output format: `table` (default), `wide` (more columns), `json` or `yaml`.
    #[arg(short = 'o', long, value_enum, global = true, help_heading = "Global options")]
    output: Option<Output>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Devices and enrolment tokens.
    #[command(subcommand)]
    Device(DeviceCommand),
    /// List devices: labels, liveness, last seen, backlog, models.
    #[command(
        after_help = "Examples:\n  outpostctl devices\n  outpostctl devices -l site=a,tier=edge\n  outpostctl devices -o wide\n  outpostctl devices -o json"
    )]
    Devices {
        /// Only devices whose labels match every `key=value`, e.g. `-l site=a,tier=edge`.
        #[arg(short = 'l', long, value_delimiter = ',')]
        selector: Vec<String>,
    },
    /// Telemetry that crossed an air gap.
    #[command(subcommand)]
    Telemetry(TelemetryCommand),
    /// Model bundles, offline: build, sign with a key kept off the network, inspect.
    #[command(subcommand)]
    Bundle(BundleCommand),
    /// Ed25519 signing keys for bundles (offline).
    #[command(subcommand)]
    Key(KeyCommand),
    /// The model registry: push, validate, list, show, history, diff, stage, purge.
    #[command(subcommand)]
    Model(ModelCommand),
    /// Deploy a validated version: every targeted device gets a signed desired state.
    #[command(
        after_help = "Examples:\n  outpostctl deploy bc@1.1.0\n  outpostctl deploy bc@1.1.0 --selector site=a\n  outpostctl deploy bc@1.2.0 --canary 10\n  outpostctl deploy bc@1.2.0 --standby"
    )]
    Deploy {
        /// NAME@VERSION
        target: String,
        /// Devices whose labels match, e.g. `site=a,tier=edge` (default: every device).
        #[arg(long, value_delimiter = ',')]
        selector: Vec<String>,
        /// Only these devices (repeatable).
        #[arg(long = "device")]
        devices: Vec<String>,
        /// As a canary beside each device's primary version, answering this percent (1-99) of
        /// the requests that name no version (sticky by request id).
        #[arg(long, conflicts_with = "standby", value_parser = clap::value_parser!(u8).range(1..=99))]
        canary: Option<u8>,
        /// As a standby beside each device's primary version: loaded and validated, answering
        /// only requests that name its version — then a plain `deploy` of it switches every
        /// device at once (blue-green).
        #[arg(long, conflicts_with = "shadow")]
        standby: bool,
        /// As a shadow beside each device's primary version: runs on a copy of every request
        /// the primary answers, off the response path; agreement goes to the coordinator.
        #[arg(long, conflicts_with = "canary")]
        shadow: bool,
    },
    /// API tokens with roles (viewer, operator, admin).
    #[command(subcommand)]
    Token(ApiTokenCommand),
    /// The audit log of every mutation.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Alerts firing now, then recently resolved ones.
    #[command(
        after_help = "Examples:\n  outpostctl alerts\n  outpostctl alerts -l model=bc\n  outpostctl alerts -o wide"
    )]
    Alerts {
        /// Only alerts whose labels match every `key=value`, e.g. `-l model=bc,feature=age`.
        #[arg(short = 'l', long, value_delimiter = ',')]
        selector: Vec<String>,
    },
    /// Reports for people.
    #[command(subcommand)]
    Report(ReportCommand),
    /// Service-level objectives per model: availability, latency percentile, accuracy.
    #[command(subcommand)]
    Slo(SloCommand),
    /// Datasets from the fleet's logged predictions and their labels.
    #[command(subcommand)]
    Data(DataCommand),
    /// The retraining hook: run it now, or list its runs.
    #[command(subcommand)]
    Retrain(RetrainCommand),
    /// Back to the last good production version on every device, in one command.
    Rollback { name: String },
    /// Staged rollouts: start, status, list, pause, resume, promote, abort.
    #[command(subcommand)]
    Rollout(rollout::RolloutCommand),
    /// Incidents left by automatic rollbacks: list, show, close.
    #[command(subcommand)]
    Incident(rollout::IncidentCommand),
}

#[derive(Debug, Subcommand)]
enum RetrainCommand {
    /// Start the model's retraining hook now; with --wait, follow it to the end (exit 0 when a
    /// validated version came out, 1 otherwise).
    Run {
        name: String,
        #[arg(long)]
        wait: bool,
    },
    /// The model's retraining runs.
    History { name: String },
}

#[derive(Debug, Subcommand)]
enum DataCommand {
    /// Write uploaded predictions (with the labels that arrived for them) as CSV:
    /// device, prediction_id, version, predicted_at_ms, features…, predicted, label.
    Export {
        #[arg(long)]
        model: String,
        /// How far back, e.g. `7d` (default: everything).
        #[arg(long, value_parser = parse_age)]
        since: Option<u64>,
        /// Only predictions a label arrived for.
        #[arg(long)]
        labelled_only: bool,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum SloCommand {
    /// Set a model's objectives (replaces the previous ones).
    #[command(
        after_help = "Examples:\n  outpostctl slo set bc --availability 99.5% --latency 'p95<50ms' --accuracy 90% --window 30d"
    )]
    Set {
        name: String,
        /// Share of successful requests, e.g. `99%` or `0.99`.
        #[arg(long, value_parser = parse_share)]
        availability: Option<f64>,
        /// A latency percentile under a threshold, e.g. `p95<200ms`.
        #[arg(long, value_parser = parse_latency_objective)]
        latency: Option<(f64, f64)>,
        /// Accuracy floor on labelled predictions, e.g. `85%` or `0.85`.
        #[arg(long, value_parser = parse_share)]
        accuracy: Option<f64>,
        /// The rolling window, e.g. `1h`, `30d`.
        #[arg(long, value_parser = parse_age, default_value = "30d")]
        window: u64,
    },
    /// Compliance and error-budget burn rate of one model (or every model with objectives).
    #[command(after_help = "Examples:\n  outpostctl slo status\n  outpostctl slo status bc -o json")]
    Status { name: Option<String> },
}

#[derive(Debug, Subcommand)]
enum ReportCommand {
    /// Per-feature drift over time, the features that moved most, prediction drift and version
    /// changes (Markdown, self-contained HTML, or the JSON behind them).
    Drift {
        #[arg(long)]
        model: String,
        /// How far back, e.g. `7d`, `12h` (default 7d).
        #[arg(long, value_parser = parse_age, default_value = "7d")]
        since: u64,
        #[arg(long, default_value = "md", value_parser = ["md", "html", "json"])]
        format: String,
        /// Write to this file instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum ModelCommand {
    /// Build a bundle from an ONNX model and register it; the coordinator signs it.
    #[command(
        after_help = "Examples:\n  outpostctl model push bc-1.1.0.onnx --name bc --version 1.1.0 --baseline train.csv --exclude label\n  outpostctl model push model.onnx --name bc --version 1.2.0 --card CARD.md --meta owner=ml-team"
    )]
    Push(Box<BuildArgs>),
    /// Every registered version.
    #[command(after_help = "Examples:\n  outpostctl model list\n  outpostctl model list -o wide")]
    List,
    /// A model's versions (NAME), or one version (NAME@VERSION): stage, bundle, signatures,
    /// inputs, baseline, validation.
    #[command(
        after_help = "Examples:\n  outpostctl model show bc\n  outpostctl model show bc@1.1.0\n  outpostctl model show bc@1.1.0 -o yaml"
    )]
    Show {
        /// NAME or NAME@VERSION
        target: String,
    },
    /// Stage transitions of every version of a model, with who and when.
    History { name: String },
    /// What differs between two versions' manifests and validation metrics.
    Diff { a: String, b: String },
    /// Run the validation gate on a labelled hold-out CSV; exit 0 pass, 1 fail.
    #[command(
        after_help = "Examples:\n  outpostctl model validate bc@1.1.0 --dataset holdout.csv --label label\n  outpostctl model validate bc@1.1.0 --dataset holdout.csv --label label --segment site --min-accuracy 0.9"
    )]
    Validate {
        target: String,
        #[arg(long)]
        dataset: PathBuf,
        /// The column holding the true class.
        #[arg(long)]
        label: String,
        /// A column to break metrics down by (site, hardware, …).
        #[arg(long)]
        segment: Option<String>,
        /// Overrides of the model's stored thresholds, for this run.
        #[command(flatten)]
        thresholds: Thresholds,
    },
    /// Move a version to a stage (validated, canary, production, archived).
    Stage {
        target: String,
        stage: String,
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Delete an archived version and its artifact (admin; audited).
    Purge { target: String },
    /// Quality from ground-truth feedback: accuracy, precision, recall and F1 per class, per
    /// version, and per value of a device label.
    Quality {
        name: String,
        /// A device label to break metrics down by (site, hardware, …).
        #[arg(long)]
        by: Option<String>,
        /// Only predictions from this long ago onwards, e.g. `7d`, `12h`, `30m`.
        #[arg(long, value_parser = parse_age)]
        since: Option<u64>,
    },
    /// The version's model card (Markdown, or HTML with --format html).
    Card {
        target: String,
        #[arg(long, default_value = "md", value_parser = ["md", "html"])]
        format: String,
        /// Write to this file instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Show a model's validation thresholds, or set some of them (the rest keep their value).
    Policy {
        name: String,
        #[command(flatten)]
        thresholds: Thresholds,
    },
}

/// The validation gate's thresholds (`validation::Policy`), each optional on the command line.
#[derive(Debug, clap::Args)]
struct Thresholds {
    /// Refuse below this accuracy.
    #[arg(long)]
    min_accuracy: Option<f64>,
    /// Largest accuracy drop vs production (absolute; default 0.01).
    #[arg(long)]
    max_accuracy_drop: Option<f64>,
    /// Largest macro-F1 drop vs production (absolute; default 0.02).
    #[arg(long)]
    max_f1_drop: Option<f64>,
    /// Largest p99 latency ratio vs production (default 2.0) …
    #[arg(long)]
    max_p99_ratio: Option<f64>,
    /// … plus this many milliseconds (default 0.5).
    #[arg(long)]
    p99_slack_ms: Option<f64>,
}

impl Thresholds {
    /// The thresholds given, by their `Policy` field names.
    fn given(&self) -> Vec<(&'static str, f64)> {
        [
            ("min_accuracy", self.min_accuracy),
            ("max_accuracy_drop", self.max_accuracy_drop),
            ("max_f1_drop", self.max_f1_drop),
            ("max_p99_ratio", self.max_p99_ratio),
            ("p99_slack_ms", self.p99_slack_ms),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect()
    }
}

#[derive(Debug, Subcommand)]
enum ApiTokenCommand {
    /// Create a token; prints it once.
    Create {
        name: String,
        #[arg(long)]
        role: String,
        /// How long it works: `90d`, `12h`, … or `never` (default: never for admin, 90d for
        /// the other roles).
        #[arg(long)]
        expires: Option<String>,
    },
    List,
    Revoke {
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check the hash chain: exit 0 intact, 1 edited or removed entries.
    Verify,
    /// The newest entries.
    List {
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
}

#[derive(Debug, Subcommand)]
enum BundleCommand {
    /// Build a bundle from an ONNX model: checks it loads and reproduces its reference
    /// outputs, computes baseline statistics, and signs it when `--key` is given.
    Create(Box<CreateArgs>),
    /// Add a signature to a bundle with an offline key (in place unless `--out`).
    Sign {
        file: PathBuf,
        /// PKCS#8 Ed25519 key file (`outpostctl key generate`).
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Download a version's signed bundle from the coordinator (for an air-gapped site).
    Export { target: String, file: PathBuf },
    /// Print everything a bundle holds and verify it: structure, model hash, and — for each
    /// `--trust` key — its signature. Exit 1 if a check fails.
    Inspect {
        file: PathBuf,
        /// A trusted public key (64 hex digits); repeatable.
        #[arg(long)]
        trust: Vec<String>,
    },
}

/// What a bundle is built from (`bundle create` and `model push`).
#[derive(Debug, clap::Args)]
struct BuildArgs {
    /// The ONNX model.
    model: PathBuf,
    #[arg(long)]
    name: String,
    /// Semantic version, e.g. 1.2.0.
    #[arg(long)]
    version: String,
    /// Reference dataset (CSV with a header) for baseline feature statistics.
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// Columns of the baseline file that are not features (label, segment, ids).
    #[arg(long = "exclude", alias = "label", value_delimiter = ',')]
    exclude: Vec<String>,
    /// Reference input/output pairs (default: `<model>.reference.json` beside the model).
    #[arg(long)]
    reference: Option<PathBuf>,
    /// Model card text (Markdown).
    #[arg(long)]
    card: Option<PathBuf>,
    /// Free-form metadata, key=value (repeatable).
    #[arg(long = "meta")]
    meta: Vec<String>,
    /// Hyper-parameters, key=value (repeatable).
    #[arg(long = "param")]
    params: Vec<String>,
    #[arg(long)]
    training_date: Option<String>,
    /// The training dataset: its sha256 goes into the manifest.
    #[arg(long)]
    dataset: Option<PathBuf>,
    /// What the agent does with NaN inputs: reject (400) or allow.
    #[arg(long, value_enum, default_value = "reject")]
    nan_policy: NanPolicyArg,
}

impl BuildArgs {
    /// The build specification, with every `k=v` and file argument checked.
    fn spec(&self) -> Result<crate::models::packaging::BuildSpec, Failure> {
        use crate::models::packaging::parse_pairs;
        let usage = |e: crate::models::packaging::PackagingError| Failure::Usage(e.to_string());
        let dataset_sha256 = match &self.dataset {
            Some(path) => Some(outpost_shared::bundle::sha256_hex(
                &std::fs::read(path)
                    .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", path.display())))?,
            )),
            None => None,
        };
        Ok(crate::models::packaging::BuildSpec {
            model: self.model.clone(),
            name: self.name.clone(),
            version: self.version.clone(),
            baseline: self.baseline.clone(),
            exclude: self.exclude.clone(),
            reference: self.reference.clone(),
            card: self.card.clone(),
            metadata: parse_pairs(&self.meta, "--meta").map_err(usage)?,
            hyperparameters: parse_pairs(&self.params, "--param").map_err(usage)?,
            training_date: self.training_date.clone(),
            dataset_sha256,
            parent_version: None,
            nan_policy: match self.nan_policy {
                NanPolicyArg::Reject => outpost_shared::bundle::NanPolicy::Reject,
                NanPolicyArg::Allow => outpost_shared::bundle::NanPolicy::Allow,
            },
        })
    }
}

#[derive(Debug, clap::Args)]
struct CreateArgs {
    #[command(flatten)]
    build: BuildArgs,
    /// Sign with this key file.
    #[arg(long)]
    key: Option<PathBuf>,
    /// Where to write the bundle.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum NanPolicyArg {
    Reject,
    Allow,
}

#[derive(Debug, Subcommand)]
enum KeyCommand {
    /// Generate a signing key (written 0600; refuses to overwrite); prints its public key.
    Generate { out: PathBuf },
    /// Print a key file's public key (hex, for `registry.trusted_keys`) and key id.
    Show { file: PathBuf },
}

#[derive(Debug, Subcommand)]
enum DeviceCommand {
    /// Enrolment tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// One device: status, models, backlog, recent events and its newest drift verdicts.
    #[command(
        after_help = "Examples:\n  outpostctl device show dev-3f2a…\n  outpostctl device show dev-3f2a… -o yaml"
    )]
    Show { id: String },
    /// Revoke a device: its telemetry, downloads and deployments are refused from now on, and
    /// its certificate joins the CA's revocation list (`device crl`).
    Revoke { id: String },
    /// Delete a device from the fleet, revoking it first if it was not.
    Delete { id: String },
    /// Print the CA's certificate revocation list (PEM) for an external broker's `crlfile`.
    Crl,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a one-time, expiring enrolment token; prints the token.
    #[command(
        after_help = "Examples:\n  outpostctl device token create --labels site=a,tier=edge\n  outpostctl device token create --labels site=b --ttl-secs 600"
    )]
    Create {
        /// Labels the enrolled device gets, e.g. `site=a,hw=x`.
        #[arg(long, value_delimiter = ',')]
        labels: Vec<String>,
        /// Validity in seconds (default: the coordinator's `enrolment.token_ttl_secs`).
        #[arg(long)]
        ttl_secs: Option<u64>,
    },
}

#[derive(Debug, Subcommand)]
enum TelemetryCommand {
    /// Ingest a file written by `outpost-agent export-telemetry`; writes the ack file for
    /// `outpost-agent import-ack`.
    Import {
        file: PathBuf,
        /// Where to write the ack file.
        #[arg(long)]
        ack_out: PathBuf,
    },
}

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
        Command::Token(_) | Command::Audit(_) => admin::run(cli, &api),
        Command::Rollout(command) => rollout::rollout(cli, &api, command),
        Command::Incident(command) => rollout::incident(cli, &api, command),
    }
}
