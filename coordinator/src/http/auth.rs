//! Who may call the API: bearer tokens with a role, and a rate limit per token.
//!
//! Roles are ordered: `viewer` reads; `operator` also pushes, validates, deploys, rolls back
//! and exports; `admin` also manages tokens and devices, imports telemetry and purges. The
//! admin token written to `<data_dir>/admin.token` at first start is the bootstrap; every other
//! token is made with `outpostctl token create` and stored only as its sha256 (tree
//! `api_tokens`: sha256 hex → [`ApiToken`]). A request without a token, or with a token
//! nobody issued, is 401; a role that may not is 403; a token over its rate is 429.
//!
//! Issued tokens expire: by default an admin token never, any other after 90 days
//! ([`default_lifetime_ms`]); an expired token is 401 with the time it expired, and `token
//! list` shows each one's expiry. A store that cannot be read is 503, naming why.
//!
//! The tokens live in sled or, on PostgreSQL, in table `outpost_api_tokens` (migration 3,
//! [`pg`](self::pg)), where every replica sees a token as soon as it is issued or revoked, and
//! a name is unique across replicas. The rate limit is counted per process: behind N replicas
//! a token may make up to N times its rate.

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
    #[error("expires: {0} (or `never`)")]
    Expires(#[from] crate::base::clock::SpanError),
    #[error("expires: a token must live at least one second and at most 10 years")]
    Lifetime,
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
    /// When it stops working (`None`: never). Tokens issued before expiry existed have none.
    #[serde(default)]
    pub expires_at_ms: Option<u64>,
}

/// How long a token of `role` lives when its creator does not say: an admin token until it
/// is revoked, any other 90 days.
pub fn default_lifetime_ms(role: Role) -> Option<u64> {
    match role {
        Role::Admin => None,
        Role::Viewer | Role::Operator => Some(90 * 86_400_000),
    }
}

/// A token's lifetime from what its creator asked: `None` for the role's default, `never`, or
/// a span (`90d`, `12h`, `45s`) of one second to ten years.
pub fn lifetime_ms(role: Role, asked: Option<&str>) -> Result<Option<u64>, TokenError> {
    match asked.map(str::trim) {
        None => Ok(default_lifetime_ms(role)),
        Some("never") => Ok(None),
        Some(span) => {
            let ms = crate::base::clock::parse_span(span)?;
            if !(1000..=10 * 365 * 86_400_000).contains(&ms) {
                return Err(TokenError::Lifetime);
            }
            Ok(Some(ms))
        }
    }
}

/// The caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub role: Role,
    /// sha256 hex of the token (the rate limiter's key).
    pub token_hash: String,
}

mod pg;

/// Where issued tokens are kept.
enum Tokens {
    Sled { tree: sled::Tree, store: Store },
    Postgres(crate::base::pg::store::PgStore),
}

/// Tokens and their limits.
pub struct Auth {
    tokens: Tokens,
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
    /// 503: the tokens cannot be read (the store is unreachable or failing), and why.
    Unavailable(String),
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    outpost_shared::bundle::sha256_hex(bytes)
}

impl Auth {
    pub fn open(store: &Store, admin_token: &str, rate_per_sec: u32, burst: u32) -> Result<Auth, StoreError> {
        let tokens = Tokens::Sled { tree: store.tree("api_tokens")?, store: store.clone() };
        Ok(Auth::with(tokens, admin_token, rate_per_sec, burst))
    }

    /// [`Auth::open`] with the issued tokens on PostgreSQL.
    pub fn open_postgres(
        store: &crate::base::pg::store::PgStore,
        admin_token: &str,
        rate_per_sec: u32,
        burst: u32,
    ) -> Auth {
        Auth::with(Tokens::Postgres(store.clone()), admin_token, rate_per_sec, burst)
    }

    fn with(tokens: Tokens, admin_token: &str, rate_per_sec: u32, burst: u32) -> Auth {
        Auth {
            tokens,
            admin_hash: sha256_hex(admin_token.trim().as_bytes()),
            limiter: Mutex::new(HashMap::new()),
            rate_per_sec: f64::from(rate_per_sec.max(1)),
            burst: f64::from(burst.max(1)),
        }
    }

    /// The issued token whose sha256 is `hash`, if any.
    fn get(&self, hash: &str) -> Result<Option<ApiToken>, StoreError> {
        match &self.tokens {
            Tokens::Sled { tree, store } => {
                let raw = tree.get(hash.as_bytes()).map_err(|e| store.storage_error(e))?;
                // A record that does not decode lets nobody in (as an unknown token).
                Ok(raw.and_then(|v| serde_json::from_slice::<ApiToken>(&v).ok()))
            }
            Tokens::Postgres(store) => pg::get(store, hash),
        }
    }

    /// Checks a request's `Authorization` header value against the role it needs.
    pub fn check(&self, authorization: Option<&str>, needs: Role) -> Result<Principal, Denied> {
        let principal = self.authenticate(authorization)?;
        self.allow(principal, needs)
    }

    /// [`Auth::check`] for the token whose sha256 is `token_hash` (what a dashboard session
    /// keeps instead of the token): a revoked or expired token is 401 here too.
    pub fn check_hash(&self, token_hash: &str, needs: Role) -> Result<Principal, Denied> {
        let principal = self.principal_of(token_hash.to_owned())?;
        self.allow(principal, needs)
    }

    /// `principal` within its rate and with at least the role `needs`.
    fn allow(&self, principal: Principal, needs: Role) -> Result<Principal, Denied> {
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
        self.principal_of(sha256_hex(presented.as_bytes()))
    }

    /// Who holds the token whose sha256 is `hash`.
    fn principal_of(&self, hash: String) -> Result<Principal, Denied> {
        let principal = if hash == self.admin_hash {
            Principal { name: "admin".into(), role: Role::Admin, token_hash: hash }
        } else {
            let record = self
                .get(&hash)
                .map_err(|e| {
                    // The cause (which names the store) goes to the log; the caller, who may be
                    // anyone, learns only that it is the coordinator's side.
                    tracing::error!(error = %e, "the API tokens cannot be read: answering 503");
                    Denied::Unavailable(
                        "the coordinator cannot read its API tokens right now (its store is unavailable); retry shortly"
                            .into(),
                    )
                })?
                .ok_or_else(|| {
                    Denied::Unauthenticated("the token is not valid (unknown or revoked)".into())
                })?;
            if let Some(at) = record.expires_at_ms.filter(|&at| at <= now_ms()) {
                return Err(Denied::Unauthenticated(format!(
                    "token `{}` expired at {}",
                    record.name,
                    crate::models::packaging::utc(at / 1000)
                )));
            }
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

    /// Issues a token that works for `lifetime_ms` (`None`: until revoked); returns it (shown
    /// once) and its record.
    pub fn create(
        &self,
        name: &str,
        role: Role,
        by: &str,
        lifetime_ms: Option<u64>,
    ) -> Result<(String, ApiToken), TokenError> {
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
        let now = now_ms();
        let record = ApiToken {
            name: name.to_owned(),
            role,
            created_at_ms: now,
            created_by: by.to_owned(),
            expires_at_ms: lifetime_ms.map(|ms| now.saturating_add(ms)),
        };
        let hash = sha256_hex(token.as_bytes());
        match &self.tokens {
            Tokens::Sled { tree, store } => {
                let value = crate::base::store::encode(&format!("tokens/{name}"), &record)?;
                tree.insert(hash.as_bytes(), value).map_err(|e| store.storage_error(e))?;
                store.flush()?;
            }
            // The name is unique in the table: two replicas issuing one name at once, one wins.
            Tokens::Postgres(store) => {
                if !pg::insert(store, &hash, &record)? {
                    return Err(TokenError::Exists(name.to_owned()));
                }
            }
        }
        Ok((token, record))
    }

    /// Every issued token (not the admin bootstrap token).
    pub fn list(&self) -> Result<Vec<ApiToken>, StoreError> {
        let mut all: Vec<ApiToken> = match &self.tokens {
            Tokens::Sled { tree, store } => {
                let mut all = Vec::new();
                for item in tree.iter() {
                    let (_, v) = item.map_err(|e| store.storage_error(e))?;
                    all.extend(serde_json::from_slice(&v).ok());
                }
                all
            }
            Tokens::Postgres(store) => pg::list(store)?,
        };
        all.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(all)
    }

    /// Revokes a token by name; false when there is none.
    pub fn revoke(&self, name: &str) -> Result<bool, StoreError> {
        match &self.tokens {
            Tokens::Sled { tree, store } => {
                let mut found = None;
                for item in tree.iter() {
                    let (k, v) = item.map_err(|e| store.storage_error(e))?;
                    if serde_json::from_slice::<ApiToken>(&v).is_ok_and(|t| t.name == name) {
                        found = Some(k);
                        break;
                    }
                }
                let Some(k) = found else { return Ok(false) };
                tree.remove(k).map_err(|e| store.storage_error(e))?;
                store.flush()?;
                Ok(true)
            }
            Tokens::Postgres(store) => pg::remove(store, name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::pg::store::testing::TestDatabase;

    /// What keeps a test's store alive.
    #[allow(dead_code, clippy::large_enum_variant)]
    enum Keep {
        Sled(tempfile::TempDir),
        Postgres(TestDatabase),
    }

    fn sled(rate: u32, burst: u32) -> (Auth, Keep) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        (Auth::open(&store, "opa_root", rate, burst).unwrap(), Keep::Sled(dir))
    }

    fn postgres(rate: u32, burst: u32) -> (Auth, Keep) {
        let db = TestDatabase::new();
        (Auth::open_postgres(&db.store(), "opa_root", rate, burst), Keep::Postgres(db))
    }

    /// Runs each behaviour `fn(open)` on both stores (`on_sled::…`, `on_postgres::…`).
    macro_rules! on_both {
        ($($name:ident),* $(,)?) => {
            mod on_sled {
                $(#[test] fn $name() { super::$name(&super::sled); })*
            }
            mod on_postgres {
                $(#[test] fn $name() { super::$name(&super::postgres); })*
            }
        };
    }

    on_both!(
        roles_rank_and_unknown_tokens_are_unauthenticated,
        each_token_has_its_own_rate_limit,
        tokens_expire_by_role_unless_told_otherwise,
    );

    type Open = dyn Fn(u32, u32) -> (Auth, Keep);

    fn roles_rank_and_unknown_tokens_are_unauthenticated(open: &Open) {
        let (auth, _keep) = open(1000, 1000);
        let (viewer, _) = auth.create("v", Role::Viewer, "admin", None).unwrap();
        let bearer = |t: &str| format!("Bearer {t}");
        assert_eq!(auth.check(Some(&bearer(&viewer)), Role::Viewer).unwrap().name, "v");
        assert!(matches!(auth.check(Some(&bearer(&viewer)), Role::Operator), Err(Denied::Forbidden(_))));
        assert!(matches!(auth.check(None, Role::Viewer), Err(Denied::Unauthenticated(_))));
        assert!(matches!(auth.check(Some("Bearer nope"), Role::Viewer), Err(Denied::Unauthenticated(_))));
        assert_eq!(auth.check(Some("Bearer opa_root"), Role::Admin).unwrap().role, Role::Admin);
        assert!(auth.create("v", Role::Admin, "admin", None).is_err());
        assert!(auth.revoke("v").unwrap());
        assert!(matches!(auth.check(Some(&bearer(&viewer)), Role::Viewer), Err(Denied::Unauthenticated(_))));
    }

    fn each_token_has_its_own_rate_limit(open: &Open) {
        let (auth, _keep) = open(1, 3);
        let (other, _) = auth.create("o", Role::Operator, "admin", None).unwrap();
        for _ in 0..3 {
            auth.check(Some("Bearer opa_root"), Role::Viewer).unwrap();
        }
        assert!(matches!(auth.check(Some("Bearer opa_root"), Role::Viewer), Err(Denied::RateLimited(1))));
        auth.check(Some(&format!("Bearer {other}")), Role::Viewer).unwrap();
    }

    fn tokens_expire_by_role_unless_told_otherwise(open: &Open) {
        assert_eq!(lifetime_ms(Role::Admin, None).unwrap(), None);
        assert_eq!(lifetime_ms(Role::Operator, None).unwrap(), Some(90 * 86_400_000));
        assert_eq!(lifetime_ms(Role::Viewer, Some("never")).unwrap(), None);
        assert_eq!(lifetime_ms(Role::Admin, Some("12h")).unwrap(), Some(12 * 3_600_000));
        assert!(matches!(lifetime_ms(Role::Viewer, Some("0s")), Err(TokenError::Lifetime)));
        assert!(matches!(lifetime_ms(Role::Viewer, Some("11000d")), Err(TokenError::Lifetime)));
        let err = lifetime_ms(Role::Viewer, Some("soon")).unwrap_err().to_string();
        assert!(err.contains("`soon` is not a span like 7d"), "{err}");

        let (auth, _keep) = open(1000, 1000);
        let (lasting, record) = auth.create("lasting", Role::Viewer, "admin", Some(60_000)).unwrap();
        assert!(record.expires_at_ms.unwrap() > now_ms());
        auth.check(Some(&format!("Bearer {lasting}")), Role::Viewer).unwrap();
        let (spent, _) = auth.create("spent", Role::Operator, "admin", Some(0)).unwrap();
        match auth.check(Some(&format!("Bearer {spent}")), Role::Viewer) {
            Err(Denied::Unauthenticated(why)) => {
                assert!(why.starts_with("token `spent` expired at 20"), "{why}")
            }
            other => panic!("an expired token was let through: {other:?}"),
        }
        assert_eq!(auth.list().unwrap().len(), 2, "an expired token stays listed until revoked");
    }

    /// Two replicas issuing one name at once: one token, the other told it exists; a token one
    /// replica issues or revokes holds on the other at once.
    #[test]
    fn on_postgres_replicas_share_tokens_and_names() {
        let db = TestDatabase::new();
        let a = Auth::open_postgres(&db.store(), "opa_root", 1000, 1000);
        let b = Auth::open_postgres(&db.store(), "opa_root", 1000, 1000);
        let (token, _) = a.create("ci", Role::Operator, "admin", None).unwrap();
        assert!(matches!(b.create("ci", Role::Viewer, "admin", None), Err(TokenError::Exists(_))));
        assert_eq!(b.check(Some(&format!("Bearer {token}")), Role::Operator).unwrap().name, "ci");
        let won = std::thread::scope(|s| {
            let racers: Vec<_> = [&a, &b]
                .into_iter()
                .map(|auth| s.spawn(move || auth.create("race", Role::Viewer, "admin", None).is_ok()))
                .collect();
            racers.into_iter().map(|r| r.join().unwrap()).filter(|won| *won).count()
        });
        assert_eq!(won, 1, "one replica issued `race`");
        assert!(b.revoke("ci").unwrap());
        assert!(matches!(
            a.check(Some(&format!("Bearer {token}")), Role::Viewer),
            Err(Denied::Unauthenticated(_))
        ));
    }

    /// A store that cannot be read is the coordinator's problem (503), not the caller's token
    /// (401); the admin token, which is not in the store, still works.
    #[test]
    fn on_postgres_a_store_that_cannot_be_read_is_unavailable_not_unauthenticated() {
        let db = TestDatabase::new();
        let auth = Auth::open_postgres(&db.store(), "opa_root", 1000, 1000);
        let (token, _) = auth.create("v", Role::Viewer, "admin", None).unwrap();
        db.drop_now();
        let denied = auth.check(Some(&format!("Bearer {token}")), Role::Viewer).unwrap_err();
        assert!(
            matches!(&denied, Denied::Unavailable(m) if m.contains("store is unavailable")),
            "{denied:?}"
        );
        assert_eq!(auth.check(Some("Bearer opa_root"), Role::Admin).unwrap().role, Role::Admin);
    }
}
