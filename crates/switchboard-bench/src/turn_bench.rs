//! `switchboard-bench turn`: datagrams of a WebRTC-like size from a TURN client through the
//! embedded server's relay to a UDP peer, on loopback, against the same datagrams sent
//! directly from one UDP socket to another in the same run (the machine's limit).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use turn::client::{Client, ClientConfig};
use webrtc_util::Conn;

use crate::target::{start_switchboard as start_server_with, wait_for_port};

/// A typical media packet.
const DATAGRAM: usize = 1200;
const SECRET: &str = "bench-turn-secret-0123456789abcdef-0123456789";

/// Counts what `peer` receives until `stop`.
fn count_received(
    peer: Arc<UdpSocket>,
    stop: Arc<AtomicBool>,
) -> (Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        while !stop.load(Ordering::Relaxed) {
            if let Ok(Ok((n, _))) =
                tokio::time::timeout(Duration::from_millis(100), peer.recv_from(&mut buf)).await
            {
                counter.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
    });
    (received, task)
}

/// Sends for `seconds` through `send`, one datagram at a time, and returns received MB/s.
async fn measure<F, Fut>(seconds: u64, peer: Arc<UdpSocket>, mut send: F) -> f64
where
    F: FnMut(Vec<u8>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let stop = Arc::new(AtomicBool::new(false));
    let (received, task) = count_received(peer, stop.clone());
    let started = Instant::now();
    let payload = vec![7u8; DATAGRAM];
    let mut sent = 0u64;
    while started.elapsed() < Duration::from_secs(seconds) {
        send(payload.clone()).await;
        sent += 1;
        // Yield now and then so the receiver keeps up instead of the kernel dropping.
        if sent.is_multiple_of(64) {
            tokio::task::yield_now().await;
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let _ = task.await;
    received.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64() / 1e6
}

pub(crate) async fn run(binary: PathBuf, port: u16, seconds: u64) {
    let turn_port = port + 1;
    let env = [
        ("SWITCHBOARD_WEBRTC__TURN_SECRET", SECRET.to_string()),
        (
            "SWITCHBOARD_WEBRTC__TURN__LISTEN",
            format!("127.0.0.1:{turn_port}"),
        ),
        (
            "SWITCHBOARD_WEBRTC__TURN__PUBLIC_IP",
            "127.0.0.1".to_string(),
        ),
        (
            "SWITCHBOARD_WEBRTC__TURN__ALLOW_LOOPBACK_PEERS",
            "true".to_string(),
        ),
    ];
    let _server = start_server_with(&binary, port, &env);
    wait_for_port(SocketAddr::from(([127, 0, 0, 1], port))).await;

    // Plain UDP between two loopback sockets: the machine's limit for this pattern.
    let peer = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let peer_addr = peer.local_addr().unwrap();
    let direct = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let direct_mbs = measure(seconds, peer.clone(), |buf| {
        let direct = &direct;
        async move {
            let _ = direct.send_to(&buf, peer_addr).await;
        }
    })
    .await;

    // Through the embedded TURN server's relay, with REST credentials.
    let expires = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let (username, password) = switchboard_rtc::turn_credentials(SECRET, "bench", expires);
    let turn_addr = format!("127.0.0.1:{turn_port}");
    let client = Client::new(ClientConfig {
        stun_serv_addr: turn_addr.clone(),
        turn_serv_addr: turn_addr,
        username,
        password,
        realm: "switchboard".into(),
        software: String::new(),
        rto_in_ms: 0,
        conn: Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap()),
        vnet: None,
    })
    .await
    .expect("TURN client");
    client.listen().await.expect("TURN client listens");
    let relay = client.allocate().await.expect("TURN allocation");
    // The first send creates the permission; give it a moment.
    let _ = relay.send_to(b"hello", peer_addr).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let relay_mbs = measure(seconds, peer.clone(), |buf| {
        let relay = &relay;
        async move {
            let _ = relay.send_to(&buf, peer_addr).await;
        }
    })
    .await;
    let _ = client.close().await;

    println!("server binary        {}", binary.display());
    println!("datagram             {DATAGRAM} bytes, {seconds} s each, one sender");
    println!("plain UDP loopback   {direct_mbs:.1} MB/s");
    println!(
        "through TURN relay   {relay_mbs:.1} MB/s ({:.2}x plain UDP)",
        relay_mbs / direct_mbs
    );
}
