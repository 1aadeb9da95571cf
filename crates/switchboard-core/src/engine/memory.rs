//! The in-memory engine: one node, streams in RAM, sharded by channel so publishes to
//! different channels never contend.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, OnceLock, Weak};

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;

use super::store::StreamStore;
use super::{
    Engine, EngineError, EngineHandler, EngineStats, HistoryQuery, HistoryResult, NodeAnswer,
    NodeInfo, NodeRequest, PresenceEvent, PresenceMember, Publication, RoomEvent, RoomPeer,
    StreamOptions, StreamPosition,
};
use crate::unix_now;

const SHARDS: usize = 64;

struct Stream {
    epoch: Arc<str>,
    /// Offset of the last message published (0 before the first).
    top: u64,
    /// Retained messages with the Unix second they were published, oldest first.
    history: VecDeque<(u64, Publication)>,
    last_publish: u64,
    /// The namespace settings of the last publish, for upkeep between publishes.
    options: StreamOptions,
}

impl Stream {
    fn new(now: u64, options: StreamOptions) -> Self {
        Stream {
            epoch: new_epoch(),
            top: 0,
            history: VecDeque::new(),
            last_publish: now,
            options,
        }
    }

    fn expire(&mut self, now: u64, options: StreamOptions) {
        let ttl = options.history_ttl.as_secs();
        while let Some((at, _)) = self.history.front() {
            if now.saturating_sub(*at) >= ttl || self.history.len() > options.history_size {
                self.history.pop_front();
            } else {
                break;
            }
        }
        if self.history.is_empty() && self.history.capacity() > 0 {
            self.history = VecDeque::new();
        }
    }

    fn position(&self) -> StreamPosition {
        StreamPosition {
            offset: self.top,
            epoch: self.epoch.clone(),
        }
    }
}

fn new_epoch() -> Arc<str> {
    format!("{:08x}", rand::random::<u32>()).into()
}

#[derive(Default)]
struct Shard {
    streams: HashMap<String, Stream>,
    presence: HashMap<String, HashMap<Arc<str>, PresenceMember>>,
    /// Room members in join order.
    rooms: HashMap<String, Vec<RoomPeer>>,
}

/// Streams and presence in this process's memory, optionally written through to a durable
/// [`StreamStore`].
pub struct MemoryEngine {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    handler: OnceLock<Weak<dyn EngineHandler>>,
    idle_ttl: u64,
    store: Option<Arc<dyn StreamStore>>,
    node_id: String,
    stats: EngineStats,
}

impl MemoryEngine {
    /// `idle_ttl`: a stream with no publish for this long is dropped by [`Engine::maintain`].
    pub fn new(idle_ttl: std::time::Duration) -> Self {
        MemoryEngine {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: RandomState::new(),
            handler: OnceLock::new(),
            idle_ttl: idle_ttl.as_secs(),
            store: None,
            node_id: super::new_node_id(),
            stats: EngineStats::default(),
        }
    }

    /// An engine whose streams survive restarts: restored from `store`, and every publish
    /// written to it before it is delivered or acknowledged.
    pub fn durable(
        idle_ttl: std::time::Duration,
        store: Arc<dyn StreamStore>,
    ) -> Result<Self, EngineError> {
        let mut engine = MemoryEngine::new(idle_ttl);
        for stored in store.load()? {
            // Until its namespace's settings come with the next publish or read, a restored
            // stream keeps what it has.
            let options = StreamOptions {
                history_size: stored.history.len().max(1),
                history_ttl: std::time::Duration::from_secs(u64::MAX / 4),
            };
            let history = stored
                .history
                .into_iter()
                .map(|(at, offset, data)| {
                    let epoch: Arc<str> = stored.epoch.as_str().into();
                    (
                        at,
                        Publication {
                            offset,
                            epoch,
                            data,
                        },
                    )
                })
                .collect();
            let stream = Stream {
                epoch: stored.epoch.as_str().into(),
                top: stored.top,
                history,
                last_publish: stored.last_publish,
                options,
            };
            engine
                .shard(&stored.channel)
                .lock()
                .streams
                .insert(stored.channel, stream);
        }
        engine.store = Some(store);
        Ok(engine)
    }

    /// The oldest offset a stream still holds (the next one when it holds none).
    fn keep_from(stream: &Stream) -> u64 {
        stream
            .history
            .front()
            .map_or(stream.top + 1, |(_, p)| p.offset)
    }

    fn shard(&self, channel: &str) -> &Mutex<Shard> {
        &self.shards[(self.hasher.hash_one(channel) as usize) % SHARDS]
    }

    fn handler(&self) -> Option<Arc<dyn EngineHandler>> {
        self.handler.get().and_then(Weak::upgrade)
    }
}

#[async_trait]
impl Engine for MemoryEngine {
    fn set_handler(&self, handler: Weak<dyn EngineHandler>) {
        let _ = self.handler.set(handler);
    }

    async fn publish(
        &self,
        channel: &str,
        data: Bytes,
        options: StreamOptions,
    ) -> Result<StreamPosition, EngineError> {
        let now = unix_now();
        let handler = self.handler();
        let mut shard = self.shard(channel).lock();
        let stream = shard
            .streams
            .entry(channel.to_owned())
            .or_insert_with(|| Stream::new(now, options));
        stream.top += 1;
        stream.last_publish = now;
        stream.options = options;
        let publication = Publication {
            offset: stream.top,
            epoch: stream.epoch.clone(),
            data,
        };
        if options.history_size > 0 {
            stream.history.push_back((now, publication.clone()));
        }
        stream.expire(now, options);
        if let Some(store) = &self.store {
            // Durable before anyone sees it: an acknowledged message survives a crash, and an
            // offset is never handed out twice.
            let keep_from = Self::keep_from(stream);
            let stored = (now, publication.offset, &publication.data);
            if let Err(e) = store.append(channel, &stream.epoch, stored, keep_from) {
                if stream
                    .history
                    .back()
                    .is_some_and(|(_, p)| p.offset == stream.top)
                {
                    stream.history.pop_back();
                }
                stream.top -= 1;
                return Err(e);
            }
        }
        let position = stream.position();
        // Delivered under the shard lock so every subscriber sees offsets in order.
        if let Some(handler) = handler {
            handler.on_publication(channel, &publication);
        }
        Ok(position)
    }

    async fn history(
        &self,
        channel: &str,
        query: HistoryQuery,
        options: StreamOptions,
    ) -> Result<HistoryResult, EngineError> {
        let now = unix_now();
        let mut shard = self.shard(channel).lock();
        let stream = shard
            .streams
            .entry(channel.to_owned())
            .or_insert_with(|| Stream::new(now, options));
        stream.expire(now, options);
        let position = stream.position();
        let held = stream.history.iter().map(|(_, p)| p);
        let (publications, complete) = match &query.since {
            Some((offset, epoch)) => {
                if **epoch != *stream.epoch || *offset > stream.top {
                    (Vec::new(), false)
                } else {
                    let oldest = stream.history.front().map(|(_, p)| p.offset);
                    // Every message after `since` is still held when the oldest held one
                    // is no later than the first missed one.
                    let complete = *offset == stream.top || oldest.is_some_and(|o| o <= offset + 1);
                    let after = held.filter(|p| p.offset > *offset);
                    let publications = match query.limit {
                        Some(limit) => after.take(limit).cloned().collect(),
                        None => after.cloned().collect(),
                    };
                    (publications, complete)
                }
            }
            None => {
                let len = stream.history.len();
                let skip = query.limit.map_or(0, |limit| len.saturating_sub(limit));
                (held.skip(skip).cloned().collect(), true)
            }
        };
        Ok(HistoryResult {
            publications,
            position,
            complete,
        })
    }

    async fn subscribe(&self, _channel: &str) -> Result<(), EngineError> {
        Ok(())
    }

    async fn unsubscribe(&self, _channel: &str) -> Result<(), EngineError> {
        Ok(())
    }

    async fn presence_add(&self, channel: &str, member: PresenceMember) -> Result<(), EngineError> {
        let mut shard = self.shard(channel).lock();
        shard
            .presence
            .entry(channel.to_owned())
            .or_default()
            .insert(member.client.clone(), member);
        Ok(())
    }

    async fn presence_remove(&self, channel: &str, client: &str) -> Result<(), EngineError> {
        let mut shard = self.shard(channel).lock();
        if let Some(members) = shard.presence.get_mut(channel) {
            members.remove(client);
            if members.is_empty() {
                shard.presence.remove(channel);
            }
        }
        Ok(())
    }

    async fn presence(&self, channel: &str) -> Result<Vec<PresenceMember>, EngineError> {
        let shard = self.shard(channel).lock();
        Ok(shard
            .presence
            .get(channel)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default())
    }

    async fn publish_presence_event(
        &self,
        channel: &str,
        event: PresenceEvent,
        member: PresenceMember,
    ) -> Result<(), EngineError> {
        if let Some(handler) = self.handler() {
            // Under the shard lock, like publications, so events keep their order.
            let _shard = self.shard(channel).lock();
            handler.on_presence_event(channel, event, &member);
        }
        Ok(())
    }

    async fn room_join(
        &self,
        room: &str,
        peer: RoomPeer,
        max_peers: usize,
    ) -> Result<Vec<RoomPeer>, EngineError> {
        let mut shard = self.shard(room).lock();
        let peers = shard.rooms.entry(room.to_owned()).or_default();
        if peers.len() >= max_peers {
            return Err(EngineError::RoomFull);
        }
        let before = peers.clone();
        peers.push(peer);
        Ok(before)
    }

    async fn room_leave(&self, room: &str, peer: &str) -> Result<bool, EngineError> {
        let mut shard = self.shard(room).lock();
        let Some(peers) = shard.rooms.get_mut(room) else {
            return Ok(false);
        };
        let before = peers.len();
        peers.retain(|p| &*p.peer != peer);
        let left = peers.len() < before;
        if peers.is_empty() {
            shard.rooms.remove(room);
        }
        Ok(left)
    }

    async fn room_update(
        &self,
        room: &str,
        peer: &str,
        meta: Option<Bytes>,
    ) -> Result<Option<RoomPeer>, EngineError> {
        let mut shard = self.shard(room).lock();
        let found = shard
            .rooms
            .get_mut(room)
            .and_then(|peers| peers.iter_mut().find(|p| &*p.peer == peer));
        Ok(found.map(|p| {
            p.meta = meta;
            p.clone()
        }))
    }

    async fn room_peers(&self, room: &str) -> Result<Vec<RoomPeer>, EngineError> {
        Ok(self
            .shard(room)
            .lock()
            .rooms
            .get(room)
            .cloned()
            .unwrap_or_default())
    }

    async fn room_publish(&self, room: &str, event: RoomEvent) -> Result<(), EngineError> {
        if let Some(handler) = self.handler() {
            // Under the room's shard lock, so every peer sees a room's events in one order.
            let _shard = self.shard(room).lock();
            handler.on_room_event(room, &event);
        }
        Ok(())
    }

    async fn ask_nodes(&self, request: NodeRequest) -> Result<Vec<NodeAnswer>, EngineError> {
        match self.handler() {
            Some(handler) => Ok(vec![handler.on_request(request).await]),
            None => Ok(Vec::new()),
        }
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, EngineError> {
        Ok(self
            .handler()
            .map(|handler| NodeInfo {
                id: self.node_id.clone(),
                ..handler.node_info()
            })
            .into_iter()
            .collect())
    }

    fn kind(&self) -> &'static str {
        "memory"
    }

    fn stats(&self) -> &EngineStats {
        &self.stats
    }

    fn maintain(&self, now: u64) {
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            let store = self.store.as_deref();
            shard.streams.retain(|channel, s| {
                let keep = now.saturating_sub(s.last_publish) < self.idle_ttl;
                if !keep && let Some(store) = store {
                    let _ = store.remove(channel);
                }
                keep
            });
            for (channel, stream) in shard.streams.iter_mut() {
                let before = Self::keep_from(stream);
                stream.expire(now, stream.options);
                let after = Self::keep_from(stream);
                if after != before
                    && let Some(store) = store
                {
                    let _ = store.trim(channel, after);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn opts(size: usize) -> StreamOptions {
        StreamOptions {
            history_size: size,
            history_ttl: Duration::from_secs(300),
        }
    }

    fn data(n: u64) -> Bytes {
        Bytes::from(n.to_string())
    }

    #[tokio::test]
    async fn offsets_grow_by_one_and_history_is_bounded() {
        let e = MemoryEngine::new(Duration::from_secs(3600));
        for n in 1..=5 {
            let p = e.publish("c", data(n), opts(3)).await.unwrap();
            assert_eq!(p.offset, n);
        }
        let all = HistoryQuery {
            since: None,
            limit: None,
        };
        let h = e.history("c", all, opts(3)).await.unwrap();
        let offsets: Vec<u64> = h.publications.iter().map(|p| p.offset).collect();
        assert_eq!(offsets, vec![3, 4, 5]);
        assert_eq!(h.position.offset, 5);
    }

    #[tokio::test]
    async fn since_reports_whether_history_is_complete() {
        let e = MemoryEngine::new(Duration::from_secs(3600));
        let mut epoch = String::new();
        for n in 1..=5 {
            epoch = e
                .publish("c", data(n), opts(3))
                .await
                .unwrap()
                .epoch
                .to_string();
        }
        let since = |offset: u64, epoch: &str| HistoryQuery {
            since: Some((offset, epoch.to_owned())),
            limit: None,
        };
        let h = e.history("c", since(2, &epoch), opts(3)).await.unwrap();
        assert!(h.complete);
        assert_eq!(h.publications.len(), 3);
        let h = e.history("c", since(3, &epoch), opts(3)).await.unwrap();
        assert!(h.complete, "history holds 3..5, more than the missed 4..5");
        assert_eq!(h.publications.len(), 2);
        let h = e.history("c", since(1, &epoch), opts(3)).await.unwrap();
        assert!(!h.complete);
        let h = e.history("c", since(5, &epoch), opts(3)).await.unwrap();
        assert!(h.complete && h.publications.is_empty());
        let h = e.history("c", since(2, "other"), opts(3)).await.unwrap();
        assert!(!h.complete && h.publications.is_empty());
    }

    #[tokio::test]
    async fn idle_streams_are_dropped_with_a_new_epoch_after() {
        let e = MemoryEngine::new(Duration::from_secs(10));
        let first = e.publish("c", data(1), opts(3)).await.unwrap();
        e.maintain(unix_now() + 11);
        let second = e.publish("c", data(2), opts(3)).await.unwrap();
        assert_eq!(second.offset, 1);
        assert_ne!(first.epoch, second.epoch);
    }
}
