//! The embedded TURN server: clients allocate relays with the credentials `join_room` and
//! `/api/ice-servers` hand out, data flows through the relay, and bad or expired credentials,
//! loopback peers (unless allowed) and allocations past the per-user limit are refused.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use serde_json::Value;
use tokio::net::UdpSocket;
use turn::client::{Client, ClientConfig};
use webrtc_util::Conn;

const SECRET: &str = "turn-test-secret";

fn config(allow_loopback: bool, max_per_user: usize) -> String {
    format!(
        "[webrtc]\nturn_secret = \"{SECRET}\"\nturn_ttl = 600\n\
         [webrtc.turn]\nlisten = \"127.0.0.1:0\"\npublic_ip = \"127.0.0.1\"\nrealm = \"switchboard\"\n\
         relay_min_port = 40000\nrelay_max_port = 40999\nallow_loopback_peers = {allow_loopback}\n\
         max_allocations_per_user = {max_per_user}\n"
    )
}

/// The TURN entry of `/api/ice-servers` for `user`: (server address, username, password).
async fn turn_entry(server: &TestServer, user: &str) -> (SocketAddr, String, String) {
    let body: Value = reqwest::Client::new()
        .get(format!("{}/api/ice-servers", server.base))
        .bearer_auth(token(user, &[], &[]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let turn = body["ice_servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["urls"][0].as_str().unwrap().starts_with("turn:"))
        .unwrap_or_else(|| panic!("no TURN server in {body}"))
        .clone();
    let url = turn["urls"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .as_str()
        .unwrap();
    let addr = url
        .trim_start_matches("turn:")
        .split('?')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    (
        addr,
        turn["username"].as_str().unwrap().to_owned(),
        turn["credential"].as_str().unwrap().to_owned(),
    )
}

async fn turn_client(addr: SocketAddr, username: &str, password: &str) -> Client {
    let conn = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let client = Client::new(ClientConfig {
        stun_serv_addr: addr.to_string(),
        turn_serv_addr: addr.to_string(),
        username: username.to_owned(),
        password: password.to_owned(),
        realm: "switchboard".into(),
        software: String::new(),
        rto_in_ms: 0,
        conn,
        vnet: None,
    })
    .await
    .unwrap();
    client.listen().await.unwrap();
    client
}

async fn allocate(client: &Client) -> Result<impl Conn, String> {
    tokio::time::timeout(Duration::from_secs(5), client.allocate())
        .await
        .map_err(|_| "allocate timed out".to_string())?
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_both_ways_with_the_credentials_switchboard_hands_out() {
    let server = server_with(&config(true, 10)).await;
    let (addr, username, password) = turn_entry(&server, "alice").await;
    assert!(username.ends_with(":alice"));
    let client = turn_client(addr, &username, &password).await;
    let relay = allocate(&client)
        .await
        .expect("allocation with valid credentials");
    let relay_addr = relay.local_addr().unwrap();
    assert_eq!(relay_addr.ip().to_string(), "127.0.0.1");
    assert!((40000..=40999).contains(&relay_addr.port()), "{relay_addr}");

    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let peer_addr = peer.local_addr().unwrap();
    relay
        .send_to(b"through the relay", peer_addr)
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = tokio::time::timeout(WAIT, peer.recv_from(&mut buf))
        .await
        .expect("peer receives through the relay")
        .unwrap();
    assert_eq!(&buf[..n], b"through the relay");
    assert_eq!(from, relay_addr, "the peer sees the relay address");

    peer.send_to(b"and back", relay_addr).await.unwrap();
    let (n, from) = tokio::time::timeout(WAIT, relay.recv_from(&mut buf))
        .await
        .expect("client receives the peer's answer")
        .unwrap();
    assert_eq!(&buf[..n], b"and back");
    assert_eq!(from, peer_addr);
    client.close().await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_stun_binding_requests_with_the_clients_address() {
    let server = server_with(&config(true, 10)).await;
    let (addr, username, password) = turn_entry(&server, "stan").await;
    let client = turn_client(addr, &username, &password).await;
    let mapped = tokio::time::timeout(WAIT, client.send_binding_request())
        .await
        .expect("STUN answer in time")
        .expect("STUN binding succeeds");
    assert_eq!(mapped.ip().to_string(), "127.0.0.1");
    assert_ne!(
        mapped.port(),
        addr.port(),
        "the client's own address, not the server's"
    );
    client.close().await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_or_forged_credentials_get_no_allocation() {
    let server = server_with(&config(true, 10)).await;
    let (addr, username, password) = turn_entry(&server, "bob").await;
    let (expired_user, expired_password) =
        switchboard_rtc::turn_credentials(SECRET, "bob", switchboard_core::unix_now() - 1);
    let forged = switchboard_rtc::turn_password("not-the-secret", &username);
    for (user, pass, what) in [
        (expired_user.as_str(), expired_password.as_str(), "expired"),
        (username.as_str(), forged.as_str(), "forged"),
        ("bob", password.as_str(), "no expiry"),
    ] {
        let client = turn_client(addr, user, pass).await;
        assert!(
            allocate(&client).await.is_err(),
            "{what} credentials allocated"
        );
        client.close().await.unwrap();
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_peers_are_refused_unless_allowed() {
    let server = server_with(&config(false, 10)).await;
    let (addr, username, password) = turn_entry(&server, "carol").await;
    let client = turn_client(addr, &username, &password).await;
    let relay = allocate(&client).await.expect("allocation");
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let _ = relay
        .send_to(b"to loopback", peer.local_addr().unwrap())
        .await;
    let mut buf = [0u8; 64];
    let got = tokio::time::timeout(Duration::from_millis(700), peer.recv_from(&mut buf)).await;
    assert!(got.is_err(), "a loopback peer got relayed data");
    client.close().await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocations_past_the_per_user_limit_are_refused() {
    let server = server_with(&config(true, 2)).await;
    let (addr, username, password) = turn_entry(&server, "dave").await;
    let clients = vec![
        turn_client(addr, &username, &password).await,
        turn_client(addr, &username, &password).await,
    ];
    let mut relays = Vec::new();
    for client in &clients {
        relays.push(allocate(client).await.expect("within the limit"));
    }
    let third = turn_client(addr, &username, &password).await;
    assert!(
        allocate(&third).await.is_err(),
        "a third allocation for dave"
    );
    // Another user is not affected.
    let (_, other_user, other_password) = turn_entry(&server, "erin").await;
    let erin = turn_client(addr, &other_user, &other_password).await;
    allocate(&erin).await.expect("erin has her own limit");
    drop(relays);
    for client in &clients {
        client.close().await.unwrap();
    }
    server.stop().await;
}
