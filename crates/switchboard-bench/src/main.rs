//! `switchboard-bench`: measurements of the real Switchboard binary side by side with peers
//! measured in the same run (sockudo, and a raw pre-encoded tokio broadcaster as the
//! machine's limit). Every server runs as a child process, so each is measured the same way:
//! its own CPU time and its RSS from `/proc/<pid>/status`.
//!
//! Modes: `suite` (everything, JSON lines for `bench/report.py`; `--smoke` for CI), `fanout`
//! (throughput or, with `--rate`, latency), `idle` (memory per idle connection and handshake
//! rate), `turn` (the embedded TURN relay), `media` (the SFU against a raw UDP forwarder), and
//! the helpers `raw-server`, `raw-udp-forwarder` and `hold`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

mod connrate;
mod fanout;
mod idle;
mod media_bench;
mod media_peer;
mod pusher;
mod raw;
mod raw_udp;
mod suite;
mod target;
mod turn_bench;
mod wire;

use fanout::Via;
use idle::Door;
use target::{Binaries, Target};

#[derive(Parser)]
#[command(
    name = "switchboard-bench",
    about = "Measurements of Switchboard against sockudo and the raw limit"
)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Every measurement against every server; results as JSON lines.
    Suite {
        /// Append the results to this file.
        #[arg(long)]
        out: Option<PathBuf>,
        /// CI-sized: seconds, small counts, no sockudo; fails on any lost message.
        #[arg(long)]
        smoke: bool,
        /// Servers to measure.
        #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Target::Switchboard, Target::Sockudo, Target::Raw])]
        targets: Vec<Target>,
        /// Port for the server (0: any free one).
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// Seconds of each throughput or latency measurement.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
    },
    /// Fan-out throughput (closed loop) or, with --rate, latency at a fixed rate.
    Fanout {
        #[arg(long, value_enum, default_value_t = Target::Switchboard)]
        target: Target,
        #[arg(long, value_enum, default_value_t = Via::Api)]
        via: Via,
        /// How subscribers connect (SSE: Switchboard only).
        #[arg(long, value_enum, default_value_t = fanout::Subscribers::Ws)]
        subscribers: fanout::Subscribers,
        #[arg(long, default_value_t = 1)]
        channels: usize,
        /// Subscribers of each channel.
        #[arg(long, default_value_t = 10_000)]
        per_channel: usize,
        /// Messages per second (omit for the maximum).
        #[arg(long)]
        rate: Option<f64>,
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        #[arg(long, default_value_t = 8)]
        publishers: usize,
        #[arg(long, default_value_t = 16)]
        pipeline: usize,
        /// Closed loop: undelivered messages allowed per subscriber.
        #[arg(long, default_value_t = 32)]
        window: u64,
        /// Switchboard via the API: each burst of `--pipeline` messages as one
        /// `POST /api/batch` (sockudo's bursts are always one `batch_events`).
        #[arg(long)]
        batch: bool,
        /// Port for the server (0: any free one).
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// The server binary (default: next to this one; sockudo: the bench's cache).
        #[arg(long)]
        server: Option<PathBuf>,
    },
    /// Memory per idle connection and handshakes per second.
    Idle {
        #[arg(long, value_enum, default_value_t = Target::Switchboard)]
        target: Target,
        #[arg(long, value_enum, default_value_t = Door::Ws)]
        door: Door,
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// Also subscribe each WebSocket to its own channel.
        #[arg(long)]
        subscribe: bool,
        /// Client connections per holding process.
        #[arg(long, default_value_t = 10_000)]
        per_process: usize,
        /// Port for the server (0: any free one).
        #[arg(long, default_value_t = 0)]
        port: u16,
        #[arg(long)]
        server: Option<PathBuf>,
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
    /// Media forwarding: one synthetic VP8 publisher to N WHEP viewers through the SFU, and
    /// the same frames through a raw UDP forwarder (the machine's limit).
    Media {
        /// The server binary (default: next to this one).
        #[arg(long)]
        server: Option<PathBuf>,
        /// Port for the server (0: any free one); media uses the same number over UDP.
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// Viewer counts to measure.
        #[arg(long, value_delimiter = ',', default_values_t = [1, 10, 100, 500])]
        viewers: Vec<usize>,
        /// Seconds of each measured window.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Bits per second of the publisher's frames.
        #[arg(long, default_value_t = 1_000_000)]
        bitrate: u64,
        #[arg(long, default_value_t = 30)]
        fps: u32,
        /// Times to measure everything; the table shows the median and the spread.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// The raw UDP forwarder of `media` (started by it).
    RawUdpForwarder,
    /// The raw limit server (started by the other modes).
    RawServer {
        #[arg(long)]
        port: u16,
    },
    /// Holds idle connections for `idle` until standard input closes (started by `idle`).
    Hold {
        #[arg(long, value_enum)]
        target: Target,
        #[arg(long, value_enum)]
        door: Door,
        #[arg(long)]
        port: u16,
        #[arg(long)]
        first: usize,
        #[arg(long)]
        connections: usize,
        #[arg(long)]
        subscribe: bool,
    },
}

fn binaries(target: Target, server: Option<PathBuf>) -> Binaries {
    match target {
        Target::Sockudo => Binaries::new(None, server),
        _ => Binaries::new(server, None),
    }
}

fn main() {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match cli.mode {
        Mode::Suite {
            out,
            smoke,
            targets,
            port,
            seconds,
        } => {
            let targets = if smoke {
                targets.into_iter().filter(|t| *t != Target::Sockudo).collect()
            } else {
                targets
            };
            let ok = runtime.block_on(suite::run(suite::Options {
                out,
                smoke,
                targets,
                port,
                seconds,
            }));
            if !ok && smoke {
                std::process::exit(1);
            }
        }
        Mode::Fanout {
            target,
            via,
            subscribers,
            channels,
            per_channel,
            rate,
            seconds,
            publishers,
            pipeline,
            window,
            batch,
            port,
            server,
        } => runtime.block_on(async {
            println!("open files limit     {}", wire::raise_open_files());
            let bins = binaries(target, server);
            let port = target::pick_port(port);
            let process = target::start(target, &bins, port).await;
            let load = fanout::Load {
                channels,
                per_channel,
                subscribers,
                via,
                rate,
                seconds,
                publishers,
                pipeline,
                window,
                batch,
            };
            let outcome = fanout::run(target, target::addr_of(port), process.pid(), &load).await;
            println!("server               {}", target.name());
            println!(
                "load                 {channels} channels x {per_channel} {} subscribers, publishing via {}",
                subscribers.name(),
                via.name()
            );
            println!("{outcome:#?}");
        }),
        Mode::Idle {
            target,
            door,
            connections,
            subscribe,
            per_process,
            port,
            server,
        } => runtime.block_on(async {
            let cap = wire::raise_open_files();
            let bins = binaries(target, server);
            let port = target::pick_port(port);
            let process = target::start(target, &bins, port).await;
            let outcome = idle::measure(
                target,
                door,
                port,
                process.pid(),
                connections,
                subscribe,
                per_process,
            )
            .await;
            println!("server               {}", target.name());
            println!("open files limit     {cap} (per process)");
            println!(
                "connections          {connections} idle {}{} held by {} processes",
                door.name(),
                if subscribe { ", each subscribed" } else { "" },
                outcome.processes
            );
            println!(
                "server RSS           {:.1} MiB -> {:.1} MiB",
                outcome.rss_before as f64 / 1048576.0,
                outcome.rss_after as f64 / 1048576.0
            );
            println!(
                "per connection       {:.0} bytes ({:.2} KiB)",
                outcome.per_connection,
                outcome.per_connection / 1024.0
            );
            println!(
                "handshakes           {:.0}/s (including the first server frame)",
                outcome.handshakes_per_s
            );
        }),
        Mode::Turn {
            server,
            port,
            seconds,
        } => runtime.block_on(turn_bench::run(
            Binaries::new(server, None).switchboard,
            port,
            seconds,
        )),
        Mode::Media {
            server,
            port,
            viewers,
            seconds,
            bitrate,
            fps,
            rounds,
        } => {
            wire::raise_open_files();
            let options = media_bench::Options {
                server: Binaries::new(server, None).switchboard,
                port,
                viewers,
                seconds,
                load: media_peer::Load { bitrate, fps },
                rounds: rounds.max(1),
            };
            runtime.block_on(media_bench::run(options));
        }
        Mode::RawUdpForwarder => raw_udp::serve(),
        Mode::RawServer { port } => {
            wire::raise_open_files();
            runtime.block_on(raw::serve(port))
        }
        Mode::Hold {
            target,
            door,
            port,
            first,
            connections,
            subscribe,
        } => runtime.block_on(idle::hold(target, door, port, first, connections, subscribe)),
    }
}
