//! The WebSocket driver: one task per connection that owns the socket, decodes client frames
//! for its [`Protocol`] (the native one, or Pusher's), and writes what its [`Machine`] offers.
//! Keep-alives, slow consumers, the connect step and closing are the machine's; this file only
//! moves bytes. While idle it holds no read buffer (reads go through a stack buffer), no
//! write list and no timer.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use switchboard_proto::Disconnect;
use switchboard_proto::ws::{self, Decoder, WsEvent};

use crate::admission::Permit;
use crate::door::socket::{Socket, Wake, poll_wake, write_from};
use crate::door::{Deadline, DoorCodec, Machine, Outbox, Output};
use crate::state::AppState;

/// Bytes read from the socket per wake-up before the frames are handled, so a flooding
/// client cannot grow the event list without bound.
const READ_BUDGET: usize = 64 * 1024;
/// How long to wait for the client's side of the close once ours is sent.
const LINGER: Duration = Duration::from_secs(2);

/// A future a protocol handler returns; boxed so the (large) command futures are not part
/// of every idle connection's state.
pub(crate) type BoxFuture<'a, T = ()> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The outbox a protocol answers through.
pub(crate) type ProtocolOutbox<P> = Outbox<<<P as Protocol>::Codec as DoorCodec>::Control>;

/// A protocol's decision to end the connection: why, and its exact last bytes.
pub(crate) struct Refusal {
    pub reason: Disconnect,
    pub goodbye: Vec<Bytes>,
}

/// What speaks over a WebSocket connection: the native protocol or Pusher's. It turns client
/// messages into commands and answers through the outbox; the connection (socket, framing,
/// keep-alives, close) is the driver's and the machine's.
pub(crate) trait Protocol: Send + Sized + 'static {
    type Codec: DoorCodec;

    /// One complete client message (text or binary payload).
    fn on_message<'a>(
        &'a mut self,
        state: &'a Arc<AppState>,
        outbox: &'a Arc<ProtocolOutbox<Self>>,
        payload: &'a [u8],
    ) -> BoxFuture<'a, Option<Refusal>>;

    /// The error frame (JSON) for a client message larger than `limit` bytes (the message
    /// was dropped unread and the connection goes on).
    fn too_large(&self, limit: usize) -> Bytes;

    /// The error frame (JSON) for a client message past the client's command rate (it is not
    /// run, the connection goes on).
    fn rate_limited(&self, payload: &[u8], rate: u32) -> Bytes;

    /// The client is past its connect step.
    fn is_connected(&self) -> bool;

    /// The connection ended: leave the hub (once).
    fn close(&mut self) -> BoxFuture<'static>;
}

struct Conn<P: Protocol> {
    state: Arc<AppState>,
    /// The connection's place in the node's connection limits.
    _permit: Permit,
    socket: Socket,
    machine: Machine<P::Codec>,
    decoder: Decoder,
    /// The protocol spoken; it keeps whatever is not needed while idle boxed, to keep the
    /// task small.
    protocol: P,
    deadline: Deadline,
    read_closed: bool,
}

/// Runs a connection speaking `protocol` whose machine is `machine` (its outbox already
/// holding what the protocol queued at its start), until it closes. `early`: bytes the HTTP
/// connection read past the handshake.
pub(crate) fn run_protocol<P: Protocol>(
    state: Arc<AppState>,
    permit: Permit,
    socket: Socket,
    early: Bytes,
    mut machine: Machine<P::Codec>,
    protocol: P,
) -> impl Future<Output = ()> + Send {
    let now = Instant::now();
    if !protocol.is_connected() {
        machine.expect_connect(now + state.limits.connect_timeout);
    }
    machine.limit_commands(state.limits.client_rate, state.limits.client_burst, now);
    let mut conn = Conn {
        state,
        _permit: permit,
        socket,
        machine,
        decoder: Decoder::default(),
        protocol,
        deadline: Deadline::default(),
        read_closed: false,
    };
    // `early` is a slice of hyper's read buffer and would keep all of it alive: use it and
    // let it go before the connection settles down.
    let mut events = Vec::new();
    conn.decoder
        .feed(&early, conn.state.limits.max_frame_size, &mut events);
    drop(early);
    // The future works on `conn` where it was captured, never moving it: its size is every
    // idle connection's memory, and a moved copy would count twice.
    async move {
        if !events.is_empty() {
            // Boxed: the command futures are large and only live while they run.
            Box::pin(conn.handle_events(std::mem::take(&mut events))).await;
        }
        conn.serve().await;
        conn.protocol.close().await;
        Box::pin(linger(&mut conn.socket, conn.read_closed)).await;
    }
}

impl<P: Protocol> Conn<P> {
    async fn serve(&mut self) {
        loop {
            let mut writing = false;
            match self.machine.poll_output(Instant::now) {
                Output::Write => match write_from(&mut self.socket, &mut self.machine) {
                    Ok(true) => continue,
                    Ok(false) => writing = true,
                    Err(_) => return,
                },
                Output::Wait(_) => {
                    if self.read_closed && !self.machine.is_closing() {
                        return; // the client went away
                    }
                }
                Output::Close(_) => {
                    // Boxed: its timer would otherwise be part of every idle connection.
                    Box::pin(self.flush_tls()).await;
                    return;
                }
            }
            self.deadline.set(self.machine.deadline());
            let reading = !self.read_closed;
            let (outbox, socket, deadline) =
                (self.machine.outbox(), &mut self.socket, &mut self.deadline);
            let wake = std::future::poll_fn(|cx| {
                poll_wake(cx, outbox, socket, reading, writing, deadline)
            })
            .await;
            match wake {
                Wake::Readable => {
                    let events = self.read_available();
                    if !events.is_empty() {
                        // Boxed: the command futures are large and only live while they run.
                        Box::pin(self.handle_events(events)).await;
                    }
                }
                Wake::Outbox | Wake::Writable | Wake::Deadline => {}
                Wake::SocketError => return,
            }
        }
    }

    /// Writes the TLS records still buffered (the close's last bytes), for a short while.
    async fn flush_tls(&mut self) {
        let until = tokio::time::Instant::now() + LINGER;
        while self.socket.wants_write() {
            let ready = std::future::poll_fn(|cx| self.socket.poll_write_ready(cx));
            match tokio::time::timeout_at(until, ready).await {
                Ok(Ok(())) => {}
                _ => return,
            }
            match self.socket.flush() {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return,
                Ok(()) => {}
            }
        }
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
                    self.state.stats.frames_in.fetch_add(1, Ordering::Relaxed);
                    if !self.machine.admit_command(Instant::now) {
                        self.refuse_rate(&payload);
                    } else if !self.machine.is_closing() {
                        self.on_message(&payload).await;
                    }
                }
                WsEvent::Ping(payload) => {
                    // A ping costs the server a pong: it counts like a command, and one past
                    // the rate goes unanswered.
                    if self.machine.admit_command(Instant::now) {
                        self.machine.outbox().push_wire(ws::encode_pong(&payload));
                    }
                }
                WsEvent::Pong => self.machine.client_activity(),
                WsEvent::Close(code) => {
                    // Answer with the client's code (1000 when it gave none) and end; the
                    // decoder let through only codes a client may send.
                    let code = code.unwrap_or(1000);
                    let goodbye = vec![ws::encode_close(code, "")];
                    self.close(Disconnect::CLIENT_CLOSED, goodbye);
                }
                WsEvent::TooLarge => {
                    self.state.count_error();
                    let frame = self.protocol.too_large(self.state.limits.max_frame_size);
                    self.machine.outbox().push_own(frame);
                }
                WsEvent::ProtocolError(why) => {
                    tracing::debug!("websocket protocol error: {why}");
                    let goodbye = vec![ws::encode_close(1002, why)];
                    self.close(Disconnect::PROTOCOL_ERROR, goodbye);
                }
                WsEvent::InvalidUtf8(why) => {
                    tracing::debug!("websocket payload error: {why}");
                    let goodbye = vec![ws::encode_close(1007, why)];
                    self.close(Disconnect::INVALID_UTF8, goodbye);
                }
            }
        }
    }

    async fn on_message(&mut self, payload: &[u8]) {
        let refusal = self
            .protocol
            .on_message(&self.state, self.machine.outbox(), payload)
            .await;
        if let Some(Refusal { reason, goodbye }) = refusal {
            self.close(reason, goodbye);
        }
        if self.protocol.is_connected() {
            self.machine.connected();
        }
    }

    fn refuse_rate(&mut self, payload: &[u8]) {
        self.state.count_error();
        self.state
            .stats
            .rate_limited
            .fetch_add(1, Ordering::Relaxed);
        let frame = self
            .protocol
            .rate_limited(payload, self.state.limits.client_rate);
        self.machine.outbox().push_own(frame);
    }

    fn close(&mut self, reason: Disconnect, goodbye: Vec<Bytes>) {
        self.machine.close(reason, Some(goodbye), Instant::now());
    }
}

/// Sends our FIN and reads until the client's, so unread input does not turn the close
/// into a reset that could destroy the last frames.
async fn linger(socket: &mut Socket, read_closed: bool) {
    socket.shutdown().await;
    if read_closed {
        return;
    }
    let until = tokio::time::Instant::now() + LINGER;
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
            _ = tokio::time::sleep_until(until) => return,
        }
    }
}
