//! The coordinator's HTTP API under `/api/v1` (JSON), plus `/healthz` and `/metrics`.
//!
//! Every route, with the role it needs, is listed in [`openapi::ROUTES`], from which
//! `GET /api/v1/openapi.json` is generated (a test checks the router serves each one).
//! Calls carry `Authorization: Bearer <token>` ([`crate::http::auth`]: roles viewer < operator <
//! admin; 401 without a valid token, 403 for a role that may not, 429 over the rate limit).
//! Every mutation is written to the audit log ([`crate::base::audit`]). Errors are
//! `{"error": "…"}` with a status that fits.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::{get, post};
use axum::{Json, Router};
use outpost_shared::protocol::PublicKey;
use outpost_shared::protocol::keys::device_id_of;
use outpost_shared::protocol::transfer::{self, TransferFile};
use serde::{Deserialize, Serialize};

use crate::base::audit::AuditLog;
use crate::base::metrics::Metrics;
use crate::base::store::now_ms;
use crate::config::Config;
use crate::fleet::ca::Authority;
use crate::fleet::desired::{Desired, DesiredRecord, Outgoing};
use crate::fleet::devices::{Counts, DeviceRecord, Devices, TokenRecord, TokenRefused};
use crate::fleet::ingest::{Ingest, Outcome};
use crate::fleet::liveness::Liveness;
use crate::http::auth::{Auth, Denied, Principal, Role};
use crate::models::registry::Registry;
use outpost_shared::protocol::messages::{ModelState, OutboxStats};

pub struct AppState {
    pub rollouts: Arc<crate::ops::rollout::Rollouts>,
    pub alerts: Arc<crate::ops::alerts::AlertEngine>,
    pub retraining: Arc<crate::ops::retraining::Retraining>,
    /// The one way desired states change.
    pub deployer: crate::ops::deploy::Deployer,
    pub config: Config,
    pub devices: Devices,
    pub authority: Arc<Authority>,
    pub ingest: Ingest,
    pub metrics: Metrics,
    pub auth: Auth,
    pub audit: Arc<AuditLog>,
    /// Rate for auditing refusals (denials, refused enrolments) under a flood.
    pub audit_sampler: crate::http::denials::AuditSampler,
    /// Failed authentications per source address (the front door throttles guessing).
    pub failed_auth: crate::http::denials::FailedAuth,
    pub registry: Registry,
    /// The fleet's signed trust root ([`crate::fleet::roots`]).
    pub roots: crate::fleet::roots::TrustRoots,
    pub desired: Desired,
    /// Desired states for the broker link to publish (retained).
    pub outgoing: tokio::sync::mpsc::Sender<Outgoing>,
    /// CA certificate devices use to check the broker (PEM).
    pub broker_ca_pem: String,
    /// The embedded broker's front, to cut off a revoked device at once (`None` with an
    /// external broker, which reads the revocation list instead).
    pub broker_front: Option<Arc<crate::fleet::broker::front::Front>>,
    /// CA certificate devices use to check the API (PEM), when it speaks HTTPS.
    pub api_ca_pem: Option<String>,
    /// Large bodies streamed to disk, and the turn their work waits for.
    pub uploads: crate::http::spool::Uploads,
    /// Where the records live: for a backup's snapshot, and readiness.
    pub store: crate::base::backing::Backing,
    /// Signed-in dashboard browsers.
    pub sessions: crate::http::dashboard::sessions::Sessions,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").finish_non_exhaustive()
    }
}

pub use crate::http::error::ApiError;

pub mod admin;
pub mod deploy;
pub mod monitoring;
pub mod openapi;
pub mod probes;
pub mod registry;
pub mod rollout;
pub mod roots;

/// The device whose client certificate (from the fleet CA, verified by TLS) opened this
/// connection; set by the HTTPS server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerDevice(pub String);

fn json_body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    body.map(|Json(v)| v)
        .map_err(|e| ApiError(e.status(), format!("invalid request body: {}", e.body_text())))
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Checks the caller's token and role (and rate limit).
pub fn authorize(state: &AppState, headers: &HeaderMap, needs: Role) -> Result<Principal, ApiError> {
    let header = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    state.auth.check(header, needs).map_err(|denied| {
        let (status, message) = match denied {
            Denied::Unauthenticated(m) => (StatusCode::UNAUTHORIZED, m),
            Denied::Forbidden(m) => (StatusCode::FORBIDDEN, m),
            Denied::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, m),
            Denied::RateLimited(secs) => (
                StatusCode::TOO_MANY_REQUESTS,
                format!("rate limit exceeded for this token; retry in {secs} s"),
            ),
        };
        state.metrics.api_denied.with_label_values(&[status.as_str()]).inc();
        ApiError(status, message)
    })
}

/// The handler for one documented route; `None` for an entry this build does not serve.
fn handler(method: &str, path: &str) -> Option<axum::routing::MethodRouter<Arc<AppState>>> {
    use axum::routing::{delete, put};
    Some(match (method, path) {
        ("get", "/api/v1/openapi.json") => get(openapi::document),
        ("post", "/api/v1/enrolment-tokens") => post(create_token),
        ("post", "/api/v1/enrol") => post(enrol),
        ("get", "/api/v1/devices") => get(list_devices),
        ("get", "/api/v1/devices/{id}") => get(show_device),
        ("delete", "/api/v1/devices/{id}") => delete(admin::delete_device),
        ("post", "/api/v1/devices/{id}/revoke") => post(admin::revoke_device),
        ("get", "/api/v1/devices/{id}/desired/sealed") => get(deploy::export_desired),
        ("get", "/api/v1/pki/crl") => get(admin::revocation_list),
        ("get", "/api/v1/alerts") => get(list_alerts),
        ("post", "/api/v1/telemetry/import") => post(import_telemetry),
        ("get", "/api/v1/models") => get(registry::list_models),
        ("get", "/api/v1/models/{name}") => get(registry::model_versions),
        ("get", "/api/v1/models/{name}/policy") => get(registry::get_policy),
        ("get", "/api/v1/models/{name}/quality") => get(monitoring::quality),
        ("get", "/api/v1/slo") => get(monitoring::slo_statuses),
        ("get", "/api/v1/models/{name}/data") => get(monitoring::export_data),
        ("post", "/api/v1/models/{name}/retrain") => post(registry::retrain),
        ("post", "/api/v1/models/{name}/rollback") => post(deploy::rollback),
        ("get", "/api/v1/models/{name}/retraining") => get(registry::retraining_runs),
        ("get", "/api/v1/models/{name}/slo") => get(monitoring::get_slo),
        ("put", "/api/v1/models/{name}/slo") => put(monitoring::set_slo),
        ("get", "/api/v1/models/{name}/drift-report") => get(monitoring::drift_report),
        ("get", "/api/v1/models/{name}/versions/{version}/card") => get(monitoring::model_card),
        ("put", "/api/v1/models/{name}/policy") => put(registry::set_policy),
        ("get", "/api/v1/models/{name}/versions/{version}") => get(registry::show_version),
        ("put", "/api/v1/models/{name}/versions/{version}") => put(registry::push),
        ("delete", "/api/v1/models/{name}/versions/{version}") => delete(registry::purge),
        ("post", "/api/v1/models/{name}/versions/{version}/stage") => post(registry::set_stage),
        ("post", "/api/v1/models/{name}/versions/{version}/validate") => post(registry::validate),
        ("get", "/api/v1/models/{name}/versions/{version}/bundle") => get(registry::export_bundle),
        ("get", "/api/v1/artifacts/{sha256}") => get(registry::artifact),
        ("post", "/api/v1/deployments") => post(deploy::deploy),
        ("get", "/api/v1/deployments") => get(deploy::list_desired),
        ("post", "/api/v1/tokens") => post(admin::create_api_token),
        ("get", "/api/v1/tokens") => get(admin::list_api_tokens),
        ("delete", "/api/v1/tokens/{name}") => delete(admin::revoke_api_token),
        ("get", "/api/v1/audit") => get(admin::audit_tail),
        ("get", "/api/v1/audit/verify") => get(admin::audit_verify),
        ("get", "/api/v1/cluster") => get(admin::cluster_status),
        ("get", "/api/v1/admin/backup") => get(admin::backup),
        ("get", "/api/v1/keys") => get(keys),
        ("get", "/api/v1/root") => get(roots::current),
        ("post", "/api/v1/root") => post(roots::update),
        ("get", "/api/v1/root/chain") => get(roots::chain),
        ("post", "/api/v1/root/online-key") => post(roots::next_online_key),
        ("post", "/api/v1/rollouts") => post(rollout::start),
        ("post", "/api/v1/rollouts/plan") => post(rollout::plan),
        ("get", "/api/v1/rollouts") => get(rollout::list),
        ("get", "/api/v1/rollouts/{id}") => get(rollout::show),
        ("post", "/api/v1/rollouts/{id}/{action}") => post(rollout::act),
        ("get", "/api/v1/incidents") => get(rollout::incidents),
        ("get", "/api/v1/incidents/{id}") => get(rollout::incident),
        ("post", "/api/v1/incidents/{id}/close") => post(rollout::close_incident),
        _ => return None,
    })
}

/// The API: every `/api/v1` route is built from [`openapi::ROUTES`], so the served routes
/// and the OpenAPI document cannot drift apart (a unit test checks every entry has its
/// handler); `/healthz`, `/readyz` and `/metrics` sit outside it.
pub fn router(state: Arc<AppState>) -> Router {
    let (upload_limit, json_limit) = (state.config.api.max_body_bytes, state.config.api.max_json_bytes);
    let mut by_path: BTreeMap<&str, axum::routing::MethodRouter<Arc<AppState>>> = BTreeMap::new();
    for route in openapi::ROUTES {
        let Some(h) = handler(route.method, route.path) else {
            tracing::error!(method = route.method, path = route.path, "documented route has no handler");
            continue;
        };
        let upload = crate::http::denials::UPLOADS.contains(&(route.method, route.path));
        let h = h.layer(DefaultBodyLimit::max(if upload { upload_limit } else { json_limit }));
        let merged = match by_path.remove(route.path) {
            Some(existing) => existing.merge(h),
            None => h,
        };
        by_path.insert(route.path, merged);
    }
    let mut router = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(probes::ready))
        .route("/metrics", get(probes::metrics));
    for (path, methods) in by_path {
        router = router.route(path, methods);
    }
    router
        .layer(DefaultBodyLimit::max(json_limit))
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&state), crate::http::denials::front_door))
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&state), crate::http::denials::audit_denials))
        .with_state(Arc::clone(&state))
        .merge(crate::http::dashboard::router(state))
}

/// The coordinator's public keys: what agents list in `registry.trusted_keys`.
async fn keys(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&state, &headers, Role::Viewer)?;
    let (key, online) = (state.authority.release_key(), state.authority.online_key());
    Ok(Json(serde_json::json!({
        "release_key": hex::encode(key.public_key().as_bytes()),
        "key_id": key.key_id(),
        "online_key": hex::encode(online.public_key().as_bytes()),
        "online_key_id": online.key_id(),
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    #[serde(default)]
    labels: BTreeMap<String, String>,
    ttl_secs: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct TokenResponse {
    pub token: String,
    pub expires_at_ms: u64,
    pub labels: BTreeMap<String, String>,
}

fn validate_labels(labels: &BTreeMap<String, String>) -> Result<(), ApiError> {
    if labels.len() > 32 {
        return Err(ApiError::bad_request("at most 32 labels"));
    }
    for (k, v) in labels {
        let ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 63
                && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        };
        if !ok(k) || !ok(v) {
            return Err(ApiError::bad_request(format!(
                "label `{k}={v}`: keys and values must be 1 to 63 characters of letters, digits, `-`, `_` and `.`"
            )));
        }
    }
    Ok(())
}

async fn create_token(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Json<TokenRequest>, JsonRejection>,
) -> Result<Json<TokenResponse>, ApiError> {
    let who = authorize(&state, &headers, Role::Admin)?;
    let request = json_body(body)?;
    validate_labels(&request.labels)?;
    let ttl = request.ttl_secs.unwrap_or(state.config.enrolment.token_ttl_secs);
    if ttl == 0 || ttl > 365 * 86_400 {
        return Err(ApiError::bad_request("ttl_secs must be between 1 and 31536000"));
    }
    let mut secret = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
        .map_err(ApiError::internal)?;
    let token = format!("opt_{}", hex::encode(secret));
    let now = now_ms();
    let record = TokenRecord {
        labels: request.labels.clone(),
        created_at_ms: now,
        expires_at_ms: now + ttl * 1000,
        used_by: None,
        used_at_ms: None,
    };
    state.devices.add_token(&hex::encode(sha256(token.as_bytes())), &record).map_err(ApiError::from)?;
    tracing::info!(labels = ?record.labels, ttl_secs = ttl, "enrolment token created");
    registry::audit(
        &state,
        &who,
        "enrolment_token.create",
        &format!("{:?}", record.labels),
        Ok(&format!("ttl {ttl} s")),
    )
    .await;
    Ok(Json(TokenResponse { token, expires_at_ms: record.expires_at_ms, labels: request.labels }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnrolRequest {
    token: String,
    /// The id the device expects: the coordinator assigns it from `public_key`, and refuses the
    /// request when this names any other (older agents send it; it may be left out).
    #[serde(default)]
    device_id: Option<String>,
    /// Ed25519 public key (hex) the device signs telemetry with.
    public_key: String,
    /// PEM certificate signing request for the device's TLS key.
    csr: String,
}

/// What a device receives at enrolment.
#[derive(Debug, Serialize, Deserialize)]
pub struct EnrolResponse {
    pub device_id: String,
    pub labels: BTreeMap<String, String>,
    pub client_certificate: String,
    /// CA to check the broker's certificate with.
    pub broker_ca: String,
    pub broker_url: String,
    /// The coordinator's Ed25519 public key (hex): acks and desired states are signed with it.
    pub coordinator_public_key: String,
    pub api_url: String,
    /// CA to check the API's certificate with (HTTPS only).
    #[serde(default)]
    pub api_ca: Option<String>,
    /// The current trust root: which keys sign control messages and bundles from now on.
    #[serde(default)]
    pub root: Option<outpost_shared::protocol::root::SignedRoot>,
}

async fn enrol(
    State(state): State<Arc<AppState>>,
    body: Result<Json<EnrolRequest>, JsonRejection>,
) -> Result<Json<EnrolResponse>, ApiError> {
    // CSR signing and the store transaction are blocking work: off the executor.
    // Who asked, for the audit chain: the requested id, and the token by a hash prefix (the
    // token itself is never written anywhere).
    let (asked, actor) = match &body {
        Ok(Json(r)) => (
            // The id its key gives it, else the id it asked for (escaped), else nothing.
            hex::decode(&r.public_key)
                .ok()
                .and_then(|b| PublicKey::from_bytes(&b).ok())
                .map(|k| device_id_of(k.as_bytes()))
                .or_else(|| r.device_id.as_deref().map(outpost_shared::names::shown))
                .unwrap_or_else(|| "-".to_owned()),
            format!("token:{}", &hex::encode(sha256(r.token.trim().as_bytes()))[..12]),
        ),
        Err(_) => ("-".to_owned(), "-".to_owned()),
    };
    let st = Arc::clone(&state);
    let result = registry::blocking(move || enrol_inner(&st, body)).await.and_then(|r| r);
    let label = match &result {
        Ok(_) => "enrolled",
        Err(ApiError(StatusCode::CONFLICT, _)) => "refused",
        Err(ApiError(StatusCode::FORBIDDEN, _)) => "bad_token",
        Err(_) => "invalid",
    };
    state.metrics.enrolments.with_label_values(&[label]).inc();
    match &result {
        // A success consumed a token: always audited.
        Ok(r) => {
            let detail = format!("enrolled with labels {:?}", r.labels);
            state
                .audit
                .append_or_count(
                    &state.metrics,
                    &actor,
                    "device",
                    "device.enrol",
                    &r.device_id,
                    "ok",
                    &detail,
                )
                .await;
        }
        Err(e) => {
            crate::http::denials::audit_sampled(
                &state,
                &actor,
                "device",
                "device.enrol",
                &asked,
                label,
                &e.1,
            )
            .await;
        }
    }
    result.map(Json)
}

fn enrol_inner(
    state: &AppState,
    body: Result<Json<EnrolRequest>, JsonRejection>,
) -> Result<EnrolResponse, ApiError> {
    let request = json_body(body)?;
    let public =
        hex::decode(&request.public_key).ok().and_then(|b| PublicKey::from_bytes(&b).ok()).ok_or_else(
            || ApiError::bad_request("public_key must be 64 hex characters (an Ed25519 public key)"),
        )?;
    // The id is the coordinator's to give, from the key: a device cannot name itself
    // `outpost-coordinator` or take another device's id.
    let device_id = device_id_of(public.as_bytes());
    if let Some(asked) = request.device_id.as_deref().filter(|asked| *asked != device_id) {
        return Err(ApiError::bad_request(format!(
            "device_id `{}` was refused: the coordinator assigns device ids from the public key, and this key's is `{device_id}` (leave device_id out to take it)",
            outpost_shared::names::shown(asked)
        )));
    }
    if request.csr.len() > 16 * 1024 {
        return Err(ApiError::bad_request("csr is larger than 16 KiB"));
    }
    // Sign the CSR first: a bad CSR must not burn the token.
    let (certificate, serial) = state
        .authority
        .issue_device_certificate(&request.csr, &device_id, state.config.enrolment.certificate_days)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let token_hash = hex::encode(sha256(request.token.trim().as_bytes()));
    let outcome = state
        .devices
        .enrol(&token_hash, |token| DeviceRecord {
            cert_serial: Some(serial.clone()),
            ..DeviceRecord::new(&device_id, public.as_bytes(), token.labels.clone())
        })
        .map_err(ApiError::from)?;
    let device = match outcome {
        Ok(device) => device,
        Err(refused @ (TokenRefused::Unknown | TokenRefused::Used | TokenRefused::Expired)) => {
            tracing::warn!(device = device_id, reason = %refused, "enrolment refused");
            return Err(ApiError(StatusCode::FORBIDDEN, refused.to_string()));
        }
        Err(refused) => {
            tracing::warn!(device = device_id, reason = %refused, "enrolment refused");
            return Err(ApiError(StatusCode::CONFLICT, refused.to_string()));
        }
    };
    tracing::info!(device = device.id, key_id = device.key_id, labels = ?device.labels, "device enrolled");
    Ok(EnrolResponse {
        device_id: device.id,
        labels: device.labels,
        client_certificate: certificate,
        broker_ca: state.broker_ca_pem.clone(),
        broker_url: state.config.advertised_broker_url(),
        // The online key: it signs this device's desired states and acks (never bundles).
        coordinator_public_key: hex::encode(state.authority.online_key().public_key().as_bytes()),
        api_url: state.config.api_url(),
        api_ca: state.api_ca_pem.clone(),
        root: Some(state.roots.current().map_err(ApiError::internal)?),
    })
}

/// A device as the fleet view shows it.
#[derive(Debug, Serialize, Deserialize)]
pub struct DeviceView {
    pub id: String,
    pub labels: BTreeMap<String, String>,
    /// `online`, `stale`, `offline`, `never_seen` or `revoked`.
    pub status: String,
    pub last_seen_ms: Option<u64>,
    pub presence: Option<String>,
    pub highest_seq: Option<u64>,
    /// Envelopes up to this seq were removed by retention (`retention.envelope_days`).
    #[serde(default)]
    pub pruned_through_seq: Option<u64>,
    pub backlog: OutboxStats,
    pub models: Vec<ModelState>,
    pub agent_version: Option<String>,
    pub counts: Counts,
    pub key_id: String,
    pub enrolled_at_ms: u64,
    /// What the device should run (absent until a first deployment targets it).
    #[serde(default)]
    pub desired: Option<DesiredRecord>,
    /// Its newest events, e.g. a version it refused and why.
    #[serde(default)]
    pub recent_events: Vec<outpost_shared::protocol::messages::Event>,
    /// The newest drift verdicts per model (features and predictions against the bundle's
    /// baseline), and when the agent computed them.
    #[serde(default)]
    pub drift: Vec<outpost_shared::protocol::messages::ModelDrift>,
    #[serde(default)]
    pub drift_at_ms: Option<u64>,
    /// When and by whom it was revoked (`status` is then `revoked`).
    #[serde(default)]
    pub revoked: Option<crate::fleet::devices::Revocation>,
    /// Encryption at rest on the device (`on (…)` or `off`), from its last start.
    #[serde(default)]
    pub at_rest: Option<String>,
    /// Set while the device reports `stale-control`: its desired state expired and nothing
    /// newer reached it.
    #[serde(default)]
    pub control_stale: Option<crate::fleet::devices::StaleControl>,
    /// The coordinator's clock minus the device's, in ms (positive: the device is behind).
    #[serde(default)]
    pub clock_skew_ms: Option<i64>,
    /// The trust root version the device last said it holds.
    #[serde(default)]
    pub root_version: Option<u64>,
}

fn view(state: &AppState, d: DeviceRecord, now: u64) -> DeviceView {
    let config = &state.config;
    DeviceView {
        desired: state.desired.get(&d.id).ok().flatten(),
        status: match &d.revoked {
            Some(_) => "revoked".to_owned(),
            None => Liveness::of(&d, &config.fleet, now).as_str().to_owned(),
        },
        revoked: d.revoked.clone(),
        id: d.id,
        labels: d.labels,
        last_seen_ms: d.last_seen_ms,
        presence: d.presence,
        highest_seq: d.highest_seq,
        pruned_through_seq: d.pruned_through_seq,
        backlog: d.backlog,
        models: d.models,
        agent_version: d.agent_version,
        counts: d.counts,
        key_id: d.key_id,
        enrolled_at_ms: d.enrolled_at_ms,
        recent_events: d.recent_events,
        drift: d.drift,
        drift_at_ms: d.drift_at_ms,
        at_rest: d.at_rest,
        control_stale: d.control_stale,
        clock_skew_ms: d.clock_skew_ms,
        root_version: d.root_version,
    }
}

async fn list_devices(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Vec<DeviceView>>, ApiError> {
    authorize(&state, &headers, Role::Viewer)?;
    let now = now_ms();
    let devices = state.devices.every().map_err(ApiError::from)?;
    Ok(Json(devices.into_iter().map(|d| view(&state, d, now)).collect()))
}

async fn list_alerts(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Vec<crate::ops::alerts::AlertRecord>>, ApiError> {
    authorize(&state, &headers, Role::Viewer)?;
    let engine = Arc::clone(&state.alerts);
    let alerts = tokio::task::spawn_blocking(move || engine.list())
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::from)?;
    Ok(Json(alerts))
}

async fn show_device(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<DeviceView>, ApiError> {
    authorize(&state, &headers, Role::Viewer)?;
    let device = state
        .devices
        .get(&id)
        .map_err(ApiError::from)?
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no device `{id}`")))?;
    Ok(Json(view(&state, device, now_ms())))
}

/// What an import did.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ImportReport {
    pub device: Option<String>,
    pub envelopes: u64,
    pub stored: u64,
    pub duplicates: u64,
    pub rejected: BTreeMap<String, u64>,
    /// The ack file for the agent (`outpost-agent import-ack`), hex-encoded.
    pub ack_file: String,
}

async fn import_telemetry(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Json<ImportReport>, ApiError> {
    let who = authorize(&state, &headers, Role::Admin)?;
    let mut spooled = state.uploads.receive(body, state.config.api.max_body_bytes).await?;
    let turn = state.uploads.work().await?;
    let ingest = state.ingest.clone();
    let report = tokio::task::spawn_blocking(move || {
        let _turn = turn;
        let bytes = spooled.read_all().map_err(ApiError::internal)?;
        let file = transfer::decode_telemetry(&bytes).map_err(|e| ApiError::bad_request(e.to_string()))?;
        drop(bytes);
        import(&ingest, file).map_err(ApiError::from)
    })
    .await
    .map_err(ApiError::internal)??;
    tracing::info!(
        device = ?report.device,
        stored = report.stored,
        duplicates = report.duplicates,
        rejected = ?report.rejected,
        "telemetry file imported"
    );
    let detail =
        format!("stored {}, duplicates {}, rejected {:?}", report.stored, report.duplicates, report.rejected);
    registry::audit(&state, &who, "telemetry.import", report.device.as_deref().unwrap_or("-"), Ok(&detail))
        .await;
    Ok(Json(report))
}

fn import(ingest: &Ingest, file: TransferFile) -> Result<ImportReport, crate::base::store::StoreError> {
    let mut report = ImportReport::default();
    let mut acks: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (device, outcome) in ingest.ingest_from_file(&file.envelopes)? {
        report.envelopes += 1;
        match (&device, &outcome) {
            (Some(device), Outcome::Stored { seq }) => {
                report.stored += 1;
                acks.entry(device.clone()).or_default().push(*seq);
            }
            (Some(device), Outcome::Duplicate { seq }) => {
                report.duplicates += 1;
                acks.entry(device.clone()).or_default().push(*seq);
            }
            _ => *report.rejected.entry(outcome.label().to_owned()).or_insert(0) += 1,
        }
    }
    ingest.devices().flush()?;
    let device = acks.keys().next().cloned().unwrap_or(file.device);
    let mut envelopes = Vec::new();
    for (_, wires) in ingest.seal_acks_many(acks.into_iter().collect())? {
        envelopes.extend(wires);
    }
    report.device = Some(device.clone());
    let ack_file = transfer::encode_acks(&TransferFile { device, created_at_ms: now_ms(), envelopes });
    report.ack_file = hex::encode(ack_file);
    Ok(report)
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_documented_route_has_a_handler_and_none_repeats() {
        let mut seen = std::collections::HashSet::new();
        for route in super::openapi::ROUTES {
            assert!(
                super::handler(route.method, route.path).is_some(),
                "{} {} has no handler",
                route.method,
                route.path
            );
            assert!(
                seen.insert((route.method, route.path)),
                "{} {} is listed twice",
                route.method,
                route.path
            );
        }
    }
}
