//! The media side of a session whose door carries WebRTC media: the `switchboard` data
//! channel of a client's `POST /rtc` peer connection (spec §9). A session with one can join a
//! room with `"media": "sfu"`; its media then joins that room's SFU, and `signal` frames to
//! the peer `"sfu"` renegotiate it. The door implements this; the session calls it.

use switchboard_proto::ErrorCode;

use crate::engine::BoxFuture;

/// The peer id SFU renegotiation is signaled from and to (spec §9).
pub const SFU_PEER: &str = "sfu";

/// Why the media side refused (the client gets an error frame with this code and text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaRefusal {
    pub code: ErrorCode,
    pub message: String,
}

impl MediaRefusal {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        MediaRefusal {
            code,
            message: message.into(),
        }
    }
}

pub trait MediaLink: Send + Sync {
    /// The connection's media becomes a member of `room`'s SFU as room peer `peer`: it
    /// publishes what it sends and receives every other member's media, offered to the
    /// client by `signal` frames from `"sfu"`.
    fn join(&self, room: &str, peer: &str) -> BoxFuture<Result<(), MediaRefusal>>;
    /// The `data` of a client's `signal` to `"sfu"`: `{"sdp": RTCSessionDescriptionInit}`.
    fn signal(&self, data: &[u8]) -> BoxFuture<Result<(), MediaRefusal>>;
    /// The connection's media leaves the SFU room it joined.
    fn leave(&self) -> BoxFuture<()>;
}
