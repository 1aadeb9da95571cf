//! Engines behind the hub's `Engine` seam beyond plain RAM. Now: [`durable::RedbStore`], the
//! crash-safe store that makes the memory engine's history survive restarts (`[engine]
//! data_dir`). Redis and NATS engines come next.

pub mod durable;
