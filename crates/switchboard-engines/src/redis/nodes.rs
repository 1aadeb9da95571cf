//! Nodes sharing one Redis: heartbeats and the node list, reaping a dead node's presence
//! members and room peers (with the leave events it can no longer send), and server API
//! requests answered by every node.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use redis::AsyncCommands;
use switchboard_core::engine::{EngineError, NodeAnswer, NodeInfo, NodeRequest, PresenceEvent};

use super::keys::Topic;
use super::{ASK_TIMEOUT, Inner, scripts, split_seq, unavailable};
use crate::liveness::{beat_interval, now_millis};
use crate::wire::{self, ControlReply, ControlRequest, Stored};

/// Forever: publish this node's description and heartbeat, learn which nodes died, and reap
/// them.
pub(crate) async fn heartbeat(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(beat_interval(inner.node_ttl));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut first = true;
    let mut failed = false;
    // Others are judged only after this node has beaten for `node_ttl` without a failure: a
    // node back from an outage (or just started) sees every beat that others could not send
    // meanwhile as missing, and must give them one `node_ttl` to beat again.
    let mut judge_from = Instant::now() + inner.node_ttl;
    loop {
        if failed {
            // Redis is back soon after a failure, more often than not: look again quickly,
            // so a wipe is noticed before clients come back.
            tokio::time::sleep(Duration::from_millis(100)).await;
        } else {
            tokio::select! {
                _ = tick.tick() => {}
                _ = inner.beat_now.notified() => {}
            }
        }
        let result = beat(&inner).await;
        failed = result.is_err();
        if failed {
            judge_from = Instant::now() + inner.node_ttl;
        }
        match result {
            Ok((known, dead)) => {
                if !known && !first {
                    // Reaped while alive (a long stall or partition), or Redis lost its
                    // data: our members are gone from Redis though our clients are here.
                    tracing::warn!(
                        "this node's presence and room peers were lost in Redis; reconnecting its clients"
                    );
                    if let Some(handler) = inner.handler() {
                        handler.on_memberships_lost();
                    }
                }
                first = false;
                if Instant::now() < judge_from {
                    continue;
                }
                let dead: HashSet<String> = dead.into_iter().collect();
                for node in &dead {
                    if let Err(e) = reap(&inner, node).await {
                        tracing::warn!("reaping dead node {node}: {e}");
                    }
                }
                *inner.dead.write() = dead;
            }
            Err(e) => tracing::warn!("redis heartbeat failed: {e}"),
        }
    }
}

/// One heartbeat; returns whether Redis still knew this node, and the nodes whose last beat
/// is older than `node_ttl`.
pub(crate) async fn beat(inner: &Inner) -> Result<(bool, Vec<String>), EngineError> {
    let mut info = inner.handler().map(|h| h.node_info()).unwrap_or_default();
    info.id = inner.node.clone();
    let info = serde_json::to_string(&info).map_err(unavailable)?;
    let now = now_millis();
    let cutoff = now.saturating_sub(inner.node_ttl.as_millis() as u64);
    let (_, added, dead): ((), u64, Vec<String>) = inner
        .timed(
            redis::pipe()
                .hset(inner.keys.nodes(), &inner.node, info)
                .zadd(inner.keys.node_seen(), &inner.node, now)
                .zrangebyscore(inner.keys.node_seen(), 0, format!("({cutoff}"))
                .query_async(&mut inner.conn()),
        )
        .await?;
    Ok((added == 0, dead))
}

/// Removes a dead node's members everywhere it held them, announcing each leave once, then
/// the node itself. One live node does it (a lock in Redis), the others skip it.
async fn reap(inner: &Inner, dead: &str) -> Result<(), EngineError> {
    let lock: Option<String> = inner
        .timed(
            redis::cmd("SET")
                .arg(inner.keys.reap_lock(dead))
                .arg(&inner.node)
                .arg("NX")
                .arg("EX")
                .arg(30)
                .query_async(&mut inner.conn()),
        )
        .await?;
    if lock.is_none() {
        return Ok(());
    }
    let holdings_key = inner.keys.node_holdings(dead);
    let holdings: Vec<String> = inner.timed(inner.conn().smembers(&holdings_key)).await?;
    for holding in holdings {
        match holding.split_once(':') {
            Some(("p", channel)) => reap_presence(inner, dead, channel).await?,
            Some(("r", room)) => reap_room(inner, dead, room).await?,
            _ => {}
        }
    }
    tracing::info!("node {dead} stopped beating; its members were removed");
    inner
        .timed(
            redis::pipe()
                .del(&holdings_key)
                .zrem(inner.keys.node_seen(), dead)
                .hdel(inner.keys.nodes(), dead)
                .query_async::<()>(&mut inner.conn()),
        )
        .await
}

async fn reap_presence(inner: &Inner, dead: &str, channel: &str) -> Result<(), EngineError> {
    let key = inner.keys.presence(channel);
    let members: Vec<(String, Vec<u8>)> = inner.timed(inner.conn().hgetall(&key)).await?;
    let announce = inner
        .handler()
        .is_some_and(|h| h.announces_presence(channel));
    for (client, value) in members {
        let Some(stored) = Stored::decode(&value).filter(|s| s.n == dead) else {
            continue;
        };
        let removed: u64 = inner.timed(inner.conn().hdel(&key, &client)).await?;
        if removed == 1 && announce {
            let member = stored.into_member(&client);
            let payload = wire::encode_presence(PresenceEvent::Leave, &member);
            inner
                .publish_raw(&Topic::Channel(channel.into()), payload)
                .await?;
        }
    }
    Ok(())
}

async fn reap_room(inner: &Inner, dead: &str, room: &str) -> Result<(), EngineError> {
    let key = inner.keys.room(room);
    let members: Vec<(String, Vec<u8>)> = inner.timed(inner.conn().hgetall(&key)).await?;
    for (peer, value) in members {
        let is_dead = split_seq(&value)
            .and_then(|(_, stored)| Stored::decode(stored))
            .is_some_and(|s| s.n == dead);
        if !is_dead {
            continue;
        }
        let mut invocation = scripts::ROOM_LEAVE.prepare_invoke();
        invocation
            .key(&key)
            .key(inner.keys.room_meta(room))
            .key(inner.keys.room_seq(room))
            .key(inner.keys.node_holdings(dead))
            .arg(&peer)
            .arg(Stored::marker(dead))
            .arg(format!("r:{room}"));
        let removed: u64 = inner
            .timed(invocation.invoke_async(&mut inner.conn()))
            .await?;
        if removed == 1 {
            let left = switchboard_core::engine::RoomEvent::Left { peer: peer.into() };
            if let Some(payload) = wire::encode_room_event(&left) {
                inner
                    .publish_raw(&Topic::Room(room.into()), payload)
                    .await?;
            }
        }
    }
    Ok(())
}

/// The live nodes' descriptions, as of their last heartbeat.
pub(crate) async fn list(inner: &Inner) -> Result<Vec<NodeInfo>, EngineError> {
    let cutoff = now_millis().saturating_sub(inner.node_ttl.as_millis() as u64);
    let live: Vec<String> = inner
        .timed(
            inner
                .conn()
                .zrangebyscore(inner.keys.node_seen(), cutoff, "+inf"),
        )
        .await?;
    if live.is_empty() {
        return Ok(Vec::new());
    }
    let infos: Vec<Option<String>> = inner
        .timed(
            redis::cmd("HMGET")
                .arg(inner.keys.nodes())
                .arg(&live)
                .query_async(&mut inner.conn()),
        )
        .await?;
    let mut nodes: Vec<NodeInfo> = infos
        .into_iter()
        .flatten()
        .filter_map(|json| serde_json::from_str(&json).ok())
        .collect();
    nodes.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(nodes)
}

/// Runs `request` on every node subscribed to the control topic and gathers their answers.
/// A node that does not answer within the timeout is left out.
pub(crate) async fn ask(
    inner: &Inner,
    request: NodeRequest,
) -> Result<Vec<NodeAnswer>, EngineError> {
    let id = inner.next_request_id();
    let (sender, mut answers) = tokio::sync::mpsc::unbounded_channel();
    inner.pending.lock().insert(id, sender);
    let asked = ControlRequest {
        from: inner.node.clone(),
        id,
        request,
    };
    let payload = serde_json::to_vec(&asked).map_err(unavailable);
    let result = async {
        let nodes = inner.publish_raw(&Topic::Control, payload?).await?;
        let mut gathered = Vec::with_capacity(nodes);
        let deadline = tokio::time::Instant::now() + ASK_TIMEOUT;
        while gathered.len() < nodes {
            match tokio::time::timeout_at(deadline, answers.recv()).await {
                Ok(Some(answer)) => gathered.push(answer),
                _ => {
                    tracing::warn!("{} of {nodes} nodes answered in time", gathered.len());
                    break;
                }
            }
        }
        Ok(gathered)
    }
    .await;
    inner.pending.lock().remove(&id);
    result
}

/// Runs another node's (or our own) request here and sends the answer back.
pub(crate) async fn answer(inner: Arc<Inner>, request: ControlRequest) {
    let Some(handler) = inner.handler() else {
        return;
    };
    let answer = handler.on_request(request.request).await;
    let reply = ControlReply {
        id: request.id,
        answer,
    };
    let Ok(payload) = serde_json::to_vec(&reply) else {
        return;
    };
    let topic = inner.keys.topic(&Topic::Replies, &request.from);
    let sent = inner
        .timed(inner.conn().publish::<_, _, ()>(topic, payload))
        .await;
    if let Err(e) = sent {
        tracing::warn!("answering node {}: {e}", request.from);
    }
}
