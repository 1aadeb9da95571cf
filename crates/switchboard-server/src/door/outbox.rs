//! The one send queue every door has: the hub's way to a client ([`ClientSink`]), filled from
//! any thread without blocking and drained by the connection's [`Machine`]. It holds what the
//! hub shares (the encoded publication itself, not per-client bytes) and is bounded in bytes:
//! a client that lets it overflow is a slow consumer, its backlog is dropped and it is
//! disconnected, so it never holds memory without bound nor slows anyone else.
//!
//! [`Machine`]: super::Machine

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use parking_lot::Mutex;
use switchboard_core::{ClientSink, StreamPosition};
use switchboard_proto::{Disconnect, Outgoing};

use super::fifo::Fifo;
use crate::metrics::ServerStats;

/// One thing queued for a client.
pub(crate) enum Item<K> {
    /// A hub frame, shared by every recipient.
    Shared(Arc<Outgoing>),
    /// A frame (JSON) this door's protocol made for this client alone.
    Own(Bytes),
    /// Bytes already in the door's wire form (a WebSocket pong, SSE's `retry:` line).
    Wire(Bytes),
    /// A subscription starts at a position (for doors that keep cursors).
    Subscribed(Box<(Arc<str>, StreamPosition)>),
    /// A door's own state change, applied in queue order.
    Control(K),
}

/// What a queued frame costs besides its bytes (its slot and a buffer's bookkeeping), so a
/// flood of empty frames (empty pings, each answered with an empty pong) meets the bound too.
const ENTRY_CHARGE: usize = 32;

impl<K> Item<K> {
    /// What the item counts against the queue's bound: its JSON, near enough to its wire size,
    /// and the entry itself.
    fn charge(&self) -> usize {
        match self {
            Item::Shared(frame) => frame.json().len() + ENTRY_CHARGE,
            Item::Own(bytes) | Item::Wire(bytes) => bytes.len() + ENTRY_CHARGE,
            Item::Subscribed(_) | Item::Control(_) => 0,
        }
    }
}

/// What the queue keeps of a frame the hub shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shared {
    /// The frame itself: the door's codec makes this client's bytes when draining.
    Frame,
    /// Its WebSocket frame bytes, for a door that sends every shared frame as exactly that
    /// (the native WebSocket door): no per-client bytes to make, and one reference count
    /// fewer to move per delivery than keeping the frame.
    WebSocketFrame,
}

/// What a full queue does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Overflow {
    /// Drops the backlog and disconnects the client as a slow consumer (live connections).
    Disconnect,
    /// Takes nothing more and stays open (one long poll: its answer is full, and the cursor
    /// stops at the last frame in it, so the next poll goes on from there).
    Refuse,
}

/// How many times its bound a client's queue may hold while it recovers missed messages: a
/// `since` far behind replays up to a whole history at once, which must not be mistaken for
/// a slow consumer (it would reconnect and overflow again, for ever).
const RECOVERY_ALLOWANCE: usize = 16;

struct Queue<K> {
    items: Fifo<Item<K>>,
    /// The charge of what is queued.
    bytes: usize,
    /// Of that, the charge of recovered messages: room granted beyond the bound.
    recovering: usize,
    /// Boxed: every idle connection carries this field, few ever fill it.
    closing: Option<Box<Disconnect>>,
    /// `Overflow::Refuse` only: the queue refused something, so it refuses everything after
    /// (taking a later frame after a refused one would make a gap).
    full: bool,
    /// Runs once when the connection begins to close, from whichever thread closes it (a door
    /// whose writer might never run again arms a timeout here).
    on_close: Option<Box<dyn FnOnce() + Send>>,
}

pub(crate) struct Outbox<K> {
    queue: Mutex<Queue<K>>,
    /// The task that drains the queue, woken when there is something for it to do.
    waker: AtomicWaker,
    /// Something was queued, a close began or a heartbeat is due since it last looked.
    woken: AtomicBool,
    ping_due: AtomicBool,
    /// The queue holds items: set by the push that finds it empty, cleared by the take that
    /// empties it, so the machine can skip the lock when there is nothing to take.
    queued: AtomicBool,
    /// Set once a close began, so the machine notices without taking the lock.
    closing: AtomicBool,
    limit: usize,
    overflow: Overflow,
    shared: Shared,
    stats: Arc<ServerStats>,
}

/// What the machine takes from the queue at once.
pub(crate) struct Taken<K> {
    pub items: Fifo<Item<K>>,
    /// The connection is closing (and everything before the close was taken).
    pub closing: Option<Disconnect>,
}

impl<K: Send> Outbox<K> {
    pub(crate) fn new(limit: usize, overflow: Overflow, stats: Arc<ServerStats>) -> Self {
        Outbox {
            queue: Mutex::new(Queue {
                items: Fifo::new(),
                bytes: 0,
                recovering: 0,
                closing: None,
                full: false,
                on_close: None,
            }),
            waker: AtomicWaker::new(),
            woken: AtomicBool::new(false),
            ping_due: AtomicBool::new(false),
            queued: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            limit,
            overflow,
            shared: Shared::Frame,
            stats,
        }
    }

    /// Keeps shared frames as `shared` says.
    pub(crate) fn keeping(mut self, shared: Shared) -> Self {
        self.shared = shared;
        self
    }

    fn shared_item(&self, frame: &Arc<Outgoing>) -> Item<K> {
        match self.shared {
            Shared::Frame => Item::Shared(frame.clone()),
            Shared::WebSocketFrame => Item::Wire(frame.ws_frame()),
        }
    }

    /// Queues a frame this door made for this client (JSON, encoded by the door's codec).
    pub(crate) fn push_own(&self, json: Bytes) -> bool {
        self.push(Item::Own(json), false)
    }

    /// Queues bytes in the door's own wire form.
    pub(crate) fn push_wire(&self, bytes: Bytes) -> bool {
        self.push(Item::Wire(bytes), false)
    }

    /// Queues a change of the codec's state, in order with the frames around it.
    pub(crate) fn push_control(&self, control: K) -> bool {
        self.push(Item::Control(control), false)
    }

    fn push(&self, item: Item<K>, recovered: bool) -> bool {
        let mut q = self.queue.lock();
        if q.closing.is_some() || q.full {
            return false;
        }
        let charge = item.charge();
        let room = if recovered {
            self.limit * RECOVERY_ALLOWANCE
        } else {
            self.limit + q.recovering
        };
        // A long poll's answer always takes its first frame, however large, or it could
        // never move on.
        let first_of_answer = self.overflow == Overflow::Refuse && q.items.is_empty();
        if q.bytes + charge > room && !first_of_answer {
            self.overflow(&mut q);
            return false;
        }
        q.bytes += charge;
        if recovered {
            q.recovering += charge;
        }
        // Wake the drainer only when nothing was waiting: otherwise it was woken already and
        // takes this too. State changes (no charge) don't count as waiting: a long poll
        // holding only those still waits to be woken by a frame.
        let was_idle = q.bytes == charge;
        if q.items.is_empty() {
            self.queued.store(true, Ordering::Release);
        }
        q.items.push_back(item);
        if was_idle {
            self.wake();
        }
        true
    }

    fn overflow(&self, q: &mut Queue<K>) {
        match self.overflow {
            Overflow::Refuse => {
                q.full = true;
                self.wake();
            }
            Overflow::Disconnect => {
                self.stats.queue_drops.fetch_add(1, Ordering::Relaxed);
                q.items.clear();
                q.bytes = 0;
                q.recovering = 0;
                self.close_locked(q, Disconnect::SLOW_CONSUMER);
            }
        }
    }

    /// Begins closing with `reason`: nothing more is queued; what is queued is still sent,
    /// then the door's goodbye. Returns whether this call began the close.
    pub(crate) fn close(&self, reason: Disconnect) -> bool {
        let mut q = self.queue.lock();
        if q.closing.is_some() {
            return false;
        }
        self.close_locked(&mut q, reason);
        true
    }

    fn close_locked(&self, q: &mut Queue<K>, reason: Disconnect) {
        q.closing = Some(Box::new(reason));
        self.closing.store(true, Ordering::Release);
        if let Some(on_close) = q.on_close.take() {
            on_close();
        }
        self.wake();
    }

    /// Sets what runs once when the connection begins to close (at once if it has).
    pub(crate) fn on_close(&self, f: impl FnOnce() + Send + 'static) {
        let mut q = self.queue.lock();
        if q.closing.is_some() {
            drop(q);
            f();
        } else {
            q.on_close = Some(Box::new(f));
        }
    }

    /// Takes queued items up to about `max` bytes of charge (at least one), and the close
    /// reason once everything before the close is taken.
    pub(crate) fn take(&self, max: usize) -> Taken<K> {
        let mut q = self.queue.lock();
        let (items, taken_charge) = if q.bytes <= max {
            (std::mem::take(&mut q.items), std::mem::take(&mut q.bytes))
        } else {
            let mut taken = Fifo::new();
            let mut charge = 0;
            while charge < max
                && let Some(item) = q.items.pop_front()
            {
                charge += item.charge();
                taken.push_back(item);
            }
            q.bytes -= charge;
            (taken, charge)
        };
        // Recovered messages were queued before anything live that followed them.
        q.recovering = q.recovering.saturating_sub(taken_charge);
        let closing = if q.items.is_empty() {
            self.queued.store(false, Ordering::Relaxed);
            q.closing.as_deref().copied()
        } else {
            None
        };
        Taken { items, closing }
    }

    /// Ready when something was queued, a close began or a heartbeat is due since the last
    /// time it was ready; otherwise registers the task to be woken.
    pub(crate) fn poll_woken(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.waker.register(cx.waker());
        if self.woken.swap(false, Ordering::AcqRel) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Waits until [`Outbox::poll_woken`] is ready.
    pub(crate) async fn woken(&self) {
        std::future::poll_fn(|cx| self.poll_woken(cx)).await;
    }

    fn wake(&self) {
        self.woken.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Whether there is nothing for the machine to take: no items, no heartbeat due and no
    /// close. Read without the lock; a push racing with it wakes the machine again.
    pub(crate) fn is_quiet(&self) -> bool {
        !self.queued.load(Ordering::Acquire)
            && !self.ping_due.load(Ordering::Relaxed)
            && !self.closing.load(Ordering::Acquire)
    }

    /// Takes the heartbeat flag set by the server's ping interval.
    pub(crate) fn take_ping_due(&self) -> bool {
        // Read first: a swap on every drain would take the cache line for nothing.
        self.ping_due.load(Ordering::Relaxed) && self.ping_due.swap(false, Ordering::Relaxed)
    }

    pub(crate) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Why the connection is closing, once it is.
    pub(crate) fn closing_reason(&self) -> Option<Disconnect> {
        if !self.is_closing() {
            return None;
        }
        self.queue.lock().closing.as_deref().copied()
    }

    /// Whether nothing waits in the queue.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.queue.lock().items.is_empty()
    }

    /// Whether a frame waits (not only the state changes that show nothing by themselves).
    pub(crate) fn has_frames(&self) -> bool {
        let q = self.queue.lock();
        q.items
            .iter()
            .any(|item| !matches!(item, Item::Subscribed(_) | Item::Control(_)))
    }

    /// `Overflow::Refuse`: whether the queue refused something.
    #[cfg(test)]
    pub(crate) fn is_full(&self) -> bool {
        self.queue.lock().full
    }

    pub(crate) fn stats(&self) -> &ServerStats {
        &self.stats
    }
}

impl<K: Send> ClientSink for Outbox<K> {
    fn send(&self, frame: &Arc<Outgoing>) -> bool {
        self.push(self.shared_item(frame), false)
    }

    fn send_recovered(&self, frame: &Arc<Outgoing>) -> bool {
        self.push(self.shared_item(frame), true)
    }

    fn subscribed(&self, channel: &str, position: &StreamPosition) {
        let item = Item::Subscribed(Box::new((channel.into(), position.clone())));
        self.push(item, false);
    }

    fn disconnect(&self, reason: Disconnect) {
        self.close(reason);
    }

    fn heartbeat(&self) {
        self.ping_due.store(true, Ordering::Relaxed);
        self.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::door::NoControl;

    fn outbox(limit: usize, overflow: Overflow) -> (Outbox<NoControl>, Arc<ServerStats>) {
        let stats = Arc::new(ServerStats::default());
        (Outbox::new(limit, overflow, stats.clone()), stats)
    }

    fn frame(text: &'static str) -> Arc<Outgoing> {
        Arc::new(Outgoing::new(Bytes::from_static(text.as_bytes())))
    }

    fn texts(taken: &Taken<NoControl>) -> Vec<String> {
        taken
            .items
            .iter()
            .map(|item| match item {
                Item::Shared(f) => String::from_utf8(f.json().to_vec()).unwrap(),
                Item::Own(b) | Item::Wire(b) => String::from_utf8(b.to_vec()).unwrap(),
                Item::Subscribed(s) => format!("subscribed {}", s.0),
                Item::Control(never) => match *never {},
            })
            .collect()
    }

    #[test]
    fn empty_frames_meet_the_bound_too() {
        // A client sending empty pings it never reads the pongs of: each pong is two bytes,
        // but the queue's entries are not free.
        let (outbox, _) = outbox(64 * 1024, Overflow::Disconnect);
        let mut queued = 0;
        while outbox.push_wire(Bytes::from_static(&[0x8a, 0x00])) {
            queued += 1;
        }
        assert!(outbox.is_closing(), "a slow consumer");
        assert!(queued < 64 * 1024 / ENTRY_CHARGE, "{queued} pongs queued");
    }

    #[test]
    fn quiet_only_when_there_is_nothing_to_take() {
        let (outbox, _) = outbox(100, Overflow::Disconnect);
        assert!(outbox.is_quiet());
        outbox.push_own(Bytes::from_static(b"1234"));
        outbox.push_own(Bytes::from_static(b"5678"));
        assert!(!outbox.is_quiet(), "items wait");
        assert_eq!(texts(&outbox.take(4)), ["1234"]);
        assert!(!outbox.is_quiet(), "a partial take leaves the rest");
        assert_eq!(texts(&outbox.take(4)), ["5678"]);
        assert!(outbox.is_quiet());
        let position = StreamPosition {
            offset: 1,
            epoch: "e".into(),
        };
        ClientSink::subscribed(&outbox, "news", &position);
        assert!(!outbox.is_quiet(), "a state change waits too");
        outbox.take(usize::MAX);
        ClientSink::heartbeat(&outbox);
        assert!(!outbox.is_quiet(), "a heartbeat is due");
        assert!(outbox.take_ping_due());
        assert!(outbox.is_quiet());
        outbox.close(Disconnect::SHUTDOWN);
        assert!(!outbox.is_quiet(), "a close is news");
    }

    #[test]
    fn overflow_drops_the_backlog_and_closes_as_slow_consumer() {
        let (outbox, stats) = outbox(10 + ENTRY_CHARGE, Overflow::Disconnect);
        assert!(outbox.push_own(Bytes::from_static(b"123456")));
        assert!(!outbox.send(&frame("123456")));
        assert!(
            !outbox.push_own(Bytes::from_static(b"1")),
            "a closed queue takes nothing"
        );
        let taken = outbox.take(usize::MAX);
        assert!(taken.items.is_empty(), "the backlog is dropped");
        assert_eq!(taken.closing, Some(Disconnect::SLOW_CONSUMER));
        assert_eq!(stats.queue_drops.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_frame_larger_than_the_bound_is_a_slow_consumer_but_starts_an_answer() {
        let (live, _) = outbox(4, Overflow::Disconnect);
        assert!(!live.push_own(Bytes::from_static(b"123456")));
        assert!(live.is_closing());
        let (poll, _) = outbox(4, Overflow::Refuse);
        assert!(poll.push_own(Bytes::from_static(b"123456")));
        assert!(!poll.push_own(Bytes::from_static(b"1")));
    }

    #[test]
    fn recovered_messages_may_exceed_the_bound_while_live_ones_keep_it() {
        let (outbox, _) = outbox(10 + ENTRY_CHARGE, Overflow::Disconnect);
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
        let taken = outbox.take(40 + 5 * ENTRY_CHARGE);
        assert_eq!(taken.items.len(), 5, "taken up to the asked charge");
        assert!(
            !outbox.send(&frame("12345")),
            "replay taken: back to the bound"
        );
        assert!(outbox.is_closing());
    }

    #[test]
    fn a_replay_beyond_the_allowance_is_still_a_slow_consumer() {
        let (outbox, _) = outbox(10 + ENTRY_CHARGE, Overflow::Disconnect);
        let f = frame("1234567890");
        for _ in 0..RECOVERY_ALLOWANCE {
            assert!(outbox.send_recovered(&f));
        }
        assert!(!outbox.send_recovered(&f));
        assert!(outbox.is_closing());
    }

    #[test]
    fn taking_frees_room_and_keeps_order() {
        let (outbox, _) = outbox(10 + 2 * ENTRY_CHARGE, Overflow::Disconnect);
        assert!(outbox.push_own(Bytes::from_static(b"12345678")));
        assert_eq!(texts(&outbox.take(1)), ["12345678"], "at least one item");
        assert!(outbox.push_own(Bytes::from_static(b"a")));
        outbox.subscribed(
            "c",
            &StreamPosition {
                offset: 1,
                epoch: "e".into(),
            },
        );
        assert!(outbox.send(&frame("b")));
        assert_eq!(texts(&outbox.take(100)), ["a", "subscribed c", "b"]);
    }

    #[test]
    fn a_close_comes_after_what_was_queued_before_it() {
        let (outbox, _) = outbox(100, Overflow::Disconnect);
        assert!(outbox.push_own(Bytes::from_static(b"first")));
        assert!(outbox.push_own(Bytes::from_static(b"second")));
        let closed = Arc::new(AtomicBool::new(false));
        let flag = closed.clone();
        outbox.on_close(move || flag.store(true, Ordering::SeqCst));
        assert!(outbox.close(Disconnect::BY_SERVER));
        assert!(closed.load(Ordering::SeqCst), "on_close ran");
        assert!(
            !outbox.close(Disconnect::SHUTDOWN),
            "the first reason stays"
        );
        let first = outbox.take(5);
        assert_eq!(texts(&first), ["first"]);
        assert_eq!(first.closing, None, "more was queued before the close");
        let rest = outbox.take(100);
        assert_eq!(texts(&rest), ["second"]);
        assert_eq!(rest.closing, Some(Disconnect::BY_SERVER));
    }

    #[test]
    fn a_refusing_queue_stops_at_its_bound_without_closing() {
        let (outbox, stats) = outbox(10, Overflow::Refuse);
        assert!(outbox.send(&frame("12345678")));
        assert!(!outbox.send(&frame("12345")), "past the bound");
        assert!(!outbox.send(&frame("1")), "nothing after a refusal");
        assert!(outbox.is_full());
        assert!(!outbox.is_closing());
        assert_eq!(texts(&outbox.take(usize::MAX)), ["12345678"]);
        assert_eq!(stats.queue_drops.load(Ordering::Relaxed), 0);
    }
}
