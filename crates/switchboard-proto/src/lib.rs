//! Wire frames of the native Switchboard protocol (`shared/spec/PROTOCOL.md` §3) and the
//! WebSocket framing helpers the server's WebSocket door uses. Pure functions, no I/O.

pub mod code;
pub mod command;
pub mod encode;
pub mod pusher;
pub mod ws;

pub use code::{Disconnect, ErrorCode};
pub use command::{Command, CommandError, Position, Request, parse_request};
pub use encode::{MessageMeta, Outgoing};
