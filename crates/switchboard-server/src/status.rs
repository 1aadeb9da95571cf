//! How an operator looks at a running server: `GET /health` and `GET /metrics`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::metrics;
use crate::state::AppState;

/// `{"status":"ok"}`, or 503 `shutting_down` while draining (load balancers stop sending).
pub(crate) async fn health(State(state): State<Arc<AppState>>) -> Response {
    if state.shutting_down.load(Ordering::Relaxed) {
        let body = axum::Json(serde_json::json!({"status": "shutting_down"}));
        return (StatusCode::SERVICE_UNAVAILABLE, body).into_response();
    }
    axum::Json(serde_json::json!({"status": "ok"})).into_response()
}

/// Prometheus text.
pub(crate) async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics::render(&state.hub, &state.stats, &state.media_stats),
    )
        .into_response()
}
