//! The response body of a streaming door: it hands hyper what the stream's outbox holds, one
//! chunk at a time, only as fast as hyper can write. When the stream ends, however it ends,
//! the session leaves the hub.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::codec::StreamCodec;
use super::sessions::SessionCell;
use crate::ConnectionKill;
use crate::app::AppState;
use crate::outbox::Outbox;

/// How long a closing stream may take to hand over its last frames before its connection is
/// dropped (a client that reads nothing at all).
const CLOSE_GRACE: Duration = Duration::from_secs(5);

pub struct StreamBody {
    state: Arc<AppState>,
    outbox: Arc<Outbox<StreamCodec>>,
    pending: VecDeque<Bytes>,
    session_id: String,
    cell: Arc<SessionCell>,
    kill: Option<ConnectionKill>,
    /// Set when the body is gone, so a pending kill leaves a reused connection alone.
    finished: Arc<AtomicBool>,
    close_armed: bool,
    ended: bool,
}

impl StreamBody {
    pub fn new(
        state: Arc<AppState>,
        outbox: Arc<Outbox<StreamCodec>>,
        session_id: String,
        cell: Arc<SessionCell>,
        kill: Option<ConnectionKill>,
    ) -> Self {
        StreamBody {
            state,
            outbox,
            pending: VecDeque::new(),
            session_id,
            cell,
            kill,
            finished: Arc::new(AtomicBool::new(false)),
            close_armed: false,
            ended: false,
        }
    }

    /// A close began: if the client does not take the last frames in time, drop its
    /// connection (hyper only polls a body when it can write).
    fn arm_close(&mut self) {
        self.close_armed = true;
        let (Some(kill), finished) = (self.kill.clone(), self.finished.clone()) else {
            return;
        };
        tokio::spawn(async move {
            tokio::time::sleep(CLOSE_GRACE).await;
            if !finished.load(Ordering::Acquire) {
                kill.kill();
            }
        });
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
                if !this.close_armed {
                    this.arm_close();
                }
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
