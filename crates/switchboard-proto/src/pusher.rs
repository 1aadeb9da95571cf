//! Pusher Channels protocol (version 7) frames, and how they map onto the hub.
//!
//! A Pusher event on channel `C` is a hub publication on channel `C` (after the app's
//! namespace, `ns:C`) whose data is the envelope `{"event":E,"data":D}`, with D the string
//! Pusher carries, plus `user_id` for a presence client event and `socket_id` for a
//! connection that must not receive it. A publication whose data is not such an envelope
//! (published by a native client or the native API) reaches Pusher clients as an event named
//! `message` whose data is the publication's JSON text. The translation is done once per
//! publication (see [`crate::Outgoing::pusher`]), never per subscriber.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::ws;

/// The event name a native publication (not a Pusher envelope) carries to Pusher clients.
pub const NATIVE_EVENT: &str = "message";

/// Pusher's prefix of the channel a signed-in user receives `sendToUser` events on.
pub const USER_CHANNEL_PREFIX: &str = "#server-to-user-";
/// The hub channel of those events, before `#<user id>`: a native personal channel, so a
/// native client of the same user may subscribe to it too.
const HUB_USER_CHANNEL: &str = "server-to-user#";

/// Longest Pusher channel name (Pusher's limit).
pub const MAX_CHANNEL_NAME: usize = 164;

/// Whether `name` is a valid Pusher channel name a client may subscribe to
/// (`[A-Za-z0-9_\-=@,.;]`, at most 164 characters).
pub fn valid_channel_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_CHANNEL_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-=@,.;".contains(&b))
}

/// The hub channel of Pusher channel `channel` of an app in namespace `namespace` (empty:
/// the default namespace). `#server-to-user-<id>` becomes the native personal channel
/// `server-to-user#<id>`.
pub fn hub_channel(namespace: &str, channel: &str) -> String {
    let name = match channel.strip_prefix(USER_CHANNEL_PREFIX) {
        Some(user) => format!("{HUB_USER_CHANNEL}{user}"),
        None => channel.to_owned(),
    };
    if namespace.is_empty() {
        name
    } else {
        format!("{namespace}:{name}")
    }
}

/// Splits a hub channel into its namespace (empty for the default one) and the rest. Pusher
/// names hold no `:`, so the namespace is what precedes the first one, unless that holds a
/// `#`: then the `:` is part of a user id (`server-to-user#a:b`).
pub fn split_namespace(hub: &str) -> (&str, &str) {
    match hub.split_once(':') {
        Some((ns, rest)) if !ns.contains('#') => (ns, rest),
        _ => ("", hub),
    }
}

/// The Pusher channel name of hub channel `hub` (the inverse of [`hub_channel`]).
pub fn pusher_channel(hub: &str) -> String {
    let (_, name) = split_namespace(hub);
    match name.strip_prefix(HUB_USER_CHANNEL) {
        Some(user) => format!("{USER_CHANNEL_PREFIX}{user}"),
        None => name.to_owned(),
    }
}

/// The data of a hub publication that carries a Pusher event.
#[derive(Debug, Serialize, Deserialize)]
pub struct Envelope<'a> {
    #[serde(borrow)]
    pub event: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    pub data: &'a RawValue,
    #[serde(default, skip_serializing_if = "Option::is_none", borrow)]
    pub user_id: Option<std::borrow::Cow<'a, str>>,
    /// The connection that must not receive it (the sender of a client event, or the
    /// `socket_id` of an API trigger).
    #[serde(default, skip_serializing_if = "Option::is_none", borrow)]
    pub socket_id: Option<std::borrow::Cow<'a, str>>,
}

/// The envelope to publish for event `event` with data `data` (JSON: a string from the HTTP
/// API, whatever JSON a client sent for a client event).
pub fn envelope(
    event: &str,
    data: &RawValue,
    user_id: Option<&str>,
    socket_id: Option<&str>,
) -> Bytes {
    #[derive(Serialize)]
    struct Out<'a> {
        event: &'a str,
        data: &'a RawValue,
        #[serde(skip_serializing_if = "Option::is_none")]
        user_id: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        socket_id: Option<&'a str>,
    }
    let out = Out {
        event,
        data,
        user_id,
        socket_id,
    };
    // Plain structs of strings and raw JSON always serialize.
    Bytes::from(serde_json::to_vec(&out).unwrap_or_default())
}

/// A Pusher event frame: `{"event","channel","data"}` (+ `user_id`). `data` is already
/// JSON (a string, or an object for `pusher_internal:` events).
pub fn event_frame(
    event: &str,
    channel: Option<&str>,
    data: &RawValue,
    user_id: Option<&str>,
) -> Bytes {
    #[derive(Serialize)]
    struct Out<'a> {
        event: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        channel: Option<&'a str>,
        data: &'a RawValue,
        #[serde(skip_serializing_if = "Option::is_none")]
        user_id: Option<&'a str>,
    }
    let out = Out {
        event,
        channel,
        data,
        user_id,
    };
    Bytes::from(serde_json::to_vec(&out).unwrap_or_default())
}

/// An event whose data is the JSON text of `data`, as a string (how Pusher sends the data of
/// its own events, e.g. `pusher:connection_established`).
pub fn event_with_json_string(event: &str, channel: Option<&str>, data: &impl Serialize) -> Bytes {
    let text = serde_json::to_string(data).expect("event data serialization");
    let quoted = serde_json::to_string(&text).expect("string serialization");
    let raw = RawValue::from_string(quoted).expect("a JSON string is JSON");
    event_frame(event, channel, &raw, None)
}

/// An event whose data is `data` as a JSON value (how `pusher_internal:` events carry it).
pub fn event_with_json(event: &str, channel: Option<&str>, data: &impl Serialize) -> Bytes {
    let text = serde_json::to_string(data).expect("event data serialization");
    let raw = RawValue::from_string(text).expect("serialized JSON is JSON");
    event_frame(event, channel, &raw, None)
}

/// `pusher:error` with a code (4000-4399) and message.
pub fn error_frame(code: Option<u16>, message: &str) -> Bytes {
    #[derive(Serialize)]
    struct Data<'a> {
        code: Option<u16>,
        message: &'a str,
    }
    event_with_json("pusher:error", None, &Data { code, message })
}

/// `pusher:connection_established`: the socket id and the activity timeout (seconds).
pub fn connection_established(socket_id: &str, activity_timeout: u64) -> Bytes {
    #[derive(Serialize)]
    struct Data<'a> {
        activity_timeout: u64,
        socket_id: &'a str,
    }
    let data = Data {
        activity_timeout,
        socket_id,
    };
    event_with_json_string("pusher:connection_established", None, &data)
}

#[derive(Serialize)]
struct Empty {}

/// `pusher:pong`.
pub fn pong() -> Bytes {
    event_with_json("pusher:pong", None, &Empty {})
}

/// `pusher_internal:subscription_succeeded` of a channel that is not a presence channel.
pub fn subscription_succeeded(channel: &str) -> Bytes {
    event_with_json_string(
        "pusher_internal:subscription_succeeded",
        Some(channel),
        &Empty {},
    )
}

/// `pusher_internal:subscription_succeeded` of a presence channel, with its members: each
/// user id once, with its `user_info` (raw JSON).
pub fn presence_subscription_succeeded(channel: &str, users: &[(&str, Option<&Bytes>)]) -> Bytes {
    #[derive(Serialize)]
    struct Presence<'a> {
        count: usize,
        hash: Hash<'a>,
        ids: Vec<&'a str>,
    }
    struct Hash<'a>(&'a [(&'a str, Option<&'a Bytes>)]);
    impl Serialize for Hash<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_map(self.0.iter().map(|(id, info)| (id, raw_json(*info))))
        }
    }
    #[derive(Serialize)]
    struct Data<'a> {
        presence: Presence<'a>,
    }
    let data = Data {
        presence: Presence {
            count: users.len(),
            hash: Hash(users),
            ids: users.iter().map(|(id, _)| *id).collect(),
        },
    };
    event_with_json_string(
        "pusher_internal:subscription_succeeded",
        Some(channel),
        &data,
    )
}

/// `pusher:subscription_error`, with Pusher's error type and an HTTP-like status.
pub fn subscription_error(channel: &str, kind: &str, message: &str, status: u16) -> Bytes {
    #[derive(Serialize)]
    struct Data<'a> {
        error: &'a str,
        status: u16,
        #[serde(rename = "type")]
        kind: &'a str,
    }
    let data = Data {
        error: message,
        status,
        kind,
    };
    event_with_json("pusher:subscription_error", Some(channel), &data)
}

/// `pusher:cache_miss`: a cache channel had no event to replay.
pub fn cache_miss(channel: &str) -> Bytes {
    event_with_json("pusher:cache_miss", Some(channel), &Empty {})
}

/// `pusher:signin_success`, echoing the signed `user_data`.
pub fn signin_success(user_data: &str) -> Bytes {
    #[derive(Serialize)]
    struct Data<'a> {
        user_data: &'a str,
    }
    event_with_json_string("pusher:signin_success", None, &Data { user_data })
}

/// `pusher_internal:member_added`: a user's first connection joined a presence channel.
pub fn member_added(channel: &str, user_id: &str, user_info: Option<&Bytes>) -> Bytes {
    #[derive(Serialize)]
    struct Data<'a> {
        user_id: &'a str,
        user_info: Option<&'a RawValue>,
    }
    let data = Data {
        user_id,
        user_info: raw_json(user_info),
    };
    event_with_json_string("pusher_internal:member_added", Some(channel), &data)
}

/// `pusher_internal:member_removed`: a user's last connection left a presence channel.
pub fn member_removed(channel: &str, user_id: &str) -> Bytes {
    #[derive(Serialize)]
    struct Data<'a> {
        user_id: &'a str,
    }
    event_with_json_string(
        "pusher_internal:member_removed",
        Some(channel),
        &Data { user_id },
    )
}

fn raw_json(bytes: Option<&Bytes>) -> Option<&RawValue> {
    crate::model::raw_json(bytes)
}

/// What a native `message` frame becomes for Pusher clients: one WebSocket frame shared by
/// every Pusher subscriber, and the connection excluded from it, if any.
#[derive(Debug, Clone)]
pub struct PusherMessage {
    pub ws_frame: Bytes,
    pub exclude_socket: Option<Box<str>>,
}

/// Translates a native `message` frame (`{"type":"message","channel",...,"data"}`).
pub fn from_native_message(native: &[u8]) -> Option<PusherMessage> {
    #[derive(Deserialize)]
    struct Native<'a> {
        #[serde(borrow)]
        channel: std::borrow::Cow<'a, str>,
        #[serde(borrow)]
        data: &'a RawValue,
    }
    let native: Native = serde_json::from_slice(native).ok()?;
    let channel = pusher_channel(&native.channel);
    let frame = match serde_json::from_str::<Envelope>(native.data.get()) {
        Ok(env) => {
            // Pusher data is a string; an envelope built by hand with other JSON still
            // reaches Pusher clients, as that JSON's text.
            let data = if env.data.get().starts_with('"') {
                env.data.to_owned()
            } else {
                json_string(env.data.get())
            };
            let frame = event_frame(&env.event, Some(&channel), &data, env.user_id.as_deref());
            return Some(PusherMessage {
                ws_frame: ws::encode_text(&frame),
                exclude_socket: env.socket_id.map(|s| s.into()),
            });
        }
        Err(_) => event_frame(
            NATIVE_EVENT,
            Some(&channel),
            &json_string(native.data.get()),
            None,
        ),
    };
    Some(PusherMessage {
        ws_frame: ws::encode_text(&frame),
        exclude_socket: None,
    })
}

fn json_string(text: &str) -> Box<RawValue> {
    let quoted = serde_json::to_string(text).expect("string serialization");
    RawValue::from_string(quoted).expect("a JSON string is JSON")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(frame: &Bytes) -> serde_json::Value {
        // Server frames are unmasked text frames with a 2-byte header below 126 bytes.
        let len = frame[1] as usize;
        assert!(len < 126);
        serde_json::from_slice(&frame[2..2 + len]).unwrap()
    }

    #[test]
    fn channel_names_map_both_ways() {
        assert_eq!(hub_channel("", "private-a"), "private-a");
        assert_eq!(hub_channel("app2", "presence-a"), "app2:presence-a");
        assert_eq!(hub_channel("", "#server-to-user-42"), "server-to-user#42");
        for (ns, name) in [
            ("", "cache-x"),
            ("a", "private-encrypted-y"),
            ("b", "#server-to-user-u"),
        ] {
            assert_eq!(pusher_channel(&hub_channel(ns, name)), name);
        }
        assert!(valid_channel_name("private-a_b-c=d@e,f.g;h"));
        assert!(!valid_channel_name("a:b"));
        assert!(!valid_channel_name("#server-to-user-1"));
        assert!(!valid_channel_name(&"a".repeat(165)));
    }

    #[test]
    fn envelopes_become_events_and_native_data_becomes_message() {
        let data = RawValue::from_string(r#""{\"a\":1}""#.into()).unwrap();
        let env = envelope("my-event", &data, Some("u1"), Some("1.2"));
        let native = format!(
            r#"{{"type":"message","channel":"ns:presence-x","offset":3,"epoch":"e","data":{}}}"#,
            std::str::from_utf8(&env).unwrap()
        );
        let m = from_native_message(native.as_bytes()).unwrap();
        assert_eq!(m.exclude_socket.as_deref(), Some("1.2"));
        assert_eq!(
            payload(&m.ws_frame),
            serde_json::json!({"event":"my-event","channel":"presence-x","data":"{\"a\":1}","user_id":"u1"})
        );

        let native =
            r#"{"type":"message","channel":"news","offset":1,"epoch":"e","data":{"text":"hi"}}"#;
        let m = from_native_message(native.as_bytes()).unwrap();
        assert!(m.exclude_socket.is_none());
        assert_eq!(
            payload(&m.ws_frame),
            serde_json::json!({"event":"message","channel":"news","data":"{\"text\":\"hi\"}"})
        );
    }
}
