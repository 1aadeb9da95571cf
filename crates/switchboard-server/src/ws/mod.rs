//! The WebSocket door (`GET /ws`). The handshake is answered here; then the connection owns
//! its TCP socket directly (see [`conn`]) so that an idle connection holds no read or write
//! buffer and every frame it sends is bytes shared with all other subscribers.

mod codec;
pub(crate) mod conn;
mod native;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hyper_util::rt::TokioIo;
use switchboard_core::Claims;
use switchboard_proto::ErrorCode;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use self::codec::WsCodec;
use self::native::Native;
use crate::door::socket::Socket;
use crate::door::{Framing, Machine, Outbox, Overflow, Shared};
use crate::http::{
    admit, admit_user, auth_error_response, check_upgrade_origin, error_response, request_token,
};
use crate::state::AppState;
use crate::tls::TlsSocket;

/// Who the upgrade request says the client is.
pub(crate) enum Identity {
    /// Boxed: this value is part of every connection task's state.
    Known(Box<Claims>),
    /// No token: the client must send a `connect` frame first.
    AwaitConnect,
}

/// Checks that `headers` ask for a WebSocket (version 13) upgrade; returns the client's key.
pub(crate) fn check_upgrade(headers: &HeaderMap) -> Result<HeaderValue, Box<Response>> {
    let wants_upgrade = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let connection_upgrade = headers
        .get(header::CONNECTION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        });
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return Err(Box::new(error_response(
            ErrorCode::BadRequest,
            "a WebSocket upgrade request is expected",
        )));
    };
    if !wants_upgrade || !connection_upgrade {
        return Err(Box::new(error_response(
            ErrorCode::BadRequest,
            "a WebSocket upgrade request is expected",
        )));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(|v| v.as_bytes())
        != Some(b"13")
    {
        let mut response = error_response(
            ErrorCode::BadRequest,
            "only WebSocket version 13 is supported",
        );
        response.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return Err(Box::new(response));
    }
    Ok(key)
}

/// Answers 101 to a checked upgrade and, once hyper lets go of the connection, takes the
/// socket back (plain or TLS) and hands it, with any bytes hyper read past the handshake, to
/// `serve`.
pub(crate) fn accept<F, Fut>(request: &mut Request, key: &HeaderValue, serve: F) -> Response
where
    F: FnOnce(Socket, Bytes) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let on_upgrade = hyper::upgrade::on(request);
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!("websocket upgrade failed: {e}");
                return;
            }
        };
        // Take the socket back from hyper: the connection drives it itself from now on.
        let (socket, early) = match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => (Socket::Plain(parts.io.into_inner()), parts.read_buf),
            Err(upgraded) => match upgraded.downcast::<TokioIo<TlsStream<TcpStream>>>() {
                Ok(parts) => {
                    let (tcp, tls) = parts.io.into_inner().into_inner();
                    (
                        Socket::Tls(Box::new(TlsSocket::new(tcp, tls))),
                        parts.read_buf,
                    )
                }
                Err(_) => {
                    tracing::error!("websocket upgrade on an unknown transport");
                    return;
                }
            },
        };
        serve(socket, early).await;
    });

    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::UPGRADE, "websocket")
        .header(header::CONNECTION, "Upgrade")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .body(Body::empty())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// `GET /ws`: checks the upgrade and the token, answers 101 and hands the socket over.
pub(crate) async fn upgrade(State(state): State<Arc<AppState>>, mut request: Request) -> Response {
    let key = match check_upgrade(request.headers()) {
        Ok(key) => key,
        Err(response) => return *response,
    };
    if let Some(refusal) = check_upgrade_origin(&state, request.headers()) {
        return refusal;
    }
    let permit = match admit(&state, request.headers(), request.extensions()) {
        Ok(permit) => permit,
        Err(refusal) => return refusal.into_response(),
    };
    let identity = match request_token(request.uri().query(), request.headers()) {
        Some(token) => match state.auth.verify(&token) {
            Ok(claims) => Identity::Known(Box::new(claims)),
            Err(e) => {
                state.count_error();
                return auth_error_response(&e);
            }
        },
        None if state.hub.config.admits_anonymous() => {
            Identity::Known(Box::new(Claims::anonymous()))
        }
        None => Identity::AwaitConnect,
    };
    if let Identity::Known(claims) = &identity
        && let Err(refusal) = admit_user(&state, &claims.user)
    {
        return refusal.into_response();
    }
    accept(&mut request, &key, move |socket, early| {
        let outbox = Outbox::new(
            state.limits.client_queue_bytes,
            Overflow::Disconnect,
            state.stats.clone(),
        );
        let outbox = Arc::new(outbox.keeping(Shared::WebSocketFrame));
        let claims = match identity {
            Identity::Known(claims) => Some(*claims),
            Identity::AwaitConnect => None,
        };
        let native = Native::new(&state, &outbox, claims);
        let machine = Machine::new(WsCodec, outbox, Framing::Plain);
        conn::run_protocol(state, permit, socket, early, machine, native)
    })
}
