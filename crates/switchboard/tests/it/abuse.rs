//! A server facing the open internet (spec §8): clients that are slow on purpose, hold too
//! much, or knock too often get bounded refusals, and well-behaved clients beside them lose
//! nothing.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;

/// A server whose handshake timeout is one second.
async fn impatient() -> TestServer {
    server_with("[limits]\nhandshake_timeout = 1\n").await
}

/// Reads until the server closes the connection (or `within` passes); returns how long that
/// took and what it sent.
async fn closed_within(tcp: &mut TcpStream, within: Duration) -> (Duration, String) {
    let started = Instant::now();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = within.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "still open after {within:?}: {}",
                String::from_utf8_lossy(&seen)
            ),
        }
    }
    (
        started.elapsed(),
        String::from_utf8_lossy(&seen).into_owned(),
    )
}

#[tokio::test]
async fn half_a_request_head_is_dropped_after_the_handshake_timeout() {
    let server = impatient().await;
    // hyper's connections, and the peek at a stream request on a plain socket.
    for start in [
        "GET /health HTTP/1.1\r\nHost: x\r\n",
        "GET /sse?channel=a HTTP/1.1\r\n",
    ] {
        let mut tcp = TcpStream::connect(server.addr).await.unwrap();
        tcp.write_all(start.as_bytes()).await.unwrap();
        let (took, _) = closed_within(&mut tcp, Duration::from_secs(5)).await;
        assert!(
            took >= Duration::from_millis(900),
            "{start:?} closed after {took:?}"
        );
    }
    // A well-behaved client on the same server is served as ever.
    let health = reqwest::get(format!("{}/health", server.base))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn a_body_sent_too_slowly_is_refused_after_the_handshake_timeout() {
    let server = impatient().await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"channel\":"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut answer))
        .await
        .expect("answered in time")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("not received within"), "{answer}");
}

/// The status of a refused WebSocket upgrade (the client's error names it).
async fn upgrade_refused(url: &str, headers: &[(&str, &str)]) -> String {
    match switchboard_client::WsClient::open(url, headers).await {
        Ok(_) => panic!("{url}: upgraded"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn past_max_connections_new_ones_get_503_and_a_freed_place_is_taken_again() {
    let server = server_with("[limits]\nmax_connections = 2\n").await;
    let first = server.connect_as("a").await;
    let _second = server.connect_as("b").await;
    let url = server.ws_url(&format!("/ws?token={}", token("c", &["*"], &["*"])));
    assert!(upgrade_refused(&url, &[]).await.contains("503"));
    let sse = reqwest::get(format!(
        "{}/sse?channel=x&token={}",
        server.base,
        token("c", &["*"], &[])
    ))
    .await
    .unwrap();
    assert_eq!(sse.status(), 503, "streams count too");
    assert_eq!(
        server.metric("switchboard_refused_connections_total").await,
        2.0
    );
    first.close().await.unwrap();
    eventually(WAIT, "a freed place", || {
        let url = url.clone();
        async move { switchboard_client::WsClient::open(&url, &[]).await.is_ok() }
    })
    .await;
}

#[tokio::test]
async fn one_address_behind_a_trusted_proxy_is_limited_alone() {
    let server =
        server_with("[limits]\nmax_connections_per_ip = 1\ntrusted_proxies = [\"127.0.0.1\"]\n")
            .await;
    let url = server.ws_url(&format!("/ws?token={}", token("a", &["*"], &["*"])));
    let from = |ip: &'static str| [("X-Forwarded-For", ip)];
    let _held = switchboard_client::WsClient::open(&url, &from("203.0.113.1"))
        .await
        .unwrap();
    assert!(
        upgrade_refused(&url, &from("203.0.113.1"))
            .await
            .contains("429")
    );
    let other = switchboard_client::WsClient::open(&url, &from("203.0.113.2")).await;
    assert!(other.is_ok(), "another address is not held back");
}

#[tokio::test]
async fn a_user_past_max_connections_per_user_is_refused_and_its_others_live() {
    let server = server_with("[limits]\nmax_connections_per_user = 1\n").await;
    let mut first = server.connect_as("alice").await;
    first.subscribe("kept").await.unwrap();
    let alice = token("alice", &["*"], &["*"]);
    let url = server.ws_url(&format!("/ws?token={alice}"));
    assert!(upgrade_refused(&url, &[]).await.contains("429"));
    let sse = reqwest::get(format!("{}/sse?channel=x&token={alice}", server.base))
        .await
        .unwrap();
    assert_eq!(sse.status(), 429);
    // Through a connect frame: refused with rate_limited, then closed.
    let mut late = switchboard_client::WsClient::open(&server.ws_url("/ws"), &[])
        .await
        .unwrap();
    late.send(serde_json::json!({"type": "connect", "id": 1, "token": alice}))
        .await
        .unwrap();
    let refused = late.next_frame(WAIT).await.unwrap();
    assert_eq!(refused["code"], "rate_limited", "{refused}");
    // Another user connects, and the first connection still gets its messages.
    server.connect_as("bob").await;
    server
        .api()
        .publish("kept", &serde_json::json!(1))
        .await
        .unwrap();
    assert_eq!(first.next_message("kept", WAIT).await.unwrap()["data"], 1);
}

#[tokio::test]
async fn commands_past_client_rate_are_refused_while_the_connection_and_others_go_on() {
    let server = server_with("[limits]\nclient_rate = 5\nclient_burst = 5\n").await;
    let mut calm = server.connect_as("calm").await;
    calm.subscribe("feed").await.unwrap();
    let mut flood = server.connect_as("flood").await;
    for id in 1..=30u64 {
        flood
            .send(serde_json::json!({"type": "ping", "id": id}))
            .await
            .unwrap();
    }
    let (mut pongs, mut limited) = (0, 0);
    for _ in 1..=30 {
        let frame = flood.next_frame(WAIT).await.unwrap();
        match frame["type"].as_str() {
            Some("pong") => pongs += 1,
            Some("error") if frame["code"] == "rate_limited" => {
                assert!(frame["id"].is_u64(), "answered with its id: {frame}");
                limited += 1;
            }
            _ => panic!("{frame}"),
        }
    }
    assert!((5..=7).contains(&pongs), "{pongs} pongs");
    assert_eq!(pongs + limited, 30);
    // Meanwhile a well-behaved client loses nothing, and the flooder itself goes on.
    for n in 1..=20 {
        server
            .api()
            .publish("feed", &serde_json::json!(n))
            .await
            .unwrap();
    }
    for n in 1..=20 {
        assert_eq!(calm.next_message("feed", WAIT).await.unwrap()["data"], n);
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(flood.ping().await.unwrap()["type"], "pong");
    assert!(server.metric("switchboard_rate_limited_total").await >= 23.0);
}

/// The session of a first long poll on the server at `base`, for `POST /session`.
async fn poll_session(base: &str) -> String {
    let token = token("poller", &["*"], &["*"]);
    let first: serde_json::Value = reqwest::get(format!("{base}/poll?channel=p&token={token}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    first["messages"][0]["session"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn commands_posted_to_a_session_share_its_rate() {
    let server = server_with("[limits]\nclient_rate = 5\nclient_burst = 5\n").await;
    let session = poll_session(&server.base).await;
    let pings: Vec<_> = (1..=20)
        .map(|id| serde_json::json!({"type": "ping", "id": id}))
        .collect();
    let replies: serde_json::Value = reqwest::Client::new()
        .post(format!("{}/session/{session}", server.base))
        .json(&pings)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let replies = replies.as_array().unwrap();
    let pongs = replies.iter().filter(|r| r["type"] == "pong").count();
    assert_eq!(pongs, 5, "{replies:?}");
    assert!(replies[5..].iter().all(|r| r["code"] == "rate_limited"));
    assert_eq!(replies[19]["id"], 20);
}

/// A server whose replies hold at most 8 KiB, with a channel keeping 100 messages of 1 KiB.
async fn small_replies() -> TestServer {
    let server = server_with(
        "[limits]\nmax_reply_bytes = 8192\n\
         [default_namespace]\nhistory_size = 100\nhistory_ttl = 300\n",
    )
    .await;
    let kib = "x".repeat(1000);
    for n in 1..=100 {
        server
            .api()
            .publish("big", &serde_json::json!({"n": n, "pad": kib}))
            .await
            .unwrap();
    }
    server
}

fn offsets(reply: &serde_json::Value) -> Vec<u64> {
    reply["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("no messages: {reply}"))
        .iter()
        .map(|m| m["offset"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn history_replies_stop_at_max_reply_bytes_and_page_on_with_since() {
    let server = small_replies().await;
    let mut client = server.connect_as("reader").await;
    // Without `since`: the latest that fit; with it: the first after it, so paging with the
    // last offset seen walks the whole history.
    let latest = client.history("big", None, None).await.unwrap();
    let epoch = latest["epoch"].as_str().unwrap().to_owned();
    let latest = offsets(&latest);
    assert!((4..10).contains(&latest.len()), "{latest:?}");
    assert_eq!(*latest.last().unwrap(), 100);
    let mut seen = Vec::new();
    let mut since = 0;
    while since < 100 {
        let page = client
            .history("big", Some((since, &epoch)), None)
            .await
            .unwrap();
        let page = offsets(&page);
        assert!(page.len() < 10, "a page of {}", page.len());
        since = *page.last().unwrap();
        seen.extend(page);
    }
    assert_eq!(seen, (1..=100).collect::<Vec<u64>>());
    // The API's history is bounded the same way.
    let api = server.api().history("big", None, None).await.unwrap();
    assert_eq!(offsets(&api), latest);
}

#[tokio::test]
async fn a_session_post_of_many_history_commands_answers_a_bounded_body() {
    let server = small_replies().await;
    let session = poll_session(&server.base).await;
    let mut commands: Vec<_> = (1..=100)
        .map(|id| serde_json::json!({"type": "history", "id": id, "channel": "big"}))
        .collect();
    // One frame past max_frame_size (64 KiB) is refused alone.
    commands[0] = serde_json::json!({"type": "ping", "id": 1, "pad": "y".repeat(70_000)});
    let answer = reqwest::Client::new()
        .post(format!("{}/session/{session}", server.base))
        .json(&commands)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(
        answer.len() < 3 * 8192 + 100 * 200,
        "{} bytes",
        answer.len()
    );
    let replies: serde_json::Value = serde_json::from_slice(&answer).unwrap();
    let replies = replies.as_array().unwrap();
    assert_eq!(replies.len(), 100);
    assert_eq!(replies[0]["code"], "too_large", "{}", replies[0]);
    assert_eq!(replies[1]["type"], "reply");
    assert!(replies[2]["type"] == "reply" || replies[2]["code"] == "too_large");
    assert_eq!(replies[99]["code"], "too_large");
    assert_eq!(replies[99]["id"], 100);
    // The session lives on: a small command afterwards runs.
    let pong: serde_json::Value = reqwest::Client::new()
        .post(format!("{}/session/{session}", server.base))
        .json(&serde_json::json!({"type": "ping", "id": 7}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(pong[0]["type"], "pong", "{pong}");
}

#[tokio::test]
async fn max_reply_bytes_zero_means_no_limit() {
    let server = server_with(
        "[limits]\nmax_reply_bytes = 0\n\
         [default_namespace]\nhistory_size = 100\nhistory_ttl = 300\n",
    )
    .await;
    let pad = "x".repeat(1000);
    for n in 1..=100 {
        server
            .api()
            .publish("all", &serde_json::json!({"n": n, "pad": pad}))
            .await
            .unwrap();
    }
    let mut client = server.connect_as("reader").await;
    client.subscribe("all").await.unwrap();
    let history = client.history("all", None, None).await.unwrap();
    assert_eq!(offsets(&history), (1..=100).collect::<Vec<u64>>());
    let members = client.presence("all").await.unwrap();
    assert_eq!(members["members"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_presence_reply_past_max_reply_bytes_is_refused_and_members_stay() {
    let server = server_with("[limits]\nmax_reply_bytes = 300\n").await;
    let mut members = Vec::new();
    for n in 0..6 {
        let mut member = server.connect_as(&format!("member-{n}")).await;
        member.subscribe("crowd").await.unwrap();
        members.push(member);
    }
    let refused = members[0].presence("crowd").await;
    assert_eq!(error_code(refused), "too_large");
    let api = server.api().presence("crowd").await;
    assert_eq!(error_code(api), "too_large");
    // A small channel answers, and the refused client is still connected.
    let mut alone = server.connect_as("alone").await;
    alone.subscribe("small").await.unwrap();
    let few = members[0].presence("small").await.unwrap();
    assert_eq!(few["members"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_broadcast_to_more_than_1000_channels_is_refused_whole() {
    let server = TestServer::start().await;
    let channels: Vec<String> = (0..1001).map(|n| format!("b{n}")).collect();
    let channels: Vec<&str> = channels.iter().map(String::as_str).collect();
    let data = serde_json::json!(1);
    let refused = server.api().broadcast(&channels, &data).await;
    assert_eq!(error_code(refused), "too_large");
    let fine = server
        .api()
        .broadcast(&channels[..1000], &data)
        .await
        .unwrap();
    assert_eq!(fine["results"].as_array().unwrap().len(), 1000);
}

/// Every attack at once against one server, while two well-behaved subscribers take a paced
/// feed: half-sent request heads, an upgrade flood past `max_connections_per_ip`, a
/// subscribe/unsubscribe loop on their channel past `client_rate`, oversized frames, and
/// session posts of a hundred history commands. The well-behaved ones get every message, in
/// order, on time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_well_behaved_client_loses_nothing_while_every_attack_runs() {
    const MESSAGES: u64 = 200;
    let server = server_with(
        "[limits]\nmax_connections_per_ip = 40\nclient_rate = 50\nclient_burst = 50\n\
         handshake_timeout = 1\nmax_reply_bytes = 65536\n\
         [default_namespace]\nhistory_size = 100\nhistory_ttl = 300\njoin_leave = true\n",
    )
    .await;
    let mut calm = Vec::new();
    for user in ["calm-1", "calm-2"] {
        let mut client = server.connect_as(user).await;
        client.subscribe("feed").await.unwrap();
        calm.push(client);
    }
    let pad = "p".repeat(1000);
    for n in 0..100 {
        server
            .api()
            .publish("archive", &serde_json::json!({"n": n, "pad": pad}))
            .await
            .unwrap();
    }
    let base = server.base.clone();
    let addr = server.addr;
    let ws = server.ws_url(&format!("/ws?token={}", token("attacker", &["*"], &["*"])));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let running = |stop: &std::sync::Arc<std::sync::atomic::AtomicBool>| {
        !stop.load(std::sync::atomic::Ordering::Relaxed)
    };
    let mut attacks = Vec::new();
    // Slowloris: heads that never end, opened again as the server closes them.
    let s = stop.clone();
    attacks.push(tokio::spawn(async move {
        let mut opened = 0;
        while running(&s) {
            let mut held = Vec::new();
            for _ in 0..10 {
                if let Ok(mut tcp) = TcpStream::connect(addr).await {
                    let _ = tcp.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n").await;
                    held.push(tcp);
                    opened += 1;
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        format!("{opened} half heads")
    }));
    // An upgrade flood from the same address.
    let (s, url) = (stop.clone(), ws.clone());
    attacks.push(tokio::spawn(async move {
        let (mut held, mut refused) = (Vec::new(), 0);
        while running(&s) {
            match switchboard_client::WsClient::open(&url, &[]).await {
                Ok(client) => held.push(client),
                Err(_) => refused += 1,
            }
        }
        format!("{} upgrades held, {refused} refused", held.len())
    }));
    // Subscribe/unsubscribe on the busy channel, as fast as the socket goes.
    let (s, url) = (stop.clone(), ws.clone());
    attacks.push(tokio::spawn(async move {
        let mut client = switchboard_client::WsClient::open(&url, &[]).await.unwrap();
        let mut sent = 0u64;
        while running(&s) {
            for kind in ["subscribe", "unsubscribe"] {
                let frame = serde_json::json!({"type": kind, "channel": "feed"});
                if client.send(frame).await.is_err() {
                    return format!("{sent} sub/unsub sent, then closed");
                }
                sent += 1;
            }
            if sent.is_multiple_of(64) {
                tokio::task::yield_now().await;
            }
        }
        format!("{sent} subscribe/unsubscribe sent")
    }));
    // Frames past max_frame_size.
    let (s, url) = (stop.clone(), ws.clone());
    attacks.push(tokio::spawn(async move {
        let mut client = switchboard_client::WsClient::open(&url, &[]).await.unwrap();
        let big = format!("{{\"type\":\"ping\",\"pad\":\"{}\"}}", "z".repeat(100_000));
        let mut sent = 0;
        while running(&s) && client.send_text(&big).await.is_ok() {
            sent += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        format!("{sent} oversized frames")
    }));
    // Session posts of a hundred history commands each.
    let s = stop.clone();
    attacks.push(tokio::spawn(async move {
        let session = poll_session(&base).await;
        let commands: Vec<_> = (1..=100)
            .map(|id| serde_json::json!({"type": "history", "id": id, "channel": "archive"}))
            .collect();
        let (mut posts, mut largest) = (0, 0);
        while running(&s) {
            let answer = reqwest::Client::new()
                .post(format!("{base}/session/{session}"))
                .json(&commands)
                .send()
                .await;
            let Ok(answer) = answer else { break };
            largest = largest.max(answer.bytes().await.map_or(0, |b| b.len()));
            posts += 1;
        }
        format!("{posts} posts of 100 history commands, largest answer {largest} B")
    }));

    // The paced feed: 100 messages a second, each timed from its publish to its arrival.
    let readers: Vec<_> = calm
        .into_iter()
        .map(|mut client| {
            tokio::spawn(async move {
                let mut arrived = Vec::new();
                for n in 0..MESSAGES {
                    let message = client.next_message("feed", WAIT).await.unwrap();
                    assert_eq!(message["data"], n, "in order, none lost");
                    arrived.push(Instant::now());
                }
                assert_no_message(&mut client, "nothing repeated").await;
                arrived
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let api = server.api();
    let mut sent_at = Vec::new();
    for n in 0..MESSAGES {
        sent_at.push(Instant::now());
        api.publish("feed", &serde_json::json!(n)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for reader in readers {
        let arrived = reader.await.unwrap();
        let mut waits: Vec<Duration> = arrived
            .iter()
            .zip(&sent_at)
            .map(|(got, sent)| got.duration_since(*sent))
            .collect();
        waits.sort();
        println!(
            "well-behaved client: {MESSAGES}/{MESSAGES} in order, none repeated; wait p50 {:?} \
             p99 {:?} max {:?}",
            waits[waits.len() / 2],
            waits[waits.len() * 99 / 100],
            waits[waits.len() - 1]
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for attack in attacks {
        println!("attack: {}", attack.await.unwrap());
    }
    assert!(server.metric("switchboard_rate_limited_total").await > 0.0);
    assert!(
        server
            .metric("switchboard_refused_connections_per_ip_total")
            .await
            > 0.0
    );
    let health = reqwest::get(format!("{}/health", server.base))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}
