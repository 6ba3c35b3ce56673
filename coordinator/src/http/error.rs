//! Every domain error of the floors below, mapped to an HTTP status in one place.
//!
//! Handlers return [`ApiError`]; `?` on a lower floor's error goes through the `From` impls here,
//! so what a refusal means to a client (400 bad request, 404, 409 conflict, 500) is decided once.
//! Errors are `{"error": "…"}`; a 429 carries `Retry-After`.

use axum::Json;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::base::store::StoreError;
use crate::http::auth::TokenError;
use crate::models::registry::RegistryError;
use crate::ops::deploy::DeployError;
use crate::ops::retraining::RetrainError;
use crate::ops::rollout::RolloutError;

/// A status and the message the client sees.
#[derive(Debug)]
pub struct ApiError(pub StatusCode, pub String);

impl ApiError {
    pub(crate) fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError(StatusCode::BAD_REQUEST, message.into())
    }

    pub(crate) fn internal(e: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %e, "request failed");
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("internal error: {e}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response();
        if self.0 == StatusCode::TOO_MANY_REQUESTS {
            response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        response
    }
}

fn registry_status(e: &RegistryError) -> StatusCode {
    match e {
        RegistryError::Conflict { .. } | RegistryError::Refused(_) => StatusCode::CONFLICT,
        RegistryError::NotFound(_) => StatusCode::NOT_FOUND,
        RegistryError::Invalid(_) | RegistryError::Signature(_) => StatusCode::BAD_REQUEST,
        RegistryError::Store(_) | RegistryError::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A store that cannot be reached is 503 with the reason (readiness fails meanwhile); any other
/// store failure is an internal error.
impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        if e.is_unavailable() {
            tracing::warn!(error = %e, "request failed: the store is unavailable");
            return ApiError(StatusCode::SERVICE_UNAVAILABLE, format!("the store is unavailable: {e}"));
        }
        ApiError::internal(e)
    }
}

fn with_status(status: StatusCode, e: impl std::fmt::Display) -> ApiError {
    if status == StatusCode::INTERNAL_SERVER_ERROR {
        return ApiError::internal(e);
    }
    ApiError(status, e.to_string())
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> ApiError {
        match e {
            RegistryError::Store(s) => s.into(),
            e => with_status(registry_status(&e), e),
        }
    }
}

impl From<DeployError> for ApiError {
    fn from(e: DeployError) -> ApiError {
        let status = match &e {
            DeployError::Registry(r) => registry_status(r),
            DeployError::NotDeployable { .. }
            | DeployError::NoPrimary { .. }
            | DeployError::AlreadyPrimary { .. } => StatusCode::CONFLICT,
            DeployError::UnknownDevice(_) | DeployError::NoTargets | DeployError::CanaryPercent(_) => {
                StatusCode::BAD_REQUEST
            }
            DeployError::Store(s) if s.is_unavailable() => StatusCode::SERVICE_UNAVAILABLE,
            DeployError::Store(_) | DeployError::Interrupted(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        with_status(status, e)
    }
}

impl From<RolloutError> for ApiError {
    fn from(e: RolloutError) -> ApiError {
        match e {
            RolloutError::Invalid(m) => ApiError(StatusCode::BAD_REQUEST, m),
            RolloutError::NotFound(m) => ApiError(StatusCode::NOT_FOUND, m),
            RolloutError::Conflict(m) => ApiError(StatusCode::CONFLICT, m),
            RolloutError::Deploy(d) => ApiError::from(d),
            RolloutError::Spec(e) => ApiError::bad_request(e.to_string()),
            RolloutError::Store(e) => e.into(),
        }
    }
}

impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> ApiError {
        match e {
            TokenError::Store(s) => s.into(),
            TokenError::Random => ApiError::internal(e),
            TokenError::UnknownRole(_)
            | TokenError::BadName(_)
            | TokenError::Exists(_)
            | TokenError::Expires(_)
            | TokenError::Lifetime => ApiError::bad_request(e.to_string()),
        }
    }
}

impl From<RetrainError> for ApiError {
    fn from(e: RetrainError) -> ApiError {
        // Both mean "not now, not like this": the model's configuration decides, not the request.
        match e {
            RetrainError::NotConfigured(_) | RetrainError::AlreadyRunning(_) => {
                ApiError(StatusCode::CONFLICT, e.to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::pg::store::testing::TestDatabase;

    /// PostgreSQL gone (its database dropped, the connections terminated) is 503 with the
    /// reason; a statement the server refuses is still an internal error.
    #[test]
    fn a_store_that_cannot_be_reached_is_503_and_a_refused_statement_500() {
        let db = TestDatabase::new();
        let store = db.store();
        let refused = store.with(|c| c.simple_query("SELECT no_such_column FROM no_such_table")).unwrap_err();
        assert!(!refused.is_unavailable(), "{refused}");
        assert_eq!(ApiError::from(refused).0, StatusCode::INTERNAL_SERVER_ERROR);
        db.drop_now();
        let gone = store.ping().unwrap_err();
        assert!(gone.is_unavailable(), "{gone}");
        let answer = ApiError::from(gone);
        assert_eq!(answer.0, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            answer.1.starts_with("the store is unavailable: ") && answer.1.contains("postgres://"),
            "{}",
            answer.1
        );
    }
}
