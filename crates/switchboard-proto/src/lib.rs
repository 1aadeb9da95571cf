//! Wire frames of the native Switchboard protocol (`shared/spec/PROTOCOL.md` §3), Pusher's
//! frames, and the WebSocket framing helpers the server's doors use. Every server frame is
//! built here from typed values. Pure functions, no I/O.

pub mod code;
pub mod command;
pub mod encode;
pub mod model;
pub mod outgoing;
pub mod pusher;
pub mod ws;

pub use code::{Disconnect, ErrorCode};
pub use command::{Command, CommandError, MediaMode, Position, Request, parse_request};
pub use model::{PresenceMember, Publication, RoomPeer};
pub use outgoing::{FrameKind, MessageMeta, Outgoing, PresenceChange, PresenceEvent};
