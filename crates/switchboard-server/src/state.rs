//! What every door and the server API share: the hub, token verification, counters, limits.
//! A leaf: it knows no door. A door that needs more (the Pusher apps, the streams' sessions)
//! keeps it in a state of its own that holds this one.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use switchboard_core::{Authenticator, Hub};

use crate::admission::Admission;
use crate::config::LimitsConfig;
use crate::metrics::ServerStats;

pub(crate) struct AppState {
    pub hub: Arc<Hub>,
    pub auth: Arc<dyn Authenticator>,
    pub stats: Arc<ServerStats>,
    pub limits: LimitsConfig,
    pub api_key: Option<String>,
    pub shutting_down: AtomicBool,
    /// Browser origins besides the server's own that may use the browser-facing doors.
    pub allowed_origins: Vec<String>,
    /// Who may open a connection: the connection limits of this node.
    pub admission: Arc<Admission>,
    /// The media plane's counters (spec §9), for `/metrics`.
    pub media_stats: Arc<switchboard_rtc::media::MediaStats>,
}

impl AppState {
    pub(crate) fn count_error(&self) {
        self.stats.errors.fetch_add(1, Ordering::Relaxed);
    }
}
