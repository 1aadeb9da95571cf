//! One peer connection: its str0m `Rtc` and how its m-lines map to the forwarder's tracks
//! (what it publishes) and slots (what it receives).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

use std::collections::VecDeque;

use bytes::Bytes;
use str0m::Rtc;
use str0m::channel::ChannelId;
use str0m::media::{MediaKind, Mid, Rid};
use tokio::sync::mpsc;

use str0m::change::SdpPendingOffer;

use super::forward::{Kind, PeerId, SlotId, TrackId};
use super::simulcast::{Layers, SlotLayer};
use super::{OnChannel, OnDescription};

/// Most remote addresses remembered per peer for demultiplexing (ICE may try a few).
pub(super) const MAX_SOURCES: usize = 8;

/// What a peer connection is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PeerKind {
    /// WHIP: its media is published into its room.
    Publisher,
    /// WHEP: it receives a publisher's media.
    Viewer,
    /// `POST /rtc`: data channels, and an SFU room's media once its door joins one.
    Link,
}

/// A `POST /rtc` peer's place in an SFU room, and the renegotiation that keeps its receiving
/// m-lines in step with the room's tracks.
pub(super) struct Membership {
    /// Where the SFU's offers and answers go (its door, as `signal` frames from "sfu").
    pub on_description: OnDescription,
    /// Slots to offer in the next renegotiation.
    pub to_open: Vec<NewSlot>,
    /// Negotiated m-lines whose source is gone: stopped in the next renegotiation.
    pub to_stop: Vec<Mid>,
    /// The SFU's offer waiting for the client's answer, with the slots it opens.
    pub pending: Option<(SdpPendingOffer, Vec<(NewSlot, Mid)>)>,
}

/// A receiving slot not negotiated yet: its kind and whose track it will carry (the msid
/// the client sees: the publisher's stream id and a track id).
#[derive(Debug, Clone)]
pub(super) struct NewSlot {
    pub slot: SlotId,
    pub kind: Kind,
    pub stream: String,
    pub track: String,
}

/// A `switchboard` data channel of this peer, linked to a door.
pub(super) struct DoorChannel {
    /// To the door: the client's messages (`None` once it flooded: the rest are dropped).
    pub to_door: Option<mpsc::Sender<Vec<u8>>>,
    /// Shared with the door: why `to_door` was let go.
    pub flooded: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Accepted from the door, waiting for room in the SCTP send buffer (reliable only).
    pub pending: VecDeque<Bytes>,
    pub pending_bytes: usize,
    pub unreliable: bool,
}

pub(super) struct Peer {
    pub id: PeerId,
    /// Its resource name (`/rtc/<name>`), unguessable.
    pub name: String,
    pub room: String,
    pub kind: PeerKind,
    pub rtc: Rtc,
    /// The server address this peer was given as its candidate: what its packets are sent to.
    pub local: SocketAddr,
    /// Where its packets came from (demultiplexing without asking every peer).
    pub sources: Vec<SocketAddr>,
    /// Incoming m-lines and the tracks they publish, both ways.
    pub tracks: HashMap<Mid, TrackId>,
    pub track_mids: HashMap<u32, Mid>,
    /// Outgoing m-lines and the slots they receive on, both ways.
    pub slots: HashMap<SlotId, Mid>,
    pub mid_slots: HashMap<Mid, SlotId>,
    /// Until it connects: when it is given up.
    pub connect_by: Option<Instant>,
    /// When str0m next wants the time.
    pub timeout: Instant,
    /// Queued to be polled.
    pub dirty: bool,
    /// Where its `switchboard` data channels go (`POST /rtc` peers).
    pub on_channel: Option<OnChannel>,
    /// What the server asked to keep while the peer lives (its connection permit).
    pub hold: Option<Box<dyn std::any::Any + Send>>,
    pub channels: HashMap<ChannelId, DoorChannel>,
    /// Candidates it trickled so far (bounded).
    pub remote_candidates: usize,
    /// NACKs its receivers reported so far, per outgoing stream.
    pub nacks: HashMap<(Mid, Option<Rid>), u64>,
    /// The stream id its tracks carry towards SFU members (a member's room peer id).
    pub label: String,
    /// `POST /rtc`: the m-lines the client sends on (published once it joins an SFU room).
    pub sends: Vec<(Mid, Kind)>,
    pub membership: Option<Membership>,
    /// Receiving m-lines of an SFU room it left: stopped when it joins one again.
    pub retired: Vec<Mid>,
    /// M-lines the SFU added to this connection so far (str0m never reuses one: bounded).
    pub lines_added: usize,
    /// The bitrate of each m-line it publishes on (`max_track_bitrate`).
    pub meters: HashMap<Mid, super::bitrate::Meter>,
    /// The simulcast layers of each m-line it publishes on.
    pub layers: HashMap<Mid, Layers>,
    /// When each of its layers was last asked for a keyframe.
    pub layer_keyframes: HashMap<(Mid, Rid), Instant>,
    /// The layer each receiving slot carries, and the track it was chosen for.
    pub slot_layers: HashMap<SlotId, (TrackId, SlotLayer)>,
    /// The layer it asked to receive (WHEP `?layer=`).
    pub wanted_layer: Option<Rid>,
}

impl Peer {
    pub(super) fn new(
        id: PeerId,
        name: String,
        room: String,
        kind: PeerKind,
        rtc: Rtc,
        local: SocketAddr,
        connect_by: Instant,
    ) -> Self {
        Peer {
            id,
            name,
            room,
            kind,
            rtc,
            local,
            sources: Vec::new(),
            tracks: HashMap::new(),
            track_mids: HashMap::new(),
            slots: HashMap::new(),
            mid_slots: HashMap::new(),
            connect_by: Some(connect_by),
            timeout: connect_by,
            dirty: false,
            on_channel: None,
            hold: None,
            channels: HashMap::new(),
            remote_candidates: 0,
            nacks: HashMap::new(),
            label: format!("{kind:?}-{}", id.0).to_lowercase(),
            sends: Vec::new(),
            membership: None,
            retired: Vec::new(),
            lines_added: 0,
            meters: HashMap::new(),
            layers: HashMap::new(),
            layer_keyframes: HashMap::new(),
            slot_layers: HashMap::new(),
            wanted_layer: None,
        }
    }

    pub(super) fn add_track(&mut self, mid: Mid, track: TrackId) {
        self.tracks.insert(mid, track);
        self.track_mids.insert(track.index, mid);
    }

    pub(super) fn add_slot(&mut self, mid: Mid, slot: SlotId) {
        self.slots.insert(slot, mid);
        self.mid_slots.insert(mid, slot);
    }

    /// Forgets a slot's m-line; returns it.
    pub(super) fn remove_slot(&mut self, slot: SlotId) -> Option<Mid> {
        self.slot_layers.remove(&slot);
        let mid = self.slots.remove(&slot)?;
        self.mid_slots.remove(&mid);
        Some(mid)
    }

    /// Remembers that `source` belongs to this peer; false when it has enough already.
    pub(super) fn remember_source(&mut self, source: SocketAddr) -> bool {
        if self.sources.contains(&source) {
            return true;
        }
        if self.sources.len() >= MAX_SOURCES {
            return false;
        }
        self.sources.push(source);
        true
    }
}

pub(super) fn kind_of(kind: MediaKind) -> Kind {
    match kind {
        MediaKind::Audio => Kind::Audio,
        MediaKind::Video => Kind::Video,
    }
}
