//! Nodes sharing one NATS: heartbeats and the node list, reaping a dead node's presence
//! members and room peers (with the leave events it can no longer send), and server API
//! requests answered by every node.
//!
//! Reaping needs no lock: several live nodes may reap the same dead one at once, but a
//! member's subject is purged (and a peer removed from its roster) by exactly one of them,
//! and only that one announces the leave.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use async_nats::jetstream::consumer::DeliverPolicy;
use futures_util::StreamExt;
use switchboard_core::engine::{
    EngineError, NodeAnswer, NodeInfo, NodeRequest, PresenceEvent, RoomEvent,
};

use super::members::{Change, roster_of};
use super::names::Topic;
use super::{ASK_TIMEOUT, Inner, unavailable};
use crate::liveness::beat_interval;
use crate::wire::{self, ControlReply, ControlRequest, Stored};

/// The nodes as their heartbeats tell.
pub(crate) struct NodeList {
    pub live: Vec<NodeInfo>,
    pub dead: Vec<String>,
}

/// Forever: beat, learn which nodes died, and reap them.
///
/// A node that could not beat itself lately (NATS was unreachable) judges no one: the
/// others were cut off too, and their silence proves nothing until they had `node_ttl` to
/// beat again.
pub(crate) async fn heartbeat(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(beat_interval(inner.node_ttl));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut beating_since = tokio::time::Instant::now();
    loop {
        tick.tick().await;
        if let Err(e) = beat(&inner).await {
            tracing::warn!("nats heartbeat failed: {e}");
            beating_since = tokio::time::Instant::now();
            continue;
        }
        if beating_since.elapsed() < inner.node_ttl {
            continue; // just started or just back: nobody is judged yet
        }
        match read(&inner).await {
            Ok(list) => {
                let dead: HashSet<String> = list.dead.into_iter().collect();
                *inner.dead.write() = dead.clone();
                for node in &dead {
                    if let Err(e) = reap(&inner, node).await {
                        tracing::warn!("reaping dead node {node}: {e}");
                    }
                }
            }
            Err(e) => tracing::warn!("reading the node list: {e}"),
        }
    }
}

/// Records this node's description; the time JetStream stamps on it is the heartbeat.
///
/// Each beat replaces the previous one only if that is still there (compare-and-set on its
/// sequence): when it is not, this node was reaped while alive (a stall longer than
/// `node_ttl`) or NATS lost its data, and with it this node's presence members and room peers.
pub(crate) async fn beat(inner: &Inner) -> Result<(), EngineError> {
    let mut info = inner.handler().map(|h| h.node_info()).unwrap_or_default();
    info.id = inner.node.clone();
    let payload = bytes::Bytes::from(serde_json::to_vec(&info).map_err(unavailable)?);
    let subject = inner.names.node(&inner.node);
    let previous = inner.last_beat.load(Ordering::Relaxed);
    let expected = (previous > 0).then_some(previous);
    let sequence = match inner
        .append(subject.clone(), expected, None, payload.clone())
        .await?
    {
        Some(sequence) => sequence,
        None => {
            // Not the beat we expected. If the record is there, it is ours: a beat whose
            // acknowledgement was lost (NATS went down meanwhile). Only a missing record means
            // this node was reaped, or NATS lost its data.
            let current = inner.last(&inner.names.nodes_stream(), &subject).await?;
            if current.is_none() {
                tracing::warn!(
                    "this node's record vanished from NATS (reaped during a stall, or NATS lost \
                     its data): its presence members and room peers are gone; reconnecting its \
                     clients so they are recorded again"
                );
                if let Some(handler) = inner.handler() {
                    handler.on_memberships_lost();
                }
            }
            let expected = current.map(|message| message.sequence).unwrap_or(0);
            inner
                .append(subject, Some(expected), None, payload)
                .await?
                .ok_or_else(|| unavailable("heartbeat raced itself"))?
        }
    };
    inner.last_beat.store(sequence, Ordering::Relaxed);
    Ok(())
}

/// Every node's last heartbeat: live ones (sorted by id) and dead ones.
///
/// Beats are judged by the times JetStream stamped on them, against the newest beat (this
/// node's own, just written): one clock for every node, so nodes whose clocks disagree do not
/// take each other for dead.
pub(crate) async fn read(inner: &Inner) -> Result<NodeList, EngineError> {
    let messages = inner
        .read(
            &inner.names.nodes_stream(),
            inner.names.nodes_subjects(),
            DeliverPolicy::LastPerSubject,
        )
        .await?;
    let beats: Vec<(i128, NodeInfo)> = messages
        .iter()
        .filter_map(|message| {
            let stamped = message.info().ok()?.published.unix_timestamp_nanos();
            Some((stamped, serde_json::from_slice(&message.payload).ok()?))
        })
        .collect();
    let newest = beats.iter().map(|(stamped, _)| *stamped).max().unwrap_or(0);
    let cutoff = newest - inner.node_ttl.as_nanos() as i128;
    let mut list = NodeList {
        live: Vec::new(),
        dead: Vec::new(),
    };
    for (stamped, info) in beats {
        if stamped >= cutoff || info.id == inner.node {
            list.live.push(info);
        } else {
            list.dead.push(info.id);
        }
    }
    list.live.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(list)
}

/// Removes a dead node's members everywhere it held them, announcing each leave once, then
/// the node itself.
async fn reap(inner: &Inner, dead: &str) -> Result<(), EngineError> {
    reap_presence(inner, dead).await?;
    reap_rooms(inner, dead).await?;
    tracing::info!("node {dead} stopped beating; its members were removed");
    inner
        .purge(&inner.names.nodes_stream(), &inner.names.node(dead))
        .await
        .map(drop)
}

async fn reap_presence(inner: &Inner, dead: &str) -> Result<(), EngineError> {
    let stream = inner.names.presence_stream();
    let held = inner
        .read(
            &stream,
            inner.names.presence_held_by(dead),
            DeliverPolicy::LastPerSubject,
        )
        .await?;
    for message in held {
        let Some((channel, client)) = inner.names.parse_presence(&message.subject) else {
            continue;
        };
        let purged = inner.purge(&stream, &message.subject).await?;
        let announce = inner
            .handler()
            .is_some_and(|h| h.announces_presence(&channel));
        if purged > 0
            && announce
            && let Some(stored) = Stored::decode(&message.payload)
        {
            let member = stored.into_member(&client);
            let payload = wire::encode_presence(PresenceEvent::Leave, &member);
            inner
                .core_publish(&Topic::Channel(channel), payload)
                .await?;
        }
    }
    Ok(())
}

async fn reap_rooms(inner: &Inner, dead: &str) -> Result<(), EngineError> {
    let rosters = inner
        .read(
            &inner.names.rooms_stream(),
            inner.names.rooms_subjects(),
            DeliverPolicy::LastPerSubject,
        )
        .await?;
    for message in rosters {
        let Some(room) = inner.names.parse_room_roster(&message.subject) else {
            continue;
        };
        let holds_dead = roster_of(&message.payload)
            .map(|roster| roster.iter().any(|p| p.node() == dead))
            .unwrap_or(false);
        if !holds_dead {
            continue;
        }
        let removed: Vec<String> = inner
            .change_roster(&room, |roster| {
                let gone: Vec<String> = roster
                    .iter()
                    .filter(|p| p.node() == dead)
                    .map(|p| p.id().to_owned())
                    .collect();
                roster.retain(|p| p.node() != dead);
                if gone.is_empty() {
                    Change::Keep(gone)
                } else {
                    Change::Write(gone)
                }
            })
            .await?;
        for peer in removed {
            let left = RoomEvent::Left { peer: peer.into() };
            if let Some(payload) = wire::encode_room_event(&left) {
                inner
                    .core_publish(&Topic::Room(room.clone()), payload)
                    .await?;
            }
        }
    }
    Ok(())
}

/// Subscribes the control subject; the returned future answers every request on it.
pub(crate) async fn listen(
    inner: &Arc<Inner>,
) -> Result<impl Future<Output = ()> + use<>, EngineError> {
    let mut requests = inner
        .timed(inner.client.subscribe(inner.names.control()))
        .await?;
    let inner = inner.clone();
    Ok(async move {
        while let Some(message) = requests.next().await {
            let (Some(reply), Ok(request)) = (
                message.reply,
                serde_json::from_slice::<ControlRequest>(&message.payload),
            ) else {
                continue;
            };
            tokio::spawn(answer(inner.clone(), request, reply.to_string()));
        }
    })
}

/// Runs another node's (or our own) request here and sends the answer back.
async fn answer(inner: Arc<Inner>, request: ControlRequest, reply: String) {
    let Some(handler) = inner.handler() else {
        return;
    };
    let answer = handler.on_request(request.request).await;
    let Ok(payload) = serde_json::to_vec(&ControlReply {
        id: request.id,
        answer,
    }) else {
        return;
    };
    if let Err(e) = inner
        .timed(inner.client.publish(reply, payload.into()))
        .await
    {
        tracing::warn!("answering node {}: {e}", request.from);
    }
}

/// Runs `request` on every live node and gathers their answers. A node that does not answer
/// within the timeout is left out.
pub(crate) async fn ask(
    inner: &Inner,
    request: NodeRequest,
) -> Result<Vec<NodeAnswer>, EngineError> {
    let nodes = read(inner).await?.live.len();
    let inbox = inner.client.new_inbox();
    let mut answers = inner.timed(inner.client.subscribe(inbox.clone())).await?;
    let asked = ControlRequest {
        from: inner.node.clone(),
        id: 0,
        request,
    };
    let payload = serde_json::to_vec(&asked).map_err(unavailable)?;
    inner
        .timed(
            inner
                .client
                .publish_with_reply(inner.names.control(), inbox, payload.into()),
        )
        .await?;
    let mut gathered = Vec::with_capacity(nodes);
    let deadline = tokio::time::Instant::now() + ASK_TIMEOUT;
    while gathered.len() < nodes {
        match tokio::time::timeout_at(deadline, answers.next()).await {
            Ok(Some(message)) => {
                if let Ok(reply) = serde_json::from_slice::<ControlReply>(&message.payload) {
                    gathered.push(reply.answer);
                }
            }
            _ => {
                tracing::warn!("{} of {nodes} nodes answered in time", gathered.len());
                break;
            }
        }
    }
    Ok(gathered)
}
