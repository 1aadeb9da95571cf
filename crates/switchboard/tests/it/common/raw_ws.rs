//! A WebSocket client written out by hand, byte by byte, for the tests that must send what a
//! well-behaved client library never would (bad UTF-8, unmasked or reserved frames, hand-made
//! fragments) and read exactly what the server answers.

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{TestServer, WAIT};

pub(crate) const OP_CONT: u8 = 0x0;
pub(crate) const OP_TEXT: u8 = 0x1;
pub(crate) const OP_BINARY: u8 = 0x2;
pub(crate) const OP_CLOSE: u8 = 0x8;
pub(crate) const OP_PING: u8 = 0x9;
pub(crate) const OP_PONG: u8 = 0xA;

/// One frame from the server: fin bit, opcode, payload.
pub(crate) type RawFrame = (bool, u8, Vec<u8>);

pub(crate) struct RawWs {
    tcp: TcpStream,
    /// Bytes read but not yet decoded.
    buf: Vec<u8>,
}

impl RawWs {
    /// Upgrades `/ws?token=...` by hand and checks the 101 answer.
    pub(crate) async fn connect(server: &TestServer, token: &str) -> RawWs {
        let mut tcp = TcpStream::connect(server.addr).await.unwrap();
        let request = format!(
            "GET /ws?token={token} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n",
            server.addr
        );
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut raw = RawWs {
            tcp,
            buf: Vec::new(),
        };
        let head_end = loop {
            if let Some(i) = raw.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            assert!(raw.fill().await, "connection ended during the handshake");
        };
        let head = String::from_utf8_lossy(&raw.buf[..head_end]).to_lowercase();
        raw.buf.drain(..head_end + 4);
        assert!(head.starts_with("http/1.1 101"), "{head}");
        // The accept key of RFC 6455's example key.
        assert!(
            head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
            "{head}"
        );
        raw
    }

    /// Reads more bytes; false at end of stream.
    pub(crate) async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 8192];
        let n = tokio::time::timeout(WAIT, self.tcp.read(&mut chunk))
            .await
            .expect("server answered in time")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// Sends one frame; masked as a client must unless `masked` is false.
    pub(crate) async fn send_frame(&mut self, fin: bool, opcode: u8, payload: &[u8], masked: bool) {
        let mut frame = vec![if fin { 0x80 } else { 0 } | opcode];
        let mask_bit = if masked { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => frame.push(mask_bit | n as u8),
            n if n <= 0xffff => {
                frame.push(mask_bit | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(mask_bit | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if masked {
            let key = [0x37, 0xfa, 0x21, 0x3d];
            frame.extend_from_slice(&key);
            frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        } else {
            frame.extend_from_slice(payload);
        }
        self.tcp.write_all(&frame).await.unwrap();
    }

    pub(crate) async fn send_text(&mut self, payload: &[u8]) {
        self.send_frame(true, OP_TEXT, payload, true).await;
    }

    /// The next whole frame from the server: (fin, opcode, payload). None at end of stream.
    pub(crate) async fn read_frame(&mut self) -> Option<RawFrame> {
        loop {
            if let Some((frame, used)) = parse_server_frame(&self.buf) {
                self.buf.drain(..used);
                return Some(frame);
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// The next text frame, as JSON (server pings are skipped).
    pub(crate) async fn next_json(&mut self) -> Value {
        loop {
            let (fin, opcode, payload) = self.read_frame().await.expect("a frame, not the end");
            match opcode {
                OP_TEXT => {
                    assert!(fin, "server text frames are not fragmented");
                    return serde_json::from_slice(&payload).expect("server frames are JSON");
                }
                OP_PING => {}
                other => panic!("unexpected opcode {other} ({payload:?})"),
            }
        }
    }

    /// The next text frame that is an answer (reply, pong, error), skipping pushes.
    pub(crate) async fn next_answer(&mut self) -> Value {
        loop {
            let frame = self.next_json().await;
            if is_answer(&frame) {
                return frame;
            }
        }
    }

    /// The next `message` push of `channel`, skipping other frames.
    pub(crate) async fn next_message(&mut self, channel: &str) -> Value {
        loop {
            let frame = self.next_json().await;
            if frame["type"] == "message" && frame["channel"] == channel {
                return frame;
            }
        }
    }

    /// Writes bytes as they are (a frame built by hand, or several at once).
    pub(crate) async fn send_raw(&mut self, bytes: &[u8]) {
        self.tcp.write_all(bytes).await.unwrap();
    }
}

/// Decodes one unmasked server frame from the front of `buf`: ((fin, opcode, payload), bytes
/// used), or None when incomplete.
pub(crate) fn parse_server_frame(buf: &[u8]) -> Option<(RawFrame, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let fin = buf[0] & 0x80 != 0;
    let opcode = buf[0] & 0x0f;
    assert_eq!(buf[1] & 0x80, 0, "server frames must not be masked");
    let (len, mut at) = match buf[1] & 0x7f {
        126 => {
            if buf.len() < 4 {
                return None;
            }
            (usize::from(u16::from_be_bytes([buf[2], buf[3]])), 4)
        }
        127 => {
            if buf.len() < 10 {
                return None;
            }
            let mut n = [0u8; 8];
            n.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(n) as usize, 10)
        }
        n => (usize::from(n), 2),
    };
    if buf.len() < at + len {
        return None;
    }
    let payload = buf[at..at + len].to_vec();
    at += len;
    Some(((fin, opcode, payload), at))
}

/// Whether `frame` answers a command (rather than being a push such as `join`).
pub(crate) fn is_answer(frame: &Value) -> bool {
    matches!(frame["type"].as_str(), Some("reply" | "pong" | "error"))
}
