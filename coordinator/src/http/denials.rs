//! Refusals in the audit chain without letting a flood fill it: every API request refused for
//! its token, role or rate (401, 403, 429) and every refused enrolment is audited, up to
//! [`PER_MINUTE`] entries per action and minute; beyond that they are counted in
//! `outpost_coordinator_audit_suppressed_total{action}` (and `…_api_denied_total` as before).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;

use crate::http::api::AppState;

/// Audit entries per action and minute before the rest are only counted.
pub const PER_MINUTE: u32 = 30;

/// Admits audit entries of floodable actions at [`PER_MINUTE`] per action.
#[derive(Debug, Default)]
pub struct AuditSampler {
    windows: Mutex<HashMap<&'static str, (Instant, u32)>>,
}

impl AuditSampler {
    /// Whether one more `action` entry may be written now.
    pub fn admit(&self, action: &'static str) -> bool {
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let (started, count) = windows.entry(action).or_insert((now, 0));
        if now.duration_since(*started) >= Duration::from_secs(60) {
            (*started, *count) = (now, 0);
        }
        *count += 1;
        *count <= PER_MINUTE
    }
}

/// Writes `action` to the audit chain if the sampler admits it; counts it otherwise.
#[allow(clippy::too_many_arguments)]
pub async fn audit_sampled(
    state: &AppState,
    actor: &str,
    role: &str,
    action: &'static str,
    target: &str,
    outcome: &str,
    detail: &str,
) {
    if state.audit_sampler.admit(action) {
        state.audit.append_or_count(&state.metrics, actor, role, action, target, outcome, detail).await;
    } else {
        state.metrics.audit_suppressed.with_label_values(&[action]).inc();
    }
}

/// Middleware: audits API requests refused for their token, role or rate. Enrolment audits
/// its own refusals (with the device id asked for).
pub async fn audit_denials(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let target = format!("{} {}", request.method(), request.uri().path());
    let response = next.run(request).await;
    let status = response.status();
    if matches!(status.as_u16(), 401 | 403 | 429) && !target.ends_with(" /api/v1/enrol") {
        audit_sampled(&state, "-", "-", "auth.denied", &target, "refused", status.as_str()).await;
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_sampled_per_action() {
        let sampler = AuditSampler::default();
        let admitted = (0..100).filter(|_| sampler.admit("auth.denied")).count();
        assert_eq!(admitted, PER_MINUTE as usize);
        assert!(sampler.admit("device.enrol"), "another action has its own budget");
    }
}
