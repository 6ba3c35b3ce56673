//! `outpostctl`: the operator's command line for a coordinator.
//!
//! Talks to the coordinator's API (`--url`, env `OUTPOSTCTL_URL`; `https://` needs `--ca-file`)
//! with a token (`--token` / env `OUTPOSTCTL_TOKEN`, or `--token-file`, e.g.
//! `<data_dir>/admin.token`). `bundle create|sign|inspect` and `key` work offline.
//! Exit codes: 0 success, 1 the coordinator refused or failed, 2 bad usage or unreachable.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use outpost_coordinator::http::api::{DeviceView, ImportReport, TokenResponse};

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

#[path = "outpostctl/rollout.rs"]
mod rollout;

#[derive(Debug, Parser)]
#[command(name = "outpostctl", version, about = "Operate an Outpost coordinator")]
struct Cli {
    /// Coordinator API URL.
    #[arg(long, env = "OUTPOSTCTL_URL", default_value = "http://127.0.0.1:7400", global = true)]
    url: String,
    /// API token (the admin bootstrap token, or one from `token create` with its role).
    #[arg(long, env = "OUTPOSTCTL_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// File holding the token (the coordinator writes the admin one to `<data_dir>/admin.token`).
    #[arg(long, global = true)]
    token_file: Option<PathBuf>,
    /// CA certificate (PEM) of an https:// coordinator (`<data_dir>/pki/ca.pem` by default on
    /// the coordinator's machine).
    #[arg(long, env = "OUTPOSTCTL_CA_FILE", global = true)]
    ca_file: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Devices and enrolment tokens.
    #[command(subcommand)]
    Device(DeviceCommand),
    /// List devices: labels, liveness, last seen, backlog, models.
    Devices,
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
    Alerts,
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
    Push(Box<BuildArgs>),
    /// Every registered version.
    List,
    /// One version: manifest, stage, validation.
    Show { target: String },
    /// Stage transitions of every version of a model, with who and when.
    History { name: String },
    /// What differs between two versions' manifests and validation metrics.
    Diff { a: String, b: String },
    /// Run the validation gate on a labelled hold-out CSV; exit 0 pass, 1 fail.
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
    fn spec(&self) -> Result<outpost_coordinator::models::packaging::BuildSpec, Failure> {
        use outpost_coordinator::models::packaging::parse_pairs;
        let usage = |e: outpost_coordinator::models::packaging::PackagingError| Failure::Usage(e.to_string());
        let dataset_sha256 = match &self.dataset {
            Some(path) => Some(outpost_shared::bundle::sha256_hex(
                &std::fs::read(path)
                    .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", path.display())))?,
            )),
            None => None,
        };
        Ok(outpost_coordinator::models::packaging::BuildSpec {
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
    Show { id: String },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a one-time, expiring enrolment token; prints the token.
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

#[derive(Debug)]
enum Failure {
    Usage(String),
    Refused(String),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
        Err(Failure::Refused(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(1)
        }
    }
}

struct Api {
    url: String,
    token: String,
    agent: ureq::Agent,
}

impl Api {
    fn new(cli: &Cli) -> Result<Api, Failure> {
        let token = match (&cli.token, &cli.token_file) {
            (Some(token), _) => token.trim().to_owned(),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|e| Failure::Usage(format!("cannot read token file {}: {e}", path.display())))?
                .trim()
                .to_owned(),
            (None, None) => {
                return Err(Failure::Usage(
                    "no admin token: pass --token, --token-file or set OUTPOSTCTL_TOKEN".into(),
                ));
            }
        };
        let url = cli.url.trim_end_matches('/').to_owned();
        let ca = match &cli.ca_file {
            Some(path) => Some(
                std::fs::read(path)
                    .map_err(|e| Failure::Usage(format!("cannot read CA file {}: {e}", path.display())))?,
            ),
            None => None,
        };
        let agent = outpost_shared::tls::api_client(&url, ca.as_deref(), std::time::Duration::from_secs(900))
            .map_err(Failure::Usage)?;
        Ok(Api { url, token, agent })
    }

    fn handle<T: serde::de::DeserializeOwned>(
        &self,
        result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<T, Failure> {
        let mut response = result
            .map_err(|e| Failure::Usage(format!("cannot reach the coordinator at {}: {e}", self.url)))?;
        let status = response.status();
        let text = response
            .body_mut()
            .with_config()
            .limit(1024 * 1024 * 1024)
            .read_to_string()
            .map_err(|e| Failure::Refused(format!("cannot read the coordinator's answer: {e}")))?;
        if !status.is_success() {
            let message = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                .unwrap_or(text);
            return Err(Failure::Refused(format!("coordinator answered {status}: {message}")));
        }
        serde_json::from_str(&text)
            .map_err(|e| Failure::Refused(format!("unexpected answer from the coordinator: {e}")))
    }

    fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, Failure> {
        let result = self
            .agent
            .get(format!("{}{path}", self.url))
            .header("Authorization", format!("Bearer {}", self.token))
            .call();
        self.handle(result)
    }

    fn post_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<T, Failure> {
        let result = self
            .agent
            .post(format!("{}{path}", self.url))
            .header("Authorization", format!("Bearer {}", self.token))
            .send_json(body);
        self.handle(result)
    }

    fn get_bytes(&self, path: &str) -> Result<Vec<u8>, Failure> {
        let mut response = self
            .agent
            .get(format!("{}{path}", self.url))
            .header("Authorization", format!("Bearer {}", self.token))
            .call()
            .map_err(|e| Failure::Usage(format!("cannot reach the coordinator at {}: {e}", self.url)))?;
        let status = response.status();
        let bytes = response
            .body_mut()
            .with_config()
            .limit(4 * 1024 * 1024 * 1024)
            .read_to_vec()
            .map_err(|e| Failure::Refused(format!("cannot read the coordinator's answer: {e}")))?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&bytes);
            return Err(Failure::Refused(format!("coordinator answered {status}: {text}")));
        }
        Ok(bytes)
    }

    fn put_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<T, Failure> {
        let result = self
            .agent
            .put(format!("{}{path}", self.url))
            .header("Authorization", format!("Bearer {}", self.token))
            .send_json(body);
        self.handle(result)
    }

    fn delete<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, Failure> {
        let result = self
            .agent
            .delete(format!("{}{path}", self.url))
            .header("Authorization", format!("Bearer {}", self.token))
            .call();
        self.handle(result)
    }

    fn post_bytes_query<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
        body: &[u8],
    ) -> Result<T, Failure> {
        let mut request = self
            .agent
            .post(format!("{}{path}", self.url))
            .header("Authorization", format!("Bearer {}", self.token))
            .header("Content-Type", "text/csv");
        for (k, v) in query {
            request = request.query(*k, v);
        }
        self.handle(request.send(body))
    }

    /// PUTs `body`, printing upload progress to stderr; returns the status and JSON answer.
    fn put_with_progress(&self, path: &str, body: &[u8]) -> Result<(u16, serde_json::Value), Failure> {
        struct Progress<'a> {
            data: &'a [u8],
            sent: usize,
            shown: usize,
        }
        impl std::io::Read for Progress<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = buf.len().min(self.data.len() - self.sent).min(256 * 1024);
                buf[..n].copy_from_slice(&self.data[self.sent..self.sent + n]);
                self.sent += n;
                let percent = if self.data.is_empty() { 100 } else { self.sent * 100 / self.data.len() };
                if percent >= self.shown + 10 || (percent == 100 && self.shown < 100) {
                    self.shown = percent;
                    eprintln!("uploading {percent:>3}% ({} of {} bytes)", self.sent, self.data.len());
                }
                Ok(n)
            }
        }
        let mut progress = Progress { data: body, sent: 0, shown: 0 };
        let result = self
            .agent
            .put(format!("{}{path}", self.url))
            .header("Authorization", format!("Bearer {}", self.token))
            .header("Content-Type", "application/octet-stream")
            .send(ureq::SendBody::from_reader(&mut progress));
        let response = result
            .map_err(|e| Failure::Usage(format!("cannot reach the coordinator at {}: {e}", self.url)))?;
        let status = response.status().as_u16();
        let value: serde_json::Value = self.handle(Ok(response))?;
        Ok((status, value))
    }

    fn post_bytes<T: serde::de::DeserializeOwned>(&self, path: &str, body: &[u8]) -> Result<T, Failure> {
        let result = self
            .agent
            .post(format!("{}{path}", self.url))
            .header("Authorization", format!("Bearer {}", self.token))
            .header("Content-Type", "application/octet-stream")
            .send(body);
        self.handle(result)
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

fn model_command(cli: &Cli, api: &Api, command: &ModelCommand) -> Result<(), Failure> {
    use outpost_coordinator::models::packaging::{self, utc};
    let print_json = |v: &serde_json::Value| say!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    match command {
        ModelCommand::Push(args) => {
            let spec = args.spec()?;
            eprintln!("building {}@{} from {}…", args.name, args.version, args.model.display());
            let (bundle, evidence) =
                packaging::build(&spec, now_secs()).map_err(|e| Failure::Refused(e.to_string()))?;
            eprintln!("model {evidence}");
            let bytes = bundle.to_bytes();
            let (status, response) = api.put_with_progress(
                &format!("/api/v1/models/{}/versions/{}", args.name, args.version),
                &bytes,
            )?;
            if cli.json {
                print_json(&response);
            } else if status == 201 {
                say!(
                    "{}@{} registered (bundle sha256 {}, signed by {})",
                    args.name,
                    args.version,
                    response["record"]["bundle_sha256"].as_str().unwrap_or("?"),
                    response["record"]["signed_by"]
                );
            } else {
                say!(
                    "{}@{} was already registered with this model; nothing changed",
                    args.name,
                    args.version
                );
            }
        }
        ModelCommand::List => {
            let versions: Vec<serde_json::Value> = api.get("/api/v1/models")?;
            if cli.json {
                print_json(&serde_json::Value::Array(versions));
                return Ok(());
            }
            say!(
                "{:<20} {:<12} {:<11} {:<10} {:<20} PUSHED BY",
                "MODEL",
                "VERSION",
                "STAGE",
                "VALIDATED",
                "PUSHED"
            );
            for v in versions {
                let validated = match v["validation_passed"].as_bool() {
                    Some(true) => "passed",
                    Some(false) => "FAILED",
                    None => "-",
                };
                say!(
                    "{:<20} {:<12} {:<11} {:<10} {:<20} {}",
                    v["name"].as_str().unwrap_or(""),
                    v["version"].as_str().unwrap_or(""),
                    v["stage"].as_str().unwrap_or(""),
                    validated,
                    utc(v["pushed_at_ms"].as_u64().unwrap_or(0) / 1000),
                    v["pushed_by"].as_str().unwrap_or("")
                );
            }
        }
        ModelCommand::Show { target } => {
            let (name, version) = split_target(target)?;
            let v: serde_json::Value = api.get(&format!("/api/v1/models/{name}/versions/{version}"))?;
            print_json(&v);
        }
        ModelCommand::History { name } => {
            let versions: Vec<serde_json::Value> = api.get(&format!("/api/v1/models/{name}"))?;
            let mut rows: Vec<(u64, String)> = Vec::new();
            for v in &versions {
                for t in v["transitions"].as_array().into_iter().flatten() {
                    let at = t["at_ms"].as_u64().unwrap_or(0);
                    rows.push((
                        at,
                        format!(
                            "{}  {:<12} {:>10} -> {:<10} by {:<12} {}",
                            utc(at / 1000),
                            v["version"].as_str().unwrap_or(""),
                            t["from"].as_str().unwrap_or("-"),
                            t["to"].as_str().unwrap_or(""),
                            t["by"].as_str().unwrap_or(""),
                            t["note"].as_str().unwrap_or("")
                        ),
                    ));
                }
            }
            rows.sort_by_key(|r| r.0);
            for (_, line) in rows {
                say!("{line}");
            }
        }
        ModelCommand::Diff { a, b } => {
            let (na, va) = split_target(a)?;
            let (nb, vb) = split_target(b)?;
            let x: serde_json::Value = api.get(&format!("/api/v1/models/{na}/versions/{va}"))?;
            let y: serde_json::Value = api.get(&format!("/api/v1/models/{nb}/versions/{vb}"))?;
            let mut lines = Vec::new();
            diff_values("", &x, &y, &mut lines);
            if lines.is_empty() {
                say!("{a} and {b} do not differ");
            }
            for line in lines {
                say!("{line}");
            }
        }
        ModelCommand::Validate { target, dataset, label, segment, thresholds } => {
            let (name, version) = split_target(target)?;
            let bytes = std::fs::read(dataset)
                .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", dataset.display())))?;
            let mut query = vec![("label", label.clone())];
            if let Some(s) = segment {
                query.push(("segment", s.clone()));
            }
            query.extend(thresholds.given().into_iter().map(|(k, v)| (k, v.to_string())));
            eprintln!("validating {name}@{version} on {} ({} bytes)…", dataset.display(), bytes.len());
            let report: serde_json::Value = api.post_bytes_query(
                &format!("/api/v1/models/{name}/versions/{version}/validate"),
                &query,
                &bytes,
            )?;
            if cli.json {
                print_json(&report);
            } else {
                print_report(&report);
            }
            if report["passed"].as_bool() != Some(true) {
                return Err(Failure::Refused(format!("{name}@{version} failed validation")));
            }
        }
        ModelCommand::Stage { target, stage, note } => {
            let (name, version) = split_target(target)?;
            let v: serde_json::Value = api.post_json(
                &format!("/api/v1/models/{name}/versions/{version}/stage"),
                &serde_json::json!({"stage": stage, "note": note}),
            )?;
            say!("{name}@{version} is now {}", v["stage"].as_str().unwrap_or("?"));
        }
        ModelCommand::Quality { name, by, since } => {
            let mut path = format!("/api/v1/models/{name}/quality?");
            if let Some(by) = by {
                path.push_str(&format!("by={by}&"));
            }
            if let Some(age_ms) = since {
                path.push_str(&format!(
                    "since_ms={}",
                    outpost_shared::endpoints::now_ms().saturating_sub(*age_ms)
                ));
            }
            let report: serde_json::Value = api.get(path.trim_end_matches(['?', '&']))?;
            if cli.json {
                print_json(&report);
                return Ok(());
            }
            print_quality(&report);
        }
        ModelCommand::Card { target, format, out } => {
            let (name, version) = split_target(target)?;
            let bytes =
                api.get_bytes(&format!("/api/v1/models/{name}/versions/{version}/card?format={format}"))?;
            match out {
                Some(path) => {
                    outpost_shared::files::write_atomic(path, &bytes)
                        .map_err(|e| Failure::Refused(format!("cannot write {}: {e}", path.display())))?;
                    eprintln!("model card of {name}@{version} written to {}", path.display());
                }
                None => say_raw!("{}", String::from_utf8_lossy(&bytes)),
            }
        }
        ModelCommand::Policy { name, thresholds } => {
            let path = format!("/api/v1/models/{name}/policy");
            let mut policy: serde_json::Value = api.get(&path)?;
            let changes = thresholds.given();
            if !changes.is_empty() {
                for (k, v) in changes {
                    policy[k] = serde_json::json!(v);
                }
                policy = api.put_json(&path, &policy)?;
            }
            print_json(&policy);
        }
        ModelCommand::Purge { target } => {
            let (name, version) = split_target(target)?;
            let _: serde_json::Value = api.delete(&format!("/api/v1/models/{name}/versions/{version}"))?;
            say!("{name}@{version} purged");
        }
    }
    Ok(())
}

fn print_report(r: &serde_json::Value) {
    let m = &r["metrics"];
    let f = |v: &serde_json::Value| v.as_f64().map_or("-".into(), |x| format!("{x:.4}"));
    say!(
        "{}@{}: {} rows, accuracy {}, macro precision {}, recall {}, F1 {}, weighted F1 {}",
        r["model"].as_str().unwrap_or(""),
        r["version"].as_str().unwrap_or(""),
        m["rows"],
        f(&m["accuracy"]),
        f(&m["macro_precision"]),
        f(&m["macro_recall"]),
        f(&m["macro_f1"]),
        f(&m["weighted_f1"])
    );
    for (class, c) in m["classes"].as_object().into_iter().flatten() {
        say!(
            "  class {class:<6} precision {} recall {} F1 {} support {}",
            f(&c["precision"]),
            f(&c["recall"]),
            f(&c["f1"]),
            c["support"]
        );
    }
    for (segment, s) in r["segments"].as_object().into_iter().flatten() {
        say!(
            "  segment {segment:<8} rows {} accuracy {} macro F1 {}",
            s["rows"],
            f(&s["accuracy"]),
            f(&s["macro_f1"])
        );
    }
    let l = &r["latency"];
    say!(
        "  latency (1 row, this CPU): p50 {} ms, p95 {} ms, p99 {} ms over {} runs",
        f(&l["p50_ms"]),
        f(&l["p95_ms"]),
        f(&l["p99_ms"]),
        l["runs"]
    );
    for e in r["edge_cases"].as_array().into_iter().flatten() {
        say!(
            "  edge case {:<26} {} — {}",
            e["case"].as_str().unwrap_or(""),
            if e["passed"].as_bool() == Some(true) { "ok  " } else { "FAIL" },
            e["outcome"].as_str().unwrap_or("")
        );
    }
    for c in r["regression"].as_array().into_iter().flatten() {
        say!(
            "  vs production {}: {:<9} {} (production {}, limit {}) {}",
            r["baseline_version"].as_str().unwrap_or("?"),
            c["check"].as_str().unwrap_or(""),
            f(&c["candidate"]),
            f(&c["production"]),
            f(&c["limit"]),
            if c["passed"].as_bool() == Some(true) { "ok" } else { "FAIL" }
        );
    }
    if r["passed"].as_bool() == Some(true) {
        say!("PASSED");
    } else {
        for failure in r["failures"].as_array().into_iter().flatten() {
            say!("  failure: {}", failure.as_str().unwrap_or(""));
        }
        say!("FAILED");
    }
}

/// Leaf-by-leaf differences between two JSON values (arrays compared whole).
fn diff_values(path: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
    use serde_json::Value;
    const SKIP: [&str; 3] = ["transitions", "validated_at_ms", "pushed_at_ms"];
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                if SKIP.contains(&k.as_str()) {
                    continue;
                }
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                diff_values(&p, x.get(k).unwrap_or(&Value::Null), y.get(k).unwrap_or(&Value::Null), out);
            }
        }
        _ if a != b => {
            let show = |v: &Value| {
                let s = v.to_string();
                if s.len() > 80 { format!("{}…", &s[..s.floor_char_boundary(80)]) } else { s }
            };
            out.push(format!("{path}: {} -> {}", show(a), show(b)));
        }
        _ => {}
    }
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

/// The human view of one retraining run.
fn print_run(run: &serde_json::Value) {
    let s = |k: &str| run[k].as_str().unwrap_or("-").to_owned();
    say!(
        "{} {} ({}) {} -> {}: {} rows, command {:.1} s{}",
        s("id"),
        s("status"),
        s("trigger"),
        s("parent_version"),
        s("version"),
        run["data_rows"],
        run["command_ms"].as_f64().unwrap_or(0.0) / 1000.0,
        if run["slow"] == true { " (SLOW: over 10x the previous run)" } else { "" }
    );
    match run["validation_passed"].as_bool() {
        Some(true) => say!("  validation passed"),
        Some(false) => say!("  validation FAILED: {}", run["validation_failures"]),
        None => {}
    }
    if let Some(devices) = run["canary_devices"].as_array().filter(|d| !d.is_empty()) {
        say!("  canary on {} device(s)", devices.len());
    }
    if let Some(error) = run["error"].as_str() {
        say!("  error: {error}");
    }
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

/// The human view of `slo status`.
fn print_slo(status: &serde_json::Value) {
    say!("{} (window {} s)", status["model"].as_str().unwrap_or(""), status["spec"]["window_secs"]);
    say!(
        "  {:<28} {:>10} {:>12} {:>9} {:>10} {:>9} {:>8}",
        "OBJECTIVE",
        "TARGET",
        "ACTUAL",
        "EVENTS",
        "BAD",
        "BURN",
        "BUDGET"
    );
    for o in status["objectives"].as_array().into_iter().flatten() {
        let actual = o["actual"].as_f64().map_or("-".into(), |a| format!("{a:.4}"));
        say!(
            "  {:<28} {:>10} {:>12} {:>9} {:>10} {:>9.2} {:>7.0}%  {}",
            o["objective"].as_str().unwrap_or(""),
            o["target"].as_f64().unwrap_or(0.0),
            actual,
            o["events"].as_u64().unwrap_or(0),
            o["bad_events"].as_u64().unwrap_or(0),
            o["burn_rate"].as_f64().unwrap_or(0.0),
            100.0 * o["budget_remaining"].as_f64().unwrap_or(0.0),
            if o["compliant"] == true { "ok" } else { "BREACHED" }
        );
    }
}

/// `7d`, `12h`, `30m`, `45s` → milliseconds.
fn parse_age(text: &str) -> Result<u64, String> {
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: u64 = number.parse().map_err(|_| format!("`{text}` is not an age like 7d, 12h, 30m or 45s"))?;
    let unit_ms = match unit {
        "d" => 86_400_000,
        "h" => 3_600_000,
        "m" => 60_000,
        "s" => 1000,
        _ => return Err(format!("`{text}`: the unit must be d, h, m or s")),
    };
    n.checked_mul(unit_ms).ok_or_else(|| format!("`{text}` is too long ago"))
}

/// The human view of `model quality`.
fn print_quality(report: &serde_json::Value) {
    let versions = report["versions"].as_object().cloned().unwrap_or_default();
    if versions.is_empty() {
        say!("no labelled predictions yet (agents take labels at POST /v1/feedback)");
    }
    let line = |scope: &str, m: &serde_json::Value| {
        say!(
            "  {:<16} {:>7} {:>9.4} {:>9.4} {:>9.4}",
            scope,
            m["rows"].as_u64().unwrap_or(0),
            m["accuracy"].as_f64().unwrap_or(0.0),
            m["macro_f1"].as_f64().unwrap_or(0.0),
            m["weighted_f1"].as_f64().unwrap_or(0.0)
        );
    };
    for (version, q) in versions {
        say!(
            "{}@{version}: {} labels ({} without a predicted label)",
            report["model"].as_str().unwrap_or(""),
            q["labelled"],
            q["without_prediction"]
        );
        say!("  {:<16} {:>7} {:>9} {:>9} {:>9}", "SCOPE", "ROWS", "ACCURACY", "MACRO F1", "WEIGHT F1");
        line("all", &q["metrics"]);
        for (segment, m) in q["segments"].as_object().into_iter().flatten() {
            line(&format!("{}={segment}", report["by"].as_str().unwrap_or("")), m);
        }
        for (class, c) in q["metrics"]["classes"].as_object().into_iter().flatten() {
            say!(
                "  class {:<10} precision {:.4} recall {:.4} f1 {:.4} support {}",
                class,
                c["precision"].as_f64().unwrap_or(0.0),
                c["recall"].as_f64().unwrap_or(0.0),
                c["f1"].as_f64().unwrap_or(0.0),
                c["support"]
            );
        }
    }
}

/// The human view of `device show`.
fn print_device(d: &DeviceView) {
    let labels: Vec<String> = d.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    say!("device   {} ({}, last seen {})", d.id, d.status, ago(d.last_seen_ms));
    say!("labels   {}", if labels.is_empty() { "-".into() } else { labels.join(",") });
    say!("agent    {}", d.agent_version.as_deref().unwrap_or("-"));
    say!("backlog  {} messages, {} bytes", d.backlog.messages, d.backlog.bytes);
    for m in &d.models {
        let reason = m.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default();
        say!("model    {}@{} {} ({}){reason}", m.name, m.version, m.state, m.slot);
    }
    for e in &d.recent_events {
        say!("event    {} {:?}: {}", ago(Some(e.at_ms)), e.kind, e.message);
    }
    if d.drift.is_empty() {
        say!("drift    no verdicts yet (bundles with a baseline report them once traffic flows)");
    }
    for m in &d.drift {
        say!(
            "drift    {}@{} over {} rows ({} seen), computed {}",
            m.model,
            m.version,
            m.window_rows,
            m.rows_seen,
            ago(d.drift_at_ms)
        );
        say!("  {:<28} {:<15} {:>12} {:>10}  VERDICT", "FEATURE", "TEST", "SCORE", "THRESHOLD");
        for f in m.features.iter().chain(&m.prediction) {
            let test = f.test.as_str().to_owned();
            say!(
                "  {:<28} {:<15} {:>12.4e} {:>10}  {}",
                f.feature,
                test,
                f.score,
                f.threshold,
                if f.drifted { "DRIFT" } else { "ok" }
            );
        }
    }
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

/// The commands that need no coordinator.
fn run_offline(command: &Command) -> Option<Result<(), Failure>> {
    use outpost_coordinator::models::packaging;
    use outpost_shared::bundle::Bundle;
    let invalid = |e: packaging::PackagingError| Failure::Refused(e.to_string());
    let write = |path: &PathBuf, bytes: &[u8]| {
        outpost_shared::files::write_atomic(path, bytes)
            .map_err(|e| Failure::Refused(format!("cannot write {}: {e}", path.display())))
    };
    let result = match command {
        Command::Key(KeyCommand::Generate { out }) => {
            packaging::generate_key(out).map_err(invalid).map(|key| {
                say!("{}", hex::encode(key.public_key().as_bytes()));
                eprintln!(
                    "key {} written to {} (mode 0600); the line above is its public key",
                    key.key_id(),
                    out.display()
                );
            })
        }
        Command::Key(KeyCommand::Show { file }) => packaging::read_key(file).map_err(invalid).map(|key| {
            say!("{}", hex::encode(key.public_key().as_bytes()));
            eprintln!("key id {}", key.key_id());
        }),
        Command::Bundle(BundleCommand::Create(args)) => (|| {
            let spec = args.build.spec()?;
            let key = args.key.as_deref().map(packaging::read_key).transpose().map_err(invalid)?;
            let (mut bundle, evidence) = packaging::build(&spec, now_secs()).map_err(invalid)?;
            if let Some(key) = &key {
                bundle.sign(key).map_err(|e| Failure::Refused(e.to_string()))?;
            }
            let bytes = bundle.to_bytes();
            write(&args.out, &bytes)?;
            say!(
                "{} written to {} ({} bytes, {}); model {}",
                bundle.manifest.id(),
                args.out.display(),
                bytes.len(),
                key.map_or("unsigned".to_owned(), |k| format!("signed by key {}", k.key_id())),
                evidence
            );
            Ok(())
        })(),
        Command::Bundle(BundleCommand::Sign { file, key, out }) => (|| {
            let key = packaging::read_key(key).map_err(invalid)?;
            let bytes = std::fs::read(file)
                .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", file.display())))?;
            let mut bundle =
                Bundle::parse(&bytes).map_err(|e| Failure::Refused(format!("{}: {e}", file.display())))?;
            bundle.verify_model().map_err(|e| Failure::Refused(format!("{}: {e}", file.display())))?;
            bundle.sign(&key).map_err(|e| Failure::Refused(e.to_string()))?;
            let out = out.as_ref().unwrap_or(file);
            write(out, &bundle.to_bytes())?;
            say!(
                "{} signed by key {} ({} signatures) → {}",
                bundle.manifest.id(),
                key.key_id(),
                bundle.signatures.len(),
                out.display()
            );
            Ok(())
        })(),
        Command::Bundle(BundleCommand::Inspect { file, trust }) => (|| {
            let bytes = std::fs::read(file)
                .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", file.display())))?;
            let bundle =
                Bundle::parse(&bytes).map_err(|e| Failure::Refused(format!("{}: {e}", file.display())))?;
            let mut text = packaging::describe(&bundle);
            let mut failed = Vec::new();
            match bundle.verify_model() {
                Ok(()) => text.push_str("check       model sha256 matches the manifest\n"),
                Err(e) => failed.push(e.to_string()),
            }
            let keys = trust
                .iter()
                .map(|t| {
                    hex::decode(t.trim())
                        .map_err(|e| e.to_string())
                        .and_then(|b| {
                            outpost_shared::protocol::keys::PublicKey::from_bytes(&b)
                                .map_err(|e| e.to_string())
                        })
                        .map_err(|e| {
                            Failure::Usage(format!("--trust `{t}` is not an Ed25519 public key in hex: {e}"))
                        })
                })
                .collect::<Result<Vec<_>, _>>()?;
            if !keys.is_empty() {
                match bundle.verify_signature(&keys) {
                    Ok(key_id) => {
                        text.push_str(&format!("check       signature by trusted key {key_id} verifies\n"))
                    }
                    Err(e) => failed.push(e.to_string()),
                }
            }
            // A closed pipe (`| head`) is not an error worth a panic.
            let _ = std::io::Write::write_all(&mut std::io::stdout(), text.as_bytes());
            if failed.is_empty() { Ok(()) } else { Err(Failure::Refused(failed.join("; "))) }
        })(),
        _ => return None,
    };
    Some(result)
}

fn run(cli: &Cli) -> Result<(), Failure> {
    if let Some(result) = run_offline(&cli.command) {
        return result;
    }
    let api = Api::new(cli)?;
    match &cli.command {
        Command::Device(DeviceCommand::Token(TokenCommand::Create { labels, ttl_secs })) => {
            let labels = parse_labels(labels)?;
            let response: TokenResponse = api.post_json(
                "/api/v1/enrolment-tokens",
                &serde_json::json!({ "labels": labels, "ttl_secs": ttl_secs }),
            )?;
            if cli.json {
                say!("{}", serde_json::to_string_pretty(&response).unwrap_or_default());
            } else {
                say!("{}", response.token);
                eprintln!("one-time token, labels {:?}, expires {}", response.labels, response.expires_at_ms);
            }
        }
        Command::Device(DeviceCommand::Show { id }) => {
            let d: DeviceView = api.get(&format!("/api/v1/devices/{id}"))?;
            if cli.json {
                say!("{}", serde_json::to_string_pretty(&d).unwrap_or_default());
                return Ok(());
            }
            print_device(&d);
        }
        Command::Report(ReportCommand::Drift { model, since, format, out }) => {
            let since_ms = outpost_shared::endpoints::now_ms().saturating_sub(*since);
            let bytes = api.get_bytes(&format!(
                "/api/v1/models/{model}/drift-report?format={format}&since_ms={since_ms}"
            ))?;
            match out {
                Some(path) => {
                    outpost_shared::files::write_atomic(path, &bytes)
                        .map_err(|e| Failure::Refused(format!("cannot write {}: {e}", path.display())))?;
                    eprintln!("drift report for {model} written to {}", path.display());
                }
                None => say_raw!("{}", String::from_utf8_lossy(&bytes)),
            }
        }
        Command::Slo(SloCommand::Set { name, availability, latency, accuracy, window }) => {
            let spec = serde_json::json!({
                "availability": availability,
                "latency": latency.map(|(p, ms)| serde_json::json!({"percentile": p, "threshold_ms": ms})),
                "accuracy": accuracy,
                "window_secs": window / 1000,
            });
            let saved: serde_json::Value = api.put_json(&format!("/api/v1/models/{name}/slo"), &spec)?;
            say!("{}", serde_json::to_string_pretty(&saved).unwrap_or_default());
        }
        Command::Slo(SloCommand::Status { name }) => {
            let statuses: Vec<serde_json::Value> = match name {
                Some(name) => vec![api.get(&format!("/api/v1/models/{name}/slo"))?],
                None => {
                    let all: BTreeMap<String, serde_json::Value> = api.get("/api/v1/slo")?;
                    all.into_values().collect()
                }
            };
            if cli.json {
                say!("{}", serde_json::to_string_pretty(&statuses).unwrap_or_default());
                return Ok(());
            }
            if statuses.is_empty() {
                say!("no objectives set (outpostctl slo set NAME --availability 99% --latency 'p95<200ms')");
            }
            statuses.iter().for_each(print_slo);
        }
        Command::Data(DataCommand::Export { model, since, labelled_only, out }) => {
            let since_ms = since.map_or(0, |age| outpost_shared::endpoints::now_ms().saturating_sub(age));
            let path =
                format!("/api/v1/models/{model}/data?since_ms={since_ms}&labelled_only={labelled_only}");
            let bytes = api.get_bytes(&path)?;
            outpost_shared::files::write_atomic(out, &bytes)
                .map_err(|e| Failure::Refused(format!("cannot write {}: {e}", out.display())))?;
            let text = String::from_utf8_lossy(&bytes);
            let rows = text.lines().skip(1).count();
            let labelled = text.lines().skip(1).filter(|l| !l.ends_with(',')).count();
            say!("{rows} predictions ({labelled} labelled) of {model} written to {}", out.display());
        }
        Command::Rollout(command) => rollout::rollout(cli, &api, command)?,
        Command::Incident(command) => rollout::incident(cli, &api, command)?,
        Command::Rollback { name } => {
            let done: serde_json::Value =
                api.post_json(&format!("/api/v1/models/{name}/rollback"), &serde_json::json!({}))?;
            if cli.json {
                say!("{}", serde_json::to_string_pretty(&done).unwrap_or_default());
            } else {
                say!(
                    "{name} rolled back from {} to {} on {} device(s)",
                    done["from"].as_str().unwrap_or("?"),
                    done["to"].as_str().unwrap_or("?"),
                    done["devices"].as_array().map_or(0, Vec::len)
                );
            }
        }
        Command::Retrain(RetrainCommand::Run { name, wait }) => {
            let started: serde_json::Value =
                api.post_json(&format!("/api/v1/models/{name}/retrain"), &serde_json::json!({}))?;
            let id = started["id"].as_str().unwrap_or_default().to_owned();
            eprintln!("retraining run {id} started");
            if !wait {
                say!("{id}");
                return Ok(());
            }
            let run = loop {
                std::thread::sleep(std::time::Duration::from_millis(500));
                let runs: Vec<serde_json::Value> = api.get(&format!("/api/v1/models/{name}/retraining"))?;
                let Some(run) = runs.into_iter().find(|r| r["id"] == id.as_str()) else { continue };
                if !run["finished_ms"].is_null() {
                    break run;
                }
            };
            if cli.json {
                say!("{}", serde_json::to_string_pretty(&run).unwrap_or_default());
            } else {
                print_run(&run);
            }
            if run["validation_passed"] != true {
                return Err(Failure::Refused(format!("retraining run {id} produced no validated version")));
            }
        }
        Command::Retrain(RetrainCommand::History { name }) => {
            let runs: Vec<serde_json::Value> = api.get(&format!("/api/v1/models/{name}/retraining"))?;
            if cli.json {
                say!("{}", serde_json::to_string_pretty(&runs).unwrap_or_default());
                return Ok(());
            }
            if runs.is_empty() {
                say!("no retraining runs of {name} yet (`outpostctl retrain run {name}` starts one)");
            }
            runs.iter().for_each(print_run);
        }
        Command::Alerts => {
            let alerts: Vec<serde_json::Value> = api.get("/api/v1/alerts")?;
            if cli.json {
                say!("{}", serde_json::to_string_pretty(&alerts).unwrap_or_default());
                return Ok(());
            }
            if alerts.is_empty() {
                say!("no alerts");
            }
            for a in &alerts {
                let state = if a["ends_at_ms"].is_null() { "FIRING" } else { "resolved" };
                let labels: Vec<String> = a["labels"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter(|(k, _)| *k != "alertname")
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                    .collect();
                say!(
                    "{:<8} {:<24} since {}  {} device(s)  {}",
                    state,
                    a["labels"]["alertname"].as_str().unwrap_or(""),
                    ago(a["starts_at_ms"].as_u64()),
                    a["devices"].as_array().map_or(0, Vec::len),
                    labels.join(" ")
                );
            }
        }
        Command::Devices => {
            let devices: Vec<DeviceView> = api.get("/api/v1/devices")?;
            if cli.json {
                say!("{}", serde_json::to_string_pretty(&devices).unwrap_or_default());
                return Ok(());
            }
            say!(
                "{:<24} {:<10} {:<12} {:>8} {:>10} {:>9}  {:<24} LABELS",
                "DEVICE",
                "STATUS",
                "LAST SEEN",
                "BACKLOG",
                "ENVELOPES",
                "PREDICTS",
                "MODELS"
            );
            for d in devices {
                let labels: Vec<String> = d.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                let models: Vec<String> =
                    d.models.iter().map(|m| format!("{}@{}({})", m.name, m.version, m.state)).collect();
                say!(
                    "{:<24} {:<10} {:<12} {:>8} {:>10} {:>9}  {:<24} {}",
                    d.id,
                    d.status,
                    ago(d.last_seen_ms),
                    d.backlog.messages,
                    d.counts.envelopes,
                    d.counts.predictions,
                    if models.is_empty() { "-".into() } else { models.join(",") },
                    labels.join(",")
                );
            }
        }
        Command::Bundle(BundleCommand::Export { target, file }) => {
            let (name, version) = split_target(target)?;
            let bytes = api.get_bytes(&format!("/api/v1/models/{name}/versions/{version}/bundle"))?;
            outpost_shared::files::write_atomic(file, &bytes)
                .map_err(|e| Failure::Refused(format!("cannot write {}: {e}", file.display())))?;
            say!("{name}@{version} exported to {} ({} bytes)", file.display(), bytes.len());
        }
        Command::Bundle(_) | Command::Key(_) => {}
        Command::Model(command) => model_command(cli, &api, command)?,
        Command::Deploy { target, selector, devices, canary, standby, shadow } => {
            let (name, version) = split_target(target)?;
            let selector = parse_labels(selector)?;
            let slot = match (canary, standby) {
                (Some(percent), _) => serde_json::json!({"canary": {"percent": percent}}),
                (None, true) => serde_json::json!("standby"),
                (None, false) if *shadow => serde_json::json!("shadow"),
                (None, false) => serde_json::Value::Null,
            };
            let response: serde_json::Value = api.post_json(
                "/api/v1/deployments",
                &serde_json::json!({"model": name, "version": version, "selector": selector, "devices": devices, "slot": slot}),
            )?;
            if cli.json {
                say!("{}", serde_json::to_string_pretty(&response).unwrap_or_default());
            } else {
                let targets: Vec<&str> = response["devices"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|d| d.as_str()).collect())
                    .unwrap_or_default();
                say!(
                    "{name}@{version} deployed to {} device(s): {} (stage {})",
                    targets.len(),
                    targets.join(", "),
                    response["stage"].as_str().unwrap_or("?")
                );
            }
        }
        Command::Token(ApiTokenCommand::Create { name, role }) => {
            let response: serde_json::Value =
                api.post_json("/api/v1/tokens", &serde_json::json!({"name": name, "role": role}))?;
            say!("{}", response["token"].as_str().unwrap_or_default());
            eprintln!("token `{name}` with role {role}; it is shown only this once");
        }
        Command::Token(ApiTokenCommand::List) => {
            let tokens: Vec<serde_json::Value> = api.get("/api/v1/tokens")?;
            for t in tokens {
                say!(
                    "{:<24} {:<9} created by {}",
                    t["name"].as_str().unwrap_or("?"),
                    t["role"].as_str().unwrap_or("?"),
                    t["created_by"].as_str().unwrap_or("?")
                );
            }
        }
        Command::Token(ApiTokenCommand::Revoke { name }) => {
            let _: serde_json::Value = api.delete(&format!("/api/v1/tokens/{name}"))?;
            say!("token `{name}` revoked");
        }
        Command::Audit(AuditCommand::Verify) => {
            let verdict: serde_json::Value = api.get("/api/v1/audit/verify")?;
            if verdict["ok"].as_bool() == Some(true) {
                say!("audit log intact: {} entries, hash chain verified", verdict["entries"]);
            } else {
                return Err(Failure::Refused(format!(
                    "audit log does not verify: {}",
                    verdict["problem"].as_str().unwrap_or("unknown problem")
                )));
            }
        }
        Command::Audit(AuditCommand::List { limit }) => {
            let entries: Vec<serde_json::Value> = api.get(&format!("/api/v1/audit?limit={limit}"))?;
            if cli.json {
                say!("{}", serde_json::to_string_pretty(&entries).unwrap_or_default());
            } else {
                for e in entries {
                    say!(
                        "{:>5} {} {:<10} {:<9} {:<22} {:<28} {:<8} {}",
                        e["seq"],
                        outpost_coordinator::models::packaging::utc(e["at_ms"].as_u64().unwrap_or(0) / 1000),
                        e["actor"].as_str().unwrap_or(""),
                        e["role"].as_str().unwrap_or(""),
                        e["action"].as_str().unwrap_or(""),
                        e["target"].as_str().unwrap_or(""),
                        e["outcome"].as_str().unwrap_or(""),
                        e["detail"].as_str().unwrap_or("")
                    );
                }
            }
        }
        Command::Telemetry(TelemetryCommand::Import { file, ack_out }) => {
            let bytes = std::fs::read(file)
                .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", file.display())))?;
            eprintln!("importing {} ({} bytes)…", file.display(), bytes.len());
            let report: ImportReport = api.post_bytes("/api/v1/telemetry/import", &bytes)?;
            let ack = hex::decode(&report.ack_file)
                .map_err(|e| Failure::Refused(format!("coordinator sent an unreadable ack file: {e}")))?;
            outpost_shared::files::write_atomic(ack_out, &ack)
                .map_err(|e| Failure::Refused(format!("cannot write {}: {e}", ack_out.display())))?;
            if cli.json {
                let summary = serde_json::json!({
                    "device": report.device, "envelopes": report.envelopes, "stored": report.stored,
                    "duplicates": report.duplicates, "rejected": report.rejected,
                });
                say!("{summary}");
            } else {
                say!(
                    "device {}: {} envelopes, {} stored, {} already stored, rejected {:?}; ack file written to {}",
                    report.device.as_deref().unwrap_or("-"),
                    report.envelopes,
                    report.stored,
                    report.duplicates,
                    report.rejected,
                    ack_out.display()
                );
            }
        }
    }
    Ok(())
}
