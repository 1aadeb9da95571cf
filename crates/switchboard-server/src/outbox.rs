//! The per-connection send queue: bounded in bytes, filled by the hub from any thread without
//! blocking, drained by the connection's single writer. A client that lets it overflow is a
//! slow consumer: its backlog is dropped and it is disconnected, so it never holds memory
//! without bound nor slows anyone else.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use parking_lot::Mutex;
use std::task::{Context, Poll};
use switchboard_core::{ClientSink, StreamPosition};
use switchboard_proto::{Disconnect, Outgoing};

use futures_util::task::AtomicWaker;

use crate::metrics::ServerStats;

/// How a door turns frames into its wire bytes.
pub trait DoorCodec: Send + Sync + 'static {
    /// What the codec remembers per connection (the positions behind a cursor). It is only
    /// touched under the outbox's lock, together with the queue, so what it encodes follows
    /// the order of the wire.
    type State: Default + Send;

    fn frame(&self, state: &mut Self::State, frame: &Outgoing) -> Wire;

    /// A subscription of this connection starts at `position` (see
    /// [`ClientSink::subscribed`]).
    fn subscribed(&self, _state: &mut Self::State, _channel: &str, _position: &StreamPosition) {}

    /// The last bytes sent before closing: a `disconnect` frame and, where the door has one,
    /// its own close.
    fn goodbye(&self, reason: &Disconnect) -> Vec<Bytes>;

    /// The connection begins to close (called once, from whichever thread closes it): a door
    /// whose writer might never run again (a client that reads nothing) arms a timeout here.
    fn closing(&self) {}
}

/// One frame on the wire: a single buffer, or a shared middle between two per-client parts
/// (a cursor's event id before, its field after), so shared bytes are never copied.
pub enum Wire {
    /// Nothing: this door does not show the frame to this client (a Pusher client is not
    /// sent its own client events, nor native frames it has no counterpart for).
    Nothing,
    One(Bytes),
    Three(Bytes, Bytes, Bytes),
}

impl Wire {
    fn len(&self) -> usize {
        match self {
            Wire::Nothing => 0,
            Wire::One(b) => b.len(),
            Wire::Three(a, b, c) => a.len() + b.len() + c.len(),
        }
    }
}

/// How many times its bound a client's queue may hold while it recovers missed messages: a
/// `since` far behind replays up to a whole history at once, which must not be mistaken for
/// a slow consumer (it would reconnect and overflow again, for ever).
const RECOVERY_ALLOWANCE: usize = 16;

struct Queue<S> {
    frames: VecDeque<Bytes>,
    /// Bytes queued or taken by the writer and not yet written.
    bytes: usize,
    /// Of those, bytes of recovered messages: room granted beyond the bound while they drain.
    recovering: usize,
    closing: Option<Disconnect>,
    /// The backlog was dropped; the writer must drop what it holds too, once.
    trim_writer: bool,
    state: S,
}

impl<S: Default> Default for Queue<S> {
    fn default() -> Self {
        Queue {
            frames: VecDeque::new(),
            bytes: 0,
            recovering: 0,
            closing: None,
            trim_writer: false,
            state: S::default(),
        }
    }
}

pub struct Outbox<C: DoorCodec> {
    queue: Mutex<Queue<C::State>>,
    /// The connection task's waker, woken when there is something for it to do.
    waker: AtomicWaker,
    /// Something was queued, a close began or a heartbeat is due since the task last looked.
    woken: AtomicBool,
    limit: usize,
    codec: C,
    ping_due: AtomicBool,
    stats: Arc<ServerStats>,
}

impl<C: DoorCodec> Outbox<C> {
    pub fn new(codec: C, limit: usize, stats: Arc<ServerStats>) -> Self {
        Outbox {
            queue: Mutex::new(Queue::default()),
            waker: AtomicWaker::new(),
            woken: AtomicBool::new(false),
            limit,
            codec,
            ping_due: AtomicBool::new(false),
            stats,
        }
    }

    pub fn codec(&self) -> &C {
        &self.codec
    }

    /// Queues door-encoded bytes (a reply, a control frame), subject to the same bound.
    pub fn push(&self, bytes: Bytes) -> bool {
        let mut q = self.queue.lock();
        self.push_locked(&mut q, Wire::One(bytes), false)
    }

    /// Queues `wire`; a `recovered` message may use the recovery allowance.
    fn push_locked(&self, q: &mut Queue<C::State>, wire: Wire, recovered: bool) -> bool {
        if q.closing.is_some() {
            return false;
        }
        if let Wire::Nothing = wire {
            return true;
        }
        let len = wire.len();
        let room = if recovered {
            self.limit * RECOVERY_ALLOWANCE
        } else {
            self.limit + q.recovering
        };
        if q.bytes + len > room {
            self.overflow(q);
            return false;
        }
        q.bytes += len;
        if recovered {
            q.recovering += len;
        }
        let was_empty = q.frames.is_empty();
        match wire {
            Wire::Nothing => {}
            Wire::One(b) => q.frames.push_back(b),
            Wire::Three(a, b, c) => q.frames.extend([a, b, c]),
        }
        if was_empty {
            self.wake();
        }
        true
    }

    /// Runs `f` on the codec's per-connection state and queues the bytes it returns, under
    /// one lock: nothing the hub queues meanwhile can come between the state change and them.
    pub fn push_with_state(&self, f: impl FnOnce(&mut C::State) -> Option<Bytes>) -> bool {
        let mut q = self.queue.lock();
        match f(&mut q.state) {
            Some(bytes) => self.push_locked(&mut q, Wire::One(bytes), false),
            None => q.closing.is_none(),
        }
    }

    /// Runs `f` on the codec's per-connection state, under the queue's lock.
    pub fn with_state<R>(&self, f: impl FnOnce(&mut C::State) -> R) -> R {
        f(&mut self.queue.lock().state)
    }

    fn overflow(&self, q: &mut Queue<C::State>) {
        self.stats.queue_drops.fetch_add(1, Ordering::Relaxed);
        q.frames.clear();
        q.bytes = 0;
        q.recovering = 0;
        q.trim_writer = true;
        self.close_locked(q, Disconnect::SLOW_CONSUMER);
    }

    fn close_locked(&self, q: &mut Queue<C::State>, reason: Disconnect) {
        let goodbye = self.codec.goodbye(&reason);
        self.close_with_locked(q, reason, goodbye);
    }

    fn close_with_locked(&self, q: &mut Queue<C::State>, reason: Disconnect, goodbye: Vec<Bytes>) {
        q.closing = Some(reason);
        self.codec.closing();
        for bytes in goodbye {
            q.bytes += bytes.len();
            q.frames.push_back(bytes);
        }
        self.wake();
    }

    fn wake(&self) {
        self.woken.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Begins closing with exactly these last frames (e.g. the answer to a client's close).
    pub fn close_with(&self, reason: Disconnect, goodbye: Vec<Bytes>) {
        let mut q = self.queue.lock();
        if q.closing.is_none() {
            self.close_with_locked(&mut q, reason, goodbye);
        }
    }

    /// Moves everything queued onto the writer's `pending` list and returns the close
    /// reason once the connection is closing. After an overflow the writer's own backlog is
    /// dropped too, except its first frame when `head_started` (a frame cut in half would
    /// corrupt the stream).
    pub fn drain_into(
        &self,
        pending: &mut VecDeque<Bytes>,
        head_started: bool,
    ) -> Option<Disconnect> {
        let mut q = self.queue.lock();
        if q.trim_writer {
            q.trim_writer = false;
            pending.truncate(usize::from(head_started));
        }
        if pending.is_empty() {
            std::mem::swap(pending, &mut q.frames);
        } else {
            pending.append(&mut q.frames);
        }
        q.closing
    }

    /// The writer wrote `n` bytes to the socket.
    pub fn written(&self, n: usize) {
        let mut q = self.queue.lock();
        q.bytes = q.bytes.saturating_sub(n);
        // Recovered messages were queued before anything live that followed them.
        q.recovering = q.recovering.saturating_sub(n);
    }

    /// Ready when something was queued, a close began or a heartbeat is due since the last
    /// time it was ready; otherwise registers the task to be woken.
    pub fn poll_woken(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.waker.register(cx.waker());
        if self.woken.swap(false, Ordering::AcqRel) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Takes the heartbeat flag set by the server's ping interval.
    pub fn take_ping_due(&self) -> bool {
        self.ping_due.swap(false, Ordering::Relaxed)
    }

    pub fn is_closing(&self) -> bool {
        self.queue.lock().closing.is_some()
    }
}

impl<C: DoorCodec> Outbox<C> {
    fn send_frame(&self, frame: &Outgoing, recovered: bool) -> bool {
        let mut q = self.queue.lock();
        if q.closing.is_some() {
            return false;
        }
        let wire = self.codec.frame(&mut q.state, frame);
        self.push_locked(&mut q, wire, recovered)
    }
}

impl<C: DoorCodec> ClientSink for Outbox<C> {
    fn send(&self, frame: &Arc<Outgoing>) -> bool {
        self.send_frame(frame, false)
    }

    fn send_recovered(&self, frame: &Arc<Outgoing>) -> bool {
        self.send_frame(frame, true)
    }

    fn subscribed(&self, channel: &str, position: &StreamPosition) {
        let mut q = self.queue.lock();
        self.codec.subscribed(&mut q.state, channel, position);
    }

    fn disconnect(&self, reason: Disconnect) {
        let mut q = self.queue.lock();
        if q.closing.is_none() {
            self.close_locked(&mut q, reason);
        }
    }

    fn heartbeat(&self) {
        self.ping_due.store(true, Ordering::Relaxed);
        self.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Plain;
    impl DoorCodec for Plain {
        type State = ();
        fn frame(&self, _: &mut (), frame: &Outgoing) -> Wire {
            Wire::One(frame.json().clone())
        }
        fn goodbye(&self, reason: &Disconnect) -> Vec<Bytes> {
            vec![Bytes::from(reason.code)]
        }
    }

    #[test]
    fn overflow_drops_the_backlog_and_closes_as_slow_consumer() {
        let stats = Arc::new(ServerStats::default());
        let outbox = Outbox::new(Plain, 10, stats.clone());
        assert!(outbox.push(Bytes::from_static(b"123456")));
        assert!(!outbox.push(Bytes::from_static(b"123456")));
        assert!(
            !outbox.push(Bytes::from_static(b"1")),
            "closed outboxes take nothing"
        );
        let mut pending = VecDeque::from([Bytes::from("half-written"), Bytes::from("old")]);
        let closing = outbox.drain_into(&mut pending, true);
        assert_eq!(closing, Some(Disconnect::SLOW_CONSUMER));
        assert_eq!(
            pending,
            vec![Bytes::from("half-written"), Bytes::from("slow_consumer")]
        );
        outbox.drain_into(&mut pending, true);
        assert_eq!(pending.len(), 2, "the backlog is trimmed once only");
        assert_eq!(stats.queue_drops.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn recovered_messages_may_exceed_the_bound_while_live_ones_keep_it() {
        let outbox = Outbox::new(Plain, 10, Arc::new(ServerStats::default()));
        let frame =
            |text: &'static str| Arc::new(Outgoing::new(Bytes::from_static(text.as_bytes())));
        for _ in 0..5 {
            assert!(
                outbox.send_recovered(&frame("12345678")),
                "40 bytes replayed"
            );
        }
        assert!(
            outbox.send(&frame("123456")),
            "the bound still holds for live ones"
        );
        assert!(!outbox.is_closing());
        outbox.written(40);
        assert!(
            !outbox.send(&frame("12345")),
            "replay written: back to the bound"
        );
        assert!(outbox.is_closing());
    }

    #[test]
    fn a_replay_beyond_the_allowance_is_still_a_slow_consumer() {
        let outbox = Outbox::new(Plain, 10, Arc::new(ServerStats::default()));
        let frame = Arc::new(Outgoing::new(Bytes::from_static(b"1234567890")));
        for _ in 0..RECOVERY_ALLOWANCE {
            assert!(outbox.send_recovered(&frame));
        }
        assert!(!outbox.send_recovered(&frame));
        assert!(outbox.is_closing());
    }

    #[test]
    fn written_bytes_free_room() {
        let outbox = Outbox::new(Plain, 10, Arc::new(ServerStats::default()));
        assert!(outbox.push(Bytes::from_static(b"12345678")));
        let mut pending = VecDeque::new();
        assert_eq!(outbox.drain_into(&mut pending, false), None);
        assert!(!outbox.is_closing());
        outbox.written(8);
        assert!(outbox.push(Bytes::from_static(b"12345678")));
    }
}
