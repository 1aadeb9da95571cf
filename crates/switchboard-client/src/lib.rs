//! Async client of the Switchboard wire contract (`PROTOCOL.md`).
//!
//! Two clients live here:
//! - [`WsClient`]: the native WebSocket protocol (§3): commands with ids, replies matched by id,
//!   server pushes buffered in arrival order.
//! - [`ApiClient`]: the backend's HTTP server API (§6).
//!
//! Both are deliberately thin: frames are plain [`Value`]s so integration tests can check
//! exactly what went over the wire, including fields this crate does not know about.

mod api;
mod ws;

pub use api::ApiClient;
pub use serde_json::Value;
pub use tokio_tungstenite::tungstenite::Message;
pub use ws::WsClient;

use std::time::Duration;

/// How long a client waits by default for a reply, the `connected` frame or a close handshake.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Everything that can go wrong when talking to a Switchboard server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The WebSocket layer failed (connect, handshake, I/O). A refused upgrade is turned into
    /// [`Error::Server`] with its HTTP status instead.
    #[error("websocket: {0}")]
    WebSocket(#[from] Box<tokio_tungstenite::tungstenite::Error>),
    /// The HTTP layer failed (connect, I/O, bad URL).
    #[error("http: {0}")]
    Http(#[from] reqwest::Error),
    /// A frame from the server was not valid JSON.
    #[error("invalid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// Nothing arrived in time; the text says what was awaited.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// The connection is closed. `code` is the WebSocket close code, `None` when the TCP
    /// connection ended without a close frame (or the close frame carried no code).
    #[error("connection closed (code {code:?}): {reason}")]
    Closed { code: Option<u16>, reason: String },
    /// The server answered with an error: an `error` frame (`status` is `None`) or an HTTP
    /// error (`status` is the HTTP status). `code` is the contract's error code (e.g.
    /// `forbidden`), empty when the body did not carry one.
    #[error("server error {code} (status {status:?}): {message}")]
    Server {
        code: String,
        message: String,
        status: Option<u16>,
    },
    /// The server broke the contract, or the caller asked for something the contract cannot
    /// express (e.g. a command that is not a JSON object).
    #[error("protocol: {0}")]
    Protocol(String),
}

impl From<tokio_tungstenite::tungstenite::Error> for Error {
    fn from(e: tokio_tungstenite::tungstenite::Error) -> Self {
        // Boxed because tungstenite's error is large and would bloat every `Result`.
        Error::WebSocket(Box::new(e))
    }
}

impl Error {
    /// The contract's error code, when the server sent one (`error` frame or HTTP error body).
    pub fn server_code(&self) -> Option<&str> {
        match self {
            Error::Server { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// Result of every fallible call in this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Percent-encodes one URL component (a path segment or a query value).
///
/// Unreserved characters (RFC 3986: letters, digits, `-._~`) pass; every other byte is
/// written as `%XX`. Channel names contain `:` and `#`, and a raw `#` would end the URL's
/// path, so channel names in paths must go through this.
pub fn percent_encode(s: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 0x0f)] as char);
        }
    }
    out
}

/// Builds [`Error::Server`] from a contract error body `{"error":{"code","message"}}`.
/// A body of another shape keeps an empty code and its raw text as message, so the caller
/// still sees what the server said.
pub(crate) fn http_error(status: u16, raw_body: &str) -> Error {
    let body: Value = serde_json::from_str(raw_body).unwrap_or(Value::Null);
    let err = &body["error"];
    match (err["code"].as_str(), err["message"].as_str()) {
        (Some(code), message) => Error::Server {
            code: code.to_owned(),
            message: message.unwrap_or_default().to_owned(),
            status: Some(status),
        },
        (None, _) => Error::Server {
            code: String::new(),
            message: raw_body.to_owned(),
            status: Some(status),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_encode_keeps_unreserved_and_escapes_the_rest() {
        assert_eq!(percent_encode("abc-XYZ_0.9~"), "abc-XYZ_0.9~");
        assert_eq!(percent_encode("chat:room#alice"), "chat%3Aroom%23alice");
        assert_eq!(percent_encode("a b/c?d&e=f%"), "a%20b%2Fc%3Fd%26e%3Df%25");
        assert_eq!(percent_encode("é"), "%C3%A9");
        assert_eq!(percent_encode(""), "");
    }

    #[test]
    fn http_error_reads_contract_body_or_keeps_raw_text() {
        match http_error(403, r#"{"error":{"code":"forbidden","message":"no"}}"#) {
            Error::Server {
                code,
                message,
                status,
            } => {
                assert_eq!(code, "forbidden");
                assert_eq!(message, "no");
                assert_eq!(status, Some(403));
            }
            other => panic!("unexpected {other:?}"),
        }
        match http_error(502, "Bad Gateway") {
            Error::Server {
                code,
                message,
                status,
            } => {
                assert_eq!(code, "");
                assert_eq!(message, "Bad Gateway");
                assert_eq!(status, Some(502));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
