//! `POST /session/<session>` (spec §5): the `session` secret of a one-way door's `connected`
//! frame names its live session; the body's command frames run as that client.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::value::RawValue;
use switchboard_core::session::Answer;
use switchboard_proto::command::request_id;
use switchboard_proto::{ErrorCode, encode, parse_request};

use super::state::StreamsState;
use crate::http::{ApiError, error_response, read_body};

/// Most commands in one `POST /session/...`.
const MAX_COMMANDS: usize = 100;

/// `POST /session/<session>`: one command frame or an array of them; answers the replies as
/// a JSON array, in the same order.
pub(crate) async fn post_session(
    State(streams): State<Arc<StreamsState>>,
    Path(id): Path<String>,
    body: Body,
) -> Response {
    let state = &streams.shared;
    let Some(cell) = streams.sessions.get(&id) else {
        state.count_error();
        return error_response(ErrorCode::NotFound, "unknown or expired session");
    };
    let limits = &state.limits;
    let bytes = match read_body(body, limits.max_api_body, limits.handshake_timeout).await {
        Ok(bytes) => bytes,
        Err(e) => {
            state.count_error();
            return ApiError::from(e).into_response();
        }
    };
    let frames: Vec<Box<RawValue>> = match serde_json::from_slice::<Box<RawValue>>(&bytes) {
        Ok(raw) if raw.get().trim_start().starts_with('[') => {
            match serde_json::from_str(raw.get()) {
                Ok(frames) => frames,
                Err(e) => {
                    return error_response(ErrorCode::BadRequest, &format!("invalid JSON: {e}"));
                }
            }
        }
        Ok(raw) => vec![raw],
        Err(e) => {
            state.count_error();
            return error_response(ErrorCode::BadRequest, &format!("invalid JSON body: {e}"));
        }
    };
    if frames.len() > MAX_COMMANDS {
        return error_response(
            ErrorCode::TooLarge,
            &format!("at most {MAX_COMMANDS} commands per request"),
        );
    }
    let mut guard = cell.session.lock().await;
    let Some(session) = guard.as_mut() else {
        return error_response(ErrorCode::NotFound, "unknown or expired session");
    };
    let mut replies: Vec<Bytes> = Vec::with_capacity(frames.len());
    // The answer is held whole until it is sent: past `max_reply_bytes` the remaining
    // commands are refused unrun.
    let mut answer_bytes = 0;
    for frame in &frames {
        let bytes = frame.get().as_bytes();
        let reply = if bytes.len() > limits.max_frame_size {
            Some(Answer::Error(encode::frame_too_large(
                request_id(bytes),
                limits.max_frame_size,
            )))
        } else if answer_bytes > limits.reply_limit() {
            Some(Answer::Error(encode::error(
                request_id(bytes),
                ErrorCode::TooLarge,
                "not run: the answer already holds max_reply_bytes; send fewer commands per request",
            )))
        } else if !cell.admit_command() {
            state.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
            Some(Answer::Error(encode::rate_limited(
                request_id(bytes),
                limits.client_rate,
            )))
        } else {
            match parse_request(bytes) {
                Ok(request) => Box::pin(session.handle(request)).await,
                Err(e) => Some(e.into()),
            }
        };
        if reply.as_ref().is_some_and(Answer::is_error) {
            state.count_error();
        }
        let reply = reply.map_or(Bytes::from_static(b"null"), Answer::into_frame);
        answer_bytes += reply.len();
        replies.push(reply);
    }
    drop(guard);
    let mut out = Vec::with_capacity(replies.iter().map(|r| r.len() + 1).sum::<usize>() + 2);
    out.push(b'[');
    for (i, reply) in replies.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(reply);
    }
    out.push(b']');
    let mut response = out.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
