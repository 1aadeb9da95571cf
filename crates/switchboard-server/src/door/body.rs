//! The driver step of a machine whose bytes go into an HTTP response body that hyper frames
//! and writes (a stream over TLS or on a kept-alive connection, pusher-js's `xhr_streaming`).

use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;

use super::{Deadline, DoorCodec, Machine, Output};

/// The body's next chunk (`Some`), its end (`None`: the connection closed, its goodbye
/// already handed over), or pending until the outbox wakes the connection or the machine's
/// deadline passes.
pub(crate) fn poll_chunk<C: DoorCodec>(
    machine: &mut Machine<C>,
    deadline: &mut Deadline,
    cx: &mut Context<'_>,
) -> Poll<Option<Bytes>> {
    loop {
        match machine.poll_output(Instant::now) {
            Output::Write => {
                if let Some(chunk) = machine.take_chunk() {
                    return Poll::Ready(Some(chunk));
                }
            }
            Output::Close(_) => return Poll::Ready(None),
            Output::Wait(at) => {
                deadline.set(at);
                let woken = machine.outbox().poll_woken(cx).is_ready();
                if !woken && deadline.poll(cx).is_pending() {
                    return Poll::Pending;
                }
            }
        }
    }
}
