//! `GET /demo/call`: a self-contained video call page (inline script and style, nothing
//! fetched from elsewhere) that joins a room over `/ws` on the same host and connects every
//! pair of peers with WebRTC, signaling through the room. Query parameters: `room` (default
//! `demo`), `token` (optional: without one it works in development mode), `name`, and
//! `relay=1` for `iceTransportPolicy: "relay"` (everything through TURN).

use axum::http::header;
use axum::response::{IntoResponse, Response};

/// The page, compiled into the binary.
const CALL_HTML: &str = include_str!("demo/call.html");

/// What the page may load: its own inline script and style, and connections to its own origin
/// (which includes `ws:`/`wss:` to the same host). Media streams are not fetched, so camera and
/// peer video need nothing here.
const CALL_CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; \
    style-src 'unsafe-inline'; connect-src 'self'; img-src data:; \
    base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// `GET /demo/call`.
pub async fn call() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::CONTENT_SECURITY_POLICY, CALL_CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        CALL_HTML,
    )
        .into_response()
}
