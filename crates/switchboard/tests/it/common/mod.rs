//! Test harness: a real server on a free loopback port, in this process, driven over real
//! sockets by the same client library the CLI uses.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;
use switchboard_client::{ApiClient, WsClient};
use switchboard_server::Server;
use switchboard_server::auth::{TokenClaims, mint_hs256};
use switchboard_server::config::Config;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

mod raw_ws;
pub(crate) use raw_ws::*;

/// 32 bytes at least: the server refuses a shorter HMAC secret.
pub(crate) const SECRET: &str = "test-secret-0123456789abcdef-0123456789";
pub(crate) const API_KEY: &str = "test-api-key";
/// How long a test waits for something that should happen at once.
pub(crate) const WAIT: Duration = Duration::from_secs(5);
/// How long a test waits to be sure something does not happen.
pub(crate) const QUIET: Duration = Duration::from_millis(300);

/// The `[auth]` table most tests use.
pub(crate) fn auth_toml() -> String {
    format!("[auth]\ntoken_secret = \"{SECRET}\"\napi_key = \"{API_KEY}\"\n")
}

/// The error `Server::bind` gives for `config` (which must be refused).
pub(crate) async fn refused_at_startup(config: &str) -> String {
    let resolved = Config::from_toml(config)
        .unwrap()
        .with_listen(Some("127.0.0.1:0".into()))
        .resolve()
        .unwrap();
    match Server::bind(&resolved).await {
        Ok(_) => panic!("a server started with {config}"),
        Err(message) => message,
    }
}

pub(crate) struct TestServer {
    pub addr: SocketAddr,
    pub base: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    /// The binary in a process of its own (see [`TestServer::process`]), and its config's
    /// folder.
    process: Option<(std::process::Child, std::path::PathBuf)>,
}

impl TestServer {
    /// A server with token auth (HS256 with [`SECRET`]) and API key [`API_KEY`].
    pub(crate) async fn start() -> TestServer {
        Self::with_config(&auth_toml()).await
    }

    /// A server from a complete TOML config (`listen` is forced to a free port).
    pub(crate) async fn with_config(toml: &str) -> TestServer {
        let config = Config::from_toml(toml)
            .expect("test config parses")
            .with_listen(Some("127.0.0.1:0".into()));
        let resolved = config.resolve().expect("test config is valid");
        let server = Server::bind(&resolved).await.expect("server binds");
        let addr = server.local_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server
                .run(async {
                    let _ = stopped.await;
                })
                .await
                .expect("server runs");
        });
        TestServer {
            addr,
            base: format!("http://{addr}"),
            stop: Some(stop),
            task: Some(task),
            process: None,
        }
    }

    /// The real binary in a process of its own, from a complete TOML config (`listen` is
    /// set to a free port): what a deployment of several nodes runs. Killed when dropped.
    pub(crate) fn process(toml: &str) -> TestServer {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("sb-node-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("switchboard.toml");
        let port = free_port();
        std::fs::write(&config, format!("listen = \"127.0.0.1:{port}\"\n{toml}")).unwrap();
        let (child, base) = spawn_server(&config);
        TestServer {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            base,
            stop: None,
            task: None,
            process: Some((child, dir)),
        }
    }

    /// Triggers a graceful shutdown and waits for it to finish.
    pub(crate) async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(15), task)
                .await
                .expect("server stops in time")
                .expect("server task ends cleanly");
        }
    }

    pub(crate) fn api(&self) -> ApiClient {
        ApiClient::new(&self.base, Some(API_KEY))
    }

    pub(crate) fn ws_url(&self, path_and_query: &str) -> String {
        WsClient::ws_url(&self.base, path_and_query)
    }

    /// Connects with `token` (or none) and returns the client and its `connected` frame.
    pub(crate) async fn connect(&self, token: Option<&str>) -> (WsClient, Value) {
        WsClient::connect(&self.base, token)
            .await
            .expect("websocket connects")
    }

    /// Connects as `user` allowed to subscribe and publish to every channel.
    pub(crate) async fn connect_as(&self, user: &str) -> WsClient {
        self.connect(Some(&token(user, &["*"], &["*"]))).await.0
    }

    /// Fetches `/metrics` and returns the value of one sample line.
    pub(crate) async fn metric(&self, name: &str) -> f64 {
        let (status, text) = self
            .api()
            .call_text(reqwest::Method::GET, "/metrics", None)
            .await
            .expect("metrics answer");
        assert_eq!(status, 200);
        text.lines()
            .find_map(|line| {
                let (key, value) = line.split_once(' ')?;
                (key == name).then(|| value.parse().ok())?
            })
            .unwrap_or_else(|| panic!("metric {name} missing in:\n{text}"))
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        if let Some((mut child, dir)) = self.process.take() {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// An HS256 token for `user` with these subscribe and publish patterns, valid for an hour.
pub(crate) fn token(user: &str, subscribe: &[&str], publish: &[&str]) -> String {
    token_with(TokenClaims {
        sub: Some(user.into()),
        exp: Some(switchboard_core::unix_now() + 3600),
        subscribe: Some(subscribe.iter().map(|s| s.to_string()).collect()),
        publish: Some(publish.iter().map(|s| s.to_string()).collect()),
        ..TokenClaims::default()
    })
}

pub(crate) fn token_with(claims: TokenClaims) -> String {
    mint_hs256(SECRET, &claims)
}

/// A well-formed token for `user`, allowed everything, but signed with another secret.
pub(crate) fn forged_token(user: &str) -> String {
    mint_hs256(
        "not-the-test-secret",
        &TokenClaims {
            sub: Some(user.into()),
            exp: Some(switchboard_core::unix_now() + 3600),
            subscribe: Some(vec!["*".into()]),
            publish: Some(vec!["*".into()]),
            ..TokenClaims::default()
        },
    )
}

/// A token for `user` allowed everything, with this `info` claim.
pub(crate) fn token_with_info(user: &str, info: &Value) -> String {
    token_with(TokenClaims {
        sub: Some(user.into()),
        exp: Some(switchboard_core::unix_now() + 3600),
        info: Some(serde_json::value::RawValue::from_string(info.to_string()).unwrap()),
        subscribe: Some(vec!["*".into()]),
        publish: Some(vec!["*".into()]),
        ..TokenClaims::default()
    })
}

/// Config that announces joins and leaves on every channel outside a namespace (they are off
/// by default, spec §7).
pub(crate) const JOIN_LEAVE: &str = "[default_namespace]\njoin_leave = true\n";

/// A server with the test `[auth]` table and `extra` TOML after it.
pub(crate) async fn server_with(extra: &str) -> TestServer {
    TestServer::with_config(&format!("{}\n{extra}", auth_toml())).await
}

/// Asserts that no `message` push arrives within [`QUIET`].
pub(crate) async fn assert_no_message(client: &mut WsClient, what: &str) {
    match client.next_where(QUIET, |f| f["type"] == "message").await {
        Err(switchboard_client::Error::Timeout(_)) => {}
        Ok(frame) => panic!("{what}: expected no message, got {frame}"),
        Err(e) => panic!("{what}: expected no message, got error {e}"),
    }
}

/// The error code of a failed request (panics if it did not fail with a server error).
pub(crate) fn error_code<T: std::fmt::Debug>(result: switchboard_client::Result<T>) -> String {
    match result {
        Err(switchboard_client::Error::Server { code, .. }) => code,
        other => panic!("expected a server error, got {other:?}"),
    }
}

/// Starts the real binary with `config` (a TOML file) and returns it with its base URL, read
/// from its "listening on" line. For tests that must `kill -9` a server.
pub(crate) fn spawn_server(config: &std::path::Path) -> (std::process::Child, String) {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["serve", "--config", config.to_str().unwrap()])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("binary starts");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Reads to the end, so the server never blocks on a full pipe. With
        // SB_TEST_SERVER_LOGS set, the server's log shows in the test's output.
        let show = std::env::var_os("SB_TEST_SERVER_LOGS").is_some();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if show {
                eprintln!("[server] {line}");
            }
            let _ = tx.send(line);
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(100))
            && let Some(base) = line.split("listening on ").nth(1)
        {
            return (child, base.trim().to_owned());
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("server did not start");
}

/// A free TCP port on loopback (for servers whose config must name its port).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `check` until it holds or `within` passes; returns how long it took.
pub(crate) async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < within {
        if check().await {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: not true within {within:?}");
}
