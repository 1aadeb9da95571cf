//! Long polling (`GET /poll`): stateless between polls, the cursor carries everything. Each
//! request is a short-lived observer client of the hub: it subscribes its channels from the
//! cursor's positions (so what was published between two polls is recovered from history),
//! answers as soon as something arrives or after `timeout`, and leaves.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, Request, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use parking_lot::Mutex;
use switchboard_core::session::Announce;
use switchboard_core::{ClientSink, Session, StreamPosition};
use switchboard_proto::{Disconnect, ErrorCode, Outgoing, encode};
use tokio::sync::Notify;

use super::codec::CursorState;
use super::cursor::CursorKey;
use super::sessions::SessionBuffer;
use super::{no_buffering, read_request, start_positions, subscribe_channels};
use crate::api::error_response;
use crate::app::AppState;

const DEFAULT_TIMEOUT: u64 = 25;
/// Longest wait, below the 60 s idle timeout of common proxies.
const MAX_TIMEOUT: u64 = 55;

/// Collects what one poll answers. Past its byte limit it takes nothing more, so the cursor
/// only ever covers frames that are in the answer: the next poll continues from there.
struct PollSink {
    inner: Mutex<Collected>,
    arrived: Notify,
    key: Arc<CursorKey>,
    limit: usize,
}

#[derive(Default)]
struct Collected {
    frames: Vec<Bytes>,
    bytes: usize,
    full: bool,
    closed: bool,
    cursor: CursorState,
}

impl PollSink {
    fn push(&self, frame: Bytes) {
        let mut c = self.inner.lock();
        self.push_locked(&mut c, frame);
    }

    fn push_locked(&self, c: &mut Collected, frame: Bytes) -> bool {
        if c.full || c.closed {
            return false;
        }
        if c.bytes + frame.len() > self.limit && !c.frames.is_empty() {
            c.full = true;
            self.arrived.notify_one();
            return false;
        }
        c.bytes += frame.len();
        c.frames.push(frame);
        self.arrived.notify_one();
        true
    }
}

impl ClientSink for PollSink {
    fn send(&self, frame: &Arc<Outgoing>) -> bool {
        let mut c = self.inner.lock();
        if c.full || c.closed {
            return false;
        }
        let json = frame.json();
        let Some(meta) = frame.message_meta() else {
            return self.push_locked(&mut c, json.clone());
        };
        let Some(i) = c.cursor.channels.iter().position(|ch| *ch == meta.channel) else {
            return self.push_locked(&mut c, json.clone());
        };
        let previous = c.cursor.positions[i].clone();
        c.cursor.positions[i] = (meta.offset, meta.epoch.clone());
        let cursor = c.cursor.cursor(&self.key);
        let mut with_cursor = json[..json.len() - 1].to_vec();
        with_cursor.extend_from_slice(format!(",\"cursor\":\"{cursor}\"}}").as_bytes());
        if !self.push_locked(&mut c, Bytes::from(with_cursor)) {
            // Not in the answer: the cursor must not move past it.
            c.cursor.positions[i] = previous;
            return false;
        }
        true
    }

    fn disconnect(&self, reason: Disconnect) {
        let mut c = self.inner.lock();
        if !c.closed {
            c.full = false;
            self.push_locked(&mut c, encode::disconnect(&reason));
            c.closed = true;
        }
    }

    fn subscribed(&self, channel: &str, position: &StreamPosition) {
        let mut c = self.inner.lock();
        if let Some(i) = c.cursor.channels.iter().position(|ch| &**ch == channel)
            && *c.cursor.positions[i].1 != *position.epoch
        {
            c.cursor.positions[i] = (position.offset, position.epoch.clone());
        }
    }
}

/// Opens the session a long poller talks back through (spec §5): a client of the hub whose
/// frames wait in a buffer for the next poll that names it (`&session=`). Returns its id and
/// the `connected` frame that announces it.
fn open_poll_session(
    state: &Arc<AppState>,
    claims: switchboard_core::Claims,
    heartbeat: u64,
) -> (String, Bytes) {
    let buffer = Arc::new(SessionBuffer::new(state.limits.client_queue_bytes));
    let sink: Arc<dyn ClientSink> = buffer.clone();
    let mut session = Session::open(state.hub.clone(), state.auth.clone(), claims, sink);
    session.return_replies();
    let id = crate::config::random_hex(16);
    let connected = session.connected_frame(None, heartbeat, Some(&id));
    state.sessions.insert_poll(id.clone(), session, buffer);
    (id, connected)
}

/// `GET /poll?channel=...[&cursor=...][&timeout=...][&session=...]`.
pub async fn poll(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let (parts, _) = request.into_parts();
    let door = match read_request(&state, &parts, false) {
        Ok(door) => door,
        Err(refusal) => {
            state.count_error();
            return refusal.into_response();
        }
    };
    let params = Query::<Vec<(String, String)>>::try_from_uri(&parts.uri)
        .map(|Query(q)| q)
        .unwrap_or_default();
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    // The session of an earlier poll, if this node still has it: what its commands
    // subscribed arrives through it.
    let session_id = param("session");
    let poll_session = session_id
        .as_deref()
        .and_then(|id| state.sessions.touch_poll(id));
    let timeout = match param("timeout") {
        None => DEFAULT_TIMEOUT,
        Some(v) => match v.parse::<u64>() {
            Ok(secs) => secs.min(MAX_TIMEOUT),
            Err(_) => {
                return error_response(ErrorCode::BadRequest, "`timeout` must be whole seconds");
            }
        },
    };
    let starts = match start_positions(&state, &door).await {
        Ok(starts) => starts,
        Err(refusal) => return refusal.into_response(),
    };
    let sink = Arc::new(PollSink {
        inner: Mutex::new(Collected {
            cursor: CursorState {
                channels: door
                    .channels
                    .iter()
                    .map(|c| Arc::from(c.as_str()))
                    .collect(),
                positions: starts.clone(),
            },
            ..Collected::default()
        }),
        arrived: Notify::new(),
        key: state.cursor_key.clone(),
        limit: state.limits.client_queue_bytes,
    });
    let first = door.cursor.is_none();
    if first {
        let heartbeat = state.limits.ping_interval.as_secs();
        let (id, connected) = open_poll_session(&state, door.claims.clone(), heartbeat);
        sink.push(connected);
        tracing::debug!("long-poll session {id} opened");
    }
    let as_sink: Arc<dyn ClientSink> = sink.clone();
    let mut session =
        Session::open_observer(state.hub.clone(), state.auth.clone(), door.claims, as_sink);
    // The first poll announces every channel; later ones only a channel whose missed
    // messages history no longer held.
    let announce = if first {
        Announce::Always
    } else {
        Announce::IfNotRecovered
    };
    subscribe_channels(
        &state,
        &mut session,
        &door.channels,
        starts,
        announce,
        |frame| sink.push(frame),
    )
    .await;
    let buffer = poll_session.as_ref().and_then(|cell| cell.buffer.clone());
    if !first {
        let wait = async {
            loop {
                let arrived = sink.arrived.notified();
                let buffered = async {
                    match &buffer {
                        Some(b) => b.arrived.notified().await,
                        None => std::future::pending().await,
                    }
                };
                if !sink.inner.lock().frames.is_empty()
                    || buffer.as_ref().is_some_and(|b| !b.is_empty())
                {
                    return;
                }
                tokio::select! {
                    _ = arrived => {}
                    _ = buffered => {}
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(timeout), wait).await;
    }
    session.close().await;

    let mut collected = std::mem::take(&mut *sink.inner.lock());
    if let Some(buffer) = &buffer {
        collected.frames.extend(buffer.take());
        if buffer.is_closed()
            && let Some(id) = &session_id
        {
            // Its last frames (the disconnect) are in this answer: the session is over.
            state.sessions.remove(id);
        }
    }
    let cursor = collected.cursor.cursor(&state.cursor_key);
    let mut out = Vec::with_capacity(collected.bytes + collected.frames.len() + 64);
    out.extend_from_slice(b"{\"messages\":[");
    for (i, frame) in collected.frames.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(frame);
    }
    out.extend_from_slice(format!("],\"cursor\":\"{cursor}\"}}").as_bytes());
    let mut response = out.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    no_buffering(headers);
    response
}
