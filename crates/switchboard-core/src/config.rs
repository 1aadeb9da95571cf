//! Hub settings: namespaces (spec §7) and per-connection limits. Deserialized from the
//! server's config file; every field has a default so an empty config works.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Settings of one channel namespace (`[[namespace]]`), or of the default one.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NamespaceConfig {
    /// The part of a channel name before the first `:`.
    #[serde(default)]
    pub name: String,
    /// Messages kept per channel for recovery and history (0 keeps none).
    #[serde(default = "default_history_size")]
    pub history_size: usize,
    /// How long a message stays in history: seconds, or a string like `"5m"`.
    #[serde(default = "default_history_ttl", deserialize_with = "duration")]
    pub history_ttl: Duration,
    /// Presence (who is subscribed) is kept and can be queried.
    #[serde(default = "yes")]
    pub presence: bool,
    /// `join` and `leave` pushes are sent to subscribers.
    #[serde(default = "yes")]
    pub join_leave: bool,
    /// `true`: any client may publish here; `false`: no client may; unset: the token's
    /// `publish` claim decides.
    #[serde(default)]
    pub allow_client_publish: Option<bool>,
    /// `true`: clients without a token may subscribe (and read) here; `false`: they may not
    /// even when the server allows anonymous clients; unset: the server-wide setting decides.
    #[serde(default)]
    pub allow_anonymous: Option<bool>,
}

fn default_history_size() -> usize {
    100
}
fn default_history_ttl() -> Duration {
    Duration::from_secs(300)
}
fn yes() -> bool {
    true
}

impl Default for NamespaceConfig {
    fn default() -> Self {
        NamespaceConfig {
            name: String::new(),
            history_size: default_history_size(),
            history_ttl: default_history_ttl(),
            presence: true,
            // Off unless a namespace turns it on (spec §7): every arrival would cost every
            // subscriber a frame.
            join_leave: false,
            allow_client_publish: None,
            allow_anonymous: None,
        }
    }
}

/// Everything the hub needs to know.
#[derive(Debug, Clone)]
pub struct HubConfig {
    pub default_namespace: NamespaceConfig,
    pub namespaces: Vec<NamespaceConfig>,
    /// Clients without a token may connect and do anything (development mode).
    pub allow_anonymous: bool,
    /// Most channels one connection may be subscribed to.
    pub max_subscriptions: usize,
    /// A stream with no publication for this long is dropped (its next message starts a new
    /// epoch), which bounds the memory of channels nobody uses any more.
    pub stream_idle_ttl: Duration,
    /// Most peers in one signaling room.
    pub max_room_peers: usize,
    /// Most rooms one connection may be in.
    pub max_rooms: usize,
    /// Largest history or presence reply in bytes (history replies stop short of it);
    /// `usize::MAX` for none.
    pub max_reply_bytes: usize,
    /// Channel prefixes whose joins and leaves are announced whatever their namespace says
    /// (a Pusher app's `presence-` channels, whose clients need them).
    pub announce_prefixes: Vec<String>,
    /// This node's name in the node list (`/api/info`).
    pub node_name: String,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            default_namespace: NamespaceConfig::default(),
            namespaces: Vec::new(),
            allow_anonymous: false,
            max_subscriptions: 128,
            stream_idle_ttl: Duration::from_secs(24 * 3600),
            max_room_peers: 32,
            max_rooms: 16,
            max_reply_bytes: 1024 * 1024,
            announce_prefixes: Vec::new(),
            node_name: "switchboard".into(),
        }
    }
}

impl HubConfig {
    /// The settings that apply to `channel`: its namespace's, or the default's.
    pub fn namespace(&self, channel: &str) -> &NamespaceConfig {
        match channel.split_once(':') {
            Some((ns, _)) => self
                .namespaces
                .iter()
                .find(|n| n.name == ns)
                .unwrap_or(&self.default_namespace),
            None => &self.default_namespace,
        }
    }

    /// How `channel`'s stream is kept (its namespace's history settings).
    pub fn stream_options(&self, channel: &str) -> crate::engine::StreamOptions {
        let ns = self.namespace(channel);
        crate::engine::StreamOptions {
            history_size: ns.history_size,
            history_ttl: ns.history_ttl,
        }
    }

    /// Whether joins and leaves of `channel` are pushed to its subscribers.
    pub fn join_leave(&self, channel: &str) -> bool {
        self.namespace(channel).join_leave
            || self
                .announce_prefixes
                .iter()
                .any(|p| channel.starts_with(p.as_str()))
    }

    /// Anonymous clients are admitted at all: server-wide, or by at least one namespace.
    pub fn admits_anonymous(&self) -> bool {
        self.allow_anonymous
            || self
                .namespaces
                .iter()
                .any(|n| n.allow_anonymous == Some(true))
    }
}

/// Parses `300`, `"300"`, `"300s"`, `"5m"`, `"2h"` or `"1d"`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "ms" => return Some(Duration::from_millis(n)),
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => return None,
    };
    Some(Duration::from_secs(secs))
}

/// Serde helper for durations given as seconds or as a string with a unit.
pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Secs(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Secs(s) => Ok(Duration::from_secs(s)),
        Raw::Text(t) => parse_duration(&t).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "invalid duration `{t}` (use seconds or a number with s, m, h or d)"
            ))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_find_their_namespace() {
        let cfg = HubConfig {
            namespaces: vec![NamespaceConfig {
                name: "chat".into(),
                history_size: 5,
                ..NamespaceConfig::default()
            }],
            ..HubConfig::default()
        };
        assert_eq!(cfg.namespace("chat:room").history_size, 5);
        assert_eq!(cfg.namespace("news:x").history_size, 100);
        assert_eq!(cfg.namespace("chat").history_size, 100);
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("90"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_duration("soon"), None);
    }
}
