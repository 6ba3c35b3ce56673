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

fn run(cli: &Cli) -> Result<(), Failure> {
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
