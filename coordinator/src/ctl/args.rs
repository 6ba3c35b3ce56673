//! The command line `outpostctl` parses: the global options, every command group and their
//! arguments (clap derive), with the exit-code table `--help` prints.

#[allow(unused_imports)]
use super::*;
use clap::{Parser, Subcommand};

/// The exit codes every command follows (also in `--help`).
pub(super) const EXIT_CODES: &str = "Exit codes (every command):\n  0  done\n  1  the coordinator refused or failed (its message is printed), or a local step failed\n  2  bad usage: arguments, files, token or URL that cannot be used\n  3  not found: the device, model, version, rollout … named does not exist\n  4  cannot reach the coordinator";

#[derive(Debug, Parser)]
#[command(name = "outpostctl", version, about = "Operate an Outpost coordinator", after_help = EXIT_CODES)]
pub(super) struct Cli {
    /// Coordinator API URL.
    #[arg(
        long,
        env = "OUTPOSTCTL_URL",
        default_value = "http://127.0.0.1:7400",
        global = true,
        help_heading = "Global options"
    )]
    pub(super) url: String,
    /// API token (the admin bootstrap token, or one from `token create` with its role).
    #[arg(
        long,
        env = "OUTPOSTCTL_TOKEN",
        global = true,
        help_heading = "Global options",
        hide_env_values = true
    )]
    pub(super) token: Option<String>,
    /// File holding the token (the coordinator writes the admin one to `<data_dir>/admin.token`).
    #[arg(long, global = true, help_heading = "Global options")]
    pub(super) token_file: Option<PathBuf>,
    /// CA certificate (PEM) of an https:// coordinator (`<data_dir>/pki/ca.pem` by default on
    /// the coordinator's machine).
    #[arg(long, env = "OUTPOSTCTL_CA_FILE", global = true, help_heading = "Global options")]
    pub(super) ca_file: Option<PathBuf>,
    /// Print JSON instead of a table (the same as `-o json`).
    #[arg(long = "json", global = true, help_heading = "Global options")]
    pub(super) json_flag: bool,
    /// Output format: `table` (default), `wide` (more columns), `json` or `yaml`.
    #[arg(short = 'o', long, value_enum, global = true, help_heading = "Global options")]
    pub(super) output: Option<Output>,
    #[command(subcommand)]
    pub(super) command: Command,
}

#[derive(Debug, Subcommand)]
pub(super) enum Command {
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
    /// The coordinator's replicas on PostgreSQL: heartbeats, and which one leads each engine.
    #[command(subcommand)]
    Cluster(ClusterCommand),
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
    /// The fleet's signed trust root: which keys sign releases and control messages.
    #[command(subcommand)]
    Root(roots::RootCommand),
}

#[derive(Debug, Subcommand)]
pub(super) enum RetrainCommand {
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
pub(super) enum DataCommand {
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
pub(super) enum SloCommand {
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
pub(super) enum ReportCommand {
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
pub(super) enum ModelCommand {
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
pub(super) struct Thresholds {
    /// Refuse below this accuracy.
    #[arg(long)]
    pub(super) min_accuracy: Option<f64>,
    /// Largest accuracy drop vs production (absolute; default 0.01).
    #[arg(long)]
    pub(super) max_accuracy_drop: Option<f64>,
    /// Largest macro-F1 drop vs production (absolute; default 0.02).
    #[arg(long)]
    pub(super) max_f1_drop: Option<f64>,
    /// Largest p99 latency ratio vs production (default 2.0) …
    #[arg(long)]
    pub(super) max_p99_ratio: Option<f64>,
    /// … plus this many milliseconds (default 0.5).
    #[arg(long)]
    pub(super) p99_slack_ms: Option<f64>,
}

impl Thresholds {
    /// The thresholds given, by their `Policy` field names.
    pub(super) fn given(&self) -> Vec<(&'static str, f64)> {
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
pub(super) enum ApiTokenCommand {
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
pub(super) enum ClusterCommand {
    /// Replicas with their last heartbeat; each engine's leader, its term and lease expiry.
    Status,
}

#[derive(Debug, Subcommand)]
pub(super) enum AuditCommand {
    /// Check the hash chain: exit 0 intact, 1 edited or removed entries.
    Verify,
    /// The newest entries.
    List {
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
}

#[derive(Debug, Subcommand)]
pub(super) enum BundleCommand {
    /// Build a bundle from an ONNX model: checks it loads and reproduces its reference
    /// outputs, computes baseline statistics, and signs it when `--key` is given.
    Create(Box<CreateArgs>),
    /// Encrypt a bundle's model to a bundle key (in place unless `--out`); its signatures are
    /// dropped — sign it after.
    Encrypt {
        file: PathBuf,
        /// The bundle key: `file:PATH` or `env:NAME` (32 bytes as 64 hex digits).
        #[arg(long, value_name = "KEY_SOURCE")]
        key: String,
        #[arg(long)]
        out: Option<PathBuf>,
    },
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
pub(super) struct BuildArgs {
    /// The ONNX model.
    pub(super) model: PathBuf,
    #[arg(long)]
    pub(super) name: String,
    /// Semantic version, e.g. 1.2.0.
    #[arg(long)]
    pub(super) version: String,
    /// Reference dataset (CSV with a header) for baseline feature statistics.
    #[arg(long)]
    pub(super) baseline: Option<PathBuf>,
    /// Columns of the baseline file that are not features (label, segment, ids).
    #[arg(long = "exclude", alias = "label", value_delimiter = ',')]
    pub(super) exclude: Vec<String>,
    /// Reference input/output pairs (default: `<model>.reference.json` beside the model).
    #[arg(long)]
    pub(super) reference: Option<PathBuf>,
    /// Model card text (Markdown).
    #[arg(long)]
    pub(super) card: Option<PathBuf>,
    /// Free-form metadata, key=value (repeatable).
    #[arg(long = "meta")]
    pub(super) meta: Vec<String>,
    /// Hyper-parameters, key=value (repeatable).
    #[arg(long = "param")]
    pub(super) params: Vec<String>,
    #[arg(long)]
    pub(super) training_date: Option<String>,
    /// The training dataset: its sha256 goes into the manifest.
    #[arg(long)]
    pub(super) dataset: Option<PathBuf>,
    /// What the agent does with NaN inputs: reject (400) or allow.
    #[arg(long, value_enum, default_value = "reject")]
    pub(super) nan_policy: NanPolicyArg,
    /// Encrypt the model to this bundle key (`file:PATH`, `env:NAME`; 32 bytes as 64 hex
    /// digits, e.g. from `openssl rand -hex 32`): only holders of the key can load it.
    #[arg(long, value_name = "KEY_SOURCE")]
    pub(super) encrypt_with: Option<String>,
}

impl BuildArgs {
    /// Builds the bundle (checked against its references here, where the model is in the
    /// clear), encrypted when `--encrypt-with` is given; unsigned.
    pub(super) fn bundle(&self) -> Result<(outpost_shared::bundle::Bundle, String), Failure> {
        let (bundle, evidence) = crate::models::packaging::build(&self.spec()?, now_secs())
            .map_err(|e| Failure::Refused(e.to_string()))?;
        match &self.encrypt_with {
            None => Ok((bundle, evidence)),
            Some(spec) => {
                let key = load_bundle_key(spec)?;
                let id = outpost_shared::bundle::bundle_key_id(&key);
                let bundle = bundle.encrypt(&key).map_err(|e| Failure::Refused(e.to_string()))?;
                Ok((bundle, format!("{evidence}; encrypted to bundle key {id}")))
            }
        }
    }

    /// The build specification, with every `k=v` and file argument checked.
    pub(super) fn spec(&self) -> Result<crate::models::packaging::BuildSpec, Failure> {
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
pub(super) struct CreateArgs {
    #[command(flatten)]
    pub(super) build: BuildArgs,
    /// Sign with this key file.
    #[arg(long)]
    pub(super) key: Option<PathBuf>,
    /// Where to write the bundle.
    #[arg(long)]
    pub(super) out: PathBuf,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(super) enum NanPolicyArg {
    Reject,
    Allow,
}

#[derive(Debug, Subcommand)]
pub(super) enum KeyCommand {
    /// Generate a signing key (written 0600; refuses to overwrite); prints its public key.
    Generate { out: PathBuf },
    /// Print a key file's public key (hex, for `registry.trusted_keys`) and key id.
    Show { file: PathBuf },
}

#[derive(Debug, Subcommand)]
pub(super) enum DeviceCommand {
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
    /// Write what an air-gapped device needs into DIR: its desired state, sealed and signed now
    /// (`desired.bin`, with its expiry), and every bundle it names (`<sha256>.bundle`). Carry
    /// the folder over and run `outpost-agent import-desired DIR` there.
    #[command(after_help = "Examples:\n  outpostctl device export-desired dev-3f2a… /media/usb/site-a")]
    ExportDesired { id: String, dir: PathBuf },
}

#[derive(Debug, Subcommand)]
pub(super) enum TokenCommand {
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
pub(super) enum TelemetryCommand {
    /// Ingest a file written by `outpost-agent export-telemetry`; writes the ack file for
    /// `outpost-agent import-ack`.
    Import {
        file: PathBuf,
        /// Where to write the ack file.
        #[arg(long)]
        ack_out: PathBuf,
    },
}
