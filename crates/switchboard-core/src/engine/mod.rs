//! The storage and delivery seam. An engine assigns positions (offset + epoch), keeps history
//! and presence, and delivers every publication to the hub of every node that is interested
//! (one broker subscription per channel per node). The in-memory engine serves one node;
//! Redis and NATS engines implement the same trait.

mod memory;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

pub use memory::MemoryEngine;

/// A channel's current position: the offset of its last message and its stream's epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamPosition {
    pub offset: u64,
    pub epoch: Arc<str>,
}

/// One message of a channel's stream. `data` is the raw JSON the publisher sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    pub offset: u64,
    pub epoch: Arc<str>,
    pub data: Bytes,
}

/// How a channel's stream is kept (from its namespace).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamOptions {
    pub history_size: usize,
    pub history_ttl: Duration,
}

/// What to read from a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryQuery {
    /// Messages after this offset (only when the epoch matches the stream's).
    pub since: Option<(u64, String)>,
    /// Most messages to return: the first ones after `since`, else the latest ones.
    pub limit: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryResult {
    pub publications: Vec<Publication>,
    /// The stream's position now (after the last publication returned or not).
    pub position: StreamPosition,
    /// With `since`: whether history still held every message after it.
    pub complete: bool,
}

/// A member of a channel's presence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceMember {
    pub client: Arc<str>,
    pub user: Arc<str>,
    /// Raw JSON of the client's `info` claim.
    pub info: Option<Bytes>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenceEvent {
    Join,
    Leave,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    #[error("engine unavailable: {0}")]
    Unavailable(String),
    /// The room already has its maximum number of peers.
    #[error("room is full")]
    RoomFull,
}

/// A peer of a WebRTC signaling room: one client's membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomPeer {
    /// The peer id (the client's id: one membership per client and room).
    pub peer: Arc<str>,
    pub user: Arc<str>,
    /// Raw JSON of the client's `info` claim.
    pub info: Option<Bytes>,
    /// Raw JSON the peer set with `join_room`/`update_meta`.
    pub meta: Option<Bytes>,
}

/// What happens in a room, delivered to every node with members in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomEvent {
    Joined(RoomPeer),
    Left {
        peer: Arc<str>,
    },
    Updated(RoomPeer),
    /// `data` from `from` to `to`, or to every other peer.
    Signal {
        from: Arc<str>,
        to: Option<Arc<str>>,
        data: Bytes,
    },
}

/// Receives what the engine delivers to this node. The engine calls it in offset order per
/// channel, from any thread, and it must not block.
pub trait EngineHandler: Send + Sync {
    fn on_publication(&self, channel: &str, publication: &Publication);
    fn on_presence_event(&self, channel: &str, event: PresenceEvent, member: &PresenceMember);
    fn on_room_event(&self, room: &str, event: &RoomEvent);
}

#[async_trait]
pub trait Engine: Send + Sync + 'static {
    /// Registers the hub that receives deliveries. Called once, before any other method.
    fn set_handler(&self, handler: std::sync::Weak<dyn EngineHandler>);

    /// Appends to the channel's stream and delivers to every interested node; returns the
    /// position the message got.
    async fn publish(
        &self,
        channel: &str,
        data: Bytes,
        options: StreamOptions,
    ) -> Result<StreamPosition, EngineError>;

    /// Reads the channel's stream.
    async fn history(
        &self,
        channel: &str,
        query: HistoryQuery,
        options: StreamOptions,
    ) -> Result<HistoryResult, EngineError>;

    /// This node wants deliveries of `channel` (called when its first local subscriber comes).
    async fn subscribe(&self, channel: &str) -> Result<(), EngineError>;

    /// This node no longer wants deliveries of `channel`.
    async fn unsubscribe(&self, channel: &str) -> Result<(), EngineError>;

    async fn presence_add(&self, channel: &str, member: PresenceMember) -> Result<(), EngineError>;

    async fn presence_remove(&self, channel: &str, client: &str) -> Result<(), EngineError>;

    async fn presence(&self, channel: &str) -> Result<Vec<PresenceMember>, EngineError>;

    /// Delivers a join or leave event to every interested node.
    async fn publish_presence_event(
        &self,
        channel: &str,
        event: PresenceEvent,
        member: PresenceMember,
    ) -> Result<(), EngineError>;

    /// Adds `peer` to `room` unless it already holds `max_peers`; returns the peers that were
    /// there before.
    async fn room_join(
        &self,
        room: &str,
        peer: RoomPeer,
        max_peers: usize,
    ) -> Result<Vec<RoomPeer>, EngineError>;

    /// Removes `peer` from `room`; returns whether it was there.
    async fn room_leave(&self, room: &str, peer: &str) -> Result<bool, EngineError>;

    /// Replaces a peer's `meta`; returns the updated peer, or `None` when it is not in the room.
    async fn room_update(
        &self,
        room: &str,
        peer: &str,
        meta: Option<Bytes>,
    ) -> Result<Option<RoomPeer>, EngineError>;

    async fn room_peers(&self, room: &str) -> Result<Vec<RoomPeer>, EngineError>;

    /// Delivers a room event to every node.
    async fn room_publish(&self, room: &str, event: RoomEvent) -> Result<(), EngineError>;

    /// Periodic upkeep (expiring history, dropping idle streams); `now` is Unix seconds.
    fn maintain(&self, _now: u64) {}
}
