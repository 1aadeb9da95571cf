//! The connection machine: everything about a client's outgoing side that does not depend on
//! how bytes travel, for every door, once. It takes frames from the connection's [`Outbox`],
//! has its [`DoorCodec`] turn them into wire bytes, and hands those to the door's driver to
//! write; it keeps the connection alive (heartbeats, and for doors whose client must answer
//! them, the check that it did), bounds the connect step, and closes: the goodbye after
//! everything queued before it, within a grace period however slowly the client reads.
//!
//! It does no I/O and reads no clock: a driver tells it what happened and when
//! ([`Machine::written`], [`Machine::client_activity`], [`Machine::connected`],
//! [`Machine::close`]) and asks [`Machine::poll_output`] what to do next: write, wait (until
//! woken or a deadline), or close. Unit tests drive it with virtual time.

use std::io::IoSlice;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use switchboard_proto::Disconnect;

use super::codec::{DoorCodec, Out};
use super::fifo::Fifo;
use super::outbox::{Item, Outbox};
use super::rate::Bucket;

/// How long a closing connection may take to write its last bytes.
pub(crate) const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Most bytes (of queue charge) taken from the queue at once: the write list never holds
/// much more, the rest waits in the bounded queue.
const BATCH_BYTES: usize = 64 * 1024;

/// What the driver must do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Output {
    /// Bytes wait to be written ([`Machine::io_slices`] or [`Machine::take_chunk`]); report
    /// what the transport took with [`Machine::written`].
    Write,
    /// Nothing to do until the outbox wakes the connection, the client sends something, or
    /// the deadline passes.
    Wait(Option<Instant>),
    /// The connection is over: close the transport. Its goodbye was written, or the grace
    /// period ran out first.
    Close(Disconnect),
}

/// How the driver's transport frames what it writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// As they are (a WebSocket, or a body hyper frames).
    Plain,
    /// HTTP/1.1 chunked transfer coding, the machine writing the chunks itself (a stream on
    /// a socket Switchboard owns); the goodbye is followed by the last chunk.
    Chunked,
}

pub(crate) struct Machine<C: DoorCodec> {
    codec: C,
    outbox: Arc<Outbox<C::Control>>,
    /// Bytes to write (`Item::Wire` only), in order; the first may be partly written. A
    /// batch of the queue that holds nothing but wire bytes becomes this list as it is.
    pending: Fifo<Item<C::Control>>,
    framing: Framing,
    /// The client said something since the last heartbeat that needed an answer.
    active: bool,
    /// When a client that has not completed its connect step is closed.
    connect_by: Option<Instant>,
    /// Boxed: a connection carries it only once it is closing.
    closing: Option<Box<Closing>>,
    /// The client's command rate, where one is configured.
    commands: Option<Box<Bucket>>,
}

struct Closing {
    reason: Disconnect,
    /// Sent instead of the codec's goodbye (the answer to a client's own close).
    goodbye: Option<Vec<Bytes>>,
    goodbye_queued: bool,
    /// Past this, what is left unwritten is abandoned.
    deadline: Instant,
}

impl<C: DoorCodec> Machine<C> {
    pub(crate) fn new(codec: C, outbox: Arc<Outbox<C::Control>>, framing: Framing) -> Self {
        Machine {
            codec,
            outbox,
            pending: Fifo::new(),
            framing,
            active: true,
            connect_by: None,
            closing: None,
            commands: None,
        }
    }

    /// Limits the client to `rate` commands a second, `burst` at once (0: no limit).
    pub(crate) fn limit_commands(&mut self, rate: u32, burst: u32, now: Instant) {
        self.commands = Bucket::new(rate, burst, now);
    }

    /// A command (or a ping) arrived from the client: whether it may run now. A refused one
    /// is answered `rate_limited`; the connection lives.
    pub(crate) fn admit_command(&mut self, clock: impl Fn() -> Instant) -> bool {
        self.active = true;
        match &mut self.commands {
            Some(bucket) => bucket.take(clock()),
            None => true,
        }
    }

    pub(crate) fn outbox(&self) -> &Arc<Outbox<C::Control>> {
        &self.outbox
    }

    pub(crate) fn codec(&self) -> &C {
        &self.codec
    }

    pub(crate) fn codec_mut(&mut self) -> &mut C {
        &mut self.codec
    }

    /// The client must complete its connect step (see [`Machine::connected`]) by `deadline`,
    /// or it is closed with `connect_timeout`.
    pub(crate) fn expect_connect(&mut self, deadline: Instant) {
        self.connect_by = Some(deadline);
    }

    /// The client completed its connect step.
    pub(crate) fn connected(&mut self) {
        self.connect_by = None;
    }

    /// The client sent something (a frame, a ping, a pong): it is alive.
    pub(crate) fn client_activity(&mut self) {
        self.active = true;
    }

    /// Begins closing for `reason`, with `goodbye` as the last bytes instead of the codec's
    /// own, unless the connection was closing already (the first reason stands).
    pub(crate) fn close(&mut self, reason: Disconnect, goodbye: Option<Vec<Bytes>>, now: Instant) {
        if self.outbox.close(reason) {
            self.closing = Some(Box::new(Closing {
                reason,
                goodbye,
                goodbye_queued: false,
                deadline: now + CLOSE_GRACE,
            }));
        }
    }

    pub(crate) fn is_closing(&self) -> bool {
        self.closing.is_some() || self.outbox.is_closing()
    }

    /// What to do next. Takes what the outbox holds (when the write list is empty), starts
    /// heartbeats and closes, and watches the deadlines.
    /// `clock` is read only when the machine needs the time (a deadline, a close, a
    /// heartbeat): most calls, one per delivery under load, need none.
    pub(crate) fn poll_output(&mut self, clock: impl Fn() -> Instant) -> Output {
        let read = std::cell::OnceCell::new();
        let now = || *read.get_or_init(&clock);
        let now: &dyn Fn() -> Instant = &now;
        if self.closing.is_none()
            && let Some(reason) = self.outbox.closing_reason()
        {
            // Closed from elsewhere (the hub, an overflow): the grace period starts now, even
            // if what is queued before the goodbye can't be written yet.
            self.closing = Some(Box::new(Closing {
                reason,
                goodbye: None,
                goodbye_queued: false,
                deadline: now() + CLOSE_GRACE,
            }));
        }
        loop {
            if let Some(closing) = &self.closing {
                let flushed = closing.goodbye_queued && self.pending.is_empty();
                if flushed || now() >= closing.deadline {
                    return Output::Close(closing.reason);
                }
            }
            if self.connect_by.is_some_and(|by| now() >= by) {
                self.connect_by = None;
                self.close(Disconnect::CONNECT_TIMEOUT, None, now());
            }
            if !self.pending.is_empty() {
                return Output::Write;
            }
            if !self.fill(now) {
                return Output::Wait(self.deadline());
            }
        }
    }

    /// The next deadline, the connect step's or the close's: a driver waiting for anything
    /// (even for its socket to take more) must wake up then.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        let closing = self.closing.as_ref().map(|c| c.deadline);
        match (self.connect_by, closing) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Encodes the next batch into the (empty) write list; false when there was nothing to do.
    fn fill(&mut self, now: &dyn Fn() -> Instant) -> bool {
        if self.outbox.is_quiet() {
            // The common case right after a write: skip the lock and the bookkeeping.
            return false;
        }
        let taken = self.outbox.take(BATCH_BYTES);
        let mut progress = !taken.items.is_empty();
        let mut batch = if taken.items.iter().all(|item| matches!(item, Item::Wire(_))) {
            // Already wire bytes (a WebSocket's shared frames): the batch is the write list,
            // with no copy and no allocation.
            taken.items
        } else {
            let mut batch = Fifo::new();
            encode(&mut self.codec, taken.items, &mut Out::new(&mut batch));
            batch
        };
        let mut out = Out::new(&mut batch);
        // After what was queued: a stream's first bytes are its own, not a keep-alive.
        if self.closing.is_none() && self.outbox.take_ping_due() {
            // A close begun here is taken up on the next round.
            progress |= self.heartbeat(&mut out, now);
        }
        let mut last = false;
        if let Some(reason) = taken.closing {
            let closing = self.closing.get_or_insert_with(|| {
                Box::new(Closing {
                    reason,
                    goodbye: None,
                    goodbye_queued: false,
                    deadline: now() + CLOSE_GRACE,
                })
            });
            if !closing.goodbye_queued {
                closing.goodbye_queued = true;
                match closing.goodbye.take() {
                    Some(goodbye) => goodbye.into_iter().for_each(|b| out.push(b)),
                    None => self.codec.goodbye(&reason, &mut out),
                }
                last = true;
                progress = true;
            }
        }
        drop(out);
        progress |= !batch.is_empty();
        self.queue_batch(batch, last);
        progress
    }

    /// Sends a keep-alive, or closes a client that did not answer the last one; true when it
    /// closed.
    fn heartbeat(&mut self, out: &mut Out<'_, C::Control>, now: &dyn Fn() -> Instant) -> bool {
        let Some(heartbeat) = self.codec.heartbeat() else {
            return false;
        };
        if heartbeat.expects_answer {
            if !self.active {
                self.close(Disconnect::NO_PONG, None, now());
                return true;
            }
            self.active = false;
        }
        out.push(heartbeat.bytes);
        false
    }

    fn queue_batch(&mut self, mut batch: Fifo<Item<C::Control>>, last: bool) {
        if self.framing == Framing::Chunked {
            let len: usize = batch.iter().map(wire_len).sum();
            if len > 0 {
                let header = Bytes::from(format!("{len:x}\r\n").into_bytes());
                batch.push_front(Item::Wire(header));
                batch.push_back(Item::Wire(Bytes::from_static(b"\r\n")));
            }
            if last {
                batch.push_back(Item::Wire(Bytes::from_static(b"0\r\n\r\n")));
            }
        }
        self.pending = batch;
    }

    /// Whether bytes wait to be written.
    pub(crate) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Fills `slices` with what to write next; returns how many it filled.
    pub(crate) fn io_slices<'a>(&'a self, slices: &mut [IoSlice<'a>]) -> usize {
        let wire = self.pending.iter().filter_map(|item| match item {
            Item::Wire(bytes) => Some(bytes),
            _ => None,
        });
        let mut n = 0;
        for (slot, bytes) in slices.iter_mut().zip(wire) {
            *slot = IoSlice::new(bytes);
            n += 1;
        }
        n
    }

    /// The bytes waiting to be written when they are a single buffer.
    pub(crate) fn only_pending(&self) -> Option<&[u8]> {
        match self.pending.front() {
            Some(Item::Wire(bytes)) if self.pending.len() == 1 => Some(bytes),
            _ => None,
        }
    }

    /// The transport took `n` bytes of what [`Machine::io_slices`] offered.
    pub(crate) fn written(&mut self, n: usize) {
        self.outbox
            .stats()
            .bytes_written
            .fetch_add(n as u64, Ordering::Relaxed);
        // Count the buffers written whole first, then drop them together: cheaper than
        // taking them out one by one, which shows in a busy fan-out.
        let mut left = n;
        let mut whole = 0;
        for item in self.pending.iter() {
            let len = wire_len(item);
            if len > left {
                break;
            }
            left -= len;
            whole += 1;
        }
        // Dropping them all gives the list's memory back: an idle connection holds none.
        self.pending.drop_front(whole);
        if let Some(Item::Wire(head)) = self.pending.front_mut() {
            head.advance(left);
        }
    }

    /// Hands over the next buffer whole, for a transport that takes ownership (a response
    /// body); it counts as written.
    pub(crate) fn take_chunk(&mut self) -> Option<Bytes> {
        let chunk = loop {
            match self.pending.pop_front()? {
                Item::Wire(bytes) => break bytes,
                _ => continue,
            }
        };
        self.outbox
            .stats()
            .bytes_written
            .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        if self.pending.is_empty() {
            self.pending.clear();
        }
        Some(chunk)
    }
}

/// The bytes a write-list item holds.
fn wire_len<K>(item: &Item<K>) -> usize {
    match item {
        Item::Wire(bytes) => bytes.len(),
        _ => 0,
    }
}

/// Turns queued items into wire bytes, in order.
fn encode<C: DoorCodec>(
    codec: &mut C,
    items: Fifo<Item<C::Control>>,
    out: &mut Out<'_, C::Control>,
) {
    for item in items {
        match item {
            Item::Shared(frame) => codec.shared(&frame, out),
            Item::Own(json) => codec.own(json, out),
            Item::Wire(bytes) => out.push(bytes),
            Item::Subscribed(start) => codec.subscribed(&start.0, &start.1),
            Item::Control(control) => codec.control(control, out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::door::codec::{Heartbeat, NoControl};
    use crate::door::outbox::Overflow;
    use crate::metrics::ServerStats;
    use switchboard_core::ClientSink;
    use switchboard_proto::Outgoing;

    /// Frames as `<json>|`, own frames as `own:<json>|`, a heartbeat that wants an answer.
    struct Test;

    impl DoorCodec for Test {
        type Control = NoControl;
        fn shared(&mut self, frame: &Outgoing, out: &mut Out<'_, Self::Control>) {
            out.push(frame.json().clone());
            out.push(Bytes::from_static(b"|"));
        }
        fn own(&mut self, json: Bytes, out: &mut Out<'_, Self::Control>) {
            out.write(|b| {
                b.extend_from_slice(b"own:");
                b.extend_from_slice(&json);
                b.extend_from_slice(b"|");
            });
        }
        fn heartbeat(&mut self) -> Option<Heartbeat> {
            Some(Heartbeat {
                bytes: Bytes::from_static(b"ping|"),
                expects_answer: true,
            })
        }
        fn goodbye(&mut self, reason: &Disconnect, out: &mut Out<'_, Self::Control>) {
            out.write(|b| b.extend_from_slice(format!("bye:{}|", reason.code).as_bytes()));
        }
    }

    fn machine(limit: usize, framing: Framing) -> Machine<Test> {
        let outbox = Arc::new(Outbox::new(
            limit,
            Overflow::Disconnect,
            Arc::new(ServerStats::default()),
        ));
        Machine::new(Test, outbox, framing)
    }

    fn frame(text: &'static str) -> Arc<Outgoing> {
        Arc::new(Outgoing::new(Bytes::from_static(text.as_bytes())))
    }

    fn bye(reason: Disconnect) -> String {
        format!("bye:{}|", reason.code)
    }

    /// Writes everything the machine offers, as a socket that takes all would.
    fn write_all(m: &mut Machine<Test>) -> String {
        let mut text = String::new();
        let mut slices = [IoSlice::new(&[]); 64];
        let n = m.io_slices(&mut slices);
        let mut len = 0;
        for slice in &slices[..n] {
            text.push_str(std::str::from_utf8(slice).unwrap());
            len += slice.len();
        }
        m.written(len);
        text
    }

    /// Drives the machine at `now` until it waits or closes; returns what it wrote.
    fn run(m: &mut Machine<Test>, now: Instant) -> (String, Output) {
        let mut text = String::new();
        loop {
            match m.poll_output(|| now) {
                Output::Write => text.push_str(&write_all(m)),
                other => return (text, other),
            }
        }
    }

    #[test]
    fn frames_are_written_in_queue_order_then_it_waits() {
        let t0 = Instant::now();
        let mut m = machine(1000, Framing::Plain);
        assert_eq!(run(&mut m, t0), (String::new(), Output::Wait(None)));
        m.outbox().send(&frame("a"));
        m.outbox().push_own(Bytes::from_static(b"b"));
        m.outbox().push_wire(Bytes::from_static(b"raw|"));
        assert_eq!(run(&mut m, t0), ("a|own:b|raw|".into(), Output::Wait(None)));
    }

    #[test]
    fn a_partial_write_resumes_where_it_stopped() {
        let t0 = Instant::now();
        let mut m = machine(1000, Framing::Plain);
        m.outbox().send(&frame("hello"));
        assert_eq!(m.poll_output(|| t0), Output::Write);
        m.written(3);
        assert_eq!(m.poll_output(|| t0), Output::Write);
        assert_eq!(write_all(&mut m), "lo|");
        assert_eq!(m.poll_output(|| t0), Output::Wait(None));
    }

    #[test]
    fn a_heartbeat_is_sent_and_an_unanswered_one_closes() {
        let t0 = Instant::now();
        let mut m = machine(1000, Framing::Plain);
        m.outbox().heartbeat();
        assert_eq!(run(&mut m, t0), ("ping|".into(), Output::Wait(None)));
        m.client_activity();
        m.outbox().heartbeat();
        assert_eq!(
            run(&mut m, t0),
            ("ping|".into(), Output::Wait(None)),
            "answered"
        );
        m.outbox().heartbeat();
        let (text, output) = run(&mut m, t0);
        assert_eq!(text, bye(Disconnect::NO_PONG));
        assert_eq!(output, Output::Close(Disconnect::NO_PONG));
    }

    #[test]
    fn a_close_sends_what_was_queued_then_the_goodbye() {
        let t0 = Instant::now();
        let mut m = machine(1000, Framing::Plain);
        m.outbox().send(&frame("last"));
        m.outbox().disconnect(Disconnect::BY_SERVER);
        assert!(!m.outbox().send(&frame("late")), "nothing after the close");
        let (text, output) = run(&mut m, t0);
        assert_eq!(text, format!("last|{}", bye(Disconnect::BY_SERVER)));
        assert_eq!(output, Output::Close(Disconnect::BY_SERVER));
    }

    #[test]
    fn a_driver_close_may_bring_its_own_goodbye() {
        let t0 = Instant::now();
        let mut m = machine(1000, Framing::Plain);
        m.outbox().push_own(Bytes::from_static(b"x"));
        m.close(
            Disconnect::CLIENT_CLOSED,
            Some(vec![Bytes::from_static(b"close-frame")]),
            t0,
        );
        m.close(Disconnect::SHUTDOWN, None, t0);
        let (text, output) = run(&mut m, t0);
        assert_eq!(text, "own:x|close-frame");
        assert_eq!(output, Output::Close(Disconnect::CLIENT_CLOSED));
    }

    #[test]
    fn a_reader_that_never_reads_is_dropped_after_the_grace_period() {
        let t0 = Instant::now();
        let mut m = machine(1000, Framing::Plain);
        m.outbox().send(&frame("stuck"));
        assert_eq!(m.poll_output(|| t0), Output::Write);
        m.outbox().disconnect(Disconnect::SHUTDOWN);
        // Nothing is written: the socket is full.
        assert_eq!(m.poll_output(|| t0), Output::Write);
        m.written(6);
        assert_eq!(m.poll_output(|| t0), Output::Write, "the goodbye waits");
        let later = t0 + CLOSE_GRACE;
        assert_eq!(m.poll_output(|| later), Output::Close(Disconnect::SHUTDOWN));
    }

    #[test]
    fn a_close_from_elsewhere_starts_the_grace_period_while_writes_are_stuck() {
        let t0 = Instant::now();
        let mut m = machine(1000, Framing::Plain);
        m.outbox().send(&frame("stuck"));
        assert_eq!(m.poll_output(|| t0), Output::Write);
        m.outbox().disconnect(Disconnect::SLOW_CONSUMER);
        assert_eq!(m.poll_output(|| t0), Output::Write, "nothing was written");
        assert_eq!(m.deadline(), Some(t0 + CLOSE_GRACE));
        assert_eq!(
            m.poll_output(|| t0 + CLOSE_GRACE),
            Output::Close(Disconnect::SLOW_CONSUMER)
        );
    }

    #[test]
    fn a_slow_consumer_loses_its_backlog_and_is_told_why() {
        let t0 = Instant::now();
        let mut m = machine(10, Framing::Plain);
        for _ in 0..5 {
            m.outbox().send(&frame("1234"));
        }
        let (text, output) = run(&mut m, t0);
        assert_eq!(text, bye(Disconnect::SLOW_CONSUMER));
        assert_eq!(output, Output::Close(Disconnect::SLOW_CONSUMER));
    }

    #[test]
    fn the_connect_step_is_bounded() {
        let t0 = Instant::now();
        let mut m = machine(1000, Framing::Plain);
        m.expect_connect(t0 + Duration::from_secs(10));
        assert_eq!(
            m.poll_output(|| t0),
            Output::Wait(Some(t0 + Duration::from_secs(10)))
        );
        let (text, output) = run(&mut m, t0 + Duration::from_secs(10));
        assert_eq!(text, bye(Disconnect::CONNECT_TIMEOUT));
        assert_eq!(output, Output::Close(Disconnect::CONNECT_TIMEOUT));

        let mut m = machine(1000, Framing::Plain);
        m.expect_connect(t0 + Duration::from_secs(10));
        m.connected();
        assert_eq!(
            m.poll_output(|| t0 + Duration::from_secs(60)),
            Output::Wait(None)
        );
    }

    #[test]
    fn chunked_framing_wraps_each_batch_and_ends_the_body() {
        let t0 = Instant::now();
        let mut m = machine(1000, Framing::Chunked);
        m.outbox().send(&frame("ab"));
        m.outbox().send(&frame("c"));
        assert_eq!(run(&mut m, t0).0, "5\r\nab|c|\r\n");
        m.outbox().disconnect(Disconnect::SHUTDOWN);
        assert_eq!(
            run(&mut m, t0).0,
            "10\r\nbye:unavailable|\r\n0\r\n\r\n",
            "16 bytes of goodbye, then the last chunk"
        );
    }

    #[test]
    fn a_batch_is_bounded_and_the_rest_stays_queued() {
        let t0 = Instant::now();
        let mut m = machine(10 * BATCH_BYTES, Framing::Plain);
        let big: &'static str = Box::leak("x".repeat(BATCH_BYTES / 2).into_boxed_str());
        for _ in 0..4 {
            m.outbox().send(&frame(big));
        }
        assert_eq!(m.poll_output(|| t0), Output::Write);
        let first = write_all(&mut m);
        assert_eq!(first.len(), 2 * (big.len() + 1), "two frames per batch");
        assert!(!m.outbox().is_empty());
        assert_eq!(run(&mut m, t0).0.len(), 2 * (big.len() + 1));
    }
}
