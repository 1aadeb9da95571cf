//! Reading a request body, bounded in size and in time: a client that sends a body slowly
//! (or never finishes it) is refused after the handshake timeout, like one that sends a head
//! slowly, instead of holding a request open.

use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use switchboard_proto::ErrorCode;

use super::ApiError;

/// Why a body could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyError {
    TooLarge(usize),
    TooSlow(Duration),
}

impl BodyError {
    pub(crate) fn message(self) -> String {
        match self {
            BodyError::TooLarge(limit) => format!("request body larger than {limit} bytes"),
            BodyError::TooSlow(time) => {
                format!("request body not received within {} s", time.as_secs())
            }
        }
    }
}

impl From<BodyError> for ApiError {
    fn from(e: BodyError) -> Self {
        let code = match e {
            BodyError::TooLarge(_) => ErrorCode::TooLarge,
            // The client is too slow to send: it may try again, but not hold us meanwhile.
            BodyError::TooSlow(_) => ErrorCode::BadRequest,
        };
        ApiError::new(code, e.message())
    }
}

/// The whole body, at most `limit` bytes, arriving within `timeout`.
pub(crate) async fn read_body(
    body: Body,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, BodyError> {
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(_)) => Err(BodyError::TooLarge(limit)),
        Err(_) => Err(BodyError::TooSlow(timeout)),
    }
}
