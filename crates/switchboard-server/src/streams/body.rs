//! The hyper-served driver of a stream (`/sse`, `/stream` over TLS, or a later request of a
//! kept-alive connection): a response body that hands hyper what the stream's machine offers,
//! only as fast as hyper writes. When the body is dropped, however the stream ended, the
//! stream's registration goes with it and its session leaves the hub.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::stream::OpenStream;
use crate::door::Deadline;
use crate::door::body::poll_chunk;

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
        poll_chunk(&mut this.stream.machine, &mut this.deadline, cx)
            .map(|chunk| chunk.map(|bytes| Ok(Frame::data(bytes))))
    }

    fn is_end_stream(&self) -> bool {
        false
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
