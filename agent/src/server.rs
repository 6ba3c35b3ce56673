//! The `serve` lifecycle: bind, serve, load and validate models in the background, and drain
//! on SIGTERM/SIGINT.
//!
//! `/v2/health/live` answers from the first moment; `/v2/health/ready` turns 200 only once
//! every model is validated. On a signal the listener stops accepting, in-flight requests
//! finish (capped by `shutdown.grace_secs`) and the process exits 0. If no model at all could
//! be validated there is nothing to serve: the agent exits with [`Stopped::NoValidModel`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::{AppState, router};
use crate::config::Config;
use crate::desired::{DesiredApplier, Fetch};
use crate::identity::IdentityError;
use crate::link;
use crate::metrics::Metrics;
use crate::model_store::ModelStore;
use crate::models::{ModelState, ModelTable, load_and_validate};
use crate::outbox::OutboxError;
use crate::pool::WorkerPool;
use crate::prediction_log::{LogError, PredictionLog};
use crate::reconcile::Reconciler;
use crate::telemetry::Reporter;
use outpost_shared::protocol::messages::EventKind;

mod setup;
use setup::{open_trust, setup_telemetry};

/// How `serve` ended; maps to the process exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Stopped by a signal after draining: exit 0.
    Drained,
    /// The grace period ran out with requests still in flight: exit 1.
    GraceExpired,
    /// No configured model loaded and validated: exit 3.
    NoValidModel,
}

impl Stopped {
    /// The process's exit status for this way of stopping.
    pub fn exit(self) -> crate::exit::ExitStatus {
        use crate::exit::ExitStatus;
        match self {
            Stopped::Drained => ExitStatus::Success,
            Stopped::GraceExpired => ExitStatus::Failure,
            Stopped::NoValidModel => ExitStatus::ModelInvalid,
        }
    }
}

/// Why `serve` could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("cannot start inference workers: {0}")]
    Workers(std::io::Error),
    #[error("cannot set up metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("server failed: {0}")]
    Serve(std::io::Error),
    #[error(transparent)]
    PredictionLog(#[from] LogError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error("{0}")]
    Registry(String),
    #[error(transparent)]
    AtRest(#[from] crate::at_rest::AtRestError),
    #[error(transparent)]
    Trust(#[from] crate::trust_root::TrustError),
    #[error(transparent)]
    Config(crate::config::ConfigError),
}

impl ServeError {
    /// How `serve` exits for this error: a key that cannot be used is configuration (2).
    pub fn exit(&self) -> crate::exit::ExitStatus {
        match self {
            ServeError::AtRest(_) | ServeError::Trust(_) | ServeError::Config(_) => {
                crate::exit::ExitStatus::Usage
            }
            _ => crate::exit::ExitStatus::Failure,
        }
    }
}

/// Resolves when SIGTERM or SIGINT arrives, with the signal's name.
pub async fn termination_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => "SIGTERM",
                    _ = int.recv() => "SIGINT",
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    }
}

/// Runs the agent until `stop` resolves (or no model validates), then drains.
pub async fn serve(
    config: Config,
    stop: impl Future<Output = &'static str> + Send + 'static,
) -> Result<Stopped, ServeError> {
    // The prediction log (raw inputs), outbox, identity and models: the owner's only.
    match outpost_shared::files::keep_private(&config.data_dir) {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!(data_dir = %config.data_dir.display(), "cannot make the data directory 0700 (not its owner); new files are still 0600")
        }
        Err(e) => {
            tracing::warn!(data_dir = %config.data_dir.display(), error = %e, "cannot create the data directory")
        }
    }
    // Before any store opens: a key that cannot be used stops the start (exit 2), and nothing
    // is written.
    let at_rest = crate::at_rest::for_config(&config.data_dir, &config.encryption)?;
    let metrics = Arc::new(Metrics::new()?);
    metrics.encryption_at_rest.set(i64::from(at_rest.is_on()));
    let workers = config.runtime.effective_workers();
    let pool =
        Arc::new(WorkerPool::new(workers, config.runtime.queue_capacity).map_err(ServeError::Workers)?);
    metrics.workers.set(i64::try_from(workers).unwrap_or(i64::MAX));
    metrics.queue_capacity.set(i64::try_from(config.runtime.queue_capacity).unwrap_or(i64::MAX));
    let models = Arc::new(ModelTable::new(&config.models));
    let log = if config.prediction_log.enabled {
        let log = PredictionLog::open(&config.data_dir, &config.prediction_log, &at_rest)?;
        tracing::info!(data_dir = %config.data_dir.display(), next_id = log.next_id(), max_bytes = config.prediction_log.max_bytes, "prediction log open");
        Some(Arc::new(log))
    } else {
        None
    };

    // Who signs control messages and bundles: the signed trust root (exit 2 if it is damaged
    // beyond its copy), or the enrolment key and configured keys without one.
    let trust = open_trust(&config)?;
    metrics.trust_root_version.set(i64::try_from(trust.version()).unwrap_or(i64::MAX));
    let telemetry = if config.telemetry.enabled {
        Some(setup_telemetry(&config, &models, log.as_ref(), &metrics, &at_rest, &trust)?)
    } else {
        None
    };

    #[cfg(feature = "fault-injection")]
    for (model, ms) in config.runtime.test_delay_ms.iter().filter(|(_, ms)| **ms > 0) {
        tracing::warn!(
            model,
            delay_ms = ms,
            "runtime.test_delay_ms is set: every inference of this model is slowed down ON PURPOSE (for tests only)"
        );
    }
    #[cfg(feature = "fault-injection")]
    for version in &config.runtime.test_crash {
        tracing::warn!(
            version,
            "runtime.test_crash is set: serving this version aborts the agent ON PURPOSE (for tests only)"
        );
    }
    // With signed bundles in play — release keys configured, or named by a held trust root — an
    // agent may start with nothing to serve and wait for one.
    let bundles = trust.has_release_keys();
    let watchdog = bundles.then(|| {
        Arc::new(crate::watchdog::Watchdog::new(
            ModelStore::new(&config.data_dir, config.registry.keep_versions, &at_rest),
            telemetry.as_ref().map(|t| Arc::clone(&t.reporter)),
            Arc::clone(&metrics),
        ))
    });
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Bind { addr: config.listen, source })?;
    let addr = listener.local_addr().map_err(ServeError::Serve)?;
    tracing::info!(%addr, models = config.models.len(), workers, queue_capacity = config.runtime.queue_capacity, "listening");

    let state = AppState {
        models: Arc::clone(&models),
        pool: Arc::clone(&pool),
        metrics: Arc::clone(&metrics),
        max_body_bytes: config.http.max_body_bytes,
        log: log.clone(),
        window: telemetry.as_ref().map(|t| Arc::clone(&t.reporter.window)),
        reporter: telemetry.as_ref().map(|t| Arc::clone(&t.reporter)),
        runtime: Arc::new(config.runtime.clone()),
        watchdog: watchdog.clone(),
        telemetry: telemetry.as_ref().map(|t| {
            let (outbox, stats) = (Arc::clone(&t.outbox), Arc::clone(&t.link_stats));
            let read: Arc<dyn Fn() -> crate::metrics::TelemetrySnapshot + Send + Sync> =
                Arc::new(move || crate::metrics::TelemetrySnapshot {
                    outbox: outbox.stats(),
                    dropped: outbox.dropped(),
                    unreadable: outbox.unreadable(),
                    connected: stats.connected.load(std::sync::atomic::Ordering::Relaxed),
                    sent: stats.sent.load(std::sync::atomic::Ordering::Relaxed),
                    acked: stats.acked.load(std::sync::atomic::Ordering::Relaxed),
                    clock_skew_ms: stats
                        .skew_known
                        .load(std::sync::atomic::Ordering::Relaxed)
                        .then(|| stats.clock_skew_ms.load(std::sync::atomic::Ordering::Relaxed)),
                });
            read
        }),
    };
    let app = router(state, Duration::from_secs(config.http.body_timeout_secs));

    // One shutdown signal for everything: None while running, then why we stop.
    let (stop_tx, stop_rx) = watch::channel::<Option<Stopped>>(None);
    let loader_stop = stop_tx.clone();
    let loader = tokio::spawn(load_all(
        Arc::clone(&models),
        Arc::clone(&metrics),
        loader_stop,
        bundles,
        config.batching.clone(),
    ));
    let (telemetry_stop_tx, telemetry_stop) = watch::channel(false);
    let mut telemetry_tasks = Vec::new();
    if let Some(t) = &telemetry {
        let reporter = Arc::clone(&t.reporter);
        let described = at_rest.describe();
        let _ = tokio::task::spawn_blocking(move || {
            reporter.event(
                EventKind::AgentStarted,
                format!("outpost-agent {} started", env!("CARGO_PKG_VERSION")),
            );
            reporter.event(
                EventKind::AtRest { encryption: described.clone() },
                format!("encryption at rest: {described}"),
            )
        })
        .await;
        telemetry_tasks.push(tokio::spawn(Arc::clone(&t.reporter).run(telemetry_stop.clone())));
        if let Some(mut settings) = t.link.clone() {
            if bundles {
                // Desired states from the coordinator: verified, fetched and installed here;
                // the store's reconciler (below) swaps what serves.
                let (tx, rx) = tokio::sync::mpsc::channel(16);
                settings.desired = Some(tx);
                let applier = Arc::new(DesiredApplier {
                    device_id: settings.device_id.clone(),
                    trust: Arc::clone(&trust),
                    store: ModelStore::new(&config.data_dir, config.registry.keep_versions, &at_rest),
                    fetch: Fetch {
                        api_url: t.api_url.clone().unwrap_or_default(),
                        chunk_bytes: config.registry.download_chunk_bytes,
                        max_bytes_per_sec: config.registry.download_max_bytes_per_sec,
                        ca_pem: t.api_ca.clone(),
                        client_tls: t.client_tls.clone(),
                        local_dir: None,
                    },
                    reporter: Some(Arc::clone(&t.reporter)),
                    metrics: Arc::clone(&metrics),
                    clock: Arc::clone(&t.link_stats.trusted),
                });
                telemetry_tasks.push(tokio::spawn(applier.run(rx, telemetry_stop.clone())));
            }
            telemetry_tasks.push(tokio::spawn(link::run(
                settings,
                Arc::clone(&t.outbox),
                Arc::clone(&t.link_stats),
                telemetry_stop.clone(),
            )));
        }
    }
    if bundles {
        // Before anything loads: damage in the model store (flipped bytes in state.json or a
        // bundle) is moved aside and a verified version served instead of none.
        let store = ModelStore::new(&config.data_dir, config.registry.keep_versions, &at_rest);
        let release = trust.release();
        let repaired = tokio::task::spawn_blocking(move || store.repair(&release)).await;
        match repaired {
            Ok(Ok(repairs)) => {
                for repair in repairs {
                    let what = repair.describe();
                    tracing::error!(what, "model store damaged: repaired at start, serving goes on");
                    if !matches!(repair, crate::model_store::Repair::Fallback { .. }) {
                        metrics.storage_quarantined("model_store");
                    }
                    if let Some(t) = &telemetry {
                        t.reporter.event(
                            EventKind::StorageQuarantined { store: "model_store".into(), lost: what.clone() },
                            what,
                        );
                    }
                }
            }
            Ok(Err(e)) => tracing::error!(error = %e, "cannot check the model store at start"),
            Err(e) => tracing::error!(error = %e, "the model store check did not finish"),
        }
    }
    if let Some(watchdog) = &watchdog {
        // Before anything loads: a version that kept crashing the agent is switched back now.
        let w = Arc::clone(watchdog);
        let _ = tokio::task::spawn_blocking(move || w.boot(outpost_shared::endpoints::now_ms())).await;
        telemetry_tasks.push(tokio::spawn(Arc::clone(watchdog).run(telemetry_stop.clone())));
    }
    if bundles {
        let reconciler = Arc::new(Reconciler {
            store: ModelStore::new(&config.data_dir, config.registry.keep_versions, &at_rest),
            trust: Arc::clone(&trust),
            models: Arc::clone(&models),
            metrics: Arc::clone(&metrics),
            reporter: telemetry.as_ref().map(|t| Arc::clone(&t.reporter)),
            drift: config.drift.clone(),
            batching: config.batching.clone(),
        });
        telemetry_tasks.push(tokio::spawn(reconciler.run(telemetry_stop.clone())));
    }
    telemetry_tasks.push(tokio::spawn(drift_loop(
        Arc::clone(&models),
        Arc::clone(&metrics),
        telemetry.as_ref().map(|t| Arc::clone(&t.reporter)),
        Duration::from_secs(config.drift.interval_secs),
        telemetry_stop.clone(),
    )));
    let signal_stop = stop_tx.clone();
    let signal_task = tokio::spawn(async move {
        let name = stop.await;
        tracing::info!(signal = name, "shutting down: no new connections, finishing in-flight requests");
        let _ = signal_stop.send(Some(Stopped::Drained));
    });

    let mut graceful_rx = stop_rx.clone();
    let mut stop_wait = stop_rx.clone();
    let server = outpost_shared::front::serve_plain(
        listener,
        config.http.limits(),
        Arc::clone(&metrics.front),
        app,
        async move {
            let _ = graceful_rx.wait_for(Option::is_some).await;
        },
    );
    let mut server = tokio::spawn(server);

    let status = tokio::select! {
        finished = &mut server => {
            finished.map_err(|e| ServeError::Serve(std::io::Error::other(e)))?;
            (*stop_rx.borrow()).unwrap_or(Stopped::Drained)
        }
        _ = stop_wait.wait_for(Option::is_some) => {
            let why = (*stop_rx.borrow()).unwrap_or(Stopped::Drained);
            let grace = Duration::from_secs(config.shutdown.grace_secs);
            match tokio::time::timeout(grace, &mut server).await {
                Ok(finished) => {
                    finished.map_err(|e| ServeError::Serve(std::io::Error::other(e)))?;
                    why
                }
                Err(_) => {
                    tracing::error!(grace_secs = config.shutdown.grace_secs, in_flight = metrics.in_flight.get(), "grace period over; exiting with requests unfinished");
                    server.abort();
                    Stopped::GraceExpired
                }
            }
        }
    };
    signal_task.abort();
    loader.abort();
    drop(stop_tx);
    exit_if_storage_hangs(Duration::from_secs(config.shutdown.close_timeout_secs));
    if let Some(log) = log {
        // Everything answered so far goes to disk before the process exits.
        match tokio::task::spawn_blocking(move || log.flush()).await {
            Ok(Ok(())) => tracing::info!("prediction log flushed"),
            Ok(Err(e)) => tracing::error!(error = %e, "prediction log flush failed"),
            Err(e) => tracing::error!(error = %e, "prediction log flush task failed"),
        }
    }
    let _ = telemetry_stop_tx.send(true);
    for task in telemetry_tasks {
        let _ = task.await;
    }
    if let Some(t) = telemetry {
        // The last window and every prediction not yet batched go to the outbox now.
        let reporter = Arc::clone(&t.reporter);
        let done = tokio::task::spawn_blocking(move || {
            let result = reporter.tick(true);
            reporter.event(EventKind::AgentStopping, "outpost-agent stopping".into());
            result.and_then(|()| reporter.outbox.flush())
        })
        .await;
        match done {
            Ok(Ok(())) => {
                tracing::info!(backlog = t.outbox.stats().messages, "telemetry flushed to the outbox")
            }
            Ok(Err(e)) => tracing::error!(error = %e, "final telemetry report failed"),
            Err(e) => tracing::error!(error = %e, "final telemetry task failed"),
        }
    }
    if bundles {
        // Not a crash: a version on probation gets no strike for this run.
        let store = ModelStore::new(&config.data_dir, config.registry.keep_versions, &at_rest);
        if let Err(e) = tokio::task::spawn_blocking(move || store.clean_exit()).await.unwrap_or(Ok(())) {
            tracing::error!(error = %e, "cannot record the clean exit in the model store");
        }
    }
    tracing::info!(exit_code = status.exit().code(), "stopped");
    Ok(status)
}

/// From here on the agent only writes out and closes its storage. A sync on a failing disk can
/// block for as long as the kernel retries (and sled, which kept the stores before, blocked
/// forever on a flush inside a `Tree`'s drop with its files gone), so a watchdog thread ends
/// the process with exit 1 after `budget`.
fn exit_if_storage_hangs(budget: Duration) {
    let spawned = std::thread::Builder::new().name("exit-watchdog".into()).spawn(move || {
        std::thread::sleep(budget);
        tracing::error!(
            close_timeout_secs = budget.as_secs(),
            "storage did not close in time (is the data directory gone or its disk failing?); exiting without it"
        );
        std::process::exit(i32::from(crate::exit::ExitStatus::Failure.code()));
    });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the exit watchdog");
    }
}

/// Loads and validates every model concurrently off the executor, publishing each result.
async fn load_all(
    models: Arc<ModelTable>,
    metrics: Arc<Metrics>,
    stop: watch::Sender<Option<Stopped>>,
    bundles: bool,
    batching: crate::batching::BatchingTable,
) {
    let mut tasks = Vec::new();
    for entry in models.entries().into_iter().filter(|e| !e.managed) {
        let loading_version = entry.version().unwrap_or_default();
        metrics.set_model_state(entry.name(), &loading_version, "loading");
        let metrics = Arc::clone(&metrics);
        let models = Arc::clone(&models);
        let batching = batching.clone();
        tasks.push(tokio::spawn(async move {
            let config = entry.config.clone();
            let batching = batching.get(entry.name()).copied();
            let outcome = tokio::task::spawn_blocking(move || {
                load_and_validate(&config).map(|mut validated| {
                    validated.served = validated.served.with_batching(batching.as_ref());
                    validated
                })
            })
            .await;
            metrics.forget_model_state(entry.name(), &loading_version);
            let path = entry.config.path.display().to_string();
            match outcome {
                Ok(Ok(validated)) => {
                    let version = validated.served.version.clone();
                    let duplicate = models
                        .named(entry.name())
                        .iter()
                        .any(|other| !Arc::ptr_eq(other, &entry) && other.ready().is_some_and(|m| m.version == version));
                    if duplicate {
                        let reason = format!("version `{version}` of model `{}` is already served by another entry", entry.name());
                        tracing::error!(model = entry.name(), %version, %path, %reason, "model refused");
                        metrics.set_model_state(entry.name(), &version, "failed");
                        entry.set(Some(version), ModelState::Failed(reason));
                        return false;
                    }
                    tracing::info!(
                        model = entry.name(), %version, %path,
                        load_ms = validated.load_time.as_secs_f64() * 1e3,
                        validation = %validated.evidence,
                        "model validated and serving"
                    );
                    metrics.model_load_duration.with_label_values(&[entry.name(), &version]).set(validated.load_time.as_secs_f64());
                    metrics.set_model_state(entry.name(), &version, "ready");
                    entry.set(Some(version), ModelState::Ready(Arc::new(validated.served)));
                    true
                }
                Ok(Err(failure)) => {
                    let version = failure.version.clone().unwrap_or_default();
                    tracing::error!(model = entry.name(), %version, %path, reason = %failure.reason, "model failed validation and will not serve");
                    metrics.set_model_state(entry.name(), &version, "failed");
                    entry.set(failure.version, ModelState::Failed(failure.reason));
                    false
                }
                Err(join) => {
                    let reason = format!("loader crashed: {join}");
                    tracing::error!(model = entry.name(), %path, %reason, "model failed validation and will not serve");
                    metrics.set_model_state(entry.name(), &loading_version, "failed");
                    entry.set(entry.version(), ModelState::Failed(reason));
                    false
                }
            }
        }));
    }
    let mut any_ready = false;
    for task in tasks {
        any_ready |= task.await.unwrap_or(false);
    }
    if any_ready {
        if models.all_ready() {
            tracing::info!(models = models.entries().len(), "all models validated: ready");
        } else {
            tracing::warn!("some models failed validation: not ready; the valid ones serve");
        }
    } else if bundles {
        tracing::info!("no model file validated; serving signed bundles from the local store as they arrive");
    } else {
        tracing::error!("no model could be validated: nothing to serve, exiting");
        let _ = stop.send(Some(Stopped::NoValidModel));
    }
}

/// Evaluates the drift windows every `interval` (off the executor: the tests sort and count),
/// publishing verdicts in `/metrics` and, with telemetry, in a report to the coordinator.
async fn drift_loop(
    models: Arc<ModelTable>,
    metrics: Arc<Metrics>,
    reporter: Option<Arc<Reporter>>,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let published = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::new()));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let (models, metrics, reporter, published) =
            (Arc::clone(&models), Arc::clone(&metrics), reporter.clone(), Arc::clone(&published));
        let _ = tokio::task::spawn_blocking(move || {
            let mut published = published.lock().unwrap_or_else(|p| p.into_inner());
            let verdicts = evaluate_drift(&models, &metrics, &mut published);
            if let Some(reporter) = reporter.filter(|_| !verdicts.is_empty()) {
                reporter.drift(verdicts);
            }
        })
        .await;
    }
}

/// Evaluates every ready, monitored model version, publishes the verdicts in `/metrics`, and
/// returns them (for the reporter). `published` holds the (model, version) pairs whose series
/// exist, so a version that stopped serving loses its series.
fn evaluate_drift(
    models: &ModelTable,
    metrics: &Metrics,
    published: &mut std::collections::BTreeMap<String, String>,
) -> Vec<outpost_shared::protocol::messages::ModelDrift> {
    let mut out = Vec::new();
    for entry in models.entries() {
        let Some(served) = entry.ready() else { continue };
        let Some(monitor) = &served.drift else { continue };
        if let Some(old) = published.get(&served.name).filter(|v| **v != served.version) {
            metrics.forget_drift(&served.name, old);
        }
        published.insert(served.name.clone(), served.version.clone());
        if let Some(result) = monitor.evaluate(&served.name, &served.version) {
            metrics.record_drift(&result);
            out.push(result);
        }
    }
    out
}
