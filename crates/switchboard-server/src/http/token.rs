//! Who a request says its client is: the connection token from `?token=` or
//! `Authorization: Bearer`, and the refusal of a bad one.

use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use switchboard_core::{AuthError, Claims};
use switchboard_proto::ErrorCode;

use super::ApiError;
use crate::state::AppState;

/// Reads the token from `?token=` or `Authorization: Bearer`.
pub(crate) fn request_token(query: Option<&str>, headers: &HeaderMap) -> Option<String> {
    let from_query = query.and_then(|q| {
        q.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (k == "token").then(|| percent_decode(v))
        })
    });
    from_query.or_else(|| bearer(headers).map(str::to_owned))
}

/// Who a plain HTTP door's request is (`?token=` or `Authorization: Bearer`): the token's
/// claims, anonymous where the server admits anonymous clients, else the refusal.
pub(crate) fn request_claims(
    state: &AppState,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<Claims, ApiError> {
    match request_token(query, headers) {
        Some(token) => state.auth.verify(&token).map_err(|e| ApiError::from(&e)),
        None if state.hub.config.admits_anonymous() => Ok(Claims::anonymous()),
        None => Err(ApiError::new(
            ErrorCode::Unauthorized,
            "a token is required (?token= or Authorization: Bearer)",
        )),
    }
}

/// The credential of `Authorization: Bearer <credential>` (a token, or the API key).
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let credential = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))?;
    Some(credential.trim())
}

fn percent_decode(s: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let decoded = match bytes[i] {
            b'%' if i + 2 < bytes.len() => hex(bytes[i + 1]).zip(hex(bytes[i + 2])),
            _ => None,
        };
        match (decoded, bytes[i]) {
            (Some((hi, lo)), _) => {
                out.push(hi * 16 + lo);
                i += 3;
            }
            (None, b'+') => {
                out.push(b' ');
                i += 1;
            }
            (None, b) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(crate) fn auth_error_response(e: &AuthError) -> Response {
    ApiError::from(e).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn token_from_query_or_header() {
        let mut headers = HeaderMap::new();
        assert_eq!(
            request_token(Some("a=1&token=x%2By"), &headers).as_deref(),
            Some("x+y")
        );
        assert_eq!(request_token(None, &headers), None);
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(request_token(Some("a=1"), &headers).as_deref(), Some("abc"));
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }
}
