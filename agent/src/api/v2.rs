//! Handlers of the Open Inference Protocol (V2) endpoints and `/metrics`.

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{ApiError, AppState};
use crate::batching::{Alone, BatchRun, Help, Leader};
use crate::infer::{self, Encoded};
use crate::metrics::Outcome;
use crate::models::{Lookup, ModelEntry, ModelState, ServedModel};
use crate::pool::{self, SubmitError};
use outpost_shared::protocol::messages::SlotMode;
use outpost_shared::protocol::vocab::Slot;

/// Header of the binary tensor data extension giving the JSON part's length.
pub const INFERENCE_HEADER_CONTENT_LENGTH: &str = "inference-header-content-length";

/// Extensions this server implements, as `GET /v2` advertises them.
pub const EXTENSIONS: [&str; 1] = ["binary_tensor_data"];

pub async fn server_metadata() -> Json<Value> {
    Json(json!({
        "name": "outpost-agent",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": EXTENSIONS,
    }))
}

pub async fn live() -> Json<Value> {
    Json(json!({ "live": true }))
}

fn describe(entry: &ModelEntry) -> Value {
    let state = entry.state();
    let mut v = json!({
        "name": entry.name(),
        "version": entry.version(),
        "state": state.label(),
    });
    if let ModelState::Failed(reason) = &state {
        v["reason"] = json!(reason);
    }
    if let Some(refusal) = entry.refusal() {
        v["refused"] = json!(refusal);
    }
    if let Some(c) = entry.candidate() {
        v["candidate"] = json!({"version": c.served.version, "slot": c.mode.slot()});
    }
    v
}

pub async fn ready(State(app): State<AppState>) -> Response {
    let ready = app.models.all_ready();
    let models: Vec<Value> = app.models.entries().iter().map(|e| describe(e)).collect();
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(json!({ "ready": ready, "models": models }))).into_response()
}

fn find(app: &AppState, name: &str, version: Option<&str>) -> Result<Arc<ModelEntry>, ApiError> {
    match app.models.lookup(name, version) {
        Lookup::Found(entry) => Ok(entry),
        Lookup::UnknownModel => Err(ApiError::NotFound(format!("unknown model `{name}`"))),
        Lookup::UnknownVersion => Err(ApiError::NotFound(format!(
            "model `{name}` has no version `{}`",
            version.unwrap_or_default()
        ))),
    }
}

fn metadata(app: &AppState, name: &str, version: Option<&str>) -> Result<Json<Value>, ApiError> {
    let entry = find(app, name, version)?;
    let versions: Vec<String> = app
        .models
        .named(name)
        .iter()
        .flat_map(|e| e.version().into_iter().chain(e.candidate().map(|c| c.served.version.clone())))
        .collect();
    let mut body = describe(&entry);
    body["versions"] = json!(versions);
    body["platform"] = json!("onnx_onnxv1");
    if let Some(served) = entry.ready() {
        let tensors = |specs: &[outpost_shared::TensorSpec]| -> Vec<Value> {
            specs
                .iter()
                .map(|s| json!({"name": s.name, "datatype": s.datatype.v2_name(), "shape": s.shape.iter().map(|d| d.v2()).collect::<Vec<_>>()}))
                .collect()
        };
        body["inputs"] = json!(tensors(&served.signature().inputs));
        body["outputs"] = json!(tensors(&served.signature().outputs));
        body["parameters"] = json!({ "metadata": served.model.metadata() });
        if let Some(batcher) = &served.batcher {
            let config = batcher.config();
            body["parameters"]["dynamic_batching"] = json!({
                "max_batch": config.max_batch,
                "max_queue_delay_us": config.max_queue_delay_us,
            });
        }
    } else {
        body["inputs"] = json!([]);
        body["outputs"] = json!([]);
    }
    if let Some(obj) = body.as_object_mut() {
        obj.remove("version");
    }
    Ok(Json(body))
}

pub async fn model_metadata(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    metadata(&app, &name, None)
}

pub async fn version_metadata(
    State(app): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    metadata(&app, &name, Some(&version))
}

fn model_readiness(app: &AppState, name: &str, version: Option<&str>) -> Result<Response, ApiError> {
    let entry = find(app, name, version)?;
    let ready = entry.ready().is_some();
    let mut body = describe(&entry);
    body["ready"] = json!(ready);
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    Ok((status, Json(body)).into_response())
}

pub async fn model_ready(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    model_readiness(&app, &name, None)
}

pub async fn version_ready(
    State(app): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    model_readiness(&app, &name, Some(&version))
}

pub async fn infer(
    State(app): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    run_inference(app, name, None, headers, body).await
}

pub async fn version_infer(
    State(app): State<AppState>,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    run_inference(app, name, Some(version), headers, body).await
}

/// Decrements the in-flight gauge however the request ends.
struct InFlight<'a>(&'a prometheus::IntGauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn inference_header_len(headers: &HeaderMap) -> Result<Option<usize>, ApiError> {
    let Some(value) = headers.get(INFERENCE_HEADER_CONTENT_LENGTH) else {
        return Ok(None);
    };
    value.to_str().ok().and_then(|s| s.trim().parse::<usize>().ok()).map(Some).ok_or_else(|| {
        ApiError::BadRequest(format!("Inference-Header-Content-Length must be a byte count, found {value:?}"))
    })
}

async fn run_inference(
    app: AppState,
    name: String,
    version: Option<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    app.metrics.in_flight.inc();
    let _in_flight = InFlight(&app.metrics.in_flight);

    let entry = match find(&app, &name, version.as_deref()) {
        Ok(entry) => entry,
        Err(e) => {
            // Unknown names share one label value, so clients cannot grow the metric without bound.
            app.metrics.requests.with_label_values(&["_unknown", "", e.outcome().label()]).inc();
            return e.into_response();
        }
    };
    let served = match entry.state() {
        ModelState::Ready(served) => served,
        other => {
            let e = match other {
                ModelState::Failed(reason) => ApiError::NotReady(format!(
                    "model `{name}` failed validation and does not serve: {reason}"
                )),
                _ => ApiError::NotReady(format!("model `{name}` is still loading")),
            };
            let v = entry.version().unwrap_or_default();
            app.metrics.requests.with_label_values(&[name.as_str(), v.as_str(), e.outcome().label()]).inc();
            return e.into_response();
        }
    };

    // Which slot answers: a request naming the candidate's version gets the candidate; one
    // naming no version goes to a canary by its share (decided on the worker, where the
    // request id is read); everything else gets the primary.
    let candidate = entry.candidate();
    let fixed = version.as_deref().and_then(|v| {
        candidate
            .as_ref()
            .filter(|c| c.served.version == v && served.version != v)
            .map(|c| (Arc::clone(&c.served), c.mode.slot()))
    });
    let canary = match (&version, &candidate) {
        (None, Some(c)) => match c.mode {
            SlotMode::Canary { percent } => Some((percent, Arc::clone(&c.served))),
            SlotMode::Standby | SlotMode::Shadow => None,
        },
        _ => None,
    };
    // A shadow runs on a copy of what the primary answered, after it answered.
    let shadow = match (&version, &candidate) {
        (None, Some(c)) if c.mode == SlotMode::Shadow => Some(Arc::clone(&c.served)),
        _ => None,
    };
    let body = body.map_err(|r| ApiError::from_body(r, app.max_body_bytes));
    let header_len = inference_header_len(&headers);
    let shadow_copy = shadow.as_ref().and(body.as_ref().ok().cloned());
    let shadow_header = header_len.as_ref().ok().copied().flatten();
    let summarize = shadow.is_some();
    // Until a worker picks the slot (a canary's share is decided there), the request counts
    // against the version it named or the primary.
    let mut chosen = fixed.clone().unwrap_or_else(|| (Arc::clone(&served), Slot::Primary));
    let ran = async {
        let body = body?;
        let header_len = header_len?;
        let job_log = app.log.clone();
        let (runtime, job_entry) = (Arc::clone(&app.runtime), Arc::clone(&entry));
        let primary = Arc::clone(&served);
        let batch_rows = app.metrics.batch_rows.clone();
        let job = app
            .pool
            .try_submit_deferred(move |reply| {
                let (model, slot) = match (fixed, canary) {
                    (Some(fixed), _) => fixed,
                    (None, Some((percent, candidate))) => {
                        let id = infer::Body { bytes: &body, header_len }.request_id();
                        if job_entry.to_canary(percent, id.as_deref()) {
                            (candidate, Slot::Canary)
                        } else {
                            (primary, Slot::Primary)
                        }
                    }
                    (None, None) => (primary, Slot::Primary),
                };
                if runtime.test_crash(&model.name, &model.version) {
                    tracing::error!("runtime.test_crash: aborting the agent ON PURPOSE (for tests only)");
                    std::process::abort();
                }
                if let Some(delay) = runtime.test_delay(&model.name, &model.version) {
                    std::thread::sleep(delay);
                }
                let batched = |run: BatchRun| {
                    batch_rows.with_label_values(&[&model.name, &model.version]).observe(run.rows as f64);
                };
                let picked = (Arc::clone(&model), slot);
                // Answered here, or by the leader of this request's batch once it ran.
                let answer: infer::Answer = Box::new(move |handled| reply.send((picked, handled)));
                // The pool's helper for this worker thread (a job always runs on one).
                pool::with_worker(|helper| {
                    infer::handle(
                        &model,
                        slot,
                        infer::Body { bytes: &body, header_len },
                        job_log.as_ref(),
                        summarize,
                        Leader { help: helper.map_or(&Alone as &dyn Help, |h| h), ran: &batched },
                        answer,
                    );
                });
            })
            .map_err(|e| {
                if let SubmitError::Full(_) = e {
                    app.metrics.queue_rejections.inc();
                }
                ApiError::Overloaded(format!("{e}; retry shortly"))
            })?;
        let (picked, handled) = job
            .await
            .map_err(|_| ApiError::Internal("inference worker stopped before answering".into()))?
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        Ok((picked, handled))
    }
    .await;
    let result = ran.and_then(|(picked, handled)| {
        chosen = picked;
        handled.map_err(ApiError::from)
    });
    // `prediction_log.durability = "sync"`: answer only once the records are on disk (the
    // writer syncs once for every request waiting).
    let result = match result {
        Ok(mut encoded) => match encoded.durable.take() {
            None => Ok(encoded),
            Some(durable) => match durable.await {
                Ok(Ok(())) => Ok(encoded),
                Ok(Err(problem)) => Err(ApiError::Internal(problem)),
                Err(_) => Err(ApiError::Internal(
                    "the prediction log stopped before the records were on disk".into(),
                )),
            },
        },
        Err(e) => Err(e),
    };

    let (served, slot) = chosen;
    let labels = [served.name.as_str(), served.version.as_str()];
    let outcome = match &result {
        Ok(encoded) => {
            app.metrics.inference_duration.with_label_values(&labels).observe(encoded.compute.as_secs_f64());
            Outcome::Ok
        }
        Err(e) => e.outcome(),
    };
    app.metrics.requests.with_label_values(&[labels[0], labels[1], outcome.label()]).inc();
    let elapsed = started.elapsed();
    app.metrics.request_duration.with_label_values(&labels).observe(elapsed.as_secs_f64());
    if let Some(watchdog) = &app.watchdog {
        let failed = matches!(outcome, Outcome::Error);
        watchdog.observe(labels[0], labels[1], failed, elapsed.as_micros() as f64);
    }
    if let Some(window) = &app.window {
        let summary = result.as_ref().ok().and_then(|e| e.summary.as_ref());
        window.observe(labels[0], labels[1], slot, result.is_ok(), elapsed.as_micros() as f64, summary);
    }
    if let (Some(candidate), Some(copy), Ok(encoded)) = (shadow, shadow_copy, &result)
        && slot == Slot::Primary
        && let Some(primary_rows) = encoded.summary.clone()
    {
        run_shadow(&app, candidate, copy, shadow_header, primary_rows, served.version.clone());
    }
    match result {
        Ok(encoded) => encoded_response(encoded),
        Err(e) => {
            if let ApiError::Internal(message) = &e {
                tracing::error!(model = %served.name, version = %served.version, error = %message, "inference failed");
            }
            e.into_response()
        }
    }
}

/// Runs a shadow candidate on a copy of a request the primary answered — on the worker pool,
/// after the answer, never delaying or changing it — and records its outcome and agreement.
fn run_shadow(
    app: &AppState,
    candidate: Arc<ServedModel>,
    body: Bytes,
    header_len: Option<usize>,
    primary_rows: crate::telemetry::RowSummary,
    primary_version: String,
) {
    let job = app.pool.try_submit(move || {
        let started = Instant::now();
        let result =
            infer::run(&candidate, Slot::Shadow, infer::Body { bytes: &body, header_len }, None, true);
        (result, started.elapsed(), candidate)
    });
    let Ok(job) = job else {
        app.metrics.shadow_skipped.inc();
        return;
    };
    let (window, metrics) = (app.window.clone(), Arc::clone(&app.metrics));
    tokio::spawn(async move {
        let Ok(Ok((result, elapsed, candidate))) = job.await else { return };
        let (name, version) = (candidate.name.as_str(), candidate.version.as_str());
        let outcome = match &result {
            Ok(_) => Outcome::Ok,
            Err(e) if e.is_client_error() => Outcome::BadRequest,
            Err(_) => Outcome::Error,
        };
        metrics.shadow_requests.with_label_values(&[name, version, outcome.label()]).inc();
        let rows = result.as_ref().ok().and_then(|e| e.summary.as_ref());
        let (compared, agreed) = rows.map_or((0, 0), |rows| crate::telemetry::agreement(&primary_rows, rows));
        metrics.shadow_rows.with_label_values(&[name, version, "agreed"]).inc_by(agreed);
        metrics.shadow_rows.with_label_values(&[name, version, "disagreed"]).inc_by(compared - agreed);
        if let Some(window) = &window {
            window.observe(name, version, Slot::Shadow, result.is_ok(), elapsed.as_micros() as f64, rows);
            window.compare(name, version, &primary_version, compared, agreed);
        }
    });
}

fn encoded_response(encoded: Encoded) -> Response {
    let Encoded { body, json_len, .. } = encoded;
    let mut response = Response::new(Body::from(body));
    let headers = response.headers_mut();
    match json_len {
        Some(n) => {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
            headers.insert(INFERENCE_HEADER_CONTENT_LENGTH, HeaderValue::from(n));
        }
        None => {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
    }
    response
}

pub async fn metrics(State(app): State<AppState>) -> Response {
    app.metrics.queue_depth.set(i64::try_from(app.pool.queue_depth()).unwrap_or(i64::MAX));
    app.metrics.workers_busy.set(i64::try_from(app.pool.busy()).unwrap_or(i64::MAX));
    if let Some(log) = &app.log {
        app.metrics.record_log_stats(&log.stats());
    }
    if let Some(telemetry) = &app.telemetry {
        app.metrics.record_telemetry(&telemetry());
    }
    let metrics = Arc::clone(&app.metrics);
    // sysinfo reads /proc: keep it off the executor.
    match tokio::task::spawn_blocking(move || metrics.render()).await {
        Ok(Ok(text)) => {
            ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
        }
        Ok(Err(e)) => ApiError::Internal(format!("cannot render metrics: {e}")).into_response(),
        Err(e) => ApiError::Internal(format!("metrics task failed: {e}")).into_response(),
    }
}

pub async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::NotFound(format!("no endpoint {method} {}", uri.path()))
}

pub async fn wrong_method(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed(format!("{method} is not allowed on {}", uri.path()))
}
