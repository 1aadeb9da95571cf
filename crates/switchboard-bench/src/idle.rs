//! Memory per idle connection: the server's RSS (from `/proc/<pid>/status`) before and after
//! `connections` connections are opened and have had their first frame, divided by the count.
//! The client side is spread over child processes (`switchboard-bench hold`), `per_process`
//! connections each, because one process may hold no more sockets than its open-file cap.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use crate::connrate;
use crate::target::{Target, rss_bytes};
use crate::wire::{connect_from, read_until, source_for};

#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub(crate) enum Door {
    /// WebSocket.
    Ws,
    /// Server-Sent Events (`/sse`), each stream on its own channel (Switchboard only).
    Sse,
    /// Server-Sent Events, every stream on one channel: the door's own cost, without a
    /// channel's state per stream (Switchboard only).
    SseShared,
}

impl Door {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Door::Ws => "ws",
            Door::Sse => "sse",
            Door::SseShared => "sse-shared",
        }
    }
}

#[derive(Debug)]
pub(crate) struct IdleOutcome {
    pub processes: usize,
    pub rss_before: u64,
    pub rss_after: u64,
    pub per_connection: f64,
    pub handshakes_per_s: f64,
}

/// Opens one SSE stream of `channel` and waits for its `subscribed` frame.
async fn open_sse(server: SocketAddr, index: usize, channel: String) -> std::io::Result<TcpStream> {
    let request = format!("GET /sse?channel={channel} HTTP/1.1\r\nHost: {server}\r\n\r\n");
    let mut stream = connect_from(server, source_for(index), request.as_bytes()).await?;
    read_until(&mut stream, &mut Vec::new(), "\"subscribed\"").await?;
    Ok(stream)
}

/// Opens `count` connections numbered from `first`; returns them and the seconds it took.
pub(crate) async fn open_idle(
    target: Target,
    door: Door,
    server: SocketAddr,
    first: usize,
    count: usize,
    subscribe: bool,
) -> (Vec<TcpStream>, f64) {
    match door {
        Door::Ws => {
            let (sockets, took) = connrate::open_many(target, server, first, count, |i| {
                subscribe.then(|| format!("c{i}"))
            })
            .await
            .unwrap_or_else(|e| panic!("{} connections: {e}", target.name()));
            (sockets, took.as_secs_f64())
        }
        Door::Sse | Door::SseShared => {
            assert_eq!(target, Target::Switchboard, "only Switchboard has SSE");
            let started = Instant::now();
            let mut sockets = Vec::with_capacity(count);
            let mut batch = tokio::task::JoinSet::new();
            for i in first..first + count {
                let channel = match door {
                    Door::SseShared => "shared".to_owned(),
                    _ => format!("c{i}"),
                };
                batch.spawn(open_sse(server, i, channel));
                if batch.len() >= 256
                    && let Some(done) = batch.join_next().await
                {
                    sockets.push(done.expect("task").expect("SSE stream"));
                }
            }
            while let Some(done) = batch.join_next().await {
                sockets.push(done.expect("task").expect("SSE stream"));
            }
            (sockets, started.elapsed().as_secs_f64())
        }
    }
}

/// The child process's side: opens its share, says `ready <seconds>`, holds the connections
/// until its standard input closes.
pub(crate) async fn hold(
    target: Target,
    door: Door,
    port: u16,
    first: usize,
    count: usize,
    subscribe: bool,
) {
    crate::wire::raise_open_files();
    let server = crate::target::addr_of(port);
    let (sockets, took) = open_idle(target, door, server, first, count, subscribe).await;
    println!("ready {took}");
    std::io::stdout().flush().unwrap();
    tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        while std::io::stdin().read_line(&mut line).unwrap_or(0) > 0 {}
    })
    .await
    .unwrap();
    drop(sockets);
}

/// Measures a server already listening at `port` (process `pid`).
pub(crate) async fn measure(
    target: Target,
    door: Door,
    port: u16,
    pid: u32,
    connections: usize,
    subscribe: bool,
    per_process: usize,
) -> IdleOutcome {
    let server = crate::target::addr_of(port);
    // Warm up allocator and runtime with a few connections, then measure from there.
    let (warm, _) = open_idle(target, door, server, 1_000_000, 64, subscribe).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = rss_bytes(pid);

    let me = std::env::current_exe().expect("own path");
    let mut children = Vec::new();
    let mut first = 0;
    while first < connections {
        let count = per_process.min(connections - first);
        let mut command = Command::new(&me);
        command
            .args(["hold", "--target", target.name(), "--door", door.name()])
            .args(["--port", &port.to_string()])
            .args(["--first", &first.to_string()])
            .args(["--connections", &count.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        if subscribe {
            command.arg("--subscribe");
        }
        children.push(command.spawn().expect("hold process"));
        first += count;
    }
    let processes = children.len();
    // Wait for every child's `ready` line (blocking reads, off the runtime's threads).
    let mut readers = Vec::new();
    for child in &mut children {
        let stdout = child.stdout.take().expect("child stdout");
        readers.push(tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).ok();
            line
        }));
    }
    // The holders open their shares at the same time; the slowest one's time is the run's.
    let mut slowest = 0f64;
    for reader in readers {
        let line = reader.await.unwrap();
        let took = line
            .strip_prefix("ready ")
            .and_then(|t| t.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("a hold process failed: {line:?}"));
        slowest = slowest.max(took);
    }
    let handshakes_per_s = connections as f64 / slowest;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = rss_bytes(pid);
    for mut child in children {
        drop(child.stdin.take());
        let _ = child.wait();
    }
    drop(warm);
    IdleOutcome {
        processes,
        rss_before,
        rss_after,
        per_connection: rss_after.saturating_sub(rss_before) as f64 / connections as f64,
        handshakes_per_s,
    }
}
