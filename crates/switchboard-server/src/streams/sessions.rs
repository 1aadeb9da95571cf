//! The sessions of this node's one-way doors, by secret (the `session` of their `connected`
//! frame): what `POST /session/<session>` runs commands as, and, for long polling, where the
//! session's frames wait between polls.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use switchboard_core::Session;
use switchboard_proto::Disconnect;
use tokio::sync::Notify;

use super::codec::StreamCodec;
use crate::admission::Permit;
use crate::door::rate::Bucket;
use crate::door::{Machine, NoControl, Outbox};

/// A door's session, shared by the registry and whatever owns its lifetime: a stream's driver,
/// or (for long polling, whose requests come and go) the registry itself until it expires.
pub(crate) struct SessionCell {
    /// `None` once the door ended.
    pub session: tokio::sync::Mutex<Option<Session>>,
    /// Long polling only: where the session's frames wait between polls.
    pub(crate) poll: Option<PollDoor>,
    /// Unix seconds of the last poll (long polling only).
    last_seen: AtomicU64,
    /// The rate of the commands posted to the session, where one is configured.
    commands: Mutex<Option<Box<Bucket>>>,
}

/// A long-poll session's side of the door core: its frames wait in the outbox (bounded; past
/// it the session is closed as a slow consumer, like any other client) until a poll drains
/// the machine.
pub(crate) struct PollDoor {
    pub outbox: Arc<Outbox<NoControl>>,
    pub machine: Mutex<Machine<StreamCodec>>,
    /// Notified whenever the outbox wakes: several polls may wait on one session at once
    /// (a client changing its channel list), and the outbox wakes a single task.
    pub arrived: Arc<Notify>,
    /// The session's place in the node's connection limits.
    _permit: Permit,
}

impl PollDoor {
    pub(crate) fn new(
        outbox: Arc<Outbox<NoControl>>,
        machine: Machine<StreamCodec>,
        permit: Permit,
    ) -> Self {
        let arrived = Arc::new(Notify::new());
        let (forward, notify) = (outbox.clone(), arrived.clone());
        // Ends with the session: a closed outbox is woken one last time.
        tokio::spawn(async move {
            loop {
                forward.woken().await;
                notify.notify_waiters();
                if forward.is_closing() {
                    return;
                }
            }
        });
        PollDoor {
            outbox,
            machine: Mutex::new(machine),
            arrived,
            _permit: permit,
        }
    }

    /// Whether a poll has something to answer from this session.
    pub(crate) fn has_news(&self) -> bool {
        self.outbox.has_frames() || self.outbox.is_closing()
    }
}

/// The live sessions of this node's streams, by secret.
#[derive(Default)]
pub(crate) struct Sessions {
    cells: Mutex<HashMap<String, Arc<SessionCell>>>,
    /// `client_rate` and `client_burst`: each session's commands are limited like a
    /// WebSocket client's.
    command_rate: (u32, u32),
}

impl Sessions {
    pub(crate) fn new(client_rate: u32, client_burst: u32) -> Self {
        Sessions {
            cells: Mutex::default(),
            command_rate: (client_rate, client_burst),
        }
    }

    pub(crate) fn insert(&self, id: String, session: Session) -> (String, Arc<SessionCell>) {
        self.insert_cell(id, session, None)
    }

    /// A long-poll session: it lives in the registry until no poll came for
    /// [`POLL_SESSION_TTL`]; disconnected, it leaves the hub at once (commands then get 404)
    /// and stays only until a poll has taken its last frames.
    pub(crate) fn insert_poll(&self, id: String, session: Session, door: PollDoor) {
        let outbox = door.outbox.clone();
        let (_, cell) = self.insert_cell(id, session, Some(door));
        let cell = Arc::downgrade(&cell);
        outbox.on_close(move || {
            if let Some(cell) = cell.upgrade() {
                tokio::spawn(async move { cell.close().await });
            }
        });
    }

    fn insert_cell(
        &self,
        id: String,
        session: Session,
        poll: Option<PollDoor>,
    ) -> (String, Arc<SessionCell>) {
        let (rate, burst) = self.command_rate;
        let cell = Arc::new(SessionCell {
            session: tokio::sync::Mutex::new(Some(session)),
            poll,
            last_seen: AtomicU64::new(switchboard_core::unix_now()),
            commands: Mutex::new(Bucket::new(rate, burst, std::time::Instant::now())),
        });
        self.cells.lock().insert(id.clone(), cell.clone());
        (id, cell)
    }

    /// The long-poll session `id`, marked as seen now.
    pub(crate) fn touch_poll(&self, id: &str) -> Option<Arc<SessionCell>> {
        let cell = self.get(id).filter(|c| c.poll.is_some())?;
        cell.last_seen
            .store(switchboard_core::unix_now(), Ordering::Relaxed);
        Some(cell)
    }

    /// Removes long-poll sessions no poll came for, and closes them in the background.
    pub(crate) fn expire_polls(&self, now: u64) {
        let mut expired = Vec::new();
        self.cells.lock().retain(|_, cell| {
            let idle = cell.poll.is_some()
                && now.saturating_sub(cell.last_seen.load(Ordering::Relaxed))
                    >= POLL_SESSION_TTL.as_secs();
            if idle {
                expired.push(cell.clone());
            }
            !idle
        });
        for cell in expired {
            tokio::spawn(async move { cell.close().await });
        }
    }

    pub(crate) fn remove(&self, id: &str) {
        self.cells.lock().remove(id);
    }

    pub(crate) fn get(&self, id: &str) -> Option<Arc<SessionCell>> {
        self.cells.lock().get(id).cloned()
    }
}

impl SessionCell {
    /// Whether one more command posted to this session may run now (`client_rate`).
    pub(crate) fn admit_command(&self) -> bool {
        match self.commands.lock().as_mut() {
            Some(bucket) => bucket.take(std::time::Instant::now()),
            None => true,
        }
    }

    /// Ends the session: it leaves the hub (and a long-poll session's door closes, ending
    /// its forwarding task).
    pub(crate) async fn close(&self) {
        if let Some(door) = &self.poll {
            door.outbox.close(Disconnect::CLIENT_CLOSED);
        }
        if let Some(session) = self.session.lock().await.take() {
            session.close().await;
        }
    }
}

/// How long a long-poll session lives without a poll.
pub(crate) const POLL_SESSION_TTL: Duration = Duration::from_secs(60);
