//! `[[pusher.apps]]`: the Pusher apps this server stands in for. Each app has Pusher's
//! credentials (`id`, `key`, `secret`), its switches and limits, and the hub namespace its
//! channels live in.

use serde::{Deserialize, Serialize};

/// `[pusher]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PusherConfig {
    #[serde(default)]
    pub apps: Vec<PusherAppConfig>,
}

/// One `[[pusher.apps]]` table.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PusherAppConfig {
    /// `app_id` of the server SDKs (`/apps/{id}/...`). Pusher's are digits, and some SDKs
    /// (Python's) accept nothing else.
    pub id: String,
    /// The public key clients connect with (`/app/{key}`), and `auth_key` of API requests.
    pub key: String,
    /// Signs channel authorizations, user sign-ins, API requests and webhooks.
    pub secret: String,
    /// A disabled app refuses connections (close 4003) and API calls.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Clients may send `client-` events on private and presence channels.
    #[serde(default)]
    pub enable_client_events: bool,
    /// Hub namespace of the app's channels: Pusher channel `C` is hub channel `ns:C` (empty:
    /// `C` itself, in the default namespace). Native clients see the same channels there.
    #[serde(default)]
    pub namespace: String,
    /// Connections the app may hold at once (WebSocket and HTTP transports); past it new ones
    /// are closed with 4004. Unset: no limit beyond the server's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    /// Client events one connection may send per second; past it they are refused (4301).
    #[serde(default = "default_client_event_rate")]
    pub max_client_events_per_second: u32,
    /// Bytes of one event's data (API trigger or client event); larger: 413 / refused.
    #[serde(default = "default_event_size")]
    pub max_event_size: usize,
    /// Channels one API trigger may name.
    #[serde(default = "default_channels_per_event")]
    pub max_channels_per_event: usize,
    /// Events of one `batch_events` call.
    #[serde(default = "default_batch_size")]
    pub max_batch_size: usize,
    /// Distinct users of one presence channel; past it a subscription is refused.
    #[serde(default = "default_presence_members")]
    pub max_presence_members: usize,
    /// Bytes of a presence member's `user_info`.
    #[serde(default = "default_user_info_size")]
    pub max_user_info_size: usize,
    /// Seconds a client may stay silent before it should send `pusher:ping`
    /// (`activity_timeout` of `pusher:connection_established`).
    #[serde(default = "default_activity_timeout")]
    pub activity_timeout: u64,
    /// Webhook endpoints and the events each wants.
    #[serde(default)]
    pub webhooks: Vec<WebhookConfig>,
}

/// One `[[pusher.apps.webhooks]]` table.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `http://` or `https://`.
    pub url: String,
    /// A PEM file of CA certificates to trust for this https endpoint, besides the system's
    /// (for endpoints with a private CA or a self-signed certificate).
    #[serde(default)]
    pub ca: Option<std::path::PathBuf>,
    /// Any of `channel_occupied`, `channel_vacated`, `member_added`, `member_removed`,
    /// `client_event`, `cache_miss`; empty: all of them.
    #[serde(default)]
    pub events: Vec<String>,
}

pub const WEBHOOK_EVENTS: [&str; 6] = [
    "channel_occupied",
    "channel_vacated",
    "member_added",
    "member_removed",
    "client_event",
    "cache_miss",
];

fn yes() -> bool {
    true
}
fn default_client_event_rate() -> u32 {
    10
}
fn default_event_size() -> usize {
    10 * 1024
}
fn default_channels_per_event() -> usize {
    100
}
fn default_batch_size() -> usize {
    10
}
fn default_presence_members() -> usize {
    100
}
fn default_user_info_size() -> usize {
    1024
}
fn default_activity_timeout() -> u64 {
    120
}

impl PusherAppConfig {
    /// An app with these credentials and every other setting at its default.
    pub fn new(id: &str, key: &str, secret: &str) -> Self {
        PusherAppConfig {
            id: id.into(),
            key: key.into(),
            secret: secret.into(),
            enabled: true,
            enable_client_events: false,
            namespace: String::new(),
            max_connections: None,
            max_client_events_per_second: default_client_event_rate(),
            max_event_size: default_event_size(),
            max_channels_per_event: default_channels_per_event(),
            max_batch_size: default_batch_size(),
            max_presence_members: default_presence_members(),
            max_user_info_size: default_user_info_size(),
            activity_timeout: default_activity_timeout(),
            webhooks: Vec::new(),
        }
    }
}

impl PusherConfig {
    /// Refuses apps that would collide or could never work.
    pub fn validate(&self) -> Result<(), String> {
        for (i, app) in self.apps.iter().enumerate() {
            let n = i + 1;
            if app.id.is_empty() || app.key.is_empty() || app.secret.is_empty() {
                return Err(format!("pusher app #{n} needs `id`, `key` and `secret`"));
            }
            if app.namespace.contains(':') || app.namespace.contains('#') {
                return Err(format!(
                    "pusher app `{}`: `namespace` is a namespace name, without `:` or `#`",
                    app.id
                ));
            }
            for hook in &app.webhooks {
                if !hook.url.starts_with("http://") && !hook.url.starts_with("https://") {
                    return Err(format!(
                        "pusher app `{}`: webhook url `{}` must start with http:// or https://",
                        app.id, hook.url
                    ));
                }
                if let Some(bad) = hook
                    .events
                    .iter()
                    .find(|e| !WEBHOOK_EVENTS.contains(&e.as_str()))
                {
                    return Err(format!(
                        "pusher app `{}`: unknown webhook event `{bad}` (one of {})",
                        app.id,
                        WEBHOOK_EVENTS.join(", ")
                    ));
                }
            }
            for other in &self.apps[..i] {
                if other.id == app.id || other.key == app.key {
                    return Err(format!(
                        "pusher apps `{}` and `{}` share an id or a key",
                        other.id, app.id
                    ));
                }
                if other.namespace == app.namespace {
                    // Two apps on the same hub channels would see each other's events.
                    return Err(format!(
                        "pusher apps `{}` and `{}` share the namespace `{}`: give each its own",
                        other.id, app.id, app.namespace
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml: &str) -> PusherConfig {
        #[derive(Deserialize)]
        struct Root {
            pusher: PusherConfig,
        }
        use figment::providers::Format;
        figment::Figment::from(figment::providers::Toml::string(toml))
            .extract::<Root>()
            .unwrap()
            .pusher
    }

    #[test]
    fn apps_parse_with_defaults_and_collisions_are_refused() {
        let cfg = parse(
            r#"
[[pusher.apps]]
id = "1"
key = "k1"
secret = "s1"
enable_client_events = true
[[pusher.apps.webhooks]]
url = "http://127.0.0.1:9/hook"
events = ["channel_occupied"]

[[pusher.apps]]
id = "2"
key = "k2"
secret = "s2"
namespace = "two"
max_event_size = 100
"#,
        );
        cfg.validate().unwrap();
        assert!(cfg.apps[0].enable_client_events && cfg.apps[0].enabled);
        assert_eq!(cfg.apps[0].max_event_size, 10 * 1024);
        assert_eq!(cfg.apps[1].max_event_size, 100);
        assert_eq!(cfg.apps[1].namespace, "two");

        let mut clash = cfg.clone();
        clash.apps[1].namespace = String::new();
        assert!(clash.validate().unwrap_err().contains("namespace"));
        let mut clash = cfg.clone();
        clash.apps[1].key = "k1".into();
        assert!(clash.validate().is_err());
        let mut bad = cfg;
        bad.apps[0].webhooks[0].events = vec!["nope".into()];
        assert!(bad.validate().unwrap_err().contains("nope"));
    }
}
