//! One server frame on its way to many clients. It is serialized to JSON once; each door derives
//! its wire bytes from that once per frame (the WebSocket frame, the Pusher event), never once
//! per subscriber, and the frame says what it is, so no door parses JSON back.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use crate::model::{PresenceMember, Publication};
use crate::{encode, ws};

/// A frame shared by every recipient: the JSON text, what it is, and the wire forms derived
/// from it on first use.
#[derive(Debug)]
pub struct Outgoing {
    json: Bytes,
    kind: FrameKind,
    ws_frame: OnceLock<Bytes>,
    /// The Pusher event of a `message` frame, translated on first use and then shared by
    /// every Pusher subscriber.
    pusher: OnceLock<Option<crate::pusher::PusherMessage>>,
}

/// What a frame is, for the doors that show it their own way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameKind {
    /// A channel's `message`: its position moves a cursor; Pusher shows it as an event.
    Message(MessageMeta),
    /// A `join` or `leave`: Pusher keeps its own view of a presence channel's members.
    Presence(Box<PresenceChange>),
    /// Anything else (replies, room events, `unsubscribed`, ...).
    Other,
}

/// The position a `message` frame carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageMeta {
    pub channel: Arc<str>,
    pub offset: u64,
    pub epoch: Arc<str>,
}

/// Someone joined or left a channel's presence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceChange {
    pub event: PresenceEvent,
    pub channel: Arc<str>,
    pub member: PresenceMember,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenceEvent {
    Join,
    Leave,
}

impl Outgoing {
    /// A frame with no meaning a door needs (replies, room events, ...).
    pub fn new(json: Bytes) -> Self {
        Outgoing::with_kind(json, FrameKind::Other)
    }

    fn with_kind(json: Bytes, kind: FrameKind) -> Self {
        Outgoing {
            json,
            kind,
            ws_frame: OnceLock::new(),
            pusher: OnceLock::new(),
        }
    }

    /// The `message` push of `publication` on `channel`.
    pub fn message(channel: &str, publication: &Publication) -> Self {
        let meta = MessageMeta {
            channel: channel.into(),
            offset: publication.offset,
            epoch: publication.epoch.clone(),
        };
        Outgoing::with_kind(
            encode::message(channel, publication),
            FrameKind::Message(meta),
        )
    }

    /// The `join` or `leave` push of `member` on `channel`.
    pub fn presence(event: PresenceEvent, channel: &str, member: &PresenceMember) -> Self {
        let change = PresenceChange {
            event,
            channel: channel.into(),
            member: member.clone(),
        };
        Outgoing::with_kind(
            encode::presence_event(event, channel, member),
            FrameKind::Presence(Box::new(change)),
        )
    }

    pub fn json(&self) -> &Bytes {
        &self.json
    }

    pub fn kind(&self) -> &FrameKind {
        &self.kind
    }

    /// Set on `message` frames.
    pub fn message_meta(&self) -> Option<&MessageMeta> {
        match &self.kind {
            FrameKind::Message(meta) => Some(meta),
            _ => None,
        }
    }

    /// What a `message` frame is for Pusher clients (`None` for other frames), translated
    /// once.
    pub fn pusher(&self) -> Option<&crate::pusher::PusherMessage> {
        self.message_meta()?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ws_frame_is_header_plus_json_and_cached() {
        let out = Outgoing::new(Bytes::from_static(b"{}"));
        let a = out.ws_frame();
        assert_eq!(&a[..], &[0x81, 2, b'{', b'}']);
        assert_eq!(a.as_ptr(), out.ws_frame().as_ptr());
    }

    #[test]
    fn frames_say_what_they_are() {
        let publication = Publication {
            offset: 7,
            epoch: "e".into(),
            data: Bytes::from_static(b"{}"),
        };
        let message = Outgoing::message("c", &publication);
        let meta = message.message_meta().unwrap();
        assert_eq!((&*meta.channel, meta.offset, &*meta.epoch), ("c", 7, "e"));
        let member = PresenceMember {
            client: "1".into(),
            user: "u".into(),
            info: None,
        };
        let join = Outgoing::presence(PresenceEvent::Join, "c", &member);
        let FrameKind::Presence(change) = join.kind() else {
            panic!("a join is a presence change");
        };
        assert_eq!(change.member, member);
        assert!(join.message_meta().is_none());
        assert!(join.pusher().is_none());
    }
}
