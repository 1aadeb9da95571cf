//! Bad input over WebSocket (PROTOCOL.md §3): every bad frame is answered with
//! `{"type":"error","id"(when readable),"code","message"}` and the connection and its other
//! subscriptions go on. After each bad input the tests prove it: the existing subscription
//! still receives a message published through the server API, and a ping gets its pong.

use crate::common::*;
use serde_json::{Value, json};
use switchboard_client::{Message, WsClient};

const CHANNEL: &str = "chat:a";

// ---------------------------------------------------------------------------------------------
// helpers

/// A client allowed everything, subscribed to [`CHANNEL`].
async fn subscribed_client(server: &TestServer) -> WsClient {
    let mut client = server.connect_as("alice").await;
    let reply = client.subscribe(CHANNEL).await.unwrap();
    assert_eq!(reply["channel"], CHANNEL);
    client
}

/// Asserts `frame` is `{"type":"error","code":code,"message":"..."}` with `id` when given and
/// no `id` otherwise.
fn assert_error(frame: &Value, id: Option<u64>, code: &str, input: &str) {
    assert_eq!(frame["type"], "error", "answer to {input:?}: {frame}");
    assert_eq!(frame["code"], code, "answer to {input:?}: {frame}");
    match id {
        Some(id) => assert_eq!(frame["id"], id, "answer to {input:?}: {frame}"),
        None => assert!(
            frame.get("id").is_none_or(Value::is_null),
            "answer to {input:?} carries an id: {frame}"
        ),
    }
    assert!(
        frame["message"].as_str().is_some_and(|m| !m.is_empty()),
        "answer to {input:?} has no message: {frame}"
    );
}

/// Sends `text` as one text frame and expects the next answer to be an error.
async fn send_bad(client: &mut WsClient, text: &str, id: Option<u64>, code: &str) {
    client.send_text(text).await.unwrap();
    let frame = client.next_where(WAIT, is_answer).await.unwrap();
    assert_error(&frame, id, code, text);
}

/// The connection still works: its subscription to `channel` receives a message published
/// through the API (exactly once, in order), and a ping gets its pong.
async fn assert_alive(server: &TestServer, client: &mut WsClient, channel: &str) {
    let data = json!({"alive": rand_tag()});
    let published = server.api().publish(channel, &data).await.unwrap();
    let message = client.next_message(channel, WAIT).await.unwrap();
    assert_eq!(message["data"], data, "{message}");
    assert_eq!(message["offset"], published["offset"]);
    assert_eq!(message["epoch"], published["epoch"]);
    let pong = client.ping().await.unwrap();
    assert_eq!(pong["type"], "pong", "{pong}");
}

/// A value unlikely to repeat, to tell messages apart.
fn rand_tag() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Asserts that no `message` of `channel` arrives for a little while.
async fn assert_no_message(client: &mut WsClient, channel: &str) {
    match client.next_message(channel, QUIET).await {
        Err(switchboard_client::Error::Timeout(_)) => {}
        other => panic!("expected no message on {channel}, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Over a WebSocket client on a bare TCP stream (`common/raw_ws.rs`), for frames tungstenite
// refuses to send (invalid UTF-8, unmasked frames, hand-made fragments).

impl RawWs {
    /// Same as [`assert_alive`] over the raw connection.
    async fn assert_alive(&mut self, server: &TestServer, channel: &str, ping_id: u64) {
        let data = json!({"alive": rand_tag()});
        let published = server.api().publish(channel, &data).await.unwrap();
        let message = self.next_message(channel).await;
        assert_eq!(message["data"], data, "{message}");
        assert_eq!(message["offset"], published["offset"]);
        self.send_text(
            json!({"type": "ping", "id": ping_id})
                .to_string()
                .as_bytes(),
        )
        .await;
        assert_eq!(
            self.next_answer().await,
            json!({"type": "pong", "id": ping_id})
        );
    }
}

/// A raw connection as alice (allowed everything), past its `connected` frame, subscribed to
/// [`CHANNEL`] with command id 1.
async fn raw_subscribed(server: &TestServer) -> RawWs {
    let mut raw = RawWs::connect(server, &token("alice", &["*"], &["*"])).await;
    let connected = raw.next_json().await;
    assert_eq!(connected["type"], "connected", "{connected}");
    let subscribe = json!({"type": "subscribe", "id": 1, "channel": CHANNEL});
    raw.send_text(subscribe.to_string().as_bytes()).await;
    let reply = raw.next_answer().await;
    assert_eq!(reply["type"], "reply", "{reply}");
    assert_eq!(reply["id"], 1);
    raw
}

/// `[limits]` for the size tests: frames up to 1024 bytes.
fn small_frames_toml() -> String {
    format!("{}\n[limits]\nmax_frame_size = 1024\n", auth_toml())
}

// ---------------------------------------------------------------------------------------------
// malformed frames

#[tokio::test]
async fn malformed_json_is_a_bad_request_and_connection_goes_on() {
    let server = TestServer::start().await;
    let mut client = subscribed_client(&server).await;
    for text in [
        r#"{"type":"ping","id":5"#,
        "{nope}",
        "",
        "   ",
        r#"{"type":"ping","id":6}}"#,
        r#"{"type":"ping","id":7} {"type":"ping","id":8}"#,
    ] {
        send_bad(&mut client, text, None, "bad_request").await;
        assert_alive(&server, &mut client, CHANNEL).await;
    }
    server.stop().await;
}

#[tokio::test]
async fn non_object_json_is_a_bad_request_and_connection_goes_on() {
    let server = TestServer::start().await;
    let mut client = subscribed_client(&server).await;
    for text in [
        r#"[{"type":"ping","id":1}]"#,
        r#""ping""#,
        "42",
        "null",
        "true",
    ] {
        send_bad(&mut client, text, None, "bad_request").await;
        assert_alive(&server, &mut client, CHANNEL).await;
    }
    server.stop().await;
}

#[tokio::test]
async fn unknown_or_missing_type_is_a_bad_request_with_its_id() {
    let server = TestServer::start().await;
    let mut client = subscribed_client(&server).await;
    for (id, text) in [
        (101, r#"{"type":"launch","id":101}"#),
        (102, r#"{"type":"","id":102}"#),
        (103, r#"{"type":"PING","id":103}"#),
        (104, r#"{"id":104,"channel":"chat:a"}"#),
        (105, r#"{"type":null,"id":105}"#),
    ] {
        send_bad(&mut client, text, Some(id), "bad_request").await;
        assert_alive(&server, &mut client, CHANNEL).await;
    }
    server.stop().await;
}

#[tokio::test]
async fn missing_field_is_a_bad_request_with_its_id() {
    let server = TestServer::start().await;
    let mut client = subscribed_client(&server).await;
    for (id, text) in [
        (201, r#"{"type":"subscribe","id":201}"#),
        (202, r#"{"type":"unsubscribe","id":202}"#),
        (203, r#"{"type":"publish","id":203,"channel":"chat:a"}"#),
        (204, r#"{"type":"publish","id":204,"data":1}"#),
        (205, r#"{"type":"presence","id":205}"#),
        (206, r#"{"type":"history","id":206}"#),
        (207, r#"{"type":"refresh","id":207}"#),
    ] {
        send_bad(&mut client, text, Some(id), "bad_request").await;
        assert_alive(&server, &mut client, CHANNEL).await;
    }
    // The publish without data published nothing: the history holds only the alive checks.
    let history = server.api().history(CHANNEL, None, None).await.unwrap();
    assert_eq!(history["messages"].as_array().unwrap().len(), 7);
    server.stop().await;
}

#[tokio::test]
async fn wrong_field_type_is_a_bad_request_with_its_id() {
    let server = TestServer::start().await;
    let mut client = subscribed_client(&server).await;
    for (id, text) in [
        (301, r#"{"type":"subscribe","id":301,"channel":42}"#),
        (302, r#"{"type":"subscribe","id":302,"channel":["chat:b"]}"#),
        (
            303,
            r#"{"type":"subscribe","id":303,"channel":"chat:b","since":"yesterday"}"#,
        ),
        (
            304,
            r#"{"type":"subscribe","id":304,"channel":"chat:b","since":{"offset":"1","epoch":"e"}}"#,
        ),
        (
            305,
            r#"{"type":"history","id":305,"channel":"chat:a","limit":"x"}"#,
        ),
        (
            306,
            r#"{"type":"history","id":306,"channel":"chat:a","limit":-1}"#,
        ),
        (
            307,
            r#"{"type":"publish","id":307,"channel":{"a":1},"data":1}"#,
        ),
        (308, r#"{"type":"refresh","id":308,"token":17}"#),
        (309, r#"{"type":5,"id":309}"#),
        (310, r#"{"type":"unsubscribe","id":310,"channel":null}"#),
    ] {
        send_bad(&mut client, text, Some(id), "bad_request").await;
        assert_alive(&server, &mut client, CHANNEL).await;
    }
    // None of the refused subscribes took effect.
    server
        .api()
        .publish("chat:b", &json!("nobody"))
        .await
        .unwrap();
    assert_no_message(&mut client, "chat:b").await;
    server.stop().await;
}

#[tokio::test]
async fn non_integer_id_is_a_bad_request_without_id() {
    let server = TestServer::start().await;
    let mut client = subscribed_client(&server).await;
    for text in [
        r#"{"type":"ping","id":"one"}"#,
        r#"{"type":"ping","id":"1"}"#,
        r#"{"type":"ping","id":1.5}"#,
        r#"{"type":"ping","id":-1}"#,
        r#"{"type":"ping","id":[1]}"#,
        r#"{"type":"ping","id":{"n":1}}"#,
        r#"{"type":"ping","id":true}"#,
        r#"{"type":"ping","id":1e400}"#,
        r#"{"type":"ping","id":18446744073709551616}"#,
    ] {
        // Answered with an error, not with a pong.
        send_bad(&mut client, text, None, "bad_request").await;
        assert_alive(&server, &mut client, CHANNEL).await;
    }
    server.stop().await;
}

#[tokio::test]
async fn empty_channel_is_a_bad_request_with_its_id() {
    let server = TestServer::start().await;
    let mut client = subscribed_client(&server).await;
    for (id, text) in [
        (401, r#"{"type":"subscribe","id":401,"channel":""}"#),
        (402, r#"{"type":"publish","id":402,"channel":"","data":1}"#),
        (403, r#"{"type":"unsubscribe","id":403,"channel":""}"#),
        (404, r#"{"type":"presence","id":404,"channel":""}"#),
        (405, r#"{"type":"history","id":405,"channel":""}"#),
    ] {
        send_bad(&mut client, text, Some(id), "bad_request").await;
        assert_alive(&server, &mut client, CHANNEL).await;
    }
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// size, encoding and framing

/// A publish frame to `channel` whose JSON text is exactly `size` bytes.
fn publish_frame_of_size(id: u64, channel: &str, size: usize) -> String {
    let empty = json!({"type": "publish", "id": id, "channel": channel, "data": ""}).to_string();
    assert!(size >= empty.len());
    let frame = json!({
        "type": "publish",
        "id": id,
        "channel": channel,
        "data": "x".repeat(size - empty.len()),
    })
    .to_string();
    assert_eq!(frame.len(), size);
    frame
}

#[tokio::test]
async fn frame_larger_than_max_frame_size_is_too_large_and_connection_goes_on() {
    let server = TestServer::with_config(&small_frames_toml()).await;
    let mut client = subscribed_client(&server).await;
    // One byte over the limit: refused, with no id (the frame was never read).
    let over = publish_frame_of_size(501, CHANNEL, 1025);
    send_bad(&mut client, &over, None, "too_large").await;
    assert_alive(&server, &mut client, CHANNEL).await;
    // Far over the limit, text and binary.
    let huge = publish_frame_of_size(502, CHANNEL, 200_000);
    send_bad(&mut client, &huge, None, "too_large").await;
    assert_alive(&server, &mut client, CHANNEL).await;
    client
        .send_message(Message::binary(over.clone().into_bytes()))
        .await
        .unwrap();
    let frame = client.next_where(WAIT, is_answer).await.unwrap();
    assert_error(&frame, None, "too_large", "binary frame over the limit");
    assert_alive(&server, &mut client, CHANNEL).await;
    // Nothing of them was published: the history holds the three alive checks only.
    let history = server.api().history(CHANNEL, None, None).await.unwrap();
    assert_eq!(history["messages"].as_array().unwrap().len(), 3);
    // Exactly at the limit is fine.
    let at_limit = publish_frame_of_size(503, CHANNEL, 1024);
    client.send_text(&at_limit).await.unwrap();
    let reply = client.next_where(WAIT, is_answer).await.unwrap();
    assert_eq!(reply["type"], "reply", "{reply}");
    assert_eq!(reply["id"], 503);
    assert_eq!(reply["offset"], 4);
    let message = client.next_message(CHANNEL, WAIT).await.unwrap();
    assert_eq!(message["offset"], 4);
    assert_alive(&server, &mut client, CHANNEL).await;
    server.stop().await;
}

#[tokio::test]
async fn fragmented_message_over_max_frame_size_is_too_large_once() {
    let server = TestServer::with_config(&small_frames_toml()).await;
    let mut raw = raw_subscribed(&server).await;
    // Two fragments of 700 bytes: each under the limit, the message over it.
    let text = publish_frame_of_size(2, CHANNEL, 1400);
    let (first, second) = text.as_bytes().split_at(700);
    raw.send_frame(false, OP_TEXT, first, true).await;
    raw.send_frame(true, OP_CONT, second, true).await;
    let error = raw.next_answer().await;
    assert_error(
        &error,
        None,
        "too_large",
        "fragmented message over the limit",
    );
    // The very next answer is the pong: the message was refused once, not per fragment.
    raw.assert_alive(&server, CHANNEL, 3).await;
    // A fragmented message under the limit is reassembled and handled.
    let text = publish_frame_of_size(4, CHANNEL, 900);
    let (first, second) = text.as_bytes().split_at(450);
    raw.send_frame(false, OP_TEXT, first, true).await;
    raw.send_frame(true, OP_CONT, second, true).await;
    let reply = raw.next_answer().await;
    assert_eq!(reply["type"], "reply", "{reply}");
    assert_eq!(reply["id"], 4);
    assert_eq!(reply["offset"], 2);
    raw.assert_alive(&server, CHANNEL, 5).await;
    server.stop().await;
}

/// Binary frames are not UTF-8 by contract, so bad UTF-8 in one is a bad command, not a
/// broken connection (in a text frame it fails the connection with 1007: `rfc6455.rs`).
#[tokio::test]
async fn binary_frame_with_invalid_utf8_is_a_bad_request_and_connection_goes_on() {
    let server = TestServer::start().await;
    let mut raw = raw_subscribed(&server).await;
    let invalid: [&[u8]; 3] = [
        b"{\"type\":\"ping\",\"id\":2,\"x\":\"\xff\xfe\"}",
        b"{\"type\":\"publish\",\"id\":3,\"channel\":\"chat:a\",\"data\":\"\xc3\x28\"}",
        // A lone surrogate encoded in UTF-8 (CESU style) is not valid UTF-8 either.
        b"{\"type\":\"ping\",\"id\":4,\"x\":\"\xed\xa0\x80\"}",
    ];
    for (i, bytes) in invalid.into_iter().enumerate() {
        raw.send_frame(true, OP_BINARY, bytes, true).await;
        let error = raw.next_answer().await;
        assert_eq!(error["type"], "error", "{error}");
        assert_eq!(error["code"], "bad_request", "{error}");
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
        raw.assert_alive(&server, CHANNEL, 10 + i as u64).await;
    }
    // The invalid publish published nothing: the history holds the alive checks only.
    let history = server.api().history(CHANNEL, None, None).await.unwrap();
    assert_eq!(history["messages"].as_array().unwrap().len(), 3);
    server.stop().await;
}

#[tokio::test]
async fn binary_frame_with_json_command_is_handled_like_text() {
    let server = TestServer::start().await;
    let mut client = subscribed_client(&server).await;
    client
        .send_message(Message::binary(br#"{"type":"ping","id":20}"#.to_vec()))
        .await
        .unwrap();
    let pong = client.next_where(WAIT, is_answer).await.unwrap();
    assert_eq!(pong, json!({"type": "pong", "id": 20}));
    let subscribe = json!({"type": "subscribe", "id": 21, "channel": "chat:bin"});
    client
        .send_message(Message::binary(subscribe.to_string().into_bytes()))
        .await
        .unwrap();
    let reply = client.next_where(WAIT, is_answer).await.unwrap();
    assert_eq!(reply["type"], "reply", "{reply}");
    assert_eq!(reply["id"], 21);
    assert_eq!(reply["channel"], "chat:bin");
    let publish = json!({"type": "publish", "id": 22, "channel": "chat:bin", "data": {"b": 1}});
    client
        .send_message(Message::binary(publish.to_string().into_bytes()))
        .await
        .unwrap();
    let reply = client.next_where(WAIT, is_answer).await.unwrap();
    assert_eq!(reply["type"], "reply", "{reply}");
    assert_eq!(reply["id"], 22);
    assert_eq!(reply["offset"], 1);
    let message = client.next_message("chat:bin", WAIT).await.unwrap();
    assert_eq!(message["data"], json!({"b": 1}));
    // A bad binary frame gets the same error as a bad text frame.
    client
        .send_message(Message::binary(b"{nope".to_vec()))
        .await
        .unwrap();
    let error = client.next_where(WAIT, is_answer).await.unwrap();
    assert_error(&error, None, "bad_request", "{nope (binary)");
    assert_alive(&server, &mut client, CHANNEL).await;
    assert_alive(&server, &mut client, "chat:bin").await;
    server.stop().await;
}

#[tokio::test]
async fn unmasked_client_frame_closes_with_1002() {
    let server = TestServer::start().await;
    let mut raw = raw_subscribed(&server).await;
    raw.send_frame(true, OP_TEXT, br#"{"type":"ping","id":2}"#, false)
        .await;
    let close = loop {
        match raw.read_frame().await {
            Some((_, OP_CLOSE, payload)) => break payload,
            Some((_, OP_TEXT, payload)) => {
                let frame: Value = serde_json::from_slice(&payload).unwrap();
                assert_ne!(frame["type"], "pong", "the unmasked ping was answered");
            }
            Some(_) => {}
            None => panic!("connection ended without a close frame"),
        }
    };
    assert!(close.len() >= 2, "close frame without a code");
    assert_eq!(u16::from_be_bytes([close[0], close[1]]), 1002);
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// limits and refused commands

#[tokio::test]
async fn subscribing_past_max_subscriptions_is_rate_limited() {
    let toml = format!("{}\n[limits]\nmax_subscriptions = 3\n", auth_toml());
    let server = TestServer::with_config(&toml).await;
    let mut client = subscribed_client(&server).await;
    client.subscribe("chat:b").await.unwrap();
    client.subscribe("chat:c").await.unwrap();
    for (id, channel) in [(601, "chat:d"), (602, "chat:e")] {
        let text = json!({"type": "subscribe", "id": id, "channel": channel}).to_string();
        send_bad(&mut client, &text, Some(id), "rate_limited").await;
        assert_alive(&server, &mut client, CHANNEL).await;
    }
    assert_alive(&server, &mut client, "chat:c").await;
    // The refused subscription took no effect.
    server.api().publish("chat:d", &json!("no")).await.unwrap();
    assert_no_message(&mut client, "chat:d").await;
    // Room is made by unsubscribing.
    client.unsubscribe("chat:b").await.unwrap();
    client.subscribe("chat:d").await.unwrap();
    assert_alive(&server, &mut client, "chat:d").await;
    server.stop().await;
}

#[tokio::test]
async fn default_max_subscriptions_is_128() {
    let server = TestServer::start().await;
    let mut client = subscribed_client(&server).await;
    for i in 1..128 {
        client.subscribe(&format!("many:{i}")).await.unwrap();
    }
    let text = json!({"type": "subscribe", "id": 9999, "channel": "many:128"}).to_string();
    send_bad(&mut client, &text, Some(9999), "rate_limited").await;
    assert_alive(&server, &mut client, CHANNEL).await;
    server.stop().await;
}

#[tokio::test]
async fn subscribing_twice_to_a_channel_is_a_bad_request() {
    let server = TestServer::start().await;
    let mut client = subscribed_client(&server).await;
    let text = json!({"type": "subscribe", "id": 701, "channel": CHANNEL}).to_string();
    send_bad(&mut client, &text, Some(701), "bad_request").await;
    // Still subscribed, once: each message arrives exactly once.
    assert_alive(&server, &mut client, CHANNEL).await;
    assert_no_message(&mut client, CHANNEL).await;
    server.stop().await;
}

#[tokio::test]
async fn malformed_room_commands_are_bad_requests() {
    let server = TestServer::start().await;
    let mut client = subscribed_client(&server).await;
    for (id, frame) in [
        (801, json!({"type": "join_room", "id": 801})),
        (802, json!({"type": "join_room", "id": 802, "room": ""})),
        (803, json!({"type": "leave_room", "id": 803, "room": 7})),
        (804, json!({"type": "update_meta", "id": 804, "room": "r1"})),
        (805, json!({"type": "signal", "id": 805, "room": "r1"})),
        (
            806,
            json!({"type": "signal", "id": 806, "room": "r1", "to": 3, "data": 1}),
        ),
    ] {
        send_bad(&mut client, &frame.to_string(), Some(id), "bad_request").await;
        assert_alive(&server, &mut client, CHANNEL).await;
    }
    server.stop().await;
}

#[tokio::test]
async fn bad_input_counts_in_errors_total_metric() {
    let server = TestServer::with_config(&small_frames_toml()).await;
    let mut client = subscribed_client(&server).await;
    let before = server.metric("switchboard_errors_total").await;
    send_bad(&mut client, "{nope", None, "bad_request").await;
    send_bad(
        &mut client,
        r#"{"type":"launch","id":1}"#,
        Some(1),
        "bad_request",
    )
    .await;
    let over = publish_frame_of_size(2, CHANNEL, 2000);
    send_bad(&mut client, &over, None, "too_large").await;
    let after = server.metric("switchboard_errors_total").await;
    assert_eq!(after, before + 3.0);
    assert_alive(&server, &mut client, CHANNEL).await;
    assert_eq!(server.metric("switchboard_errors_total").await, after);
    server.stop().await;
}

#[tokio::test]
async fn a_burst_of_bad_frames_leaves_the_connection_working() {
    let server = TestServer::start().await;
    let mut client = subscribed_client(&server).await;
    let bad = [
        "{",
        "[]",
        r#"{"type":"x","id":1}"#,
        r#"{"type":"ping","id":"a"}"#,
    ];
    for _ in 0..25 {
        for text in bad {
            client.send_text(text).await.unwrap();
        }
    }
    for _ in 0..100 {
        let frame = client.next_where(WAIT, is_answer).await.unwrap();
        assert_eq!(frame["type"], "error", "{frame}");
        assert_eq!(frame["code"], "bad_request", "{frame}");
    }
    assert_alive(&server, &mut client, CHANNEL).await;
    server.stop().await;
}
