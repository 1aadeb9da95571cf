//! The cursor of the one-way doors (spec §4): the positions of every channel a stream names in
//! its URL, in URL order, as one opaque string. Compact (varint offsets), safe in a URL and an
//! HTTP header (base64url), and tagged with an HMAC so a forged or altered cursor is refused.
//! The key is derived from configured secrets, so every node behind a load balancer accepts
//! the cursors of the others.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

const VERSION: u8 = 1;
/// Bytes of HMAC kept: forging one takes 2^80 tries.
const TAG_LEN: usize = 10;

/// A channel's position in a cursor. An empty epoch means "not known yet" (the stream broke
/// before that channel's position was known): resuming starts it from its current position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CursorPosition {
    pub offset: u64,
    pub epoch: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CursorError {
    #[error("malformed cursor")]
    Malformed,
    #[error("cursor was not issued for these channels by this server")]
    BadTag,
}

/// The key that signs cursors.
pub struct CursorKey([u8; 32]);

impl CursorKey {
    /// Derives the key from a secret every node of a deployment shares.
    pub fn new(secret: &[u8]) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(b"switchboard cursor key v1\0");
        hasher.update(secret);
        CursorKey(hasher.finalize().into())
    }

    fn tag(&self, payload: &[u8], channels: &[impl AsRef<str>]) -> [u8; TAG_LEN] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key size");
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
    pub fn encode(&self, channels: &[impl AsRef<str>], positions: &[(u64, &str)]) -> String {
        debug_assert_eq!(channels.len(), positions.len());
        let mut payload = vec![VERSION];
        for (offset, epoch) in positions {
            write_varint(&mut payload, *offset);
            let epoch = &epoch.as_bytes()[..epoch.len().min(255)];
            payload.push(epoch.len() as u8);
            payload.extend_from_slice(epoch);
        }
        let tag = self.tag(&payload, channels);
        payload.extend_from_slice(&tag);
        URL_SAFE_NO_PAD.encode(payload)
    }

    /// Decodes a cursor issued for exactly these `channels`.
    pub fn decode(
        &self,
        channels: &[impl AsRef<str>],
        cursor: &str,
    ) -> Result<Vec<CursorPosition>, CursorError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(cursor.trim())
            .map_err(|_| CursorError::Malformed)?;
        if bytes.len() < 1 + TAG_LEN || bytes[0] != VERSION {
            return Err(CursorError::Malformed);
        }
        let (payload, tag) = bytes.split_at(bytes.len() - TAG_LEN);
        // Constant-time comparison, like every secret check.
        let expected = self.tag(payload, channels);
        if !crate::auth::constant_time_eq(&expected, tag) {
            return Err(CursorError::BadTag);
        }
        let mut rest = &payload[1..];
        let mut positions = Vec::with_capacity(channels.len());
        for _ in channels {
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
}

fn write_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
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
