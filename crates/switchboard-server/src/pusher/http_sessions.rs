//! The sessions of pusher-js's HTTP fallbacks: each one Pusher connection whose outbox fills
//! from the hub whether or not a request is open, driven by the latest receiving request.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use parking_lot::Mutex;

use super::codec::PusherCodec;
use super::conn::{PusherConn, PusherOutbox};
use crate::admission::Permit;
use crate::door::{Machine, Output};

/// A session without a receiving request for this long is closed. pusher-js opens the next
/// request as soon as one ends and tells the server nothing when it disconnects, so this is
/// how long a gone client stays a member of its channels.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a session the server closed waits for a request to pick up its close.
const CLOSE_PICKUP: Duration = Duration::from_secs(2);

/// One HTTP-transport connection.
pub(crate) struct HttpSession {
    pub outbox: Arc<PusherOutbox>,
    /// Driven by the latest receiving request only.
    pub machine: Mutex<Machine<PusherCodec>>,
    /// `None` once the session has left the hub.
    pub conn: tokio::sync::Mutex<Option<PusherConn>>,
    /// Bumped by every receiving request: only the latest one drains the outbox.
    pub generation: AtomicU64,
    /// A receiving request is open.
    pub receiving: AtomicBool,
    /// When the last receiving request ended (Unix seconds).
    pub last_seen: AtomicU64,
    /// The session's place in the node's connection limits.
    pub _permit: Permit,
}

/// The live HTTP-transport sessions, by `{key}/{server}/{session}`.
#[derive(Default)]
pub(crate) struct HttpSessions {
    map: Mutex<HashMap<String, Arc<HttpSession>>>,
}

impl HttpSessions {
    pub(crate) fn get(&self, id: &str) -> Option<Arc<HttpSession>> {
        self.map.lock().get(id).cloned()
    }

    pub(crate) fn insert(&self, id: &str, session: Arc<HttpSession>) {
        self.map.lock().insert(id.to_owned(), session);
    }

    /// Ends a session: it leaves the hub in the background.
    pub(crate) fn close(&self, id: &str) {
        if let Some(session) = self.map.lock().remove(id) {
            tokio::spawn(async move {
                if let Some(conn) = session.conn.lock().await.take() {
                    conn.shut().await;
                }
            });
        }
    }

    /// Closes sessions nobody has received from for [`IDLE_TIMEOUT`], and closed ones nobody
    /// receives from (called every second by the server's ticker).
    pub(crate) fn expire(&self, now: u64) {
        let idle: Vec<String> = self
            .map
            .lock()
            .iter()
            .filter(|(_, s)| {
                // Idle, or closed by the server (shutdown, terminate) and its close not picked
                // up by a poll within a couple of seconds.
                let idle = now.saturating_sub(s.last_seen.load(Ordering::Relaxed));
                let limit = if s.outbox.is_closing() {
                    CLOSE_PICKUP.as_secs()
                } else {
                    IDLE_TIMEOUT.as_secs()
                };
                !s.receiving.load(Ordering::Acquire) && idle > limit
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in idle {
            self.close(&id);
        }
    }
}

/// What driving a session's machine came to.
pub(crate) enum Drained {
    /// Nothing more to send for now.
    Waiting,
    /// The session is over (its goodbye is in what was drained).
    Closed,
}

impl HttpSession {
    /// Drives the machine, appending what it writes to `out`, until it waits or closes (or
    /// `out` holds `max` bytes).
    pub(crate) fn drain(&self, out: &mut BytesMut, max: usize) -> Drained {
        let mut machine = self.machine.lock();
        loop {
            match machine.poll_output(Instant::now) {
                Output::Write => {
                    while let Some(chunk) = machine.take_chunk() {
                        out.extend_from_slice(&chunk);
                    }
                    if out.len() >= max {
                        return Drained::Waiting;
                    }
                }
                Output::Wait(_) => return Drained::Waiting,
                Output::Close(_) => return Drained::Closed,
            }
        }
    }
}
