//! Several Switchboard nodes sharing one real NATS (with JetStream) behave like one server:
//! delivery, offsets, recovery, presence, rooms and the server API across nodes; a `kill -9`ed
//! node's members vanish within `node_ttl`; a NATS restart loses nothing JetStream kept and
//! tells clients when it lost something.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cluster::*;
use crate::common::*;
use futures_util::StreamExt;

/// The machine's NATS (`.ci/run` starts it with JetStream when it is down).
const NATS: &str = "nats://127.0.0.1:4222";

/// The `[engine]` table of a node on `url` with this prefix.
fn nats_engine(url: &str, prefix: &str) -> String {
    format!(
        "[engine]\nkind = \"nats\"\nnats_url = \"{url}\"\nprefix = \"{prefix}\"\nnode_ttl = 2\n"
    )
}

/// Deletes a test's streams when it ends, so runs leave the shared NATS clean.
struct Streams {
    url: String,
    prefix: String,
}

impl Drop for Streams {
    fn drop(&mut self) {
        let (url, prefix) = (self.url.clone(), format!("{}_", self.prefix));
        // Its own runtime on its own thread: drop may run inside the test's runtime.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let Ok(client) = async_nats::connect(url).await else {
                    return;
                };
                let js = async_nats::jetstream::new(client);
                let names: Vec<String> = js
                    .stream_names()
                    .filter_map(|name| async move { name.ok() })
                    .collect()
                    .await;
                for name in names.iter().filter(|n| n.starts_with(&prefix)) {
                    let _ = js.delete_stream(name).await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

async fn shared_nats_nodes(n: usize) -> (Vec<TestServer>, Streams) {
    let prefix = unique_prefix("nats");
    let nodes = start_nodes(&nats_engine(NATS, &prefix), n).await;
    let streams = Streams {
        url: NATS.into(),
        prefix,
    };
    (nodes, streams)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_on_any_node_reaches_every_node_with_consecutive_offsets() {
    let (nodes, _streams) = shared_nats_nodes(3).await;
    publish_anywhere_deliver_everywhere(&nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_on_two_nodes_keep_offsets_and_order() {
    let (nodes, _streams) = shared_nats_nodes(3).await;
    concurrent_publishers_keep_order(&nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_moving_to_another_node_recovers_exactly_what_it_missed() {
    let (nodes, _streams) = shared_nats_nodes(3).await;
    recover_on_another_node(&nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_and_join_leave_are_seen_from_every_node() {
    let (nodes, _streams) = shared_nats_nodes(3).await;
    presence_spans_nodes(&nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_peers_on_different_nodes_see_each_other() {
    let (nodes, _streams) = shared_nats_nodes(3).await;
    rooms_span_nodes(&nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_api_covers_every_node() {
    let (nodes, _streams) = shared_nats_nodes(3).await;
    server_api_spans_nodes(&nodes).await;
}

#[tokio::test]
async fn an_unreachable_nats_is_refused_at_startup_with_a_clear_message() {
    let url = format!("nats://127.0.0.1:{}", free_port());
    let config = format!("{}{}", auth_toml(), nats_engine(&url, "nowhere"));
    let message = refused_at_startup(&config).await;
    assert!(
        message.contains("cannot reach NATS") && message.contains(&url),
        "{message}"
    );
}

#[tokio::test]
async fn a_nats_without_jetstream_is_refused_at_startup_with_a_clear_message() {
    let port = free_port();
    let mut plain = Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nats-server runs");
    wait_for_port(port);
    let url = format!("nats://127.0.0.1:{port}");
    let config = format!("{}{}", auth_toml(), nats_engine(&url, "nojs"));
    let message = refused_at_startup(&config).await;
    plain.kill().unwrap();
    plain.wait().unwrap();
    assert!(
        message.contains("JetStream") && message.contains(&url),
        "{message}"
    );
}

fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nats-server did not start on {port}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_members_and_peers_vanish_within_node_ttl() {
    let prefix = unique_prefix("nats");
    let _streams = Streams {
        url: NATS.into(),
        prefix: prefix.clone(),
    };
    killed_node_vanishes(&nats_engine(NATS, &prefix)).await;
}

/// A NATS server of the test's own on a free port, with JetStream storing in `dir` (a file
/// store), so it can be killed and restarted with or without its data.
struct OwnNats {
    port: u16,
    /// Its monitoring endpoint (`/connz`).
    monitor: u16,
    dir: std::path::PathBuf,
    child: Option<Child>,
    keeps_data: bool,
}

impl OwnNats {
    fn start(keeps_data: bool) -> OwnNats {
        let mut nats = OwnNats {
            port: free_port(),
            monitor: free_port(),
            dir: temp_dir(&format!("nats-{keeps_data}")),
            child: None,
            keeps_data,
        };
        OwnBroker::restart(&mut nats);
        nats
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl OwnBroker for OwnNats {
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    fn restart(&mut self) {
        if !self.keeps_data {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js"])
            .args(["-m", &self.monitor.to_string(), "-sd"])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server runs (apt-get install nats-server)");
        self.child = Some(child);
        wait_for_port(self.port);
    }
}

impl Drop for OwnNats {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// How many subscriptions to `subject` the NATS server holds, over every connection.
async fn subscriptions_to(nats: &OwnNats, subject: &str) -> usize {
    let url = format!("http://127.0.0.1:{}/connz?subs=1", nats.monitor);
    let connz: serde_json::Value = reqwest::get(url).await.unwrap().json().await.unwrap();
    connz["connections"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["subscriptions_list"].as_array())
        .flatten()
        .filter(|s| *s == subject)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_nats_subscription_per_channel_per_node() {
    let nats = OwnNats::start(false);
    let nodes = start_nodes(&nats_engine(&nats.url(), "subs"), 1).await;
    let mut clients = Vec::new();
    for i in 0..5 {
        let (mut client, _) = member(&nodes[0], &format!("u{i}")).await;
        client.subscribe("chat:many").await.unwrap();
        clients.push(client);
    }
    // "chat:many" as a subject token (base64url).
    let subject = "subs.c.Y2hhdDptYW55";
    assert_eq!(
        subscriptions_to(&nats, subject).await,
        1,
        "five clients, one node"
    );
    for client in clients {
        client.close().await.unwrap();
    }
    eventually(
        WAIT,
        "the node unsubscribes when its last client leaves",
        || async { subscriptions_to(&nats, subject).await == 0 },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_restart_with_its_data_loses_nothing_and_repeats_nothing() {
    let mut nats = OwnNats::start(true);
    let engine = nats_engine(&nats.url(), "restart");
    restart_keeps_everything(&mut nats, &engine).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_that_lost_its_data_sends_clients_back_to_learn_recovered_false() {
    let mut nats = OwnNats::start(false);
    let engine = nats_engine(&nats.url(), "wiped");
    restart_without_data_sends_clients_back(&mut nats, &engine).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_leave_no_subjects_behind() {
    let (nodes, streams) = shared_nats_nodes(1).await;
    let prefix = format!("{}_history_", streams.prefix);
    readers_leave_nothing_behind(&nodes, || {
        let prefix = prefix.clone();
        async move {
            let client = async_nats::connect(NATS).await.unwrap();
            let js = async_nats::jetstream::new(client);
            let names: Vec<String> = js
                .stream_names()
                .filter_map(|name| async move { name.ok() })
                .collect()
                .await;
            let mut subjects = 0;
            for name in names.iter().filter(|n| n.starts_with(&prefix)) {
                let mut stream = js.get_stream(name).await.unwrap();
                let info = stream.info().await.unwrap();
                subjects += info.state.subjects_count as usize;
            }
            subjects
        }
    })
    .await;
}
