//! RFC 6455 conformance of the WebSocket door, against the real server over real sockets:
//! what the Autobahn test suite checks of a server (close codes and reasons, UTF-8,
//! fragmentation, control frames, masking, reserved bits and opcodes). Frames are written by
//! hand (`common/raw_ws.rs`); the native protocol's commands show that data frames were
//! processed: a command sent in pieces gets its reply.

use crate::common::*;
use serde_json::{Value, json};

/// A connection as a user allowed everything, past its `connected` frame.
async fn open(server: &TestServer) -> RawWs {
    let mut raw = RawWs::connect(server, &token("alice", &["*"], &["*"])).await;
    let connected = raw.next_json().await;
    assert_eq!(connected["type"], "connected", "{connected}");
    raw
}

/// A masked client frame with `first` as its first byte (FIN, RSV bits, opcode).
fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    let key = [0x5a, 0x01, 0xc3, 0x7e];
    out.extend_from_slice(&key);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    out
}

const FIN: u8 = 0x80;

fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason);
    payload
}

/// Reads until the server's close frame and returns its code (skipping text frames and
/// pings sent before it); then the server must end the TCP connection too.
async fn close_code(raw: &mut RawWs, what: &str) -> u16 {
    let payload = loop {
        match raw.read_frame().await {
            Some((_, OP_CLOSE, payload)) => break payload,
            Some((_, OP_TEXT | OP_PING, _)) => {}
            Some(other) => panic!("{what}: unexpected frame {other:?} before the close"),
            None => panic!("{what}: connection ended without a close frame"),
        }
    };
    assert!(payload.len() >= 2, "{what}: close frame without a code");
    assert!(
        raw.read_frame().await.is_none(),
        "{what}: a frame after the close"
    );
    u16::from_be_bytes([payload[0], payload[1]])
}

/// A `ping` command (the protocol's, in a text message) with `id`.
fn ping_command(id: u64) -> Vec<u8> {
    json!({"type": "ping", "id": id}).to_string().into_bytes()
}

/// Expects the pong of the `ping` command `id` as the next answer.
async fn assert_pong(raw: &mut RawWs, id: u64) {
    assert_eq!(raw.next_answer().await, json!({"type": "pong", "id": id}));
}

// ---------------------------------------------------------------------------------------------
// closing

#[tokio::test]
async fn close_codes_a_client_may_send_are_echoed() {
    let server = TestServer::start().await;
    for code in [
        1000u16, 1001, 1002, 1003, 1007, 1008, 1011, 3000, 3999, 4000, 4999,
    ] {
        let mut raw = open(&server).await;
        raw.send_raw(&frame(FIN | OP_CLOSE, &close_payload(code, b"bye")))
            .await;
        assert_eq!(close_code(&mut raw, &format!("close {code}")).await, code);
    }
    // No code at all is a normal closure.
    let mut raw = open(&server).await;
    raw.send_raw(&frame(FIN | OP_CLOSE, b"")).await;
    assert_eq!(close_code(&mut raw, "empty close").await, 1000);
    server.stop().await;
}

#[tokio::test]
async fn invalid_close_payloads_fail_with_1002() {
    let server = TestServer::start().await;
    let mut raw = open(&server).await;
    raw.send_raw(&frame(FIN | OP_CLOSE, &[0x03])).await;
    assert_eq!(close_code(&mut raw, "one-byte close").await, 1002);
    for code in [
        0u16, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
    ] {
        let mut raw = open(&server).await;
        raw.send_raw(&frame(FIN | OP_CLOSE, &close_payload(code, b"")))
            .await;
        assert_eq!(close_code(&mut raw, &format!("close {code}")).await, 1002);
    }
    server.stop().await;
}

#[tokio::test]
async fn close_reason_that_is_not_utf8_fails_the_connection() {
    let server = TestServer::start().await;
    let mut raw = open(&server).await;
    let payload = close_payload(
        1000,
        b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80",
    );
    raw.send_raw(&frame(FIN | OP_CLOSE, &payload)).await;
    let code = close_code(&mut raw, "non-UTF-8 reason").await;
    assert!(code == 1007 || code == 1002, "closed with {code}");
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// UTF-8

#[tokio::test]
async fn text_that_is_not_utf8_fails_with_1007() {
    let server = TestServer::start().await;
    // One frame.
    let mut raw = open(&server).await;
    raw.send_raw(&frame(
        FIN | OP_TEXT,
        b"{\"type\":\"ping\",\"id\":1,\"x\":\"\xff\"}",
    ))
    .await;
    assert_eq!(close_code(&mut raw, "invalid text frame").await, 1007);
    // A fragmented message, broken inside a code point: C3 must be followed by 80..BF.
    let mut raw = open(&server).await;
    raw.send_raw(&frame(OP_TEXT, b"{\"type\":\"ping\",\"id\":2,\"x\":\"\xc3"))
        .await;
    raw.send_raw(&frame(FIN | OP_CONT, b"(\"}")).await;
    assert_eq!(close_code(&mut raw, "invalid fragmented text").await, 1007);
    // A lone surrogate (UTF-16 style, encoded as three bytes) is not UTF-8 either.
    let mut raw = open(&server).await;
    raw.send_raw(&frame(FIN | OP_TEXT, b"\"\xed\xa0\x80\""))
        .await;
    assert_eq!(close_code(&mut raw, "surrogate").await, 1007);
    server.stop().await;
}

#[tokio::test]
async fn code_points_split_across_fragments_are_valid_text() {
    let server = TestServer::start().await;
    let mut raw = open(&server).await;
    // "κόσμε" with every fragment boundary inside a code point, and an empty fragment.
    let text = "{\"type\":\"ping\",\"id\":3,\"x\":\"κόσμε\"}".as_bytes();
    let start = text.iter().position(|b| *b >= 0x80).unwrap() + 1;
    raw.send_raw(&frame(OP_TEXT, &text[..start])).await;
    raw.send_raw(&frame(OP_CONT, b"")).await;
    raw.send_raw(&frame(OP_CONT, &text[start..start + 2])).await;
    raw.send_raw(&frame(FIN | OP_CONT, &text[start + 2..]))
        .await;
    assert_pong(&mut raw, 3).await;
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// fragmentation and control frames

#[tokio::test]
async fn fragmented_command_is_assembled_and_answered() {
    let server = TestServer::start().await;
    let mut raw = open(&server).await;
    let subscribe = json!({"type": "subscribe", "id": 7, "channel": "chat:frag"}).to_string();
    let bytes = subscribe.as_bytes();
    raw.send_raw(&frame(OP_TEXT, &bytes[..5])).await;
    raw.send_raw(&frame(OP_CONT, &bytes[5..20])).await;
    raw.send_raw(&frame(FIN | OP_CONT, &bytes[20..])).await;
    let reply = raw.next_answer().await;
    assert_eq!(reply["type"], "reply", "{reply}");
    assert_eq!(reply["id"], 7);
    assert_eq!(reply["channel"], "chat:frag");
    // Fragments written in one go are assembled the same way, in binary too.
    let ping = ping_command(8);
    let mut all = frame(OP_BINARY, &ping[..3]);
    all.extend(frame(FIN | OP_CONT, &ping[3..]));
    raw.send_raw(&all).await;
    assert_pong(&mut raw, 8).await;
    server.stop().await;
}

#[tokio::test]
async fn control_frames_within_a_fragmented_message_are_answered() {
    let server = TestServer::start().await;
    let mut raw = open(&server).await;
    let ping = ping_command(9);
    raw.send_raw(&frame(OP_TEXT, &ping[..4])).await;
    raw.send_raw(&frame(FIN | OP_PING, b"mid-message")).await;
    // An unsolicited pong is allowed anywhere, and ignored.
    raw.send_raw(&frame(FIN | OP_PONG, b"unasked")).await;
    raw.send_raw(&frame(FIN | OP_CONT, &ping[4..])).await;
    // The pong comes first (the message was not complete when the ping arrived).
    let (fin, opcode, payload) = next_non_ping(&mut raw).await;
    assert!(fin);
    assert_eq!((opcode, payload.as_slice()), (OP_PONG, &b"mid-message"[..]));
    assert_pong(&mut raw, 9).await;
    server.stop().await;
}

/// The next frame that is not one of the server's keep-alive pings.
async fn next_non_ping(raw: &mut RawWs) -> RawFrame {
    loop {
        let frame = raw.read_frame().await.expect("a frame, not the end");
        if frame.1 != OP_PING {
            return frame;
        }
    }
}

#[tokio::test]
async fn ping_payload_is_echoed_exactly() {
    let server = TestServer::start().await;
    let mut raw = open(&server).await;
    let binary: Vec<u8> = (0..125u8).map(|i| i.wrapping_mul(37) ^ 0xfe).collect();
    for payload in [&b""[..], b"Hello, World!", &binary] {
        raw.send_raw(&frame(FIN | OP_PING, payload)).await;
        let (fin, opcode, echoed) = next_non_ping(&mut raw).await;
        assert!(fin);
        assert_eq!(opcode, OP_PONG);
        assert_eq!(echoed, payload);
    }
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// protocol violations: each fails the connection with 1002, and the command riding in the
// offending frames is not run

#[tokio::test]
async fn protocol_violations_fail_with_1002() {
    let server = TestServer::start().await;
    let ping = ping_command(10);
    let mut unmasked = vec![FIN | OP_TEXT, ping.len() as u8];
    unmasked.extend_from_slice(&ping);
    let mut cases: Vec<(String, Vec<u8>)> = vec![
        ("unmasked frame".into(), unmasked),
        (
            "ping of 126 bytes".into(),
            frame(FIN | OP_PING, &[b'p'; 126]),
        ),
        ("close of 126 bytes".into(), {
            frame(FIN | OP_CLOSE, &close_payload(1000, &[b'r'; 124]))
        }),
        ("fragmented ping".into(), {
            let mut bytes = frame(OP_PING, b"a");
            bytes.extend(frame(FIN | OP_CONT, b"b"));
            bytes
        }),
        (
            "fragmented close".into(),
            frame(OP_CLOSE, &close_payload(1000, b"")),
        ),
        ("continuation without a message".into(), {
            frame(FIN | OP_CONT, &ping)
        }),
        ("text frame inside a fragmented message".into(), {
            let mut bytes = frame(OP_TEXT, &ping[..4]);
            bytes.extend(frame(FIN | OP_TEXT, &ping));
            bytes.extend(frame(FIN | OP_CONT, &ping[4..]));
            bytes
        }),
    ];
    for (name, rsv) in [("RSV1", 0x40), ("RSV2", 0x20), ("RSV3", 0x10)] {
        cases.push((format!("{name} set"), frame(FIN | rsv | OP_TEXT, &ping)));
    }
    for opcode in [3u8, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF] {
        cases.push((
            format!("reserved opcode {opcode:#x}"),
            frame(FIN | opcode, &ping),
        ));
    }
    for (name, bytes) in cases {
        let mut raw = open(&server).await;
        raw.send_raw(&bytes).await;
        // Close code 1002, and no pong for the command in the offending frames.
        let payload = loop {
            match raw.read_frame().await {
                Some((_, OP_CLOSE, payload)) => break payload,
                Some((_, OP_TEXT, text)) => {
                    let frame: Value = serde_json::from_slice(&text).unwrap();
                    assert_ne!(frame["type"], "pong", "{name}: the command was run");
                }
                Some(_) => {}
                None => panic!("{name}: connection ended without a close frame"),
            }
        };
        assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1002, "{name}");
        assert!(
            raw.read_frame().await.is_none(),
            "{name}: a frame after the close"
        );
    }
    server.stop().await;
}
