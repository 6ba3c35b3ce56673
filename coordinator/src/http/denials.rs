//! The API's front door and its refusals.
//!
//! [`front_door`]: a request that carries a body (anything but GET/HEAD) is authenticated from
//! its headers before a byte of the body is read — only `/api/v1/enrol` (whose token is in the
//! body) is exempt, and its body is capped at `api.max_json_bytes`. Uploads are the only routes
//! allowed `api.max_body_bytes` ([`UPLOADS`]).
//!
//! [`audit_denials`]: every API request refused for its token, role or rate (401, 403, 429) and
//! every refused enrolment is audited, up to [`PER_MINUTE`] entries per action and minute;
//! beyond that they are counted in `outpost_coordinator_audit_suppressed_total{action}` (and
//! `…_api_denied_total` as before). It also throttles guessing: a source address with more
//! than `api.failed_auth_per_minute` failed authentications (401, or an enrolment refused its
//! token) in a minute gets 429 for every request until that minute is over
//! (`outpost_coordinator_api_throttled_total`, audited as `auth.throttled`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::http::api::AppState;
use crate::http::error::ApiError;

/// Audit entries per action and minute before the rest are only counted.
pub const PER_MINUTE: u32 = 30;

/// Counts per key in one-minute windows (a key's window starts at its first count).
#[derive(Debug)]
pub struct MinuteCounts<K> {
    windows: Mutex<HashMap<K, (Instant, u32)>>,
}

impl<K> Default for MinuteCounts<K> {
    fn default() -> Self {
        MinuteCounts { windows: Mutex::new(HashMap::new()) }
    }
}

/// Keys kept before expired windows are swept.
const SWEEP_ABOVE: usize = 4096;
/// Keys kept at most: a minute's flood of distinct addresses (IPv6 makes that cheap) beyond
/// this forgets every window rather than grow without bound — the limit then fails open.
const MAX_KEYS: usize = 65_536;

impl<K: std::hash::Hash + Eq + Clone> MinuteCounts<K> {
    /// Adds one to `key`'s window; returns its count, this one included.
    pub fn add(&self, key: &K) -> u32 {
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if windows.len() > SWEEP_ABOVE {
            windows.retain(|_, (started, _)| now.duration_since(*started) < Duration::from_secs(60));
            if windows.len() > MAX_KEYS {
                windows.clear();
            }
        }
        let (started, count) = windows.entry(key.clone()).or_insert((now, 0));
        if now.duration_since(*started) >= Duration::from_secs(60) {
            (*started, *count) = (now, 0);
        }
        *count += 1;
        *count
    }

    /// `key`'s count in its current window, and the seconds until that window ends.
    pub fn current(&self, key: &K) -> (u32, u64) {
        let windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        match windows.get(key) {
            Some((started, count)) if started.elapsed() < Duration::from_secs(60) => {
                (*count, 60u64.saturating_sub(started.elapsed().as_secs()).max(1))
            }
            _ => (0, 0),
        }
    }
}

/// Admits audit entries of floodable actions at [`PER_MINUTE`] per action.
#[derive(Debug, Default)]
pub struct AuditSampler {
    windows: MinuteCounts<&'static str>,
}

impl AuditSampler {
    /// Whether one more `action` entry may be written now.
    pub fn admit(&self, action: &'static str) -> bool {
        self.windows.add(&action) <= PER_MINUTE
    }
}

/// Failed authentications per source address.
#[derive(Debug, Default)]
pub struct FailedAuth {
    windows: MinuteCounts<std::net::IpAddr>,
}

impl FailedAuth {
    /// `Some((failures, seconds to wait))` when `ip` failed `limit` times or more this minute.
    pub fn throttled(&self, ip: std::net::IpAddr, limit: u32) -> Option<(u32, u64)> {
        let (failures, wait) = self.windows.current(&ip);
        (failures >= limit).then_some((failures, wait))
    }

    /// Counts one failed authentication from `ip`.
    pub fn failed(&self, ip: std::net::IpAddr) {
        self.windows.add(&ip);
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

/// `(method, path)` of the routes that take large bodies (`api.max_body_bytes`); every other
/// route takes at most `api.max_json_bytes`.
pub const UPLOADS: [(&str, &str); 3] = [
    ("put", "/api/v1/models/{name}/versions/{version}"),
    ("post", "/api/v1/models/{name}/versions/{version}/validate"),
    ("post", "/api/v1/telemetry/import"),
];

/// Middleware: a request with a body gets in only with a valid token (checked before the body
/// is read); enrolment, which carries its token in the body, is the one exception.
pub async fn front_door(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let bodiless = matches!(*request.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if bodiless {
        return next.run(request).await;
    }
    // Who asks comes first (enrolment carries its token in the body: it is the exception).
    if request.uri().path() != "/api/v1/enrol" {
        let authorization = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        if let Err(denied) = state.auth.authenticate(authorization) {
            // `authenticate` takes no rate and checks no role: "who", or a store that cannot
            // say, is all that can fail here.
            let (status, message) = match denied {
                crate::http::auth::Denied::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, m),
                crate::http::auth::Denied::Unauthenticated(m) | crate::http::auth::Denied::Forbidden(m) => {
                    (StatusCode::UNAUTHORIZED, m)
                }
                crate::http::auth::Denied::RateLimited(secs) => {
                    (StatusCode::UNAUTHORIZED, format!("rate limited; retry in {secs} s"))
                }
            };
            state.metrics.api_denied.with_label_values(&[status.as_str()]).inc();
            return ApiError(status, message).into_response();
        }
    }
    // Then a declared length over the route's limit is refused before anything is read (the
    // extractors' own limit would wait for the bytes).
    let route = request.extensions().get::<axum::extract::MatchedPath>().map(|p| p.as_str().to_owned());
    let method = request.method().as_str().to_ascii_lowercase();
    let upload = route.as_deref().is_some_and(|r| UPLOADS.contains(&(method.as_str(), r)));
    let limit = if upload { state.config.api.max_body_bytes } else { state.config.api.max_json_bytes };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        let message = format!("request body is larger than this route's limit of {limit} bytes");
        return ApiError(StatusCode::PAYLOAD_TOO_LARGE, message).into_response();
    }
    next.run(request).await
}

/// Middleware: audits API requests refused for their token, role or rate. Enrolment audits
/// its own refusals (with the device id asked for).
pub async fn audit_denials(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let target = format!("{} {}", request.method(), request.uri().path());
    // Probes and scrapes carry no credentials: a throttled address may still reach them.
    let credentialless = matches!(request.uri().path(), "/healthz" | "/metrics");
    let source = request
        .extensions()
        .get::<outpost_shared::front::Peer>()
        .map(|p| p.0.ip())
        .filter(|_| !credentialless);
    let limit = state.config.api.failed_auth_per_minute;
    if let Some(ip) = source
        && let Some((failures, wait)) = state.failed_auth.throttled(ip, limit)
    {
        state.metrics.auth_throttled.with_label_values(&["failed_auth"]).inc();
        state.metrics.api_denied.with_label_values(&["429"]).inc();
        let detail = format!("{failures} failed authentications from {ip} this minute");
        audit_sampled(&state, "-", "-", "auth.throttled", &target, "refused", &detail).await;
        let message = format!(
            "too many failed authentications from {ip} ({failures} in a minute; the limit is {limit}); retry in {wait} s"
        );
        let mut response = ApiError(StatusCode::TOO_MANY_REQUESTS, message).into_response();
        response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from(wait));
        return response;
    }
    let response = next.run(request).await;
    let status = response.status();
    let enrolment = target.ends_with(" /api/v1/enrol");
    if (status == StatusCode::UNAUTHORIZED || (enrolment && status == StatusCode::FORBIDDEN))
        && let Some(ip) = source
    {
        state.failed_auth.failed(ip);
    }
    if matches!(status.as_u16(), 401 | 403 | 429) && !enrolment {
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

    #[test]
    fn failures_are_counted_per_address_and_a_flood_of_addresses_is_swept() {
        let counts: MinuteCounts<std::net::IpAddr> = MinuteCounts::default();
        let a: std::net::IpAddr = [10, 0, 0, 1].into();
        assert_eq!(counts.current(&a), (0, 0));
        for n in 1..=3 {
            assert_eq!(counts.add(&a), n);
        }
        let (count, wait) = counts.current(&a);
        assert_eq!(count, 3);
        assert!((1..=60).contains(&wait), "{wait}");
        for i in 0..5000u32 {
            counts.add(&std::net::IpAddr::from(i.to_be_bytes()));
        }
        // Nothing expired within the minute, so the map keeps what it has: the sweep only
        // drops finished windows, and the address above still counts.
        assert_eq!(counts.current(&a).0, 3);
    }
}
