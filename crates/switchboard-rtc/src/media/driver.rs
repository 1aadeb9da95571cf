//! The media task: one UDP socket, every peer connection, and the forwarder. It waits for a
//! command (an offer, a trickle, an end), a datagram or the earliest peer timeout; hands the
//! input to the peer it belongs to; then polls every peer that got something until each is
//! quiet, forwarding what publishers send and passing keyframe requests back.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use str0m::change::{SdpAnswer, SdpOffer};
use str0m::channel::{ChannelData, ChannelId, Reliability};
use str0m::media::{Direction, KeyframeRequestKind, MediaAdded, MediaData, MediaKind, Mid, Rid};
use str0m::net::{DatagramRecv, Protocol, Receive, TcpType, Transmit};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use super::bitrate::{Meter, cap_sdp};
use super::forward::{Action, Forwarder, Kind, PeerId, Role, Route};
use super::forward::{KEYFRAME_INTERVAL, TrackId};
use super::peer::{DoorChannel, Membership, NewSlot, Peer, PeerKind, kind_of};
use super::simulcast::SlotLayer;
use super::{
    Answer, ChannelLink, ChannelWriter, Command, Description, DescriptionKind, MediaConfig,
    MediaError, MediaStats, Offer, RoomCounts, SessionKind, SfuJoin,
};

/// The label of the data channel that is a door (spec §9).
const DOOR_LABEL: &str = "switchboard";
/// Trickled candidates one session may add (a client has a handful; each costs memory).
const MAX_REMOTE_CANDIDATES: usize = 64;
/// Client messages queued towards a door before the channel counts as flooding and closes.
const CHANNEL_INBOX: usize = 256;
/// Bytes a reliable channel may hold waiting for SCTP room before it is closed as a slow
/// consumer (its door's own queue is bounded too; this is what left it).
const CHANNEL_PENDING_BYTES: usize = 1024 * 1024;

/// Tracks one peer may publish (a camera, a microphone, a screen share or two): each costs
/// every receiver in the room an m-line.
const MAX_TRACKS_PER_PEER: usize = 8;
/// Receiving m-lines an SFU member is offered over its life. str0m never reuses a stopped
/// one, so members coming and going add lines; past this the member receives no new tracks.
const MAX_MEMBER_LINES: usize = 256;

/// Largest datagram read; WebRTC keeps packets under the path MTU.
const MAX_DATAGRAM: usize = 2048;
/// How long the task sleeps at most with nothing to do.
const IDLE_WAKE: Duration = Duration::from_secs(1);

pub(crate) struct Driver {
    socket: UdpSocket,
    local: SocketAddr,
    config: MediaConfig,
    stats: Arc<MediaStats>,
    /// Media peers per room, for the server API.
    rooms: RoomCounts,
    /// ICE-TCP: the port its candidates name (the HTTP listener's), and the connections
    /// open now by remote address.
    tcp_port: Option<u16>,
    tcp: HashMap<SocketAddr, mpsc::Sender<Bytes>>,
    peers: HashMap<PeerId, Peer>,
    by_name: HashMap<String, PeerId>,
    by_source: HashMap<SocketAddr, PeerId>,
    forwarder: Forwarder,
    next_id: u64,
    /// Peers to poll.
    dirty: Vec<PeerId>,
    /// The earliest time any peer wants (a lower bound: peers are only scanned once it passed).
    next_timeout: Instant,
    /// Reused for the receivers of one frame.
    routes: Vec<Route>,
    /// For the data channel links handed out; weak, so dropping every `Media` handle still
    /// ends the task.
    commands: mpsc::WeakSender<Command>,
    /// Datagrams sent to connected peers, for `test_loss_percent`.
    sent: u64,
}

enum Wake {
    Command(Option<Command>),
    Datagram(io::Result<(usize, SocketAddr)>),
    Timer,
}

impl Driver {
    pub(crate) fn new(
        socket: UdpSocket,
        config: MediaConfig,
        stats: Arc<MediaStats>,
        rooms: RoomCounts,
        tcp_port: Option<u16>,
        commands: mpsc::WeakSender<Command>,
    ) -> Self {
        let local = socket.local_addr().expect("a bound socket has an address");
        Driver {
            socket,
            local,
            config,
            stats,
            rooms,
            tcp_port,
            tcp: HashMap::new(),
            peers: HashMap::new(),
            by_name: HashMap::new(),
            by_source: HashMap::new(),
            forwarder: Forwarder::new(),
            next_id: 1,
            dirty: Vec::new(),
            next_timeout: Instant::now() + IDLE_WAKE,
            routes: Vec::new(),
            commands,
            sent: 0,
        }
    }

    pub(crate) async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let sleep = tokio::time::sleep_until(self.next_timeout.into());
            let wake = tokio::select! {
                command = commands.recv() => Wake::Command(command),
                received = self.socket.recv_from(&mut buf) => Wake::Datagram(received),
                _ = sleep => Wake::Timer,
            };
            match wake {
                Wake::Command(None) => return,
                Wake::Command(Some(command)) => self.command(command),
                Wake::Datagram(Ok((n, source))) => {
                    self.receive(&buf[..n], source, Protocol::Udp, self.local)
                }
                // ICMP errors from earlier sends surface here on Linux: nothing to do.
                Wake::Datagram(Err(e)) => tracing::trace!("media socket: {e}"),
                Wake::Timer => {}
            }
            self.timeouts(Instant::now());
            self.poll_dirty();
        }
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Offer(offer, reply) => {
                let answer = self.open(offer);
                if answer.is_err() {
                    MediaStats::add(&self.stats.refused, 1);
                }
                let _ = reply.send(answer);
            }
            Command::Trickle(name, fragment, reply) => {
                let _ = reply.send(self.trickle(&name, &fragment));
            }
            Command::End(name, reply) => {
                let result = match self.by_name.get(&name).copied() {
                    Some(id) => {
                        if let Some(peer) = self.peers.get_mut(&id) {
                            peer.rtc.disconnect();
                        }
                        self.remove(id);
                        Ok(())
                    }
                    None => Err(MediaError::NotFound(format!("no media session `{name}`"))),
                };
                let _ = reply.send(result);
            }
            Command::ChannelSend(peer, channel, message) => {
                self.channel_send(peer, channel, message)
            }
            Command::SfuJoin(join, reply) => {
                let joined = self.sfu_join(join);
                if matches!(joined, Err(MediaError::Full(_))) {
                    MediaStats::add(&self.stats.refused, 1);
                }
                let _ = reply.send(joined);
            }
            Command::SfuDescribe(peer, description, reply) => {
                let _ = reply.send(self.sfu_describe(peer, description));
            }
            Command::SfuLeave(peer) => self.sfu_leave(peer),
            Command::TcpOpen(remote, connection) => {
                // Each peer may use a few; past that, a flood of connections is refused.
                if self.tcp.len() < self.config.max_peers.max(1) * 2 {
                    self.tcp.insert(remote, connection);
                }
            }
            Command::TcpReceive(remote, local, packet) => {
                if self.tcp.contains_key(&remote) {
                    self.receive(&packet, remote, Protocol::Tcp, local);
                }
            }
            Command::TcpClose(remote) => {
                self.tcp.remove(&remote);
            }
            Command::ChannelClose(peer, channel) => {
                if let Some(p) = self.peers.get_mut(&peer)
                    && p.channels.remove(&channel).is_some()
                {
                    p.rtc.direct_api().close_data_channel(channel);
                    self.mark(peer);
                }
            }
        }
    }

    /// A new peer connection for `offer`, checked against the limits.
    fn open(&mut self, offer: Offer) -> Result<Answer, MediaError> {
        let full = |what: &str, key: &str, n: usize| {
            Err(MediaError::Full(format!(
                "{what} ([webrtc.media] {key} = {n})"
            )))
        };
        if self.peers.len() >= self.config.max_peers {
            return full(
                "this node carries its most peer connections",
                "max_peers",
                self.config.max_peers,
            );
        }
        if offer.kind != SessionKind::Link {
            self.admit_room(&offer.room)?;
        }
        let role = match &offer.kind {
            SessionKind::Whip => {
                self.admit_publisher(&offer.room)?;
                Some(Role::Publisher)
            }
            SessionKind::Whep { of } => {
                let viewers = self
                    .forwarder
                    .count_in_room(&offer.room, |r| matches!(r, Role::Viewer { .. }));
                if viewers >= self.config.max_viewers {
                    return full(
                        "the room has its most viewers",
                        "max_viewers",
                        self.config.max_viewers,
                    );
                }
                let of = match of {
                    None => None,
                    Some(name) => {
                        // A WHIP session, or an SFU member by its room peer id.
                        let publishes = |p: &&Peer| {
                            p.room == offer.room
                                && (p.kind == PeerKind::Publisher || p.membership.is_some())
                        };
                        let target = self
                            .by_name
                            .get(name)
                            .and_then(|id| self.peers.get(id))
                            .filter(publishes)
                            .or_else(|| {
                                self.peers
                                    .values()
                                    .filter(publishes)
                                    .find(|p| p.membership.is_some() && p.label == *name)
                            });
                        match target {
                            Some(peer) => Some(peer.id),
                            None => {
                                return Err(MediaError::NotFound(format!(
                                    "no publisher `{name}` in room `{}`",
                                    offer.room
                                )));
                            }
                        }
                    }
                };
                Some(Role::Viewer { of })
            }
            // The client's own link takes part in a room's forwarding once its door joins an
            // SFU room (`sfu_join`).
            SessionKind::Link => None,
        };
        let kind = match role {
            Some(Role::Publisher | Role::Member) => PeerKind::Publisher,
            Some(Role::Viewer { .. }) => PeerKind::Viewer,
            None => PeerKind::Link,
        };
        let sdp =
            SdpOffer::from_sdp_string(&offer.sdp).map_err(|e| MediaError::BadSdp(e.to_string()))?;
        let ip = self.announced_ip(offer.local_ip).ok_or_else(|| {
            MediaError::BadSdp("no address to announce: set [webrtc.media] public_ip".into())
        })?;
        let local = SocketAddr::new(ip, self.local.port());
        let now = Instant::now();
        // ICE lite: the server has one public address and answers the client's checks.
        let mut rtc = Rtc::builder()
            .set_ice_lite(true)
            // Egress stats carry the NACKs receivers sent (for /metrics).
            .set_stats_interval(Some(Duration::from_secs(1)))
            .build(now);
        let candidate =
            Candidate::host(local, "udp").map_err(|e| MediaError::BadSdp(e.to_string()))?;
        rtc.add_local_candidate(candidate);
        if let Some(port) = self.tcp_port {
            // ICE-TCP, passive, on the HTTP listener's port: for clients with no UDP at all.
            let tcp = Candidate::builder()
                .tcp()
                .host(SocketAddr::new(ip, port))
                .tcptype(TcpType::Passive)
                .build()
                .map_err(|e| MediaError::BadSdp(e.to_string()))?;
            rtc.add_local_candidate(tcp);
        }
        let answer = rtc
            .sdp_api()
            .accept_offer(sdp)
            .map_err(|e| MediaError::BadSdp(e.to_string()))?;
        let id = PeerId(self.next_id);
        self.next_id += 1;
        let name = format!("{:032x}", rand::random::<u128>());
        let connect_by = now + Duration::from_secs(self.config.connect_timeout.max(1));
        let mut peer = Peer::new(
            id,
            name.clone(),
            offer.room.clone(),
            kind,
            rtc,
            local,
            connect_by,
        );
        peer.on_channel = offer.on_channel;
        peer.hold = offer.hold;
        peer.wanted_layer = offer.layer.as_deref().map(Rid::from);
        self.peers.insert(id, peer);
        self.by_name.insert(name.clone(), id);
        MediaStats::add(&self.stats.peers, 1);
        if let Some(role) = role {
            let actions = self.forwarder.join(id, &offer.room, role);
            self.count_room(&offer.room);
            self.apply(actions, now);
        }
        // The offer's m-lines become tracks or slots as str0m reports them.
        self.mark(id);
        self.poll_dirty();
        tracing::debug!(
            "media: {kind:?} `{name}` in room `{}` for `{}`",
            offer.room,
            offer.user
        );
        Ok(Answer {
            id: name,
            sdp: cap_sdp(&answer.to_sdp_string(), self.config.max_track_bitrate),
        })
    }

    /// Publishes `room`'s peer count for `/api/rooms/<room>` (read by other tasks).
    fn count_room(&self, room: &str) {
        let peers = self.forwarder.count_in_room(room, |_| true);
        let mut rooms = self.rooms.lock();
        if peers == 0 {
            rooms.remove(room);
        } else {
            rooms.insert(room.to_owned(), peers);
        }
    }

    /// A room that has no media yet counts against `max_rooms`.
    fn admit_room(&self, room: &str) -> Result<(), MediaError> {
        if self.forwarder.count_in_room(room, |_| true) == 0
            && self.forwarder.room_count() >= self.config.max_rooms
        {
            return Err(MediaError::Full(format!(
                "this node carries its most media rooms ([webrtc.media] max_rooms = {})",
                self.config.max_rooms
            )));
        }
        Ok(())
    }

    /// WHIP publishers and SFU members of a room count against `max_publishers`.
    fn admit_publisher(&self, room: &str) -> Result<(), MediaError> {
        let publishers = self
            .forwarder
            .count_in_room(room, |r| r == Role::Publisher || r == Role::Member);
        if publishers >= self.config.max_publishers {
            return Err(MediaError::Full(format!(
                "the room has its most publishers and members ([webrtc.media] max_publishers = {})",
                self.config.max_publishers
            )));
        }
        Ok(())
    }

    fn announced_ip(&self, request_ip: Option<IpAddr>) -> Option<IpAddr> {
        if let Some(ip) = self.config.public_ip {
            return Some(ip);
        }
        if !self.local.ip().is_unspecified() {
            return Some(self.local.ip());
        }
        request_ip.filter(|ip| !ip.is_unspecified())
    }

    fn trickle(&mut self, name: &str, fragment: &str) -> Result<(), MediaError> {
        let Some(peer) = self.by_name.get(name).and_then(|id| self.peers.get_mut(id)) else {
            return Err(MediaError::NotFound(format!("no media session `{name}`")));
        };
        let mut candidates = Vec::new();
        for line in fragment.lines() {
            let line = line.trim();
            if let Some(candidate) = line.strip_prefix("a=candidate:") {
                let parsed = Candidate::from_sdp_string(&format!("candidate:{candidate}"))
                    .map_err(|e| MediaError::BadSdp(format!("candidate `{line}`: {e}")))?;
                candidates.push(parsed);
            }
        }
        // The server is ICE lite: it answers checks from wherever they come, so remote
        // candidates are only a hint, added all the same, but a bounded number of them.
        if peer.remote_candidates + candidates.len() > MAX_REMOTE_CANDIDATES {
            return Err(MediaError::BadSdp(format!(
                "a session takes at most {MAX_REMOTE_CANDIDATES} trickled candidates"
            )));
        }
        peer.remote_candidates += candidates.len();
        for candidate in candidates {
            peer.rtc.add_remote_candidate(candidate);
        }
        let id = peer.id;
        self.mark(id);
        Ok(())
    }

    /// A datagram (or an ICE-TCP frame): to the peer it belongs to, or dropped (with its
    /// TCP connection).
    fn receive(&mut self, data: &[u8], source: SocketAddr, proto: Protocol, local: SocketAddr) {
        let Ok(contents) = DatagramRecv::try_from(data) else {
            if proto == Protocol::Tcp {
                self.tcp.remove(&source);
            }
            return;
        };
        let now = Instant::now();
        let mut input = Input::Receive(
            now,
            Receive {
                proto,
                source,
                destination: local,
                contents,
            },
        );
        let known = self
            .by_source
            .get(&source)
            .copied()
            .filter(|id| self.peers.get(id).is_some_and(|p| p.rtc.accepts(&input)));
        let Some(id) = known.or_else(|| {
            self.peers
                .values()
                .find(|p| p.rtc.is_alive() && p.rtc.accepts(&input))
                .map(|p| p.id)
        }) else {
            if proto == Protocol::Tcp {
                // A connection that speaks for no peer has nothing more to say.
                self.tcp.remove(&source);
            }
            return;
        };
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        if let Input::Receive(_, receive) = &mut input {
            // The address this peer was given as the candidate: what ICE checks against.
            receive.destination = match (proto, self.tcp_port) {
                (Protocol::Tcp, Some(port)) => SocketAddr::new(peer.local.ip(), port),
                _ => peer.local,
            };
        }
        if peer.remember_source(source) {
            self.by_source.insert(source, id);
        }
        if let Err(e) = peer.rtc.handle_input(input) {
            tracing::debug!("media: peer `{}`: {e}", peer.name);
            peer.rtc.disconnect();
        }
        self.mark(id);
    }

    /// Gives every peer whose time came its timeout, and drops the dead and the late.
    fn timeouts(&mut self, now: Instant) {
        if now < self.next_timeout {
            return;
        }
        let mut next = now + IDLE_WAKE;
        let mut gone = Vec::new();
        for peer in self.peers.values_mut() {
            let late = peer.connect_by.is_some_and(|by| now >= by);
            if late || !peer.rtc.is_alive() {
                gone.push(peer.id);
                continue;
            }
            if peer.timeout <= now {
                if let Err(e) = peer.rtc.handle_input(Input::Timeout(now)) {
                    tracing::debug!("media: peer `{}`: {e}", peer.name);
                    peer.rtc.disconnect();
                }
                if !peer.dirty {
                    peer.dirty = true;
                    self.dirty.push(peer.id);
                }
            } else {
                next = next.min(peer.timeout);
            }
            if let Some(by) = peer.connect_by {
                next = next.min(by);
            }
        }
        self.next_timeout = next;
        for id in gone {
            self.remove(id);
        }
    }

    fn mark(&mut self, id: PeerId) {
        if let Some(peer) = self.peers.get_mut(&id)
            && !peer.dirty
        {
            peer.dirty = true;
            self.dirty.push(id);
        }
    }

    /// Polls every marked peer until it is quiet; what one peer's output does may mark others.
    fn poll_dirty(&mut self) {
        while let Some(id) = self.dirty.pop() {
            if let Some(peer) = self.peers.get_mut(&id) {
                peer.dirty = false;
            }
            self.poll(id);
        }
    }

    fn poll(&mut self, id: PeerId) {
        loop {
            let Some(peer) = self.peers.get_mut(&id) else {
                return;
            };
            if !peer.rtc.is_alive() {
                self.next_timeout = Instant::now();
                return;
            }
            let connected = peer.connect_by.is_none();
            let output = match peer.rtc.poll_output() {
                Ok(output) => output,
                Err(e) => {
                    tracing::debug!("media: peer `{}`: {e}", peer.name);
                    peer.rtc.disconnect();
                    continue;
                }
            };
            match output {
                Output::Timeout(at) => {
                    peer.timeout = at;
                    self.next_timeout = self.next_timeout.min(at);
                    return;
                }
                Output::Transmit(_) if connected && self.test_loss() => {}
                Output::Transmit(transmit) => self.transmit(&transmit),
                Output::Event(event) => self.on_event(id, event),
            }
        }
    }

    /// Sends a packet: a datagram, or a frame on the ICE-TCP connection it is for. Either way
    /// one that can't go now is lost, as on any network; the peer's retransmissions and
    /// congestion control deal with it.
    fn transmit(&self, transmit: &Transmit) {
        if transmit.proto == Protocol::Tcp {
            if let Some(connection) = self.tcp.get(&transmit.destination)
                && connection
                    .try_send(Bytes::copy_from_slice(&transmit.contents))
                    .is_err()
            {
                MediaStats::add(&self.stats.send_dropped, 1);
            }
            return;
        }
        if self
            .socket
            .try_send_to(&transmit.contents, transmit.destination)
            .is_err()
        {
            MediaStats::add(&self.stats.send_dropped, 1);
        }
    }

    /// Whether `[webrtc.media] test_loss_percent` drops the next datagram: exactly that share,
    /// spread evenly (no randomness, so a test sees the same loss every run).
    fn test_loss(&mut self) -> bool {
        let percent = u64::from(self.config.test_loss_percent.min(100));
        if percent == 0 {
            return false;
        }
        self.sent += 1;
        (self.sent * percent) % 100 < percent
    }

    fn on_event(&mut self, id: PeerId, event: Event) {
        let now = Instant::now();
        match event {
            Event::Connected => {
                let Some(peer) = self.peers.get_mut(&id) else {
                    return;
                };
                peer.connect_by = None;
                // A viewer decodes from the next keyframe on: ask for one now that it can
                // receive it (one asked for earlier may have been dropped before this).
                let slots: Vec<_> = peer.slots.keys().copied().collect();
                for slot in slots {
                    let action = self.forwarder.keyframe_wanted(id, slot, now);
                    self.apply(action, now);
                }
            }
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) | Event::Closed => {
                if let Some(peer) = self.peers.get_mut(&id) {
                    peer.rtc.disconnect();
                }
                self.next_timeout = now;
            }
            Event::MediaAdded(added) => self.media_added(id, added, now),
            Event::ChannelOpen(channel, label) => self.channel_open(id, channel, &label),
            Event::ChannelData(data) => self.channel_data(id, data),
            Event::ChannelClose(channel) => {
                // Dropping the door's sender ends its session.
                if let Some(peer) = self.peers.get_mut(&id) {
                    peer.channels.remove(&channel);
                }
            }
            Event::ChannelBufferedAmountLow(channel) => self.flush_channel(id, channel),
            Event::MediaEgressStats(egress) => {
                // Totals per stream: count what is new since the last report.
                if let Some(peer) = self.peers.get_mut(&id) {
                    let seen = peer.nacks.entry((egress.mid, egress.rid)).or_default();
                    MediaStats::add(&self.stats.nacks, egress.nacks.saturating_sub(*seen));
                    *seen = egress.nacks.max(*seen);
                }
            }
            Event::MediaData(data) => self.forward(id, data, now),
            Event::KeyframeRequest(request) => {
                let slot = self
                    .peers
                    .get(&id)
                    .and_then(|p| p.mid_slots.get(&request.mid).copied());
                if let Some(slot) = slot {
                    let action = self.forwarder.keyframe_wanted(id, slot, now);
                    self.apply(action, now);
                }
            }
            _ => {}
        }
    }

    /// An m-line of the offer: a track when the peer sends on it, a slot when it receives.
    fn media_added(&mut self, id: PeerId, added: MediaAdded, now: Instant) {
        let Some(peer) = self.peers.get(&id) else {
            return;
        };
        let kind = kind_of(added.kind);
        // Our direction: RecvOnly means the peer sends.
        let peer_sends = matches!(added.direction, Direction::RecvOnly | Direction::SendRecv);
        let peer_receives = matches!(added.direction, Direction::SendOnly | Direction::SendRecv);
        if peer.kind == PeerKind::Publisher && peer_sends {
            self.publish(id, added.mid, kind, now);
        } else if peer.kind == PeerKind::Link && peer_sends {
            // Published in the SFU room its door joins, now or later.
            if peer.sends.len() >= MAX_TRACKS_PER_PEER {
                return;
            }
            let member = peer.membership.is_some();
            if let Some(peer) = self.peers.get_mut(&id) {
                peer.sends.push((added.mid, kind));
            }
            if member {
                self.publish(id, added.mid, kind, now);
            }
        } else if peer.kind == PeerKind::Viewer && peer_receives {
            let (slot, actions) = self.forwarder.add_viewer_slot(id, kind, now);
            if let Some(peer) = self.peers.get_mut(&id) {
                peer.add_slot(added.mid, slot);
            }
            self.apply(actions, now);
        }
    }

    /// The m-line `mid` of `id` carries a new track into its room.
    fn publish(&mut self, id: PeerId, mid: Mid, kind: Kind, now: Instant) {
        let Some(peer) = self.peers.get(&id) else {
            return;
        };
        if peer.tracks.len() >= MAX_TRACKS_PER_PEER {
            tracing::debug!(
                "media: `{}` publishes too many tracks: {mid} ignored",
                peer.name
            );
            return;
        }
        let (track, actions) = self.forwarder.publish(id, kind, now);
        if let Some(peer) = self.peers.get_mut(&id) {
            peer.add_track(mid, track);
        }
        MediaStats::add(&self.stats.tracks, 1);
        self.apply(actions, now);
    }

    /// A frame from a publisher: to every receiver of its track.
    fn forward(&mut self, id: PeerId, data: MediaData, now: Instant) {
        let Some(track) = self
            .peers
            .get(&id)
            .and_then(|p| p.tracks.get(&data.mid).copied())
        else {
            tracing::trace!("media: frame on {:?} of {id:?}, no track", data.mid);
            return;
        };
        let cap = self.config.max_track_bitrate;
        if let Some(peer) = self.peers.get_mut(&id)
            && cap > 0
            && peer
                .meters
                .entry(data.mid)
                .or_insert_with(|| Meter::new(now))
                .add(data.data.len(), now, cap)
        {
            // It ignores the cap its answer gave: dropped before it crowds out the rest.
            tracing::warn!(
                "media: `{}` sends over twice max_track_bitrate ({cap} bit/s): dropped",
                peer.name
            );
            MediaStats::add(&self.stats.over_bitrate, 1);
            peer.rtc.disconnect();
            self.next_timeout = now;
            return;
        }
        if !data.contiguous {
            // Lost on the way in: every receiver would decode garbage until a keyframe.
            let action = self.forwarder.request_keyframe(track, now);
            self.apply(action, now);
        }
        let keyframe = data.is_keyframe();
        // Simulcast: each receiver gets one layer (see `simulcast.rs`). The publisher's layers
        // are taken out while its receivers are borrowed, and put back after.
        let layers = match data.rid {
            Some(rid) => self.peers.get_mut(&id).map(|p| {
                let mut layers = p.layers.remove(&data.mid).unwrap_or_default();
                layers.record(rid, data.data.len(), now);
                layers
            }),
            None => None,
        };
        let mut keyframes_wanted: Vec<Rid> = Vec::new();
        let packets = data
            .seq_range
            .end()
            .saturating_sub(**data.seq_range.start())
            + 1;
        let mut routes = std::mem::take(&mut self.routes);
        routes.clear();
        routes.extend_from_slice(self.forwarder.receivers(track));
        for route in &routes {
            let Some(receiver) = self.peers.get_mut(&route.to) else {
                continue;
            };
            let Some(&mid) = receiver.slots.get(&route.slot) else {
                continue;
            };
            if let (Some(rid), Some(layers)) = (data.rid, &layers) {
                let wanted = receiver.wanted_layer;
                let (source, slot_layer) = receiver
                    .slot_layers
                    .entry(route.slot)
                    .or_insert_with(|| (track, SlotLayer::default()));
                if *source != track {
                    // The slot follows another publisher now: its layer is chosen afresh.
                    *source = track;
                    *slot_layer = SlotLayer::default();
                }
                slot_layer.wanted = wanted;
                let verdict = slot_layer.admit(rid, keyframe, layers, now);
                if let Some(want) = verdict.keyframe
                    && !keyframes_wanted.contains(&want)
                {
                    keyframes_wanted.push(want);
                }
                if !verdict.forward {
                    continue;
                }
            }
            let Some(writer) = receiver.rtc.writer(mid) else {
                continue;
            };
            let Some(pt) = writer.match_params(data.params) else {
                tracing::trace!(
                    "media: no payload type at {:?} for {:?}",
                    route.to,
                    data.params
                );
                continue;
            };
            if writer
                .write(pt, data.network_time, data.time, data.data.clone())
                .is_ok()
            {
                MediaStats::add(&self.stats.packets_forwarded, packets);
                MediaStats::add(&self.stats.bytes_forwarded, data.data.len() as u64);
            }
            self.mark(route.to);
        }
        self.routes = routes;
        if let Some(layers) = layers
            && let Some(peer) = self.peers.get_mut(&id)
        {
            peer.layers.insert(data.mid, layers);
        }
        for rid in keyframes_wanted {
            self.request_layer_keyframe(track, data.mid, rid, now);
        }
    }

    /// Asks a simulcast publisher for a keyframe of one layer (throttled per layer).
    fn request_layer_keyframe(&mut self, track: TrackId, mid: Mid, rid: Rid, now: Instant) {
        let Some(peer) = self.peers.get_mut(&track.peer) else {
            return;
        };
        if let Some(last) = peer.layer_keyframes.get(&(mid, rid))
            && now.saturating_duration_since(*last) < KEYFRAME_INTERVAL
        {
            return;
        }
        peer.layer_keyframes.insert((mid, rid), now);
        if let Some(mut writer) = peer.rtc.writer(mid)
            && writer
                .request_keyframe(Some(rid), KeyframeRequestKind::Pli)
                .is_ok()
        {
            MediaStats::add(&self.stats.keyframe_requests, 1);
        }
        self.mark(track.peer);
    }

    fn apply(&mut self, actions: impl IntoIterator<Item = Action>, _now: Instant) {
        let mut renegotiate: Vec<PeerId> = Vec::new();
        for action in actions {
            match action {
                Action::RequestKeyframe(track) => {
                    let Some(peer) = self.peers.get_mut(&track.peer) else {
                        continue;
                    };
                    let Some(&mid) = peer.track_mids.get(&track.index) else {
                        continue;
                    };
                    // A simulcast publisher is asked for a keyframe of every layer.
                    let rids: Vec<Option<Rid>> = match peer.layers.get(&mid) {
                        Some(layers) => layers.rids().map(Some).collect(),
                        None => vec![None],
                    };
                    if let Some(mut writer) = peer.rtc.writer(mid) {
                        for rid in rids {
                            if writer
                                .request_keyframe(rid, KeyframeRequestKind::Pli)
                                .is_ok()
                            {
                                MediaStats::add(&self.stats.keyframe_requests, 1);
                            }
                        }
                    }
                    self.mark(track.peer);
                }
                Action::OpenSlot {
                    to,
                    slot,
                    kind,
                    source,
                } => {
                    // The client tells whose media an m-line carries by its msid: the
                    // publisher's stream id (an SFU member's room peer id).
                    let stream = self
                        .peers
                        .get(&source.peer)
                        .map(|p| p.label.clone())
                        .unwrap_or_default();
                    if let Some(m) = self.peers.get_mut(&to).and_then(|p| p.membership.as_mut()) {
                        m.to_open.push(NewSlot {
                            slot,
                            kind,
                            track: format!("{stream}-{}", source.index),
                            stream,
                        });
                        renegotiate.push(to);
                    }
                }
                Action::CloseSlot { to, slot } => {
                    let Some(peer) = self.peers.get_mut(&to) else {
                        continue;
                    };
                    let mid = peer.remove_slot(slot);
                    if let Some(m) = peer.membership.as_mut() {
                        match mid {
                            Some(mid) => m.to_stop.push(mid),
                            // Not offered yet: never will be. (One in the pending offer is
                            // settled when its answer comes.)
                            None => m.to_open.retain(|s| s.slot != slot),
                        }
                        renegotiate.push(to);
                    }
                }
            }
        }
        renegotiate.sort();
        renegotiate.dedup();
        for id in renegotiate {
            self.renegotiate(id);
        }
    }

    /// The door of a `POST /rtc` peer joins an SFU room with it.
    fn sfu_join(&mut self, join: SfuJoin) -> Result<(), MediaError> {
        let SfuJoin {
            peer: id,
            room,
            member,
            on_description,
        } = join;
        let Some(peer) = self.peers.get(&id) else {
            return Err(MediaError::NotFound("the peer connection is gone".into()));
        };
        if peer.kind != PeerKind::Link {
            return Err(MediaError::Conflict(
                "SFU rooms are joined on a `POST /rtc` peer connection".into(),
            ));
        }
        if peer.membership.is_some() {
            return Err(MediaError::Conflict(format!(
                "this peer connection's media is in room `{}` already",
                peer.room
            )));
        }
        self.admit_room(&room)?;
        self.admit_publisher(&room)?;
        let now = Instant::now();
        let Some(peer) = self.peers.get_mut(&id) else {
            return Err(MediaError::NotFound("the peer connection is gone".into()));
        };
        peer.room = room.clone();
        peer.label = member.clone();
        peer.membership = Some(Membership {
            on_description,
            // M-lines of an earlier membership carry nothing any more: stopped first.
            to_stop: std::mem::take(&mut peer.retired),
            to_open: Vec::new(),
            pending: None,
        });
        let sends = peer.sends.clone();
        let actions = self.forwarder.join(id, &room, Role::Member);
        self.count_room(&room);
        self.apply(actions, now);
        for (mid, kind) in sends {
            self.publish(id, mid, kind, now);
        }
        self.renegotiate(id);
        tracing::debug!("media: `{}` joined SFU room `{room}`", self.peers[&id].name);
        Ok(())
    }

    /// Offers a member what changed in its room (slots to open, m-lines to stop), unless an
    /// offer is already waiting for its answer: the changes then go in the next one.
    fn renegotiate(&mut self, id: PeerId) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        let Peer {
            rtc,
            membership,
            name,
            lines_added,
            ..
        } = peer;
        let Some(m) = membership.as_mut() else {
            return;
        };
        if m.pending.is_some() || (m.to_open.is_empty() && m.to_stop.is_empty()) {
            return;
        }
        let mut api = rtc.sdp_api();
        for mid in m.to_stop.drain(..) {
            api.stop_media(mid);
        }
        let room_left = MAX_MEMBER_LINES.saturating_sub(*lines_added);
        if m.to_open.len() > room_left {
            tracing::warn!(
                "media: `{name}` was offered {MAX_MEMBER_LINES} m-lines: {} more tracks not offered",
                m.to_open.len() - room_left
            );
            m.to_open.truncate(room_left);
        }
        let mut opened = Vec::new();
        for new in m.to_open.drain(..) {
            let kind = match new.kind {
                Kind::Audio => MediaKind::Audio,
                Kind::Video => MediaKind::Video,
            };
            let mid = api.add_media(
                kind,
                Direction::SendOnly,
                Some(new.stream.clone()),
                Some(new.track.clone()),
                None,
            );
            opened.push((new, mid));
        }
        *lines_added += opened.len();
        // Stops alone need no negotiation in str0m's eyes, but the client must learn of them.
        if let Some((offer, pending)) = api.apply() {
            m.pending = Some((pending, opened));
            (m.on_description)(Description {
                kind: DescriptionKind::Offer,
                sdp: offer.to_sdp_string(),
            });
        }
        self.mark(id);
    }

    /// A member's session description: the answer to the SFU's offer, or its own offer.
    fn sfu_describe(&mut self, id: PeerId, description: Description) -> Result<(), MediaError> {
        let now = Instant::now();
        let Some(peer) = self.peers.get_mut(&id) else {
            return Err(MediaError::NotFound("the peer connection is gone".into()));
        };
        let Peer {
            rtc,
            membership,
            lines_added,
            ..
        } = peer;
        let Some(m) = membership.as_mut() else {
            return Err(MediaError::Conflict(
                "this peer connection is in no SFU room".into(),
            ));
        };
        let bad = |e: &dyn std::fmt::Display| MediaError::BadSdp(e.to_string());
        match description.kind {
            DescriptionKind::Answer => {
                let Some((pending, opened)) = m.pending.take() else {
                    return Err(MediaError::Conflict(
                        "the SFU has no offer waiting for an answer".into(),
                    ));
                };
                let answer = SdpAnswer::from_sdp_string(&description.sdp);
                let accepted = answer
                    .map_err(|e| bad(&e))
                    .and_then(|a| rtc.sdp_api().accept_answer(pending, a).map_err(|e| bad(&e)));
                if let Err(e) = accepted {
                    // Nothing it offered was applied: offered again with the next change.
                    *lines_added -= opened.len();
                    m.to_open.extend(opened.into_iter().map(|(new, _)| new));
                    return Err(e);
                }
                let mut ready = Vec::new();
                for (new, mid) in opened {
                    if self.forwarder.source(id, new.slot).is_some() {
                        ready.push((new.slot, mid));
                    } else if let Some(m) =
                        self.peers.get_mut(&id).and_then(|p| p.membership.as_mut())
                    {
                        // Its source left while the offer was out.
                        m.to_stop.push(mid);
                    }
                }
                for (slot, mid) in ready {
                    if let Some(peer) = self.peers.get_mut(&id) {
                        peer.add_slot(mid, slot);
                    }
                    let action = self.forwarder.slot_ready(id, slot, now);
                    self.apply(action, now);
                }
                self.renegotiate(id);
            }
            DescriptionKind::Offer => {
                if m.pending.is_some() {
                    // Glare: the SFU is the impolite side (the client rolls its offer back
                    // when the SFU's arrives, as perfect negotiation has it).
                    return Err(MediaError::Conflict(
                        "the SFU's own offer waits for an answer: answer it, then offer again"
                            .into(),
                    ));
                }
                let offer = SdpOffer::from_sdp_string(&description.sdp).map_err(|e| bad(&e))?;
                let answer = rtc.sdp_api().accept_offer(offer).map_err(|e| bad(&e))?;
                (m.on_description)(Description {
                    kind: DescriptionKind::Answer,
                    sdp: cap_sdp(&answer.to_sdp_string(), self.config.max_track_bitrate),
                });
            }
        }
        self.mark(id);
        Ok(())
    }

    /// A member's door left its SFU room: its tracks leave the others, and what it received
    /// stops (its m-lines are stopped if it joins again).
    fn sfu_leave(&mut self, id: PeerId) {
        let now = Instant::now();
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        if peer.membership.take().is_none() {
            return;
        }
        let tracks = peer.tracks.len() as u64;
        peer.tracks.clear();
        peer.track_mids.clear();
        let slots: Vec<_> = peer.slots.keys().copied().collect();
        for slot in slots {
            if let Some(mid) = peer.remove_slot(slot) {
                peer.retired.push(mid);
            }
        }
        tracing::debug!("media: `{}` left SFU room `{}`", peer.name, peer.room);
        let room = std::mem::take(&mut peer.room);
        self.stats
            .tracks
            .fetch_sub(tracks, std::sync::atomic::Ordering::Relaxed);
        let actions = self.forwarder.leave(id, now);
        self.count_room(&room);
        self.apply(actions, now);
    }

    /// A data channel opened: a `switchboard` one becomes a door.
    fn channel_open(&mut self, id: PeerId, channel: ChannelId, label: &str) {
        let Some(commands) = self.commands.upgrade() else {
            return;
        };
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        let Some(on_channel) = peer.on_channel.clone() else {
            return;
        };
        if label != DOOR_LABEL {
            return;
        }
        let Some(mut handle) = peer.rtc.channel(channel) else {
            return;
        };
        let unreliable = handle.config().is_some_and(|c| {
            !c.ordered
                && matches!(
                    c.reliability,
                    Reliability::MaxRetransmits { retransmits: 0 }
                )
        });
        handle.set_buffered_amount_low_threshold(CHANNEL_PENDING_BYTES / 4);
        let (to_door, incoming) = mpsc::channel(CHANNEL_INBOX);
        let flooded = Arc::new(std::sync::atomic::AtomicBool::new(false));
        peer.channels.insert(
            channel,
            DoorChannel {
                to_door: Some(to_door),
                flooded: flooded.clone(),
                pending: Default::default(),
                pending_bytes: 0,
                unreliable,
            },
        );
        on_channel(ChannelLink {
            incoming,
            outgoing: ChannelWriter {
                commands,
                peer: id,
                channel,
            },
            unreliable,
            flooded,
        });
    }

    /// A client message on a door channel: to its door, in order. A client that sends faster
    /// than its door takes commands (rate limited, answered) is flooding: its door is told
    /// (it says goodbye and closes the channel) and what it sends from then on is dropped.
    fn channel_data(&mut self, id: PeerId, data: ChannelData) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        let Some(door) = peer.channels.get_mut(&data.id) else {
            return;
        };
        let Some(to_door) = &door.to_door else {
            return;
        };
        if to_door.try_send(data.data).is_err() {
            tracing::debug!("media: `{}` floods its data channel: closing", peer.name);
            door.flooded
                .store(true, std::sync::atomic::Ordering::Release);
            door.to_door = None;
        }
    }

    /// A door's message for the client.
    fn channel_send(&mut self, id: PeerId, channel: ChannelId, message: Bytes) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        let Some(door) = peer.channels.get_mut(&channel) else {
            return;
        };
        if door.unreliable {
            // Sent once or not at all: the next message supersedes this one.
            if let Some(mut handle) = peer.rtc.channel(channel) {
                let _ = handle.write(false, &message);
            }
            self.mark(id);
            return;
        }
        door.pending_bytes += message.len();
        door.pending.push_back(message);
        if door.pending_bytes > CHANNEL_PENDING_BYTES {
            tracing::debug!(
                "media: `{}` reads its data channel too slowly: closed",
                peer.name
            );
            peer.channels.remove(&channel);
            peer.rtc.direct_api().close_data_channel(channel);
            self.mark(id);
            return;
        }
        self.flush_channel(id, channel);
    }

    /// Writes what a reliable door channel holds, as far as SCTP takes it.
    fn flush_channel(&mut self, id: PeerId, channel: ChannelId) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        let Some(door) = peer.channels.get_mut(&channel) else {
            return;
        };
        while let Some(front) = door.pending.front() {
            let Some(mut handle) = peer.rtc.channel(channel) else {
                break;
            };
            match handle.write(false, front) {
                Ok(true) => {
                    door.pending_bytes -= front.len();
                    door.pending.pop_front();
                }
                Ok(false) => break,
                Err(e) => {
                    tracing::debug!("media: `{}` data channel: {e}", peer.name);
                    peer.channels.remove(&channel);
                    break;
                }
            }
        }
        self.mark(id);
    }

    /// Forgets a peer: its tracks leave their receivers.
    fn remove(&mut self, id: PeerId) {
        let Some(mut peer) = self.peers.remove(&id) else {
            return;
        };
        // Let what the close queued (DTLS close_notify, RTCP BYE) go out.
        while let Ok(Output::Transmit(transmit)) = peer.rtc.poll_output() {
            self.transmit(&transmit);
        }
        self.by_name.remove(&peer.name);
        for source in &peer.sources {
            if self.by_source.get(source) == Some(&id) {
                self.by_source.remove(source);
            }
            // Its ICE-TCP connections end with it.
            self.tcp.remove(source);
        }
        self.stats
            .peers
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        self.stats.tracks.fetch_sub(
            peer.tracks.len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        if peer.kind != PeerKind::Link || peer.membership.is_some() {
            let actions = self.forwarder.leave(id, Instant::now());
            self.count_room(&peer.room);
            self.apply(actions, Instant::now());
        }
        tracing::debug!("media: `{}` left room `{}`", peer.name, peer.room);
    }
}
