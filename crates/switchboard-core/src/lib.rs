//! The hub of Switchboard: channels, namespaces, history streams with positions, presence,
//! permissions, and the per-client session logic every door shares. No sockets here: doors
//! hand frames in and receive frames through a [`ClientSink`]; storage and cross-node
//! delivery sit behind the [`Engine`] trait.

pub mod auth;
pub mod clock;
pub mod config;
pub mod engine;
pub mod hub;
pub mod media_link;
pub mod pattern;
pub mod rooms;
pub mod session;
pub mod sink;
mod small_map;
#[cfg(test)]
mod testing;

pub use auth::{AuthError, Authenticator, Claims};
pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{HubConfig, NamespaceConfig};
pub use engine::{
    Engine, EngineError, MemoryEngine, Publication, RoomEvent, RoomPeer, StreamPosition,
};
pub use hub::{ClientId, Hub, HubStats};
pub use media_link::{MediaLink, MediaRefusal, SFU_PEER};
pub use session::Session;
pub use sink::ClientSink;

/// Seconds since the Unix epoch (token expiry and history TTL use wall-clock seconds).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
