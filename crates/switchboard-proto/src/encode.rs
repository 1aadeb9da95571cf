//! Encoding of server frames. Each frame is serialized once to JSON; the doors derive their
//! wire bytes from that once per frame (see [`Outgoing`]), never once per subscriber.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::{ErrorCode, ws};

/// One server frame shared by every recipient: the JSON text, and the WebSocket frame bytes
/// computed on first use and then shared by every WebSocket subscriber.
#[derive(Debug)]
pub struct Outgoing {
    json: Bytes,
    ws_frame: OnceLock<Bytes>,
    message: Option<MessageMeta>,
    /// The Pusher event of a `message` frame, translated on first use and then shared by
    /// every Pusher subscriber.
    pusher: OnceLock<Option<crate::pusher::PusherMessage>>,
}

/// The position a `message` frame carries, for doors that track positions per client (the
/// cursor of SSE, streaming and polling).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageMeta {
    pub channel: Arc<str>,
    pub offset: u64,
    pub epoch: Arc<str>,
}

impl Outgoing {
    pub fn new(json: Bytes) -> Self {
        Outgoing {
            json,
            ws_frame: OnceLock::new(),
            message: None,
            pusher: OnceLock::new(),
        }
    }

    /// A `message` frame of `meta.channel` at `meta.offset`.
    pub fn message(json: Bytes, meta: MessageMeta) -> Self {
        Outgoing {
            json,
            ws_frame: OnceLock::new(),
            message: Some(meta),
            pusher: OnceLock::new(),
        }
    }

    pub fn json(&self) -> &Bytes {
        &self.json
    }

    /// Set on `message` frames.
    pub fn message_meta(&self) -> Option<&MessageMeta> {
        self.message.as_ref()
    }

    /// What a `message` frame is for Pusher clients (`None` for other frames), translated
    /// once.
    pub fn pusher(&self) -> Option<&crate::pusher::PusherMessage> {
        self.message.as_ref()?;
        self.pusher
            .get_or_init(|| crate::pusher::from_native_message(&self.json))
            .as_ref()
    }

    /// The complete WebSocket text frame (header and payload), encoded once.
    pub fn ws_frame(&self) -> Bytes {
        self.ws_frame
            .get_or_init(|| ws::encode_text(&self.json))
            .clone()
    }
}

fn to_bytes(value: &impl Serialize) -> Bytes {
    // Serializing plain structs of strings, numbers and raw JSON cannot fail.
    Bytes::from(serde_json::to_vec(value).expect("frame serialization"))
}

/// A member of a channel's presence: `{"client","user","info"}`.
#[derive(Debug, Clone, Serialize)]
pub struct Member<'a> {
    pub client: &'a str,
    pub user: &'a str,
    pub info: Option<&'a RawValue>,
}

/// `{"type":"message","channel","offset","epoch","data"}`.
pub fn message(channel: &str, offset: u64, epoch: &str, data: &RawValue) -> Bytes {
    #[derive(Serialize)]
    struct Message<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        channel: &'a str,
        offset: u64,
        epoch: &'a str,
        data: &'a RawValue,
    }
    to_bytes(&Message {
        kind: "message",
        channel,
        offset,
        epoch,
        data,
    })
}

/// `{"type":"message",...}` from data held as raw JSON bytes (as engines store it), without
/// re-parsing the data. `data` must be valid JSON.
pub fn message_raw(channel: &str, offset: u64, epoch: &str, data: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(64 + channel.len() + epoch.len() + data.len());
    out.extend_from_slice(br#"{"type":"message","channel":"#);
    serde_json::to_writer(&mut out, channel).expect("writing to a Vec cannot fail");
    out.extend_from_slice(br#","offset":"#);
    out.extend_from_slice(offset.to_string().as_bytes());
    out.extend_from_slice(br#","epoch":"#);
    serde_json::to_writer(&mut out, epoch).expect("writing to a Vec cannot fail");
    out.extend_from_slice(br#","data":"#);
    out.extend_from_slice(data);
    out.push(b'}');
    Bytes::from(out)
}

/// `{"type":"join"|"leave","channel","member":{...}}`.
pub fn presence_event(kind: &'static str, channel: &str, member: &Member) -> Bytes {
    #[derive(Serialize)]
    struct Event<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        channel: &'a str,
        member: &'a Member<'a>,
    }
    to_bytes(&Event {
        kind,
        channel,
        member,
    })
}

/// `{"type":"subscribed","channel","offset","epoch"[,"recovered"]}`: a one-way door
/// subscribed its URL's channel (`recovered` when it resumed from a cursor).
pub fn subscribed(channel: &str, offset: u64, epoch: &str, recovered: Option<bool>) -> Bytes {
    #[derive(Serialize)]
    struct Subscribed<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        channel: &'a str,
        offset: u64,
        epoch: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
    }
    to_bytes(&Subscribed {
        kind: "subscribed",
        channel,
        offset,
        epoch,
        recovered,
    })
}

/// `{"type":"unsubscribed","channel","reason"}`: the server ended a subscription.
pub fn unsubscribed(channel: &str, reason: &str) -> Bytes {
    #[derive(Serialize)]
    struct Unsubscribed<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        channel: &'a str,
        reason: &'a str,
    }
    to_bytes(&Unsubscribed {
        kind: "unsubscribed",
        channel,
        reason,
    })
}

/// A room peer on the wire: `{"peer","user","info","meta"}`.
#[derive(Debug, Clone, Serialize)]
pub struct Peer<'a> {
    pub peer: &'a str,
    pub user: &'a str,
    pub info: Option<&'a RawValue>,
    pub meta: Option<&'a RawValue>,
}

/// `{"type":"peer_joined"|"peer_updated","room","peer":{...}}`.
pub fn peer_event(kind: &'static str, room: &str, peer: &Peer) -> Bytes {
    #[derive(Serialize)]
    struct Event<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        room: &'a str,
        peer: &'a Peer<'a>,
    }
    to_bytes(&Event { kind, room, peer })
}

/// `{"type":"peer_left","room","peer":"<peer id>"}`.
pub fn peer_left(room: &str, peer: &str) -> Bytes {
    #[derive(Serialize)]
    struct Left<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        room: &'a str,
        peer: &'a str,
    }
    to_bytes(&Left {
        kind: "peer_left",
        room,
        peer,
    })
}

/// `{"type":"signal","room","from","data"}` with `data` exactly as the sender gave it.
pub fn signal(room: &str, from: &str, data: &RawValue) -> Bytes {
    #[derive(Serialize)]
    struct Signal<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        room: &'a str,
        from: &'a str,
        data: &'a RawValue,
    }
    to_bytes(&Signal {
        kind: "signal",
        room,
        from,
        data,
    })
}

/// `{"type":"reply","id":N, ...fields}`; `fields` must serialize to a JSON object.
pub fn reply(id: Option<u64>, fields: &impl Serialize) -> Bytes {
    #[derive(Serialize)]
    struct Reply<'a, T> {
        #[serde(rename = "type")]
        kind: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        #[serde(flatten)]
        fields: &'a T,
    }
    to_bytes(&Reply {
        kind: "reply",
        id,
        fields,
    })
}

/// `{"type":"error","id":N,"code","message"}`.
pub fn error(id: Option<u64>, code: ErrorCode, message: &str) -> Bytes {
    #[derive(Serialize)]
    struct Error<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        code: &'static str,
        message: &'a str,
    }
    to_bytes(&Error {
        kind: "error",
        id,
        code: code.as_str(),
        message,
    })
}

/// `{"type":"pong","id":N}`.
pub fn pong(id: Option<u64>) -> Bytes {
    #[derive(Serialize)]
    struct Pong {
        #[serde(rename = "type")]
        kind: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    }
    to_bytes(&Pong { kind: "pong", id })
}

/// `{"type":"connected","client","user", ...}`.
pub fn connected(
    id: Option<u64>,
    client: &str,
    user: &str,
    exp: Option<u64>,
    ping_interval: u64,
    session: Option<&str>,
) -> Bytes {
    #[derive(Serialize)]
    struct Connected<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        /// The id of the `connect` frame this answers, if any.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        client: &'a str,
        user: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        exp: Option<u64>,
        /// Seconds between the server's pings; a client may use it to detect a dead link.
        ping_interval: u64,
        /// On the one-way doors: the secret for `POST /session/<session>`.
        #[serde(skip_serializing_if = "Option::is_none")]
        session: Option<&'a str>,
    }
    to_bytes(&Connected {
        kind: "connected",
        id,
        client,
        user,
        exp,
        ping_interval,
        session,
    })
}

/// `{"type":"disconnect","code","message","reconnect"}`.
pub fn disconnect(d: &crate::Disconnect) -> Bytes {
    #[derive(Serialize)]
    struct DisconnectFrame<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        code: &'a str,
        message: &'a str,
        reconnect: bool,
    }
    to_bytes(&DisconnectFrame {
        kind: "disconnect",
        code: d.code,
        message: d.message,
        reconnect: d.reconnect,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_flattens_fields_after_id() {
        #[derive(Serialize)]
        struct F {
            offset: u64,
        }
        let b = reply(Some(4), &F { offset: 9 });
        assert_eq!(&b[..], br#"{"type":"reply","id":4,"offset":9}"#);
        let empty = reply(Some(1), &serde_json::json!({}));
        assert_eq!(&empty[..], br#"{"type":"reply","id":1}"#);
    }

    #[test]
    fn message_embeds_data_verbatim() {
        let data = RawValue::from_string(r#"{"z":1,"a":2}"#.into()).unwrap();
        let b = message("c", 3, "e", &data);
        assert_eq!(
            &b[..],
            br#"{"type":"message","channel":"c","offset":3,"epoch":"e","data":{"z":1,"a":2}}"#
        );
        assert_eq!(b, message_raw("c", 3, "e", br#"{"z":1,"a":2}"#));
        let escaped = message_raw("a\"b", 1, "e", b"1");
        let v: serde_json::Value = serde_json::from_slice(&escaped).unwrap();
        assert_eq!(v["channel"], "a\"b");
    }

    #[test]
    fn ws_frame_is_header_plus_json_and_cached() {
        let out = Outgoing::new(Bytes::from_static(b"{}"));
        let a = out.ws_frame();
        assert_eq!(&a[..], &[0x81, 2, b'{', b'}']);
        assert_eq!(a.as_ptr(), out.ws_frame().as_ptr());
    }
}
