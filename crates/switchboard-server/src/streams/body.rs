//! The response body of a streaming door: it hands hyper what the stream's outbox holds, one
//! chunk at a time, only as fast as hyper can write. When the stream ends, however it ends,
//! the session leaves the hub.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::codec::StreamCodec;
use super::sessions::SessionCell;
use crate::app::AppState;
use crate::outbox::Outbox;

pub struct StreamBody {
    state: Arc<AppState>,
    outbox: Arc<Outbox<StreamCodec>>,
    pending: VecDeque<Bytes>,
    session_id: String,
    cell: Arc<SessionCell>,
    /// Set when the body is gone, so a pending kill leaves a reused connection alone.
    finished: Arc<AtomicBool>,
    ended: bool,
}

impl StreamBody {
    pub fn new(
        state: Arc<AppState>,
        outbox: Arc<Outbox<StreamCodec>>,
        session_id: String,
        cell: Arc<SessionCell>,
    ) -> Self {
        let finished = outbox.codec().finished.clone();
        StreamBody {
            state,
            outbox,
            pending: VecDeque::new(),
            session_id,
            cell,
            finished,
            ended: false,
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
        loop {
            if let Some(chunk) = this.pending.pop_front() {
                this.outbox.written(chunk.len());
                this.state
                    .stats
                    .bytes_written
                    .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                if chunk.is_empty() {
                    continue;
                }
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            if this.ended {
                return Poll::Ready(None);
            }
            let closing = this.outbox.drain_into(&mut this.pending, false);
            if closing.is_some() {
                // Send what is left (the goodbye included), then end.
                this.ended = true;
                continue;
            }
            if !this.pending.is_empty() {
                continue;
            }
            if this.outbox.take_ping_due() {
                this.pending.push_back(this.outbox.codec().heartbeat());
                continue;
            }
            if this.outbox.poll_woken(cx).is_pending() {
                // Nothing to send: give the queue's memory back while idle.
                this.pending = VecDeque::new();
                return Poll::Pending;
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

impl Drop for StreamBody {
    fn drop(&mut self) {
        self.finished.store(true, Ordering::Release);
        self.state.sessions.remove(&self.session_id);
        let cell = self.cell.clone();
        // Leaving the hub is async (the engine may be remote): do it in the background.
        tokio::spawn(async move { cell.close().await });
    }
}
