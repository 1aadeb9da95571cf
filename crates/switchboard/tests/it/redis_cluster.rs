//! Several Switchboard nodes sharing one real Redis behave like one server: delivery, offsets,
//! recovery, presence, rooms and the server API across nodes; a `kill -9`ed node's members
//! vanish within `node_ttl`; a Redis restart loses nothing it kept and tells clients when it
//! lost something.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cluster::*;
use crate::common::*;
use serde_json::json;

const REDIS: &str = "redis://127.0.0.1:6379";

/// The `[engine]` table of a node on `url` with this key prefix.
fn redis_engine(url: &str, prefix: &str) -> String {
    format!(
        "[engine]\nkind = \"redis\"\nredis_url = \"{url}\"\nprefix = \"{prefix}\"\nnode_ttl = 2\n"
    )
}

/// Deletes a test's keys when it ends, so runs leave the shared Redis clean.
struct Keys {
    url: String,
    prefix: String,
}

impl Keys {
    fn delete_all(&self) {
        let Ok(client) = redis::Client::open(self.url.as_str()) else {
            return;
        };
        let Ok(mut conn) = client.get_connection() else {
            return;
        };
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*", self.prefix))
            .query(&mut conn)
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: redis::RedisResult<()> = redis::cmd("DEL").arg(keys).query(&mut conn);
        }
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        self.delete_all();
    }
}

async fn shared_redis_nodes(n: usize) -> (Vec<TestServer>, Keys) {
    let prefix = unique_prefix("redis");
    let nodes = start_nodes(&redis_engine(REDIS, &prefix), n).await;
    let keys = Keys {
        url: REDIS.into(),
        prefix,
    };
    (nodes, keys)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_on_any_node_reaches_every_node_with_consecutive_offsets() {
    let (nodes, _keys) = shared_redis_nodes(3).await;
    publish_anywhere_deliver_everywhere(&nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_on_two_nodes_keep_offsets_and_order() {
    let (nodes, _keys) = shared_redis_nodes(3).await;
    concurrent_publishers_keep_order(&nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_moving_to_another_node_recovers_exactly_what_it_missed() {
    let (nodes, _keys) = shared_redis_nodes(3).await;
    recover_on_another_node(&nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_and_join_leave_are_seen_from_every_node() {
    let (nodes, _keys) = shared_redis_nodes(3).await;
    presence_spans_nodes(&nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_peers_on_different_nodes_see_each_other() {
    let (nodes, _keys) = shared_redis_nodes(3).await;
    rooms_span_nodes(&nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_api_covers_every_node() {
    let (nodes, _keys) = shared_redis_nodes(3).await;
    server_api_spans_nodes(&nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_redis_subscription_per_channel_per_node() {
    let (nodes, _keys) = shared_redis_nodes(1).await;
    let prefix = &_keys.prefix;
    let mut clients = Vec::new();
    for i in 0..5 {
        let (mut client, _) = member(&nodes[0], &format!("u{i}")).await;
        client.subscribe("chat:many").await.unwrap();
        clients.push(client);
    }
    let client = redis::Client::open(REDIS).unwrap();
    let mut conn = client.get_connection().unwrap();
    let topic = format!("{prefix}:c:chat:many");
    let counts: Vec<(String, u64)> = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(&topic)
        .query(&mut conn)
        .unwrap();
    assert_eq!(counts, vec![(topic.clone(), 1)], "five clients, one node");
    for client in clients {
        client.close().await.unwrap();
    }
    eventually(
        WAIT,
        "the node unsubscribes when its last client leaves",
        || {
            let counts: Vec<(String, u64)> = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg(&topic)
                .query(&mut conn)
                .unwrap();
            std::future::ready(counts == vec![(topic.clone(), 0)])
        },
    )
    .await;
}

#[tokio::test]
async fn an_unreachable_redis_is_refused_at_startup_with_a_clear_message() {
    let url = format!("redis://127.0.0.1:{}", free_port());
    let config = format!("{}{}", auth_toml(), redis_engine(&url, "nowhere"));
    let message = refused_at_startup(&config).await;
    assert!(
        message.contains("cannot reach Redis") && message.contains(&url),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_members_and_peers_vanish_within_node_ttl() {
    let prefix = unique_prefix("redis");
    let _keys = Keys {
        url: REDIS.into(),
        prefix: prefix.clone(),
    };
    killed_node_vanishes(&redis_engine(REDIS, &prefix)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_members_vanished_from_redis_reconnects_its_clients() {
    let (nodes, keys) = shared_redis_nodes(1).await;
    let (mut client, _) = member(&nodes[0], "dana").await;
    client.subscribe("chat:again").await.unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await; // a heartbeat or two
    keys.delete_all(); // as if Redis lost its data, or reaped this node during a stall

    let (code, _) = client.wait_close(Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        code,
        Some(4009),
        "told to reconnect so its presence is recorded again"
    );
    let (mut client, _) = member(&nodes[0], "dana").await;
    client.subscribe("chat:again").await.unwrap();
    let present = nodes[0].api().presence("chat:again").await.unwrap();
    assert_eq!(present["members"][0]["user"], "dana", "{present}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_records_where_it_holds_members_only_while_it_does() {
    let (nodes, keys) = shared_redis_nodes(1).await;
    let info = nodes[0].api().info().await.unwrap();
    let node = info["nodes"][0]["id"].as_str().unwrap().to_owned();
    let holdings_key = format!("{}:nk:{node}", keys.prefix);
    let mut conn = redis::Client::open(REDIS)
        .unwrap()
        .get_connection()
        .unwrap();
    let mut holdings = move || {
        let mut all: Vec<String> = redis::cmd("SMEMBERS")
            .arg(&holdings_key)
            .query(&mut conn)
            .unwrap();
        all.sort();
        all
    };
    let (mut first, _) = member(&nodes[0], "first").await;
    let (mut second, _) = member(&nodes[0], "second").await;
    for client in [&mut first, &mut second] {
        client.subscribe("chat:h1").await.unwrap();
    }
    first.subscribe("chat:h2").await.unwrap();
    first
        .request(json!({"type": "join_room", "room": "call:h"}))
        .await
        .unwrap();
    assert_eq!(holdings(), ["p:chat:h1", "p:chat:h2", "r:call:h"]);

    first.unsubscribe("chat:h1").await.unwrap();
    assert_eq!(
        holdings(),
        ["p:chat:h1", "p:chat:h2", "r:call:h"],
        "second is still in h1"
    );
    first.close().await.unwrap();
    eventually(WAIT, "first's channels and room are given up", || {
        std::future::ready(holdings() == ["p:chat:h1"])
    })
    .await;
    second.close().await.unwrap();
    eventually(WAIT, "nothing held once every member left", || {
        std::future::ready(holdings().is_empty())
    })
    .await;
}

/// A Redis of the test's own on a free port, so it can be killed and restarted.
struct OwnRedis {
    port: u16,
    dir: std::path::PathBuf,
    child: Option<Child>,
    persistent: bool,
}

impl OwnRedis {
    fn start(persistent: bool) -> OwnRedis {
        let mut redis = OwnRedis {
            port: free_port(),
            dir: temp_dir(&format!("redis-{persistent}")),
            child: None,
            persistent,
        };
        redis.restart();
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn restart(&mut self) {
        let mut args = vec![
            "--port".to_owned(),
            self.port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--save".into(),
            String::new(),
            "--dir".into(),
            self.dir.to_str().unwrap().into(),
        ];
        if self.persistent {
            args.extend(["--appendonly", "yes", "--appendfsync", "always"].map(String::from));
        } else {
            args.extend(["--appendonly", "no"].map(String::from));
        }
        let child = Command::new("redis-server")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (apt-get install redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(client) = redis::Client::open(self.url())
                && let Ok(mut conn) = client.get_connection()
                && redis::cmd("PING").query::<String>(&mut conn).is_ok()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server did not start on {}", self.port);
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }
}

impl OwnBroker for OwnRedis {
    fn kill(&mut self) {
        OwnRedis::kill(self);
    }

    fn restart(&mut self) {
        OwnRedis::restart(self);
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_with_its_data_loses_nothing_and_repeats_nothing() {
    let mut redis = OwnRedis::start(true);
    let engine = redis_engine(&redis.url(), "restart");
    restart_keeps_everything(&mut redis, &engine).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_lost_its_data_sends_clients_back_to_learn_recovered_false() {
    let mut redis = OwnRedis::start(false);
    let engine = redis_engine(&redis.url(), "wiped");
    restart_without_data_sends_clients_back(&mut redis, &engine).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_leave_no_keys_behind() {
    let (nodes, keys) = shared_redis_nodes(1).await;
    // A channel's stream is its meta hash (and, once it keeps history, its entries).
    let metas = format!("{}:m:*", keys.prefix);
    let mut conn = redis::Client::open(REDIS)
        .unwrap()
        .get_connection()
        .unwrap();
    readers_leave_nothing_behind(&nodes, || {
        let found: Vec<String> = redis::cmd("KEYS").arg(&metas).query(&mut conn).unwrap();
        std::future::ready(found.len())
    })
    .await;
}

/// Records in Redis that no Switchboard wrote (a history entry without data, a presence entry
/// that is not a member, a meta hash with a word for an offset) get the reader an error or
/// are skipped; the connection, and everyone else's, goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_records_in_redis_fail_the_command_not_the_connection() {
    let (nodes, keys) = shared_redis_nodes(1).await;
    let (mut client, _) = member(&nodes[0], "reader").await;
    client.subscribe("chat:bad").await.unwrap();
    nodes[0]
        .api()
        .publish("chat:bad", &json!("fine"))
        .await
        .unwrap();
    client.next_message("chat:bad", WAIT).await.unwrap();
    let mut conn = redis::Client::open(REDIS)
        .unwrap()
        .get_connection()
        .unwrap();
    let prefix = &keys.prefix;
    let _: () = redis::cmd("XADD")
        .arg(format!("{prefix}:h:chat:bad"))
        .arg("2-0")
        .arg("junk")
        .arg("1")
        .query(&mut conn)
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg(format!("{prefix}:m:chat:bad"))
        .arg("t")
        .arg("2")
        .query(&mut conn)
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg(format!("{prefix}:p:chat:bad"))
        .arg("ghost")
        .arg(b"\xff\x00not a member".as_slice())
        .query(&mut conn)
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg(format!("{prefix}:m:chat:word"))
        .arg("t")
        .arg("many")
        .arg("e")
        .arg("x")
        .query(&mut conn)
        .unwrap();
    let _ = client.history("chat:bad", None, None).await;
    let _ = client.presence("chat:bad").await;
    let _ = client.history("chat:word", None, None).await;
    let _ = client.subscribe("chat:word").await;
    assert_eq!(
        client.ping().await.unwrap()["type"],
        "pong",
        "still connected"
    );
    let (mut other, _) = member(&nodes[0], "other").await;
    other.subscribe("chat:fine").await.unwrap();
    nodes[0]
        .api()
        .publish("chat:fine", &json!("still"))
        .await
        .unwrap();
    assert_eq!(
        other.next_message("chat:fine", WAIT).await.unwrap()["data"],
        "still"
    );
}
