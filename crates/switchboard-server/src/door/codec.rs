//! How a door turns what its queue holds into its own wire bytes. A codec belongs to one
//! connection and is only touched by whoever drains that connection (its [`Machine`]), after
//! the frames left the queue: per-client bytes (a cursor, an SSE `id:`, a Pusher envelope)
//! are made there, outside every hub, engine and queue lock.
//!
//! [`Machine`]: super::Machine

use bytes::{Bytes, BytesMut};
use switchboard_core::StreamPosition;

use super::fifo::Fifo;
use super::outbox::Item;
use switchboard_proto::{Disconnect, Outgoing};

pub(crate) trait DoorCodec: Send + 'static {
    /// A change of this codec's own per-connection state that must take effect in queue
    /// order, between the frames around it (Pusher's presence views). Doors without one use
    /// [`NoControl`].
    type Control: Send + 'static;

    /// A frame the hub queued, shared by every recipient. Appends nothing when this door does
    /// not show it to this client.
    fn shared(&mut self, frame: &Outgoing, out: &mut Out<'_, Self::Control>);

    /// A frame this door's own protocol made for this client alone (as JSON): a reply, an
    /// error, `connected`.
    fn own(&mut self, json: Bytes, out: &mut Out<'_, Self::Control>);

    /// A subscription of this client starts at `position` (queued under the channel's lock,
    /// ahead of the channel's first message).
    fn subscribed(&mut self, _channel: &str, _position: &StreamPosition) {}

    /// Applies a [`Self::Control`].
    fn control(&mut self, _control: Self::Control, _out: &mut Out<'_, Self::Control>) {}

    /// What keeps this connection alive on the server's ping interval, if anything.
    fn heartbeat(&mut self) -> Option<Heartbeat>;

    /// The last bytes before closing: a `disconnect` frame and, where the door has one, its
    /// own close.
    fn goodbye(&mut self, reason: &Disconnect, out: &mut Out<'_, Self::Control>);
}

/// The control type of a door that has none.
pub(crate) enum NoControl {}

/// A keep-alive: its bytes, and whether the client must answer it before the next one
/// (a WebSocket ping) or it counts as gone.
pub(crate) struct Heartbeat {
    pub bytes: Bytes,
    pub expects_answer: bool,
}

/// Where a codec writes: a list of buffers to send in order, plus one scratch buffer per batch
/// that small per-client parts are cut from, so a batch of frames costs one allocation
/// however many cursors it carries.
pub(crate) struct Out<'a, K> {
    list: &'a mut Fifo<Item<K>>,
    scratch: BytesMut,
}

impl<'a, K> Out<'a, K> {
    pub(crate) fn new(list: &'a mut Fifo<Item<K>>) -> Self {
        Out {
            list,
            scratch: BytesMut::new(),
        }
    }

    /// Sends `bytes` as they are (shared, not copied).
    pub(crate) fn push(&mut self, bytes: Bytes) {
        if !bytes.is_empty() {
            self.list.push_back(Item::Wire(bytes));
        }
    }

    /// Sends bytes made for this client: `write` fills them in, into the batch's buffer.
    pub(crate) fn write(&mut self, write: impl FnOnce(&mut BytesMut)) {
        let bytes = self.make(write);
        self.push(bytes);
    }

    /// Makes bytes for this client in the batch's buffer without sending them (a part that
    /// goes into more than one place, like a cursor).
    pub(crate) fn make(&mut self, write: impl FnOnce(&mut BytesMut)) -> Bytes {
        if self.scratch.capacity() - self.scratch.len() < 256 {
            self.scratch.reserve(4096);
        }
        write(&mut self.scratch);
        self.scratch.split().freeze()
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// Runs `f` on a fresh [`Out`] and returns what it sent, concatenated.
    pub(crate) fn written<K>(f: impl FnOnce(&mut Out<'_, K>)) -> String {
        pieces(f)
            .iter()
            .map(|b| String::from_utf8(b.to_vec()).expect("test frames are UTF-8"))
            .collect()
    }

    /// The buffers `f` sent.
    pub(crate) fn pieces<K>(f: impl FnOnce(&mut Out<'_, K>)) -> Vec<Bytes> {
        let mut list = Fifo::new();
        f(&mut Out::new(&mut list));
        list.into_iter()
            .filter_map(|item| match item {
                Item::Wire(bytes) => Some(bytes),
                _ => None,
            })
            .collect()
    }
}
