//! The Pusher door's state: what every door shares, the apps, and the sessions of pusher-js's
//! HTTP fallbacks.

use std::sync::Arc;

use super::Pusher;
use super::http_sessions::HttpSessions;
use crate::state::AppState;

pub(crate) struct PusherDoor {
    pub shared: Arc<AppState>,
    pub apps: Arc<Pusher>,
    /// Connections over pusher-js's HTTP fallback transports.
    pub http_sessions: HttpSessions,
}
