//! The memory engine's durable history in redb, an embedded crash-safe store (every commit is
//! durable before it returns). Two tables: each stream's position, and its retained messages
//! keyed by `(channel, offset)`, so trimming a stream is one range deletion.

use std::path::Path;

use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use switchboard_core::EngineError;
use switchboard_core::engine::store::{StoreChange, StoredStream, StreamStore};

/// channel → (epoch, offset of the last message, Unix seconds of the last publish).
const STREAMS: TableDefinition<&str, (&str, u64, u64)> = TableDefinition::new("streams");
/// (channel, offset) → (Unix seconds published, data).
const MESSAGES: TableDefinition<(&str, u64), (u64, &[u8])> = TableDefinition::new("messages");

pub struct RedbStore {
    db: Database,
}

fn failed(e: impl std::fmt::Display) -> EngineError {
    EngineError::Unavailable(format!("durable store: {e}"))
}

impl RedbStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create data_dir {}: {e}", dir.display()))?;
        let path = dir.join("switchboard.redb");
        let mut db =
            Database::create(&path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        // redb reuses freed pages but keeps the file as large as its furthest live page;
        // compacting moves pages down to shrink it, and needs the exclusive access only
        // start-up has.
        db.compact()
            .map_err(|e| format!("cannot compact {}: {e}", path.display()))?;
        // Create both tables up front, so reads of an empty store find them.
        let txn = db.begin_write().map_err(|e| e.to_string())?;
        txn.open_table(STREAMS).map_err(|e| e.to_string())?;
        txn.open_table(MESSAGES).map_err(|e| e.to_string())?;
        txn.commit().map_err(|e| e.to_string())?;
        Ok(RedbStore { db })
    }
}

impl StreamStore for RedbStore {
    fn write(&self, changes: &[StoreChange]) -> Result<(), EngineError> {
        let txn = self.db.begin_write().map_err(failed)?;
        {
            let mut streams = txn.open_table(STREAMS).map_err(failed)?;
            let mut messages = txn.open_table(MESSAGES).map_err(failed)?;
            for change in changes {
                match change {
                    StoreChange::Append {
                        channel,
                        epoch,
                        published,
                        offset,
                        data,
                        keep_from,
                    } => {
                        let channel = channel.as_str();
                        streams
                            .insert(channel, (&**epoch, *offset, *published))
                            .map_err(failed)?;
                        if keep_from <= offset {
                            messages
                                .insert((channel, *offset), (*published, &data[..]))
                                .map_err(failed)?;
                        }
                        messages
                            .retain_in((channel, 0)..(channel, *keep_from), |_, _| false)
                            .map_err(failed)?;
                    }
                    StoreChange::Trim { channel, keep_from } => {
                        let channel = channel.as_str();
                        messages
                            .retain_in((channel, 0)..(channel, *keep_from), |_, _| false)
                            .map_err(failed)?;
                    }
                    StoreChange::Remove { channel } => {
                        let channel = channel.as_str();
                        streams.remove(channel).map_err(failed)?;
                        messages
                            .retain_in((channel, 0)..=(channel, u64::MAX), |_, _| false)
                            .map_err(failed)?;
                    }
                }
            }
        }
        // One commit, one fsync, for every change in the batch.
        txn.commit().map_err(failed)
    }

    fn load(&self) -> Result<Vec<StoredStream>, EngineError> {
        let txn = self.db.begin_read().map_err(failed)?;
        let streams = txn.open_table(STREAMS).map_err(failed)?;
        let messages = txn.open_table(MESSAGES).map_err(failed)?;
        let mut loaded = Vec::new();
        for entry in streams.iter().map_err(failed)? {
            let (channel, meta) = entry.map_err(failed)?;
            let channel = channel.value().to_owned();
            let (epoch, top, last_publish) = meta.value();
            let mut history = Vec::new();
            let range = messages
                .range((channel.as_str(), 0)..=(channel.as_str(), u64::MAX))
                .map_err(failed)?;
            for message in range {
                let (key, value) = message.map_err(failed)?;
                let (_, offset) = key.value();
                let (published, data) = value.value();
                history.push((published, offset, Bytes::copy_from_slice(data)));
            }
            loaded.push(StoredStream {
                channel,
                epoch: epoch.to_owned(),
                top,
                last_publish,
                history,
            });
        }
        Ok(loaded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append(
        store: &RedbStore,
        channel: &str,
        (published, offset, data): (u64, u64, &Bytes),
        keep_from: u64,
    ) {
        let change = StoreChange::Append {
            channel: channel.into(),
            epoch: "ep".into(),
            published,
            offset,
            data: data.clone(),
            keep_from,
        };
        store.write(&[change]).unwrap();
    }

    fn temp_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "sb-redb-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn appends_trims_and_reloads() {
        let dir = temp_dir();
        {
            let store = RedbStore::open(&dir).unwrap();
            for offset in 1..=5 {
                let data = Bytes::from(offset.to_string());
                append(&store, "c", (100 + offset, offset, &data), 1);
            }
            append(&store, "other", (7, 1, &Bytes::from("1")), 1);
            let trim = StoreChange::Trim {
                channel: "c".into(),
                keep_from: 3,
            };
            let remove = StoreChange::Remove {
                channel: "other".into(),
            };
            store.write(&[trim, remove]).unwrap();
        }
        let store = RedbStore::open(&dir).unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded.len(), 1);
        let c = &loaded[0];
        assert_eq!(
            (c.channel.as_str(), c.epoch.as_str(), c.top, c.last_publish),
            ("c", "ep", 5, 105)
        );
        let offsets: Vec<u64> = c.history.iter().map(|(_, o, _)| *o).collect();
        assert_eq!(offsets, vec![3, 4, 5]);
        assert_eq!(c.history[2].2, Bytes::from("5"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_restart_gives_back_the_space_of_removed_streams() {
        let dir = temp_dir().with_extension("compact");
        let file = dir.join("switchboard.redb");
        let blob = Bytes::from(vec![b'x'; 16 * 1024]);
        {
            let store = RedbStore::open(&dir).unwrap();
            // A big stream, then a small one written after it (so it sits further in the
            // file), then the big one goes: its pages are free but not at the end.
            for offset in 1..=500 {
                append(&store, "big", (1, offset, &blob), 1);
            }
            for offset in 1..=20 {
                append(&store, "small", (1, offset, &blob), 1);
            }
            let remove = StoreChange::Remove {
                channel: "big".into(),
            };
            store.write(&[remove]).unwrap();
        }
        let before = std::fs::metadata(&file).unwrap().len();
        let store = RedbStore::open(&dir).unwrap();
        let after = std::fs::metadata(&file).unwrap().len();
        assert_eq!(store.load().unwrap()[0].history.len(), 20);
        assert!(
            after < before / 4,
            "{before} bytes before the restart, {after} after"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
