//! Registry routes: push, versions, stages, purge, the validation gate, policies, bundles and
//! artifacts; and the audit helpers every mutating route uses.

use std::sync::Arc;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{ApiError, AppState, authorize, json_body};
use crate::http::auth::{Principal, Role};
use crate::models::registry::{Stage, VersionRecord};
use crate::models::validation::{self, Policy, ValidateOptions};

/// Writes an audit entry; a failure to audit is logged loudly (the action already happened).
pub(crate) async fn audit(
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
    state
        .audit
        .append_or_count(&state.metrics, &who.name, who.role.as_str(), action, target, outcome, detail)
        .await;
}

/// Runs `f`, auditing its outcome.
pub(crate) async fn audited<T>(
    state: &AppState,
    who: &Principal,
    action: &str,
    target: &str,
    result: Result<(T, String), ApiError>,
) -> Result<T, ApiError> {
    match result {
        Ok((value, detail)) => {
            audit(state, who, action, target, Ok(&detail)).await;
            Ok(value)
        }
        Err(e) => {
            audit(state, who, action, target, Err(&e.1)).await;
            Err(e)
        }
    }
}

/// The shape of a mutating route: check the caller's role, run `work` on the blocking pool (it
/// answers the value and a one-line detail for the audit log), audit the outcome either way.
pub(crate) async fn mutation<T: Send + 'static>(
    state: &Arc<AppState>,
    headers: &HeaderMap,
    needs: Role,
    action: &str,
    target: &str,
    work: impl FnOnce(&AppState, &Principal) -> Result<(T, String), ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let who = authorize(state, headers, needs)?;
    let (st, caller) = (Arc::clone(state), who.clone());
    let result = blocking(move || work(&st, &caller)).await?;
    audited(state, &who, action, target, result).await
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
    body: Body,
) -> Result<Response, ApiError> {
    let who = authorize(&state, &headers, Role::Operator)?;
    let target = format!("{name}@{version}");
    let spooled = state.uploads.receive(body, state.config.api.max_body_bytes).await?;
    let turn = state.uploads.work().await?;
    let st = Arc::clone(&state);
    let by = who.name.clone();
    let result = blocking(move || {
        let (_turn, mut spooled) = (turn, spooled);
        let len = spooled.len();
        let parsed = outpost_shared::bundle::Bundle::read(spooled.reader().map_err(ApiError::internal)?, len)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        if parsed.manifest.name != name || parsed.manifest.version != version {
            return Err(ApiError::bad_request(format!(
                "the bundle is {}, not {name}@{version}",
                parsed.manifest.id()
            )));
        }
        let pushed = st.registry.push_bundle(parsed, &by, st.authority.release_key())?;
        let detail = if pushed.created { "registered" } else { "already registered with the same model" };
        Ok((pushed, detail.to_owned()))
    })
    .await?;
    let pushed = audited(&state, &who, "model.push", &target, result).await?;
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
    let target = format!("{name}@{version}");
    mutation(&state, &headers, Role::Operator, "model.stage", &target, move |st, who| {
        let request = json_body(body)?;
        let stage = Stage::parse(&request.stage).map_err(|e| ApiError::bad_request(e.to_string()))?;
        let record = st.registry.transition(&name, &version, stage, &who.name, &request.note)?;
        Ok((record, format!("stage {}", stage.as_str())))
    })
    .await
    .map(Json)
}

pub async fn purge(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<VersionRecord>, ApiError> {
    let target = format!("{name}@{version}");
    mutation(&state, &headers, Role::Admin, "model.purge", &target, move |st, _| {
        Ok((st.registry.purge(&name, &version)?, "purged".to_owned()))
    })
    .await
    .map(Json)
}

pub async fn validate(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path((name, version)): Path<(String, String)>,
    query: Result<Query<ValidateOptions>, axum::extract::rejection::QueryRejection>,
    body: Body,
) -> Result<Json<validation::Report>, ApiError> {
    let target = format!("{name}@{version}");
    let who = authorize(&state, &headers, Role::Operator)?;
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let spooled = state.uploads.receive(body, state.config.api.max_body_bytes).await?;
    let turn = state.uploads.work().await?;
    let (st, by) = (Arc::clone(&state), who.name.clone());
    let result = blocking(move || {
        let (_turn, mut spooled) = (turn, spooled);
        let dataset = spooled.read_all().map_err(ApiError::internal)?;
        Ok(st.registry.validate(&name, &version, &dataset, &q, &by)?)
    })
    .await?;
    audited(&state, &who, "model.validate", &target, result).await.map(Json)
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
    let run = audited(&state, &who, "model.retrain", &name, result).await?;
    Ok((StatusCode::ACCEPTED, Json(run)).into_response())
}

pub async fn retraining_runs(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Vec<crate::ops::retraining::RunRecord>>, ApiError> {
    authorize(&state, &headers, Role::Viewer)?;
    Ok(Json(state.retraining.runs(&name).map_err(ApiError::from)?))
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
    let target = name.clone();
    mutation(&state, &headers, Role::Operator, "model.policy", &target, move |st, _| {
        let policy = json_body(body)?;
        policy.validate().map_err(|e| ApiError::bad_request(e.to_string()))?;
        st.registry.set_policy(&name, &policy)?;
        let detail = serde_json::to_string(&policy).map_err(ApiError::internal)?;
        Ok((policy, detail))
    })
    .await
    .map(Json)
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
                let record = state.devices.get(id).map_err(ApiError::from)?;
                if record.as_ref().is_some_and(|d| d.revoked.is_some())
                    || (record.is_none() && state.devices.revocation(id).map_err(ApiError::from)?.is_some())
                {
                    state.metrics.api_denied.with_label_values(&["403"]).inc();
                    return Err(ApiError(StatusCode::FORBIDDEN, format!("device `{id}` is revoked")));
                }
                record.is_some()
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
