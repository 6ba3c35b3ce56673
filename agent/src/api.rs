//! The agent's HTTP API: the KServe Open Inference Protocol (V2) under `/v2`, ground-truth
//! feedback (`POST /v1/feedback`, [`feedback`]), and `/metrics`.
//!
//! Handlers stay thin: they look the model up, hand the body to the worker pool
//! ([`crate::infer::run`] does the CPU work there) and map every failure through [`ApiError`].

pub mod error;
pub mod feedback;
pub mod v2;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::Request;
use axum::routing::{get, post};
use tower_http::timeout::RequestBodyTimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::metrics::Metrics;
use crate::models::ModelTable;
use crate::pool::WorkerPool;
use crate::prediction_log::PredictionLog;

pub use error::ApiError;

/// Everything a handler needs.
#[derive(Clone)]
pub struct AppState {
    pub models: Arc<ModelTable>,
    pub pool: Arc<WorkerPool>,
    pub metrics: Arc<Metrics>,
    pub max_body_bytes: usize,
    /// The prediction log, unless disabled.
    pub log: Option<Arc<PredictionLog>>,
    /// The telemetry window every answered request is counted in, unless telemetry is off.
    pub window: Option<Arc<crate::telemetry::Window>>,
    /// Reads the outbox's and link's figures for `/metrics`.
    pub telemetry: Option<Arc<dyn Fn() -> crate::metrics::TelemetrySnapshot + Send + Sync>>,
    /// Sends joined feedback to the coordinator, unless telemetry is off.
    pub reporter: Option<Arc<crate::telemetry::Reporter>>,
    /// `runtime` settings (for the test-only injected delays).
    pub runtime: Arc<crate::config::RuntimeConfig>,
    /// Counts requests of versions on probation (bundle-managed agents only).
    pub watchdog: Option<Arc<crate::watchdog::Watchdog>>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").field("max_body_bytes", &self.max_body_bytes).finish_non_exhaustive()
    }
}

/// Builds the router with its limits and a tracing span per request.
pub fn router(state: AppState, body_timeout: Duration) -> Router {
    let max_body = state.max_body_bytes;
    Router::new()
        .route("/v2", get(v2::server_metadata))
        .route("/v2/health/live", get(v2::live))
        .route("/v2/health/ready", get(v2::ready))
        .route("/v2/models/{name}", get(v2::model_metadata))
        .route("/v2/models/{name}/ready", get(v2::model_ready))
        .route("/v2/models/{name}/infer", post(v2::infer))
        .route("/v2/models/{name}/versions/{version}", get(v2::version_metadata))
        .route("/v2/models/{name}/versions/{version}/ready", get(v2::version_ready))
        .route("/v2/models/{name}/versions/{version}/infer", post(v2::version_infer))
        .route("/v1/feedback", post(feedback::post_feedback))
        .route("/metrics", get(v2::metrics))
        .fallback(v2::no_route)
        .method_not_allowed_fallback(v2::wrong_method)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(RequestBodyTimeoutLayer::new(body_timeout))
        // A span per request; failures are logged where they are understood (inference errors
        // in the handler), so an overload of 503s does not turn into a flood of log lines.
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &Request<_>| {
                    tracing::info_span!("request", method = %request.method(), path = %request.uri().path())
                })
                .on_failure(()),
        )
        .with_state(state)
}
