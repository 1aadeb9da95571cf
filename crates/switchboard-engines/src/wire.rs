//! How the distributed engines' values look inside Redis or NATS and on their pub/sub
//! subjects (both engines use the same encoding). Raw JSON the clients sent (`info`, `meta`,
//! signal `data`) is carried as it came, never re-serialized.

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use switchboard_core::engine::{
    NodeAnswer, NodeRequest, PresenceEvent, PresenceMember, Publication, RoomEvent, RoomPeer,
};

pub(crate) fn raw(bytes: &Option<Bytes>) -> Option<Box<RawValue>> {
    bytes
        .as_ref()
        .and_then(|b| serde_json::from_slice::<Box<RawValue>>(b).ok())
}

fn bytes(raw: Option<Box<RawValue>>) -> Option<Bytes> {
    raw.map(|r| Bytes::from(r.get().to_owned()))
}

/// A presence member or room peer as stored: the node holding it, its user and `info`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Stored {
    pub n: String,
    pub u: String,
    #[serde(default)]
    pub i: Option<Box<RawValue>>,
}

impl Stored {
    pub(crate) fn encode(node: &str, user: &str, info: &Option<Bytes>) -> String {
        let stored = Stored {
            n: node.to_owned(),
            u: user.to_owned(),
            i: raw(info),
        };
        serde_json::to_string(&stored).expect("a stored member serializes")
    }

    /// How every stored value of `node` begins: `{"n":"<node>",`.
    pub(crate) fn marker(node: &str) -> String {
        let node = serde_json::to_string(node).expect("a string serializes");
        format!("{{\"n\":{node},")
    }

    pub(crate) fn decode(value: &[u8]) -> Option<Stored> {
        serde_json::from_slice(value).ok()
    }

    pub(crate) fn into_member(self, client: &str) -> PresenceMember {
        PresenceMember {
            client: client.into(),
            user: self.u.into(),
            info: bytes(self.i),
        }
    }

    pub(crate) fn into_peer(self, peer: &str, meta: Option<Bytes>) -> RoomPeer {
        RoomPeer {
            peer: peer.into(),
            user: self.u.into(),
            info: bytes(self.i),
            meta,
        }
    }
}

/// What travels on a channel's pub/sub topic.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ChannelMessage {
    Publication(Publication),
    Presence(PresenceEvent, PresenceMember),
}

#[derive(Serialize, Deserialize)]
struct WireMember {
    c: String,
    u: String,
    #[serde(default)]
    i: Option<Box<RawValue>>,
}

/// A publication as it travels: `m<offset> <epoch> <data>` (Redis's publish script writes the
/// same bytes).
#[cfg(feature = "nats")]
pub(crate) fn encode_publication(offset: u64, epoch: &str, data: &[u8]) -> Vec<u8> {
    let mut out = format!("m{offset} {epoch} ").into_bytes();
    out.extend_from_slice(data);
    out
}

/// `j` or `l` then the member as JSON.
pub(crate) fn encode_presence(event: PresenceEvent, member: &PresenceMember) -> Vec<u8> {
    let wire = WireMember {
        c: member.client.to_string(),
        u: member.user.to_string(),
        i: raw(&member.info),
    };
    let mut out = vec![match event {
        PresenceEvent::Join => b'j',
        PresenceEvent::Leave => b'l',
    }];
    serde_json::to_writer(&mut out, &wire).expect("a member serializes");
    out
}

pub(crate) fn decode_channel_message(payload: &[u8]) -> Option<ChannelMessage> {
    let (&kind, rest) = payload.split_first()?;
    match kind {
        b'm' => {
            let mut parts = rest.splitn(3, |b| *b == b' ');
            let offset = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
            let epoch: Arc<str> = std::str::from_utf8(parts.next()?).ok()?.into();
            let data = Bytes::copy_from_slice(parts.next()?);
            Some(ChannelMessage::Publication(Publication {
                offset,
                epoch,
                data,
            }))
        }
        b'j' | b'l' => {
            let wire: WireMember = serde_json::from_slice(rest).ok()?;
            let event = if kind == b'j' {
                PresenceEvent::Join
            } else {
                PresenceEvent::Leave
            };
            let member = PresenceMember {
                client: wire.c.into(),
                user: wire.u.into(),
                info: bytes(wire.i),
            };
            Some(ChannelMessage::Presence(event, member))
        }
        _ => None,
    }
}

#[derive(Serialize, Deserialize)]
struct WirePeer {
    p: String,
    u: String,
    #[serde(default)]
    i: Option<Box<RawValue>>,
    #[serde(default)]
    m: Option<Box<RawValue>>,
}

#[derive(Serialize, Deserialize, PartialEq, Eq, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum RoomEventKind {
    Joined,
    Updated,
    Left,
    Signal,
}

/// A room event as one flat object (serde's tagged enums cannot carry raw JSON values).
#[derive(Serialize, Deserialize)]
struct WireRoomEvent {
    t: RoomEventKind,
    /// The peer that joined or was updated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    peer: Option<WirePeer>,
    /// The peer that left, or the signal's sender.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    data: Option<Box<RawValue>>,
}

fn wire_peer(peer: &RoomPeer) -> WirePeer {
    WirePeer {
        p: peer.peer.to_string(),
        u: peer.user.to_string(),
        i: raw(&peer.info),
        m: raw(&peer.meta),
    }
}

fn room_peer(wire: WirePeer) -> RoomPeer {
    RoomPeer {
        peer: wire.p.into(),
        user: wire.u.into(),
        info: bytes(wire.i),
        meta: bytes(wire.m),
    }
}

pub(crate) fn encode_room_event(event: &RoomEvent) -> Option<Vec<u8>> {
    let mut wire = WireRoomEvent {
        t: RoomEventKind::Left,
        peer: None,
        from: None,
        to: None,
        data: None,
    };
    match event {
        RoomEvent::Joined(p) | RoomEvent::Updated(p) => {
            wire.t = if matches!(event, RoomEvent::Joined(_)) {
                RoomEventKind::Joined
            } else {
                RoomEventKind::Updated
            };
            wire.peer = Some(wire_peer(p));
        }
        RoomEvent::Left { peer } => wire.from = Some(peer.to_string()),
        RoomEvent::Signal { from, to, data } => {
            wire.t = RoomEventKind::Signal;
            wire.from = Some(from.to_string());
            wire.to = to.as_ref().map(|t| t.to_string());
            wire.data = Some(serde_json::from_slice(data).ok()?);
        }
    }
    serde_json::to_vec(&wire).ok()
}

pub(crate) fn decode_room_event(payload: &[u8]) -> Option<RoomEvent> {
    let wire: WireRoomEvent = serde_json::from_slice(payload).ok()?;
    Some(match wire.t {
        RoomEventKind::Joined => RoomEvent::Joined(room_peer(wire.peer?)),
        RoomEventKind::Updated => RoomEvent::Updated(room_peer(wire.peer?)),
        RoomEventKind::Left => RoomEvent::Left {
            peer: wire.from?.into(),
        },
        RoomEventKind::Signal => RoomEvent::Signal {
            from: wire.from?.into(),
            to: wire.to.map(Into::into),
            data: Bytes::from(wire.data?.get().to_owned()),
        },
    })
}

/// A server API request on the control topic, and a node's answer on the asker's topic.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ControlRequest {
    pub from: String,
    pub id: u64,
    pub request: NodeRequest,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ControlReply {
    pub id: u64,
    pub answer: NodeAnswer,
}

/// The fuzz target's look at this module (see `fuzz_engine_records`): every decoder on the
/// same bytes; what decodes must encode back to the same value.
pub(crate) fn fuzz_records(data: &[u8]) {
    match decode_channel_message(data) {
        Some(ChannelMessage::Presence(event, member)) => {
            let again = decode_channel_message(&encode_presence(event, &member));
            assert_eq!(again, Some(ChannelMessage::Presence(event, member)));
        }
        #[cfg(feature = "nats")]
        Some(ChannelMessage::Publication(p)) => {
            let again = decode_channel_message(&encode_publication(p.offset, &p.epoch, &p.data));
            assert_eq!(again, Some(ChannelMessage::Publication(p)));
        }
        _ => {}
    }
    if let Some(event) = decode_room_event(data) {
        let encoded = encode_room_event(&event).expect("a decoded room event encodes");
        assert_eq!(decode_room_event(&encoded), Some(event));
    }
    if let Some(stored) = Stored::decode(data) {
        let info = bytes(stored.i);
        let again = Stored::decode(Stored::encode(&stored.n, &stored.u, &info).as_bytes())
            .expect("an encoded member decodes");
        assert_eq!(
            (again.n, again.u, bytes(again.i)),
            (stored.n, stored.u, info)
        );
    }
    let _ = serde_json::from_slice::<ControlRequest>(data);
    let _ = serde_json::from_slice::<ControlReply>(data);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publications_keep_their_bytes_and_position() {
        let payload = b"m42 0a1b2c3d {\"text\":\"a b c\"}";
        let Some(ChannelMessage::Publication(p)) = decode_channel_message(payload) else {
            panic!("not a publication");
        };
        assert_eq!(p.offset, 42);
        assert_eq!(&*p.epoch, "0a1b2c3d");
        assert_eq!(&p.data[..], b"{\"text\":\"a b c\"}");
    }

    #[test]
    fn the_marker_is_how_stored_values_begin() {
        let value = Stored::encode("n1", "alice", &Some(Bytes::from_static(b"{\"n\":1}")));
        assert!(value.starts_with(&Stored::marker("n1")), "{value}");
        assert!(!value.starts_with(&Stored::marker("n")));
    }

    #[test]
    fn presence_and_room_events_round_trip() {
        let member = PresenceMember {
            client: "c1".into(),
            user: "alice".into(),
            info: Some(Bytes::from_static(b"{\"name\": \"Alice\"}")),
        };
        let payload = encode_presence(PresenceEvent::Leave, &member);
        assert_eq!(
            decode_channel_message(&payload),
            Some(ChannelMessage::Presence(PresenceEvent::Leave, member))
        );
        let events = [
            RoomEvent::Joined(RoomPeer {
                peer: "p1".into(),
                user: "bob".into(),
                info: None,
                meta: Some(Bytes::from_static(b"[1,2]")),
            }),
            RoomEvent::Left { peer: "p1".into() },
            RoomEvent::Signal {
                from: "p1".into(),
                to: Some("p2".into()),
                data: Bytes::from_static(b"{\"sdp\":\"v=0\"}"),
            },
        ];
        for event in events {
            let payload = encode_room_event(&event).unwrap();
            assert_eq!(decode_room_event(&payload), Some(event));
        }
        assert_eq!(decode_channel_message(b"x"), None);
        assert_eq!(decode_channel_message(b"m12"), None);
    }
}
