//! The memory engine with `[engine] data_dir`: every acknowledged message survives `kill -9`,
//! with the same epoch and offsets, and clients recover across the restart.

use crate::common::*;
use serde_json::json;
use switchboard_client::{ApiClient, WsClient};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_kill_9_with_the_same_epoch_and_offsets() {
    let dir = std::env::temp_dir().join(format!("sb-durable-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let config = dir.join("switchboard.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\n{}[engine]\ndata_dir = {:?}\n\
             [[namespace]]\nname = \"keep\"\nhistory_size = 50\nhistory_ttl = \"1h\"\n",
            auth_toml(),
            dir.join("data").to_str().unwrap()
        ),
    )
    .unwrap();

    let (mut first, base) = spawn_server(&config);
    let api = ApiClient::new(&base, Some(API_KEY));
    let mut epoch = String::new();
    for n in 1..=20u64 {
        let answer = api.publish("keep:log", &json!({"n": n})).await.unwrap();
        assert_eq!(answer["offset"], n);
        epoch = answer["epoch"].as_str().unwrap().to_owned();
    }
    // No graceful anything: the process dies at once.
    first.kill().unwrap();
    first.wait().unwrap();

    let (mut second, base) = spawn_server(&config);
    let api = ApiClient::new(&base, Some(API_KEY));
    let history = api
        .history("keep:log", None, Some((0, &epoch)))
        .await
        .unwrap();
    assert_eq!(
        history["epoch"],
        epoch.as_str(),
        "same epoch after the crash"
    );
    assert_eq!(history["offset"], 20);
    let datas: Vec<u64> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["data"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(datas, (1..=20).collect::<Vec<_>>());

    // Offsets go on from where they were; a client recovers across the restart.
    let answer = api.publish("keep:log", &json!({"n": 21})).await.unwrap();
    assert_eq!(
        (answer["offset"].as_u64(), answer["epoch"].as_str()),
        (Some(21), Some(epoch.as_str()))
    );
    let (mut client, _) = WsClient::connect(&base, Some(&token("reader", &["*"], &[])))
        .await
        .unwrap();
    let reply = client
        .subscribe_since("keep:log", 15, &epoch)
        .await
        .unwrap();
    assert_eq!(reply["recovered"], true);
    for n in 16..=21u64 {
        let message = client.next_message("keep:log", WAIT).await.unwrap();
        assert_eq!(
            (message["offset"].as_u64(), message["data"]["n"].as_u64()),
            (Some(n), Some(n))
        );
    }
    second.kill().unwrap();
    second.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn without_data_dir_a_restart_starts_new_epochs() {
    // The in-process harness: two servers in a row, pure RAM.
    let server = TestServer::start().await;
    let first = server.api().publish("c", &json!(1)).await.unwrap();
    server.stop().await;
    let server = TestServer::start().await;
    let second = server.api().publish("c", &json!(1)).await.unwrap();
    assert_eq!(second["offset"], 1);
    assert_ne!(second["epoch"], first["epoch"]);
    server.stop().await;
}

#[tokio::test]
async fn a_data_dir_with_a_distributed_engine_is_refused_clearly() {
    let config = format!(
        "{}[engine]\nkind = \"nats\"\ndata_dir = \"/tmp/nowhere\"\n",
        auth_toml()
    );
    let message = refused_at_startup(&config).await;
    assert!(message.contains("data_dir"), "{message}");
}
