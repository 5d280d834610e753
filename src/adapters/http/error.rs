//! The one error shape of the API: every 4xx and 5xx answer has the JSON
//! body `{"error": code, "field": name-or-null, "reason": text}`, so a
//! client can tell which field was wrong and why without parsing prose.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::runtime::StoreError;

/// An API error; see the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    /// A stable machine-readable code, e.g. `missing_field`.
    pub error: &'static str,
    /// The offending field, header or query parameter, if one is to blame.
    pub field: Option<String>,
    /// What was wrong, for a human.
    pub reason: String,
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    field: Option<&'a str>,
    reason: &'a str,
}

impl ApiError {
    pub fn new(
        status: StatusCode,
        error: &'static str,
        field: Option<&str>,
        reason: impl Into<String>,
    ) -> ApiError {
        debug_assert!(
            status.is_client_error() || status.is_server_error(),
            "an error has an error status"
        );
        ApiError {
            status,
            error,
            field: field.map(str::to_string),
            reason: reason.into(),
        }
    }

    /// 400 about one field.
    pub fn bad_field(error: &'static str, field: &str, reason: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, error, Some(field), reason)
    }

    /// 422: well-formed, but the saga cannot take it.
    pub fn unprocessable(error: &'static str, field: &str, reason: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, error, Some(field), reason)
    }

    pub fn not_found(what: &str, reason: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", Some(what), reason)
    }
}

impl From<StoreError> for ApiError {
    /// An unreachable store is the client's cue to retry (503); anything
    /// else is our fault (500).
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::Unavailable(_) | StoreError::Conflict(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                None,
                e.to_string(),
            ),
            StoreError::Fatal(_) => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "store_error",
                None,
                e.to_string(),
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(status = %self.status, error = self.error, reason = %self.reason, "request failed");
        }
        let body = Body {
            error: self.error,
            field: self.field.as_deref(),
            reason: &self.reason,
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            // RFC 6750: a 401 names the scheme the client should use.
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}
