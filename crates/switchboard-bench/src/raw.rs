//! The raw limit: a minimal tokio server that speaks just enough of Switchboard's wire for the
//! bench (the upgrade, a `connected` frame, `subscribe`, `publish` over WebSocket and
//! `POST /api/publish`) and fans a publication out by encoding its frame once and writing the
//! same bytes to every subscribed socket, with no hub, no history, no auth, no JSON parsing.
//! Whatever it reaches is about what this machine allows for the same load.
//!
//! A publication is queued to each subscriber's connection; its writer task drains the queue
//! with vectored writes, so a burst costs one syscall per socket, not one per message.

use std::collections::{HashMap, VecDeque};
use std::io::IoSlice;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine as _;
use bytes::Bytes;
use parking_lot::Mutex;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Notify;

use crate::wire::find;

const SHARDS: usize = 64;

struct Conn {
    id: u64,
    stream: TcpStream,
    out: Mutex<VecDeque<Bytes>>,
    wake: Notify,
}

impl Conn {
    /// Queues `frame`; the writer runs when `wake` is called, after the whole batch.
    fn queue(&self, frame: Bytes) {
        self.out.lock().push_back(frame);
    }

    fn wake(&self) {
        self.wake.notify_one();
    }

    fn send(&self, frame: Bytes) {
        self.queue(frame);
        self.wake();
    }

    async fn writer(self: Arc<Self>) {
        loop {
            self.wake.notified().await;
            loop {
                if self.stream.writable().await.is_err() {
                    return;
                }
                let mut out = self.out.lock();
                if out.is_empty() {
                    break;
                }
                let slices: Vec<IoSlice<'_>> =
                    out.iter().take(64).map(|b| IoSlice::new(b)).collect();
                match self.stream.try_write_vectored(&slices) {
                    Ok(mut n) => {
                        while n > 0 {
                            let front = out.front_mut().expect("written bytes were queued");
                            if n >= front.len() {
                                n -= front.len();
                                out.pop_front();
                            } else {
                                *front = front.slice(n..);
                                n = 0;
                            }
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => return,
                }
            }
        }
    }
}

#[derive(Default)]
struct Channel {
    offset: u64,
    subscribers: Vec<Arc<Conn>>,
}

struct State {
    shards: Vec<Mutex<HashMap<String, Channel>>>,
    next_id: AtomicU64,
}

impl State {
    fn shard(&self, channel: &str) -> &Mutex<HashMap<String, Channel>> {
        let hash = channel.bytes().fold(0xcbf29ce484222325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100000001b3)
        });
        &self.shards[(hash as usize) % SHARDS]
    }

    /// Publishes a batch (what one read of a publisher brought) and only then wakes the
    /// subscribers' writers, so the batch leaves each socket in one write.
    fn publish_batch<'a>(&self, batch: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Vec<u64> {
        let mut offsets = Vec::new();
        let mut touched: Vec<&'a str> = Vec::new();
        for (channel, data) in batch {
            offsets.push(self.publish(channel, data));
            if !touched.contains(&channel) {
                touched.push(channel);
            }
        }
        for channel in touched {
            if let Some(entry) = self.shard(channel).lock().get(channel) {
                entry.subscribers.iter().for_each(|s| s.wake());
            }
        }
        offsets
    }

    /// Encodes the message frame once and queues it to every subscriber; returns its offset.
    fn publish(&self, channel: &str, data: &[u8]) -> u64 {
        let mut shard = self.shard(channel).lock();
        let entry = shard.entry(channel.to_string()).or_default();
        entry.offset += 1;
        let mut json = format!(
            r#"{{"type":"message","channel":"{channel}","offset":{},"epoch":"raw","data":"#,
            entry.offset
        )
        .into_bytes();
        json.extend_from_slice(data);
        json.push(b'}');
        let frame = server_text_frame(&json);
        for subscriber in &entry.subscribers {
            subscriber.queue(frame.clone());
        }
        entry.offset
    }

    fn subscribe(&self, channel: &str, conn: &Arc<Conn>) -> u64 {
        let mut shard = self.shard(channel).lock();
        let entry = shard.entry(channel.to_string()).or_default();
        entry.subscribers.push(conn.clone());
        entry.offset
    }

    fn forget(&self, conn: &Conn, channels: &[String]) {
        for channel in channels {
            if let Some(entry) = self.shard(channel).lock().get_mut(channel) {
                entry.subscribers.retain(|c| c.id != conn.id);
            }
        }
    }
}

/// An unmasked server text frame.
fn server_text_frame(payload: &[u8]) -> Bytes {
    let mut frame = Vec::with_capacity(payload.len() + 10);
    frame.push(0x81);
    let len = payload.len();
    if len < 126 {
        frame.push(len as u8);
    } else if len <= u16::MAX as usize {
        frame.push(126);
        frame.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        frame.push(127);
        frame.extend_from_slice(&(len as u64).to_be_bytes());
    }
    frame.extend_from_slice(payload);
    Bytes::from(frame)
}

/// The string value of `"key":"..."` in a JSON text (the bench sends no escapes).
fn string_field<'a>(json: &'a [u8], key: &str) -> Option<&'a str> {
    let marker = format!("\"{key}\":\"");
    let start = find(json, marker.as_bytes())? + marker.len();
    let len = json[start..].iter().position(|&b| b == b'"')?;
    std::str::from_utf8(&json[start..start + len]).ok()
}

/// The raw JSON after `"data":` up to the object's closing brace.
fn data_field(json: &[u8]) -> Option<&[u8]> {
    let start = find(json, b"\"data\":")? + 7;
    let end = json.iter().rposition(|&b| b == b'}')?;
    (end > start).then(|| &json[start..end])
}

pub(crate) async fn serve(port: u16) {
    // A deep accept queue: with the default 128, a burst of handshakes overflows it and the
    // kernel drops SYNs that the client then retries only after a second.
    let socket = TcpSocket::new_v4().expect("raw server socket");
    socket.set_reuseaddr(true).expect("reuseaddr");
    socket
        .bind(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
        .expect("raw server bind");
    let listener = socket.listen(4096).expect("raw server listen");
    let state = Arc::new(State {
        shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        next_id: AtomicU64::new(1),
    });
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(stream, state.clone()));
    }
}

/// Reads one HTTP request head (and body) at the front of `buf`; returns its head, body and
/// total length.
fn split_request(buf: &[u8]) -> Option<(&[u8], &[u8], usize)> {
    let head_end = find(buf, b"\r\n\r\n")? + 4;
    let head = &buf[..head_end];
    let text = String::from_utf8_lossy(head).to_ascii_lowercase();
    let length = text
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    if buf.len() < head_end + length {
        return None;
    }
    Some((head, &buf[head_end..head_end + length], head_end + length))
}

async fn connection(mut stream: TcpStream, state: Arc<State>) {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    loop {
        if let Some((head, _, _)) = split_request(&buf) {
            if find(head, b"Upgrade: websocket").is_some()
                || find(head, b"upgrade: websocket").is_some()
            {
                return websocket(stream, head.to_vec(), state).await;
            }
            return api(stream, buf, state).await;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// `POST /api/publish`, keep-alive and pipelined: every complete request in what arrived is
/// answered, in order, with one write.
async fn api(mut stream: TcpStream, mut buf: Vec<u8>, state: Arc<State>) {
    let mut chunk = vec![0u8; 65536];
    loop {
        let mut bodies = Vec::new();
        let mut used = 0;
        while let Some((_, body, len)) = split_request(&buf[used..]) {
            bodies.push(body);
            used += len;
        }
        let valid: Vec<(&str, &[u8])> = bodies
            .iter()
            .filter_map(|b| Some((string_field(b, "channel")?, data_field(b)?)))
            .collect();
        let mut offsets = state.publish_batch(valid).into_iter();
        let mut answers = Vec::new();
        for body in &bodies {
            let answer = match (string_field(body, "channel"), data_field(body)) {
                (Some(_), Some(_)) => {
                    let offset = offsets.next().expect("one offset per publication");
                    format!(r#"{{"offset":{offset},"epoch":"raw"}}"#)
                }
                _ => r#"{"error":{"code":"bad_request","message":"channel and data"}}"#.into(),
            };
            answers.extend_from_slice(
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
                    answer.len()
                )
                .as_bytes(),
            );
        }
        buf.drain(..used);
        if !answers.is_empty() && stream.write_all(&answers).await.is_err() {
            return;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

async fn websocket(stream: TcpStream, head: Vec<u8>, state: Arc<State>) {
    let text = String::from_utf8_lossy(&head);
    let key = text
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("sec-websocket-key")
                .then(|| value.trim().to_string())
        })
        .unwrap_or_default();
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let accept = base64::engine::general_purpose::STANDARD.encode(sha.finalize());
    let id = state.next_id.fetch_add(1, Ordering::Relaxed);
    let conn = Arc::new(Conn {
        id,
        stream,
        out: Mutex::new(VecDeque::new()),
        wake: Notify::new(),
    });
    tokio::spawn(conn.clone().writer());
    let mut hello = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    )
    .into_bytes();
    hello.extend_from_slice(&server_text_frame(
        format!(r#"{{"type":"connected","client":"raw-{id}","user":""}}"#).as_bytes(),
    ));
    conn.send(Bytes::from(hello));

    let mut channels = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 16384];
    'read: loop {
        if conn.stream.readable().await.is_err() {
            break;
        }
        match conn.stream.try_read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => break,
        }
        let mut used = 0;
        let mut frames = Vec::new();
        while let Some((opcode, payload, len)) = client_frame(&buf[used..]) {
            used += len;
            match opcode {
                0x8 => break 'read,
                0x1 => frames.push(payload),
                _ => {}
            }
        }
        buf.drain(..used);
        for answer in commands(&state, &conn, &frames, &mut channels) {
            conn.queue(server_text_frame(answer.as_bytes()));
        }
        conn.wake();
    }
    state.forget(&conn, &channels);
}

/// Runs the command frames of one read (publications as one batch); returns the answers.
fn commands(
    state: &State,
    conn: &Arc<Conn>,
    frames: &[Vec<u8>],
    channels: &mut Vec<String>,
) -> Vec<String> {
    let mut answers = Vec::new();
    let mut publications = Vec::new();
    let mut ids = Vec::new();
    for json in frames {
        let id = crate::wire::number_after(json, b"\"id\":").unwrap_or(0);
        let (Some(kind), Some(channel)) =
            (string_field(json, "type"), string_field(json, "channel"))
        else {
            continue;
        };
        match kind {
            "subscribe" => {
                let offset = state.subscribe(channel, conn);
                channels.push(channel.to_string());
                answers.push(format!(
                    r#"{{"type":"reply","id":{id},"channel":"{channel}","offset":{offset},"epoch":"raw"}}"#
                ));
            }
            "publish" => {
                if let Some(data) = data_field(json) {
                    publications.push((channel, data));
                    ids.push(id);
                }
            }
            _ => {}
        }
    }
    let offsets = state.publish_batch(publications);
    for (id, offset) in ids.into_iter().zip(offsets) {
        answers.push(format!(
            r#"{{"type":"reply","id":{id},"offset":{offset},"epoch":"raw"}}"#
        ));
    }
    answers
}

/// One masked client frame at the front of `buf`: opcode, unmasked payload, length used.
fn client_frame(buf: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    let (frame, used) = crate::wire::next_frame_masked(buf)?;
    Some((frame.0, frame.1, used))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_found_without_a_json_parser() {
        let body = br#"{"channel":"f1","data":"|q1|t2|xx"}"#;
        assert_eq!(string_field(body, "channel"), Some("f1"));
        assert_eq!(data_field(body), Some(&br#""|q1|t2|xx""#[..]));
        let frame = server_text_frame(&[b'a'; 130]);
        assert_eq!(&frame[..4], &[0x81, 126, 0, 130]);
    }
}
