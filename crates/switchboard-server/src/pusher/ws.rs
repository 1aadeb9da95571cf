//! The Pusher WebSocket door, `GET /app/{key}?protocol=7`: Pusher's connection protocol on the
//! shared WebSocket driver (`ws/conn.rs`), against the same hub as every other door.

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use switchboard_proto::pusher as proto;

use super::codec::{Framing, PusherCodec};
use super::conn::{
    APP_DISABLED, APP_NOT_FOUND, BAD_VERSION, NO_PROTOCOL, PusherConn, UNSUPPORTED_PROTOCOL,
    new_socket_id,
};
use super::door::PusherDoor;
use super::signing;
use crate::door::{Framing as Transfer, Machine, Outbox, Overflow};
use crate::state::AppState;
use crate::ws::conn::{BoxFuture, Protocol, ProtocolOutbox, Refusal};

/// `GET /app/{key}`: the WebSocket upgrade. Refusals (unknown app, bad protocol version)
/// follow Pusher: the upgrade succeeds, then `pusher:error` and a close with the code.
pub(crate) async fn upgrade(
    State(door): State<Arc<PusherDoor>>,
    Path(key): Path<String>,
    mut request: Request,
) -> Response {
    let state = door.shared.clone();
    let ws_key = match crate::ws::check_upgrade(request.headers()) {
        Ok(k) => k,
        Err(response) => return *response,
    };
    if let Some(refusal) = crate::http::check_upgrade_origin(&door.shared, request.headers()) {
        return refusal;
    }
    let permit = match crate::http::admit(&door.shared, request.headers(), request.extensions()) {
        Ok(permit) => permit,
        Err(refusal) => return refusal.into_response(),
    };
    let protocol = signing::parse_query(request.uri().query().unwrap_or(""))
        .into_iter()
        .find(|(k, _)| k == "protocol")
        .map(|(_, v)| v);
    let refusal = match (door.apps.by_key(&key), protocol) {
        (None, _) => Some(APP_NOT_FOUND),
        (Some(app), _) if !app.config.enabled => Some(APP_DISABLED),
        (_, None) => Some(NO_PROTOCOL),
        (_, Some(v)) => match v.parse::<u32>() {
            Err(_) => Some(BAD_VERSION),
            Ok(5..=7) => None,
            Ok(_) => Some(UNSUPPORTED_PROTOCOL),
        },
    };
    let app = door.apps.by_key(&key).cloned();
    crate::ws::accept(&mut request, &ws_key, move |socket, early| {
        let socket_id = new_socket_id();
        let outbox = Arc::new(Outbox::new(
            state.limits.client_queue_bytes,
            Overflow::Disconnect,
            state.stats.clone(),
        ));
        let conn = match (refusal, app) {
            (None, Some(app)) => PusherConn::open(&state, app, socket_id.clone(), &outbox),
            (reason, _) => {
                state.count_error();
                outbox.close(reason.unwrap_or(APP_NOT_FOUND));
                PusherConn::refused()
            }
        };
        let codec = PusherCodec::new(socket_id, Framing::WebSocket);
        let machine = Machine::new(codec, outbox, Transfer::Plain);
        crate::ws::conn::run_protocol(state, permit, socket, early, machine, conn)
    })
}

impl Protocol for PusherConn {
    type Codec = PusherCodec;

    fn on_message<'a>(
        &'a mut self,
        _state: &'a Arc<AppState>,
        outbox: &'a Arc<ProtocolOutbox<Self>>,
        payload: &'a [u8],
    ) -> BoxFuture<'a, Option<Refusal>> {
        Box::pin(async move {
            self.handle(outbox, payload).await;
            None
        })
    }

    fn too_large(&self, limit: usize) -> Bytes {
        proto::error_frame(None, &format!("message larger than {limit} bytes"))
    }

    fn rate_limited(&self, _payload: &[u8], rate: u32) -> Bytes {
        let message = format!("too many messages (at most {rate} a second)");
        proto::error_frame(Some(super::conn::RATE_LIMITED), &message)
    }

    fn is_connected(&self) -> bool {
        // A refused connection is closing already; nothing to wait for.
        true
    }

    fn close(&mut self) -> BoxFuture<'static> {
        Box::pin(std::mem::replace(self, PusherConn::refused()).shut())
    }
}
