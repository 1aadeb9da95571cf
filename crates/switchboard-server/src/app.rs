//! The HTTP application: shared state and the routes of every door on the one listener.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use switchboard_core::{Authenticator, Hub};

use crate::config::LimitsConfig;
use crate::metrics::ServerStats;
use crate::{api, cors, demo, metrics, streams, ws};

/// What every door and the API share.
pub struct AppState {
    pub hub: Arc<Hub>,
    /// Pusher Channels apps (`/app/{key}`, `/apps/{app_id}/...`).
    pub pusher: Arc<crate::pusher::Pusher>,
    pub auth: Arc<dyn Authenticator>,
    pub stats: Arc<ServerStats>,
    pub limits: LimitsConfig,
    pub api_key: Option<String>,
    pub shutting_down: AtomicBool,
    /// Signs the cursors of the one-way doors.
    pub cursor_key: Arc<crate::streams::cursor::CursorKey>,
    /// Live sessions of this node's streams, for `POST /session/<session>`.
    pub sessions: crate::streams::sessions::Sessions,
    /// Browser origins besides the server's own that may use the one-way doors.
    pub allowed_origins: Vec<String>,
}

impl AppState {
    pub fn count_error(&self) {
        self.stats.errors.fetch_add(1, Ordering::Relaxed);
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    let browser_doors = Router::new()
        .route("/sse", get(streams::sse).options(preflight))
        .route("/stream", get(streams::ndjson).options(preflight))
        .route("/poll", get(streams::poll).options(preflight))
        .route(
            "/session/{id}",
            post(streams::post_session).options(preflight),
        )
        .route(
            "/pusher/app/{key}/{server}/{session}/{kind}",
            post(crate::pusher::http::handle).options(preflight),
        )
        .layer(middleware::from_fn_with_state(state.clone(), cors::cors));
    Router::new()
        .merge(browser_doors)
        .route("/ws", any(ws::upgrade))
        .route("/app/{key}", any(crate::pusher::ws::upgrade))
        .merge(crate::pusher::api::router())
        .route("/api/ice-servers", get(api::ice_servers))
        .route("/health", get(health))
        .route("/demo/call", get(demo::call))
        .route("/demo/switchboard.js", get(demo::client_js))
        .route("/metrics", get(metrics_text))
        .nest("/api", api::router(state.clone()))
        .fallback(api::not_found)
        .with_state(state)
}

/// CORS preflights are answered by the CORS layer; this only gives them a route.
async fn preflight() -> StatusCode {
    StatusCode::NO_CONTENT
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    if state.shutting_down.load(Ordering::Relaxed) {
        let body = axum::Json(serde_json::json!({"status": "shutting_down"}));
        return (StatusCode::SERVICE_UNAVAILABLE, body).into_response();
    }
    axum::Json(serde_json::json!({"status": "ok"})).into_response()
}

async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics::render(&state.hub, &state.stats),
    )
        .into_response()
}
