//! The storage and delivery seam. An engine assigns positions (offset + epoch), keeps history
//! and presence, and delivers every publication to the hub of every node that is interested
//! (one broker subscription per channel per node). The in-memory engine serves one node;
//! Redis and NATS engines implement the same trait.

mod committer;
mod memory;
pub mod store;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub use memory::MemoryEngine;

/// A channel's current position: the offset of its last message and its stream's epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamPosition {
    pub offset: u64,
    pub epoch: Arc<str>,
}

pub use switchboard_proto::{PresenceEvent, PresenceMember, Publication, RoomPeer};

/// How a channel's stream is kept (from its namespace).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamOptions {
    pub history_size: usize,
    pub history_ttl: Duration,
}

/// What to read from a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryQuery {
    /// Messages after this offset (only when the epoch matches the stream's, or the offset is
    /// 0: a reader that has seen nothing continues any epoch).
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

impl HistoryResult {
    /// The answer for a channel that has no stream: nothing published, nothing kept, at
    /// offset 0 of a new `epoch`. A `since` past offset 0 names a stream that is gone, so it
    /// was not recovered; offset 0 had seen nothing, so it misses nothing.
    pub fn unstarted(query: &HistoryQuery, epoch: impl Into<Arc<str>>) -> Self {
        HistoryResult {
            publications: Vec::new(),
            position: StreamPosition {
                offset: 0,
                epoch: epoch.into(),
            },
            complete: query.since.as_ref().is_none_or(|(offset, _)| *offset == 0),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    #[error("engine unavailable: {0}")]
    Unavailable(String),
    /// The room already has its maximum number of peers.
    #[error("room is full")]
    RoomFull,
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

/// A server API command that every node runs on its own clients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum NodeRequest {
    DisconnectUser {
        user: String,
    },
    UnsubscribeUser {
        user: String,
        channel: String,
    },
    /// The channels with subscribers on the node, with their counts.
    Channels,
    /// The subscribers of one channel on the node.
    Subscribers {
        channel: String,
    },
    /// A request of a server module registered with `Hub::set_node_extension` (the Pusher
    /// door's `terminate_connections`), answered with a count.
    Extension {
        name: String,
        argument: String,
    },
    /// The media peers (WHIP, WHEP, SFU members) the node's SFU holds in a room.
    MediaRoom {
        room: String,
    },
}

/// One node's answer to a [`NodeRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum NodeAnswer {
    Count {
        count: usize,
    },
    Channels {
        channels: Vec<(String, usize)>,
    },
    /// A node's media in a room: its id and name, and its peers there (0: none).
    Media {
        node: String,
        name: String,
        peers: usize,
    },
}

impl NodeAnswer {
    /// The count of a `Count` answer (0 for others).
    pub fn count(&self) -> usize {
        match self {
            NodeAnswer::Count { count } => *count,
            NodeAnswer::Channels { .. } | NodeAnswer::Media { .. } => 0,
        }
    }
}

/// What a node reports of itself (`/api/info`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct NodeInfo {
    pub id: String,
    pub name: String,
    pub version: String,
    pub uptime_seconds: u64,
    pub connections: usize,
    pub channels: usize,
    pub rooms: usize,
}

/// A fresh random node id (16 hex digits).
pub fn new_node_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Receives what the engine delivers to this node. The engine calls it in offset order per
/// channel, from any thread, and it must not block.
pub trait EngineHandler: Send + Sync {
    fn on_publication(&self, channel: &str, publication: &Publication);
    fn on_presence_event(&self, channel: &str, event: PresenceEvent, member: &PresenceMember);
    fn on_room_event(&self, room: &str, event: &RoomEvent);
    /// This node missed messages of `channel` that history can no longer give back (a broker
    /// outage longer than history, or a stream reset): its subscribers must come back with
    /// `since` and learn `recovered: false`, rather than silently miss them.
    fn on_stream_lost(&self, channel: &str);
    /// The engine lost this node's presence members and room peers (the node was taken for
    /// dead, or the backing service lost its data): its clients must reconnect so their
    /// memberships are recorded again.
    fn on_memberships_lost(&self);
    /// Runs a server API command on this node's clients.
    fn on_request(self: Arc<Self>, request: NodeRequest) -> BoxFuture<NodeAnswer>;
    /// This node's counts (the engine fills in `id` and `name`).
    fn node_info(&self) -> NodeInfo;
    /// Whether `channel`'s namespace announces joins and leaves (an engine that removes a dead
    /// node's members announces their leave on its behalf).
    fn announces_presence(&self, channel: &str) -> bool;
}

/// Counters every engine keeps, for metrics.
#[derive(Debug, Default)]
pub struct EngineStats {
    /// Calls to the backing service (Redis, NATS), errors among them, and their total time.
    pub calls: AtomicU64,
    pub errors: AtomicU64,
    pub call_micros: AtomicU64,
    /// Connections to the backing service re-established after a loss.
    pub reconnects: AtomicU64,
    /// Times this node lost messages it could not recover (see `on_stream_lost`).
    pub streams_lost: AtomicU64,
}

impl EngineStats {
    /// Records one call that took `elapsed` and succeeded or not.
    pub fn record(&self, elapsed: Duration, ok: bool) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.call_micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
        if !ok {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
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

    /// Runs `request` on every live node (this one included) and returns their answers.
    async fn ask_nodes(&self, request: NodeRequest) -> Result<Vec<NodeAnswer>, EngineError>;

    /// The live nodes sharing this engine (this one included).
    async fn nodes(&self) -> Result<Vec<NodeInfo>, EngineError>;

    /// `"memory"`, `"redis"` or `"nats"`.
    fn kind(&self) -> &'static str;

    /// This node's id among the engine's nodes (as in [`Engine::nodes`]).
    fn node_id(&self) -> &str;

    fn stats(&self) -> &EngineStats;

    /// Periodic upkeep (expiring history, dropping idle streams, node heartbeats); `now` is
    /// Unix seconds.
    fn maintain(&self, _now: u64) {}
}
