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
//! `http_sessions::IDLE_TIMEOUT` is closed.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use http_body::Frame;
use parking_lot::Mutex;
use switchboard_core::{ClientSink, unix_now};

use super::codec::{Framing, PusherCodec};
use super::conn::{PusherConn, RATE_LIMITED, new_socket_id};
use super::door::PusherDoor;
use super::http_sessions::{Drained, HttpSession};
use crate::admission::Permit;
use crate::door::body::poll_chunk;
use crate::door::{Deadline, Framing as Transfer, Machine, Outbox, Overflow};
use crate::http::{BodyError, read_body};
/// How long a long poll waits for something to send.
const POLL_WAIT: Duration = Duration::from_secs(25);
/// Longest `{server}` and `{session}` path parts.
const MAX_ID: usize = 64;
/// pusher-js reopens its stream once it has read this much of it (its `MAX_BUFFER_LENGTH`),
/// dropping whatever is still in flight. So a stream that has sent more stops sending: the
/// rest waits in the session's queue for the stream that replaces it, and nothing is lost.
pub(crate) const STREAM_LIMIT: usize = 256 * 1024;
/// How long a stream past [`STREAM_LIMIT`] waits to be replaced before it ends (a client that
/// does not reopen then reconnects as a new session).
const REPLACE_WAIT: Duration = Duration::from_secs(10);

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
pub(crate) async fn handle(
    State(door): State<Arc<PusherDoor>>,
    Path((key, server, session, kind)): Path<(String, String, String, String)>,
    request: Request,
) -> Response {
    let Some(app) = door.apps.by_key(&key).cloned() else {
        return text_response(StatusCode::NOT_FOUND, "unknown app key");
    };
    if !app.config.enabled {
        return text_response(StatusCode::FORBIDDEN, "application disabled");
    }
    if server.len() > MAX_ID || session.len() > MAX_ID {
        return text_response(StatusCode::BAD_REQUEST, "session id too long");
    }
    let id = format!("{key}/{server}/{session}");
    let sessions = &door.http_sessions;
    match kind.as_str() {
        "xhr_send" => {
            let Some(session) = sessions.get(&id) else {
                return text_response(StatusCode::NOT_FOUND, "no such session");
            };
            send(&door, &session, request).await
        }
        "xhr_streaming" | "xhr" => {
            let (session, new) = match sessions.get(&id) {
                Some(s) => (s, false),
                None => {
                    let (headers, extensions) = (request.headers(), request.extensions());
                    let permit = match crate::http::admit(&door.shared, headers, extensions) {
                        Ok(permit) => permit,
                        Err(refusal) => return refusal.into_response(),
                    };
                    (open(&door, app, &id, permit), true)
                }
            };
            if kind == "xhr" {
                poll(&door, &id, &session, new).await
            } else {
                stream(&door, id, session, new)
            }
        }
        _ => text_response(StatusCode::NOT_FOUND, "unknown transport"),
    }
}

fn open(door: &PusherDoor, app: Arc<super::App>, id: &str, permit: Permit) -> Arc<HttpSession> {
    let state = &door.shared;
    let socket_id = new_socket_id();
    let outbox = Arc::new(Outbox::new(
        state.limits.client_queue_bytes,
        Overflow::Disconnect,
        state.stats.clone(),
    ));
    let conn = PusherConn::open(state, app, socket_id.clone(), &outbox);
    let codec = PusherCodec::new(socket_id, Framing::Sockjs);
    let mut machine = Machine::new(codec, outbox.clone(), Transfer::Plain);
    let limits = &state.limits;
    machine.limit_commands(
        limits.client_rate,
        limits.client_burst,
        std::time::Instant::now(),
    );
    let session = Arc::new(HttpSession {
        machine: Mutex::new(machine),
        outbox,
        conn: tokio::sync::Mutex::new(Some(conn)),
        generation: AtomicU64::new(0),
        receiving: AtomicBool::new(false),
        last_seen: AtomicU64::new(unix_now()),
        _permit: permit,
    });
    door.http_sessions.insert(id, session.clone());
    session
}

/// `xhr_send`: a JSON array of messages, each the text of one Pusher frame.
async fn send(door: &PusherDoor, session: &HttpSession, request: Request) -> Response {
    let state = &door.shared;
    let limit = state.limits.max_frame_size * 16;
    let timeout = state.limits.handshake_timeout;
    let body = match read_body(request.into_body(), limit, timeout).await {
        Ok(body) => body,
        Err(e @ BodyError::TooLarge(_)) => {
            return text_response(StatusCode::PAYLOAD_TOO_LARGE, e.message());
        }
        Err(e) => return text_response(StatusCode::REQUEST_TIMEOUT, e.message()),
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
        if !session
            .machine
            .lock()
            .admit_command(std::time::Instant::now)
        {
            state.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
            let message = format!(
                "too many messages (at most {} a second)",
                state.limits.client_rate
            );
            let refused = switchboard_proto::pusher::error_frame(Some(RATE_LIMITED), &message);
            session.outbox.push_own(refused);
            continue;
        }
        conn.handle(&session.outbox, message.as_bytes()).await;
    }
    StatusCode::NO_CONTENT.into_response()
}

/// `xhr`: answers `o` to a new session, else what is queued, waiting up to [`POLL_WAIT`].
async fn poll(door: &PusherDoor, id: &str, session: &Arc<HttpSession>, new: bool) -> Response {
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
                door.http_sessions.close(id);
                break;
            }
            Drained::Waiting if !out.is_empty() => break,
            Drained::Waiting => {}
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
fn stream(door: &Arc<PusherDoor>, id: String, session: Arc<HttpSession>, new: bool) -> Response {
    let receiver = Receiver::start(&session);
    // Wake the stream this one replaces (if it is still polled), so it notices and ends; the
    // new one starts with a heartbeat.
    session.outbox.heartbeat();
    let body = XhrStream {
        door: door.clone(),
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
    door: Arc<PusherDoor>,
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
            let polled = poll_chunk(&mut session.machine.lock(), &mut this.deadline, cx);
            return match polled {
                Poll::Ready(Some(chunk)) => this.emit(chunk),
                Poll::Ready(None) => {
                    this.ended = true;
                    this.door.http_sessions.close(&this.id);
                    Poll::Ready(None)
                }
                Poll::Pending => Poll::Pending,
            };
        }
    }
}
