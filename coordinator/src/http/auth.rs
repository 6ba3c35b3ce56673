//! Who may call the API: bearer tokens with a role, and a rate limit per token.
//!
//! Roles are ordered: `viewer` reads; `operator` also pushes, validates, deploys, rolls back
//! and exports; `admin` also manages tokens and devices, imports telemetry and purges. The
//! admin token written to `<data_dir>/admin.token` at first start is the bootstrap; every other
//! token is made with `outpostctl token create` and stored only as its sha256 (tree
//! `api_tokens`: sha256 hex → [`ApiToken`]). A request without a token, or with a token
//! nobody issued, is 401; a role that may not is 403; a token over its rate is 429.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::base::store::{Store, StoreError, now_ms};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Result<Role, TokenError> {
        match text {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            other => Err(TokenError::UnknownRole(other.to_owned())),
        }
    }
}

/// Why a token was not issued.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("unknown role `{0}` (roles: viewer, operator, admin)")]
    UnknownRole(String),
    #[error("token name `{0}` must be 1 to 64 letters, digits, `-`, `_` or `.`")]
    BadName(String),
    #[error("a token named `{0}` exists")]
    Exists(String),
    #[error("the system random source failed")]
    Random,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A stored token (the token itself is never stored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiToken {
    pub name: String,
    pub role: Role,
    pub created_at_ms: u64,
    pub created_by: String,
}

/// The caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub role: Role,
    /// sha256 hex of the token (the rate limiter's key).
    pub token_hash: String,
}

/// Tokens and their limits.
pub struct Auth {
    tokens: sled::Tree,
    store: Store,
    admin_hash: String,
    limiter: Mutex<HashMap<String, Bucket>>,
    rate_per_sec: f64,
    burst: f64,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth").field("rate_per_sec", &self.rate_per_sec).finish_non_exhaustive()
    }
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Why a request is not let through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// 401.
    Unauthenticated(String),
    /// 403.
    Forbidden(String),
    /// 429, with the seconds to wait.
    RateLimited(u64),
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    outpost_shared::bundle::sha256_hex(bytes)
}

impl Auth {
    pub fn open(store: &Store, admin_token: &str, rate_per_sec: u32, burst: u32) -> Result<Auth, StoreError> {
        Ok(Auth {
            tokens: store.tree("api_tokens")?,
            store: store.clone(),
            admin_hash: sha256_hex(admin_token.trim().as_bytes()),
            limiter: Mutex::new(HashMap::new()),
            rate_per_sec: f64::from(rate_per_sec.max(1)),
            burst: f64::from(burst.max(1)),
        })
    }

    /// Checks a request's `Authorization` header value against the role it needs.
    pub fn check(&self, authorization: Option<&str>, needs: Role) -> Result<Principal, Denied> {
        let principal = self.authenticate(authorization)?;
        self.take(&principal.token_hash)?;
        if principal.role < needs {
            return Err(Denied::Forbidden(format!(
                "token `{}` has role `{}`; this needs `{}`",
                principal.name,
                principal.role.as_str(),
                needs.as_str()
            )));
        }
        Ok(principal)
    }

    /// Who presents this `Authorization` header value (no rate limit taken, no role checked):
    /// the front door's check before a request body is read.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Principal, Denied> {
        let presented = authorization
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Denied::Unauthenticated("missing `Authorization: Bearer <token>`".into()))?;
        let hash = sha256_hex(presented.as_bytes());
        let principal = if hash == self.admin_hash {
            Principal { name: "admin".into(), role: Role::Admin, token_hash: hash }
        } else {
            let record = self
                .tokens
                .get(hash.as_bytes())
                .ok()
                .flatten()
                .and_then(|v| serde_json::from_slice::<ApiToken>(&v).ok())
                .ok_or_else(|| {
                    Denied::Unauthenticated("the token is not valid (unknown or revoked)".into())
                })?;
            Principal { name: record.name, role: record.role, token_hash: hash }
        };
        Ok(principal)
    }

    fn take(&self, key: &str) -> Result<(), Denied> {
        let mut buckets = self.limiter.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let bucket = buckets.entry(key.to_owned()).or_insert(Bucket { tokens: self.burst, at: now });
        let refill = now.duration_since(bucket.at).as_secs_f64() * self.rate_per_sec;
        bucket.tokens = (bucket.tokens + refill).min(self.burst);
        bucket.at = now;
        if bucket.tokens < 1.0 {
            let wait = ((1.0 - bucket.tokens) / self.rate_per_sec).ceil() as u64;
            return Err(Denied::RateLimited(wait.max(1)));
        }
        bucket.tokens -= 1.0;
        Ok(())
    }

    /// Issues a token; returns it (shown once).
    pub fn create(&self, name: &str, role: Role, by: &str) -> Result<String, TokenError> {
        if name.is_empty()
            || name.len() > 64
            || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(TokenError::BadName(name.to_owned()));
        }
        if name == "admin" || self.list()?.iter().any(|t| t.name == name) {
            return Err(TokenError::Exists(name.to_owned()));
        }
        let mut secret = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
            .map_err(|_| TokenError::Random)?;
        let token = format!("opk_{}", hex::encode(secret));
        let record =
            ApiToken { name: name.to_owned(), role, created_at_ms: now_ms(), created_by: by.to_owned() };
        let value = crate::base::store::encode(&format!("tokens/{name}"), &record)?;
        self.tokens
            .insert(sha256_hex(token.as_bytes()).as_bytes(), value)
            .map_err(|e| self.store.storage_error(e))?;
        self.store.flush()?;
        Ok(token)
    }

    /// Every issued token (not the admin bootstrap token).
    pub fn list(&self) -> Result<Vec<ApiToken>, StoreError> {
        let mut all: Vec<ApiToken> = self
            .tokens
            .iter()
            .filter_map(Result::ok)
            .filter_map(|(_, v)| serde_json::from_slice(&v).ok())
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(all)
    }

    /// Revokes a token by name; false when there is none.
    pub fn revoke(&self, name: &str) -> Result<bool, StoreError> {
        let found =
            self.tokens.iter().filter_map(Result::ok).find(|(_, v)| {
                serde_json::from_slice::<ApiToken>(v).map(|t| t.name == name).unwrap_or(false)
            });
        match found {
            Some((k, _)) => {
                self.tokens.remove(k).map_err(|e| self.store.storage_error(e))?;
                self.store.flush()?;
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_rank_and_unknown_tokens_are_unauthenticated() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let auth = Auth::open(&store, "opa_root", 1000, 1000).unwrap();
        let viewer = auth.create("v", Role::Viewer, "admin").unwrap();
        let bearer = |t: &str| format!("Bearer {t}");
        assert_eq!(auth.check(Some(&bearer(&viewer)), Role::Viewer).unwrap().name, "v");
        assert!(matches!(auth.check(Some(&bearer(&viewer)), Role::Operator), Err(Denied::Forbidden(_))));
        assert!(matches!(auth.check(None, Role::Viewer), Err(Denied::Unauthenticated(_))));
        assert!(matches!(auth.check(Some("Bearer nope"), Role::Viewer), Err(Denied::Unauthenticated(_))));
        assert_eq!(auth.check(Some("Bearer opa_root"), Role::Admin).unwrap().role, Role::Admin);
        assert!(auth.create("v", Role::Admin, "admin").is_err());
        assert!(auth.revoke("v").unwrap());
        assert!(matches!(auth.check(Some(&bearer(&viewer)), Role::Viewer), Err(Denied::Unauthenticated(_))));
    }

    #[test]
    fn each_token_has_its_own_rate_limit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let auth = Auth::open(&store, "opa_root", 1, 3).unwrap();
        let other = auth.create("o", Role::Operator, "admin").unwrap();
        for _ in 0..3 {
            auth.check(Some("Bearer opa_root"), Role::Viewer).unwrap();
        }
        assert!(matches!(auth.check(Some("Bearer opa_root"), Role::Viewer), Err(Denied::RateLimited(1))));
        auth.check(Some(&format!("Bearer {other}")), Role::Viewer).unwrap();
    }
}
