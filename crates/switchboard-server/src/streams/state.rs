//! The one-way doors' state: what every door shares, plus the sessions of this node's streams
//! and the key that signs cursors.

use std::sync::Arc;

use super::cursor::CursorKey;
use super::sessions::Sessions;
use crate::state::AppState;

pub(crate) struct StreamsState {
    pub shared: Arc<AppState>,
    /// Live sessions of this node's streams, for `POST /session/<session>`.
    pub sessions: Sessions,
    /// Signs the cursors of the one-way doors.
    pub cursor_key: Arc<CursorKey>,
}
