//! pusher-js's HTTP fallback transports, for networks that block WebSocket:
//! `POST /pusher/app/{key}/{server}/{session}/xhr_streaming` (one long response),
//! `.../xhr` (long polling) and `.../xhr_send` (client messages), in SockJS's framing: `o`
//! opens, `a[...]` carries messages (each the JSON text of a Pusher frame, as a string), `h` is
//! a heartbeat and `c[code,"reason"]` closes; one per line.
//!
//! A session is one Pusher connection (the same [`PusherConn`] and [`PusherCodec`] as the
//! WebSocket door, with SockJS framing): its outbox fills from the hub whether or not a
//! request is open, and the latest receiving request drives its machine, so these are two
//! more drivers of the one door core. A session with no receiving request for
//! [`IDLE_TIMEOUT`] is closed.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use http_body::Frame;
use parking_lot::Mutex;
use switchboard_core::{ClientSink, unix_now};

use super::codec::{Framing, PusherCodec};
use super::conn::{PusherConn, PusherOutbox, new_socket_id};
use crate::app::AppState;
use crate::door::{Deadline, Framing as Transfer, Machine, Outbox, Output, Overflow};

/// A session without a receiving request for this long is closed. pusher-js opens the next
/// request as soon as one ends and tells the server nothing when it disconnects, so this is
/// how long a gone client stays a member of its channels.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a session the server closed waits for a request to pick up its close.
const CLOSE_PICKUP: Duration = Duration::from_secs(2);
/// How long a long poll waits for something to send.
const POLL_WAIT: Duration = Duration::from_secs(25);
/// Longest `{server}` and `{session}` path parts.
const MAX_ID: usize = 64;
/// pusher-js reopens its stream once it has read this much of it (its `MAX_BUFFER_LENGTH`),
/// dropping whatever is still in flight. So a stream that has sent more stops sending: the
/// rest waits in the session's queue for the stream that replaces it, and nothing is lost.
pub const STREAM_LIMIT: usize = 256 * 1024;
/// How long a stream past [`STREAM_LIMIT`] waits to be replaced before it ends (a client that
/// does not reopen then reconnects as a new session).
const REPLACE_WAIT: Duration = Duration::from_secs(10);

/// One HTTP-transport connection.
pub struct HttpSession {
    outbox: Arc<PusherOutbox>,
    /// Driven by the latest receiving request only.
    machine: Mutex<Machine<PusherCodec>>,
    /// `None` once the session has left the hub.
    conn: tokio::sync::Mutex<Option<PusherConn>>,
    /// Bumped by every receiving request: only the latest one drains the outbox.
    generation: AtomicU64,
    /// A receiving request is open.
    receiving: AtomicBool,
    /// When the last receiving request ended (Unix seconds).
    last_seen: AtomicU64,
}

/// The live HTTP-transport sessions, by `{key}/{server}/{session}`.
#[derive(Default)]
pub struct HttpSessions {
    map: Mutex<HashMap<String, Arc<HttpSession>>>,
}

impl HttpSessions {
    fn get(&self, id: &str) -> Option<Arc<HttpSession>> {
        self.map.lock().get(id).cloned()
    }

    /// Ends a session: it leaves the hub in the background.
    fn close(&self, id: &str) {
        if let Some(session) = self.map.lock().remove(id) {
            tokio::spawn(async move {
                if let Some(conn) = session.conn.lock().await.take() {
                    conn.shut().await;
                }
            });
        }
    }

    /// Closes sessions nobody has received from for [`IDLE_TIMEOUT`], and closed ones nobody
    /// receives from (called every second by the server's ticker).
    pub fn expire(&self, now: u64) {
        let idle: Vec<String> = self
            .map
            .lock()
            .iter()
            .filter(|(_, s)| {
                // Idle, or closed by the server (shutdown, terminate) and its close not picked
                // up by a poll within a couple of seconds.
                let idle = now.saturating_sub(s.last_seen.load(Ordering::Relaxed));
                let limit = if s.outbox.is_closing() {
                    CLOSE_PICKUP.as_secs()
                } else {
                    IDLE_TIMEOUT.as_secs()
                };
                !s.receiving.load(Ordering::Acquire) && idle > limit
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in idle {
            self.close(&id);
        }
    }

    pub fn len(&self) -> usize {
        self.map.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn text_response(status: StatusCode, body: impl Into<Body>) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            "application/javascript; charset=UTF-8",
        )],
        body.into(),
    )
        .into_response()
}

/// `POST /pusher/app/{key}/{server}/{session}/{xhr_streaming|xhr|xhr_send}`.
pub async fn handle(
    State(state): State<Arc<AppState>>,
    Path((key, server, session, kind)): Path<(String, String, String, String)>,
    request: Request,
) -> Response {
    let Some(app) = state.pusher.by_key(&key).cloned() else {
        return text_response(StatusCode::NOT_FOUND, "unknown app key");
    };
    if !app.config.enabled {
        return text_response(StatusCode::FORBIDDEN, "application disabled");
    }
    if server.len() > MAX_ID || session.len() > MAX_ID {
        return text_response(StatusCode::BAD_REQUEST, "session id too long");
    }
    let id = format!("{key}/{server}/{session}");
    let sessions = &state.pusher.http_sessions;
    match kind.as_str() {
        "xhr_send" => {
            let Some(session) = sessions.get(&id) else {
                return text_response(StatusCode::NOT_FOUND, "no such session");
            };
            send(&state, &session, request).await
        }
        "xhr_streaming" | "xhr" => {
            let (session, new) = match sessions.get(&id) {
                Some(s) => (s, false),
                None => (open(&state, app, &id), true),
            };
            if kind == "xhr" {
                poll(&state, &id, &session, new).await
            } else {
                stream(&state, id, session, new)
            }
        }
        _ => text_response(StatusCode::NOT_FOUND, "unknown transport"),
    }
}

fn open(state: &Arc<AppState>, app: Arc<super::App>, id: &str) -> Arc<HttpSession> {
    let socket_id = new_socket_id();
    let outbox = Arc::new(Outbox::new(
        state.limits.client_queue_bytes,
        Overflow::Disconnect,
        state.stats.clone(),
    ));
    let conn = PusherConn::open(state, app, socket_id.clone(), &outbox);
    let codec = PusherCodec::new(socket_id, Framing::Sockjs);
    let session = Arc::new(HttpSession {
        machine: Mutex::new(Machine::new(codec, outbox.clone(), Transfer::Plain)),
        outbox,
        conn: tokio::sync::Mutex::new(Some(conn)),
        generation: AtomicU64::new(0),
        receiving: AtomicBool::new(false),
        last_seen: AtomicU64::new(unix_now()),
    });
    state
        .pusher
        .http_sessions
        .map
        .lock()
        .insert(id.to_owned(), session.clone());
    session
}

/// `xhr_send`: a JSON array of messages, each the text of one Pusher frame.
async fn send(state: &AppState, session: &HttpSession, request: Request) -> Response {
    let limit = state.limits.max_frame_size * 16;
    let Ok(body) = axum::body::to_bytes(request.into_body(), limit).await else {
        return text_response(StatusCode::PAYLOAD_TOO_LARGE, "body too large");
    };
    let Ok(messages) = serde_json::from_slice::<Vec<String>>(&body) else {
        return text_response(StatusCode::BAD_REQUEST, "expected a JSON array of strings");
    };
    let mut conn = session.conn.lock().await;
    let Some(conn) = conn.as_mut() else {
        return text_response(StatusCode::NOT_FOUND, "session closed");
    };
    for message in messages {
        if message.len() > state.limits.max_frame_size {
            let too_large = switchboard_proto::pusher::error_frame(
                None,
                &format!("message larger than {} bytes", state.limits.max_frame_size),
            );
            session.outbox.push_own(too_large);
            continue;
        }
        conn.handle(&session.outbox, message.as_bytes()).await;
    }
    StatusCode::NO_CONTENT.into_response()
}

/// What driving a session's machine came to.
enum Drained {
    /// Nothing more to send for now.
    Waiting(Option<Instant>),
    /// The session is over (its goodbye is in what was drained).
    Closed,
}

impl HttpSession {
    /// Drives the machine, appending what it writes to `out`, until it waits or closes (or
    /// `out` holds `max` bytes).
    fn drain(&self, out: &mut BytesMut, max: usize) -> Drained {
        let mut machine = self.machine.lock();
        loop {
            match machine.poll_output(Instant::now()) {
                Output::Write => {
                    while let Some(chunk) = machine.take_chunk() {
                        out.extend_from_slice(&chunk);
                    }
                    if out.len() >= max {
                        return Drained::Waiting(None);
                    }
                }
                Output::Wait(at) => return Drained::Waiting(at),
                Output::Close(_) => return Drained::Closed,
            }
        }
    }
}

/// `xhr`: answers `o` to a new session, else what is queued, waiting up to [`POLL_WAIT`].
async fn poll(state: &AppState, id: &str, session: &Arc<HttpSession>, new: bool) -> Response {
    if new {
        return text_response(StatusCode::OK, "o\n");
    }
    // Marks the session as received from until this poll ends, even when the client gives up
    // and the request is dropped midway.
    let receiver = Receiver::start(session);
    let deadline = tokio::time::Instant::now() + POLL_WAIT;
    let mut out = BytesMut::new();
    loop {
        match session.drain(&mut out, STREAM_LIMIT) {
            Drained::Closed => {
                state.pusher.http_sessions.close(id);
                break;
            }
            Drained::Waiting(_) if !out.is_empty() => break,
            Drained::Waiting(_) => {}
        }
        if !receiver.is_current() {
            // A newer poll took over.
            out.extend_from_slice(b"h\n");
            break;
        }
        if tokio::time::timeout_at(deadline, session.outbox.woken())
            .await
            .is_err()
        {
            out.extend_from_slice(b"h\n");
            break;
        }
    }
    drop(receiver);
    text_response(StatusCode::OK, out.freeze())
}

/// The latest receiving request of a session, while it lasts.
struct Receiver {
    session: Arc<HttpSession>,
    generation: u64,
}

impl Receiver {
    fn start(session: &Arc<HttpSession>) -> Receiver {
        let generation = session.generation.fetch_add(1, Ordering::AcqRel) + 1;
        session.receiving.store(true, Ordering::Release);
        Receiver {
            session: session.clone(),
            generation,
        }
    }

    fn is_current(&self) -> bool {
        self.session.generation.load(Ordering::Acquire) == self.generation
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if self.is_current() {
            self.session.last_seen.store(unix_now(), Ordering::Relaxed);
            self.session.receiving.store(false, Ordering::Release);
        }
    }
}

/// `xhr_streaming`: one long response carrying everything the session receives.
fn stream(state: &Arc<AppState>, id: String, session: Arc<HttpSession>, new: bool) -> Response {
    let receiver = Receiver::start(&session);
    // Wake the stream this one replaces (if it is still polled), so it notices and ends; the
    // new one starts with a heartbeat.
    session.outbox.heartbeat();
    let body = XhrStream {
        state: state.clone(),
        id,
        session,
        receiver,
        deadline: Deadline::default(),
        opening: new,
        sent: 0,
        full_since: None,
        ended: false,
    };
    text_response(StatusCode::OK, Body::new(body))
}

struct XhrStream {
    state: Arc<AppState>,
    id: String,
    session: Arc<HttpSession>,
    /// Dropped with the body: the session is then no longer received from.
    receiver: Receiver,
    deadline: Deadline,
    /// `o` still to be sent (a new session).
    opening: bool,
    /// Bytes sent on this stream.
    sent: usize,
    /// Set once [`STREAM_LIMIT`] is passed: the stream sends nothing more and ends if not
    /// replaced in time.
    full_since: Option<Pin<Box<tokio::time::Sleep>>>,
    ended: bool,
}

impl XhrStream {
    fn emit(&mut self, chunk: Bytes) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.sent += chunk.len();
        if self.sent > STREAM_LIMIT && self.full_since.is_none() {
            self.full_since = Some(Box::pin(tokio::time::sleep(REPLACE_WAIT)));
        }
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }
}

impl http_body::Body for XhrStream {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        if this.opening {
            this.opening = false;
            return this.emit(Bytes::from_static(b"o\n"));
        }
        let session = this.session.clone();
        loop {
            if !this.receiver.is_current() {
                // A newer stream took over this session.
                this.ended = true;
                return Poll::Ready(None);
            }
            if let Some(wait) = this.full_since.as_mut() {
                // Full: leave everything queued for the next stream.
                if wait.as_mut().poll(cx).is_ready() {
                    this.ended = true;
                    return Poll::Ready(None);
                }
                // Still woken by the outbox, to notice a replacement.
                if session.outbox.poll_woken(cx).is_pending() {
                    return Poll::Pending;
                }
                continue;
            }
            let mut chunk = BytesMut::new();
            match session.drain(&mut chunk, 0) {
                _ if !chunk.is_empty() => return this.emit(chunk.freeze()),
                Drained::Closed => {
                    this.ended = true;
                    this.state.pusher.http_sessions.close(&this.id);
                    return Poll::Ready(None);
                }
                Drained::Waiting(at) => {
                    this.deadline.set(at);
                    let woken = session.outbox.poll_woken(cx).is_ready();
                    if !woken && this.deadline.poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                }
            }
        }
    }
}
