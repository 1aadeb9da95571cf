//! `switchboard-bench media`: one publisher (a synthetic VP8 source at a fixed bitrate) forwarded
//! by Switchboard's SFU to N WHEP viewers on loopback, side by side with a raw UDP forwarder
//! (`raw_udp.rs`, the machine's limit) moving the same frames as datagrams of the same size to
//! the same number of receivers.
//!
//! Each measurement starts its server afresh, connects the receivers, lets the source run for a
//! second, then measures a window of frames (by sequence number, so a frame counts whole or not
//! at all): packets received by every receiver, the server's CPU time over the window (and,
//! for Switchboard, its own `switchboard_media_packets_forwarded` counter), the latency of
//! every whole frame (send → last packet in, one clock), and the bench's own CPU time (the
//! client side: one publisher and N str0m viewers, each decrypting and depacketizing).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use str0m::config::DtlsCert;
use str0m::media::Direction;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

use crate::media_peer::{self, Load, Peer, Received, Shared};
use crate::raw_udp;
use crate::target::{self, ServerProcess};

/// The room every measurement publishes into.
const ROOM: &str = "bench";
/// Viewers connecting at once (each a WHEP request, ICE and a DTLS handshake).
const CONNECTING: usize = 16;
/// How long the source runs before the window, and how long in-flight frames get after it.
const WARM_UP: Duration = Duration::from_secs(1);
/// (An overloaded forwarder queues for up to a second or so: its late frames still count.)
const GRACE: Duration = Duration::from_secs(2);

/// Which forwarder is measured.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Forwarder {
    Switchboard,
    Raw,
}

impl Forwarder {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Forwarder::Switchboard => "switchboard",
            Forwarder::Raw => "raw-udp",
        }
    }
}

/// What one measurement found.
#[derive(Debug, Clone)]
pub(crate) struct Outcome {
    pub forwarder: Forwarder,
    pub viewers: usize,
    /// Receivers that connected (or joined) in time.
    pub ready: u64,
    /// Receivers that received nothing at all, in the window or before.
    pub silent: u64,
    /// Wall time of the window.
    pub seconds: f64,
    pub frames_sent: u64,
    /// Media packets the source sent in the window (for the SFU: the publisher's datagrams of
    /// media size, retransmissions included).
    pub packets_sent: u64,
    /// Datagrams the receivers sent back in the window (RTCP and such; none for raw).
    pub feedback_sent: u64,
    pub frames_received: u64,
    /// Packets of those frames, summed over receivers (RTP packets or datagrams).
    pub packets_received: u64,
    /// The server's own count over the window (Switchboard only).
    pub packets_counted_by_server: Option<u64>,
    /// CPU seconds over the window: the forwarding process, and this one (the clients).
    pub server_cpu: f64,
    /// Seconds the server was runnable but waited for a core (the clients share the cores).
    pub server_wait: f64,
    pub client_cpu: f64,
    /// Everything else on the machine, CPU seconds over the window.
    pub other_cpu: f64,
    /// Microseconds: p50, p90, p99, max.
    pub latency_us: [u64; 4],
}

impl Outcome {
    pub(crate) fn packets_per_s(&self) -> f64 {
        self.packets_received as f64 / self.seconds
    }

    pub(crate) fn packets_per_cpu_s(&self) -> f64 {
        self.packets_received as f64 / self.server_cpu.max(1e-9)
    }

    /// Whole frames received ÷ frames owed to every viewer.
    pub(crate) fn delivery(&self) -> f64 {
        self.frames_received as f64 / (self.frames_sent * self.viewers as u64).max(1) as f64
    }

    /// Packets received ÷ (packets sent × viewers). For the SFU the server packetizes afresh,
    /// so this is about the packet count, not a loss count; see `delivery` for the loss.
    pub(crate) fn packet_delivery(&self) -> f64 {
        self.packets_received as f64 / (self.packets_sent * self.viewers as u64).max(1) as f64
    }

    pub(crate) fn packets_per_frame(&self) -> f64 {
        self.packets_received as f64 / self.frames_received.max(1) as f64
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "forwarder": self.forwarder.name(),
            "viewers": self.viewers,
            "ready": self.ready,
            "silent": self.silent,
            "seconds": self.seconds,
            "frames_sent": self.frames_sent,
            "packets_sent": self.packets_sent,
            "feedback_sent": self.feedback_sent,
            "packet_delivery": self.packet_delivery(),
            "frames_received": self.frames_received,
            "packets_received": self.packets_received,
            "packets_counted_by_server": self.packets_counted_by_server,
            "packets_per_s": self.packets_per_s(),
            "packets_per_cpu_s": self.packets_per_cpu_s(),
            "delivery": self.delivery(),
            "server_cpu": self.server_cpu,
            "server_wait": self.server_wait,
            "client_cpu": self.client_cpu,
            "other_cpu": self.other_cpu,
            "latency_us": self.latency_us,
        })
    }
}

/// CPU seconds of the forwarder, of this process (the clients) and of the whole machine, and
/// the time.
struct Clocks {
    server: f64,
    /// Seconds the forwarder was runnable but waiting for a core.
    server_wait: f64,
    client: f64,
    machine: f64,
    at: Instant,
    /// Switchboard's own count of forwarded packets, read just outside the window.
    counted: Option<u64>,
}

impl Clocks {
    fn read(server_pid: u32) -> Self {
        Clocks {
            server: target::cpu_seconds_precise(server_pid),
            server_wait: target::runqueue_wait_seconds(server_pid),
            client: target::cpu_seconds_precise(std::process::id()),
            machine: machine_cpu_seconds(),
            at: Instant::now(),
            counted: None,
        }
    }
}

/// CPU seconds every core of the machine has been busy (not idle, not waiting for I/O), from
/// the first line of `/proc/stat`: what else ran during a window is this minus the server's
/// and the clients' share. The machine is shared; this says how much.
fn machine_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal: all but idle and iowait.
    let busy: f64 = [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| ticks.get(i))
        .sum();
    busy / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// The measured window: marks the frames from now on as measured for `seconds`, then closes
/// the window and gives the in-flight frames `GRACE` to arrive. Returns the frames sent in it
/// and their packets, and the clocks at both ends (Switchboard's counter, at `metrics`, read
/// just before and just after, so a slow `/metrics` answer does not stretch the window).
async fn window(
    shared: &Shared,
    server_pid: u32,
    metrics: Option<SocketAddr>,
    seconds: f64,
) -> (Sent, Clocks, Clocks) {
    let counted_before = match metrics {
        Some(server) => packets_forwarded(server).await,
        None => None,
    };
    let first = shared.next_seq.load(Ordering::Relaxed);
    shared.window_start.store(first, Ordering::Relaxed);
    let packets_before = shared.packets_sent.load(Ordering::Relaxed);
    let feedback_before = shared.feedback_sent.load(Ordering::Relaxed);
    let mut before = Clocks::read(server_pid);
    before.counted = counted_before;
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    let end = shared.next_seq.load(Ordering::Relaxed);
    shared.window_end.store(end, Ordering::Relaxed);
    let packets_after = shared.packets_sent.load(Ordering::Relaxed);
    let feedback_after = shared.feedback_sent.load(Ordering::Relaxed);
    let mut after = Clocks::read(server_pid);
    if let Some(server) = metrics {
        after.counted = packets_forwarded(server).await;
    }
    tokio::time::sleep(GRACE).await;
    let sent = Sent {
        frames: end - first,
        packets: packets_after - packets_before,
        feedback: feedback_after - feedback_before,
    };
    (sent, before, after)
}

/// What the source sent in the window.
struct Sent {
    frames: u64,
    packets: u64,
    feedback: u64,
}

/// Waits until every receiver is ready or has failed (`failed`), at most `limit`.
async fn wait_ready(shared: &Shared, failed: &AtomicU64, receivers: usize, limit: Duration) {
    let deadline = Instant::now() + limit;
    while (shared.ready.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed)) < receivers as u64
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Stops the receivers and merges what they saw; returns it with the count of silent ones.
async fn collect(tasks: Vec<JoinHandle<Result<Received, String>>>) -> (Received, u64) {
    let mut all = Received::new();
    let mut silent = 0;
    for task in tasks {
        match task.await {
            Ok(Ok(received)) => {
                if !received.any {
                    silent += 1;
                }
                all.merge(&received);
            }
            Ok(Err(e)) => {
                eprintln!("media: a receiver failed: {e}");
                silent += 1;
            }
            Err(e) => {
                eprintln!("media: a receiver panicked: {e}");
                silent += 1;
            }
        }
    }
    (all, silent)
}

fn outcome(
    forwarder: Forwarder,
    viewers: usize,
    shared: &Shared,
    sent: Sent,
    (before, after): (Clocks, Clocks),
    (received, silent): (Received, u64),
) -> Outcome {
    let h = &received.latency_us;
    Outcome {
        forwarder,
        viewers,
        ready: shared.ready.load(Ordering::Relaxed),
        silent,
        seconds: (after.at - before.at).as_secs_f64(),
        frames_sent: sent.frames,
        packets_sent: sent.packets,
        feedback_sent: sent.feedback,
        frames_received: received.frames,
        packets_received: received.packets,
        packets_counted_by_server: before
            .counted
            .zip(after.counted)
            .map(|(b, a)| a.saturating_sub(b)),
        server_cpu: after.server - before.server,
        server_wait: after.server_wait - before.server_wait,
        client_cpu: after.client - before.client,
        other_cpu: ((after.machine - before.machine)
            - (after.server - before.server)
            - (after.client - before.client))
            .max(0.0),
        latency_us: [
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.9),
            h.value_at_quantile(0.99),
            h.max(),
        ],
    }
}

/// Switchboard's counter of forwarded media packets, from `/metrics`.
async fn packets_forwarded(server: SocketAddr) -> Option<u64> {
    let request = format!(
        "GET /metrics HTTP/1.1\r\nHost: {server}\r\nAuthorization: Bearer bench\r\n\
         Connection: close\r\n\r\n"
    );
    let text = media_peer::http_exchange(server, &request).await.ok()?;
    text.lines()
        .find(|l| l.starts_with("switchboard_media_packets_forwarded"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
}

/// Starts Switchboard with media limits above what the bench opens.
async fn start_switchboard(binary: &Path, port: u16, viewers: usize) -> ServerProcess {
    let most = (viewers + 100).max(1100).to_string();
    let env = [
        ("SWITCHBOARD_WEBRTC__MEDIA__MAX_PEERS", most.clone()),
        ("SWITCHBOARD_WEBRTC__MEDIA__MAX_VIEWERS", most),
        // Viewers connect a few at a time: the last ones wait for the first.
        (
            "SWITCHBOARD_WEBRTC__MEDIA__CONNECT_TIMEOUT",
            "120".to_string(),
        ),
    ];
    let mut server = target::start_switchboard(&binary.to_path_buf(), port, &env);
    target::wait_for_port(target::addr_of(port)).await;
    if let Ok(Some(status)) = server.0.try_wait() {
        panic!("switchboard exited at start: {status}");
    }
    server
}

/// A str0m peer that has sent its offer to `path` and connected.
async fn open_peer(
    server: SocketAddr,
    path: &str,
    direction: Direction,
    cert: &DtlsCert,
) -> Result<Peer, String> {
    let (mut peer, offer) = Peer::new(direction, cert).await;
    let (_location, answer) = media_peer::post_offer(server, path, &offer).await?;
    peer.accept(&answer)?;
    peer.connect(Duration::from_secs(30)).await?;
    Ok(peer)
}

/// One publisher through Switchboard to `viewers` WHEP viewers.
pub(crate) async fn switchboard(
    binary: &Path,
    port: u16,
    viewers: usize,
    load: Load,
    seconds: f64,
) -> Outcome {
    let port = target::pick_port(port);
    let process = start_switchboard(binary, port, viewers).await;
    let server = target::addr_of(port);
    let cert = str0m::crypto::from_feature_flags()
        .dtls_provider
        .generate_certificate()
        .expect("a DTLS certificate");
    let shared = Shared::new();
    let (stop, stopped) = watch::channel(false);

    let publisher = open_peer(server, &format!("/whip/{ROOM}"), Direction::SendOnly, &cert)
        .await
        .expect("the publisher connects");
    let publishing = tokio::spawn(media_peer::publish(
        publisher,
        load,
        shared.clone(),
        stopped.clone(),
    ));

    let failed = Arc::new(AtomicU64::new(0));
    let connecting = Arc::new(Semaphore::new(CONNECTING));
    let tasks: Vec<_> = (0..viewers)
        .map(|_| {
            let (shared, stopped, failed, connecting, cert) = (
                shared.clone(),
                stopped.clone(),
                failed.clone(),
                connecting.clone(),
                cert.clone(),
            );
            tokio::spawn(async move {
                let permit = connecting.acquire_owned().await;
                let peer = open_peer(server, &format!("/whep/{ROOM}"), Direction::RecvOnly, &cert)
                    .await
                    .inspect_err(|_| {
                        failed.fetch_add(1, Ordering::Relaxed);
                    })?;
                drop(permit);
                shared.ready.fetch_add(1, Ordering::Relaxed);
                media_peer::view(peer, shared, stopped).await
            })
        })
        .collect();
    wait_ready(&shared, &failed, viewers, Duration::from_secs(180)).await;
    shared.sending.store(true, Ordering::Relaxed);
    tokio::time::sleep(WARM_UP).await;

    let (sent, before, after) = window(&shared, process.pid(), Some(server), seconds).await;
    let _ = stop.send(true);
    let received = collect(tasks).await;
    match publishing.await {
        Ok(Err(e)) => eprintln!("media: the publisher failed: {e}"),
        Err(e) => eprintln!("media: the publisher panicked: {e}"),
        Ok(Ok(())) => {}
    }
    drop(process);
    outcome(
        Forwarder::Switchboard,
        viewers,
        &shared,
        sent,
        (before, after),
        received,
    )
}

/// The same frames through the raw UDP forwarder to `viewers` receivers.
pub(crate) async fn raw(viewers: usize, load: Load, seconds: f64) -> Outcome {
    let (process, forwarder) = raw_udp::start();
    let shared = Shared::new();
    let (stop, stopped) = watch::channel(false);
    let failed = AtomicU64::new(0);
    let tasks: Vec<_> = (0..viewers)
        .map(|_| tokio::spawn(raw_udp::receive(forwarder, shared.clone(), stopped.clone())))
        .collect();
    wait_ready(&shared, &failed, viewers, Duration::from_secs(60)).await;
    let source = tokio::spawn(raw_udp::source(
        forwarder,
        load,
        shared.clone(),
        stopped.clone(),
    ));
    tokio::time::sleep(WARM_UP).await;

    let (sent, before, after) = window(&shared, process.pid(), None, seconds).await;
    let _ = stop.send(true);
    let received = collect(tasks).await;
    let _ = source.await;
    drop(process);
    outcome(
        Forwarder::Raw,
        viewers,
        &shared,
        sent,
        (before, after),
        received,
    )
}

/// What `switchboard-bench media` was asked.
pub(crate) struct Options {
    pub server: PathBuf,
    pub port: u16,
    pub viewers: Vec<usize>,
    pub seconds: f64,
    pub load: Load,
    pub rounds: usize,
}

/// Every N, both forwarders, `rounds` times (rounds outermost, so a slow spell of the shared
/// machine hits one round of everything rather than every round of one N); then the medians.
pub(crate) async fn run(options: Options) -> Vec<(Outcome, Outcome)> {
    let mut results: Vec<(Outcome, Outcome)> = Vec::new();
    for round in 1..=options.rounds {
        for &n in &options.viewers {
            let sb = switchboard(
                &options.server,
                options.port,
                n,
                options.load,
                options.seconds,
            )
            .await;
            let raw = raw(n, options.load, options.seconds).await;
            eprintln!("round {round}: {}", line(&sb));
            eprintln!("round {round}: {}", line(&raw));
            println!(
                "{}",
                serde_json::json!({"kind": "media", "round": round, "switchboard": sb.json(), "raw": raw.json()})
            );
            results.push((sb, raw));
        }
    }
    print_table(&options, &results);
    results
}

/// One measurement in one line.
pub(crate) fn line(o: &Outcome) -> String {
    format!(
        "{:<11} N={:<4} ready {:>4}, silent {}, frames {} sent, {:.4} delivered, {:.0} pkt/s \
         ({:.1} pkt/frame, {} sent, server counted {}, {:.0} feedback datagrams/s), server cpu {:.2} s (waited {:.2} s) -> {:.0} pkt/cpu-s, client cpu \
         {:.2} s, others {:.2} s, latency p50 {:.2} ms p99 {:.2} ms max {:.2} ms",
        o.forwarder.name(),
        o.viewers,
        o.ready,
        o.silent,
        o.frames_sent,
        o.delivery(),
        o.packets_per_s(),
        o.packets_per_frame(),
        o.packets_sent,
        o.packets_counted_by_server
            .map(|c| c.to_string())
            .unwrap_or("n/a".into()),
        o.feedback_sent as f64 / o.seconds,
        o.server_cpu,
        o.server_wait,
        o.packets_per_cpu_s(),
        o.client_cpu,
        o.other_cpu,
        o.latency_us[0] as f64 / 1000.0,
        o.latency_us[2] as f64 / 1000.0,
        o.latency_us[3] as f64 / 1000.0,
    )
}

/// The median of `values` and their spread (min, max).
fn median(mut values: Vec<f64>) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    let mid = if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    };
    (mid, values[0], values[n - 1])
}

/// The report's table: the median of every round per N, with the spread where it matters.
fn print_table(options: &Options, results: &[(Outcome, Outcome)]) {
    println!(
        "\n{} round(s), {} s each, {} bit/s at {} fps ({} B frames), server {}",
        options.rounds,
        options.seconds,
        options.load.bitrate,
        options.load.fps,
        options.load.frame_size(),
        options.server.display()
    );
    println!(
        "| N | sb packets/s | sb packets per server CPU-s | raw packets per CPU-s | sb ÷ raw | \
         sb p50 / p99 ms | raw p50 / p99 ms | delivery sb / raw | server counted ÷ received | \
         cores busy: server sb / raw, clients sb / raw, others sb / raw |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for &n in &options.viewers {
        let rows: Vec<&(Outcome, Outcome)> =
            results.iter().filter(|(sb, _)| sb.viewers == n).collect();
        let of =
            |f: &dyn Fn(&(Outcome, Outcome)) -> f64| median(rows.iter().map(|r| f(r)).collect());
        let sb_pps = of(&|(sb, _)| sb.packets_per_s());
        let sb_cpu = of(&|(sb, _)| sb.packets_per_cpu_s());
        let raw_cpu = of(&|(_, raw)| raw.packets_per_cpu_s());
        let ratio = of(&|(sb, raw)| sb.packets_per_cpu_s() / raw.packets_per_cpu_s());
        let ms = |o: &Outcome, i: usize| o.latency_us[i] as f64 / 1000.0;
        let sb_p50 = of(&|(sb, _)| ms(sb, 0));
        let sb_p99 = of(&|(sb, _)| ms(sb, 2));
        let raw_p50 = of(&|(_, raw)| ms(raw, 0));
        let raw_p99 = of(&|(_, raw)| ms(raw, 2));
        let sb_delivery = of(&|(sb, _)| sb.delivery());
        let raw_delivery = of(&|(_, raw)| raw.delivery());
        let counted = of(&|(sb, _)| {
            sb.packets_counted_by_server.unwrap_or(0) as f64 / sb.packets_received.max(1) as f64
        });
        let busy = |f: &dyn Fn(&Outcome) -> f64, sb: bool| {
            of(&|(s, r)| {
                let o = if sb { s } else { r };
                f(o) / o.seconds
            })
            .0
        };
        println!(
            "| {n} | {:.0} | {:.0} ({:.0}–{:.0}) | {:.0} ({:.0}–{:.0}) | {:.2}x ({:.2}–{:.2}) | \
             {:.2} / {:.2} | {:.2} / {:.2} | {:.4} / {:.4} | {:.3} | {:.2} / {:.2}, {:.2} / {:.2}, {:.2} / {:.2} |",
            sb_pps.0,
            sb_cpu.0,
            sb_cpu.1,
            sb_cpu.2,
            raw_cpu.0,
            raw_cpu.1,
            raw_cpu.2,
            ratio.0,
            ratio.1,
            ratio.2,
            sb_p50.0,
            sb_p99.0,
            raw_p50.0,
            raw_p99.0,
            sb_delivery.0,
            raw_delivery.0,
            counted.0,
            busy(&|o| o.server_cpu, true),
            busy(&|o| o.server_cpu, false),
            busy(&|o| o.client_cpu, true),
            busy(&|o| o.client_cpu, false),
            busy(&|o| o.other_cpu, true),
            busy(&|o| o.other_cpu, false),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_and_spread() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), (2.0, 1.0, 3.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), (2.5, 1.0, 4.0));
        assert_eq!(median(vec![5.0]), (5.0, 5.0, 5.0));
    }
}
