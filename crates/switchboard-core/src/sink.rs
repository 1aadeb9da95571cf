//! How the hub reaches a client, whatever door it came through.

use std::sync::Arc;

use switchboard_proto::{Disconnect, Outgoing};

/// A client's outbound side. `send` must not block: a door queues the frame (bounded in bytes)
/// and its writer sends it; a client whose queue overflows is disconnected by the door.
pub trait ClientSink: Send + Sync {
    /// Queues one frame, shared with every other recipient. Returns `false` when the client
    /// is gone or was just disconnected as a slow consumer.
    fn send(&self, frame: &Arc<Outgoing>) -> bool;

    /// Queues a message replayed by a recovery (`since`): a door may give such a burst more
    /// room than its bound, so a client far behind is not taken for a slow consumer.
    fn send_recovered(&self, frame: &Arc<Outgoing>) -> bool {
        self.send(frame)
    }

    /// Sends a `disconnect` frame with this reason and closes the connection.
    fn disconnect(&self, reason: Disconnect);

    /// Called on the server's ping interval; a door that needs keep-alives sends one here.
    fn heartbeat(&self) {}

    /// A subscription to `channel` starts at `position`: called under the channel's lock,
    /// before its reply and its first message are sent. Doors that track positions per
    /// client (cursors) record it here.
    fn subscribed(&self, _channel: &str, _position: &crate::engine::StreamPosition) {}
}
