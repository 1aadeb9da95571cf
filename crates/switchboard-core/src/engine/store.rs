//! Where a memory engine keeps its streams durably. The engine writes through it before a
//! publication is delivered or acknowledged, so an acknowledged message survives a crash, and
//! reads it back at start. Implemented by `switchboard-engines` (redb); without one the memory
//! engine is pure RAM.

use std::sync::Arc;

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

/// One change to the stored streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreChange {
    /// A publication and the stream's new position; history below `keep_from` goes.
    Append {
        channel: String,
        epoch: Arc<str>,
        /// Unix seconds.
        published: u64,
        offset: u64,
        data: Bytes,
        keep_from: u64,
    },
    /// History below `keep_from` goes (expired by age).
    Trim { channel: String, keep_from: u64 },
    /// The stream goes entirely (it was idle too long; its next publish starts a new epoch).
    Remove { channel: String },
}

pub trait StreamStore: Send + Sync {
    /// Applies `changes` in order as one durable step: all of them or none.
    fn write(&self, changes: &[StoreChange]) -> Result<(), EngineError>;

    /// Everything stored, to restore the engine at start.
    fn load(&self) -> Result<Vec<StoredStream>, EngineError>;
}
