//! Error codes (spec §3) and the reasons the server gives when it closes a connection.

use serde::Serialize;

/// The error codes of spec §3. Every refusal the server sends carries one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    TooLarge,
    RateLimited,
    TokenExpired,
    Unavailable,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }

    /// The HTTP status a one-way door or the server API answers this code with.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 400,
            ErrorCode::Unauthorized | ErrorCode::TokenExpired => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::TooLarge => 413,
            ErrorCode::RateLimited => 429,
            ErrorCode::Unavailable => 503,
            ErrorCode::Internal => 500,
        }
    }
}

/// Why the server closes a connection: the `code` of the `disconnect` frame, a human message,
/// the WebSocket close code that follows it, and whether a client should reconnect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Disconnect {
    pub code: &'static str,
    pub message: &'static str,
    pub ws_close: u16,
    pub reconnect: bool,
}

impl Disconnect {
    /// Server shutting down or restarting: reconnect (to this or another node).
    pub const SHUTDOWN: Disconnect = Disconnect {
        code: "unavailable",
        message: "server shutting down, reconnect",
        ws_close: 1001,
        reconnect: true,
    };
    /// The connection token expired and was not refreshed in time.
    pub const TOKEN_EXPIRED: Disconnect = Disconnect {
        code: "token_expired",
        message: "connection token expired",
        ws_close: 4001,
        reconnect: true,
    };
    /// A bad, forged or missing token: reconnecting with the same one is pointless.
    pub const UNAUTHORIZED: Disconnect = Disconnect {
        code: "unauthorized",
        message: "invalid token",
        ws_close: 4003,
        reconnect: false,
    };
    /// The client did not send its `connect` frame in time.
    pub const CONNECT_TIMEOUT: Disconnect = Disconnect {
        code: "unauthorized",
        message: "no connect frame received in time",
        ws_close: 4003,
        reconnect: false,
    };
    /// The client read too slowly: its bounded send queue overflowed.
    pub const SLOW_CONSUMER: Disconnect = Disconnect {
        code: "slow_consumer",
        message: "client did not read fast enough, send queue overflowed",
        ws_close: 4008,
        reconnect: true,
    };
    /// The engine lost messages of a subscribed channel that history cannot give back (a
    /// broker outage, a reset stream): reconnect with `since` and learn `recovered: false`.
    pub const STATE_LOST: Disconnect = Disconnect {
        code: "unavailable",
        message: "channel state lost by the engine, reconnect and recover",
        ws_close: 4009,
        reconnect: true,
    };
    /// The backend disconnected this user through the server API.
    pub const BY_SERVER: Disconnect = Disconnect {
        code: "forbidden",
        message: "disconnected by the server",
        ws_close: 4004,
        reconnect: false,
    };
    /// No pong (or any frame) from the client within the ping window.
    pub const NO_PONG: Disconnect = Disconnect {
        code: "unavailable",
        message: "no activity from the client within the ping interval",
        ws_close: 4005,
        reconnect: true,
    };
    /// The client closed the connection itself.
    pub const CLIENT_CLOSED: Disconnect = Disconnect {
        code: "closed",
        message: "closed by the client",
        ws_close: 1000,
        reconnect: false,
    };
    /// The user already holds its most connections on this node (`max_connections_per_user`).
    pub const TOO_MANY_CONNECTIONS: Disconnect = Disconnect {
        code: "rate_limited",
        message: "this user has its most connections",
        ws_close: 4029,
        reconnect: false,
    };
    /// The client sent data channel messages faster than its commands are taken (its bounded
    /// inbox overflowed): the channel closes after this goodbye.
    pub const FLOODED: Disconnect = Disconnect {
        code: "rate_limited",
        message: "messages sent faster than they are taken, inbox overflowed",
        ws_close: 4029,
        reconnect: true,
    };
    /// The client broke the WebSocket protocol (unmasked frame, bad opcode, ...).
    pub const PROTOCOL_ERROR: Disconnect = Disconnect {
        code: "bad_request",
        message: "websocket protocol error",
        ws_close: 1002,
        reconnect: false,
    };
    /// The client sent a text message (or a close reason) that is not UTF-8.
    pub const INVALID_UTF8: Disconnect = Disconnect {
        code: "bad_request",
        message: "websocket text is not valid UTF-8",
        ws_close: 1007,
        reconnect: false,
    };
}
