//! Origin checks: CORS for the doors a browser reaches with `fetch`/`EventSource` (`/sse`,
//! `/stream`, `/poll`, `/session/...`), and the check of a browser's WebSocket upgrade.
//! Requests without an `Origin` (not from a browser) pass; same-origin requests pass; others
//! only from `[auth] allowed_origins`.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use switchboard_proto::ErrorCode;

use super::error_response;
use crate::state::AppState;

/// Whether `origin` (`scheme://host[:port]`) may use the doors of a server reached as `host`.
pub(super) fn origin_allowed(allowed: &[String], origin: &str, host: Option<&str>) -> bool {
    let same_origin = origin
        .split_once("://")
        .is_some_and(|(_, authority)| Some(authority) == host);
    same_origin
        || allowed
            .iter()
            .any(|a| a == "*" || a.trim_end_matches('/') == origin)
}

/// Whether a request with these headers comes from an origin that may use the doors: no
/// `Origin` (not a browser), the server's own, or a listed one.
fn request_allowed(state: &AppState, headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    origin
        .to_str()
        .is_ok_and(|o| origin_allowed(&state.allowed_origins, o, host))
}

/// The refusal of a browser's WebSocket upgrade (`/ws`, `/app/...`): with `[auth]
/// allowed_origins` set, one from another origin is refused with 403 (spec §8). Browsers apply no CORS to WebSocket:
/// without this check a page on any origin could open connections to the server.
pub(crate) fn check_upgrade_origin(state: &AppState, headers: &HeaderMap) -> Option<Response> {
    if state.allowed_origins.is_empty() || request_allowed(state, headers) {
        return None;
    }
    state.count_error();
    Some(error_response(
        ErrorCode::Forbidden,
        "origin not allowed (see [auth] allowed_origins)",
    ))
}

pub(crate) async fn cors(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(origin) = request.headers().get(header::ORIGIN).cloned() else {
        return next.run(request).await;
    };
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok());
    let allowed = origin
        .to_str()
        .is_ok_and(|o| origin_allowed(&state.allowed_origins, o, host));
    if !allowed {
        state.count_error();
        return error_response(
            ErrorCode::Forbidden,
            "origin not allowed (see [auth] allowed_origins)",
        );
    }
    let mut response = if request.method() == Method::OPTIONS {
        let mut preflight = StatusCode::NO_CONTENT.into_response();
        let headers = preflight.headers_mut();
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, PATCH, DELETE, OPTIONS"),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type, last-event-id"),
        );
        headers.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        preflight
    } else {
        next.run(request).await
    };
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    // The media door's answers name the session and the ICE servers in headers.
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("Location, Link"),
    );
    headers.insert(header::VARY, HeaderValue::from_static("Origin"));
    response
}

#[cfg(test)]
mod tests {
    use super::origin_allowed;

    #[test]
    fn same_origin_listed_or_any() {
        let none: Vec<String> = vec![];
        assert!(origin_allowed(
            &none,
            "http://127.0.0.1:7700",
            Some("127.0.0.1:7700")
        ));
        assert!(!origin_allowed(
            &none,
            "http://evil.example",
            Some("127.0.0.1:7700")
        ));
        let listed = vec!["https://app.example/".to_string()];
        assert!(origin_allowed(
            &listed,
            "https://app.example",
            Some("api.example")
        ));
        assert!(!origin_allowed(
            &listed,
            "https://app.example.evil",
            Some("api.example")
        ));
        assert!(origin_allowed(&["*".to_string()], "http://any", None));
    }
}
