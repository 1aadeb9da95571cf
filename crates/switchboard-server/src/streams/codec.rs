//! Wire bytes of the streaming doors. SSE: one event per frame with `data:` only, and the
//! stream's cursor as the event `id:` of every message. NDJSON: one frame per line. A message
//! also carries `cursor` in its JSON: the shared JSON is sent as is, minus its closing brace,
//! between two small per-client parts, so fan-out still copies no payload.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use switchboard_core::StreamPosition;
use switchboard_proto::{Disconnect, Outgoing, encode};

use super::cursor::CursorKey;
use crate::ConnectionKill;
use crate::outbox::{DoorCodec, Wire};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// `text/event-stream`.
    Sse,
    /// `application/x-ndjson`.
    Ndjson,
}

/// The positions behind a stream's cursor: the channels named in its URL, in URL order.
#[derive(Default)]
pub struct CursorState {
    pub channels: Vec<Arc<str>>,
    pub positions: Vec<(u64, Arc<str>)>,
}

impl CursorState {
    pub fn cursor(&self, key: &CursorKey) -> String {
        let positions: Vec<(u64, &str)> = self.positions.iter().map(|(o, e)| (*o, &**e)).collect();
        key.encode(&self.channels, &positions)
    }

    fn index(&self, channel: &str) -> Option<usize> {
        self.channels.iter().position(|c| &**c == channel)
    }
}

pub struct StreamCodec {
    pub kind: StreamKind,
    pub key: Arc<CursorKey>,
    /// Drops the HTTP connection of a stream whose close did not complete in time.
    pub kill: Option<ConnectionKill>,
    /// Set by the body when the response is over (the connection may serve another request).
    pub finished: Arc<AtomicBool>,
}

/// How long a closing stream may take to hand over its last frames before its connection is
/// dropped (a client that reads nothing at all: hyper then stops polling the body, so only a
/// timer can end it).
const CLOSE_GRACE: Duration = Duration::from_secs(5);

impl StreamCodec {
    pub fn new(kind: StreamKind, key: Arc<CursorKey>, kill: Option<ConnectionKill>) -> Self {
        StreamCodec {
            kind,
            key,
            kill,
            finished: Arc::default(),
        }
    }

    /// A frame without a cursor.
    pub fn plain(&self, json: Bytes) -> Wire {
        match self.kind {
            StreamKind::Sse => Wire::Three(
                Bytes::from_static(b"data: "),
                json,
                Bytes::from_static(b"\n\n"),
            ),
            StreamKind::Ndjson => Wire::Three(Bytes::new(), json, Bytes::from_static(b"\n")),
        }
    }

    /// What keeps an idle stream open through proxies.
    pub fn heartbeat(&self) -> Bytes {
        match self.kind {
            StreamKind::Sse => Bytes::from_static(b": heartbeat\n\n"),
            StreamKind::Ndjson => Bytes::from_static(b"\n"),
        }
    }
}

impl DoorCodec for StreamCodec {
    type State = CursorState;

    fn frame(&self, state: &mut CursorState, frame: &Outgoing) -> Wire {
        let json = frame.json();
        let Some(meta) = frame.message_meta() else {
            return self.plain(json.clone());
        };
        // Messages of channels outside the URL (subscribed through the session) carry no
        // cursor: the cursor stands for the URL's channels only.
        let Some(i) = state.index(&meta.channel) else {
            return self.plain(json.clone());
        };
        state.positions[i] = (meta.offset, meta.epoch.clone());
        let cursor = state.cursor(&self.key);
        // `{"type":"message",...,"data":X}` becomes `{... ,"data":X,"cursor":"C"}`.
        let body = json.slice(..json.len() - 1);
        let (head, tail) = match self.kind {
            StreamKind::Sse => (
                format!("id: {cursor}\ndata: "),
                format!(",\"cursor\":\"{cursor}\"}}\n\n"),
            ),
            StreamKind::Ndjson => (String::new(), format!(",\"cursor\":\"{cursor}\"}}\n")),
        };
        // One allocation for both per-client parts.
        let mut parts = Bytes::from(head + &tail);
        let tail = parts.split_off(parts.len() - tail.len());
        Wire::Three(parts, body, tail)
    }

    fn subscribed(&self, state: &mut CursorState, channel: &str, position: &StreamPosition) {
        // Where a channel's stream was reset (new epoch), positions continue from the new one;
        // otherwise the position the stream resumed from stays until messages move it.
        if let Some(i) = state.index(channel)
            && *state.positions[i].1 != *position.epoch
        {
            state.positions[i] = (position.offset, position.epoch.clone());
        }
    }

    fn closing(&self) {
        let (Some(kill), finished) = (self.kill.clone(), self.finished.clone()) else {
            return;
        };
        tokio::spawn(async move {
            tokio::time::sleep(CLOSE_GRACE).await;
            if !finished.load(Ordering::Acquire) {
                kill.kill();
            }
        });
    }

    fn goodbye(&self, reason: &Disconnect) -> Vec<Bytes> {
        match self.plain(encode::disconnect(reason)) {
            Wire::Nothing => vec![],
            Wire::One(b) => vec![b],
            Wire::Three(a, b, c) => vec![a, b, c],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> CursorState {
        CursorState {
            channels: vec!["a".into(), "b".into()],
            positions: vec![(0, "e1".into()), (7, "e2".into())],
        }
    }

    fn concat(wire: Wire) -> String {
        match wire {
            Wire::Nothing => String::new(),
            Wire::One(b) => String::from_utf8(b.to_vec()).unwrap(),
            Wire::Three(a, b, c) => [a, b, c]
                .iter()
                .map(|p| String::from_utf8(p.to_vec()).unwrap())
                .collect(),
        }
    }

    #[test]
    fn sse_message_carries_the_cursor_as_id_and_field() {
        let key = Arc::new(CursorKey::new(b"k"));
        let codec = StreamCodec::new(StreamKind::Sse, key.clone(), None);
        let mut state = state();
        let publication = switchboard_core::Publication {
            offset: 1,
            epoch: "e1".into(),
            data: Bytes::from_static(b"{\"x\":1}"),
        };
        let frame = Outgoing::message("a", &publication);
        let text = concat(codec.frame(&mut state, &frame));
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
    }

    #[test]
    fn ndjson_lines_and_plain_frames() {
        let codec = StreamCodec::new(StreamKind::Ndjson, Arc::new(CursorKey::new(b"k")), None);
        let text = concat(codec.frame(&mut state(), &Outgoing::new(Bytes::from_static(b"{}"))));
        assert_eq!(text, "{}\n");
    }

    #[test]
    fn a_new_epoch_moves_the_position() {
        let codec = StreamCodec::new(StreamKind::Sse, Arc::new(CursorKey::new(b"k")), None);
        let mut state = state();
        let same = StreamPosition {
            offset: 99,
            epoch: "e1".into(),
        };
        codec.subscribed(&mut state, "a", &same);
        assert_eq!(state.positions[0].0, 0, "same epoch: resume position kept");
        let reset = StreamPosition {
            offset: 3,
            epoch: "new".into(),
        };
        codec.subscribed(&mut state, "a", &reset);
        assert_eq!(state.positions[0], (3, "new".into()));
    }
}
