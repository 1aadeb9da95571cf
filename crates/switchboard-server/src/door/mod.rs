//! The one door core: what every door (WebSocket, SSE, HTTP streaming, long polling, Pusher's
//! WebSocket and HTTP fallbacks) shares, written once.
//!
//! - [`Outbox`]: the connection's one send queue, how the hub reaches it. Bounded in bytes;
//!   it holds the shared encoded publication, never per-client bytes.
//! - [`Machine`]: the sans-I/O connection. It drains the outbox through the door's
//!   [`DoorCodec`] (per-client bytes are made here, outside every lock), and owns
//!   keep-alives, the connect step's deadline, slow consumers and closing.
//! - A door is then a codec (its wire form) and a driver: a few dozen lines that move bytes
//!   between the machine and a socket or an HTTP body.

pub(crate) mod body;
pub(crate) mod codec;
mod fifo;
pub(crate) mod machine;
pub(crate) mod outbox;
pub(crate) mod rate;
pub(crate) mod socket;
mod timer;

pub(crate) use codec::{DoorCodec, Heartbeat, NoControl, Out};
pub(crate) use machine::{CLOSE_GRACE, Framing, Machine, Output};
pub(crate) use outbox::{Outbox, Overflow, Shared};
pub(crate) use timer::Deadline;
