//! The dashboard's sessions repository: signed-in browsers, kept in the store so that a
//! coordinator's restart, or another replica behind the same load balancer, does not sign
//! anyone out.
//!
//! One record per session, in tree `dashboard_sessions` or, on PostgreSQL, table
//! `outpost_dashboard_sessions` (migration 8, [`pg`](self::pg)), keyed by the **sha256 of the
//! session id** — the cookie's value is never stored, so whoever reads the store or a backup
//! cannot open a session with what they read. A record holds the sha256 of the API token the
//! browser signed in with (never the token: every page checks that hash against the issued
//! tokens, [`crate::http::auth::Auth::check_hash`], so revoking the token ends its sessions at
//! once), the session's CSRF secret and when it expires (wall-clock milliseconds).
//!
//! Expired sessions are swept at each sign-in; at most [`MAX_SESSIONS`] are kept, the one
//! closest to expiry making room. On PostgreSQL two replicas signing people in at the same
//! moment may each keep one over the cap until the next sign-in sweeps it.

use serde::{Deserialize, Serialize};

use crate::base::pg::store::PgStore;
use crate::base::store::{Store, StoreError, encode};
use crate::http::auth::sha256_hex;

/// Sessions kept at most.
pub const MAX_SESSIONS: usize = 10_000;

/// A stored session (its id is the key, hashed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// sha256 hex of the API token it signed in with.
    pub token_hash: String,
    /// The secret its forms carry.
    pub csrf: String,
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
}

/// Where sessions are kept.
#[derive(Clone)]
pub struct Sessions {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Sled { tree: sled::Tree, store: Store },
    Postgres(PgStore),
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").finish_non_exhaustive()
    }
}

/// Why a session could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("the system random source failed")]
    Random,
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn random_hex() -> Result<String, SessionError> {
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| SessionError::Random)?;
    Ok(hex::encode(bytes))
}

impl Sessions {
    pub fn open(store: &Store) -> Result<Sessions, StoreError> {
        Ok(Sessions {
            backend: Backend::Sled { tree: store.tree("dashboard_sessions")?, store: store.clone() },
        })
    }

    /// The sessions on PostgreSQL, shared by every replica on `store`.
    pub fn open_postgres(store: &PgStore) -> Sessions {
        Sessions { backend: Backend::Postgres(store.clone()) }
    }

    /// Starts a session for the token whose sha256 is `token_hash`, lasting `ttl_ms` from
    /// `now_ms`: returns its id (the cookie's value) and CSRF secret. Committed (on sled,
    /// flushed) before it returns, so a crash right after the sign-in keeps it.
    pub fn start(
        &self,
        token_hash: &str,
        now_ms: u64,
        ttl_ms: u64,
    ) -> Result<(String, String), SessionError> {
        let (id, csrf) = (random_hex()?, random_hex()?);
        let session = Session {
            token_hash: token_hash.to_owned(),
            csrf: csrf.clone(),
            created_at_ms: now_ms,
            expires_at_ms: now_ms.saturating_add(ttl_ms),
        };
        let key = sha256_hex(id.as_bytes());
        match &self.backend {
            Backend::Sled { tree, store } => {
                sweep(tree, store, now_ms)?;
                let value = encode(&format!("dashboard_sessions/{key}"), &session)?;
                tree.insert(key.as_bytes(), value).map_err(|e| store.storage_error(e))?;
                store.flush()?;
            }
            Backend::Postgres(store) => pg::start(store, &key, &session, now_ms)?,
        }
        Ok((id, csrf))
    }

    /// The live session whose id is `id`, if any (one that expired at or before `now_ms`, or
    /// whose record does not decode, is none).
    pub fn get(&self, id: &str, now_ms: u64) -> Result<Option<Session>, StoreError> {
        let key = sha256_hex(id.as_bytes());
        let session = match &self.backend {
            Backend::Sled { tree, store } => tree
                .get(key.as_bytes())
                .map_err(|e| store.storage_error(e))?
                .and_then(|v| serde_json::from_slice::<Session>(&v).ok()),
            Backend::Postgres(store) => pg::get(store, &key)?,
        };
        Ok(session.filter(|s| s.expires_at_ms > now_ms))
    }

    /// Ends the session whose id is `id` (nothing when there is none).
    pub fn close(&self, id: &str) -> Result<(), StoreError> {
        let key = sha256_hex(id.as_bytes());
        match &self.backend {
            Backend::Sled { tree, store } => {
                tree.remove(key.as_bytes()).map_err(|e| store.storage_error(e))?;
                store.flush()
            }
            Backend::Postgres(store) => pg::close(store, &key),
        }
    }

    /// How many sessions are stored (live or not yet swept).
    pub fn len(&self) -> Result<usize, StoreError> {
        match &self.backend {
            Backend::Sled { tree, .. } => Ok(tree.len()),
            Backend::Postgres(store) => pg::len(store),
        }
    }

    pub fn is_empty(&self) -> Result<bool, StoreError> {
        self.len().map(|n| n == 0)
    }
}

/// Removes the expired sessions, and the ones closest to expiry while the tree holds
/// [`MAX_SESSIONS`] or more, so one more fits.
fn sweep(tree: &sled::Tree, store: &Store, now_ms: u64) -> Result<(), StoreError> {
    let mut live = Vec::new();
    for item in tree.iter() {
        let (key, value) = item.map_err(|e| store.storage_error(e))?;
        match serde_json::from_slice::<Session>(&value) {
            Ok(s) if s.expires_at_ms > now_ms => live.push((s.expires_at_ms, key)),
            // Expired, or unreadable (it could open nothing): gone.
            _ => {
                tree.remove(&key).map_err(|e| store.storage_error(e))?;
            }
        }
    }
    if live.len() >= MAX_SESSIONS {
        live.sort();
        for (_, key) in &live[..=live.len() - MAX_SESSIONS] {
            tree.remove(key).map_err(|e| store.storage_error(e))?;
        }
    }
    Ok(())
}

mod pg;

#[cfg(test)]
mod tests;
