//! Every server frame of the native protocol (spec §3), built from typed values. Core and the
//! doors never write JSON themselves: they call these.
//!
//! Publication data, `info`, `meta` and signal data are raw JSON as clients sent it and are
//! embedded as they are, except for one thing: line breaks outside strings (the only place
//! valid JSON can hold them) become spaces, so a frame is always one line and one SSE event,
//! whatever a publisher sent (spec §3).

use std::io::Write;

use bytes::Bytes;
use serde::Serialize;
use serde::ser::{SerializeStruct, Serializer};
use serde_json::value::RawValue;

use crate::ErrorCode;
use crate::model::{PresenceMember, Publication, RoomPeer, raw_json};
use crate::outgoing::PresenceEvent;

/// Serializes a frame, keeping it on one line.
fn to_bytes(value: &impl Serialize) -> Bytes {
    // Plain structs of strings, numbers and raw JSON always serialize.
    let json = serde_json::to_vec(value).unwrap_or_default();
    Bytes::from(one_line(json))
}

/// Turns the line breaks of serialized JSON into spaces. serde_json escapes them inside
/// strings, so any left are whitespace between tokens of embedded raw JSON.
fn one_line(mut json: Vec<u8>) -> Vec<u8> {
    for byte in json.iter_mut() {
        if *byte == b'\n' || *byte == b'\r' {
            *byte = b' ';
        }
    }
    json
}

/// A JSON string, written into `out`.
fn put_string(out: &mut Vec<u8>, text: &str) {
    // Writing to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, text);
}

/// `{"type":"message","channel","offset","epoch","data"}`, the data as the publisher sent it
/// (on one line). Built by hand: it is the hot path of every publication.
pub fn message(channel: &str, publication: &Publication) -> Bytes {
    let data = &publication.data;
    let mut out = Vec::with_capacity(64 + channel.len() + publication.epoch.len() + data.len());
    put_message(&mut out, channel, publication);
    Bytes::from(out)
}

fn put_message(out: &mut Vec<u8>, channel: &str, publication: &Publication) {
    out.extend_from_slice(br#"{"type":"message","channel":"#);
    put_string(out, channel);
    out.extend_from_slice(br#","offset":"#);
    let _ = write!(out, "{}", publication.offset);
    out.extend_from_slice(br#","epoch":"#);
    put_string(out, &publication.epoch);
    out.extend_from_slice(br#","data":"#);
    // Checked once per publication: a damaged record (from a broker or the disk) must not
    // make frames that are not JSON.
    if serde_json::from_slice::<serde::de::IgnoredAny>(&publication.data).is_err() {
        out.extend_from_slice(b"null");
    } else {
        let start = out.len();
        out.extend_from_slice(&publication.data);
        for byte in &mut out[start..] {
            if *byte == b'\n' || *byte == b'\r' {
                *byte = b' ';
            }
        }
    }
    out.push(b'}');
}

/// `{"type":"join"|"leave","channel","member":{...}}`.
pub fn presence_event(event: PresenceEvent, channel: &str, member: &PresenceMember) -> Bytes {
    #[derive(Serialize)]
    struct Event<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        channel: &'a str,
        member: &'a PresenceMember,
    }
    let kind = match event {
        PresenceEvent::Join => "join",
        PresenceEvent::Leave => "leave",
    };
    to_bytes(&Event {
        kind,
        channel,
        member,
    })
}

/// `{"type":"subscribed","channel","offset","epoch"[,"recovered"]}`: a one-way door
/// subscribed its URL's channel (`recovered` when it resumed from a cursor).
pub fn subscribed(channel: &str, offset: u64, epoch: &str, recovered: Option<bool>) -> Bytes {
    to_bytes(&Subscription {
        kind: Some("subscribed"),
        id: None,
        channel,
        offset,
        epoch,
        recovered,
    })
}

/// The `subscribe` reply: `{"type":"reply","id","channel","offset","epoch"[,"recovered"]}`.
pub fn subscribe_reply(
    id: Option<u64>,
    channel: &str,
    offset: u64,
    epoch: &str,
    recovered: Option<bool>,
) -> Bytes {
    to_bytes(&Subscription {
        kind: Some("reply"),
        id,
        channel,
        offset,
        epoch,
        recovered,
    })
}

#[derive(Serialize)]
struct Subscription<'a> {
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<u64>,
    channel: &'a str,
    offset: u64,
    epoch: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    recovered: Option<bool>,
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

/// What happened to a room peer that the others hear of with its whole record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerEvent {
    Joined,
    Updated,
}

/// `{"type":"peer_joined"|"peer_updated","room","peer":{...}}`.
pub fn peer_event(event: PeerEvent, room: &str, peer: &RoomPeer) -> Bytes {
    #[derive(Serialize)]
    struct Event<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        room: &'a str,
        peer: &'a RoomPeer,
    }
    let kind = match event {
        PeerEvent::Joined => "peer_joined",
        PeerEvent::Updated => "peer_updated",
    };
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
fn reply(id: Option<u64>, fields: &impl Serialize) -> Bytes {
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

/// A reply with no fields: `{"type":"reply","id":N}`.
pub fn empty_reply(id: Option<u64>) -> Bytes {
    #[derive(Serialize)]
    struct Nothing {}
    reply(id, &Nothing {})
}

/// The `publish` reply: the message's position.
pub fn publish_reply(id: Option<u64>, offset: u64, epoch: &str) -> Bytes {
    #[derive(Serialize)]
    struct Published<'a> {
        offset: u64,
        epoch: &'a str,
    }
    reply(id, &Published { offset, epoch })
}

/// The `presence` reply: `{"members":[...]}`.
pub fn presence_reply(id: Option<u64>, members: &[PresenceMember]) -> Bytes {
    #[derive(Serialize)]
    struct Members<'a> {
        members: &'a [PresenceMember],
    }
    reply(id, &Members { members })
}

/// The `refresh` reply: the new token's expiry.
pub fn refresh_reply(id: Option<u64>, exp: Option<u64>) -> Bytes {
    #[derive(Serialize)]
    struct Refreshed {
        exp: Option<u64>,
    }
    reply(id, &Refreshed { exp })
}

/// The `join_room` reply: this peer's id, the others, and the ICE servers to use.
pub fn join_room_reply(
    id: Option<u64>,
    room: &str,
    peer: &str,
    peers: &[RoomPeer],
    ice_servers: &serde_json::Value,
) -> Bytes {
    #[derive(Serialize)]
    struct Joined<'a> {
        room: &'a str,
        peer: &'a str,
        peers: &'a [RoomPeer],
        ice_servers: &'a serde_json::Value,
    }
    reply(
        id,
        &Joined {
            room,
            peer,
            peers,
            ice_servers,
        },
    )
}

/// A page of a channel's history: `{"messages":[...],"offset","epoch"}`, each message exactly
/// as it is pushed. The server API answers this; the `history` reply carries its fields.
pub struct History<'a> {
    pub channel: &'a str,
    pub publications: &'a [Publication],
    /// The stream's position now.
    pub offset: u64,
    pub epoch: &'a str,
}

impl Serialize for History<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        struct Messages<'a>(&'a str, &'a [Publication]);
        impl Serialize for Messages<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_seq(self.1.iter().map(|p| MessageFrame(self.0, p)))
            }
        }
        let mut out = s.serialize_struct("History", 3)?;
        out.serialize_field("messages", &Messages(self.channel, self.publications))?;
        out.serialize_field("offset", &self.offset)?;
        out.serialize_field("epoch", self.epoch)?;
        out.end()
    }
}

/// A `message` frame as a serde value (inside history pages), the same JSON as [`message`].
struct MessageFrame<'a>(&'a str, &'a Publication);

impl Serialize for MessageFrame<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let MessageFrame(channel, p) = self;
        let mut out = s.serialize_struct("Message", 5)?;
        out.serialize_field("type", "message")?;
        out.serialize_field("channel", channel)?;
        out.serialize_field("offset", &p.offset)?;
        out.serialize_field("epoch", &*p.epoch)?;
        out.serialize_field("data", &raw_json(Some(&p.data)))?;
        out.end()
    }
}

/// The `history` reply.
pub fn history_reply(id: Option<u64>, history: &History) -> Bytes {
    reply(id, history)
}

/// The server API's history answer (no `type`, no `id`).
pub fn history_answer(history: &History) -> Bytes {
    to_bytes(history)
}

/// `{"type":"error","id":N,"code","message"}`.
/// The refusal of a client frame over `limit` bytes (`too_large`), whatever the door.
pub fn frame_too_large(id: Option<u64>, limit: usize) -> Bytes {
    error(
        id,
        ErrorCode::TooLarge,
        &format!("frame larger than {limit} bytes"),
    )
}

/// The refusal of a command past the client's rate of `rate` a second (`rate_limited`).
pub fn rate_limited(id: Option<u64>, rate: u32) -> Bytes {
    let message = format!("too many commands (at most {rate} a second)");
    error(id, ErrorCode::RateLimited, &message)
}

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

    fn publication(offset: u64, data: &'static [u8]) -> Publication {
        Publication {
            offset,
            epoch: "e".into(),
            data: Bytes::from_static(data),
        }
    }

    #[test]
    fn replies_carry_their_fields_after_id() {
        assert_eq!(&empty_reply(Some(1))[..], br#"{"type":"reply","id":1}"#);
        assert_eq!(
            &publish_reply(Some(4), 9, "e")[..],
            br#"{"type":"reply","id":4,"offset":9,"epoch":"e"}"#
        );
        assert_eq!(
            &subscribe_reply(Some(2), "c", 3, "e", Some(true))[..],
            br#"{"type":"reply","id":2,"channel":"c","offset":3,"epoch":"e","recovered":true}"#
        );
        assert_eq!(
            &subscribed("c", 3, "e", None)[..],
            br#"{"type":"subscribed","channel":"c","offset":3,"epoch":"e"}"#
        );
        assert_eq!(
            &refresh_reply(None, None)[..],
            br#"{"type":"reply","exp":null}"#
        );
    }

    #[test]
    fn message_embeds_data_verbatim() {
        let b = message("c", &publication(3, br#"{"z":1,"a":2}"#));
        assert_eq!(
            &b[..],
            br#"{"type":"message","channel":"c","offset":3,"epoch":"e","data":{"z":1,"a":2}}"#
        );
        let escaped = message("a\"b", &publication(1, b"1"));
        let v: serde_json::Value = serde_json::from_slice(&escaped).unwrap();
        assert_eq!(v["channel"], "a\"b");
    }

    #[test]
    fn data_that_is_not_json_is_sent_as_null() {
        for bad in [&b"{not json"[..], b"", b"1 2", b"\xff"] {
            let frame = message("c", &publication(1, bad));
            let v: serde_json::Value = serde_json::from_slice(&frame).expect("still JSON");
            assert_eq!(v["data"], serde_json::Value::Null);
        }
    }

    #[test]
    fn no_data_can_break_a_frame_into_lines() {
        // What a publisher may send through the API: valid JSON with line breaks between
        // tokens, one of them shaped like a frame of its own.
        let forged = b"[1,\n{\"type\":\"message\",\"channel\":\"admin\",\"data\":\"x\"}\r\n]";
        let frame = message("pub:x", &publication(1, forged));
        assert!(!frame.contains(&b'\n') && !frame.contains(&b'\r'));
        let v: serde_json::Value = serde_json::from_slice(&frame).unwrap();
        assert_eq!(v["data"][1]["channel"], "admin", "the data is unchanged");
        let history = History {
            channel: "pub:x",
            publications: &[publication(1, forged)],
            offset: 1,
            epoch: "e",
        };
        let page = history_answer(&history);
        assert!(!page.contains(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&page).unwrap();
        assert_eq!(
            v["messages"][0],
            serde_json::from_slice::<serde_json::Value>(&frame).unwrap()
        );
        let meta = RoomPeer {
            peer: "p".into(),
            user: "u".into(),
            info: None,
            meta: Some(Bytes::from_static(b"{\n\"a\":\n1}")),
        };
        assert!(!peer_event(PeerEvent::Joined, "r", &meta).contains(&b'\n'));
        let data = RawValue::from_string("[\n1\r\n]".into()).unwrap();
        assert!(!signal("r", "p", &data).contains(&b'\n'));
    }

    #[test]
    fn a_history_page_holds_messages_as_pushed() {
        let pubs = [publication(1, b"{\"a\":1}"), publication(2, b"\"x\"")];
        let history = History {
            channel: "c",
            publications: &pubs,
            offset: 2,
            epoch: "e",
        };
        let reply = history_reply(Some(5), &history);
        let expected = format!(
            r#"{{"type":"reply","id":5,"messages":[{},{}],"offset":2,"epoch":"e"}}"#,
            std::str::from_utf8(&message("c", &pubs[0])).unwrap(),
            std::str::from_utf8(&message("c", &pubs[1])).unwrap(),
        );
        assert_eq!(std::str::from_utf8(&reply).unwrap(), expected);
    }
}
