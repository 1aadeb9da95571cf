//! When a node of a distributed engine counts as alive: it beats a few times per `node_ttl`
//! (so one missed beat does not make it dead), stamped with its clock.

use std::time::Duration;

pub(crate) fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub(crate) fn beat_interval(node_ttl: Duration) -> Duration {
    (node_ttl / 4).max(Duration::from_millis(100))
}
