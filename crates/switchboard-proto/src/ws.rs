//! WebSocket framing for the server side: encoding of server frames (done once per frame and
//! shared) and a sans-I/O decoder of client frames. Header parsing and formatting come from
//! `tungstenite`; this module adds the message rules of RFC 6455 the server enforces and the
//! size limit, so a connection can own its socket and keep no buffer while idle.

use std::io::Cursor;

use bytes::Bytes;
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

fn encode(opcode: OpCode, payload: &[u8]) -> Bytes {
    let header = FrameHeader {
        opcode,
        ..FrameHeader::default()
    };
    let mut out = Vec::with_capacity(header.len(payload.len() as u64) + payload.len());
    header
        .format(payload.len() as u64, &mut out)
        .expect("writing to a Vec cannot fail");
    out.extend_from_slice(payload);
    Bytes::from(out)
}

/// A final, unmasked text frame carrying `payload`.
pub fn encode_text(payload: &[u8]) -> Bytes {
    encode(OpCode::Data(Data::Text), payload)
}

pub fn encode_ping(payload: &[u8]) -> Bytes {
    encode(OpCode::Control(Control::Ping), payload)
}

pub fn encode_pong(payload: &[u8]) -> Bytes {
    encode(OpCode::Control(Control::Pong), payload)
}

/// A close frame with a status code and a reason (truncated to fit a control frame).
pub fn encode_close(code: u16, reason: &str) -> Bytes {
    let mut payload = code.to_be_bytes().to_vec();
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    encode(OpCode::Control(Control::Close), &payload)
}

/// What the decoder found in the bytes it was fed.
#[derive(Debug, PartialEq, Eq)]
pub enum WsEvent {
    /// A complete data message (text or binary), unmasked and reassembled.
    Message {
        payload: Vec<u8>,
    },
    Ping(Vec<u8>),
    Pong,
    /// The client's close frame: its status code, if any (always one a client may send).
    Close(Option<u16>),
    /// A message longer than the limit was discarded without being buffered.
    TooLarge,
    /// The client broke the protocol; the connection must be closed with 1002.
    ProtocolError(&'static str),
    /// A text message or a close reason that is not UTF-8; the connection must be closed
    /// with 1007.
    InvalidUtf8(&'static str),
}

/// Close codes a client may send (RFC 6455 §7.4.1, and the IANA registry it points to):
/// 1004-1006 and 1015 are reserved for reports, never sent; 1016-2999 are unassigned.
pub fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Decodes client frames. It holds bytes only while a frame or a fragmented message is
/// incomplete, so an idle connection's decoder owns no heap memory.
#[derive(Debug, Default)]
pub struct Decoder {
    /// Bytes of a frame whose end has not arrived yet.
    partial: Vec<u8>,
    /// Fragments of a message whose final frame has not arrived yet.
    fragments: Vec<u8>,
    in_message: bool,
    /// The message being assembled is text (its UTF-8 is checked once it is complete).
    text: bool,
    /// The current message is over the limit: its remaining fragments are dropped.
    discarding: bool,
    /// Payload bytes of an oversized frame still to be skipped.
    skip: u64,
    closed: bool,
}

impl Decoder {
    /// Feeds bytes read from the socket; complete events are pushed onto `events`.
    /// `max_message` bounds a message's size (and so the memory the decoder may hold).
    pub fn feed(&mut self, mut input: &[u8], max_message: usize, events: &mut Vec<WsEvent>) {
        if self.closed {
            return;
        }
        if self.skip > 0 {
            let n = (self.skip.min(input.len() as u64)) as usize;
            self.skip -= n as u64;
            input = &input[n..];
        }
        if self.partial.is_empty() {
            let used = self.decode(input, max_message, events);
            if used < input.len() && !self.closed {
                self.partial.extend_from_slice(&input[used..]);
            }
        } else {
            self.partial.extend_from_slice(input);
            let buf = std::mem::take(&mut self.partial);
            let used = self.decode(&buf, max_message, events);
            if used < buf.len() && !self.closed {
                self.partial = buf;
                self.partial.drain(..used);
            }
        }
    }

    /// Decodes as many whole frames from `buf` as it holds; returns the bytes consumed.
    fn decode(&mut self, buf: &[u8], max_message: usize, events: &mut Vec<WsEvent>) -> usize {
        let mut pos = 0;
        while pos < buf.len() && !self.closed {
            if self.skip > 0 {
                let n = self.skip.min((buf.len() - pos) as u64) as usize;
                self.skip -= n as u64;
                pos += n;
                continue;
            }
            let mut cursor = Cursor::new(&buf[pos..]);
            let (header, len) = match FrameHeader::parse(&mut cursor) {
                Ok(Some(parsed)) => parsed,
                Ok(None) => break,
                Err(_) => return self.fail("malformed frame header", events),
            };
            let header_len = cursor.position() as usize;
            if let Err(why) = self.check(&header, len) {
                return self.fail(why, events);
            }
            let is_data = matches!(header.opcode, OpCode::Data(_));
            let held = if is_data { self.fragments.len() } else { 0 };
            // Saturating: `len` is up to 2^63 - 1 and must not wrap around the limit.
            if is_data
                && (self.discarding || (held as u64).saturating_add(len) > max_message as u64)
            {
                // Too large: skip the payload without buffering it.
                if !self.discarding {
                    events.push(WsEvent::TooLarge);
                }
                self.discarding = !header.is_final;
                self.in_message = !header.is_final;
                self.fragments = Vec::new();
                pos += header_len;
                self.skip = len;
                continue;
            }
            let total = header_len + len as usize;
            if buf.len() - pos < total {
                if buf.len() - pos > max_message + 14 {
                    return self.fail("frame larger than its header says", events);
                }
                break;
            }
            let mut payload = buf[pos + header_len..pos + total].to_vec();
            if let Some(mask) = header.mask {
                unmask(&mut payload, mask);
            }
            pos += total;
            self.on_frame(header, payload, events);
        }
        pos
    }

    fn check(&self, header: &FrameHeader, len: u64) -> Result<(), &'static str> {
        if header.rsv1 || header.rsv2 || header.rsv3 {
            return Err("reserved bits set without a negotiated extension");
        }
        if header.mask.is_none() {
            return Err("client frames must be masked");
        }
        if len > i64::MAX as u64 {
            // RFC 6455 §5.2: the most significant bit of a 64-bit length must be 0.
            return Err("payload length with its most significant bit set");
        }
        match header.opcode {
            OpCode::Control(Control::Reserved(_)) | OpCode::Data(Data::Reserved(_)) => {
                Err("reserved opcode")
            }
            OpCode::Control(_) if !header.is_final || len > 125 => {
                Err("control frames must be final and at most 125 bytes")
            }
            OpCode::Data(Data::Continue) if !self.in_message => {
                Err("continuation frame without a message to continue")
            }
            OpCode::Data(Data::Text | Data::Binary) if self.in_message => {
                Err("new message before the previous one was finished")
            }
            _ => Ok(()),
        }
    }

    fn on_frame(&mut self, header: FrameHeader, payload: Vec<u8>, events: &mut Vec<WsEvent>) {
        match header.opcode {
            OpCode::Data(data) => {
                if !self.in_message {
                    self.text = data == Data::Text;
                }
                let payload = if header.is_final && !self.in_message {
                    payload
                } else {
                    self.fragments.extend_from_slice(&payload);
                    self.in_message = !header.is_final;
                    if !header.is_final {
                        return;
                    }
                    std::mem::take(&mut self.fragments)
                };
                // Checked on the whole message, so a code point split across fragments is
                // fine (RFC 6455 §8.1).
                if self.text && std::str::from_utf8(&payload).is_err() {
                    self.fail_utf8("text message is not valid UTF-8", events);
                    return;
                }
                events.push(WsEvent::Message { payload });
            }
            OpCode::Control(Control::Ping) => events.push(WsEvent::Ping(payload)),
            OpCode::Control(Control::Pong) => events.push(WsEvent::Pong),
            OpCode::Control(Control::Close) => self.on_close(&payload, events),
            OpCode::Control(Control::Reserved(_)) => {}
        }
    }

    /// A close frame's payload is empty, or a status code then an optional UTF-8 reason
    /// (RFC 6455 §5.5.1).
    fn on_close(&mut self, payload: &[u8], events: &mut Vec<WsEvent>) {
        let (code, reason) = match payload {
            [] => (None, &[][..]),
            [_] => {
                self.fail("close payload of one byte", events);
                return;
            }
            [high, low, reason @ ..] => (Some(u16::from_be_bytes([*high, *low])), reason),
        };
        if code.is_some_and(|c| !valid_close_code(c)) {
            self.fail("close code a client may not send", events);
        } else if std::str::from_utf8(reason).is_err() {
            self.fail_utf8("close reason is not valid UTF-8", events);
        } else {
            self.closed = true;
            events.push(WsEvent::Close(code));
        }
    }

    fn fail(&mut self, why: &'static str, events: &mut Vec<WsEvent>) -> usize {
        self.stop(WsEvent::ProtocolError(why), events)
    }

    fn fail_utf8(&mut self, why: &'static str, events: &mut Vec<WsEvent>) {
        self.stop(WsEvent::InvalidUtf8(why), events);
    }

    /// Ends decoding for good: nothing after a fatal error is read.
    fn stop(&mut self, event: WsEvent, events: &mut Vec<WsEvent>) -> usize {
        self.closed = true;
        self.partial = Vec::new();
        self.fragments = Vec::new();
        events.push(event);
        0
    }
}

/// Fuzzing entry point (`fuzz/`): bytes from a client, fed in chunks of the size the first
/// byte gives. However the bytes are cut, the events are the same; no message is over the
/// limit; nothing follows a close or an error; the decoder holds at most one frame.
#[doc(hidden)]
pub fn fuzz_decoder(data: &[u8]) {
    const MAX: usize = 256;
    let Some((&chunk, input)) = data.split_first() else {
        return;
    };
    let mut whole = Vec::new();
    Decoder::default().feed(input, MAX, &mut whole);
    let mut decoder = Decoder::default();
    let mut events = Vec::new();
    for piece in input.chunks(usize::from(chunk % 64) + 1) {
        decoder.feed(piece, MAX, &mut events);
        assert!(decoder.partial.len() <= MAX.max(125) + 14);
        assert!(decoder.fragments.len() <= MAX);
    }
    assert_eq!(events, whole);
    for (i, event) in events.iter().enumerate() {
        match event {
            WsEvent::Message { payload } => assert!(payload.len() <= MAX),
            WsEvent::Close(_) | WsEvent::ProtocolError(_) | WsEvent::InvalidUtf8(_) => {
                assert_eq!(i, events.len() - 1, "an event after the end: {events:?}");
            }
            WsEvent::Ping(payload) => assert!(payload.len() <= 125),
            WsEvent::Pong | WsEvent::TooLarge => {}
        }
    }
}

fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    for (i, byte) in payload.iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame, as a browser would send it.
    fn client_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mask = [1, 2, 3, 4];
        let mut out = vec![opcode | if fin { 0x80 } else { 0 }];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n < 65536 => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        out
    }

    fn decode_all(d: &mut Decoder, bytes: &[u8], max: usize) -> Vec<WsEvent> {
        let mut events = Vec::new();
        d.feed(bytes, max, &mut events);
        events
    }

    #[test]
    fn decodes_byte_by_byte_and_holds_nothing_after() {
        let frame = client_frame(1, true, b"{\"type\":\"ping\"}");
        let mut d = Decoder::default();
        let mut events = Vec::new();
        for b in &frame {
            d.feed(std::slice::from_ref(b), 1024, &mut events);
        }
        assert_eq!(
            events,
            vec![WsEvent::Message {
                payload: b"{\"type\":\"ping\"}".to_vec()
            }]
        );
        assert!(d.partial.is_empty() && d.fragments.capacity() == 0);
    }

    #[test]
    fn reassembles_fragments_around_a_ping() {
        let mut bytes = client_frame(1, false, b"ab");
        bytes.extend(client_frame(9, true, b"p"));
        bytes.extend(client_frame(0, true, b"cd"));
        let events = decode_all(&mut Decoder::default(), &bytes, 1024);
        assert_eq!(
            events,
            vec![
                WsEvent::Ping(b"p".to_vec()),
                WsEvent::Message {
                    payload: b"abcd".to_vec()
                }
            ]
        );
    }

    #[test]
    fn oversized_message_is_skipped_and_the_next_one_decoded() {
        let mut bytes = client_frame(1, true, &[b'x'; 3000]);
        bytes.extend(client_frame(1, true, b"ok"));
        let mut d = Decoder::default();
        let mut events = Vec::new();
        for chunk in bytes.chunks(700) {
            d.feed(chunk, 1000, &mut events);
        }
        assert_eq!(
            events,
            vec![
                WsEvent::TooLarge,
                WsEvent::Message {
                    payload: b"ok".to_vec()
                }
            ]
        );
        assert!(d.partial.capacity() < 1000 + 14 + 700);
    }

    #[test]
    fn oversized_fragmented_message_is_dropped_whole() {
        let mut bytes = client_frame(1, false, &[b'x'; 600]);
        bytes.extend(client_frame(0, false, &[b'x'; 600]));
        bytes.extend(client_frame(0, true, b"tail"));
        bytes.extend(client_frame(1, true, b"next"));
        let events = decode_all(&mut Decoder::default(), &bytes, 1000);
        assert_eq!(
            events,
            vec![
                WsEvent::TooLarge,
                WsEvent::Message {
                    payload: b"next".to_vec()
                }
            ]
        );
    }

    #[test]
    fn protocol_violations_are_reported() {
        let mut unmasked = client_frame(1, true, b"hi");
        unmasked[1] &= 0x7f;
        unmasked.truncate(2);
        unmasked.extend_from_slice(b"hi");
        for bytes in [
            unmasked,
            client_frame(0, true, b"x"),
            client_frame(9, false, b""),
            client_frame(3, true, b""),
            client_frame(1 | 0x40, true, b""),
        ] {
            let events = decode_all(&mut Decoder::default(), &bytes, 100);
            assert!(
                matches!(events.as_slice(), [WsEvent::ProtocolError(_)]),
                "{events:?}"
            );
        }
    }

    #[test]
    fn close_carries_the_code() {
        let events = decode_all(
            &mut Decoder::default(),
            &client_frame(8, true, &[3, 232]),
            100,
        );
        assert_eq!(events, vec![WsEvent::Close(Some(1000))]);
    }

    /// A client frame header with a 64-bit payload length (the payload itself not sent).
    fn long_header(opcode_and_fin: u8, len: u64) -> Vec<u8> {
        let mut out = vec![opcode_and_fin, 0x80 | 127];
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&[0, 0, 0, 0]);
        out
    }

    /// Found by fuzzing: a continuation frame declaring a length near `u64::MAX` while part of
    /// a message was held overflowed the size check (a panic in debug builds, a wrapped
    /// length accepted in release).
    #[test]
    fn huge_continuation_length_does_not_overflow() {
        let mut bytes = client_frame(1, false, b"held");
        bytes.extend(long_header(0x80, u64::MAX - 1));
        let events = decode_all(&mut Decoder::default(), &bytes, 1000);
        assert!(matches!(events.as_slice(), [WsEvent::ProtocolError(_)]));

        let mut bytes = client_frame(1, false, b"held");
        bytes.extend(long_header(0x80, u64::MAX >> 1));
        let events = decode_all(&mut Decoder::default(), &bytes, 1000);
        assert_eq!(events, vec![WsEvent::TooLarge]);
    }

    #[test]
    fn length_with_the_top_bit_set_is_a_protocol_error() {
        let events = decode_all(&mut Decoder::default(), &long_header(0x81, 1 << 63), 1000);
        assert!(matches!(events.as_slice(), [WsEvent::ProtocolError(_)]));
    }

    #[test]
    fn text_must_be_utf8_even_across_fragments() {
        // "é" is C3 A9: split between two fragments it is still valid.
        let mut split = client_frame(1, false, b"caf\xc3");
        split.extend(client_frame(0, true, b"\xa9"));
        let events = decode_all(&mut Decoder::default(), &split, 100);
        assert_eq!(
            events,
            vec![WsEvent::Message {
                payload: "café".into()
            }]
        );
        let mut broken = client_frame(1, false, b"caf\xc3");
        broken.extend(client_frame(0, true, b"x"));
        for bytes in [client_frame(1, true, b"\xff"), broken] {
            let events = decode_all(&mut Decoder::default(), &bytes, 100);
            assert!(
                matches!(events.as_slice(), [WsEvent::InvalidUtf8(_)]),
                "{events:?}"
            );
        }
        // Binary messages are not text.
        let events = decode_all(
            &mut Decoder::default(),
            &client_frame(2, true, b"\xff"),
            100,
        );
        assert_eq!(
            events,
            vec![WsEvent::Message {
                payload: vec![0xff]
            }]
        );
    }

    #[test]
    fn close_payloads_are_checked() {
        let close = |payload: &[u8]| {
            decode_all(
                &mut Decoder::default(),
                &client_frame(8, true, payload),
                200,
            )
        };
        assert_eq!(close(b""), vec![WsEvent::Close(None)]);
        for code in [1000u16, 1001, 1003, 1007, 1011, 3000, 4999] {
            assert_eq!(close(&code.to_be_bytes()), vec![WsEvent::Close(Some(code))]);
        }
        for code in [
            0u16, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2999, 5000, 65535,
        ] {
            let events = close(&code.to_be_bytes());
            assert!(
                matches!(events.as_slice(), [WsEvent::ProtocolError(_)]),
                "{code}"
            );
        }
        assert!(matches!(
            close(&[3]).as_slice(),
            [WsEvent::ProtocolError(_)]
        ));
        assert!(matches!(
            close(&[3, 232, 0xff]).as_slice(),
            [WsEvent::InvalidUtf8(_)]
        ));
        assert_eq!(
            close(&[3, 232, b'o', b'k']),
            vec![WsEvent::Close(Some(1000))]
        );
    }

    #[test]
    fn server_frames_are_well_formed() {
        let big = vec![b'a'; 70_000];
        let frame = encode_text(&big);
        assert_eq!(&frame[..2], &[0x81, 127]);
        assert_eq!(frame.len(), 10 + big.len());
        assert_eq!(
            &encode_close(1001, "bye")[..],
            &[0x88, 5, 3, 233, b'b', b'y', b'e']
        );
    }
}
