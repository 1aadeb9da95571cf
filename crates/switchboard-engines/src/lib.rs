//! Engines behind the hub's `Engine` seam beyond plain RAM: [`durable::RedbStore`], the
//! crash-safe store that makes the memory engine's history survive restarts (`[engine]
//! data_dir`), and [`redis::RedisEngine`], which lets several nodes share one Redis.

pub mod durable;
#[cfg(feature = "redis")]
pub mod redis;
