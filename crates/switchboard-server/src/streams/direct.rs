//! `/sse` and `/stream` on a socket Switchboard owns, without hyper's per-connection buffers.
//!
//! hyper keeps an 8 KiB read buffer, an 8 KiB write buffer and a large connection task for as
//! long as a streaming response lasts: about 17 KiB per idle SSE client. So on plain TCP the
//! accept loop peeks at a new connection's first request: a `GET` of `/sse` or `/stream` is
//! routed through the same router (auth, CORS, every check of the door), and the stream it
//! opens is handed over ([`Handoff`]) to a small task that owns the socket and drives the
//! stream's machine, like a WebSocket connection: no buffers while idle, chunked encoding
//! written by the machine, frames written straight from the shared bytes. Anything else (and
//! every request over TLS) goes to hyper as before.

use std::io;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tower_service::Service;

use super::stream::{Handoff, OpenStream};
use crate::door::socket::{Socket, Wake, poll_wake, write_from};
use crate::door::{Deadline, Output};

/// The most of a request head this path reads; a longer one goes to hyper.
const MAX_HEAD: usize = 4096;
const MAX_HEADERS: usize = 48;
/// How long a fresh socket may take to accept a stream's response head.
const HEAD_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// A request head read off the socket: the request, and its length in bytes.
pub(crate) struct Head {
    request: Request<Body>,
    len: usize,
}

/// What the start of a new plain-TCP connection turned out to be.
pub(crate) enum Peeked {
    /// A complete `GET /sse` or `GET /stream` head that fits in [`MAX_HEAD`].
    Stream(Box<Head>),
    /// Anything else: for hyper (which has not lost a byte: nothing was consumed).
    Other,
    /// No complete head within the handshake timeout: the connection is dropped.
    TooSlow,
}

/// Waits (at most `timeout`) for the first request head on `tcp` without consuming it.
pub(crate) async fn peek_stream_request(tcp: &TcpStream, timeout: Duration) -> Peeked {
    let mut buf = vec![0u8; MAX_HEAD];
    let deadline = tokio::time::Instant::now() + timeout;
    let mut seen = 0;
    loop {
        let n = match tokio::time::timeout_at(deadline, tcp.peek(&mut buf)).await {
            Ok(Ok(n)) => n,
            Ok(Err(_)) => return Peeked::Other,
            Err(_) => return Peeked::TooSlow,
        };
        if n == 0 || !could_be_stream_request(&buf[..n]) {
            return Peeked::Other;
        }
        match parse_head(&buf[..n]) {
            Some(Some(head)) => return Peeked::Stream(Box::new(head)),
            Some(None) => return Peeked::Other,
            None if n == MAX_HEAD => return Peeked::Other,
            None => {}
        }
        if n == seen {
            // The rest of the head has not arrived: peek returns at once what is there, so
            // wait a little (and no longer than the deadline) before looking again.
            if tokio::time::Instant::now() >= deadline {
                return Peeked::TooSlow;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
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

/// Fuzzing entry point (`fuzz/`): the start of a connection as the accept loop peeks at it.
#[doc(hidden)]
pub fn fuzz_stream_head(data: &[u8]) {
    if could_be_stream_request(data)
        && let Some(Some(head)) = parse_head(data)
    {
        assert!(head.len <= data.len());
        let route = head.request.uri().path();
        assert!(route == "/sse" || route == "/stream", "{route}");
    }
}

/// Runs the stream request through `router`, writes the answer, and if it opened a stream
/// keeps driving it from a task of its own until either side ends it.
pub(crate) async fn serve(
    mut tcp: TcpStream,
    head: Head,
    peer: std::net::SocketAddr,
    mut router: axum::Router,
    stopped: tokio::sync::watch::Receiver<bool>,
) {
    // The head is still in the socket (it was only peeked): consume exactly it.
    let mut consumed = vec![0u8; head.len];
    if tcp.read_exact(&mut consumed).await.is_err() {
        return;
    }
    drop(consumed);
    let handoff = Handoff::default();
    let mut request = head.request;
    request.extensions_mut().insert(handoff.clone());
    request
        .extensions_mut()
        .insert(crate::admission::PeerAddr(peer));
    let Ok(response) = router.call(request).await;
    let (parts, body) = response.into_parts();
    let stream = handoff.0.lock().take();
    let mut wire = format!(
        "HTTP/1.1 {} {}\r\n",
        parts.status.as_u16(),
        parts.status.canonical_reason().unwrap_or("")
    )
    .into_bytes();
    for (name, value) in parts.headers.iter() {
        // The framing headers are this writer's own.
        if matches!(
            name.as_str(),
            "content-length" | "transfer-encoding" | "connection"
        ) {
            continue;
        }
        wire.extend_from_slice(name.as_str().as_bytes());
        wire.extend_from_slice(b": ");
        wire.extend_from_slice(value.as_bytes());
        wire.extend_from_slice(b"\r\n");
    }
    let Some(stream) = stream else {
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
    };
    wire.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
    // The head goes first, before anything the stream queued; a fresh socket takes it at once.
    let head = tokio::io::AsyncWriteExt::write_all(&mut tcp, &wire);
    if !matches!(
        tokio::time::timeout(HEAD_WRITE_TIMEOUT, head).await,
        Ok(Ok(()))
    ) {
        return;
    }
    // A task of its own: this one carried the router's and the head's futures, which would
    // otherwise stay part of every idle stream's memory.
    tokio::spawn(drive(Socket::Plain(tcp), stream, stopped));
}

/// Drives a stream on its socket until it closes or the client leaves. Bytes the client sends
/// after its request are read and ignored; its end of the connection ends the stream.
/// `stopped` is held so a graceful shutdown waits for the stream to end.
fn drive(
    mut socket: Socket,
    mut stream: OpenStream,
    stopped: tokio::sync::watch::Receiver<bool>,
) -> impl Future<Output = ()> + Send {
    let mut deadline = Deadline::default();
    // Works on what it captured, in place: its size is every idle stream's memory, and a
    // moved copy would count twice.
    async move {
        let _held = &stopped;
        drive_loop(&mut socket, &mut stream, &mut deadline).await;
    }
}

async fn drive_loop(socket: &mut Socket, stream: &mut OpenStream, deadline: &mut Deadline) {
    loop {
        let machine = &mut stream.machine;
        let mut writing = false;
        match machine.poll_output(Instant::now) {
            Output::Write => match write_from(socket, machine) {
                Ok(true) => continue,
                Ok(false) => writing = true,
                Err(_) => return,
            },
            Output::Wait(_) => {}
            Output::Close(_) => return,
        }
        deadline.set(machine.deadline());
        let outbox = machine.outbox();
        let wake =
            std::future::poll_fn(|cx| poll_wake(cx, outbox, socket, true, writing, deadline)).await;
        match wake {
            Wake::Readable => {
                if client_left(socket) {
                    return;
                }
            }
            Wake::Outbox | Wake::Writable | Wake::Deadline => {}
            Wake::SocketError => return,
        }
    }
}

/// Reads and drops what the client sent; whether it closed its side.
fn client_left(socket: &mut Socket) -> bool {
    let mut scratch = [0u8; 256];
    loop {
        match socket.try_read(&mut scratch) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
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
