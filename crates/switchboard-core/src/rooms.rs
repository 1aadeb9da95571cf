//! WebRTC signaling rooms on the hub (spec §3): membership lives in the engine (so rooms span
//! nodes), this node keeps which of its clients are in which room, and room events (joins,
//! leaves, meta updates, signals) travel through the engine to every node.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::value::RawValue;
use switchboard_proto::Outgoing;
use switchboard_proto::encode::{self, PeerEvent};

use crate::engine::{EngineError, RoomEvent, RoomPeer};
use crate::hub::{ClientEntry, Hub};

/// Hands out the ICE servers (STUN, and TURN with credentials) for a user joining a room.
pub trait IceServers: Send + Sync {
    /// A JSON array of RTCIceServer objects.
    fn for_user(&self, user: &str) -> serde_json::Value;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoomError {
    #[error("not in room `{0}`")]
    NotInRoom(String),
    #[error("no peer `{0}` in this room")]
    UnknownPeer(String),
    #[error("already in room `{0}`")]
    AlreadyJoined(String),
    #[error("room is full (at most {0} peers)")]
    Full(usize),
    #[error("too many rooms (at most {0} per connection)")]
    TooMany(usize),
    #[error(transparent)]
    Engine(EngineError),
}

impl From<EngineError> for RoomError {
    fn from(e: EngineError) -> Self {
        RoomError::Engine(e)
    }
}

impl Hub {
    /// Installs the provider of ICE servers (once, at startup).
    pub fn set_ice_servers(&self, ice: Arc<dyn IceServers>) {
        let _ = self.ice.set(ice);
    }

    /// The ICE servers for `user` (an empty list when none are configured).
    pub fn ice_servers(&self, user: &str) -> serde_json::Value {
        match self.ice.get() {
            Some(ice) => ice.for_user(user),
            None => serde_json::json!([]),
        }
    }

    /// Joins `room` as `client` with `meta`; returns this peer and the peers already there.
    pub async fn join_room(
        &self,
        client: &Arc<ClientEntry>,
        room: &str,
        meta: Option<Bytes>,
    ) -> Result<(RoomPeer, Vec<RoomPeer>), RoomError> {
        if client.in_room(room) {
            return Err(RoomError::AlreadyJoined(room.into()));
        }
        let max_rooms = self.config.max_rooms;
        if max_rooms > 0 && client.room_count() >= max_rooms {
            return Err(RoomError::TooMany(max_rooms));
        }
        if !client.enter_room(room) {
            return Err(RoomError::AlreadyJoined(room.into()));
        }
        let me = RoomPeer {
            peer: client.id_str.clone(),
            user: client.user.clone(),
            info: client.info.clone(),
            meta,
        };
        // Local membership first, so no event published after our join can miss us.
        self.shard_of(&self.rooms, room)
            .lock()
            .entry(room.to_owned())
            .or_default()
            .insert(me.peer.clone(), client.sink.clone());
        let max = self.config.max_room_peers;
        let others = match self.engine().room_join(room, me.clone(), max).await {
            Ok(others) => others,
            Err(e) => {
                self.forget_local(client, room);
                return Err(match e {
                    EngineError::RoomFull => RoomError::Full(max),
                    e => RoomError::Engine(e),
                });
            }
        };
        self.engine()
            .room_publish(room, RoomEvent::Joined(me.clone()))
            .await?;
        Ok((me, others))
    }

    fn forget_local(&self, client: &ClientEntry, room: &str) {
        client.exit_room(room);
        let mut shard = self.shard_of(&self.rooms, room).lock();
        if let Some(members) = shard.get_mut(room) {
            members.remove(&client.id_str);
            if members.is_empty() {
                shard.remove(room);
            }
        }
    }

    /// Leaves `room`; returns whether `client` was in it. The others get `peer_left`.
    pub async fn leave_room(&self, client: &Arc<ClientEntry>, room: &str) -> bool {
        if !client.in_room(room) {
            return false;
        }
        self.forget_local(client, room);
        // Engine failures only delay cleanup; a distributed engine expires its members.
        let _ = self.engine().room_leave(room, &client.id_str).await;
        let left = RoomEvent::Left {
            peer: client.id_str.clone(),
        };
        let _ = self.engine().room_publish(room, left).await;
        true
    }

    /// Replaces this peer's `meta`; the others get `peer_updated`.
    pub async fn update_room_meta(
        &self,
        client: &Arc<ClientEntry>,
        room: &str,
        meta: Bytes,
    ) -> Result<(), RoomError> {
        if !client.in_room(room) {
            return Err(RoomError::NotInRoom(room.into()));
        }
        let updated = self
            .engine()
            .room_update(room, &client.id_str, Some(meta))
            .await?
            .ok_or_else(|| RoomError::NotInRoom(room.into()))?;
        self.engine()
            .room_publish(room, RoomEvent::Updated(updated))
            .await?;
        Ok(())
    }

    /// Relays `data` from `client` to the peer `to` of `room`, or to every other peer.
    pub async fn signal(
        &self,
        client: &Arc<ClientEntry>,
        room: &str,
        to: Option<&str>,
        data: Bytes,
    ) -> Result<(), RoomError> {
        if !client.in_room(room) {
            return Err(RoomError::NotInRoom(room.into()));
        }
        if let Some(to) = to {
            let peers = self.engine().room_peers(room).await?;
            if to == &*client.id_str || !peers.iter().any(|p| &*p.peer == to) {
                return Err(RoomError::UnknownPeer(to.into()));
            }
        }
        let event = RoomEvent::Signal {
            from: client.id_str.clone(),
            to: to.map(Arc::from),
            data,
        };
        self.engine().room_publish(room, event).await?;
        Ok(())
    }

    pub async fn room_peers(&self, room: &str) -> Result<Vec<RoomPeer>, EngineError> {
        self.engine().room_peers(room).await
    }

    /// Rooms with members on this node.
    pub fn room_count(&self) -> usize {
        self.rooms.iter().map(|s| s.lock().len()).sum()
    }

    /// Delivers a room event to this node's members: to every member but its author, or to
    /// the one a signal is for.
    pub(crate) fn deliver_room_event(&self, room: &str, event: &RoomEvent) {
        let shard = self.shard_of(&self.rooms, room).lock();
        let Some(members) = shard.get(room) else {
            return;
        };
        let (author, target, frame) = match event {
            RoomEvent::Joined(p) => (
                &p.peer,
                None,
                encode::peer_event(PeerEvent::Joined, room, p),
            ),
            RoomEvent::Updated(p) => (
                &p.peer,
                None,
                encode::peer_event(PeerEvent::Updated, room, p),
            ),
            RoomEvent::Left { peer } => (peer, None, encode::peer_left(room, peer)),
            RoomEvent::Signal { from, to, data } => {
                let Ok(data) = serde_json::from_slice::<&RawValue>(data) else {
                    return;
                };
                (from, to.as_ref(), encode::signal(room, from, data))
            }
        };
        let frame = Arc::new(Outgoing::new(frame));
        for (peer, sink) in members {
            let wanted = match target {
                Some(target) => peer == target,
                None => peer != author,
            };
            if wanted {
                sink.send(&frame);
            }
        }
    }
}
