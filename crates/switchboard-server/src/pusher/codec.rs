//! The Pusher door's wire form: hub frames become Pusher events for one connection. A message
//! is translated once per publication and shared (see `Outgoing::pusher`); a client's own
//! client events are not sent back to it; native `join`/`leave` become `member_added` and
//! `member_removed` per user, from the members the frames carry (nothing is parsed back).
//!
//! Frames travel as WebSocket text frames, or as SockJS lines for pusher-js's HTTP fallbacks
//! (`a["<frame as a JSON string>"]`, `h` heartbeats, `c[code,"reason"]` closing).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use switchboard_proto::pusher as proto;
use switchboard_proto::{
    Disconnect, FrameKind, Outgoing, PresenceChange, PresenceEvent, PresenceMember, ws,
};

use super::close_code;
use crate::door::{DoorCodec, Heartbeat, Out};

/// Bytes of messages held for a presence channel until its member list is out; past it they
/// flow unheld rather than grow.
const MAX_HELD_BYTES: usize = 256 * 1024;
/// An empty WebSocket ping.
const WS_PING: &[u8] = &[0x89, 0x00];

/// How a Pusher connection's frames travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// One WebSocket text frame each.
    WebSocket,
    /// One SockJS line each (`xhr_streaming`, `xhr` polling).
    Sockjs,
}

/// A presence subscription's change of state, applied in order with the frames around it.
pub(crate) enum PresenceControl {
    /// A presence subscription begins: its messages are held until its members are known.
    Watch { hub: Arc<str>, channel: String },
    /// Its member list was read: `subscription_succeeded` with the members, then whatever
    /// was held.
    Ready {
        hub: Arc<str>,
        members: Vec<PresenceMember>,
    },
    /// The subscription ended (or failed).
    Forget { hub: Arc<str> },
}

/// What the Pusher door's queue carries besides frames.
type Control = Box<PresenceControl>;

pub(crate) struct PusherCodec {
    socket_id: Arc<str>,
    framing: Framing,
    /// Presence channels (by hub channel) as this connection sees them.
    presence: HashMap<Arc<str>, PresenceView>,
}

/// One presence channel as one connection sees it. Until the subscription's member list is
/// sent (`ready`), joins and leaves only update it and messages are held, so the client
/// sees `subscription_succeeded` first and then every change exactly once.
struct PresenceView {
    channel: String,
    ready: bool,
    held: Vec<Bytes>,
    held_bytes: usize,
    /// Clients that left before the member list was read.
    gone: HashSet<Arc<str>>,
    /// Each user's `user_info` and connections, by user id.
    users: BTreeMap<Arc<str>, PresenceUser>,
}

/// A user in a presence channel: `user_info` (JSON), and the connections it shows in by.
type PresenceUser = (Option<Bytes>, HashSet<Arc<str>>);

impl PresenceView {
    fn new(channel: String) -> Self {
        PresenceView {
            channel,
            ready: false,
            held: Vec::new(),
            held_bytes: 0,
            gone: HashSet::new(),
            users: BTreeMap::new(),
        }
    }

    /// Records a join; returns whether the user is new to the channel. A member without a
    /// user (an anonymous native subscriber) has no Pusher identity and is left out.
    fn join(&mut self, member: &PresenceMember) -> bool {
        if member.user.is_empty() || self.gone.contains(&member.client) {
            return false;
        }
        let entry = self
            .users
            .entry(member.user.clone())
            .or_insert_with(|| (member.info.clone(), HashSet::new()));
        let was_empty = entry.1.is_empty();
        entry.1.insert(member.client.clone());
        was_empty
    }

    /// Records a leave; returns whether the user's last connection left.
    fn leave(&mut self, member: &PresenceMember) -> bool {
        if !self.ready {
            self.gone.insert(member.client.clone());
        }
        let Some(entry) = self.users.get_mut(&member.user) else {
            return false;
        };
        if !entry.1.remove(&member.client) || !entry.1.is_empty() {
            return false;
        }
        self.users.remove(&member.user);
        true
    }
}

impl PusherCodec {
    pub(crate) fn new(socket_id: Arc<str>, framing: Framing) -> Self {
        PusherCodec {
            socket_id,
            framing,
            presence: HashMap::new(),
        }
    }

    /// A Pusher frame (JSON) as this connection sends it.
    fn wire(&self, json: &[u8]) -> Bytes {
        match self.framing {
            Framing::WebSocket => ws::encode_text(json),
            Framing::Sockjs => sockjs_line(json),
        }
    }

    /// A message's shared WebSocket frame as this connection sends it.
    fn shared_message(&self, ws_frame: &Bytes) -> Bytes {
        match self.framing {
            Framing::WebSocket => ws_frame.clone(),
            Framing::Sockjs => sockjs_line(&ws_payload(ws_frame)),
        }
    }

    fn message(&mut self, frame: &Outgoing, channel: &str, out: &mut Out<'_, Control>) {
        let Some(message) = frame.pusher() else {
            return;
        };
        if message.exclude_socket.as_deref() == Some(&*self.socket_id) {
            return;
        }
        let bytes = self.shared_message(&message.ws_frame);
        if let Some(view) = self.presence.get_mut(channel)
            && !view.ready
            && view.held_bytes < MAX_HELD_BYTES
        {
            view.held_bytes += bytes.len();
            view.held.push(bytes);
            return;
        }
        out.push(bytes);
    }

    fn presence_change(&mut self, change: &PresenceChange, out: &mut Out<'_, Control>) {
        let Some(view) = self.presence.get_mut(&*change.channel) else {
            return;
        };
        let member = &change.member;
        let frame = match change.event {
            PresenceEvent::Join if view.join(member) && view.ready => {
                proto::member_added(&view.channel, &member.user, member.info.as_ref())
            }
            PresenceEvent::Leave if view.leave(member) && view.ready => {
                proto::member_removed(&view.channel, &member.user)
            }
            _ => return,
        };
        out.push(self.wire(&frame));
    }
}

impl DoorCodec for PusherCodec {
    type Control = Box<PresenceControl>;

    fn shared(&mut self, frame: &Outgoing, out: &mut Out<'_, Self::Control>) {
        match frame.kind() {
            FrameKind::Message(meta) => self.message(frame, &meta.channel, out),
            FrameKind::Presence(change) => self.presence_change(change, out),
            // Replies and the rest of the native protocol have no Pusher counterpart.
            FrameKind::Other => {}
        }
    }

    fn own(&mut self, json: Bytes, out: &mut Out<'_, Self::Control>) {
        out.push(self.wire(&json));
    }

    fn control(&mut self, control: Box<PresenceControl>, out: &mut Out<'_, Self::Control>) {
        match *control {
            PresenceControl::Watch { hub, channel } => {
                self.presence.insert(hub, PresenceView::new(channel));
            }
            PresenceControl::Forget { hub } => {
                self.presence.remove(&hub);
            }
            PresenceControl::Ready { hub, members } => {
                let Some(view) = self.presence.get_mut(&hub) else {
                    return;
                };
                for member in &members {
                    view.join(member);
                }
                view.ready = true;
                view.gone.clear();
                view.held_bytes = 0;
                let held = std::mem::take(&mut view.held);
                let users: Vec<(&str, Option<&Bytes>)> = view
                    .users
                    .iter()
                    .map(|(id, (info, _))| (&**id, info.as_ref()))
                    .collect();
                let frame = proto::presence_subscription_succeeded(&view.channel, &users);
                out.push(self.wire(&frame));
                held.into_iter().for_each(|bytes| out.push(bytes));
            }
        }
    }

    fn heartbeat(&mut self) -> Option<Heartbeat> {
        Some(match self.framing {
            Framing::WebSocket => Heartbeat {
                bytes: Bytes::from_static(WS_PING),
                expects_answer: true,
            },
            Framing::Sockjs => Heartbeat {
                bytes: Bytes::from_static(b"h\n"),
                expects_answer: false,
            },
        })
    }

    fn goodbye(&mut self, reason: &Disconnect, out: &mut Out<'_, Self::Control>) {
        let code = close_code(reason);
        let error = proto::error_frame(Some(code), reason.message);
        out.push(self.wire(&error));
        match self.framing {
            Framing::WebSocket => out.push(ws::encode_close(code, reason.message)),
            Framing::Sockjs => out.push(sockjs_close(code, reason.message)),
        }
    }
}

/// The payload of an unmasked server WebSocket frame.
fn ws_payload(frame: &Bytes) -> Bytes {
    let header = match frame.get(1).map(|b| b & 0x7f) {
        Some(126) => 4,
        Some(127) => 10,
        _ => 2,
    };
    frame.slice(header.min(frame.len())..)
}

/// `a["<json>"]\n`: one SockJS message line carrying a frame's JSON text.
fn sockjs_line(json: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(json.len() + json.len() / 8 + 8);
    out.put_slice(b"a[");
    put_ascii_json_string(&mut out, &String::from_utf8_lossy(json));
    out.put_slice(b"]\n");
    out.freeze()
}

/// `c[code,"reason"]\n`: SockJS's close.
fn sockjs_close(code: u16, reason: &str) -> Bytes {
    let line = serde_json::to_string(&(code, reason)).unwrap_or_default();
    Bytes::from(format!("c{line}\n"))
}

/// Writes `text` as a JSON string in ASCII only (`\uXXXX` beyond it), so the bytes sent are
/// the characters pusher-js counts in `responseText` (see `http::STREAM_LIMIT`).
fn put_ascii_json_string(out: &mut BytesMut, text: &str) {
    out.put_u8(b'"');
    for c in text.chars() {
        match c {
            '"' => out.put_slice(b"\\\""),
            '\\' => out.put_slice(b"\\\\"),
            '\n' => out.put_slice(b"\\n"),
            '\r' => out.put_slice(b"\\r"),
            '\t' => out.put_slice(b"\\t"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.put_slice(format!("\\u{unit:04x}").as_bytes());
                }
            }
            c => out.put_u8(c as u8),
        }
    }
    out.put_u8(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::door::codec::testing::{pieces, written};
    use switchboard_proto::Publication;

    fn member(client: &str, user: &str) -> PresenceMember {
        PresenceMember {
            client: client.into(),
            user: user.into(),
            info: Some(Bytes::from_static(b"{\"n\":1}")),
        }
    }

    fn sockjs() -> PusherCodec {
        PusherCodec::new("1.2".into(), Framing::Sockjs)
    }

    /// The frames of SockJS lines, parsed.
    fn events(text: &str) -> Vec<serde_json::Value> {
        text.lines()
            .filter_map(|line| line.strip_prefix("a["))
            .map(|rest| {
                let inner: String = serde_json::from_str(rest.trim_end_matches(']')).unwrap();
                serde_json::from_str(&inner).unwrap()
            })
            .collect()
    }

    #[test]
    fn messages_are_held_until_the_members_are_out_then_changes_flow() {
        let mut codec = sockjs();
        let watch = PresenceControl::Watch {
            hub: "presence-a".into(),
            channel: "presence-a".into(),
        };
        assert_eq!(written(|out| codec.control(Box::new(watch), out)), "");
        let publication = Publication {
            offset: 1,
            epoch: "e".into(),
            data: Bytes::from_static(b"\"hi\""),
        };
        let message = Outgoing::message("presence-a", &publication);
        assert_eq!(written(|out| codec.shared(&message, out)), "", "held");
        let early = Outgoing::presence(PresenceEvent::Join, "presence-a", &member("c2", "bob"));
        assert_eq!(written(|out| codec.shared(&early, out)), "", "not ready");
        let ready = PresenceControl::Ready {
            hub: "presence-a".into(),
            members: vec![member("c1", "ann"), member("c2", "bob")],
        };
        let sent = events(&written(|out| codec.control(Box::new(ready), out)));
        assert_eq!(sent[0]["event"], "pusher_internal:subscription_succeeded");
        let data: serde_json::Value =
            serde_json::from_str(sent[0]["data"].as_str().unwrap()).unwrap();
        assert_eq!(data["presence"]["count"], 2);
        assert_eq!(data["presence"]["ids"], serde_json::json!(["ann", "bob"]));
        assert_eq!(data["presence"]["hash"]["ann"], serde_json::json!({"n": 1}));
        assert_eq!(sent[1]["event"], "message", "then what was held");

        let again = Outgoing::presence(PresenceEvent::Join, "presence-a", &member("c3", "bob"));
        assert_eq!(written(|out| codec.shared(&again, out)), "", "bob is there");
        let new = Outgoing::presence(PresenceEvent::Join, "presence-a", &member("c4", "cid"));
        let sent = events(&written(|out| codec.shared(&new, out)));
        assert_eq!(sent[0]["event"], "pusher_internal:member_added");
        for client in ["c2", "c3"] {
            let leave =
                Outgoing::presence(PresenceEvent::Leave, "presence-a", &member(client, "bob"));
            let sent = events(&written(|out| codec.shared(&leave, out)));
            assert_eq!(
                sent.len(),
                usize::from(client == "c3"),
                "removed with its last connection"
            );
        }
    }

    #[test]
    fn own_client_events_are_not_echoed_and_native_frames_are_hidden() {
        let mut codec = PusherCodec::new("1.2".into(), Framing::WebSocket);
        let data = serde_json::value::RawValue::from_string("\"x\"".into()).unwrap();
        let envelope = proto::envelope("client-e", &data, None, Some("1.2"));
        let publication = Publication {
            offset: 1,
            epoch: "e".into(),
            data: envelope,
        };
        let mine = Outgoing::message("private-a", &publication);
        assert_eq!(written(|out| codec.shared(&mine, out)), "");
        let mut other = PusherCodec::new("9.9".into(), Framing::WebSocket);
        assert!(!pieces(|out| other.shared(&mine, out)).is_empty());
        let reply = Outgoing::new(Bytes::from_static(b"{\"type\":\"reply\"}"));
        assert_eq!(written(|out| codec.shared(&reply, out)), "");
    }

    #[test]
    fn sockjs_lines_are_ascii_json_strings() {
        let text = "{\"a\":\"é \\\" \u{1F600}\n\t\u{1}\"}";
        let line = sockjs_line(text.as_bytes());
        assert!(line.is_ascii(), "{line:?}");
        let inner = line
            .strip_prefix(b"a[")
            .unwrap()
            .strip_suffix(b"]\n")
            .unwrap();
        let back: String = serde_json::from_slice(inner).unwrap();
        assert_eq!(back, text);
        assert_eq!(&sockjs_close(4200, "bye")[..], b"c[4200,\"bye\"]\n");
    }
}
