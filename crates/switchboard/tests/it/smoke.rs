//! The shortest path a user takes: connect, subscribe, publish through the API, receive.

use crate::common::*;
use serde_json::json;

#[tokio::test]
async fn publish_through_api_reaches_websocket_subscriber() {
    let server = TestServer::start().await;
    let mut client = server.connect_as("alice").await;
    let reply = client.subscribe("chat:lobby").await.unwrap();
    assert_eq!(reply["channel"], "chat:lobby");
    assert_eq!(reply["offset"], 0);
    let published = server
        .api()
        .publish("chat:lobby", &json!({"text": "hi"}))
        .await
        .unwrap();
    assert_eq!(published["offset"], 1);
    let message = client.next_message("chat:lobby", WAIT).await.unwrap();
    assert_eq!(message["data"], json!({"text": "hi"}));
    assert_eq!(message["offset"], 1);
    assert_eq!(message["epoch"], published["epoch"]);
    server.stop().await;
}
