//! The embedded STUN/TURN server (UDP), on when `[webrtc.turn] listen` is set. The protocol is
//! webrtc-rs' `turn` crate; this module adds what a deployment needs around it: the coturn
//! TURN REST credentials Switchboard hands out (expiry checked), a per-user allocation limit,
//! a relay port range, and no relaying to loopback addresses unless a test asks for it.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;
use turn::auth::{AuthHandler, generate_auth_key};
use turn::relay::RelayAddressGenerator;
use turn::relay::relay_range::RelayAddressGeneratorRanges;
use turn::server::Server;
use turn::server::config::{ConnConfig, ServerConfig};
use webrtc_util::Conn;
use webrtc_util::vnet::net::Net;

/// `[webrtc.turn]` settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TurnConfig {
    /// UDP address to listen on, e.g. `"0.0.0.0:3478"`.
    pub listen: SocketAddr,
    /// The address clients reach this server and its relays at (handed out in `ice_servers`).
    pub public_ip: IpAddr,
    #[serde(default = "default_realm")]
    pub realm: String,
    /// Relay ports.
    #[serde(default = "default_min_port")]
    pub relay_min_port: u16,
    #[serde(default = "default_max_port")]
    pub relay_max_port: u16,
    /// Relay to and from loopback addresses (tests on one machine only: it would let clients
    /// reach services on the server's own loopback interface).
    #[serde(default)]
    pub allow_loopback_peers: bool,
    /// Most live allocations per user.
    #[serde(default = "default_max_allocations")]
    pub max_allocations_per_user: usize,
}

fn default_realm() -> String {
    "switchboard".into()
}
fn default_min_port() -> u16 {
    49152
}
fn default_max_port() -> u16 {
    65535
}
fn default_max_allocations() -> usize {
    10
}

impl TurnConfig {
    /// The URL clients use, for `ice_servers`.
    pub fn url(&self) -> String {
        let ip = match self.public_ip {
            IpAddr::V6(ip) => format!("[{ip}]"),
            IpAddr::V4(ip) => ip.to_string(),
        };
        format!("turn:{ip}:{}?transport=udp", self.listen.port())
    }
}

/// A running TURN server; closed when dropped.
pub struct TurnServer {
    server: Option<Server>,
    local_addr: SocketAddr,
}

impl TurnServer {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub async fn close(mut self) {
        if let Some(server) = self.server.take() {
            let _ = server.close().await;
        }
    }
}

/// Starts the server; `secret` is the TURN REST secret (`[webrtc] turn_secret`).
pub async fn start(config: &TurnConfig, secret: &str) -> Result<TurnServer, String> {
    let socket = UdpSocket::bind(config.listen)
        .await
        .map_err(|e| format!("TURN cannot listen on {}: {e}", config.listen))?;
    let local_addr = socket.local_addr().map_err(|e| e.to_string())?;
    let (closed_tx, mut closed_rx) = tokio::sync::mpsc::channel(256);
    let auth = Arc::new(RestAuth {
        secret: secret.to_owned(),
        max_per_user: config.max_allocations_per_user,
        clients: Mutex::new(HashMap::new()),
    });
    // Allocations that end free their user's place.
    let released = auth.clone();
    tokio::spawn(async move {
        while let Some(info) = closed_rx.recv().await {
            let info: turn::allocation::AllocationInfo = info;
            released.release(&info.username, info.five_tuple.src_addr);
        }
    });
    let relays = GuardedRelays {
        inner: RelayAddressGeneratorRanges {
            relay_address: config.public_ip,
            min_port: config.relay_min_port,
            max_port: config.relay_max_port,
            max_retries: 10,
            address: config.listen.ip().to_string(),
            net: Arc::new(Net::new(None)),
        },
        allow_loopback: config.allow_loopback_peers,
    };
    let server = Server::new(ServerConfig {
        conn_configs: vec![ConnConfig {
            conn: Arc::new(socket),
            relay_addr_generator: Box::new(relays),
        }],
        realm: config.realm.clone(),
        auth_handler: auth,
        channel_bind_timeout: Duration::from_secs(0),
        alloc_close_notify: Some(closed_tx),
    })
    .await
    .map_err(|e| format!("TURN server: {e}"))?;
    tracing::info!("TURN server on udp {local_addr}");
    Ok(TurnServer {
        server: Some(server),
        local_addr,
    })
}

/// An authenticated client of a user seen this long ago without an allocation ending is
/// forgotten (its request may have failed after authentication).
const CLIENT_IDLE: Duration = Duration::from_secs(15 * 60);

/// Checks TURN REST credentials (`<expiry>:<user>`, base64(HMAC-SHA1(secret, username))) and
/// limits the live allocations of each user. TURN allows one allocation per client address,
/// so a user's allocations are counted as the client addresses that authenticated.
struct RestAuth {
    secret: String,
    max_per_user: usize,
    /// Per user: client address and when it last authenticated.
    clients: Mutex<HashMap<String, HashMap<SocketAddr, SystemTime>>>,
}

fn user_of(username: &str) -> &str {
    username.split_once(':').map_or("", |(_, user)| user)
}

impl RestAuth {
    fn release(&self, username: &str, client: SocketAddr) {
        let mut clients = self.clients.lock();
        let user = user_of(username);
        if let Some(seen) = clients.get_mut(user) {
            seen.remove(&client);
            if seen.is_empty() {
                clients.remove(user);
            }
        }
    }
}

impl AuthHandler for RestAuth {
    fn auth_handle(
        &self,
        username: &str,
        realm: &str,
        src_addr: SocketAddr,
    ) -> Result<Vec<u8>, turn::Error> {
        let refuse = |why: &str| Err(turn::Error::Other(why.to_owned()));
        let expiry = username.split(':').next().unwrap_or_default();
        let Ok(expiry) = expiry.parse::<u64>() else {
            return refuse("username must be <expiry>:<user>");
        };
        let now = SystemTime::now();
        let now_secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if expiry <= now_secs {
            return refuse("credentials expired");
        }
        {
            let mut clients = self.clients.lock();
            let seen = clients.entry(user_of(username).to_owned()).or_default();
            seen.retain(|_, at| now.duration_since(*at).unwrap_or_default() < CLIENT_IDLE);
            if !seen.contains_key(&src_addr) && seen.len() >= self.max_per_user {
                return refuse("too many allocations for this user");
            }
            seen.insert(src_addr, now);
        }
        let password = crate::turn_password(&self.secret, username);
        Ok(generate_auth_key(username, realm, &password))
    }
}

/// Relay sockets from a port range, wrapped so they refuse loopback peers when asked to.
struct GuardedRelays {
    inner: RelayAddressGeneratorRanges,
    allow_loopback: bool,
}

#[async_trait]
impl RelayAddressGenerator for GuardedRelays {
    fn validate(&self) -> Result<(), turn::Error> {
        self.inner.validate()
    }

    async fn allocate_conn(
        &self,
        use_ipv4: bool,
        requested_port: u16,
    ) -> Result<(Arc<dyn Conn + Send + Sync>, SocketAddr), turn::Error> {
        let (conn, addr) = self.inner.allocate_conn(use_ipv4, requested_port).await?;
        if self.allow_loopback {
            return Ok((conn, addr));
        }
        Ok((Arc::new(NoLoopback(conn)), addr))
    }
}

fn forbidden_peer(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback() || addr.ip().is_unspecified()
}

/// A relay socket that neither sends to nor accepts from loopback addresses.
struct NoLoopback(Arc<dyn Conn + Send + Sync>);

#[async_trait]
impl Conn for NoLoopback {
    async fn connect(&self, addr: SocketAddr) -> webrtc_util::Result<()> {
        self.0.connect(addr).await
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        self.0.recv(buf).await
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        loop {
            let (n, from) = self.0.recv_from(buf).await?;
            if !forbidden_peer(&from) {
                return Ok((n, from));
            }
        }
    }

    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        self.0.send(buf).await
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        if forbidden_peer(&target) {
            return Err(webrtc_util::Error::Other(format!(
                "relaying to {target} is not allowed"
            )));
        }
        self.0.send_to(buf, target).await
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        self.0.local_addr()
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        self.0.remote_addr()
    }

    async fn close(&self) -> webrtc_util::Result<()> {
        self.0.close().await
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}
