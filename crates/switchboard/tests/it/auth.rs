//! Identity and permissions (PROTOCOL.md §2, §3, §7): connection tokens given in the URL, in a
//! header or in a `connect` frame; anonymous clients; every refusal; live expiry and `refresh`;
//! RS256/ES256 tokens; subscribe/publish claims, personal `#user` channels and namespace
//! overrides. Every test runs its own server and talks to it over real sockets.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::common::*;
use serde_json::{Value, json};
use switchboard_client::{Error, WsClient};
use switchboard_core::unix_now;
use switchboard_server::auth::{Audience, TokenClaims, mint_hs256};

// ---------------------------------------------------------------------------------------------
// helpers

/// An HS256 token for `user` (test secret) with these patterns and this expiry.
fn token_exp(user: &str, subscribe: &[&str], publish: &[&str], exp: u64) -> String {
    token_with(TokenClaims {
        sub: Some(user.into()),
        exp: Some(exp),
        subscribe: Some(subscribe.iter().map(|s| s.to_string()).collect()),
        publish: Some(publish.iter().map(|s| s.to_string()).collect()),
        ..TokenClaims::default()
    })
}

/// A token for `user` that expired a minute ago (correctly signed).
fn expired_token(user: &str) -> String {
    token_exp(user, &["*"], &["*"], unix_now() - 60)
}

/// The `[auth]` table of [`auth_toml`] plus `allow_anonymous`.
fn auth_toml_anonymous(allow: bool) -> String {
    format!("{}allow_anonymous = {allow}\n", auth_toml())
}

/// Opens `/ws` at `path_and_query` with `headers` and expects the upgrade to be refused;
/// returns the HTTP status and the `code` of the contract's error body.
async fn refused_upgrade(
    server: &TestServer,
    path_and_query: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    match WsClient::open(&server.ws_url(path_and_query), headers).await {
        Err(Error::Server { code, status, .. }) => {
            (status.expect("an HTTP refusal has a status"), code)
        }
        Ok(client) => panic!("upgrade to {path_and_query} was accepted: {client:?}"),
        Err(other) => panic!("upgrade to {path_and_query} failed without an HTTP error: {other}"),
    }
}

/// Asserts that `result` is an error frame answer with this contract code.
fn assert_code<T: std::fmt::Debug>(result: switchboard_client::Result<T>, code: &str) {
    assert_eq!(error_code(result), code);
}

/// The connection is alive and usable: a ping gets its pong.
async fn assert_pong(client: &mut WsClient) {
    let pong = client.ping().await.expect("ping is answered");
    assert_eq!(pong["type"], "pong", "{pong}");
}

/// Publishes `data` to `channel` through the server API and expects `client` to receive it.
async fn assert_receives(server: &TestServer, client: &mut WsClient, channel: &str, data: Value) {
    let published = server.api().publish(channel, &data).await.unwrap();
    let message = client.next_message(channel, WAIT).await.unwrap();
    assert_eq!(message["data"], data);
    assert_eq!(message["offset"], published["offset"]);
}

/// Whether `frame` answers a command (rather than being a push such as `join`).
fn is_answer(frame: &Value) -> bool {
    matches!(frame["type"].as_str(), Some("reply" | "pong" | "error"))
}

/// Asserts that the next answer frame is `{"type":"error","id":id,"code":code,...}`.
async fn expect_error_frame(client: &mut WsClient, id: u64, code: &str) {
    let frame = client.next_where(WAIT, is_answer).await.unwrap();
    assert_eq!(frame["type"], "error", "{frame}");
    assert_eq!(frame["id"], id, "{frame}");
    assert_eq!(frame["code"], code, "{frame}");
    assert!(
        frame["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{frame}"
    );
}

/// Waits for the close; only `disconnect` frames of `code` may come before it. Returns the
/// WebSocket close code.
async fn expect_close_after(client: &mut WsClient, disconnect_code: &str) -> Option<u16> {
    let (close, _) = client.wait_close(WAIT).await.unwrap();
    while let Ok(frame) = client.next_frame(Duration::ZERO).await {
        assert_eq!(frame["type"], "disconnect", "unexpected frame {frame}");
        assert_eq!(frame["code"], disconnect_code, "{frame}");
    }
    close
}

/// The next `disconnect` push (other pushes such as `join` are left buffered).
async fn next_disconnect(
    client: &mut WsClient,
    timeout: Duration,
) -> switchboard_client::Result<Value> {
    client
        .next_where(timeout, |f| f["type"] == "disconnect")
        .await
}

/// Time left until the Unix second `t` (zero if past).
fn until_unix(t: u64) -> Duration {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    Duration::from_secs(t).saturating_sub(now)
}

/// Number of open client connections according to `/metrics`.
async fn open_connections(server: &TestServer) -> f64 {
    server.metric("switchboard_connections").await
}

// ---------------------------------------------------------------------------------------------
// RS256 / ES256: key pairs made with the `openssl` command, tokens signed with it too
// (jsonwebtoken is not a dependency this test crate can name).

struct KeyPair {
    private: PathBuf,
    public_path: PathBuf,
    public_pem: String,
}

fn openssl(args: &[&str], input: Option<&[u8]>) -> Vec<u8> {
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the openssl command is installed");
    {
        let mut stdin = child.stdin.take().unwrap();
        if let Some(input) = input {
            stdin.write_all(input).unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn generate(name: &str, genpkey_args: &[&str]) -> KeyPair {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("auth-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let private = dir.join(format!("{name}.key.pem"));
    let public_path = dir.join(format!("{name}.pub.pem"));
    let private_s = private.to_str().unwrap();
    let public_s = public_path.to_str().unwrap();
    let mut args = vec!["genpkey"];
    args.extend_from_slice(genpkey_args);
    args.extend_from_slice(&["-out", private_s]);
    openssl(&args, None);
    openssl(
        &["pkey", "-in", private_s, "-pubout", "-out", public_s],
        None,
    );
    let public_pem = std::fs::read_to_string(&public_path).unwrap();
    assert!(public_pem.starts_with("-----BEGIN PUBLIC KEY-----"));
    KeyPair {
        private,
        public_path,
        public_pem,
    }
}

const RSA_ARGS: &[&str] = &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"];
const EC_ARGS: &[&str] = &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"];

fn rsa_key() -> &'static KeyPair {
    static KEY: OnceLock<KeyPair> = OnceLock::new();
    KEY.get_or_init(|| generate("rsa", RSA_ARGS))
}

fn other_rsa_key() -> &'static KeyPair {
    static KEY: OnceLock<KeyPair> = OnceLock::new();
    KEY.get_or_init(|| generate("rsa-other", RSA_ARGS))
}

fn ec_key() -> &'static KeyPair {
    static KEY: OnceLock<KeyPair> = OnceLock::new();
    KEY.get_or_init(|| generate("ec", EC_ARGS))
}

fn other_ec_key() -> &'static KeyPair {
    static KEY: OnceLock<KeyPair> = OnceLock::new();
    KEY.get_or_init(|| generate("ec-other", EC_ARGS))
}

fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &b)| acc | (u32::from(b) << (16 - 8 * i)));
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// An ECDSA signature in DER (`SEQUENCE { INTEGER r, INTEGER s }`) as JWS wants it: r || s,
/// 32 bytes each.
fn ecdsa_der_to_raw(der: &[u8]) -> Vec<u8> {
    assert_eq!(der[0], 0x30, "DER sequence");
    let mut at = 2;
    let mut raw = Vec::with_capacity(64);
    for _ in 0..2 {
        assert_eq!(der[at], 0x02, "DER integer");
        let len = usize::from(der[at + 1]);
        let mut int = &der[at + 2..at + 2 + len];
        while int.len() > 32 && int[0] == 0 {
            int = &int[1..];
        }
        assert!(int.len() <= 32);
        raw.extend(std::iter::repeat_n(0u8, 32 - int.len()));
        raw.extend_from_slice(int);
        at += 2 + len;
    }
    raw
}

/// A JWT with `claims`, signed by `key` with `alg` (`RS256` or `ES256`).
fn sign_jwt(alg: &str, key: &KeyPair, claims: &Value) -> String {
    let header = json!({"alg": alg, "typ": "JWT"});
    let input = format!(
        "{}.{}",
        base64url(header.to_string().as_bytes()),
        base64url(claims.to_string().as_bytes())
    );
    let signature = openssl(
        &[
            "dgst",
            "-sha256",
            "-binary",
            "-sign",
            key.private.to_str().unwrap(),
        ],
        Some(input.as_bytes()),
    );
    let signature = match alg {
        "ES256" => ecdsa_der_to_raw(&signature),
        _ => signature,
    };
    format!("{input}.{}", base64url(&signature))
}

fn claims_json(user: &str, exp: u64) -> Value {
    json!({"sub": user, "exp": exp, "subscribe": ["chat:*"], "publish": []})
}

/// A token signed with the public key's PEM text as an HMAC secret: the algorithm-confusion
/// forgery against servers that verify HS256 with whatever key they have.
fn hs256_forged_with_public_key(key: &KeyPair, user: &str) -> String {
    mint_hs256(
        &key.public_pem,
        &TokenClaims {
            sub: Some(user.into()),
            exp: Some(unix_now() + 3600),
            subscribe: Some(vec!["*".into()]),
            ..TokenClaims::default()
        },
    )
}

// ---------------------------------------------------------------------------------------------
// ways in

#[tokio::test]
async fn token_in_query_connects_at_once() {
    let server = TestServer::start().await;
    let token = token("alice", &["chat:*"], &[]);
    let (mut client, connected) = server.connect(Some(&token)).await;
    assert_eq!(connected["type"], "connected");
    assert_eq!(connected["user"], "alice");
    assert!(
        connected["client"].as_str().is_some_and(|c| !c.is_empty()),
        "{connected}"
    );
    let reply = client.subscribe("chat:a").await.unwrap();
    assert_eq!(reply["channel"], "chat:a");
    assert_receives(&server, &mut client, "chat:a", json!("hello")).await;
    server.stop().await;
}

#[tokio::test]
async fn token_in_authorization_header_connects_at_once() {
    let server = TestServer::start().await;
    let bearer = format!("Bearer {}", token("bob", &["chat:*"], &[]));
    let mut client = WsClient::open(&server.ws_url("/ws"), &[("Authorization", &bearer)])
        .await
        .unwrap();
    let connected = client.next_frame(WAIT).await.unwrap();
    assert_eq!(connected["type"], "connected", "{connected}");
    assert_eq!(connected["user"], "bob");
    client.subscribe("chat:a").await.unwrap();
    assert_receives(&server, &mut client, "chat:a", json!({"n": 1})).await;
    server.stop().await;
}

#[tokio::test]
async fn token_in_connect_frame_when_upgrade_has_none() {
    let server = TestServer::start().await;
    let mut client = WsClient::open(&server.ws_url("/ws"), &[]).await.unwrap();
    // Without a token the server waits for the connect frame and sends nothing.
    assert!(matches!(
        client.next_frame(QUIET).await,
        Err(Error::Timeout(_))
    ));
    let token = token("carol", &["chat:*"], &["chat:*"]);
    client
        .send_text(&json!({"type": "connect", "id": 7, "token": token}).to_string())
        .await
        .unwrap();
    let connected = client.next_frame(WAIT).await.unwrap();
    assert_eq!(connected["type"], "connected", "{connected}");
    assert_eq!(connected["id"], 7);
    assert_eq!(connected["user"], "carol");
    assert!(connected["client"].as_str().is_some_and(|c| !c.is_empty()));
    client.subscribe("chat:a").await.unwrap();
    let published = client.publish("chat:a", json!("mine")).await.unwrap();
    assert_eq!(published["offset"], 1);
    let message = client.next_message("chat:a", WAIT).await.unwrap();
    assert_eq!(message["data"], "mine");
    // The client library's connect_with_frame path works too.
    let (_other, connected) = WsClient::connect_with_frame(&server.base, &token)
        .await
        .unwrap();
    assert_eq!(connected["user"], "carol");
    server.stop().await;
}

#[tokio::test]
async fn anonymous_clients_connect_and_may_do_anything_when_allowed() {
    let toml = format!(
        "{}\n[[namespace]]\nname = \"private\"\nallow_anonymous = false\n",
        auth_toml_anonymous(true)
    );
    let server = TestServer::with_config(&toml).await;
    let (mut anon, connected) = server.connect(None).await;
    assert_eq!(connected["type"], "connected");
    assert_eq!(connected["user"], "");
    for channel in ["lobby", "chat:x", "news:y"] {
        let reply = anon.subscribe(channel).await.unwrap();
        assert_eq!(reply["channel"], channel);
    }
    let published = anon
        .publish("chat:x", json!({"from": "anon"}))
        .await
        .unwrap();
    assert_eq!(published["offset"], 1);
    let message = anon.next_message("chat:x", WAIT).await.unwrap();
    assert_eq!(message["data"], json!({"from": "anon"}));
    anon.publish("unsubscribed:z", json!(1)).await.unwrap();
    let presence = anon.presence("chat:x").await.unwrap();
    assert_eq!(presence["members"].as_array().unwrap().len(), 1);
    let history = history_of(&mut anon, "chat:x").await;
    assert_eq!(history["messages"].as_array().unwrap().len(), 1);

    // ...except in a namespace that refuses anonymous clients.
    assert_code(anon.subscribe("private:x").await, "forbidden");
    assert_code(anon.publish("private:x", json!(1)).await, "forbidden");
    assert_code(anon.presence("private:x").await, "forbidden");
    assert_code(
        anon.request(json!({"type": "history", "channel": "private:x"}))
            .await,
        "forbidden",
    );
    assert_pong(&mut anon).await;

    // A token still identifies its user, and claims still open the private namespace.
    let token = token("alice", &["private:*"], &[]);
    let (mut alice, connected) = server.connect(Some(&token)).await;
    assert_eq!(connected["user"], "alice");
    alice.subscribe("private:x").await.unwrap();
    // A bad token is refused, not downgraded to anonymous.
    assert_eq!(
        refused_upgrade(
            &server,
            &format!("/ws?token={}", forged_token("alice")),
            &[]
        )
        .await,
        (401, "unauthorized".to_string())
    );
    server.stop().await;
}

#[tokio::test]
async fn namespace_allow_anonymous_admits_tokenless_clients_for_that_namespace_only() {
    let toml = format!(
        "{}\n[[namespace]]\nname = \"open\"\nallow_anonymous = true\n",
        auth_toml()
    );
    let server = TestServer::with_config(&toml).await;
    let mut anon = WsClient::open(&server.ws_url("/ws"), &[]).await.unwrap();
    // Sent at once: no connect frame is needed.
    let connected = anon.next_frame(WAIT).await.unwrap();
    assert_eq!(connected["type"], "connected", "{connected}");
    assert_eq!(connected["user"], "");
    anon.subscribe("open:news").await.unwrap();
    assert_receives(&server, &mut anon, "open:news", json!("public")).await;
    assert_code(anon.subscribe("lobby").await, "forbidden");
    assert_code(anon.subscribe("other:x").await, "forbidden");
    assert_code(anon.presence("other:x").await, "forbidden");
    assert_code(anon.publish("other:x", json!(1)).await, "forbidden");
    assert_pong(&mut anon).await;
    server.stop().await;
}

#[tokio::test]
async fn info_claim_is_shown_in_presence() {
    let server = TestServer::start().await;
    let token = token_with(TokenClaims {
        sub: Some("alice".into()),
        exp: Some(unix_now() + 3600),
        info: Some(serde_json::value::RawValue::from_string(r#"{"name":"Alice"}"#.into()).unwrap()),
        subscribe: Some(vec!["chat:*".into()]),
        ..TokenClaims::default()
    });
    let (mut client, connected) = server.connect(Some(&token)).await;
    client.subscribe("chat:a").await.unwrap();
    let presence = client.presence("chat:a").await.unwrap();
    assert_eq!(
        presence["members"],
        json!([{"client": connected["client"], "user": "alice", "info": {"name": "Alice"}}])
    );
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// refusals

#[tokio::test]
async fn bad_tokens_at_the_upgrade_are_refused_with_401() {
    let server = TestServer::start().await;
    let unauthorized = (401, "unauthorized".to_string());
    let forged = forged_token("alice");
    let unsigned = format!(
        "{}.{}.",
        base64url(br#"{"alg":"none","typ":"JWT"}"#),
        base64url(
            json!({"sub": "alice", "subscribe": ["*"]})
                .to_string()
                .as_bytes()
        )
    );
    // A correct token whose payload was changed after signing.
    let good = token("alice", &["chat:*"], &[]);
    let parts: Vec<&str> = good.split('.').collect();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        base64url(
            json!({"sub": "alice", "exp": unix_now() + 3600, "subscribe": ["*"]})
                .to_string()
                .as_bytes()
        ),
        parts[2]
    );
    for bad in ["garbage", "a.b.c", forged.as_str(), &unsigned, &tampered] {
        assert_eq!(
            refused_upgrade(&server, &format!("/ws?token={bad}"), &[]).await,
            unauthorized,
            "query token {bad}"
        );
        let bearer = format!("Bearer {bad}");
        assert_eq!(
            refused_upgrade(&server, "/ws", &[("Authorization", &bearer)]).await,
            unauthorized,
            "header token {bad}"
        );
    }
    let expired = expired_token("alice");
    assert_eq!(
        refused_upgrade(&server, &format!("/ws?token={expired}"), &[]).await,
        (401, "token_expired".to_string())
    );
    let bearer = format!("Bearer {expired}");
    assert_eq!(
        refused_upgrade(&server, "/ws", &[("Authorization", &bearer)]).await,
        (401, "token_expired".to_string())
    );
    // Nothing else happened: no connection was opened.
    assert_eq!(open_connections(&server).await, 0.0);
    server.stop().await;
}

#[tokio::test]
async fn a_token_before_its_nbf_is_refused_at_the_upgrade_and_in_connect() {
    let server = TestServer::start().await;
    let claims = |nbf: u64| TokenClaims {
        sub: Some("nina".into()),
        nbf: Some(nbf),
        subscribe: Some(vec!["*".into()]),
        ..TokenClaims::default()
    };
    let early = token_with(claims(unix_now() + 120));
    assert_eq!(
        refused_upgrade(&server, &format!("/ws?token={early}"), &[]).await,
        (401, "unauthorized".to_string())
    );
    assert_code(
        WsClient::connect_with_frame(&server.base, &early).await,
        "unauthorized",
    );
    // Once its time has come, the same kind of token is good.
    let ready = token_with(claims(unix_now() - 1));
    server.connect(Some(&ready)).await;
    server.stop().await;
}

#[tokio::test]
async fn audience_and_issuer_are_required_when_configured() {
    let server = TestServer::with_config(&format!(
        "{}audience = \"switchboard\"\nissuer = \"https://auth.example\"\n",
        auth_toml()
    ))
    .await;
    let with = |aud: Option<&str>, iss: Option<&str>| {
        token_with(TokenClaims {
            sub: Some("olga".into()),
            aud: aud.map(|a| Audience::One(a.into())),
            iss: iss.map(Into::into),
            ..TokenClaims::default()
        })
    };
    let unauthorized = (401, "unauthorized".to_string());
    for (bad, what) in [
        (
            with(Some("billing"), Some("https://auth.example")),
            "wrong aud",
        ),
        (with(None, Some("https://auth.example")), "no aud"),
        (
            with(Some("switchboard"), Some("https://evil.example")),
            "wrong iss",
        ),
        (with(Some("switchboard"), None), "no iss"),
    ] {
        assert_eq!(
            refused_upgrade(&server, &format!("/ws?token={bad}"), &[]).await,
            unauthorized,
            "{what}"
        );
    }
    let good = with(Some("switchboard"), Some("https://auth.example"));
    server.connect(Some(&good)).await;
    server.stop().await;
}

#[tokio::test]
async fn bad_token_in_connect_frame_gets_error_then_close_4003() {
    let server = TestServer::start().await;
    for (id, bad) in [(3, "garbage".to_string()), (4, forged_token("alice"))] {
        let mut client = WsClient::open(&server.ws_url("/ws"), &[]).await.unwrap();
        client
            .send_text(&json!({"type": "connect", "id": id, "token": bad}).to_string())
            .await
            .unwrap();
        expect_error_frame(&mut client, id, "unauthorized").await;
        assert_eq!(
            expect_close_after(&mut client, "unauthorized").await,
            Some(4003)
        );
    }
    assert_eq!(open_connections(&server).await, 0.0);
    server.stop().await;
}

#[tokio::test]
async fn expired_token_in_connect_frame_gets_token_expired_then_close_4001() {
    let server = TestServer::start().await;
    let mut client = WsClient::open(&server.ws_url("/ws"), &[]).await.unwrap();
    let frame = json!({"type": "connect", "id": 5, "token": expired_token("alice")});
    client.send_text(&frame.to_string()).await.unwrap();
    expect_error_frame(&mut client, 5, "token_expired").await;
    assert_eq!(
        expect_close_after(&mut client, "token_expired").await,
        Some(4001)
    );
    server.stop().await;
}

#[tokio::test]
async fn first_frame_other_than_connect_gets_unauthorized_then_close_4003() {
    let server = TestServer::start().await;
    for (id, frame) in [
        (
            8,
            json!({"type": "subscribe", "id": 8, "channel": "chat:a"}),
        ),
        (9, json!({"type": "ping", "id": 9})),
    ] {
        let mut client = WsClient::open(&server.ws_url("/ws"), &[]).await.unwrap();
        client.send_text(&frame.to_string()).await.unwrap();
        expect_error_frame(&mut client, id, "unauthorized").await;
        assert_eq!(
            expect_close_after(&mut client, "unauthorized").await,
            Some(4003)
        );
    }
    // A first frame that is not even JSON: an error frame, then the same close.
    let mut client = WsClient::open(&server.ws_url("/ws"), &[]).await.unwrap();
    client.send_text("hello?").await.unwrap();
    let error = client.next_frame(WAIT).await.unwrap();
    assert_eq!(error["type"], "error", "{error}");
    let (close, _) = client.wait_close(WAIT).await.unwrap();
    assert_eq!(close, Some(4003));
    assert_eq!(open_connections(&server).await, 0.0);
    server.stop().await;
}

#[tokio::test]
async fn no_connect_frame_within_connect_timeout_gets_disconnect_then_close_4003() {
    let toml = format!("{}\n[limits]\nconnect_timeout = 1\n", auth_toml());
    let server = TestServer::with_config(&toml).await;
    let started = std::time::Instant::now();
    let mut client = WsClient::open(&server.ws_url("/ws"), &[]).await.unwrap();
    let frame = client.next_frame(Duration::from_secs(4)).await.unwrap();
    assert_eq!(frame["type"], "disconnect", "{frame}");
    assert_eq!(frame["code"], "unauthorized", "{frame}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "disconnected too early, after {waited:?}"
    );
    let (close, _) = client.wait_close(WAIT).await.unwrap();
    assert_eq!(close, Some(4003));
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// live expiry and refresh

#[tokio::test]
async fn connection_is_closed_with_token_expired_when_its_token_expires() {
    let server = TestServer::start().await;
    let exp = unix_now() + 2;
    let (mut client, _) = server
        .connect(Some(&token_exp("alice", &["*"], &[], exp)))
        .await;
    client.subscribe("chat:a").await.unwrap();
    assert_pong(&mut client).await;
    let frame = next_disconnect(&mut client, until_unix(exp) + WAIT)
        .await
        .unwrap();
    assert_eq!(frame["type"], "disconnect", "{frame}");
    assert_eq!(frame["code"], "token_expired", "{frame}");
    assert!(
        unix_now() >= exp,
        "closed before the token expired ({} < {exp})",
        unix_now()
    );
    let (close, _) = client.wait_close(WAIT).await.unwrap();
    assert_eq!(close, Some(4001));
    server.stop().await;
}

#[tokio::test]
async fn connection_authenticated_by_connect_frame_also_expires() {
    let server = TestServer::start().await;
    let exp = unix_now() + 2;
    let (mut client, connected) =
        WsClient::connect_with_frame(&server.base, &token_exp("alice", &["*"], &[], exp))
            .await
            .unwrap();
    assert_eq!(connected["user"], "alice");
    let frame = next_disconnect(&mut client, until_unix(exp) + WAIT)
        .await
        .unwrap();
    assert_eq!(frame["type"], "disconnect", "{frame}");
    assert_eq!(frame["code"], "token_expired", "{frame}");
    let (close, _) = client.wait_close(WAIT).await.unwrap();
    assert_eq!(close, Some(4001));
    server.stop().await;
}

#[tokio::test]
async fn refresh_with_new_token_of_same_user_keeps_connection_past_old_exp() {
    let server = TestServer::start().await;
    let old_exp = unix_now() + 2;
    let (mut client, _) = server
        .connect(Some(&token_exp("alice", &["*"], &[], old_exp)))
        .await;
    client.subscribe("chat:a").await.unwrap();
    let new_exp = unix_now() + 3600;
    let reply = client
        .refresh(&token_exp("alice", &["*"], &[], new_exp))
        .await
        .unwrap();
    assert_eq!(reply["type"], "reply");
    assert_eq!(reply["exp"], new_exp);
    // Past the old expiry plus one check period: nothing happens.
    let quiet = until_unix(old_exp) + Duration::from_millis(1500);
    match next_disconnect(&mut client, quiet).await {
        Err(Error::Timeout(_)) => {}
        other => panic!("expected no disconnect after refresh, got {other:?}"),
    }
    assert!(unix_now() > old_exp);
    assert_pong(&mut client).await;
    assert_receives(&server, &mut client, "chat:a", json!("still here")).await;
    server.stop().await;
}

#[tokio::test]
async fn refresh_with_another_users_token_is_forbidden_and_does_not_extend() {
    let server = TestServer::start().await;
    let exp = unix_now() + 2;
    let (mut client, _) = server
        .connect(Some(&token_exp("alice", &["*"], &[], exp)))
        .await;
    let id = client
        .send(json!({"type": "refresh", "token": token("bob", &["*"], &["*"])}))
        .await
        .unwrap();
    expect_error_frame(&mut client, id, "forbidden").await;
    assert_pong(&mut client).await;
    // The refused refresh left the old expiry in force.
    let frame = next_disconnect(&mut client, until_unix(exp) + WAIT)
        .await
        .unwrap();
    assert_eq!(frame["type"], "disconnect", "{frame}");
    assert_eq!(frame["code"], "token_expired", "{frame}");
    let (close, _) = client.wait_close(WAIT).await.unwrap();
    assert_eq!(close, Some(4001));
    server.stop().await;
}

#[tokio::test]
async fn refresh_with_expired_or_forged_token_is_refused_and_connection_goes_on() {
    let server = TestServer::start().await;
    let mut client = server.connect_as("alice").await;
    client.subscribe("chat:a").await.unwrap();
    let id = client
        .send(json!({"type": "refresh", "token": expired_token("alice")}))
        .await
        .unwrap();
    expect_error_frame(&mut client, id, "token_expired").await;
    assert_pong(&mut client).await;
    for bad in [forged_token("alice"), "garbage".to_string()] {
        let id = client
            .send(json!({"type": "refresh", "token": bad}))
            .await
            .unwrap();
        expect_error_frame(&mut client, id, "unauthorized").await;
        assert_pong(&mut client).await;
    }
    assert_receives(&server, &mut client, "chat:a", json!("fine")).await;
    match next_disconnect(&mut client, QUIET).await {
        Err(Error::Timeout(_)) => {}
        other => panic!("expected no disconnect, got {other:?}"),
    }
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// RS256 and ES256

#[tokio::test]
async fn rs256_tokens_are_accepted_with_the_public_key() {
    let key = rsa_key();
    // Only a public key: HS256 must not fall back to it as an HMAC secret.
    let toml = format!(
        "[auth]\ntoken_public_key = \"\"\"\n{}\"\"\"\napi_key = \"{API_KEY}\"\n",
        key.public_pem
    );
    let server = TestServer::with_config(&toml).await;
    let token = sign_jwt("RS256", key, &claims_json("dave", unix_now() + 3600));
    let (mut client, connected) = server.connect(Some(&token)).await;
    assert_eq!(connected["user"], "dave");
    // The claims of the RS256 token are in force.
    client.subscribe("chat:a").await.unwrap();
    assert_code(client.subscribe("news:a").await, "forbidden");
    assert_receives(&server, &mut client, "chat:a", json!("rsa")).await;
    // In a header and in a connect frame as well.
    let bearer = format!("Bearer {token}");
    let mut by_header = WsClient::open(&server.ws_url("/ws"), &[("Authorization", &bearer)])
        .await
        .unwrap();
    assert_eq!(by_header.next_frame(WAIT).await.unwrap()["user"], "dave");
    let (_, connected) = WsClient::connect_with_frame(&server.base, &token)
        .await
        .unwrap();
    assert_eq!(connected["user"], "dave");
    server.stop().await;
}

#[tokio::test]
async fn rs256_forgeries_are_refused() {
    let key = rsa_key();
    let toml = format!(
        "[auth]\ntoken_public_key = \"\"\"\n{}\"\"\"\napi_key = \"{API_KEY}\"\n",
        key.public_pem
    );
    let server = TestServer::with_config(&toml).await;
    let claims = claims_json("dave", unix_now() + 3600);
    let unauthorized = (401, "unauthorized".to_string());
    let confused = hs256_forged_with_public_key(key, "dave");
    let other_key = sign_jwt("RS256", other_rsa_key(), &claims);
    let wrong_family = sign_jwt("ES256", ec_key(), &claims);
    let hs_with_test_secret = token("dave", &["*"], &["*"]);
    for bad in [&confused, &other_key, &wrong_family, &hs_with_test_secret] {
        assert_eq!(
            refused_upgrade(&server, &format!("/ws?token={bad}"), &[]).await,
            unauthorized,
            "{bad}"
        );
    }
    let expired = sign_jwt("RS256", key, &claims_json("dave", unix_now() - 60));
    assert_eq!(
        refused_upgrade(&server, &format!("/ws?token={expired}"), &[]).await,
        (401, "token_expired".to_string())
    );
    // The algorithm-confusion forgery in a connect frame: error, then close 4003.
    let mut client = WsClient::open(&server.ws_url("/ws"), &[]).await.unwrap();
    let frame = json!({"type": "connect", "id": 1, "token": confused});
    client.send_text(&frame.to_string()).await.unwrap();
    expect_error_frame(&mut client, 1, "unauthorized").await;
    assert_eq!(
        expect_close_after(&mut client, "unauthorized").await,
        Some(4003)
    );
    server.stop().await;
}

#[tokio::test]
async fn es256_tokens_are_accepted_with_a_public_key_file_and_forgeries_refused() {
    let key = ec_key();
    // The key as a file path this time, next to an HS256 secret.
    let toml = format!(
        "{}token_public_key = \"{}\"\n",
        auth_toml(),
        key.public_path.display()
    );
    let server = TestServer::with_config(&toml).await;
    let token = sign_jwt("ES256", key, &claims_json("erin", unix_now() + 3600));
    let (mut client, connected) = server.connect(Some(&token)).await;
    assert_eq!(connected["user"], "erin");
    client.subscribe("chat:a").await.unwrap();
    assert_code(client.subscribe("news:a").await, "forbidden");
    let (_, connected) = WsClient::connect_with_frame(&server.base, &token)
        .await
        .unwrap();
    assert_eq!(connected["user"], "erin");
    // HS256 with the configured secret still works alongside.
    let (_, connected) = server
        .connect(Some(&crate::common::token("hal", &[], &[])))
        .await;
    assert_eq!(connected["user"], "hal");

    let unauthorized = (401, "unauthorized".to_string());
    let confused = hs256_forged_with_public_key(key, "erin");
    let other_key = sign_jwt(
        "ES256",
        other_ec_key(),
        &claims_json("erin", unix_now() + 3600),
    );
    for bad in [&confused, &other_key] {
        assert_eq!(
            refused_upgrade(&server, &format!("/ws?token={bad}"), &[]).await,
            unauthorized,
            "{bad}"
        );
    }
    let expired = sign_jwt("ES256", key, &claims_json("erin", unix_now() - 60));
    assert_eq!(
        refused_upgrade(&server, &format!("/ws?token={expired}"), &[]).await,
        (401, "token_expired".to_string())
    );
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// permissions

#[tokio::test]
async fn subscribe_presence_and_history_need_a_matching_subscribe_pattern() {
    let server = TestServer::start().await;
    let token = token("alice", &["chat:*", "a*c", "news"], &[]);
    let (mut client, _) = server.connect(Some(&token)).await;
    for allowed in ["chat:room", "chat:", "abbc", "ac", "news"] {
        client.subscribe(allowed).await.unwrap();
        client.presence(allowed).await.unwrap();
        history_of(&mut client, allowed).await;
    }
    for refused in ["chatroom", "news2", "xnews", "abcd", "other:chat:room"] {
        let id = client
            .send(json!({"type": "subscribe", "channel": refused}))
            .await
            .unwrap();
        expect_error_frame(&mut client, id, "forbidden").await;
        assert_code(client.presence(refused).await, "forbidden");
        assert_code(
            client
                .request(json!({"type": "history", "channel": refused}))
                .await,
            "forbidden",
        );
    }
    // A token with no subscribe claim may subscribe to nothing.
    let (mut nothing, _) = server
        .connect(Some(&crate::common::token("bob", &[], &["*"])))
        .await;
    assert_code(nothing.subscribe("chat:room").await, "forbidden");
    // The refusals did not hurt the allowed subscriptions.
    assert_receives(&server, &mut client, "chat:room", json!(1)).await;
    server.stop().await;
}

#[tokio::test]
async fn client_publish_needs_a_matching_publish_pattern() {
    let server = TestServer::start().await;
    let (mut alice, _) = server
        .connect(Some(&token("alice", &["*"], &["chat:*"])))
        .await;
    alice.subscribe("chat:a").await.unwrap();
    alice.subscribe("news:a").await.unwrap();
    let reply = alice.publish("chat:a", json!("ok")).await.unwrap();
    assert_eq!(reply["offset"], 1);
    assert_eq!(
        alice.next_message("chat:a", WAIT).await.unwrap()["data"],
        "ok"
    );
    let id = alice
        .send(json!({"type": "publish", "channel": "news:a", "data": "no"}))
        .await
        .unwrap();
    expect_error_frame(&mut alice, id, "forbidden").await;
    // Nothing was published: the next message of news:a is offset 1.
    assert_receives(&server, &mut alice, "news:a", json!("api")).await;
    let history = server.api().history("news:a", None, None).await.unwrap();
    assert_eq!(history["messages"].as_array().unwrap().len(), 1);
    // Subscribe rights are not publish rights.
    let (mut reader, _) = server.connect(Some(&token("bob", &["*"], &[]))).await;
    assert_code(reader.publish("chat:a", json!("no")).await, "forbidden");
    server.stop().await;
}

#[tokio::test]
async fn namespace_allow_client_publish_overrides_claims() {
    let toml = format!(
        "{}\n[[namespace]]\nname = \"open\"\nallow_client_publish = true\n\
         [[namespace]]\nname = \"locked\"\nallow_client_publish = false\n",
        auth_toml()
    );
    let server = TestServer::with_config(&toml).await;
    // No publish claim at all, yet "open" lets anyone connected publish.
    let (mut reader, _) = server.connect(Some(&token("bob", &["*"], &[]))).await;
    reader.subscribe("open:x").await.unwrap();
    let reply = reader.publish("open:x", json!("by bob")).await.unwrap();
    assert_eq!(reply["offset"], 1);
    assert_eq!(
        reader.next_message("open:x", WAIT).await.unwrap()["data"],
        "by bob"
    );
    assert_code(reader.publish("plain:x", json!(1)).await, "forbidden");
    // Every publish claim, yet "locked" lets no client publish.
    let mut writer = server.connect_as("alice").await;
    writer.subscribe("locked:x").await.unwrap();
    assert_code(writer.publish("locked:x", json!("no")).await, "forbidden");
    writer.publish("plain:x", json!("yes")).await.unwrap();
    // The server API still publishes there.
    assert_receives(&server, &mut writer, "locked:x", json!("api")).await;
    server.stop().await;
}

#[tokio::test]
async fn namespace_allow_client_publish_applies_to_anonymous_clients_too() {
    let toml = format!(
        "{}\n[[namespace]]\nname = \"locked\"\nallow_client_publish = false\n\
         [[namespace]]\nname = \"open\"\nallow_client_publish = true\n",
        auth_toml_anonymous(true)
    );
    let server = TestServer::with_config(&toml).await;
    let (mut anon, _) = server.connect(None).await;
    anon.subscribe("locked:x").await.unwrap();
    assert_code(anon.publish("locked:x", json!(1)).await, "forbidden");
    anon.publish("open:x", json!(1)).await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn personal_channels_belong_to_their_user_only() {
    let toml = auth_toml_anonymous(true);
    let server = TestServer::with_config(&toml).await;
    // bob has no subscribe claim at all: his own channels are his anyway.
    let (mut bob, _) = server.connect(Some(&token("bob", &[], &[]))).await;
    for own in ["inbox#bob", "chat:dm#bob"] {
        bob.subscribe(own).await.unwrap();
        bob.presence(own).await.unwrap();
        history_of(&mut bob, own).await;
    }
    assert_receives(&server, &mut bob, "inbox#bob", json!("for bob")).await;
    assert_code(bob.subscribe("inbox#bobby").await, "forbidden");
    assert_code(bob.subscribe("inbox#alice").await, "forbidden");
    // alice may subscribe to everything, but not to bob's channels.
    let (mut alice, _) = server.connect(Some(&token("alice", &["*"], &["*"]))).await;
    for other in ["inbox#bob", "chat:dm#bob", "inbox#bo"] {
        let id = alice
            .send(json!({"type": "subscribe", "channel": other}))
            .await
            .unwrap();
        expect_error_frame(&mut alice, id, "forbidden").await;
        assert_code(alice.presence(other).await, "forbidden");
        assert_code(
            alice
                .request(json!({"type": "history", "channel": other}))
                .await,
            "forbidden",
        );
    }
    alice.subscribe("inbox#alice").await.unwrap();
    // Anonymous clients own no channel, even with anonymous access on.
    let (mut anon, connected) = server.connect(None).await;
    assert_eq!(connected["user"], "");
    for other in ["inbox#bob", "inbox#", "chat:x#"] {
        assert_code(anon.subscribe(other).await, "forbidden");
    }
    anon.subscribe("inbox").await.unwrap();
    server.stop().await;
}

/// `history` without `since` or `limit`, through the WebSocket; must be allowed.
async fn history_of(client: &mut WsClient, channel: &str) -> Value {
    let reply = client
        .request(json!({"type": "history", "channel": channel}))
        .await
        .unwrap_or_else(|e| panic!("history of {channel}: {e}"));
    assert!(reply["messages"].is_array(), "{reply}");
    reply
}
