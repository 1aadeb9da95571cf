//! The `switchboard` binary as a user runs it: development mode, config layering, signals and
//! the companion commands.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::{Value, json};
use switchboard_client::{ApiClient, WsClient};

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");

/// A `switchboard serve` child process and what its banner said.
struct Served {
    child: Child,
    base: String,
    banner: Vec<String>,
}

impl Served {
    /// Starts the binary and reads its banner until the listening line (and, in development
    /// mode, the keys) have been printed.
    fn start(args: &[&str], envs: &[(&str, &str)]) -> Served {
        let mut command = Command::new(BIN);
        command
            .arg("serve")
            .args(args)
            .stderr(Stdio::piped())
            .stdout(Stdio::null());
        // Only the variables a test gives: none inherited from whoever runs the tests.
        for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("SWITCHBOARD_")) {
            command.env_remove(key);
        }
        for (k, v) in envs {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("binary starts");
        let stderr = child.stderr.take().unwrap();
        let (lines_tx, lines_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // Keeps draining after the banner, so the server never writes to a closed pipe.
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = lines_tx.send(line);
            }
        });
        let mut banner = Vec::new();
        let mut base = None;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let Ok(line) = lines_rx.recv_timeout(Duration::from_millis(200)) else {
                if base.is_some() {
                    break;
                }
                continue;
            };
            if let Some(rest) = line.split("listening on ").nth(1) {
                base = Some(rest.trim().to_string());
            }
            banner.push(line);
        }
        let base = base.unwrap_or_else(|| panic!("no listening line in {banner:?}"));
        Served {
            child,
            base,
            banner,
        }
    }

    fn banner_value(&self, label: &str) -> String {
        self.banner
            .iter()
            .find_map(|l| l.trim().strip_prefix(label).map(|v| v.trim().to_string()))
            .unwrap_or_else(|| panic!("`{label}` not in banner {:?}", self.banner))
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "server did not stop after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn run(args: &[&str], envs: &[(&str, &str)]) -> (bool, String, String) {
    let mut command = Command::new(BIN);
    command.args(args);
    for (k, v) in envs {
        command.env(k, v);
    }
    let out = command.output().expect("binary runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn development_mode_works_out_of_the_box_and_stops_on_sigterm() {
    let mut served = Served::start(&["--listen", "127.0.0.1:0"], &[]);
    assert!(
        served.banner.iter().any(|l| l.contains("DEVELOPMENT MODE")),
        "{:?}",
        served.banner
    );
    let api_key = served.banner_value("API key");

    // Anonymous clients connect at once; the printed API key publishes.
    let (mut client, connected) = WsClient::connect(&served.base, None).await.unwrap();
    assert_eq!(connected["user"], "");
    client.subscribe("chat:lobby").await.unwrap();
    let api = ApiClient::new(&served.base, Some(&api_key));
    api.publish("chat:lobby", &json!({"text": "hi"}))
        .await
        .unwrap();
    let message = client.next_message("chat:lobby", WAIT).await.unwrap();
    assert_eq!(message["data"]["text"], "hi");
    let wrong = ApiClient::new(&served.base, Some("wrong"));
    assert_eq!(error_code(wrong.info().await), "unauthorized");

    // SIGTERM: the client is told to reconnect, and the process exits cleanly.
    let status = tokio::task::spawn_blocking(move || served.terminate());
    let frame = client
        .next_where(WAIT, |f| f["type"] == "disconnect")
        .await
        .unwrap();
    assert_eq!(frame["code"], "unavailable");
    assert_eq!(client.wait_close(WAIT).await.unwrap().0, Some(1001));
    assert!(status.await.unwrap().success());
}

#[tokio::test]
async fn config_file_then_environment_then_flags() {
    let dir = std::env::temp_dir().join(format!("sb-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (file_port, env_port, flag_port) = (free_port(), free_port(), free_port());
    let file = dir.join("switchboard.toml");
    std::fs::write(
        &file,
        format!(
            "listen = \"127.0.0.1:{file_port}\"\n[auth]\ntoken_secret = \"file-secret-0123456789abcdef-0123456789\"\n\
             api_key = \"file-key\"\n"
        ),
    )
    .unwrap();
    let file_arg = file.to_str().unwrap();

    // File alone.
    let served = Served::start(&["--config", file_arg], &[]);
    assert!(served.base.ends_with(&format!(":{file_port}")));
    assert!(!served.banner.iter().any(|l| l.contains("DEVELOPMENT MODE")));
    let api = ApiClient::new(&served.base, Some("file-key"));
    api.info().await.unwrap();
    drop(served);

    // The environment beats the file.
    let env_listen = format!("127.0.0.1:{env_port}");
    let envs = [
        ("SWITCHBOARD_CONFIG", file_arg),
        ("SWITCHBOARD_LISTEN", env_listen.as_str()),
        ("SWITCHBOARD_AUTH__API_KEY", "env-key"),
    ];
    let served = Served::start(&[], &envs);
    assert!(
        served.base.ends_with(&format!(":{env_port}")),
        "{}",
        served.base
    );
    let api = ApiClient::new(&served.base, Some("env-key"));
    api.info().await.unwrap();
    let old = ApiClient::new(&served.base, Some("file-key"));
    assert_eq!(error_code(old.info().await), "unauthorized");
    drop(served);

    // A flag beats both.
    let flag_listen = format!("127.0.0.1:{flag_port}");
    let served = Served::start(&["--listen", &flag_listen], &envs);
    assert!(
        served.base.ends_with(&format!(":{flag_port}")),
        "{}",
        served.base
    );
}

#[tokio::test]
async fn a_short_token_secret_stops_the_binary_with_the_reason() {
    let dir = std::env::temp_dir().join(format!("sb-cli-short-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("short.toml");
    let port = free_port();
    std::fs::write(
        &file,
        format!("listen = \"127.0.0.1:{port}\"\n[auth]\ntoken_secret = \"test-secret\"\napi_key = \"k\"\n"),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--config", file.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary runs");
    // A server that starts would run until killed: give it a while, then call it a failure.
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the server started with an 11-byte secret");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(!status.success());
    assert!(
        stderr.contains("auth.token_secret is 11 bytes") && stderr.contains("at least 32"),
        "{stderr}"
    );
}

#[tokio::test]
async fn bad_config_is_refused_with_a_clear_message() {
    let dir = std::env::temp_dir().join(format!("sb-cli-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:1\"\n[auth]\ntoken_secrett = \"x\"\n",
    )
    .unwrap();
    let (ok, _, stderr) = run(&["serve", "--config", file.to_str().unwrap()], &[]);
    assert!(!ok);
    assert!(stderr.contains("token_secrett"), "{stderr}");
    let (ok, _, stderr) = run(&["serve", "--config", "/nonexistent.toml"], &[]);
    assert!(!ok);
    assert!(stderr.contains("does not exist"), "{stderr}");
}

// Multi-threaded: the test blocks on child processes while the in-process server runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_publish_and_subscribe_commands() {
    let server = TestServer::start().await;

    // `token` mints a token the server accepts, with the requested claims.
    let (ok, stdout, stderr) = run(
        &[
            "token",
            "--secret",
            SECRET,
            "--sub",
            "alice",
            "--subscribe",
            "chat:*",
            "--info",
            r#"{"name":"Alice"}"#,
        ],
        &[],
    );
    assert!(ok, "{stderr}");
    let minted = stdout.trim().to_string();
    let (mut alice, connected) = server.connect(Some(&minted)).await;
    assert_eq!(connected["user"], "alice");
    alice.subscribe("chat:a").await.unwrap();
    assert_eq!(error_code(alice.subscribe("news").await), "forbidden");

    // `subscribe` prints frames as JSON lines.
    let mut subscriber = Command::new(BIN)
        .args([
            "subscribe",
            "--server",
            &server.base,
            "--token",
            &minted,
            "chat:a",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(subscriber.stdout.take().unwrap()).lines();
    let connected: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(connected["type"], "connected");
    let reply: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(reply["type"], "reply");

    // `publish` goes through the server API.
    let (ok, stdout, stderr) = run(
        &[
            "publish",
            "--server",
            &server.base,
            "--api-key",
            API_KEY,
            "chat:a",
            r#"{"text":"from the cli"}"#,
        ],
        &[],
    );
    assert!(ok, "{stderr}");
    let answer: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(answer["offset"], 1);

    let message = tokio::task::spawn_blocking(move || {
        for line in lines.map_while(Result::ok) {
            let frame: Value = serde_json::from_str(&line).unwrap();
            if frame["type"] == "message" {
                return frame;
            }
        }
        panic!("subscribe ended without a message");
    });
    let message = tokio::time::timeout(WAIT, message).await.unwrap().unwrap();
    assert_eq!(message["data"]["text"], "from the cli");
    let _ = subscriber.kill();
    let _ = subscriber.wait();

    // Bad input to the commands is refused clearly.
    let (ok, _, stderr) = run(
        &[
            "publish",
            "--server",
            &server.base,
            "--api-key",
            API_KEY,
            "c",
            "{not json",
        ],
        &[],
    );
    assert!(!ok && stderr.contains("not valid JSON"), "{stderr}");
    let (ok, _, stderr) = run(&["token", "--sub", "x"], &[]);
    assert!(!ok && stderr.contains("no token secret"), "{stderr}");
    server.stop().await;
}
