//! The probes outside `/api/v1`: readiness (`/readyz`, on the store) and Prometheus'
//! `/metrics` (the fleet's gauges counted at each scrape).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::base::store::now_ms;
use crate::fleet::liveness::{Census, Liveness};

/// Readiness: 200 while the store answers, 503 naming the cause when it does not (PostgreSQL
/// unreachable), so a load balancer sends no request to a replica that could only fail it.
pub async fn ready(State(state): State<Arc<AppState>>) -> Response {
    const WITHIN: std::time::Duration = std::time::Duration::from_secs(2);
    let backing = state.store.clone();
    // Behind a partition a query may hang (nothing resets the connection): not ready either.
    let problem =
        match tokio::time::timeout(WITHIN, tokio::task::spawn_blocking(move || backing.check())).await {
            Ok(Ok(Ok(()))) => return "ready\n".into_response(),
            Ok(Ok(Err(e))) => e.to_string(),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("the store did not answer within {WITHIN:?}"),
        };
    (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {problem}\n")).into_response()
}

/// Prometheus text, the fleet's gauges counted first.
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    // The fleet's gauges read every device record: off the async workers (10,000 devices took
    // ~300 ms a scrape when whole records were decoded, fleet bench 2026-12-06).
    let (devices, fleet) = (state.devices.clone(), state.config.fleet.clone());
    let census = tokio::task::spawn_blocking(move || {
        devices.glances().map(|glances| Census::of(&glances, &fleet, now_ms()))
    })
    .await;
    match census {
        Ok(Ok(census)) => {
            for status in [Liveness::Online, Liveness::Stale, Liveness::Offline, Liveness::NeverSeen] {
                let n = census.by_liveness.get(&status).copied().unwrap_or(0);
                state.metrics.devices.with_label_values(&[status.as_str()]).set(n);
            }
            // What the fleet runs, from the actual states devices reported.
            state.metrics.model_devices.reset();
            for (labels, n) in &census.running {
                let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
                state.metrics.model_devices.with_label_values(&labels).set(*n);
            }
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "/metrics: cannot read the fleet; its gauges keep their last values")
        }
        Err(e) => tracing::warn!(error = %e, "/metrics: the fleet count failed"),
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render()).into_response()
}
