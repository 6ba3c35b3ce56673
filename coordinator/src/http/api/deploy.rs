//! Deploy routes: deploy a version, roll a model back, read desired states.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};

use super::registry::audited;
use super::{ApiError, AppState, authorize, json_body};
use crate::fleet::desired::DesiredRecord;
use crate::http::auth::Role;
use crate::ops::deploy::{DeployRequest, DeployResponse};

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
    audited(&state, &who, "rollback", &name, result).await.map(Json)
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
    audited(&state, &who, "deploy", &target, result).await.map(Json)
}

pub async fn list_desired(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<BTreeMap<String, DesiredRecord>>, ApiError> {
    authorize(&state, &headers, Role::Viewer)?;
    Ok(Json(state.desired.all().map_err(ApiError::from)?.into_iter().collect()))
}

/// `GET /api/v1/devices/{id}/desired/sealed`: the device's desired state sealed and signed now,
/// as the broker would carry it (with its expiry), for a site the broker does not reach: carried
/// with its bundles on removable media (`outpostctl device export-desired`) and applied there by
/// `outpost-agent import-desired` under the same rules. Audited.
pub async fn export_desired(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let target = outpost_shared::names::shown(&id);
    let sealed = super::registry::mutation(
        &state,
        &headers,
        Role::Operator,
        "device.export_desired",
        &target,
        move |st, _| {
            let record = st.desired.get(&id).map_err(ApiError::from)?.ok_or_else(|| {
                ApiError(
                    StatusCode::NOT_FOUND,
                    format!("no desired state for device `{id}`: deploy to it first"),
                )
            })?;
            let out = st.desired.seal(&st.authority, &id, &record).map_err(ApiError::from)?;
            Ok((out.payload, format!("revision {}", record.revision)))
        },
    )
    .await?;
    Ok(([(axum::http::header::CONTENT_TYPE, "application/octet-stream")], sealed).into_response())
}
