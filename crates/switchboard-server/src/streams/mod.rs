//! The one-way doors (spec §4, §5): Server-Sent Events (`GET /sse`), HTTP streaming of NDJSON
//! (`GET /stream`), long polling (`GET /poll`), and `POST /session/<session>` for talking back.
//! They reach the same hub as the WebSocket door, through the same [`Session`] and the same
//! door core ([`crate::door`]): a [`StreamCodec`] and a driver each (`body.rs` for streams
//! hyper serves, `direct.rs` for streams on a socket of our own, `poll.rs`).

mod body;
pub mod codec;
pub mod cursor;
pub(crate) mod direct;
mod poll;
pub mod sessions;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::{Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use parking_lot::Mutex;
use switchboard_core::session::{Announce, may_subscribe};
use switchboard_core::{Claims, ClientSink, Session};
use switchboard_proto::command::MAX_CHANNEL_LEN;
use switchboard_proto::{ErrorCode, Position};

use self::body::StreamBody;
use self::codec::{Cursor, StreamCodec, StreamKind};
use self::cursor::CursorPosition;
use self::sessions::SessionCell;
use crate::api::ApiError;
use crate::app::AppState;
use crate::door::{CLOSE_GRACE, Framing, Machine, Outbox, Overflow};
use crate::ws::request_token;

pub use self::poll::poll;
pub use self::sessions::post_session;

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
    state: &AppState,
    parts: &Parts,
    last_event_id: bool,
) -> Result<DoorRequest, ApiError> {
    let refuse = |code, message: &str| Err(ApiError::new(code, message));
    let claims = match request_token(parts.uri.query(), &parts.headers) {
        Some(token) => state.auth.verify(&token).map_err(|e| ApiError::from(&e))?,
        None if state.hub.config.admits_anonymous() => Claims::anonymous(),
        None => {
            return refuse(
                ErrorCode::Unauthorized,
                "a token is required (?token= or Authorization: Bearer)",
            );
        }
    };
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
        Some(text) => match state.cursor_key.decode(&channels, &text) {
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

/// Subscribes a door's URL channels from their start positions; a refusal is reported to the
/// client through `report` as an error frame.
pub(crate) async fn subscribe_channels(
    state: &AppState,
    session: &mut Session,
    channels: &[String],
    starts: Vec<(u64, Arc<str>)>,
    announce: Announce,
    report: impl Fn(Bytes),
) {
    for (channel, (offset, epoch)) in channels.iter().zip(starts) {
        let since = Some(Position {
            offset,
            epoch: epoch.to_string(),
        });
        if let Err(e) = session.subscribe_for_door(channel, since, announce).await {
            state.count_error();
            report(switchboard_core::session::error_frame(&e));
        }
    }
}

/// `GET /sse`.
pub async fn sse(State(state): State<Arc<AppState>>, request: Request) -> Response {
    open_stream(state, request, StreamKind::Sse).await
}

/// `GET /stream`.
pub async fn ndjson(State(state): State<Arc<AppState>>, request: Request) -> Response {
    open_stream(state, request, StreamKind::Ndjson).await
}

/// A live stream, whichever driver writes it: its machine, and its registration (dropped with
/// it: the session then leaves the hub).
pub(crate) struct OpenStream {
    pub machine: Machine<StreamCodec>,
    _registration: Registration,
}

struct Registration {
    state: Arc<AppState>,
    session_id: String,
    cell: Arc<SessionCell>,
    /// Set when the stream is over, so a pending kill leaves a reused connection alone.
    finished: Arc<AtomicBool>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.finished.store(true, Ordering::Release);
        self.state.sessions.remove(&self.session_id);
        let cell = self.cell.clone();
        // Leaving the hub is async (the engine may be remote): do it in the background.
        tokio::spawn(async move { cell.close().await });
    }
}

/// Put in a request's extensions by a driver that owns the socket (`direct.rs`): the stream
/// is handed over through it instead of becoming a response body.
#[derive(Clone, Default)]
pub(crate) struct Handoff(pub Arc<Mutex<Option<OpenStream>>>);

async fn open_stream(state: Arc<AppState>, request: Request, kind: StreamKind) -> Response {
    let (parts, _) = request.into_parts();
    let door = match read_request(&state, &parts, kind == StreamKind::Sse) {
        Ok(door) => door,
        Err(refusal) => {
            state.count_error();
            return refusal.into_response();
        }
    };
    let starts = match start_positions(&state, &door).await {
        Ok(starts) => starts,
        Err(refusal) => return refusal.into_response(),
    };
    let handoff = parts.extensions.get::<Handoff>().cloned();
    let outbox = Arc::new(Outbox::new(
        state.limits.client_queue_bytes,
        Overflow::Disconnect,
        state.stats.clone(),
    ));
    let cursor = Cursor::new(state.cursor_key.clone(), &door.channels, starts.clone());
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
    let announce = if door.cursor.is_some() {
        Announce::Resumed
    } else {
        Announce::Always
    };
    subscribe_channels(
        &state,
        &mut session,
        &door.channels,
        starts,
        announce,
        |frame| {
            outbox.push_own(frame);
        },
    )
    .await;

    let (session_id, cell) = state.sessions.insert(session_id, session);
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
            state: state.clone(),
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
