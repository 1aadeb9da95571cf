//! The SFU's forwarding state, sans-I/O: which peer receives which track, and when a
//! publisher must be asked for a keyframe. The media driver tells it what happened (a peer
//! joined a room, published a track, offered a receiving slot, lost packets, left) and it
//! answers with what to do; forwarding a packet is one lookup ([`Forwarder::receivers`]).
//! It holds no WebRTC types, no sockets and no clock: tests drive it directly.
//!
//! The rules:
//! - A WHIP publisher sends and receives nothing.
//! - A WHEP viewer receives into the slots its offer had (one per m-line, fixed: WHEP has no
//!   renegotiation), each fed by a track of the same kind of one publisher: the one it asked
//!   for, or the room's most recent publisher, followed as publishers come and go.
//! - An SFU member sends its tracks once and receives every other publisher's tracks in the
//!   room, each in a slot of its own, opened and closed as tracks come and go (the driver
//!   renegotiates).
//! - A receiver that starts receiving a video track, or loses packets of one, needs a
//!   keyframe: the publisher is asked, at most once per [`KEYFRAME_INTERVAL`] per track.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Shortest time between two keyframe requests to one track's publisher: a keyframe costs
/// many packets, and one asked for is on its way.
pub const KEYFRAME_INTERVAL: Duration = Duration::from_millis(500);

/// A peer connection the SFU holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub u64);

/// A track a peer publishes: its publisher and the track's number among that peer's tracks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TrackId {
    pub peer: PeerId,
    pub index: u32,
}

/// One receiving slot of a peer (an m-line it receives on), numbered per peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SlotId(pub u32);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Audio,
    Video,
}

/// What a peer does in its room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Publishes (WHIP); receives nothing.
    Publisher,
    /// Receives one publisher's media into fixed slots (WHEP): `of` that peer, or the room's
    /// most recent publisher when `None`.
    Viewer { of: Option<PeerId> },
    /// Publishes its own tracks and receives every other publisher's (an SFU room member).
    Member,
}

/// Where a track's packets go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub to: PeerId,
    pub slot: SlotId,
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Give member `to` a new receiving slot for `kind` (a renegotiation), fed by `source`.
    OpenSlot {
        to: PeerId,
        slot: SlotId,
        kind: Kind,
        source: TrackId,
    },
    /// Member `to`'s slot lost its source (the publisher left or stopped): stop it.
    CloseSlot { to: PeerId, slot: SlotId },
    /// Ask the publisher of this track for a keyframe.
    RequestKeyframe(TrackId),
}

#[derive(Debug)]
struct Peer {
    room: Arc<str>,
    role: Role,
    /// What it publishes, in the order it started.
    tracks: Vec<(TrackId, Kind)>,
    slots: Vec<Slot>,
    next_slot: u32,
}

#[derive(Debug)]
struct Slot {
    id: SlotId,
    kind: Kind,
    source: Option<TrackId>,
}

#[derive(Debug, Default)]
struct Room {
    peers: Vec<PeerId>,
    /// Peers with at least one track, in the order they began publishing: the last is the
    /// room's most recent publisher.
    publishers: Vec<PeerId>,
}

#[derive(Debug, Default)]
pub struct Forwarder {
    peers: HashMap<PeerId, Peer>,
    rooms: HashMap<Arc<str>, Room>,
    routes: HashMap<TrackId, Vec<Route>>,
    last_keyframe_request: HashMap<TrackId, Instant>,
}

impl Forwarder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Where `track`'s packets go: the hot path, one lookup per packet.
    pub fn receivers(&self, track: TrackId) -> &[Route] {
        self.routes.get(&track).map_or(&[], Vec::as_slice)
    }

    /// The track feeding `slot` of `peer`, if any.
    pub fn source(&self, peer: PeerId, slot: SlotId) -> Option<TrackId> {
        let peer = self.peers.get(&peer)?;
        peer.slots.iter().find(|s| s.id == slot)?.source
    }

    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    pub fn track_count(&self) -> usize {
        self.peers.values().map(|p| p.tracks.len()).sum()
    }

    /// Peers in `room` with `role`'s kind (viewers, publishers or members).
    pub fn count_in_room(&self, room: &str, matches: impl Fn(Role) -> bool) -> usize {
        self.rooms.get(room).map_or(0, |r| {
            r.peers
                .iter()
                .filter(|p| self.peers.get(p).is_some_and(|peer| matches(peer.role)))
                .count()
        })
    }

    /// The room's most recent publisher, if it has one.
    pub fn latest_publisher(&self, room: &str) -> Option<PeerId> {
        self.rooms.get(room)?.publishers.last().copied()
    }

    /// `peer` joins `room`. A member starts receiving what is published there already.
    pub fn join(&mut self, peer: PeerId, room: &str, role: Role) -> Vec<Action> {
        let room: Arc<str> = match self.rooms.get_key_value(room) {
            Some((name, _)) => name.clone(),
            None => room.into(),
        };
        self.rooms.entry(room.clone()).or_default().peers.push(peer);
        self.peers.insert(
            peer,
            Peer {
                room: room.clone(),
                role,
                tracks: Vec::new(),
                slots: Vec::new(),
                next_slot: 0,
            },
        );
        let mut actions = Vec::new();
        if role == Role::Member {
            for track in self.room_tracks(&room, peer) {
                self.open_slot(peer, track, &mut actions);
            }
        }
        actions
    }

    /// A viewer's offer has a receiving slot for `kind` (in m-line order): it is fed as the
    /// viewer's role says. Returns its id, and a keyframe request if it starts on video.
    pub fn add_viewer_slot(
        &mut self,
        peer: PeerId,
        kind: Kind,
        now: Instant,
    ) -> (SlotId, Vec<Action>) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return (SlotId(u32::MAX), Vec::new());
        };
        let id = SlotId(p.next_slot);
        p.next_slot += 1;
        p.slots.push(Slot {
            id,
            kind,
            source: None,
        });
        let room = p.room.clone();
        let actions = self.assign_viewers(&room, now);
        (id, actions)
    }

    /// `peer` publishes a new track of `kind`.
    pub fn publish(&mut self, peer: PeerId, kind: Kind, now: Instant) -> (TrackId, Vec<Action>) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return (
                TrackId {
                    peer,
                    index: u32::MAX,
                },
                Vec::new(),
            );
        };
        let track = TrackId {
            peer,
            index: p.tracks.len() as u32,
        };
        p.tracks.push((track, kind));
        let room = p.room.clone();
        let first = p.tracks.len() == 1;
        if first && let Some(r) = self.rooms.get_mut(&room) {
            r.publishers.retain(|&q| q != peer);
            r.publishers.push(peer);
        }
        let mut actions = Vec::new();
        let members: Vec<PeerId> = self.rooms[&room]
            .peers
            .iter()
            .copied()
            .filter(|&q| q != peer && self.peers[&q].role == Role::Member)
            .collect();
        for member in members {
            self.open_slot(member, track, &mut actions);
        }
        actions.extend(self.assign_viewers(&room, now));
        (track, actions)
    }

    /// A receiver lost packets of what `slot` carries, or asked for a keyframe itself (PLI,
    /// FIR): the publisher is asked, unless it was asked very recently.
    pub fn keyframe_wanted(&mut self, peer: PeerId, slot: SlotId, now: Instant) -> Option<Action> {
        let track = self.source(peer, slot)?;
        self.request_keyframe(track, now)
    }

    /// The publisher's own track lost packets on the way in: ask it for a keyframe (throttled).
    pub fn request_keyframe(&mut self, track: TrackId, now: Instant) -> Option<Action> {
        let kind = self
            .peers
            .get(&track.peer)?
            .tracks
            .get(track.index as usize)?
            .1;
        if kind != Kind::Video {
            return None;
        }
        if let Some(last) = self.last_keyframe_request.get(&track)
            && now.saturating_duration_since(*last) < KEYFRAME_INTERVAL
        {
            return None;
        }
        self.last_keyframe_request.insert(track, now);
        Some(Action::RequestKeyframe(track))
    }

    /// `peer` is gone: its tracks leave every receiver (members' slots close, viewers move to
    /// the room's next publisher), its own slots and routes go.
    pub fn leave(&mut self, peer: PeerId, now: Instant) -> Vec<Action> {
        let Some(gone) = self.peers.remove(&peer) else {
            return Vec::new();
        };
        let mut actions = Vec::new();
        for (track, _) in &gone.tracks {
            self.last_keyframe_request.remove(track);
            for route in self.routes.remove(track).unwrap_or_default() {
                let Some(receiver) = self.peers.get_mut(&route.to) else {
                    continue;
                };
                if receiver.role == Role::Member {
                    receiver.slots.retain(|s| s.id != route.slot);
                    actions.push(Action::CloseSlot {
                        to: route.to,
                        slot: route.slot,
                    });
                } else if let Some(slot) = receiver.slots.iter_mut().find(|s| s.id == route.slot) {
                    slot.source = None;
                }
            }
        }
        for slot in &gone.slots {
            if let Some(track) = slot.source {
                self.unroute(track, peer, slot.id);
            }
        }
        let room_empty = match self.rooms.get_mut(&gone.room) {
            Some(room) => {
                room.peers.retain(|&q| q != peer);
                room.publishers.retain(|&q| q != peer);
                room.peers.is_empty()
            }
            None => false,
        };
        if room_empty {
            self.rooms.remove(&gone.room);
        } else {
            actions.extend(self.assign_viewers(&gone.room, now));
        }
        actions
    }

    /// Every track published in `room` by others than `except`.
    fn room_tracks(&self, room: &str, except: PeerId) -> Vec<TrackId> {
        let Some(r) = self.rooms.get(room) else {
            return Vec::new();
        };
        r.publishers
            .iter()
            .filter(|&&p| p != except)
            .filter_map(|p| self.peers.get(p))
            .flat_map(|p| p.tracks.iter().map(|(t, _)| *t))
            .collect()
    }

    fn open_slot(&mut self, member: PeerId, track: TrackId, actions: &mut Vec<Action>) {
        let Some(kind) = self
            .peers
            .get(&track.peer)
            .and_then(|p| p.tracks.get(track.index as usize))
            .map(|(_, kind)| *kind)
        else {
            return;
        };
        let Some(m) = self.peers.get_mut(&member) else {
            return;
        };
        let slot = SlotId(m.next_slot);
        m.next_slot += 1;
        m.slots.push(Slot {
            id: slot,
            kind,
            source: Some(track),
        });
        self.routes
            .entry(track)
            .or_default()
            .push(Route { to: member, slot });
        actions.push(Action::OpenSlot {
            to: member,
            slot,
            kind,
            source: track,
        });
        // The member's decoder starts at the next keyframe: it is asked for when the slot is
        // negotiated (see `slot_ready`), not now, when nothing could be received yet.
    }

    /// Member `peer`'s slot is negotiated and can receive: ask for the keyframe it starts at.
    pub fn slot_ready(&mut self, peer: PeerId, slot: SlotId, now: Instant) -> Option<Action> {
        self.keyframe_wanted(peer, slot, now)
    }

    fn unroute(&mut self, track: TrackId, to: PeerId, slot: SlotId) {
        if let Some(routes) = self.routes.get_mut(&track) {
            routes.retain(|r| !(r.to == to && r.slot == slot));
            if routes.is_empty() {
                self.routes.remove(&track);
            }
        }
    }

    /// Feeds every viewer's slots in `room` from the publisher it follows; a slot whose
    /// source changed to a video track needs a keyframe.
    fn assign_viewers(&mut self, room: &str, now: Instant) -> Vec<Action> {
        let Some(r) = self.rooms.get(room) else {
            return Vec::new();
        };
        let latest = r.publishers.last().copied();
        let viewers: Vec<(PeerId, Option<PeerId>)> = r
            .peers
            .iter()
            .filter_map(|&p| match self.peers.get(&p)?.role {
                Role::Viewer { of } => Some((p, of.or(latest))),
                _ => None,
            })
            .collect();
        let mut changes = Vec::new();
        for (viewer, publisher) in viewers {
            let tracks: Vec<(TrackId, Kind)> = publisher
                .and_then(|p| self.peers.get(&p))
                .map(|p| p.tracks.clone())
                .unwrap_or_default();
            let mut used = vec![false; tracks.len()];
            let v = &self.peers[&viewer];
            for slot in &v.slots {
                // The first track of the slot's kind not fed to an earlier slot.
                let wanted = tracks
                    .iter()
                    .enumerate()
                    .find(|(i, (_, kind))| !used[*i] && *kind == slot.kind)
                    .map(|(i, (track, _))| {
                        used[i] = true;
                        *track
                    });
                if wanted != slot.source {
                    changes.push((viewer, slot.id, slot.source, wanted));
                }
            }
        }
        let mut actions = Vec::new();
        for (viewer, slot, old, new) in changes {
            if let Some(old) = old {
                self.unroute(old, viewer, slot);
            }
            if let Some(s) = self
                .peers
                .get_mut(&viewer)
                .and_then(|p| p.slots.iter_mut().find(|s| s.id == slot))
            {
                s.source = new;
            }
            if let Some(new) = new {
                self.routes
                    .entry(new)
                    .or_default()
                    .push(Route { to: viewer, slot });
                actions.extend(self.request_keyframe(new, now));
            }
        }
        actions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOM: &str = "stage";

    fn p(n: u64) -> PeerId {
        PeerId(n)
    }

    fn routes(f: &Forwarder, track: TrackId) -> Vec<(u64, u32)> {
        let mut r: Vec<_> = f
            .receivers(track)
            .iter()
            .map(|r| (r.to.0, r.slot.0))
            .collect();
        r.sort();
        r
    }

    #[test]
    fn a_whep_viewer_receives_the_publishers_audio_and_video_and_gets_a_keyframe() {
        let now = Instant::now();
        let mut f = Forwarder::new();
        f.join(p(1), ROOM, Role::Publisher);
        let (audio, a) = f.publish(p(1), Kind::Audio, now);
        let (video, v) = f.publish(p(1), Kind::Video, now);
        assert!(a.is_empty() && v.is_empty(), "nobody watches yet");
        assert!(f.join(p(2), ROOM, Role::Viewer { of: None }).is_empty());
        let (s_audio, none) = f.add_viewer_slot(p(2), Kind::Audio, now);
        assert!(none.is_empty(), "audio needs no keyframe");
        let (s_video, kf) = f.add_viewer_slot(p(2), Kind::Video, now);
        assert_eq!(kf, [Action::RequestKeyframe(video)]);
        assert_eq!(routes(&f, audio), [(2, s_audio.0)]);
        assert_eq!(routes(&f, video), [(2, s_video.0)]);
        assert_eq!(f.source(p(2), s_video), Some(video));
        // A second viewer a moment later: the keyframe asked for is on its way.
        f.join(p(3), ROOM, Role::Viewer { of: None });
        let (_, kf) = f.add_viewer_slot(p(3), Kind::Video, now + Duration::from_millis(100));
        assert!(kf.is_empty(), "throttled: {kf:?}");
        let (_, kf) = f.add_viewer_slot(p(3), Kind::Audio, now + Duration::from_millis(100));
        assert!(kf.is_empty());
        assert_eq!(f.receivers(video).len(), 2);
        assert_eq!(f.receivers(audio).len(), 2);
    }

    #[test]
    fn a_viewer_that_comes_first_is_fed_when_the_publisher_arrives() {
        let now = Instant::now();
        let mut f = Forwarder::new();
        f.join(p(2), ROOM, Role::Viewer { of: None });
        let (slot, _) = f.add_viewer_slot(p(2), Kind::Video, now);
        assert_eq!(f.source(p(2), slot), None);
        f.join(p(1), ROOM, Role::Publisher);
        let (video, actions) = f.publish(p(1), Kind::Video, now);
        assert_eq!(actions, [Action::RequestKeyframe(video)]);
        assert_eq!(routes(&f, video), [(2, slot.0)]);
    }

    #[test]
    fn viewers_follow_the_most_recent_publisher_and_fall_back_when_it_leaves() {
        let now = Instant::now();
        let later = now + Duration::from_secs(1);
        let mut f = Forwarder::new();
        f.join(p(1), ROOM, Role::Publisher);
        let (first, _) = f.publish(p(1), Kind::Video, now);
        f.join(p(9), ROOM, Role::Viewer { of: None });
        f.join(p(8), ROOM, Role::Viewer { of: Some(p(1)) });
        let (slot9, _) = f.add_viewer_slot(p(9), Kind::Video, now);
        let (slot8, _) = f.add_viewer_slot(p(8), Kind::Video, now);
        f.join(p(2), ROOM, Role::Publisher);
        let (second, actions) = f.publish(p(2), Kind::Video, later);
        assert_eq!(actions, [Action::RequestKeyframe(second)]);
        assert_eq!(f.source(p(9), slot9), Some(second), "the latest publisher");
        assert_eq!(f.source(p(8), slot8), Some(first), "the one it asked for");
        assert_eq!(routes(&f, first), [(8, slot8.0)]);
        let actions = f.leave(p(2), later + Duration::from_secs(1));
        assert_eq!(
            actions,
            [Action::RequestKeyframe(first)],
            "back to the first"
        );
        assert_eq!(f.source(p(9), slot9), Some(first));
        assert!(f.receivers(second).is_empty());
        let actions = f.leave(p(1), later + Duration::from_secs(2));
        assert!(actions.is_empty(), "viewers wait, silent: {actions:?}");
        assert_eq!(f.source(p(9), slot9), None);
        assert_eq!(f.source(p(8), slot8), None);
        assert_eq!(f.track_count(), 0);
    }

    #[test]
    fn two_video_slots_take_two_video_tracks_in_order() {
        let now = Instant::now();
        let mut f = Forwarder::new();
        f.join(p(1), ROOM, Role::Publisher);
        let (cam, _) = f.publish(p(1), Kind::Video, now);
        let (screen, _) = f.publish(p(1), Kind::Video, now);
        f.join(p(2), ROOM, Role::Viewer { of: None });
        let (a, _) = f.add_viewer_slot(p(2), Kind::Video, now);
        let (b, _) = f.add_viewer_slot(p(2), Kind::Video, now);
        let (c, _) = f.add_viewer_slot(p(2), Kind::Video, now);
        assert_eq!(f.source(p(2), a), Some(cam));
        assert_eq!(f.source(p(2), b), Some(screen));
        assert_eq!(f.source(p(2), c), None, "nothing left for it");
    }

    #[test]
    fn members_receive_every_other_members_tracks_and_lose_them_on_leave() {
        let now = Instant::now();
        let mut f = Forwarder::new();
        f.join(p(1), ROOM, Role::Member);
        let (a1, actions) = f.publish(p(1), Kind::Audio, now);
        assert!(actions.is_empty(), "alone in the room");
        let (v1, _) = f.publish(p(1), Kind::Video, now);
        // A second member gets a slot for each of the first's tracks at once.
        let actions = f.join(p(2), ROOM, Role::Member);
        assert_eq!(
            actions,
            [
                Action::OpenSlot {
                    to: p(2),
                    slot: SlotId(0),
                    kind: Kind::Audio,
                    source: a1
                },
                Action::OpenSlot {
                    to: p(2),
                    slot: SlotId(1),
                    kind: Kind::Video,
                    source: v1
                },
            ]
        );
        // Its own tracks open slots at the first member, not at itself.
        let (v2, actions) = f.publish(p(2), Kind::Video, now);
        assert_eq!(
            actions,
            [Action::OpenSlot {
                to: p(1),
                slot: SlotId(0),
                kind: Kind::Video,
                source: v2
            }]
        );
        // A third member: both others' tracks.
        let actions = f.join(p(3), ROOM, Role::Member);
        assert_eq!(actions.len(), 3);
        assert_eq!(routes(&f, v1), [(2, 1), (3, 1)]);
        assert_eq!(routes(&f, v2), [(1, 0), (3, 2)]);
        // Once negotiated, a slot asks for its keyframe.
        assert_eq!(
            f.slot_ready(p(3), SlotId(1), now),
            Some(Action::RequestKeyframe(v1))
        );
        // The second leaves: its slot closes at the others, its receiving routes go.
        let mut actions = f.leave(p(2), now);
        actions.sort_by_key(|a| format!("{a:?}"));
        assert_eq!(
            actions,
            [
                Action::CloseSlot {
                    to: p(1),
                    slot: SlotId(0)
                },
                Action::CloseSlot {
                    to: p(3),
                    slot: SlotId(2)
                },
            ]
        );
        assert_eq!(routes(&f, v1), [(3, 1)]);
        assert_eq!(routes(&f, a1), [(3, 0)]);
        assert!(f.receivers(v2).is_empty());
        assert_eq!(f.source(p(1), SlotId(0)), None);
    }

    #[test]
    fn members_receive_a_whip_publisher_and_viewers_see_members() {
        let now = Instant::now();
        let mut f = Forwarder::new();
        f.join(p(1), ROOM, Role::Member);
        f.join(p(2), ROOM, Role::Publisher);
        let (v2, actions) = f.publish(p(2), Kind::Video, now);
        assert_eq!(
            actions,
            [Action::OpenSlot {
                to: p(1),
                slot: SlotId(0),
                kind: Kind::Video,
                source: v2
            }]
        );
        let (v1, actions) = f.publish(p(1), Kind::Video, now);
        assert!(actions.is_empty(), "a WHIP publisher receives nothing");
        f.join(p(3), ROOM, Role::Viewer { of: None });
        let (slot, _) = f.add_viewer_slot(p(3), Kind::Video, now);
        assert_eq!(f.source(p(3), slot), Some(v1), "the member published last");
    }

    #[test]
    fn keyframe_requests_are_throttled_per_track_and_only_for_video() {
        let now = Instant::now();
        let mut f = Forwarder::new();
        f.join(p(1), ROOM, Role::Publisher);
        let (audio, _) = f.publish(p(1), Kind::Audio, now);
        let (video, _) = f.publish(p(1), Kind::Video, now);
        assert_eq!(f.request_keyframe(audio, now), None);
        assert_eq!(
            f.request_keyframe(video, now),
            Some(Action::RequestKeyframe(video))
        );
        assert_eq!(f.request_keyframe(video, now + KEYFRAME_INTERVAL / 2), None);
        assert_eq!(
            f.request_keyframe(video, now + KEYFRAME_INTERVAL),
            Some(Action::RequestKeyframe(video))
        );
        f.join(p(2), ROOM, Role::Viewer { of: None });
        let (slot, _) = f.add_viewer_slot(p(2), Kind::Video, now + KEYFRAME_INTERVAL);
        // A lost packet at the viewer a full interval later asks again.
        assert_eq!(
            f.keyframe_wanted(p(2), slot, now + 2 * KEYFRAME_INTERVAL),
            Some(Action::RequestKeyframe(video))
        );
        assert_eq!(
            f.keyframe_wanted(p(2), SlotId(77), now),
            None,
            "no such slot"
        );
    }

    #[test]
    fn the_last_peer_leaving_forgets_the_room() {
        let now = Instant::now();
        let mut f = Forwarder::new();
        f.join(p(1), ROOM, Role::Publisher);
        f.publish(p(1), Kind::Video, now);
        f.join(p(2), ROOM, Role::Viewer { of: None });
        f.add_viewer_slot(p(2), Kind::Video, now);
        assert_eq!(
            f.count_in_room(ROOM, |r| matches!(r, Role::Viewer { .. })),
            1
        );
        f.leave(p(2), now);
        f.leave(p(1), now);
        assert!(f.leave(p(1), now).is_empty(), "twice is harmless");
        assert_eq!(f.peer_count(), 0);
        assert!(f.rooms.is_empty());
        assert!(f.routes.is_empty());
        assert!(f.last_keyframe_request.is_empty());
    }
}
