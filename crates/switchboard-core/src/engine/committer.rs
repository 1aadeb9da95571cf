//! Group commit for the memory engine's durable store. Every change goes through one thread
//! that writes all the changes waiting for it in one transaction: concurrent publishes share
//! one fsync, and no runtime thread ever waits on the disk.

use std::sync::Arc;
use std::sync::mpsc;

use tokio::sync::oneshot;

use super::EngineError;
use super::store::{StoreChange, StreamStore};

/// Most changes written in one transaction.
const MAX_BATCH: usize = 4096;

type Done = oneshot::Sender<Result<(), EngineError>>;

pub(crate) struct Committer {
    jobs: mpsc::Sender<(StoreChange, Option<Done>)>,
}

impl Committer {
    /// Starts the writer thread; it ends when the committer is dropped.
    pub(super) fn start(store: Arc<dyn StreamStore>) -> Committer {
        let (jobs, queue) = mpsc::channel();
        std::thread::Builder::new()
            .name("switchboard-commit".into())
            .spawn(move || run(store, queue))
            .expect("the commit thread starts");
        Committer { jobs }
    }

    /// Queues `change`; the answer comes once it is durable (or could not be made so).
    pub(super) fn write(&self, change: StoreChange) -> oneshot::Receiver<Result<(), EngineError>> {
        let (done, answer) = oneshot::channel();
        // A send fails only if the thread is gone; the dropped sender then answers `Err`.
        let _ = self.jobs.send((change, Some(done)));
        answer
    }

    /// Queues `change` for upkeep nobody waits for; it keeps its place in the order.
    pub(super) fn write_later(&self, change: StoreChange) {
        let _ = self.jobs.send((change, None));
    }
}

fn run(store: Arc<dyn StreamStore>, queue: mpsc::Receiver<(StoreChange, Option<Done>)>) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let (changes, waiting): (Vec<StoreChange>, Vec<Option<Done>>) = batch.into_iter().unzip();
        let result = store.write(&changes);
        for done in waiting.into_iter().flatten() {
            let _ = done.send(result.clone());
        }
    }
}
