//! One WebSocket connection: a single task that owns the socket, decodes client frames into
//! session commands and writes everything queued in its [`Outbox`] with vectored writes.
//! While idle it holds no read buffer (reads go through a stack buffer) and no write buffer
//! (queued frames are shared `Bytes`), which keeps an idle connection around 1 KiB.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use std::pin::Pin;
use switchboard_core::{AuthError, Claims, ClientSink, Session};
use switchboard_proto::ws::{self, Decoder, WsEvent};
use switchboard_proto::{Command, Disconnect, ErrorCode, encode, parse_request};

use tokio::time::{Instant, Sleep, sleep, sleep_until};

use super::socket::Socket;
use super::{Identity, WsCodec};
use crate::app::AppState;
use crate::outbox::{DoorCodec, Outbox};

/// Bytes read from the socket per wake-up before the frames are handled, so a flooding
/// client cannot grow the event list without bound.
const READ_BUDGET: usize = 64 * 1024;
/// How long a closing connection may take to flush its last frames.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// How long to wait for the client's side of the close once ours is sent.
const LINGER: Duration = Duration::from_secs(2);
/// Frames written per vectored write.
const MAX_IOVECS: usize = 64;

/// What woke the connection task.
enum Wake {
    Readable,
    Writable,
    Outbox,
    Deadline,
    SocketError,
}

/// A future a protocol handler returns; boxed so the (large) command futures are not part
/// of every idle connection's state.
pub(crate) type BoxFuture<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// What speaks over a WebSocket connection: the native protocol or Pusher's. The connection
/// loop (socket, framing, outbox, keep-alives, close) is the same for both; the protocol only
/// turns client messages into commands and answers through the outbox.
pub(crate) trait Protocol: Send + Sized + 'static {
    type Codec: DoorCodec;

    /// One complete client message (text or binary payload).
    fn on_message<'a>(
        &'a mut self,
        state: &'a Arc<AppState>,
        outbox: &'a Arc<Outbox<Self::Codec>>,
        payload: &'a [u8],
    ) -> BoxFuture<'a>;

    /// The error payload for a client message larger than `limit` bytes (the message was
    /// dropped unread and the connection goes on).
    fn too_large(&self, limit: usize) -> Bytes;

    /// The client is past its connect step (the connect timeout no longer applies).
    fn is_connected(&self) -> bool;

    /// The connection ended: leave the hub.
    fn close(self) -> BoxFuture<'static>;
}

struct Conn<P: Protocol> {
    state: Arc<AppState>,
    socket: Socket,
    outbox: Arc<Outbox<P::Codec>>,
    decoder: Decoder,
    /// Frames taken from the outbox, not yet fully written.
    pending: VecDeque<Bytes>,
    /// The first pending frame is partly written.
    head_started: bool,
    /// The protocol spoken; it keeps whatever is not needed while idle boxed, to keep the
    /// task small.
    protocol: P,
    /// Connect timeout or close grace period; allocated only while one runs.
    deadline: Option<Pin<Box<Sleep>>>,
    /// A frame arrived since the last heartbeat.
    active: bool,
    read_closed: bool,
}

/// Runs a native connection (`/ws`).
pub(super) async fn run(state: Arc<AppState>, socket: Socket, early: Bytes, identity: Identity) {
    let outbox = Arc::new(Outbox::new(
        WsCodec,
        state.limits.client_queue_bytes,
        state.stats.clone(),
    ));
    let mut native = Native { session: None };
    match identity {
        Identity::Known(claims) => native.start_session(&state, &outbox, *claims, None),
        Identity::AwaitConnect => {}
    }
    run_protocol(state, socket, early, outbox, native).await;
}

/// Runs a connection speaking `protocol`, whose outbox is `outbox` (already holding what the
/// protocol queued at its start), until it closes.
pub(crate) async fn run_protocol<P: Protocol>(
    state: Arc<AppState>,
    socket: Socket,
    early: Bytes,
    outbox: Arc<Outbox<P::Codec>>,
    protocol: P,
) {
    let mut conn = Conn {
        state,
        socket,
        outbox,
        decoder: Decoder::default(),
        pending: VecDeque::new(),
        head_started: false,
        protocol,
        deadline: None,
        active: true,
        read_closed: false,
    };
    if !conn.protocol.is_connected() {
        conn.arm_deadline(conn.state.limits.connect_timeout);
    }
    // `early` is a slice of hyper's read buffer and would keep all of it alive: use it and
    // let it go before the connection settles down.
    let mut events = Vec::new();
    conn.decoder
        .feed(&early, conn.state.limits.max_frame_size, &mut events);
    drop(early);
    if !events.is_empty() {
        Box::pin(conn.handle_events(events)).await;
    }
    Box::pin(conn.serve()).await;
    let Conn {
        socket,
        protocol,
        read_closed,
        ..
    } = conn;
    protocol.close().await;
    Box::pin(linger(socket, read_closed)).await;
}

impl<P: Protocol> Conn<P> {
    fn arm_deadline(&mut self, after: Duration) {
        self.deadline = Some(Box::pin(sleep(after)));
    }

    async fn serve(&mut self) {
        let mut closing_armed = false;
        loop {
            let closing = self.outbox.drain_into(&mut self.pending, self.head_started);
            if closing.is_some() && !closing_armed {
                closing_armed = true;
                self.arm_deadline(CLOSE_GRACE);
            }
            if self.write_pending().is_err() {
                return;
            }
            if closing.is_some() && self.pending.is_empty() && !self.socket.wants_write() {
                return;
            }
            if self.read_closed && closing.is_none() {
                return;
            }
            match std::future::poll_fn(|cx| self.poll_wake(cx)).await {
                Wake::Readable => {
                    let events = self.read_available();
                    if !events.is_empty() {
                        // Boxed: the command futures are large and only live while they run.
                        Box::pin(self.handle_events(events)).await;
                    }
                }
                Wake::Outbox | Wake::Writable => {}
                Wake::Deadline => {
                    self.deadline = None;
                    if !self.protocol.is_connected() && !self.outbox.is_closing() {
                        self.outbox.disconnect(Disconnect::CONNECT_TIMEOUT);
                    } else {
                        return;
                    }
                }
                Wake::SocketError => return,
            }
            if self.outbox.take_ping_due() {
                self.heartbeat();
            }
        }
    }

    /// Waits for the next thing to do. Readiness is polled directly on the socket (no
    /// readiness futures in the task's state), which also replaces whatever waker the HTTP
    /// connection left registered on the socket before the upgrade.
    fn poll_wake(&mut self, cx: &mut Context<'_>) -> Poll<Wake> {
        if self.outbox.poll_woken(cx).is_ready() {
            return Poll::Ready(Wake::Outbox);
        }
        if !self.pending.is_empty() || self.socket.wants_write() {
            match self.socket.poll_write_ready(cx) {
                Poll::Ready(Ok(())) => return Poll::Ready(Wake::Writable),
                Poll::Ready(Err(_)) => return Poll::Ready(Wake::SocketError),
                Poll::Pending => {}
            }
        }
        if !self.read_closed {
            match self.socket.poll_read_ready(cx) {
                Poll::Ready(Ok(())) => return Poll::Ready(Wake::Readable),
                Poll::Ready(Err(_)) => return Poll::Ready(Wake::SocketError),
                Poll::Pending => {}
            }
        }
        if let Some(deadline) = self.deadline.as_mut()
            && deadline.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Wake::Deadline);
        }
        Poll::Pending
    }

    /// Reads what the socket has (up to the budget) through a stack buffer and decodes it.
    fn read_available(&mut self) -> Vec<WsEvent> {
        let max = self.state.limits.max_frame_size;
        let mut events = Vec::new();
        let mut buf = [0u8; 8192];
        let mut total = 0;
        while total < READ_BUDGET {
            match self.socket.try_read(&mut buf) {
                Ok(0) => {
                    self.read_closed = true;
                    break;
                }
                Ok(n) => {
                    total += n;
                    self.decoder.feed(&buf[..n], max, &mut events);
                    if n < buf.len() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.read_closed = true;
                    break;
                }
            }
        }
        self.state
            .stats
            .bytes_in
            .fetch_add(total as u64, Ordering::Relaxed);
        events
    }

    async fn handle_events(&mut self, events: Vec<WsEvent>) {
        for event in events {
            match event {
                WsEvent::Message { payload } => {
                    self.active = true;
                    self.state.stats.frames_in.fetch_add(1, Ordering::Relaxed);
                    if !self.outbox.is_closing() {
                        self.on_message(&payload).await;
                    }
                }
                WsEvent::Ping(payload) => {
                    self.active = true;
                    self.outbox.push(ws::encode_pong(&payload));
                }
                WsEvent::Pong => self.active = true,
                WsEvent::Close(code) => {
                    // Answer with the client's code (1000 when it gave none) and end.
                    let code = code.filter(|c| valid_close_code(*c)).unwrap_or(1000);
                    self.outbox
                        .close_with(Disconnect::CLIENT_CLOSED, vec![ws::encode_close(code, "")]);
                }
                WsEvent::TooLarge => {
                    let limit = self.state.limits.max_frame_size;
                    let frame = self.protocol.too_large(limit);
                    self.send_error(frame);
                }
                WsEvent::ProtocolError(why) => {
                    tracing::debug!("websocket protocol error: {why}");
                    self.outbox.close_with(
                        Disconnect::PROTOCOL_ERROR,
                        vec![ws::encode_close(1002, why)],
                    );
                }
            }
        }
    }

    async fn on_message(&mut self, payload: &[u8]) {
        let was_connected = self.protocol.is_connected();
        self.protocol
            .on_message(&self.state, &self.outbox, payload)
            .await;
        if !was_connected && self.protocol.is_connected() {
            self.deadline = None;
        }
    }

    fn send_error(&mut self, frame: Bytes) {
        self.state.count_error();
        self.outbox.push(ws::encode_text(&frame));
    }

    /// Called on the server's ping interval: a client silent since the last one is gone.
    fn heartbeat(&mut self) {
        if !self.active {
            self.outbox.disconnect(Disconnect::NO_PONG);
            return;
        }
        self.active = false;
        self.outbox.push(ws::encode_ping(b""));
    }

    /// Writes pending frames until done or the socket would block.
    fn write_pending(&mut self) -> io::Result<()> {
        match self.socket.flush() {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            other => other?,
        }
        while !self.pending.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let count = self.pending.len().min(MAX_IOVECS);
            for (slot, frame) in slices.iter_mut().zip(self.pending.iter()) {
                *slot = IoSlice::new(frame);
            }
            let written = match self.socket.try_write_vectored(&slices[..count]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            };
            self.outbox.written(written);
            self.state
                .stats
                .bytes_written
                .fetch_add(written as u64, Ordering::Relaxed);
            let mut left = written;
            while left > 0 {
                let Some(head) = self.pending.front_mut() else {
                    break;
                };
                if head.len() <= left {
                    left -= head.len();
                    self.pending.pop_front();
                    self.head_started = false;
                } else {
                    head.advance(left);
                    left = 0;
                    self.head_started = true;
                }
            }
        }
        // All written: give the memory back, so an idle connection holds no queue storage.
        self.pending = VecDeque::new();
        Ok(())
    }
}

/// Sends our FIN and reads until the client's, so unread input does not turn the close
/// into a reset that could destroy the last frames.
async fn linger(mut socket: Socket, read_closed: bool) {
    socket.shutdown().await;
    if read_closed {
        return;
    }
    let until = Instant::now() + LINGER;
    loop {
        let readable = std::future::poll_fn(|cx| socket.poll_read_ready(cx));
        tokio::select! {
            ready = readable => {
                if ready.is_err() {
                    return;
                }
                let mut buf = [0u8; 1024];
                match socket.try_read(&mut buf) {
                    Ok(0) => return,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return,
                }
            }
            _ = sleep_until(until) => return,
        }
    }
}

/// Close codes a client may send (RFC 6455 §7.4).
fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999)
}

/// The native protocol (spec §3): before the session exists the only acceptable frame is
/// `connect`; afterwards every frame goes to the session.
struct Native {
    /// Boxed, like every other part of the connection that is not needed while idle, to
    /// keep the task small.
    session: Option<Box<Session>>,
}

impl Protocol for Native {
    type Codec = WsCodec;

    fn on_message<'a>(
        &'a mut self,
        state: &'a Arc<AppState>,
        outbox: &'a Arc<Outbox<WsCodec>>,
        payload: &'a [u8],
    ) -> BoxFuture<'a> {
        Box::pin(async move {
            let Some(session) = self.session.as_mut() else {
                return self.on_first_frame(state, outbox, payload);
            };
            if let Some(answer) = session.handle_frame(payload).await {
                if answer.is_error() {
                    state.count_error();
                }
                outbox.push(ws::encode_text(answer.frame()));
            }
        })
    }

    fn too_large(&self, limit: usize) -> Bytes {
        let message = format!("frame larger than {limit} bytes");
        encode::error(None, ErrorCode::TooLarge, &message)
    }

    fn is_connected(&self) -> bool {
        self.session.is_some()
    }

    fn close(self) -> BoxFuture<'static> {
        Box::pin(async move {
            if let Some(session) = self.session {
                session.close().await;
            }
        })
    }
}

impl Native {
    /// Before the session exists the only acceptable frame is `connect` with a valid token.
    fn on_first_frame(
        &mut self,
        state: &Arc<AppState>,
        outbox: &Arc<Outbox<WsCodec>>,
        payload: &[u8],
    ) {
        let request = match parse_request(payload) {
            Ok(r) => r,
            Err(e) => {
                let frame = encode::error(e.id, e.code, &e.message);
                return refuse(state, outbox, frame, Disconnect::UNAUTHORIZED);
            }
        };
        let Command::Connect { token } = request.command else {
            let frame = encode::error(
                request.id,
                ErrorCode::Unauthorized,
                "the first frame must be {\"type\":\"connect\",\"token\":...}",
            );
            return refuse(state, outbox, frame, Disconnect::UNAUTHORIZED);
        };
        match state.auth.verify(&token) {
            Ok(claims) => self.start_session(state, outbox, claims, request.id),
            Err(AuthError::Expired) => {
                let frame = encode::error(request.id, ErrorCode::TokenExpired, "token expired");
                refuse(state, outbox, frame, Disconnect::TOKEN_EXPIRED);
            }
            Err(AuthError::Invalid(why)) => {
                let frame = encode::error(request.id, ErrorCode::Unauthorized, &why);
                refuse(state, outbox, frame, Disconnect::UNAUTHORIZED);
            }
        }
    }

    fn start_session(
        &mut self,
        state: &Arc<AppState>,
        outbox: &Arc<Outbox<WsCodec>>,
        claims: Claims,
        connect_id: Option<u64>,
    ) {
        let sink: Arc<dyn ClientSink> = outbox.clone();
        let session = Session::open(state.hub.clone(), state.auth.clone(), claims, sink);
        let ping = state.limits.ping_interval.as_secs();
        outbox.push(ws::encode_text(
            &session.connected_frame(connect_id, ping, None),
        ));
        self.session = Some(Box::new(session));
    }
}

/// An error frame, then a close with the reason's code.
fn refuse(state: &AppState, outbox: &Outbox<WsCodec>, error: Bytes, reason: Disconnect) {
    state.count_error();
    outbox.close_with(
        reason,
        vec![
            ws::encode_text(&error),
            ws::encode_close(reason.ws_close, reason.message),
        ],
    );
}
