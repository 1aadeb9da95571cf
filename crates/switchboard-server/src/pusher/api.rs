//! Pusher's HTTP API under `/apps/{app_id}`, as the server SDKs call it. Every request is
//! signed (`auth_key`, `auth_timestamp`, `auth_version`, `body_md5`, `auth_signature`);
//! a bad or stale signature is 401. Errors are `{"error":"<message>"}` with their status.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use switchboard_core::unix_now;
use switchboard_proto::pusher::{self as proto, USER_CHANNEL_PREFIX, valid_channel_name};

use super::door::PusherDoor;
use super::{App, signing};
use crate::http::{BodyError, read_body};
use crate::state::AppState;

pub(crate) fn router() -> Router<Arc<PusherDoor>> {
    Router::new()
        .route("/apps/{*rest}", any(handle))
        .route("/users/{user}/terminate_connections", post(handle))
}

type ApiResult = Result<Response, (StatusCode, String)>;

fn fail(status: StatusCode, message: impl Into<String>) -> (StatusCode, String) {
    (status, message.into())
}

fn error_response((status, message): (StatusCode, String)) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// One signed request, its app checked.
struct Call {
    app: Arc<App>,
    params: Vec<(String, String)>,
    body: Bytes,
}

impl Call {
    fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The `info` attributes asked for (`info=user_count,subscription_count`).
    fn info(&self) -> HashSet<String> {
        self.param("info")
            .map(|i| i.split(',').map(|s| s.trim().to_owned()).collect())
            .unwrap_or_default()
    }
}

async fn handle(State(door): State<Arc<PusherDoor>>, request: Request) -> Response {
    let state = &door.shared;
    state
        .stats
        .api_requests
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    match route(&door, request).await {
        Ok(r) => r,
        Err(e) => {
            state.count_error();
            error_response(e)
        }
    }
}

async fn route(door: &PusherDoor, request: Request) -> ApiResult {
    let state = &door.shared;
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or("").to_owned();
    let limits = &state.limits;
    let body = read_body(
        request.into_body(),
        limits.max_api_body,
        limits.handshake_timeout,
    )
    .await
    .map_err(|e| {
        let status = match e {
            BodyError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            BodyError::TooSlow(_) => StatusCode::REQUEST_TIMEOUT,
        };
        fail(status, e.message())
    })?;
    let params = signing::parse_query(&query);
    let (app, tail) = match path.strip_prefix("/apps/") {
        Some(rest) => {
            let (app_id, tail) = rest.split_once('/').unwrap_or((rest, ""));
            let app = door.apps.by_id(app_id).cloned();
            let app =
                app.ok_or_else(|| fail(StatusCode::NOT_FOUND, format!("no app `{app_id}`")))?;
            (app, tail)
        }
        // `/users/{id}/terminate_connections` without the app prefix, as pusher-http-python
        // 3.x sends it: the app is the one whose key signed the request.
        None => {
            let key = params
                .iter()
                .find(|(k, _)| k == "auth_key")
                .map(|(_, v)| v.as_str())
                .unwrap_or("");
            let app = door.apps.by_key(key).cloned();
            let app = app.ok_or_else(|| fail(StatusCode::UNAUTHORIZED, "unknown auth_key"))?;
            (app, path.trim_start_matches('/'))
        }
    };
    let config = &app.config;
    signing::verify_request(
        &config.key,
        &config.secret,
        method.as_str(),
        &path,
        &params,
        &body,
        unix_now(),
    )
    .map_err(|e| fail(StatusCode::UNAUTHORIZED, e.to_string()))?;
    if !config.enabled {
        return Err(fail(StatusCode::FORBIDDEN, "application disabled"));
    }
    let call = Call { app, params, body };
    let segments: Vec<String> = tail.split('/').map(percent_decode_path).collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    match (&method, segments.as_slice()) {
        (&Method::POST, ["events"]) => events(state, &call).await,
        (&Method::POST, ["batch_events"]) => batch_events(state, &call).await,
        (&Method::GET, ["channels"]) => channels(state, &call).await,
        (&Method::GET, ["channels", name]) => channel(state, &call, name).await,
        (&Method::GET, ["channels", name, "users"]) => users(state, &call, name).await,
        (&Method::POST, ["users", user, "terminate_connections"]) => {
            // The user's connections may be on any node.
            let argument = super::terminate_argument(&call.app.config.id, user);
            state
                .hub
                .ask_extension(super::TERMINATE_REQUEST, &argument)
                .await
                .map_err(|e| fail(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
            Ok(Json(json!({})).into_response())
        }
        _ => Err(fail(
            StatusCode::NOT_FOUND,
            format!("no route {method} {path}"),
        )),
    }
}

fn percent_decode_path(segment: &str) -> String {
    // `+` is literal in a path; only %XX is decoded.
    signing::parse_query(&format!("x={}", segment.replace('+', "%2B")))
        .pop()
        .map(|(_, v)| v)
        .unwrap_or_default()
}

/// One event to trigger: `{"name","data","channel"|"channels","socket_id","info"}`.
#[derive(Deserialize)]
struct Event {
    name: String,
    data: Box<RawValue>,
    #[serde(default)]
    channels: Option<Vec<String>>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    socket_id: Option<String>,
    #[serde(default)]
    info: Option<String>,
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, (StatusCode, String)> {
    serde_json::from_slice(body)
        .map_err(|e| fail(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")))
}

/// Checks an event against the app's limits; returns its channels.
fn check_event(app: &App, event: &Event) -> Result<Vec<String>, (StatusCode, String)> {
    let config = &app.config;
    let channels = match (&event.channels, &event.channel) {
        (Some(list), None) => list.clone(),
        (None, Some(one)) => vec![one.clone()],
        _ => {
            return Err(fail(
                StatusCode::BAD_REQUEST,
                "give `channels` (a list) or `channel`",
            ));
        }
    };
    if channels.is_empty() || channels.len() > config.max_channels_per_event {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            format!(
                "an event goes to 1 to {} channels",
                config.max_channels_per_event
            ),
        ));
    }
    if event.name.is_empty() || event.name.len() > super::conn::MAX_EVENT_NAME {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            "event names are 1 to 200 characters",
        ));
    }
    if let Some(bad) = channels.iter().find(|c| {
        !valid_channel_name(c)
            && !c
                .strip_prefix(USER_CHANNEL_PREFIX)
                .is_some_and(|u| !u.is_empty() && u.len() <= 200)
    }) {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            format!("invalid channel name `{bad}`"),
        ));
    }
    if data_text(&event.data).len() > config.max_event_size {
        return Err(fail(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("event data larger than {} bytes", config.max_event_size),
        ));
    }
    Ok(channels)
}

/// The event's data as Pusher carries it: a string (other JSON is taken as its text).
fn data_text(data: &RawValue) -> String {
    match serde_json::from_str::<String>(data.get()) {
        Ok(s) => s,
        Err(_) => data.get().to_owned(),
    }
}

async fn trigger(
    state: &AppState,
    app: &App,
    event: &Event,
    channels: &[String],
) -> Result<(), (StatusCode, String)> {
    let text = data_text(&event.data);
    let quoted = serde_json::to_string(&text).expect("string serializes");
    let data = RawValue::from_string(quoted).expect("a JSON string is JSON");
    let envelope = proto::envelope(&event.name, &data, None, event.socket_id.as_deref());
    for channel in channels {
        state
            .hub
            .publish(&app.hub_channel(channel), envelope.clone())
            .await
            .map_err(|e| fail(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    }
    Ok(())
}

/// `subscription_count` and `user_count` of a channel, as far as asked for.
async fn channel_info(
    state: &AppState,
    app: &App,
    channel: &str,
    info: &HashSet<String>,
) -> serde_json::Map<String, Value> {
    let hub_channel = app.hub_channel(channel);
    let mut out = serde_json::Map::new();
    if info.contains("subscription_count") {
        let count = state
            .hub
            .cluster_subscriber_count(&hub_channel)
            .await
            .unwrap_or_else(|_| state.hub.subscriber_count(&hub_channel));
        out.insert("subscription_count".into(), json!(count));
    }
    if info.contains("user_count") && channel.starts_with("presence-") {
        out.insert(
            "user_count".into(),
            json!(user_ids(state, &hub_channel).await.len()),
        );
    }
    out
}

/// Distinct users of a presence channel, in order.
async fn user_ids(state: &AppState, hub_channel: &str) -> Vec<String> {
    let members = state.hub.presence(hub_channel).await.unwrap_or_default();
    let mut seen = HashSet::new();
    let mut ids: Vec<String> = members
        .iter()
        .filter(|m| !m.user.is_empty() && seen.insert(m.user.clone()))
        .map(|m| m.user.to_string())
        .collect();
    ids.sort();
    ids
}

async fn events(state: &AppState, call: &Call) -> ApiResult {
    let event: Event = parse(&call.body)?;
    let channels = check_event(&call.app, &event)?;
    trigger(state, &call.app, &event, &channels).await?;
    let Some(info) = &event.info else {
        return Ok(Json(json!({})).into_response());
    };
    let info: HashSet<String> = info.split(',').map(|s| s.trim().to_owned()).collect();
    let mut out = serde_json::Map::new();
    for channel in &channels {
        out.insert(
            channel.clone(),
            Value::Object(channel_info(state, &call.app, channel, &info).await),
        );
    }
    Ok(Json(json!({ "channels": out })).into_response())
}

#[derive(Deserialize)]
struct Batch {
    batch: Vec<Event>,
}

async fn batch_events(state: &AppState, call: &Call) -> ApiResult {
    let batch: Batch = parse(&call.body)?;
    let max = call.app.config.max_batch_size;
    if batch.batch.len() > max {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            format!("a batch holds at most {max} events"),
        ));
    }
    // Check every event before triggering any: a bad batch publishes nothing.
    let mut checked = Vec::with_capacity(batch.batch.len());
    for event in &batch.batch {
        let channels = check_event(&call.app, event)?;
        if channels.len() != 1 {
            return Err(fail(
                StatusCode::BAD_REQUEST,
                "each batch event names one `channel`",
            ));
        }
        checked.push(channels);
    }
    let mut infos = Vec::new();
    let wants_info = batch.batch.iter().any(|e| e.info.is_some());
    for (event, channels) in batch.batch.iter().zip(&checked) {
        trigger(state, &call.app, event, channels).await?;
        if wants_info {
            let info: HashSet<String> = event
                .info
                .as_deref()
                .unwrap_or("")
                .split(',')
                .map(|s| s.trim().to_owned())
                .collect();
            infos.push(Value::Object(
                channel_info(state, &call.app, &channels[0], &info).await,
            ));
        }
    }
    if wants_info {
        Ok(Json(json!({ "batch": infos })).into_response())
    } else {
        Ok(Json(json!({})).into_response())
    }
}

async fn channels(state: &AppState, call: &Call) -> ApiResult {
    let prefix = call.param("filter_by_prefix").unwrap_or("");
    let info = call.info();
    if info.contains("user_count") && !prefix.starts_with("presence-") {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            "info=user_count needs filter_by_prefix=presence-",
        ));
    }
    let mut out = BTreeMap::new();
    let all = state
        .hub
        .cluster_channels()
        .await
        .map_err(|e| fail(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    for (hub_channel, _) in all {
        if !call.app.owns_hub_channel(&hub_channel) {
            continue;
        }
        let name = proto::pusher_channel(&hub_channel);
        if !valid_channel_name(&name) || !name.starts_with(prefix) {
            continue;
        }
        let fields = channel_info(state, &call.app, &name, &info).await;
        out.insert(name, Value::Object(fields));
    }
    Ok(Json(json!({ "channels": out })).into_response())
}

async fn channel(state: &AppState, call: &Call, name: &str) -> ApiResult {
    if !valid_channel_name(name) {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            format!("invalid channel name `{name}`"),
        ));
    }
    let info = call.info();
    if info.contains("user_count") && !name.starts_with("presence-") {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            "user_count is only available for presence channels",
        ));
    }
    let hub_channel = call.app.hub_channel(name);
    let mut fields = channel_info(state, &call.app, name, &info).await;
    let subscribers = state
        .hub
        .cluster_subscriber_count(&hub_channel)
        .await
        .map_err(|e| fail(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    fields.insert("occupied".into(), json!(subscribers > 0));
    Ok(Json(Value::Object(fields)).into_response())
}

async fn users(state: &AppState, call: &Call, name: &str) -> ApiResult {
    if !name.starts_with("presence-") || !valid_channel_name(name) {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            "users are only listed for presence channels",
        ));
    }
    let ids = user_ids(state, &call.app.hub_channel(name)).await;
    let users: Vec<Value> = ids.iter().map(|id| json!({ "id": id })).collect();
    Ok(Json(json!({ "users": users })).into_response())
}
