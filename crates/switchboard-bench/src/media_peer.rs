//! The media bench's client side: str0m peers on loopback, each with its own UDP socket, that
//! publish to Switchboard over WHIP or play from it over WHEP (spec §9), and the synthetic
//! frames they exchange. Also what both the SFU and the raw forwarder measurements share: the
//! frame layout, the measured window, and what each receiver counts.
//!
//! A frame is a VP8 frame as far as its header goes (the first one a keyframe, so a real
//! depacketizer would start decoding), then a marker, the frame's sequence number and its
//! send time (nanoseconds since the bench's start `Instant`: one machine, one clock), then
//! filler up to the size the bitrate asks for.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::config::DtlsCert;
use str0m::media::{Direction, Frequency, MediaData, MediaKind, MediaTime, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::watch;

/// Where the bench's fields start in a frame: after a VP8 keyframe header (3-byte frame tag,
/// start code, width and height), so the header is plausible for either kind of frame.
const FIELDS_AT: usize = 10;
const MARKER: &[u8; 4] = b"SBMB";
/// The smallest frame that holds the header and the fields.
pub(crate) const MIN_FRAME: usize = FIELDS_AT + 4 + 8 + 8;
/// Largest datagram a receiver reads.
const MAX_DATAGRAM: usize = 2048;
/// A datagram at least this big that a connected publisher sends is a media packet (RTP of a
/// frame or a retransmission): STUN, RTCP and DTLS records after the handshake are smaller.
const MEDIA_DATAGRAM: usize = 500;

/// A synthetic frame of `size` bytes carrying `seq` and `sent_ns`.
pub(crate) fn frame(size: usize, seq: u64, sent_ns: u64, keyframe: bool) -> Vec<u8> {
    let mut data = vec![0u8; size.max(MIN_FRAME)];
    // VP8 frame tag: bit 0 clear for a keyframe, set for an interframe; bit 4 is show_frame.
    data[0] = if keyframe { 0x10 } else { 0x11 };
    // A keyframe's start code and a 640x360 size (an interframe has none; harmless there).
    data[3..10].copy_from_slice(&[0x9d, 0x01, 0x2a, 0x80, 0x02, 0x68, 0x01]);
    write_fields(&mut data[FIELDS_AT..], seq, sent_ns);
    data
}

/// Writes the marker, `seq` and `sent_ns` at the start of `to`.
pub(crate) fn write_fields(to: &mut [u8], seq: u64, sent_ns: u64) {
    to[..4].copy_from_slice(MARKER);
    to[4..12].copy_from_slice(&seq.to_le_bytes());
    to[12..20].copy_from_slice(&sent_ns.to_le_bytes());
}

/// The sequence number and send time at the start of `from`, if it has the marker.
pub(crate) fn read_fields(from: &[u8]) -> Option<(u64, u64)> {
    if from.len() < 20 || &from[..4] != MARKER {
        return None;
    }
    let seq = u64::from_le_bytes(from[4..12].try_into().ok()?);
    let sent_ns = u64::from_le_bytes(from[12..20].try_into().ok()?);
    Some((seq, sent_ns))
}

/// What the sources and the receivers of one measurement share.
pub(crate) struct Shared {
    /// The clock of every send time and latency.
    pub start: Instant,
    /// The next frame the source sends.
    pub next_seq: AtomicU64,
    /// Media packets the source has sent so far.
    pub packets_sent: AtomicU64,
    /// Datagrams the receivers have sent so far (for the SFU: RTCP, STUN, NACKs), what the
    /// server's one media socket takes in besides the publisher's packets.
    pub feedback_sent: AtomicU64,
    /// Frames `window_start..window_end` are measured (both `u64::MAX` until set).
    pub window_start: AtomicU64,
    pub window_end: AtomicU64,
    /// Receivers ready (connected, or joined to the raw forwarder).
    pub ready: AtomicU64,
    /// The source sends frames once this is set (when every receiver is ready: a viewer's
    /// handshake then never queues behind media).
    pub sending: AtomicBool,
}

impl Shared {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Shared {
            start: Instant::now(),
            next_seq: AtomicU64::new(0),
            packets_sent: AtomicU64::new(0),
            feedback_sent: AtomicU64::new(0),
            window_start: AtomicU64::new(u64::MAX),
            window_end: AtomicU64::new(u64::MAX),
            ready: AtomicU64::new(0),
            sending: AtomicBool::new(false),
        })
    }

    pub(crate) fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    pub(crate) fn in_window(&self, seq: u64) -> bool {
        seq >= self.window_start.load(Ordering::Relaxed)
            && seq < self.window_end.load(Ordering::Relaxed)
    }
}

/// What one receiver (or all of them, merged) saw of the measured frames.
pub(crate) struct Received {
    /// Frames of the window that arrived whole.
    pub frames: u64,
    /// Their packets (RTP packets, or datagrams from the raw forwarder).
    pub packets: u64,
    /// Anything at all arrived, in the window or not.
    pub any: bool,
    /// Send → whole frame received, microseconds.
    pub latency_us: Histogram<u64>,
}

impl Received {
    pub(crate) fn new() -> Self {
        Received {
            frames: 0,
            packets: 0,
            any: false,
            latency_us: Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds"),
        }
    }

    /// A whole frame of `packets` packets, sent at `sent_ns`, arrived now.
    pub(crate) fn frame(&mut self, shared: &Shared, seq: u64, sent_ns: u64, packets: u64) {
        self.any = true;
        if !shared.in_window(seq) {
            return;
        }
        self.frames += 1;
        self.packets += packets;
        let latency = shared.now_ns().saturating_sub(sent_ns) / 1000;
        let _ = self.latency_us.record(latency.max(1));
    }

    pub(crate) fn merge(&mut self, other: &Received) {
        self.frames += other.frames;
        self.packets += other.packets;
        self.any |= other.any;
        let _ = self.latency_us.add(&other.latency_us);
    }
}

/// The synthetic source's load.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Load {
    /// Bits per second of frame payload.
    pub bitrate: u64,
    pub fps: u32,
}

impl Load {
    pub(crate) fn frame_size(&self) -> usize {
        ((self.bitrate / 8) as usize / self.fps.max(1) as usize).max(MIN_FRAME)
    }

    pub(crate) fn frame_interval(&self) -> Duration {
        Duration::from_secs_f64(1.0 / self.fps.max(1) as f64)
    }
}

/// One str0m peer on its own loopback socket (full ICE, the controlling side: the server is
/// ICE lite).
pub(crate) struct Peer {
    rtc: Rtc,
    socket: UdpSocket,
    local: SocketAddr,
    /// The one video m-line.
    mid: Mid,
    pending: Option<SdpPendingOffer>,
    connected: bool,
    /// Media-sized datagrams sent since connected.
    media_sent: u64,
    /// Datagrams of any kind sent and not yet taken by `take_sent`.
    sent: u64,
}

impl Peer {
    /// A peer with one video m-line in `direction`, and its SDP offer. `cert` is shared by
    /// every peer of the bench: generating one per peer would cost the client side CPU that
    /// has nothing to do with forwarding.
    pub(crate) async fn new(direction: Direction, cert: &DtlsCert) -> (Peer, String) {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("UDP socket");
        let local = socket.local_addr().expect("UDP address");
        let mut rtc = Rtc::builder()
            .clear_codecs()
            .enable_vp8(true)
            .set_dtls_cert(cert.clone())
            .build(Instant::now());
        rtc.add_local_candidate(Candidate::host(local, "udp").expect("host candidate"));
        let mut change = rtc.sdp_api();
        let mid = change.add_media(MediaKind::Video, direction, None, None, None);
        let (offer, pending) = change.apply().expect("an m-line is a change");
        let peer = Peer {
            rtc,
            socket,
            local,
            mid,
            pending: Some(pending),
            connected: false,
            media_sent: 0,
            sent: 0,
        };
        (peer, offer.to_sdp_string())
    }

    /// Takes the server's SDP answer.
    pub(crate) fn accept(&mut self, answer: &str) -> Result<(), String> {
        let answer = SdpAnswer::from_sdp_string(answer).map_err(|e| e.to_string())?;
        let pending = self.pending.take().ok_or("no offer pending")?;
        self.rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .map_err(|e| e.to_string())
    }

    /// Drives the peer until ICE and DTLS are through, or fails after `limit`.
    pub(crate) async fn connect(&mut self, limit: Duration) -> Result<(), String> {
        let (_keep, mut never) = watch::channel(false);
        let deadline = Instant::now() + limit;
        let mut buf = vec![0u8; MAX_DATAGRAM];
        while !self.connected {
            if Instant::now() > deadline {
                return Err(format!("not connected after {limit:?}"));
            }
            let at = self.drain(|_| {})?.min(deadline);
            self.step(at, &mut buf, &mut never).await?;
        }
        Ok(())
    }

    /// Sends what str0m has to send and hands its events to `on_event`, until str0m only
    /// has a timeout left (the drain every mutation needs); returns that timeout.
    fn drain(&mut self, mut on_event: impl FnMut(Event)) -> Result<Instant, String> {
        loop {
            match self.rtc.poll_output().map_err(|e| e.to_string())? {
                Output::Timeout(at) => return Ok(at),
                Output::Transmit(t) => {
                    // Loopback UDP: a datagram the kernel can't take now is lost like any
                    // other (str0m retransmits what matters).
                    let _ = self.socket.try_send_to(&t.contents, t.destination);
                    self.sent += 1;
                    if self.connected && t.contents.len() >= MEDIA_DATAGRAM {
                        self.media_sent += 1;
                    }
                }
                Output::Event(Event::Connected) => {
                    self.connected = true;
                    on_event(Event::Connected);
                }
                Output::Event(event) => on_event(event),
            }
        }
    }

    /// Waits for a datagram, the timeout `at` or `stop`, and feeds what came to str0m.
    /// Returns false once `stop` is set.
    async fn step(
        &mut self,
        at: Instant,
        buf: &mut [u8],
        stop: &mut watch::Receiver<bool>,
    ) -> Result<bool, String> {
        let input = tokio::select! {
            _ = stop.changed() => return Ok(false),
            received = self.socket.recv_from(buf) => {
                let (n, source) = received.map_err(|e| e.to_string())?;
                return self.datagram(&buf[..n], source).map(|()| true);
            }
            _ = tokio::time::sleep_until(at.into()) => Input::Timeout(Instant::now()),
        };
        self.rtc.handle_input(input).map_err(|e| e.to_string())?;
        Ok(true)
    }

    /// Feeds str0m one datagram that is already queued, or its timeout if that is due, without
    /// a trip through the runtime (a frame's packets come in a burst: one wake-up and one
    /// timer for the burst, not for each packet). False when there was nothing to do.
    fn try_step(&mut self, at: Instant, buf: &mut [u8]) -> Result<bool, String> {
        let now = Instant::now();
        if at <= now {
            self.rtc
                .handle_input(Input::Timeout(now))
                .map_err(|e| e.to_string())?;
            return Ok(true);
        }
        match self.socket.try_recv_from(buf) {
            Ok((n, source)) => self.datagram(&buf[..n], source).map(|()| true),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e.to_string()),
        }
    }

    fn datagram(&mut self, data: &[u8], source: SocketAddr) -> Result<(), String> {
        let Ok(contents) = data.try_into() else {
            // Not STUN, DTLS or (S)RTP: nothing for str0m.
            return Ok(());
        };
        let input = Input::Receive(
            Instant::now(),
            Receive {
                proto: Protocol::Udp,
                source,
                destination: self.local,
                contents,
            },
        );
        self.rtc.handle_input(input).map_err(|e| e.to_string())
    }
}

/// `POST path` with an SDP offer over plain HTTP/1.1 (one request per connection); returns the
/// session's `Location` and the SDP answer.
pub(crate) async fn post_offer(
    server: SocketAddr,
    path: &str,
    sdp: &str,
) -> Result<(String, String), String> {
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {server}\r\nContent-Type: application/sdp\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{sdp}",
        sdp.len()
    );
    let response = http_exchange(server, &request).await?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or("no end of HTTP headers")?;
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status != "201" {
        return Err(format!(
            "POST {path}: {}: {body}",
            head.lines().next().unwrap_or("")
        ));
    }
    let location = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("location")
                .then(|| value.trim().to_string())
        })
        .ok_or("no Location")?;
    Ok((location, body.to_string()))
}

/// Sends one request on a fresh connection and reads the whole response.
pub(crate) async fn http_exchange(server: SocketAddr, request: &str) -> Result<String, String> {
    let mut stream = TcpStream::connect(server)
        .await
        .map_err(|e| e.to_string())?;
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .await
        .map_err(|e| e.to_string())?;
    String::from_utf8(response).map_err(|e| e.to_string())
}

/// The connected WHIP publisher: writes a frame every `1/fps` seconds (once `sending`) until
/// `stop`,
/// a keyframe first and whenever the server asks for one.
pub(crate) async fn publish(
    mut peer: Peer,
    load: Load,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), String> {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut ticks = tokio::time::interval(load.frame_interval());
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut keyframe_wanted = true;
    let mut frame_no: u64 = 0;
    loop {
        let at = peer.drain(|event| {
            if let Event::KeyframeRequest(_) = event {
                keyframe_wanted = true;
            }
        })?;
        shared
            .packets_sent
            .store(peer.media_sent, Ordering::Relaxed);
        // The step is cancel-safe (it only awaits the socket or a timer before it mutates):
        // a tick that comes first drops it, and the next loop starts a new one.
        let tick = tokio::select! {
            biased;
            _ = ticks.tick() => true,
            more = peer.step(at, &mut buf, &mut stop) => {
                if !more? {
                    return Ok(());
                }
                false
            }
        };
        if tick && shared.sending.load(Ordering::Relaxed) {
            let seq = shared.next_seq.fetch_add(1, Ordering::Relaxed);
            let data = frame(load.frame_size(), seq, shared.now_ns(), keyframe_wanted);
            keyframe_wanted = false;
            // RTP time on the 90 kHz clock of video.
            let rtp_time = MediaTime::new(
                frame_no * 90_000 / u64::from(load.fps),
                Frequency::NINETY_KHZ,
            );
            frame_no += 1;
            let writer = peer
                .rtc
                .writer(peer.mid)
                .ok_or("no writer for the video m-line")?;
            let pt = writer
                .payload_params()
                .next()
                .ok_or("no payload type")?
                .pt();
            writer
                .write(pt, Instant::now(), rtp_time, data)
                .map_err(|e| e.to_string())?;
        }
    }
}

/// A connected WHEP viewer: counts every whole frame str0m hands it until `stop`.
pub(crate) async fn view(
    mut peer: Peer,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> Result<Received, String> {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut received = Received::new();
    loop {
        let at = peer.drain(|event| {
            if let Event::MediaData(data) = event {
                count_frame(&shared, &mut received, &data);
            }
        })?;
        if peer.sent > 0 {
            shared.feedback_sent.fetch_add(peer.sent, Ordering::Relaxed);
            peer.sent = 0;
        }
        if peer.try_step(at, &mut buf)? {
            continue;
        }
        if !peer.step(at, &mut buf, &mut stop).await? {
            return Ok(received);
        }
    }
}

fn count_frame(shared: &Shared, received: &mut Received, data: &MediaData) {
    let Some((seq, sent_ns)) = data.data.get(FIELDS_AT..).and_then(read_fields) else {
        return;
    };
    let packets = **data.seq_range.end() - **data.seq_range.start() + 1;
    received.frame(shared, seq, sent_ns, packets);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_carries_its_fields_after_a_vp8_header() {
        let key = frame(4000, 7, 123_456, true);
        assert_eq!(key.len(), 4000);
        // VP8: P bit (bit 0 of the frame tag) clear for a keyframe, then the start code.
        assert_eq!(key[0] & 1, 0);
        assert_eq!(&key[3..6], &[0x9d, 0x01, 0x2a]);
        assert_eq!(read_fields(&key[FIELDS_AT..]), Some((7, 123_456)));
        let inter = frame(1, 8, 9, false);
        assert_eq!(inter.len(), MIN_FRAME);
        assert_eq!(inter[0] & 1, 1);
        assert_eq!(read_fields(&inter[FIELDS_AT..]), Some((8, 9)));
        assert_eq!(read_fields(&[0u8; 40]), None);
    }

    #[test]
    fn only_frames_of_the_window_are_counted() {
        let shared = Shared::new();
        let mut received = Received::new();
        received.frame(&shared, 0, 0, 4);
        assert!(received.any);
        assert_eq!(received.frames, 0);
        shared.window_start.store(1, Ordering::Relaxed);
        shared.window_end.store(3, Ordering::Relaxed);
        for seq in 0..5 {
            received.frame(&shared, seq, 0, 4);
        }
        assert_eq!((received.frames, received.packets), (2, 8));
        let mut all = Received::new();
        all.merge(&received);
        all.merge(&received);
        assert_eq!((all.frames, all.packets), (4, 16));
        assert_eq!(all.latency_us.len(), 4);
    }

    #[test]
    fn the_frame_size_follows_the_bitrate() {
        let load = Load {
            bitrate: 1_000_000,
            fps: 30,
        };
        assert_eq!(load.frame_size(), 4166);
        assert_eq!(load.frame_interval(), Duration::from_secs_f64(1.0 / 30.0));
    }
}
