//! The retraining loop: export what the fleet saw, run the operator's training command, and
//! bring its model back in as the next patch version — with lineage, through the validation
//! gate, and onto a canary selector only when the model's policy says so.
//!
//! `[retraining.models.<name>]` configures one model: `command` (argv; it gets `OUTPOST_DATA`
//! = the exported CSV, `OUTPOST_OUTPUT` = where to write the ONNX file, and may write a
//! `<output>.reference.json` beside it, plus `OUTPOST_MODEL`, `OUTPOST_PARENT_VERSION`,
//! `OUTPOST_VERSION`), `timeout_secs`, the triggers (`schedule_secs`, `on_drift`: a firing
//! sustained-drift alert for the model), the data window, the validation dataset, and
//! `canary_selector`. A run:
//! 1. exports the labelled predictions of the window ([`crate::monitoring::dataset`]) to
//!    `<data_dir>/retraining/<model>/<run>/data.csv` and hashes it;
//! 2. runs the command with a timeout, output captured to `log.txt` (its tail kept in the run);
//! 3. builds a bundle from the output (baseline = the exported data; lineage: parent =
//!    production version, dataset sha256, data window, run id), registers it signed;
//! 4. validates it (the configured dataset, else the exported data);
//! 5. deploys it to `canary_selector` when it passed and one is set.
//!
//! Runs are kept in sled `retraining_runs`. A run whose command took 10× longer than the
//! previous successful one is marked `slow`, which the alert engine reports
//! (`OutpostRetrainingSlow`).

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::base::audit::AuditLog;
use crate::base::backing::Backing;
use crate::base::clock::Clock;
use crate::base::metrics::Metrics;
use crate::base::store::StoreError;
use crate::fleet::ca::Authority;
use crate::models::validation::ValidateOptions;
use crate::monitoring::dataset::Predictions;
use crate::monitoring::quality::Labels;
use crate::ops::alerts::AlertEngine;
use crate::ops::deploy::{DeployRequest, Deployer};

mod store;
pub use store::RunStore;

/// Why a run's model could not be registered.
#[derive(Debug, thiserror::Error)]
enum RegisterError {
    #[error(transparent)]
    Build(#[from] crate::models::packaging::PackagingError),
    #[error(transparent)]
    Push(#[from] crate::models::registry::RegistryError),
}

/// Why a run did not start.
#[derive(Debug, thiserror::Error)]
pub enum RetrainError {
    #[error("model `{0}` has no retraining configured ([retraining.models.{0}])")]
    NotConfigured(String),
    #[error("a retraining run of `{0}` is already going")]
    AlreadyRunning(String),
}

/// `[retraining]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetrainingConfig {
    /// How often triggers are checked.
    pub check_secs: u64,
    /// Per model name (`[retraining.models.bc]`): the command that retrains it and when it
    /// runs (see the operator guide).
    pub models: BTreeMap<String, ModelRetraining>,
}

impl Default for RetrainingConfig {
    fn default() -> Self {
        RetrainingConfig { check_secs: 30, models: BTreeMap::new() }
    }
}

/// `[retraining.models.<name>]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelRetraining {
    pub command: Vec<String>,
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// Run every this many seconds (unset: no schedule).
    #[serde(default)]
    pub schedule_secs: Option<u64>,
    /// Run when sustained drift of the model fires an alert.
    #[serde(default)]
    pub on_drift: bool,
    /// Predictions made this far back are exported.
    #[serde(default = "default_window")]
    pub data_window_secs: u64,
    /// Fewer labelled rows: the run is refused.
    #[serde(default = "default_min_rows")]
    pub min_rows: u64,
    /// Validation dataset (CSV) and its label column (default: the exported data, `label`).
    #[serde(default)]
    pub validation_dataset: Option<PathBuf>,
    #[serde(default = "default_label")]
    pub label: String,
    #[serde(default)]
    pub segment: Option<String>,
    /// Devices (labels, e.g. `{site = "a"}`) that get a validated new version as a canary;
    /// unset: the version is registered and validated, nothing is deployed.
    #[serde(default)]
    pub canary_selector: Option<BTreeMap<String, String>>,
}

fn default_timeout() -> u64 {
    3600
}
fn default_window() -> u64 {
    7 * 86_400
}
fn default_min_rows() -> u64 {
    50
}
fn default_label() -> String {
    "label".into()
}

impl RetrainingConfig {
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.check_secs == 0 {
            return Err(("retraining.check_secs".into(), "must be at least 1".into()));
        }
        for (model, m) in &self.models {
            let key = |k: &str| format!("retraining.models.{model}.{k}");
            if m.command.first().is_none_or(|c| c.trim().is_empty()) {
                return Err((key("command"), "must name a program, e.g. [\"python3\", \"train.py\"]".into()));
            }
            if m.timeout_secs == 0 || m.data_window_secs == 0 || m.schedule_secs == Some(0) {
                return Err((
                    key("timeout_secs"),
                    "timeout_secs, data_window_secs and schedule_secs must be at least 1".into(),
                ));
            }
        }
        Ok(())
    }
}

/// One run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub id: String,
    pub model: String,
    /// `manual`, `schedule` or `drift`.
    pub trigger: String,
    pub started_ms: u64,
    pub finished_ms: Option<u64>,
    /// `running`, `succeeded` (registered; see validation), `failed`, `refused`.
    pub status: String,
    pub error: Option<String>,
    pub parent_version: Option<String>,
    pub version: Option<String>,
    pub data_rows: u64,
    pub dataset_sha256: Option<String>,
    pub data_from_ms: Option<u64>,
    pub data_to_ms: Option<u64>,
    /// Time the command ran.
    pub command_ms: Option<u64>,
    /// The command took 10× longer than the previous successful run's.
    pub slow: bool,
    pub validation_passed: Option<bool>,
    pub validation_failures: Vec<String>,
    pub canary_devices: Vec<String>,
    /// The last lines the command wrote.
    pub log_tail: String,
}

impl RunRecord {
    /// A run of `model` just started at `started_ms` by `trigger`: nothing done yet.
    pub fn started(model: &str, trigger: &str, started_ms: u64) -> RunRecord {
        RunRecord {
            id: format!("{model}-{started_ms}"),
            model: model.to_owned(),
            trigger: trigger.to_owned(),
            started_ms,
            finished_ms: None,
            status: "running".into(),
            error: None,
            parent_version: None,
            version: None,
            data_rows: 0,
            dataset_sha256: None,
            data_from_ms: None,
            data_to_ms: None,
            command_ms: None,
            slow: false,
            validation_passed: None,
            validation_failures: Vec::new(),
            canary_devices: Vec::new(),
            log_tail: String::new(),
        }
    }
}

/// The lease on checking the retraining triggers (PostgreSQL).
pub const TRIGGERS: &str = "retraining";

/// Runs, their store, which models are running now, and the handles a run acts through.
pub struct Retraining {
    runs: RunStore,
    running: Mutex<HashSet<String>>,
    pub config: RetrainingConfig,
    /// Where runs keep their data, output and log (`<data_dir>/retraining/<model>/<run>/`).
    data_dir: PathBuf,
    predictions: Predictions,
    labels: Labels,
    /// On PostgreSQL: the lease on the triggers (schedules, sustained drift), which one
    /// replica at a time checks. A run asked for through the API starts on the replica asked.
    triggers: Option<crate::base::pg::store::Fence>,
    deployer: Deployer,
    /// Signs the bundles a run registers.
    authority: Arc<Authority>,
    audit: Arc<AuditLog>,
    metrics: Metrics,
    clock: Clock,
}

impl std::fmt::Debug for Retraining {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retraining").finish_non_exhaustive()
    }
}

impl Retraining {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        backing: &Backing,
        config: RetrainingConfig,
        data_dir: PathBuf,
        deployer: Deployer,
        authority: Arc<Authority>,
        audit: Arc<AuditLog>,
        metrics: Metrics,
        clock: Clock,
    ) -> Result<Retraining, StoreError> {
        let (runs, predictions, labels, triggers) = match backing {
            Backing::Sled(store) => {
                (RunStore::open(store)?, Predictions::open(store)?, Labels::open(store)?, None)
            }
            Backing::Postgres(shared) => (
                RunStore::open_postgres(&shared.store),
                Predictions::open_postgres(&shared.store),
                Labels::open_postgres(&shared.store),
                Some(shared.fence(TRIGGERS)),
            ),
        };
        Ok(Retraining {
            runs,
            running: Mutex::new(HashSet::new()),
            config,
            data_dir,
            predictions,
            labels,
            triggers,
            deployer,
            authority,
            audit,
            metrics,
            clock,
        })
    }

    /// Writes one audit entry for what a run did (as the `retraining` operator).
    async fn audit(&self, action: &str, target: &str, detail: &str) {
        self.audit
            .append_or_count(&self.metrics, "retraining", "operator", action, target, "ok", detail)
            .await;
    }

    fn put(&self, run: &RunRecord) {
        if let Err(e) = self.runs.put(run) {
            tracing::error!(error = %e, run = run.id, "cannot store a retraining run");
        }
    }

    /// The runs of `model`, oldest first.
    pub fn runs(&self, model: &str) -> Result<Vec<RunRecord>, StoreError> {
        self.runs.runs(model)
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The next free patch version after `parent` (`1.2.3` → `1.2.4`, or later if taken).
fn next_version(retraining: &Retraining, model: &str, parent: &str) -> Result<String, Failed> {
    let parsed = semver::Version::parse(parent)
        .map_err(|e| ("refused", format!("production version `{parent}` is not semver: {e}")))?;
    let mut v = semver::Version::new(parsed.major, parsed.minor, parsed.patch + 1);
    while retraining.deployer.registry().get(model, &v.to_string()).is_ok() {
        v.patch += 1;
    }
    Ok(v.to_string())
}

/// Starts a run of `model` in the background; `Err` when it cannot start (not configured,
/// already running).
pub fn start(retraining: &Arc<Retraining>, model: &str, trigger: &str) -> Result<RunRecord, RetrainError> {
    let config = retraining
        .config
        .models
        .get(model)
        .cloned()
        .ok_or_else(|| RetrainError::NotConfigured(model.to_owned()))?;
    if !retraining.running.lock().unwrap_or_else(|p| p.into_inner()).insert(model.to_owned()) {
        return Err(RetrainError::AlreadyRunning(model.to_owned()));
    }
    let started_ms = retraining.clock.now_ms();
    let run = RunRecord::started(model, trigger, started_ms);
    retraining.put(&run);
    let (state, first) = (Arc::clone(retraining), run.clone());
    tokio::spawn(async move {
        let mut run = first;
        match execute(&state, &config, &mut run).await {
            Ok(()) => run.status = "succeeded".into(),
            Err((status, error)) => {
                run.status = status.into();
                run.error = Some(error);
            }
        }
        run.finished_ms = Some(state.clock.now_ms());
        tracing::info!(run = run.id, status = run.status, version = ?run.version, error = ?run.error, "retraining run finished");
        state.put(&run);
        state.running.lock().unwrap_or_else(|p| p.into_inner()).remove(&run.model);
    });
    Ok(run)
}

type Failed = (&'static str, String);

async fn execute(
    state: &Arc<Retraining>,
    config: &ModelRetraining,
    run: &mut RunRecord,
) -> Result<(), Failed> {
    let refused = |e: String| ("refused", e);
    let failed = |e: String| ("failed", e);
    let model = run.model.clone();
    let parent = state
        .deployer
        .registry()
        .production(&model)
        .map_err(|e| failed(e.to_string()))?
        .ok_or_else(|| refused(format!("`{model}` has no production version to retrain from")))?;
    run.parent_version = Some(parent.version.clone());
    let version = next_version(state, &model, &parent.version)?;
    let dir = state.data_dir.join("retraining").join(&model).join(&run.id);
    std::fs::create_dir_all(&dir).map_err(|e| failed(format!("{}: {e}", dir.display())))?;

    // 1. The data.
    let since = run.started_ms.saturating_sub(config.data_window_secs.saturating_mul(1000));
    let st = Arc::clone(state);
    let m = model.clone();
    let (csv, summary) = tokio::task::spawn_blocking(move || {
        let names = |v: &str| {
            st.deployer.registry().get(&m, v).map(|r| r.manifest.baseline_features).unwrap_or_default()
        };
        st.predictions.export_csv(&st.labels, &m, since, true, &names)
    })
    .await
    .map_err(|e| failed(e.to_string()))?
    .map_err(|e| failed(e.to_string()))?;
    run.data_rows = summary.rows;
    run.data_from_ms = summary.from_ms;
    run.data_to_ms = summary.to_ms;
    if summary.rows < config.min_rows {
        return Err(refused(format!(
            "{} labelled rows in the window, fewer than min_rows = {}",
            summary.rows, config.min_rows
        )));
    }
    let data = dir.join("data.csv");
    outpost_shared::files::write_atomic(&data, csv.as_bytes()).map_err(|e| failed(e.to_string()))?;
    run.dataset_sha256 = Some(outpost_shared::bundle::sha256_hex(csv.as_bytes()));
    state.put(run);

    // 2. The command.
    let output = dir.join("model.onnx");
    let log_path = dir.join("log.txt");
    let log = std::fs::File::create(&log_path).map_err(|e| failed(format!("{}: {e}", log_path.display())))?;
    let log_err = log.try_clone().map_err(|e| failed(e.to_string()))?;
    let mut child = Command::new(&config.command[0])
        .args(&config.command[1..])
        .current_dir(&dir)
        .env("OUTPOST_DATA", &data)
        .env("OUTPOST_OUTPUT", &output)
        .env("OUTPOST_MODEL", &model)
        .env("OUTPOST_PARENT_VERSION", &parent.version)
        .env("OUTPOST_VERSION", &version)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .spawn()
        .map_err(|e| failed(format!("cannot start `{}`: {e}", config.command[0])))?;
    let started = Instant::now();
    let timeout = Duration::from_secs(config.timeout_secs);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if started.elapsed() >= timeout => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => return Err(failed(format!("waiting for the command: {e}"))),
        }
    };
    let command_ms = started.elapsed().as_millis() as u64;
    run.command_ms = Some(command_ms);
    run.log_tail = tail(&std::fs::read_to_string(&log_path).unwrap_or_default(), 20);
    // The slow-run hint only: without the history (a storage error) nothing is slow.
    let previous = state
        .runs(&model)
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.status == "succeeded" && r.id != run.id)
        .filter_map(|r| r.command_ms)
        .next_back();
    run.slow = previous.is_some_and(|p| command_ms > 10 * p.max(1));
    match status {
        None => {
            return Err(failed(format!(
                "the command ran past timeout_secs = {} and was killed",
                config.timeout_secs
            )));
        }
        Some(s) if !s.success() => {
            return Err(failed(format!("the command failed ({s}); see {}", log_path.display())));
        }
        Some(_) => {}
    }

    // 3. Bundle with lineage, registered.
    let mut metadata = BTreeMap::new();
    metadata.insert("retraining.run".to_owned(), run.id.clone());
    metadata.insert("retraining.trigger".to_owned(), run.trigger.clone());
    metadata.insert("data.rows".to_owned(), summary.rows.to_string());
    metadata.insert("data.from_ms".to_owned(), summary.from_ms.unwrap_or_default().to_string());
    metadata.insert("data.to_ms".to_owned(), summary.to_ms.unwrap_or_default().to_string());
    let spec = crate::models::packaging::BuildSpec {
        model: output.clone(),
        name: model.clone(),
        version: version.clone(),
        baseline: Some(data.clone()),
        exclude: ["device", "prediction_id", "version", "predicted_at_ms", "predicted", "label"]
            .map(String::from)
            .to_vec(),
        reference: None,
        card: None,
        metadata,
        hyperparameters: BTreeMap::new(),
        training_date: Some(crate::models::packaging::utc(run.started_ms / 1000)),
        dataset_sha256: run.dataset_sha256.clone(),
        parent_version: Some(parent.version.clone()),
        nan_policy: parent.manifest.nan_policy,
    };
    let st = Arc::clone(state);
    let pushed = tokio::task::spawn_blocking(move || -> Result<(), RegisterError> {
        let (bundle, _) = crate::models::packaging::build(&spec, st.clock.now_ms() / 1000)?;
        st.deployer.registry().push(&bundle.to_bytes(), "retraining", st.authority.release_key())?;
        Ok(())
    })
    .await
    .map_err(|e| failed(e.to_string()))?;
    pushed.map_err(|e| failed(format!("the new model could not be registered: {e}")))?;
    // Still `running` for readers until the gate and the canary are done too.
    run.version = Some(version.clone());
    state.audit("model.push", &format!("{model}@{version}"), &run.id).await;
    state.put(run);

    // 4. The gate.
    let dataset = match &config.validation_dataset {
        Some(path) => {
            std::fs::read(path).map_err(|e| failed(format!("validation dataset {}: {e}", path.display())))?
        }
        None => csv.into_bytes(),
    };
    let query = ValidateOptions {
        label: config.label.clone(),
        segment: config.segment.clone(),
        ..Default::default()
    };
    let (st, m, v) = (Arc::clone(state), model.clone(), version.clone());
    let validated = tokio::task::spawn_blocking(move || {
        st.deployer.registry().validate(&m, &v, &dataset, &query, "retraining")
    })
    .await
    .map_err(|e| failed(e.to_string()))?;
    let target = format!("{model}@{version}");
    let (report, detail) = validated.map_err(|e| failed(format!("validation could not run: {e}")))?;
    state.audit("model.validate", &target, &detail).await;
    run.validation_passed = Some(report.passed);
    run.validation_failures = report.failures.clone();
    if !report.passed {
        return Ok(());
    }

    // 5. Canary, when the policy allows it.
    if let Some(selector) = &config.canary_selector {
        let request = DeployRequest {
            model: model.clone(),
            version: version.clone(),
            selector: selector.clone(),
            devices: Vec::new(),
            slot: None,
        };
        match state.deployer.deploy(&request, "retraining").await {
            Ok((response, detail)) => {
                state.audit("deploy", &target, &detail).await;
                run.canary_devices = response.devices;
            }
            Err(e) => return Err(failed(format!("the canary deployment was refused: {e}"))),
        }
    }
    Ok(())
}

/// Which trigger, if any, calls for a run now: sustained drift that began after the last run
/// started (with `on_drift`), else a schedule that has come round.
pub fn due(
    config: &ModelRetraining,
    last_start_ms: Option<u64>,
    drift_since_ms: Option<u64>,
    now_ms: u64,
) -> Option<&'static str> {
    let drift =
        config.on_drift && drift_since_ms.is_some_and(|since| last_start_ms.is_none_or(|l| l < since));
    let schedule = config
        .schedule_secs
        .is_some_and(|s| last_start_ms.is_none_or(|l| now_ms.saturating_sub(l) >= s.saturating_mul(1000)));
    if drift {
        Some("drift")
    } else if schedule {
        Some("schedule")
    } else {
        None
    }
}

/// Checks the triggers every `check_secs`: schedules, and sustained drift alerts.
pub async fn run_triggers(
    retraining: Arc<Retraining>,
    alerts: Arc<AlertEngine>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let every = Duration::from_secs(retraining.config.check_secs);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if !crate::base::backing::leads(retraining.triggers.as_ref()) {
            continue;
        }
        let now = retraining.clock.now_ms();
        let alerts = alerts.list().unwrap_or_default();
        for (model, config) in &retraining.config.models {
            let last = match retraining.runs(model) {
                Ok(runs) => runs.into_iter().map(|r| r.started_ms).max(),
                Err(e) => {
                    // Not knowing the last run, a trigger could start runs back to back.
                    tracing::warn!(model, error = %e, "cannot read retraining runs; no trigger this round");
                    continue;
                }
            };
            let drift_since = alerts
                .iter()
                .filter(|a| {
                    a.firing()
                        && a.labels.get("alertname").map(String::as_str) == Some("OutpostDriftSustained")
                })
                .filter(|a| a.labels.get("model") == Some(model))
                .map(|a| a.starts_at_ms)
                .min();
            let Some(trigger) = due(config, last, drift_since, now) else { continue };
            if let Err(e) = start(&retraining, model, trigger) {
                tracing::debug!(model, error = %e, "retraining not started");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toml_config(text: &str) -> ModelRetraining {
        figment::Figment::from(<figment::providers::Toml as figment::providers::Format>::string(text))
            .extract()
            .unwrap()
    }

    fn hook(schedule_secs: Option<u64>, on_drift: bool) -> ModelRetraining {
        let schedule = schedule_secs.map(|s| format!("schedule_secs = {s}")).unwrap_or_default();
        toml_config(&format!("command = [\"train\"]\non_drift = {on_drift}\n{schedule}"))
    }

    #[test]
    fn drift_triggers_once_per_episode_and_schedules_come_round() {
        let drift = hook(None, true);
        assert_eq!(due(&drift, None, Some(5_000), 10_000), Some("drift"), "first episode");
        assert_eq!(due(&drift, Some(6_000), Some(5_000), 10_000), None, "already retrained for it");
        assert_eq!(due(&drift, Some(6_000), Some(7_000), 10_000), Some("drift"), "a new episode");
        assert_eq!(due(&hook(None, false), None, Some(5_000), 10_000), None, "on_drift off");
        let weekly = hook(Some(60), false);
        assert_eq!(due(&weekly, None, None, 10_000), Some("schedule"), "never ran");
        assert_eq!(due(&weekly, Some(0), None, 59_999), None);
        assert_eq!(due(&weekly, Some(0), None, 60_000), Some("schedule"));
    }

    #[test]
    fn hooks_without_a_program_are_refused() {
        let mut config = RetrainingConfig::default();
        config.models.insert("bc".into(), toml_config("command = []"));
        assert_eq!(config.validate().unwrap_err().0, "retraining.models.bc.command");
    }
}
