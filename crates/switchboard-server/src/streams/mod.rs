//! The one-way doors (spec §4, §5): Server-Sent Events (`GET /sse`), HTTP streaming of NDJSON
//! (`GET /stream`), long polling (`GET /poll`), and `POST /session/<session>` for talking back.
//! They reach the same hub as the WebSocket door, through the same [`Session`] and the same
//! door core ([`crate::door`]): a [`StreamCodec`] and a driver each.
//!
//! - `open.rs`: the URL checked (token, channels, cursor), channels subscribed from their start
//!   positions; `/sse` and `/stream` open a [`stream::OpenStream`].
//! - `body.rs` (hyper serves the stream) and `direct.rs` (a socket of our own): the drivers.
//! - `poll.rs`: long polling. `commands.rs`: `POST /session/<session>`.
//! - `codec.rs`: the wire form; `cursor.rs`: the signed cursor.
//! - `sessions.rs`: the registry of this node's stream sessions; `state.rs`: the doors' state.
//!
//! [`Session`]: switchboard_core::Session
//! [`StreamCodec`]: codec::StreamCodec

mod body;
pub(crate) mod codec;
mod commands;
pub(crate) mod cursor;
pub(crate) mod direct;
mod open;
mod poll;
pub(crate) mod sessions;
pub(crate) mod state;
pub(crate) mod stream;

pub(crate) use self::commands::post_session;
pub(crate) use self::open::{ndjson, sse};
pub(crate) use self::poll::poll;
pub(crate) use self::state::StreamsState;
