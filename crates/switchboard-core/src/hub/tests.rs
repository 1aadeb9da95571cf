//! The hub as a state machine: driven without sockets, on the memory engine, with a recording
//! sink per client and a clock moved by hand.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::json;
use switchboard_proto::Position;

use super::*;
use crate::config::NamespaceConfig;
use crate::testing::{Recorded, RecordingSink, T0, TestHub};

fn position(offset: u64, epoch: &str) -> Option<Position> {
    Some(Position {
        offset,
        epoch: epoch.to_owned(),
    })
}

/// Subscribes `client`, recording the reply in its sink where the hub hands it over.
async fn subscribe(
    hub: &Hub,
    client: &Arc<ClientEntry>,
    sink: &RecordingSink,
    channel: &str,
    since: Option<Position>,
) -> Result<SubscribeReply, HubError> {
    let mut reply = |r: &SubscribeReply| {
        let frame = json!({"type": "reply", "offset": r.position.offset, "recovered": r.recovered});
        sink.log.lock().push(Recorded::Frame(frame));
    };
    hub.subscribe(client, channel, since, &mut reply).await
}

fn namespace(name: &str, join_leave: bool) -> NamespaceConfig {
    NamespaceConfig {
        name: name.to_owned(),
        join_leave,
        ..NamespaceConfig::default()
    }
}

#[tokio::test]
async fn a_recovery_racing_publishes_gives_every_message_once_in_order() {
    let t = Arc::new(TestHub::new(HubConfig::default()));
    for n in 1..=5 {
        t.publish("c", n).await;
    }
    let epoch = t.publish("c", 6).await.epoch.to_string();
    let (client, sink) = t.client("alice");
    let gate = t.gate_history();
    let subscribing = {
        let (t, client, sink) = (t.clone(), client.clone(), sink.clone());
        tokio::spawn(
            async move { subscribe(&t.hub, &client, &sink, "c", position(2, &epoch)).await },
        )
    };
    // The subscriber is registered and waits for its history: these arrive live first.
    gate.entered().await;
    for n in 7..=9 {
        t.publish("c", n).await;
    }
    assert!(sink.frames().is_empty(), "held back until the reply is out");
    gate.open(usize::MAX >> 4);
    let reply = subscribing.await.unwrap().unwrap();
    assert_eq!(reply.recovered, Some(true));
    t.publish("c", 10).await;

    let log = sink.take();
    assert_eq!(
        log[0],
        Recorded::Start("c".into(), 9),
        "the position comes first"
    );
    assert_eq!(
        log[1],
        Recorded::Frame(json!({"type": "reply", "offset": 9, "recovered": true}))
    );
    let messages: Vec<&Recorded> = log[2..]
        .iter()
        .filter(
            |r| matches!(r, Recorded::Recovered(f) | Recorded::Frame(f) if f["type"] == "message"),
        )
        .collect();
    let offsets: Vec<u64> = messages
        .iter()
        .map(|r| match r {
            Recorded::Recovered(f) | Recorded::Frame(f) => f["offset"].as_u64().unwrap_or(0),
            _ => 0,
        })
        .collect();
    assert_eq!(offsets, (3..=10).collect::<Vec<_>>(), "no gap, no repeat");
    assert!(
        messages[..6]
            .iter()
            .all(|r| matches!(r, Recorded::Recovered(_))),
        "what the subscribe caught up on counts as recovered"
    );
    assert!(matches!(messages[7], Recorded::Frame(_)), "10 is live");
}

#[tokio::test]
async fn a_recovery_from_another_epoch_says_so_and_replays_nothing() {
    let t = TestHub::new(HubConfig::default());
    t.publish("c", 1).await;
    let (client, sink) = t.client("alice");
    let reply = subscribe(&t.hub, &client, &sink, "c", position(7, "gone"))
        .await
        .unwrap();
    assert_eq!(reply.recovered, Some(false));
    assert_eq!(reply.position.offset, 1);
    assert!(sink.offsets("c").is_empty());
}

#[tokio::test]
async fn a_subscriber_whose_history_never_comes_is_a_slow_consumer() {
    let t = Arc::new(TestHub::new(HubConfig::default()));
    let (client, sink) = t.client("alice");
    let gate = t.gate_history();
    let subscribing = {
        let (t, client, sink) = (t.clone(), client.clone(), sink.clone());
        tokio::spawn(async move { subscribe(&t.hub, &client, &sink, "c", None).await })
    };
    gate.entered().await;
    for n in 0..=MAX_PENDING as u64 {
        t.publish("c", n).await;
    }
    assert_eq!(sink.disconnects(), ["slow_consumer"]);
    gate.open(1);
    let result = subscribing.await.unwrap();
    assert_eq!(result, Err(HubError::Overflow));
    assert!(sink.offsets("c").is_empty(), "nothing half-delivered");
}

#[derive(Default)]
struct Occupancy(Mutex<Vec<String>>);

impl OccupancyObserver for Occupancy {
    fn occupied(&self, channel: &str) {
        self.0.lock().push(format!("occupied {channel}"));
    }
    fn vacated(&self, channel: &str) {
        self.0.lock().push(format!("vacated {channel}"));
    }
}

#[tokio::test]
async fn occupancy_is_told_once_per_change_in_the_order_it_happened() {
    let t = TestHub::new(HubConfig::default());
    let occupancy = Arc::new(Occupancy::default());
    t.hub.set_occupancy_observer(occupancy.clone());
    let (a, a_sink) = t.client("a");
    let (b, b_sink) = t.client("b");
    subscribe(&t.hub, &a, &a_sink, "c", None).await.unwrap();
    subscribe(&t.hub, &b, &b_sink, "c", None).await.unwrap();
    assert!(t.hub.unsubscribe(&a, "c").await);
    assert!(!t.hub.unsubscribe(&a, "c").await, "not subscribed any more");
    t.hub.unregister(&b).await;
    subscribe(&t.hub, &a, &a_sink, "c", None).await.unwrap();
    assert_eq!(
        *occupancy.0.lock(),
        ["occupied c", "vacated c", "occupied c"]
    );
    assert_eq!(t.hub.subscriber_count("c"), 1);
}

#[tokio::test]
async fn a_lost_stream_disconnects_its_subscribers_and_no_one_else() {
    let t = TestHub::new(HubConfig::default());
    let (a, a_sink) = t.client("a");
    let (b, b_sink) = t.client("b");
    subscribe(&t.hub, &a, &a_sink, "lost", None).await.unwrap();
    subscribe(&t.hub, &b, &b_sink, "kept", None).await.unwrap();
    t.hub.on_stream_lost("lost");
    assert_eq!(a_sink.disconnects(), [Disconnect::STATE_LOST.code]);
    assert!(b_sink.disconnects().is_empty());
}

#[tokio::test]
async fn presence_shows_members_and_announces_them_where_the_namespace_says() {
    let config = HubConfig {
        namespaces: vec![namespace("loud", true), namespace("quiet", false)],
        ..HubConfig::default()
    };
    let t = TestHub::new(config);
    let (a, a_sink) = t.client("ann");
    let (b, b_sink) = t.client("bob");
    let watcher = Arc::new(RecordingSink::default());
    let observer = t.hub.register_observer("eve", None, watcher.clone());
    for channel in ["loud:x", "quiet:x"] {
        subscribe(&t.hub, &a, &a_sink, channel, None).await.unwrap();
        subscribe(&t.hub, &b, &b_sink, channel, None).await.unwrap();
        subscribe(&t.hub, &observer, &watcher, channel, None)
            .await
            .unwrap();
        let mut users: Vec<String> = t
            .hub
            .presence(channel)
            .await
            .unwrap()
            .iter()
            .map(|m| m.user.to_string())
            .collect();
        users.sort();
        assert_eq!(users, ["ann", "bob"], "observers show in no presence");
    }
    let joins = |sink: &RecordingSink, kind: &str| -> Vec<String> {
        sink.frames()
            .iter()
            .filter(|f| f["type"] == kind)
            .map(|f| format!("{} {}", f["channel"], f["member"]["user"]).replace('"', ""))
            .collect()
    };
    assert_eq!(joins(&a_sink, "join"), ["loud:x ann", "loud:x bob"]);
    assert_eq!(
        joins(&b_sink, "join"),
        ["loud:x bob"],
        "its own, after its reply"
    );
    assert!(
        joins(&watcher, "join").is_empty(),
        "an observer announces nothing"
    );
    t.hub.unregister(&b).await;
    assert_eq!(joins(&a_sink, "leave"), ["loud:x bob"]);
    assert_eq!(t.hub.presence("loud:x").await.unwrap().len(), 1);
}

#[tokio::test]
async fn room_events_reach_the_others_and_signals_their_target_only() {
    let t = TestHub::new(HubConfig::default());
    let (a, a_sink) = t.client("ann");
    let (b, b_sink) = t.client("bob");
    let (c, c_sink) = t.client("cid");
    let (me, others) = t.hub.join_room(&a, "r", None).await.unwrap();
    assert!(others.is_empty());
    t.hub.join_room(&b, "r", None).await.unwrap();
    let (_, others) = t.hub.join_room(&c, "r", None).await.unwrap();
    assert_eq!(others.len(), 2);
    assert_eq!(
        t.hub.join_room(&c, "r", None).await.unwrap_err(),
        crate::rooms::RoomError::AlreadyJoined("r".into())
    );
    let types = |sink: &RecordingSink| -> Vec<String> {
        sink.frames()
            .iter()
            .map(|f| f["type"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    assert_eq!(types(&a_sink), ["peer_joined", "peer_joined"]);
    assert!(
        types(&c_sink).is_empty(),
        "its own join is not pushed to it"
    );

    let data = bytes::Bytes::from_static(b"{\"sdp\":1}");
    t.hub
        .signal(&a, "r", Some(&b.id_str), data.clone())
        .await
        .unwrap();
    let signals =
        |sink: &RecordingSink| sink.frames().into_iter().filter(|f| f["type"] == "signal");
    assert_eq!(signals(&b_sink).count(), 1);
    assert_eq!(
        signals(&c_sink).count(),
        0,
        "a signal reaches its target only"
    );
    assert_eq!(signals(&b_sink).next().unwrap()["from"], *me.peer);
    assert!(
        t.hub.signal(&a, "r", Some("nobody"), data).await.is_err(),
        "an unknown target is refused"
    );

    t.hub.unregister(&a).await;
    let left: Vec<_> = b_sink
        .frames()
        .into_iter()
        .filter(|f| f["type"] == "peer_left")
        .collect();
    assert_eq!(
        left,
        [json!({"type": "peer_left", "room": "r", "peer": *me.peer})]
    );
    assert_eq!(t.hub.room_peers("r").await.unwrap().len(), 2);
}

#[tokio::test]
async fn a_room_holds_at_most_its_limit() {
    let config = HubConfig {
        max_room_peers: 2,
        ..HubConfig::default()
    };
    let t = TestHub::new(config);
    for user in ["a", "b"] {
        let (client, _) = t.client(user);
        t.hub.join_room(&client, "r", None).await.unwrap();
    }
    let (late, _) = t.client("c");
    assert_eq!(
        t.hub.join_room(&late, "r", None).await.unwrap_err(),
        crate::rooms::RoomError::Full(2)
    );
    assert!(!late.in_room("r"), "a refused join leaves nothing behind");
}

#[tokio::test]
async fn expired_tokens_close_their_connections_but_not_polls() {
    let t = TestHub::new(HubConfig::default());
    let (_, expiring) = t.client_expiring("a", Some(T0 + 10));
    let (_, forever) = t.client("b");
    let poll = Arc::new(RecordingSink::default());
    t.hub.register_observer("c", Some(T0 + 5), poll.clone());
    assert_eq!(t.hub.expire_tokens(T0 + 9), 0);
    assert_eq!(t.hub.expire_tokens(T0 + 10), 1);
    assert_eq!(expiring.disconnects(), ["token_expired"]);
    assert!(forever.disconnects().is_empty());
    assert!(
        poll.disconnects().is_empty(),
        "a poll ends by its own timeout"
    );
}

#[tokio::test]
async fn a_refreshed_token_moves_the_expiry() {
    let t = TestHub::new(HubConfig::default());
    let (client, sink) = t.client_expiring("a", Some(T0 + 10));
    client.exp.store(T0 + 100, Ordering::Relaxed);
    assert_eq!(t.hub.expire_tokens(T0 + 50), 0);
    assert!(sink.disconnects().is_empty());
}

#[tokio::test]
async fn history_expires_with_the_clock_while_offsets_keep_counting() {
    let mut short = namespace("short", false);
    short.history_ttl = Duration::from_secs(60);
    let config = HubConfig {
        namespaces: vec![short],
        ..HubConfig::default()
    };
    let t = TestHub::new(config);
    t.publish("short:c", 1).await;
    t.publish("short:c", 2).await;
    let all = || crate::engine::HistoryQuery {
        since: None,
        limit: None,
    };
    assert_eq!(
        t.hub
            .history("short:c", all())
            .await
            .unwrap()
            .publications
            .len(),
        2
    );
    t.clock.advance(61);
    let history = t.hub.history("short:c", all()).await.unwrap();
    assert!(history.publications.is_empty());
    assert_eq!(history.position.offset, 2);
    assert_eq!(t.publish("short:c", 3).await.offset, 3);
}

#[tokio::test]
async fn unsubscribing_a_user_tells_each_of_its_connections() {
    let t = TestHub::new(HubConfig::default());
    let (a1, s1) = t.client("ann");
    let (a2, s2) = t.client("ann");
    let (b, sb) = t.client("bob");
    for (client, sink) in [(&a1, &s1), (&a2, &s2), (&b, &sb)] {
        subscribe(&t.hub, client, sink, "c", None).await.unwrap();
    }
    assert_eq!(t.hub.unsubscribe_user("ann", "c").await, 2);
    for sink in [&s1, &s2] {
        assert!(sink.frames().iter().any(|f| f["type"] == "unsubscribed"));
    }
    t.publish("c", 1).await;
    assert!(s1.offsets("c").is_empty());
    assert_eq!(sb.offsets("c"), [1]);
    assert_eq!(t.hub.disconnect_user("ann", Disconnect::BY_SERVER), 2);
}
