//! A door's question before it upgrades or opens a stream: may this connection be held?

use axum::http::Extensions;
use axum::http::HeaderMap;

use super::ApiError;
use crate::admission::{PeerAddr, Permit};
use crate::state::AppState;

/// A place for the connection asking with these headers and extensions (the connection
/// limits, spec §8), or the refusal to answer it with (503 `unavailable`, 429
/// `rate_limited`) before any upgrade.
pub(crate) fn admit(
    state: &AppState,
    headers: &HeaderMap,
    extensions: &Extensions,
) -> Result<Permit, ApiError> {
    let admission = &state.admission;
    let ip = admission.client_ip(extensions.get::<PeerAddr>().copied(), headers);
    admission.admit(ip).map_err(|refused| {
        state.count_error();
        ApiError::from(refused)
    })
}

/// Whether `user` may open one more connection (`max_connections_per_user`); the refusal
/// otherwise.
pub(crate) fn admit_user(state: &AppState, user: &str) -> Result<(), ApiError> {
    let existing = state.hub.user_connection_count(user);
    state
        .admission
        .admit_user(user, existing)
        .map_err(|refused| {
            state.count_error();
            ApiError::from(refused)
        })
}
