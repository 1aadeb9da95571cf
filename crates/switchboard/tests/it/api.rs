//! The server API (PROTOCOL.md §6) over real HTTP: authorisation, every call with its real
//! effect on WebSocket clients, and the error answers.

use std::time::Duration;

use crate::common::*;
use reqwest::Method;
use serde_json::{Value, json};
use switchboard_client::{ApiClient, Error};
use tokio::time::Instant;

// ---------------------------------------------------------------- helpers

/// Sends a raw body (not necessarily JSON) with the API key; returns status and body text.
async fn raw_call(server: &TestServer, method: Method, path: &str, body: &str) -> (u16, String) {
    let response = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .request(method, format!("{}{path}", server.base))
        .bearer_auth(API_KEY)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .expect("server answers");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// Asserts an error body `{"error":{"code":<code>,"message":<non-empty string>}}`.
fn assert_error_body(status: u16, body: &str, want_status: u16, want_code: &str) {
    assert_eq!(status, want_status, "body: {body}");
    let body: Value = serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("error body is not JSON ({e}): {body:?}"));
    assert_eq!(body["error"]["code"], want_code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "error message missing: {body}"
    );
}

/// The HTTP status and contract code of a failed typed call.
fn server_error<T: std::fmt::Debug>(
    result: switchboard_client::Result<T>,
) -> (Option<u16>, String) {
    match result {
        Err(Error::Server { code, status, .. }) => (status, code),
        other => panic!("expected a server error, got {other:?}"),
    }
}

/// Polls `GET /api/info` until `check` holds (the server notices closed sockets
/// asynchronously); panics with the last answer after [`WAIT`].
async fn info_until(api: &ApiClient, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let info = api.info().await.unwrap();
        if check(&info) {
            return info;
        }
        assert!(Instant::now() < deadline, "info never matched: {info}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn offsets(messages: &Value) -> Vec<u64> {
    messages
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {messages}"))
        .iter()
        .map(|m| m["offset"].as_u64().expect("offset is a number"))
        .collect()
}

// ---------------------------------------------------------------- authorisation

#[tokio::test]
async fn missing_api_key_is_refused_with_401_and_does_nothing() {
    let server = TestServer::start().await;
    let anonymous = ApiClient::new(&server.base, None);

    let (status, body) = anonymous
        .call_text(Method::GET, "/api/info", None)
        .await
        .unwrap();
    assert_error_body(status, &body, 401, "unauthorized");

    let published = anonymous.publish("auth:x", &json!("sneaky")).await;
    assert_eq!(server_error(published), (Some(401), "unauthorized".into()));
    assert_eq!(
        server_error(anonymous.history("auth:x", None, None).await),
        (Some(401), "unauthorized".into())
    );

    // Nothing was published.
    let history = server.api().history("auth:x", None, None).await.unwrap();
    assert_eq!(history["messages"], json!([]));
    assert_eq!(history["offset"], 0);
    server.stop().await;
}

#[tokio::test]
async fn wrong_api_key_is_refused_with_401_and_does_nothing() {
    let server = TestServer::start().await;
    let mut alice = server.connect_as("alice").await;
    alice.subscribe("auth:y").await.unwrap();

    for key in ["wrong-key", "test-api-ke", "test-api-key-and-more", SECRET] {
        let intruder = ApiClient::new(&server.base, Some(key));
        let (status, body) = intruder
            .call_text(
                Method::POST,
                "/api/publish",
                Some(&json!({"channel": "auth:y", "data": "sneaky"})),
            )
            .await
            .unwrap();
        assert_error_body(status, &body, 401, "unauthorized");
        assert_eq!(
            server_error(intruder.disconnect("alice").await),
            (Some(401), "unauthorized".into())
        );
    }
    // A connection token is not an API key either.
    let jwt = token("alice", &["*"], &["*"]);
    let with_jwt = ApiClient::new(&server.base, Some(&jwt));
    assert_eq!(
        server_error(with_jwt.info().await),
        (Some(401), "unauthorized".into())
    );

    assert_no_message(&mut alice, "nothing was published").await;
    alice.ping().await.expect("alice is still connected");
    let history = server.api().history("auth:y", None, None).await.unwrap();
    assert_eq!(history["offset"], 0);
    server.stop().await;
}

// ---------------------------------------------------------------- publish and broadcast

#[tokio::test]
async fn publish_delivers_any_json_with_consecutive_offsets() {
    let server = TestServer::start().await;
    let api = server.api();
    let mut alice = server.connect_as("alice").await;
    let sub = alice.subscribe("pub:x").await.unwrap();

    let payloads = [
        json!({"text": "hi", "nested": {"list": [1, 2.5, null, true]}}),
        json!("plain string with \"quotes\" and ünïcödé"),
        json!(12345678901234i64),
        json!(null),
        json!([{"a": 1}, [], {}]),
    ];
    let mut epoch = None;
    for (i, data) in payloads.iter().enumerate() {
        let answer = api.publish("pub:x", data).await.unwrap();
        assert_eq!(answer["offset"], i as u64 + 1, "{answer}");
        let e = answer["epoch"]
            .as_str()
            .expect("epoch is a string")
            .to_owned();
        assert!(!e.is_empty());
        assert_eq!(epoch.get_or_insert(e.clone()), &e, "epoch stays");
    }
    let epoch = epoch.unwrap();
    assert_eq!(sub["epoch"], epoch.as_str());

    for (i, data) in payloads.iter().enumerate() {
        let msg = alice.next_message("pub:x", WAIT).await.unwrap();
        assert_eq!(
            msg,
            json!({"type": "message", "channel": "pub:x", "offset": i + 1, "epoch": epoch, "data": data})
        );
    }
    assert_no_message(&mut alice, "exactly five").await;
    server.stop().await;
}

#[tokio::test]
async fn batch_publishes_each_pair_in_order_and_reports_bad_ones() {
    let server = TestServer::start().await;
    let api = server.api();
    let mut reader = server.connect_as("reader").await;
    reader.subscribe("bt:a").await.unwrap();
    reader.subscribe("bt:b").await.unwrap();
    let body = json!({"publications": [
        {"channel": "bt:a", "data": {"n": 1}},
        {"channel": "bt:b", "data": {"n": 2}},
        {"channel": "", "data": {"n": 3}},
        {"channel": "bt:a", "data": {"n": 4}},
    ]});
    let (status, answer) = api
        .call(reqwest::Method::POST, "/api/batch", Some(&body))
        .await
        .unwrap();
    assert_eq!(status, 200, "{answer}");
    let results = answer["results"].as_array().unwrap();
    assert_eq!(results.len(), 4);
    assert_eq!(
        (results[0]["channel"].clone(), results[0]["offset"].clone()),
        (json!("bt:a"), json!(1))
    );
    assert_eq!(results[1]["offset"], 1);
    assert_eq!(results[2]["error"]["code"], "bad_request");
    assert_eq!(results[3]["offset"], 2);
    let a1 = reader.next_message("bt:a", WAIT).await.unwrap();
    let a2 = reader.next_message("bt:a", WAIT).await.unwrap();
    assert_eq!(
        (a1["data"]["n"].clone(), a2["data"]["n"].clone()),
        (json!(1), json!(4))
    );
    assert_eq!(
        reader.next_message("bt:b", WAIT).await.unwrap()["data"]["n"],
        2
    );

    let too_many: Vec<Value> = (0..101)
        .map(|n| json!({"channel": "bt:a", "data": n}))
        .collect();
    for body in [
        json!({"publications": []}),
        json!({"publications": too_many}),
    ] {
        let (status, answer) = api
            .call(reqwest::Method::POST, "/api/batch", Some(&body))
            .await
            .unwrap();
        assert_eq!(status, 400, "{answer}");
        assert_eq!(answer["error"]["code"], "bad_request");
    }
    assert_no_message(&mut reader, "a refused batch publishes nothing").await;
}

#[tokio::test]
async fn broadcast_publishes_to_each_channel_and_reports_bad_names() {
    let server = TestServer::start().await;
    let api = server.api();
    let mut one = server.connect_as("one").await;
    let mut two = server.connect_as("two").await;
    one.subscribe("bc:1").await.unwrap();
    two.subscribe("bc:2").await.unwrap();
    // bc:2 is already at offset 2.
    api.publish("bc:2", &json!("pre1")).await.unwrap();
    let pre = api.publish("bc:2", &json!("pre2")).await.unwrap();
    let epoch2 = pre["epoch"].as_str().unwrap().to_owned();
    let too_long = "x".repeat(300);

    let data = json!({"news": "everyone"});
    let answer = api
        .broadcast(&["bc:1", "", "bc:2", &too_long, "bc:3"], &data)
        .await
        .unwrap();
    let results = answer["results"].as_array().expect("results list");
    assert_eq!(results.len(), 5, "{answer}");

    assert_eq!(results[0]["channel"], "bc:1");
    assert_eq!(results[0]["offset"], 1);
    assert!(results[0]["epoch"].as_str().is_some_and(|e| !e.is_empty()));
    assert!(results[0].get("error").is_none(), "{answer}");

    for (i, name) in [(1, ""), (3, too_long.as_str())] {
        assert_eq!(results[i]["channel"], name);
        assert!(
            results[i].get("error").is_some_and(|e| !e.is_null()),
            "an invalid channel name gives an error: {}",
            results[i]
        );
        assert!(results[i].get("offset").is_none(), "{}", results[i]);
    }

    assert_eq!(results[2]["channel"], "bc:2");
    assert_eq!(results[2]["offset"], 3);
    assert_eq!(results[2]["epoch"], epoch2.as_str());
    assert_eq!(results[4]["channel"], "bc:3");
    assert_eq!(results[4]["offset"], 1);

    let msg = one.next_message("bc:1", WAIT).await.unwrap();
    assert_eq!(
        (msg["offset"].clone(), msg["data"].clone()),
        (json!(1), data.clone())
    );
    assert_eq!(msg["epoch"], results[0]["epoch"]);
    let got: Vec<Value> = [
        two.next_message("bc:2", WAIT).await.unwrap(),
        two.next_message("bc:2", WAIT).await.unwrap(),
        two.next_message("bc:2", WAIT).await.unwrap(),
    ]
    .into();
    assert_eq!(offsets(&json!(got)), vec![1, 2, 3]);
    assert_eq!(got[2]["data"], data);
    assert_no_message(&mut one, "one broadcast message").await;
    assert_no_message(&mut two, "one broadcast message").await;

    // The message also went into bc:3's history although nobody listens there.
    let history = api.history("bc:3", None, None).await.unwrap();
    assert_eq!(offsets(&history["messages"]), vec![1]);
    assert_eq!(history["messages"][0]["data"], data);
    server.stop().await;
}

// ---------------------------------------------------------------- channels, presence, info

#[tokio::test]
async fn channels_lists_subscribed_channels_with_counts() {
    let server = TestServer::start().await;
    let api = server.api();
    assert_eq!(api.channels().await.unwrap(), json!({"channels": []}));

    let mut a = server.connect_as("a").await;
    let mut b = server.connect_as("b").await;
    let mut c = server.connect_as("c").await;
    for client in [&mut a, &mut b, &mut c] {
        client.subscribe("ch:busy").await.unwrap();
    }
    c.subscribe("ch:quiet").await.unwrap();
    // Published to, never subscribed: not listed.
    api.publish("ch:nobody", &json!(1)).await.unwrap();

    let sorted = |v: Value| {
        let mut list = v["channels"].as_array().expect("channels list").clone();
        list.sort_by(|x, y| x["name"].as_str().cmp(&y["name"].as_str()));
        list
    };
    assert_eq!(
        sorted(api.channels().await.unwrap()),
        vec![
            json!({"name": "ch:busy", "subscribers": 3}),
            json!({"name": "ch:quiet", "subscribers": 1}),
        ]
    );

    c.unsubscribe("ch:quiet").await.unwrap();
    a.close().await.unwrap();
    // The close is processed asynchronously: wait for the count to settle.
    let deadline = Instant::now() + WAIT;
    loop {
        let now = sorted(api.channels().await.unwrap());
        if now == vec![json!({"name": "ch:busy", "subscribers": 2})] {
            break;
        }
        assert!(Instant::now() < deadline, "channels never settled: {now:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(b);
    drop(c);
    let deadline = Instant::now() + WAIT;
    loop {
        let now = api.channels().await.unwrap();
        if now == json!({"channels": []}) {
            break;
        }
        assert!(Instant::now() < deadline, "channels never emptied: {now}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.stop().await;
}

#[tokio::test]
async fn presence_api_lists_members_with_info() {
    let server = server_with("[[namespace]]\nname = \"hidden\"\npresence = false\n").await;
    let api = server.api();
    let (mut alice, hello_a) = server
        .connect(Some(&token_with_info("alice", &json!({"name": "Alice"}))))
        .await;
    let (mut bob, hello_b) = server
        .connect(Some(&token_with_info("bob", &json!(["b", 2]))))
        .await;
    alice.subscribe("pa:room").await.unwrap();
    bob.subscribe("pa:room").await.unwrap();

    let mut expected = vec![
        json!({"client": hello_a["client"], "user": "alice", "info": {"name": "Alice"}}),
        json!({"client": hello_b["client"], "user": "bob", "info": ["b", 2]}),
    ];
    expected.sort_by(|x, y| x["client"].as_str().cmp(&y["client"].as_str()));
    let members = |v: Value| {
        let mut list = v["members"].as_array().expect("members list").clone();
        list.sort_by(|x, y| x["client"].as_str().cmp(&y["client"].as_str()));
        list
    };
    assert_eq!(members(api.presence("pa:room").await.unwrap()), expected);
    assert_eq!(
        api.presence("pa:empty").await.unwrap(),
        json!({"members": []})
    );

    drop(bob);
    let only_alice = vec![
        expected
            .iter()
            .find(|m| m["user"] == "alice")
            .unwrap()
            .clone(),
    ];
    let deadline = Instant::now() + WAIT;
    loop {
        let now = members(api.presence("pa:room").await.unwrap());
        if now == only_alice {
            break;
        }
        assert!(Instant::now() < deadline, "bob never left: {now:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A namespace without presence: 404 not_found.
    alice.subscribe("hidden:x").await.unwrap();
    let (status, body) = api
        .call_text(Method::GET, "/api/presence/hidden%3Ax", None)
        .await
        .unwrap();
    assert_error_body(status, &body, 404, "not_found");
    server.stop().await;
}

#[tokio::test]
async fn info_reports_version_uptime_nodes_and_counts() {
    let server = TestServer::start().await;
    let api = server.api();
    let info = api.info().await.unwrap();
    assert!(
        info["version"].as_str().is_some_and(|v| !v.is_empty()),
        "{info}"
    );
    assert!(info["uptime_seconds"].is_u64(), "{info}");
    assert!(
        info["nodes"].as_array().is_some_and(|n| !n.is_empty()),
        "{info}"
    );
    assert_eq!(info["connections"], 0, "{info}");
    assert_eq!(info["channels"], 0, "{info}");
    assert_eq!(info["subscriptions"], 0, "{info}");

    let mut a = server.connect_as("a").await;
    let mut b = server.connect_as("b").await;
    a.subscribe("info:1").await.unwrap();
    a.subscribe("info:2").await.unwrap();
    b.subscribe("info:1").await.unwrap();
    let info = api.info().await.unwrap();
    assert_eq!(info["connections"], 2, "{info}");
    assert_eq!(info["channels"], 2, "{info}");
    assert_eq!(info["subscriptions"], 3, "{info}");

    a.unsubscribe("info:2").await.unwrap();
    let info = api.info().await.unwrap();
    assert_eq!(info["subscriptions"], 2, "{info}");
    assert_eq!(info["channels"], 1, "{info}");

    drop(b);
    let info = info_until(&api, |i| i["connections"] == 1).await;
    assert_eq!(info["subscriptions"], 1, "{info}");
    assert_eq!(info["channels"], 1, "{info}");
    a.close().await.unwrap();
    let info = info_until(&api, |i| i["connections"] == 0).await;
    assert_eq!(info["subscriptions"], 0, "{info}");
    assert_eq!(info["channels"], 0, "{info}");
    server.stop().await;
}

// ---------------------------------------------------------------- history

#[tokio::test]
async fn history_api_with_limit_and_since_and_bad_params() {
    let server = TestServer::start().await;
    let api = server.api();
    let mut alice = server.connect_as("alice").await;
    alice.subscribe("ha:x").await.unwrap();
    let mut epoch = String::new();
    for n in 1..=8 {
        let answer = api.publish("ha:x", &json!({"n": n})).await.unwrap();
        epoch = answer["epoch"].as_str().unwrap().to_owned();
    }
    let mut pushed = Vec::new();
    for _ in 0..8 {
        pushed.push(alice.next_message("ha:x", WAIT).await.unwrap());
    }

    let all = api.history("ha:x", None, None).await.unwrap();
    assert_eq!(all["messages"], json!(pushed), "messages as pushed");
    assert_eq!(all["offset"], 8);
    assert_eq!(all["epoch"], epoch.as_str());

    let latest = api.history("ha:x", Some(3), None).await.unwrap();
    assert_eq!(offsets(&latest["messages"]), vec![6, 7, 8]);
    assert_eq!(latest["offset"], 8);
    let after = api.history("ha:x", None, Some((2, &epoch))).await.unwrap();
    assert_eq!(offsets(&after["messages"]), vec![3, 4, 5, 6, 7, 8]);
    let first_two = api
        .history("ha:x", Some(2), Some((2, &epoch)))
        .await
        .unwrap();
    assert_eq!(offsets(&first_two["messages"]), vec![3, 4]);
    assert_eq!(first_two["messages"][0]["data"], json!({"n": 3}));
    let nothing = api.history("ha:x", None, Some((8, &epoch))).await.unwrap();
    assert_eq!(nothing["messages"], json!([]));
    assert_eq!(nothing["offset"], 8);

    for query in [
        "limit=abc",
        "limit=-1",
        "since_offset=x&epoch=e",
        "since_offset=-3&epoch=e",
        "since_offset=2",
        &format!("epoch={epoch}"),
    ] {
        let (status, body) = api
            .call_text(Method::GET, &format!("/api/history/ha%3Ax?{query}"), None)
            .await
            .unwrap();
        assert_error_body(status, &body, 400, "bad_request");
    }
    server.stop().await;
}

// ---------------------------------------------------------------- disconnect and unsubscribe

#[tokio::test]
async fn disconnect_closes_every_connection_of_the_user() {
    let server = TestServer::start().await;
    let api = server.api();
    let mut bob1 = server.connect_as("bob").await;
    let mut bob2 = server.connect_as("bob").await;
    let mut alice = server.connect_as("alice").await;
    for client in [&mut bob1, &mut bob2, &mut alice] {
        client.subscribe("dc:x").await.unwrap();
    }

    let answer = api.disconnect("bob").await.unwrap();
    assert_eq!(answer, json!({"disconnected": 2}));

    for bob in [&mut bob1, &mut bob2] {
        let push = bob
            .next_where(WAIT, |f| f["type"] == "disconnect")
            .await
            .unwrap();
        assert_eq!(push["code"], "forbidden", "{push}");
        assert!(push["message"].is_string(), "{push}");
        let (code, _) = bob.wait_close(WAIT).await.unwrap();
        assert_eq!(code, Some(4004));
    }
    // Alice is untouched and still receives.
    alice.ping().await.unwrap();
    api.publish("dc:x", &json!("after")).await.unwrap();
    let msg = alice.next_message("dc:x", WAIT).await.unwrap();
    assert_eq!(msg["data"], "after");
    match bob1.next_message("dc:x", QUIET).await {
        Err(Error::Closed {
            code: Some(4004), ..
        }) => {}
        other => panic!("a disconnected client gets nothing, got {other:?}"),
    }

    let info = info_until(&api, |i| i["connections"] == 1).await;
    assert_eq!(info["subscriptions"], 1, "{info}");
    // Nobody left to disconnect.
    assert_eq!(
        api.disconnect("bob").await.unwrap(),
        json!({"disconnected": 0})
    );
    assert_eq!(
        api.disconnect("nobody").await.unwrap(),
        json!({"disconnected": 0})
    );
    alice.ping().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn unsubscribe_api_removes_the_user_from_the_channel() {
    let server = TestServer::start().await;
    let api = server.api();
    let mut bob1 = server.connect_as("bob").await;
    let mut bob2 = server.connect_as("bob").await;
    let mut alice = server.connect_as("alice").await;
    for client in [&mut bob1, &mut bob2, &mut alice] {
        client.subscribe("us:x").await.unwrap();
    }
    bob1.subscribe("us:keep").await.unwrap();

    let answer = api.unsubscribe("bob", "us:x").await.unwrap();
    assert_eq!(answer, json!({}));

    for bob in [&mut bob1, &mut bob2] {
        let push = bob
            .next_where(WAIT, |f| f["type"] == "unsubscribed")
            .await
            .unwrap();
        assert_eq!(push["channel"], "us:x", "{push}");
        assert!(push["reason"].is_string(), "{push}");
    }

    let published = api.publish("us:x", &json!("only alice")).await.unwrap();
    assert_eq!(published["offset"], 1);
    let msg = alice.next_message("us:x", WAIT).await.unwrap();
    assert_eq!(msg["data"], "only alice");
    assert_no_message(&mut bob1, "unsubscribed by the server").await;
    assert_no_message(&mut bob2, "unsubscribed by the server").await;

    // Bob's other subscription and his connections go on.
    api.publish("us:keep", &json!("kept")).await.unwrap();
    assert_eq!(
        bob1.next_message("us:keep", WAIT).await.unwrap()["data"],
        "kept"
    );
    bob2.ping().await.unwrap();
    let channels = api.channels().await.unwrap();
    let mut list = channels["channels"].as_array().unwrap().clone();
    list.sort_by(|x, y| x["name"].as_str().cmp(&y["name"].as_str()));
    assert_eq!(
        list,
        vec![
            json!({"name": "us:keep", "subscribers": 1}),
            json!({"name": "us:x", "subscribers": 1}),
        ]
    );
    // Unsubscribing a user that is not subscribed is harmless.
    assert_eq!(api.unsubscribe("bob", "us:x").await.unwrap(), json!({}));
    match bob2
        .next_where(QUIET, |f| f["type"] == "unsubscribed")
        .await
    {
        Err(Error::Timeout(_)) => {}
        other => panic!("no second unsubscribed push expected, got {other:?}"),
    }
    server.stop().await;
}

// ---------------------------------------------------------------- bad requests

#[tokio::test]
async fn malformed_json_body_is_400_bad_request() {
    let server = TestServer::start().await;
    for (path, body) in [
        ("/api/publish", "{not json"),
        ("/api/publish", ""),
        ("/api/publish", "[1, 2]"),
        ("/api/broadcast", "{\"channels\": [\"a\"], \"data\": }"),
        ("/api/disconnect", "nonsense"),
        ("/api/unsubscribe", "{\"user\": \"bob\", "),
    ] {
        let (status, text) = raw_call(&server, Method::POST, path, body).await;
        assert_error_body(status, &text, 400, "bad_request");
    }
    let history = server.api().history("a", None, None).await.unwrap();
    assert_eq!(history["offset"], 0, "nothing was published");
    server.stop().await;
}

#[tokio::test]
async fn missing_or_invalid_fields_are_400_bad_request() {
    let server = TestServer::start().await;
    let api = server.api();
    for (path, body) in [
        ("/api/publish", json!({"channel": "mf:x"})),
        ("/api/publish", json!({"data": 1})),
        ("/api/publish", json!({"channel": 5, "data": 1})),
        ("/api/publish", json!({"channel": "", "data": 1})),
        ("/api/broadcast", json!({"data": 1})),
        ("/api/broadcast", json!({"channels": ["mf:x"]})),
        ("/api/disconnect", json!({})),
        ("/api/unsubscribe", json!({"user": "bob"})),
        ("/api/unsubscribe", json!({"channel": "mf:x"})),
    ] {
        let (status, text) = api
            .call_text(Method::POST, path, Some(&body))
            .await
            .unwrap();
        assert!(
            status == 400,
            "{path} with {body}: status {status}, body {text}"
        );
        assert_error_body(status, &text, 400, "bad_request");
    }
    let history = api.history("mf:x", None, None).await.unwrap();
    assert_eq!(history["offset"], 0, "nothing was published");
    server.stop().await;
}

#[tokio::test]
async fn oversized_body_is_413_too_large() {
    let server = server_with("[limits]\nmax_api_body = 1024\n").await;
    let api = server.api();
    let mut alice = server.connect_as("alice").await;
    alice.subscribe("big:x").await.unwrap();

    let big = json!({"channel": "big:x", "data": "x".repeat(4096)});
    let (status, text) = api
        .call_text(Method::POST, "/api/publish", Some(&big))
        .await
        .unwrap();
    assert_error_body(status, &text, 413, "too_large");
    let big = json!({"channels": ["big:x"], "data": "y".repeat(2000)});
    let (status, text) = api
        .call_text(Method::POST, "/api/broadcast", Some(&big))
        .await
        .unwrap();
    assert_error_body(status, &text, 413, "too_large");
    assert_no_message(&mut alice, "nothing too large was published").await;

    // Just under the limit still works.
    let small = "z".repeat(900);
    let answer = api.publish("big:x", &json!(small)).await.unwrap();
    assert_eq!(answer["offset"], 1);
    let msg = alice.next_message("big:x", WAIT).await.unwrap();
    assert_eq!(msg["data"], json!(small));
    server.stop().await;
}

#[tokio::test]
async fn unknown_api_path_is_404_not_found() {
    let server = TestServer::start().await;
    let api = server.api();
    for (method, path) in [
        (Method::GET, "/api/nope"),
        (Method::POST, "/api/nope"),
        (Method::GET, "/api/publish/extra"),
        (Method::GET, "/api/info/more"),
        // The API's bare root is no call either.
        (Method::GET, "/api/"),
    ] {
        let (status, text) = api.call_text(method.clone(), path, None).await.unwrap();
        assert!(
            status == 404 && text.contains("not_found"),
            "{method} {path}: status {status}, body {text:?}"
        );
        assert_error_body(status, &text, 404, "not_found");
    }
    server.stop().await;
}

// ---------------------------------------------------------------- channel names in paths

#[tokio::test]
async fn channel_with_hash_in_the_path_works() {
    let server = TestServer::start().await;
    let api = server.api();
    let channel = "chat:inbox#alice";
    let (mut alice, hello) = server
        .connect(Some(&token_with_info("alice", &json!({"me": true}))))
        .await;
    alice.subscribe(channel).await.unwrap();

    for n in 1..=3 {
        api.publish(channel, &json!({"n": n})).await.unwrap();
    }
    for n in 1..=3 {
        let msg = alice.next_message(channel, WAIT).await.unwrap();
        assert_eq!(msg["channel"], channel);
        assert_eq!(msg["data"], json!({"n": n}));
    }

    // The client percent-encodes the name: /api/history/chat%3Ainbox%23alice.
    let history = api.history(channel, Some(2), None).await.unwrap();
    assert_eq!(offsets(&history["messages"]), vec![2, 3]);
    assert_eq!(history["messages"][0]["channel"], channel);
    assert_eq!(history["offset"], 3);

    let presence = api.presence(channel).await.unwrap();
    assert_eq!(
        presence,
        json!({"members": [{"client": hello["client"], "user": "alice", "info": {"me": true}}]})
    );
    // The part before `#` is a different channel, with nothing in it.
    let other = api.history("chat:inbox", None, None).await.unwrap();
    assert_eq!(other["offset"], 0);
    assert_eq!(other["messages"], json!([]));
    server.stop().await;
}
