//! Opening a one-way door: the URL's token, channels and cursor checked, each channel's start
//! position read, the client subscribed from there; then `/sse` and `/stream` hand the stream
//! to its driver.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::{Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use switchboard_core::session::{Announce, may_subscribe};
use switchboard_core::{Claims, ClientSink, Session};
use switchboard_proto::command::MAX_CHANNEL_LEN;
use switchboard_proto::{ErrorCode, Position};

use super::body::StreamBody;
use super::codec::{Cursor, StreamCodec, StreamKind};
use super::cursor::CursorPosition;
use super::state::StreamsState;
use super::stream::{Handoff, OpenStream, Registration};
use crate::door::{CLOSE_GRACE, Framing, Machine, NoControl, Outbox, Overflow};
use crate::http::{ApiError, admit, admit_user, request_claims};
use crate::state::AppState;

/// The reconnection delay SSE asks browsers for, in milliseconds.
const SSE_RETRY_MS: u64 = 1000;

/// What the URL of a one-way door asks for, checked.
pub(crate) struct DoorRequest {
    pub claims: Claims,
    pub channels: Vec<String>,
    /// Positions to resume from (`?cursor=` or `Last-Event-ID`), one per channel.
    pub cursor: Option<Vec<CursorPosition>>,
}

/// Reads and checks the token, the channels and the cursor of a one-way door's request.
pub(crate) fn read_request(
    streams: &StreamsState,
    parts: &Parts,
    last_event_id: bool,
) -> Result<DoorRequest, ApiError> {
    let state = &streams.shared;
    let refuse = |code, message: &str| Err(ApiError::new(code, message));
    let claims = request_claims(state, parts.uri.query(), &parts.headers)?;
    let Ok(Query(pairs)) = Query::<Vec<(String, String)>>::try_from_uri(&parts.uri) else {
        return refuse(ErrorCode::BadRequest, "malformed query string");
    };
    let mut channels: Vec<String> = Vec::new();
    let mut cursor_text = None;
    for (key, value) in pairs {
        match key.as_str() {
            "channel" => {
                if value.is_empty() || value.len() > MAX_CHANNEL_LEN {
                    return refuse(
                        ErrorCode::BadRequest,
                        "a channel name must be 1 to 255 bytes",
                    );
                }
                if channels.contains(&value) {
                    return refuse(
                        ErrorCode::BadRequest,
                        &format!("channel `{value}` is named twice"),
                    );
                }
                channels.push(value);
            }
            "cursor" => cursor_text = Some(value),
            _ => {}
        }
    }
    let max = state.hub.config.max_subscriptions;
    if channels.len() > max {
        return refuse(
            ErrorCode::RateLimited,
            &format!("at most {max} channels per stream"),
        );
    }
    for channel in &channels {
        if !may_subscribe(&state.hub, &claims, channel) {
            return refuse(
                ErrorCode::Forbidden,
                &format!("not allowed to subscribe to `{channel}`"),
            );
        }
    }
    if cursor_text.is_none() && last_event_id {
        cursor_text = parts
            .headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .map(str::to_owned);
    }
    let cursor = match cursor_text {
        None => None,
        Some(text) => match streams.cursor_key.decode(&channels, &text) {
            Ok(positions) => Some(positions),
            Err(e) => return refuse(ErrorCode::BadRequest, &format!("invalid cursor: {e}")),
        },
    };
    Ok(DoorRequest {
        claims,
        channels,
        cursor,
    })
}

/// Where each channel starts: the cursor's position where it has one, else the channel's
/// current position (read before subscribing, so nothing published meanwhile is missed).
pub(crate) async fn start_positions(
    state: &AppState,
    door: &DoorRequest,
) -> Result<Vec<(u64, Arc<str>)>, ApiError> {
    let mut starts = Vec::with_capacity(door.channels.len());
    for (i, channel) in door.channels.iter().enumerate() {
        let known = door
            .cursor
            .as_ref()
            .map(|c| &c[i])
            .filter(|p| !p.epoch.is_empty());
        match known {
            Some(p) => starts.push((p.offset, Arc::from(p.epoch.as_str()))),
            None => {
                let query = switchboard_core::engine::HistoryQuery {
                    since: None,
                    limit: Some(0),
                };
                let now = state
                    .hub
                    .history(channel, query)
                    .await
                    .map_err(|e| ApiError::new(ErrorCode::Unavailable, e.to_string()))?;
                starts.push((now.position.offset, now.position.epoch));
            }
        }
    }
    Ok(starts)
}

/// Subscribes a door's URL channels from their start positions, announcing each as
/// `announce` says; a refusal goes to the client as an error frame.
pub(crate) async fn subscribe_channels(
    state: &AppState,
    session: &mut Session,
    (channels, starts): (&[String], Vec<(u64, Arc<str>)>),
    announce: Announce,
    outbox: &Outbox<NoControl>,
) {
    for (channel, (offset, epoch)) in channels.iter().zip(starts) {
        let since = Some(Position {
            offset,
            epoch: epoch.to_string(),
        });
        if let Err(e) = session.subscribe_for_door(channel, since, announce).await {
            state.count_error();
            outbox.push_own(switchboard_core::session::error_frame(&e));
        }
    }
}

/// `GET /sse`.
pub(crate) async fn sse(State(streams): State<Arc<StreamsState>>, request: Request) -> Response {
    open_stream(streams, request, StreamKind::Sse).await
}

/// `GET /stream`.
pub(crate) async fn ndjson(State(streams): State<Arc<StreamsState>>, request: Request) -> Response {
    open_stream(streams, request, StreamKind::Ndjson).await
}

async fn open_stream(streams: Arc<StreamsState>, request: Request, kind: StreamKind) -> Response {
    let state = &streams.shared;
    let (parts, _) = request.into_parts();
    let door = match read_request(&streams, &parts, kind == StreamKind::Sse) {
        Ok(door) => door,
        Err(refusal) => {
            state.count_error();
            return refusal.into_response();
        }
    };
    let permit = match admit(state, &parts.headers, &parts.extensions) {
        Ok(permit) => permit,
        Err(refusal) => return refusal.into_response(),
    };
    if let Err(refusal) = admit_user(state, &door.claims.user) {
        return refusal.into_response();
    }
    let starts = match start_positions(state, &door).await {
        Ok(starts) => starts,
        Err(refusal) => return refusal.into_response(),
    };
    let handoff = parts.extensions.get::<Handoff>().cloned();
    let outbox = Arc::new(Outbox::new(
        state.limits.client_queue_bytes,
        Overflow::Disconnect,
        state.stats.clone(),
    ));
    let cursor = Cursor::new(streams.cursor_key.clone(), &door.channels, starts.clone());
    // Our own socket driver writes the chunks itself; hyper frames a body.
    let framing = match handoff {
        Some(_) => Framing::Chunked,
        None => Framing::Plain,
    };
    let machine = Machine::new(StreamCodec::new(kind, cursor), outbox.clone(), framing);
    let sink: Arc<dyn ClientSink> = outbox.clone();
    let mut session = Session::open(state.hub.clone(), state.auth.clone(), door.claims, sink);
    session.return_replies();
    let session_id = crate::config::random_hex(16);

    if kind == StreamKind::Sse {
        outbox.push_wire(Bytes::from(format!("retry: {SSE_RETRY_MS}\n\n")));
    }
    let heartbeat = state.limits.ping_interval.as_secs();
    outbox.push_own(session.connected_frame(None, heartbeat, Some(&session_id)));
    let announce = match door.cursor {
        Some(_) => Announce::Resumed,
        None => Announce::Always,
    };
    subscribe_channels(
        state,
        &mut session,
        (&door.channels, starts),
        announce,
        &outbox,
    )
    .await;

    let (session_id, cell) = streams.sessions.insert(session_id, session);
    let finished = Arc::new(AtomicBool::new(false));
    if let (None, Some(kill)) = (&handoff, parts.extensions.get::<crate::ConnectionKill>()) {
        // A client that reads nothing: hyper then stops polling the body, so only a timer can
        // end the stream once it closes.
        let (kill, finished) = (kill.clone(), finished.clone());
        outbox.on_close(move || {
            tokio::spawn(async move {
                tokio::time::sleep(CLOSE_GRACE).await;
                if !finished.load(Ordering::Acquire) {
                    kill.kill();
                }
            });
        });
    }
    let stream = OpenStream {
        machine,
        _registration: Registration {
            streams: streams.clone(),
            _permit: permit,
            session_id,
            cell,
            finished,
        },
    };
    let mut response = match handoff {
        Some(handoff) => {
            *handoff.0.lock() = Some(stream);
            axum::body::Body::empty().into_response()
        }
        None => axum::body::Body::new(StreamBody::new(stream)).into_response(),
    };
    let headers = response.headers_mut();
    let content_type = match kind {
        StreamKind::Sse => "text/event-stream; charset=utf-8",
        StreamKind::Ndjson | StreamKind::Poll => "application/x-ndjson",
    };
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    no_buffering(headers);
    response
}

/// Headers that keep proxies and browsers from buffering or caching a stream.
pub(crate) fn no_buffering(headers: &mut HeaderMap) {
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-store"),
    );
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
}
