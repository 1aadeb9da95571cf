//! `switchboard-bench`: measurements of a running Switchboard binary. Each mode starts the
//! server as a child process, so what is measured is the real binary, and reads the
//! server's memory from `/proc/<pid>/status`.
//!
//! `idle`: user-space memory per idle connection (RSS delta / connections).
//! `turn`: throughput of the embedded TURN server's relay on loopback, against plain UDP.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};

mod turn_bench;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

#[derive(Parser)]
#[command(
    name = "switchboard-bench",
    about = "Measurements of a Switchboard binary"
)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Memory per idle WebSocket connection.
    Idle {
        /// The server binary (default: the release build next to this one).
        #[arg(long)]
        server: Option<PathBuf>,
        /// Connections to open.
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// Port for the server.
        #[arg(long, default_value_t = 7790)]
        port: u16,
        /// Also subscribe each connection to its own channel.
        #[arg(long)]
        subscribe: bool,
        /// Which door the connections use.
        #[arg(long, value_enum, default_value_t = Door::Ws)]
        door: Door,
    },
    /// Relay throughput of the embedded TURN server on loopback.
    Turn {
        #[arg(long)]
        server: Option<PathBuf>,
        /// Port for the server's HTTP listener (TURN listens on the next one).
        #[arg(long, default_value_t = 7780)]
        port: u16,
        /// Seconds to send for, per measurement.
        #[arg(long, default_value_t = 3)]
        seconds: u64,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Door {
    /// WebSocket (`/ws`).
    Ws,
    /// Server-Sent Events (`/sse`), each on its own channel.
    Sse,
}

fn main() {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match cli.mode {
        Mode::Idle {
            server,
            connections,
            port,
            subscribe,
            door,
        } => runtime.block_on(idle(server, connections, port, subscribe, door)),
        Mode::Turn {
            server,
            port,
            seconds,
        } => runtime.block_on(turn_bench::run(
            server.unwrap_or_else(default_server),
            port,
            seconds,
        )),
    }
}

fn default_server() -> PathBuf {
    let me = std::env::current_exe().expect("own path");
    me.with_file_name("switchboard")
}

/// The server child process; killed when dropped.
struct ServerProcess(Child);

impl Drop for ServerProcess {
    /// SIGTERM first, so the server (or a profiler wrapping it) can finish its output.
    fn drop(&mut self) {
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
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

fn start_server(binary: &PathBuf, port: u16) -> ServerProcess {
    start_server_with(binary, port, &[])
}

/// Starts the server with extra `SWITCHBOARD_...` settings.
pub(crate) fn start_server_with(
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

/// Resident set size of a process, in bytes.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS line")
        * 1024
}

fn open_files_limit() -> String {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .map(|l| {
                    l.split_whitespace()
                        .skip(3)
                        .take(2)
                        .collect::<Vec<_>>()
                        .join(" soft / ")
                        + " hard"
                })
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Connects from the loopback address `source` and sends `request`.
async fn connect_from(
    server: SocketAddr,
    source: Ipv4Addr,
    request: &str,
) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::V4(SocketAddrV4::new(source, 0)))?;
    let mut stream = socket.connect(server).await?;
    stream.write_all(request.as_bytes()).await?;
    Ok(stream)
}

/// Reads until what arrived (kept in `seen`) contains `marker`.
async fn read_until(
    stream: &mut TcpStream,
    seen: &mut Vec<u8>,
    marker: &str,
) -> std::io::Result<()> {
    while !String::from_utf8_lossy(seen).contains(marker) {
        let mut buf = [0u8; 2048];
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        seen.extend_from_slice(&buf[..n]);
    }
    Ok(())
}

/// Opens one SSE stream of its own channel from `source` and waits for its `subscribed`
/// frame.
async fn open_idle_sse(
    server: SocketAddr,
    source: Ipv4Addr,
    channel: String,
) -> std::io::Result<TcpStream> {
    let request = format!("GET /sse?channel={channel} HTTP/1.1\r\nHost: {server}\r\n\r\n");
    let mut stream = connect_from(server, source, &request).await?;
    read_until(&mut stream, &mut Vec::new(), "\"subscribed\"").await?;
    Ok(stream)
}

/// Opens one WebSocket from `source`, waits for the `connected` frame (and the subscribe
/// reply when asked) and returns the idle socket.
async fn open_idle(
    server: SocketAddr,
    source: Ipv4Addr,
    channel: Option<String>,
) -> std::io::Result<TcpStream> {
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {server}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    let mut stream = connect_from(server, source, &request).await?;
    let mut seen = Vec::new();
    read_until(&mut stream, &mut seen, "\"connected\"").await?;
    if let Some(channel) = channel {
        let frame = format!(r#"{{"type":"subscribe","id":1,"channel":"{channel}"}}"#);
        stream
            .write_all(&masked_text_frame(frame.as_bytes()))
            .await?;
        read_until(&mut stream, &mut seen, "\"reply\"").await?;
    }
    Ok(stream)
}

/// A client text frame (clients must mask; a zero mask keeps the payload readable).
fn masked_text_frame(payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mut frame = vec![0x81, 0x80 | payload.len() as u8, 0, 0, 0, 0];
    frame.extend_from_slice(payload);
    frame
}

fn addr_of(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

pub(crate) async fn wait_for_port(server: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(server).await.is_err() {
        assert!(Instant::now() < deadline, "server did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn idle(
    server_bin: Option<PathBuf>,
    connections: usize,
    port: u16,
    subscribe: bool,
    door: Door,
) {
    let open = move |source: Ipv4Addr, i: usize, warm: bool| {
        let name = if warm {
            format!("warm{i}")
        } else {
            format!("c{i}")
        };
        async move {
            match door {
                Door::Ws => open_idle(addr_of(port), source, subscribe.then_some(name)).await,
                Door::Sse => open_idle_sse(addr_of(port), source, name).await,
            }
        }
    };
    let binary = server_bin.unwrap_or_else(default_server);
    let server = start_server(&binary, port);
    let pid = server.0.id();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_for_port(addr).await;
    // Warm up allocator and runtime with a few connections, then measure from there.
    let mut warm = Vec::new();
    for i in 0..64 {
        warm.push(
            open_idle(
                addr,
                Ipv4Addr::new(127, 0, 0, 2),
                subscribe.then(|| format!("warm{i}")),
            )
            .await
            .expect("warm-up connection"),
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_bytes(pid);
    let started = Instant::now();
    let mut sockets = Vec::with_capacity(connections);
    // Source addresses 127.0.0.10.. spread the client side over many ephemeral port ranges.
    let mut batch = tokio::task::JoinSet::new();
    for i in 0..connections {
        let source = Ipv4Addr::new(
            127,
            0,
            (10 + i / 20_000) as u8,
            (10 + (i / 250) % 240) as u8,
        );
        batch.spawn(open(source, i, false));
        if batch.len() >= 256 {
            while let Some(result) = batch.join_next().await {
                sockets.push(result.expect("task").expect("connection"));
            }
        }
    }
    while let Some(result) = batch.join_next().await {
        sockets.push(result.expect("task").expect("connection"));
    }
    let elapsed = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_bytes(pid);
    let per = (after.saturating_sub(before)) as f64 / connections as f64;
    println!("server binary        {}", binary.display());
    println!("open files limit     {}", open_files_limit());
    let what = match door {
        Door::Ws if subscribe => "idle WebSocket (each subscribed to one channel)",
        Door::Ws => "idle WebSocket",
        Door::Sse => "idle SSE streams (each on one channel)",
    };
    println!("connections          {connections} {what}");
    println!("server RSS before    {:.1} MiB", before as f64 / 1048576.0);
    println!("server RSS after     {:.1} MiB", after as f64 / 1048576.0);
    println!(
        "per connection       {per:.0} bytes ({:.2} KiB)",
        per / 1024.0
    );
    println!(
        "handshakes           {:.0}/s (including the connected frame)",
        connections as f64 / elapsed.as_secs_f64()
    );
    drop(sockets);
    drop(warm);
}
