//! The native protocol's WebSocket wire form: each frame one text message. A hub frame's
//! WebSocket bytes (header included) are encoded once and shared by every subscriber.

use bytes::Bytes;
use switchboard_proto::{Disconnect, Outgoing, encode, ws};

use crate::door::{DoorCodec, Heartbeat, NoControl, Out};

/// An empty WebSocket ping: the server's keep-alive, which a live client answers.
const PING: &[u8] = &[0x89, 0x00];

pub(crate) struct WsCodec;

impl DoorCodec for WsCodec {
    type Control = NoControl;

    fn shared(&mut self, frame: &Outgoing, out: &mut Out<'_, Self::Control>) {
        out.push(frame.ws_frame());
    }

    fn own(&mut self, json: Bytes, out: &mut Out<'_, Self::Control>) {
        out.push(ws::encode_text(&json));
    }

    fn heartbeat(&mut self) -> Option<Heartbeat> {
        Some(Heartbeat {
            bytes: Bytes::from_static(PING),
            expects_answer: true,
        })
    }

    fn goodbye(&mut self, reason: &Disconnect, out: &mut Out<'_, Self::Control>) {
        out.push(ws::encode_text(&encode::disconnect(reason)));
        out.push(ws::encode_close(reason.ws_close, reason.message));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::door::codec::testing::pieces;
    use std::sync::Arc;

    #[test]
    fn shared_frames_are_not_copied_and_the_ping_is_a_ping() {
        let frame = Arc::new(Outgoing::new(Bytes::from_static(b"{}")));
        let first = pieces(|out| WsCodec.shared(&frame, out));
        let second = pieces(|out| WsCodec.shared(&frame, out));
        assert_eq!(first[0].as_ptr(), second[0].as_ptr());
        assert_eq!(ws::encode_ping(b""), Bytes::from_static(PING));
    }
}
