//! The node's one Redis pub/sub connection: one subscription per channel (and room) with
//! local interest, counted, so the hub's subscribe/unsubscribe calls may arrive in any order.
//! It hands what arrives to the hub in order, fills gaps from history, and after a lost
//! connection resubscribes and catches every channel up, or reports what cannot be recovered.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::RedisResult;
use redis::aio::{PubSubSink, PubSubStream};
use switchboard_core::engine::{EngineError, HistoryQuery, Publication, StreamOptions};
use tokio::sync::{mpsc, oneshot};

use super::keys::Topic;
use super::{Inner, unavailable};
use crate::order::{Arrival, CatchUp, ChannelOrder, Position};
use crate::patience::patiently;
use crate::wire::{self, ChannelMessage, ControlReply, ControlRequest};

pub(crate) enum SubCommand {
    Subscribe {
        topic: Topic,
        reply: oneshot::Sender<Result<(), EngineError>>,
    },
    Unsubscribe {
        topic: Topic,
    },
}

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How often the connection is checked, and how long a check may take: a half-dead
/// connection that delivers nothing must not pass for a quiet one.
const PING_EVERY: Duration = Duration::from_secs(3);
const PING_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Reading history to fill a gap: no trimming (the namespace's settings are not known here;
/// publishes and reads trim).
const FILL_OPTIONS: StreamOptions = StreamOptions {
    history_size: usize::MAX,
    history_ttl: Duration::from_secs(super::MAX_TTL_SECS),
};

struct Subscription {
    topic: Topic,
    /// Hub calls wanting it: subscribed while above zero.
    refs: usize,
    /// SUBSCRIBE confirmed on the current connection.
    live: bool,
    /// For a channel, what was handed to the hub (gaps, repeats).
    order: ChannelOrder,
}

pub(crate) struct Subscriber {
    inner: Arc<Inner>,
    client: redis::Client,
    subs: HashMap<String, Subscription>,
    connection: Option<(PubSubSink, PubSubStream)>,
}

enum Ended {
    ConnectionLost,
    EngineDropped,
}

impl Subscriber {
    /// Connects and subscribes the node's permanent topics (control, replies).
    pub(super) async fn connect(
        inner: Arc<Inner>,
        client: redis::Client,
    ) -> RedisResult<Subscriber> {
        let mut subscriber = Subscriber {
            inner,
            client,
            subs: HashMap::new(),
            connection: None,
        };
        for topic in [Topic::Control, Topic::Replies] {
            let name = subscriber.name(&topic);
            subscriber.subs.insert(name, Subscription::new(topic, 1));
        }
        subscriber.open().await?;
        Ok(subscriber)
    }

    fn name(&self, topic: &Topic) -> String {
        self.inner.keys.topic(topic, &self.inner.node)
    }

    /// A new connection, subscribed to every topic wanted.
    async fn open(&mut self) -> RedisResult<()> {
        let pubsub = tokio::time::timeout(CONNECT_TIMEOUT, self.client.get_async_pubsub())
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        let (mut sink, stream) = pubsub.split();
        let names: Vec<&String> = self.subs.keys().collect();
        sink.subscribe(names).await?;
        for sub in self.subs.values_mut() {
            sub.live = true;
        }
        self.connection = Some((sink, stream));
        Ok(())
    }

    pub(super) async fn run(mut self, mut commands: mpsc::UnboundedReceiver<SubCommand>) {
        loop {
            match self.serve(&mut commands).await {
                Ended::EngineDropped => return,
                Ended::ConnectionLost => {}
            }
            tracing::warn!("redis pub/sub connection lost; reconnecting");
            self.connection = None;
            for sub in self.subs.values_mut() {
                sub.live = false;
            }
            let mut backoff = MIN_BACKOFF;
            loop {
                if !self.wait_offline(&mut commands, backoff).await {
                    return;
                }
                match self.open().await {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::debug!("redis pub/sub reconnect failed: {e}");
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            }
            self.inner
                .stats
                .reconnects
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::info!("redis pub/sub reconnected");
            self.inner.beat_now.notify_one();
            self.catch_up().await;
        }
    }

    /// Waits `pause` while disconnected, refusing subscriptions (they will be retried by
    /// their callers) and counting unsubscriptions. False when the engine is gone.
    async fn wait_offline(
        &mut self,
        commands: &mut mpsc::UnboundedReceiver<SubCommand>,
        pause: Duration,
    ) -> bool {
        let deadline = tokio::time::sleep(pause);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => return true,
                command = commands.recv() => match command {
                    None => return false,
                    Some(SubCommand::Subscribe { topic, reply }) => {
                        // Counted anyway: the caller's cleanup unsubscribes it.
                        self.count_in(topic);
                        let _ = reply.send(Err(unavailable("reconnecting to Redis")));
                    }
                    Some(SubCommand::Unsubscribe { topic }) => {
                        self.count_out(&topic);
                    }
                },
            }
        }
    }

    fn count_in(&mut self, topic: Topic) -> String {
        let name = self.name(&topic);
        self.subs
            .entry(name.clone())
            .or_insert_with(|| Subscription::new(topic, 0))
            .refs += 1;
        name
    }

    /// One fewer caller wants `topic`; true when nobody does any more (it is forgotten).
    fn count_out(&mut self, topic: &Topic) -> Option<bool> {
        let name = self.name(topic);
        let sub = self.subs.get_mut(&name)?;
        sub.refs = sub.refs.saturating_sub(1);
        if sub.refs > 0 {
            return Some(false);
        }
        let was_live = sub.live;
        self.subs.remove(&name);
        Some(was_live)
    }

    async fn serve(&mut self, commands: &mut mpsc::UnboundedReceiver<SubCommand>) -> Ended {
        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let Some((sink, stream)) = self.connection.as_mut() else {
                return Ended::ConnectionLost;
            };
            tokio::select! {
                command = commands.recv() => match command {
                    None => return Ended::EngineDropped,
                    Some(command) => {
                        if self.handle(command).await.is_err() {
                            return Ended::ConnectionLost;
                        }
                    }
                },
                message = stream.next() => match message {
                    None => return Ended::ConnectionLost,
                    Some(message) => self.on_message(message).await,
                },
                _ = ping.tick() => {
                    let check = tokio::time::timeout(PING_TIMEOUT, sink.ping::<redis::Value>());
                    if !matches!(check.await, Ok(Ok(_))) {
                        return Ended::ConnectionLost;
                    }
                }
            }
        }
    }

    /// Runs a (un)subscription; an error means the connection is broken.
    async fn handle(&mut self, command: SubCommand) -> RedisResult<()> {
        match command {
            SubCommand::Subscribe { topic, reply } => {
                let name = self.count_in(topic.clone());
                if self.subs[&name].live {
                    let _ = reply.send(Ok(()));
                    return Ok(());
                }
                let sink = &mut self.connection.as_mut().expect("connected").0;
                if let Err(e) = sink.subscribe(&name).await {
                    let _ = reply.send(Err(unavailable(&e)));
                    return Err(e);
                }
                // Where the channel stands now: later messages are checked against it.
                let position = match &topic {
                    Topic::Channel(channel) => Some(self.position(channel).await),
                    _ => None,
                };
                if let Some(sub) = self.subs.get_mut(&name) {
                    sub.live = true;
                    if let Some(position) = position {
                        sub.order = ChannelOrder::starting_at(position.ok());
                    }
                }
                let _ = reply.send(Ok(()));
            }
            SubCommand::Unsubscribe { topic } => {
                if self.count_out(&topic) == Some(true) {
                    let name = self.name(&topic);
                    let sink = &mut self.connection.as_mut().expect("connected").0;
                    sink.unsubscribe(&name).await?;
                }
            }
        }
        Ok(())
    }

    /// A channel's position in Redis: `None` when it has no stream yet.
    async fn position(&self, channel: &str) -> Result<Option<(u64, Arc<str>)>, EngineError> {
        let meta = self.inner.keys.meta(channel);
        let (top, epoch): (Option<u64>, Option<String>) = self
            .inner
            .timed(
                redis::cmd("HMGET")
                    .arg(meta)
                    .arg("t")
                    .arg("e")
                    .query_async(&mut self.inner.conn()),
            )
            .await?;
        Ok(top.zip(epoch).map(|(t, e)| (t, e.into())))
    }

    async fn on_message(&mut self, message: redis::Msg) {
        let name = message.get_channel_name();
        let Some(topic) = self.inner.keys.parse_topic(name, &self.inner.node) else {
            return;
        };
        let payload = message.get_payload_bytes();
        match topic {
            Topic::Channel(channel) => match wire::decode_channel_message(payload) {
                Some(ChannelMessage::Publication(p)) => {
                    let name = name.to_owned();
                    self.deliver(&name, &channel, p).await;
                }
                Some(ChannelMessage::Presence(event, member)) => {
                    if let Some(handler) = self.inner.handler() {
                        handler.on_presence_event(&channel, event, &member);
                    }
                }
                None => tracing::warn!("unreadable message on redis channel {name}"),
            },
            Topic::Room(room) => {
                if let (Some(event), Some(handler)) =
                    (wire::decode_room_event(payload), self.inner.handler())
                {
                    handler.on_room_event(&room, &event);
                }
            }
            Topic::Control => {
                if let Ok(request) = serde_json::from_slice::<ControlRequest>(payload) {
                    tokio::spawn(super::nodes::answer(self.inner.clone(), request));
                }
            }
            Topic::Replies => {
                if let Ok(reply) = serde_json::from_slice::<ControlReply>(payload)
                    && let Some(waiting) = self.inner.pending.lock().get(&reply.id)
                {
                    let _ = waiting.send(reply.answer);
                }
            }
        }
    }

    /// Hands `publication` to the hub once, in offset order, filling any gap before it.
    async fn deliver(&mut self, name: &str, channel: &str, publication: Publication) {
        let Some(sub) = self.subs.get(name) else {
            return;
        };
        match sub.order.arrival(&publication) {
            Arrival::Repeat => return,
            Arrival::Gap(since) => self.fill(name, channel, since).await,
            Arrival::Reset => {
                self.lose(name, channel).await;
                // Checked again from where the channel stands now: a message of an older
                // epoch is not handed over.
                let again = self
                    .subs
                    .get(name)
                    .map(|sub| sub.order.arrival(&publication));
                if again != Some(Arrival::Next) {
                    return;
                }
            }
            Arrival::Next => {}
        }
        self.hand_over(name, channel, &publication);
    }

    fn hand_over(&mut self, name: &str, channel: &str, publication: &Publication) {
        if let Some(sub) = self.subs.get_mut(name)
            && sub.order.accept(publication)
            && let Some(handler) = self.inner.handler()
        {
            handler.on_publication(channel, publication);
        }
    }

    /// Delivers what history holds after `since`, or reports the channel lost when history
    /// no longer has all of it.
    async fn fill(&mut self, name: &str, channel: &str, since: Position) {
        let query = HistoryQuery {
            since: Some((since.0, since.1.to_string())),
            limit: None,
        };
        let inner = &self.inner;
        let result = patiently(|| inner.history(channel, &query, FILL_OPTIONS)).await;
        match result {
            Ok(result) if result.complete => {
                for publication in &result.publications {
                    self.hand_over(name, channel, publication);
                }
            }
            Ok(_) | Err(_) => self.lose(name, channel).await,
        }
    }

    /// This node missed messages of `channel` for good: the hub's subscribers are told to
    /// come back with `since`. Later checks start from where the channel stands now.
    async fn lose(&mut self, name: &str, channel: &str) {
        tracing::warn!("channel {channel} lost messages on this node; its clients must recover");
        self.inner
            .stats
            .streams_lost
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let now = self.position(channel).await;
        if let Some(sub) = self.subs.get_mut(name) {
            sub.order.restart_at(now.ok());
        }
        if let Some(handler) = self.inner.handler() {
            handler.on_stream_lost(channel);
        }
    }

    /// After a reconnect: every channel gets what it missed from history, or is reported lost.
    async fn catch_up(&mut self) {
        let channels: Vec<(String, String)> = self
            .subs
            .iter()
            .filter_map(|(name, sub)| match &sub.topic {
                Topic::Channel(channel) => Some((name.clone(), channel.clone())),
                _ => None,
            })
            .collect();
        for (name, channel) in channels {
            let now = patiently(|| self.position(&channel)).await;
            let Some(sub) = self.subs.get(&name) else {
                continue;
            };
            match sub.order.catch_up(&now) {
                CatchUp::Nothing => {}
                CatchUp::Fill(since) => self.fill(&name, &channel, since).await,
                CatchUp::Lost => self.lose(&name, &channel).await,
            }
        }
    }
}

impl Subscription {
    fn new(topic: Topic, refs: usize) -> Self {
        Subscription {
            topic,
            refs,
            live: false,
            order: ChannelOrder::starting_at(Some(None)),
        }
    }
}
