//! The Redis engine: several Switchboard nodes sharing one Redis behave as one server.
//!
//! - Positions and history: a Lua script assigns the next offset, appends to the channel's
//!   Redis stream (bounded by size, trimmed by age) and publishes, in one atomic step, so
//!   offsets are consecutive across nodes and every node receives them in offset order.
//! - Delivery: one Redis pub/sub subscription per channel per node (`delivery.rs`), whatever
//!   the number of local subscribers. Gaps (a lost pub/sub connection) are filled from
//!   history; what history no longer holds is reported to the hub, whose subscribers come back
//!   with `since` and learn `recovered: false`.
//! - Presence and rooms: hashes whose members name the node holding them. Nodes heartbeat
//!   (`nodes.rs`); a node silent for `node_ttl` is dead, its members are hidden at once and
//!   reaped (with leave events) by the next heartbeat of a live node.
//! - Server API commands that concern every node's clients travel on a control topic and are
//!   answered on the asking node's reply topic.

mod delivery;
mod keys;
mod nodes;
mod scripts;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, RedisResult, Value};
use switchboard_core::engine::{
    Engine, EngineError, EngineHandler, EngineStats, HistoryQuery, HistoryResult, NodeAnswer,
    NodeInfo, NodeRequest, PresenceEvent, PresenceMember, Publication, RoomEvent, RoomPeer,
    StreamOptions, StreamPosition,
};
use switchboard_core::unix_now;
use tokio::sync::{mpsc, oneshot};

use crate::wire::{self, Stored};
use delivery::SubCommand;
use keys::{Keys, Topic};

/// How a node connects to Redis and how its cluster behaves.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// `redis://host:port/db`, `rediss://` for TLS.
    pub url: String,
    /// Prefix of every key and pub/sub channel.
    pub prefix: String,
    /// This node's id (unique per process).
    pub node_id: String,
    /// A node without a heartbeat for this long is dead: its presence members and room peers
    /// are removed.
    pub node_ttl: Duration,
    /// A stream with no publication for this long starts over with a new epoch.
    pub idle_ttl: Duration,
}

/// How long a server API request waits for the other nodes' answers.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// History TTLs are capped here (Redis `EXPIRE` wants a sane number).
const MAX_TTL_SECS: u64 = 10 * 365 * 24 * 3600;

pub(crate) struct Inner {
    keys: Keys,
    node: String,
    node_ttl: Duration,
    idle_ttl: Duration,
    conn: ConnectionManager,
    handler: OnceLock<Weak<dyn EngineHandler>>,
    subscriptions: mpsc::UnboundedSender<SubCommand>,
    /// Nodes known to be dead: their members are hidden until they are reaped.
    dead: RwLock<HashSet<String>>,
    /// Server API requests waiting for answers, by request id.
    pending: Mutex<HashMap<u64, mpsc::UnboundedSender<NodeAnswer>>>,
    next_request: AtomicU64,
    stats: EngineStats,
    /// This node's presence members per channel, to know when its last one leaves (and its
    /// holding of the channel may go).
    local_presence: Mutex<HashMap<String, usize>>,
    /// Asks for a heartbeat now (after a reconnect, to learn at once whether Redis kept us).
    beat_now: tokio::sync::Notify,
}

fn unavailable(e: impl std::fmt::Display) -> EngineError {
    EngineError::Unavailable(format!("redis: {e}"))
}

impl Inner {
    fn handler(&self) -> Option<Arc<dyn EngineHandler>> {
        self.handler.get().and_then(Weak::upgrade)
    }

    /// A handle on the shared, self-reconnecting connection for one call.
    fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// Awaits one Redis call, counting it and its time for metrics.
    async fn timed<T>(&self, call: impl Future<Output = RedisResult<T>>) -> Result<T, EngineError> {
        let start = Instant::now();
        let result = call.await;
        self.stats.record(start.elapsed(), result.is_ok());
        result.map_err(unavailable)
    }

    fn is_live(&self, node: &str) -> bool {
        node == self.node || !self.dead.read().contains(node)
    }

    async fn history(
        &self,
        channel: &str,
        query: &HistoryQuery,
        options: StreamOptions,
    ) -> Result<HistoryResult, EngineError> {
        let (since_offset, since_epoch) = match &query.since {
            Some((offset, epoch)) => (offset.to_string(), epoch.clone()),
            None => (String::new(), String::new()),
        };
        let limit = query.limit.map(|l| l.to_string()).unwrap_or_default();
        let mut invocation = scripts::HISTORY.prepare_invoke();
        invocation
            .key(self.keys.meta(channel))
            .key(self.keys.history(channel))
            .arg(new_epoch())
            .arg(unix_now())
            .arg(options.history_ttl.as_secs().min(MAX_TTL_SECS))
            .arg(since_offset)
            .arg(since_epoch)
            .arg(limit);
        let value: Value = self
            .timed(invocation.invoke_async(&mut self.conn()))
            .await?;
        parse_history(value).ok_or_else(|| unavailable("unexpected history reply"))
    }

    /// Asks the subscription task to (un)subscribe `topic` for this node.
    async fn subscribe(&self, topic: Topic) -> Result<(), EngineError> {
        let (reply, answer) = oneshot::channel();
        self.subscriptions
            .send(SubCommand::Subscribe { topic, reply })
            .map_err(|_| unavailable("engine stopped"))?;
        answer.await.map_err(|_| unavailable("engine stopped"))?
    }

    fn unsubscribe(&self, topic: Topic) {
        let _ = self.subscriptions.send(SubCommand::Unsubscribe { topic });
    }

    async fn publish_raw(&self, topic: &Topic, payload: Vec<u8>) -> Result<usize, EngineError> {
        let name = self.keys.topic(topic, &self.node);
        self.timed(self.conn().publish(name, payload)).await
    }

    /// Room peers from the members and metas hashes (flat field/value lists), live nodes'
    /// only, in join order.
    fn room_peers_from(
        &self,
        members: Vec<(String, Vec<u8>)>,
        metas: Vec<(String, Vec<u8>)>,
    ) -> Vec<RoomPeer> {
        let metas: HashMap<String, Vec<u8>> = metas.into_iter().collect();
        let mut peers: Vec<(u64, RoomPeer)> = members
            .into_iter()
            .filter_map(|(peer, value)| {
                let (seq, stored) = split_seq(&value)?;
                let stored = Stored::decode(stored)?;
                if !self.is_live(&stored.n) {
                    return None;
                }
                let meta = metas.get(&peer).map(|m| Bytes::copy_from_slice(m));
                Some((seq, stored.into_peer(&peer, meta)))
            })
            .collect();
        peers.sort_by_key(|(seq, _)| *seq);
        peers.into_iter().map(|(_, p)| p).collect()
    }
}

/// A room member value is `<join seq>|<stored member>`.
fn split_seq(value: &[u8]) -> Option<(u64, &[u8])> {
    let bar = value.iter().position(|b| *b == b'|')?;
    let seq = std::str::from_utf8(&value[..bar]).ok()?.parse().ok()?;
    Some((seq, &value[bar + 1..]))
}

/// The fuzz target's look at the Redis engine (see `fuzz_engine_records`): pub/sub channel
/// names, room member values, and a history script reply made of the bytes' NUL-separated
/// parts.
pub(crate) fn fuzz_records(data: &[u8]) {
    let _ = split_seq(data);
    if let Ok(name) = std::str::from_utf8(data) {
        let keys = Keys::new("sb");
        if let Some(topic) = keys.parse_topic(name, "n1") {
            assert_eq!(keys.topic(&topic, "n1"), name);
        }
    }
    let items = data.split(|b| *b == 0);
    let reply = Value::Array(items.map(|i| Value::BulkString(i.to_vec())).collect());
    let _ = parse_history(reply);
}

fn new_epoch() -> String {
    format!("{:08x}", rand::random::<u32>())
}

fn as_u64(value: &Value) -> Option<u64> {
    match value {
        Value::Int(n) => u64::try_from(*n).ok(),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

fn as_bytes(value: &Value) -> Option<&[u8]> {
    match value {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

fn as_string(value: &Value) -> Option<String> {
    String::from_utf8(as_bytes(value)?.to_vec()).ok()
}

/// A flat `field, value, field, value` list (HGETALL inside a script) as pairs.
fn as_pairs(value: &Value) -> Option<Vec<(String, Vec<u8>)>> {
    let Value::Array(items) = value else {
        return None;
    };
    items
        .chunks(2)
        .map(|pair| Some((as_string(pair.first()?)?, as_bytes(pair.get(1)?)?.to_vec())))
        .collect()
}

fn parse_history(value: Value) -> Option<HistoryResult> {
    let Value::Array(items) = value else {
        return None;
    };
    let top = as_u64(items.first()?)?;
    let epoch: Arc<str> = as_string(items.get(1)?)?.into();
    let complete = as_u64(items.get(2)?)? == 1;
    let publications = items[3..]
        .chunks(2)
        .map(|pair| {
            Some(Publication {
                offset: as_u64(pair.first()?)?,
                epoch: epoch.clone(),
                data: Bytes::copy_from_slice(as_bytes(pair.get(1)?)?),
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some(HistoryResult {
        publications,
        position: StreamPosition { offset: top, epoch },
        complete,
    })
}

/// The Redis engine. Dropping it stops its background tasks.
pub struct RedisEngine {
    inner: Arc<Inner>,
    tasks: Vec<tokio::task::AbortHandle>,
}

impl Drop for RedisEngine {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl RedisEngine {
    /// Connects (failing fast when Redis can't be reached) and starts the node's pub/sub
    /// and heartbeat tasks.
    pub async fn connect(options: RedisOptions) -> Result<RedisEngine, String> {
        let client = redis::Client::open(options.url.as_str())
            .map_err(|e| format!("[engine] redis_url {:?}: {e}", options.url))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let conn = ConnectionManager::new_with_config(client.clone(), config)
            .await
            .map_err(|e| format!("cannot reach Redis at {}: {e}", options.url))?;
        let (subscriptions, commands) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            keys: Keys::new(&options.prefix),
            node: options.node_id.clone(),
            node_ttl: options.node_ttl,
            idle_ttl: options.idle_ttl,
            conn,
            handler: OnceLock::new(),
            subscriptions,
            dead: RwLock::new(HashSet::new()),
            pending: Mutex::new(HashMap::new()),
            next_request: AtomicU64::new(1),
            stats: EngineStats::default(),
            local_presence: Mutex::new(HashMap::new()),
            beat_now: tokio::sync::Notify::new(),
        });
        // In the node list before serving anyone.
        nodes::beat(&inner)
            .await
            .map_err(|e| format!("cannot register this node in Redis at {}: {e}", options.url))?;
        let subscriber = delivery::Subscriber::connect(inner.clone(), client)
            .await
            .map_err(|e| format!("cannot subscribe to Redis at {}: {e}", options.url))?;
        let tasks = vec![
            tokio::spawn(subscriber.run(commands)).abort_handle(),
            tokio::spawn(nodes::heartbeat(inner.clone())).abort_handle(),
        ];
        Ok(RedisEngine { inner, tasks })
    }

    pub fn node_id(&self) -> &str {
        &self.inner.node
    }
}

#[async_trait]
impl Engine for RedisEngine {
    fn set_handler(&self, handler: Weak<dyn EngineHandler>) {
        let _ = self.inner.handler.set(handler);
    }

    async fn publish(
        &self,
        channel: &str,
        data: Bytes,
        options: StreamOptions,
    ) -> Result<StreamPosition, EngineError> {
        let inner = &self.inner;
        let mut invocation = scripts::PUBLISH.prepare_invoke();
        invocation
            .key(inner.keys.meta(channel))
            .key(inner.keys.history(channel))
            .arg(
                inner
                    .keys
                    .topic(&Topic::Channel(channel.into()), &inner.node),
            )
            .arg(&data[..])
            .arg(options.history_size)
            .arg(options.history_ttl.as_secs().clamp(1, MAX_TTL_SECS))
            .arg(inner.idle_ttl.as_secs().max(1))
            .arg(new_epoch())
            .arg(unix_now());
        let (offset, epoch): (u64, String) = inner
            .timed(invocation.invoke_async(&mut inner.conn()))
            .await?;
        Ok(StreamPosition {
            offset,
            epoch: epoch.into(),
        })
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
        let inner = &self.inner;
        let mut start = scripts::START.prepare_invoke();
        start
            .key(inner.keys.meta(channel))
            .key(inner.keys.history(channel))
            .arg(new_epoch())
            .arg(inner.idle_ttl.as_secs().max(1));
        let _: String = inner.timed(start.invoke_async(&mut inner.conn())).await?;
        inner.subscribe(Topic::Channel(channel.into())).await
    }

    async fn unsubscribe(&self, channel: &str) -> Result<(), EngineError> {
        let inner = &self.inner;
        inner.unsubscribe(Topic::Channel(channel.into()));
        let mut drop = scripts::DROP_UNPUBLISHED.prepare_invoke();
        drop.key(inner.keys.meta(channel))
            .key(inner.keys.history(channel));
        let _: i64 = inner.timed(drop.invoke_async(&mut inner.conn())).await?;
        Ok(())
    }

    async fn presence_add(&self, channel: &str, member: PresenceMember) -> Result<(), EngineError> {
        let inner = &self.inner;
        let key = inner.keys.presence(channel);
        let value = Stored::encode(&inner.node, &member.user, &member.info);
        let holdings = inner.keys.node_holdings(&inner.node);
        let holding = format!("p:{channel}");
        *inner
            .local_presence
            .lock()
            .entry(channel.to_owned())
            .or_default() += 1;
        inner
            .timed(
                redis::pipe()
                    .hset(key, &*member.client, value)
                    .ignore()
                    .sadd(holdings, holding)
                    .ignore()
                    .query_async::<()>(&mut inner.conn()),
            )
            .await
    }

    async fn presence_remove(&self, channel: &str, client: &str) -> Result<(), EngineError> {
        let inner = &self.inner;
        let last_here = {
            let mut local = inner.local_presence.lock();
            let count = local.entry(channel.to_owned()).or_default();
            *count = count.saturating_sub(1);
            let last = *count == 0;
            if last {
                local.remove(channel);
            }
            last
        };
        let mut invocation = scripts::PRESENCE_LEAVE.prepare_invoke();
        invocation
            .key(inner.keys.presence(channel))
            .key(inner.keys.node_holdings(&inner.node))
            .arg(client)
            .arg(Stored::marker(&inner.node))
            .arg(format!("p:{channel}"))
            .arg(if last_here { "1" } else { "0" });
        inner
            .timed(invocation.invoke_async::<()>(&mut inner.conn()))
            .await
    }

    async fn presence(&self, channel: &str) -> Result<Vec<PresenceMember>, EngineError> {
        let key = self.inner.keys.presence(channel);
        let all: HashMap<String, Vec<u8>> =
            self.inner.timed(self.inner.conn().hgetall(key)).await?;
        Ok(all
            .into_iter()
            .filter_map(|(client, value)| {
                let stored = Stored::decode(&value)?;
                self.inner
                    .is_live(&stored.n)
                    .then(|| stored.into_member(&client))
            })
            .collect())
    }

    async fn publish_presence_event(
        &self,
        channel: &str,
        event: PresenceEvent,
        member: PresenceMember,
    ) -> Result<(), EngineError> {
        let payload = wire::encode_presence(event, &member);
        self.inner
            .publish_raw(&Topic::Channel(channel.into()), payload)
            .await
            .map(drop)
    }

    async fn room_join(
        &self,
        room: &str,
        peer: RoomPeer,
        max_peers: usize,
    ) -> Result<Vec<RoomPeer>, EngineError> {
        let inner = &self.inner;
        // Subscribed before joining: no event published after our join can miss this node.
        inner.subscribe(Topic::Room(room.into())).await?;
        let meta = wire::raw(&peer.meta).map(|m| m.get().to_owned());
        let mut invocation = scripts::ROOM_JOIN.prepare_invoke();
        invocation
            .key(inner.keys.room(room))
            .key(inner.keys.room_meta(room))
            .key(inner.keys.room_seq(room))
            .key(inner.keys.node_holdings(&inner.node))
            .arg(&*peer.peer)
            .arg(Stored::encode(&inner.node, &peer.user, &peer.info))
            .arg(max_peers)
            .arg(meta.unwrap_or_default())
            .arg(format!("r:{room}"));
        let joined: Result<Value, EngineError> = inner
            .timed(invocation.invoke_async(&mut inner.conn()))
            .await;
        let lists = match joined {
            Ok(Value::Array(lists)) => lists,
            Ok(_) => {
                inner.unsubscribe(Topic::Room(room.into()));
                return Err(EngineError::RoomFull);
            }
            Err(e) => {
                inner.unsubscribe(Topic::Room(room.into()));
                return Err(e);
            }
        };
        let members = lists.first().and_then(as_pairs).unwrap_or_default();
        let metas = lists.get(1).and_then(as_pairs).unwrap_or_default();
        Ok(inner.room_peers_from(members, metas))
    }

    async fn room_leave(&self, room: &str, peer: &str) -> Result<bool, EngineError> {
        let inner = &self.inner;
        let mut invocation = scripts::ROOM_LEAVE.prepare_invoke();
        invocation
            .key(inner.keys.room(room))
            .key(inner.keys.room_meta(room))
            .key(inner.keys.room_seq(room))
            .key(inner.keys.node_holdings(&inner.node))
            .arg(peer)
            .arg(Stored::marker(&inner.node))
            .arg(format!("r:{room}"));
        let removed: Result<u64, EngineError> = inner
            .timed(invocation.invoke_async(&mut inner.conn()))
            .await;
        inner.unsubscribe(Topic::Room(room.into()));
        Ok(removed? == 1)
    }

    async fn room_update(
        &self,
        room: &str,
        peer: &str,
        meta: Option<Bytes>,
    ) -> Result<Option<RoomPeer>, EngineError> {
        let inner = &self.inner;
        let raw_meta = wire::raw(&meta).map(|m| m.get().to_owned());
        let mut invocation = scripts::ROOM_UPDATE.prepare_invoke();
        invocation
            .key(inner.keys.room(room))
            .key(inner.keys.room_meta(room))
            .arg(peer)
            .arg(raw_meta.unwrap_or_default());
        let member: Option<Vec<u8>> = inner
            .timed(invocation.invoke_async(&mut inner.conn()))
            .await?;
        Ok(member.and_then(|value| {
            let (_, stored) = split_seq(&value)?;
            Some(Stored::decode(stored)?.into_peer(peer, meta))
        }))
    }

    async fn room_peers(&self, room: &str) -> Result<Vec<RoomPeer>, EngineError> {
        let inner = &self.inner;
        let (members_key, metas_key) = (inner.keys.room(room), inner.keys.room_meta(room));
        let (members, metas): (Vec<(String, Vec<u8>)>, Vec<(String, Vec<u8>)>) = inner
            .timed(
                redis::pipe()
                    .hgetall(members_key)
                    .hgetall(metas_key)
                    .query_async(&mut inner.conn()),
            )
            .await?;
        Ok(inner.room_peers_from(members, metas))
    }

    async fn room_publish(&self, room: &str, event: RoomEvent) -> Result<(), EngineError> {
        let payload =
            wire::encode_room_event(&event).ok_or_else(|| unavailable("room event not JSON"))?;
        self.inner
            .publish_raw(&Topic::Room(room.into()), payload)
            .await
            .map(drop)
    }

    async fn ask_nodes(&self, request: NodeRequest) -> Result<Vec<NodeAnswer>, EngineError> {
        nodes::ask(&self.inner, request).await
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, EngineError> {
        nodes::list(&self.inner).await
    }

    fn node_id(&self) -> &str {
        &self.inner.node
    }

    fn kind(&self) -> &'static str {
        "redis"
    }

    fn stats(&self) -> &EngineStats {
        &self.inner.stats
    }
}

impl Inner {
    fn next_request_id(&self) -> u64 {
        self.next_request.fetch_add(1, Ordering::Relaxed)
    }
}
