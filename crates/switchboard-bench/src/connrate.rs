//! Opening many WebSocket connections at once, and the rate of it: handshakes per second,
//! each counted when its first server frame (`connected`, or Pusher's
//! `connection_established`) has arrived, and its subscribe answered when it subscribes.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use crate::target::Target;
use crate::wire::{connect_from, masked_text_frame, read_until, source_for, upgrade_request};

/// Handshakes in flight at once: enough to keep a server busy, few enough not to overflow
/// its listen backlog.
const CONCURRENCY: usize = 256;

/// Opens one WebSocket to `target`, waits for its first frame and, with a channel, for the
/// answer to its subscribe.
pub(crate) async fn open(
    target: Target,
    server: SocketAddr,
    index: usize,
    channel: Option<String>,
) -> std::io::Result<TcpStream> {
    let request = upgrade_request(server, &target.ws_path());
    let mut stream = connect_from(server, source_for(index), request.as_bytes()).await?;
    let mut seen = Vec::new();
    read_until(&mut stream, &mut seen, target.connected_marker()).await?;
    if let Some(channel) = channel {
        let frame = target.subscribe_frame(&channel);
        stream
            .write_all(&masked_text_frame(frame.as_bytes()))
            .await?;
        read_until(&mut stream, &mut seen, target.subscribed_marker()).await?;
    }
    Ok(stream)
}

/// Opens `count` connections numbered from `first`, `CONCURRENCY` at a time; connection `i`
/// subscribes to `channel_of(i)` when that gives one. Returns them in order of their number,
/// and how long it took.
pub(crate) async fn open_many(
    target: Target,
    server: SocketAddr,
    first: usize,
    count: usize,
    channel_of: impl Fn(usize) -> Option<String>,
) -> std::io::Result<(Vec<TcpStream>, Duration)> {
    let started = Instant::now();
    let mut sockets: Vec<Option<TcpStream>> = (0..count).map(|_| None).collect();
    let mut batch = JoinSet::new();
    for i in 0..count {
        let channel = channel_of(first + i);
        batch.spawn(async move { (i, open(target, server, first + i, channel).await) });
        if batch.len() >= CONCURRENCY
            && let Some(done) = batch.join_next().await
        {
            let (at, stream) = done.expect("connection task");
            sockets[at] = Some(stream?);
        }
    }
    while let Some(done) = batch.join_next().await {
        let (at, stream) = done.expect("connection task");
        sockets[at] = Some(stream?);
    }
    let elapsed = started.elapsed();
    Ok((
        sockets
            .into_iter()
            .map(|s| s.expect("every connection"))
            .collect(),
        elapsed,
    ))
}
