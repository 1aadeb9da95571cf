//! The embedded TURN server: clients allocate relays with the credentials `join_room` and
//! `/api/ice-servers` hand out, data flows through the relay, and bad or expired credentials,
//! special peers (loopback unless allowed, private, link-local, ...: spec §8) and allocations
//! past the per-user limit are refused.
//!
//! These tests never send a datagram towards a refused address other than loopback: asking
//! for a permission or a channel towards one sends nothing to it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use serde_json::Value;
use stun::agent::TransactionId;
use stun::attributes::{ATTR_NONCE, ATTR_REALM, ATTR_USERNAME};
use stun::error_code::{CODE_STALE_NONCE, CODE_UNAUTHORIZED, ErrorCodeAttribute};
use stun::integrity::MessageIntegrity;
use stun::message::{
    CLASS_REQUEST, Getter, METHOD_ALLOCATE, METHOD_CHANNEL_BIND, METHOD_CREATE_PERMISSION, Message,
    MessageType, Method, Setter,
};
use stun::textattrs::TextAttribute;
use tokio::net::UdpSocket;
use turn::client::{Client, ClientConfig};
use turn::proto::PROTO_UDP;
use turn::proto::channum::{ChannelNumber, MIN_CHANNEL_NUMBER};
use turn::proto::peeraddr::PeerAddress;
use turn::proto::reqtrans::RequestedTransport;
use webrtc_util::Conn;

const SECRET: &str = "turn-test-secret-0123456789abcdef-0123456789";

fn config(allow_loopback: bool, max_per_user: usize) -> String {
    config_with(allow_loopback, max_per_user, "")
}

/// The TURN config with `extra` lines in `[webrtc.turn]`.
fn config_with(allow_loopback: bool, max_per_user: usize, extra: &str) -> String {
    format!(
        "[webrtc]\nturn_secret = \"{SECRET}\"\nturn_ttl = 600\n\
         [webrtc.turn]\nlisten = \"127.0.0.1:0\"\npublic_ip = \"127.0.0.1\"\nrealm = \"switchboard\"\n\
         relay_min_port = 40000\nrelay_max_port = 40999\nallow_loopback_peers = {allow_loopback}\n\
         max_allocations_per_user = {max_per_user}\n{extra}\n"
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

/// A TURN client that shows the server's answers as they are (the turn crate's client hides
/// them), speaking STUN with the long-term credential mechanism.
struct RawTurn {
    socket: UdpSocket,
    server: SocketAddr,
    username: String,
    password: String,
    realm: String,
    nonce: String,
}

impl RawTurn {
    async fn new(server: SocketAddr, username: &str, password: &str) -> RawTurn {
        RawTurn {
            socket: UdpSocket::bind("127.0.0.1:0").await.unwrap(),
            server,
            username: username.to_owned(),
            password: password.to_owned(),
            realm: String::new(),
            nonce: String::new(),
        }
    }

    /// Sends a request (and again, signed, after a 401 or 438 challenge); returns the
    /// answer's error code, `None` for a success.
    async fn call(
        &mut self,
        method: Method,
        peers: &[SocketAddr],
        channel: Option<u16>,
    ) -> Option<u16> {
        for _ in 0..3 {
            let request = self.request(method, peers, channel);
            self.socket
                .send_to(&request.raw, self.server)
                .await
                .unwrap();
            let answer = self.answer_to(&request).await;
            let mut code = ErrorCodeAttribute::default();
            if code.get_from(&answer).is_err() {
                return None;
            }
            let challenged = code.code == CODE_UNAUTHORIZED || code.code == CODE_STALE_NONCE;
            let nonce = TextAttribute::get_from_as(&answer, ATTR_NONCE);
            match nonce {
                Ok(nonce) if challenged => {
                    self.nonce = nonce.text;
                    self.realm = TextAttribute::get_from_as(&answer, ATTR_REALM)
                        .unwrap()
                        .text;
                }
                _ => return Some(code.code.0),
            }
        }
        panic!("challenged over and over");
    }

    fn request(&self, method: Method, peers: &[SocketAddr], channel: Option<u16>) -> Message {
        let mut setters: Vec<Box<dyn Setter>> = vec![
            Box::new(Message {
                transaction_id: TransactionId::new(),
                ..Message::default()
            }),
            Box::new(MessageType::new(method, CLASS_REQUEST)),
        ];
        if method == METHOD_ALLOCATE {
            setters.push(Box::new(RequestedTransport {
                protocol: PROTO_UDP,
            }));
        }
        for peer in peers {
            setters.push(Box::new(PeerAddress {
                ip: peer.ip(),
                port: peer.port(),
            }));
        }
        if let Some(channel) = channel {
            setters.push(Box::new(ChannelNumber(channel)));
        }
        if !self.nonce.is_empty() {
            setters.push(Box::new(TextAttribute::new(
                ATTR_USERNAME,
                self.username.clone(),
            )));
            setters.push(Box::new(TextAttribute::new(ATTR_REALM, self.realm.clone())));
            setters.push(Box::new(TextAttribute::new(ATTR_NONCE, self.nonce.clone())));
            setters.push(Box::new(MessageIntegrity::new_long_term_integrity(
                self.username.clone(),
                self.realm.clone(),
                self.password.clone(),
            )));
        }
        let mut m = Message::new();
        m.build(&setters).unwrap();
        m
    }

    /// The answer to `request`, skipping anything else that arrives.
    async fn answer_to(&self, request: &Message) -> Message {
        let mut buf = vec![0u8; 1500];
        loop {
            let (n, _) = tokio::time::timeout(WAIT, self.socket.recv_from(&mut buf))
                .await
                .expect("the TURN server answers")
                .unwrap();
            let mut answer = Message {
                raw: buf[..n].to_vec(),
                ..Message::default()
            };
            if answer.decode().is_ok() && answer.transaction_id == request.transaction_id {
                return answer;
            }
        }
    }
}

fn peer(addr: &str) -> SocketAddr {
    addr.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissions_and_channels_towards_special_peers_get_403() {
    let server = server_with(&config(false, 10)).await;
    let (addr, username, password) = turn_entry(&server, "frank").await;
    let mut client = RawTurn::new(addr, &username, &password).await;
    assert_eq!(
        client.call(METHOD_ALLOCATE, &[], None).await,
        None,
        "allocation"
    );
    let special = [
        "127.0.0.1:5000",
        "10.0.0.1:5000",
        "172.16.0.1:5000",
        "192.168.1.1:5000",
        "169.254.169.254:80",
        "100.64.0.1:5000",
        "0.0.0.0:5000",
        "224.0.0.1:5000",
        "255.255.255.255:5000",
        "[::ffff:10.0.0.1]:5000",
        "[::ffff:127.0.0.1]:5000",
        "[::1]:5000",
        "[fe80::1]:5000",
        "[fd00::1]:5000",
    ];
    for (i, target) in special.iter().enumerate() {
        let target = peer(target);
        let code = client.call(METHOD_CREATE_PERMISSION, &[target], None).await;
        assert_eq!(code, Some(403), "CreatePermission towards {target}");
        let channel = MIN_CHANNEL_NUMBER + i as u16;
        let code = client
            .call(METHOD_CHANNEL_BIND, &[target], Some(channel))
            .await;
        assert_eq!(code, Some(403), "ChannelBind towards {target}");
    }
    // A public peer gets its permission (nothing is sent to it).
    let public = peer("198.41.0.4:5000");
    assert_eq!(
        client.call(METHOD_CREATE_PERMISSION, &[public], None).await,
        None
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_ranges_and_the_loopback_switch_open_only_what_they_name() {
    let server = server_with(&config_with(
        true,
        10,
        "allowed_peer_ranges = [\"10.9.0.0/16\"]",
    ))
    .await;
    let (addr, username, password) = turn_entry(&server, "grace").await;
    let mut client = RawTurn::new(addr, &username, &password).await;
    assert_eq!(
        client.call(METHOD_ALLOCATE, &[], None).await,
        None,
        "allocation"
    );
    for allowed in ["127.0.0.1:5000", "10.9.1.2:5000"] {
        let code = client
            .call(METHOD_CREATE_PERMISSION, &[peer(allowed)], None)
            .await;
        assert_eq!(code, None, "{allowed} is allowed");
    }
    for refused in ["10.8.1.2:5000", "169.254.169.254:80", "192.168.0.1:5000"] {
        let code = client
            .call(METHOD_CREATE_PERMISSION, &[peer(refused)], None)
            .await;
        assert_eq!(code, Some(403), "{refused} is not allowed");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_allowed_peer_range_stops_the_config() {
    let toml = format!(
        "{}{}",
        auth_toml(),
        config_with(false, 10, "allowed_peer_ranges = [\"10.0.0.0/33\"]")
    );
    let err = switchboard_server::config::Config::from_toml(&toml)
        .unwrap()
        .with_listen(Some("127.0.0.1:0".into()))
        .resolve()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("allowed_peer_ranges") && err.contains("10.0.0.0/33"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_allocations_cannot_use_up_a_users_quota() {
    let server = server_with(&config(true, 2)).await;
    let (addr, username, password) = turn_entry(&server, "victim").await;
    // Someone who knows the user's name (it is in every ICE server list the user shares)
    // but not the password asks for allocations from many addresses.
    for _ in 0..5 {
        let mut forger = RawTurn::new(addr, &username, "not-the-password").await;
        let code = forger.call(METHOD_ALLOCATE, &[], None).await;
        assert!(code.is_some(), "a forged allocation succeeded");
    }
    let clients = [
        turn_client(addr, &username, &password).await,
        turn_client(addr, &username, &password).await,
    ];
    let mut relays = Vec::new();
    for client in &clients {
        relays.push(allocate(client).await.expect("the victim still allocates"));
    }
    // The limit itself still holds, answered as RFC 8656 says.
    let mut third = RawTurn::new(addr, &username, &password).await;
    assert_eq!(third.call(METHOD_ALLOCATE, &[], None).await, Some(486));
    drop(relays);
    for client in &clients {
        client.close().await.unwrap();
    }
    server.stop().await;
}
