//! The values server frames are built from: a channel's message, a presence member, a room
//! peer. The hub, the engines and the doors pass these around; only this crate turns them into
//! JSON, so the wire shape of each lives in one place.

use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;
use serde::ser::{SerializeStruct, Serializer};
use serde_json::value::RawValue;

/// One message of a channel's stream. `data` is the raw JSON the publisher sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    pub offset: u64,
    pub epoch: Arc<str>,
    pub data: Bytes,
}

/// A member of a channel's presence; on the wire `{"client","user","info"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceMember {
    pub client: Arc<str>,
    pub user: Arc<str>,
    /// Raw JSON of the client's `info` claim.
    pub info: Option<Bytes>,
}

/// A peer of a WebRTC signaling room (one client's membership); on the wire
/// `{"peer","user","info","meta"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomPeer {
    /// The peer id (the client's id: one membership per client and room).
    pub peer: Arc<str>,
    pub user: Arc<str>,
    /// Raw JSON of the client's `info` claim.
    pub info: Option<Bytes>,
    /// Raw JSON the peer set with `join_room`/`update_meta`.
    pub meta: Option<Bytes>,
}

/// Raw JSON held as bytes, as the value it is; `null` when absent or (never expected: it was
/// checked on the way in) not JSON.
pub(crate) fn raw_json(bytes: Option<&Bytes>) -> Option<&RawValue> {
    bytes.and_then(|b| serde_json::from_slice::<&RawValue>(b).ok())
}

impl Serialize for PresenceMember {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut out = s.serialize_struct("PresenceMember", 3)?;
        out.serialize_field("client", &*self.client)?;
        out.serialize_field("user", &*self.user)?;
        out.serialize_field("info", &raw_json(self.info.as_ref()))?;
        out.end()
    }
}

impl Serialize for RoomPeer {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut out = s.serialize_struct("RoomPeer", 4)?;
        out.serialize_field("peer", &*self.peer)?;
        out.serialize_field("user", &*self.user)?;
        out.serialize_field("info", &raw_json(self.info.as_ref()))?;
        out.serialize_field("meta", &raw_json(self.meta.as_ref()))?;
        out.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_and_peers_show_their_json_as_json() {
        let member = PresenceMember {
            client: "c1".into(),
            user: "ann".into(),
            info: Some(Bytes::from_static(br#"{"name":"Ann"}"#)),
        };
        assert_eq!(
            serde_json::to_string(&member).unwrap(),
            r#"{"client":"c1","user":"ann","info":{"name":"Ann"}}"#
        );
        let peer = RoomPeer {
            peer: "p".into(),
            user: "".into(),
            info: None,
            meta: Some(Bytes::from_static(b"[1, 2]")),
        };
        assert_eq!(
            serde_json::to_string(&peer).unwrap(),
            r#"{"peer":"p","user":"","info":null,"meta":[1, 2]}"#
        );
    }
}
