//! The media plane (spec §9): the server as a WebRTC peer, an SFU built on str0m. One UDP
//! socket carries every peer connection; one task owns them all (`driver`), each a str0m
//! `Rtc` with its track and slot maps (`peer`), and the sans-I/O [`forward::Forwarder`]
//! decides who receives what. HTTP handlers talk to the task through a [`Media`] handle.
//!
//! WHIP ingest (`POST /whip/<room>`), WHEP playback (`POST /whep/<room>`), trickle and DELETE
//! on the session's resource; `POST /rtc`, the client's own link, whose `switchboard` data
//! channels are doors and whose media joins an SFU room when its door asks
//! ([`ChannelWriter::sfu_join`]), renegotiated by session descriptions the door carries.

mod bitrate;
mod driver;
pub mod forward;
mod peer;
mod simulcast;
mod tcp;

pub use tcp::looks_like_ice_tcp;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

/// `[webrtc.media]` settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MediaConfig {
    /// Where media is received (UDP). Default: the HTTP listener's IP and port number; if that
    /// UDP port is taken, a free port on the same IP.
    #[serde(default)]
    pub udp: Option<SocketAddr>,
    /// The address announced to peers as the server's ICE candidate, where clients reach it
    /// (behind NAT, a load balancer). Default: the UDP socket's IP, or, when it listens on all
    /// addresses, the address each HTTP request came in on.
    #[serde(default)]
    pub public_ip: Option<IpAddr>,
    /// Most peer connections on this node.
    #[serde(default = "default_max_peers")]
    pub max_peers: usize,
    /// Most rooms with media on this node.
    #[serde(default = "default_max_rooms")]
    pub max_rooms: usize,
    /// Most publishers (WHIP, or SFU members) in one room.
    #[serde(default = "default_max_publishers")]
    pub max_publishers: usize,
    /// Most WHEP viewers of one room.
    #[serde(default = "default_max_viewers")]
    pub max_viewers: usize,
    /// Most bytes of one SDP offer or trickle fragment.
    #[serde(default = "default_max_sdp_bytes")]
    pub max_sdp_bytes: usize,
    /// Bits per second one published track may carry (0: no cap). The answer tells the
    /// publisher (`b=AS`, which browsers and OBS obey); one sending over twice this
    /// for two measuring windows in a row is dropped.
    #[serde(default = "default_max_track_bitrate")]
    pub max_track_bitrate: u64,
    /// Seconds a new peer connection has to connect (ICE and DTLS) before it is dropped.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: u64,
    /// ICE over TCP on the HTTP listener's port (RFC 6544, passive): for clients that cannot
    /// use UDP at all. Its candidate is offered with the UDP one; clients prefer UDP.
    #[serde(default = "default_ice_tcp")]
    pub ice_tcp: bool,
    /// For tests only: drops this share (0–100) of the datagrams sent to connected peers, as
    /// a lossy network would (the tests of unreliable data channels use it). Always 0 in
    /// production.
    #[serde(default)]
    pub test_loss_percent: u8,
}

fn default_max_peers() -> usize {
    500
}
fn default_max_rooms() -> usize {
    100
}
fn default_max_publishers() -> usize {
    16
}
fn default_max_viewers() -> usize {
    400
}
fn default_max_sdp_bytes() -> usize {
    64 * 1024
}
fn default_ice_tcp() -> bool {
    true
}
fn default_max_track_bitrate() -> u64 {
    // A 1080p camera's top simulcast layer and the two below it fit.
    5_000_000
}
fn default_connect_timeout() -> u64 {
    20
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            udp: None,
            public_ip: None,
            max_peers: default_max_peers(),
            max_rooms: default_max_rooms(),
            max_publishers: default_max_publishers(),
            max_viewers: default_max_viewers(),
            max_sdp_bytes: default_max_sdp_bytes(),
            max_track_bitrate: default_max_track_bitrate(),
            connect_timeout: default_connect_timeout(),
            ice_tcp: default_ice_tcp(),
            test_loss_percent: 0,
        }
    }
}

/// What kind of peer connection an offer opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionKind {
    /// WHIP: the offer's media is published into the room.
    Whip,
    /// WHEP: plays the room's most recent publisher, or the session named `of`.
    Whep { of: Option<String> },
    /// `POST /rtc`: the client's own link to the server, for its `switchboard` data channels.
    Link,
}

/// A `switchboard` data channel a client opened: handed to the server's data channel door.
pub struct ChannelLink {
    /// The client's messages, in order; ends when the channel or its peer connection closes.
    pub incoming: mpsc::Receiver<Vec<u8>>,
    pub outgoing: ChannelWriter,
    /// Opened with `ordered: false` and no retransmissions: a message that can't be sent at
    /// once is dropped, the next one supersedes it (spec §9).
    pub unreliable: bool,
    /// Set when `incoming` ended because the client sent faster than the door took its
    /// messages (the inbox overflowed); the channel itself stays open for the goodbye.
    pub flooded: Arc<std::sync::atomic::AtomicBool>,
}

/// Writes to one data channel, through the media task.
#[derive(Clone)]
pub struct ChannelWriter {
    commands: mpsc::Sender<Command>,
    peer: forward::PeerId,
    channel: str0m::channel::ChannelId,
}

impl ChannelWriter {
    /// Sends one message (text); an error once the channel is gone.
    pub async fn send(&self, message: bytes::Bytes) -> Result<(), MediaError> {
        self.commands
            .send(Command::ChannelSend(self.peer, self.channel, message))
            .await
            .map_err(|_| MediaError::Unavailable)
    }

    /// Closes the channel (the peer connection stays).
    pub async fn close(&self) {
        let _ = self
            .commands
            .send(Command::ChannelClose(self.peer, self.channel))
            .await;
    }

    /// This channel's peer connection joins `room`'s SFU as the room peer `member`: what it
    /// sends is published there, and every other publisher's media is offered to it, each
    /// offer handed to `on_description` (the door sends it to the client, whose answer comes
    /// back through [`ChannelWriter::sfu_describe`]).
    pub async fn sfu_join(
        &self,
        room: &str,
        member: &str,
        on_description: OnDescription,
    ) -> Result<(), MediaError> {
        let join = SfuJoin {
            peer: self.peer,
            room: room.to_owned(),
            member: member.to_owned(),
            on_description,
        };
        self.ask(|reply| Command::SfuJoin(join, reply)).await?
    }

    /// A session description from the client: the answer to the SFU's offer, or an offer of
    /// its own (a track added or removed), answered through `on_description`.
    pub async fn sfu_describe(&self, description: Description) -> Result<(), MediaError> {
        let peer = self.peer;
        self.ask(|reply| Command::SfuDescribe(peer, description, reply))
            .await?
    }

    /// The peer connection's media leaves its SFU room.
    pub async fn sfu_leave(&self) {
        let _ = self.commands.send(Command::SfuLeave(self.peer)).await;
    }

    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, MediaError> {
        ask(&self.commands, command).await
    }
}

/// Whether a session description offers or answers (`RTCSessionDescriptionInit.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DescriptionKind {
    Offer,
    Answer,
}

impl DescriptionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DescriptionKind::Offer => "offer",
            DescriptionKind::Answer => "answer",
        }
    }
}

/// A session description exchanged between the SFU and a member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Description {
    pub kind: DescriptionKind,
    pub sdp: String,
}

/// Where the SFU's session descriptions for a member go (its door). Called on the media
/// task: it must not block.
pub type OnDescription = Arc<dyn Fn(Description) + Send + Sync>;

pub(crate) struct SfuJoin {
    pub peer: forward::PeerId,
    pub room: String,
    pub member: String,
    pub on_description: OnDescription,
}

/// What the server does with each `switchboard` data channel of a peer connection.
pub type OnChannel = Arc<dyn Fn(ChannelLink) + Send + Sync>;

/// An SDP offer for a new peer connection.
pub struct Offer {
    pub room: String,
    pub kind: SessionKind,
    pub sdp: String,
    /// The user the token named (anonymous: empty), for the logs.
    pub user: String,
    /// The local address the HTTP request came in on: the candidate announced when the
    /// media socket listens on every address and no `public_ip` is set.
    pub local_ip: Option<IpAddr>,
    /// Runs for each `switchboard` data channel the client opens (none: they are ignored).
    pub on_channel: Option<OnChannel>,
    /// Held as long as the peer connection lives (the server's connection-limit permit).
    pub hold: Option<Box<dyn std::any::Any + Send>>,
    /// WHEP: the simulcast layer (`rid`) to receive where the publisher sends it; by default
    /// the best one sent.
    pub layer: Option<String>,
}

/// Whether `rid` can name a simulcast layer here: 1 to 8 ASCII letters and digits.
pub fn valid_layer(rid: &str) -> bool {
    (1..=8).contains(&rid.len()) && rid.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// The server's answer: the session's id (its resource is `/rtc/<id>`) and SDP.
#[derive(Debug, Clone)]
pub struct Answer {
    pub id: String,
    pub sdp: String,
}

/// Why the media plane refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaError {
    /// The SDP (or trickle fragment) can't be used; the text says why.
    BadSdp(String),
    /// No such session, or no such publisher to play.
    NotFound(String),
    /// Not now: the state of the session does not allow it (the text says why).
    Conflict(String),
    /// A limit of `[webrtc.media]`; the text names it.
    Full(String),
    /// The media plane stopped.
    Unavailable,
}

impl std::fmt::Display for MediaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MediaError::BadSdp(why) => write!(f, "unusable SDP: {why}"),
            MediaError::NotFound(what) | MediaError::Conflict(what) => write!(f, "{what}"),
            MediaError::Full(what) => write!(f, "{what}"),
            MediaError::Unavailable => write!(f, "the media plane is not running"),
        }
    }
}

/// Counters of the media plane, read by `/metrics`.
#[derive(Debug, Default)]
pub struct MediaStats {
    /// Peer connections open now.
    pub peers: AtomicU64,
    /// Tracks published now.
    pub tracks: AtomicU64,
    /// RTP packets forwarded (counted as received, once per receiver).
    pub packets_forwarded: AtomicU64,
    /// Media bytes forwarded (payload, once per receiver).
    pub bytes_forwarded: AtomicU64,
    /// Keyframe requests (PLI) sent to publishers.
    pub keyframe_requests: AtomicU64,
    /// NACKs received from receivers (retransmissions they asked for).
    pub nacks: AtomicU64,
    /// Offers refused by a limit.
    pub refused: AtomicU64,
    /// Publishers dropped for sending over twice `max_track_bitrate`.
    pub over_bitrate: AtomicU64,
    /// Packets the server had to send but the socket (or an ICE-TCP connection's queue)
    /// would not take at that moment: lost like on a congested network.
    pub send_dropped: AtomicU64,
}

impl MediaStats {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// Media peers per room on this node, kept by the media task.
pub(crate) type RoomCounts = Arc<parking_lot::Mutex<std::collections::HashMap<String, usize>>>;

pub(crate) enum Command {
    Offer(Offer, oneshot::Sender<Result<Answer, MediaError>>),
    Trickle(String, String, oneshot::Sender<Result<(), MediaError>>),
    End(String, oneshot::Sender<Result<(), MediaError>>),
    ChannelSend(forward::PeerId, str0m::channel::ChannelId, bytes::Bytes),
    ChannelClose(forward::PeerId, str0m::channel::ChannelId),
    TcpOpen(SocketAddr, mpsc::Sender<bytes::Bytes>),
    TcpReceive(SocketAddr, SocketAddr, Vec<u8>),
    TcpClose(SocketAddr),
    SfuJoin(SfuJoin, oneshot::Sender<Result<(), MediaError>>),
    SfuDescribe(
        forward::PeerId,
        Description,
        oneshot::Sender<Result<(), MediaError>>,
    ),
    SfuLeave(forward::PeerId),
}

/// The handle HTTP handlers use; cheap to clone.
#[derive(Clone)]
pub struct Media {
    commands: mpsc::Sender<Command>,
    stats: Arc<MediaStats>,
    rooms: RoomCounts,
    addr: SocketAddr,
    ice_tcp: bool,
}

impl Media {
    /// Binds the media socket (`config.udp`, else `http`'s IP and port, else a free port on
    /// that IP) and starts the task that runs every peer connection.
    pub async fn start(config: &MediaConfig, http: SocketAddr) -> std::io::Result<Media> {
        let socket = match config.udp {
            Some(addr) => tokio::net::UdpSocket::bind(addr).await?,
            None => match tokio::net::UdpSocket::bind(http).await {
                Ok(socket) => socket,
                Err(e) => {
                    let fallback = SocketAddr::new(http.ip(), 0);
                    let socket = tokio::net::UdpSocket::bind(fallback).await?;
                    tracing::warn!(
                        "media: UDP {http} is taken ({e}); listening on {} instead",
                        socket.local_addr()?
                    );
                    socket
                }
            },
        };
        let addr = socket.local_addr()?;
        let stats = Arc::new(MediaStats::default());
        let (commands, rx) = mpsc::channel(1024);
        let rooms = RoomCounts::default();
        let driver = driver::Driver::new(
            socket,
            config.clone(),
            stats.clone(),
            rooms.clone(),
            config.ice_tcp.then_some(http.port()),
            commands.downgrade(),
        );
        tokio::spawn(driver.run(rx));
        tracing::info!("media (WebRTC) on udp {addr}");
        Ok(Media {
            commands,
            stats,
            rooms,
            addr,
            ice_tcp: config.ice_tcp,
        })
    }

    /// The UDP address media is received on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stats(&self) -> &Arc<MediaStats> {
        &self.stats
    }

    /// Whether ICE-TCP connections come in on the HTTP listener (see [`looks_like_ice_tcp`]).
    pub fn takes_ice_tcp(&self) -> bool {
        self.ice_tcp
    }

    /// Carries an ICE-TCP connection the HTTP listener accepted (its first bytes a framed
    /// STUN binding request, still unread).
    pub fn accept_tcp(&self, stream: tokio::net::TcpStream, remote: SocketAddr) {
        let Ok(local) = stream.local_addr() else {
            return;
        };
        tokio::spawn(tcp::serve(stream, remote, local, self.commands.clone()));
    }

    /// The media peers (WHIP, WHEP, SFU members) this node holds in `room`.
    pub fn peers_in(&self, room: &str) -> usize {
        self.rooms.lock().get(room).copied().unwrap_or(0)
    }

    /// Opens a peer connection for `offer`; answers its SDP.
    pub async fn offer(&self, offer: Offer) -> Result<Answer, MediaError> {
        self.ask(|reply| Command::Offer(offer, reply)).await?
    }

    /// Adds the candidates of a trickle fragment (`application/trickle-ice-sdpfrag`).
    pub async fn trickle(&self, id: &str, fragment: &str) -> Result<(), MediaError> {
        let (id, fragment) = (id.to_owned(), fragment.to_owned());
        self.ask(|reply| Command::Trickle(id, fragment, reply))
            .await?
    }

    /// Ends a session.
    pub async fn end(&self, id: &str) -> Result<(), MediaError> {
        let id = id.to_owned();
        self.ask(|reply| Command::End(id, reply)).await?
    }

    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, MediaError> {
        ask(&self.commands, command).await
    }
}

/// Sends the media task a command that carries its reply channel, and waits for the reply.
async fn ask<T>(
    commands: &mpsc::Sender<Command>,
    command: impl FnOnce(oneshot::Sender<T>) -> Command,
) -> Result<T, MediaError> {
    let (reply, answer) = oneshot::channel();
    commands
        .send(command(reply))
        .await
        .map_err(|_| MediaError::Unavailable)?;
    answer.await.map_err(|_| MediaError::Unavailable)
}
