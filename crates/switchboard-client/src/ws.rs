//! WebSocket client of the native protocol (PROTOCOL.md §2, §3).

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::{DEFAULT_TIMEOUT, Error, Result, Value, http_error, percent_encode};

/// A WebSocket client of the native protocol.
///
/// Commands get numeric ids (1, 2, 3, ...); [`request`](Self::request) waits for the answer
/// with the same id. Every other frame that arrives meanwhile is kept, in arrival order, for
/// [`next_push`](Self::next_push) / [`next_frame`](Self::next_frame), so nothing the server
/// sends is ever silently dropped.
pub struct WsClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Frames read from the socket but not yet handed to the caller, oldest first.
    pending: VecDeque<Value>,
    /// Id given to the next command that has none.
    next_id: u64,
    /// Set once the connection is over: close code (None when the TCP just ended) and reason.
    closed: Option<(Option<u16>, String)>,
    /// Time limit of [`request`](Self::request) and its wrappers.
    request_timeout: Duration,
}

impl std::fmt::Debug for WsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsClient")
            .field("pending", &self.pending.len())
            .field("next_id", &self.next_id)
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

impl WsClient {
    /// Connects to `{base}/ws` (with `?token=` when `token` is given) and waits up to
    /// [`DEFAULT_TIMEOUT`] for the first frame, which must be `{"type":"connected",...}`;
    /// returns the client and that frame.
    ///
    /// `base` is e.g. `http://127.0.0.1:7700` or `ws://127.0.0.1:7700`. A refused upgrade
    /// (e.g. HTTP 401) and an `error` frame instead of `connected` both give [`Error::Server`].
    pub async fn connect(base: &str, token: Option<&str>) -> Result<(WsClient, Value)> {
        let path = match token {
            Some(token) => format!("/ws?token={}", percent_encode(token)),
            None => "/ws".to_owned(),
        };
        let mut client = Self::open(&Self::ws_url(base, &path), &[]).await?;
        let connected = client.await_connected(None, DEFAULT_TIMEOUT).await?;
        Ok((client, connected))
    }

    /// Connects to `{base}/ws` without a token in the URL and authenticates with a first frame
    /// `{"type":"connect","id":N,"token":...}` (§3); returns the client and the `connected` frame.
    pub async fn connect_with_frame(base: &str, token: &str) -> Result<(WsClient, Value)> {
        let mut client = Self::open(&Self::ws_url(base, "/ws"), &[]).await?;
        let id = client
            .send(json!({"type": "connect", "token": token}))
            .await?;
        let connected = client.await_connected(Some(id), DEFAULT_TIMEOUT).await?;
        Ok((client, connected))
    }

    /// Opens a WebSocket to the exact `url` (`ws://...`), adding `headers` to the upgrade
    /// request (e.g. `("Authorization", "Bearer <jwt>")`). Waits for no frame.
    pub async fn open(url: &str, headers: &[(&str, &str)]) -> Result<WsClient> {
        let mut request = url.into_client_request()?;
        for &(name, value) in headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| Error::Protocol(format!("bad header name {name:?}: {e}")))?;
            let value = HeaderValue::from_str(value)
                .map_err(|e| Error::Protocol(format!("bad header value for {name}: {e}")))?;
            request.headers_mut().append(name, value);
        }
        // Nagle off: frames are small and latency matters (tests, benchmark).
        let connecting = tokio_tungstenite::connect_async_with_config(request, None, true);
        let (ws, _response) = tokio::time::timeout(DEFAULT_TIMEOUT, connecting)
            .await
            .map_err(|_| Error::Timeout("websocket upgrade"))?
            .map_err(upgrade_error)?;
        Ok(WsClient {
            ws,
            pending: VecDeque::new(),
            next_id: 1,
            closed: None,
            request_timeout: DEFAULT_TIMEOUT,
        })
    }

    /// Turns a server base address into a WebSocket URL: `http` becomes `ws`, `https` becomes
    /// `wss`, no scheme means `ws`; then appends `path_and_query` (e.g. `/ws?token=...`).
    pub fn ws_url(base: &str, path_and_query: &str) -> String {
        let base = base.trim_end_matches('/');
        let base = if let Some(rest) = base.strip_prefix("http://") {
            format!("ws://{rest}")
        } else if let Some(rest) = base.strip_prefix("https://") {
            format!("wss://{rest}")
        } else if base.starts_with("ws://") || base.starts_with("wss://") {
            base.to_owned()
        } else {
            format!("ws://{base}")
        };
        if path_and_query.is_empty() || path_and_query.starts_with('/') {
            format!("{base}{path_and_query}")
        } else {
            format!("{base}/{path_and_query}")
        }
    }

    /// Changes the time limit of [`request`](Self::request) and its wrappers (default 5 s).
    pub fn set_request_timeout(&mut self, timeout: Duration) {
        self.request_timeout = timeout;
    }

    /// Sends a command frame (a JSON object). When it has no `id`, gives it the next one
    /// (1, 2, 3, ...). Returns the id used. Ids given by the caller move the counter past them,
    /// so later automatic ids never collide with them.
    pub async fn send(&mut self, mut frame: Value) -> Result<u64> {
        let obj = frame
            .as_object_mut()
            .ok_or_else(|| Error::Protocol("a command frame must be a JSON object".into()))?;
        let id = match obj.get("id") {
            None => {
                let id = self.next_id;
                obj.insert("id".into(), id.into());
                id
            }
            Some(id) => id.as_u64().ok_or_else(|| {
                Error::Protocol(format!(
                    "command id {id} is not a non-negative integer; use send_text to send it"
                ))
            })?,
        };
        self.next_id = self.next_id.max(id.saturating_add(1));
        self.send_text(&frame.to_string()).await?;
        Ok(id)
    }

    /// Sends `text` as one text message, as is (for bad-input tests: invalid JSON, odd ids).
    pub async fn send_text(&mut self, text: &str) -> Result<()> {
        self.send_message(Message::text(text)).await
    }

    /// Sends any raw WebSocket message (binary, ping, close, a raw frame with invalid UTF-8).
    pub async fn send_message(&mut self, msg: Message) -> Result<()> {
        if let Some(err) = self.closed_error() {
            return Err(err);
        }
        self.ws.send(msg).await?;
        Ok(())
    }

    /// Sends `frame` and waits (default 5 s) for its answer: the `reply`, `pong` or `error`
    /// frame with the same `id`. A reply or pong is returned; an error frame becomes
    /// [`Error::Server`] with `status: None`. Other frames that arrive meanwhile are kept for
    /// [`next_push`](Self::next_push) and [`next_frame`](Self::next_frame).
    pub async fn request(&mut self, frame: Value) -> Result<Value> {
        self.request_with_timeout(frame, self.request_timeout).await
    }

    /// [`request`](Self::request) with an explicit time limit.
    pub async fn request_with_timeout(&mut self, frame: Value, timeout: Duration) -> Result<Value> {
        let id = self.send(frame).await?;
        let answer = self
            .next_matching(timeout, "reply", |f| {
                is_answer(f) && f.get("id").and_then(Value::as_u64) == Some(id)
            })
            .await?;
        answer_to_result(answer)
    }

    /// Subscribes to `channel`; the reply carries `channel`, `offset`, `epoch`.
    pub async fn subscribe(&mut self, channel: &str) -> Result<Value> {
        self.request(json!({"type": "subscribe", "channel": channel}))
            .await
    }

    /// Subscribes to `channel`, recovering every message after `offset` in `epoch` (§4);
    /// the reply also carries `recovered`.
    pub async fn subscribe_since(
        &mut self,
        channel: &str,
        offset: u64,
        epoch: &str,
    ) -> Result<Value> {
        self.request(json!({
            "type": "subscribe",
            "channel": channel,
            "since": {"offset": offset, "epoch": epoch},
        }))
        .await
    }

    /// Unsubscribes from `channel`.
    pub async fn unsubscribe(&mut self, channel: &str) -> Result<Value> {
        self.request(json!({"type": "unsubscribe", "channel": channel}))
            .await
    }

    /// Publishes `data` to `channel`; the reply carries `offset` and `epoch`.
    pub async fn publish(&mut self, channel: &str, data: Value) -> Result<Value> {
        self.request(json!({"type": "publish", "channel": channel, "data": data}))
            .await
    }

    /// Asks who is in `channel`; the reply carries `members`.
    pub async fn presence(&mut self, channel: &str) -> Result<Value> {
        self.request(json!({"type": "presence", "channel": channel}))
            .await
    }

    /// Reads the history of `channel`, optionally after `since = (offset, epoch)` and at most
    /// `limit` messages; the reply carries `messages`, `offset`, `epoch`.
    pub async fn history(
        &mut self,
        channel: &str,
        since: Option<(u64, &str)>,
        limit: Option<usize>,
    ) -> Result<Value> {
        let mut frame = json!({"type": "history", "channel": channel});
        if let Some((offset, epoch)) = since {
            frame["since"] = json!({"offset": offset, "epoch": epoch});
        }
        if let Some(limit) = limit {
            frame["limit"] = json!(limit);
        }
        self.request(frame).await
    }

    /// Replaces the connection's token before it expires; the reply carries the new `exp`.
    pub async fn refresh(&mut self, token: &str) -> Result<Value> {
        self.request(json!({"type": "refresh", "token": token}))
            .await
    }

    /// Sends a `ping` command; returns the server's `pong` frame.
    pub async fn ping(&mut self) -> Result<Value> {
        self.request(json!({"type": "ping"})).await
    }

    /// Joins `room` with optional `meta`; the reply carries `peer`, `peers`, `ice_servers`.
    pub async fn join_room(&mut self, room: &str, meta: Option<Value>) -> Result<Value> {
        let mut frame = json!({"type": "join_room", "room": room});
        if let Some(meta) = meta {
            frame["meta"] = meta;
        }
        self.request(frame).await
    }

    /// Leaves `room`.
    pub async fn leave_room(&mut self, room: &str) -> Result<Value> {
        self.request(json!({"type": "leave_room", "room": room}))
            .await
    }

    /// Replaces this peer's `meta` in `room`.
    pub async fn update_meta(&mut self, room: &str, meta: Value) -> Result<Value> {
        self.request(json!({"type": "update_meta", "room": room, "meta": meta}))
            .await
    }

    /// Sends `data` to peer `to` in `room`, or to every other peer when `to` is `None`.
    pub async fn signal(&mut self, room: &str, to: Option<&str>, data: Value) -> Result<Value> {
        let mut frame = json!({"type": "signal", "room": room, "data": data});
        if let Some(to) = to {
            frame["to"] = json!(to);
        }
        self.request(frame).await
    }

    /// Next frame that is not an answer to a command (`reply`, `pong`, `error`): a push such as
    /// `message`, `join`, `leave`, `disconnect`. Buffered pushes come first. Answers read
    /// meanwhile stay buffered for [`next_frame`](Self::next_frame).
    pub async fn next_push(&mut self, timeout: Duration) -> Result<Value> {
        self.next_matching(timeout, "push", |f| !is_answer(f)).await
    }

    /// Next frame of any kind, in arrival order (buffered frames first).
    pub async fn next_frame(&mut self, timeout: Duration) -> Result<Value> {
        self.next_matching(timeout, "frame", |_| true).await
    }

    /// Next `message` push of `channel`. Other frames read meanwhile stay buffered.
    pub async fn next_message(&mut self, channel: &str, timeout: Duration) -> Result<Value> {
        self.next_matching(timeout, "message", |f| {
            f["type"] == "message" && f["channel"] == channel
        })
        .await
    }

    /// First frame (buffered ones first) for which `want` is true, e.g. a `peer_joined` push.
    /// Frames read meanwhile that do not match stay buffered, in order.
    pub async fn next_where<F>(&mut self, timeout: Duration, want: F) -> Result<Value>
    where
        F: Fn(&Value) -> bool,
    {
        self.next_matching(timeout, "matching frame", want).await
    }

    /// Waits until the server ends the connection; returns its close code and reason (code
    /// `None` when the TCP connection just ended). Frames read meanwhile are buffered.
    /// Returns at once if the connection has already ended.
    pub async fn wait_close(&mut self, timeout: Duration) -> Result<(Option<u16>, String)> {
        let deadline = Instant::now() + timeout;
        loop {
            let read = tokio::time::timeout_at(deadline, self.read_frame()).await;
            match read.map_err(|_| Error::Timeout("close"))? {
                Ok(frame) => self.pending.push_back(frame),
                Err(Error::Closed { code, reason }) => return Ok((code, reason)),
                Err(e) => return Err(e),
            }
        }
    }

    /// Closes the connection cleanly (close code 1000) and waits briefly for the server's
    /// answering close frame.
    pub async fn close(mut self) -> Result<()> {
        if self.closed.is_some() {
            return Ok(());
        }
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        };
        match self.ws.close(Some(frame)).await {
            Ok(()) => {}
            // The server got there first: the connection is over either way.
            Err(
                tungstenite::Error::ConnectionClosed
                | tungstenite::Error::AlreadyClosed
                | tungstenite::Error::Io(_),
            ) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        // Drain until the server's close frame / end of stream so it sees a full handshake.
        let drain = async { while let Some(Ok(_)) = self.ws.next().await {} };
        let _ = tokio::time::timeout(DEFAULT_TIMEOUT, drain).await;
        Ok(())
    }

    /// Waits for the `connected` frame that must open the conversation. `connect_id` is the id
    /// of a `connect` command whose plain `reply`, if the server sends one, is skipped.
    async fn await_connected(
        &mut self,
        connect_id: Option<u64>,
        timeout: Duration,
    ) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let read = tokio::time::timeout_at(deadline, self.read_frame()).await;
            let frame = read.map_err(|_| Error::Timeout("connected frame"))??;
            match frame["type"].as_str() {
                Some("connected") => return Ok(frame),
                Some("error") => return answer_to_result(frame),
                Some("reply") if connect_id.is_some() && frame["id"].as_u64() == connect_id => {}
                _ => {
                    return Err(Error::Protocol(format!(
                        "expected a connected frame first, got {frame}"
                    )));
                }
            }
        }
    }

    /// Returns the first frame, buffered or new, for which `want` is true, reading for at most
    /// `timeout`; frames that do not match are buffered in arrival order. `what` names the
    /// awaited frame in [`Error::Timeout`].
    async fn next_matching<F>(
        &mut self,
        timeout: Duration,
        what: &'static str,
        want: F,
    ) -> Result<Value>
    where
        F: Fn(&Value) -> bool,
    {
        let buffered = self.pending.iter().position(&want);
        if let Some(frame) = buffered.and_then(|i| self.pending.remove(i)) {
            return Ok(frame);
        }
        let deadline = Instant::now() + timeout;
        loop {
            // read_frame is cancel-safe, and every frame is buffered before the next await,
            // so a timeout never loses a frame.
            let read = tokio::time::timeout_at(deadline, self.read_frame()).await;
            let frame = read.map_err(|_| Error::Timeout(what))??;
            if want(&frame) {
                return Ok(frame);
            }
            self.pending.push_back(frame);
        }
    }

    /// Reads the next JSON frame from the socket, with no time limit (callers add one).
    /// Control messages are handled here; once the connection has ended every call returns
    /// [`Error::Closed`]. Cancel-safe: a frame is either returned or still unread.
    async fn read_frame(&mut self) -> Result<Value> {
        loop {
            if let Some(err) = self.closed_error() {
                return Err(err);
            }
            let msg = match self.ws.next().await {
                Some(Ok(msg)) => msg,
                Some(Err(e)) => {
                    self.closed = Some(match e {
                        tungstenite::Error::ConnectionClosed
                        | tungstenite::Error::AlreadyClosed
                        | tungstenite::Error::Protocol(
                            tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
                        ) => (None, String::new()),
                        tungstenite::Error::Io(e) => (None, e.to_string()),
                        // Anything else (bad framing, invalid UTF-8 in a text message, ...) is
                        // the server breaking the protocol: report it as such. tungstenite
                        // fails the connection after it, so later reads see it closed.
                        other => return Err(other.into()),
                    });
                    continue;
                }
                None => {
                    self.closed = Some((None, String::new()));
                    continue;
                }
            };
            match msg {
                Message::Text(text) => {
                    let frame: Value = serde_json::from_str(text.as_str())?;
                    if !frame.is_object() {
                        return Err(Error::Protocol(format!(
                            "frame is not a JSON object: {frame}"
                        )));
                    }
                    return Ok(frame);
                }
                Message::Binary(bytes) => {
                    return Err(Error::Protocol(format!(
                        "unexpected binary message of {} bytes (frames are text)",
                        bytes.len()
                    )));
                }
                // tungstenite queued the pong; it only goes out on the next write or flush,
                // and a client that only listens would never write. An error here will show
                // up on the next read.
                Message::Ping(_) => {
                    let _ = self.ws.flush().await;
                }
                Message::Pong(_) | Message::Frame(_) => {}
                Message::Close(frame) => {
                    // Send the queued close reply, completing the close handshake.
                    let _ = self.ws.flush().await;
                    self.closed = Some(match frame {
                        Some(f) => (Some(u16::from(f.code)), f.reason.to_string()),
                        None => (None, String::new()),
                    });
                }
            }
        }
    }

    /// [`Error::Closed`] when the connection has ended.
    fn closed_error(&self) -> Option<Error> {
        self.closed.as_ref().map(|(code, reason)| Error::Closed {
            code: *code,
            reason: reason.clone(),
        })
    }
}

/// Whether `frame` answers a command (as opposed to a push).
fn is_answer(frame: &Value) -> bool {
    matches!(frame["type"].as_str(), Some("reply" | "pong" | "error"))
}

/// An `error` frame becomes [`Error::Server`]; any other answer is returned as is.
fn answer_to_result(frame: Value) -> Result<Value> {
    if frame["type"] != "error" {
        return Ok(frame);
    }
    Err(Error::Server {
        code: frame["code"].as_str().unwrap_or_default().to_owned(),
        message: frame["message"].as_str().unwrap_or_default().to_owned(),
        status: None,
    })
}

/// A refused upgrade carries the server's HTTP status and (usually) its error body: report it
/// as [`Error::Server`] so callers can check e.g. `unauthorized` / 401 directly.
fn upgrade_error(e: tungstenite::Error) -> Error {
    match e {
        tungstenite::Error::Http(response) => {
            let body = response
                .body()
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            http_error(response.status().as_u16(), &body)
        }
        other => other.into(),
    }
}

#[cfg(test)]
// The handshake callbacks below must return tungstenite's (large) error response type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;
    use tokio::task::JoinHandle;
    use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

    const SHORT: Duration = Duration::from_millis(200);
    const LONG: Duration = Duration::from_secs(5);

    type ServerWs = WebSocketStream<TcpStream>;

    /// Starts a one-connection WebSocket server running `script`; returns its base URL.
    /// The script gets the socket and the request URI.
    async fn ws_server<F, Fut>(script: F) -> (String, JoinHandle<()>)
    where
        F: FnOnce(ServerWs, String) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut uri = String::new();
            let ws = tokio_tungstenite::accept_hdr_async(tcp, |req: &Request, resp: Response| {
                uri = req.uri().to_string();
                Ok(resp)
            })
            .await
            .unwrap();
            script(ws, uri).await;
        });
        (base, task)
    }

    async fn send_json(ws: &mut ServerWs, frame: Value) {
        ws.send(Message::text(frame.to_string())).await.unwrap();
    }

    /// Next text frame the server receives, as JSON (skipping control messages).
    async fn recv_json(ws: &mut ServerWs) -> Value {
        loop {
            match ws.next().await.unwrap().unwrap() {
                Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
                Message::Ping(_) | Message::Pong(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    fn connected() -> Value {
        json!({"type": "connected", "client": "c1", "user": "alice"})
    }

    #[test]
    fn ws_url_maps_schemes_and_joins_paths() {
        assert_eq!(WsClient::ws_url("http://h:1", "/ws"), "ws://h:1/ws");
        assert_eq!(WsClient::ws_url("https://h:1/", "/ws"), "wss://h:1/ws");
        assert_eq!(WsClient::ws_url("ws://h:1", "ws?x=1"), "ws://h:1/ws?x=1");
        assert_eq!(WsClient::ws_url("wss://h", "/ws"), "wss://h/ws");
        assert_eq!(
            WsClient::ws_url("127.0.0.1:7700", "/ws"),
            "ws://127.0.0.1:7700/ws"
        );
    }

    #[tokio::test]
    async fn buffers_pushes_around_out_of_order_answers_and_reports_close_code() {
        let (base, server) = ws_server(|mut ws, uri| async move {
            assert_eq!(uri, "/ws?token=a.b-c_d%3D");
            send_json(&mut ws, connected()).await;
            let ping = recv_json(&mut ws).await;
            assert_eq!(ping, json!({"type": "ping", "id": 1}));
            let sub = recv_json(&mut ws).await;
            assert_eq!(sub, json!({"type": "subscribe", "id": 2, "channel": "news"}));
            // A push, then the answers in the opposite order of the commands.
            let msg = json!({"type": "message", "channel": "news", "offset": 1, "epoch": "e", "data": {"n": 1}});
            send_json(&mut ws, msg).await;
            send_json(&mut ws, json!({"type": "reply", "id": 2, "channel": "news", "offset": 1, "epoch": "e"})).await;
            send_json(&mut ws, json!({"type": "pong", "id": 1})).await;
            send_json(&mut ws, json!({"type": "join", "channel": "news", "member": {"client": "c2"}})).await;
            send_json(&mut ws, json!({"type": "error", "code": "bad_request", "message": "what"})).await;
            ws.close(Some(CloseFrame { code: CloseCode::from(4001), reason: "kicked".into() }))
                .await
                .unwrap();
            // Let the client's close reply arrive before the socket is dropped.
            while let Some(Ok(_)) = ws.next().await {}
        })
        .await;

        let (mut client, hello) = WsClient::connect(&base, Some("a.b-c_d=")).await.unwrap();
        assert_eq!(hello, connected());

        assert_eq!(client.send(json!({"type": "ping"})).await.unwrap(), 1);
        let reply = client.subscribe("news").await.unwrap();
        assert_eq!(reply["id"], 2);
        assert_eq!(reply["offset"], 1);

        // The message that arrived before the reply was kept.
        let push = client.next_push(LONG).await.unwrap();
        assert_eq!(push["type"], "message");
        assert_eq!(push["data"], json!({"n": 1}));
        // next_push skips the stray pong (kept) and returns the join.
        assert_eq!(client.next_push(LONG).await.unwrap()["type"], "join");
        // next_frame sees the pong, then the id-less error, in arrival order.
        assert_eq!(
            client.next_frame(LONG).await.unwrap(),
            json!({"type": "pong", "id": 1})
        );
        assert_eq!(
            client.next_frame(LONG).await.unwrap()["code"],
            "bad_request"
        );

        let (code, reason) = client.wait_close(LONG).await.unwrap();
        assert_eq!((code, reason.as_str()), (Some(4001), "kicked"));
        match client.next_push(SHORT).await {
            Err(Error::Closed {
                code: Some(4001),
                reason,
            }) => assert_eq!(reason, "kicked"),
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            client.send(json!({"type": "ping"})).await,
            Err(Error::Closed { .. })
        ));
        // A second wait_close answers at once.
        assert_eq!(client.wait_close(SHORT).await.unwrap().0, Some(4001));
        client.close().await.unwrap();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn error_frame_answers_request_and_next_message_filters_by_channel() {
        let (base, server) = ws_server(|mut ws, _| async move {
            send_json(&mut ws, connected()).await;
            let publish = recv_json(&mut ws).await;
            assert_eq!(publish["data"], json!([1, 2]));
            let id = publish["id"].clone();
            send_json(&mut ws, json!({"type": "error", "id": id, "code": "forbidden", "message": "no publish"})).await;
            send_json(&mut ws, json!({"type": "message", "channel": "a", "offset": 1, "epoch": "e", "data": 1})).await;
            send_json(&mut ws, json!({"type": "message", "channel": "b", "offset": 1, "epoch": "e", "data": 2})).await;
            assert_eq!(recv_json(&mut ws).await, json!({"type": "ping", "id": 7}));
            let hist = recv_json(&mut ws).await;
            assert_eq!(
                hist,
                json!({"type": "history", "id": 8, "channel": "b", "since": {"offset": 3, "epoch": "e"}, "limit": 10})
            );
            send_json(&mut ws, json!({"type": "reply", "id": 8, "messages": []})).await;
            // Keep the socket open until the client closes it.
            while let Some(Ok(_)) = ws.next().await {}
        })
        .await;

        let (mut client, _) = WsClient::connect(&base, None).await.unwrap();
        match client.publish("a", json!([1, 2])).await {
            Err(Error::Server {
                code,
                message,
                status,
            }) => {
                assert_eq!(
                    (code.as_str(), message.as_str(), status),
                    ("forbidden", "no publish", None)
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(client.next_message("b", LONG).await.unwrap()["data"], 2);
        // The channel "a" message read on the way stays available.
        assert_eq!(client.next_message("a", LONG).await.unwrap()["data"], 1);
        // A caller-chosen id moves the counter past it.
        assert_eq!(
            client.send(json!({"type": "ping", "id": 7})).await.unwrap(),
            7
        );
        let reply = client.history("b", Some((3, "e")), Some(10)).await.unwrap();
        assert_eq!(reply["messages"], json!([]));
        assert_eq!(client.next_id, 9);
        client.close().await.unwrap();
        server.await.unwrap();
    }
    #[tokio::test]
    async fn answers_server_pings_while_only_listening() {
        let (base, server) = ws_server(|mut ws, _| async move {
            send_json(&mut ws, connected()).await;
            ws.send(Message::Ping("hi".into())).await.unwrap();
            // The client only reads, so this pong proves it flushed the queued answer.
            match ws.next().await.unwrap().unwrap() {
                Message::Pong(payload) => assert_eq!(&payload[..], b"hi"),
                other => panic!("unexpected {other:?}"),
            }
            send_json(
                &mut ws,
                json!({"type": "disconnect", "code": "token_expired", "message": "bye"}),
            )
            .await;
            // End the TCP connection without a close frame.
        })
        .await;

        let (mut client, _) = WsClient::connect(&base, None).await.unwrap();
        let push = client.next_push(LONG).await.unwrap();
        assert_eq!(push["code"], "token_expired");
        server.await.unwrap();
        let (code, _) = client.wait_close(LONG).await.unwrap();
        assert_eq!(code, None);
        assert!(matches!(
            client.next_frame(SHORT).await,
            Err(Error::Closed { code: None, .. })
        ));
    }

    #[tokio::test]
    async fn connect_reports_error_frame_instead_of_connected() {
        let (base, server) = ws_server(|mut ws, _| async move {
            send_json(
                &mut ws,
                json!({"type": "error", "code": "unauthorized", "message": "bad token"}),
            )
            .await;
            ws.close(Some(CloseFrame {
                code: CloseCode::from(4001),
                reason: "unauthorized".into(),
            }))
            .await
            .unwrap();
        })
        .await;
        match WsClient::connect(&base, Some("forged")).await {
            Err(Error::Server { code, status, .. }) => {
                assert_eq!((code.as_str(), status), ("unauthorized", None));
            }
            other => panic!("unexpected {other:?}"),
        }
        server.await.unwrap();
    }

    #[tokio::test]
    async fn connect_reports_refused_upgrade_with_status_and_code() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let body = r#"{"error":{"code":"unauthorized","message":"no token"}}"#;
            let response = format!(
                "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            // One write, so the body arrives with the headers (tungstenite keeps only that part).
            tcp.write_all(response.as_bytes()).await.unwrap();
            let _ = tcp.shutdown().await;
            // Keep the socket until the client has read the answer.
            tokio::time::sleep(SHORT).await;
        });
        match WsClient::connect(&base, None).await {
            Err(Error::Server { code, status, .. }) => {
                assert_eq!(status, Some(401));
                assert_eq!(code, "unauthorized");
            }
            other => panic!("unexpected {other:?}"),
        }
        server.await.unwrap();
    }

    #[tokio::test]
    async fn connect_with_frame_and_open_with_headers() {
        let (base, server) = ws_server(|mut ws, uri| async move {
            assert_eq!(uri, "/ws");
            let connect = recv_json(&mut ws).await;
            assert_eq!(connect, json!({"type": "connect", "id": 1, "token": "jwt"}));
            send_json(&mut ws, json!({"type": "reply", "id": 1})).await;
            send_json(&mut ws, connected()).await;
            while let Some(Ok(_)) = ws.next().await {}
        })
        .await;
        let (client, hello) = WsClient::connect_with_frame(&base, "jwt").await.unwrap();
        assert_eq!(hello["type"], "connected");
        client.close().await.unwrap();
        server.await.unwrap();

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/ws", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut auth = None;
            let _ws = tokio_tungstenite::accept_hdr_async(tcp, |req: &Request, resp: Response| {
                auth = req
                    .headers()
                    .get("authorization")
                    .map(|v| v.to_str().unwrap().to_owned());
                Ok(resp)
            })
            .await
            .unwrap();
            auth
        });
        let client = WsClient::open(&url, &[("Authorization", "Bearer jwt")])
            .await
            .unwrap();
        assert_eq!(server.await.unwrap().as_deref(), Some("Bearer jwt"));
        drop(client);
    }

    #[tokio::test]
    async fn times_out_and_rejects_bad_commands() {
        let (base, server) = ws_server(|mut ws, _| async move {
            send_json(&mut ws, connected()).await;
            // Never answer; read until the client goes away.
            while let Some(Ok(_)) = ws.next().await {}
        })
        .await;
        let (mut client, _) = WsClient::connect(&base, None).await.unwrap();
        assert!(matches!(
            client
                .request_with_timeout(json!({"type": "ping"}), SHORT)
                .await,
            Err(Error::Timeout("reply"))
        ));
        assert!(matches!(
            client.next_push(SHORT).await,
            Err(Error::Timeout("push"))
        ));
        assert!(matches!(
            client.send(json!([1])).await,
            Err(Error::Protocol(_))
        ));
        assert!(matches!(
            client.send(json!({"type": "ping", "id": "x"})).await,
            Err(Error::Protocol(_))
        ));
        client.close().await.unwrap();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn bad_frames_from_the_server_are_errors_not_panics() {
        let (base, server) = ws_server(|mut ws, _| async move {
            send_json(&mut ws, connected()).await;
            ws.send(Message::text("not json")).await.unwrap();
            ws.send(Message::text("[1]")).await.unwrap();
            ws.send(Message::binary(vec![1, 2])).await.unwrap();
            send_json(&mut ws, json!({"type": "message", "channel": "a"})).await;
            while let Some(Ok(_)) = ws.next().await {}
        })
        .await;
        let (mut client, _) = WsClient::connect(&base, None).await.unwrap();
        assert!(matches!(client.next_frame(LONG).await, Err(Error::Json(_))));
        assert!(matches!(
            client.next_frame(LONG).await,
            Err(Error::Protocol(_))
        ));
        assert!(matches!(
            client.next_frame(LONG).await,
            Err(Error::Protocol(_))
        ));
        assert_eq!(client.next_frame(LONG).await.unwrap()["channel"], "a");
        client.close().await.unwrap();
        server.await.unwrap();
    }
}
