//! Fan-out throughput and latency. `channels` × `per_channel` subscribers, each on one
//! channel; publishers send 100-byte string payloads carrying the channel's sequence number
//! (`|q<n>`) and the send time (`|t<ns>`, on this process's clock), through the server API
//! (keep-alive HTTP/1.1, pipelined) or over WebSocket. Every subscriber checks that its
//! channel's numbers arrive one by one, so a loss or a reordering is counted, never missed.
//!
//! Without a rate the publishers run closed-loop: they keep at most `window` undelivered
//! messages per subscriber in flight, so the measure is the most the server delivers
//! without queueing without bound (and without tripping any slow-consumer limit). With a
//! rate they publish at that many messages per second, and the latency of every delivery
//! goes into an hdrhistogram.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::connrate;
use crate::target::Target;
use crate::wire::{self, Frame, masked_text_frame, next_frame, number_after};

pub const PAYLOAD: usize = 100;
const HIST_SHARDS: usize = 16;

/// How the publishers reach the server.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Via {
    /// The server API over HTTP/1.1.
    Api,
    /// A WebSocket client's publish frames.
    Ws,
}

impl Via {
    pub fn name(self) -> &'static str {
        match self {
            Via::Api => "api",
            Via::Ws => "ws",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Load {
    pub channels: usize,
    pub per_channel: usize,
    pub via: Via,
    /// Messages per second; None: as fast as the server delivers (closed loop).
    pub rate: Option<f64>,
    pub seconds: f64,
    /// Publishing connections (each owns a share of the channels, so per-channel order holds).
    pub publishers: usize,
    /// Requests written at once on one publishing connection.
    pub pipeline: usize,
    /// Closed loop: undelivered messages allowed per subscriber.
    pub window: u64,
}

#[derive(Debug, Default)]
pub struct Outcome {
    pub published: u64,
    pub expected: u64,
    pub delivered: u64,
    pub lost: u64,
    pub out_of_order: u64,
    pub publish_errors: u64,
    pub deliveries_per_s: f64,
    pub messages_per_s: f64,
    pub server_cpu: f64,
    /// Latency percentiles in microseconds: p50, p90, p99, p99.9, max.
    pub latency_us: Option<[u64; 5]>,
}

fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

fn now_ns() -> u64 {
    base().elapsed().as_nanos() as u64
}

/// The 100-byte payload: sequence number, send time, padding.
fn payload(seq: u64, sent_ns: u64) -> String {
    let mut text = format!("|q{seq}|t{sent_ns}|");
    while text.len() < PAYLOAD {
        text.push('x');
    }
    text
}

pub fn channel_name(c: usize) -> String {
    format!("f{c}")
}

struct Counters {
    delivered: AtomicU64,
    lost: AtomicU64,
    out_of_order: AtomicU64,
    /// Deliveries owed: messages published times subscribers of their channel.
    owed: AtomicU64,
    published: AtomicU64,
    publish_errors: AtomicU64,
    /// Latencies are recorded for sends after this time (ns); u64::MAX: not yet.
    record_from: AtomicU64,
    histograms: Vec<Mutex<Histogram<u64>>>,
    stop: AtomicBool,
}

/// One subscriber: reads frames, checks each message's sequence number, counts.
async fn subscriber(mut stream: TcpStream, counters: Arc<Counters>, shard: usize) {
    let mut buf = vec![0u8; 16384];
    let mut filled = 0;
    let mut expected = 1u64;
    let mut latencies = Vec::new();
    loop {
        if filled == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        let n = match stream.read(&mut buf[filled..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        filled += n;
        let mut used = 0;
        let mut delivered = 0;
        let record_from = counters.record_from.load(Ordering::Relaxed);
        let now = now_ns();
        while let Some((frame, len)) = next_frame(&buf[used..filled]) {
            match frame {
                Frame::Text(text) => {
                    if let Some(seq) = number_after(text, b"|q") {
                        delivered += 1;
                        if seq > expected {
                            counters.lost.fetch_add(seq - expected, Ordering::Relaxed);
                        } else if seq < expected {
                            counters.out_of_order.fetch_add(1, Ordering::Relaxed);
                        }
                        expected = expected.max(seq + 1);
                        if let Some(sent) = number_after(text, b"|t")
                            && sent >= record_from
                        {
                            latencies.push(now.saturating_sub(sent) / 1000);
                        }
                    }
                }
                Frame::Ping(data) => {
                    let pong = wire::pong_frame(data);
                    used += len;
                    if stream.write_all(&pong).await.is_err() {
                        return;
                    }
                    continue;
                }
                Frame::Close => return,
                Frame::Other => {}
            }
            used += len;
        }
        buf.copy_within(used..filled, 0);
        filled -= used;
        if delivered > 0 {
            counters.delivered.fetch_add(delivered, Ordering::Relaxed);
        }
        if !latencies.is_empty() {
            let mut histogram = counters.histograms[shard % HIST_SHARDS].lock();
            for l in latencies.drain(..) {
                let _ = histogram.record(l.max(1));
            }
        }
    }
}

/// One publishing connection: the API over HTTP/1.1 or a WebSocket.
struct Publisher {
    target: Target,
    via: Via,
    server: SocketAddr,
    stream: TcpStream,
    buf: Vec<u8>,
    next_id: u64,
}

impl Publisher {
    async fn connect(target: Target, via: Via, server: SocketAddr, n: usize) -> Self {
        let source = Ipv4Addr::new(127, 0, 9, 1 + n as u8);
        let stream = match via {
            Via::Api => wire::connect_from(server, source, b"").await,
            Via::Ws => {
                let request = wire::upgrade_request(server, &target.ws_path());
                let mut stream = wire::connect_from(server, source, request.as_bytes())
                    .await
                    .expect("publisher connects");
                let mut seen = Vec::new();
                wire::read_until(&mut stream, &mut seen, target.connected_marker())
                    .await
                    .expect("publisher's connected frame");
                Ok(stream)
            }
        }
        .expect("publisher connects");
        Publisher {
            target,
            via,
            server,
            stream,
            buf: Vec::new(),
            next_id: 1,
        }
    }

    /// Writes one request or frame per message at once, then waits for every answer.
    async fn publish(&mut self, messages: &[(String, String)]) -> std::io::Result<u64> {
        let mut out = Vec::with_capacity(messages.len() * 300);
        for (channel, data) in messages {
            match self.via {
                Via::Api => {
                    out.extend_from_slice(&self.target.http_publish(self.server, channel, data))
                }
                Via::Ws => {
                    let frame = self
                        .target
                        .ws_publish(self.next_id, channel, data)
                        .expect("this server publishes over WebSocket");
                    self.next_id += 1;
                    out.extend_from_slice(&masked_text_frame(frame.as_bytes()));
                }
            }
        }
        self.stream.write_all(&out).await?;
        let mut errors = 0;
        let mut answered = 0;
        while answered < messages.len() {
            match self.next_answer()? {
                Some(ok) => {
                    answered += 1;
                    if !ok {
                        errors += 1;
                    }
                }
                None => {
                    let mut chunk = [0u8; 16384];
                    let n = self.stream.read(&mut chunk).await?;
                    if n == 0 {
                        return Err(std::io::ErrorKind::UnexpectedEof.into());
                    }
                    self.buf.extend_from_slice(&chunk[..n]);
                }
            }
        }
        Ok(errors)
    }

    /// Takes one complete answer off the buffer: Some(true) for a success.
    fn next_answer(&mut self) -> std::io::Result<Option<bool>> {
        match self.via {
            Via::Api => {
                let Some(head_end) = wire::find(&self.buf, b"\r\n\r\n") else {
                    return Ok(None);
                };
                let head = String::from_utf8_lossy(&self.buf[..head_end]).to_ascii_lowercase();
                if head.contains("transfer-encoding: chunked") {
                    return Err(std::io::Error::other("chunked API answers are not read"));
                }
                let length = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                let total = head_end + 4 + length;
                if self.buf.len() < total {
                    return Ok(None);
                }
                let ok = head.starts_with("http/1.1 200");
                if !ok && std::env::var_os("BENCH_DEBUG").is_some() {
                    eprintln!("{}", String::from_utf8_lossy(&self.buf[..total]));
                }
                self.buf.drain(..total);
                Ok(Some(ok))
            }
            Via::Ws => loop {
                let Some((frame, len)) = next_frame(&self.buf) else {
                    return Ok(None);
                };
                let answer = match frame {
                    Frame::Text(text) if wire::find(text, b"\"reply\"").is_some() => Some(true),
                    Frame::Text(text) if wire::find(text, b"\"error\"").is_some() => Some(false),
                    _ => None,
                };
                self.buf.drain(..len);
                if answer.is_some() {
                    return Ok(answer);
                }
            },
        }
    }
}

/// One publishing task: its share of the channels, round-robin, closed-loop or at `rate`.
async fn publish_loop(
    mut publisher: Publisher,
    my_channels: Vec<usize>,
    load: Load,
    rate: Option<f64>,
    counters: Arc<Counters>,
) {
    let mut seqs = vec![0u64; my_channels.len()];
    let mut turn = 0;
    let started = Instant::now();
    let mut sent = 0u64;
    let in_flight_cap = load.window * (load.channels * load.per_channel) as u64;
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while !counters.stop.load(Ordering::Relaxed) {
        let count = match rate {
            Some(rate) => {
                ticker.tick().await;
                let due = (started.elapsed().as_secs_f64() * rate) as u64;
                (due.saturating_sub(sent) as usize).min(load.pipeline * 8)
            }
            None => {
                let owed = counters.owed.load(Ordering::Relaxed);
                let delivered = counters.delivered.load(Ordering::Relaxed);
                if owed.saturating_sub(delivered) >= in_flight_cap {
                    tokio::time::sleep(Duration::from_micros(200)).await;
                    continue;
                }
                load.pipeline
            }
        };
        if count == 0 {
            continue;
        }
        let messages: Vec<(String, String)> = (0..count)
            .map(|_| {
                let at = turn % my_channels.len();
                turn += 1;
                seqs[at] += 1;
                (channel_name(my_channels[at]), payload(seqs[at], now_ns()))
            })
            .collect();
        counters
            .owed
            .fetch_add((count * load.per_channel) as u64, Ordering::Relaxed);
        counters
            .published
            .fetch_add(count as u64, Ordering::Relaxed);
        sent += count as u64;
        match publisher.publish(&messages).await {
            Ok(errors) => {
                counters.publish_errors.fetch_add(errors, Ordering::Relaxed);
            }
            Err(e) => {
                eprintln!("publisher failed: {e}");
                counters
                    .publish_errors
                    .fetch_add(count as u64, Ordering::Relaxed);
                return;
            }
        }
    }
}

/// Runs one fan-out measurement against a server already listening at `server`.
pub async fn run(target: Target, server: SocketAddr, server_pid: u32, load: &Load) -> Outcome {
    let subscribers = load.channels * load.per_channel;
    let per_channel = load.per_channel;
    let (sockets, _) = connrate::open_many(target, server, 0, subscribers, |i| {
        Some(channel_name(i / per_channel))
    })
    .await
    .unwrap_or_else(|e| panic!("{} subscribers: {e}", target.name()));
    let counters = Arc::new(Counters {
        delivered: AtomicU64::new(0),
        lost: AtomicU64::new(0),
        out_of_order: AtomicU64::new(0),
        owed: AtomicU64::new(0),
        published: AtomicU64::new(0),
        publish_errors: AtomicU64::new(0),
        record_from: AtomicU64::new(u64::MAX),
        histograms: (0..HIST_SHARDS)
            .map(|_| Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3).unwrap()))
            .collect(),
        stop: AtomicBool::new(false),
    });
    let mut readers = tokio::task::JoinSet::new();
    for (i, socket) in sockets.into_iter().enumerate() {
        readers.spawn(subscriber(socket, counters.clone(), i));
    }

    let publishers = load.publishers.min(load.channels).max(1);
    let mut publishing = tokio::task::JoinSet::new();
    for p in 0..publishers {
        let mine: Vec<usize> = (p..load.channels).step_by(publishers).collect();
        let publisher = Publisher::connect(target, load.via, server, p).await;
        let rate = load.rate.map(|r| r / publishers as f64);
        publishing.spawn(publish_loop(
            publisher,
            mine,
            load.clone(),
            rate,
            counters.clone(),
        ));
    }

    // Warm up, then measure over `seconds`.
    tokio::time::sleep(Duration::from_secs(1)).await;
    counters.record_from.store(now_ns(), Ordering::Relaxed);
    let cpu0 = crate::target::cpu_seconds(server_pid);
    let delivered0 = counters.delivered.load(Ordering::Relaxed);
    let published0 = counters.published.load(Ordering::Relaxed);
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(load.seconds)).await;
    let delivered1 = counters.delivered.load(Ordering::Relaxed);
    let published1 = counters.published.load(Ordering::Relaxed);
    let window = t0.elapsed().as_secs_f64();
    let cpu1 = crate::target::cpu_seconds(server_pid);
    counters.stop.store(true, Ordering::Relaxed);
    while publishing.join_next().await.is_some() {}

    // Let everything owed arrive; give up after 10 s without progress.
    let mut last = counters.delivered.load(Ordering::Relaxed);
    let mut still = Instant::now();
    while last < counters.owed.load(Ordering::Relaxed) && still.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = counters.delivered.load(Ordering::Relaxed);
        if now != last {
            last = now;
            still = Instant::now();
        }
    }
    readers.abort_all();
    while readers.join_next().await.is_some() {}

    let delivered = counters.delivered.load(Ordering::Relaxed);
    let expected = counters.owed.load(Ordering::Relaxed);
    let latency_us = load.rate.map(|_| {
        let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        for h in &counters.histograms {
            all.add(&*h.lock()).unwrap();
        }
        [
            all.value_at_quantile(0.5),
            all.value_at_quantile(0.9),
            all.value_at_quantile(0.99),
            all.value_at_quantile(0.999),
            all.max(),
        ]
    });
    Outcome {
        published: counters.published.load(Ordering::Relaxed),
        expected,
        delivered,
        lost: expected.saturating_sub(delivered),
        out_of_order: counters.out_of_order.load(Ordering::Relaxed),
        publish_errors: counters.publish_errors.load(Ordering::Relaxed),
        deliveries_per_s: (delivered1 - delivered0) as f64 / window,
        messages_per_s: (published1 - published0) as f64 / window,
        server_cpu: (cpu1 - cpu0) / window,
        latency_us,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_100_bytes_and_carry_their_numbers() {
        let text = payload(42, 123_456_789);
        assert_eq!(text.len(), PAYLOAD);
        assert_eq!(number_after(text.as_bytes(), b"|q"), Some(42));
        assert_eq!(number_after(text.as_bytes(), b"|t"), Some(123_456_789));
    }
}
