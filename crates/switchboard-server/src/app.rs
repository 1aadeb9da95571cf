//! The HTTP application: shared state and the routes of every door on the one listener.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use switchboard_core::{Authenticator, Hub};

use crate::config::LimitsConfig;
use crate::metrics::ServerStats;
use crate::{api, metrics, ws};

/// What every door and the API share.
pub struct AppState {
    pub hub: Arc<Hub>,
    pub auth: Arc<dyn Authenticator>,
    pub stats: Arc<ServerStats>,
    pub limits: LimitsConfig,
    pub api_key: Option<String>,
    pub shutting_down: AtomicBool,
}

impl AppState {
    pub fn count_error(&self) {
        self.stats.errors.fetch_add(1, Ordering::Relaxed);
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/ws", any(ws::upgrade))
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .nest("/api", api::router(state.clone()))
        .fallback(api::not_found)
        .with_state(state)
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
