//! The whole comparison in one run: every measurement against Switchboard, sockudo and the
//! raw limit, each server freshly started for each measurement, results appended as JSON
//! lines (`bench/report.py` turns them into BENCHMARKS.md and plots). `--smoke` is the
//! CI-sized version: seconds, small counts, no sockudo, and it fails on any lost message.

use std::io::Write;
use std::path::PathBuf;

use serde_json::{Value, json};

use crate::fanout::{self, Load, Outcome, Via};
use crate::idle::{self, Door};
use crate::media_bench;
use crate::media_peer;
use crate::target::{self, Binaries, Target};

pub(crate) struct Options {
    pub out: Option<PathBuf>,
    pub smoke: bool,
    pub targets: Vec<Target>,
    pub port: u16,
    pub seconds: f64,
}

struct Suite {
    options: Options,
    bins: Binaries,
    failures: Vec<String>,
}

impl Suite {
    fn record(&mut self, value: Value) {
        println!("{value}");
        if let Some(path) = &self.options.out {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .expect("results file");
            writeln!(file, "{value}").expect("results line");
        }
    }

    async fn fanout(&mut self, target: Target, load: Load, label: &str) -> Outcome {
        let port = target::pick_port(self.options.port);
        let server = target::start(target, &self.bins, port).await;
        let outcome = fanout::run(target, target::addr_of(port), server.pid(), &load).await;
        let rss = target::rss_bytes(server.pid());
        drop(server);
        eprintln!(
            "{label:>10} {:<11} {:>3} {:>5}x{:<6} rate {:>9} -> {:>10.0} deliveries/s, {:>7.0} msg/s, lost {} (gaps {}, unanswered publishes {}), reordered {}, errors {}, cpu {:.2}, p99 {:?}",
            target.name(),
            load.via.name(),
            load.channels,
            load.per_channel,
            load.rate.map(|r| format!("{r:.0}")).unwrap_or("max".into()),
            outcome.deliveries_per_s,
            outcome.messages_per_s,
            outcome.lost,
            outcome.gaps,
            outcome.unanswered,
            outcome.out_of_order,
            outcome.publish_errors,
            outcome.server_cpu,
            outcome.latency_us.map(|l| l[2]),
        );
        if outcome.lost > 0 || outcome.out_of_order > 0 || outcome.publish_errors > 0 {
            self.failures.push(format!(
                "{label} {}: lost {}, reordered {}, publish errors {}",
                target.name(),
                outcome.lost,
                outcome.out_of_order,
                outcome.publish_errors
            ));
        }
        self.record(json!({
            "kind": "fanout",
            "label": label,
            "target": target.name(),
            "via": load.via.name(),
            "channels": load.channels,
            "per_channel": load.per_channel,
            "subscribers": load.channels * load.per_channel,
            "rate": load.rate,
            "seconds": load.seconds,
            "published": outcome.published,
            "expected": outcome.expected,
            "delivered": outcome.delivered,
            "lost": outcome.lost,
            "gaps": outcome.gaps,
            "unanswered": outcome.unanswered,
            "out_of_order": outcome.out_of_order,
            "publish_errors": outcome.publish_errors,
            "deliveries_per_s": outcome.deliveries_per_s,
            "messages_per_s": outcome.messages_per_s,
            "server_cpu": outcome.server_cpu,
            "server_rss_end": rss,
            "latency_us": outcome.latency_us,
        }));
        outcome
    }

    /// One synthetic VP8 publisher to `viewers` WHEP viewers through the SFU, and the same
    /// frames through the raw UDP forwarder; a viewer that receives nothing is a failure.
    async fn media(&mut self, viewers: usize, label: &str) {
        let load = media_peer::Load {
            bitrate: 1_000_000,
            fps: 30,
        };
        let seconds = self.options.seconds;
        let sb = media_bench::switchboard(
            &self.bins.switchboard,
            self.options.port,
            viewers,
            load,
            seconds,
        )
        .await;
        let raw = media_bench::raw(viewers, load, seconds).await;
        eprintln!("{label:>10} {}", media_bench::line(&sb));
        eprintln!("{label:>10} {}", media_bench::line(&raw));
        for o in [&sb, &raw] {
            if o.silent > 0 || o.frames_received == 0 {
                self.failures.push(format!(
                    "{label} {} N={viewers}: {} of {} viewers received nothing, {} frames in the window",
                    o.forwarder.name(),
                    o.silent,
                    o.viewers,
                    o.frames_received
                ));
            }
        }
        self.record(json!({
            "kind": "media",
            "label": label,
            "viewers": viewers,
            "bitrate": load.bitrate,
            "fps": load.fps,
            "switchboard": sb.json(),
            "raw": raw.json(),
        }));
    }

    async fn idle(&mut self, target: Target, door: Door, connections: usize, label: &str) {
        let port = target::pick_port(self.options.port);
        let server = target::start(target, &self.bins, port).await;
        let outcome =
            idle::measure(target, door, port, server.pid(), connections, false, 10_000).await;
        drop(server);
        eprintln!(
            "{label:>10} {:<11} {:<3} {:>6} conns in {} processes: {:>7.0} B/conn, {:>6.0} handshakes/s",
            target.name(),
            door.name(),
            connections,
            outcome.processes,
            outcome.per_connection,
            outcome.handshakes_per_s
        );
        self.record(json!({
            "kind": "idle",
            "label": label,
            "target": target.name(),
            "door": door.name(),
            "connections": connections,
            "processes": outcome.processes,
            "rss_before": outcome.rss_before,
            "rss_after": outcome.rss_after,
            "per_connection": outcome.per_connection,
            "handshakes_per_s": outcome.handshakes_per_s,
        }));
    }
}

fn load(channels: usize, per_channel: usize, via: Via, rate: Option<f64>, seconds: f64) -> Load {
    Load {
        channels,
        per_channel,
        subscribers: fanout::Subscribers::Ws,
        via,
        rate,
        seconds,
        publishers: 8,
        pipeline: 16,
        window: 32,
        batch: false,
    }
}

pub(crate) async fn run(options: Options) -> bool {
    let cap = crate::wire::raise_open_files() as usize;
    let mut suite = Suite {
        bins: Binaries::new(None, None),
        options,
        failures: Vec::new(),
    };
    let targets = suite.options.targets.clone();
    let seconds = suite.options.seconds;
    suite.record(json!({
        "kind": "meta",
        "open_files_cap": cap,
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "smoke": suite.options.smoke,
        "seconds": seconds,
    }));

    if suite.options.smoke {
        for &t in &targets {
            suite
                .fanout(t, load(1, 200, Via::Api, None, seconds), "smoke-1ch")
                .await;
            suite
                .fanout(t, load(20, 10, Via::Ws, None, seconds), "smoke-20ch")
                .await;
            suite
                .fanout(t, load(20, 10, Via::Api, Some(200.0), seconds), "smoke-lat")
                .await;
            suite.idle(t, Door::Ws, 300, "smoke-idle").await;
        }
        suite
            .idle(Target::Switchboard, Door::Sse, 300, "smoke-idle")
            .await;
        if targets.contains(&Target::Switchboard) {
            for viewers in [1, 10] {
                suite.media(viewers, "smoke-media").await;
            }
        }
        return report_failures(&suite.failures);
    }

    // 1. Fan-out throughput: subscribers sweep on one channel, and 1,000 channels x 10.
    let mut max_b = Vec::new();
    for &t in &targets {
        for subscribers in [1_000, 3_000, 10_000] {
            suite
                .fanout(t, load(1, subscribers, Via::Api, None, seconds), "fanout")
                .await;
        }
        let b = suite
            .fanout(t, load(1_000, 10, Via::Api, None, seconds), "fanout")
            .await;
        max_b.push((t, b.messages_per_s));
        if t != Target::Sockudo {
            suite
                .fanout(t, load(1, 10_000, Via::Ws, None, seconds), "fanout")
                .await;
            suite
                .fanout(t, load(1_000, 10, Via::Ws, None, seconds), "fanout")
                .await;
        }
    }

    // 2. Latency at fixed rates: 25/50/90% of each server's own maximum, and everyone at
    //    half of sockudo's maximum (the target's comparison point).
    let sockudo_max = max_b
        .iter()
        .find(|(t, _)| *t == Target::Sockudo)
        .map(|(_, m)| *m);
    for &(t, max) in &max_b {
        for fraction in [0.25, 0.5, 0.9] {
            suite
                .fanout(
                    t,
                    load(1_000, 10, Via::Api, Some(max * fraction), seconds),
                    &format!("latency-{}", (fraction * 100.0) as u32),
                )
                .await;
        }
        if let Some(sockudo_max) = sockudo_max
            && t != Target::Sockudo
        {
            suite
                .fanout(
                    t,
                    load(1_000, 10, Via::Api, Some(sockudo_max * 0.5), seconds),
                    "latency-sockudo-half",
                )
                .await;
        }
    }

    // 3. Memory per idle connection and handshake rate: 1k, 10k and the most the cap allows
    //    (the server needs a few files of its own, and the 64 warm-up connections).
    let max_connections = cap.saturating_sub(400);
    for &t in &targets {
        for connections in [1_000, 10_000, max_connections] {
            suite.idle(t, Door::Ws, connections, "idle").await;
        }
    }
    for door in [Door::Sse, Door::SseShared] {
        for connections in [1_000, 10_000, max_connections] {
            suite
                .idle(Target::Switchboard, door, connections, "idle")
                .await;
        }
    }

    // 4. The most subscribers one server process can hold, every message delivered.
    for &t in &targets {
        suite
            .fanout(
                t,
                load(1, max_connections - 100, Via::Api, None, seconds),
                "fanout-max",
            )
            .await;
    }

    // 5. Media forwarding: one publisher to N viewers through the SFU, against raw UDP.
    if targets.contains(&Target::Switchboard) {
        for viewers in [1, 10, 100, 500] {
            suite.media(viewers, "media").await;
        }
    }
    report_failures(&suite.failures)
}

fn report_failures(failures: &[String]) -> bool {
    for failure in failures {
        eprintln!("FAILED: {failure}");
    }
    failures.is_empty()
}
