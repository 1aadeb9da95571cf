//! The wiring: every door's state, and the routes of every door on the one listener. Nothing
//! here handles a request; each route goes to the module that owns it.

use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::middleware;
use axum::routing::{any, get, patch, post};

use crate::media::MediaDoor;
use crate::pusher::door::PusherDoor;
use crate::state::AppState;
use crate::streams::StreamsState;
use crate::{api, demo, http, media, pusher, status, streams, ws};

/// The state of each door: what they all share, and what some keep of their own.
pub(crate) struct Doors {
    pub shared: Arc<AppState>,
    pub streams: Arc<StreamsState>,
    pub pusher: Arc<PusherDoor>,
    pub media: Arc<MediaDoor>,
}

pub(crate) fn router(doors: &Doors) -> Router {
    let shared = &doors.shared;
    let cors = || middleware::from_fn_with_state(shared.clone(), http::cors);
    let one_way = Router::new()
        .route("/sse", get(streams::sse).options(preflight))
        .route("/stream", get(streams::ndjson).options(preflight))
        .route("/poll", get(streams::poll).options(preflight))
        .route(
            "/session/{id}",
            post(streams::post_session).options(preflight),
        )
        .layer(cors())
        .with_state(doors.streams.clone());
    let pusher_fallbacks = Router::new()
        .route(
            "/pusher/app/{key}/{server}/{session}/{kind}",
            post(pusher::http::handle).options(preflight),
        )
        .layer(cors())
        .with_state(doors.pusher.clone());
    let media = Router::new()
        .route("/rtc", post(media::rtc).options(preflight))
        .route("/whip/{room}", post(media::whip).options(preflight))
        .route("/whep/{room}", post(media::whep).options(preflight))
        .route(
            "/whep/{room}/{peer}",
            post(media::whep_one).options(preflight),
        )
        .route(
            "/rtc/{id}",
            patch(media::patch).delete(media::delete).options(preflight),
        )
        .layer(cors())
        .with_state(doors.media.clone());
    let pusher = Router::new()
        .route("/app/{key}", any(pusher::ws::upgrade))
        .merge(pusher::api::router())
        .with_state(doors.pusher.clone());
    Router::new()
        .merge(one_way)
        .merge(pusher_fallbacks)
        .merge(media)
        .merge(pusher)
        .route("/ws", any(ws::upgrade))
        .route("/api/ice-servers", get(api::ice_servers))
        .route("/health", get(status::health))
        .route("/metrics", get(status::metrics_text))
        .route("/demo/call", get(demo::call))
        .route("/demo/whip", get(demo::whip))
        .route("/demo/whep", get(demo::whep))
        .route("/demo/media.js", get(demo::media_js))
        .route("/demo/sfu.js", get(demo::sfu_js))
        .route("/demo/switchboard.js", get(demo::client_js))
        .nest("/api", api::router(shared.clone()))
        .fallback(api::not_found)
        .with_state(shared.clone())
}

/// CORS preflights are answered by the CORS layer; this only gives them a route.
async fn preflight() -> StatusCode {
    StatusCode::NO_CONTENT
}
