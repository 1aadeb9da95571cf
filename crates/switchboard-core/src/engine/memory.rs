//! The in-memory engine: one node, streams in RAM, sharded by channel so publishes to
//! different channels never contend.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock, Weak};

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;

use super::committer::Committer;
use super::store::{StoreChange, StreamStore};
use super::{
    Engine, EngineError, EngineHandler, EngineStats, HistoryQuery, HistoryResult, NodeAnswer,
    NodeInfo, NodeRequest, PresenceEvent, PresenceMember, Publication, RoomEvent, RoomPeer,
    StreamOptions, StreamPosition,
};
use crate::clock::{Clock, SystemClock};

const SHARDS: usize = 64;

struct Stream {
    epoch: Arc<str>,
    /// Offset of the last message published and delivered (0 before the first).
    top: u64,
    /// Offset of the last message given a position: above `top` while durable writes are
    /// under way.
    assigned: u64,
    /// Durable messages waiting for an earlier one before they can be delivered, by offset,
    /// with the Unix second they were published.
    ready: BTreeMap<u64, (u64, Publication)>,
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
            assigned: 0,
            ready: BTreeMap::new(),
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

    /// Hands out the next offset to a publish at `now` with its namespace's `options`.
    fn assign(&mut self, now: u64, options: StreamOptions) -> u64 {
        self.assigned += 1;
        self.last_publish = now;
        self.options = options;
        self.assigned
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
    /// Writes to the durable store, when there is one.
    committer: Option<Committer>,
    /// A durable write failed: the store can no longer be trusted with positions, so
    /// publishing stops until a restart restores from what it holds.
    store_failed: std::sync::atomic::AtomicBool,
    node_id: String,
    stats: EngineStats,
    clock: Arc<dyn Clock>,
    /// Tests hold `history` here to interleave publications with a subscribe.
    #[cfg(test)]
    pub(crate) history_gate: Mutex<Option<Arc<crate::testing::Gate>>>,
}

impl MemoryEngine {
    /// `idle_ttl`: a stream with no publish for this long is dropped by [`Engine::maintain`].
    pub fn new(idle_ttl: std::time::Duration) -> Self {
        MemoryEngine::with_clock(idle_ttl, Arc::new(SystemClock))
    }

    /// An engine that reads the time from `clock`.
    pub fn with_clock(idle_ttl: std::time::Duration, clock: Arc<dyn Clock>) -> Self {
        MemoryEngine {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: RandomState::new(),
            handler: OnceLock::new(),
            idle_ttl: idle_ttl.as_secs(),
            committer: None,
            store_failed: std::sync::atomic::AtomicBool::new(false),
            node_id: super::new_node_id(),
            stats: EngineStats::default(),
            clock,
            #[cfg(test)]
            history_gate: Mutex::new(None),
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
                assigned: stored.top,
                ready: BTreeMap::new(),
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
        engine.committer = Some(Committer::start(store));
        Ok(engine)
    }

    /// The oldest offset a stream still holds (the next one when it holds none).
    fn keep_from(stream: &Stream) -> u64 {
        stream
            .history
            .front()
            .map_or(stream.top + 1, |(_, p)| p.offset)
    }

    /// Positions, keeps and delivers in one step under the shard lock.
    fn publish_in_memory(
        &self,
        channel: &str,
        data: Bytes,
        options: StreamOptions,
    ) -> StreamPosition {
        let now = self.clock.unix_now();
        let handler = self.handler();
        let mut shard = self.shard(channel).lock();
        let stream = shard
            .streams
            .entry(channel.to_owned())
            .or_insert_with(|| Stream::new(now, options));
        let publication = Publication {
            offset: stream.assign(now, options),
            epoch: stream.epoch.clone(),
            data,
        };
        Self::deliver(stream, channel, now, publication, handler.as_deref());
        stream.position()
    }

    /// Positions the message, waits until the store holds it, then delivers it in offset
    /// order: an acknowledged message survives a crash, and an offset is never handed out
    /// twice. Waiting happens outside the shard lock, so concurrent publishes share a commit.
    async fn publish_durably(
        &self,
        committer: &Committer,
        channel: &str,
        data: Bytes,
        options: StreamOptions,
    ) -> Result<StreamPosition, EngineError> {
        let failed = || EngineError::Unavailable("durable store failed earlier; restart".into());
        let now = self.clock.unix_now();
        let (publication, durable) = {
            let mut shard = self.shard(channel).lock();
            if self.store_failed.load(Ordering::Acquire) {
                return Err(failed());
            }
            let stream = shard
                .streams
                .entry(channel.to_owned())
                .or_insert_with(|| Stream::new(now, options));
            let offset = stream.assign(now, options);
            let kept_by_size = (offset + 1).saturating_sub(options.history_size as u64);
            let durable = committer.write(StoreChange::Append {
                channel: channel.to_owned(),
                epoch: stream.epoch.clone(),
                published: now,
                offset,
                data: data.clone(),
                keep_from: Self::keep_from(stream).max(kept_by_size),
            });
            let publication = Publication {
                offset,
                epoch: stream.epoch.clone(),
                data,
            };
            (publication, durable)
        };
        match durable.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                self.store_failed.store(true, Ordering::Release);
                return Err(e);
            }
            Err(_) => {
                self.store_failed.store(true, Ordering::Release);
                return Err(failed());
            }
        }
        let position = StreamPosition {
            offset: publication.offset,
            epoch: publication.epoch.clone(),
        };
        let handler = self.handler();
        let mut shard = self.shard(channel).lock();
        if let Some(stream) = shard.streams.get_mut(channel) {
            stream.ready.insert(publication.offset, (now, publication));
            // Whoever completes the next offset delivers every consecutive one that waits.
            while let Some(entry) = stream.ready.first_entry()
                && *entry.key() == stream.top + 1
            {
                let (at, publication) = entry.remove();
                Self::deliver(stream, channel, at, publication, handler.as_deref());
            }
        }
        Ok(position)
    }

    /// Makes `publication` (the next offset) the stream's top, keeps it and delivers it, under
    /// the shard lock so every subscriber sees offsets in order.
    fn deliver(
        stream: &mut Stream,
        channel: &str,
        now: u64,
        publication: Publication,
        handler: Option<&dyn EngineHandler>,
    ) {
        stream.top = publication.offset;
        if stream.options.history_size > 0 {
            stream.history.push_back((now, publication.clone()));
        }
        stream.expire(now, stream.options);
        if let Some(handler) = handler {
            handler.on_publication(channel, &publication);
        }
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
        match &self.committer {
            None => Ok(self.publish_in_memory(channel, data, options)),
            Some(committer) => {
                self.publish_durably(committer, channel, data, options)
                    .await
            }
        }
    }

    async fn history(
        &self,
        channel: &str,
        query: HistoryQuery,
        options: StreamOptions,
    ) -> Result<HistoryResult, EngineError> {
        #[cfg(test)]
        {
            let gate = self.history_gate.lock().clone();
            if let Some(gate) = gate {
                gate.pass().await;
            }
        }
        let now = self.clock.unix_now();
        let mut shard = self.shard(channel).lock();
        // Reading never starts a stream (spec §8): a channel nobody published to and nobody
        // here subscribes to answers an empty stream that is not kept.
        let Some(stream) = shard.streams.get_mut(channel) else {
            return Ok(HistoryResult::unstarted(&query, new_epoch()));
        };
        stream.expire(now, options);
        let position = stream.position();
        let held = stream.history.iter().map(|(_, p)| p);
        let (publications, complete) = match &query.since {
            // Offset 0 has seen nothing, so it continues any epoch.
            Some((offset, epoch)) => {
                if (*offset != 0 && **epoch != *stream.epoch) || *offset > stream.top {
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

    /// Starts the channel's stream if it has none, so every subscriber and the first publish
    /// agree on its epoch.
    async fn subscribe(&self, channel: &str) -> Result<(), EngineError> {
        let now = self.clock.unix_now();
        let mut shard = self.shard(channel).lock();
        if !shard.streams.contains_key(channel) {
            let options = StreamOptions {
                history_size: 0,
                history_ttl: std::time::Duration::ZERO,
            };
            shard
                .streams
                .insert(channel.to_owned(), Stream::new(now, options));
        }
        Ok(())
    }

    /// Drops the stream [`Engine::subscribe`] started when nothing was published to it:
    /// readers leave nothing behind.
    async fn unsubscribe(&self, channel: &str) -> Result<(), EngineError> {
        let mut shard = self.shard(channel).lock();
        if shard.streams.get(channel).is_some_and(|s| s.assigned == 0) {
            shard.streams.remove(channel);
        }
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

    fn node_id(&self) -> &str {
        &self.node_id
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
            // Queued under the shard lock, so they keep their order with the publishes.
            let committer = self.committer.as_ref();
            shard.streams.retain(|channel, s| {
                let keep = now.saturating_sub(s.last_publish) < self.idle_ttl;
                if !keep && let Some(committer) = committer {
                    let channel = channel.clone();
                    committer.write_later(StoreChange::Remove { channel });
                }
                keep
            });
            for (channel, stream) in shard.streams.iter_mut() {
                let before = Self::keep_from(stream);
                stream.expire(now, stream.options);
                let keep_from = Self::keep_from(stream);
                if keep_from != before
                    && let Some(committer) = committer
                {
                    let channel = channel.clone();
                    committer.write_later(StoreChange::Trim { channel, keep_from });
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
        e.maintain(crate::unix_now() + 11);
        let second = e.publish("c", data(2), opts(3)).await.unwrap();
        assert_eq!(second.offset, 1);
        assert_ne!(first.epoch, second.epoch);
    }

    fn stream_count(e: &MemoryEngine) -> usize {
        e.shards.iter().map(|s| s.lock().streams.len()).sum()
    }

    #[tokio::test]
    async fn reading_leaves_nothing_behind() {
        let e = MemoryEngine::new(Duration::from_secs(3600));
        let all = || HistoryQuery {
            since: None,
            limit: None,
        };
        for n in 0..100 {
            let h = e.history(&format!("c{n}"), all(), opts(3)).await.unwrap();
            assert_eq!(h.position.offset, 0);
            assert!(h.complete && h.publications.is_empty());
        }
        assert_eq!(stream_count(&e), 0, "history reads kept streams");

        // A subscriber's stream lives while it is subscribed (one epoch for everyone) and
        // goes with the last one when nothing was published.
        e.subscribe("s").await.unwrap();
        let a = e.history("s", all(), opts(3)).await.unwrap().position;
        let b = e.history("s", all(), opts(3)).await.unwrap().position;
        assert_eq!(a, b);
        e.unsubscribe("s").await.unwrap();
        assert_eq!(
            stream_count(&e),
            0,
            "an unpublished subscribed stream stayed"
        );

        e.subscribe("p").await.unwrap();
        let started = e.history("p", all(), opts(3)).await.unwrap().position;
        let published = e.publish("p", data(1), opts(3)).await.unwrap();
        assert_eq!(
            published.epoch, started.epoch,
            "the first publish kept the epoch"
        );
        e.unsubscribe("p").await.unwrap();
        assert_eq!(stream_count(&e), 1, "a published stream is kept");
    }

    #[tokio::test]
    async fn offset_zero_continues_any_epoch() {
        let e = MemoryEngine::new(Duration::from_secs(3600));
        let since = |offset: u64, epoch: &str| HistoryQuery {
            since: Some((offset, epoch.to_owned())),
            limit: None,
        };
        // Nothing there: offset 0 misses nothing, a later offset names a stream now gone.
        assert!(
            e.history("c", since(0, "x"), opts(3))
                .await
                .unwrap()
                .complete
        );
        assert!(
            !e.history("c", since(2, "x"), opts(3))
                .await
                .unwrap()
                .complete
        );
        for n in 1..=2 {
            e.publish("c", data(n), opts(3)).await.unwrap();
        }
        let h = e.history("c", since(0, "unkept"), opts(3)).await.unwrap();
        assert!(h.complete);
        assert_eq!(h.publications.len(), 2);
        for n in 3..=5 {
            e.publish("c", data(n), opts(3)).await.unwrap();
        }
        let h = e.history("c", since(0, "unkept"), opts(3)).await.unwrap();
        assert!(!h.complete, "1 and 2 are no longer held");
    }

    /// A store that takes 2 ms per write (like an fsync), counting its transactions.
    #[derive(Default)]
    struct SlowStore {
        writes: std::sync::atomic::AtomicUsize,
        fail: std::sync::atomic::AtomicBool,
    }

    impl StreamStore for SlowStore {
        fn write(&self, _changes: &[StoreChange]) -> Result<(), EngineError> {
            std::thread::sleep(Duration::from_millis(2));
            self.writes.fetch_add(1, Ordering::Relaxed);
            if self.fail.load(Ordering::Relaxed) {
                return Err(EngineError::Unavailable("disk full".into()));
            }
            Ok(())
        }

        fn load(&self) -> Result<Vec<super::super::store::StoredStream>, EngineError> {
            Ok(Vec::new())
        }
    }

    /// Records the offsets delivered, in order.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<u64>>);

    impl EngineHandler for Recorder {
        fn on_publication(&self, _channel: &str, publication: &Publication) {
            self.0.lock().push(publication.offset);
        }
        fn on_presence_event(&self, _: &str, _: PresenceEvent, _: &PresenceMember) {}
        fn on_room_event(&self, _: &str, _: &RoomEvent) {}
        fn on_stream_lost(&self, _: &str) {}
        fn on_memberships_lost(&self) {}
        fn on_request(self: Arc<Self>, _: NodeRequest) -> super::super::BoxFuture<NodeAnswer> {
            Box::pin(async { NodeAnswer::Count { count: 0 } })
        }
        fn node_info(&self) -> NodeInfo {
            NodeInfo::default()
        }
        fn announces_presence(&self, _: &str) -> bool {
            false
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_durable_publishes_share_commits_and_deliver_in_order() {
        let store = Arc::new(SlowStore::default());
        let engine =
            Arc::new(MemoryEngine::durable(Duration::from_secs(3600), store.clone()).unwrap());
        let recorder = Arc::new(Recorder::default());
        let handler: Arc<dyn EngineHandler> = recorder.clone();
        engine.set_handler(Arc::downgrade(&handler));
        let publishes: Vec<_> = (0..200)
            .map(|n| {
                let engine = engine.clone();
                tokio::spawn(async move { engine.publish("c", data(n), opts(1000)).await })
            })
            .collect();
        let mut offsets = Vec::new();
        for publish in publishes {
            offsets.push(publish.await.unwrap().unwrap().offset);
        }
        offsets.sort();
        assert_eq!(
            offsets,
            (1..=200).collect::<Vec<_>>(),
            "each offset handed out once"
        );
        assert_eq!(
            *recorder.0.lock(),
            (1..=200).collect::<Vec<_>>(),
            "delivered in order"
        );
        let writes = store.writes.load(Ordering::Relaxed);
        assert!(writes < 100, "200 publishes in {writes} commits");
        let all = HistoryQuery {
            since: None,
            limit: None,
        };
        let history = engine.history("c", all, opts(1000)).await.unwrap();
        assert_eq!(history.publications.len(), 200);
        assert_eq!(history.position.offset, 200);
    }

    #[tokio::test]
    async fn after_a_failed_commit_publishing_stops_and_nothing_is_delivered() {
        let store = Arc::new(SlowStore::default());
        store.fail.store(true, Ordering::Relaxed);
        let engine = MemoryEngine::durable(Duration::from_secs(3600), store.clone()).unwrap();
        let recorder = Arc::new(Recorder::default());
        let handler: Arc<dyn EngineHandler> = recorder.clone();
        engine.set_handler(Arc::downgrade(&handler));
        let first = engine.publish("c", data(1), opts(10)).await;
        assert!(
            matches!(first, Err(EngineError::Unavailable(_))),
            "{first:?}"
        );
        store.fail.store(false, Ordering::Relaxed);
        let second = engine.publish("c", data(2), opts(10)).await;
        assert!(
            second.is_err(),
            "a store that failed is not trusted again until a restart"
        );
        assert!(recorder.0.lock().is_empty());
    }
}
