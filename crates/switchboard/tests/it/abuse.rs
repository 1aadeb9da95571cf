//! A server facing the open internet (spec §8): clients that are slow on purpose, hold too
//! much, or knock too often get bounded refusals, and well-behaved clients beside them lose
//! nothing.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;

/// A server whose handshake timeout is one second.
async fn impatient() -> TestServer {
    server_with("[limits]\nhandshake_timeout = 1\n").await
}

/// Reads until the server closes the connection (or `within` passes); returns how long that
/// took and what it sent.
async fn closed_within(tcp: &mut TcpStream, within: Duration) -> (Duration, String) {
    let started = Instant::now();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = within.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "still open after {within:?}: {}",
                String::from_utf8_lossy(&seen)
            ),
        }
    }
    (
        started.elapsed(),
        String::from_utf8_lossy(&seen).into_owned(),
    )
}

#[tokio::test]
async fn half_a_request_head_is_dropped_after_the_handshake_timeout() {
    let server = impatient().await;
    // hyper's connections, and the peek at a stream request on a plain socket.
    for start in [
        "GET /health HTTP/1.1\r\nHost: x\r\n",
        "GET /sse?channel=a HTTP/1.1\r\n",
    ] {
        let mut tcp = TcpStream::connect(server.addr).await.unwrap();
        tcp.write_all(start.as_bytes()).await.unwrap();
        let (took, _) = closed_within(&mut tcp, Duration::from_secs(5)).await;
        assert!(
            took >= Duration::from_millis(900),
            "{start:?} closed after {took:?}"
        );
    }
    // A well-behaved client on the same server is served as ever.
    let health = reqwest::get(format!("{}/health", server.base))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn a_body_sent_too_slowly_is_refused_after_the_handshake_timeout() {
    let server = impatient().await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"channel\":"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut answer))
        .await
        .expect("answered in time")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("not received within"), "{answer}");
}
