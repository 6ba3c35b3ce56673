//! Registry, validation gate, deployments, artifacts, tokens and audit routes.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::{ApiError, AppState, authorize, json_body};
use crate::base::store::now_ms;
use crate::fleet::desired::DesiredRecord;
use crate::http::auth::{ApiToken, Principal, Role};
use crate::models::registry::{Stage, VersionRecord};
use crate::models::validation::{self, Policy, ValidateOptions};
use crate::ops::deploy::{DeployRequest, DeployResponse};

/// Writes an audit entry; a failure to audit is logged loudly (the action already happened).
pub(crate) fn audit(
    state: &AppState,
    who: &Principal,
    action: &str,
    target: &str,
    result: Result<&str, &str>,
) {
    let (outcome, detail) = match result {
        Ok(detail) => ("ok", detail),
        Err(detail) => ("refused", detail),
    };
    if let Err(e) = state.audit.record(&who.name, who.role.as_str(), action, target, outcome, detail) {
        tracing::error!(error = %e, action, target, "CANNOT WRITE THE AUDIT LOG");
        state.metrics.audit_failures.inc();
    }
}

/// Runs `f`, auditing its outcome.
pub(crate) fn audited<T>(
    state: &AppState,
    who: &Principal,
    action: &str,
    target: &str,
    result: Result<(T, String), ApiError>,
) -> Result<T, ApiError> {
    match result {
        Ok((value, detail)) => {
            audit(state, who, action, target, Ok(&detail));
            Ok(value)
        }
        Err(e) => {
            audit(state, who, action, target, Err(&e.1));
            Err(e)
        }
    }
}

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(ApiError::internal)
}

pub async fn push(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path((name, version)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let who = authorize(&state, &headers, Role::Operator)?;
    let target = format!("{name}@{version}");
    let st = Arc::clone(&state);
    let by = who.name.clone();
    let result = blocking(move || {
        let parsed =
            outpost_shared::bundle::Bundle::parse(&body).map_err(|e| ApiError::bad_request(e.to_string()))?;
        if parsed.manifest.name != name || parsed.manifest.version != version {
            return Err(ApiError::bad_request(format!(
                "the bundle is {}, not {name}@{version}",
                parsed.manifest.id()
            )));
        }
        let pushed = st.registry.push(&body, &by, st.authority.signing_key())?;
        let detail = if pushed.created { "registered" } else { "already registered with the same model" };
        Ok((pushed, detail.to_owned()))
    })
    .await?;
    let pushed = audited(&state, &who, "model.push", &target, result)?;
    let status = if pushed.created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(pushed)).into_response())
}

pub async fn list_models(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Vec<VersionRecord>>, ApiError> {
    authorize(&state, &headers, Role::Viewer)?;
    Ok(Json(state.registry.list()?))
}

pub async fn model_versions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Vec<VersionRecord>>, ApiError> {
    authorize(&state, &headers, Role::Viewer)?;
    let versions = state.registry.versions(&name)?;
    if versions.is_empty() {
        return Err(ApiError(StatusCode::NOT_FOUND, format!("no model `{name}` in the registry")));
    }
    Ok(Json(versions))
}

pub async fn show_version(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<VersionRecord>, ApiError> {
    authorize(&state, &headers, Role::Viewer)?;
    Ok(Json(state.registry.get(&name, &version)?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageRequest {
    stage: String,
    #[serde(default)]
    note: String,
}

pub async fn set_stage(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path((name, version)): Path<(String, String)>,
    body: Result<Json<StageRequest>, JsonRejection>,
) -> Result<Json<VersionRecord>, ApiError> {
    let who = authorize(&state, &headers, Role::Operator)?;
    let target = format!("{name}@{version}");
    let result = (|| {
        let request = json_body(body)?;
        let stage = Stage::parse(&request.stage).map_err(ApiError::bad_request)?;
        let record = state.registry.transition(&name, &version, stage, &who.name, &request.note)?;
        Ok((record, format!("stage {}", stage.as_str())))
    })();
    audited(&state, &who, "model.stage", &target, result).map(Json)
}

pub async fn purge(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<VersionRecord>, ApiError> {
    let who = authorize(&state, &headers, Role::Admin)?;
    let result =
        state.registry.purge(&name, &version).map(|r| (r, "purged".to_owned())).map_err(ApiError::from);
    audited(&state, &who, "model.purge", &format!("{name}@{version}"), result).map(Json)
}

pub async fn validate(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path((name, version)): Path<(String, String)>,
    query: Result<Query<ValidateOptions>, axum::extract::rejection::QueryRejection>,
    body: Bytes,
) -> Result<Json<validation::Report>, ApiError> {
    let who = authorize(&state, &headers, Role::Operator)?;
    let target = format!("{name}@{version}");
    let st = Arc::clone(&state);
    let by = who.name.clone();
    let result = blocking(move || {
        let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
        st.registry.validate(&name, &version, &body, &q, &by).map_err(ApiError::from)
    })
    .await?;
    audited(&state, &who, "model.validate", &target, result).map(Json)
}

/// `?by=` and `?since_ms=` of the quality view.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QualityQuery {
    pub by: Option<String>,
    pub since_ms: Option<u64>,
}

pub async fn quality(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    query: Result<Query<QualityQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<crate::monitoring::quality::QualityReport>, ApiError> {
    authorize(&state, &headers, Role::Viewer)?;
    let Query(query) = query.map_err(|e| ApiError::bad_request(format!("quality query: {e}")))?;
    if query.by.as_deref().is_some_and(|b| b.is_empty() || b.len() > 64) {
        return Err(ApiError::bad_request("`by` must name a device label, e.g. `site`"));
    }
    let state2 = Arc::clone(&state);
    let report = tokio::task::spawn_blocking(move || {
        state2.ingest.labels().quality(&name, query.since_ms, query.by.as_deref())
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    Ok(Json(report))
}

/// `?format=` and `?since_ms=` of the drift report.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportQuery {
    pub format: Option<String>,
    pub since_ms: Option<u64>,
}

pub async fn model_card(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path((name, version)): Path<(String, String)>,
    query: Result<Query<ReportQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, Role::Viewer)?;
    let Query(query) = query.map_err(|e| ApiError::bad_request(format!("card query: {e}")))?;
    let format = query.format.unwrap_or_else(|| "md".into());
    if !["md", "html"].contains(&format.as_str()) {
        return Err(ApiError::bad_request(format!("format `{format}`: use md or html")));
    }
    let body = card(&state, name, version, format == "html").await?;
    let content_type = if body.starts_with("<!doctype") {
        "text/html; charset=utf-8"
    } else {
        "text/markdown; charset=utf-8"
    };
    Ok(([(header::CONTENT_TYPE, content_type)], body).into_response())
}

/// The model card of `name@version` as HTML or Markdown: the bundle's card text and facts,
/// validation metrics per class and segment, fleet quality per device label, drift history.
pub(crate) async fn card(
    state: &Arc<AppState>,
    name: String,
    version: String,
    html: bool,
) -> Result<String, ApiError> {
    let st = Arc::clone(state);
    blocking(move || -> Result<String, ApiError> {
        let record = st.registry.get(&name, &version)?;
        let validation =
            record.validation.clone().and_then(|v| serde_json::from_value::<validation::Report>(v).ok());
        // Fleet quality split by every device label key in use.
        let keys: std::collections::BTreeSet<String> = st
            .store
            .devices()
            .map_err(ApiError::internal)?
            .into_iter()
            .flat_map(|d| d.labels.into_keys())
            .collect();
        let labels = st.ingest.labels();
        let mut quality = Vec::new();
        if keys.is_empty() {
            quality.push(labels.quality(&name, None, None).map_err(ApiError::internal)?);
        }
        for key in &keys {
            quality.push(labels.quality(&name, None, Some(key)).map_err(ApiError::internal)?);
        }
        let drift = crate::monitoring::report::DriftHistory::build_for(
            st.ingest.drift_history(),
            &name,
            0,
            Some(&version),
        )
        .map_err(ApiError::internal)?;
        let data =
            crate::monitoring::card::CardData { record: &record, validation, quality, drift: Some(drift) };
        Ok(if html {
            crate::monitoring::card::render_html(&data)
        } else {
            crate::monitoring::card::render_markdown(&data)
        })
    })
    .await?
}

pub async fn drift_report(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    query: Result<Query<ReportQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, Role::Viewer)?;
    let Query(query) = query.map_err(|e| ApiError::bad_request(format!("report query: {e}")))?;
    let format = query.format.unwrap_or_else(|| "md".into());
    if !["md", "html", "json"].contains(&format.as_str()) {
        return Err(ApiError::bad_request(format!("format `{format}`: use md, html or json")));
    }
    let since = query.since_ms.unwrap_or_else(|| now_ms().saturating_sub(7 * 86_400_000));
    let state2 = Arc::clone(&state);
    let history = tokio::task::spawn_blocking(move || {
        crate::monitoring::report::DriftHistory::build(state2.ingest.drift_history(), &name, since)
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    let (content_type, body) = match format.as_str() {
        "html" => ("text/html; charset=utf-8", crate::monitoring::report::render_html(&history)),
        "json" => ("application/json", serde_json::to_string_pretty(&history).unwrap_or_default()),
        _ => ("text/markdown; charset=utf-8", crate::monitoring::report::render_markdown(&history)),
    };
    Ok(([(header::CONTENT_TYPE, content_type)], body).into_response())
}

/// What a rollback did.
#[derive(Debug, Serialize, Deserialize)]
pub struct RollbackResponse {
    pub model: String,
    pub from: String,
    pub to: String,
    pub devices: Vec<String>,
}

/// One command back to the last good version: the production version before the current one
/// goes to every device (and becomes production again; the current one is archived).
pub async fn rollback(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<RollbackResponse>, ApiError> {
    let who = authorize(&state, &headers, Role::Operator)?;
    let result = async {
        let history = state.registry.production_history(&name)?;
        let current = state
            .registry
            .production(&name)?
            .ok_or_else(|| ApiError(StatusCode::CONFLICT, format!("`{name}` has no production version")))?;
        let previous = history.into_iter().find(|r| r.version != current.version).ok_or_else(|| {
            ApiError(
                StatusCode::CONFLICT,
                format!("`{name}` has no earlier production version to roll back to"),
            )
        })?;
        let request = DeployRequest {
            model: name.clone(),
            version: previous.version.clone(),
            selector: BTreeMap::new(),
            devices: Vec::new(),
            slot: None,
        };
        let (deployed, _) = state.deployer.deploy(&request, &who.name).await?;
        let detail =
            format!("{} -> {} on {} device(s)", current.version, previous.version, deployed.devices.len());
        let response = RollbackResponse {
            model: name.clone(),
            from: current.version,
            to: previous.version,
            devices: deployed.devices,
        };
        Ok((response, detail))
    }
    .await;
    audited(&state, &who, "rollback", &name, result).map(Json)
}

pub async fn retrain(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let who = authorize(&state, &headers, Role::Operator)?;
    let result = crate::ops::retraining::start(&state.retraining, &name, "manual")
        .map(|run| (run.clone(), run.id))
        .map_err(ApiError::from);
    let run = audited(&state, &who, "model.retrain", &name, result)?;
    Ok((StatusCode::ACCEPTED, Json(run)).into_response())
}

pub async fn retraining_runs(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Vec<crate::ops::retraining::RunRecord>>, ApiError> {
    authorize(&state, &headers, Role::Viewer)?;
    Ok(Json(state.retraining.runs(&name)))
}

/// `?since_ms=` and `?labelled_only=` of a data export.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportQuery {
    pub since_ms: Option<u64>,
    pub labelled_only: Option<bool>,
}

/// The CSV of a data export (operator: it holds model inputs).
pub async fn export_data(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    query: Result<Query<ExportQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, Role::Operator)?;
    let Query(query) = query.map_err(|e| ApiError::bad_request(format!("export query: {e}")))?;
    let state2 = Arc::clone(&state);
    let (csv, summary) = tokio::task::spawn_blocking(move || {
        let names = |version: &str| {
            state2.registry.get(&name, version).map(|r| r.manifest.baseline_features).unwrap_or_default()
        };
        state2.ingest.predictions().export_csv(
            state2.ingest.labels(),
            &name,
            query.since_ms.unwrap_or(0),
            query.labelled_only.unwrap_or(false),
            &names,
        )
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    let summary = serde_json::to_string(&summary).unwrap_or_default();
    let headers = [
        (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
        (header::HeaderName::from_static("x-outpost-export"), summary),
    ];
    Ok((headers, csv).into_response())
}

pub async fn slo_statuses(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<BTreeMap<String, crate::monitoring::slo::SloStatus>>, ApiError> {
    authorize(&state, &headers, Role::Viewer)?;
    let state2 = Arc::clone(&state);
    let statuses =
        tokio::task::spawn_blocking(move || state2.ingest.slos().statuses(state2.ingest.labels(), now_ms()))
            .await
            .map_err(ApiError::internal)?
            .map_err(ApiError::internal)?;
    Ok(Json(statuses))
}

pub async fn get_slo(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<crate::monitoring::slo::SloStatus>, ApiError> {
    authorize(&state, &headers, Role::Viewer)?;
    let state2 = Arc::clone(&state);
    let status =
        tokio::task::spawn_blocking(move || -> Result<crate::monitoring::slo::SloStatus, ApiError> {
            let slos = state2.ingest.slos();
            let spec = slos.get(&name).map_err(ApiError::internal)?.ok_or_else(|| {
                ApiError(StatusCode::NOT_FOUND, format!("model `{name}` has no objectives (PUT them first)"))
            })?;
            slos.status(state2.ingest.labels(), &name, &spec, now_ms()).map_err(ApiError::internal)
        })
        .await
        .map_err(ApiError::internal)??;
    Ok(Json(status))
}

pub async fn set_slo(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Result<Json<crate::monitoring::slo::SloSpec>, JsonRejection>,
) -> Result<Json<crate::monitoring::slo::SloSpec>, ApiError> {
    let who = authorize(&state, &headers, Role::Operator)?;
    let result = (|| {
        let spec = json_body(body)?;
        spec.validate().map_err(ApiError::bad_request)?;
        state.ingest.slos().set(&name, &spec).map_err(ApiError::internal)?;
        let detail = serde_json::to_string(&spec).unwrap_or_default();
        Ok((spec, detail))
    })();
    audited(&state, &who, "slo.set", &name, result).map(Json)
}

pub async fn get_policy(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Policy>, ApiError> {
    authorize(&state, &headers, Role::Viewer)?;
    Ok(Json(state.registry.policy(&name)?))
}

pub async fn set_policy(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Result<Json<Policy>, JsonRejection>,
) -> Result<Json<Policy>, ApiError> {
    let who = authorize(&state, &headers, Role::Operator)?;
    let result = (|| {
        let policy = json_body(body)?;
        policy.validate().map_err(ApiError::bad_request)?;
        state.registry.set_policy(&name, &policy)?;
        let detail = serde_json::to_string(&policy).unwrap_or_default();
        Ok((policy, detail))
    })();
    audited(&state, &who, "model.policy", &name, result).map(Json)
}

pub async fn export_bundle(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path((name, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, Role::Operator)?;
    let record = state.registry.get(&name, &version)?;
    let st = Arc::clone(&state);
    let bytes = blocking(move || st.registry.artifact(&record.bundle_sha256)).await??;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes.to_vec()).into_response())
}

/// `GET /api/v1/artifacts/{sha256}`: a signed bundle by content address, with `Range`
/// support so an interrupted download resumes. Over HTTPS the caller is an enrolled device
/// (its client certificate, verified by TLS) or holds an operator token; on a loopback-only
/// plain-HTTP API the address itself is the capability.
pub async fn artifact(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    device: Option<axum::Extension<super::PeerDevice>>,
    Path(sha256): Path<String>,
) -> Result<Response, ApiError> {
    if state.api_ca_pem.is_some() {
        let enrolled = match &device {
            Some(axum::Extension(super::PeerDevice(id))) => {
                state.store.device(id).map_err(ApiError::internal)?.is_some()
            }
            None => false,
        };
        if !enrolled {
            authorize(&state, &headers, Role::Operator)
                .map_err(|e| ApiError(e.0, format!("{} (devices present their client certificate)", e.1)))?;
        }
    }
    let st = Arc::clone(&state);
    let bytes = blocking(move || st.registry.artifact(&sha256)).await??;
    state.metrics.artifact_requests.inc();
    let total = bytes.len() as u64;
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok()).map(str::trim);
    let Some(range) = range else {
        state.metrics.artifact_bytes.inc_by(total);
        return Ok((
            [(header::CONTENT_TYPE, "application/octet-stream"), (header::ACCEPT_RANGES, "bytes")],
            Bytes::from_owner(Shared(bytes)),
        )
            .into_response());
    };
    let (start, end) = parse_range(range, total).ok_or_else(|| {
        ApiError(StatusCode::RANGE_NOT_SATISFIABLE, format!("range `{range}` does not fit {total} bytes"))
    })?;
    let part = Bytes::from_owner(Shared(bytes)).slice(start as usize..=end as usize);
    state.metrics.artifact_bytes.inc_by(part.len() as u64);
    Ok((
        StatusCode::PARTIAL_CONTENT,
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::ACCEPT_RANGES, "bytes".to_owned()),
            (header::CONTENT_RANGE, format!("bytes {start}-{end}/{total}")),
        ],
        part,
    )
        .into_response())
}

/// A cached artifact handed to the response body without a copy.
struct Shared(Arc<Vec<u8>>);

impl AsRef<[u8]> for Shared {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// `bytes=a-b`, `bytes=a-` or `bytes=-n` (one range).
fn parse_range(range: &str, total: u64) -> Option<(u64, u64)> {
    let spec = range.strip_prefix("bytes=")?;
    if spec.contains(',') || total == 0 {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().ok()?;
            (total.saturating_sub(n), total - 1)
        }
        (a, "") => (a.parse().ok()?, total - 1),
        (a, b) => (a.parse().ok()?, b.parse::<u64>().ok()?.min(total - 1)),
    };
    (start <= end && start < total).then_some((start, end))
}

pub async fn deploy(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Json<DeployRequest>, JsonRejection>,
) -> Result<Json<DeployResponse>, ApiError> {
    let who = authorize(&state, &headers, Role::Operator)?;
    let request = json_body(body)?;
    let target = format!("{}@{}", request.model, request.version);
    let result = state.deployer.deploy(&request, &who.name).await.map_err(ApiError::from);
    audited(&state, &who, "deploy", &target, result).map(Json)
}

pub async fn list_desired(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<BTreeMap<String, DesiredRecord>>, ApiError> {
    authorize(&state, &headers, Role::Viewer)?;
    Ok(Json(state.desired.all().into_iter().collect()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenCreate {
    name: String,
    role: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct CreatedToken {
    pub name: String,
    pub role: Role,
    pub token: String,
}

pub async fn create_api_token(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Json<TokenCreate>, JsonRejection>,
) -> Result<Json<CreatedToken>, ApiError> {
    let who = authorize(&state, &headers, Role::Admin)?;
    let request = json_body(body)?;
    let result = (|| {
        let role = Role::parse(&request.role).map_err(ApiError::bad_request)?;
        let token = state.auth.create(&request.name, role, &who.name).map_err(ApiError::bad_request)?;
        Ok((CreatedToken { name: request.name.clone(), role, token }, format!("role {}", role.as_str())))
    })();
    audited(&state, &who, "token.create", &request.name, result).map(Json)
}

pub async fn list_api_tokens(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Vec<ApiToken>>, ApiError> {
    authorize(&state, &headers, Role::Admin)?;
    Ok(Json(state.auth.list().map_err(ApiError::internal)?))
}

pub async fn revoke_api_token(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let who = authorize(&state, &headers, Role::Admin)?;
    let result = match state.auth.revoke(&name) {
        Ok(true) => Ok((serde_json::json!({"revoked": name}), "revoked".to_owned())),
        Ok(false) => Err(ApiError(StatusCode::NOT_FOUND, format!("no token named `{name}`"))),
        Err(e) => Err(ApiError::internal(e)),
    };
    audited(&state, &who, "token.revoke", &name, result).map(Json)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    limit: Option<usize>,
}

pub async fn audit_tail(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Vec<crate::base::audit::AuditEntry>>, ApiError> {
    authorize(&state, &headers, Role::Admin)?;
    Ok(Json(state.audit.tail(q.limit.unwrap_or(100).min(10_000)).map_err(ApiError::internal)?))
}

#[derive(Debug, Serialize, Deserialize)]
pub struct AuditVerdict {
    pub ok: bool,
    pub entries: u64,
    pub problem: Option<String>,
    pub checked_at_ms: u64,
}

pub async fn audit_verify(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<AuditVerdict>, ApiError> {
    authorize(&state, &headers, Role::Admin)?;
    let st = Arc::clone(&state);
    let verdict = blocking(move || st.audit.verify()).await?;
    Ok(Json(match verdict {
        Ok(entries) => AuditVerdict { ok: true, entries, problem: None, checked_at_ms: now_ms() },
        Err(problem) => {
            AuditVerdict { ok: false, entries: 0, problem: Some(problem), checked_at_ms: now_ms() }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn ranges_resume_downloads() {
        assert_eq!(parse_range("bytes=0-9", 100), Some((0, 9)));
        assert_eq!(parse_range("bytes=50-", 100), Some((50, 99)));
        assert_eq!(parse_range("bytes=-10", 100), Some((90, 99)));
        assert_eq!(parse_range("bytes=90-500", 100), Some((90, 99)));
        assert_eq!(parse_range("bytes=100-", 100), None);
        assert_eq!(parse_range("bytes=5-1", 100), None);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), None);
        assert_eq!(parse_range("items=0-1", 100), None);
    }
}
