//! What the hub's unit tests drive it with: a sink that records what a client was sent, a gate
//! that holds the memory engine's history reads, and a hub on a memory engine with a clock
//! moved by hand.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::Value;
use switchboard_proto::{Disconnect, Outgoing};
use tokio::sync::Semaphore;

use crate::clock::ManualClock;
use crate::config::HubConfig;
use crate::engine::{MemoryEngine, StreamPosition};
use crate::hub::{ClientEntry, Hub};
use crate::sink::ClientSink;

/// What a client was handed, in order.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Recorded {
    Frame(Value),
    /// A message replayed by a recovery.
    Recovered(Value),
    /// `ClientSink::subscribed`: a subscription's start position.
    Start(String, u64),
    Disconnect(&'static str),
    Heartbeat,
}

#[derive(Default)]
pub(crate) struct RecordingSink {
    pub log: Mutex<Vec<Recorded>>,
}

impl RecordingSink {
    pub(crate) fn take(&self) -> Vec<Recorded> {
        std::mem::take(&mut *self.log.lock())
    }

    /// The frames recorded so far (live or recovered), as JSON.
    pub(crate) fn frames(&self) -> Vec<Value> {
        self.log
            .lock()
            .iter()
            .filter_map(|r| match r {
                Recorded::Frame(v) | Recorded::Recovered(v) => Some(v.clone()),
                _ => None,
            })
            .collect()
    }

    /// The offsets of `channel`'s messages received so far.
    pub(crate) fn offsets(&self, channel: &str) -> Vec<u64> {
        self.frames()
            .iter()
            .filter(|f| f["type"] == "message" && f["channel"] == channel)
            .filter_map(|f| f["offset"].as_u64())
            .collect()
    }

    pub(crate) fn disconnects(&self) -> Vec<&'static str> {
        self.log
            .lock()
            .iter()
            .filter_map(|r| match r {
                Recorded::Disconnect(code) => Some(*code),
                _ => None,
            })
            .collect()
    }
}

fn json(frame: &Outgoing) -> Value {
    serde_json::from_slice(frame.json()).unwrap_or(Value::Null)
}

impl ClientSink for RecordingSink {
    fn send(&self, frame: &Arc<Outgoing>) -> bool {
        self.log.lock().push(Recorded::Frame(json(frame)));
        true
    }

    fn send_recovered(&self, frame: &Arc<Outgoing>) -> bool {
        self.log.lock().push(Recorded::Recovered(json(frame)));
        true
    }

    fn disconnect(&self, reason: Disconnect) {
        self.log.lock().push(Recorded::Disconnect(reason.code));
    }

    fn heartbeat(&self) {
        self.log.lock().push(Recorded::Heartbeat);
    }

    fn subscribed(&self, channel: &str, position: &StreamPosition) {
        let start = Recorded::Start(channel.to_owned(), position.offset);
        self.log.lock().push(start);
    }
}

/// Holds every history read of the engine until opened, so a test can publish while a
/// subscribe waits for its history.
pub(crate) struct Gate {
    entered: Semaphore,
    open: Semaphore,
}

impl Default for Gate {
    fn default() -> Self {
        Gate {
            entered: Semaphore::new(0),
            open: Semaphore::new(0),
        }
    }
}

impl Gate {
    pub(crate) async fn pass(&self) {
        self.entered.add_permits(1);
        if let Ok(permit) = self.open.acquire().await {
            permit.forget();
        }
    }

    /// Waits until a history read is held at the gate.
    pub(crate) async fn entered(&self) {
        if let Ok(permit) = self.entered.acquire().await {
            permit.forget();
        }
    }

    pub(crate) fn open(&self, reads: usize) {
        self.open.add_permits(reads);
    }
}

/// A hub on a memory engine whose clock starts at a fixed time.
pub(crate) struct TestHub {
    pub hub: Arc<Hub>,
    pub engine: Arc<MemoryEngine>,
    pub clock: Arc<ManualClock>,
}

pub(crate) const T0: u64 = 1_800_000_000;

impl TestHub {
    pub(crate) fn new(config: HubConfig) -> Self {
        let clock = Arc::new(ManualClock::at(T0));
        let engine = Arc::new(MemoryEngine::with_clock(
            Duration::from_secs(24 * 3600),
            clock.clone(),
        ));
        let hub = Hub::new(config, engine.clone());
        TestHub { hub, engine, clock }
    }

    /// A connected client of `user` whose frames are recorded.
    pub(crate) fn client(&self, user: &str) -> (Arc<ClientEntry>, Arc<RecordingSink>) {
        self.client_expiring(user, None)
    }

    pub(crate) fn client_expiring(
        &self,
        user: &str,
        exp: Option<u64>,
    ) -> (Arc<ClientEntry>, Arc<RecordingSink>) {
        let sink = Arc::new(RecordingSink::default());
        let entry = self.hub.register(user, None, exp, sink.clone());
        (entry, sink)
    }

    /// Holds the engine's history reads at a gate from now on.
    pub(crate) fn gate_history(&self) -> Arc<Gate> {
        let gate = Arc::new(Gate::default());
        *self.engine.history_gate.lock() = Some(gate.clone());
        gate
    }

    pub(crate) async fn publish(&self, channel: &str, n: u64) -> StreamPosition {
        let data = bytes::Bytes::from(n.to_string());
        self.hub
            .publish(channel, data)
            .await
            .expect("the memory engine publishes")
    }
}
