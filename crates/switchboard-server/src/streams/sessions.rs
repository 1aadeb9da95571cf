//! Talking back without a WebSocket (spec §5): the `session` secret of a stream's `connected`
//! frame names its live [`Session`]; `POST /session/<session>` runs commands as that client.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use serde_json::value::RawValue;
use switchboard_core::session::Answer;
use switchboard_core::{ClientSink, Session};
use switchboard_proto::{Disconnect, ErrorCode, Outgoing, encode, parse_request};
use tokio::sync::Notify;

use crate::api::error_response;
use crate::app::AppState;

/// A door's session, shared by the registry and whatever owns its lifetime: a stream's body,
/// or (for long polling, whose requests come and go) the registry itself until it expires.
pub struct SessionCell {
    /// `None` once the door ended.
    pub session: tokio::sync::Mutex<Option<Session>>,
    /// Long polling only: what the session received between polls.
    pub buffer: Option<Arc<SessionBuffer>>,
    /// Unix seconds of the last poll (long polling only).
    last_seen: AtomicU64,
}

/// The sink of a long-poll session: frames wait here for the next poll, up to a byte bound
/// (past it the session is closed as a slow consumer, like any other client).
pub struct SessionBuffer {
    inner: Mutex<BufferInner>,
    pub arrived: Notify,
    limit: usize,
    /// Run once when the session is disconnected (by the API, token expiry, shutdown or
    /// overflow): it ends the session at once instead of when it expires.
    on_close: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

#[derive(Default)]
struct BufferInner {
    frames: Vec<Bytes>,
    bytes: usize,
    closed: bool,
}

impl SessionBuffer {
    pub fn new(limit: usize) -> Self {
        SessionBuffer {
            inner: Mutex::new(BufferInner::default()),
            arrived: Notify::new(),
            limit,
            on_close: Mutex::new(None),
        }
    }

    pub fn set_on_close(&self, f: impl FnOnce() + Send + 'static) {
        *self.on_close.lock() = Some(Box::new(f));
    }

    /// Whether the session was disconnected (its last frames may still wait here).
    pub fn is_closed(&self) -> bool {
        self.inner.lock().closed
    }

    fn closed(&self, inner: &mut BufferInner, reason: Disconnect) {
        inner.closed = true;
        self.push(inner, encode::disconnect(&reason));
        if let Some(on_close) = self.on_close.lock().take() {
            on_close();
        }
    }

    pub fn take(&self) -> Vec<Bytes> {
        let mut inner = self.inner.lock();
        inner.bytes = 0;
        std::mem::take(&mut inner.frames)
    }

    pub fn is_empty(&self) -> bool {
        self.inner.lock().frames.is_empty()
    }

    fn push(&self, inner: &mut BufferInner, frame: Bytes) {
        inner.bytes += frame.len();
        inner.frames.push(frame);
        self.arrived.notify_one();
    }
}

impl ClientSink for SessionBuffer {
    fn send(&self, frame: &Arc<Outgoing>) -> bool {
        let mut inner = self.inner.lock();
        if inner.closed {
            return false;
        }
        if inner.bytes + frame.json().len() > self.limit {
            inner.frames.clear();
            inner.bytes = 0;
            self.closed(&mut inner, Disconnect::SLOW_CONSUMER);
            return false;
        }
        self.push(&mut inner, frame.json().clone());
        true
    }

    fn disconnect(&self, reason: Disconnect) {
        let mut inner = self.inner.lock();
        if !inner.closed {
            self.closed(&mut inner, reason);
        }
    }
}

/// The live sessions of this node's streams, by secret.
#[derive(Default)]
pub struct Sessions {
    cells: Mutex<HashMap<String, Arc<SessionCell>>>,
}

impl Sessions {
    pub fn insert(&self, id: String, session: Session) -> (String, Arc<SessionCell>) {
        self.insert_cell(id, session, None)
    }

    /// A long-poll session: it lives in the registry until no poll came for
    /// [`POLL_SESSION_TTL`]; disconnected, it leaves the hub at once (commands then get 404)
    /// and stays only until a poll has taken its last frames.
    pub fn insert_poll(&self, id: String, session: Session, buffer: Arc<SessionBuffer>) {
        let (_, cell) = self.insert_cell(id, session, Some(buffer.clone()));
        let cell = Arc::downgrade(&cell);
        buffer.set_on_close(move || {
            if let Some(cell) = cell.upgrade() {
                tokio::spawn(async move { cell.close().await });
            }
        });
    }

    fn insert_cell(
        &self,
        id: String,
        session: Session,
        buffer: Option<Arc<SessionBuffer>>,
    ) -> (String, Arc<SessionCell>) {
        let cell = Arc::new(SessionCell {
            session: tokio::sync::Mutex::new(Some(session)),
            buffer,
            last_seen: AtomicU64::new(switchboard_core::unix_now()),
        });
        self.cells.lock().insert(id.clone(), cell.clone());
        (id, cell)
    }

    /// The long-poll session `id`, marked as seen now.
    pub fn touch_poll(&self, id: &str) -> Option<Arc<SessionCell>> {
        let cell = self.get(id).filter(|c| c.buffer.is_some())?;
        cell.last_seen
            .store(switchboard_core::unix_now(), Ordering::Relaxed);
        Some(cell)
    }

    /// Removes long-poll sessions no poll came for, and closes them in the background.
    pub fn expire_polls(&self, now: u64) {
        let mut expired = Vec::new();
        self.cells.lock().retain(|_, cell| {
            let idle = cell.buffer.is_some()
                && now.saturating_sub(cell.last_seen.load(Ordering::Relaxed))
                    >= POLL_SESSION_TTL.as_secs();
            if idle {
                expired.push(cell.clone());
            }
            !idle
        });
        for cell in expired {
            tokio::spawn(async move { cell.close().await });
        }
    }

    pub fn remove(&self, id: &str) {
        self.cells.lock().remove(id);
    }

    fn get(&self, id: &str) -> Option<Arc<SessionCell>> {
        self.cells.lock().get(id).cloned()
    }
}

impl SessionCell {
    /// Ends the session: it leaves the hub.
    pub async fn close(&self) {
        if let Some(session) = self.session.lock().await.take() {
            session.close().await;
        }
    }
}

/// How long a long-poll session lives without a poll.
pub const POLL_SESSION_TTL: Duration = Duration::from_secs(60);

/// Most commands in one `POST /session/...`.
const MAX_COMMANDS: usize = 100;

/// `POST /session/<session>`: one command frame or an array of them; answers the replies as
/// a JSON array, in the same order.
pub async fn post_session(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    body: Body,
) -> Response {
    let Some(cell) = state.sessions.get(&id) else {
        state.count_error();
        return error_response(ErrorCode::NotFound, "unknown or expired session");
    };
    let limit = state.limits.max_api_body;
    let Ok(bytes) = axum::body::to_bytes(body, limit).await else {
        state.count_error();
        return error_response(
            ErrorCode::TooLarge,
            &format!("request body larger than {limit} bytes"),
        );
    };
    let frames: Vec<Box<RawValue>> = match serde_json::from_slice::<Box<RawValue>>(&bytes) {
        Ok(raw) if raw.get().trim_start().starts_with('[') => {
            match serde_json::from_str(raw.get()) {
                Ok(frames) => frames,
                Err(e) => {
                    return error_response(ErrorCode::BadRequest, &format!("invalid JSON: {e}"));
                }
            }
        }
        Ok(raw) => vec![raw],
        Err(e) => {
            state.count_error();
            return error_response(ErrorCode::BadRequest, &format!("invalid JSON body: {e}"));
        }
    };
    if frames.len() > MAX_COMMANDS {
        return error_response(
            ErrorCode::TooLarge,
            &format!("at most {MAX_COMMANDS} commands per request"),
        );
    }
    let mut guard = cell.session.lock().await;
    let Some(session) = guard.as_mut() else {
        return error_response(ErrorCode::NotFound, "unknown or expired session");
    };
    let mut replies: Vec<Bytes> = Vec::with_capacity(frames.len());
    for frame in &frames {
        let reply = match parse_request(frame.get().as_bytes()) {
            Ok(request) => Box::pin(session.handle(request)).await,
            Err(e) => Some(e.into()),
        };
        if reply.as_ref().is_some_and(Answer::is_error) {
            state.count_error();
        }
        replies.push(reply.map_or(Bytes::from_static(b"null"), Answer::into_frame));
    }
    drop(guard);
    let mut out = Vec::with_capacity(replies.iter().map(|r| r.len() + 1).sum::<usize>() + 2);
    out.push(b'[');
    for (i, reply) in replies.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(reply);
    }
    out.push(b']');
    let mut response = out.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
