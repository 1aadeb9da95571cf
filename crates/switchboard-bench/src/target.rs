//! The servers the bench measures side by side, each started as a child process so every one
//! is measured the same way (its own CPU, its own RSS in `/proc/<pid>/status`): Switchboard,
//! sockudo (driven through the Pusher protocol) and the raw limit (`raw.rs`, run by this
//! binary as `switchboard-bench raw-server`). This module knows how to speak to each.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::net::TcpStream;

use crate::pusher;

#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub(crate) enum Target {
    /// This repository's server.
    Switchboard,
    /// sockudo from crates.io, through its Pusher protocol and HTTP API.
    Sockudo,
    /// A minimal tokio program writing pre-encoded frames: the machine's limit.
    Raw,
}

impl Target {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Target::Switchboard => "switchboard",
            Target::Sockudo => "sockudo",
            Target::Raw => "raw",
        }
    }

    pub(crate) fn ws_path(self) -> String {
        match self {
            Target::Sockudo => format!(
                "/app/{}?protocol=7&client=switchboard-bench&version=1.0",
                pusher::APP_KEY
            ),
            Target::Switchboard | Target::Raw => "/ws".into(),
        }
    }

    /// What the first server frame contains.
    pub(crate) fn connected_marker(self) -> &'static str {
        match self {
            Target::Sockudo => "connection_established",
            Target::Switchboard | Target::Raw => "\"connected\"",
        }
    }

    pub(crate) fn subscribe_frame(self, channel: &str) -> String {
        match self {
            Target::Sockudo => {
                format!(r#"{{"event":"pusher:subscribe","data":{{"channel":"{channel}"}}}}"#)
            }
            Target::Switchboard | Target::Raw => {
                format!(r#"{{"type":"subscribe","id":1,"channel":"{channel}"}}"#)
            }
        }
    }

    /// What the answer to a subscribe contains.
    pub(crate) fn subscribed_marker(self) -> &'static str {
        match self {
            Target::Sockudo => "subscription_succeeded",
            Target::Switchboard | Target::Raw => "\"reply\"",
        }
    }

    /// A complete HTTP/1.1 request publishing the string `data` (plain ASCII, no quotes) to
    /// `channel` through the server API.
    pub(crate) fn http_publish(self, server: SocketAddr, channel: &str, data: &str) -> Vec<u8> {
        let (path, body, auth) = match self {
            Target::Sockudo => {
                let path = format!("/apps/{}/events", pusher::APP_ID);
                let body = format!(r#"{{"name":"m","channels":["{channel}"],"data":"{data}"}}"#);
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap()
                    .as_secs();
                let query = pusher::signed_query(&path, body.as_bytes(), now);
                (format!("{path}?{query}"), body, "")
            }
            Target::Switchboard | Target::Raw => (
                "/api/publish".to_string(),
                format!(r#"{{"channel":"{channel}","data":"{data}"}}"#),
                "Authorization: Bearer bench\r\n",
            ),
        };
        format!(
            "POST {path} HTTP/1.1\r\nHost: {server}\r\n{auth}Content-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    /// One `POST /api/batch` publishing every `(channel, data)` in order (Switchboard's API
    /// extension for many small messages).
    pub(crate) fn http_publish_many(
        self,
        server: SocketAddr,
        messages: &[(String, String)],
    ) -> Vec<u8> {
        let items: Vec<String> = messages
            .iter()
            .map(|(channel, data)| format!(r#"{{"channel":"{channel}","data":"{data}"}}"#))
            .collect();
        let body = format!(r#"{{"publications":[{}]}}"#, items.join(","));
        format!(
            "POST /api/batch HTTP/1.1\r\nHost: {server}\r\nAuthorization: Bearer bench\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    /// sockudo answers every API request with `connection: close`, so one request per
    /// connection: the bench sends each burst as one `batch_events` request (its fastest
    /// path, in order) on a fresh connection. None for servers that keep connections alive.
    pub(crate) fn http_publish_batch(
        self,
        server: SocketAddr,
        messages: &[(String, String)],
    ) -> Option<Vec<u8>> {
        if self != Target::Sockudo {
            return None;
        }
        let path = format!("/apps/{}/batch_events", pusher::APP_ID);
        let events: Vec<String> = messages
            .iter()
            .map(|(channel, data)| {
                format!(r#"{{"name":"m","channel":"{channel}","data":"{data}"}}"#)
            })
            .collect();
        let body = format!(r#"{{"batch":[{}]}}"#, events.join(","));
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let query = pusher::signed_query(&path, body.as_bytes(), now);
        Some(
            format!(
                "POST {path}?{query} HTTP/1.1\r\nHost: {server}\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes(),
        )
    }

    /// A client frame publishing `data` to `channel` over WebSocket, where the server has one
    /// that fans out like the API does (Pusher's client events need private channels and are
    /// not delivered to their sender: not comparable, so sockudo has none here).
    pub(crate) fn ws_publish(self, id: u64, channel: &str, data: &str) -> Option<String> {
        match self {
            Target::Sockudo => None,
            Target::Switchboard | Target::Raw => Some(format!(
                r#"{{"type":"publish","id":{id},"channel":"{channel}","data":"{data}"}}"#
            )),
        }
    }
}

/// Where the binaries of the servers are.
#[derive(Clone)]
pub(crate) struct Binaries {
    pub switchboard: PathBuf,
    pub sockudo: PathBuf,
}

impl Binaries {
    pub(crate) fn new(switchboard: Option<PathBuf>, sockudo: Option<PathBuf>) -> Self {
        let me = std::env::current_exe().expect("own path");
        let cache = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/root"))
            .join(".cache/switchboard-bench/sockudo/bin/sockudo");
        Binaries {
            switchboard: switchboard.unwrap_or_else(|| me.with_file_name("switchboard")),
            sockudo: sockudo.unwrap_or(cache),
        }
    }
}

/// A server child process; stopped when dropped.
pub(crate) struct ServerProcess(pub Child);

impl ServerProcess {
    pub(crate) fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for ServerProcess {
    /// SIGTERM first, so the server (or a profiler wrapping it) can finish its output.
    fn drop(&mut self) {
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts Switchboard with extra `SWITCHBOARD_...` settings.
pub(crate) fn start_switchboard(
    binary: &PathBuf,
    port: u16,
    env: &[(&str, String)],
) -> ServerProcess {
    let child = Command::new(binary)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env("SWITCHBOARD_AUTH__ALLOW_ANONYMOUS", "true")
        .env("SWITCHBOARD_AUTH__API_KEY", "bench")
        .env("SWITCHBOARD_LIMITS__PING_INTERVAL", "3600")
        .env("SWITCHBOARD_DEFAULT_NAMESPACE__JOIN_LEAVE", "false")
        .env("SWITCHBOARD_DEFAULT_NAMESPACE__PRESENCE", "false")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
    ServerProcess(child)
}

/// Starts `target` on `port` and waits until it accepts connections.
pub(crate) async fn start(target: Target, bins: &Binaries, port: u16) -> ServerProcess {
    // A server of an earlier measurement may still be closing: never measure it by mistake.
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(addr_of(port)).await.is_ok() {
        assert!(Instant::now() < deadline, "port {port} stays taken");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut process = match target {
        Target::Switchboard => start_switchboard(&bins.switchboard, port, &[]),
        Target::Sockudo => {
            let dir = std::env::temp_dir().join(format!("switchboard-bench-sockudo-{port}"));
            let config = pusher::sockudo_config(&dir, port);
            let child = Command::new(&bins.sockudo)
                .arg("--config")
                .arg(&config)
                // Its default `config/config.toml` lookup is relative: give it an empty place.
                .current_dir(&dir)
                .env("RUST_LOG", "error")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot start sockudo at {} ({e}); bench/run.sh installs it",
                        bins.sockudo.display()
                    )
                });
            ServerProcess(child)
        }
        Target::Raw => {
            let me = std::env::current_exe().expect("own path");
            let child = Command::new(me)
                .args(["raw-server", "--port", &port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("raw server");
            ServerProcess(child)
        }
    };
    wait_for_port(addr_of(port)).await;
    if let Ok(Some(status)) = process.0.try_wait() {
        panic!("{} exited at start: {status}", target.name());
    }
    // sockudo answers TCP before its app manager is ready; a moment avoids refused upgrades.
    tokio::time::sleep(Duration::from_millis(300)).await;
    process
}

/// `port`, or with 0 one the kernel has free now: the machine is shared, and a fixed port may
/// be someone else's server.
pub(crate) fn pick_port(port: u16) -> u16 {
    if port != 0 {
        return port;
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

pub(crate) fn addr_of(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

pub(crate) async fn wait_for_port(server: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(server).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "server on {server} did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Resident set size of a process, in bytes.
pub(crate) fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS line")
        * 1024
}

/// CPU time (user + system) a process has used so far, in seconds.
pub(crate) fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz
}

/// CPU time a process's live threads have used so far, in seconds, to the nanosecond (the
/// first field of each `/proc/<pid>/task/<tid>/schedstat`): for windows where the 10 ms ticks
/// of [`cpu_seconds`] are too coarse. Threads that exited are not counted; falls back to
/// [`cpu_seconds`] where schedstat is missing.
pub(crate) fn cpu_seconds_precise(pid: u32) -> f64 {
    schedstat(pid)
        .map(|(run, _)| run)
        .unwrap_or_else(|| cpu_seconds(pid))
}

/// Seconds a process's live threads have waited for a core while runnable (the second field
/// of schedstat): what a busy machine costs a server beyond its own CPU time.
pub(crate) fn runqueue_wait_seconds(pid: u32) -> f64 {
    schedstat(pid).map(|(_, wait)| wait).unwrap_or(0.0)
}

/// Time on a core and time waiting for one, summed over the live threads, in seconds.
fn schedstat(pid: u32) -> Option<(f64, f64)> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let (mut run, mut wait) = (0u64, 0u64);
    for task in tasks.flatten() {
        let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) else {
            // The thread exited since the listing.
            continue;
        };
        let mut fields = text.split_whitespace().map(str::parse::<u64>);
        run += fields.next()?.ok()?;
        wait += fields.next()?.ok()?;
    }
    Some((run as f64 / 1e9, wait as f64 / 1e9))
}
