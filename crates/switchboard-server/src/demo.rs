//! `GET /demo/call`: a video call page (inline style, nothing fetched from elsewhere) built on
//! the TypeScript client, which this server also serves at `GET /demo/switchboard.js`: it
//! joins a room on the same host and calls every other peer with WebRTC through the client's
//! call helper. Query parameters: `room` (default `demo`), `token` (optional: without one it
//! works in development mode), `name`, `relay=1` for `iceTransportPolicy: "relay"`
//! (everything through TURN), `transport` (signal through one door only), `debug=1`, and
//! `mode=sfu`: the media goes through the server's SFU (`/demo/sfu.js`, one peer connection
//! to the server whatever the room's size) instead of peer to peer.
//!
//! `demo/switchboard.js` is a committed copy of `clients/js/dist/index.js` (so building the
//! server needs no npm); `.ci/sdk` checks that it equals a fresh build.

use axum::http::header;
use axum::response::{IntoResponse, Response};

/// The page, compiled into the binary.
const CALL_HTML: &str = include_str!("demo/call.html");

/// `GET /demo/whip`: publishes the camera into a room by WHIP (`room`, `token`).
const WHIP_HTML: &str = include_str!("demo/whip.html");

/// `GET /demo/whep`: plays a room by WHEP (`room`, `token`, `peer` for one publisher).
const WHEP_HTML: &str = include_str!("demo/whep.html");

/// `GET /demo/media.js`: what the WHIP and WHEP pages share.
const MEDIA_JS: &str = include_str!("demo/media.js");

/// `GET /demo/sfu.js`: an SFU room member over `POST /rtc` and its data channel door.
const SFU_JS: &str = include_str!("demo/sfu.js");

/// The TypeScript client's bundle (`clients/js/dist/index.js`), compiled into the binary.
const CLIENT_JS: &str = include_str!("demo/switchboard.js");

/// What the page may load: its own inline module script, the client from this server, its
/// inline style, and connections to its own origin (which includes `ws:`/`wss:` to the same
/// host). Media streams are not fetched, so camera and peer video need nothing here.
const CALL_CSP: &str = "default-src 'none'; script-src 'self' 'unsafe-inline'; \
    style-src 'unsafe-inline'; connect-src 'self'; img-src data:; \
    base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// `GET /demo/call`.
pub(crate) async fn call() -> Response {
    page(CALL_HTML)
}

/// `GET /demo/whip`.
pub(crate) async fn whip() -> Response {
    page(WHIP_HTML)
}

/// `GET /demo/whep`.
pub(crate) async fn whep() -> Response {
    page(WHEP_HTML)
}

fn page(html: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::CONTENT_SECURITY_POLICY, CALL_CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        html,
    )
        .into_response()
}

/// `GET /demo/switchboard.js`: the TypeScript client, as one ES module.
pub(crate) async fn client_js() -> Response {
    script(CLIENT_JS)
}

/// `GET /demo/media.js`: the WHIP and WHEP pages' shared module.
pub(crate) async fn media_js() -> Response {
    script(MEDIA_JS)
}

/// `GET /demo/sfu.js`: the call page's SFU mode.
pub(crate) async fn sfu_js() -> Response {
    script(SFU_JS)
}

fn script(js: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        js,
    )
        .into_response()
}
