//! WebRTC signaling rooms (spec §3): membership, peer events, signal relay and its refusals,
//! ICE servers with TURN credentials, and rooms through the server API and a one-way door.

use crate::common::*;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use switchboard_client::WsClient;
use switchboard_server::auth::TokenClaims;

const WEBRTC: &str = r#"
[webrtc]
stun_urls = ["stun:stun.example.test:3478"]
turn_urls = ["turn:turn.example.test:3478?transport=udp"]
turn_secret = "turn-secret-0123456789abcdef-0123456789"
turn_ttl = 600
max_room_peers = 3
"#;

async fn server() -> TestServer {
    server_with(WEBRTC).await
}

/// A token for `user` that may join rooms matching `rooms`, with an `info` claim.
fn room_token(user: &str, rooms: &[&str]) -> String {
    token_with(TokenClaims {
        sub: Some(user.into()),
        exp: Some(switchboard_core::unix_now() + 3600),
        info: Some(RawValue::from_string(json!({"name": user}).to_string()).unwrap()),
        rooms: Some(rooms.iter().map(|r| r.to_string()).collect()),
        ..TokenClaims::default()
    })
}

async fn peer(server: &TestServer, user: &str) -> (WsClient, String) {
    let (client, connected) = server.connect(Some(&room_token(user, &["call:*"]))).await;
    let id = connected["client"].as_str().unwrap().to_owned();
    (client, id)
}

async fn join(client: &mut WsClient, room: &str, meta: Value) -> Value {
    client
        .request(json!({"type": "join_room", "room": room, "meta": meta}))
        .await
        .unwrap()
}

async fn next_of(client: &mut WsClient, kind: &str) -> Value {
    client
        .next_where(WAIT, |f| f["type"] == kind)
        .await
        .unwrap_or_else(|e| panic!("no {kind}: {e}"))
}

#[tokio::test]
async fn joining_answers_own_peer_the_others_and_ice_servers() {
    let server = server().await;
    let (mut alice, alice_id) = peer(&server, "alice").await;
    let reply = join(&mut alice, "call:1", json!({"muted": false})).await;
    assert_eq!(reply["room"], "call:1");
    assert_eq!(reply["peer"], alice_id.as_str());
    assert_eq!(reply["peers"], json!([]));

    // STUN as configured; TURN with coturn REST credentials for this user.
    let ice = &reply["ice_servers"];
    assert_eq!(ice[0]["urls"], json!(["stun:stun.example.test:3478"]));
    assert_eq!(
        ice[1]["urls"],
        json!(["turn:turn.example.test:3478?transport=udp"])
    );
    let username = ice[1]["username"].as_str().unwrap();
    let (expiry, user) = username.split_once(':').unwrap();
    assert_eq!(user, "alice");
    let expiry: u64 = expiry.parse().unwrap();
    let now = switchboard_core::unix_now();
    assert!(
        (now + 595..=now + 605).contains(&expiry),
        "{expiry} vs {now}"
    );
    let (_, credential) = switchboard_rtc::turn_credentials(
        "turn-secret-0123456789abcdef-0123456789",
        "alice",
        expiry,
    );
    assert_eq!(ice[1]["credential"], credential.as_str());

    // The second peer sees the first with user, info and meta; the first hears of it.
    let (mut bob, bob_id) = peer(&server, "bob").await;
    let reply = join(&mut bob, "call:1", json!({"muted": true})).await;
    assert_eq!(
        reply["peers"],
        json!([{"peer": alice_id, "user": "alice", "info": {"name": "alice"}, "meta": {"muted": false}}])
    );
    let joined = next_of(&mut alice, "peer_joined").await;
    assert_eq!(
        joined,
        json!({"type": "peer_joined", "room": "call:1",
               "peer": {"peer": bob_id, "user": "bob", "info": {"name": "bob"}, "meta": {"muted": true}}})
    );
    server.stop().await;
}

#[tokio::test]
async fn signals_reach_their_target_only_exactly_as_sent() {
    let server = server().await;
    let (mut a, a_id) = peer(&server, "a").await;
    let (mut b, b_id) = peer(&server, "b").await;
    let (mut c, c_id) = peer(&server, "c").await;
    for client in [&mut a, &mut b, &mut c] {
        join(client, "call:sig", json!(null)).await;
    }
    let offer =
        json!({"sdp": "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n", "type": "offer", "n": [1, 2.5, null]});
    let reply = a
        .request(json!({"type": "signal", "room": "call:sig", "to": b_id, "data": offer}))
        .await
        .unwrap();
    assert_eq!(reply["type"], "reply");
    let got = next_of(&mut b, "signal").await;
    assert_eq!(
        got,
        json!({"type": "signal", "room": "call:sig", "from": a_id, "data": offer})
    );

    // Without `to`: every other peer, not the sender.
    b.request(json!({"type": "signal", "room": "call:sig", "data": {"candidate": "x"}}))
        .await
        .unwrap();
    for client in [&mut a, &mut c] {
        let got = next_of(client, "signal").await;
        assert_eq!(got["from"], b_id.as_str());
        assert_eq!(got["data"], json!({"candidate": "x"}));
    }
    // c got nothing from the targeted signal, and b nothing from its own broadcast.
    let quiet = |f: &Value| f["type"] == "signal";
    assert!(
        c.next_where(QUIET, quiet).await.is_err(),
        "c saw a signal not for it"
    );
    assert!(
        b.next_where(QUIET, quiet).await.is_err(),
        "b heard its own signal"
    );
    let _ = c_id;
    server.stop().await;
}

#[tokio::test]
async fn update_meta_is_announced_to_the_others() {
    let server = server().await;
    let (mut a, a_id) = peer(&server, "a").await;
    let (mut b, _) = peer(&server, "b").await;
    join(&mut a, "call:m", json!({"camera": true})).await;
    join(&mut b, "call:m", json!(null)).await;
    a.request(json!({"type": "update_meta", "room": "call:m", "meta": {"camera": false}}))
        .await
        .unwrap();
    let updated = next_of(&mut b, "peer_updated").await;
    assert_eq!(updated["peer"]["peer"], a_id.as_str());
    assert_eq!(updated["peer"]["meta"], json!({"camera": false}));
    let peers = server.api().room("call:m").await.unwrap();
    let a_meta = peers["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["peer"] == a_id.as_str())
        .unwrap()["meta"]
        .clone();
    assert_eq!(a_meta, json!({"camera": false}));
    assert!(
        a.next_where(QUIET, |f| f["type"] == "peer_updated")
            .await
            .is_err()
    );
    server.stop().await;
}

#[tokio::test]
async fn every_refusal_has_its_code() {
    let server = server().await;
    let (mut a, a_id) = peer(&server, "a").await;
    let (mut b, b_id) = peer(&server, "b").await;
    join(&mut a, "call:r", json!(null)).await;

    // Signal or update in a room not joined.
    let e = b
        .request(json!({"type": "signal", "room": "call:r", "to": a_id, "data": 1}))
        .await;
    assert_eq!(error_code(e), "forbidden");
    let e = b
        .request(json!({"type": "update_meta", "room": "call:r", "meta": 1}))
        .await;
    assert_eq!(error_code(e), "forbidden");
    // To a peer that is not in the room, or to oneself.
    join(&mut b, "call:r", json!(null)).await;
    let e = b
        .request(json!({"type": "signal", "room": "call:r", "to": "nobody", "data": 1}))
        .await;
    assert_eq!(error_code(e), "not_found");
    let e = b
        .request(json!({"type": "signal", "room": "call:r", "to": b_id, "data": 1}))
        .await;
    assert_eq!(error_code(e), "not_found");
    // Joining twice.
    assert_eq!(
        error_code(
            b.request(json!({"type": "join_room", "room": "call:r"}))
                .await
        ),
        "bad_request"
    );
    // A room outside the `rooms` claim; a token without one.
    assert_eq!(
        error_code(
            b.request(json!({"type": "join_room", "room": "other"}))
                .await
        ),
        "forbidden"
    );
    let mut no_claim = server.connect_as("carol").await;
    let e = no_claim
        .request(json!({"type": "join_room", "room": "call:r"}))
        .await;
    assert_eq!(error_code(e), "forbidden");
    // Full: max_room_peers = 3.
    let (mut c, _) = peer(&server, "c").await;
    join(&mut c, "call:r", json!(null)).await;
    let (mut d, _) = peer(&server, "d").await;
    let e = d
        .request(json!({"type": "join_room", "room": "call:r"}))
        .await;
    assert_eq!(error_code(e), "rate_limited");
    // A refused join leaves no trace: after one leaves, the next may join.
    c.request(json!({"type": "leave_room", "room": "call:r"}))
        .await
        .unwrap();
    join(&mut d, "call:r", json!(null)).await;
    assert_eq!(
        server.api().room("call:r").await.unwrap()["peers"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    server.stop().await;
}

#[tokio::test]
async fn peers_leave_on_leave_room_and_when_their_connection_drops() {
    let server = server().await;
    let (mut a, _) = peer(&server, "a").await;
    let (mut b, b_id) = peer(&server, "b").await;
    let (mut c, c_id) = peer(&server, "c").await;
    for client in [&mut a, &mut b, &mut c] {
        join(client, "call:l", json!(null)).await;
    }
    b.request(json!({"type": "leave_room", "room": "call:l"}))
        .await
        .unwrap();
    let left = next_of(&mut a, "peer_left").await;
    assert_eq!(
        left,
        json!({"type": "peer_left", "room": "call:l", "peer": b_id})
    );
    drop(c);
    let left = next_of(&mut a, "peer_left").await;
    assert_eq!(left["peer"], c_id.as_str());
    let peers = server.api().room("call:l").await.unwrap();
    assert_eq!(peers["peers"].as_array().unwrap().len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn rooms_in_api_info_metrics_and_ice_servers_endpoint() {
    let server = server().await;
    let (mut a, _) = peer(&server, "a").await;
    join(&mut a, "call:x", json!(null)).await;
    join(&mut a, "call:y", json!(null)).await;
    assert_eq!(server.api().info().await.unwrap()["rooms"], 2);
    assert_eq!(server.metric("switchboard_rooms").await, 2.0);
    assert_eq!(
        server.api().room("call:none").await.unwrap(),
        json!({"peers": []})
    );

    // A token holder asks for ICE servers without joining a room; the API key is no token.
    let http = reqwest::Client::new();
    let url = format!("{}/api/ice-servers", server.base);
    let ok = http
        .get(&url)
        .bearer_auth(room_token("dora", &[]))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let body: Value = ok.json().await.unwrap();
    assert!(
        body["ice_servers"][1]["username"]
            .as_str()
            .unwrap()
            .ends_with(":dora")
    );
    for auth in [None, Some(API_KEY)] {
        let mut request = http.get(&url);
        if let Some(key) = auth {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401);
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poller_is_a_room_peer_through_its_session() {
    let server = server().await;
    let token = room_token("polly", &["call:*"]);
    let http = reqwest::Client::new();
    let poll = |query: String| {
        let http = http.clone();
        let url = format!("{}/poll?token={token}{query}", server.base);
        async move {
            let response = http.get(url).send().await.unwrap();
            assert_eq!(response.status(), 200);
            response.json::<Value>().await.unwrap()
        }
    };
    let first = poll(String::new()).await;
    let connected = &first["messages"][0];
    let session = connected["session"].as_str().unwrap().to_owned();
    let poller_id = connected["client"].as_str().unwrap().to_owned();
    let cursor = first["cursor"].as_str().unwrap().to_owned();

    let replies: Value = http
        .post(format!("{}/session/{session}", server.base))
        .body(json!({"type": "join_room", "id": 1, "room": "call:p"}).to_string())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(replies[0]["peer"], poller_id.as_str(), "{replies}");

    let (mut ws, ws_id) = peer(&server, "wes").await;
    let reply = join(&mut ws, "call:p", json!(null)).await;
    assert_eq!(reply["peers"][0]["user"], "polly");
    ws.request(
        json!({"type": "signal", "room": "call:p", "to": poller_id, "data": {"sdp": "answer"}}),
    )
    .await
    .unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        let answer = poll(format!("&cursor={cursor}&session={session}&timeout=2")).await;
        seen.extend(answer["messages"].as_array().unwrap().iter().cloned());
        if seen.iter().any(|m| m["type"] == "signal") {
            break;
        }
    }
    let signal = seen
        .iter()
        .find(|m| m["type"] == "signal")
        .expect("signal reached the poller");
    assert_eq!(signal["from"], ws_id.as_str());
    assert_eq!(signal["data"], json!({"sdp": "answer"}));
    server.stop().await;
}
