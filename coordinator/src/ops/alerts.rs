//! Alerts: fleet-level rules over what devices report, sent to Prometheus Alertmanager (API v2)
//! and to a generic JSON webhook.
//!
//! Rules, evaluated every `alerts.evaluate_secs` over every device record:
//! - `OutpostDriftSustained` {model, feature}: drift on a feature for `drift_windows` windows in
//!   a row; it ends after `drift_clear_windows` clean ones (hysteresis, kept per device by
//!   ingest, so one noisy window neither pages nor clears);
//! - `OutpostErrorSurge` {model, version}: a report window with at least `error_min_requests`
//!   requests of which at least `error_rate` failed;
//! - `OutpostDevicesSilent`: devices offline (no envelope for `fleet.offline_after_secs`, or
//!   their last will fired);
//! - `OutpostBacklog`: devices whose outbox holds at least `backlog_messages` messages;
//! - `OutpostRetrainingSlow` {model}: the newest retraining run's command took 10× longer than
//!   the previous successful one's;
//! - `OutpostSloBurn` {model, objective}: an objective ([`crate::monitoring::slo`]) spends its error
//!   budget at least `slo_burn_rate` times as fast as the window allows (fleet-wide).
//!
//! Grouping: an alert's identity is its labels, which never name a device — a bad rollout on
//! 1,000 devices is one alert whose annotations count and list the devices. Alertmanager gets
//! every firing alert on every evaluation (that is how it keeps them alive and de-duplicates)
//! and a resolved one once with `endsAt`; the webhook gets each transition once (retried until
//! it answers 2xx). Alert state lives in sled (`alerts`), so a restart neither re-fires nor
//! forgets an alert; resolved alerts stay listed (`GET /api/v1/alerts`) as the recent history.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::base::backing::Backing;
use crate::base::store::StoreError;
use crate::fleet::devices::DeviceRecord;
use crate::fleet::liveness::{FleetConfig, Liveness};
use crate::ops::retraining::RunStore;

mod store;
pub use store::{AlertStore, ENGINE};

/// `[alerts]` in the coordinator's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// How often the alert rules are evaluated over the fleet.
    pub evaluate_secs: u64,
    /// Alertmanager's base URL, e.g. `https://alertmanager:9093` (alerts go to `/api/v2/alerts`).
    pub alertmanager_url: Option<String>,
    /// A URL that receives a JSON document per transition (firing / resolved).
    pub webhook_url: Option<String>,
    /// CA certificate (PEM) for HTTPS sinks.
    pub ca_file: Option<PathBuf>,
    /// Consecutive drifted windows of one feature on a device before `OutpostDriftSustained`
    /// fires for it.
    pub drift_windows: u32,
    /// Consecutive clean windows before that device's drift alert resolves.
    pub drift_clear_windows: u32,
    /// Share of failed requests in a device's window (0.05 = 5 %) that raises
    /// `OutpostErrorSurge` for the version …
    pub error_rate: f64,
    /// … once the window holds at least this many requests.
    pub error_min_requests: u64,
    /// Unacknowledged telemetry messages queued on a device that raise `OutpostBacklog`.
    pub backlog_messages: u64,
    /// Burn rate at which an SLO objective alerts.
    pub slo_burn_rate: f64,
    /// Resolved alerts kept for the history view.
    pub keep_resolved: usize,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            evaluate_secs: 10,
            alertmanager_url: None,
            webhook_url: None,
            ca_file: None,
            drift_windows: 3,
            drift_clear_windows: 3,
            error_rate: 0.05,
            error_min_requests: 20,
            backlog_messages: 10_000,
            slo_burn_rate: 10.0,
            keep_resolved: 200,
        }
    }
}

impl AlertsConfig {
    /// Checks what the types cannot: `Err((key, problem))`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |k: &str, p: &str| Err((format!("alerts.{k}"), p.to_owned()));
        if self.evaluate_secs == 0 {
            return err("evaluate_secs", "must be at least 1");
        }
        if self.drift_windows == 0 || self.drift_clear_windows == 0 {
            return err("drift_windows", "and drift_clear_windows must be at least 1");
        }
        if !(self.slo_burn_rate.is_finite() && self.slo_burn_rate > 0.0) {
            return err("slo_burn_rate", "must be above 0");
        }
        if !(self.error_rate > 0.0 && self.error_rate <= 1.0) {
            return err("error_rate", "must be in (0, 1]");
        }
        for (key, url) in [("alertmanager_url", &self.alertmanager_url), ("webhook_url", &self.webhook_url)] {
            if let Some(url) = url {
                outpost_shared::endpoints::check_api_url(url)
                    .map_err(|p| (format!("alerts.{key}"), p.to_string()))?;
            }
        }
        Ok(())
    }
}

/// One alert as the rules see it now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub labels: BTreeMap<String, String>,
    pub devices: Vec<String>,
    pub summary: String,
    /// Earliest time the condition is known to hold (unix ms), when a rule knows it.
    pub since_ms: Option<u64>,
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// The identity of an alert: its labels.
pub fn fingerprint(labels: &BTreeMap<String, String>) -> String {
    labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

/// Evaluates every rule over the fleet (pure: the engine adds state and sinks).
pub fn evaluate(
    devices: &[DeviceRecord],
    config: &AlertsConfig,
    fleet: &FleetConfig,
    now_ms: u64,
) -> Vec<Candidate> {
    let mut groups: BTreeMap<String, Candidate> = BTreeMap::new();
    let mut add = |labels: BTreeMap<String, String>, device: &str, summary: String, since_ms: Option<u64>| {
        let c = groups.entry(fingerprint(&labels)).or_insert_with(|| Candidate {
            labels,
            devices: Vec::new(),
            summary,
            since_ms,
        });
        c.devices.push(device.to_owned());
        c.since_ms = match (c.since_ms, since_ms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    };
    for d in devices {
        for s in d.drift_streaks.iter().filter(|s| s.sustained) {
            let l = labels(&[
                ("alertname", "OutpostDriftSustained"),
                ("model", &s.model),
                ("feature", &s.feature),
                ("severity", "warning"),
            ]);
            add(l, &d.id, format!("Sustained drift on `{}` of model {}", s.feature, s.model), s.since_ms);
        }
        let fresh = |at_ms: u64| now_ms.saturating_sub(at_ms) <= fleet.stale_after_secs.saturating_mul(1000);
        for w in d.last_windows.iter().filter(|w| fresh(w.at_ms)) {
            if w.requests >= config.error_min_requests
                && w.errors as f64 >= config.error_rate * w.requests as f64
            {
                let l = labels(&[
                    ("alertname", "OutpostErrorSurge"),
                    ("model", &w.model),
                    ("version", &w.version),
                    ("severity", "critical"),
                ]);
                add(l, &d.id, format!("Errors surge on {}@{}", w.model, w.version), Some(w.at_ms));
            }
        }
        if Liveness::of(d, fleet, now_ms) == Liveness::Offline {
            let l = labels(&[("alertname", "OutpostDevicesSilent"), ("severity", "warning")]);
            add(l, &d.id, "Devices silent (offline)".into(), d.last_seen_ms);
        }
        if d.backlog.messages >= config.backlog_messages {
            let l = labels(&[("alertname", "OutpostBacklog"), ("severity", "warning")]);
            add(l, &d.id, "Telemetry backlog growing on devices".into(), None);
        }
    }
    let by_id: BTreeMap<&str, &DeviceRecord> = devices.iter().map(|d| (d.id.as_str(), d)).collect();
    groups
        .into_values()
        .map(|mut c| {
            let shared = shared_labels(c.devices.iter().filter_map(|id| by_id.get(id.as_str()).copied()));
            if !shared.is_empty() {
                let shared: Vec<String> = shared.iter().map(|(k, v)| format!("{k}={v}")).collect();
                c.summary = format!("{} (all on {})", c.summary, shared.join(", "));
            }
            c
        })
        .collect()
}

/// The device labels every one of `devices` has with the same value (`site=site-c` when the
/// alert's devices all sit at one site) — what an operator reads first. Nothing for a single
/// label-less device, and nothing when the devices differ in every label.
fn shared_labels<'a>(devices: impl Iterator<Item = &'a DeviceRecord>) -> BTreeMap<String, String> {
    let mut shared: Option<BTreeMap<String, String>> = None;
    for d in devices {
        shared = Some(match shared {
            None => d.labels.clone(),
            Some(mut s) => {
                s.retain(|k, v| d.labels.get(k) == Some(v));
                s
            }
        });
    }
    shared.unwrap_or_default()
}

/// An alert's stored state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertRecord {
    pub labels: BTreeMap<String, String>,
    pub summary: String,
    pub devices: Vec<String>,
    pub starts_at_ms: u64,
    /// Set once resolved.
    pub ends_at_ms: Option<u64>,
    /// Whether the webhook has been told about the current state.
    pub webhook_notified: bool,
    /// Whether Alertmanager has been told about the resolution.
    pub alertmanager_resolved: bool,
}

impl AlertRecord {
    pub fn firing(&self) -> bool {
        self.ends_at_ms.is_none()
    }

    fn description(&self) -> String {
        const LISTED: usize = 20;
        if self.devices.is_empty() {
            return "fleet-wide".into();
        }
        let mut listed = self.devices.iter().take(LISTED).cloned().collect::<Vec<_>>().join(", ");
        if self.devices.len() > LISTED {
            listed.push_str(&format!(" and {} more", self.devices.len() - LISTED));
        }
        format!("{}: {listed}", crate::base::numbers::count(self.devices.len(), "device"))
    }

    /// Alertmanager API v2 `postableAlert`.
    fn to_alertmanager(&self, generator_url: &str) -> serde_json::Value {
        let mut alert = serde_json::json!({
            "labels": self.labels,
            "annotations": {
                "summary": self.summary,
                "description": self.description(),
                "devices": self.devices.len().to_string(),
            },
            "startsAt": rfc3339(self.starts_at_ms),
            "generatorURL": generator_url,
        });
        if let Some(end) = self.ends_at_ms {
            alert["endsAt"] = serde_json::json!(rfc3339(end));
        }
        alert
    }
}

fn rfc3339(ms: u64) -> String {
    crate::models::packaging::utc(ms / 1000)
}

/// Evaluates, keeps state, notifies.
pub struct AlertEngine {
    alerts: AlertStore,
    /// Retraining runs (a failed run fires `OutpostRetrainingFailed`).
    runs: RunStore,
    /// Open incidents keep `OutpostRolloutRolledBack` firing.
    incidents: crate::ops::rollout::RolloutStore,
    slos: crate::monitoring::slo::Slos,
    labels: crate::monitoring::quality::Labels,
    devices: crate::fleet::devices::Devices,
    /// On PostgreSQL: the `alerts` lease; evaluations run only while it is held.
    fence: Option<crate::base::pg::store::Fence>,
    config: AlertsConfig,
    fleet: FleetConfig,
    ca_pem: Option<Vec<u8>>,
    generator_url: String,
    metrics: crate::base::metrics::Metrics,
}

impl std::fmt::Debug for AlertEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlertEngine").finish_non_exhaustive()
    }
}

/// What one evaluation changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Tick {
    pub fired: Vec<String>,
    pub resolved: Vec<String>,
    pub firing: usize,
}

/// Why a notification did not go out.
#[derive(Debug, thiserror::Error)]
enum NotifyError {
    #[error(transparent)]
    Client(#[from] outpost_shared::tls::ClientError),
    #[error(transparent)]
    Send(#[from] ureq::Error),
    #[error("answered {0}")]
    Status(u16),
}

/// Why the alert engine cannot start.
#[derive(Debug, thiserror::Error)]
pub enum AlertsError {
    #[error("alerts.ca_file {path}: {source}", path = path.display())]
    CaFile { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl AlertEngine {
    /// The engine on `backing`; on PostgreSQL it evaluates only while this replica holds the
    /// `alerts` lease, and every alert it stores checks that lease's term.
    pub fn new(
        backing: &Backing,
        config: AlertsConfig,
        fleet: FleetConfig,
        generator_url: String,
        metrics: crate::base::metrics::Metrics,
    ) -> Result<AlertEngine, AlertsError> {
        let ca_pem = match &config.ca_file {
            Some(path) => Some(
                std::fs::read(path).map_err(|source| AlertsError::CaFile { path: path.clone(), source })?,
            ),
            None => None,
        };
        use crate::monitoring::{quality::Labels, slo::Slos};
        let engine = |alerts, runs, incidents, slos, labels, devices, fence| AlertEngine {
            alerts,
            runs,
            incidents,
            slos,
            labels,
            devices,
            fence,
            config,
            fleet,
            ca_pem,
            generator_url,
            metrics,
        };
        Ok(match backing {
            Backing::Sled(store) => engine(
                AlertStore::open(store)?,
                RunStore::open(store)?,
                crate::ops::rollout::RolloutStore::open(store)?,
                Slos::open(store)?,
                Labels::open(store)?,
                crate::fleet::devices::Devices::open(store)?,
                None,
            ),
            Backing::Postgres(shared) => {
                let (pg, fence) = (&shared.store, shared.fence(ENGINE));
                engine(
                    AlertStore::open_postgres(pg, fence.clone()),
                    RunStore::open_postgres(pg),
                    crate::ops::rollout::RolloutStore::open_postgres(
                        pg,
                        shared.fence(crate::ops::rollout::ENGINE),
                    ),
                    Slos::open_postgres(pg),
                    Labels::open_postgres(pg),
                    crate::fleet::devices::Devices::open_postgres(pg),
                    Some(fence),
                )
            }
        })
    }

    /// Whether this replica evaluates alerts now (always on sled; on PostgreSQL while it holds
    /// the `alerts` lease).
    pub fn leads(&self) -> bool {
        crate::base::backing::leads(self.fence.as_ref())
    }

    /// Every stored alert, firing first, newest first.
    pub fn list(&self) -> Result<Vec<AlertRecord>, StoreError> {
        let mut all = self.alerts.all()?;
        all.sort_by(|a, b| b.firing().cmp(&a.firing()).then(b.starts_at_ms.cmp(&a.starts_at_ms)));
        Ok(all)
    }

    fn put(&self, record: &AlertRecord) -> Result<(), StoreError> {
        self.alerts.put(record)
    }

    /// One evaluation: compare the rules' view with the stored alerts, store, notify (blocking).
    pub fn tick(&self, now_ms: u64) -> Result<Tick, StoreError> {
        let devices = self.devices.all()?;
        let mut candidates: BTreeMap<String, Candidate> =
            evaluate(&devices, &self.config, &self.fleet, now_ms)
                .into_iter()
                .map(|c| (fingerprint(&c.labels), c))
                .collect();
        for c in slo_burns(&self.slos.statuses(&self.labels, now_ms)?, self.config.slo_burn_rate) {
            candidates.insert(fingerprint(&c.labels), c);
        }
        for c in self.slow_retraining()? {
            candidates.insert(fingerprint(&c.labels), c);
        }
        for c in rolled_back(&self.incidents.open_incidents()?) {
            candidates.insert(fingerprint(&c.labels), c);
        }
        let mut tick = Tick::default();
        let mut records = Vec::new();
        for mut record in self.list()? {
            let key = fingerprint(&record.labels);
            match (record.firing(), candidates.remove(&key)) {
                (true, Some(c)) => {
                    if record.devices != c.devices {
                        record.devices = c.devices;
                        record.summary = c.summary;
                    }
                }
                (true, None) => {
                    record.ends_at_ms = Some(now_ms);
                    record.webhook_notified = false;
                    record.alertmanager_resolved = false;
                    tick.resolved.push(key);
                }
                (false, Some(c)) => {
                    // Fires again: a new episode of the same alert.
                    record = new_record(c, now_ms);
                    tick.fired.push(key);
                }
                (false, None) => {}
            }
            records.push(record);
        }
        for (key, c) in candidates {
            records.push(new_record(c, now_ms));
            tick.fired.push(key);
        }
        self.notify(&mut records);
        // Keep every firing alert and the newest resolved ones.
        let mut resolved: Vec<&AlertRecord> = records.iter().filter(|r| !r.firing()).collect();
        resolved.sort_by_key(|r| std::cmp::Reverse(r.ends_at_ms));
        let dropped: Vec<String> =
            resolved.iter().skip(self.config.keep_resolved).map(|r| fingerprint(&r.labels)).collect();
        for record in &records {
            let key = fingerprint(&record.labels);
            if dropped.contains(&key) && record.webhook_notified && record.alertmanager_resolved {
                self.alerts.remove(&key)?;
            } else {
                self.put(record)?;
            }
        }
        tick.firing = records.iter().filter(|r| r.firing()).count();
        let mut by_name: BTreeMap<&str, i64> = BTreeMap::new();
        for name in [
            "OutpostDriftSustained",
            "OutpostErrorSurge",
            "OutpostDevicesSilent",
            "OutpostBacklog",
            "OutpostSloBurn",
            "OutpostRetrainingSlow",
            "OutpostRolloutRolledBack",
        ] {
            by_name.insert(name, 0);
        }
        for r in records.iter().filter(|r| r.firing()) {
            *by_name.entry(r.labels.get("alertname").map_or("", String::as_str)).or_default() += 1;
        }
        for (name, n) in by_name {
            self.metrics.alerts_firing.with_label_values(&[name]).set(n);
        }
        for key in &tick.fired {
            tracing::warn!(alert = %key, "alert firing");
        }
        for key in &tick.resolved {
            tracing::info!(alert = %key, "alert resolved");
        }
        Ok(tick)
    }

    /// Models whose newest retraining run was slow.
    fn slow_retraining(&self) -> Result<Vec<Candidate>, StoreError> {
        let newest = self.runs.latest()?;
        Ok(newest
            .into_iter()
            .filter(|r| r.slow)
            .map(|r| Candidate {
                labels: labels(&[
                    ("alertname", "OutpostRetrainingSlow"),
                    ("model", &r.model),
                    ("severity", "warning"),
                ]),
                devices: Vec::new(),
                summary: format!(
                    "Retraining of {} took {:.1} s, over 10x its previous run (run {})",
                    r.model,
                    r.command_ms.unwrap_or_default() as f64 / 1000.0,
                    r.id
                ),
                since_ms: r.finished_ms.or(Some(r.started_ms)),
            })
            .collect())
    }

    fn post(&self, sink: &str, url: &str, body: &serde_json::Value) -> bool {
        let send = || -> Result<(), NotifyError> {
            let agent =
                outpost_shared::tls::api_client(url, self.ca_pem.as_deref(), Duration::from_secs(10))?;
            let status = agent.post(url).send_json(body)?.status();
            if status.is_success() { Ok(()) } else { Err(NotifyError::Status(status.as_u16())) }
        };
        let result = send();
        let label = if result.is_ok() { "ok" } else { "failed" };
        self.metrics.alert_notifications.with_label_values(&[sink, label]).inc();
        if let Err(e) = &result {
            tracing::warn!(sink, url, error = %e, "alert notification failed; retrying at the next evaluation");
        }
        result.is_ok()
    }

    fn notify(&self, records: &mut [AlertRecord]) {
        if let Some(base) = &self.config.alertmanager_url {
            let url = format!("{}/api/v2/alerts", base.trim_end_matches('/'));
            let due: Vec<usize> = (0..records.len())
                .filter(|&i| records[i].firing() || !records[i].alertmanager_resolved)
                .collect();
            if !due.is_empty() {
                let body: Vec<serde_json::Value> =
                    due.iter().map(|&i| records[i].to_alertmanager(&self.generator_url)).collect();
                if self.post("alertmanager", &url, &serde_json::Value::Array(body)) {
                    for i in due {
                        if !records[i].firing() {
                            records[i].alertmanager_resolved = true;
                        }
                    }
                }
            }
        } else {
            records.iter_mut().for_each(|r| r.alertmanager_resolved = true);
        }
        if let Some(url) = &self.config.webhook_url {
            for status in ["firing", "resolved"] {
                let due: Vec<usize> = (0..records.len())
                    .filter(|&i| {
                        !records[i].webhook_notified && (records[i].firing() == (status == "firing"))
                    })
                    .collect();
                if due.is_empty() {
                    continue;
                }
                let alerts: Vec<serde_json::Value> =
                    due.iter().map(|&i| records[i].to_alertmanager(&self.generator_url)).collect();
                let body = serde_json::json!({"version": "outpost/1", "status": status, "alerts": alerts});
                if self.post("webhook", url, &body) {
                    due.into_iter().for_each(|i| records[i].webhook_notified = true);
                }
            }
        } else {
            records.iter_mut().for_each(|r| r.webhook_notified = true);
        }
    }
}

/// Objectives burning their budget at least `rate` times too fast (with some events to judge).
/// One alert per open incident (automatic rollback), until an operator closes it.
pub fn rolled_back(incidents: &[crate::ops::rollout::Incident]) -> Vec<Candidate> {
    incidents
        .iter()
        .map(|i| Candidate {
            labels: labels(&[
                ("alertname", "OutpostRolloutRolledBack"),
                ("model", &i.model),
                ("incident", &i.id),
                ("severity", "critical"),
            ]),
            devices: i.devices_rolled_back.clone(),
            summary: format!(
                "Rollout {} of {}@{} was rolled back to {}: {}",
                i.rollout, i.model, i.version, i.baseline, i.reason
            ),
            since_ms: Some(i.opened_ms),
        })
        .collect()
}

pub fn slo_burns(
    statuses: &BTreeMap<String, crate::monitoring::slo::SloStatus>,
    rate: f64,
) -> Vec<Candidate> {
    let mut out = Vec::new();
    for (model, status) in statuses {
        for o in status.objectives.iter().filter(|o| o.events > 0 && o.burn_rate >= rate) {
            let kind = o.objective.split(' ').next().unwrap_or_default();
            out.push(Candidate {
                labels: labels(&[
                    ("alertname", "OutpostSloBurn"),
                    ("model", model),
                    ("objective", kind),
                    ("severity", "critical"),
                ]),
                devices: Vec::new(),
                summary: format!(
                    "SLO `{}` of {model} burns its error budget {:.1}x too fast ({} of {} events bad)",
                    o.objective, o.burn_rate, o.bad_events, o.events
                ),
                since_ms: None,
            });
        }
    }
    out
}

fn new_record(c: Candidate, now_ms: u64) -> AlertRecord {
    AlertRecord {
        labels: c.labels,
        summary: c.summary,
        devices: c.devices,
        starts_at_ms: c.since_ms.unwrap_or(now_ms).min(now_ms),
        ends_at_ms: None,
        webhook_notified: false,
        alertmanager_resolved: false,
    }
}

/// Runs the engine every `evaluate_secs` until `stop`.
pub async fn run(
    engine: std::sync::Arc<AlertEngine>,
    clock: crate::base::clock::Clock,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let every = Duration::from_secs(engine.config.evaluate_secs);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if !engine.leads() {
            continue;
        }
        let (e, now) = (std::sync::Arc::clone(&engine), clock.now_ms());
        match tokio::task::spawn_blocking(move || e.tick(now)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "alert evaluation failed"),
            Err(e) => tracing::error!(error = %e, "alert evaluation task failed"),
        }
    }
}

#[cfg(test)]
mod tests;
