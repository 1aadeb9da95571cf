//! WebRTC support around the hub's signaling rooms: the ICE servers a peer gets when it joins
//! a room, with TURN credentials in the coturn "TURN REST API" format, so a deployment can
//! point at an existing coturn (`use-auth-secret`); and the embedded TURN server
//! (`turn_server`) with the peers it may relay to (`peer_policy`).

pub mod media;
pub mod peer_policy;
pub mod turn_server;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha1::Sha1;

/// `[webrtc]` settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebrtcConfig {
    /// `stun:host:port` URLs, handed out as they are.
    #[serde(default)]
    pub stun_urls: Vec<String>,
    /// `turn:host:port?transport=udp` (or `turns:`) URLs, handed out with credentials.
    #[serde(default)]
    pub turn_urls: Vec<String>,
    /// The secret shared with the TURN server (coturn's `static-auth-secret`).
    #[serde(default)]
    pub turn_secret: Option<String>,
    /// Lifetime of TURN credentials, in seconds.
    #[serde(default = "default_turn_ttl")]
    pub turn_ttl: u64,
    /// Most peers in one room.
    #[serde(default = "default_max_room_peers")]
    pub max_room_peers: usize,
    /// The embedded STUN/TURN server (`[webrtc.turn]`), on when set.
    #[serde(default)]
    pub turn: Option<turn_server::TurnConfig>,
    /// The media plane (`[webrtc.media]`): WHIP, WHEP, the SFU.
    #[serde(default)]
    pub media: media::MediaConfig,
}

fn default_turn_ttl() -> u64 {
    86_400
}

fn default_max_room_peers() -> usize {
    32
}

impl Default for WebrtcConfig {
    fn default() -> Self {
        WebrtcConfig {
            stun_urls: Vec::new(),
            turn_urls: Vec::new(),
            turn_secret: None,
            turn_ttl: default_turn_ttl(),
            max_room_peers: default_max_room_peers(),
            turn: None,
            media: media::MediaConfig::default(),
        }
    }
}

/// TURN REST credentials: username `<expiry unix time>:<user>`, password
/// base64(HMAC-SHA1(secret, username)).
pub fn turn_credentials(secret: &str, user: &str, expires: u64) -> (String, String) {
    let username = format!("{expires}:{user}");
    let password = turn_password(secret, &username);
    (username, password)
}

/// The TURN REST password of `username`: base64(HMAC-SHA1(secret, username)).
pub fn turn_password(secret: &str, username: &str) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(username.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

impl WebrtcConfig {
    /// The RTCIceServer list for `user` at Unix time `now`: STUN as configured, TURN with
    /// credentials (TURN URLs are left out when there is no secret to sign with).
    pub fn ice_servers(&self, user: &str, now: u64) -> serde_json::Value {
        let mut servers = Vec::new();
        if !self.stun_urls.is_empty() {
            servers.push(serde_json::json!({ "urls": self.stun_urls }));
        }
        if let (false, Some(secret)) = (self.turn_urls.is_empty(), &self.turn_secret) {
            // Anonymous clients have no id: give the credential a stable, harmless name.
            let user = if user.is_empty() { "anonymous" } else { user };
            let (username, credential) = turn_credentials(secret, user, now + self.turn_ttl);
            servers.push(serde_json::json!({
                "urls": self.turn_urls,
                "username": username,
                "credential": credential,
            }));
        }
        serde_json::Value::Array(servers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_match_an_independent_hmac_sha1() {
        // Reference computed with: printf '1700000000:alice' | openssl dgst -sha1 -hmac s3cret -binary | base64
        let (username, password) = turn_credentials("s3cret", "alice", 1_700_000_000);
        assert_eq!(username, "1700000000:alice");
        assert_eq!(password, REFERENCE);
    }

    const REFERENCE: &str = "TtElzSjT0GdnTQ9xdcRNxx96yQs=";

    #[test]
    fn ice_servers_carry_stun_and_signed_turn() {
        let config = WebrtcConfig {
            stun_urls: vec!["stun:stun.example:3478".into()],
            turn_urls: vec!["turn:turn.example:3478?transport=udp".into()],
            turn_secret: Some("s3cret".into()),
            turn_ttl: 600,
            ..WebrtcConfig::default()
        };
        let servers = config.ice_servers("bob", 1000);
        assert_eq!(servers[0]["urls"][0], "stun:stun.example:3478");
        assert_eq!(servers[1]["username"], "1600:bob");
        let (_, password) = turn_credentials("s3cret", "bob", 1600);
        assert_eq!(servers[1]["credential"], password.as_str());
        let unsigned = WebrtcConfig {
            turn_secret: None,
            ..config
        };
        assert_eq!(unsigned.ice_servers("bob", 0).as_array().unwrap().len(), 1);
    }
}
