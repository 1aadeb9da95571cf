//! The NATS engine against the machine's NATS (JetStream on 127.0.0.1:4222, as `.ci/run`
//! starts it), without a server around it: positions, history limits, racing publishers and
//! names that subjects could not hold as they are.
#![cfg(feature = "nats")]

use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use switchboard_core::engine::{
    BoxFuture, Engine, EngineHandler, HistoryQuery, NodeAnswer, NodeInfo, NodeRequest,
    PresenceEvent, PresenceMember, Publication, RoomEvent, StreamOptions,
};
use switchboard_engines::nats::{NatsEngine, NatsOptions};

const NATS: &str = "nats://127.0.0.1:4222";

/// A hub stand-in that keeps the offsets delivered and the channels reported lost.
#[derive(Default)]
struct Recorder {
    offsets: parking_lot::Mutex<Vec<u64>>,
    lost: parking_lot::Mutex<Vec<String>>,
}

impl EngineHandler for Recorder {
    fn on_publication(&self, _: &str, publication: &Publication) {
        self.offsets.lock().push(publication.offset);
    }
    fn on_presence_event(&self, _: &str, _: PresenceEvent, _: &PresenceMember) {}
    fn on_room_event(&self, _: &str, _: &RoomEvent) {}
    fn on_stream_lost(&self, channel: &str) {
        self.lost.lock().push(channel.to_owned());
    }
    fn on_memberships_lost(&self) {}
    fn on_request(self: Arc<Self>, _: NodeRequest) -> BoxFuture<NodeAnswer> {
        Box::pin(async { NodeAnswer::Count { count: 0 } })
    }
    fn node_info(&self) -> NodeInfo {
        NodeInfo::default()
    }
    fn announces_presence(&self, _: &str) -> bool {
        false
    }
}

fn options(size: usize, ttl: Duration) -> StreamOptions {
    StreamOptions {
        history_size: size,
        history_ttl: ttl,
    }
}

/// A prefix of its own, whose streams are deleted when the test ends.
struct Prefix(String);

impl Prefix {
    fn new(test: &str) -> Prefix {
        Prefix(format!(
            "sbunit-{test}-{}-{:08x}",
            std::process::id(),
            rand_suffix()
        ))
    }

    async fn engine(&self) -> (NatsEngine, Arc<dyn EngineHandler>) {
        self.engine_with(Arc::new(Recorder::default())).await
    }

    async fn engine_with(
        &self,
        handler: Arc<dyn EngineHandler>,
    ) -> (NatsEngine, Arc<dyn EngineHandler>) {
        self.engine_at(NATS, handler).await
    }

    async fn engine_at(
        &self,
        url: &str,
        handler: Arc<dyn EngineHandler>,
    ) -> (NatsEngine, Arc<dyn EngineHandler>) {
        let engine = NatsEngine::connect(NatsOptions {
            url: url.into(),
            prefix: self.0.clone(),
            node_id: switchboard_core::engine::new_node_id(),
            node_ttl: Duration::from_secs(5),
            idle_ttl: Duration::from_secs(3600),
            stream_options: Arc::new(|_| options(100, Duration::from_secs(300))),
        })
        .await
        .expect("NATS with JetStream on 127.0.0.1:4222");
        engine.set_handler(Arc::downgrade(&handler) as Weak<dyn EngineHandler>);
        (engine, handler)
    }

    async fn clean(self) {
        let client = async_nats::connect(NATS).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let names: Vec<String> = js
            .stream_names()
            .filter_map(|name| async move { name.ok() })
            .collect()
            .await;
        for name in names
            .iter()
            .filter(|n| n.starts_with(&format!("{}_", self.0)))
        {
            js.delete_stream(name).await.unwrap();
        }
    }
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
}

#[tokio::test]
async fn positions_outlive_history_kept_by_size_and_age() {
    let prefix = Prefix::new("positions");
    let (engine, _handler) = prefix.engine().await;
    let none = options(0, Duration::from_secs(60));
    let mut epochs = Vec::new();
    for n in 1..=3u64 {
        let position = engine
            .publish("zero", Bytes::from("1"), none)
            .await
            .unwrap();
        assert_eq!(position.offset, n);
        epochs.push(position.epoch);
    }
    assert!(epochs.iter().all(|e| *e == epochs[0]), "one epoch");
    let all = HistoryQuery {
        since: None,
        limit: None,
    };
    let history = engine.history("zero", all.clone(), none).await.unwrap();
    assert!(history.publications.is_empty(), "history_size 0 keeps none");
    assert_eq!(history.position.offset, 3);
    let since_one = HistoryQuery {
        since: Some((1, epochs[0].to_string())),
        limit: None,
    };
    let history = engine.history("zero", since_one, none).await.unwrap();
    assert!(!history.complete);

    // Messages older than history_ttl are gone from history, the position is not.
    let short = options(10, Duration::from_secs(1));
    let first = engine
        .publish("aging", Bytes::from("1"), short)
        .await
        .unwrap();
    engine
        .publish("aging", Bytes::from("2"), short)
        .await
        .unwrap();
    let history = engine.history("aging", all.clone(), short).await.unwrap();
    assert_eq!(history.publications.len(), 2);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let history = engine.history("aging", all.clone(), short).await.unwrap();
    assert!(history.publications.is_empty(), "{history:?}");
    assert_eq!(history.position.offset, 2);
    let next = engine
        .publish("aging", Bytes::from("3"), short)
        .await
        .unwrap();
    assert_eq!((next.offset, &next.epoch), (3, &first.epoch));

    // A size limit keeps the latest messages.
    let three = options(3, Duration::from_secs(60));
    for n in 1..=5 {
        engine
            .publish("sized", Bytes::from(n.to_string()), three)
            .await
            .unwrap();
    }
    let history = engine.history("sized", all, three).await.unwrap();
    let offsets: Vec<u64> = history.publications.iter().map(|p| p.offset).collect();
    assert_eq!(offsets, [3, 4, 5]);
    drop(engine);
    prefix.clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_publishers_on_two_nodes_take_each_offset_once() {
    let prefix = Prefix::new("race");
    let (a, _ha) = prefix.engine().await;
    let (b, _hb) = prefix.engine().await;
    let (a, b) = (Arc::new(a), Arc::new(b));
    let keep = options(100, Duration::from_secs(60));
    let mut tasks = Vec::new();
    for engine in [a.clone(), b.clone()] {
        tasks.push(tokio::spawn(async move {
            let mut positions = Vec::new();
            for n in 0..25 {
                let data = Bytes::from(n.to_string());
                positions.push(engine.publish("fresh", data, keep).await.unwrap());
            }
            positions
        }));
    }
    let mut positions = Vec::new();
    for task in tasks {
        positions.extend(task.await.unwrap());
    }
    let mut offsets: Vec<u64> = positions.iter().map(|p| p.offset).collect();
    offsets.sort();
    assert_eq!(offsets, (1..=50).collect::<Vec<_>>());
    assert!(positions.iter().all(|p| p.epoch == positions[0].epoch));
    drop((a, b));
    prefix.clean().await;
}

#[tokio::test]
async fn names_with_subject_wildcards_and_dots_stay_apart() {
    let prefix = Prefix::new("names");
    let (engine, _handler) = prefix.engine().await;
    let keep = options(10, Duration::from_secs(60));
    let channels = ["a.b", "a.*", "a.>", "a b", "a"];
    for channel in channels {
        engine
            .publish(channel, Bytes::from(format!("\"{channel}\"")), keep)
            .await
            .unwrap();
        let member = PresenceMember {
            client: format!("client of {channel}").into(),
            user: "u".into(),
            info: None,
        };
        engine.presence_add(channel, member).await.unwrap();
    }
    for channel in channels {
        let all = HistoryQuery {
            since: None,
            limit: None,
        };
        let history = engine.history(channel, all, keep).await.unwrap();
        let data: Vec<Bytes> = history.publications.into_iter().map(|p| p.data).collect();
        assert_eq!(data, [Bytes::from(format!("\"{channel}\""))], "{channel}");
        let members = engine.presence(channel).await.unwrap();
        assert_eq!(members.len(), 1, "{channel}");
        assert_eq!(&*members[0].client, format!("client of {channel}"));
    }
    drop(engine);
    prefix.clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_offset_arriving_first_is_filled_in_order_not_skipped() {
    let prefix = Prefix::new("reorder");
    let recorder = Arc::new(Recorder::default());
    let (engine, _handler) = prefix.engine_with(recorder.clone()).await;
    // A channel nobody published yet: subscribing fixes its epoch.
    engine.subscribe("fresh").await.unwrap();
    let keep = options(100, Duration::from_secs(300));
    let now = HistoryQuery {
        since: None,
        limit: Some(0),
    };
    let epoch = engine
        .history("fresh", now, keep)
        .await
        .unwrap()
        .position
        .epoch;

    // Offsets 1 and 2 stored by "another node", whose announcements cross on the way.
    let client = async_nats::connect(NATS).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let token = "ZnJlc2g"; // "fresh" as a subject token
    for offset in [1u64, 2] {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Sb-Offset", offset.to_string().as_str());
        headers.insert("Sb-Epoch", &*epoch);
        let subject = format!("{}.h.100.{token}", prefix.0);
        js.publish_with_headers(subject, headers, Bytes::from(offset.to_string()))
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let topic = format!("{}.c.{token}", prefix.0);
    for offset in [2u64, 1] {
        let announce = format!("m{offset} {epoch} {offset}");
        client
            .publish(topic.clone(), announce.into())
            .await
            .unwrap();
    }
    client.flush().await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while recorder.offsets.lock().len() < 2 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(*recorder.offsets.lock(), [1, 2], "in order, once each");
    assert!(recorder.lost.lock().is_empty(), "a reorder is not a loss");
    drop(engine);
    prefix.clean().await;
}

#[tokio::test]
async fn a_url_may_list_several_servers_of_which_one_answers() {
    let prefix = Prefix::new("servers");
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nobody = format!("nats://{}", silent.local_addr().unwrap());
    drop(silent);
    for _ in 0..3 {
        // async-nats tries the servers in random order: either way one answers.
        let (engine, _handler) = prefix
            .engine_at(&format!("{nobody}, {NATS}"), Arc::new(Recorder::default()))
            .await;
        let keep = options(10, Duration::from_secs(60));
        engine.publish("c", Bytes::from("1"), keep).await.unwrap();
    }
    prefix.clean().await;
}
