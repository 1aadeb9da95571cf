//! Engines behind the hub's `Engine` seam beyond plain RAM: [`durable::RedbStore`], the
//! crash-safe store that makes the memory engine's history survive restarts (`[engine]
//! data_dir`), [`redis::RedisEngine`] and [`nats::NatsEngine`], which let several nodes
//! share one Redis or one NATS.

pub mod durable;
#[cfg(any(feature = "redis", feature = "nats"))]
mod liveness;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(any(feature = "redis", feature = "nats"))]
mod order;
#[cfg(any(feature = "redis", feature = "nats"))]
mod patience;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(any(feature = "redis", feature = "nats"))]
mod wire;

/// Fuzzing entry point (`fuzz/`): bytes as they could come back from Redis, NATS or a pub/sub
/// message of another node, through every decoder of the distributed engines.
#[cfg(any(feature = "redis", feature = "nats"))]
#[doc(hidden)]
pub fn fuzz_engine_records(data: &[u8]) {
    wire::fuzz_records(data);
    #[cfg(feature = "redis")]
    redis::fuzz_records(data);
    #[cfg(feature = "nats")]
    nats::fuzz_records(data);
}
