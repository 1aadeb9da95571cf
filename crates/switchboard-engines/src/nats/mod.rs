//! The NATS engine: several Switchboard nodes sharing one NATS (with JetStream) behave as one
//! server.
//!
//! - Positions and history: JetStream (`history.rs`). Each channel is one subject of a
//!   history stream; a publish appends `offset + 1` with compare-and-set on the subject's last
//!   sequence, so offsets are consecutive across nodes, then announces it on core NATS.
//! - Delivery: one core NATS subscription per channel (and room) per node (`delivery.rs`),
//!   whatever the number of local subscribers. Messages from different publishers may arrive
//!   out of order: gaps are filled from history (which always holds them first); what history
//!   no longer holds is reported to the hub, whose subscribers come back with `since`.
//! - Presence and rooms: JetStream subjects whose names or values name the node holding them
//!   (`members.rs`). Nodes heartbeat into a stream (`nodes.rs`); a node silent for `node_ttl`
//!   is dead, its members are hidden at once and reaped (with leave events) by a live node.
//! - Server API commands that concern every node's clients go out on a control subject and
//!   are answered to the asker's inbox.

mod delivery;
mod history;
mod members;
mod names;
mod nodes;
mod store;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use switchboard_core::engine::{
    Engine, EngineError, EngineHandler, EngineStats, HistoryQuery, HistoryResult, NodeAnswer,
    NodeInfo, NodeRequest, PresenceEvent, PresenceMember, RoomEvent, RoomPeer, StreamOptions,
    StreamPosition,
};
use tokio::sync::watch;

use crate::wire;
use names::{Names, Topic};

/// A channel's history settings (its namespace's), for reads that no hub call carries them
/// to: filling a delivery gap, catching up after a reconnect.
pub type StreamOptionsFn = Arc<dyn Fn(&str) -> StreamOptions + Send + Sync>;

/// How a node connects to NATS and how its cluster behaves.
#[derive(Clone)]
pub struct NatsOptions {
    /// `nats://host:port` (several, comma-separated, for a NATS cluster).
    pub url: String,
    /// Prefix of every stream and subject (letters, digits, `-`, `_`).
    pub prefix: String,
    /// This node's id (unique per process).
    pub node_id: String,
    /// A node without a heartbeat for this long is dead: its presence members and room peers
    /// are removed.
    pub node_ttl: Duration,
    /// A channel with no publication for this long starts over with a new epoch.
    pub idle_ttl: Duration,
    pub stream_options: StreamOptionsFn,
}

/// How long a server API request waits for the other nodes' answers.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

pub(crate) struct Inner {
    names: Names,
    node: String,
    node_ttl: Duration,
    idle_ttl: Duration,
    client: async_nats::Client,
    js: jetstream::Context,
    handler: OnceLock<Weak<dyn EngineHandler>>,
    stream_options: StreamOptionsFn,
    /// History streams known to exist, by history size.
    history_streams: Mutex<HashSet<usize>>,
    subscriptions: delivery::Registry,
    /// Bumped on every reconnect: each subscription catches up.
    reconnected: watch::Sender<u64>,
    /// Nodes known to be dead: their members are hidden until they are reaped.
    dead: RwLock<HashSet<String>>,
    /// Stream sequence of this node's last heartbeat (0: none yet).
    last_beat: AtomicU64,
    stats: EngineStats,
}

fn unavailable(e: impl std::fmt::Display) -> EngineError {
    EngineError::Unavailable(format!("nats: {e}"))
}

impl Inner {
    fn handler(&self) -> Option<Arc<dyn EngineHandler>> {
        self.handler.get().and_then(Weak::upgrade)
    }

    /// Awaits one NATS call, counting it and its time for metrics.
    async fn timed<T, E: std::fmt::Display>(
        &self,
        call: impl Future<Output = Result<T, E>>,
    ) -> Result<T, EngineError> {
        let start = Instant::now();
        let result = call.await;
        self.stats.record(start.elapsed(), result.is_ok());
        result.map_err(unavailable)
    }

    fn is_live(&self, node: &str) -> bool {
        node == self.node || !self.dead.read().contains(node)
    }

    /// Sends `payload` on a topic's core NATS subject (no storage: delivery only).
    async fn core_publish(&self, topic: &Topic, payload: Vec<u8>) -> Result<(), EngineError> {
        let subject = self.names.topic(topic);
        self.timed(self.client.publish(subject, payload.into()))
            .await
    }

    /// The streams every node needs from the start (history streams come on first use).
    async fn ensure_fixed_streams(&self) -> Result<(), EngineError> {
        let names = &self.names;
        for (name, subjects) in [
            (names.presence_stream(), names.presence_subjects()),
            (names.rooms_stream(), names.rooms_subjects()),
            (names.nodes_stream(), names.nodes_subjects()),
        ] {
            let config = store::stream_config(name, subjects, 1, Duration::ZERO);
            self.ensure_stream(config).await?;
        }
        Ok(())
    }

    /// After a reconnect: streams may be gone (NATS lost its data), and every subscription
    /// must catch up on what it missed.
    async fn on_reconnect(&self) {
        self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
        self.history_streams.lock().clear();
        if let Err(e) = self.ensure_fixed_streams().await {
            tracing::warn!("after reconnecting to NATS: {e}");
        }
        self.reconnected.send_modify(|generation| *generation += 1);
    }
}

/// The NATS engine. Dropping it stops its background tasks.
pub struct NatsEngine {
    inner: Arc<Inner>,
    tasks: Vec<tokio::task::AbortHandle>,
}

impl Drop for NatsEngine {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        self.inner.subscriptions.abort_all();
    }
}

impl NatsEngine {
    /// Connects (failing fast when NATS or its JetStream can't be reached), makes the
    /// streams it needs and starts the node's control subscription and heartbeat.
    pub async fn connect(options: NatsOptions) -> Result<NatsEngine, String> {
        let names = Names::new(&options.prefix)?;
        // Several servers of one NATS cluster: any of them will do.
        let servers: Vec<&str> = options.url.split(',').map(str::trim).collect();
        let (events, mut event_stream) = tokio::sync::mpsc::unbounded_channel();
        let client = async_nats::ConnectOptions::new()
            .name(format!("switchboard {}", options.node_id))
            .connection_timeout(Duration::from_secs(2))
            .ping_interval(Duration::from_secs(5))
            .event_callback(move |event| {
                let events = events.clone();
                async move {
                    let _ = events.send(event);
                }
            })
            .connect(servers.as_slice())
            .await
            .map_err(|e| format!("cannot reach NATS at {}: {e}", options.url))?;
        let js = jetstream::context::ContextBuilder::new()
            .timeout(Duration::from_secs(3))
            .build(client.clone());
        let (reconnected, _) = watch::channel(0);
        let inner = Arc::new(Inner {
            names,
            node: options.node_id.clone(),
            node_ttl: options.node_ttl,
            idle_ttl: options.idle_ttl,
            client,
            js,
            handler: OnceLock::new(),
            stream_options: options.stream_options,
            history_streams: Mutex::new(HashSet::new()),
            subscriptions: delivery::Registry::default(),
            reconnected,
            dead: RwLock::new(HashSet::new()),
            last_beat: AtomicU64::new(0),
            stats: EngineStats::default(),
        });
        inner.ensure_fixed_streams().await.map_err(|e| {
            format!(
                "NATS at {} has no usable JetStream (start nats-server with -js): {e}",
                options.url
            )
        })?;
        let control = nodes::listen(&inner)
            .await
            .map_err(|e| format!("cannot subscribe at NATS {}: {e}", options.url))?;
        nodes::beat(&inner)
            .await
            .map_err(|e| format!("cannot register this node at NATS {}: {e}", options.url))?;
        let watcher = {
            let inner = inner.clone();
            async move {
                let connected_before = AtomicBool::new(false);
                while let Some(event) = event_stream.recv().await {
                    match event {
                        async_nats::Event::Connected => {
                            // The first one is the initial connection.
                            if connected_before.swap(true, Ordering::Relaxed) {
                                tracing::info!("reconnected to NATS");
                                inner.on_reconnect().await;
                            }
                        }
                        async_nats::Event::Disconnected => {
                            tracing::warn!("NATS connection lost; reconnecting")
                        }
                        other => tracing::debug!("nats: {other}"),
                    }
                }
            }
        };
        let tasks = vec![
            tokio::spawn(control).abort_handle(),
            tokio::spawn(watcher).abort_handle(),
            tokio::spawn(nodes::heartbeat(inner.clone())).abort_handle(),
        ];
        Ok(NatsEngine { inner, tasks })
    }

    pub fn node_id(&self) -> &str {
        &self.inner.node
    }
}

#[async_trait]
impl Engine for NatsEngine {
    fn set_handler(&self, handler: Weak<dyn EngineHandler>) {
        let _ = self.inner.handler.set(handler);
    }

    async fn publish(
        &self,
        channel: &str,
        data: Bytes,
        options: StreamOptions,
    ) -> Result<StreamPosition, EngineError> {
        self.inner.publish(channel, data, options).await
    }

    async fn history(
        &self,
        channel: &str,
        query: HistoryQuery,
        options: StreamOptions,
    ) -> Result<HistoryResult, EngineError> {
        self.inner.history(channel, &query, options).await
    }

    async fn subscribe(&self, channel: &str) -> Result<(), EngineError> {
        delivery::subscribe(&self.inner, Topic::Channel(channel.into())).await
    }

    async fn unsubscribe(&self, channel: &str) -> Result<(), EngineError> {
        delivery::unsubscribe(&self.inner, Topic::Channel(channel.into())).await;
        self.inner.drop_unpublished(channel).await
    }

    async fn presence_add(&self, channel: &str, member: PresenceMember) -> Result<(), EngineError> {
        self.inner.presence_add(channel, member).await
    }

    async fn presence_remove(&self, channel: &str, client: &str) -> Result<(), EngineError> {
        self.inner.presence_remove(channel, client).await
    }

    async fn presence(&self, channel: &str) -> Result<Vec<PresenceMember>, EngineError> {
        self.inner.presence(channel).await
    }

    async fn publish_presence_event(
        &self,
        channel: &str,
        event: PresenceEvent,
        member: PresenceMember,
    ) -> Result<(), EngineError> {
        let payload = wire::encode_presence(event, &member);
        self.inner
            .core_publish(&Topic::Channel(channel.into()), payload)
            .await
    }

    async fn room_join(
        &self,
        room: &str,
        peer: RoomPeer,
        max_peers: usize,
    ) -> Result<Vec<RoomPeer>, EngineError> {
        let inner = &self.inner;
        // Subscribed before joining: no event published after our join can miss this node.
        delivery::subscribe(inner, Topic::Room(room.into())).await?;
        let joined = inner.room_join(room, peer, max_peers).await;
        if joined.is_err() {
            delivery::unsubscribe(inner, Topic::Room(room.into())).await;
        }
        joined
    }

    async fn room_leave(&self, room: &str, peer: &str) -> Result<bool, EngineError> {
        let left = self.inner.room_leave(room, peer).await;
        delivery::unsubscribe(&self.inner, Topic::Room(room.into())).await;
        left
    }

    async fn room_update(
        &self,
        room: &str,
        peer: &str,
        meta: Option<Bytes>,
    ) -> Result<Option<RoomPeer>, EngineError> {
        self.inner.room_update(room, peer, meta).await
    }

    async fn room_peers(&self, room: &str) -> Result<Vec<RoomPeer>, EngineError> {
        self.inner.room_peers(room).await
    }

    async fn room_publish(&self, room: &str, event: RoomEvent) -> Result<(), EngineError> {
        let payload =
            wire::encode_room_event(&event).ok_or_else(|| unavailable("room event not JSON"))?;
        self.inner
            .core_publish(&Topic::Room(room.into()), payload)
            .await
    }

    async fn ask_nodes(&self, request: NodeRequest) -> Result<Vec<NodeAnswer>, EngineError> {
        nodes::ask(&self.inner, request).await
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, EngineError> {
        Ok(nodes::read(&self.inner).await?.live)
    }

    fn node_id(&self) -> &str {
        &self.inner.node
    }

    fn kind(&self) -> &'static str {
        "nats"
    }

    fn stats(&self) -> &EngineStats {
        &self.inner.stats
    }
}

/// The fuzz target's look at the NATS engine (see `fuzz_engine_records`): subjects, room
/// rosters and heartbeats.
pub(crate) fn fuzz_records(data: &[u8]) {
    let _ = members::roster_of(data);
    let _ = serde_json::from_slice::<switchboard_core::engine::NodeInfo>(data);
    if let Ok(subject) = std::str::from_utf8(data) {
        let names = Names::new("sb").expect("a valid prefix");
        if let Some((channel, client)) = names.parse_presence(subject) {
            let again = names.parse_presence(&names.presence_member(&channel, "n1", &client));
            assert_eq!(again, Some((channel, client)));
        }
        if let Some(room) = names.parse_room_roster(subject) {
            assert_eq!(
                names.parse_room_roster(&names.room_roster(&room)),
                Some(room)
            );
        }
        let _ = names::untoken(subject);
    }
}
