//! Server configuration: TOML file, then `SWITCHBOARD_...` environment variables, then
//! command-line flags, each overriding the one before. With nothing configured the server
//! runs in development mode (see [`Config::resolve`]).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use switchboard_core::config::duration;
use switchboard_core::{HubConfig, NamespaceConfig};

#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// HMAC secret for HS256 connection tokens.
    pub token_secret: Option<String>,
    /// PEM public key (RSA or EC P-256) for RS256/ES256 tokens, inline or a file path.
    pub token_public_key: Option<String>,
    /// Bearer key of the server API.
    pub api_key: Option<String>,
    /// Clients without a token may connect and do anything.
    pub allow_anonymous: Option<bool>,
    /// Browser origins (`https://app.example`, or `*`) that may use the one-way doors besides
    /// the server's own origin.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Signs stream cursors; every node of a deployment needs the same. Defaults to one
    /// derived from the other secrets.
    pub cursor_secret: Option<String>,
    /// When set, a token must carry this `aud` (alone or in its list).
    pub audience: Option<String>,
    /// When set, a token must carry this `iss`.
    pub issuer: Option<String>,
}

/// Which engine keeps positions, history and presence (`[engine]`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    #[serde(default)]
    pub kind: EngineKind,
    /// Memory engine: keep history on disk here, so it survives restarts and crashes.
    pub data_dir: Option<std::path::PathBuf>,
    pub redis_url: Option<String>,
    pub nats_url: Option<String>,
    /// Key/subject prefix, so several deployments can share one Redis or NATS.
    pub prefix: Option<String>,
    /// This node's name in the node list (`/api/info`); defaults to the host name.
    pub node_name: Option<String>,
    /// Seconds without a heartbeat after which a node counts as dead and its presence
    /// members and room peers are removed (Redis and NATS engines).
    #[serde(default = "default_node_ttl")]
    pub node_ttl: u64,
}

fn default_node_ttl() -> u64 {
    10
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            kind: EngineKind::default(),
            data_dir: None,
            redis_url: None,
            nats_url: None,
            prefix: None,
            node_name: None,
            node_ttl: default_node_ttl(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    #[default]
    Memory,
    Redis,
    Nats,
}

/// TLS for every door: PEM files of the certificate chain and of its private key.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest client frame in bytes; larger ones are refused with `too_large`.
    pub max_frame_size: usize,
    /// Most channels one connection may subscribe to.
    pub max_subscriptions: usize,
    /// Bytes queued to one client before it is disconnected as a slow consumer.
    pub client_queue_bytes: usize,
    /// How long a WebSocket client without a token has to send its `connect` frame.
    #[serde(deserialize_with = "duration", serialize_with = "secs")]
    pub connect_timeout: Duration,
    /// Interval of the server's WebSocket pings; a client silent for two intervals is dropped.
    #[serde(deserialize_with = "duration", serialize_with = "secs")]
    pub ping_interval: Duration,
    /// Largest server API request body in bytes.
    pub max_api_body: usize,
    /// Client connections this node holds at most (0: no limit); past it new ones get 503.
    pub max_connections: usize,
    /// Client connections from one IP address at most (0: no limit); past it 429.
    pub max_connections_per_ip: usize,
    /// Connections of one user at most (0: no limit); a new one past it is refused with
    /// `rate_limited`, older ones live.
    pub max_connections_per_user: usize,
    /// How long a client has for a request head (and a request body) to arrive in full.
    #[serde(deserialize_with = "duration", serialize_with = "secs")]
    pub handshake_timeout: Duration,
    /// Commands per second per connection (0: no limit), in bursts of `client_burst`.
    pub client_rate: u32,
    pub client_burst: u32,
    /// Rooms one connection may be in at most.
    pub max_rooms: usize,
    /// Largest history or presence reply (and `POST /session` answer) in bytes (0: no limit).
    pub max_reply_bytes: usize,
    /// Proxies (IP addresses or CIDR ranges) whose `X-Forwarded-For` names the real client.
    pub trusted_proxies: Vec<String>,
}

impl LimitsConfig {
    /// `max_reply_bytes` as a bound: 0, like every `[limits]` key, means none.
    pub fn reply_limit(&self) -> usize {
        match self.max_reply_bytes {
            0 => usize::MAX,
            bytes => bytes,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_frame_size: 64 * 1024,
            max_subscriptions: 128,
            client_queue_bytes: 1024 * 1024,
            connect_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(20),
            max_api_body: 1024 * 1024,
            max_connections: 0,
            max_connections_per_ip: 0,
            max_connections_per_user: 0,
            handshake_timeout: Duration::from_secs(10),
            client_rate: 0,
            client_burst: 0,
            max_rooms: 16,
            max_reply_bytes: 1024 * 1024,
            trusted_proxies: Vec::new(),
        }
    }
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_secs())
}

fn default_namespace() -> NamespaceConfigToml {
    NamespaceConfigToml(NamespaceConfig::default())
}

/// Wrapper so the core's namespace settings can be defaults in figment (which needs Serialize).
#[derive(Debug, Clone, Deserialize)]
#[serde(transparent)]
pub struct NamespaceConfigToml(pub NamespaceConfig);

impl Serialize for NamespaceConfigToml {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let n = &self.0;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("name", &n.name)?;
        m.serialize_entry("history_size", &n.history_size)?;
        m.serialize_entry("history_ttl", &n.history_ttl.as_secs())?;
        m.serialize_entry("presence", &n.presence)?;
        m.serialize_entry("join_leave", &n.join_leave)?;
        if let Some(v) = n.allow_client_publish {
            m.serialize_entry("allow_client_publish", &v)?;
        }
        if let Some(v) = n.allow_anonymous {
            m.serialize_entry("allow_anonymous", &v)?;
        }
        m.end()
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address of the one HTTP listener (every door, the API, health and metrics).
    pub listen: String,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Storage and distribution engine.
    #[serde(default)]
    pub engine: EngineConfig,
    /// WebRTC rooms: ICE servers and TURN credentials, room size.
    #[serde(default)]
    pub webrtc: switchboard_rtc::WebrtcConfig,
    /// HTTPS and WSS on the listener when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// Settings of channels outside every configured namespace.
    #[serde(default = "default_namespace")]
    pub default_namespace: NamespaceConfigToml,
    #[serde(default)]
    pub namespace: Vec<NamespaceConfigToml>,
    /// Pusher Channels apps (`[[pusher.apps]]`).
    #[serde(default)]
    pub pusher: crate::pusher::config::PusherConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:7700".into(),
            auth: AuthConfig::default(),
            limits: LimitsConfig::default(),
            engine: EngineConfig::default(),
            webrtc: switchboard_rtc::WebrtcConfig::default(),
            tls: None,
            default_namespace: default_namespace(),
            namespace: Vec::new(),
            pusher: Default::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Invalid(String),
    #[error(transparent)]
    Figment(#[from] Box<figment::Error>),
}

/// The configuration with development-mode secrets filled in.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub config: Config,
    pub listen: SocketAddr,
    /// Set when nothing about auth was configured: anonymous clients are allowed and the
    /// API key and token secret below were generated for this run.
    pub dev_mode: bool,
}

impl Config {
    /// Loads the file (if any), then the environment. Flags are merged by the caller with
    /// [`Config::with_listen`].
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        // These name the file, the log filter or settings of the CLI commands, not of the
        // server.
        let not_settings = ["config", "log", "url", "api_key", "token", "token_secret"];
        let env = Env::prefixed("SWITCHBOARD_")
            .split("__")
            .ignore(&not_settings);
        Self::load_from(file, env)
    }

    fn load_from(file: Option<&Path>, env: impl figment::Provider) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::Invalid(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        figment
            .merge(env)
            .extract()
            .map_err(|e| ConfigError::Figment(Box::new(e)))
    }

    /// A config from TOML text alone (no file, no environment): for tests and embedding.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Self::load_from(None, Toml::string(text))
    }

    pub fn with_listen(mut self, listen: Option<String>) -> Config {
        if let Some(listen) = listen {
            self.listen = listen;
        }
        self
    }

    /// Validates and, when no auth setting is given at all, switches to development mode.
    pub fn resolve(mut self) -> Result<Resolved, ConfigError> {
        let listen: SocketAddr = self.listen.parse().map_err(|_| {
            ConfigError::Invalid(format!(
                "listen `{}` is not an ip:port address",
                self.listen
            ))
        })?;
        let a = &self.auth;
        let dev_mode = a.token_secret.is_none()
            && a.token_public_key.is_none()
            && a.api_key.is_none()
            && a.allow_anonymous.is_none();
        if dev_mode && !listen.ip().is_loopback() {
            // Development mode lets anyone do anything: it must never face a network.
            return Err(ConfigError::Invalid(format!(
                "development mode (no [auth] configured) serves only loopback addresses, not \
                 {listen}: configure [auth] (token_secret or token_public_key, and api_key) \
                 to listen there"
            )));
        }
        if dev_mode {
            self.auth.allow_anonymous = Some(true);
            // A page on any origin may try the one-way doors while developing.
            if self.auth.allowed_origins.is_empty() {
                self.auth.allowed_origins = vec!["*".into()];
            }
            self.auth.api_key = Some(format!("dev-{}", random_hex(16)));
            self.auth.token_secret = Some(random_hex(32));
            if self.pusher.apps.is_empty() {
                // A Pusher app to point pusher-js and a backend SDK at while developing.
                let app = crate::pusher::config::PusherAppConfig {
                    enable_client_events: true,
                    ..crate::pusher::config::PusherAppConfig::new(
                        "1",
                        "switchboard-key",
                        &random_hex(16),
                    )
                };
                self.pusher.apps.push(app);
            }
        }
        if !dev_mode {
            // Development mode generates its secrets; configured ones must be strong enough.
            check_hmac_secret(
                "auth.token_secret",
                self.auth.token_secret.as_deref(),
                "anyone could sign connection tokens as any user",
            )?;
            check_hmac_secret(
                "webrtc.turn_secret",
                self.webrtc.turn_secret.as_deref(),
                "anyone could make TURN credentials for any user",
            )?;
        }
        self.pusher.validate().map_err(ConfigError::Invalid)?;
        if let Some(turn) = &self.webrtc.turn {
            turn.peer_policy().map_err(ConfigError::Invalid)?;
        }
        if self.limits.max_frame_size < 128 {
            return Err(ConfigError::Invalid(
                "limits.max_frame_size must be at least 128".into(),
            ));
        }
        if self.limits.client_queue_bytes < self.limits.max_frame_size {
            return Err(ConfigError::Invalid(
                "limits.client_queue_bytes must be at least limits.max_frame_size".into(),
            ));
        }
        for (i, ns) in self.namespace.iter().enumerate() {
            if ns.0.name.is_empty() || ns.0.name.contains(':') {
                return Err(ConfigError::Invalid(format!(
                    "namespace #{} needs a `name` without `:`",
                    i + 1
                )));
            }
        }
        Ok(Resolved {
            config: self,
            listen,
            dev_mode,
        })
    }

    /// The secret cursors are signed with: configured, or derived from the other secrets
    /// (which every node of a deployment shares too).
    pub fn cursor_secret(&self) -> String {
        let a = &self.auth;
        match &a.cursor_secret {
            Some(secret) => secret.clone(),
            None => [&a.token_secret, &a.api_key, &a.token_public_key]
                .iter()
                .map(|s| s.as_deref().unwrap_or(""))
                .collect::<Vec<_>>()
                .join("\0"),
        }
    }

    pub fn hub_config(&self) -> HubConfig {
        HubConfig {
            default_namespace: self.default_namespace.0.clone(),
            namespaces: self.namespace.iter().map(|n| n.0.clone()).collect(),
            allow_anonymous: self.auth.allow_anonymous.unwrap_or(false),
            max_subscriptions: self.limits.max_subscriptions,
            max_room_peers: self.webrtc.max_room_peers,
            max_rooms: self.limits.max_rooms,
            max_reply_bytes: self.limits.reply_limit(),
            // pusher-js presence channels need member_added/member_removed.
            announce_prefixes: self
                .pusher
                .apps
                .iter()
                .map(|app| switchboard_proto::pusher::hub_channel(&app.namespace, "presence-"))
                .collect(),
            node_name: self.engine.node_name.clone().unwrap_or_else(host_name),
            ..HubConfig::default()
        }
    }
}

/// Shortest HMAC secret accepted outside development mode: 256 bits, the HMAC-SHA256 output
/// size (RFC 7518 §3.2 requires it for HS256 keys).
pub const MIN_SECRET_BYTES: usize = 32;

/// Refuses a short HMAC secret. Every client holds values signed with these secrets (its
/// token, its TURN password), and from one such value a short secret can be found offline by
/// trying candidates; whoever finds it can then sign what the secret guards.
fn check_hmac_secret(key: &str, secret: Option<&str>, risk: &str) -> Result<(), ConfigError> {
    match secret {
        Some(secret) if secret.len() < MIN_SECRET_BYTES => Err(ConfigError::Invalid(format!(
            "{key} is {} bytes; it must be at least {MIN_SECRET_BYTES}: a shorter secret can be \
             guessed offline from what clients are given, and then {risk}. Generate one with \
             `openssl rand -hex 32`",
            secret.len()
        ))),
        _ => Ok(()),
    }
}

/// The machine's host name, for the node list.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "switchboard".into())
}

pub fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stands in for the environment layer (tests must not change the process environment).
    fn env(toml: &str) -> figment::providers::Data<Toml> {
        Toml::string(toml)
    }

    #[test]
    fn file_then_env_then_flags() {
        let dir = std::env::temp_dir().join(format!("sb-config-{}", random_hex(4)));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("s.toml");
        std::fs::write(
            &file,
            r#"
listen = "127.0.0.1:1111"
[auth]
token_secret = "from-file-0123456789abcdef0123456789"
api_key = "k"
[[namespace]]
name = "chat"
history_size = 7
history_ttl = "2m"
join_leave = false
"#,
        )
        .unwrap();
        let cfg = Config::load_from(
            Some(&file),
            env("[auth]\ntoken_secret = \"from-env-0123456789abcdef0123456789\""),
        )
        .unwrap();
        assert_eq!(
            cfg.auth.token_secret.as_deref(),
            Some("from-env-0123456789abcdef0123456789")
        );
        assert_eq!(cfg.listen, "127.0.0.1:1111");
        let cfg = cfg.with_listen(Some("127.0.0.1:2222".into()));
        let resolved = cfg.resolve().unwrap();
        assert!(!resolved.dev_mode);
        assert_eq!(resolved.listen.port(), 2222);
        let hub = resolved.config.hub_config();
        let chat = hub.namespace("chat:x");
        assert_eq!(chat.history_size, 7);
        assert_eq!(chat.history_ttl, Duration::from_secs(120));
        assert!(chat.presence && !chat.join_leave);
    }

    #[test]
    fn development_mode_listens_on_loopback_only() {
        for listen in ["0.0.0.0:7700", "192.168.1.5:7700", "[::]:7700"] {
            let refused = Config::default()
                .with_listen(Some(listen.into()))
                .resolve()
                .unwrap_err()
                .to_string();
            assert!(refused.contains("loopback"), "{listen}: {refused}");
        }
        for listen in ["127.0.0.1:7700", "[::1]:7700"] {
            let resolved = Config::default().with_listen(Some(listen.into())).resolve();
            assert!(resolved.unwrap().dev_mode, "{listen}");
        }
        let auth = "[auth]\ntoken_secret = \"0123456789abcdef0123456789abcdef\"\napi_key = \"k\"\n";
        let configured = Config::from_toml(auth)
            .unwrap()
            .with_listen(Some("0.0.0.0:7700".into()))
            .resolve()
            .unwrap();
        assert!(!configured.dev_mode);
    }

    #[test]
    fn nothing_configured_is_development_mode() {
        let r = Config::load_from(None, env("")).unwrap().resolve().unwrap();
        assert!(r.dev_mode);
        assert_eq!(r.config.auth.allow_anonymous, Some(true));
        assert_eq!(r.config.auth.allowed_origins, vec!["*".to_string()]);
        assert!(r.config.auth.api_key.is_some());
        assert_eq!(r.listen.to_string(), "127.0.0.1:7700");
        let app = &r.config.pusher.apps[0];
        assert_eq!(
            (app.id.as_str(), app.key.as_str()),
            ("1", "switchboard-key")
        );
        assert!(app.secret.len() >= 32 && app.enable_client_events);
        let configured = Config::load_from(None, env("[auth]\napi_key = \"k\""))
            .unwrap()
            .resolve()
            .unwrap();
        assert!(
            configured.config.pusher.apps.is_empty(),
            "only development mode adds one"
        );
    }

    #[test]
    fn short_hmac_secrets_are_refused_outside_development_mode() {
        let strong = "0123456789abcdef0123456789abcdef";
        let resolve = |toml: &str| Config::from_toml(toml).unwrap().resolve();
        let short_token = resolve("[auth]\ntoken_secret = \"test-secret\"\napi_key = \"k\"\n");
        let err = short_token.unwrap_err().to_string();
        assert!(
            err.contains("auth.token_secret is 11 bytes") && err.contains("at least 32"),
            "{err}"
        );
        let short_turn = resolve(&format!(
            "[auth]\ntoken_secret = \"{strong}\"\n[webrtc]\nturn_secret = \"short\"\n"
        ));
        let err = short_turn.unwrap_err().to_string();
        assert!(err.contains("webrtc.turn_secret is 5 bytes"), "{err}");
        resolve(&format!(
            "[auth]\ntoken_secret = \"{strong}\"\n[webrtc]\nturn_secret = \"{strong}\"\n"
        ))
        .expect("32 bytes are enough");
        // Development mode makes its own token secret; a TURN secret there is for trying out.
        let dev = resolve("[webrtc]\nturn_secret = \"short\"\n").unwrap();
        assert!(dev.dev_mode);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let dir = std::env::temp_dir().join(format!("sb-config-{}", random_hex(4)));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("bad.toml");
        std::fs::write(&file, "lisen = \"x\"\n").unwrap();
        assert!(Config::load_from(Some(&file), env("")).is_err());
        let cfg = Config {
            listen: "nowhere".into(),
            ..Config::default()
        };
        assert!(cfg.resolve().is_err());
    }
}
