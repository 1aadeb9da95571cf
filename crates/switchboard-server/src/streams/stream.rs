//! A live `/sse` or `/stream` stream, between the handler that opens it and the driver that
//! writes it (a hyper body, or a socket of our own).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

use super::codec::StreamCodec;
use super::sessions::SessionCell;
use super::state::StreamsState;
use crate::admission::Permit;
use crate::door::Machine;

/// A live stream, whichever driver writes it: its machine, and its registration (dropped with
/// it: the session then leaves the hub).
pub(crate) struct OpenStream {
    pub machine: Machine<StreamCodec>,
    /// Held for its drop: the stream's session leaves with it.
    pub _registration: Registration,
}

pub(crate) struct Registration {
    pub streams: Arc<StreamsState>,
    /// The stream's place in the node's connection limits.
    pub _permit: Permit,
    pub session_id: String,
    pub cell: Arc<SessionCell>,
    /// Set when the stream is over, so a pending kill leaves a reused connection alone.
    pub finished: Arc<AtomicBool>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.finished.store(true, Ordering::Release);
        self.streams.sessions.remove(&self.session_id);
        let cell = self.cell.clone();
        // Leaving the hub is async (the engine may be remote): do it in the background.
        tokio::spawn(async move { cell.close().await });
    }
}

/// Put in a request's extensions by a driver that owns the socket (`direct.rs`): the stream
/// is handed over through it instead of becoming a response body.
#[derive(Clone, Default)]
pub(crate) struct Handoff(pub Arc<Mutex<Option<OpenStream>>>);
