//! The native protocol (spec §3) over WebSocket: before the session exists the only
//! acceptable frame is `connect`; afterwards every frame goes to the [`Session`].

use std::sync::Arc;

use bytes::Bytes;
use switchboard_core::{AuthError, Claims, ClientSink, Session};
use switchboard_proto::command::request_id;
use switchboard_proto::{Command, Disconnect, ErrorCode, encode, parse_request, ws};

use super::codec::WsCodec;
use super::conn::{BoxFuture, Protocol, ProtocolOutbox, Refusal};
use crate::door::{NoControl, Outbox};
use crate::state::AppState;

pub(crate) struct Native {
    /// Boxed, like every other part of the connection that is not needed while idle, to
    /// keep the task small.
    session: Option<Box<Session>>,
}

impl Native {
    /// A connection whose client proved who it is at the upgrade (`claims`), or must do so
    /// with a `connect` frame (`None`).
    pub(crate) fn new(
        state: &Arc<AppState>,
        outbox: &Arc<Outbox<NoControl>>,
        claims: Option<Claims>,
    ) -> Native {
        let mut native = Native { session: None };
        if let Some(claims) = claims {
            native.start_session(state, outbox, claims, None);
        }
        native
    }

    /// Before the session exists the only acceptable frame is `connect` with a valid token.
    fn on_first_frame(
        &mut self,
        state: &Arc<AppState>,
        outbox: &Arc<Outbox<NoControl>>,
        payload: &[u8],
    ) -> Option<Refusal> {
        let request = match parse_request(payload) {
            Ok(r) => r,
            Err(e) => {
                let frame = encode::error(e.id, e.code, &e.message);
                return Some(refuse(state, frame, Disconnect::UNAUTHORIZED));
            }
        };
        let Command::Connect { token } = request.command else {
            let frame = encode::error(
                request.id,
                ErrorCode::Unauthorized,
                "the first frame must be {\"type\":\"connect\",\"token\":...}",
            );
            return Some(refuse(state, frame, Disconnect::UNAUTHORIZED));
        };
        match state.auth.verify(&token) {
            Ok(claims) => {
                let existing = state.hub.user_connection_count(&claims.user);
                if let Err(refused) = state.admission.admit_user(&claims.user, existing) {
                    let frame = encode::error(request.id, refused.code, &refused.message);
                    return Some(refuse(state, frame, Disconnect::TOO_MANY_CONNECTIONS));
                }
                self.start_session(state, outbox, claims, request.id);
                None
            }
            Err(AuthError::Expired) => {
                let frame = encode::error(request.id, ErrorCode::TokenExpired, "token expired");
                Some(refuse(state, frame, Disconnect::TOKEN_EXPIRED))
            }
            Err(AuthError::Invalid(why)) => {
                let frame = encode::error(request.id, ErrorCode::Unauthorized, &why);
                Some(refuse(state, frame, Disconnect::UNAUTHORIZED))
            }
        }
    }

    fn start_session(
        &mut self,
        state: &Arc<AppState>,
        outbox: &Arc<Outbox<NoControl>>,
        claims: Claims,
        connect_id: Option<u64>,
    ) {
        let sink: Arc<dyn ClientSink> = outbox.clone();
        let session = Session::open(state.hub.clone(), state.auth.clone(), claims, sink);
        let ping = state.limits.ping_interval.as_secs();
        outbox.push_own(session.connected_frame(connect_id, ping, None));
        self.session = Some(Box::new(session));
    }
}

impl Protocol for Native {
    type Codec = WsCodec;

    fn on_message<'a>(
        &'a mut self,
        state: &'a Arc<AppState>,
        outbox: &'a Arc<ProtocolOutbox<Self>>,
        payload: &'a [u8],
    ) -> BoxFuture<'a, Option<Refusal>> {
        Box::pin(async move {
            let Some(session) = self.session.as_mut() else {
                return self.on_first_frame(state, outbox, payload);
            };
            if let Some(answer) = session.handle_frame(payload).await {
                if answer.is_error() {
                    state.count_error();
                }
                outbox.push_own(answer.into_frame());
            }
            None
        })
    }

    fn too_large(&self, limit: usize) -> Bytes {
        encode::frame_too_large(None, limit)
    }

    fn rate_limited(&self, payload: &[u8], rate: u32) -> Bytes {
        encode::rate_limited(request_id(payload), rate)
    }

    fn is_connected(&self) -> bool {
        self.session.is_some()
    }

    fn close(&mut self) -> BoxFuture<'static> {
        let session = self.session.take();
        Box::pin(async move {
            if let Some(session) = session {
                session.close().await;
            }
        })
    }
}

/// An error frame, then a close with the reason's code (no `disconnect` frame: the client
/// never got past its connect step).
fn refuse(state: &AppState, error: Bytes, reason: Disconnect) -> Refusal {
    state.count_error();
    Refusal {
        reason,
        goodbye: vec![
            ws::encode_text(&error),
            ws::encode_close(reason.ws_close, reason.message),
        ],
    }
}
