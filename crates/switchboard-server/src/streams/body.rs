//! The hyper-served driver of a stream (`/sse`, `/stream` over TLS, or a later request of a
//! kept-alive connection): a response body that hands hyper what the stream's machine offers,
//! only as fast as hyper writes. When the body is dropped, however the stream ended, the
//! stream's registration goes with it and its session leaves the hub.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::stream::OpenStream;
use crate::door::{Deadline, Output};

pub(crate) struct StreamBody {
    stream: OpenStream,
    deadline: Deadline,
}

impl StreamBody {
    pub(crate) fn new(stream: OpenStream) -> Self {
        StreamBody {
            stream,
            deadline: Deadline::default(),
        }
    }
}

impl Body for StreamBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let machine = &mut this.stream.machine;
        loop {
            match machine.poll_output(Instant::now()) {
                Output::Write => {
                    if let Some(chunk) = machine.take_chunk() {
                        return Poll::Ready(Some(Ok(Frame::data(chunk))));
                    }
                }
                Output::Close(_) => return Poll::Ready(None),
                Output::Wait(at) => {
                    this.deadline.set(at);
                    let woken = machine.outbox().poll_woken(cx).is_ready();
                    if !woken && this.deadline.poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        false
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
