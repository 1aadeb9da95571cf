//! Publish/subscribe over real sockets: fan-out, ordering and offsets, unsubscribe,
//! concurrent publishers, history bounds and limits, recovery with `since`, presence and
//! join/leave pushes (PROTOCOL.md §3, §4, §7).

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use crate::common::*;
use serde_json::{Value, json};
use switchboard_client::{Error, WsClient};

// ---------------------------------------------------------------- helpers

/// Reads the next `n` message pushes of `channel`.
async fn collect(client: &mut WsClient, channel: &str, n: usize) -> Vec<Value> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let msg = client
            .next_message(channel, WAIT)
            .await
            .unwrap_or_else(|e| panic!("message {} of {n} on {channel}: {e}", i + 1));
        out.push(msg);
    }
    out
}

/// Asserts that no push at all arrives within [`QUIET`].
async fn assert_quiet(client: &mut WsClient, what: &str) {
    match client.next_push(QUIET).await {
        Err(Error::Timeout(_)) => {}
        Ok(frame) => panic!("{what}: expected nothing, got {frame}"),
        Err(e) => panic!("{what}: expected nothing, got error {e}"),
    }
}

/// The offsets of a list of message frames.
fn offsets(messages: &[Value]) -> Vec<u64> {
    messages
        .iter()
        .map(|m| m["offset"].as_u64().expect("offset is a number"))
        .collect()
}

fn epoch_of(frame: &Value) -> String {
    frame["epoch"]
        .as_str()
        .unwrap_or_else(|| panic!("no string epoch in {frame}"))
        .to_owned()
}

/// Connects with `info` and returns the client and its client id.
async fn connect_with_info(server: &TestServer, user: &str, info: &Value) -> (WsClient, String) {
    let (client, connected) = server.connect(Some(&token_with_info(user, info))).await;
    assert_eq!(connected["user"], user);
    let id = connected["client"]
        .as_str()
        .expect("connected frame carries a client id")
        .to_owned();
    (client, id)
}

/// Presence members sorted by client id.
fn sorted_members(reply: &Value) -> Vec<Value> {
    let mut members = reply["members"]
        .as_array()
        .unwrap_or_else(|| panic!("no members list in {reply}"))
        .clone();
    members.sort_by(|a, b| a["client"].as_str().cmp(&b["client"].as_str()));
    members
}

/// Next push of `kind` (`join`/`leave`) on `channel`.
async fn next_presence_event(client: &mut WsClient, kind: &str, channel: &str) -> Value {
    let push = client
        .next_push(WAIT)
        .await
        .unwrap_or_else(|e| panic!("waiting for {kind} on {channel}: {e}"));
    assert_eq!(push["type"], kind, "expected a {kind} push, got {push}");
    assert_eq!(push["channel"], channel, "{push}");
    push
}

// ---------------------------------------------------------------- fan-out and ordering

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_to_fifty_subscribers_every_message_exactly_once_in_order() {
    const SUBSCRIBERS: usize = 50;
    const TOTAL: u64 = 120; // 100 through the API, 20 through a WebSocket client
    let server = TestServer::start().await;
    let channel = "news:fanout";

    let mut epoch = None;
    let mut subscribers = Vec::new();
    for i in 0..SUBSCRIBERS {
        let mut client = server.connect_as(&format!("sub{i}")).await;
        let reply = client.subscribe(channel).await.unwrap();
        assert_eq!(reply["channel"], channel);
        assert_eq!(reply["offset"], 0);
        assert!(
            reply.get("recovered").is_none(),
            "no since, no recovered: {reply}"
        );
        let e = epoch_of(&reply);
        assert!(!e.is_empty());
        assert_eq!(epoch.get_or_insert(e.clone()), &e, "one epoch for everyone");
        subscribers.push(client);
    }
    let epoch = epoch.unwrap();

    // Every subscriber reads concurrently while the messages are published.
    let readers: Vec<_> = subscribers
        .into_iter()
        .map(|mut client| {
            tokio::spawn(async move {
                let got = collect(&mut client, channel, TOTAL as usize).await;
                assert_no_message(&mut client, "after the last message").await;
                got
            })
        })
        .collect();

    let api = server.api();
    let mut publisher = server.connect_as("publisher").await;
    let mut expected = Vec::new();
    for n in 1..=TOTAL {
        // Every sixth message goes through the WebSocket publisher.
        let data = if n % 6 == 0 {
            json!({"n": n, "via": "ws"})
        } else {
            json!({"n": n, "via": "api"})
        };
        let answer = if n % 6 == 0 {
            let reply = publisher.publish(channel, data.clone()).await.unwrap();
            assert_eq!(reply["type"], "reply");
            reply
        } else {
            api.publish(channel, &data).await.unwrap()
        };
        assert_eq!(answer["offset"], n, "publish answer of message {n}");
        assert_eq!(answer["epoch"], epoch.as_str());
        expected.push(data);
    }
    assert_eq!(expected.iter().filter(|d| d["via"] == "ws").count(), 20);

    for (i, reader) in readers.into_iter().enumerate() {
        let got = reader.await.unwrap();
        assert_eq!(
            offsets(&got),
            (1..=TOTAL).collect::<Vec<_>>(),
            "subscriber {i}"
        );
        for (msg, data) in got.iter().zip(&expected) {
            assert_eq!(msg["type"], "message");
            assert_eq!(msg["channel"], channel);
            assert_eq!(msg["epoch"], epoch.as_str(), "subscriber {i}");
            assert_eq!(&msg["data"], data, "subscriber {i}");
        }
    }
    // The publisher never subscribed: it gets none of them.
    assert_quiet(&mut publisher, "publisher without subscription").await;
    server.stop().await;
}

#[tokio::test]
async fn two_interleaved_channels_keep_independent_offsets() {
    let server = TestServer::start().await;
    let mut client = server.connect_as("alice").await;
    let ra = client.subscribe("mix:a").await.unwrap();
    let rb = client.subscribe("mix:b").await.unwrap();
    assert_eq!(
        (ra["offset"].clone(), rb["offset"].clone()),
        (json!(0), json!(0))
    );

    let api = server.api();
    // a a b a b b b a  -> a gets 1..4, b gets 1..4, interleaved.
    let pattern = ["a", "a", "b", "a", "b", "b", "b", "a"];
    let mut next = BTreeMap::from([("a", 0u64), ("b", 0u64)]);
    for (i, which) in pattern.iter().enumerate() {
        let channel = format!("mix:{which}");
        let answer = api.publish(&channel, &json!({"i": i})).await.unwrap();
        let counter = next.get_mut(which).unwrap();
        *counter += 1;
        assert_eq!(answer["offset"], *counter, "publish {i} to {channel}");
    }

    let mut per_channel: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for _ in 0..pattern.len() {
        let push = client
            .next_where(WAIT, |f| f["type"] == "message")
            .await
            .unwrap();
        assert_eq!(push["type"], "message", "{push}");
        per_channel
            .entry(push["channel"].as_str().unwrap().to_owned())
            .or_default()
            .push(push);
    }
    assert_no_message(&mut client, "after 8 messages").await;

    let a = &per_channel["mix:a"];
    let b = &per_channel["mix:b"];
    assert_eq!(offsets(a), vec![1, 2, 3, 4]);
    assert_eq!(offsets(b), vec![1, 2, 3, 4]);
    let data_a: Vec<_> = a.iter().map(|m| m["data"]["i"].as_u64().unwrap()).collect();
    let data_b: Vec<_> = b.iter().map(|m| m["data"]["i"].as_u64().unwrap()).collect();
    assert_eq!(data_a, vec![0, 1, 3, 7]);
    assert_eq!(data_b, vec![2, 4, 5, 6]);
    assert!(a.iter().all(|m| m["epoch"] == ra["epoch"]));
    assert!(b.iter().all(|m| m["epoch"] == rb["epoch"]));
    server.stop().await;
}

#[tokio::test]
async fn unsubscribe_stops_delivery() {
    let server = TestServer::start().await;
    let api = server.api();
    let mut leaver = server.connect_as("leaver").await;
    let mut stayer = server.connect_as("stayer").await;
    leaver.subscribe("unsub:x").await.unwrap();
    leaver.subscribe("unsub:other").await.unwrap();
    stayer.subscribe("unsub:x").await.unwrap();

    api.publish("unsub:x", &json!("first")).await.unwrap();
    assert_eq!(
        leaver.next_message("unsub:x", WAIT).await.unwrap()["data"],
        "first"
    );
    assert_eq!(
        stayer.next_message("unsub:x", WAIT).await.unwrap()["data"],
        "first"
    );

    let reply = leaver.unsubscribe("unsub:x").await.unwrap();
    assert_eq!(reply["type"], "reply");

    for n in 2..=4 {
        let answer = api.publish("unsub:x", &json!(n)).await.unwrap();
        assert_eq!(answer["offset"], n);
    }
    // The one still subscribed gets them; the one that left gets nothing of that channel.
    let got = collect(&mut stayer, "unsub:x", 3).await;
    assert_eq!(offsets(&got), vec![2, 3, 4]);
    assert_no_message(&mut leaver, "after unsubscribe").await;

    // Its other subscription goes on.
    api.publish("unsub:other", &json!("still here"))
        .await
        .unwrap();
    let msg = leaver.next_message("unsub:other", WAIT).await.unwrap();
    assert_eq!(
        (msg["offset"].clone(), msg["data"].clone()),
        (json!(1), json!("still here"))
    );

    // Subscribing again starts from the current position: no replay of what was missed.
    let again = leaver.subscribe("unsub:x").await.unwrap();
    assert_eq!(again["offset"], 4);
    api.publish("unsub:x", &json!(5)).await.unwrap();
    let msg = leaver.next_message("unsub:x", WAIT).await.unwrap();
    assert_eq!(msg["offset"], 5);
    assert_no_message(&mut leaver, "after resubscribe").await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_give_every_subscriber_a_consecutive_sequence() {
    const API_TASKS: usize = 4;
    const WS_TASKS: usize = 2;
    const PER_TASK: usize = 40;
    const TOTAL: usize = (API_TASKS + WS_TASKS) * PER_TASK;
    let server = TestServer::start().await;
    let channel = "race:pub";

    let mut readers = Vec::new();
    for i in 0..5 {
        let mut client = server.connect_as(&format!("reader{i}")).await;
        client.subscribe(channel).await.unwrap();
        readers.push(tokio::spawn(async move {
            let got = collect(&mut client, channel, TOTAL).await;
            assert_no_message(&mut client, "after all messages").await;
            got
        }));
    }

    let mut ws_publishers = Vec::new();
    for t in 0..WS_TASKS {
        ws_publishers.push(server.connect_as(&format!("wspub{t}")).await);
    }
    let mut publishers = Vec::new();
    for t in 0..API_TASKS {
        let api = server.api();
        publishers.push(tokio::spawn(async move {
            let mut sent = Vec::new();
            for k in 0..PER_TASK {
                let data = json!({"task": format!("api{t}"), "k": k});
                let answer = api.publish(channel, &data).await.unwrap();
                sent.push((answer["offset"].as_u64().unwrap(), epoch_of(&answer), data));
            }
            sent
        }));
    }
    for (t, mut client) in ws_publishers.into_iter().enumerate() {
        publishers.push(tokio::spawn(async move {
            let mut sent = Vec::new();
            for k in 0..PER_TASK {
                let data = json!({"task": format!("ws{t}"), "k": k});
                let answer = client.publish(channel, data.clone()).await.unwrap();
                sent.push((answer["offset"].as_u64().unwrap(), epoch_of(&answer), data));
            }
            sent
        }));
    }

    // offset -> data, from the publish answers.
    let mut by_offset = BTreeMap::new();
    let mut epochs = HashSet::new();
    for publisher in publishers {
        let sent = publisher.await.unwrap();
        // One publisher's own messages get increasing offsets.
        assert!(sent.windows(2).all(|w| w[0].0 < w[1].0), "{sent:?}");
        for (offset, epoch, data) in sent {
            assert!(
                by_offset.insert(offset, data).is_none(),
                "offset {offset} given twice"
            );
            epochs.insert(epoch);
        }
    }
    assert_eq!(epochs.len(), 1, "one epoch: {epochs:?}");
    assert_eq!(
        by_offset.keys().copied().collect::<Vec<_>>(),
        (1..=TOTAL as u64).collect::<Vec<_>>()
    );

    for (i, reader) in readers.into_iter().enumerate() {
        let got = reader.await.unwrap();
        assert_eq!(
            offsets(&got),
            (1..=TOTAL as u64).collect::<Vec<_>>(),
            "reader {i}"
        );
        for msg in &got {
            let offset = msg["offset"].as_u64().unwrap();
            assert_eq!(
                msg["data"], by_offset[&offset],
                "reader {i} offset {offset}"
            );
            assert!(epochs.contains(msg["epoch"].as_str().unwrap()));
        }
    }
    server.stop().await;
}

// ---------------------------------------------------------------- history

#[tokio::test]
async fn history_size_keeps_only_the_last_messages() {
    let server =
        server_with("[[namespace]]\nname = \"small\"\nhistory_size = 5\nhistory_ttl = 300\n").await;
    let api = server.api();
    let mut client = server.connect_as("alice").await;
    let mut epoch = String::new();
    for n in 1..=12 {
        let answer = api.publish("small:x", &json!({"n": n})).await.unwrap();
        assert_eq!(answer["offset"], n);
        epoch = epoch_of(&answer);
        api.publish("plain", &json!({"n": n})).await.unwrap();
    }

    let history = client.history("small:x", None, None).await.unwrap();
    assert_eq!(
        offsets(history["messages"].as_array().unwrap()),
        vec![8, 9, 10, 11, 12]
    );
    assert_eq!(history["offset"], 12);
    assert_eq!(history["epoch"], epoch.as_str());
    for msg in history["messages"].as_array().unwrap() {
        assert_eq!(msg["type"], "message");
        assert_eq!(msg["channel"], "small:x");
        assert_eq!(msg["epoch"], epoch.as_str());
        assert_eq!(msg["data"]["n"], msg["offset"]);
    }
    // A larger limit cannot bring back what is gone.
    let history = client.history("small:x", None, Some(50)).await.unwrap();
    assert_eq!(
        offsets(history["messages"].as_array().unwrap()),
        vec![8, 9, 10, 11, 12]
    );
    // The server API sees the same.
    let history = api.history("small:x", None, None).await.unwrap();
    assert_eq!(
        offsets(history["messages"].as_array().unwrap()),
        vec![8, 9, 10, 11, 12]
    );
    assert_eq!(history["offset"], 12);

    // A channel of the default namespace (100 messages) keeps all 12.
    let history = client.history("plain", None, None).await.unwrap();
    assert_eq!(
        offsets(history["messages"].as_array().unwrap()),
        (1..=12).collect::<Vec<_>>()
    );
    server.stop().await;
}

#[tokio::test]
async fn history_ttl_expires_messages_but_offset_keeps_counting() {
    let server =
        server_with("[[namespace]]\nname = \"brief\"\nhistory_size = 100\nhistory_ttl = 1\n").await;
    let api = server.api();
    let mut client = server.connect_as("alice").await;
    let mut epoch = String::new();
    for n in 1..=3 {
        epoch = epoch_of(&api.publish("brief:x", &json!(n)).await.unwrap());
    }
    let history = client.history("brief:x", None, None).await.unwrap();
    assert_eq!(
        offsets(history["messages"].as_array().unwrap()),
        vec![1, 2, 3]
    );

    tokio::time::sleep(Duration::from_millis(2200)).await;

    let history = client.history("brief:x", None, None).await.unwrap();
    assert_eq!(history["messages"], json!([]), "expired after the TTL");
    assert_eq!(history["offset"], 3);
    assert_eq!(history["epoch"], epoch.as_str());
    let history = api.history("brief:x", None, None).await.unwrap();
    assert_eq!(history["messages"], json!([]));
    assert_eq!(history["offset"], 3);

    // Recovering from the start is no longer complete.
    let reply = client.subscribe_since("brief:x", 0, &epoch).await.unwrap();
    assert_eq!(reply["recovered"], false, "{reply}");
    assert_eq!(reply["offset"], 3);
    assert_no_message(&mut client, "nothing left to recover").await;

    let answer = api.publish("brief:x", &json!(4)).await.unwrap();
    assert_eq!(answer["offset"], 4, "offsets go on after expiry");
    assert_eq!(answer["epoch"], epoch.as_str());
    let live = client.next_message("brief:x", WAIT).await.unwrap();
    assert_eq!(
        (live["offset"].clone(), live["data"].clone()),
        (json!(4), json!(4))
    );
    let history = client.history("brief:x", None, None).await.unwrap();
    assert_eq!(offsets(history["messages"].as_array().unwrap()), vec![4]);
    server.stop().await;
}

#[tokio::test]
async fn history_limit_and_since_semantics() {
    let server = TestServer::start().await;
    let api = server.api();
    let mut subscriber = server.connect_as("sub").await;
    subscriber.subscribe("hist:x").await.unwrap();
    let mut client = server.connect_as("alice").await;
    let mut epoch = String::new();
    for n in 1..=10 {
        epoch = epoch_of(&api.publish("hist:x", &json!({"n": n})).await.unwrap());
    }
    let pushed = collect(&mut subscriber, "hist:x", 10).await;

    let all = client.history("hist:x", None, None).await.unwrap();
    assert_eq!(all["type"], "reply");
    assert_eq!(all["offset"], 10);
    assert_eq!(all["epoch"], epoch.as_str());
    // Messages exactly as pushed.
    assert_eq!(all["messages"], json!(pushed));

    let latest = client.history("hist:x", None, Some(3)).await.unwrap();
    assert_eq!(
        offsets(latest["messages"].as_array().unwrap()),
        vec![8, 9, 10]
    );
    assert_eq!(latest["offset"], 10);

    let after = client
        .history("hist:x", Some((4, &epoch)), Some(3))
        .await
        .unwrap();
    assert_eq!(
        offsets(after["messages"].as_array().unwrap()),
        vec![5, 6, 7]
    );
    assert_eq!(after["messages"][0]["data"], json!({"n": 5}));

    let rest = client
        .history("hist:x", Some((4, &epoch)), None)
        .await
        .unwrap();
    assert_eq!(
        offsets(rest["messages"].as_array().unwrap()),
        vec![5, 6, 7, 8, 9, 10]
    );
    let none = client
        .history("hist:x", Some((10, &epoch)), None)
        .await
        .unwrap();
    assert_eq!(none["messages"], json!([]));
    assert_eq!(none["offset"], 10);

    // Same answers through the server API.
    let latest = api.history("hist:x", Some(3), None).await.unwrap();
    assert_eq!(
        offsets(latest["messages"].as_array().unwrap()),
        vec![8, 9, 10]
    );
    let after = api
        .history("hist:x", Some(3), Some((4, &epoch)))
        .await
        .unwrap();
    assert_eq!(
        offsets(after["messages"].as_array().unwrap()),
        vec![5, 6, 7]
    );

    // A channel nobody published to has an empty history at offset 0.
    let empty = client.history("hist:never", None, None).await.unwrap();
    assert_eq!(empty["messages"], json!([]));
    assert_eq!(empty["offset"], 0);
    server.stop().await;
}

// ---------------------------------------------------------------- recovery

#[tokio::test]
async fn recovery_after_reconnect_delivers_exactly_the_missed_then_live() {
    let server = TestServer::start().await;
    let api = server.api();
    let channel = "rec:x";

    let mut first = server.connect_as("alice").await;
    first.subscribe(channel).await.unwrap();
    for n in 1..=5 {
        api.publish(channel, &json!({"n": n})).await.unwrap();
    }
    let seen = collect(&mut first, channel, 5).await;
    let last = seen.last().unwrap();
    let (position, epoch) = (last["offset"].as_u64().unwrap(), epoch_of(last));
    assert_eq!(position, 5);
    first.close().await.unwrap();

    for n in 6..=15 {
        api.publish(channel, &json!({"n": n})).await.unwrap();
    }

    let mut second = server.connect_as("alice").await;
    let reply = second
        .subscribe_since(channel, position, &epoch)
        .await
        .unwrap();
    assert_eq!(reply["channel"], channel);
    assert_eq!(reply["offset"], 15);
    assert_eq!(reply["epoch"], epoch.as_str());

    let recovered = collect(&mut second, channel, 10).await;
    assert_eq!(offsets(&recovered), (6..=15).collect::<Vec<_>>());
    for msg in &recovered {
        assert_eq!(msg["data"]["n"], msg["offset"]);
        assert_eq!(msg["epoch"], epoch.as_str());
    }
    for n in 16..=17 {
        api.publish(channel, &json!({"n": n})).await.unwrap();
    }
    let live = collect(&mut second, channel, 2).await;
    assert_eq!(offsets(&live), vec![16, 17]);
    assert_no_message(&mut second, "no repeats after live").await;
    // Checked last so that a wrong flag does not hide how the messages went.
    assert_eq!(
        reply["recovered"], true,
        "history held all 10 missed: {reply}"
    );
    server.stop().await;
}

#[tokio::test]
async fn recovering_more_than_the_send_queue_holds_is_not_a_slow_consumer() {
    // A 64 KiB send queue, and 200 missed messages of 2 KiB (400 KiB) to recover.
    let server = server_with(
        "[limits]\nclient_queue_bytes = 65536\n\
         [[namespace]]\nname = \"big\"\nhistory_size = 500\nhistory_ttl = \"1h\"\n",
    )
    .await;
    let api = server.api();
    let channel = "big:backlog";
    let blob = "y".repeat(2048);
    let epoch = api.history(channel, Some(0), None).await.unwrap()["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    for n in 1..=200 {
        api.publish(channel, &json!({"n": n, "blob": blob}))
            .await
            .unwrap();
    }
    let mut client = server.connect_as("far-behind").await;
    let reply = client.subscribe_since(channel, 0, &epoch).await.unwrap();
    assert_eq!(reply["recovered"], true, "{reply}");
    let recovered = collect(&mut client, channel, 200).await;
    assert_eq!(offsets(&recovered), (1..=200).collect::<Vec<_>>());
    // Live messages keep the normal bound once the replay is out.
    api.publish(channel, &json!({"n": 201})).await.unwrap();
    assert_eq!(offsets(&collect(&mut client, channel, 1).await), vec![201]);
    assert_eq!(server.metric("switchboard_queue_drops_total").await, 0.0);
    server.stop().await;
}

#[tokio::test]
async fn recovery_reports_false_when_history_lost_some_and_delivers_the_rest() {
    let server =
        server_with("[[namespace]]\nname = \"short\"\nhistory_size = 5\nhistory_ttl = 300\n").await;
    let api = server.api();
    let channel = "short:x";
    let mut epoch = String::new();
    for n in 1..=2 {
        epoch = epoch_of(&api.publish(channel, &json!({"n": n})).await.unwrap());
    }
    // The client was at offset 2; 10 more are published, history keeps 8..12.
    for n in 3..=12 {
        api.publish(channel, &json!({"n": n})).await.unwrap();
    }
    let mut client = server.connect_as("alice").await;
    let reply = client.subscribe_since(channel, 2, &epoch).await.unwrap();
    assert_eq!(reply["recovered"], false, "{reply}");
    assert_eq!(reply["offset"], 12);
    assert_eq!(reply["epoch"], epoch.as_str());
    let held = collect(&mut client, channel, 5).await;
    assert_eq!(offsets(&held), vec![8, 9, 10, 11, 12]);
    assert!(held.iter().all(|m| m["data"]["n"] == m["offset"]));

    api.publish(channel, &json!({"n": 13})).await.unwrap();
    let live = client.next_message(channel, WAIT).await.unwrap();
    assert_eq!(live["offset"], 13);
    assert_no_message(&mut client, "after live").await;

    // History now holds 9..13. Recovering from just before its oldest message is complete...
    let mut edge = server.connect_as("carol").await;
    let edge_reply = edge.subscribe_since(channel, 8, &epoch).await.unwrap();
    assert_eq!(edge_reply["offset"], 13);
    assert_eq!(
        offsets(&collect(&mut edge, channel, 5).await),
        vec![9, 10, 11, 12, 13]
    );
    assert_no_message(&mut edge, "after recovery from 8").await;
    // ...and so is recovering from further inside it.
    let mut inside = server.connect_as("bob").await;
    let inside_reply = inside.subscribe_since(channel, 10, &epoch).await.unwrap();
    assert_eq!(inside_reply["offset"], 13);
    assert_eq!(
        offsets(&collect(&mut inside, channel, 3).await),
        vec![11, 12, 13]
    );
    assert_no_message(&mut inside, "after recovery from 10").await;
    assert_eq!(
        edge_reply["recovered"], true,
        "since 8, history 9..13: {edge_reply}"
    );
    assert_eq!(
        inside_reply["recovered"], true,
        "since 10, history 9..13: {inside_reply}"
    );
    server.stop().await;
}

#[tokio::test]
async fn recovery_with_wrong_epoch_is_not_recovered_and_pushes_nothing_old() {
    let server = TestServer::start().await;
    let api = server.api();
    let channel = "epoch:x";
    let mut epoch = String::new();
    for n in 1..=3 {
        epoch = epoch_of(&api.publish(channel, &json!(n)).await.unwrap());
    }
    let wrong = format!("{epoch}-not");
    let mut client = server.connect_as("alice").await;
    let reply = client.subscribe_since(channel, 1, &wrong).await.unwrap();
    assert_eq!(reply["recovered"], false, "{reply}");
    assert_eq!(reply["offset"], 3);
    assert_eq!(
        reply["epoch"],
        epoch.as_str(),
        "the reply names the real epoch"
    );
    assert_no_message(&mut client, "wrong epoch").await;

    api.publish(channel, &json!(4)).await.unwrap();
    let live = client.next_message(channel, WAIT).await.unwrap();
    assert_eq!(
        (live["offset"].clone(), live["data"].clone()),
        (json!(4), json!(4))
    );
    assert_no_message(&mut client, "after live").await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_racing_a_continuous_publisher_has_no_gap_and_no_repeat() {
    const TOTAL: u64 = 600;
    const JOINERS: usize = 6;
    let server =
        server_with("[[namespace]]\nname = \"race\"\nhistory_size = 10000\nhistory_ttl = 300\n")
            .await;
    let channel = "race:rec";
    let api = server.api();
    let epoch = epoch_of(&api.publish(channel, &json!(1)).await.unwrap());

    let publisher = {
        let api = server.api();
        tokio::spawn(async move {
            for n in 2..=TOTAL {
                let answer = api.publish(channel, &json!(n)).await.unwrap();
                assert_eq!(answer["offset"], n);
                // Keep publishing for a while, so every joiner lands in the middle of it.
                if n % 5 == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        })
    };

    // Clients join one after another while the publisher runs, each from a position a bit
    // behind the current one.
    let mut joiners = Vec::new();
    for j in 0..JOINERS {
        let mut client = server.connect_as(&format!("joiner{j}")).await;
        let now = api.history(channel, Some(1), None).await.unwrap()["offset"]
            .as_u64()
            .unwrap();
        let since = now.saturating_sub(3 + j as u64);
        let reply = client
            .subscribe_since(channel, since, &epoch)
            .await
            .unwrap();
        assert_eq!(reply["epoch"], epoch.as_str());
        let at_reply = reply["offset"].as_u64().unwrap();
        assert!(
            at_reply >= since,
            "joiner {j}: reply offset {at_reply} < since {since}"
        );
        joiners.push(tokio::spawn(async move {
            let got = collect(&mut client, channel, (TOTAL - since) as usize).await;
            assert_no_message(&mut client, "after the last").await;
            (since, reply, got)
        }));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    publisher.await.unwrap();

    let mut replies = Vec::new();
    for (j, joiner) in joiners.into_iter().enumerate() {
        let (since, reply, got) = joiner.await.unwrap();
        assert_eq!(
            offsets(&got),
            (since + 1..=TOTAL).collect::<Vec<_>>(),
            "joiner {j} from {since}"
        );
        assert!(got.iter().all(|m| m["data"] == m["offset"]));
        replies.push(reply);
    }
    // The race really happened: at least one joiner subscribed while messages were still coming.
    assert!(
        replies.iter().any(|r| r["offset"].as_u64() < Some(TOTAL)),
        "every joiner came after the publisher had finished: {replies:?}"
    );
    // History (10000 messages) held everything each joiner missed.
    for (j, reply) in replies.iter().enumerate() {
        assert_eq!(reply["recovered"], true, "joiner {j}: {reply}");
    }
    server.stop().await;
}

// ---------------------------------------------------------------- presence, join, leave

#[tokio::test]
async fn presence_lists_members_with_info() {
    let server = TestServer::start().await;
    let alice_info = json!({"name": "Alice", "color": "red"});
    let bob_info = json!({"name": "Bob", "tags": [1, 2]});
    let (mut alice, alice_id) = connect_with_info(&server, "alice", &alice_info).await;
    let (mut bob, bob_id) = connect_with_info(&server, "bob", &bob_info).await;
    let (mut carol, _) = connect_with_info(&server, "carol", &json!(null)).await;
    alice.subscribe("pres:room").await.unwrap();
    bob.subscribe("pres:room").await.unwrap();
    carol.subscribe("pres:elsewhere").await.unwrap();

    let mut expected = vec![
        json!({"client": alice_id, "user": "alice", "info": alice_info}),
        json!({"client": bob_id, "user": "bob", "info": bob_info}),
    ];
    expected.sort_by(|a, b| a["client"].as_str().cmp(&b["client"].as_str()));

    // Asked by a member, by a non-member, and through the API: the same two members.
    let reply = alice.presence("pres:room").await.unwrap();
    assert_eq!(reply["type"], "reply");
    assert_eq!(sorted_members(&reply), expected);
    let reply = carol.presence("pres:room").await.unwrap();
    assert_eq!(sorted_members(&reply), expected);
    let reply = server.api().presence("pres:room").await.unwrap();
    assert_eq!(sorted_members(&reply), expected);

    bob.unsubscribe("pres:room").await.unwrap();
    let reply = alice.presence("pres:room").await.unwrap();
    assert_eq!(
        sorted_members(&reply),
        vec![json!({"client": alice_id, "user": "alice", "info": alice_info})]
    );
    let reply = alice.presence("pres:nobody").await.unwrap();
    assert_eq!(reply["members"], json!([]));
    server.stop().await;
}

#[tokio::test]
async fn join_is_pushed_to_the_joiner_after_its_reply_and_to_others() {
    let server = server_with(JOIN_LEAVE).await;
    let alice_info = json!({"name": "Alice"});
    let bob_info = json!({"name": "Bob"});
    let (mut alice, alice_id) = connect_with_info(&server, "alice", &alice_info).await;
    let (mut bob, bob_id) = connect_with_info(&server, "bob", &bob_info).await;
    let alice_member = json!({"client": alice_id, "user": "alice", "info": alice_info});
    let bob_member = json!({"client": bob_id, "user": "bob", "info": bob_info});

    let id = alice
        .send(json!({"type": "subscribe", "channel": "join:x"}))
        .await
        .unwrap();
    let first = alice.next_frame(WAIT).await.unwrap();
    assert_eq!(
        (first["type"].clone(), first["id"].clone()),
        (json!("reply"), json!(id))
    );
    let own = alice.next_frame(WAIT).await.unwrap();
    assert_eq!(
        own,
        json!({"type": "join", "channel": "join:x", "member": alice_member})
    );

    let id = bob
        .send(json!({"type": "subscribe", "channel": "join:x"}))
        .await
        .unwrap();
    let first = bob.next_frame(WAIT).await.unwrap();
    assert_eq!(
        (first["type"].clone(), first["id"].clone()),
        (json!("reply"), json!(id))
    );
    let own = bob.next_frame(WAIT).await.unwrap();
    assert_eq!(
        own,
        json!({"type": "join", "channel": "join:x", "member": bob_member})
    );
    // Alice learns that Bob joined; Bob is not told about Alice again.
    let push = next_presence_event(&mut alice, "join", "join:x").await;
    assert_eq!(push["member"], bob_member);
    assert_quiet(&mut alice, "only one join").await;
    assert_quiet(&mut bob, "only its own join").await;
    server.stop().await;
}

#[tokio::test]
async fn leave_is_pushed_on_unsubscribe_and_on_connection_close() {
    let server = server_with(JOIN_LEAVE).await;
    let (mut alice, alice_id) = connect_with_info(&server, "alice", &json!({"n": 1})).await;
    let (mut bob, bob_id) = connect_with_info(&server, "bob", &json!({"n": 2})).await;
    let (mut carol, carol_id) = connect_with_info(&server, "carol", &json!({"n": 3})).await;
    alice.subscribe("leave:x").await.unwrap();
    bob.subscribe("leave:x").await.unwrap();
    carol.subscribe("leave:x").await.unwrap();
    // Drain the joins: alice sees 3, bob 2, carol 1.
    for _ in 0..3 {
        next_presence_event(&mut alice, "join", "leave:x").await;
    }
    for _ in 0..2 {
        next_presence_event(&mut bob, "join", "leave:x").await;
    }
    next_presence_event(&mut carol, "join", "leave:x").await;

    bob.unsubscribe("leave:x").await.unwrap();
    let bob_member = json!({"client": bob_id, "user": "bob", "info": {"n": 2}});
    for client in [&mut alice, &mut carol] {
        let push = next_presence_event(client, "leave", "leave:x").await;
        assert_eq!(push["member"], bob_member);
    }
    assert_quiet(&mut bob, "no pushes after unsubscribing").await;

    // Carol's socket just goes away.
    drop(carol);
    let push = next_presence_event(&mut alice, "leave", "leave:x").await;
    assert_eq!(
        push["member"],
        json!({"client": carol_id, "user": "carol", "info": {"n": 3}})
    );
    assert_quiet(&mut alice, "one leave each").await;

    let reply = alice.presence("leave:x").await.unwrap();
    assert_eq!(
        sorted_members(&reply),
        vec![json!({"client": alice_id, "user": "alice", "info": {"n": 1}})]
    );
    server.stop().await;
}

#[tokio::test]
async fn presence_disabled_namespace_answers_not_found() {
    let server =
        server_with("[[namespace]]\nname = \"nopres\"\npresence = false\njoin_leave = false\n")
            .await;
    let mut alice = server.connect_as("alice").await;
    alice.subscribe("nopres:x").await.unwrap();
    match alice.presence("nopres:x").await {
        Err(Error::Server { code, status, .. }) => {
            assert_eq!((code.as_str(), status), ("not_found", None));
        }
        other => panic!("expected a not_found error frame, got {other:?}"),
    }
    // The connection goes on: other channels still have presence.
    alice.subscribe("other:x").await.unwrap();
    let reply = alice.presence("other:x").await.unwrap();
    assert_eq!(reply["members"].as_array().unwrap().len(), 1);
    // And the API says the same.
    assert_eq!(
        error_code(server.api().presence("nopres:x").await),
        "not_found"
    );
    server.stop().await;
}

#[tokio::test]
async fn joins_and_leaves_are_announced_only_where_a_namespace_asks() {
    // Spec §7 (v1.1): with no namespace configured, presence is kept but nobody is told of
    // every arrival and departure.
    let server = TestServer::start().await;
    let mut alice = server.connect_as("alice").await;
    alice.subscribe("plain").await.unwrap();
    let mut bob = server.connect_as("bob").await;
    bob.subscribe("plain").await.unwrap();
    let members = server.api().presence("plain").await.unwrap();
    assert_eq!(members["members"].as_array().unwrap().len(), 2);
    bob.unsubscribe("plain").await.unwrap();
    assert_quiet(&mut alice, "default namespace").await;
}

#[tokio::test]
async fn join_leave_disabled_namespace_pushes_no_events() {
    let server =
        server_with("[[namespace]]\nname = \"silent\"\npresence = true\njoin_leave = false\n")
            .await;
    let (mut alice, alice_id) = connect_with_info(&server, "alice", &json!("a")).await;
    let (mut bob, bob_id) = connect_with_info(&server, "bob", &json!("b")).await;
    alice.subscribe("silent:x").await.unwrap();
    bob.subscribe("silent:x").await.unwrap();

    // Presence still works...
    let reply = alice.presence("silent:x").await.unwrap();
    let mut expected = vec![
        json!({"client": alice_id, "user": "alice", "info": "a"}),
        json!({"client": bob_id, "user": "bob", "info": "b"}),
    ];
    expected.sort_by(|a, b| a["client"].as_str().cmp(&b["client"].as_str()));
    assert_eq!(sorted_members(&reply), expected);

    // ...but nobody is told about joins or leaves.
    bob.unsubscribe("silent:x").await.unwrap();
    assert_quiet(&mut alice, "join_leave = false").await;
    assert_quiet(&mut bob, "join_leave = false").await;

    // Messages still flow.
    server
        .api()
        .publish("silent:x", &json!("hi"))
        .await
        .unwrap();
    let msg = alice.next_push(WAIT).await.unwrap();
    assert_eq!(
        (msg["type"].clone(), msg["data"].clone()),
        (json!("message"), json!("hi"))
    );
    server.stop().await;
}

/// A reader of an unpublished channel was told offset 0 of an epoch nobody keeps (reading
/// leaves nothing behind, spec §8); coming back with that position misses nothing.
#[tokio::test]
async fn since_offset_zero_recovers_whatever_epoch_it_names() {
    let server = TestServer::start().await;
    let mut early = server.connect_as("early").await;
    let before = early.history("zero:c", None, None).await.unwrap();
    assert_eq!(before["offset"], 0);
    early.close().await.unwrap();
    for n in 1..=3 {
        server.api().publish("zero:c", &json!(n)).await.unwrap();
    }
    let mut client = server.connect_as("later").await;
    let reply = client
        .subscribe_since("zero:c", 0, before["epoch"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(reply["recovered"], true, "{reply}");
    let got: Vec<Value> = collect(&mut client, "zero:c", 3)
        .await
        .iter()
        .map(|m| json!([m["offset"], m["data"]]))
        .collect();
    assert_eq!(got, vec![json!([1, 1]), json!([2, 2]), json!([3, 3])]);
    assert_quiet(&mut client, "nothing repeated").await;
}
