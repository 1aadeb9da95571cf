//! The raw limit of media forwarding: a minimal UDP forwarder (`switchboard-bench
//! raw-udp-forwarder`, a child process so its CPU time is its own) that copies every datagram
//! from the source to every receiver that joined, on one thread with one socket, as the SFU's
//! media task does. No ICE, no DTLS, no SRTP, no RTP, no depacketizing: whatever it reaches is
//! about what this machine allows for the same datagrams.
//!
//! A receiver joins with a datagram `JOIN` from its socket (answered `OK`); every other
//! datagram is media and goes to every receiver. The source sends each frame as a burst of
//! datagrams of the size str0m aims for, each carrying the frame's sequence number and send
//! time, its index and the frame's datagram count.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::net::UdpSocket;
use tokio::sync::watch;

use crate::media_peer::{Load, Received, Shared, read_fields, write_fields};
use crate::target::ServerProcess;

const JOIN: &[u8] = b"JOIN";
const JOINED: &[u8] = b"OK";
/// Datagram size: str0m's target for its own datagrams (SRTP included), so both measurements
/// move packets of about the same size.
pub(crate) const DATAGRAM: usize = str0m::DATAGRAM_MTU_TARGET;
/// Bytes of each datagram before the frame's fields: its index and the frame's count.
const INDEX: usize = 4;

/// The forwarder's main loop (the child process).
pub(crate) fn serve() {
    let socket = StdUdpSocket::bind("127.0.0.1:0").expect("forwarder socket");
    // The parent reads the port from the first line.
    println!("port {}", socket.local_addr().expect("address").port());
    let mut receivers: Vec<SocketAddr> = Vec::new();
    let mut buf = vec![0u8; 2048];
    loop {
        let Ok((n, source)) = socket.recv_from(&mut buf) else {
            continue;
        };
        if &buf[..n] == JOIN {
            receivers.push(source);
            let _ = socket.send_to(JOINED, source);
            continue;
        }
        for to in &receivers {
            let _ = socket.send_to(&buf[..n], to);
        }
    }
}

/// Starts the forwarder and returns it with its address.
pub(crate) fn start() -> (ServerProcess, SocketAddr) {
    let me = std::env::current_exe().expect("own path");
    let mut child = Command::new(me)
        .arg("raw-udp-forwarder")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("raw UDP forwarder");
    let stdout = child.stdout.take().expect("forwarder stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("forwarder port");
    let port: u16 = line
        .trim()
        .strip_prefix("port ")
        .and_then(|p| p.parse().ok())
        .expect("forwarder says its port");
    (
        ServerProcess(child),
        SocketAddr::from(([127, 0, 0, 1], port)),
    )
}

/// Datagrams of one frame of `load`.
pub(crate) fn datagrams_per_frame(load: &Load) -> usize {
    load.frame_size().div_ceil(DATAGRAM - INDEX)
}

/// The synthetic source: every `1/fps` seconds, one frame as a burst of datagrams.
pub(crate) async fn source(
    forwarder: SocketAddr,
    load: Load,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("source socket");
    let count = datagrams_per_frame(&load) as u16;
    let mut datagram = vec![0u8; DATAGRAM];
    let mut ticks = tokio::time::interval(load.frame_interval());
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = ticks.tick() => {}
        }
        let seq = shared.next_seq.fetch_add(1, Ordering::Relaxed);
        let sent_ns = shared.now_ns();
        for index in 0..count {
            datagram[..2].copy_from_slice(&index.to_le_bytes());
            datagram[2..4].copy_from_slice(&count.to_le_bytes());
            write_fields(&mut datagram[INDEX..], seq, sent_ns);
            let _ = socket.send_to(&datagram, forwarder).await;
            shared.packets_sent.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A receiver: joins, then counts the frames whose every datagram arrived (a frame is whole
/// on its last datagram, as a depacketizer would hand it on) until `stop`.
pub(crate) async fn receive(
    forwarder: SocketAddr,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> Result<Received, String> {
    let socket = UdpSocket::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    join(&socket, forwarder).await?;
    shared.ready.fetch_add(1, Ordering::Relaxed);
    let mut received = Received::new();
    let mut buf = vec![0u8; 2048];
    // The frame being received, and how many of its datagrams came.
    let (mut current, mut got) = (u64::MAX, 0u64);
    loop {
        let n = tokio::select! {
            _ = stop.changed() => return Ok(received),
            r = socket.recv(&mut buf) => r.map_err(|e| e.to_string())?,
        };
        let Some((seq, sent_ns)) = buf[..n].get(INDEX..).and_then(read_fields) else {
            continue;
        };
        let count = u16::from_le_bytes([buf[2], buf[3]]) as u64;
        if seq != current {
            (current, got) = (seq, 0);
        }
        got += 1;
        if got == count {
            received.frame(&shared, seq, sent_ns, count);
        }
    }
}

/// Joins the forwarder, asking again until it answers.
async fn join(socket: &UdpSocket, forwarder: SocketAddr) -> Result<(), String> {
    let mut buf = [0u8; 16];
    for _ in 0..50 {
        socket
            .send_to(JOIN, forwarder)
            .await
            .map_err(|e| e.to_string())?;
        let answer =
            tokio::time::timeout(std::time::Duration::from_millis(200), socket.recv(&mut buf))
                .await;
        if let Ok(Ok(n)) = answer
            && &buf[..n] == JOINED
        {
            return Ok(());
        }
    }
    Err("the raw forwarder does not answer".into())
}
