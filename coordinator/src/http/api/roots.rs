//! Trust-root routes ([`crate::fleet::roots`]): read the current root and its chain, make the
//! next online key, and take the next signed version (which then reaches every device with a
//! new desired revision). Changes are admin-only and audited.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use outpost_shared::protocol::root::SignedRoot;
use serde::{Deserialize, Serialize};

use super::registry::{blocking, mutation};
use super::{ApiError, AppState, authorize};
use crate::fleet::roots::RootsError;
use crate::http::auth::Role;

/// The current root and how far the fleet has come with it.
#[derive(Debug, Serialize, Deserialize)]
pub struct RootView {
    pub root: SignedRoot,
    /// Enrolled, unrevoked devices by the root version they last reported (`none`: not yet).
    pub devices_by_version: BTreeMap<String, u64>,
}

/// The next online key's public half.
#[derive(Debug, Serialize, Deserialize)]
pub struct OnlineKey {
    pub online_key: String,
    pub key_id: String,
}

fn refused(e: RootsError) -> ApiError {
    match e {
        RootsError::Root(_) | RootsError::Refused(_) => {
            ApiError(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
        }
        other => ApiError::internal(other),
    }
}

/// `GET /api/v1/root`.
pub async fn current(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<RootView>, ApiError> {
    authorize(&state, &headers, Role::Viewer)?;
    let st = Arc::clone(&state);
    blocking(move || {
        let root = st.roots.current().map_err(refused)?;
        let mut devices_by_version = BTreeMap::new();
        for d in st.devices.all().map_err(ApiError::from)?.into_iter().filter(|d| d.revoked.is_none()) {
            let key = d.root_version.map_or_else(|| "none".to_owned(), |v| v.to_string());
            *devices_by_version.entry(key).or_insert(0) += 1;
        }
        Ok(Json(RootView { root, devices_by_version }))
    })
    .await?
}

/// `GET /api/v1/root/chain`: every version, oldest first.
pub async fn chain(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Vec<SignedRoot>>, ApiError> {
    authorize(&state, &headers, Role::Viewer)?;
    let st = Arc::clone(&state);
    blocking(move || st.roots.chain().map(Json).map_err(refused)).await?
}

/// `POST /api/v1/root/online-key`: the next online key (made once), to name in a draft.
pub async fn next_online_key(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<OnlineKey>, ApiError> {
    mutation(&state, &headers, Role::Admin, "root.online_key", "online", |st, _| {
        let key = st.roots.next_online_key().map_err(refused)?;
        let detail = format!("next online key {}", key.key_id());
        Ok((OnlineKey { online_key: hex::encode(key.as_bytes()), key_id: key.key_id() }, detail))
    })
    .await
    .map(Json)
}

/// `POST /api/v1/root`: the next version (file form). Signed by whoever holds root keys; the
/// coordinator adds its own root key's signature if it holds one. Every enrolled device then
/// gets a new desired revision carrying it.
pub async fn update(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<SignedRoot>, ApiError> {
    let parsed = SignedRoot::parse(&body);
    let target = parsed.as_ref().map_or_else(|_| "root".to_owned(), |r| format!("version {}", r.version()));
    let (accepted, out) = mutation(&state, &headers, Role::Admin, "root.update", &target, move |st, who| {
        let statement =
            parsed.map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("root statement: {e}")))?;
        let accepted = st.roots.accept(statement).map_err(refused)?;
        st.registry.follow_root_release(&accepted.signed.release.public_keys());
        let devices: Vec<String> = st
            .devices
            .all()
            .map_err(ApiError::from)?
            .into_iter()
            .filter(|d| d.revoked.is_none())
            .map(|d| d.id)
            .collect();
        let records = st.desired.bump(&devices, &who.name).map_err(ApiError::from)?;
        let out = st.desired.seal_many(&st.authority, &records).map_err(ApiError::from)?;
        let signers = accepted.signatures.iter().map(|s| s.key_id.as_str()).collect::<Vec<_>>().join(", ");
        let detail = format!(
            "version {} accepted (signed by {signers}); online {}; release {} of {}; sent to {} device(s)",
            accepted.version(),
            accepted.signed.online.public_keys().iter().map(|k| k.key_id()).collect::<Vec<_>>().join(", "),
            accepted.signed.release.threshold,
            accepted.signed.release.keys.len(),
            out.len()
        );
        Ok(((accepted, out), detail))
    })
    .await?;
    state.deployer.publish(out).await;
    Ok(Json(accepted))
}
