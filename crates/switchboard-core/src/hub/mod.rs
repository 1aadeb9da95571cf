//! The hub: which client is subscribed to which channel on this node, and the fan-out of what
//! the engine delivers. Sharded by channel, so publishes to different channels never share a
//! lock; each publication is encoded once and the same bytes are queued to every subscriber.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use bytes::Bytes;
use parking_lot::Mutex;
use switchboard_proto::encode;
use switchboard_proto::{Disconnect, Outgoing, Position};

use crate::config::HubConfig;
use crate::engine::{
    BoxFuture, Engine, EngineError, EngineHandler, HistoryQuery, HistoryResult, NodeAnswer,
    NodeInfo, NodeRequest, PresenceEvent, PresenceMember, Publication, StreamOptions,
    StreamPosition,
};
use crate::sink::ClientSink;
use crate::small_map::SmallMap;

pub type ClientId = u64;

const SHARDS: usize = 64;

/// Live publications buffered for one subscriber while its history is read; past this the
/// subscriber is disconnected rather than buffering without bound.
const MAX_PENDING: usize = 10_000;

/// One connected client as the hub knows it.
pub struct ClientEntry {
    pub id: ClientId,
    /// The id shown on the wire (`connected.client`, presence).
    pub id_str: Arc<str>,
    pub user: Arc<str>,
    pub info: Option<Bytes>,
    pub sink: Arc<dyn ClientSink>,
    /// Token expiry in Unix seconds, 0 for none; updated by `refresh`.
    pub exp: AtomicU64,
    /// Channels this client is subscribed to (or subscribing to) on this node.
    channels: Mutex<HashSet<Arc<str>>>,
    /// An observer (one long-poll request) shows in no presence and triggers no join/leave.
    observer: bool,
    /// Rooms and per-channel identities. Most clients have neither, so they are allocated on
    /// first use: an idle connection does not carry two empty collections and their locks.
    extras: Mutex<Option<Box<ClientExtras>>>,
}

#[derive(Default)]
struct ClientExtras {
    /// Rooms this client joined.
    rooms: HashSet<Arc<str>>,
    /// Channels where this client shows in presence under another identity than its own
    /// (a Pusher presence subscription names its user per channel): channel, user, info.
    channel_members: Vec<ChannelMember>,
}

/// A channel, and the user and info this client shows as there.
type ChannelMember = (Arc<str>, Arc<str>, Option<Bytes>);

impl ClientEntry {
    pub fn subscription_count(&self) -> usize {
        self.channels.lock().len()
    }

    pub fn is_subscribed(&self, channel: &str) -> bool {
        self.channels.lock().contains(channel)
    }

    pub(crate) fn member(&self) -> PresenceMember {
        PresenceMember {
            client: self.id_str.clone(),
            user: self.user.clone(),
            info: self.info.clone(),
        }
    }

    /// Shows this client in `channel`'s presence (and its join and leave) as `user` with
    /// `info` instead of its own identity. Set before subscribing; dropped on unsubscribe.
    pub fn set_channel_member(&self, channel: &str, user: &str, info: Option<Bytes>) {
        let mut extras = self.extras.lock();
        let members = &mut extras.get_or_insert_with(Box::default).channel_members;
        members.retain(|(c, _, _)| &**c != channel);
        members.push((channel.into(), user.into(), info));
    }

    /// Drops the identity set for `channel`, if any.
    fn forget_channel_member(&self, channel: &str) {
        if let Some(extras) = self.extras.lock().as_mut() {
            extras.channel_members.retain(|(c, _, _)| &**c != channel);
        }
    }

    /// How this client shows in `channel`'s presence.
    pub fn member_in(&self, channel: &str) -> PresenceMember {
        let extras = self.extras.lock();
        let members = extras.as_ref().map_or(&[][..], |e| &e.channel_members[..]);
        match members.iter().find(|(c, _, _)| &**c == channel) {
            Some((_, user, info)) => PresenceMember {
                client: self.id_str.clone(),
                user: user.clone(),
                info: info.clone(),
            },
            None => self.member(),
        }
    }

    /// Records that this client joined `room`; false when it was in it already.
    pub(crate) fn enter_room(&self, room: &str) -> bool {
        let mut extras = self.extras.lock();
        extras
            .get_or_insert_with(Box::default)
            .rooms
            .insert(room.into())
    }

    pub(crate) fn exit_room(&self, room: &str) {
        if let Some(extras) = self.extras.lock().as_mut() {
            extras.rooms.remove(room);
        }
    }

    pub(crate) fn room_count(&self) -> usize {
        self.extras.lock().as_ref().map_or(0, |e| e.rooms.len())
    }

    pub(crate) fn in_room(&self, room: &str) -> bool {
        self.extras
            .lock()
            .as_ref()
            .is_some_and(|e| e.rooms.contains(room))
    }

    fn rooms(&self) -> Vec<Arc<str>> {
        self.extras
            .lock()
            .as_ref()
            .map_or_else(Vec::new, |e| e.rooms.iter().cloned().collect())
    }
}

/// A server module's own requests that every node must run (see [`NodeRequest::Extension`]).
pub trait NodeExtension: Send + Sync {
    /// Runs request `name` on this node; returns how many clients it concerned.
    fn on_request(&self, name: &str, argument: &str) -> usize;
}

/// How many media peers this node's SFU holds in a room (the server's media plane).
pub trait MediaRooms: Send + Sync {
    fn peers_in(&self, room: &str) -> usize;
}

/// Told when a channel gets its first subscriber on this node, or loses its last
/// (Pusher's `channel_occupied` and `channel_vacated` webhooks). Called under the channel's
/// lock: it must only queue, never block.
pub trait OccupancyObserver: Send + Sync {
    fn occupied(&self, channel: &str);
    fn vacated(&self, channel: &str);
}

struct Subscriber {
    sink: Arc<dyn ClientSink>,
    /// Live publications held back while the subscription's history is being read.
    pending: Option<Vec<Publication>>,
}

#[derive(Default)]
struct Channel {
    subscribers: SmallMap<ClientId, Subscriber>,
    /// Last position delivered on this node: repeats are dropped.
    last: Option<(u64, Arc<str>)>,
}

/// Counters for metrics and `/api/info`.
#[derive(Default)]
pub struct HubStats {
    pub connections: AtomicI64,
    pub subscriptions: AtomicI64,
    pub messages_in: AtomicU64,
    pub messages_out: AtomicU64,
    pub bytes_out: AtomicU64,
    pub connections_total: AtomicU64,
}

/// What a subscribe answers: the channel's position and, with `since`, whether every missed
/// message was recovered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeReply {
    pub position: StreamPosition,
    pub recovered: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HubError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The client went away (or was unsubscribed) while the command ran.
    #[error("client is gone")]
    Gone,
    #[error("subscription overflowed while recovering")]
    Overflow,
    /// The answer would be larger than `max_reply_bytes`.
    #[error("{0}")]
    TooLarge(String),
}

/// A map split into independently locked shards.
type Sharded<K, V> = Box<[Mutex<HashMap<K, V>>]>;

pub struct Hub {
    pub config: HubConfig,
    engine: Arc<dyn Engine>,
    hasher: RandomState,
    channels: Sharded<String, Channel>,
    clients: Sharded<ClientId, Arc<ClientEntry>>,
    /// The connections of each user, for disconnecting or unsubscribing a user.
    users: Sharded<Arc<str>, Vec<ClientId>>,
    /// This node's members of each room, by peer id.
    pub(crate) rooms: Sharded<String, HashMap<Arc<str>, Arc<dyn ClientSink>>>,
    /// ICE servers handed to peers joining rooms.
    pub(crate) ice: std::sync::OnceLock<Arc<dyn crate::rooms::IceServers>>,
    occupancy: std::sync::OnceLock<Arc<dyn OccupancyObserver>>,
    extension: std::sync::OnceLock<Arc<dyn NodeExtension>>,
    media_rooms: std::sync::OnceLock<Arc<dyn MediaRooms>>,
    pub stats: HubStats,
    started: std::time::Instant,
}

fn shards<T: Default>() -> Box<[Mutex<T>]> {
    (0..SHARDS).map(|_| Mutex::new(T::default())).collect()
}

impl Hub {
    pub fn new(config: HubConfig, engine: Arc<dyn Engine>) -> Arc<Hub> {
        let hub = Arc::new(Hub {
            config,
            engine: engine.clone(),
            hasher: RandomState::new(),
            channels: shards(),
            clients: shards(),
            users: shards(),
            rooms: shards(),
            ice: std::sync::OnceLock::new(),
            occupancy: std::sync::OnceLock::new(),
            extension: std::sync::OnceLock::new(),
            media_rooms: std::sync::OnceLock::new(),
            stats: HubStats::default(),
            started: std::time::Instant::now(),
        });
        let handler: Weak<dyn EngineHandler> =
            Arc::downgrade(&(hub.clone() as Arc<dyn EngineHandler>));
        engine.set_handler(handler);
        hub
    }

    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.engine
    }

    /// Sets who hears of channels becoming occupied or vacated (once; later calls are
    /// ignored).
    pub fn set_occupancy_observer(&self, observer: Arc<dyn OccupancyObserver>) {
        let _ = self.occupancy.set(observer);
    }

    /// Sets who answers [`NodeRequest::Extension`] requests on this node (once).
    pub fn set_node_extension(&self, extension: Arc<dyn NodeExtension>) {
        let _ = self.extension.set(extension);
    }

    /// Sets who tells this node's media peers in a room (once).
    pub fn set_media_rooms(&self, media: Arc<dyn MediaRooms>) {
        let _ = self.media_rooms.set(media);
    }

    /// The nodes whose SFU holds media of `room`, as `(node id, node name, peers)`. A
    /// room's media lives on the node its peers reached (SFU rooms do not span nodes).
    pub async fn media_nodes(&self, room: &str) -> Result<Vec<(String, String, usize)>, HubError> {
        let request = NodeRequest::MediaRoom {
            room: room.to_owned(),
        };
        let answers = self.engine.ask_nodes(request).await?;
        Ok(answers
            .into_iter()
            .filter_map(|answer| match answer {
                NodeAnswer::Media { node, name, peers } if peers > 0 => Some((node, name, peers)),
                _ => None,
            })
            .collect())
    }

    /// Runs a module's request on every node; the sum of their counts.
    pub async fn ask_extension(&self, name: &str, argument: &str) -> Result<usize, HubError> {
        let request = NodeRequest::Extension {
            name: name.to_owned(),
            argument: argument.to_owned(),
        };
        let answers = self.engine.ask_nodes(request).await?;
        Ok(answers.iter().map(NodeAnswer::count).sum())
    }

    pub fn uptime(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    pub(crate) fn shard_of<'a, T>(&self, shards: &'a [Mutex<T>], key: &str) -> &'a Mutex<T> {
        &shards[(self.hasher.hash_one(key) as usize) % SHARDS]
    }

    fn stream_options(&self, channel: &str) -> StreamOptions {
        self.config.stream_options(channel)
    }

    // ---- clients ----

    /// Registers a connected client.
    pub fn register(
        &self,
        user: &str,
        info: Option<Bytes>,
        exp: Option<u64>,
        sink: Arc<dyn ClientSink>,
    ) -> Arc<ClientEntry> {
        self.register_client(user, info, exp, sink, false)
    }

    /// Registers a short-lived client that receives messages but is no member of presence
    /// (one long-poll request).
    pub fn register_observer(
        &self,
        user: &str,
        exp: Option<u64>,
        sink: Arc<dyn ClientSink>,
    ) -> Arc<ClientEntry> {
        self.register_client(user, None, exp, sink, true)
    }

    fn register_client(
        &self,
        user: &str,
        info: Option<Bytes>,
        exp: Option<u64>,
        sink: Arc<dyn ClientSink>,
        observer: bool,
    ) -> Arc<ClientEntry> {
        let id: ClientId = rand::random();
        let entry = Arc::new(ClientEntry {
            id,
            id_str: format!("{id:016x}").into(),
            user: user.into(),
            info,
            sink,
            exp: AtomicU64::new(exp.unwrap_or(0)),
            channels: Mutex::new(HashSet::new()),
            observer,
            extras: Mutex::new(None),
        });
        self.clients[(id as usize) % SHARDS]
            .lock()
            .insert(id, entry.clone());
        if !user.is_empty() {
            self.shard_of(&self.users, user)
                .lock()
                .entry(entry.user.clone())
                .or_default()
                .push(id);
        }
        self.stats.connections.fetch_add(1, Ordering::Relaxed);
        self.stats.connections_total.fetch_add(1, Ordering::Relaxed);
        entry
    }

    /// Removes a client that went away, with its subscriptions, presence and rooms.
    pub async fn unregister(&self, client: &Arc<ClientEntry>) {
        let channels: Vec<Arc<str>> = client.channels.lock().iter().cloned().collect();
        for channel in channels {
            self.unsubscribe(client, &channel).await;
        }
        for room in client.rooms() {
            self.leave_room(client, &room).await;
        }
        self.clients[(client.id as usize) % SHARDS]
            .lock()
            .remove(&client.id);
        if !client.user.is_empty() {
            let mut users = self.shard_of(&self.users, &client.user).lock();
            if let Some(ids) = users.get_mut(&client.user) {
                ids.retain(|id| *id != client.id);
                if ids.is_empty() {
                    users.remove(&client.user);
                }
            }
        }
        self.stats.connections.fetch_sub(1, Ordering::Relaxed);
    }

    fn clients_of(&self, user: &str) -> Vec<Arc<ClientEntry>> {
        let ids = self
            .shard_of(&self.users, user)
            .lock()
            .get(user)
            .cloned()
            .unwrap_or_default();
        ids.iter()
            .filter_map(|id| {
                self.clients[(*id as usize) % SHARDS]
                    .lock()
                    .get(id)
                    .cloned()
            })
            .collect()
    }

    fn for_each_client(&self, mut f: impl FnMut(&Arc<ClientEntry>)) {
        for shard in self.clients.iter() {
            let clients: Vec<Arc<ClientEntry>> = shard.lock().values().cloned().collect();
            clients.iter().for_each(&mut f);
        }
    }

    /// Connections of `user` on this node (not counting long polls in flight).
    pub fn user_connection_count(&self, user: &str) -> usize {
        self.clients_of(user).iter().filter(|c| !c.observer).count()
    }

    /// Disconnects every connection of `user`; returns how many.
    pub fn disconnect_user(&self, user: &str, reason: Disconnect) -> usize {
        let clients = self.clients_of(user);
        for client in &clients {
            client.sink.disconnect(reason);
        }
        clients.len()
    }

    /// Unsubscribes every connection of `user` from `channel`, telling each with an
    /// `{"type":"unsubscribed"}` push; returns how many were subscribed.
    pub async fn unsubscribe_user(&self, user: &str, channel: &str) -> usize {
        let mut count = 0;
        for client in self.clients_of(user) {
            if self.unsubscribe(&client, channel).await {
                let frame = encode::unsubscribed(channel, "unsubscribed by the server");
                client.sink.send(&Arc::new(Outgoing::new(frame)));
                count += 1;
            }
        }
        count
    }

    /// Closes connections whose token expired (`now` in Unix seconds); returns how many.
    /// Observers (one long poll each) are left alone: a poll's token is checked when it
    /// starts and the poll ends by its own timeout, while the poller's session, which a
    /// `refresh` keeps alive, is the connection that expires.
    pub fn expire_tokens(&self, now: u64) -> usize {
        let mut expired = 0;
        self.for_each_client(|client| {
            let exp = client.exp.load(Ordering::Relaxed);
            if exp != 0 && exp <= now && !client.observer {
                client.sink.disconnect(Disconnect::TOKEN_EXPIRED);
                expired += 1;
            }
        });
        expired
    }

    /// Gives every connection's door a chance to send a keep-alive.
    pub fn heartbeat(&self) {
        self.for_each_client(|client| client.sink.heartbeat());
    }

    /// Tells every client the server is going away.
    pub fn shutdown(&self) {
        self.for_each_client(|client| client.sink.disconnect(Disconnect::SHUTDOWN));
    }

    pub fn connection_count(&self) -> usize {
        self.clients.iter().map(|s| s.lock().len()).sum()
    }

    // ---- channels ----

    /// Subscribes `client` to `channel`. With `since`, the missed messages history still
    /// holds are queued after the reply, then the live ones, with no gap and no repeat.
    /// `reply` is called under the channel's lock, before any message of the channel is
    /// queued, so a door can put the reply first on the wire.
    pub async fn subscribe(
        &self,
        client: &Arc<ClientEntry>,
        channel: &str,
        since: Option<Position>,
        reply: &mut (dyn FnMut(&SubscribeReply) + Send),
    ) -> Result<SubscribeReply, HubError> {
        let ns = self.config.namespace(channel);
        let first = {
            let mut shard = self.shard_of(&self.channels, channel).lock();
            let entry = shard.entry(channel.to_owned()).or_default();
            let first = entry.subscribers.is_empty();
            entry.subscribers.insert(
                client.id,
                Subscriber {
                    sink: client.sink.clone(),
                    pending: Some(Vec::new()),
                },
            );
            // Under the channel's lock, so occupied and vacated reach the observer in the
            // order they happened.
            if first && let Some(observer) = self.occupancy.get() {
                observer.occupied(channel);
            }
            first
        };
        client.channels.lock().insert(channel.into());
        self.stats.subscriptions.fetch_add(1, Ordering::Relaxed);

        let history = self.subscribe_engine(channel, first, since.as_ref()).await;
        let history = match history {
            Ok(h) => h,
            Err(e) => {
                self.unsubscribe(client, channel).await;
                return Err(e.into());
            }
        };
        let answer = SubscribeReply {
            position: history.position.clone(),
            recovered: since.as_ref().map(|_| history.complete),
        };
        self.flush_recovery(client, channel, since.as_ref(), history, &answer, reply)?;

        // The reply is out and the subscription live: a failure to record presence or announce
        // the join must not turn it into an error. Presence entries of a distributed engine
        // expire, so a missed one heals itself.
        let member = client.member_in(channel);
        if ns.presence && !client.observer {
            let _ = self.engine.presence_add(channel, member.clone()).await;
        }
        if self.config.join_leave(channel) && !client.observer {
            let _ = self
                .engine
                .publish_presence_event(channel, PresenceEvent::Join, member)
                .await;
        }
        Ok(answer)
    }

    async fn subscribe_engine(
        &self,
        channel: &str,
        first: bool,
        since: Option<&Position>,
    ) -> Result<HistoryResult, EngineError> {
        if first {
            self.engine.subscribe(channel).await?;
        }
        let query = HistoryQuery {
            since: since.map(|p| (p.offset, p.epoch.clone())),
            limit: if since.is_some() { None } else { Some(0) },
        };
        self.engine
            .history(channel, query, self.stream_options(channel))
            .await
    }

    /// Sends the reply, the recovered messages and what arrived meanwhile, then switches the
    /// subscriber to live delivery, all under the channel lock.
    fn flush_recovery(
        &self,
        client: &ClientEntry,
        channel: &str,
        since: Option<&Position>,
        history: HistoryResult,
        answer: &SubscribeReply,
        reply: &mut (dyn FnMut(&SubscribeReply) + Send),
    ) -> Result<(), HubError> {
        let mut shard = self.shard_of(&self.channels, channel).lock();
        let subscriber = shard
            .get_mut(channel)
            .and_then(|c| c.subscribers.get_mut(&client.id))
            .ok_or(HubError::Gone)?;
        let Some(pending) = subscriber.pending.take() else {
            return Err(HubError::Overflow);
        };
        client.sink.subscribed(channel, &answer.position);
        reply(answer);
        let epoch = history.position.epoch.clone();
        // Offset 0 has seen nothing, so it continues whatever epoch the stream has.
        let mut last = match since {
            Some(p) if *p.epoch == *epoch || p.offset == 0 => p.offset,
            _ => history.position.offset,
        };
        let mut delivered = 0u64;
        for publication in history.publications.iter().chain(pending.iter()) {
            if publication.epoch == epoch && publication.offset <= last {
                continue;
            }
            last = publication.offset;
            let frame = Arc::new(Outgoing::message(channel, publication));
            if client.sink.send_recovered(&frame) {
                delivered += 1;
            }
        }
        self.stats
            .messages_out
            .fetch_add(delivered, Ordering::Relaxed);
        Ok(())
    }

    /// Unsubscribes `client` from `channel`; returns whether it was subscribed.
    pub async fn unsubscribe(&self, client: &Arc<ClientEntry>, channel: &str) -> bool {
        if !client.channels.lock().remove(channel) {
            return false;
        }
        let now_empty = {
            let mut shard = self.shard_of(&self.channels, channel).lock();
            let Some(entry) = shard.get_mut(channel) else {
                return false;
            };
            entry.subscribers.remove(&client.id);
            let empty = entry.subscribers.is_empty();
            if empty {
                shard.remove(channel);
                if let Some(observer) = self.occupancy.get() {
                    observer.vacated(channel);
                }
            }
            empty
        };
        self.stats.subscriptions.fetch_sub(1, Ordering::Relaxed);
        let member = client.member_in(channel);
        client.forget_channel_member(channel);
        // Engine failures here only delay cleanup (presence entries expire with the engine).
        if now_empty {
            let _ = self.engine.unsubscribe(channel).await;
        }
        let ns = self.config.namespace(channel);
        if ns.presence && !client.observer {
            let _ = self.engine.presence_remove(channel, &client.id_str).await;
        }
        if self.config.join_leave(channel) && !client.observer {
            let _ = self
                .engine
                .publish_presence_event(channel, PresenceEvent::Leave, member)
                .await;
        }
        true
    }

    /// Publishes `data` (valid JSON) to `channel` and returns its position.
    pub async fn publish(&self, channel: &str, data: Bytes) -> Result<StreamPosition, HubError> {
        self.stats.messages_in.fetch_add(1, Ordering::Relaxed);
        Ok(self
            .engine
            .publish(channel, data, self.stream_options(channel))
            .await?)
    }

    /// `channel`'s history for a reply: at most `max_reply_bytes` of messages (the first ones
    /// after `since`, else the latest), so no command builds an unbounded reply; a client
    /// pages on with `since`.
    pub async fn history(
        &self,
        channel: &str,
        query: HistoryQuery,
    ) -> Result<HistoryResult, HubError> {
        let oldest_first = query.since.is_some();
        let mut history = self
            .engine
            .history(channel, query, self.stream_options(channel))
            .await?;
        keep_within(
            &mut history.publications,
            self.config.max_reply_bytes,
            oldest_first,
        );
        Ok(history)
    }

    pub async fn presence(&self, channel: &str) -> Result<Vec<PresenceMember>, HubError> {
        Ok(self.engine.presence(channel).await?)
    }

    /// `channel`'s members for a reply, refused when they would take more than
    /// `max_reply_bytes`.
    pub async fn presence_reply(&self, channel: &str) -> Result<Vec<PresenceMember>, HubError> {
        let members = self.presence(channel).await?;
        let size: usize = members.iter().map(member_reply_size).sum();
        if size > self.config.max_reply_bytes {
            return Err(HubError::TooLarge(format!(
                "{} members of {channel} take about {size} bytes, more than max_reply_bytes ({})",
                members.len(),
                self.config.max_reply_bytes
            )));
        }
        Ok(members)
    }

    /// Channels with subscribers on this node, with their subscriber counts.
    pub fn channels(&self) -> Vec<(String, usize)> {
        let mut all = Vec::new();
        for shard in self.channels.iter() {
            let shard = shard.lock();
            all.extend(shard.iter().map(|(n, c)| (n.clone(), c.subscribers.len())));
        }
        all.sort();
        all
    }

    /// Subscribers of `channel` on every node sharing the engine.
    pub async fn cluster_subscriber_count(&self, channel: &str) -> Result<usize, HubError> {
        let request = NodeRequest::Subscribers {
            channel: channel.to_owned(),
        };
        let answers = self.engine.ask_nodes(request).await?;
        Ok(answers.iter().map(NodeAnswer::count).sum())
    }

    /// Channels with subscribers on any node sharing the engine, with their total counts.
    pub async fn cluster_channels(&self) -> Result<Vec<(String, usize)>, HubError> {
        let answers = self.engine.ask_nodes(NodeRequest::Channels).await?;
        let mut totals: std::collections::BTreeMap<String, usize> = Default::default();
        for answer in answers {
            if let NodeAnswer::Channels { channels } = answer {
                for (name, count) in channels {
                    *totals.entry(name).or_default() += count;
                }
            }
        }
        Ok(totals.into_iter().collect())
    }

    /// Subscribers of `channel` on this node.
    pub fn subscriber_count(&self, channel: &str) -> usize {
        self.shard_of(&self.channels, channel)
            .lock()
            .get(channel)
            .map_or(0, |c| c.subscribers.len())
    }

    pub fn channel_count(&self) -> usize {
        self.channels.iter().map(|s| s.lock().len()).sum()
    }
}

impl EngineHandler for Hub {
    fn on_publication(&self, channel: &str, publication: &Publication) {
        let mut shard = self.shard_of(&self.channels, channel).lock();
        let Some(entry) = shard.get_mut(channel) else {
            return;
        };
        if let Some((last, epoch)) = &entry.last
            && *epoch == publication.epoch
            && publication.offset <= *last
        {
            return;
        }
        entry.last = Some((publication.offset, publication.epoch.clone()));
        let frame = Arc::new(Outgoing::message(channel, publication));
        let mut delivered = 0u64;
        for subscriber in entry.subscribers.values_mut() {
            match &mut subscriber.pending {
                Some(pending) if pending.len() >= MAX_PENDING => {
                    subscriber.pending = None;
                    subscriber.sink.disconnect(Disconnect::SLOW_CONSUMER);
                }
                Some(pending) => pending.push(publication.clone()),
                None => {
                    if subscriber.sink.send(&frame) {
                        delivered += 1;
                    }
                }
            }
        }
        self.stats
            .messages_out
            .fetch_add(delivered, Ordering::Relaxed);
        self.stats
            .bytes_out
            .fetch_add(delivered * frame.json().len() as u64, Ordering::Relaxed);
    }

    fn on_room_event(&self, room: &str, event: &crate::engine::RoomEvent) {
        self.deliver_room_event(room, event);
    }

    fn on_stream_lost(&self, channel: &str) {
        let sinks: Vec<Arc<dyn ClientSink>> = {
            let shard = self.shard_of(&self.channels, channel).lock();
            shard
                .get(channel)
                .map(|c| c.subscribers.values().map(|s| s.sink.clone()).collect())
                .unwrap_or_default()
        };
        // Outside the channel lock: a door may unsubscribe synchronously while closing.
        for sink in sinks {
            sink.disconnect(Disconnect::STATE_LOST);
        }
    }

    fn on_memberships_lost(&self) {
        self.for_each_client(|client| {
            if !client.observer {
                client.sink.disconnect(Disconnect::STATE_LOST);
            }
        });
    }

    fn on_request(self: Arc<Self>, request: NodeRequest) -> BoxFuture<NodeAnswer> {
        Box::pin(async move {
            match request {
                NodeRequest::DisconnectUser { user } => NodeAnswer::Count {
                    count: self.disconnect_user(&user, Disconnect::BY_SERVER),
                },
                NodeRequest::UnsubscribeUser { user, channel } => NodeAnswer::Count {
                    count: self.unsubscribe_user(&user, &channel).await,
                },
                NodeRequest::Channels => NodeAnswer::Channels {
                    channels: self.channels(),
                },
                NodeRequest::Subscribers { channel } => NodeAnswer::Count {
                    count: self.subscriber_count(&channel),
                },
                NodeRequest::Extension { name, argument } => NodeAnswer::Count {
                    count: self
                        .extension
                        .get()
                        .map_or(0, |e| e.on_request(&name, &argument)),
                },
                NodeRequest::MediaRoom { room } => NodeAnswer::Media {
                    node: self.engine().node_id().to_owned(),
                    name: self.config.node_name.clone(),
                    peers: self.media_rooms.get().map_or(0, |m| m.peers_in(&room)),
                },
            }
        })
    }

    fn node_info(&self) -> NodeInfo {
        NodeInfo {
            id: String::new(),
            name: self.config.node_name.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_seconds: self.uptime().as_secs(),
            connections: self.connection_count(),
            channels: self.channel_count(),
            rooms: self.room_count(),
        }
    }

    fn announces_presence(&self, channel: &str) -> bool {
        self.config.join_leave(channel)
    }

    fn on_presence_event(&self, channel: &str, event: PresenceEvent, member: &PresenceMember) {
        let shard = self.shard_of(&self.channels, channel).lock();
        let Some(entry) = shard.get(channel) else {
            return;
        };
        let frame = Arc::new(Outgoing::presence(event, channel, member));
        for subscriber in entry.subscribers.values() {
            if subscriber.pending.is_none() {
                subscriber.sink.send(&frame);
            }
        }
    }
}

#[cfg(test)]
mod tests;

/// What a message takes in a reply besides its data (`{"type":"message",...}` and position).
const MESSAGE_REPLY_OVERHEAD: usize = 96;

/// Keeps as many of `publications` as fit in `budget` bytes of reply, from the oldest or
/// the newest; always one, so paging with `since` moves on.
fn keep_within(publications: &mut Vec<Publication>, budget: usize, oldest_first: bool) {
    let cost = |p: &Publication| p.data.len() + p.epoch.len() + MESSAGE_REPLY_OVERHEAD;
    let mut used = 0;
    let fit = |p: &&Publication| {
        used += cost(p);
        used <= budget
    };
    let kept = if oldest_first {
        publications.iter().take_while(fit).count()
    } else {
        publications.iter().rev().take_while(fit).count()
    }
    .max(1)
    .min(publications.len());
    if oldest_first {
        publications.truncate(kept);
    } else {
        publications.drain(..publications.len() - kept);
    }
}

/// About what `member` takes in a presence reply.
fn member_reply_size(member: &PresenceMember) -> usize {
    member.client.len() + member.user.len() + member.info.as_ref().map_or(4, |i| i.len()) + 40
}
