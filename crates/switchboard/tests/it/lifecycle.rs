//! Connection lifecycle over real sockets: slow consumers, keep-alives and graceful shutdown.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::common::*;
use futures_util::SinkExt;
use serde_json::{Value, json};
use switchboard_client::WsClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;

/// Opens a WebSocket by hand and returns the socket after the 101 response.
async fn raw_websocket(addr: SocketAddr, path: &str) -> (TcpStream, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let end = loop {
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "server closed during the handshake");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "accept key: {head}"
    );
    (stream, buf[end..].to_vec())
}

/// One server frame: (opcode, payload). Server frames are never masked.
async fn read_frame(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(u8, Vec<u8>)> {
    loop {
        if buf.len() >= 2 {
            assert_eq!(buf[1] & 0x80, 0, "server frames must not be masked");
            let (len, header) = match buf[1] & 0x7f {
                126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
                127 if buf.len() >= 10 => (
                    u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize,
                    10,
                ),
                n if n < 126 => (n as usize, 2),
                _ => (usize::MAX, 0),
            };
            if len != usize::MAX && buf.len() >= header + len {
                let opcode = buf[0] & 0x0f;
                let payload = buf[header..header + len].to_vec();
                buf.drain(..header + len);
                return Some((opcode, payload));
            }
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn json_of(payload: &[u8]) -> Value {
    serde_json::from_slice(payload).expect("server text frames are JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_disconnected_without_stalling_a_fast_one() {
    let config = format!(
        "{}[limits]\nclient_queue_bytes = 262144\nmax_frame_size = 16384\n",
        auth_toml()
    );
    let server = TestServer::with_config(&config).await;

    // The slow client asks for a tiny receive buffer and then never reads.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(server.addr).await.unwrap();
    let url = server.ws_url(&format!("/ws?token={}", token("slow", &["*"], &[])));
    let (mut slow, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
    slow.send(Message::text(
        json!({"type":"subscribe","id":1,"channel":"feed"}).to_string(),
    ))
    .await
    .unwrap();

    // The fast client reads all the time, as a real client does.
    let count = 1000u64;
    let mut fast = server.connect_as("fast").await;
    fast.subscribe("feed").await.unwrap();
    let fast_reader = tokio::spawn(async move {
        for n in 1..=count {
            let message = fast.next_message("feed", WAIT).await.unwrap();
            assert_eq!(
                message["offset"], n,
                "fast subscriber got every message in order"
            );
            assert_eq!(message["data"]["n"], n);
        }
        fast
    });
    // Let the slow client's subscription land before publishing.
    tokio::time::sleep(Duration::from_millis(200)).await;

    // 8 MB in 8 KB messages: far more than the slow client's buffers and its 256 KB queue.
    let mut publisher = server.connect_as("publisher").await;
    let blob = "x".repeat(8000);
    for n in 1..=count {
        publisher
            .publish("feed", json!({"n": n, "blob": blob}))
            .await
            .unwrap();
    }
    let _fast = tokio::time::timeout(WAIT, fast_reader)
        .await
        .expect("fast subscriber kept up")
        .unwrap();

    // The slow one is cut off: counted as a queue drop and gone from presence.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let members = server.api().presence("feed").await.unwrap();
        let users: Vec<&str> = members["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["user"].as_str().unwrap())
            .collect();
        if !users.contains(&"slow") {
            assert_eq!(users, vec!["fast"]);
            break;
        }
        if Instant::now() > deadline {
            let drops = server.metric("switchboard_queue_drops_total").await;
            let sent = server.metric("switchboard_sent_bytes_total").await;
            let info = server.api().info().await.unwrap();
            panic!(
                "slow consumer still subscribed: {drops} queue drops, {sent} bytes sent, {users:?} {info}"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(server.metric("switchboard_queue_drops_total").await, 1.0);
    drop(slow);
    server.stop().await;
}

#[tokio::test]
async fn app_level_ping_answers_pong_with_the_same_id() {
    let server = TestServer::start().await;
    let mut client = server.connect_as("alice").await;
    client.send(json!({"type":"ping","id":7})).await.unwrap();
    let frame = client.next_frame(WAIT).await.unwrap();
    assert_eq!(frame, json!({"type":"pong","id":7}));
    server.stop().await;
}

#[tokio::test]
async fn websocket_pings_keep_a_live_client_and_drop_a_silent_one() {
    let config = format!("{}[limits]\nping_interval = 1\n", auth_toml());
    let server = TestServer::with_config(&config).await;

    // A client that keeps reading answers pings (tungstenite does it by itself): it must
    // survive several intervals.
    let mut live = server.connect_as("live").await;
    live.subscribe("c").await.unwrap();
    let live_reader =
        tokio::spawn(async move { live.next_message("c", Duration::from_secs(10)).await });

    // This one completes the handshake and then never sends a byte.
    let path = format!("/ws?token={}", token("silent", &["*"], &[]));
    let (mut silent, mut buf) = raw_websocket(server.addr, &path).await;
    let (opcode, payload) = read_frame(&mut silent, &mut buf).await.unwrap();
    assert_eq!(opcode, 1);
    assert_eq!(json_of(&payload)["type"], "connected");

    let started = Instant::now();
    let mut pings = 0;
    let disconnect = loop {
        let (opcode, payload) = tokio::time::timeout(WAIT, read_frame(&mut silent, &mut buf))
            .await
            .expect("the silent client hears from the server")
            .expect("connection open until the disconnect");
        match opcode {
            9 => pings += 1,
            1 => break json_of(&payload),
            other => panic!("unexpected opcode {other}"),
        }
    };
    assert!(pings >= 1, "server pinged before giving up");
    assert_eq!(disconnect["type"], "disconnect");
    assert_eq!(disconnect["code"], "unavailable");
    let (opcode, payload) = read_frame(&mut silent, &mut buf).await.unwrap();
    assert_eq!(opcode, 8);
    assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 4005);
    assert!(started.elapsed() < Duration::from_secs(4));

    // Meanwhile the live client still works and receives messages.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.api().publish("c", &json!(1)).await.unwrap();
    let message = live_reader
        .await
        .unwrap()
        .expect("live client still connected");
    assert_eq!(message["data"], 1);
    server.stop().await;
}

#[tokio::test]
async fn shutdown_tells_clients_to_reconnect() {
    let server = TestServer::start().await;
    let mut a = server.connect_as("a").await;
    let mut b = server.connect_as("b").await;
    a.subscribe("x").await.unwrap();
    let stopping = tokio::spawn(server.stop());
    for client in [&mut a, &mut b] {
        let frame = client
            .next_where(WAIT, |f| f["type"] == "disconnect")
            .await
            .unwrap();
        assert_eq!(frame["type"], "disconnect");
        assert_eq!(frame["code"], "unavailable");
        assert_eq!(frame["reconnect"], true);
        let (code, _) = client.wait_close(WAIT).await.unwrap();
        assert_eq!(code, Some(1001));
    }
    tokio::time::timeout(WAIT, stopping).await.unwrap().unwrap();
}

#[tokio::test]
async fn client_close_is_answered_and_cleans_up() {
    // Join/leave announced (off by default since contract v1.1 §7).
    let server = server_with(JOIN_LEAVE).await;
    let mut watcher = server.connect_as("watcher").await;
    watcher.subscribe("room").await.unwrap();
    let leaver = {
        let mut c = server.connect_as("leaver").await;
        c.subscribe("room").await.unwrap();
        c
    };
    let join = watcher.next_push(WAIT).await.unwrap();
    assert_eq!(join["type"], "join");
    let join = watcher.next_push(WAIT).await.unwrap();
    assert_eq!(
        (join["type"].as_str(), join["member"]["user"].as_str()),
        (Some("join"), Some("leaver"))
    );
    leaver.close().await.unwrap();
    let leave = watcher.next_push(WAIT).await.unwrap();
    assert_eq!(leave["type"], "leave");
    assert_eq!(leave["member"]["user"], "leaver");
    let info = server.api().info().await.unwrap();
    assert_eq!(info["connections"], 1);
    server.stop().await;
}

#[tokio::test]
async fn metrics_count_connections_and_messages() {
    let server = TestServer::start().await;
    let mut client = server.connect_as("m").await;
    client.subscribe("c").await.unwrap();
    for n in 0..3 {
        server.api().publish("c", &json!(n)).await.unwrap();
    }
    for _ in 0..3 {
        client.next_message("c", WAIT).await.unwrap();
    }
    assert_eq!(server.metric("switchboard_connections").await, 1.0);
    assert_eq!(server.metric("switchboard_subscriptions").await, 1.0);
    assert_eq!(
        server.metric("switchboard_messages_published_total").await,
        3.0
    );
    assert_eq!(
        server.metric("switchboard_messages_delivered_total").await,
        3.0
    );
    assert!(server.metric("switchboard_sent_bytes_total").await > 0.0);
    let (status, health) = server
        .api()
        .call(reqwest::Method::GET, "/health", None)
        .await
        .unwrap();
    assert_eq!((status, health), (200, json!({"status":"ok"})));
    drop(WsClient::close(client).await);
    server.stop().await;
}
