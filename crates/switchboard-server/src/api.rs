//! The server API (spec §6): the application's backend publishes and manages clients over
//! HTTPS with `Authorization: Bearer <api key>`. JSON in, JSON out; errors as
//! `{"error":{"code","message"}}` with the matching HTTP status.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use switchboard_core::engine::{HistoryQuery, NodeAnswer, NodeRequest};
use switchboard_core::hub::HubError;
use switchboard_core::session::history_page;
use switchboard_proto::ErrorCode;
use switchboard_proto::command::MAX_CHANNEL_LEN;

use crate::auth::constant_time_eq;
use crate::http::{ApiError, bearer, error_response, read_body};
use crate::state::AppState;

pub(crate) fn router(state: Arc<AppState>) -> Router<Arc<AppState>> {
    Router::new()
        .route("/publish", post(publish))
        .route("/broadcast", post(broadcast))
        .route("/batch", post(batch))
        .route("/channels", get(channels))
        .route("/presence/{*channel}", get(presence))
        .route("/history/{*channel}", get(history))
        .route("/disconnect", post(disconnect))
        .route("/unsubscribe", post(unsubscribe))
        .route("/rooms/{*room}", get(room))
        .route("/info", get(info))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state, require_api_key))
}

type ApiResult = Result<Response, ApiError>;

fn fail(code: ErrorCode, message: impl Into<String>) -> ApiError {
    ApiError::new(code, message)
}

async fn require_api_key(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    state.stats.api_requests.fetch_add(1, Ordering::Relaxed);
    let Some(expected) = state.api_key.as_deref() else {
        state.count_error();
        return fail(
            ErrorCode::Forbidden,
            "the server API is disabled: set [auth] api_key in the config",
        )
        .into_response();
    };
    match bearer(&headers) {
        Some(key) if constant_time_eq(key.as_bytes(), expected.as_bytes()) => {
            let response = next.run(request).await;
            if !response.status().is_success() {
                state.count_error();
            }
            response
        }
        Some(_) => {
            state.count_error();
            fail(ErrorCode::Unauthorized, "invalid API key").into_response()
        }
        None => {
            state.count_error();
            fail(
                ErrorCode::Unauthorized,
                "missing `Authorization: Bearer <api key>` header",
            )
            .into_response()
        }
    }
}

async fn read_json<T: DeserializeOwned>(state: &AppState, body: Body) -> Result<T, ApiError> {
    let limits = &state.limits;
    let bytes = read_body(body, limits.max_api_body, limits.handshake_timeout).await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| fail(ErrorCode::BadRequest, format!("invalid JSON body: {e}")))
}

fn check_channel(channel: &str) -> Result<(), ApiError> {
    if channel.is_empty() {
        return Err(fail(ErrorCode::BadRequest, "`channel` must not be empty"));
    }
    if channel.len() > MAX_CHANNEL_LEN {
        return Err(fail(
            ErrorCode::BadRequest,
            format!("`channel` is longer than {MAX_CHANNEL_LEN} bytes"),
        ));
    }
    Ok(())
}

fn engine_failure(e: impl std::fmt::Display) -> ApiError {
    fail(ErrorCode::Unavailable, e.to_string())
}

fn hub_failure(e: HubError) -> ApiError {
    match e {
        HubError::TooLarge(message) => fail(ErrorCode::TooLarge, message),
        e => engine_failure(e),
    }
}

#[derive(Deserialize)]
struct PublishBody {
    channel: String,
    data: Box<RawValue>,
}

async fn publish(State(state): State<Arc<AppState>>, body: Body) -> ApiResult {
    let body: PublishBody = read_json(&state, body).await?;
    check_channel(&body.channel)?;
    let data = Bytes::from(body.data.get().to_owned());
    let position = state
        .hub
        .publish(&body.channel, data)
        .await
        .map_err(engine_failure)?;
    Ok(Json(json!({"offset": position.offset, "epoch": &*position.epoch})).into_response())
}

/// Most channels in one `/api/broadcast`: each is a publish, and one request should not hold
/// the engine for long.
const MAX_BROADCAST_CHANNELS: usize = 1000;

#[derive(Deserialize)]
struct BroadcastBody {
    channels: Vec<String>,
    data: Box<RawValue>,
}

async fn broadcast(State(state): State<Arc<AppState>>, body: Body) -> ApiResult {
    let body: BroadcastBody = read_json(&state, body).await?;
    if body.channels.is_empty() {
        return Err(fail(ErrorCode::BadRequest, "`channels` must not be empty"));
    }
    if body.channels.len() > MAX_BROADCAST_CHANNELS {
        return Err(fail(
            ErrorCode::TooLarge,
            format!("at most {MAX_BROADCAST_CHANNELS} channels per broadcast"),
        ));
    }
    let data = Bytes::from(body.data.get().to_owned());
    let mut results = Vec::with_capacity(body.channels.len());
    for channel in &body.channels {
        results.push(publish_one(&state, channel, data.clone()).await);
    }
    Ok(Json(json!({ "results": results })).into_response())
}

/// Publishes to one channel of a many-channel call; its entry in `results`: the position,
/// or the error (a bad name or an unavailable engine) without failing the others.
async fn publish_one(state: &AppState, channel: &str, data: Bytes) -> Value {
    if check_channel(channel).is_err() {
        return json!({"channel": channel, "error": {"code": "bad_request", "message": "invalid channel name"}});
    }
    match state.hub.publish(channel, data).await {
        Ok(p) => json!({"channel": channel, "offset": p.offset, "epoch": &*p.epoch}),
        Err(e) => {
            json!({"channel": channel, "error": {"code": "unavailable", "message": e.to_string()}})
        }
    }
}

/// Most publications in one `POST /api/batch`.
const MAX_BATCH: usize = 100;

#[derive(Deserialize)]
struct BatchBody {
    publications: Vec<PublishBody>,
}

/// `POST /api/batch` (an extension of the contract's API): many `{channel, data}` in one
/// request, published in the order given, each answered like `/api/publish` (or with its
/// error), so a backend with many small messages pays for one request, not one each.
async fn batch(State(state): State<Arc<AppState>>, body: Body) -> ApiResult {
    let body: BatchBody = read_json(&state, body).await?;
    if body.publications.is_empty() || body.publications.len() > MAX_BATCH {
        return Err(fail(
            ErrorCode::BadRequest,
            format!("`publications` must hold 1 to {MAX_BATCH} items"),
        ));
    }
    let mut results = Vec::with_capacity(body.publications.len());
    for publication in body.publications {
        let data = Bytes::from(publication.data.get().to_owned());
        results.push(publish_one(&state, &publication.channel, data).await);
    }
    Ok(Json(json!({ "results": results })).into_response())
}

async fn channels(State(state): State<Arc<AppState>>) -> ApiResult {
    let channels: Vec<Value> = state
        .hub
        .cluster_channels()
        .await
        .map_err(engine_failure)?
        .into_iter()
        .map(|(name, subscribers)| json!({"name": name, "subscribers": subscribers}))
        .collect();
    Ok(Json(json!({ "channels": channels })).into_response())
}

/// Runs a command on every node; the sum of their counts.
async fn ask_nodes(state: &AppState, request: NodeRequest) -> Result<Vec<NodeAnswer>, ApiError> {
    state
        .hub
        .engine()
        .ask_nodes(request)
        .await
        .map_err(engine_failure)
}

fn total_count(answers: &[NodeAnswer]) -> usize {
    answers.iter().map(NodeAnswer::count).sum()
}

async fn presence(State(state): State<Arc<AppState>>, Path(channel): Path<String>) -> ApiResult {
    check_channel(&channel)?;
    if !state.hub.config.namespace(&channel).presence {
        return Err(fail(
            ErrorCode::NotFound,
            "presence is not enabled for this channel's namespace",
        ));
    }
    let members = state
        .hub
        .presence_reply(&channel)
        .await
        .map_err(hub_failure)?;
    Ok(Json(json!({ "members": members })).into_response())
}

async fn history(
    State(state): State<Arc<AppState>>,
    Path(channel): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> ApiResult {
    check_channel(&channel)?;
    let number = |name: &str| -> Result<Option<u64>, ApiError> {
        params
            .get(name)
            .map(|v| {
                v.parse::<u64>().map_err(|_| {
                    fail(
                        ErrorCode::BadRequest,
                        format!("`{name}` must be a non-negative integer"),
                    )
                })
            })
            .transpose()
    };
    let limit = number("limit")?.map(|n| n as usize);
    let since = match (number("since_offset")?, params.get("epoch")) {
        (Some(offset), Some(epoch)) => Some((offset, epoch.clone())),
        (None, None) => None,
        _ => {
            return Err(fail(
                ErrorCode::BadRequest,
                "`since_offset` and `epoch` must be given together",
            ));
        }
    };
    let result = state
        .hub
        .history(&channel, HistoryQuery { since, limit })
        .await
        .map_err(hub_failure)?;
    Ok(Json(history_page(&channel, &result)).into_response())
}

#[derive(Deserialize)]
struct UserBody {
    user: String,
}

async fn disconnect(State(state): State<Arc<AppState>>, body: Body) -> ApiResult {
    let body: UserBody = read_json(&state, body).await?;
    let request = NodeRequest::DisconnectUser { user: body.user };
    let count = total_count(&ask_nodes(&state, request).await?);
    Ok(Json(json!({ "disconnected": count })).into_response())
}

#[derive(Deserialize)]
struct UnsubscribeBody {
    user: String,
    channel: String,
}

async fn unsubscribe(State(state): State<Arc<AppState>>, body: Body) -> ApiResult {
    let body: UnsubscribeBody = read_json(&state, body).await?;
    check_channel(&body.channel)?;
    let request = NodeRequest::UnsubscribeUser {
        user: body.user,
        channel: body.channel,
    };
    ask_nodes(&state, request).await?;
    Ok(Json(json!({})).into_response())
}

async fn room(State(state): State<Arc<AppState>>, Path(room): Path<String>) -> ApiResult {
    check_channel(&room)?;
    let peers = state.hub.room_peers(&room).await.map_err(engine_failure)?;
    // Where its media lives: SFU rooms do not span nodes, so this is the node to send the
    // room's members to (normally one; several when members reached different nodes). A room
    // without media answers as spec §6 has it, `{"peers":[...]}` alone.
    let media: Vec<_> = state
        .hub
        .media_nodes(&room)
        .await
        .map_err(|e| fail(ErrorCode::Unavailable, e.to_string()))?
        .into_iter()
        .map(|(node, name, peers)| json!({"node": node, "name": name, "peers": peers}))
        .collect();
    if media.is_empty() {
        return Ok(Json(json!({ "peers": peers })).into_response());
    }
    Ok(Json(json!({ "peers": peers, "media": media })).into_response())
}

/// `GET /api/ice-servers` for a connection-token holder (not the API key): the ICE servers,
/// with fresh TURN credentials, that `join_room` would hand out.
pub(crate) async fn ice_servers(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let token = crate::http::request_token(request.uri().query(), request.headers());
    let user = match token.map(|t| state.auth.verify(&t)) {
        Some(Ok(claims)) => claims.user,
        Some(Err(e)) => {
            state.count_error();
            return ApiError::from(&e).into_response();
        }
        None if state.hub.config.allow_anonymous => String::new(),
        None => {
            state.count_error();
            return error_response(ErrorCode::Unauthorized, "a connection token is required");
        }
    };
    Json(json!({ "ice_servers": state.hub.ice_servers(&user) })).into_response()
}

/// This node's counts, and every live node's as the engine knows them.
async fn info(State(state): State<Arc<AppState>>) -> ApiResult {
    let hub = &state.hub;
    let nodes = hub.engine().nodes().await.map_err(engine_failure)?;
    Ok(Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "engine": hub.engine().kind(),
        "uptime_seconds": hub.uptime().as_secs(),
        "connections": hub.connection_count(),
        "channels": hub.channel_count(),
        "subscriptions": hub.stats.subscriptions.load(Ordering::Relaxed),
        "rooms": hub.room_count(),
        "nodes": nodes,
    }))
    .into_response())
}

pub(crate) async fn not_found() -> Response {
    error_response(ErrorCode::NotFound, "no such API call")
}

async fn method_not_allowed() -> Response {
    let mut response = error_response(
        ErrorCode::BadRequest,
        "method not allowed for this API call",
    );
    *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    response
}
