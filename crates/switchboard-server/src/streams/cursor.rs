//! The cursor of the one-way doors (spec §4): the positions of every channel a stream names in
//! its URL, in URL order, as one opaque string. Compact (varint offsets), safe in a URL and an
//! HTTP header (base64url), and tagged with a MAC so a forged or altered cursor is refused.
//! The key is derived from configured secrets, so every node behind a load balancer accepts
//! the cursors of the others.
//!
//! Every message of a stream carries a new cursor, so making one must be cheap: the tag is
//! SipHash-2-4 (a keyed PRF built for short inputs, about a tenth of an HMAC-SHA256's cost)
//! over a digest of the channel list, made once per stream ([`ChannelsTag`]), and the
//! positions. Version 1 cursors (HMAC-SHA256), issued before, are still accepted.

use std::hash::Hasher;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::{BufMut, BytesMut};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use siphasher::sip128::{Hasher128, SipHasher24};

/// HMAC-SHA256 tags (read only).
const V1: u8 = 1;
/// SipHash-2-4 tags.
const VERSION: u8 = 2;
/// Bytes of tag kept: forging one takes 2^80 tries.
const TAG_LEN: usize = 10;

/// A channel's position in a cursor. An empty epoch means "not known yet" (the stream broke
/// before that channel's position was known): resuming starts it from its current position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CursorPosition {
    pub offset: u64,
    pub epoch: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CursorError {
    #[error("malformed cursor")]
    Malformed,
    #[error("cursor was not issued for these channels by this server")]
    BadTag,
}

/// The keys that sign cursors.
pub(crate) struct CursorKey {
    v1: [u8; 32],
    sip: [u8; 16],
}

/// What a stream's channel list contributes to each of its cursors' tags, computed once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct ChannelsTag([u8; 16]);

impl CursorKey {
    /// Derives the keys from a secret every node of a deployment shares.
    pub(crate) fn new(secret: &[u8]) -> Self {
        let derive = |label: &[u8]| -> [u8; 32] {
            let mut hasher = Sha256::new();
            hasher.update(label);
            hasher.update(secret);
            hasher.finalize().into()
        };
        let v2 = derive(b"switchboard cursor key v2\0");
        let mut sip = [0u8; 16];
        sip.copy_from_slice(&v2[..16]);
        CursorKey {
            v1: derive(b"switchboard cursor key v1\0"),
            sip,
        }
    }

    /// The tag of a stream's channel list: a cursor only resumes the channels it was made
    /// for.
    pub(crate) fn channels_tag(&self, channels: &[impl AsRef<str>]) -> ChannelsTag {
        let mut sip = SipHasher24::new_with_key(&self.sip);
        sip.write(b"channels");
        for channel in channels {
            let channel = channel.as_ref();
            sip.write(&(channel.len() as u32).to_be_bytes());
            sip.write(channel.as_bytes());
        }
        ChannelsTag(u128::from(sip.finish128()).to_le_bytes())
    }

    fn tag(&self, channels: &ChannelsTag, payload: &[u8]) -> [u8; TAG_LEN] {
        let mut sip = SipHasher24::new_with_key(&self.sip);
        sip.write(&channels.0);
        sip.write(payload);
        let full = u128::from(sip.finish128()).to_le_bytes();
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&full[..TAG_LEN]);
        tag
    }

    fn tag_v1(&self, payload: &[u8], channels: &[impl AsRef<str>]) -> [u8; TAG_LEN] {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.v1) else {
            return [0; TAG_LEN]; // HMAC takes keys of any size
        };
        mac.update(payload);
        // The channel names are signed too: a cursor only resumes the channels it was made for.
        for channel in channels {
            let channel = channel.as_ref();
            mac.update(&(channel.len() as u32).to_be_bytes());
            mac.update(channel.as_bytes());
        }
        let full = mac.finalize().into_bytes();
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&full[..TAG_LEN]);
        tag
    }

    /// Encodes the positions of `channels` (same order).
    #[cfg(test)]
    pub(crate) fn encode(&self, channels: &[impl AsRef<str>], positions: &[(u64, &str)]) -> String {
        debug_assert_eq!(channels.len(), positions.len());
        let mut out = BytesMut::new();
        self.write(
            &self.channels_tag(channels),
            positions.iter().copied(),
            &mut out,
        );
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Appends the cursor of `positions` (of the channels behind `channels`, same order) to
    /// `out`, with no allocation of its own where the positions are short.
    pub(crate) fn write<'a>(
        &self,
        channels: &ChannelsTag,
        positions: impl Iterator<Item = (u64, &'a str)>,
        out: &mut BytesMut,
    ) {
        let mut payload = Payload::default();
        payload.push(VERSION);
        for (offset, epoch) in positions {
            payload.varint(offset);
            let epoch = &epoch.as_bytes()[..epoch.len().min(255)];
            payload.push(epoch.len() as u8);
            payload.extend(epoch);
        }
        let tag = self.tag(channels, payload.bytes());
        payload.extend(&tag);
        let bytes = payload.bytes();
        let start = out.len();
        let len = bytes.len().div_ceil(3) * 4;
        out.put_bytes(0, len);
        let written = URL_SAFE_NO_PAD
            .encode_slice(bytes, &mut out[start..])
            .unwrap_or(0);
        out.truncate(start + written);
    }

    /// Decodes a cursor issued for exactly these `channels`.
    pub(crate) fn decode(
        &self,
        channels: &[impl AsRef<str>],
        cursor: &str,
    ) -> Result<Vec<CursorPosition>, CursorError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(cursor.trim())
            .map_err(|_| CursorError::Malformed)?;
        if bytes.len() < 1 + TAG_LEN || !matches!(bytes[0], V1 | VERSION) {
            return Err(CursorError::Malformed);
        }
        let (payload, tag) = bytes.split_at(bytes.len() - TAG_LEN);
        let expected = if bytes[0] == V1 {
            self.tag_v1(payload, channels)
        } else {
            self.tag(&self.channels_tag(channels), payload)
        };
        // Constant-time comparison, like every secret check.
        if !crate::auth::constant_time_eq(&expected, tag) {
            return Err(CursorError::BadTag);
        }
        read_positions(&payload[1..], channels.len())
    }
}

/// The positions of a cursor whose tag was checked (`payload` past its version byte):
/// `count` of them, each a varint offset and a length-prefixed epoch, nothing after.
fn read_positions(payload: &[u8], count: usize) -> Result<Vec<CursorPosition>, CursorError> {
    let mut rest = payload;
    let mut positions = Vec::with_capacity(count);
    for _ in 0..count {
        let offset = read_varint(&mut rest).ok_or(CursorError::Malformed)?;
        let (&len, tail) = rest.split_first().ok_or(CursorError::Malformed)?;
        if tail.len() < len as usize {
            return Err(CursorError::Malformed);
        }
        let (epoch, tail) = tail.split_at(len as usize);
        let epoch = String::from_utf8(epoch.to_vec()).map_err(|_| CursorError::Malformed)?;
        positions.push(CursorPosition { offset, epoch });
        rest = tail;
    }
    if !rest.is_empty() {
        return Err(CursorError::Malformed);
    }
    Ok(positions)
}

/// Fuzzing entry point (`fuzz/`): a cursor as a client sends it, and, since a fuzzer cannot
/// forge a tag, the positions behind the tag; positions read back must encode to a cursor
/// that decodes to them again.
#[doc(hidden)]
pub fn fuzz_cursor(data: &[u8]) {
    let Some((&count, rest)) = data.split_first() else {
        return;
    };
    let key = CursorKey::new(b"fuzz");
    let channels: Vec<String> = (0..count % 8).map(|i| format!("c{i}")).collect();
    if let Ok(text) = std::str::from_utf8(rest) {
        let _ = key.decode(&channels, text);
    }
    let Ok(positions) = read_positions(rest, channels.len()) else {
        return;
    };
    let mut cursor = BytesMut::new();
    let pairs = positions.iter().map(|p| (p.offset, p.epoch.as_str()));
    key.write(&key.channels_tag(&channels), pairs, &mut cursor);
    let cursor = std::str::from_utf8(&cursor).expect("a cursor is base64url");
    assert_eq!(key.decode(&channels, cursor), Ok(positions));
}

/// A cursor's payload: on the stack while it is short (nearly always), else on the heap.
struct Payload {
    stack: [u8; 128],
    len: usize,
    heap: Vec<u8>,
}

impl Default for Payload {
    fn default() -> Self {
        Payload {
            stack: [0; 128],
            len: 0,
            heap: Vec::new(),
        }
    }
}

impl Payload {
    fn push(&mut self, byte: u8) {
        self.extend(&[byte]);
    }

    fn extend(&mut self, bytes: &[u8]) {
        if self.heap.is_empty() && self.len + bytes.len() <= self.stack.len() {
            self.stack[self.len..self.len + bytes.len()].copy_from_slice(bytes);
            self.len += bytes.len();
            return;
        }
        if self.heap.is_empty() {
            self.heap.extend_from_slice(&self.stack[..self.len]);
        }
        self.heap.extend_from_slice(bytes);
    }

    fn varint(&mut self, mut n: u64) {
        while n >= 0x80 {
            self.push((n as u8) | 0x80);
            n >>= 7;
        }
        self.push(n as u8);
    }

    fn bytes(&self) -> &[u8] {
        if self.heap.is_empty() {
            &self.stack[..self.len]
        } else {
            &self.heap
        }
    }
}

fn read_varint(input: &mut &[u8]) -> Option<u64> {
    let mut n = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = input.split_first()?;
        *input = rest;
        n |= u64::from(byte & 0x7f).checked_shl(shift)?;
        if byte & 0x80 == 0 {
            return Some(n);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_is_compact_and_url_safe() {
        let key = CursorKey::new(b"secret");
        let channels = ["chat:a", "news"];
        let cursor = key.encode(&channels, &[(12345, "0a1b2c3d"), (0, "")]);
        assert!(cursor.len() < 48, "{cursor}");
        assert!(
            cursor
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        let positions = key.decode(&channels, &cursor).unwrap();
        assert_eq!(
            positions[0],
            CursorPosition {
                offset: 12345,
                epoch: "0a1b2c3d".into()
            }
        );
        assert_eq!(
            positions[1],
            CursorPosition {
                offset: 0,
                epoch: String::new()
            }
        );
        let max = key.encode(&["c"], &[(u64::MAX, "e")]);
        assert_eq!(key.decode(&["c"], &max).unwrap()[0].offset, u64::MAX);
    }

    #[test]
    fn long_positions_spill_to_the_heap_and_still_round_trip() {
        let key = CursorKey::new(b"secret");
        let channels: Vec<String> = (0..20).map(|i| format!("c{i}")).collect();
        let epoch = "e".repeat(40);
        let positions: Vec<(u64, &str)> = (0..20).map(|i| (i * 1000, epoch.as_str())).collect();
        let cursor = key.encode(&channels, &positions);
        let back = key.decode(&channels, &cursor).unwrap();
        assert_eq!(back[19].offset, 19_000);
        assert_eq!(back[19].epoch, epoch);
    }

    #[test]
    fn cursors_of_the_previous_version_are_still_accepted() {
        let key = CursorKey::new(b"secret");
        let mut payload = vec![V1];
        payload.extend_from_slice(&[5, 1, b'e']);
        let tag = key.tag_v1(&payload, &["a"]);
        payload.extend_from_slice(&tag);
        let v1 = URL_SAFE_NO_PAD.encode(payload);
        let positions = key.decode(&["a"], &v1).unwrap();
        assert_eq!((positions[0].offset, positions[0].epoch.as_str()), (5, "e"));
        assert_eq!(key.decode(&["b"], &v1), Err(CursorError::BadTag));
    }

    #[test]
    fn forged_altered_or_foreign_cursors_are_refused() {
        let key = CursorKey::new(b"secret");
        let cursor = key.encode(&["a"], &[(5, "e")]);
        // Another key (another deployment), other channels, altered bytes, garbage.
        assert_eq!(
            CursorKey::new(b"other").decode(&["a"], &cursor),
            Err(CursorError::BadTag)
        );
        assert_eq!(key.decode(&["b"], &cursor), Err(CursorError::BadTag));
        assert_eq!(key.decode(&["a", "b"], &cursor), Err(CursorError::BadTag));
        let mut bytes = URL_SAFE_NO_PAD.decode(&cursor).unwrap();
        bytes[1] ^= 1;
        let altered = URL_SAFE_NO_PAD.encode(bytes);
        assert_eq!(key.decode(&["a"], &altered), Err(CursorError::BadTag));
        for junk in ["", "!!!", "AAAA", "not-a-cursor"] {
            assert!(key.decode(&["a"], junk).is_err(), "{junk}");
        }
    }
}
