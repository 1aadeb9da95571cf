//! Multi-node scenarios shared by the distributed engines' tests: several servers on one
//! Redis (or NATS) must behave exactly like one server.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchboard_client::WsClient;
use switchboard_server::auth::TokenClaims;

use crate::common::*;

/// The namespaces and rooms every node of a test cluster shares.
pub(crate) const SHARED: &str = r#"
[[namespace]]
name = "chat"
history_size = 1000
history_ttl = "1h"
presence = true
join_leave = true
"#;

/// A key prefix no other test run uses, so tests can share one Redis or NATS.
pub(crate) fn unique_prefix(engine: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("sbtest-{engine}-{}-{nanos:08x}", std::process::id())
}

/// `n` server processes (the real binary, each on its own port) sharing the engine
/// `engine_toml` describes.
pub(crate) async fn start_nodes(engine_toml: &str, n: usize) -> Vec<TestServer> {
    let config = format!("{}{SHARED}{engine_toml}", auth_toml());
    (0..n).map(|_| TestServer::process(&config)).collect()
}

/// A token that may subscribe, publish and join rooms everywhere.
pub(crate) fn member_token(user: &str) -> String {
    token_with(TokenClaims {
        sub: Some(user.into()),
        exp: Some(switchboard_core::unix_now() + 3600),
        subscribe: Some(vec!["*".into()]),
        publish: Some(vec!["*".into()]),
        rooms: Some(vec!["*".into()]),
        ..TokenClaims::default()
    })
}

pub(crate) async fn member(node: &TestServer, user: &str) -> (WsClient, String) {
    let (client, connected) = node.connect(Some(&member_token(user))).await;
    let id = connected["client"].as_str().unwrap().to_owned();
    (client, id)
}

pub(crate) async fn next_of(client: &mut WsClient, kind: &str) -> Value {
    client
        .next_where(WAIT, |f| f["type"] == kind)
        .await
        .unwrap_or_else(|e| panic!("no {kind}: {e}"))
}

/// Reads `count` messages of `channel` and returns their (offset, data["n"]).
pub(crate) async fn read_messages(
    client: &mut WsClient,
    channel: &str,
    count: usize,
) -> Vec<(u64, i64)> {
    let mut got = Vec::new();
    for _ in 0..count {
        let m = client
            .next_message(channel, WAIT)
            .await
            .unwrap_or_else(|e| panic!("message {} of {count}: {e}", got.len() + 1));
        got.push((
            m["offset"].as_u64().unwrap(),
            m["data"]["n"].as_i64().unwrap(),
        ));
    }
    got
}

/// A server process (so it can be `kill -9`ed) on `engine`.
pub(crate) fn spawn_node(
    dir: &std::path::Path,
    name: &str,
    engine: &str,
) -> (std::process::Child, String) {
    let config = dir.join(format!("{name}.toml"));
    let toml = format!(
        "listen = \"127.0.0.1:{}\"\n{}{SHARED}{engine}",
        free_port(),
        auth_toml()
    );
    std::fs::write(&config, toml).unwrap();
    spawn_server(&config)
}

pub(crate) fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sb-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

// ---- scenarios ----

/// Publishes through the API of node 0 and a WebSocket client of node 1, interleaved; every
/// node's subscriber gets every message once, with consecutive offsets, in publish order, and
/// every node's history agrees.
pub(crate) async fn publish_anywhere_deliver_everywhere(nodes: &[TestServer]) {
    let channel = "chat:fanout";
    let mut subscribers = Vec::new();
    for node in nodes {
        let (mut client, _) = member(node, "reader").await;
        client.subscribe(channel).await.unwrap();
        subscribers.push(client);
    }
    let api = nodes[0].api();
    let (mut writer, _) = member(&nodes[1], "writer").await;
    let mut offsets = Vec::new();
    for n in 0..40i64 {
        let reply = if n % 2 == 0 {
            api.publish(channel, &json!({"n": n})).await.unwrap()
        } else {
            writer.publish(channel, json!({"n": n})).await.unwrap()
        };
        offsets.push(reply["offset"].as_u64().unwrap());
    }
    let first = offsets[0];
    assert_eq!(
        offsets,
        (first..first + 40).collect::<Vec<_>>(),
        "offsets are consecutive across nodes"
    );
    for (i, client) in subscribers.iter_mut().enumerate() {
        let got = read_messages(client, channel, 40).await;
        let want: Vec<(u64, i64)> = (0..40).map(|n| (first + n as u64, n)).collect();
        assert_eq!(got, want, "subscriber on node {i}");
        assert_no_message(client, "nothing more, nothing twice").await;
    }
    for node in nodes {
        let history = node.api().history(channel, None, None).await.unwrap();
        let offsets: Vec<u64> = history["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["offset"].as_u64().unwrap())
            .collect();
        assert_eq!(offsets, (first..first + 40).collect::<Vec<_>>());
    }
}

/// Two nodes publish to one channel at once: offsets stay consecutive, and a subscriber on a
/// third node gets them all once, in order, though deliveries from two publishers may reach
/// its node out of order (a reorder is filled from history, never reported as a loss).
pub(crate) async fn concurrent_publishers_keep_order(nodes: &[TestServer]) {
    let channel = "chat:race";
    let (mut reader, _) = member(&nodes[2], "reader").await;
    reader.subscribe(channel).await.unwrap();
    let mut publishers = Vec::new();
    for (who, node) in nodes[..2].iter().enumerate() {
        let api = node.api();
        publishers.push(tokio::spawn(async move {
            let mut offsets = Vec::new();
            for n in 0..40i64 {
                let reply = api.publish(channel, &json!({"n": n, "who": who})).await;
                offsets.push(reply.unwrap()["offset"].as_u64().unwrap());
            }
            offsets
        }));
    }
    let mut acknowledged = Vec::new();
    for publisher in publishers {
        acknowledged.extend(publisher.await.unwrap());
    }
    acknowledged.sort();
    let first = acknowledged[0];
    assert_eq!(
        acknowledged,
        (first..first + 80).collect::<Vec<_>>(),
        "every offset once across both publishers"
    );
    let mut received = Vec::new();
    while received.len() < 80 {
        let frame = reader
            .next_where(WAIT, |f| {
                f["type"] == "message" || f["type"] == "disconnect"
            })
            .await
            .unwrap_or_else(|e| panic!("after {} messages: {e}", received.len()));
        assert_eq!(frame["type"], "message", "{frame}");
        received.push(frame["offset"].as_u64().unwrap());
    }
    assert_eq!(received, acknowledged, "in order, no gap, no repeat");
    assert_no_message(&mut reader, "nothing twice").await;
    let lost = nodes[2]
        .metric("switchboard_engine_streams_lost_total")
        .await;
    assert_eq!(lost, 0.0, "a reorder is not a loss");
}

/// A client drops from node 0, messages are published on node 2, and it comes back on
/// node 1 with `since`: it gets exactly what it missed, then live messages.
pub(crate) async fn recover_on_another_node(nodes: &[TestServer]) {
    let channel = "chat:move";
    let api = nodes[2].api();
    let (mut client, _) = member(&nodes[0], "mover").await;
    client.subscribe(channel).await.unwrap();
    for n in 0..3 {
        api.publish(channel, &json!({"n": n})).await.unwrap();
    }
    let seen = client.next_message(channel, WAIT).await.unwrap();
    let seen = [seen]
        .into_iter()
        .chain([
            client.next_message(channel, WAIT).await.unwrap(),
            client.next_message(channel, WAIT).await.unwrap(),
        ])
        .last()
        .unwrap();
    let (last, epoch) = (
        seen["offset"].as_u64().unwrap(),
        seen["epoch"].as_str().unwrap().to_owned(),
    );
    client.close().await.unwrap();
    for n in 3..8 {
        api.publish(channel, &json!({"n": n})).await.unwrap();
    }
    let (mut client, _) = member(&nodes[1], "mover").await;
    let reply = client.subscribe_since(channel, last, &epoch).await.unwrap();
    assert_eq!(reply["recovered"], true, "{reply}");
    assert_eq!(reply["epoch"], epoch.as_str());
    let missed = read_messages(&mut client, channel, 5).await;
    assert_eq!(
        missed,
        (3..8).map(|n| (last + n as u64 - 2, n)).collect::<Vec<_>>()
    );
    api.publish(channel, &json!({"n": 8})).await.unwrap();
    assert_eq!(
        read_messages(&mut client, channel, 1).await,
        vec![(last + 6, 8)]
    );
    assert_no_message(&mut client, "no repeat after recovery").await;
}

fn users(members: &Value) -> Vec<String> {
    let mut users: Vec<String> = members["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["user"].as_str().unwrap().to_owned())
        .collect();
    users.sort();
    users
}

/// Presence and join/leave pushes seen from every node.
pub(crate) async fn presence_spans_nodes(nodes: &[TestServer]) {
    let channel = "chat:who";
    let (mut alice, _) = member(&nodes[0], "alice").await;
    alice.subscribe(channel).await.unwrap();
    let (mut bob, _) = member(&nodes[1], "bob").await;
    bob.subscribe(channel).await.unwrap();
    let join = next_of(&mut alice, "join").await;
    let join = if join["member"]["user"] == "alice" {
        next_of(&mut alice, "join").await
    } else {
        join
    };
    assert_eq!(join["member"]["user"], "bob", "{join}");
    let third = nodes.last().unwrap().api();
    assert_eq!(
        users(&third.presence(channel).await.unwrap()),
        ["alice", "bob"]
    );
    let over_ws = alice.presence(channel).await.unwrap();
    assert_eq!(users(&over_ws), ["alice", "bob"]);
    bob.close().await.unwrap();
    let leave = next_of(&mut alice, "leave").await;
    assert_eq!(leave["member"]["user"], "bob");
    assert_eq!(users(&third.presence(channel).await.unwrap()), ["alice"]);
}

/// A signaling room whose peers sit on different nodes.
pub(crate) async fn rooms_span_nodes(nodes: &[TestServer]) {
    let room = "call:cluster";
    let (mut alice, alice_id) = member(&nodes[0], "alice").await;
    alice
        .request(json!({"type": "join_room", "room": room, "meta": {"cam": true}}))
        .await
        .unwrap();
    let (mut bob, bob_id) = member(&nodes[1], "bob").await;
    let reply = bob
        .request(json!({"type": "join_room", "room": room}))
        .await
        .unwrap();
    assert_eq!(reply["peers"].as_array().unwrap().len(), 1, "{reply}");
    assert_eq!(reply["peers"][0]["peer"], alice_id.as_str());
    assert_eq!(reply["peers"][0]["meta"], json!({"cam": true}));
    let joined = next_of(&mut alice, "peer_joined").await;
    assert_eq!(joined["peer"]["peer"], bob_id.as_str());

    bob.signal(room, Some(&alice_id), json!({"sdp": "offer"}))
        .await
        .unwrap();
    let signal = next_of(&mut alice, "signal").await;
    assert_eq!(signal["from"], bob_id.as_str());
    assert_eq!(signal["data"], json!({"sdp": "offer"}));

    alice
        .update_meta(room, json!({"cam": false}))
        .await
        .unwrap();
    let updated = next_of(&mut bob, "peer_updated").await;
    assert_eq!(updated["peer"]["meta"], json!({"cam": false}));

    let listed = nodes.last().unwrap().api().room(room).await.unwrap();
    assert_eq!(listed["peers"].as_array().unwrap().len(), 2, "{listed}");

    bob.close().await.unwrap();
    let left = next_of(&mut alice, "peer_left").await;
    assert_eq!(left["peer"], bob_id.as_str());
}

/// `/api/channels`, `/api/info`, `/api/unsubscribe` and `/api/disconnect` cover every node.
pub(crate) async fn server_api_spans_nodes(nodes: &[TestServer]) {
    let channel = "chat:api";
    let mut clients = Vec::new();
    for node in &nodes[..2] {
        let (mut client, _) = member(node, "carol").await;
        client.subscribe(channel).await.unwrap();
        clients.push(client);
    }
    let api = nodes.last().unwrap().api();
    let channels = api.channels().await.unwrap();
    let entry = channels["channels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == channel)
        .cloned()
        .unwrap_or_else(|| panic!("{channel} missing from {channels}"));
    assert_eq!(entry["subscribers"], 2);

    // The node list comes from heartbeats: counts are as of each node's last beat.
    eventually(WAIT, "every node listed with its connections", || async {
        let info = api.info().await.unwrap();
        let listed = info["nodes"].as_array().unwrap();
        let connections: u64 = listed
            .iter()
            .map(|n| n["connections"].as_u64().unwrap())
            .sum();
        listed.len() == nodes.len() && connections == 2
    })
    .await;

    api.unsubscribe("carol", channel).await.unwrap();
    for client in clients.iter_mut() {
        let push = next_of(client, "unsubscribed").await;
        assert_eq!(push["channel"], channel);
    }
    let answer = api.disconnect("carol").await.unwrap();
    assert_eq!(answer["disconnected"], 2);
    for client in clients.iter_mut() {
        let (code, _) = client.wait_close(WAIT).await.unwrap();
        assert_eq!(code, Some(4004));
    }
}

/// A broker (Redis, NATS) of the test's own that it can kill and start again.
pub(crate) trait OwnBroker {
    fn kill(&mut self);
    /// Starts it again on the same port (with its data when it keeps any).
    fn restart(&mut self);
}

/// A `kill -9`ed node's presence members and room peers vanish within `node_ttl` (2 s),
/// with leave events seen on the survivor.
pub(crate) async fn killed_node_vanishes(engine: &str) {
    let engine = engine.to_owned();
    let dir = temp_dir("kill9");
    let (mut doomed, doomed_base) = spawn_node(&dir, "doomed", &engine);
    let survivor = start_nodes(&engine, 1).await.remove(0);

    let (mut ghost, ghost_id) = {
        let (client, connected) =
            switchboard_client::WsClient::connect(&doomed_base, Some(&member_token("ghost")))
                .await
                .unwrap();
        (client, connected["client"].as_str().unwrap().to_owned())
    };
    ghost.subscribe("chat:ghosts").await.unwrap();
    ghost
        .request(json!({"type": "join_room", "room": "call:ghosts"}))
        .await
        .unwrap();
    let (mut watcher, _) = member(&survivor, "watcher").await;
    watcher.subscribe("chat:ghosts").await.unwrap();
    watcher
        .request(json!({"type": "join_room", "room": "call:ghosts"}))
        .await
        .unwrap();
    let api = survivor.api();
    let present = api.presence("chat:ghosts").await.unwrap();
    assert_eq!(present["members"].as_array().unwrap().len(), 2, "{present}");

    doomed.kill().unwrap(); // SIGKILL: no goodbye from the node
    doomed.wait().unwrap();
    let killed = Instant::now();

    let leave = watcher
        .next_where(Duration::from_secs(8), |f| {
            f["type"] == "leave" && f["member"]["user"] == "ghost"
        })
        .await
        .expect("the dead node's member leaves");
    assert_eq!(leave["channel"], "chat:ghosts");
    let left = watcher
        .next_where(Duration::from_secs(8), |f| f["type"] == "peer_left")
        .await
        .expect("the dead node's peer leaves the room");
    assert_eq!(left["peer"], ghost_id.as_str());
    let took = killed.elapsed();
    // node_ttl is 2 s; a live node beats every 0.5 s and reaps what it finds dead.
    assert!(took < Duration::from_secs(4), "took {took:?}");

    let present = api.presence("chat:ghosts").await.unwrap();
    let users: Vec<&str> = present["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["user"].as_str().unwrap())
        .collect();
    assert_eq!(users, ["watcher"]);
    let room = api.room("call:ghosts").await.unwrap();
    assert_eq!(room["peers"].as_array().unwrap().len(), 1, "{room}");
    let info = api.info().await.unwrap();
    assert_eq!(info["nodes"].as_array().unwrap().len(), 1, "{info}");
    let _ = std::fs::remove_dir_all(dir);
}

/// The broker restarts with its data while node 0 publishes: node 1's subscriber gets every
/// message once, in order, without a disconnect.
pub(crate) async fn restart_keeps_everything(broker: &mut dyn OwnBroker, engine: &str) {
    let engine = engine.to_owned();
    let nodes = start_nodes(&engine, 2).await;
    let channel = "chat:restart";
    let (mut reader, _) = member(&nodes[1], "reader").await;
    reader.subscribe(channel).await.unwrap();

    // Publish on node 0 through the outage; keep every acknowledged offset.
    let api = nodes[0].api();
    let publisher = tokio::spawn(async move {
        let mut acknowledged = Vec::new();
        for n in 0..150i64 {
            if let Ok(reply) = api.publish(channel, &json!({"n": n})).await {
                acknowledged.push(reply["offset"].as_u64().unwrap());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        acknowledged
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    broker.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    broker.restart();
    let acknowledged = publisher.await.unwrap();
    assert!(
        acknowledged.len() > 50,
        "{} acknowledged",
        acknowledged.len()
    );

    // Every message in the stream arrives once, in order, without a disconnect.
    let last = *acknowledged.last().unwrap();
    let mut offsets = Vec::new();
    while offsets.last() != Some(&last) {
        let frame = reader
            .next_where(Duration::from_secs(10), |f| {
                f["type"] == "message" || f["type"] == "disconnect"
            })
            .await
            .unwrap_or_else(|e| panic!("after {offsets:?}: {e}"));
        assert_eq!(frame["type"], "message", "{frame}");
        offsets.push(frame["offset"].as_u64().unwrap());
    }
    assert_eq!(offsets, (1..=last).collect::<Vec<_>>(), "no gap, no repeat");
    for offset in &acknowledged {
        assert!(offsets.contains(offset));
    }
    assert_no_message(&mut reader, "nothing twice").await;
    let reconnects = nodes[1].metric("switchboard_engine_reconnects_total").await;
    assert!(reconnects >= 1.0, "the node counted its reconnect");
}

/// The broker restarts empty: subscribers are disconnected with 4009 and learn
/// `recovered: false` and a new epoch.
pub(crate) async fn restart_without_data_sends_clients_back(
    broker: &mut dyn OwnBroker,
    engine: &str,
) {
    let engine = engine.to_owned();
    let nodes = start_nodes(&engine, 2).await;
    let channel = "chat:wiped";
    let (mut reader, _) = member(&nodes[1], "reader").await;
    reader.subscribe(channel).await.unwrap();
    let api = nodes[0].api();
    for n in 0..5 {
        api.publish(channel, &json!({"n": n})).await.unwrap();
    }
    let got = read_messages(&mut reader, channel, 5).await;
    let (last, _) = *got.last().unwrap();
    let history = api.history(channel, Some(0), None).await.unwrap();
    let epoch = history["epoch"].as_str().unwrap().to_owned();

    broker.kill();
    broker.restart(); // empty: every stream and its epoch are gone

    // The node notices on reconnect and sends its subscriber back with code 4009.
    let (code, _) = reader.wait_close(Duration::from_secs(10)).await.unwrap();
    assert_eq!(code, Some(4009));
    // The loss is counted when the node's catch-up reads the stream again (its heartbeat may
    // have sent the client back first, having found its memberships wiped too).
    eventually(WAIT, "the node counted the lost stream", || async {
        nodes[1]
            .metric("switchboard_engine_streams_lost_total")
            .await
            >= 1.0
    })
    .await;

    // Back with `since`, as a client does after 4009 (again if the node, noticing at its next
    // heartbeat that its memberships were wiped too, sends it back once more).
    let mut lost_again = 0;
    loop {
        let (mut reader, _) = member(&nodes[1], "reader").await;
        let reply = eventually_subscribe_since(&mut reader, channel, last, &epoch).await;
        assert_eq!(reply["recovered"], false, "{reply}");
        assert_ne!(reply["epoch"], epoch.as_str(), "a new stream, a new epoch");
        // Node 0's command connection may answer its first call after the restart with 503.
        eventually(WAIT, "node 0 publishes again", || async {
            api.publish(channel, &json!({"n": 100 + lost_again}))
                .await
                .is_ok()
        })
        .await;
        match reader.next_message(channel, WAIT).await {
            Ok(fresh) => {
                assert_eq!(fresh["epoch"], reply["epoch"], "nothing of the old stream");
                let next = reply["offset"].as_u64().unwrap() + 1;
                assert_eq!(fresh["offset"].as_u64(), Some(next));
                break;
            }
            Err(switchboard_client::Error::Closed {
                code: Some(4009), ..
            }) if lost_again < 2 => lost_again += 1,
            Err(e) => panic!("{e}"),
        }
    }
}

/// Subscribes with `since`, retrying while the node is still reconnecting to the broker.
pub(crate) async fn eventually_subscribe_since(
    client: &mut switchboard_client::WsClient,
    channel: &str,
    offset: u64,
    epoch: &str,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match client.subscribe_since(channel, offset, epoch).await {
            Ok(reply) => return reply,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("subscribe never succeeded: {e}"),
        }
    }
}

/// Reading channels (subscribe, history, presence, over a socket and the server API) leaves
/// nothing behind once the readers are gone (spec §8); publishing keeps its stream, and its
/// first publish keeps the epoch its subscribers were told. `kept` counts the channels the
/// engine holds a stream for.
pub(crate) async fn readers_leave_nothing_behind<F, Fut>(nodes: &[TestServer], mut kept: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = usize>,
{
    let before = kept().await;
    let api = nodes[0].api();
    let (mut reader, _) = member(&nodes[0], "reader").await;
    let mut subscribed = None;
    for n in 0..10 {
        let reply = reader.subscribe(&format!("chat:read{n}")).await.unwrap();
        subscribed.get_or_insert(reply);
        reader
            .history(&format!("chat:hist{n}"), None, None)
            .await
            .unwrap();
        reader
            .subscribe_since(&format!("chat:since{n}"), 0, "never")
            .await
            .unwrap();
        reader.presence(&format!("chat:who{n}")).await.unwrap();
        api.history(&format!("chat:api{n}"), Some(5), Some((3, "gone")))
            .await
            .unwrap();
    }
    let subscribed = subscribed.unwrap();
    let published = api.publish("chat:read0", &json!("kept")).await.unwrap();
    assert_eq!(published["epoch"], subscribed["epoch"], "{subscribed}");
    let message = reader.next_message("chat:read0", WAIT).await.unwrap();
    assert_eq!(message["epoch"], subscribed["epoch"]);
    reader.close().await.unwrap();
    let deadline = Instant::now() + WAIT;
    let mut now = kept().await;
    while now != before + 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        now = kept().await;
    }
    assert_eq!(now, before + 1, "only the published channel is kept");
}
