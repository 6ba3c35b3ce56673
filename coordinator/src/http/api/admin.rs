//! Admin routes: API tokens, the audit log, and revoking and deleting devices.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};

use super::registry::{audited, blocking, mutation};
use super::{ApiError, AppState, authorize, json_body};
use crate::base::store::now_ms;
use crate::http::auth::{ApiToken, Role};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenCreate {
    name: String,
    role: String,
    /// `90d`, `12h`, … or `never`; absent: the role's default (admin never, others 90 days).
    #[serde(default)]
    expires: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct CreatedToken {
    pub name: String,
    pub role: Role,
    pub token: String,
    pub expires_at_ms: Option<u64>,
}

pub async fn create_api_token(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Json<TokenCreate>, JsonRejection>,
) -> Result<Json<CreatedToken>, ApiError> {
    let who = authorize(&state, &headers, Role::Admin)?;
    let request = json_body(body)?;
    let result = (|| {
        let role = Role::parse(&request.role)?;
        let lifetime = crate::http::auth::lifetime_ms(role, request.expires.as_deref())?;
        let (token, record) = state.auth.create(&request.name, role, &who.name, lifetime)?;
        let detail = match record.expires_at_ms {
            Some(at) => {
                format!("role {}, expires {}", role.as_str(), crate::models::packaging::utc(at / 1000))
            }
            None => format!("role {}, never expires", role.as_str()),
        };
        Ok((
            CreatedToken { name: request.name.clone(), role, token, expires_at_ms: record.expires_at_ms },
            detail,
        ))
    })();
    audited(&state, &who, "token.create", &request.name, result).await.map(Json)
}

pub async fn list_api_tokens(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Vec<ApiToken>>, ApiError> {
    authorize(&state, &headers, Role::Admin)?;
    Ok(Json(state.auth.list().map_err(ApiError::from)?))
}

pub async fn revoke_api_token(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let target = name.clone();
    mutation(&state, &headers, Role::Admin, "token.revoke", &target, move |st, _| {
        match st.auth.revoke(&name) {
            Ok(true) => Ok((serde_json::json!({"revoked": name}), "revoked".to_owned())),
            Ok(false) => Err(ApiError(StatusCode::NOT_FOUND, format!("no token named `{name}`"))),
            Err(e) => Err(ApiError::internal(e)),
        }
    })
    .await
    .map(Json)
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
        Err(problem) => AuditVerdict {
            ok: false,
            entries: 0,
            problem: Some(problem.to_string()),
            checked_at_ms: now_ms(),
        },
    }))
}

/// `GET /api/v1/cluster`: the coordinator's replicas, their heartbeats, and which replica runs
/// each engine in which term (on PostgreSQL; one process on sled has none).
#[derive(Debug, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// `sled` or `postgres`.
    pub store: String,
    #[serde(flatten)]
    pub view: crate::base::pg::lease::ClusterView,
}

pub async fn cluster_status(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<ClusterStatus>, ApiError> {
    use crate::base::backing::Backing;
    authorize(&state, &headers, Role::Viewer)?;
    let backing = state.store.clone();
    let (store, view) = blocking(move || match &backing {
        Backing::Sled(_) => {
            Ok(("sled", crate::base::pg::lease::ClusterView { replicas: Vec::new(), leases: Vec::new() }))
        }
        Backing::Postgres(shared) => {
            crate::base::pg::lease::view(&shared.store).map(|view| ("postgres", view))
        }
    })
    .await?
    .map_err(|e| {
        ApiError(StatusCode::SERVICE_UNAVAILABLE, format!("the cluster's state cannot be read: {e}"))
    })?;
    Ok(Json(ClusterStatus { store: store.into(), view }))
}

/// `POST /api/v1/devices/{id}/revoke`: the device is refused from now on — its telemetry
/// (refused and counted), its artifact downloads, any deployment — and its certificate joins
/// the CA's revocation list, rewritten at once.
pub async fn revoke_device(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<crate::fleet::devices::Revocation>, ApiError> {
    revoking(&state, &headers, id, false).await
}

/// `DELETE /api/v1/devices/{id}`: revokes the device if it was not, and removes it from the
/// fleet; its revocation and its stored telemetry stay.
pub async fn delete_device(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<crate::fleet::devices::Revocation>, ApiError> {
    revoking(&state, &headers, id, true).await
}

/// Revokes (and with `delete`, removes) device `id` as an audited admin mutation, then
/// rewrites the revocation list.
async fn revoking(
    state: &Arc<AppState>,
    headers: &HeaderMap,
    id: String,
    delete: bool,
) -> Result<Json<crate::fleet::devices::Revocation>, ApiError> {
    let target = outpost_shared::names::shown(&id);
    let action = if delete { "device.delete" } else { "device.revoke" };
    mutation(state, headers, Role::Admin, action, &target, move |st, who| {
        let done = if delete { st.devices.delete(&id, &who.name) } else { st.devices.revoke(&id, &who.name) };
        let revocation = done.map_err(ApiError::from)?.ok_or_else(|| {
            ApiError(StatusCode::NOT_FOUND, format!("no device `{}`", outpost_shared::names::shown(&id)))
        })?;
        let mut detail = crl_detail(st, &revocation)?;
        if st.broker_front.as_ref().is_some_and(|front| front.disconnect(&revocation.device_id)) {
            detail.push_str("; its broker connection was cut");
        }
        Ok((revocation, if delete { format!("deleted; {detail}") } else { detail }))
    })
    .await
    .map(Json)
}

/// Rewrites the revocation list after a revocation; the audit detail says what it lists.
fn crl_detail(state: &AppState, revocation: &crate::fleet::devices::Revocation) -> Result<String, ApiError> {
    crate::fleet::revocation::publish(&state.authority, &state.devices, &state.config.data_dir)
        .map_err(ApiError::internal)?;
    Ok(match &revocation.cert_serial {
        Some(serial) => format!("revoked; certificate {serial} in the revocation list"),
        None => "revoked; its certificate has no recorded serial (enrolled before serials were kept)".into(),
    })
}

/// `GET /api/v1/pki/crl`: the CA's current revocation list (PEM), for a broker's `crlfile`.
pub async fn revocation_list(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    authorize(&state, &headers, Role::Viewer)?;
    let st = Arc::clone(&state);
    let pem = blocking(move || crate::fleet::revocation::list(&st.authority, &st.devices))
        .await?
        .map_err(ApiError::internal)?;
    Ok(([(axum::http::header::CONTENT_TYPE, "application/pkix-crl")], pem).into_response())
}

/// `GET /api/v1/admin/backup`: a consistent snapshot of the whole data directory — state, the
/// registry's artifacts, the CA and keys, the audit log — streamed as it is read, for
/// `outpost-coordinator backup`, which encrypts it into the operator's file. Admin only, and only
/// from the coordinator's own host (a loopback address): the snapshot holds the fleet's keys.
pub async fn backup(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    peer: Option<axum::Extension<outpost_shared::front::Peer>>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let who = authorize(&state, &headers, Role::Admin)?;
    let local = peer.as_ref().is_some_and(|axum::Extension(p)| p.0.ip().is_loopback());
    if !local {
        state.metrics.api_denied.with_label_values(&["403"]).inc();
        let from =
            peer.map_or_else(|| "an unknown address".to_owned(), |axum::Extension(p)| p.0.ip().to_string());
        let refused = ApiError(
            StatusCode::FORBIDDEN,
            format!("a backup is taken from the coordinator's own host (loopback), not from {from}"),
        );
        audited(&state, &who, "backup.take", "-", Err::<((), String), _>(refused)).await?;
    }
    audited(&state, &who, "backup.take", "-", Ok(((), "streaming".to_owned()))).await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(8);
    let st = Arc::clone(&state);
    tokio::task::spawn_blocking(move || {
        let mut out = ChannelWriter { tx: tx.clone(), buf: Vec::with_capacity(CHANNEL_PIECE) };
        let store = match &st.store {
            crate::base::backing::Backing::Sled(store) => Some(store),
            // The records are PostgreSQL's to back up (pg_dump): the keys and files are ours.
            crate::base::backing::Backing::Postgres(_) => None,
        };
        let snapshot = crate::base::backup::Snapshot { store, data_dir: &st.config.data_dir };
        match snapshot.write(&mut out) {
            Ok(summary) => tracing::info!(
                files = summary.files,
                file_bytes = summary.file_bytes,
                audit_entries = summary.audit_entries,
                "backup streamed"
            ),
            Err(e) => {
                tracing::error!(error = %e, "backup failed");
                // The client sees the stream break, and `backup` refuses to keep the file.
                let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
            }
        }
    });
    let stream =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
        axum::body::Body::from_stream(stream),
    )
        .into_response())
}

const CHANNEL_PIECE: usize = 256 * 1024;

/// Hands what a blocking writer writes to a response body, a piece at a time.
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<Result<bytes::Bytes, std::io::Error>>,
    buf: Vec<u8>,
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHANNEL_PIECE {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let piece = bytes::Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHANNEL_PIECE)));
        self.tx
            .blocking_send(Ok(piece))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away"))
    }
}
