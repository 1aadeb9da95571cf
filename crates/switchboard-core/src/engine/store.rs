//! Where a memory engine keeps its streams durably. The engine writes through it before a
//! publication is delivered or acknowledged, so an acknowledged message survives a crash, and
//! reads it back at start. Implemented by `switchboard-engines` (redb); without one the memory
//! engine is pure RAM.

use bytes::Bytes;

use super::EngineError;

/// A stream as stored: its position and the history it retains, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredStream {
    pub channel: String,
    pub epoch: String,
    /// Offset of the last publication.
    pub top: u64,
    /// Unix seconds of the last publication.
    pub last_publish: u64,
    /// `(published at, offset, data)`.
    pub history: Vec<(u64, u64, Bytes)>,
}

pub trait StreamStore: Send + Sync {
    /// Records a publication (and the stream's new position), and drops the stream's history
    /// below `keep_from`, in one durable step.
    fn append(
        &self,
        channel: &str,
        epoch: &str,
        published: (u64, u64, &Bytes),
        keep_from: u64,
    ) -> Result<(), EngineError>;

    /// Drops history below `keep_from` (expired by age).
    fn trim(&self, channel: &str, keep_from: u64) -> Result<(), EngineError>;

    /// Forgets a stream entirely (it was idle too long; its next publish starts a new epoch).
    fn remove(&self, channel: &str) -> Result<(), EngineError>;

    /// Everything stored, to restore the engine at start.
    fn load(&self) -> Result<Vec<StoredStream>, EngineError>;
}
