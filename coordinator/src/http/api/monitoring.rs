//! Monitoring routes: quality, model cards, drift reports, data export, SLOs.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::registry::{blocking, mutation};
use super::{ApiError, AppState, authorize, json_body};
use crate::base::store::now_ms;
use crate::http::auth::Role;
use crate::models::validation::{self};

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
    let asked = name.clone();
    let (report, registered) = tokio::task::spawn_blocking(move || {
        let report = state2.ingest.labels().quality(&name, query.since_ms, query.by.as_deref());
        (report, state2.registry.versions(&name).map(|v| !v.is_empty()))
    })
    .await
    .map_err(ApiError::internal)?;
    let report = report.map_err(ApiError::from)?;
    // A name nobody knows is a mistake to say so about, not an empty report (exit 0).
    if report.versions.is_empty() && !registered? {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!(
                "no model `{}`: it is not in the registry and no device reported labelled predictions for it",
                outpost_shared::names::shown(&asked)
            ),
        ));
    }
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
            .devices
            .all()
            .map_err(ApiError::from)?
            .into_iter()
            .flat_map(|d| d.labels.into_keys())
            .collect();
        let labels = st.ingest.labels();
        let mut quality = Vec::new();
        if keys.is_empty() {
            quality.push(labels.quality(&name, None, None).map_err(ApiError::from)?);
        }
        for key in &keys {
            quality.push(labels.quality(&name, None, Some(key)).map_err(ApiError::from)?);
        }
        let drift = crate::monitoring::report::DriftHistory::build_for(
            st.ingest.drift_history(),
            &name,
            0,
            Some(&version),
        )
        .map_err(ApiError::from)?;
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
    .map_err(ApiError::from)?;
    let (content_type, body) = match format.as_str() {
        "html" => ("text/html; charset=utf-8", crate::monitoring::report::render_html(&history)),
        "json" => ("application/json", serde_json::to_string_pretty(&history).unwrap_or_default()),
        _ => ("text/markdown; charset=utf-8", crate::monitoring::report::render_markdown(&history)),
    };
    Ok(([(header::CONTENT_TYPE, content_type)], body).into_response())
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
    .map_err(ApiError::from)?;
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
            .map_err(ApiError::from)?;
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
            let spec = slos.get(&name).map_err(ApiError::from)?.ok_or_else(|| {
                ApiError(StatusCode::NOT_FOUND, format!("model `{name}` has no objectives (PUT them first)"))
            })?;
            slos.status(state2.ingest.labels(), &name, &spec, now_ms()).map_err(ApiError::from)
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
    let target = name.clone();
    mutation(&state, &headers, Role::Operator, "slo.set", &target, move |st, _| {
        let spec = json_body(body)?;
        spec.validate().map_err(|e| ApiError::bad_request(e.to_string()))?;
        st.ingest.slos().set(&name, &spec).map_err(ApiError::from)?;
        let detail = serde_json::to_string(&spec).map_err(ApiError::internal)?;
        Ok((spec, detail))
    })
    .await
    .map(Json)
}
