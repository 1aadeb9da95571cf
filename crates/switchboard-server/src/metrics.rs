//! Prometheus metrics (`GET /metrics`): the hub's counters and the doors' own, read from
//! atomics at scrape time so the hot path only does relaxed increments.

use std::sync::Arc;

use std::sync::atomic::{AtomicU64, Ordering};
use switchboard_rtc::media::MediaStats;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use switchboard_core::Hub;

/// Counters kept by the doors and the server API.
#[derive(Default, Debug)]
pub struct ServerStats {
    /// Frames received from clients.
    pub frames_in: AtomicU64,
    pub bytes_in: AtomicU64,
    /// Bytes written to client sockets.
    pub bytes_written: AtomicU64,
    /// Error frames and error responses sent.
    pub errors: AtomicU64,
    /// Clients disconnected because their send queue overflowed.
    pub queue_drops: AtomicU64,
    /// Client commands refused as past `client_rate`.
    pub rate_limited: AtomicU64,
    /// Connections refused by `max_connections`, `max_connections_per_ip` and
    /// `max_connections_per_user`.
    pub refused_connections: AtomicU64,
    pub refused_per_ip: AtomicU64,
    pub refused_per_user: AtomicU64,
    pub api_requests: AtomicU64,
    /// Pusher webhook requests answered 2xx, and attempts that failed (each retry counts).
    pub webhooks_sent: AtomicU64,
    pub webhooks_failed: AtomicU64,
}

struct SwitchboardCollector {
    hub: Arc<Hub>,
    stats: Arc<ServerStats>,
    media: Arc<MediaStats>,
}

impl std::fmt::Debug for SwitchboardCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SwitchboardCollector")
            .finish_non_exhaustive()
    }
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

impl Collector for SwitchboardCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let h = &self.hub.stats;
        let s = &self.stats;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        gauge(
            &mut e,
            "switchboard_connections",
            "Open client connections",
            h.connections.load(Ordering::Relaxed),
        )?;
        gauge(
            &mut e,
            "switchboard_subscriptions",
            "Channel subscriptions on this node",
            h.subscriptions.load(Ordering::Relaxed),
        )?;
        gauge(
            &mut e,
            "switchboard_channels",
            "Channels with subscribers on this node",
            self.hub.channel_count() as i64,
        )?;
        gauge(
            &mut e,
            "switchboard_rooms",
            "Signaling rooms with members on this node",
            self.hub.room_count() as i64,
        )?;
        counter(
            &mut e,
            "switchboard_connections_accepted",
            "Connections accepted",
            get(&h.connections_total),
        )?;
        counter(
            &mut e,
            "switchboard_messages_published",
            "Messages published to channels",
            get(&h.messages_in),
        )?;
        counter(
            &mut e,
            "switchboard_messages_delivered",
            "Messages queued to subscribers",
            get(&h.messages_out),
        )?;
        counter(
            &mut e,
            "switchboard_delivered_payload_bytes",
            "JSON bytes of delivered messages",
            get(&h.bytes_out),
        )?;
        counter(
            &mut e,
            "switchboard_frames_received",
            "Frames received from clients",
            get(&s.frames_in),
        )?;
        counter(
            &mut e,
            "switchboard_received_bytes",
            "Bytes received from clients",
            get(&s.bytes_in),
        )?;
        counter(
            &mut e,
            "switchboard_sent_bytes",
            "Bytes written to client sockets",
            get(&s.bytes_written),
        )?;
        counter(
            &mut e,
            "switchboard_rate_limited",
            "Client commands refused as past limits.client_rate",
            get(&s.rate_limited),
        )?;
        counter(
            &mut e,
            "switchboard_refused_connections",
            "Connections refused by limits.max_connections (503)",
            get(&s.refused_connections),
        )?;
        counter(
            &mut e,
            "switchboard_refused_connections_per_ip",
            "Connections refused by limits.max_connections_per_ip (429)",
            get(&s.refused_per_ip),
        )?;
        counter(
            &mut e,
            "switchboard_refused_connections_per_user",
            "Connections refused by limits.max_connections_per_user",
            get(&s.refused_per_user),
        )?;
        counter(
            &mut e,
            "switchboard_errors",
            "Error frames and error responses sent",
            get(&s.errors),
        )?;
        counter(
            &mut e,
            "switchboard_queue_drops",
            "Clients disconnected for overflowing their send queue",
            get(&s.queue_drops),
        )?;
        counter(
            &mut e,
            "switchboard_api_requests",
            "Server API requests (native and Pusher)",
            get(&s.api_requests),
        )?;
        counter(
            &mut e,
            "switchboard_pusher_webhooks_sent",
            "Pusher webhook requests delivered",
            get(&s.webhooks_sent),
        )?;
        counter(
            &mut e,
            "switchboard_pusher_webhooks_failed",
            "Pusher webhook attempts that failed (retries included)",
            get(&s.webhooks_failed),
        )?;
        self.encode_engine(&mut e)?;
        self.encode_media(&mut e)
    }
}

impl SwitchboardCollector {
    /// The media plane: peer connections, tracks, what was forwarded, keyframe requests.
    fn encode_media(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let m = &self.media;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        gauge(
            e,
            "switchboard_media_peers",
            "WebRTC peer connections with the server (WHIP, WHEP)",
            get(&m.peers) as i64,
        )?;
        gauge(
            e,
            "switchboard_media_tracks",
            "Media tracks published to the server",
            get(&m.tracks) as i64,
        )?;
        counter(
            e,
            "switchboard_media_packets_forwarded",
            "RTP packets forwarded, once per receiver",
            get(&m.packets_forwarded),
        )?;
        counter(
            e,
            "switchboard_media_bytes_forwarded",
            "Media payload bytes forwarded, once per receiver",
            get(&m.bytes_forwarded),
        )?;
        counter(
            e,
            "switchboard_media_keyframe_requests",
            "Keyframe requests (PLI) sent to publishers",
            get(&m.keyframe_requests),
        )?;
        counter(
            e,
            "switchboard_media_nacks",
            "Retransmissions (NACK) receivers asked the server for",
            get(&m.nacks),
        )?;
        counter(
            e,
            "switchboard_media_refused",
            "Offers refused (a limit, or unusable SDP)",
            get(&m.refused),
        )?;
        counter(
            e,
            "switchboard_media_over_bitrate",
            "Publishers dropped for sending over twice webrtc.media.max_track_bitrate",
            get(&m.over_bitrate),
        )?;
        counter(
            e,
            "switchboard_media_send_dropped",
            "Packets the media socket would not take when they were sent (lost)",
            get(&m.send_dropped),
        )
    }

    /// The engine's calls to its backing service (none for the memory engine).
    fn encode_engine(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let engine = self.hub.engine().stats();
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        counter(
            e,
            "switchboard_engine_calls",
            "Calls from the engine to Redis or NATS",
            get(&engine.calls),
        )?;
        counter(
            e,
            "switchboard_engine_errors",
            "Engine calls that failed",
            get(&engine.errors),
        )?;
        let seconds = ConstCounter::new(get(&engine.call_micros) as f64 / 1e6);
        seconds.encode(e.encode_descriptor(
            "switchboard_engine_call_seconds",
            "Total time spent in engine calls (divide by calls for the mean latency)",
            None,
            seconds.metric_type(),
        )?)?;
        counter(
            e,
            "switchboard_engine_reconnects",
            "Connections to Redis or NATS re-established after a loss",
            get(&engine.reconnects),
        )?;
        counter(
            e,
            "switchboard_engine_streams_lost",
            "Times this node missed messages it could not recover (its subscribers were sent back to recover)",
            get(&engine.streams_lost),
        )?;
        Ok(())
    }
}

/// Renders the Prometheus text exposition.
pub(crate) fn render(hub: &Arc<Hub>, stats: &Arc<ServerStats>, media: &Arc<MediaStats>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(SwitchboardCollector {
        hub: hub.clone(),
        stats: stats.clone(),
        media: media.clone(),
    }));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry).expect("writing to a String");
    out
}
