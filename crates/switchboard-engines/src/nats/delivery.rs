//! The node's core NATS subscriptions: one per channel (and room) with local interest,
//! counted, so the hub's subscribe/unsubscribe calls may arrive in any order. Each has a task
//! that hands what arrives to the hub in offset order (`order.rs`), fills gaps from JetStream,
//! and after a reconnect catches its channel up, or reports what cannot be recovered.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use switchboard_core::engine::{EngineError, HistoryQuery, Publication, StreamOptions};
use tokio::sync::watch;
use tokio::task::AbortHandle;

use super::Inner;
use super::names::Topic;
use crate::order::{Arrival, CatchUp, ChannelOrder, Position};
use crate::patience::patiently;
use crate::wire::{self, ChannelMessage};

/// After a reconnect JetStream may answer a moment late: a position read is retried this
/// long before the channel is declared lost.

#[derive(Default)]
pub(crate) struct Registry {
    /// Held while a subscription is set up or torn down, so two calls for one topic never
    /// interleave.
    setup: tokio::sync::Mutex<()>,
    topics: parking_lot::Mutex<HashMap<Topic, Entry>>,
}

struct Entry {
    /// Hub calls wanting it: subscribed while above zero.
    refs: usize,
    task: AbortHandle,
}

impl Registry {
    pub(super) fn abort_all(&self) {
        for (_, entry) in self.topics.lock().drain() {
            entry.task.abort();
        }
    }
}

/// This node wants `topic`: subscribes on the first call, counts the others.
pub(crate) async fn subscribe(inner: &Arc<Inner>, topic: Topic) -> Result<(), EngineError> {
    let _setup = inner.subscriptions.setup.lock().await;
    if let Some(entry) = inner.subscriptions.topics.lock().get_mut(&topic) {
        entry.refs += 1;
        return Ok(());
    }
    let subscriber = inner
        .timed(inner.client.subscribe(inner.names.topic(&topic)))
        .await?;
    // Read after subscribing (the server handles this connection's SUB first): every later
    // message reaches us, so where the channel stands now is where checks start.
    let order = match &topic {
        Topic::Channel(channel) => ChannelOrder::starting_at(Some(inner.position(channel).await?)),
        Topic::Room(_) => ChannelOrder::starting_at(Some(None)),
    };
    let delivery = Delivery {
        inner: inner.clone(),
        topic: topic.clone(),
        order,
    };
    let reconnects = inner.reconnected.subscribe();
    let task = tokio::spawn(delivery.run(subscriber, reconnects)).abort_handle();
    inner
        .subscriptions
        .topics
        .lock()
        .insert(topic, Entry { refs: 1, task });
    Ok(())
}

/// One fewer caller wants `topic`; the last one ends the subscription.
pub(crate) async fn unsubscribe(inner: &Arc<Inner>, topic: Topic) {
    let _setup = inner.subscriptions.setup.lock().await;
    let mut topics = inner.subscriptions.topics.lock();
    let Some(entry) = topics.get_mut(&topic) else {
        return;
    };
    entry.refs = entry.refs.saturating_sub(1);
    if entry.refs == 0 {
        // Ending the task drops its subscriber, which unsubscribes at the server.
        if let Some(entry) = topics.remove(&topic) {
            entry.task.abort();
        }
    }
}

struct Delivery {
    inner: Arc<Inner>,
    topic: Topic,
    order: ChannelOrder,
}

impl Delivery {
    async fn run(
        mut self,
        mut subscriber: async_nats::Subscriber,
        mut reconnects: watch::Receiver<u64>,
    ) {
        loop {
            tokio::select! {
                message = subscriber.next() => match message {
                    Some(message) => self.on_message(&message.payload).await,
                    None => return,
                },
                changed = reconnects.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    self.catch_up().await;
                }
            }
        }
    }

    async fn on_message(&mut self, payload: &[u8]) {
        let Some(handler) = self.inner.handler() else {
            return;
        };
        match &self.topic {
            Topic::Channel(channel) => match wire::decode_channel_message(payload) {
                Some(ChannelMessage::Publication(p)) => self.deliver(p).await,
                Some(ChannelMessage::Presence(event, member)) => {
                    handler.on_presence_event(channel, event, &member)
                }
                None => tracing::warn!("unreadable message on channel {channel}"),
            },
            Topic::Room(room) => match wire::decode_room_event(payload) {
                Some(event) => handler.on_room_event(room, &event),
                None => tracing::warn!("unreadable event in room {room}"),
            },
        }
    }

    fn channel(&self) -> &str {
        match &self.topic {
            Topic::Channel(channel) | Topic::Room(channel) => channel,
        }
    }

    /// Hands `publication` to the hub once, in offset order, filling any gap before it.
    async fn deliver(&mut self, publication: Publication) {
        match self.order.arrival(&publication) {
            Arrival::Repeat => return,
            Arrival::Gap(since) => self.fill(since).await,
            Arrival::Reset => {
                self.lose().await;
                // Checked again from where the channel stands now: a message of an older
                // epoch is not handed over.
                if self.order.arrival(&publication) != Arrival::Next {
                    return;
                }
            }
            Arrival::Next => {}
        }
        self.hand_over(&publication);
    }

    fn hand_over(&mut self, publication: &Publication) {
        if self.order.accept(publication)
            && let Some(handler) = self.inner.handler()
        {
            handler.on_publication(self.channel(), publication);
        }
    }

    /// Delivers what history holds after `since`, or reports the channel lost when history
    /// no longer has all of it.
    async fn fill(&mut self, since: Position) {
        let channel = self.channel().to_owned();
        let options = StreamOptions {
            // Everything history still holds counts, however old.
            history_ttl: Duration::from_secs(u32::MAX as u64),
            ..(self.inner.stream_options)(&channel)
        };
        let query = HistoryQuery {
            since: Some((since.0, since.1.to_string())),
            limit: None,
        };
        let inner = &self.inner;
        match patiently(|| inner.history(&channel, &query, options)).await {
            Ok(result) if result.complete => {
                for publication in &result.publications {
                    self.hand_over(publication);
                }
            }
            Ok(_) | Err(_) => self.lose().await,
        }
    }

    /// This node missed messages of the channel for good: the hub's subscribers are told to
    /// come back with `since`. Later checks start from where the channel stands now.
    async fn lose(&mut self) {
        let channel = self.channel().to_owned();
        tracing::warn!("channel {channel} lost messages on this node; its clients must recover");
        self.inner
            .stats
            .streams_lost
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let now = self.inner.position(&channel).await.ok();
        self.order.restart_at(now);
        if let Some(handler) = self.inner.handler() {
            handler.on_stream_lost(&channel);
        }
    }

    /// After a reconnect: the channel gets what it missed from history, or is reported lost.
    async fn catch_up(&mut self) {
        let Topic::Channel(channel) = &self.topic else {
            return;
        };
        let channel = channel.clone();
        let now = patiently(|| self.inner.position(&channel)).await;
        match self.order.catch_up(&now) {
            CatchUp::Nothing => {}
            CatchUp::Fill(since) => self.fill(since).await,
            CatchUp::Lost => self.lose().await,
        }
    }
}
