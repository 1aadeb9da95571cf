//! One client's commands, driven without sockets: permissions, replies and errors, and the
//! order a subscribe's reply and messages reach the client.

use std::sync::Arc;

use serde_json::{Value, json};

use super::*;
use crate::config::HubConfig;
use crate::testing::{Recorded, RecordingSink, TestHub};

/// Tokens are `<user>` or `<user>@<exp>`; `bad` is refused, `old` has expired.
struct TestAuth;

impl Authenticator for TestAuth {
    fn verify(&self, token: &str) -> std::result::Result<Claims, AuthError> {
        match token {
            "bad" => return Err(AuthError::Invalid("bad signature".into())),
            "old" => return Err(AuthError::Expired),
            _ => {}
        }
        let (user, exp) = match token.split_once('@') {
            Some((user, exp)) => (user, exp.parse().ok()),
            None => (token, None),
        };
        Ok(claims(user, exp))
    }
}

fn claims(user: &str, exp: Option<u64>) -> Claims {
    Claims {
        user: user.into(),
        exp,
        subscribe: vec!["chat:*".into()],
        publish: vec!["chat:*".into()],
        rooms: vec!["call:*".into()],
        ..Claims::default()
    }
}

fn session(t: &TestHub, user: &str) -> (Session, Arc<RecordingSink>) {
    let sink = Arc::new(RecordingSink::default());
    let session = Session::open(
        t.hub.clone(),
        Arc::new(TestAuth),
        claims(user, None),
        sink.clone(),
    );
    (session, sink)
}

async fn command(session: &mut Session, frame: Value) -> Option<Answer> {
    session.handle_frame(frame.to_string().as_bytes()).await
}

fn parse(answer: &Answer) -> Value {
    serde_json::from_slice(answer.frame()).unwrap()
}

#[tokio::test]
async fn commands_answer_replies_and_refusals_are_errors() {
    let t = TestHub::new(HubConfig::default());
    let (mut s, _) = session(&t, "ann");
    let pong = command(&mut s, json!({"type": "ping", "id": 1}))
        .await
        .unwrap();
    assert_eq!(parse(&pong), json!({"type": "pong", "id": 1}));
    assert!(!pong.is_error());

    let published = command(
        &mut s,
        json!({"type": "publish", "id": 2, "channel": "chat:a", "data": {"x": 1}}),
    )
    .await
    .unwrap();
    assert!(!published.is_error());
    assert_eq!(parse(&published)["offset"], 1);

    let forbidden = command(
        &mut s,
        json!({"type": "publish", "id": 3, "channel": "news", "data": 1}),
    )
    .await
    .unwrap();
    assert!(forbidden.is_error());
    assert_eq!(parse(&forbidden)["code"], "forbidden");
    assert_eq!(parse(&forbidden)["id"], 3);

    let garbage = s.handle_frame(b"{not json").await.unwrap();
    assert!(garbage.is_error());
    assert_eq!(parse(&garbage)["code"], "bad_request");
}

#[tokio::test]
async fn a_subscribe_reply_reaches_the_client_before_the_channel_s_messages() {
    let t = TestHub::new(HubConfig::default());
    t.publish("chat:a", 1).await;
    let (mut s, sink) = session(&t, "ann");
    let answer = command(
        &mut s,
        json!({"type": "subscribe", "id": 7, "channel": "chat:a"}),
    )
    .await;
    assert!(
        answer.is_none(),
        "the reply went through the sink, ahead of any message"
    );
    t.publish("chat:a", 2).await;
    let log = sink.take();
    assert!(matches!(&log[0], Recorded::Start(c, 1) if c == "chat:a"));
    let Recorded::Frame(reply) = &log[1] else {
        panic!("{log:?}");
    };
    assert_eq!(reply["type"], "reply");
    assert_eq!(
        (reply["id"].clone(), reply["offset"].clone()),
        (json!(7), json!(1))
    );
    let offsets: Vec<u64> = log[2..]
        .iter()
        .filter_map(|r| match r {
            Recorded::Frame(f) if f["type"] == "message" => f["offset"].as_u64(),
            _ => None,
        })
        .collect();
    assert_eq!(offsets, [2]);
}

#[tokio::test]
async fn a_second_subscribe_and_one_past_the_limit_are_refused() {
    let config = HubConfig {
        max_subscriptions: 2,
        ..HubConfig::default()
    };
    let t = TestHub::new(config);
    let (mut s, _) = session(&t, "ann");
    s.return_replies();
    for channel in ["chat:a", "chat:b"] {
        let ok = command(
            &mut s,
            json!({"type": "subscribe", "id": 1, "channel": channel}),
        )
        .await;
        assert!(!ok.unwrap().is_error());
    }
    let again = command(
        &mut s,
        json!({"type": "subscribe", "id": 2, "channel": "chat:a"}),
    )
    .await;
    assert_eq!(parse(&again.unwrap())["code"], "bad_request");
    let third = command(
        &mut s,
        json!({"type": "subscribe", "id": 3, "channel": "chat:c"}),
    )
    .await;
    assert_eq!(parse(&third.unwrap())["code"], "rate_limited");
    let closed = command(
        &mut s,
        json!({"type": "subscribe", "id": 4, "channel": "news"}),
    )
    .await;
    assert_eq!(parse(&closed.unwrap())["code"], "forbidden");
}

#[tokio::test]
async fn a_personal_channel_is_its_owner_s_alone() {
    let t = TestHub::new(HubConfig::default());
    let ann = claims("ann", None);
    assert!(may_subscribe(&t.hub, &ann, "inbox#ann"));
    assert!(!may_subscribe(&t.hub, &ann, "inbox#bob"));
    assert!(!may_subscribe(&t.hub, &Claims::anonymous(), "inbox#"));
    // Claims that would allow any channel do not open another user's inbox for writing.
    let everything = Claims {
        publish: vec!["*".into()],
        ..claims("mallory", None)
    };
    assert!(may_publish(&t.hub, &everything, "mallory:x"));
    assert!(!may_publish(&t.hub, &everything, "inbox#victim"));
    assert!(
        may_publish(&t.hub, &ann, "inbox#ann"),
        "its own, whatever the claims"
    );
}

#[tokio::test]
async fn a_namespace_open_to_anonymous_readers_is_not_open_to_anonymous_writers() {
    let namespace = |name: &str, publish: Option<bool>| crate::config::NamespaceConfig {
        name: name.into(),
        allow_anonymous: Some(true),
        allow_client_publish: publish,
        ..Default::default()
    };
    let config = HubConfig {
        namespaces: vec![namespace("read", None), namespace("write", Some(true))],
        ..HubConfig::default()
    };
    let t = TestHub::new(config);
    let anonymous = Claims::anonymous();
    assert!(may_subscribe(&t.hub, &anonymous, "read:a"));
    assert!(!may_publish(&t.hub, &anonymous, "read:a"));
    assert!(may_publish(&t.hub, &anonymous, "write:a"));
    assert!(!may_publish(&t.hub, &anonymous, "elsewhere"));
    let development = TestHub::new(HubConfig {
        allow_anonymous: true,
        ..HubConfig::default()
    });
    assert!(may_publish(&development.hub, &anonymous, "anything"));
}

#[tokio::test]
async fn a_connection_is_in_at_most_max_rooms_rooms() {
    let t = TestHub::new(HubConfig {
        max_rooms: 2,
        ..HubConfig::default()
    });
    let (mut s, _) = session(&t, "ann");
    for (id, room) in [(1, "call:1"), (2, "call:2")] {
        let joined = command(&mut s, json!({"type": "join_room", "id": id, "room": room})).await;
        assert!(!joined.unwrap().is_error());
    }
    let third = command(
        &mut s,
        json!({"type": "join_room", "id": 3, "room": "call:3"}),
    )
    .await;
    assert_eq!(parse(&third.unwrap())["code"], "rate_limited");
    command(
        &mut s,
        json!({"type": "leave_room", "id": 4, "room": "call:1"}),
    )
    .await;
    let again = command(
        &mut s,
        json!({"type": "join_room", "id": 5, "room": "call:3"}),
    )
    .await;
    assert!(!again.unwrap().is_error(), "room again after leaving one");
}

#[tokio::test]
async fn a_malformed_stored_message_reads_as_null_not_a_panic() {
    let t = TestHub::new(HubConfig::default());
    // What a damaged record from Redis, NATS or the disk could hand back.
    t.hub
        .publish("chat:bad", bytes::Bytes::from_static(b"{not json"))
        .await
        .unwrap();
    let (mut s, _) = session(&t, "ann");
    let answer = command(
        &mut s,
        json!({"type": "history", "id": 1, "channel": "chat:bad"}),
    )
    .await
    .unwrap();
    let reply = parse(&answer);
    assert_eq!(reply["messages"][0]["data"], Value::Null);
}

#[tokio::test]
async fn refresh_takes_a_token_of_the_same_user_only() {
    let t = TestHub::new(HubConfig::default());
    let (mut s, _) = session(&t, "ann");
    let refreshed = command(
        &mut s,
        json!({"type": "refresh", "id": 1, "token": "ann@4000000000"}),
    )
    .await
    .unwrap();
    assert_eq!(parse(&refreshed)["exp"], 4_000_000_000u64);
    assert_eq!(s.client().exp.load(Ordering::Relaxed), 4_000_000_000);
    for (token, code) in [
        ("bob", "forbidden"),
        ("bad", "unauthorized"),
        ("old", "token_expired"),
    ] {
        let refused = command(&mut s, json!({"type": "refresh", "id": 2, "token": token}))
            .await
            .unwrap();
        assert_eq!(parse(&refused)["code"], code, "{token}");
    }
    assert_eq!(s.claims().user, "ann");
}

#[tokio::test]
async fn history_answers_messages_as_pushed_with_the_position() {
    let t = TestHub::new(HubConfig::default());
    for n in 1..=3 {
        t.publish("chat:h", n).await;
    }
    let (mut s, _) = session(&t, "ann");
    let answer = command(
        &mut s,
        json!({"type": "history", "id": 4, "channel": "chat:h", "limit": 2}),
    )
    .await
    .unwrap();
    let reply = parse(&answer);
    assert_eq!(reply["offset"], 3);
    let messages = reply["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[1]["type"], "message");
    assert_eq!(messages[1]["data"], 3);
    assert_eq!(messages[1]["channel"], "chat:h");
}

#[tokio::test]
async fn rooms_are_joined_within_the_rooms_claim() {
    let t = TestHub::new(HubConfig::default());
    let (mut s, _) = session(&t, "ann");
    let joined = command(
        &mut s,
        json!({"type": "join_room", "id": 1, "room": "call:1", "meta": {"n": 1}}),
    )
    .await
    .unwrap();
    let reply = parse(&joined);
    assert_eq!(reply["peer"], *s.client().id_str);
    assert_eq!(reply["peers"], json!([]));
    assert_eq!(reply["ice_servers"], json!([]));
    let refused = command(
        &mut s,
        json!({"type": "join_room", "id": 2, "room": "other"}),
    )
    .await
    .unwrap();
    assert_eq!(parse(&refused)["code"], "forbidden");
}

/// A door's media as the session sees it: records what it was asked, refuses rooms named
/// `call:full`.
#[derive(Default)]
struct FakeMedia {
    calls: parking_lot::Mutex<Vec<String>>,
}

impl MediaLink for FakeMedia {
    fn join(
        &self,
        room: &str,
        peer: &str,
    ) -> crate::engine::BoxFuture<std::result::Result<(), MediaRefusal>> {
        self.calls.lock().push(format!("join {room} {peer}"));
        let full = room == "call:full";
        Box::pin(async move {
            if full {
                Err(MediaRefusal::new(
                    ErrorCode::RateLimited,
                    "the room has its most publishers",
                ))
            } else {
                Ok(())
            }
        })
    }

    fn signal(
        &self,
        data: &[u8],
    ) -> crate::engine::BoxFuture<std::result::Result<(), MediaRefusal>> {
        self.calls
            .lock()
            .push(format!("signal {}", String::from_utf8_lossy(data)));
        Box::pin(async { Ok(()) })
    }

    fn leave(&self) -> crate::engine::BoxFuture<()> {
        self.calls.lock().push("leave".into());
        Box::pin(async {})
    }
}

#[tokio::test]
async fn media_sfu_rooms_need_a_door_with_media() {
    let t = TestHub::new(HubConfig::default());
    let (mut s, _) = session(&t, "ann");
    let refused = command(
        &mut s,
        json!({"type": "join_room", "id": 1, "room": "call:1", "media": "sfu"}),
    )
    .await
    .unwrap();
    let refused = parse(&refused);
    assert_eq!(refused["code"], "bad_request");
    assert!(refused["message"].as_str().unwrap().contains("/rtc"));
    assert!(!s.client().in_room("call:1"), "nothing joined");
}

#[tokio::test]
async fn an_sfu_member_joins_signals_and_leaves_through_its_media() {
    let t = TestHub::new(HubConfig::default());
    let (mut watcher, watched) = session(&t, "bob");
    command(
        &mut watcher,
        json!({"type": "join_room", "id": 1, "room": "call:1"}),
    )
    .await;
    command(
        &mut watcher,
        json!({"type": "join_room", "id": 2, "room": "call:full"}),
    )
    .await;
    let (mut s, _) = session(&t, "ann");
    let media = Arc::new(FakeMedia::default());
    s.set_media(media.clone());
    let me = s.client().id_str.to_string();

    // A media limit refuses before the room join: the others see nothing.
    let full = command(
        &mut s,
        json!({"type": "join_room", "id": 1, "room": "call:full", "media": "sfu"}),
    )
    .await
    .unwrap();
    assert_eq!(parse(&full)["code"], "rate_limited");
    assert!(!s.client().in_room("call:full"));

    let joined = command(
        &mut s,
        json!({"type": "join_room", "id": 2, "room": "call:1", "media": "sfu"}),
    )
    .await
    .unwrap();
    assert!(!joined.is_error(), "{:?}", parse(&joined));
    assert_eq!(parse(&joined)["peer"], me);
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let seen: Vec<_> = watched
        .frames()
        .into_iter()
        .filter(|f| f["type"] == "peer_joined")
        .map(|f| f["room"].clone())
        .collect();
    assert_eq!(seen, [json!("call:1")], "a member like any other");

    // One SFU room per peer connection.
    let second = command(
        &mut s,
        json!({"type": "join_room", "id": 3, "room": "call:2", "media": "sfu"}),
    )
    .await
    .unwrap();
    assert_eq!(parse(&second)["code"], "bad_request");

    // `signal` to "sfu" in that room goes to the media, not to the room.
    let data = json!({"sdp": {"type": "answer", "sdp": "v=0"}});
    let signaled = command(
        &mut s,
        json!({"type": "signal", "id": 4, "room": "call:1", "to": "sfu", "data": data}),
    )
    .await
    .unwrap();
    assert!(!signaled.is_error());
    // Elsewhere "sfu" is no peer.
    let elsewhere = command(
        &mut s,
        json!({"type": "signal", "id": 5, "room": "call:2", "to": "sfu", "data": 1}),
    )
    .await
    .unwrap();
    assert!(elsewhere.is_error());

    command(
        &mut s,
        json!({"type": "leave_room", "id": 6, "room": "call:1"}),
    )
    .await;
    assert_eq!(
        *media.calls.lock(),
        [
            "join call:full ".to_string() + &me,
            format!("join call:1 {me}"),
            format!("signal {data}"),
            "leave".into(),
        ]
    );
    // Joined again, the media leaves with the session.
    command(
        &mut s,
        json!({"type": "join_room", "id": 7, "room": "call:1", "media": "sfu"}),
    )
    .await;
    s.close().await;
    assert_eq!(media.calls.lock().last().map(String::as_str), Some("leave"));
}
