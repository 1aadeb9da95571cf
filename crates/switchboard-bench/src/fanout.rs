//! Fan-out throughput and latency. `channels` × `per_channel` subscribers, each on one
//! channel, over WebSocket (or, for Switchboard, Server-Sent Events); publishers send 100-byte string payloads carrying the channel's sequence number
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

pub(crate) const PAYLOAD: usize = 100;
const HIST_SHARDS: usize = 16;

/// How the publishers reach the server.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub(crate) enum Via {
    /// The server API over HTTP/1.1.
    Api,
    /// A WebSocket client's publish frames.
    Ws,
}

impl Via {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Via::Api => "api",
            Via::Ws => "ws",
        }
    }
}

/// How the subscribers are connected.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub(crate) enum Subscribers {
    /// WebSocket (the native door, or Pusher's for sockudo).
    Ws,
    /// Server-Sent Events (`/sse`, Switchboard only): the door whose messages carry a
    /// per-client cursor.
    Sse,
}

impl Subscribers {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Subscribers::Ws => "ws",
            Subscribers::Sse => "sse",
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Load {
    pub channels: usize,
    pub per_channel: usize,
    pub subscribers: Subscribers,
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
    /// Switchboard over the API: each burst of `pipeline` messages as one `POST /api/batch`
    /// (as sockudo's always go as one `batch_events`); the raw limit has no batch call.
    pub batch: bool,
}

#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub published: u64,
    /// Published but never answered by the server (neither success nor error).
    pub unanswered: u64,
    pub expected: u64,
    pub delivered: u64,
    /// Deliveries owed and not received (`expected - delivered`).
    pub lost: u64,
    /// Messages a subscriber found missing before a later one of its channel arrived.
    pub gaps: u64,
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

/// A publisher's channels taken in turn, each with its own sequence numbers.
struct Rotation {
    channels: Vec<usize>,
    seqs: Vec<u64>,
    turn: usize,
}

impl Rotation {
    fn new(channels: &[usize]) -> Self {
        Rotation {
            channels: channels.to_vec(),
            seqs: vec![0; channels.len()],
            turn: 0,
        }
    }

    /// The next `count` messages: `(channel, payload)`, round robin over the channels.
    fn next(&mut self, count: usize) -> Vec<(String, String)> {
        (0..count)
            .map(|_| {
                let at = self.turn % self.channels.len();
                self.turn += 1;
                self.seqs[at] += 1;
                (
                    channel_name(self.channels[at]),
                    payload(self.seqs[at], now_ns()),
                )
            })
            .collect()
    }
}

pub(crate) fn channel_name(c: usize) -> String {
    format!("f{c}")
}

struct Counters {
    delivered: AtomicU64,
    lost: AtomicU64,
    out_of_order: AtomicU64,
    /// Deliveries owed: messages published times subscribers of their channel.
    owed: AtomicU64,
    published: AtomicU64,
    /// Publications the server acknowledged (a success answer).
    acknowledged: AtomicU64,
    publish_errors: AtomicU64,
    /// Latencies are recorded for sends after this time (ns); u64::MAX: not yet.
    record_from: AtomicU64,
    histograms: Vec<Mutex<Histogram<u64>>>,
    stop: AtomicBool,
}

/// One subscriber: reads frames, checks each message's sequence number, counts.
async fn subscriber(
    mut stream: TcpStream,
    door: Subscribers,
    counters: Arc<Counters>,
    shard: usize,
) {
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
        let next = match door {
            Subscribers::Ws => next_frame,
            Subscribers::Sse => next_sse_event,
        };
        while let Some((frame, len)) = next(&buf[used..filled]) {
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

/// One SSE event off the start of `buf` (with whatever chunk framing precedes it), as a text
/// frame: the markers are looked for in it.
fn next_sse_event(buf: &[u8]) -> Option<(Frame<'_>, usize)> {
    let end = wire::find(buf, b"\n\n")? + 2;
    Some((Frame::Text(&buf[..end]), end))
}

/// Opens an SSE stream on `channel` and reads up to its `subscribed` announcement.
async fn open_sse(server: SocketAddr, index: usize, channel: String) -> std::io::Result<TcpStream> {
    let request = format!("GET /sse?channel={channel} HTTP/1.1\r\nHost: {server}\r\n\r\n");
    let mut stream =
        wire::connect_from(server, wire::source_for(index), request.as_bytes()).await?;
    wire::read_until(&mut stream, &mut Vec::new(), "\"subscribed\"").await?;
    Ok(stream)
}

/// One publishing connection: the API over HTTP/1.1 or a WebSocket.
struct Publisher {
    target: Target,
    via: Via,
    server: SocketAddr,
    /// Taken by the open-loop publisher, which splits it.
    stream: Option<TcpStream>,
    buf: Vec<u8>,
    next_id: u64,
    /// Which publisher this is, and how many connections it opened (batch mode).
    index: usize,
    connections: u64,
    /// Bursts go as one `POST /api/batch` on the keep-alive connection.
    batch: bool,
}

impl Publisher {
    async fn connect(target: Target, via: Via, server: SocketAddr, n: usize, batch: bool) -> Self {
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
            stream: Some(stream),
            buf: Vec::new(),
            next_id: 1,
            index: n,
            connections: 0,
            batch: batch && via == Via::Api && target == Target::Switchboard,
        }
    }

    /// Writes one request or frame per message at once, then waits for every answer.
    async fn publish(&mut self, messages: &[(String, String)]) -> std::io::Result<u64> {
        if self.via == Via::Api
            && let Some(request) = self.target.http_publish_batch(self.server, messages)
        {
            return self.publish_batch(request, messages.len() as u64).await;
        }
        let (out, answers) = if self.batch {
            (self.target.http_publish_many(self.server, messages), 1)
        } else {
            (self.encode(messages), messages.len())
        };
        let stream = self.stream.as_mut().expect("a connection");
        stream.write_all(&out).await?;
        let mut errors = 0;
        let mut answered = 0;
        while answered < answers {
            match self.next_answer()? {
                Some(ok) => {
                    answered += 1;
                    if !ok {
                        errors += (messages.len() / answers) as u64;
                    }
                }
                None => {
                    let mut chunk = [0u8; 16384];
                    let stream = self.stream.as_mut().expect("a connection");
                    let n = stream.read(&mut chunk).await?;
                    if n == 0 {
                        return Err(std::io::ErrorKind::UnexpectedEof.into());
                    }
                    self.buf.extend_from_slice(&chunk[..n]);
                }
            }
        }
        Ok(errors)
    }

    /// One request (API) or frame (WebSocket) per message, back to back.
    fn encode(&mut self, messages: &[(String, String)]) -> Vec<u8> {
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
        out
    }

    /// One batch request on a fresh connection (for servers that close after each answer);
    /// source addresses rotate so closed connections' ports are not needed again soon.
    async fn publish_batch(&mut self, request: Vec<u8>, count: u64) -> std::io::Result<u64> {
        self.connections += 1;
        let source = Ipv4Addr::new(
            127,
            1 + (self.connections % 200) as u8,
            10 + self.index as u8,
            1,
        );
        let mut stream = wire::connect_from(self.server, source, &request).await?;
        self.buf.clear();
        loop {
            if let Some(ok) = self.next_answer()? {
                return Ok(if ok { 0 } else { count });
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn next_answer(&mut self) -> std::io::Result<Option<bool>> {
        take_answer(&mut self.buf, self.via)
    }
}

/// Takes one complete answer off `buf`: Some(true) for a success, None when none is complete.
fn take_answer(buf: &mut Vec<u8>, via: Via) -> std::io::Result<Option<bool>> {
    match via {
        Via::Api => {
            let Some(head_end) = wire::find(buf, b"\r\n\r\n") else {
                return Ok(None);
            };
            let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
            if head.contains("transfer-encoding: chunked") {
                return Err(std::io::Error::other("chunked API answers are not read"));
            }
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            let total = head_end + 4 + length;
            if buf.len() < total {
                return Ok(None);
            }
            let ok = head.starts_with("http/1.1 200");
            if !ok && std::env::var_os("BENCH_DEBUG").is_some() {
                eprintln!("{}", String::from_utf8_lossy(&buf[..total]));
            }
            buf.drain(..total);
            Ok(Some(ok))
        }
        Via::Ws => loop {
            let Some((frame, len)) = next_frame(buf) else {
                return Ok(None);
            };
            let answer = match frame {
                Frame::Text(text) if wire::find(text, b"\"reply\"").is_some() => Some(true),
                Frame::Text(text) if wire::find(text, b"\"error\"").is_some() => Some(false),
                _ => None,
            };
            buf.drain(..len);
            if answer.is_some() {
                return Ok(answer);
            }
        },
    }
}

/// Publishing at a fixed rate over a keep-alive connection, open loop: requests leave on
/// schedule whatever the answers do (a task of its own reads those), so a slow answer never
/// holds back the next publication and what the histogram shows is the server's latency,
/// not the pacing's.
async fn publish_open_loop(
    mut publisher: Publisher,
    my_channels: Vec<usize>,
    rate: f64,
    per_channel: usize,
    counters: Arc<Counters>,
) {
    let via = publisher.via;
    let (mut read_half, mut write_half) = publisher
        .stream
        .take()
        .expect("a keep-alive connection")
        .into_split();
    let sent_total = Arc::new(AtomicU64::new(0));
    // Set once the writer has written its last request: only then is `sent_total` final.
    let writer_done = Arc::new(AtomicBool::new(false));
    let reader = {
        let counters = counters.clone();
        let sent_total = sent_total.clone();
        let writer_done = writer_done.clone();
        let mut buf = std::mem::take(&mut publisher.buf);
        tokio::spawn(async move {
            let mut answered = 0u64;
            let mut chunk = vec![0u8; 65536];
            let mut stopped_at: Option<Instant> = None;
            loop {
                while let Ok(Some(ok)) = take_answer(&mut buf, via) {
                    answered += 1;
                    if ok {
                        counters.acknowledged.fetch_add(1, Ordering::Relaxed);
                    } else {
                        counters.publish_errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if writer_done.load(Ordering::Acquire) {
                    let since = *stopped_at.get_or_insert_with(Instant::now);
                    let sent = sent_total.load(Ordering::Relaxed);
                    if answered >= sent {
                        return;
                    }
                    if since.elapsed() > Duration::from_secs(10) {
                        eprintln!(
                            "publisher: {} of {sent} publications unanswered; {} bytes unread: {:?}",
                            sent - answered,
                            buf.len(),
                            String::from_utf8_lossy(&buf[..buf.len().min(300)])
                        );
                        return;
                    }
                }
                match tokio::time::timeout(Duration::from_millis(50), read_half.read(&mut chunk))
                    .await
                {
                    Ok(Ok(0)) | Ok(Err(_)) => {
                        if answered < sent_total.load(Ordering::Relaxed) {
                            eprintln!("publisher: the server closed with publications unanswered");
                        }
                        return;
                    }
                    Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
                    Err(_) => {}
                }
            }
        })
    };
    let mut rotation = Rotation::new(&my_channels);
    let started = Instant::now();
    let mut sent = 0u64;
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while !counters.stop.load(Ordering::Relaxed) {
        ticker.tick().await;
        let due = (started.elapsed().as_secs_f64() * rate) as u64;
        let count = due.saturating_sub(sent) as usize;
        if count == 0 {
            continue;
        }
        let messages = rotation.next(count);
        let out = publisher.encode(&messages);
        counters
            .owed
            .fetch_add((count * per_channel) as u64, Ordering::Relaxed);
        counters
            .published
            .fetch_add(count as u64, Ordering::Relaxed);
        sent += count as u64;
        sent_total.store(sent, Ordering::Relaxed);
        if let Err(e) = write_half.write_all(&out).await {
            eprintln!("publisher failed: {e}");
            break;
        }
    }
    writer_done.store(true, Ordering::Release);
    let _ = reader.await;
}

/// One publishing task: its share of the channels, round-robin, closed-loop or at `rate`.
async fn publish_loop(
    mut publisher: Publisher,
    my_channels: Vec<usize>,
    load: Load,
    rate: Option<f64>,
    counters: Arc<Counters>,
) {
    if let Some(rate) = rate
        && publisher.target != Target::Sockudo
    {
        return publish_open_loop(publisher, my_channels, rate, load.per_channel, counters).await;
    }
    let mut rotation = Rotation::new(&my_channels);
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
        let messages = rotation.next(count);
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
                counters
                    .acknowledged
                    .fetch_add(count as u64 - errors, Ordering::Relaxed);
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
pub(crate) async fn run(
    target: Target,
    server: SocketAddr,
    server_pid: u32,
    load: &Load,
) -> Outcome {
    let subscribers = load.channels * load.per_channel;
    let per_channel = load.per_channel;
    let sockets = match load.subscribers {
        Subscribers::Ws => {
            connrate::open_many(target, server, 0, subscribers, |i| {
                Some(channel_name(i / per_channel))
            })
            .await
            .unwrap_or_else(|e| panic!("{} subscribers: {e}", target.name()))
            .0
        }
        Subscribers::Sse => {
            assert_eq!(target, Target::Switchboard, "only Switchboard has SSE");
            let mut sockets = Vec::with_capacity(subscribers);
            let mut batch = tokio::task::JoinSet::new();
            for i in 0..subscribers {
                batch.spawn(open_sse(server, i, channel_name(i / per_channel)));
                if batch.len() >= 256
                    && let Some(done) = batch.join_next().await
                {
                    sockets.push(done.expect("task").expect("SSE subscriber"));
                }
            }
            while let Some(done) = batch.join_next().await {
                sockets.push(done.expect("task").expect("SSE subscriber"));
            }
            sockets
        }
    };
    let counters = Arc::new(Counters {
        delivered: AtomicU64::new(0),
        lost: AtomicU64::new(0),
        out_of_order: AtomicU64::new(0),
        owed: AtomicU64::new(0),
        published: AtomicU64::new(0),
        acknowledged: AtomicU64::new(0),
        publish_errors: AtomicU64::new(0),
        record_from: AtomicU64::new(u64::MAX),
        histograms: (0..HIST_SHARDS)
            .map(|_| Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3).unwrap()))
            .collect(),
        stop: AtomicBool::new(false),
    });
    let mut readers = tokio::task::JoinSet::new();
    for (i, socket) in sockets.into_iter().enumerate() {
        readers.spawn(subscriber(socket, load.subscribers, counters.clone(), i));
    }

    let publishers = load.publishers.min(load.channels).max(1);
    let mut publishing = tokio::task::JoinSet::new();
    for p in 0..publishers {
        let mine: Vec<usize> = (p..load.channels).step_by(publishers).collect();
        let publisher = Publisher::connect(target, load.via, server, p, load.batch).await;
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
    let published = counters.published.load(Ordering::Relaxed);
    let publish_errors = counters.publish_errors.load(Ordering::Relaxed);
    let acknowledged = counters.acknowledged.load(Ordering::Relaxed);
    Outcome {
        published,
        unanswered: published.saturating_sub(acknowledged + publish_errors),
        expected,
        delivered,
        lost: expected.saturating_sub(delivered),
        gaps: counters.lost.load(Ordering::Relaxed),
        out_of_order: counters.out_of_order.load(Ordering::Relaxed),
        publish_errors,
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
