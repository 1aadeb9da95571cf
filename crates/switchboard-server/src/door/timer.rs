//! The one timer a door driver needs: the machine's next deadline.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::time::Sleep;

/// A driver's timer: allocated only while the machine has a deadline (a connect
/// step or a close), so an idle connection holds none.
#[derive(Default)]
pub(crate) struct Deadline(Option<(Instant, Pin<Box<Sleep>>)>);

impl Deadline {
    /// Follows the machine's deadline.
    pub(crate) fn set(&mut self, at: Option<Instant>) {
        match (at, &mut self.0) {
            (None, _) => self.0 = None,
            (Some(at), Some((current, _))) if *current == at => {}
            (Some(at), _) => {
                let sleep = tokio::time::sleep_until(tokio::time::Instant::from_std(at));
                self.0 = Some((at, Box::pin(sleep)));
            }
        }
    }

    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match &mut self.0 {
            Some((_, sleep)) => sleep.as_mut().poll(cx),
            None => Poll::Pending,
        }
    }
}
