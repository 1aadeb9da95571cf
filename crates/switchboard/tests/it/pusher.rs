//! Pusher compatibility over real sockets: the HTTP API's request signing and limits, and the
//! `/app/{key}` WebSocket door's handshake, channel authorization and close codes. (The
//! unmodified pusher-js and `pusher` SDK drive the same server in `tests/pusher`.)

use std::time::Duration;

use crate::common::{TestServer, WAIT, auth_toml, eventually};
use serde_json::{Value, json};
use switchboard_client::WsClient;
use switchboard_server::pusher::signing::{body_md5, sign};

const APP_ID: &str = "7";
const KEY: &str = "test-key";
const SECRET: &str = "test-app-secret";

async fn server() -> TestServer {
    server_with("").await
}

/// The test apps, with `extra` TOML after them.
async fn server_with(extra: &str) -> TestServer {
    let toml = format!(
        "{}\n[[pusher.apps]]\nid = \"{APP_ID}\"\nkey = \"{KEY}\"\nsecret = \"{SECRET}\"\nmax_event_size = 1000\n\
         [[pusher.apps]]\nid = \"off\"\nkey = \"off-key\"\nsecret = \"s\"\nnamespace = \"off\"\nenabled = false\n\
         [[pusher.apps]]\nid = \"8\"\nkey = \"quiet-key\"\nsecret = \"quiet\"\nnamespace = \"quiet\"\n\
         [[pusher.apps]]\nid = \"9\"\nkey = \"one-key\"\nsecret = \"one\"\nnamespace = \"one\"\nmax_connections = 1\n\
         {extra}",
        auth_toml()
    );
    TestServer::with_config(&toml).await
}

/// Sends a request to the Pusher API signed with `secret`, at `timestamp`; `tamper` changes
/// the body after signing. Returns the status and body.
#[allow(clippy::too_many_arguments)]
async fn signed(
    server: &TestServer,
    method: &str,
    path: &str,
    extra: &str,
    body: Option<&Value>,
    secret: &str,
    timestamp: u64,
    tamper: bool,
) -> (u16, String) {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut params = vec![
        format!("auth_key={KEY}"),
        format!("auth_timestamp={timestamp}"),
        "auth_version=1.0".to_string(),
    ];
    if !body.is_empty() {
        params.push(format!("body_md5={}", body_md5(body.as_bytes())));
    }
    if !extra.is_empty() {
        params.push(extra.to_string());
    }
    params.sort();
    let query = params.join("&");
    let signature = sign(secret, &format!("{method}\n{path}\n{query}"));
    let url = format!("{}{path}?{query}&auth_signature={signature}", server.base);
    let sent = if tamper {
        body.replace("hello", "HELLO")
    } else {
        body
    };
    let request = reqwest::Client::new()
        .request(method.parse().unwrap(), url)
        .header("content-type", "application/json")
        .body(sent);
    let response = request.send().await.expect("request sent");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

fn now() -> u64 {
    switchboard_core::unix_now()
}

#[tokio::test]
async fn api_requests_are_verified_and_reach_native_subscribers() {
    let server = server().await;
    let mut native = server.connect_as("n").await;
    native.subscribe("news").await.unwrap();
    let path = format!("/apps/{APP_ID}/events");
    let event = json!({"name": "greet", "channel": "news", "data": "{\"text\":\"hello\"}"});

    let ok = signed(
        &server,
        "POST",
        &path,
        "",
        Some(&event),
        SECRET,
        now(),
        false,
    )
    .await;
    assert_eq!(ok, (200, "{}".to_string()));
    let msg = native.next_message("news", WAIT).await.unwrap();
    assert_eq!(
        msg["data"],
        json!({"event": "greet", "data": "{\"text\":\"hello\"}"})
    );

    for (secret, at, tamper, why) in [
        ("wrong-secret", now(), false, "wrong secret"),
        (SECRET, now(), true, "body changed after signing"),
        (SECRET, now() - 601, false, "timestamp too old"),
        (SECRET, now() + 601, false, "timestamp in the future"),
    ] {
        let (status, _) =
            signed(&server, "POST", &path, "", Some(&event), secret, at, tamper).await;
        assert_eq!(status, 401, "{why}");
    }
    let unsigned = reqwest::Client::new()
        .post(format!("{}{path}", server.base))
        .body(event.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status().as_u16(), 401);
    // Nothing refused was published.
    assert!(
        native
            .next_message("news", Duration::from_millis(300))
            .await
            .is_err()
    );
    server.stop().await;
}

#[tokio::test]
async fn api_limits_and_queries() {
    let server = server().await;
    let path = format!("/apps/{APP_ID}/events");
    let big = json!({"name": "e", "channel": "c", "data": "x".repeat(1001)});
    let (status, _) = signed(&server, "POST", &path, "", Some(&big), SECRET, now(), false).await;
    assert_eq!(status, 413);
    let channels: Vec<String> = (0..101).map(|i| format!("c{i}")).collect();
    let many = json!({"name": "e", "channels": channels, "data": "{}"});
    let (status, _) = signed(
        &server,
        "POST",
        &path,
        "",
        Some(&many),
        SECRET,
        now(),
        false,
    )
    .await;
    assert_eq!(status, 400);
    let bad = json!({"name": "e", "channel": "a:b", "data": "{}"});
    let (status, _) = signed(&server, "POST", &path, "", Some(&bad), SECRET, now(), false).await;
    assert_eq!(status, 400);

    let mut native = server.connect_as("n").await;
    native.subscribe("presence-room").await.unwrap();
    let list = format!("/apps/{APP_ID}/channels");
    let (status, body) = signed(
        &server,
        "GET",
        &list,
        "filter_by_prefix=presence-",
        None,
        SECRET,
        now(),
        false,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"channels": {"presence-room": {}}})
    );
    let one = format!("/apps/{APP_ID}/channels/presence-room");
    let (status, body) = signed(
        &server,
        "GET",
        &one,
        "info=subscription_count,user_count",
        None,
        SECRET,
        now(),
        false,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"occupied": true, "subscription_count": 1, "user_count": 1})
    );
    let (status, _) = signed(
        &server,
        "GET",
        "/apps/nope/channels",
        "",
        None,
        SECRET,
        now(),
        false,
    )
    .await;
    assert_eq!(status, 404);
    server.stop().await;
}

/// Opens the Pusher door and returns the client and its socket id.
async fn pusher_client(server: &TestServer) -> (WsClient, String) {
    pusher_client_of(server, KEY).await
}

/// The same, for the app of `key`.
async fn pusher_client_of(server: &TestServer, key: &str) -> (WsClient, String) {
    let url = server.ws_url(&format!("/app/{key}?protocol=7&client=rust&version=1"));
    let mut ws = WsClient::open(&url, &[]).await.unwrap();
    let established = ws.next_frame(WAIT).await.unwrap();
    assert_eq!(established["event"], "pusher:connection_established");
    let data: Value = serde_json::from_str(established["data"].as_str().unwrap()).unwrap();
    (ws, data["socket_id"].as_str().unwrap().to_owned())
}

async fn next_event(ws: &mut WsClient, event: &str) -> Value {
    ws.next_where(WAIT, |f| f["event"] == event)
        .await
        .unwrap_or_else(|e| panic!("no {event}: {e}"))
}

#[tokio::test]
async fn websocket_door_authorizes_private_channels_and_bridges_to_native() {
    let server = server().await;
    let (mut ws, socket_id) = pusher_client(&server).await;

    let forged = format!(
        "{KEY}:{}",
        sign("not-the-secret", &format!("{socket_id}:private-a"))
    );
    ws.send_text(
        &json!({"event": "pusher:subscribe", "data": {"channel": "private-a", "auth": forged}})
            .to_string(),
    )
    .await
    .unwrap();
    let error = next_event(&mut ws, "pusher:subscription_error").await;
    assert_eq!(error["channel"], "private-a");
    assert_eq!(error["data"]["status"], 401);

    let good = format!("{KEY}:{}", sign(SECRET, &format!("{socket_id}:private-a")));
    ws.send_text(
        &json!({"event": "pusher:subscribe", "data": {"channel": "private-a", "auth": good}})
            .to_string(),
    )
    .await
    .unwrap();
    let ok = next_event(&mut ws, "pusher_internal:subscription_succeeded").await;
    assert_eq!(ok["channel"], "private-a");

    // A native publication reaches the Pusher client as a `message` event.
    let mut native = server.connect_as("n").await;
    native
        .publish("private-a", json!({"from": "native"}))
        .await
        .unwrap();
    let event = next_event(&mut ws, "message").await;
    assert_eq!(event["channel"], "private-a");
    assert_eq!(event["data"], "{\"from\":\"native\"}");
    server.stop().await;
}

#[tokio::test]
async fn websocket_door_close_codes() {
    let server = server().await;
    for (path, code) in [
        ("/app/unknown?protocol=7".to_string(), 4001),
        ("/app/off-key?protocol=7".to_string(), 4003),
        (format!("/app/{KEY}"), 4008),
        (format!("/app/{KEY}?protocol=8"), 4007),
        (format!("/app/{KEY}?protocol=x"), 4006),
    ] {
        let mut ws = WsClient::open(&server.ws_url(&path), &[]).await.unwrap();
        let error = next_event(&mut ws, "pusher:error").await;
        assert_eq!(error["data"]["code"], code, "{path}");
        let (closed, _) = ws.wait_close(WAIT).await.unwrap();
        assert_eq!(closed, Some(code), "{path}");
    }
    // A server shutting down tells Pusher clients to reconnect at once (4200).
    let (mut ws, _) = pusher_client(&server).await;
    let stopping = tokio::spawn(server.stop());
    let (closed, _) = ws.wait_close(WAIT).await.unwrap();
    assert_eq!(closed, Some(4200));
    stopping.await.unwrap();
}

#[tokio::test]
async fn public_channels_never_read_past_the_native_claims() {
    // The test app shares the default namespace, closed to anonymous readers here: a native
    // channel only some tokens may read must not be readable through the Pusher door.
    let server = server().await;
    let (mut ws, _) = pusher_client(&server).await;
    ws.send_text(&json!({"event": "pusher:subscribe", "data": {"channel": "secret"}}).to_string())
        .await
        .unwrap();
    let refused = next_event(&mut ws, "pusher:subscription_error").await;
    let data = &refused["data"];
    assert_eq!(
        (data["status"].clone(), data["type"].clone()),
        (json!(403), json!("AuthError"))
    );
    // An app with a namespace of its own keeps Pusher's public channels.
    let (mut own, _) = pusher_client_of(&server, "quiet-key").await;
    subscribe(&mut own, "secret").await;
    server.stop().await;
}

#[tokio::test]
async fn sign_in_then_terminate_connections_closes_with_4009() {
    let server = server().await;
    let (mut ws, socket_id) = pusher_client(&server).await;
    let user_data = r#"{"id":"u1"}"#;
    let forged = format!(
        "{KEY}:{}",
        sign("nope", &format!("{socket_id}::user::{user_data}"))
    );
    let signin = |auth: &str| {
        json!({"event": "pusher:signin", "data": {"auth": auth, "user_data": user_data}})
            .to_string()
    };
    ws.send_text(&signin(&forged)).await.unwrap();
    let error = next_event(&mut ws, "pusher:error").await;
    assert_eq!(error["data"]["code"], 4009);
    let good = format!(
        "{KEY}:{}",
        sign(SECRET, &format!("{socket_id}::user::{user_data}"))
    );
    ws.send_text(&signin(&good)).await.unwrap();
    next_event(&mut ws, "pusher:signin_success").await;

    // Without the /apps/{id} prefix, as the Python SDK sends it: the signing key names the app.
    let (status, body) = signed(
        &server,
        "POST",
        "/users/u1/terminate_connections",
        "",
        Some(&json!({})),
        SECRET,
        now(),
        false,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (closed, _) = ws.wait_close(WAIT).await.unwrap();
    assert_eq!(closed, Some(4009));
    server.stop().await;
}

#[tokio::test]
async fn client_events_need_the_app_switch_and_a_silent_client_is_closed_with_4201() {
    let server = server_with("[limits]\nping_interval = 1\n").await;
    // The "quiet" app leaves enable_client_events at its default: off.
    let url = server.ws_url("/app/quiet-key?protocol=7");
    let mut ws = WsClient::open(&url, &[]).await.unwrap();
    let established = next_event(&mut ws, "pusher:connection_established").await;
    let data: Value = serde_json::from_str(established["data"].as_str().unwrap()).unwrap();
    let socket_id = data["socket_id"].as_str().unwrap();
    let auth = format!(
        "quiet-key:{}",
        sign("quiet", &format!("{socket_id}:private-room"))
    );
    ws.send_text(
        &json!({"event": "pusher:subscribe", "data": {"channel": "private-room", "auth": auth}})
            .to_string(),
    )
    .await
    .unwrap();
    next_event(&mut ws, "pusher_internal:subscription_succeeded").await;
    let mut native = server.connect_as("n").await;
    native.subscribe("quiet:private-room").await.unwrap();
    ws.send_text(&json!({"event": "client-x", "channel": "private-room", "data": {}}).to_string())
        .await
        .unwrap();
    let error = next_event(&mut ws, "pusher:error").await;
    assert!(
        error["data"]["message"]
            .as_str()
            .unwrap()
            .contains("not enabled")
    );
    assert!(
        native
            .next_message("quiet:private-room", Duration::from_millis(300))
            .await
            .is_err(),
        "nothing was published"
    );

    // Not reading means not answering the server's pings (every second here): after two
    // silent intervals the server closes with 4201, which tells pusher-js to reconnect.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let (closed, _) = ws.wait_close(WAIT).await.unwrap();
    assert_eq!(closed, Some(4201));
    server.stop().await;
}

#[tokio::test]
async fn max_connections_refuses_with_4004_until_a_slot_frees() {
    let server = server().await;
    let url = server.ws_url("/app/one-key?protocol=7");
    let mut first = WsClient::open(&url, &[]).await.unwrap();
    next_event(&mut first, "pusher:connection_established").await;
    let mut second = WsClient::open(&url, &[]).await.unwrap();
    let error = next_event(&mut second, "pusher:error").await;
    assert_eq!(error["data"]["code"], 4004);
    assert_eq!(second.wait_close(WAIT).await.unwrap().0, Some(4004));
    first.close().await.unwrap();
    // The slot frees once the first connection is gone.
    let mut third = None;
    for _ in 0..50 {
        let mut ws = WsClient::open(&url, &[]).await.unwrap();
        let frame = ws.next_frame(WAIT).await.unwrap();
        if frame["event"] == "pusher:connection_established" {
            third = Some(ws);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(third.is_some(), "a connection is accepted again");
    server.stop().await;
}

/// Two nodes on one Redis: a Pusher app spans them like one server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pusher_app_on_two_redis_nodes_acts_as_one_server() {
    let prefix = format!("sbtest-pusher-{}", std::process::id());
    // The app shares the default namespace: its public channels need it open to anonymous
    // readers.
    let engine = format!(
        "[engine]\nkind = \"redis\"\nprefix = \"{prefix}\"\nnode_ttl = 2\n\
         [default_namespace]\nallow_anonymous = true\n"
    );
    let (a, b) = (server_with(&engine).await, server_with(&engine).await);

    let (mut ws, socket_id) = pusher_client(&b).await;
    ws.send_text(&json!({"event": "pusher:subscribe", "data": {"channel": "spread"}}).to_string())
        .await
        .unwrap();
    next_event(&mut ws, "pusher_internal:subscription_succeeded").await;

    // Triggered on A, received on B.
    let event = json!({"name": "hop", "channel": "spread", "data": "across"});
    let path = format!("/apps/{APP_ID}/events");
    let (status, _) = signed(&a, "POST", &path, "", Some(&event), SECRET, now(), false).await;
    assert_eq!(status, 200);
    let hop = next_event(&mut ws, "hop").await;
    assert_eq!(hop["data"], "across");

    // A counts B's subscriber.
    let path = format!("/apps/{APP_ID}/channels/spread");
    let extra = "info=subscription_count";
    let (status, body) = signed(&a, "GET", &path, extra, None, SECRET, now(), false).await;
    assert_eq!(status, 200, "{body}");
    let info: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(info["occupied"], true, "{info}");
    assert_eq!(info["subscription_count"], 1, "{info}");
    let path = format!("/apps/{APP_ID}/channels");
    let (_, body) = signed(&a, "GET", &path, "", None, SECRET, now(), false).await;
    let listed: Value = serde_json::from_str(&body).unwrap();
    assert!(listed["channels"]["spread"].is_object(), "{listed}");

    // A user signed in on B is terminated through A.
    let user_data = r#"{"id":"roamer"}"#;
    let auth = format!(
        "{KEY}:{}",
        sign(SECRET, &format!("{socket_id}::user::{user_data}"))
    );
    ws.send_text(
        &json!({"event": "pusher:signin", "data": {"auth": auth, "user_data": user_data}})
            .to_string(),
    )
    .await
    .unwrap();
    next_event(&mut ws, "pusher:signin_success").await;
    let path = format!("/apps/{APP_ID}/users/roamer/terminate_connections");
    let (status, _) = signed(
        &a,
        "POST",
        &path,
        "",
        Some(&json!({})),
        SECRET,
        now(),
        false,
    )
    .await;
    assert_eq!(status, 200);
    let (closed, _) = ws.wait_close(WAIT).await.unwrap();
    assert_eq!(closed, Some(4009));

    clear_redis(&prefix);
}

/// A webhook endpoint: a plain HTTP/1.1 listener that answers 200 and keeps the events of
/// every request body.
struct WebhookReceiver {
    url: String,
    events: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
}

impl WebhookReceiver {
    async fn start() -> WebhookReceiver {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = events.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let kept = kept.clone();
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 4096];
                    loop {
                        let n = socket.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        request.extend_from_slice(&buf[..n]);
                        let text = String::from_utf8_lossy(&request).into_owned();
                        let Some((head, body)) = text.split_once("\r\n\r\n") else {
                            continue;
                        };
                        let length: usize = head
                            .lines()
                            .find_map(|l| {
                                let (name, value) = l.split_once(':')?;
                                name.eq_ignore_ascii_case("content-length")
                                    .then(|| value.trim().parse().ok())?
                            })
                            .unwrap_or(0);
                        if body.len() < length {
                            continue;
                        }
                        let body: Value = serde_json::from_str(body).unwrap();
                        let events = body["events"].as_array().cloned().unwrap_or_default();
                        kept.lock().unwrap().extend(events);
                        let answer =
                            "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
                        let _ = socket.write_all(answer.as_bytes()).await;
                        return;
                    }
                });
            }
        });
        WebhookReceiver { url, events }
    }

    /// The names of the events received for `channel`, in order.
    fn of(&self, channel: &str) -> Vec<String> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e["channel"] == channel)
            .map(|e| e["name"].as_str().unwrap_or("").to_owned())
            .collect()
    }
}

async fn subscribe(ws: &mut WsClient, channel: &str) {
    ws.send_text(&json!({"event": "pusher:subscribe", "data": {"channel": channel}}).to_string())
        .await
        .unwrap();
    ws.next_where(WAIT, |f| {
        f["event"] == "pusher_internal:subscription_succeeded" && f["channel"] == channel
    })
    .await
    .unwrap();
}

/// Two nodes on one Redis report each channel's occupancy once, as one server would: the
/// node that held it first reports `channel_occupied`, and `channel_vacated` waits for the
/// last node to let go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn occupancy_webhooks_of_two_redis_nodes_are_reported_once() {
    let receiver = WebhookReceiver::start().await;
    let prefix = format!("sbtest-pusher-hooks-{}", std::process::id());
    let config = format!(
        "{}\n[engine]\nkind = \"redis\"\nprefix = \"{prefix}\"\nnode_ttl = 2\n\
         [default_namespace]\nallow_anonymous = true\n\
         [[pusher.apps]]\nid = \"{APP_ID}\"\nkey = \"{KEY}\"\nsecret = \"{SECRET}\"\n\
         [[pusher.apps.webhooks]]\nurl = \"{}\"\nevents = [\"channel_occupied\", \"channel_vacated\"]\n",
        auth_toml(),
        receiver.url
    );
    let (a, b) = (
        TestServer::with_config(&config).await,
        TestServer::with_config(&config).await,
    );
    let settle = webhooks_delay() + Duration::from_secs(1);

    // A holds "relay" first, then B joins; A leaves while B still holds it, then B leaves.
    let (mut on_a, _) = pusher_client(&a).await;
    subscribe(&mut on_a, "relay").await;
    wait_for(|| receiver.of("relay").len() == 1, "occupied").await;
    let (mut on_b, _) = pusher_client(&b).await;
    subscribe(&mut on_b, "relay").await;
    let _ = on_a.close().await;
    tokio::time::sleep(settle).await;
    assert_eq!(
        receiver.of("relay"),
        ["channel_occupied"],
        "B joining and A leaving"
    );
    let _ = on_b.close().await;
    wait_for(|| receiver.of("relay").len() == 2, "vacated").await;
    assert_eq!(
        receiver.of("relay"),
        ["channel_occupied", "channel_vacated"]
    );

    // Both nodes occupy "race" at once: one of them reports it.
    let (mut first, _) = pusher_client(&a).await;
    let (mut second, _) = pusher_client(&b).await;
    tokio::join!(
        subscribe(&mut first, "race"),
        subscribe(&mut second, "race")
    );
    wait_for(|| !receiver.of("race").is_empty(), "occupied").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(receiver.of("race"), ["channel_occupied"]);

    a.stop().await;
    b.stop().await;
    clear_redis(&prefix);
}

fn webhooks_delay() -> Duration {
    switchboard_server::pusher::webhooks::LEAVE_DELAY
}

/// Waits (past the delay webhooks wait for) until `check` holds.
async fn wait_for(check: impl Fn() -> bool, what: &str) {
    let within = webhooks_delay() + Duration::from_secs(5);
    eventually(within, &format!("a {what} webhook"), || {
        let done = check();
        async move { done }
    })
    .await;
}

fn clear_redis(prefix: &str) {
    if let Ok(mut redis) =
        redis::Client::open("redis://127.0.0.1:6379").and_then(|c| c.get_connection())
    {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}:*"))
            .query(&mut redis)
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: redis::RedisResult<()> = redis::cmd("DEL").arg(keys).query(&mut redis);
        }
    }
}
