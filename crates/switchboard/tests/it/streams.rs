//! The one-way doors over real sockets (PROTOCOL.md §1-§5): Server-Sent Events (`/sse`), HTTP
//! streaming of NDJSON (`/stream`), long polling (`/poll`) and `POST /session/<session>`.
//! Order, no gap and no repeat; resume with `Last-Event-ID` and `?cursor=`; `recovered`;
//! refusals (tokens, permissions, cursors); heartbeats; slow consumers; CORS; disconnects and
//! shutdown; one message reaching every door alike.
//!
//! Bodies are read chunk by chunk and parsed as a browser would: SSE events are split on blank
//! lines with `id:`/`data:`/`retry:` fields and `:` comments, whatever the chunk boundaries.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use crate::common::*;
use serde_json::{Value, json};
use switchboard_client::{WsClient, percent_encode};
use switchboard_core::unix_now;
use switchboard_server::auth::{TokenClaims, mint_hs256};
use tokio::time::Instant;

// ---------------------------------------------------------------------------------------------
// an HTTP client of the doors

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("http client builds")
}

/// `GET {base}{path_and_query}` with `headers`.
async fn get(
    server: &TestServer,
    path_and_query: &str,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    request(server, reqwest::Method::GET, path_and_query, headers).await
}

async fn request(
    server: &TestServer,
    method: reqwest::Method,
    path_and_query: &str,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut req = http().request(method, format!("{}{path_and_query}", server.base));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    tokio::time::timeout(WAIT, req.send())
        .await
        .unwrap_or_else(|_| panic!("no answer to {path_and_query} in time"))
        .unwrap_or_else(|e| panic!("request {path_and_query} failed: {e}"))
}

/// The status and the contract's error `code` of a refused request.
async fn refusal(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    // A stream that was not refused would never end: do not read it.
    assert!(
        !(200..300).contains(&status),
        "expected a refusal, got {status} ({})",
        response.url()
    );
    let text = tokio::time::timeout(WAIT, response.text())
        .await
        .expect("error body in time")
        .expect("error body");
    let body: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("error body is not JSON ({e}): {text:?}"));
    let code = body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error.code in {body}"))
        .to_owned();
    assert!(
        body["error"]["message"].is_string(),
        "error.message missing: {body}"
    );
    (status, code)
}

/// `token=...&channel=...&channel=...` (+ `extra`, which starts with `&` when given).
fn query(token: &str, channels: &[&str], extra: &str) -> String {
    let mut q = format!("token={}", percent_encode(token));
    for channel in channels {
        q.push_str("&channel=");
        q.push_str(&percent_encode(channel));
    }
    q.push_str(extra);
    q
}

/// A token for `user` that may subscribe and publish everywhere.
fn all(user: &str) -> String {
    token(user, &["*"], &["*"])
}

fn token_exp(user: &str, exp: u64) -> String {
    token_with(TokenClaims {
        sub: Some(user.into()),
        exp: Some(exp),
        subscribe: Some(vec!["*".into()]),
        publish: Some(vec!["*".into()]),
        ..TokenClaims::default()
    })
}

async fn publish(server: &TestServer, channel: &str, data: Value) -> Value {
    server
        .api()
        .publish(channel, &data)
        .await
        .unwrap_or_else(|e| panic!("publish to {channel}: {e}"))
}

fn str_of<'a>(frame: &'a Value, field: &str) -> &'a str {
    frame[field]
        .as_str()
        .unwrap_or_else(|| panic!("no string `{field}` in {frame}"))
}

fn offset_of(frame: &Value) -> u64 {
    frame["offset"]
        .as_u64()
        .unwrap_or_else(|| panic!("no numeric offset in {frame}"))
}

/// `(channel, offset, epoch, data)` of a message: what must be alike on every door.
fn essence(message: &Value) -> (String, u64, String, Value) {
    assert_eq!(message["type"], "message", "{message}");
    (
        str_of(message, "channel").to_owned(),
        offset_of(message),
        str_of(message, "epoch").to_owned(),
        message["data"].clone(),
    )
}

/// Groups messages by channel, keeping `(offset, data)` in arrival order.
fn by_channel(messages: &[Value]) -> BTreeMap<String, Vec<(u64, Value)>> {
    let mut out: BTreeMap<String, Vec<(u64, Value)>> = BTreeMap::new();
    for m in messages {
        assert_eq!(m["type"], "message", "{m}");
        out.entry(str_of(m, "channel").to_owned())
            .or_default()
            .push((offset_of(m), m["data"].clone()));
    }
    out
}

/// One published message, as the test remembers it.
#[derive(Debug, Clone)]
struct Sent {
    channel: String,
    offset: u64,
    data: Value,
}

/// What each channel must deliver: the `sent` of that channel after `positions[channel]`.
fn expected_after(
    sent: &[Sent],
    positions: &BTreeMap<String, u64>,
) -> BTreeMap<String, Vec<(u64, Value)>> {
    let mut out: BTreeMap<String, Vec<(u64, Value)>> = BTreeMap::new();
    for s in sent {
        if s.offset > positions.get(&s.channel).copied().unwrap_or(0) {
            out.entry(s.channel.clone())
                .or_default()
                .push((s.offset, s.data.clone()));
        }
    }
    out
}

/// Publishes `data` to `channel` and remembers it.
async fn send(server: &TestServer, sent: &mut Vec<Sent>, channel: &str, data: Value) -> Value {
    let answer = publish(server, channel, data.clone()).await;
    sent.push(Sent {
        channel: channel.to_owned(),
        offset: offset_of(&answer),
        data,
    });
    answer
}

/// A base64url encoding without padding (to hand-make cursors).
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// `cursor` with one character in its middle replaced by another valid base64url one.
fn altered(cursor: &str) -> String {
    let mut chars: Vec<char> = cursor.chars().collect();
    let i = chars.len() / 2;
    chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
    let out: String = chars.into_iter().collect();
    assert_ne!(out, cursor);
    out
}

// ---------------------------------------------------------------------------------------------
// reading a stream

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Sse,
    Ndjson,
}

impl Kind {
    fn path(self) -> &'static str {
        match self {
            Kind::Sse => "/sse",
            Kind::Ndjson => "/stream",
        }
    }
}

#[derive(Debug)]
enum Item {
    /// One frame (on SSE: the `data:` of one event; its `id:` is checked and remembered).
    Frame { frame: Value },
    /// An SSE comment-only event, or an empty NDJSON line.
    Heartbeat(String),
    /// An SSE `retry:`-only event.
    Retry(String),
    /// The body ended: `clean` unless the connection broke; `leftover` bytes of an unfinished
    /// event or line.
    End { clean: bool, leftover: usize },
}

/// The SSE event being assembled.
#[derive(Default)]
struct Event {
    data: Option<String>,
    id: Option<String>,
    retry: Option<String>,
    comments: Vec<String>,
}

/// An open one-way stream, parsed from raw chunks.
struct Door {
    kind: Kind,
    response: reqwest::Response,
    buf: Vec<u8>,
    event: Event,
    end: Option<bool>,
    /// The first frame, `connected`.
    connected: Value,
    /// The id of the last SSE event that had one: what a browser sends as `Last-Event-ID`.
    last_event_id: Option<String>,
    /// Every byte received so far.
    raw: Vec<u8>,
}

impl Door {
    fn new(kind: Kind, response: reqwest::Response) -> Door {
        Door {
            kind,
            response,
            buf: Vec::new(),
            event: Event::default(),
            end: None,
            connected: Value::Null,
            last_event_id: None,
            raw: Vec::new(),
        }
    }

    fn session(&self) -> String {
        str_of(&self.connected, "session").to_owned()
    }

    /// The next item, or `None` if nothing complete arrives within `timeout`.
    async fn next_item(&mut self, timeout: Duration) -> Option<Item> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(item) = self.parse_buffered() {
                return Some(item);
            }
            if let Some(clean) = self.end {
                return Some(Item::End {
                    clean,
                    leftover: self.buf.len(),
                });
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.response.chunk()).await {
                Err(_) => return None,
                Ok(Ok(Some(bytes))) => {
                    self.raw.extend_from_slice(&bytes);
                    self.buf.extend_from_slice(&bytes);
                }
                Ok(Ok(None)) => self.end = Some(true),
                Ok(Err(_)) => self.end = Some(false),
            }
        }
    }

    fn parse_buffered(&mut self) -> Option<Item> {
        while let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
            let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let line = String::from_utf8(line).expect("streams are UTF-8");
            match self.kind {
                Kind::Ndjson => {
                    if line.is_empty() {
                        return Some(Item::Heartbeat(String::new()));
                    }
                    let frame = serde_json::from_str(&line)
                        .unwrap_or_else(|e| panic!("NDJSON line is not JSON ({e}): {line:?}"));
                    return Some(Item::Frame { frame });
                }
                Kind::Sse => {
                    if line.is_empty() {
                        if let Some(item) = self.dispatch() {
                            return Some(item);
                        }
                        continue;
                    }
                    if let Some(comment) = line.strip_prefix(':') {
                        self.event.comments.push(comment.trim_start().to_owned());
                        continue;
                    }
                    let (field, value) = match line.split_once(':') {
                        Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                        None => (line.as_str(), ""),
                    };
                    match field {
                        "data" => match &mut self.event.data {
                            Some(data) => {
                                data.push('\n');
                                data.push_str(value);
                            }
                            None => self.event.data = Some(value.to_owned()),
                        },
                        "id" => self.event.id = Some(value.to_owned()),
                        "retry" => self.event.retry = Some(value.to_owned()),
                        // `event:` included: the contract wants every frame on `onmessage`.
                        other => panic!("unexpected SSE field {other:?} in line {line:?}"),
                    }
                }
            }
        }
        None
    }

    /// A blank line ends an SSE event.
    fn dispatch(&mut self) -> Option<Item> {
        let event = std::mem::take(&mut self.event);
        if event.id.is_some() {
            self.last_event_id.clone_from(&event.id);
        }
        if let Some(data) = event.data {
            let frame: Value = serde_json::from_str(&data)
                .unwrap_or_else(|e| panic!("SSE data is not one JSON frame ({e}): {data:?}"));
            if let Some(cursor) = frame.get("cursor") {
                assert_eq!(
                    event.id.as_deref(),
                    cursor.as_str(),
                    "the event id of a message is its cursor: {frame}"
                );
            }
            return Some(Item::Frame { frame });
        }
        if let Some(retry) = event.retry {
            return Some(Item::Retry(retry));
        }
        if !event.comments.is_empty() {
            return Some(Item::Heartbeat(event.comments.join("\n")));
        }
        None
    }

    /// The next frame (heartbeats skipped), within [`WAIT`].
    async fn next_frame(&mut self) -> Value {
        self.next_frame_within(WAIT).await
    }

    async fn next_frame_within(&mut self, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_item(left).await {
                Some(Item::Frame { frame }) => return frame,
                Some(Item::Heartbeat(_)) => continue,
                Some(other) => panic!("expected a frame, got {other:?}"),
                None => panic!("no frame within {timeout:?}"),
            }
        }
    }

    /// The next frame that is not a `join`/`leave` push.
    async fn next_non_presence(&mut self) -> Value {
        loop {
            let frame = self.next_frame().await;
            if frame["type"] != "join" && frame["type"] != "leave" {
                return frame;
            }
        }
    }

    /// The next `message` (presence pushes skipped; anything else fails the test).
    async fn next_message(&mut self) -> Value {
        let frame = self.next_non_presence().await;
        assert_eq!(frame["type"], "message", "expected a message, got {frame}");
        frame
    }

    async fn messages(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.next_message().await);
        }
        out
    }

    /// Frames of a resumed stream (presence pushes skipped) until the `subscribed` frame of
    /// every one of `channels` and `n` messages have arrived.
    async fn resumed_frames(&mut self, channels: &[&str], n: usize) -> Vec<Value> {
        let mut out: Vec<Value> = Vec::new();
        let mut seen = 0;
        let announced = |out: &[Value]| {
            channels.iter().all(|c| {
                out.iter()
                    .any(|f| f["type"] == "subscribed" && f["channel"] == *c)
            })
        };
        while seen < n || !announced(&out) {
            let frame = self.next_non_presence().await;
            if frame["type"] == "message" {
                seen += 1;
            }
            out.push(frame);
        }
        out
    }

    /// Expects the `subscribed` frames of `channels`, in URL order, and returns them.
    async fn subscribed(&mut self, channels: &[&str]) -> Vec<Value> {
        let mut out = Vec::new();
        for channel in channels {
            let frame = self.next_non_presence().await;
            assert_eq!(frame["type"], "subscribed", "{frame}");
            assert_eq!(frame["channel"], *channel, "{frame}");
            offset_of(&frame);
            assert!(!str_of(&frame, "epoch").is_empty(), "{frame}");
            out.push(frame);
        }
        out
    }

    /// Asserts that no message (nor anything but presence pushes and heartbeats) arrives and
    /// the stream stays open for `within`.
    async fn assert_quiet(&mut self, within: Duration, what: &str) {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_item(left).await {
                None => return,
                Some(Item::Heartbeat(_)) => {}
                Some(Item::Frame { frame })
                    if frame["type"] == "join" || frame["type"] == "leave" => {}
                Some(other) => panic!("{what}: expected nothing, got {other:?}"),
            }
        }
    }

    /// Every frame until the body ends (within `timeout`), and whether it ended cleanly.
    async fn until_end(&mut self, timeout: Duration) -> (Vec<Value>, bool) {
        let deadline = Instant::now() + timeout;
        let mut frames = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_item(left).await {
                Some(Item::Frame { frame }) => frames.push(frame),
                Some(Item::Heartbeat(_)) | Some(Item::Retry(_)) => {}
                Some(Item::End { clean, leftover }) => {
                    if clean {
                        assert_eq!(leftover, 0, "the body ended in the middle of a frame");
                    }
                    return (frames, clean);
                }
                None => panic!("the stream did not end within {timeout:?}; got {frames:?}"),
            }
        }
    }

    /// Expects the stream to end with a `disconnect` of `code` as its last frame.
    async fn expect_disconnect(&mut self, code: &str) -> Vec<Value> {
        let (frames, clean) = self.until_end(WAIT).await;
        assert!(
            clean,
            "the body should end cleanly after the disconnect frame"
        );
        let last = frames
            .last()
            .unwrap_or_else(|| panic!("the stream ended without a disconnect frame"));
        assert_eq!(last["type"], "disconnect", "last frame: {last}");
        assert_eq!(last["code"], code, "last frame: {last}");
        assert!(last["message"].is_string(), "{last}");
        frames
    }
}

/// Opens `kind` with `query` and `headers`; checks the status, the headers, `retry:` first on
/// SSE, then the `connected` frame (kept in `Door::connected`).
async fn open_with(server: &TestServer, kind: Kind, query: &str, headers: &[(&str, &str)]) -> Door {
    let response = get(server, &format!("{}?{query}", kind.path()), headers).await;
    let status = response.status().as_u16();
    if status != 200 {
        let text = response.text().await.unwrap_or_default();
        panic!("{} answered {status}: {text}", kind.path());
    }
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("{}: no {name} header", kind.path()))
            .to_owned()
    };
    let content_type = header("content-type");
    match kind {
        Kind::Sse => assert!(
            content_type.starts_with("text/event-stream"),
            "{content_type}"
        ),
        Kind::Ndjson => assert!(
            content_type.starts_with("application/x-ndjson"),
            "{content_type}"
        ),
    }
    let cache = header("cache-control");
    assert!(
        cache.contains("no-cache") && cache.contains("no-store"),
        "{cache}"
    );
    assert_eq!(header("x-accel-buffering"), "no");
    let mut door = Door::new(kind, response);
    if kind == Kind::Sse {
        match door.next_item(WAIT).await {
            Some(Item::Retry(retry)) => assert_eq!(retry, "1000"),
            other => panic!("SSE must begin with `retry:`, got {other:?}"),
        }
    }
    let connected = door.next_frame().await;
    assert_eq!(connected["type"], "connected", "first frame: {connected}");
    assert!(!str_of(&connected, "client").is_empty(), "{connected}");
    assert!(connected["user"].is_string(), "{connected}");
    assert!(!str_of(&connected, "session").is_empty(), "{connected}");
    door.connected = connected;
    door
}

async fn open(server: &TestServer, kind: Kind, query: &str) -> Door {
    open_with(server, kind, query, &[]).await
}

/// Opens `kind` on `channels` as `user` (allowed everything) and reads the `subscribed` frames.
async fn open_fresh(
    server: &TestServer,
    kind: Kind,
    user: &str,
    channels: &[&str],
) -> (Door, Vec<Value>) {
    let mut door = open(server, kind, &query(&all(user), channels, "")).await;
    assert_eq!(door.connected["user"], user);
    let subscribed = door.subscribed(channels).await;
    for frame in &subscribed {
        assert!(
            frame.get("recovered").is_none(),
            "a fresh stream has no `recovered`: {frame}"
        );
    }
    (door, subscribed)
}

/// `GET /poll?...` answering 200: the parsed `{"messages","cursor"}`.
async fn poll_ok(server: &TestServer, q: &str) -> Value {
    let response = request_poll(server, q).await;
    let status = response.status().as_u16();
    let text = response.text().await.expect("poll body");
    assert_eq!(status, 200, "poll answered {status}: {text}");
    let body: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert!(body["messages"].is_array(), "{body}");
    assert!(!str_of(&body, "cursor").is_empty(), "{body}");
    body
}

async fn request_poll(server: &TestServer, q: &str) -> reqwest::Response {
    // Polls may wait up to their timeout: no WAIT bound here.
    http()
        .get(format!("{}/poll?{q}", server.base))
        .send()
        .await
        .expect("poll request")
}

fn poll_messages(answer: &Value) -> Vec<Value> {
    answer["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["type"] == "message")
        .cloned()
        .collect()
}

/// `POST /session/<session>` with `body`: status and parsed body.
async fn post_session(server: &TestServer, session: &str, body: &Value) -> (u16, Value) {
    post_session_with(server, session, body, &[]).await
}

async fn post_session_with(
    server: &TestServer,
    session: &str,
    body: &Value,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let mut req = http()
        .post(format!("{}/session/{session}", server.base))
        .json(body);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let response = tokio::time::timeout(WAIT, req.send())
        .await
        .expect("session answer in time")
        .expect("session request");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text:?}")),
    )
}

/// Member client ids of `channel` (server API).
async fn presence_clients(server: &TestServer, channel: &str) -> HashSet<String> {
    let presence = server.api().presence(channel).await.unwrap();
    presence["members"]
        .as_array()
        .unwrap_or_else(|| panic!("{presence}"))
        .iter()
        .map(|m| str_of(m, "client").to_owned())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// frames, order, no gap, no repeat

#[tokio::test]
async fn sse_begins_with_retry_connected_and_subscribed_frames() {
    let server = TestServer::start().await;
    publish(&server, "first:a", json!(1)).await;
    publish(&server, "first:a", json!(2)).await;
    // `open_fresh` checks the headers, `retry: 1000` first and the connected frame.
    let (door, subscribed) = open_fresh(&server, Kind::Sse, "alice", &["first:a", "first:b"]).await;
    assert_eq!(door.connected["user"], "alice");
    assert_eq!(subscribed[0]["offset"], 2, "{}", subscribed[0]);
    assert_eq!(subscribed[1]["offset"], 0, "{}", subscribed[1]);
    // Nothing published before the stream opened is pushed.
    let mut door = door;
    door.assert_quiet(QUIET, "no old message").await;

    // Bearer works as well as ?token=, and each stream is its own client and session.
    let bearer = format!("Bearer {}", all("bob"));
    let mut other = open_with(
        &server,
        Kind::Ndjson,
        "channel=first:a",
        &[("Authorization", &bearer)],
    )
    .await;
    assert_eq!(other.connected["user"], "bob");
    other.subscribed(&["first:a"]).await;
    assert_ne!(other.connected["client"], door.connected["client"]);
    assert_ne!(other.session(), door.session());

    // The exact wire form of SSE: `retry:` first, then events of one `data:` line each, a
    // message with its cursor as `id:` right before its `data:`.
    publish(&server, "first:b", json!({"k": "v"})).await;
    let message = door.next_message().await;
    let cursor = str_of(&message, "cursor");
    let raw = String::from_utf8(door.raw.clone()).unwrap();
    assert!(raw.starts_with("retry: 1000\n\ndata: {"), "{raw:?}");
    assert!(!raw.contains("event:"), "{raw:?}");
    let (_, last) = raw
        .rsplit_once("\n\n")
        .map(|(a, _)| a.rsplit_once("\n\n").unwrap())
        .unwrap();
    let lines: Vec<&str> = last.split('\n').collect();
    assert_eq!(lines.len(), 2, "one id line and one data line: {last:?}");
    assert_eq!(lines[0], format!("id: {cursor}"));
    let data = lines[1].strip_prefix("data: ").expect("data line");
    assert_eq!(serde_json::from_str::<Value>(data).unwrap(), message);
    assert!(raw.ends_with("}\n\n"), "{raw:?}");
    assert_eq!(message["channel"], "first:b");
    assert_eq!(message["offset"], 1);
    assert_eq!(message["data"], json!({"k": "v"}));
}

async fn interleaved_channels_in_order(kind: Kind) {
    const TOTAL: usize = 150;
    let server = TestServer::start().await;
    let (a, b) = ("order:a", "order:b");
    let (mut door, _) = open_fresh(&server, kind, "alice", &[a, b]).await;
    let mut sent = Vec::new();
    for i in 0..TOTAL {
        // a a b a b b a b a ...: both channels interleaved, unevenly.
        let channel = if (i * 7) % 5 < 3 { a } else { b };
        send(&server, &mut sent, channel, json!({"i": i})).await;
    }
    let got = door.messages(TOTAL).await;
    let expected = expected_after(&sent, &BTreeMap::new());
    assert_eq!(by_channel(&got), expected);
    for (channel, list) in &expected {
        let offsets: Vec<u64> = list.iter().map(|(o, _)| *o).collect();
        assert_eq!(
            offsets,
            (1..=list.len() as u64).collect::<Vec<_>>(),
            "{channel}: offsets grow by one"
        );
    }
    // Every message carries a cursor, each a new one.
    let cursors: HashSet<&str> = got.iter().map(|m| str_of(m, "cursor")).collect();
    assert_eq!(cursors.len(), TOTAL, "one distinct cursor per message");
    // All epochs of a channel agree.
    for channel in [a, b] {
        let epochs: HashSet<&str> = got
            .iter()
            .filter(|m| m["channel"] == channel)
            .map(|m| str_of(m, "epoch"))
            .collect();
        assert_eq!(epochs.len(), 1, "{channel}: {epochs:?}");
    }
    door.assert_quiet(QUIET, "after the last message").await;
}

#[tokio::test]
async fn sse_two_interleaved_channels_in_order_without_gap_or_repeat() {
    interleaved_channels_in_order(Kind::Sse).await;
}

#[tokio::test]
async fn stream_two_interleaved_channels_in_order_without_gap_or_repeat() {
    interleaved_channels_in_order(Kind::Ndjson).await;
}

#[tokio::test]
async fn sse_stream_client_is_in_presence_and_sees_join_and_leave() {
    let config = format!("{JOIN_LEAVE}[[namespace]]\nname = \"quiet\"\njoin_leave = false\n");
    let server = server_with(&config).await;
    let (mut door, _) = open_fresh(&server, Kind::Sse, "alice", &["room:1", "quiet:1"]).await;
    let me = str_of(&door.connected, "client").to_owned();
    assert!(presence_clients(&server, "room:1").await.contains(&me));

    let (mut ws, connected) = server.connect(Some(&all("bob"))).await;
    let bob = str_of(&connected, "client").to_owned();
    ws.subscribe("room:1").await.unwrap();
    ws.subscribe("quiet:1").await.unwrap();
    // Only the namespace with join/leave on announces bob.
    let mut seen = Vec::new();
    loop {
        let frame = door.next_frame().await;
        if frame["type"] == "join" && frame["member"]["client"] == bob.as_str() {
            assert_eq!(frame["channel"], "room:1", "{frame}");
            assert_eq!(frame["member"]["user"], "bob", "{frame}");
            break;
        }
        seen.push(frame);
    }
    // Before bob's join only our own join may come (nothing about quiet:1).
    for frame in &seen {
        assert_eq!(frame["type"], "join", "{frame}");
        assert_eq!(frame["channel"], "room:1", "{frame}");
        assert_eq!(frame["member"]["client"], me.as_str(), "{frame}");
    }
    ws.close().await.unwrap();
    let leave = door.next_frame().await;
    assert_eq!(leave["type"], "leave", "{leave}");
    assert_eq!(leave["channel"], "room:1", "{leave}");
    assert_eq!(leave["member"]["client"], bob.as_str(), "{leave}");
    door.assert_quiet(QUIET, "no presence push for quiet:1")
        .await;
    drop(door);
    // Gone from presence once the stream is dropped.
    let deadline = Instant::now() + WAIT;
    while presence_clients(&server, "room:1").await.contains(&me) {
        assert!(Instant::now() < deadline, "closed stream still in presence");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// resume

#[derive(Clone, Copy)]
enum ResumeBy {
    /// `Last-Event-ID` with the id of the last event received (what a browser does).
    LastEventId,
    /// `?cursor=` with the cursor of the last message received.
    QueryLast,
    /// `?cursor=` with the cursor of a message received before the last one.
    QueryMid,
}

async fn resume_after_a_gap(kind: Kind, by: ResumeBy) {
    let server = TestServer::start().await;
    let (a, b) = ("res:a", "res:b");
    let mut sent = Vec::new();
    send(&server, &mut sent, a, json!("a-before-1")).await;
    send(&server, &mut sent, a, json!("a-before-2")).await;
    let (mut door, subscribed) = open_fresh(&server, kind, "alice", &[a, b]).await;
    assert_eq!(subscribed[0]["offset"], 2);
    let epoch_a = str_of(&subscribed[0], "epoch").to_owned();
    let epoch_b = str_of(&subscribed[1], "epoch").to_owned();

    for (channel, data) in [(a, "a3"), (b, "b1"), (a, "a4"), (b, "b2"), (a, "a5")] {
        send(&server, &mut sent, channel, json!(data)).await;
    }
    let got = door.messages(5).await;
    assert_eq!(
        by_channel(&got),
        expected_after(&sent, &BTreeMap::from([(a.into(), 2)]))
    );
    // The position the client resumes from, per channel.
    let upto = match by {
        ResumeBy::LastEventId | ResumeBy::QueryLast => 4,
        ResumeBy::QueryMid => 2,
    };
    let cursor = match by {
        ResumeBy::LastEventId => door.last_event_id.clone().expect("SSE events carry ids"),
        _ => str_of(&got[upto], "cursor").to_owned(),
    };
    assert_eq!(cursor, str_of(&got[upto], "cursor"));
    let mut positions = BTreeMap::from([(a.to_owned(), 2u64), (b.to_owned(), 0u64)]);
    for m in &got[..=upto] {
        positions.insert(str_of(m, "channel").to_owned(), offset_of(m));
    }
    drop(door);

    // Published while the client is away.
    for (channel, data) in [(b, "b3"), (a, "a6"), (a, "a7"), (b, "b4")] {
        send(&server, &mut sent, channel, json!(data)).await;
    }

    let token = all("alice");
    let mut door = match by {
        ResumeBy::LastEventId => {
            open_with(
                &server,
                kind,
                &query(&token, &[a, b], ""),
                &[("Last-Event-ID", &cursor)],
            )
            .await
        }
        ResumeBy::QueryLast | ResumeBy::QueryMid => {
            let extra = format!("&cursor={}", percent_encode(&cursor));
            open(&server, kind, &query(&token, &[a, b], &extra)).await
        }
    };
    let expected = expected_after(&sent, &positions);
    let missed: usize = expected.values().map(Vec::len).sum();
    let frames = door.resumed_frames(&[a, b], missed).await;
    // Each channel announces itself with `recovered: true` before any of its messages.
    for (channel, epoch) in [(a, &epoch_a), (b, &epoch_b)] {
        let at = frames
            .iter()
            .position(|f| f["type"] == "subscribed" && f["channel"] == channel)
            .unwrap_or_else(|| panic!("no subscribed frame for {channel} in {frames:?}"));
        assert_eq!(frames[at]["recovered"], true, "{}", frames[at]);
        assert_eq!(frames[at]["epoch"], epoch.as_str(), "{}", frames[at]);
        let first_message = frames
            .iter()
            .position(|f| f["type"] == "message" && f["channel"] == channel);
        if let Some(first) = first_message {
            assert!(
                at < first,
                "{channel}: subscribed after its messages: {frames:?}"
            );
        }
    }
    for f in &frames {
        assert!(
            f["type"] == "subscribed" || f["type"] == "message",
            "unexpected frame {f}"
        );
    }
    let missed_messages: Vec<Value> = frames
        .iter()
        .filter(|f| f["type"] == "message")
        .cloned()
        .collect();
    assert_eq!(
        by_channel(&missed_messages),
        expected,
        "exactly the missed messages"
    );
    door.assert_quiet(QUIET, "after the missed messages").await;

    // Then the live ones, continuing the same cursor.
    let before = sent.len();
    send(&server, &mut sent, b, json!("b5")).await;
    send(&server, &mut sent, a, json!("a8")).await;
    let live = door.messages(2).await;
    let live_sent: Vec<(String, u64, Value)> = sent[before..]
        .iter()
        .map(|s| (s.channel.clone(), s.offset, s.data.clone()))
        .collect();
    let live_got: Vec<(String, u64, Value)> = live
        .iter()
        .map(|m| {
            (
                str_of(m, "channel").to_owned(),
                offset_of(m),
                m["data"].clone(),
            )
        })
        .collect();
    assert_eq!(live_got, live_sent);
    door.assert_quiet(QUIET, "after the live messages").await;

    // Resuming again from the newest cursor: nothing missed, nothing repeated.
    let last = str_of(&live[1], "cursor").to_owned();
    drop(door);
    let extra = format!("&cursor={}", percent_encode(&last));
    let mut door = open(&server, kind, &query(&token, &[a, b], &extra)).await;
    let again = door.subscribed(&[a, b]).await;
    assert!(again.iter().all(|f| f["recovered"] == true), "{again:?}");
    door.assert_quiet(QUIET, "resumed at the newest position")
        .await;
}

#[tokio::test]
async fn sse_resumes_with_last_event_id_exactly_after_the_last_event() {
    resume_after_a_gap(Kind::Sse, ResumeBy::LastEventId).await;
}

#[tokio::test]
async fn sse_resumes_with_cursor_query_from_a_mid_stream_cursor() {
    resume_after_a_gap(Kind::Sse, ResumeBy::QueryMid).await;
}

#[tokio::test]
async fn stream_resumes_with_cursor_query_from_the_last_cursor() {
    resume_after_a_gap(Kind::Ndjson, ResumeBy::QueryLast).await;
}

#[tokio::test]
async fn stream_resumes_with_cursor_query_from_a_mid_stream_cursor() {
    resume_after_a_gap(Kind::Ndjson, ResumeBy::QueryMid).await;
}

#[tokio::test]
async fn resume_reports_recovered_false_when_history_lost_missed_messages() {
    let server = server_with("[[namespace]]\nname = \"short\"\nhistory_size = 2\n").await;
    let (x, y) = ("short:x", "plain:y");
    let mut sent = Vec::new();
    let (mut door, _) = open_fresh(&server, Kind::Sse, "alice", &[x, y]).await;
    send(&server, &mut sent, x, json!("x1")).await;
    send(&server, &mut sent, y, json!("y1")).await;
    let got = door.messages(2).await;
    let cursor = str_of(&got[1], "cursor").to_owned();
    drop(door);

    // Five missed on x (history keeps two), one on y.
    for i in 2..=6 {
        send(&server, &mut sent, x, json!(format!("x{i}"))).await;
    }
    send(&server, &mut sent, y, json!("y2")).await;

    let token = all("alice");
    let extra = format!("&cursor={}", percent_encode(&cursor));
    let mut door = open(&server, Kind::Sse, &query(&token, &[x, y], &extra)).await;
    let frames = door.resumed_frames(&[x, y], 3).await;
    let announced = |channel: &str| {
        frames
            .iter()
            .find(|f| f["type"] == "subscribed" && f["channel"] == channel)
            .unwrap_or_else(|| panic!("no subscribed frame for {channel}: {frames:?}"))
            .clone()
    };
    assert_eq!(announced(x)["recovered"], false, "{frames:?}");
    assert_eq!(announced(y)["recovered"], true, "{frames:?}");
    let messages: Vec<Value> = frames
        .iter()
        .filter(|f| f["type"] == "message")
        .cloned()
        .collect();
    // What history still held of x (5, 6), and y's one missed message.
    assert_eq!(
        by_channel(&messages),
        BTreeMap::from([
            (x.to_owned(), vec![(5, json!("x5")), (6, json!("x6"))]),
            (y.to_owned(), vec![(2, json!("y2"))]),
        ])
    );
    door.assert_quiet(QUIET, "after what history held").await;

    // A poll from the same cursor tells the same.
    let answer = poll_ok(&server, &query(&token, &[x, y], &extra)).await;
    let frames = answer["messages"].as_array().unwrap();
    assert!(
        frames
            .iter()
            .any(|f| f["channel"] == x && f["recovered"] == false),
        "poll does not report recovered:false for {x}: {answer}"
    );
    assert!(
        !frames
            .iter()
            .any(|f| f["recovered"] == true && f["channel"] == x),
        "{answer}"
    );
    assert_eq!(
        by_channel(&poll_messages(&answer)),
        BTreeMap::from([
            (x.to_owned(), vec![(5, json!("x5")), (6, json!("x6"))]),
            (y.to_owned(), vec![(2, json!("y2"))]),
        ])
    );

    // The resumed stream goes on live.
    send(&server, &mut sent, x, json!("x7")).await;
    let live = door.next_message().await;
    assert_eq!((offset_of(&live), live["data"].clone()), (7, json!("x7")));
}

// ---------------------------------------------------------------------------------------------
// refusals

/// `(status, code)` of a GET on `path` (`/sse`, `/stream`, `/poll`) with `q` and `headers`.
async fn refused(
    server: &TestServer,
    path: &str,
    q: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let response = get(server, &format!("{path}?{q}"), headers).await;
    refusal(response).await
}

const DOORS: [&str; 3] = ["/sse", "/stream", "/poll"];

#[tokio::test]
async fn bad_missing_forged_or_expired_tokens_are_refused_with_401() {
    let server = TestServer::start().await;
    let channels = "channel=tok:a";
    let expired = token_exp("alice", unix_now() - 60);
    let forged = forged_token("alice");
    for door in DOORS {
        // (query, Authorization header, expected code)
        let cases = [
            (channels.to_owned(), None, "unauthorized"),
            (format!("token=garbage&{channels}"), None, "unauthorized"),
            (format!("token={forged}&{channels}"), None, "unauthorized"),
            (format!("token={expired}&{channels}"), None, "token_expired"),
            (channels.to_owned(), Some("garbage"), "unauthorized"),
            (channels.to_owned(), Some(forged.as_str()), "unauthorized"),
            (channels.to_owned(), Some(expired.as_str()), "token_expired"),
        ];
        for (q, bearer, code) in cases {
            let bearer = bearer.map(|t| format!("Bearer {t}"));
            let headers: Vec<(&str, &str)> = bearer
                .iter()
                .map(|b| ("Authorization", b.as_str()))
                .collect();
            assert_eq!(
                refused(&server, door, &q, &headers).await,
                (401, code.to_owned()),
                "{door}?{q} {headers:?}"
            );
        }
        // The same request with a good token (URL or header) is served.
        let good = all("alice");
        let response = get(&server, &format!("{door}?token={good}&{channels}"), &[]).await;
        assert_eq!(response.status(), 200, "{door}");
        drop(response);
        let bearer = format!("Bearer {good}");
        let response = get(
            &server,
            &format!("{door}?{channels}"),
            &[("Authorization", &bearer)],
        )
        .await;
        assert_eq!(response.status(), 200, "{door} with Authorization");
    }
    // Refused requests left nothing behind.
    assert!(presence_clients(&server, "tok:a").await.is_empty());
}

#[tokio::test]
async fn anonymous_clients_are_admitted_only_when_allowed() {
    let server = TestServer::with_config(&format!("{}allow_anonymous = true\n", auth_toml())).await;
    let mut door = open(&server, Kind::Sse, "channel=anon:a").await;
    assert_eq!(door.connected["user"], "");
    door.subscribed(&["anon:a"]).await;
    publish(&server, "anon:a", json!("hi")).await;
    assert_eq!(door.next_message().await["data"], "hi");
    let answer = poll_ok(&server, "channel=anon:a").await;
    assert_eq!(answer["messages"][0]["type"], "connected", "{answer}");
}

#[tokio::test]
async fn a_channel_the_token_may_not_subscribe_refuses_the_whole_request() {
    let server = TestServer::start().await;
    let news_only = token("alice", &["news:*"], &[]);
    for door in DOORS {
        for channels in [
            vec!["news:a", "secret:b"],
            vec!["secret:b", "news:a"],
            vec!["news:a", "inbox#bob"],
        ] {
            let q = query(&news_only, &channels, "");
            assert_eq!(
                refused(&server, door, &q, &[]).await,
                (403, "forbidden".to_owned()),
                "{door} {channels:?}"
            );
        }
        // Personal channels are another user's even with `*`.
        let q = query(&all("alice"), &["inbox#bob"], "");
        assert_eq!(
            refused(&server, door, &q, &[]).await,
            (403, "forbidden".to_owned()),
            "{door} inbox#bob"
        );
    }
    // Nothing was subscribed by the refused requests.
    assert!(presence_clients(&server, "news:a").await.is_empty());
    // Allowed channels (and one's own personal channel) are served.
    let mut door = open(
        &server,
        Kind::Sse,
        &query(&news_only, &["news:a", "inbox#alice"], ""),
    )
    .await;
    door.subscribed(&["news:a", "inbox#alice"]).await;
}

#[tokio::test]
async fn a_channel_named_twice_is_a_bad_request() {
    let server = TestServer::start().await;
    let q = query(&all("alice"), &["dup:a", "dup:b", "dup:a"], "");
    for door in DOORS {
        assert_eq!(
            refused(&server, door, &q, &[]).await,
            (400, "bad_request".to_owned()),
            "{door}"
        );
    }
}

#[tokio::test]
async fn bad_forged_or_foreign_cursors_are_refused_with_400() {
    let server = TestServer::start().await;
    let token = all("alice");
    let (a, b) = ("cur:a", "cur:b");
    // Real cursors: one for [a, b], one for [a].
    let (mut ab, _) = open_fresh(&server, Kind::Sse, "alice", &[a, b]).await;
    let (mut only_a, _) = open_fresh(&server, Kind::Ndjson, "alice", &[a]).await;
    publish(&server, a, json!(1)).await;
    let cursor_ab = str_of(&ab.next_message().await, "cursor").to_owned();
    let cursor_a = str_of(&only_a.next_message().await, "cursor").to_owned();
    drop((ab, only_a));

    // A cursor of another deployment (another secret), for the same channel list.
    let other = TestServer::with_config(
        "[auth]\ntoken_secret = \"other-secret-0123456789abcdef-0123456789\"\napi_key = \"other-key\"\n",
    )
    .await;
    let other_token = mint_hs256(
        "other-secret-0123456789abcdef-0123456789",
        &TokenClaims {
            sub: Some("alice".into()),
            exp: Some(unix_now() + 3600),
            subscribe: Some(vec!["*".into()]),
            ..TokenClaims::default()
        },
    );
    let answer = poll_ok(&other, &query(&other_token, &[a, b], "")).await;
    let foreign = str_of(&answer, "cursor").to_owned();
    // Hand-made: version 1, offset 1, epoch "e", a made-up tag.
    let mut forged_bytes = vec![1u8, 1, 1, b'e', 1, 1, b'e'];
    forged_bytes.extend_from_slice(&[0u8; 10]);
    let forged = base64url(&forged_bytes);

    let cases: Vec<(&str, Vec<&str>, String)> = vec![
        ("garbage", vec![a, b], "not-a-cursor".into()),
        ("not base64", vec![a, b], "!!!***".into()),
        ("empty-ish", vec![a, b], "AAAA".into()),
        ("altered", vec![a, b], altered(&cursor_ab)),
        (
            "truncated",
            vec![a, b],
            cursor_ab[..cursor_ab.len() - 2].to_owned(),
        ),
        ("forged", vec![a, b], forged),
        ("other deployment", vec![a, b], foreign),
        ("made for [a] used on [a, b]", vec![a, b], cursor_a.clone()),
        ("made for [a, b] used on [a]", vec![a], cursor_ab.clone()),
        (
            "made for [a, b] used on [b, a]",
            vec![b, a],
            cursor_ab.clone(),
        ),
        ("made for [a] used on [b]", vec![b], cursor_a.clone()),
    ];
    for door in DOORS {
        for (what, channels, cursor) in &cases {
            let q = query(
                &token,
                channels,
                &format!("&cursor={}", percent_encode(cursor)),
            );
            assert_eq!(
                refused(&server, door, &q, &[]).await,
                (400, "bad_request".to_owned()),
                "{door}: {what}"
            );
        }
    }
    // The same through Last-Event-ID on SSE.
    for (what, channels, cursor) in &cases {
        let q = query(&token, channels, "");
        assert_eq!(
            refused(&server, "/sse", &q, &[("Last-Event-ID", cursor)]).await,
            (400, "bad_request".to_owned()),
            "Last-Event-ID: {what}"
        );
    }
    // While the genuine cursors are accepted everywhere.
    for door in DOORS {
        for (channels, cursor) in [(vec![a, b], &cursor_ab), (vec![a], &cursor_a)] {
            let q = query(&token, &channels, &format!("&cursor={cursor}&timeout=0"));
            let response = get(&server, &format!("{door}?{q}"), &[]).await;
            assert_eq!(response.status(), 200, "{door} {channels:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// heartbeats and live token expiry

#[tokio::test]
async fn idle_streams_get_heartbeats_every_ping_interval() {
    let server = server_with("[limits]\nping_interval = 1\n").await;
    let (mut sse, _) = open_fresh(&server, Kind::Sse, "alice", &["hb:a"]).await;
    let (mut ndjson, _) = open_fresh(&server, Kind::Ndjson, "alice", &["hb:a"]).await;
    let started = Instant::now();
    let mut beats = (0, 0);
    while beats.0 < 2 || beats.1 < 2 {
        assert!(
            started.elapsed() < Duration::from_millis(3500),
            "two heartbeats each within 3.5 s at a 1 s interval; got {beats:?}"
        );
        let (s, n) = tokio::join!(
            sse.next_item(Duration::from_millis(200)),
            ndjson.next_item(Duration::from_millis(200))
        );
        match s {
            None => {}
            Some(Item::Heartbeat(comment)) => {
                assert_eq!(comment, "heartbeat");
                beats.0 += 1;
            }
            Some(Item::Frame { frame }) if frame["type"] == "join" => {}
            Some(other) => panic!("SSE: expected a heartbeat, got {other:?}"),
        }
        match n {
            None => {}
            Some(Item::Heartbeat(line)) => {
                assert_eq!(line, "");
                beats.1 += 1;
            }
            Some(Item::Frame { frame }) if frame["type"] == "join" => {}
            Some(other) => panic!("stream: expected a heartbeat, got {other:?}"),
        }
    }
    // Heartbeats do not disturb the frames.
    publish(&server, "hb:a", json!("after")).await;
    assert_eq!(sse.next_message().await["data"], "after");
    assert_eq!(ndjson.next_message().await["data"], "after");
}

#[tokio::test]
async fn a_stream_whose_token_expires_ends_with_token_expired() {
    let server = TestServer::start().await;
    let exp = unix_now() + 2;
    let short = token_exp("alice", exp);
    let mut door = open(&server, Kind::Sse, &query(&short, &["exp:a"], "")).await;
    door.subscribed(&["exp:a"]).await;
    let (frames, clean) = door.until_end(Duration::from_secs(5)).await;
    assert!(clean);
    let last = frames.last().expect("a disconnect frame");
    assert_eq!(last["type"], "disconnect", "{frames:?}");
    assert_eq!(last["code"], "token_expired", "{last}");
    assert!(unix_now() >= exp, "closed before the token expired");
}

// ---------------------------------------------------------------------------------------------
// slow consumers

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_does_not_read_is_dropped_while_a_reader_gets_everything() {
    let server =
        server_with("[limits]\nclient_queue_bytes = 65536\nmax_frame_size = 16384\n").await;
    let channel = "slow:a";
    let (stuck, _) = open_fresh(&server, Kind::Sse, "stuck", &[channel]).await;
    let stuck_id = str_of(&stuck.connected, "client").to_owned();
    let (mut reader, _) = open_fresh(&server, Kind::Ndjson, "reader", &[channel]).await;
    let reader_id = str_of(&reader.connected, "client").to_owned();
    assert!(presence_clients(&server, channel).await.contains(&stuck_id));

    // The reader reports the offset of every message it reads.
    let (progress_tx, mut progress) = tokio::sync::watch::channel(0u64);
    let reading = tokio::spawn(async move {
        let mut offsets = Vec::new();
        loop {
            let frame = reader.next_frame_within(Duration::from_secs(10)).await;
            if frame["type"] != "message" {
                assert!(
                    frame["type"] == "join" || frame["type"] == "leave",
                    "reader got {frame}"
                );
                continue;
            }
            let offset = offset_of(&frame);
            let done = frame["data"]["last"] == true;
            offsets.push(offset);
            let _ = progress_tx.send(offset);
            if done {
                return (offsets, reader);
            }
        }
    });

    // ~12 KB messages until the stuck client overflows; the publisher never runs more than a
    // few messages ahead of the reader, so only the stuck one can overflow.
    let blob = "x".repeat(12 * 1024);
    let mut published = 0u64;
    let max = 2000u64; // 24 MB at most
    loop {
        published += 1;
        let answer = publish(&server, channel, json!({"n": published, "blob": blob})).await;
        assert_eq!(offset_of(&answer), published);
        let behind = published.saturating_sub(3);
        tokio::time::timeout(WAIT, progress.wait_for(|read| *read >= behind))
            .await
            .expect("the reading client keeps up")
            .expect("reader alive");
        if published.is_multiple_of(25)
            && server.metric("switchboard_queue_drops_total").await >= 1.0
        {
            break;
        }
        assert!(published < max, "the stuck client never overflowed");
    }
    // A few more, then the last.
    for _ in 0..5 {
        published += 1;
        publish(&server, channel, json!({"n": published})).await;
    }
    published += 1;
    publish(&server, channel, json!({"n": published, "last": true})).await;
    let (offsets, _reader) = tokio::time::timeout(Duration::from_secs(15), reading)
        .await
        .expect("reader finishes")
        .expect("reader task");
    assert_eq!(
        offsets,
        (1..=published).collect::<Vec<_>>(),
        "the reader lost or repeated nothing"
    );
    assert_eq!(server.metric("switchboard_queue_drops_total").await, 1.0);

    // The stuck client leaves the channel (its connection is dropped after the close grace).
    let deadline = Instant::now() + Duration::from_secs(8);

    loop {
        let members = presence_clients(&server, channel).await;
        assert!(
            members.contains(&reader_id),
            "the reader stays: {members:?}"
        );
        if !members.contains(&stuck_id) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the stuck client is still subscribed 8 s after its queue overflowed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // What the stuck client can still read is in order, then its stream ends.
    let mut stuck = stuck;
    let (frames, _clean) = stuck.until_end(WAIT).await;
    let got: Vec<u64> = frames
        .iter()
        .filter(|f| f["type"] == "message")
        .map(offset_of)
        .collect();
    assert!(got.windows(2).all(|w| w[0] < w[1]), "stuck client: {got:?}");
    assert!(
        (got.len() as u64) < published,
        "the stuck client got everything?"
    );
}

// ---------------------------------------------------------------------------------------------
// long polling

#[tokio::test]
async fn first_poll_answers_at_once_with_connected_subscribed_and_a_cursor() {
    let server = TestServer::start().await;
    publish(&server, "p:a", json!("old")).await;
    let started = Instant::now();
    let answer = poll_ok(
        &server,
        &query(&all("alice"), &["p:a", "p:b"], "&timeout=20"),
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "first poll waited"
    );
    let frames = answer["messages"].as_array().unwrap();
    assert_eq!(frames.len(), 3, "{answer}");
    assert_eq!(frames[0]["type"], "connected", "{answer}");
    assert_eq!(frames[0]["user"], "alice", "{answer}");
    assert!(!str_of(&frames[0], "client").is_empty());
    for (frame, (channel, offset)) in frames[1..].iter().zip([("p:a", 1), ("p:b", 0)]) {
        assert_eq!(frame["type"], "subscribed", "{frame}");
        assert_eq!(frame["channel"], channel, "{frame}");
        assert_eq!(frame["offset"], offset, "{frame}");
        assert!(!str_of(frame, "epoch").is_empty());
    }
    // Long-poll requests are short-lived observers: not in presence.
    assert!(presence_clients(&server, "p:a").await.is_empty());
}

#[tokio::test]
async fn poll_connected_frame_carries_a_session_that_runs_commands() {
    // §5: "The `connected` frame on SSE, HTTP streaming and long polling carries `session`".
    let server = TestServer::start().await;
    let answer = poll_ok(&server, &query(&all("alice"), &["ps:a"], "")).await;
    let connected = &answer["messages"][0];
    assert_eq!(connected["type"], "connected", "{answer}");
    let session = connected["session"]
        .as_str()
        .unwrap_or_else(|| panic!("no `session` in the long-poll connected frame: {connected}"));
    let (status, replies) = post_session(&server, session, &json!({"type": "ping", "id": 1})).await;
    assert_eq!(status, 200, "{replies}");
    assert_eq!(replies, json!([{"type": "pong", "id": 1}]));

    // What the session subscribes arrives in the polls that name it, next to the URL's
    // channels (protocol notes: `&session=`).
    let (status, replies) = post_session(
        &server,
        session,
        &json!([{"type": "subscribe", "id": 2, "channel": "ps:extra"}]),
    )
    .await;
    assert_eq!(status, 200, "{replies}");
    assert_eq!(replies[0]["type"], "reply", "{replies}");
    assert_eq!(replies[0]["channel"], "ps:extra", "{replies}");
    publish(&server, "ps:extra", json!("x1")).await;
    publish(&server, "ps:a", json!("a1")).await;
    let cursor = str_of(&answer, "cursor").to_owned();
    let extra = format!("&cursor={cursor}&session={session}&timeout=5");
    let answer = poll_ok(&server, &query(&all("alice"), &["ps:a"], &extra)).await;
    let mut got: Vec<(Value, Value)> = poll_messages(&answer)
        .iter()
        .map(|m| (m["channel"].clone(), m["data"].clone()))
        .collect();
    got.sort_by_key(|(c, _)| c.to_string());
    assert_eq!(
        got,
        vec![
            (json!("ps:a"), json!("a1")),
            (json!("ps:extra"), json!("x1"))
        ],
        "{answer}"
    );
}

#[tokio::test]
async fn api_disconnect_ends_a_long_poll_session_too() {
    let server = TestServer::start().await;
    let answer = poll_ok(&server, &query(&all("pete"), &["pd:a"], "")).await;
    let session = str_of(&answer["messages"][0], "session").to_owned();
    let publish_frame = json!({"type": "publish", "id": 1, "channel": "pd:a", "data": "late"});
    let (status, _) = post_session(&server, &session, &json!({"type": "ping", "id": 0})).await;
    assert_eq!(status, 200);

    let result = server.api().disconnect("pete").await.unwrap();
    assert!(result["disconnected"].as_u64() >= Some(1), "{result}");
    // The disconnected user can no longer act through its session.
    let ping = json!({"type": "ping", "id": 2});
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = post_session(&server, &session, &ping).await;
        if status == 404 {
            assert_eq!(body["error"]["code"], "not_found", "{body}");
            break;
        }
        if Instant::now() >= deadline {
            let (status, body) = post_session(&server, &session, &publish_frame).await;
            panic!(
                "5 s after POST /api/disconnect the poll session still runs commands: \
                 ping answers 200, publish answers {status} {body}"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, body) = post_session(&server, &session, &publish_frame).await;
    assert_eq!(status, 404, "{body}");
    let history = server.api().history("pd:a", None, None).await.unwrap();
    assert_eq!(history["messages"], json!([]), "{history}");
}

#[tokio::test]
async fn poll_answers_at_once_when_messages_wait_after_its_cursor() {
    let server = TestServer::start().await;
    let token = all("alice");
    let first = poll_ok(&server, &query(&token, &["pw:a"], "")).await;
    let cursor = str_of(&first, "cursor").to_owned();
    let one = publish(&server, "pw:a", json!("one")).await;
    publish(&server, "pw:a", json!("two")).await;
    let started = Instant::now();
    let extra = format!("&cursor={cursor}&timeout=20");
    let answer = poll_ok(&server, &query(&token, &["pw:a"], &extra)).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "waited with messages ready"
    );
    let messages = answer["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2, "only the messages: {answer}");
    assert_eq!(messages[0]["data"], "one");
    assert_eq!(messages[0]["offset"], 1);
    assert_eq!(messages[0]["epoch"], one["epoch"]);
    assert_eq!(messages[1]["data"], "two");
    assert_eq!(messages[1]["channel"], "pw:a");
    assert_eq!(answer["cursor"], messages[1]["cursor"], "{answer}");
    assert_ne!(answer["cursor"], cursor.as_str());

    // Stateless: the same cursor again (as another user, even) answers the same; the first
    // message's cursor answers only the second.
    let again = poll_ok(&server, &query(&all("bob"), &["pw:a"], &extra)).await;
    assert_eq!(again, answer);
    let mid = str_of(&messages[0], "cursor");
    let extra = format!("&cursor={mid}&timeout=20");
    let rest = poll_ok(&server, &query(&token, &["pw:a"], &extra)).await;
    assert_eq!(rest["messages"], json!([messages[1]]), "{rest}");
}

#[tokio::test]
async fn a_waiting_poll_is_woken_by_a_publish() {
    let server = TestServer::start().await;
    let token = all("alice");
    let first = poll_ok(&server, &query(&token, &["pv:a", "pv:b"], "")).await;
    let cursor = str_of(&first, "cursor").to_owned();
    let q = query(
        &token,
        &["pv:a", "pv:b"],
        &format!("&cursor={cursor}&timeout=20"),
    );
    let started = Instant::now();
    let waiting = {
        let server_base = server.base.clone();
        tokio::spawn(async move {
            let response = http()
                .get(format!("{server_base}/poll?{q}"))
                .send()
                .await
                .unwrap();
            (
                response.status().as_u16(),
                response.json::<Value>().await.unwrap(),
                Instant::now(),
            )
        })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        !waiting.is_finished(),
        "the poll answered with nothing to say"
    );
    publish(&server, "pv:b", json!("wake")).await;
    let (status, answer, answered) = tokio::time::timeout(Duration::from_secs(3), waiting)
        .await
        .expect("the publish woke the poll well before its timeout")
        .unwrap();
    assert_eq!(status, 200);
    assert!(answered - started >= Duration::from_millis(350));
    let messages = poll_messages(&answer);
    assert_eq!(messages.len(), 1, "{answer}");
    assert_eq!(messages[0]["channel"], "pv:b");
    assert_eq!(messages[0]["data"], "wake");
    assert_eq!(answer["cursor"], messages[0]["cursor"]);
}

#[tokio::test]
async fn a_poll_outlives_its_url_token_while_the_refreshed_session_goes_on() {
    let server = TestServer::start().await;
    let short = token_exp("alice", unix_now() + 2);
    let first = poll_ok(&server, &query(&short, &["px:a"], "")).await;
    let connected = first["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["type"] == "connected")
        .cloned()
        .expect("the first poll announces its session");
    let session = str_of(&connected, "session").to_owned();
    let cursor = str_of(&first, "cursor").to_owned();
    let fresh = token_exp("alice", unix_now() + 3600);
    let refresh = json!({"type": "refresh", "id": 1, "token": fresh});
    let (status, replies) = post_session(&server, &session, &refresh).await;
    assert_eq!(
        (status, &replies[0]["type"]),
        (200, &json!("reply")),
        "{replies}"
    );
    // A poll made with the short token, still waiting when it expires: the poll is not the
    // connection (the refreshed session is), so it ends by its timeout, not token_expired.
    let q = query(
        &short,
        &["px:a"],
        &format!("&cursor={cursor}&session={session}&timeout=4"),
    );
    let answer = poll_ok(&server, &q).await;
    let frames = answer["messages"].as_array().unwrap();
    assert!(frames.iter().all(|f| f["type"] != "disconnect"), "{answer}");
    let ping = json!({"type": "ping", "id": 2});
    let (status, replies) = post_session(&server, &session, &ping).await;
    assert_eq!(
        (status, &replies[0]["type"]),
        (200, &json!("pong")),
        "{replies}"
    );
}

#[tokio::test]
async fn an_idle_poll_times_out_with_no_messages_and_the_same_cursor() {
    let server = TestServer::start().await;
    let token = all("alice");
    let first = poll_ok(&server, &query(&token, &["pt:a"], "")).await;
    let cursor = str_of(&first, "cursor").to_owned();
    let started = Instant::now();
    let answer = poll_ok(
        &server,
        &query(&token, &["pt:a"], &format!("&cursor={cursor}&timeout=1")),
    )
    .await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "answered after {took:?}"
    );
    assert!(took < Duration::from_secs(3), "answered after {took:?}");
    assert_eq!(answer, json!({"messages": [], "cursor": cursor}));
    // A bad timeout is a bad request.
    let q = query(&token, &["pt:a"], &format!("&cursor={cursor}&timeout=soon"));
    assert_eq!(
        refused(&server, "/poll", &q, &[]).await,
        (400, "bad_request".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chained_polls_get_fifty_messages_exactly_once_while_they_are_published() {
    const TOTAL: usize = 50;
    let server = TestServer::start().await;
    let token = all("alice");
    let channels = ["chain:a", "chain:b"];
    let first = poll_ok(&server, &query(&token, &channels, "")).await;
    let mut cursor = str_of(&first, "cursor").to_owned();

    let base = server.base.clone();
    let q_token = token.clone();
    let polling = tokio::spawn(async move {
        let mut got = Vec::new();
        let mut polls = 0;
        let started = Instant::now();
        while got.len() < TOTAL {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "stalled at {}",
                got.len()
            );
            let q = query(&q_token, &channels, &format!("&cursor={cursor}&timeout=5"));
            let answer: Value = http()
                .get(format!("{base}/poll?{q}"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            polls += 1;
            for frame in answer["messages"].as_array().unwrap() {
                assert_eq!(frame["type"], "message", "chained poll got {frame}");
                got.push(frame.clone());
            }
            cursor = str_of(&answer, "cursor").to_owned();
            if let Some(last) = got.last() {
                assert_eq!(last["cursor"].as_str(), Some(cursor.as_str()));
            }
        }
        (got, polls, cursor)
    });

    let mut sent = Vec::new();
    for i in 0..TOTAL {
        let channel = channels[usize::from(i % 3 == 2)];
        send(&server, &mut sent, channel, json!({"i": i})).await;
        if i % 4 == 0 {
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
    }
    let (got, polls, cursor) = tokio::time::timeout(Duration::from_secs(25), polling)
        .await
        .expect("polling finishes")
        .expect("polling task");
    assert_eq!(by_channel(&got), expected_after(&sent, &BTreeMap::new()));
    assert!(polls >= 2, "expected several polls, got {polls}");
    // Nothing more after the last cursor.
    let q = query(&token, &channels, &format!("&cursor={cursor}&timeout=0"));
    let answer = poll_ok(&server, &q).await;
    assert_eq!(answer["messages"], json!([]), "{answer}");
}

#[tokio::test]
async fn a_poll_resumes_from_a_stream_cursor_of_the_same_channels() {
    let server = TestServer::start().await;
    let token = all("alice");
    let channels = ["mixed:a", "mixed:b"];
    let (mut door, _) = open_fresh(&server, Kind::Sse, "alice", &channels).await;
    let mut sent = Vec::new();
    send(&server, &mut sent, channels[0], json!("a1")).await;
    send(&server, &mut sent, channels[1], json!("b1")).await;
    let got = door.messages(2).await;
    let cursor = str_of(&got[1], "cursor").to_owned();
    drop(door);
    send(&server, &mut sent, channels[1], json!("b2")).await;
    send(&server, &mut sent, channels[0], json!("a2")).await;
    let answer = poll_ok(
        &server,
        &query(&token, &channels, &format!("&cursor={cursor}&timeout=5")),
    )
    .await;
    let positions = BTreeMap::from([(channels[0].to_owned(), 1), (channels[1].to_owned(), 1)]);
    assert_eq!(
        answer["messages"].as_array().unwrap().len(),
        2,
        "only the missed: {answer}"
    );
    assert_eq!(
        by_channel(&poll_messages(&answer)),
        expected_after(&sent, &positions)
    );
    // And a stream resumes from the poll's cursor.
    let next = str_of(&answer, "cursor").to_owned();
    send(&server, &mut sent, channels[0], json!("a3")).await;
    let extra = format!("&cursor={next}");
    let mut door = open(&server, Kind::Ndjson, &query(&token, &channels, &extra)).await;
    let frames = door.resumed_frames(&channels, 1).await;
    let messages: Vec<Value> = frames
        .iter()
        .filter(|f| f["type"] == "message")
        .cloned()
        .collect();
    assert_eq!(
        by_channel(&messages),
        BTreeMap::from([(channels[0].to_owned(), vec![(3, json!("a3"))])])
    );
    door.assert_quiet(QUIET, "nothing repeated").await;
}

// ---------------------------------------------------------------------------------------------
// POST /session/<session>

#[tokio::test]
async fn session_commands_run_as_the_stream_client_and_answer_in_order() {
    let server = TestServer::start().await;
    let (mut door, _) = open_fresh(&server, Kind::Sse, "alice", &["sess:url"]).await;
    let session = door.session();
    let me = str_of(&door.connected, "client").to_owned();

    // One frame: an array of one reply.
    let (status, replies) = post_session(
        &server,
        &session,
        &json!({"type": "subscribe", "id": 1, "channel": "sess:extra"}),
    )
    .await;
    assert_eq!(status, 200, "{replies}");
    let replies = replies
        .as_array()
        .unwrap_or_else(|| panic!("{replies}"))
        .clone();
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0]["type"], "reply", "{}", replies[0]);
    assert_eq!(replies[0]["id"], 1);
    assert_eq!(replies[0]["channel"], "sess:extra");
    assert_eq!(replies[0]["offset"], 0);
    let epoch = str_of(&replies[0], "epoch").to_owned();

    // Its messages now arrive on the open stream.
    let answer = publish(&server, "sess:extra", json!({"via": "api"})).await;
    assert_eq!(answer["epoch"], epoch.as_str());
    let message = door.next_message().await;
    assert_eq!(message["channel"], "sess:extra");
    assert_eq!(message["offset"], 1);
    assert_eq!(message["data"], json!({"via": "api"}));

    // An array: replies in the same order, errors in place, the rest goes on.
    let batch = json!([
        {"type": "ping", "id": 2},
        {"type": "publish", "id": 3, "channel": "sess:extra", "data": {"via": "session"}},
        {"type": "presence", "id": 4, "channel": "sess:url"},
        {"type": "subscribe", "id": 5, "channel": "sess:extra"},
        {"type": "history", "id": 6, "channel": "sess:extra"},
        {"type": "nonsense", "id": 7},
        {"type": "unsubscribe", "id": 8, "channel": "sess:extra"},
    ]);
    let (status, replies) = post_session(&server, &session, &batch).await;
    assert_eq!(status, 200, "{replies}");
    let replies = replies
        .as_array()
        .unwrap_or_else(|| panic!("{replies}"))
        .clone();
    assert_eq!(replies.len(), 7, "{replies:?}");
    assert_eq!(replies[0], json!({"type": "pong", "id": 2}));
    assert_eq!(replies[1]["type"], "reply");
    assert_eq!(replies[1]["id"], 3);
    assert_eq!(replies[1]["offset"], 2);
    assert_eq!(replies[1]["epoch"], epoch.as_str());
    assert_eq!(replies[2]["id"], 4);
    let members: Vec<&str> = replies[2]["members"]
        .as_array()
        .unwrap_or_else(|| panic!("{}", replies[2]))
        .iter()
        .map(|m| str_of(m, "client"))
        .collect();
    assert_eq!(members, vec![me.as_str()], "{}", replies[2]);
    assert_eq!(
        replies[3]["type"], "error",
        "already subscribed: {}",
        replies[3]
    );
    assert_eq!(replies[3]["id"], 5);
    assert_eq!(replies[3]["code"], "bad_request");
    assert_eq!(replies[4]["id"], 6);
    let history: Vec<Value> = replies[4]["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("{}", replies[4]))
        .iter()
        .map(|m| m["data"].clone())
        .collect();
    assert_eq!(
        history,
        vec![json!({"via": "api"}), json!({"via": "session"})]
    );
    assert_eq!(replies[5]["type"], "error", "{}", replies[5]);
    assert_eq!(replies[5]["code"], "bad_request");
    assert_eq!(replies[6]["type"], "reply", "{}", replies[6]);
    assert_eq!(replies[6]["id"], 8);

    // The message published through the session reached the stream (it was still subscribed).
    let message = door.next_message().await;
    assert_eq!(message["data"], json!({"via": "session"}));
    assert_eq!(message["offset"], 2);
    // After the unsubscribe, nothing more from that channel; the URL channel goes on.
    publish(&server, "sess:extra", json!("gone")).await;
    publish(&server, "sess:url", json!("still")).await;
    let message = door.next_message().await;
    assert_eq!(message["channel"], "sess:url", "{message}");
    assert_eq!(message["data"], "still");

    // A command the token does not allow is answered with an error, the session goes on.
    let (_, replies) = post_session(
        &server,
        &session,
        &json!([{"type": "subscribe", "id": 9, "channel": "x#bob"}, {"type": "ping", "id": 10}]),
    )
    .await;
    assert_eq!(replies[0]["code"], "forbidden", "{replies}");
    assert_eq!(replies[1], json!({"type": "pong", "id": 10}));
    // Not JSON at all: a 400.
    let response = http()
        .post(format!("{}/session/{session}", server.base))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(refusal(response).await, (400, "bad_request".into()));
}

#[tokio::test]
async fn session_of_a_stream_subscribes_on_ndjson_too() {
    let server = TestServer::start().await;
    let (mut door, _) = open_fresh(&server, Kind::Ndjson, "alice", &[]).await;
    let (status, replies) = post_session(
        &server,
        &door.session(),
        &json!([{"type": "subscribe", "id": 1, "channel": "nd:x"}]),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(replies[0]["type"], "reply", "{replies}");
    publish(&server, "nd:x", json!("hello")).await;
    let message = door.next_message().await;
    assert_eq!(
        (message["channel"].clone(), message["data"].clone()),
        (json!("nd:x"), json!("hello"))
    );
}

#[tokio::test]
async fn unknown_or_closed_sessions_are_not_found() {
    let server = TestServer::start().await;
    let ping = json!({"type": "ping", "id": 1});
    let (status, body) = post_session(&server, "0123456789abcdef0123456789abcdef", &ping).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (404, json!("not_found")),
        "{body}"
    );

    let (door, _) = open_fresh(&server, Kind::Sse, "alice", &["closed:a"]).await;
    let session = door.session();
    let (status, _) = post_session(&server, &session, &ping).await;
    assert_eq!(status, 200, "the live session works");
    drop(door);
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = post_session(&server, &session, &ping).await;
        if status == 404 {
            assert_eq!(body["error"]["code"], "not_found", "{body}");
            break;
        }
        assert_eq!(status, 200, "{body}");
        assert!(
            Instant::now() < deadline,
            "session still answers after its stream closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// CORS

#[tokio::test]
async fn cross_origin_requests_need_an_allowed_origin() {
    let server = TestServer::with_config(&format!(
        "{}allowed_origins = [\"http://app.example\"]\n",
        auth_toml()
    ))
    .await;
    let token = all("alice");
    let q = query(&token, &["cors:a"], "");
    let sse = format!("/sse?{q}");
    let stream = format!("/stream?{q}");
    let poll = format!("/poll?{q}");

    // Other sites are refused on every browser door, preflights included.
    for origin in [
        "http://evil.example",
        "http://app.example.evil",
        "http://app.example:8080",
        "https://app.example",
    ] {
        for path in [&sse, &stream, &poll] {
            let response = get(&server, path, &[("Origin", origin)]).await;
            assert_eq!(
                refusal(response).await,
                (403, "forbidden".into()),
                "{origin} {path}"
            );
        }
        let (status, body) = post_session_with(
            &server,
            "whatever",
            &json!({"type": "ping"}),
            &[("Origin", origin)],
        )
        .await;
        assert_eq!(
            (status, body["error"]["code"].clone()),
            (403, json!("forbidden")),
            "{origin}"
        );
        let preflight = request(
            &server,
            reqwest::Method::OPTIONS,
            "/sse",
            &[("Origin", origin), ("Access-Control-Request-Method", "GET")],
        )
        .await;
        assert_eq!(preflight.status(), 403, "preflight from {origin}");
    }

    // The listed origin: served, with Access-Control-Allow-Origin.
    let app = "http://app.example";
    let allow = |r: &reqwest::Response| {
        r.headers()
            .get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let mut door = open_with(&server, Kind::Sse, &q, &[("Origin", app)]).await;
    assert_eq!(allow(&door.response).as_deref(), Some(app));
    door.subscribed(&["cors:a"]).await;
    let response = get(&server, &format!("{poll}&timeout=0"), &[("Origin", app)]).await;
    assert_eq!(response.status(), 200);
    assert_eq!(allow(&response).as_deref(), Some(app));
    let response = http()
        .post(format!("{}/session/{}", server.base, door.session()))
        .header("Origin", app)
        .json(&json!({"type": "ping", "id": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(allow(&response).as_deref(), Some(app));
    // A refusal to an allowed origin is readable by the page.
    let response = get(&server, "/sse?channel=cors:a", &[("Origin", app)]).await;
    assert_eq!(allow(&response).as_deref(), Some(app));
    assert_eq!(refusal(response).await, (401, "unauthorized".into()));

    // Preflight.
    for path in ["/sse", "/stream", "/poll", "/session/abc"] {
        let preflight = request(
            &server,
            reqwest::Method::OPTIONS,
            path,
            &[
                ("Origin", app),
                ("Access-Control-Request-Method", "GET"),
                (
                    "Access-Control-Request-Headers",
                    "last-event-id, authorization, content-type",
                ),
            ],
        )
        .await;
        assert_eq!(preflight.status(), 204, "preflight {path}");
        let header = |name: &str| {
            preflight
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_else(|| panic!("preflight {path}: no {name}"))
                .to_ascii_lowercase()
        };
        assert_eq!(header("access-control-allow-origin"), app);
        let methods = header("access-control-allow-methods");
        assert!(
            methods.contains("get") && methods.contains("post"),
            "{methods}"
        );
        let headers = header("access-control-allow-headers");
        for needed in ["last-event-id", "authorization", "content-type"] {
            assert!(
                headers.contains(needed),
                "{path}: {needed} not in {headers}"
            );
        }
    }

    // Same origin passes without being listed; no Origin at all passes.
    let own = format!("http://{}", server.addr);
    let mut door = open_with(&server, Kind::Ndjson, &q, &[("Origin", &own)]).await;
    door.subscribed(&["cors:a"]).await;
    let mut door = open(&server, Kind::Ndjson, &q).await;
    door.subscribed(&["cors:a"]).await;
}

#[tokio::test]
async fn websocket_upgrades_from_other_origins_are_refused_when_origins_are_listed() {
    let server = TestServer::with_config(&format!(
        "{}allowed_origins = [\"http://app.example\"]\n",
        auth_toml()
    ))
    .await;
    let token = all("alice");
    for path in [
        format!("/ws?token={token}"),
        "/app/any-key?protocol=7".to_owned(),
    ] {
        let url = server.ws_url(&path);
        let refused = WsClient::open(&url, &[("Origin", "http://evil.example")]).await;
        let Err(error) = refused else {
            panic!("{path}: upgraded from another origin");
        };
        let error = error.to_string();
        assert!(error.contains("403"), "{path}: {error}");
        for origin in [&[("Origin", "http://app.example")][..], &[]] {
            assert!(
                WsClient::open(&url, origin).await.is_ok(),
                "{path} {origin:?}"
            );
        }
    }
}

#[tokio::test]
async fn without_allowed_origins_only_same_origin_browsers_are_served() {
    let server = TestServer::start().await;
    let q = query(&all("alice"), &["so:a"], "");
    let own = format!("http://{}", server.addr);
    let mut door = open_with(&server, Kind::Sse, &q, &[("Origin", &own)]).await;
    door.subscribed(&["so:a"]).await;
    let response = get(
        &server,
        &format!("/sse?{q}"),
        &[("Origin", "http://localhost:1")],
    )
    .await;
    assert_eq!(refusal(response).await, (403, "forbidden".into()));
}

// ---------------------------------------------------------------------------------------------
// disconnects and shutdown

#[tokio::test]
async fn api_disconnect_ends_the_users_streams_with_a_disconnect_frame() {
    let server = TestServer::start().await;
    let (mut sse, _) = open_fresh(&server, Kind::Sse, "bob", &["dc:a"]).await;
    let (mut ndjson, _) = open_fresh(&server, Kind::Ndjson, "bob", &["dc:a"]).await;
    let (mut carol, _) = open_fresh(&server, Kind::Sse, "carol", &["dc:a"]).await;
    let session = sse.session();

    let answer = server.api().disconnect("bob").await.unwrap();
    assert_eq!(answer["disconnected"], 2, "{answer}");
    sse.expect_disconnect("forbidden").await;
    ndjson.expect_disconnect("forbidden").await;
    let (status, _) = post_session(&server, &session, &json!({"type": "ping"})).await;
    assert_eq!(status, 404, "a disconnected stream's session is gone");

    // Others go on.
    publish(&server, "dc:a", json!("still here")).await;
    assert_eq!(carol.next_message().await["data"], "still here");
}

#[tokio::test]
async fn shutdown_ends_streams_and_polls_with_unavailable() {
    let server = TestServer::start().await;
    let token = all("alice");
    let (mut sse, _) = open_fresh(&server, Kind::Sse, "alice", &["sd:a"]).await;
    let (mut ndjson, _) = open_fresh(&server, Kind::Ndjson, "alice", &["sd:a"]).await;
    // The waiting poll resumes from the SSE cursor (a first poll would leave a long-poll
    // session, which `shutdown_does_not_wait_for_idle_long_poll_sessions` covers).
    publish(&server, "sd:a", json!("before")).await;
    let cursor = str_of(&sse.next_message().await, "cursor").to_owned();
    assert_eq!(ndjson.next_message().await["data"], "before");
    let q = query(&token, &["sd:a"], &format!("&cursor={cursor}&timeout=20"));
    let base = server.base.clone();
    let waiting = tokio::spawn(async move {
        let response = http().get(format!("{base}/poll?{q}")).send().await.unwrap();
        (
            response.status().as_u16(),
            response.json::<Value>().await.unwrap(),
        )
    });
    tokio::time::sleep(Duration::from_millis(200)).await;

    let stopping = tokio::spawn(server.stop());
    sse.expect_disconnect("unavailable").await;
    ndjson.expect_disconnect("unavailable").await;
    let (status, answer) = tokio::time::timeout(WAIT, waiting)
        .await
        .expect("the waiting poll answers at shutdown")
        .unwrap();
    assert_eq!(status, 200, "{answer}");
    let frames = answer["messages"].as_array().unwrap();
    assert!(
        frames
            .iter()
            .any(|f| f["type"] == "disconnect" && f["code"] == "unavailable"),
        "{answer}"
    );
    tokio::time::timeout(WAIT, stopping)
        .await
        .expect("the server stops once its streams ended")
        .unwrap();
}

#[tokio::test]
async fn shutdown_does_not_wait_for_idle_long_poll_sessions() {
    // Nothing is open when the server stops; a long poller merely polled once (which leaves a
    // session for `POST /session/...`). Stopping has nothing to drain.
    let server = TestServer::start().await;
    poll_ok(&server, &query(&all("alice"), &["sdp:a"], "")).await;
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(15), server.stop())
        .await
        .expect("the server stops");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "stopping with no open connection took {took:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// one hub for every door

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_reaches_websocket_sse_stream_and_poll_alike() {
    let server = TestServer::start().await;
    let channel = "cross:a";
    let token = all("pat");
    let mut ws = server.connect_as("wendy").await;
    ws.subscribe(channel).await.unwrap();
    let (mut sse, _) = open_fresh(&server, Kind::Sse, "sam", &[channel]).await;
    let (mut ndjson, _) = open_fresh(&server, Kind::Ndjson, "nick", &[channel]).await;
    let first = poll_ok(&server, &query(&token, &[channel], "")).await;
    let mut cursor = str_of(&first, "cursor").to_owned();

    // Published through the API, a WebSocket client, and the SSE client's session.
    publish(&server, channel, json!({"from": "api"})).await;
    let mut publisher = server.connect_as("walt").await;
    let reply = publisher
        .publish(channel, json!({"from": "ws"}))
        .await
        .unwrap();
    assert_eq!(reply["offset"], 2);
    let (status, replies) = post_session(
        &server,
        &sse.session(),
        &json!({"type": "publish", "id": 1, "channel": channel, "data": {"from": "sse"}}),
    )
    .await;
    assert_eq!(status, 200, "{replies}");
    assert_eq!(replies[0]["offset"], 3, "{replies}");

    let mut from_ws = Vec::new();
    for _ in 0..3 {
        from_ws.push(essence(&ws.next_message(channel, WAIT).await.unwrap()));
    }
    let from_sse: Vec<_> = sse.messages(3).await.iter().map(essence).collect();
    let from_ndjson: Vec<_> = ndjson.messages(3).await.iter().map(essence).collect();
    let mut from_poll = Vec::new();
    while from_poll.len() < 3 {
        let q = query(&token, &[channel], &format!("&cursor={cursor}&timeout=5"));
        let answer = poll_ok(&server, &q).await;
        assert!(
            !poll_messages(&answer).is_empty(),
            "poll timed out: {answer}"
        );
        from_poll.extend(poll_messages(&answer).iter().map(essence));
        cursor = str_of(&answer, "cursor").to_owned();
    }
    let datas: Vec<Value> = from_ws.iter().map(|e| e.3.clone()).collect();
    assert_eq!(
        datas,
        vec![
            json!({"from": "api"}),
            json!({"from": "ws"}),
            json!({"from": "sse"})
        ]
    );
    assert_eq!(
        from_ws.iter().map(|e| e.1).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(from_sse, from_ws, "SSE");
    assert_eq!(from_ndjson, from_ws, "HTTP streaming");
    assert_eq!(from_poll, from_ws, "long polling");
}

// ---------------------------------------------------------------------------------------------
// the stream doors on a socket the server owns (`streams/direct.rs`), and hyper's fallback

/// Reads from `tcp` until `want` appears in what was read (or the time runs out).
async fn read_until(tcp: &mut tokio::net::TcpStream, seen: &mut String, want: &str) {
    use tokio::io::AsyncReadExt;
    let deadline = Instant::now() + WAIT;
    while !seen.contains(want) {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, tcp.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no {want:?} in:\n{seen}"))
            .unwrap();
        assert!(n > 0, "connection ended before {want:?}:\n{seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

#[tokio::test]
async fn sse_head_in_pieces_streams_chunked_and_a_closed_socket_leaves_at_once() {
    use tokio::io::AsyncWriteExt;
    let server = TestServer::start().await;
    let channel = "raw:pieces";
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "GET /sse?{} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n",
        query(&all("rawuser"), &[channel], "")
    );
    let (first, rest) = head.split_at(20);
    tcp.write_all(first.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    tcp.write_all(rest.as_bytes()).await.unwrap();

    let mut seen = String::new();
    read_until(&mut tcp, &mut seen, "\"type\":\"subscribed\"").await;
    assert!(seen.starts_with("HTTP/1.1 200 OK\r\n"), "{seen}");
    assert!(seen.contains("transfer-encoding: chunked\r\n"), "{seen}");
    assert!(seen.contains("content-type: text/event-stream"), "{seen}");
    assert!(seen.contains("retry: 1000"), "{seen}");
    publish(&server, channel, json!({"hello": "raw"})).await;
    read_until(&mut tcp, &mut seen, "{\"hello\":\"raw\"}").await;

    let members = presence_clients(&server, channel).await;
    assert_eq!(members.len(), 1);
    drop(tcp);
    let deadline = Instant::now() + Duration::from_secs(2);
    while !presence_clients(&server, channel).await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "still present after its socket closed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_refused_raw_stream_request_gets_a_whole_json_answer_and_a_close() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start().await;
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"GET /stream?channel=a&token=bad HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(WAIT, tcp.read_to_string(&mut answer))
        .await
        .expect("the server closes after its answer")
        .unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 401 Unauthorized\r\n"),
        "{answer}"
    );
    assert!(answer.contains("connection: close\r\n"), "{answer}");
    let body = answer.split("\r\n\r\n").nth(1).unwrap();
    assert!(
        answer.contains(&format!("content-length: {}\r\n", body.len())),
        "{answer}"
    );
    // Clients that follow RFC 9112 (Node's fetch) reject a repeated length.
    let head = answer
        .split("\r\n\r\n")
        .next()
        .unwrap()
        .to_ascii_lowercase();
    assert_eq!(head.matches("content-length:").count(), 1, "{answer}");
    let error: Value = serde_json::from_str(body).unwrap();
    assert_eq!(error["error"]["code"], "unauthorized");
}

#[tokio::test]
async fn a_stream_opened_on_a_kept_alive_connection_still_works() {
    use tokio::io::AsyncWriteExt;
    let server = TestServer::start().await;
    let channel = "raw:keepalive";
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut seen = String::new();
    read_until(&mut tcp, &mut seen, "\"ok\"").await;
    // The same connection now asks for a stream: hyper serves it.
    let head = format!(
        "GET /stream?{} HTTP/1.1\r\nHost: x\r\n\r\n",
        query(&all("keeper"), &[channel], "")
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    read_until(&mut tcp, &mut seen, "\"type\":\"subscribed\"").await;
    publish(&server, channel, json!({"kept": true})).await;
    read_until(&mut tcp, &mut seen, "{\"kept\":true}").await;
}

/// Data published with line breaks between its JSON tokens, one part shaped like a frame of
/// its own, stays one frame on every one-way door (spec §3): no reader sees a forged line or
/// SSE event.
#[tokio::test]
async fn published_line_breaks_cannot_forge_frames_on_one_way_doors() {
    let server = TestServer::start().await;
    let (mut sse, _) = open_fresh(&server, Kind::Sse, "sse", &["pub:x"]).await;
    let (mut ndjson, _) = open_fresh(&server, Kind::Ndjson, "nd", &["pub:x"]).await;
    let body = "{\"channel\":\"pub:x\",\"data\":[1,\n\
                {\"type\":\"message\",\"channel\":\"admin\",\"data\":\"forged\"}\r\n]}";
    let answer = http()
        .post(format!("{}/api/publish", server.base))
        .bearer_auth(API_KEY)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    publish(&server, "pub:x", json!("after")).await;
    for door in [&mut sse, &mut ndjson] {
        let message = door.next_message().await;
        assert_eq!(message["channel"], "pub:x", "{message}");
        assert_eq!(
            message["data"][1]["channel"], "admin",
            "the data is unchanged"
        );
        let next = door.next_message().await;
        assert_eq!(
            next["data"], "after",
            "no forged frame came in between: {next}"
        );
    }
}
