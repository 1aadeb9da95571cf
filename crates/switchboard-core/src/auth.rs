//! Who a client is and what it may do: the claims of its token (spec §2). Verifying tokens is
//! the server's job (JWT); the hub only sees [`Claims`] through the [`Authenticator`] seam.

use bytes::Bytes;

use crate::pattern::any_matches;

/// The identity and permissions of a connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claims {
    /// User id (`sub`); empty for an anonymous client.
    pub user: String,
    /// Expiry in seconds since the epoch, if the token has one.
    pub exp: Option<u64>,
    /// `info` as raw JSON, shown to others in presence and rooms.
    pub info: Option<Bytes>,
    pub subscribe: Vec<String>,
    pub publish: Vec<String>,
    pub rooms: Vec<String>,
    /// A client without a token, admitted because anonymous access is allowed.
    pub anonymous: bool,
}

impl Claims {
    pub fn anonymous() -> Self {
        Claims {
            anonymous: true,
            ..Claims::default()
        }
    }

    pub fn may_subscribe_by_claims(&self, channel: &str) -> bool {
        any_matches(&self.subscribe, channel)
    }

    pub fn may_publish_by_claims(&self, channel: &str) -> bool {
        any_matches(&self.publish, channel)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("token expired")]
    Expired,
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// Turns a connection token into claims (implemented by the server's JWT verifier).
pub trait Authenticator: Send + Sync {
    fn verify(&self, token: &str) -> Result<Claims, AuthError>;
}
