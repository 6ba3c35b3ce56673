//! Rollout and incident routes: start, watch, steer (`pause`, `resume`, `promote`, `abort`), and
//! the incidents automatic rollbacks leave.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};

use super::registry::{audited, blocking};
use super::{ApiError, AppState, authorize, json_body};
use crate::http::auth::{Principal, Role};
use crate::ops::rollout::{Incident, Rollout, RolloutSpec, RolloutView};

fn view(state: &AppState, r: Rollout) -> Result<RolloutView, ApiError> {
    state.rollouts.view(r).map_err(ApiError::from)
}

pub async fn start(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Json<RolloutSpec>, JsonRejection>,
) -> Result<Json<RolloutView>, ApiError> {
    let who = authorize(&state, &headers, Role::Operator)?;
    let spec = json_body(body)?;
    let target = format!("{}@{}", spec.model, spec.version);
    let st = Arc::clone(&state);
    let by = who.name.clone();
    let result = blocking(move || {
        let r = st.rollouts.start(spec, &by)?;
        let detail = format!("{} on {} device(s), {}", r.id, r.targets.len(), r.spec.movement());
        Ok((view(&st, r)?, detail))
    })
    .await?;
    audited(&state, &who, "rollout.start", &target, result).await.map(Json)
}

pub async fn plan(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Json<RolloutSpec>, JsonRejection>,
) -> Result<Json<crate::ops::rollout::plan::Plan>, ApiError> {
    authorize(&state, &headers, Role::Viewer)?;
    let spec = json_body(body)?;
    let st = Arc::clone(&state);
    blocking(move || st.rollouts.plan(&spec).map_err(ApiError::from)).await?.map(Json)
}

pub async fn list(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Vec<Rollout>>, ApiError> {
    authorize(&state, &headers, Role::Viewer)?;
    let st = Arc::clone(&state);
    blocking(move || st.rollouts.list().map_err(ApiError::from)).await?.map(Json)
}

pub async fn show(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<RolloutView>, ApiError> {
    authorize(&state, &headers, Role::Viewer)?;
    let st = Arc::clone(&state);
    blocking(move || {
        let r = st
            .rollouts
            .get(&id)
            .map_err(ApiError::from)?
            .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no rollout `{id}`")))?;
        view(&st, r)
    })
    .await?
    .map(Json)
}

pub async fn act(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
) -> Result<Json<RolloutView>, ApiError> {
    let who = authorize(&state, &headers, Role::Operator)?;
    perform(&state, &who, &id, &action).await.map(Json)
}

/// Runs an operator's rollout action (`pause`, `resume`, `promote`, `abort-keep`,
/// `abort-revert`) for an authorised caller, sends what it changed and audits it. The API and
/// the dashboard's buttons both come here.
pub(crate) async fn perform(
    state: &Arc<AppState>,
    who: &Principal,
    id: &str,
    action: &str,
) -> Result<RolloutView, ApiError> {
    if !ACTIONS.contains(&action) {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("unknown rollout action `{action}` (pause, resume, promote, abort-keep, abort-revert)"),
        ));
    }
    let st = Arc::clone(state);
    let by = who.name.clone();
    let verb = action.to_owned();
    let rid = id.to_owned();
    let result = blocking(move || st.rollouts.command(&rid, &verb, &by).map_err(ApiError::from)).await?;
    let result = match result {
        Ok((r, outgoing)) => {
            state.deployer.publish(outgoing).await;
            let detail = format!("{} now {}", r.id, r.phase.as_str());
            view(state, r).map(|v| (v, detail))
        }
        Err(e) => Err(e),
    };
    audited(state, who, &format!("rollout.{action}"), id, result).await
}

/// The rollout actions an operator may take.
pub const ACTIONS: [&str; 5] = ["pause", "resume", "promote", "abort-keep", "abort-revert"];

pub async fn incidents(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Vec<Incident>>, ApiError> {
    authorize(&state, &headers, Role::Viewer)?;
    let st = Arc::clone(&state);
    blocking(move || st.rollouts.incidents().map_err(ApiError::from)).await?.map(Json)
}

pub async fn incident(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Incident>, ApiError> {
    authorize(&state, &headers, Role::Viewer)?;
    let st = Arc::clone(&state);
    blocking(move || {
        st.rollouts
            .repo()
            .incident(&id)
            .map_err(ApiError::from)?
            .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no incident `{id}`")))
    })
    .await?
    .map(Json)
}

pub async fn close_incident(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Incident>, ApiError> {
    let who = authorize(&state, &headers, Role::Operator)?;
    close(&state, &who, &id).await.map(Json)
}

/// Closes an incident for an authorised caller and audits it (API and dashboard).
pub(crate) async fn close(state: &Arc<AppState>, who: &Principal, id: &str) -> Result<Incident, ApiError> {
    let st = Arc::clone(state);
    let by = who.name.clone();
    let iid = id.to_owned();
    let result = blocking(move || {
        let i = st.rollouts.close_incident(&iid, &by)?;
        Ok((i, "closed".to_owned()))
    })
    .await?;
    audited(state, who, "incident.close", id, result).await
}
