//! Refusals over HTTP: `{"error":{"code","message"}}` with the code's status (spec §6), the
//! one shape every door and the server API answer with.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use switchboard_proto::ErrorCode;

/// `{"error":{"code","message"}}` with the code's HTTP status.
pub(crate) fn error_response(code: ErrorCode, message: &str) -> Response {
    let status =
        StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = json!({"error": {"code": code.as_str(), "message": message}});
    (status, Json(body)).into_response()
}

/// A refused API call: answered as `{"error":{"code","message"}}` with the code's status.
pub(crate) struct ApiError {
    code: ErrorCode,
    message: String,
}

impl ApiError {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
        }
    }
}

impl From<&switchboard_core::AuthError> for ApiError {
    fn from(e: &switchboard_core::AuthError) -> Self {
        match e {
            switchboard_core::AuthError::Expired => {
                ApiError::new(ErrorCode::TokenExpired, "token expired")
            }
            switchboard_core::AuthError::Invalid(why) => {
                ApiError::new(ErrorCode::Unauthorized, why.clone())
            }
        }
    }
}

impl From<crate::admission::Refused> for ApiError {
    fn from(r: crate::admission::Refused) -> Self {
        ApiError::new(r.code, r.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error_response(self.code, &self.message)
    }
}
