//! Prometheus metrics of the agent: names live here as constants, handlers record through
//! [`Metrics`], and `/metrics` renders the text format (0.0.4).
//!
//! Process and system figures (CPU, memory, disk) come from sysinfo and are refreshed when
//! scraped, at most once a second, so a busy scraper cannot turn them into load.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus::{
    Counter, Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use sysinfo::{Disks, Pid, ProcessRefreshKind, ProcessesToUpdate, System};

mod names;
pub use names::*;

/// Outcome label of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    BadRequest,
    NotFound,
    PayloadTooLarge,
    Overloaded,
    NotReady,
    Error,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::BadRequest => "bad_request",
            Outcome::NotFound => "not_found",
            Outcome::PayloadTooLarge => "payload_too_large",
            Outcome::Overloaded => "overloaded",
            Outcome::NotReady => "not_ready",
            Outcome::Error => "error",
        }
    }
}

/// Model lifecycle states as the `state` label writes them.
pub const MODEL_STATES: [&str; 3] = ["loading", "ready", "failed"];

/// Latency buckets from 25 µs to ~13 s, doubling: serving overhead is tens of µs, big batches
/// take seconds.
fn latency_buckets() -> Vec<f64> {
    prometheus::exponential_buckets(25e-6, 2.0, 20).unwrap_or_else(|_| prometheus::DEFAULT_BUCKETS.to_vec())
}

/// Every metric the agent exports.
pub struct Metrics {
    registry: Registry,
    /// The HTTP front door's figures (`outpost_agent_http_*`), rendered with the rest.
    pub front: std::sync::Arc<outpost_shared::front::Counters>,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub inference_duration: HistogramVec,
    /// Rows per model run of a dynamically batched model.
    pub batch_rows: HistogramVec,
    pub in_flight: IntGauge,
    pub queue_depth: IntGauge,
    pub queue_capacity: IntGauge,
    pub queue_rejections: IntCounter,
    pub workers: IntGauge,
    pub workers_busy: IntGauge,
    pub model_state: IntGaugeVec,
    pub model_load_duration: GaugeVec,
    /// Version switches of bundle-managed models, and versions refused (signature, hash,
    /// validation), by model.
    pub model_swaps: IntCounterVec,
    pub model_refusals: IntCounterVec,
    /// Damaged stores moved aside at start (the agent went on without them), by store.
    pub storage_quarantined: IntCounterVec,
    /// 1 when new records and bundles are encrypted at rest, 0 when encryption is off.
    pub encryption_at_rest: IntGauge,
    /// Stored records skipped because they did not read (failed authentication), by store.
    pub unreadable_records: IntCounterVec,
    /// Versions the watchdog switched back on its own, by model.
    pub watchdog_rollbacks: IntCounterVec,
    /// Shadow runs by model, version and outcome; their rows by agreement with the primary;
    /// copies not run because the inference queue was full.
    pub shadow_requests: IntCounterVec,
    pub shadow_rows: IntCounterVec,
    pub shadow_skipped: IntCounter,
    /// The last desired-state revision applied; desired states refused (signature, replay).
    pub desired_revision: IntGauge,
    pub desired_refusals: IntCounter,
    /// 1 while the desired state in force has expired by the trusted time (stale-control).
    pub control_stale: IntGauge,
    /// The trust root version held (0: none; the enrolment key signs control messages).
    pub trust_root_version: IntGauge,
    /// Bundle bytes downloaded from the coordinator.
    pub bundle_download_bytes: IntCounter,
    /// Feedback labels by result (joined, unknown, evicted); joined labels per model version,
    /// and those the model had predicted right.
    pub feedback: IntCounterVec,
    pub labelled: IntCounterVec,
    pub labelled_correct: IntCounterVec,
    drift: DriftMetrics,
    log: LogMetrics,
    telemetry: TelemetryMetrics,
    system: Mutex<SystemProbe>,
}

/// The last drift verdicts per model version, and which series exist (to remove them when the
/// version stops serving).
struct DriftMetrics {
    score: GaugeVec,
    detected: IntGaugeVec,
    window_rows: IntGaugeVec,
    series: Mutex<DriftSeries>,
}

/// Per (model, version): the (feature, test) pairs that have a score series.
type DriftSeries = std::collections::HashMap<(String, String), Vec<(String, String)>>;

/// Outbox and broker-link figures, set from their own counters at scrape time.
struct TelemetryMetrics {
    /// (dropped, sent, acked) as last copied into the counters.
    reported: Mutex<(u64, u64, u64, u64)>,
    outbox_messages: IntGauge,
    outbox_bytes: IntGauge,
    outbox_oldest_age: prometheus::Gauge,
    outbox_dropped: IntCounter,
    connected: IntGauge,
    sent: IntCounter,
    acked: IntCounter,
    clock_skew: prometheus::Gauge,
}

/// Telemetry figures to publish at scrape time.
#[derive(Debug, Clone, Default)]
pub struct TelemetrySnapshot {
    pub outbox: outpost_shared::protocol::messages::OutboxStats,
    pub dropped: u64,
    pub connected: bool,
    pub sent: u64,
    pub acked: u64,
    /// Outbox entries removed because they did not read.
    pub unreadable: u64,
    /// The coordinator's clock minus this device's (ms), once a signed ack showed it.
    pub clock_skew_ms: Option<i64>,
}

/// Prediction-log figures, copied from the log's own counters at scrape time.
struct LogMetrics {
    reported: Mutex<crate::prediction_log::LogStats>,
    records: IntCounter,
    evicted: IntCounter,
    evicted_segments: IntCounter,
    write_errors: IntCounter,
    dropped: IntCounter,
    disk_bytes: IntGauge,
    budget_bytes: IntGauge,
    segments: IntGauge,
    queued: IntGauge,
    ids_skipped: IntGauge,
    unlogged: IntCounter,
    quarantined: IntCounter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

struct SystemProbe {
    system: Option<System>,
    disks: Option<Disks>,
    pid: Option<Pid>,
    last_refresh: Option<Instant>,
    cpu_seconds_reported: f64,
    resident: IntGauge,
    virtual_memory: IntGauge,
    cpu_seconds: Counter,
    start_time: IntGauge,
    cpu_usage: prometheus::Gauge,
    memory_total: IntGauge,
    memory_available: IntGauge,
    disk_total: IntGaugeVec,
    disk_available: IntGaugeVec,
}

fn help(name: &str, text: &str) -> Opts {
    Opts::new(name, text)
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m;
                registry.register(Box::new(m.clone()))?;
                m
            }};
        }
        let labels = &["model", "version"];
        let requests = reg!(IntCounterVec::new(
            help(REQUESTS_TOTAL, "Inference requests by model, version and outcome."),
            &["model", "version", "outcome"]
        )?);
        let request_duration = reg!(HistogramVec::new(
            HistogramOpts::new(
                REQUEST_DURATION_SECONDS,
                "Inference request latency inside the agent, from routing to response, in seconds."
            )
            .buckets(latency_buckets()),
            labels
        )?);
        let inference_duration = reg!(HistogramVec::new(
            HistogramOpts::new(
                INFERENCE_DURATION_SECONDS,
                "Model compute time (tract run only), in seconds; for a dynamically batched request, its whole batch's run."
            )
            .buckets(latency_buckets()),
            labels
        )?);
        let batch_rows = reg!(HistogramVec::new(
            HistogramOpts::new(
                BATCH_ROWS,
                "Rows per model run of a dynamically batched model ([batching.<model>])."
            )
            .buckets(
                prometheus::exponential_buckets(1.0, 2.0, 13)
                    .unwrap_or_else(|_| prometheus::DEFAULT_BUCKETS.to_vec())
            ),
            labels
        )?);
        let build = reg!(IntGaugeVec::new(help(BUILD_INFO, "Agent build information."), &["version"])?);
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let system = SystemProbe {
            system: System::new().ok(),
            disks: Disks::new_with_refreshed_list().ok(),
            pid: sysinfo::get_current_pid().ok(),
            last_refresh: None,
            cpu_seconds_reported: 0.0,
            resident: reg!(IntGauge::new(PROCESS_RESIDENT_MEMORY_BYTES, "Resident memory size in bytes.")?),
            virtual_memory: reg!(IntGauge::new(
                PROCESS_VIRTUAL_MEMORY_BYTES,
                "Virtual memory size in bytes."
            )?),
            cpu_seconds: reg!(Counter::new(
                PROCESS_CPU_SECONDS_TOTAL,
                "Total user and system CPU time spent in seconds."
            )?),
            start_time: reg!(IntGauge::new(
                PROCESS_START_TIME_SECONDS,
                "Start time of the process since unix epoch in seconds."
            )?),
            cpu_usage: reg!(prometheus::Gauge::new(
                SYSTEM_CPU_USAGE_RATIO,
                "Whole-system CPU usage, 0 to 1."
            )?),
            memory_total: reg!(IntGauge::new(SYSTEM_MEMORY_TOTAL_BYTES, "System memory in bytes.")?),
            memory_available: reg!(IntGauge::new(
                SYSTEM_MEMORY_AVAILABLE_BYTES,
                "System memory available in bytes."
            )?),
            disk_total: reg!(IntGaugeVec::new(
                help(SYSTEM_DISK_TOTAL_BYTES, "Disk size in bytes by mount point."),
                &["mount"]
            )?),
            disk_available: reg!(IntGaugeVec::new(
                help(SYSTEM_DISK_AVAILABLE_BYTES, "Disk space available in bytes by mount point."),
                &["mount"]
            )?),
        };
        Ok(Metrics {
            front: std::sync::Arc::default(),
            requests,
            request_duration,
            inference_duration,
            batch_rows,
            in_flight: reg!(IntGauge::new(IN_FLIGHT_REQUESTS, "Inference requests being handled now.")?),
            queue_depth: reg!(IntGauge::new(QUEUE_DEPTH, "Inference jobs waiting for a worker.")?),
            queue_capacity: reg!(IntGauge::new(
                QUEUE_CAPACITY,
                "Inference jobs that may wait before requests are refused."
            )?),
            queue_rejections: reg!(IntCounter::new(
                QUEUE_REJECTIONS_TOTAL,
                "Requests refused with 503 because the inference queue was full."
            )?),
            workers: reg!(IntGauge::new(WORKERS, "Inference worker threads.")?),
            workers_busy: reg!(IntGauge::new(WORKERS_BUSY, "Inference workers running a job now.")?),
            model_state: reg!(IntGaugeVec::new(
                help(
                    MODEL_STATE,
                    "1 for the state each configured model is in (loading, ready, failed), 0 for the others."
                ),
                &["model", "version", "state"]
            )?),
            model_load_duration: reg!(GaugeVec::new(
                help(MODEL_LOAD_DURATION_SECONDS, "Time to load, optimize and validate a model, in seconds."),
                labels
            )?),
            model_swaps: reg!(IntCounterVec::new(
                help(
                    MODEL_SWAPS_TOTAL,
                    "Version switches of bundle-managed models (import, rollback, desired state)."
                ),
                &["model"]
            )?),
            storage_quarantined: reg!(IntCounterVec::new(
                help(
                    STORAGE_QUARANTINED_TOTAL,
                    "Damaged stores (outbox, model store files) moved to quarantine at start; the agent went on without them."
                ),
                &["store"]
            )?),
            encryption_at_rest: reg!(IntGauge::new(
                ENCRYPTION_AT_REST,
                "1 when the prediction log, outbox and installed bundles are encrypted at rest; 0 when encryption is off."
            )?),
            unreadable_records: reg!(IntCounterVec::new(
                help(
                    UNREADABLE_RECORDS_TOTAL,
                    "Stored records skipped because they did not read (failed authentication: damaged on disk), by store; never served or sent."
                ),
                &["store"]
            )?),
            shadow_requests: reg!(IntCounterVec::new(
                help(
                    SHADOW_REQUESTS_TOTAL,
                    "Shadow runs (copies of answered requests) by model, version and outcome."
                ),
                &["model", "version", "outcome"]
            )?),
            shadow_rows: reg!(IntCounterVec::new(
                help(
                    SHADOW_ROWS_TOTAL,
                    "Rows a shadow run predicted, by whether they agreed with the primary."
                ),
                &["model", "version", "result"]
            )?),
            shadow_skipped: reg!(IntCounter::new(
                SHADOW_SKIPPED_TOTAL,
                "Shadow runs skipped because the inference queue was full (the primary's answers come first)."
            )?),
            watchdog_rollbacks: reg!(IntCounterVec::new(
                help(
                    WATCHDOG_ROLLBACKS_TOTAL,
                    "Versions the watchdog switched back to the previous one on its own (crashes, error rate, latency), by model."
                ),
                &["model"]
            )?),
            model_refusals: reg!(IntCounterVec::new(
                help(
                    MODEL_REFUSALS_TOTAL,
                    "Model versions refused before serving (signature, hash, validation)."
                ),
                &["model"]
            )?),
            desired_revision: reg!(IntGauge::new(
                DESIRED_REVISION,
                "The last desired-state revision from the coordinator that was applied."
            )?),
            desired_refusals: reg!(IntCounter::new(
                DESIRED_REFUSALS_TOTAL,
                "Desired states refused (bad signature, replayed or old revision, expired, other device, refused bundle)."
            )?),
            control_stale: reg!(IntGauge::new(
                CONTROL_STALE,
                "1 while the desired state in force has expired by the agent's trusted time and nothing newer arrived (control channel cut or frozen); the agent serves on."
            )?),
            trust_root_version: reg!(IntGauge::new(
                TRUST_ROOT_VERSION,
                "The version of the signed trust root this device holds (0: none yet; the key from enrolment signs its control messages)."
            )?),
            bundle_download_bytes: reg!(IntCounter::new(
                BUNDLE_DOWNLOAD_BYTES_TOTAL,
                "Bundle bytes downloaded from the coordinator's artifact endpoint."
            )?),
            feedback: reg!(IntCounterVec::new(
                help(
                    FEEDBACK_TOTAL,
                    "Feedback labels by result: joined to a logged prediction, unknown id, evicted prediction, unreadable (damaged) record."
                ),
                &["result"]
            )?),
            labelled: reg!(IntCounterVec::new(
                help(
                    LABELLED_PREDICTIONS_TOTAL,
                    "Predictions that received a ground-truth label, by model version."
                ),
                labels
            )?),
            labelled_correct: reg!(IntCounterVec::new(
                help(LABELLED_CORRECT_TOTAL, "Labelled predictions whose predicted label was the true one."),
                labels
            )?),
            drift: DriftMetrics {
                score: reg!(GaugeVec::new(
                    help(
                        DRIFT_SCORE,
                        "Drift of a feature (`_prediction`: the predictions) against the bundle's baseline: the p-value for test ks and chisquare, the distance for wasserstein, jensen_shannon and psi."
                    ),
                    &["model", "version", "feature", "test"]
                )?),
                detected: reg!(IntGaugeVec::new(
                    help(DRIFT_DETECTED, "1 when the last drift test of a feature found drift, else 0."),
                    &["model", "version", "feature"]
                )?),
                window_rows: reg!(IntGaugeVec::new(
                    help(DRIFT_WINDOW_ROWS, "Rows in a model version's drift window."),
                    labels
                )?),
                series: Mutex::new(std::collections::HashMap::new()),
            },
            log: LogMetrics {
                reported: Mutex::new(crate::prediction_log::LogStats::default()),
                records: reg!(IntCounter::new(
                    PREDICTION_LOG_RECORDS_TOTAL,
                    "Predictions written to the prediction log."
                )?),
                evicted: reg!(IntCounter::new(
                    PREDICTION_LOG_EVICTED_RECORDS_TOTAL,
                    "Prediction-log records evicted by the disk or age budget."
                )?),
                evicted_segments: reg!(IntCounter::new(
                    PREDICTION_LOG_EVICTED_SEGMENTS_TOTAL,
                    "Prediction-log segments evicted by the disk or age budget."
                )?),
                write_errors: reg!(IntCounter::new(
                    PREDICTION_LOG_WRITE_ERRORS_TOTAL,
                    "Prediction-log writes that failed (records lost)."
                )?),
                dropped: reg!(IntCounter::new(
                    PREDICTION_LOG_DROPPED_RECORDS_TOTAL,
                    "Prediction-log records lost because their write failed (a full or failing disk)."
                )?),
                disk_bytes: reg!(IntGauge::new(
                    PREDICTION_LOG_DISK_BYTES,
                    "Prediction-log size on disk in bytes."
                )?),
                budget_bytes: reg!(IntGauge::new(
                    PREDICTION_LOG_BUDGET_BYTES,
                    "Prediction-log disk budget in force: prediction_log.max_bytes, or prediction_log.max_disk_share of the log plus the filesystem's free space when that is less."
                )?),
                segments: reg!(IntGauge::new(PREDICTION_LOG_SEGMENTS, "Prediction-log segments on disk.")?),
                queued: reg!(IntGauge::new(
                    PREDICTION_LOG_QUEUED,
                    "Prediction-log batches waiting for the writer."
                )?),
                ids_skipped: reg!(IntGauge::new(
                    PREDICTION_LOG_IDS_SKIPPED,
                    "Prediction ids skipped when the log opened: reserved before an unclean stop and never logged (predictions answered with them were lost; ids are never reused)."
                )?),
                unlogged: reg!(IntCounter::new(
                    PREDICTION_LOG_UNLOGGED_TOTAL,
                    "Requests answered without prediction ids and not logged: no id reservation could be written."
                )?),
                quarantined: reg!(IntCounter::new(
                    PREDICTION_LOG_QUARANTINED_TOTAL,
                    "Damaged prediction-log segments moved to predictions/quarantine/ at start (their records are lost; serving went on)."
                )?),
            },
            telemetry: TelemetryMetrics {
                reported: Mutex::new((0, 0, 0, 0)),
                outbox_messages: reg!(IntGauge::new(
                    OUTBOX_MESSAGES,
                    "Telemetry messages waiting for the coordinator's ack."
                )?),
                outbox_bytes: reg!(IntGauge::new(
                    OUTBOX_BYTES,
                    "Bytes of telemetry waiting for the coordinator's ack."
                )?),
                outbox_oldest_age: reg!(prometheus::Gauge::new(
                    OUTBOX_OLDEST_AGE_SECONDS,
                    "Age of the oldest unacknowledged telemetry message, in seconds."
                )?),
                outbox_dropped: reg!(IntCounter::new(
                    OUTBOX_DROPPED_TOTAL,
                    "Unacknowledged telemetry messages dropped because the outbox reached its byte bound."
                )?),
                connected: reg!(IntGauge::new(BROKER_CONNECTED, "1 while connected to the MQTT broker.")?),
                clock_skew: reg!(prometheus::Gauge::new(
                    CLOCK_SKEW_SECONDS,
                    "The coordinator's clock minus this device's, in seconds, from the newest signed ack (positive: the device is behind); 0 until one arrived."
                )?),
                sent: reg!(IntCounter::new(
                    TELEMETRY_SENT_TOTAL,
                    "Telemetry messages published (including resends)."
                )?),
                acked: reg!(IntCounter::new(
                    TELEMETRY_ACKED_TOTAL,
                    "Telemetry messages the coordinator acknowledged as stored."
                )?),
            },
            system: Mutex::new(system),
            registry,
        })
    }

    /// Records a model's lifecycle state under its `state` label.
    pub fn set_model_state(&self, model: &str, version: &str, state: &str) {
        for s in MODEL_STATES {
            self.model_state.with_label_values(&[model, version, s]).set(i64::from(s == state));
        }
    }

    /// Drops the state series of a model whose version label changed (loading → resolved).
    /// Publishes one model version's drift verdicts.
    pub fn record_drift(&self, drift: &outpost_shared::protocol::messages::ModelDrift) {
        let d = &self.drift;
        let (model, version) = (drift.model.as_str(), drift.version.as_str());
        let mut series = d.series.lock().unwrap_or_else(|p| p.into_inner());
        let known = series.entry((model.to_owned(), version.to_owned())).or_default();
        d.window_rows
            .with_label_values(&[model, version])
            .set(i64::try_from(drift.window_rows).unwrap_or(i64::MAX));
        for f in drift.features.iter().chain(&drift.prediction) {
            let test = f.test.as_str().to_owned();
            // A feature whose test changed (the window outgrew the small-sample tests) loses its old series.
            for (_, old) in known.iter().filter(|(name, t)| *name == f.feature && *t != test) {
                let _ = d.score.remove_label_values(&[model, version, &f.feature, old]);
            }
            known.retain(|(name, t)| *name != f.feature || *t == test);
            d.score.with_label_values(&[model, version, &f.feature, &test]).set(f.score);
            d.detected.with_label_values(&[model, version, &f.feature]).set(i64::from(f.drifted));
            if !known.iter().any(|(name, _)| *name == f.feature) {
                known.push((f.feature.clone(), test));
            }
        }
    }

    /// Removes a model version's drift series (it no longer serves).
    pub fn forget_drift(&self, model: &str, version: &str) {
        let d = &self.drift;
        let mut series = d.series.lock().unwrap_or_else(|p| p.into_inner());
        for (feature, test) in series.remove(&(model.to_owned(), version.to_owned())).unwrap_or_default() {
            let _ = d.score.remove_label_values(&[model, version, &feature, &test]);
            let _ = d.detected.remove_label_values(&[model, version, &feature]);
        }
        let _ = d.window_rows.remove_label_values(&[model, version]);
    }

    pub fn forget_model_state(&self, model: &str, version: &str) {
        for s in MODEL_STATES {
            let _ = self.model_state.remove_label_values(&[model, version, s]);
        }
    }

    /// Counts one damaged `store` moved aside.
    pub fn storage_quarantined(&self, store: &str) {
        self.storage_quarantined.with_label_values(&[store]).inc();
    }

    /// Copies the prediction log's counters into the exported metrics.
    pub fn record_log_stats(&self, stats: &crate::prediction_log::LogStats) {
        let log = &self.log;
        let mut reported = log.reported.lock().unwrap_or_else(|p| p.into_inner());
        log.records.inc_by(stats.appended.saturating_sub(reported.appended));
        log.evicted.inc_by(stats.evicted.saturating_sub(reported.evicted));
        log.evicted_segments.inc_by(stats.evicted_segments.saturating_sub(reported.evicted_segments));
        log.write_errors.inc_by(stats.write_errors.saturating_sub(reported.write_errors));
        log.dropped.inc_by(stats.dropped.saturating_sub(reported.dropped));
        log.unlogged.inc_by(stats.unlogged.saturating_sub(reported.unlogged));
        log.quarantined.inc_by(stats.quarantined_segments.saturating_sub(reported.quarantined_segments));
        self.unreadable_records
            .with_label_values(&["prediction_log"])
            .inc_by(stats.unreadable.saturating_sub(reported.unreadable));
        *reported = *stats;
        log.ids_skipped.set(i64::try_from(stats.ids_skipped).unwrap_or(i64::MAX));
        log.disk_bytes.set(i64::try_from(stats.disk_bytes).unwrap_or(i64::MAX));
        log.budget_bytes.set(i64::try_from(stats.budget_bytes).unwrap_or(i64::MAX));
        log.segments.set(i64::try_from(stats.segments).unwrap_or(i64::MAX));
        log.queued.set(i64::try_from(stats.queued).unwrap_or(i64::MAX));
    }

    /// Copies the outbox's and the link's figures into their metrics.
    pub fn record_telemetry(&self, t: &TelemetrySnapshot) {
        let m = &self.telemetry;
        let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        m.outbox_messages.set(as_i64(t.outbox.messages));
        m.outbox_bytes.set(as_i64(t.outbox.bytes));
        m.outbox_oldest_age.set(t.outbox.oldest_age_ms as f64 / 1000.0);
        m.connected.set(i64::from(t.connected));
        if let Some(ms) = t.clock_skew_ms {
            m.clock_skew.set(ms as f64 / 1000.0);
        }
        let mut reported = m.reported.lock().unwrap_or_else(|p| p.into_inner());
        m.outbox_dropped.inc_by(t.dropped.saturating_sub(reported.0));
        m.sent.inc_by(t.sent.saturating_sub(reported.1));
        m.acked.inc_by(t.acked.saturating_sub(reported.2));
        self.unreadable_records
            .with_label_values(&["outbox"])
            .inc_by(t.unreadable.saturating_sub(reported.3));
        *reported = (
            t.dropped.max(reported.0),
            t.sent.max(reported.1),
            t.acked.max(reported.2),
            t.unreadable.max(reported.3),
        );
    }

    /// System figures for telemetry reports (refreshed at most once a second).
    pub fn system_stats(&self) -> outpost_shared::protocol::messages::SystemStats {
        let mut probe = self.system.lock().unwrap_or_else(|p| p.into_inner());
        probe.refresh();
        let (disk_total, disk_free) = probe.disks.as_ref().map_or((0, 0), |disks| {
            disks.iter().map(|d| (d.total_space(), d.available_space())).max().unwrap_or((0, 0))
        });
        outpost_shared::protocol::messages::SystemStats {
            cpu_percent: (probe.cpu_usage.get() * 100.0) as f32,
            memory_used_bytes: u64::try_from(probe.memory_total.get() - probe.memory_available.get())
                .unwrap_or(0),
            memory_total_bytes: u64::try_from(probe.memory_total.get()).unwrap_or(0),
            process_rss_bytes: u64::try_from(probe.resident.get()).unwrap_or(0),
            disk_free_bytes: disk_free,
            disk_total_bytes: disk_total,
        }
    }

    /// Renders every metric in the Prometheus text format.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        if let Ok(mut probe) = self.system.lock() {
            probe.refresh();
        }
        let mut buffer = Vec::with_capacity(16 * 1024);
        TextEncoder::new().encode(&self.registry.gather(), &mut buffer)?;
        let mut text = String::from_utf8(buffer).map_err(|e| prometheus::Error::Msg(e.to_string()))?;
        text.push_str(&self.front.render("outpost_agent_http"));
        Ok(text)
    }
}

impl SystemProbe {
    fn refresh(&mut self) {
        if self.last_refresh.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            return;
        }
        self.last_refresh = Some(Instant::now());
        if let (Some(system), Some(pid)) = (self.system.as_mut(), self.pid) {
            system.refresh_processes_specifics(
                ProcessesToUpdate::Some(&[pid]),
                true,
                ProcessRefreshKind::nothing().with_memory().with_cpu(),
            );
            if let Some(process) = system.process(pid) {
                self.resident.set(i64::try_from(process.memory()).unwrap_or(i64::MAX));
                self.virtual_memory.set(i64::try_from(process.virtual_memory()).unwrap_or(i64::MAX));
                self.start_time.set(i64::try_from(process.start_time()).unwrap_or(0));
                let total = process.accumulated_cpu_time() as f64 / 1000.0;
                if total > self.cpu_seconds_reported {
                    self.cpu_seconds.inc_by(total - self.cpu_seconds_reported);
                    self.cpu_seconds_reported = total;
                }
            }
            system.refresh_cpu_usage();
            self.cpu_usage.set(f64::from(system.global_cpu_usage()) / 100.0);
            system.refresh_memory();
            self.memory_total.set(i64::try_from(system.total_memory()).unwrap_or(i64::MAX));
            self.memory_available.set(i64::try_from(system.available_memory()).unwrap_or(i64::MAX));
        }
        if let Some(disks) = self.disks.as_mut() {
            disks.refresh(true);
            for disk in disks.iter() {
                let mount = disk.mount_point().to_string_lossy();
                let total = i64::try_from(disk.total_space()).unwrap_or(i64::MAX);
                let available = i64::try_from(disk.available_space()).unwrap_or(i64::MAX);
                self.disk_total.with_label_values(&[mount.as_ref()]).set(total);
                self.disk_available.with_label_values(&[mount.as_ref()]).set(available);
            }
        }
    }
}

#[cfg(test)]
mod tests;
