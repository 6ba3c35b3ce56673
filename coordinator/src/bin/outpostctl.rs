//! `outpostctl`: the operator's command line for a coordinator.
//!
//! Talks to the coordinator's HTTP API (`--url`, env `OUTPOSTCTL_URL`) with the admin token
//! (`--token` / env `OUTPOSTCTL_TOKEN`, or `--token-file`, e.g. `<data_dir>/admin.token`).
//! Exit codes: 0 success, 1 the coordinator refused or failed, 2 bad usage or unreachable.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use outpost_coordinator::api::{DeviceView, ImportReport, TokenResponse};

#[derive(Debug, Parser)]
#[command(name = "outpostctl", version, about = "Operate an Outpost coordinator")]
struct Cli {
    /// Coordinator API URL.
    #[arg(long, env = "OUTPOSTCTL_URL", default_value = "http://127.0.0.1:7400", global = true)]
    url: String,
    /// Admin token.
    #[arg(long, env = "OUTPOSTCTL_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// File holding the admin token (the coordinator writes `<data_dir>/admin.token`).
    #[arg(long, global = true)]
    token_file: Option<PathBuf>,
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
    /// Print everything a bundle holds and verify it: structure, model hash, and — for each
    /// `--trust` key — its signature. Exit 1 if a check fails.
    Inspect {
        file: PathBuf,
        /// A trusted public key (64 hex digits); repeatable.
        #[arg(long)]
        trust: Vec<String>,
    },
}

#[derive(Debug, clap::Args)]
struct CreateArgs {
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
        outpost_shared::endpoints::require_loopback_http(&url).map_err(Failure::Usage)?;
        let agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
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
    use outpost_coordinator::packaging::{self, BuildSpec};
    use outpost_shared::bundle::{Bundle, NanPolicy};
    let invalid = |e: packaging::PackagingError| Failure::Refused(e.to_string());
    let write = |path: &PathBuf, bytes: &[u8]| {
        outpost_shared::files::write_atomic(path, bytes)
            .map_err(|e| Failure::Refused(format!("cannot write {}: {e}", path.display())))
    };
    let result = match command {
        Command::Key(KeyCommand::Generate { out }) => {
            packaging::generate_key(out).map_err(invalid).map(|key| {
                println!("{}", hex::encode(key.public_key().as_bytes()));
                eprintln!(
                    "key {} written to {} (mode 0600); the line above is its public key",
                    key.key_id(),
                    out.display()
                );
            })
        }
        Command::Key(KeyCommand::Show { file }) => packaging::read_key(file).map_err(invalid).map(|key| {
            println!("{}", hex::encode(key.public_key().as_bytes()));
            eprintln!("key id {}", key.key_id());
        }),
        Command::Bundle(BundleCommand::Create(args)) => (|| {
            let dataset_sha256 = match &args.dataset {
                Some(path) => Some(outpost_shared::bundle::sha256_hex(
                    &std::fs::read(path)
                        .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", path.display())))?,
                )),
                None => None,
            };
            let spec = BuildSpec {
                model: args.model.clone(),
                name: args.name.clone(),
                version: args.version.clone(),
                baseline: args.baseline.clone(),
                exclude: args.exclude.clone(),
                reference: args.reference.clone(),
                card: args.card.clone(),
                metadata: packaging::parse_pairs(&args.meta, "--meta")
                    .map_err(|e| Failure::Usage(e.to_string()))?,
                hyperparameters: packaging::parse_pairs(&args.params, "--param")
                    .map_err(|e| Failure::Usage(e.to_string()))?,
                training_date: args.training_date.clone(),
                dataset_sha256,
                parent_version: None,
                nan_policy: match args.nan_policy {
                    NanPolicyArg::Reject => NanPolicy::Reject,
                    NanPolicyArg::Allow => NanPolicy::Allow,
                },
            };
            let key = args.key.as_deref().map(packaging::read_key).transpose().map_err(invalid)?;
            let (mut bundle, evidence) = packaging::build(&spec, now_secs()).map_err(invalid)?;
            if let Some(key) = &key {
                bundle.sign(key).map_err(|e| Failure::Refused(e.to_string()))?;
            }
            let bytes = bundle.to_bytes();
            write(&args.out, &bytes)?;
            println!(
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
            println!(
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
                println!("{}", serde_json::to_string_pretty(&response).unwrap_or_default());
            } else {
                println!("{}", response.token);
                eprintln!("one-time token, labels {:?}, expires {}", response.labels, response.expires_at_ms);
            }
        }
        Command::Devices => {
            let devices: Vec<DeviceView> = api.get("/api/v1/devices")?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&devices).unwrap_or_default());
                return Ok(());
            }
            println!(
                "{:<24} {:<10} {:<12} {:>8} {:>10} {:>9}  {:<24} LABELS",
                "DEVICE", "STATUS", "LAST SEEN", "BACKLOG", "ENVELOPES", "PREDICTS", "MODELS"
            );
            for d in devices {
                let labels: Vec<String> = d.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                let models: Vec<String> =
                    d.models.iter().map(|m| format!("{}@{}({})", m.name, m.version, m.state)).collect();
                println!(
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
        Command::Bundle(_) | Command::Key(_) => {}
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
                println!("{summary}");
            } else {
                println!(
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
