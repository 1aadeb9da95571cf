//! `/sse` and `/stream` on a socket Switchboard owns, without hyper's per-connection buffers.
//!
//! hyper keeps an 8 KiB read buffer, an 8 KiB write buffer and a large connection task for as
//! long as a streaming response lasts: about 17 KiB per idle SSE client. So on plain TCP the
//! accept loop peeks at a new connection's first request: a `GET` of `/sse` or `/stream` is
//! routed through the same router (auth, CORS, every check of the door), and its response is
//! then written here by a small task that owns the socket, like a WebSocket connection: no
//! buffers while idle, chunked encoding, frames written straight from the outbox's shared
//! bytes. Anything else (and every request over TLS) goes to hyper as before.

use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use bytes::{Buf, Bytes};
use http_body::Body as _;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::Sleep;
use tower_service::Service;

/// The most of a request head this path reads; a longer one goes to hyper.
const MAX_HEAD: usize = 4096;
const MAX_HEADERS: usize = 48;
/// How long a client may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a finished stream may take to flush its last bytes to a slow reader.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
const MAX_IOVECS: usize = 64;

/// A request head read off the socket: the request, and its length in bytes.
pub(crate) struct Head {
    request: Request<Body>,
    len: usize,
}

/// Waits for the first request head on `tcp` without consuming it. `Some` when it is a
/// `GET /sse` or `GET /stream` that fits in [`MAX_HEAD`]; `None` leaves the connection to
/// hyper untouched.
pub(crate) async fn peek_stream_request(tcp: &TcpStream) -> Option<Head> {
    let mut buf = vec![0u8; MAX_HEAD];
    let deadline = tokio::time::Instant::now() + HEAD_TIMEOUT;
    let mut seen = 0;
    loop {
        let n = tokio::time::timeout_at(deadline, tcp.peek(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 || !could_be_stream_request(&buf[..n]) {
            return None;
        }
        if let Some(head) = parse_head(&buf[..n]) {
            return head;
        }
        if n == MAX_HEAD {
            return None;
        }
        if n == seen {
            // The rest of the head has not arrived; peeking again at once would spin.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        seen = n;
    }
}

/// Whether `bytes` (the start of a request) may still turn out to be a stream request.
fn could_be_stream_request(bytes: &[u8]) -> bool {
    ["GET /sse", "GET /stream"].iter().any(|prefix| {
        let prefix = prefix.as_bytes();
        let n = bytes.len().min(prefix.len());
        bytes[..n] == prefix[..n]
    })
}

/// `None` while incomplete; `Some(None)` when complete but not for this path.
fn parse_head(bytes: &[u8]) -> Option<Option<Head>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let len = match parsed.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return None,
        Err(_) => return Some(None),
    };
    let path = parsed.path?;
    let route = path.split('?').next().unwrap_or_default();
    if parsed.method != Some("GET")
        || !matches!(route, "/sse" | "/stream")
        || parsed.version != Some(1)
    {
        return Some(None);
    }
    let mut builder = Request::builder().method("GET").uri(path);
    for header in parsed.headers.iter() {
        builder = builder.header(header.name, header.value);
    }
    Some(
        builder
            .body(Body::empty())
            .ok()
            .map(|request| Head { request, len }),
    )
}

/// Runs the stream request through `router`, writes the answer, and if it is a stream keeps
/// writing it from a task of its own until either side ends it.
pub(crate) async fn serve(
    mut tcp: TcpStream,
    head: Head,
    mut router: axum::Router,
    stopped: tokio::sync::watch::Receiver<bool>,
) {
    // The head is still in the socket (it was only peeked): consume exactly it.
    let mut consumed = vec![0u8; head.len];
    if tcp.read_exact(&mut consumed).await.is_err() {
        return;
    }
    drop(consumed);
    // The stream's codec pulls this when the client stopped reading and its queue overflowed:
    // the only way to end a stream whose socket no longer takes writes.
    let kill = crate::ConnectionKill(std::sync::Arc::new(tokio::sync::Notify::new()));
    let mut request = head.request;
    request.extensions_mut().insert(kill.clone());
    let Ok(response) = router.call(request).await;
    let (parts, body) = response.into_parts();
    let streaming = body.size_hint().exact().is_none();
    let mut wire = format!(
        "HTTP/1.1 {} {}\r\n",
        parts.status.as_u16(),
        parts.status.canonical_reason().unwrap_or("")
    )
    .into_bytes();
    for (name, value) in parts.headers.iter() {
        wire.extend_from_slice(name.as_str().as_bytes());
        wire.extend_from_slice(b": ");
        wire.extend_from_slice(value.as_bytes());
        wire.extend_from_slice(b"\r\n");
    }
    if streaming {
        wire.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
    } else {
        // A refusal: send it whole and close.
        let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
            return;
        };
        wire.extend_from_slice(
            format!(
                "content-length: {}\r\nconnection: close\r\n\r\n",
                bytes.len()
            )
            .as_bytes(),
        );
        wire.extend_from_slice(&bytes);
        let _ = tokio::io::AsyncWriteExt::write_all(&mut tcp, &wire).await;
        return;
    }
    let stream = DirectStream {
        tcp,
        body,
        pending: VecDeque::from([Bytes::from(wire)]),
        body_done: false,
        grace: None,
        killed: Box::pin(kill.0.notified_owned()),
        _stopped: stopped,
    };
    // A task of its own: this one carried the router's and the head's futures, which would
    // otherwise stay part of every idle stream's memory.
    tokio::spawn(stream.run());
}

struct DirectStream {
    tcp: TcpStream,
    body: Body,
    /// Bytes to write, in order: chunk headers, frames, chunk ends.
    pending: VecDeque<Bytes>,
    body_done: bool,
    /// Runs once the body has ended, bounding how long a slow reader can hold us.
    grace: Option<Pin<Box<Sleep>>>,
    killed: Pin<Box<tokio::sync::futures::OwnedNotified>>,
    /// Held so a graceful shutdown waits for this stream to end.
    _stopped: tokio::sync::watch::Receiver<bool>,
}

impl DirectStream {
    async fn run(mut self) {
        std::future::poll_fn(|cx| self.poll(cx)).await;
    }

    /// Ready when the stream is over, whichever way.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.killed.as_mut().poll(cx).is_ready() || self.client_left(cx) {
            return Poll::Ready(());
        }
        loop {
            match self.flush(cx) {
                Err(_) => return Poll::Ready(()),
                Ok(false) => break, // the socket is full; woken when writable
                Ok(true) => {}
            }
            if self.body_done {
                return Poll::Ready(());
            }
            match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data()
                        && !data.is_empty()
                    {
                        self.pending
                            .push_back(Bytes::from(format!("{:x}\r\n", data.len())));
                        self.pending.push_back(data);
                        self.pending.push_back(Bytes::from_static(b"\r\n"));
                    }
                }
                Poll::Ready(None) | Poll::Ready(Some(Err(_))) => {
                    self.pending.push_back(Bytes::from_static(b"0\r\n\r\n"));
                    self.body_done = true;
                    self.grace = Some(Box::pin(tokio::time::sleep(CLOSE_GRACE)));
                }
                Poll::Pending => {
                    // Idle: give the queue's memory back.
                    self.pending = VecDeque::new();
                    return Poll::Pending;
                }
            }
        }
        if let Some(grace) = self.grace.as_mut()
            && grace.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(());
        }
        Poll::Pending
    }

    /// Whether the client closed its side (or broke the connection). Bytes it sends after
    /// its request are read and ignored.
    fn client_left(&mut self, cx: &mut Context<'_>) -> bool {
        let mut scratch = [0u8; 256];
        loop {
            match self.tcp.poll_read_ready(cx) {
                Poll::Pending => return false,
                Poll::Ready(Err(_)) => return true,
                Poll::Ready(Ok(())) => {}
            }
            match self.tcp.try_read(&mut scratch) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(_) => return true,
            }
        }
    }

    /// Writes what is pending; `Ok(true)` when all of it went out.
    fn flush(&mut self, cx: &mut Context<'_>) -> io::Result<bool> {
        while !self.pending.is_empty() {
            if self.tcp.poll_write_ready(cx)?.is_pending() {
                return Ok(false);
            }
            let slices: Vec<IoSlice<'_>> = self
                .pending
                .iter()
                .take(MAX_IOVECS)
                .map(|b| IoSlice::new(b))
                .collect();
            match self.tcp.try_write_vectored(&slices) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(mut written) => {
                    while written > 0 {
                        let first = self.pending.front_mut().expect("written from pending");
                        let n = written.min(first.len());
                        first.advance(n);
                        written -= n;
                        if first.is_empty() {
                            self.pending.pop_front();
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_complete_get_heads_of_the_stream_doors_are_taken() {
        let sse = b"GET /sse?channel=a HTTP/1.1\r\nHost: x\r\nLast-Event-ID: abc\r\n\r\n";
        let head = parse_head(sse).unwrap().unwrap();
        assert_eq!(head.len, sse.len());
        assert_eq!(head.request.uri().query(), Some("channel=a"));
        assert_eq!(head.request.headers()["last-event-id"], "abc");
        assert!(
            parse_head(b"GET /stream HTTP/1.1\r\n\r\n")
                .unwrap()
                .is_some()
        );
        assert!(
            parse_head(b"GET /sse HTTP/1.1\r\nHost: x\r\n").is_none(),
            "partial"
        );
        assert!(parse_head(b"GET /ssex HTTP/1.1\r\n\r\n").unwrap().is_none());
        assert!(parse_head(b"POST /sse HTTP/1.1\r\n\r\n").unwrap().is_none());
        assert!(parse_head(b"GET /sse HTTP/1.0\r\n\r\n").unwrap().is_none());
        assert!(could_be_stream_request(b"GET /s"));
        assert!(could_be_stream_request(b"GET /stream?x"));
        assert!(!could_be_stream_request(b"GET /ws HTTP/1.1"));
        assert!(!could_be_stream_request(b"POST /sse"));
    }
}
