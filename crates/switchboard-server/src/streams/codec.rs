//! Wire bytes of the one-way doors. SSE: one event per frame with `data:` only, and the
//! stream's cursor as the event `id:` of every message. NDJSON: one frame per line. Long
//! polling: the elements of the answer's `messages` array. A message also carries `cursor` in
//! its JSON: the shared JSON is sent as is, minus its closing brace, between two small
//! per-client parts made when the connection drains, so fan-out copies no payload and takes
//! no lock for them.

use std::sync::Arc;

use bytes::{BufMut, Bytes};
use switchboard_core::StreamPosition;
use switchboard_proto::{Disconnect, Outgoing, encode};

use super::cursor::{ChannelsTag, CursorKey};
use crate::door::{DoorCodec, Heartbeat, NoControl, Out};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StreamKind {
    /// `text/event-stream`.
    Sse,
    /// `application/x-ndjson`.
    Ndjson,
    /// The `messages` of a long poll's answer, comma-separated.
    Poll,
}

/// The positions behind a stream's cursor: the channels named in its URL, in URL order.
pub(crate) struct Cursor {
    key: Arc<CursorKey>,
    channels: Vec<Arc<str>>,
    positions: Vec<(u64, Arc<str>)>,
    /// The channel list's part of every tag, made once.
    tag: ChannelsTag,
}

impl Cursor {
    pub(crate) fn new(
        key: Arc<CursorKey>,
        channels: &[String],
        positions: Vec<(u64, Arc<str>)>,
    ) -> Self {
        let tag = key.channels_tag(channels);
        Cursor {
            key,
            channels: channels.iter().map(|c| Arc::from(c.as_str())).collect(),
            positions,
            tag,
        }
    }

    /// A cursor of no channels (a session's frames carry none).
    pub(crate) fn none(key: Arc<CursorKey>) -> Self {
        Cursor::new(key, &[], Vec::new())
    }

    /// The cursor as text.
    pub(crate) fn text(&self) -> String {
        let mut out = bytes::BytesMut::new();
        self.write(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    fn write(&self, out: &mut bytes::BytesMut) {
        let positions = self.positions.iter().map(|(o, e)| (*o, &**e));
        self.key.write(&self.tag, positions, out);
    }

    fn index(&self, channel: &str) -> Option<usize> {
        self.channels.iter().position(|c| &**c == channel)
    }
}

pub(crate) struct StreamCodec {
    kind: StreamKind,
    cursor: Cursor,
    /// Long polling: an element was written (the next needs a comma).
    started: bool,
}

impl StreamCodec {
    pub(crate) fn new(kind: StreamKind, cursor: Cursor) -> Self {
        StreamCodec {
            kind,
            cursor,
            started: false,
        }
    }

    pub(crate) fn cursor(&self) -> &Cursor {
        &self.cursor
    }

    /// Long polling: the next frame starts a new answer (no comma before it).
    pub(crate) fn begin_answer(&mut self) {
        self.started = false;
    }

    /// A frame without a cursor.
    fn plain(&mut self, json: Bytes, out: &mut Out<'_, NoControl>) {
        match self.kind {
            StreamKind::Sse => {
                out.push(Bytes::from_static(b"data: "));
                out.push(json);
                out.push(Bytes::from_static(b"\n\n"));
            }
            StreamKind::Ndjson => {
                out.push(json);
                out.push(Bytes::from_static(b"\n"));
            }
            StreamKind::Poll => {
                self.separate(out);
                out.push(json);
            }
        }
    }

    fn separate(&mut self, out: &mut Out<'_, NoControl>) {
        if std::mem::replace(&mut self.started, true) {
            out.push(Bytes::from_static(b","));
        }
    }
}

impl DoorCodec for StreamCodec {
    type Control = NoControl;

    fn shared(&mut self, frame: &Outgoing, out: &mut Out<'_, Self::Control>) {
        let json = frame.json();
        // Messages of channels outside the URL (subscribed through the session) carry no
        // cursor: the cursor stands for the URL's channels only.
        let Some((meta, i)) = frame
            .message_meta()
            .and_then(|meta| Some((meta, self.cursor.index(&meta.channel)?)))
        else {
            return self.plain(json.clone(), out);
        };
        self.cursor.positions[i] = (meta.offset, meta.epoch.clone());
        let cursor = out.make(|b| self.cursor.write(b));
        // `{"type":"message",...,"data":X}` becomes `{... ,"data":X,"cursor":"C"}`.
        let body = json.slice(..json.len().saturating_sub(1));
        match self.kind {
            StreamKind::Sse => out.write(|b| {
                b.put_slice(b"id: ");
                b.put_slice(&cursor);
                b.put_slice(b"\ndata: ");
            }),
            StreamKind::Ndjson => {}
            StreamKind::Poll => self.separate(out),
        }
        out.push(body);
        let end: &[u8] = match self.kind {
            StreamKind::Sse => b"\"}\n\n",
            StreamKind::Ndjson => b"\"}\n",
            StreamKind::Poll => b"\"}",
        };
        out.write(|b| {
            b.put_slice(b",\"cursor\":\"");
            b.put_slice(&cursor);
            b.put_slice(end);
        });
    }

    fn own(&mut self, json: Bytes, out: &mut Out<'_, Self::Control>) {
        self.plain(json, out);
    }

    fn subscribed(&mut self, channel: &str, position: &StreamPosition) {
        // Where a channel's stream was reset (new epoch), positions continue from the new one;
        // otherwise the position the stream resumed from stays until messages move it. Offset
        // 0 has seen nothing and continues any epoch: an idle cursor stays the same.
        if let Some(i) = self.cursor.index(channel)
            && self.cursor.positions[i].0 != 0
            && *self.cursor.positions[i].1 != *position.epoch
        {
            self.cursor.positions[i] = (position.offset, position.epoch.clone());
        }
    }

    fn heartbeat(&mut self) -> Option<Heartbeat> {
        let bytes: &'static [u8] = match self.kind {
            StreamKind::Sse => b": heartbeat\n\n",
            StreamKind::Ndjson => b"\n",
            StreamKind::Poll => return None,
        };
        Some(Heartbeat {
            bytes: Bytes::from_static(bytes),
            expects_answer: false,
        })
    }

    fn goodbye(&mut self, reason: &Disconnect, out: &mut Out<'_, Self::Control>) {
        self.plain(encode::disconnect(reason), out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::door::codec::testing::{pieces, written};
    use switchboard_proto::Publication;

    fn codec(kind: StreamKind, key: &Arc<CursorKey>) -> StreamCodec {
        let channels = ["a".to_owned(), "b".to_owned()];
        let cursor = Cursor::new(
            key.clone(),
            &channels,
            vec![(0, "e1".into()), (7, "e2".into())],
        );
        StreamCodec::new(kind, cursor)
    }

    fn message(channel: &str, offset: u64) -> Outgoing {
        let publication = Publication {
            offset,
            epoch: "e1".into(),
            data: Bytes::from_static(b"{\"x\":1}"),
        };
        Outgoing::message(channel, &publication)
    }

    #[test]
    fn sse_message_carries_the_cursor_as_id_and_field() {
        let key = Arc::new(CursorKey::new(b"k"));
        let mut codec = codec(StreamKind::Sse, &key);
        let frame = message("a", 1);
        let text = written(|out| codec.shared(&frame, out));
        let cursor = key.encode(&["a", "b"], &[(1, "e1"), (7, "e2")]);
        assert_eq!(
            text,
            format!(
                "id: {cursor}\ndata: {{\"type\":\"message\",\"channel\":\"a\",\"offset\":1,\
                 \"epoch\":\"e1\",\"data\":{{\"x\":1}},\"cursor\":\"{cursor}\"}}\n\n"
            )
        );
        let frame: serde_json::Value =
            serde_json::from_str(text.split("data: ").nth(1).unwrap().trim()).unwrap();
        assert_eq!(frame["cursor"], cursor.as_str());
        assert_eq!(codec.cursor().text(), cursor);
    }

    #[test]
    fn the_shared_payload_is_not_copied() {
        let key = Arc::new(CursorKey::new(b"k"));
        let frame = message("a", 1);
        let parts = pieces(|out| codec(StreamKind::Ndjson, &key).shared(&frame, out));
        assert!(
            parts.iter().any(|p| p.as_ptr() == frame.json().as_ptr()),
            "the message's JSON is sent from the shared buffer"
        );
    }

    #[test]
    fn ndjson_lines_poll_elements_and_plain_frames() {
        let key = Arc::new(CursorKey::new(b"k"));
        let mut ndjson = codec(StreamKind::Ndjson, &key);
        let text = written(|out| ndjson.own(Bytes::from_static(b"{}"), out));
        assert_eq!(text, "{}\n");
        let mut poll = codec(StreamKind::Poll, &key);
        let text = written(|out| {
            poll.own(Bytes::from_static(b"{}"), out);
            poll.shared(&message("b", 8), out);
            poll.shared(&message("other", 1), out);
        });
        let array: serde_json::Value = serde_json::from_str(&format!("[{text}]")).unwrap();
        assert_eq!(array[0], serde_json::json!({}));
        assert_eq!(array[1]["offset"], 8);
        assert!(array[1]["cursor"].is_string());
        assert!(array[2].get("cursor").is_none(), "not a URL channel");
        assert!(poll.heartbeat().is_none());
    }

    #[test]
    fn a_new_epoch_moves_the_position() {
        let key = Arc::new(CursorKey::new(b"k"));
        let mut codec = codec(StreamKind::Sse, &key);
        let same = StreamPosition {
            offset: 99,
            epoch: "e1".into(),
        };
        codec.subscribed("a", &same);
        assert_eq!(
            codec.cursor.positions[0].0, 0,
            "same epoch: resume position kept"
        );
        let reset = StreamPosition {
            offset: 3,
            epoch: "new".into(),
        };
        codec.subscribed("a", &reset);
        assert_eq!(
            codec.cursor.positions[0],
            (0, "e1".into()),
            "offset 0 continues any epoch"
        );
        codec.subscribed("b", &reset);
        assert_eq!(codec.cursor.positions[1], (3, "new".into()));
    }
}
