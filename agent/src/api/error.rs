//! API errors and their one mapping to HTTP: every handler returns [`ApiError`], which answers
//! `{"error": "..."}` with the status the Open Inference Protocol expects.

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use outpost_shared::runtime::InputError;
use outpost_shared::tensor::TensorError;

use crate::metrics::Outcome;

/// An error answered to an API client. The message is meant for the client: it names the
/// problem in their terms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    NotReady(String),
    #[error("{0}")]
    Overloaded(String),
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::NotReady(_) | ApiError::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `outcome` label this error is counted under.
    pub fn outcome(&self) -> Outcome {
        match self {
            ApiError::BadRequest(_) | ApiError::MethodNotAllowed(_) => Outcome::BadRequest,
            ApiError::NotFound(_) => Outcome::NotFound,
            ApiError::PayloadTooLarge(_) => Outcome::PayloadTooLarge,
            ApiError::NotReady(_) => Outcome::NotReady,
            ApiError::Overloaded(_) => Outcome::Overloaded,
            ApiError::Internal(_) => Outcome::Error,
        }
    }

    /// Maps a failure to read the request body (too large, cut short, timed out).
    pub fn from_body(rejection: BytesRejection, limit: usize) -> ApiError {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge(format!("request body is larger than the limit of {limit} bytes"))
        } else {
            ApiError::BadRequest(format!("cannot read request body: {}", rejection.body_text()))
        }
    }
}

impl From<InputError> for ApiError {
    fn from(e: InputError) -> Self {
        ApiError::BadRequest(e.to_string())
    }
}

impl From<crate::infer::InferError> for ApiError {
    fn from(e: crate::infer::InferError) -> Self {
        if e.is_client_error() {
            ApiError::BadRequest(e.to_string())
        } else {
            ApiError::Internal(e.to_string())
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let overloaded = matches!(self, ApiError::Overloaded(_));
        let mut response = (status, Json(serde_json::json!({ "error": self.to_string() }))).into_response();
        if overloaded {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// A tensor error on a named input becomes a 400 that names the input.
pub fn bad_tensor(input: &str, e: TensorError) -> ApiError {
    ApiError::BadRequest(format!("input `{input}`: {e}"))
}
