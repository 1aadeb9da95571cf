//! The embedded STUN/TURN server (UDP), on when `[webrtc.turn] listen` is set. The protocol is
//! webrtc-rs' `turn` crate; this module adds what a deployment needs around it: the coturn
//! TURN REST credentials Switchboard hands out (expiry checked), a per-user allocation limit
//! counted only for authenticated requests, a relay port range, and the peer policy
//! ([`crate::peer_policy`]): no permission, channel or relayed datagram towards loopback,
//! private, link-local and other special addresses unless the operator allows them.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use stun::attributes::{ATTR_MESSAGE_INTEGRITY, ATTR_REALM, ATTR_USERNAME, ATTR_XOR_PEER_ADDRESS};
use stun::error_code::{CODE_ALLOC_QUOTA_REACHED, CODE_FORBIDDEN, ErrorCode, ErrorCodeAttribute};
use stun::integrity::MessageIntegrity;
use stun::message::{
    CLASS_ERROR_RESPONSE, CLASS_INDICATION, CLASS_REQUEST, Getter, METHOD_ALLOCATE,
    METHOD_CHANNEL_BIND, METHOD_CREATE_PERMISSION, METHOD_SEND, Message, MessageType, is_message,
};
use stun::textattrs::TextAttribute;
use tokio::net::UdpSocket;
use turn::auth::{AuthHandler, generate_auth_key};
use turn::proto::peeraddr::PeerAddress;
use turn::relay::RelayAddressGenerator;
use turn::relay::relay_range::RelayAddressGeneratorRanges;
use turn::server::Server;
use turn::server::config::{ConnConfig, ServerConfig};
use webrtc_util::Conn;
use webrtc_util::vnet::net::Net;

use crate::peer_policy::PeerPolicy;

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
    /// Special ranges (private, link-local, ...) the relay may reach anyway, as CIDR strings
    /// (`"10.1.0.0/16"`, `"fd00::/8"`). Public unicast addresses are always allowed.
    #[serde(default)]
    pub allowed_peer_ranges: Vec<String>,
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

    /// The peers relays may reach; an error names a bad `allowed_peer_ranges` entry.
    pub fn peer_policy(&self) -> Result<PeerPolicy, String> {
        PeerPolicy::new(self.allow_loopback_peers, &self.allowed_peer_ranges)
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
    let policy = config.peer_policy()?;
    let socket = UdpSocket::bind(config.listen)
        .await
        .map_err(|e| format!("TURN cannot listen on {}: {e}", config.listen))?;
    let local_addr = socket.local_addr().map_err(|e| e.to_string())?;
    let (closed_tx, mut closed_rx) = tokio::sync::mpsc::channel(256);
    let auth = Arc::new(RestAuth {
        secret: secret.to_owned(),
    });
    let quota = Arc::new(Quota {
        max_per_user: config.max_allocations_per_user,
        clients: Mutex::new(HashMap::new()),
    });
    // Allocations that end free their user's place.
    let released = quota.clone();
    tokio::spawn(async move {
        while let Some(info) = closed_rx.recv().await {
            let info: turn::allocation::AllocationInfo = info;
            released.release(&info.username, info.five_tuple.src_addr);
        }
    });
    let listener = GatedListener {
        inner: Arc::new(socket),
        gate: Gate {
            auth: auth.clone(),
            quota,
            policy: policy.clone(),
        },
    };
    let relays = PolicedRelays {
        inner: RelayAddressGeneratorRanges {
            relay_address: config.public_ip,
            min_port: config.relay_min_port,
            max_port: config.relay_max_port,
            max_retries: 10,
            address: config.listen.ip().to_string(),
            net: Arc::new(Net::new(None)),
        },
        policy,
    };
    let server = Server::new(ServerConfig {
        conn_configs: vec![ConnConfig {
            conn: Arc::new(listener),
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

/// An authenticated client of a user seen this long ago is forgotten: its Allocate may have
/// failed after authentication, and a live allocation refreshes well within this (its
/// lifetime is at most an hour, 10 minutes by default).
const CLIENT_IDLE: Duration = Duration::from_secs(15 * 60);

/// TURN REST credentials: username `<expiry>:<user>`, password
/// base64(HMAC-SHA1(secret, username)).
struct RestAuth {
    secret: String,
}

impl RestAuth {
    /// The long-term key of `username` (RFC 8489 §9.2.2), or why there is none. No side
    /// effects: the TURN server asks for it before it has checked MESSAGE-INTEGRITY.
    fn key(&self, username: &str, realm: &str) -> Result<Vec<u8>, &'static str> {
        let expiry = username.split(':').next().unwrap_or_default();
        let Ok(expiry) = expiry.parse::<u64>() else {
            return Err("username must be <expiry>:<user>");
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if expiry <= now {
            return Err("credentials expired");
        }
        let password = crate::turn_password(&self.secret, username);
        Ok(generate_auth_key(username, realm, &password))
    }
}

impl AuthHandler for RestAuth {
    fn auth_handle(
        &self,
        username: &str,
        realm: &str,
        _src_addr: SocketAddr,
    ) -> Result<Vec<u8>, turn::Error> {
        self.key(username, realm)
            .map_err(|why| turn::Error::Other(why.to_owned()))
    }
}

fn user_of(username: &str) -> &str {
    username.split_once(':').map_or("", |(_, user)| user)
}

/// The live allocations of each user. TURN allows one allocation per client address, so a
/// user's allocations are counted as the client addresses that sent it an authenticated
/// Allocate.
struct Quota {
    max_per_user: usize,
    /// Per user: client address and when it last sent an authenticated request.
    clients: Mutex<HashMap<String, HashMap<SocketAddr, SystemTime>>>,
}

impl Quota {
    /// Counts `client` for `user` unless the user is at the limit with other clients.
    fn admit(&self, user: &str, client: SocketAddr, now: SystemTime) -> bool {
        let mut clients = self.clients.lock();
        let seen = clients.entry(user.to_owned()).or_default();
        seen.retain(|_, at| now.duration_since(*at).unwrap_or_default() < CLIENT_IDLE);
        if !seen.contains_key(&client) && seen.len() >= self.max_per_user {
            return false;
        }
        seen.insert(client, now);
        true
    }

    /// Notes that a counted client is still in use (it refreshed, asked for permissions).
    fn touch(&self, user: &str, client: SocketAddr, now: SystemTime) {
        if let Some(at) = self
            .clients
            .lock()
            .get_mut(user)
            .and_then(|seen| seen.get_mut(&client))
        {
            *at = now;
        }
    }

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

/// What the gate does with a datagram that reached the TURN listener.
#[derive(Debug, PartialEq)]
enum Verdict {
    /// Hand it to the TURN server.
    Pass,
    /// Drop it without an answer.
    Drop,
    /// Answer it with this STUN message; the TURN server never sees it.
    Answer(Vec<u8>),
}

/// Our rules, applied to each datagram before webrtc-rs' TURN server handles it (the server
/// has no hook of its own for them): the per-user allocation quota, and the peer policy on
/// CreatePermission, ChannelBind and Send.
///
/// Only requests whose MESSAGE-INTEGRITY checks out are counted or refused here, so nobody
/// can use up a user's quota, or learn anything, without that user's credentials. Anything
/// else passes to the server, which challenges (401), refuses (400, 438) or ignores it.
struct Gate {
    auth: Arc<RestAuth>,
    quota: Arc<Quota>,
    policy: PeerPolicy,
}

impl Gate {
    fn judge(&self, packet: &[u8], from: SocketAddr, now: SystemTime) -> Verdict {
        // ChannelData goes only to bound channels, and a channel is bound only after the
        // ChannelBind passed here.
        if !is_message(packet) {
            return Verdict::Pass;
        }
        let mut m = Message {
            raw: packet.to_vec(),
            ..Message::default()
        };
        if m.decode().is_err() {
            return Verdict::Pass;
        }
        let peers_allowed = || {
            peer_addresses(&m)
                .iter()
                .all(|peer| peer.is_some_and(|ip| self.policy.allows(ip)))
        };
        if m.typ == MessageType::new(METHOD_SEND, CLASS_INDICATION) {
            // Indications carry no credentials; the relay has no permission for a refused
            // peer anyway, this keeps it so even if that changed.
            return if peers_allowed() {
                Verdict::Pass
            } else {
                Verdict::Drop
            };
        }
        if m.typ.class != CLASS_REQUEST {
            return Verdict::Pass;
        }
        let Some((username, key)) = self.authenticated(&m) else {
            return Verdict::Pass;
        };
        let user = user_of(&username);
        match m.typ.method {
            METHOD_ALLOCATE => {
                // Counts this client for the user, or refuses it past the limit.
                if !self.quota.admit(user, from, now) {
                    tracing::debug!("TURN: {from} refused, {user} is at the allocation limit");
                    let reason = "Allocation Quota Reached";
                    return answer_error(&m, CODE_ALLOC_QUOTA_REACHED, reason, key);
                }
            }
            METHOD_CREATE_PERMISSION | METHOD_CHANNEL_BIND if !peers_allowed() => {
                tracing::debug!("TURN: {from} refused a permission towards a special address");
                let reason = "Forbidden: peer address not allowed";
                return answer_error(&m, CODE_FORBIDDEN, reason, key);
            }
            // Refresh, and permissions towards allowed peers: the client is still in use.
            _ => self.quota.touch(user, from, now),
        }
        Verdict::Pass
    }

    /// The username and key of a request whose MESSAGE-INTEGRITY is right.
    fn authenticated(&self, m: &Message) -> Option<(String, Vec<u8>)> {
        if !m.contains(ATTR_MESSAGE_INTEGRITY) {
            return None;
        }
        let username = TextAttribute::get_from_as(m, ATTR_USERNAME).ok()?.text;
        let realm = TextAttribute::get_from_as(m, ATTR_REALM).ok()?.text;
        let key = self.auth.key(&username, &realm).ok()?;
        MessageIntegrity(key.clone()).check(&mut m.clone()).ok()?;
        Some((username, key))
    }
}

/// Every XOR-PEER-ADDRESS of a message, `None` for one that cannot be read. All of them: a
/// request may carry several, and the server must not act on one we did not judge.
fn peer_addresses(m: &Message) -> Vec<Option<IpAddr>> {
    m.attributes
        .0
        .iter()
        .filter(|attr| attr.typ == ATTR_XOR_PEER_ADDRESS)
        .map(|attr| {
            // The address is XORed with the transaction id: decode it in a message of its own
            // with the same id.
            let mut alone = Message::new();
            alone.transaction_id = m.transaction_id;
            alone.add(ATTR_XOR_PEER_ADDRESS, &attr.value);
            let mut peer = PeerAddress::default();
            peer.get_from(&alone).ok().map(|()| peer.ip)
        })
        .collect()
}

/// An error response to an authenticated request, signed with the same key (RFC 8489
/// §9.2.4: a client discards an unsigned answer to a signed request).
fn answer_error(request: &Message, code: ErrorCode, reason: &str, key: Vec<u8>) -> Verdict {
    let mut response = Message::new();
    let built = response.build(&[
        // A message as a setter copies its transaction id.
        Box::new(Message {
            transaction_id: request.transaction_id,
            ..Message::default()
        }),
        Box::new(MessageType::new(request.typ.method, CLASS_ERROR_RESPONSE)),
        Box::new(ErrorCodeAttribute {
            code,
            reason: reason.as_bytes().to_vec(),
        }),
        Box::new(MessageIntegrity(key)),
    ]);
    match built {
        Ok(()) => Verdict::Answer(response.raw),
        Err(_) => Verdict::Drop,
    }
}

/// The TURN listener socket, with the [`Gate`] in front of the server's reads.
struct GatedListener {
    inner: Arc<dyn Conn + Send + Sync>,
    gate: Gate,
}

#[async_trait]
impl Conn for GatedListener {
    async fn connect(&self, addr: SocketAddr) -> webrtc_util::Result<()> {
        self.inner.connect(addr).await
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        self.inner.recv(buf).await
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        loop {
            let (n, from) = self.inner.recv_from(buf).await?;
            match self.gate.judge(&buf[..n], from, SystemTime::now()) {
                Verdict::Pass => return Ok((n, from)),
                Verdict::Drop => {}
                Verdict::Answer(response) => {
                    // The server answers from this loop too: one datagram at a time.
                    if let Err(e) = self.inner.send_to(&response, from).await {
                        tracing::debug!("TURN: answer to {from} not sent: {e}");
                    }
                }
            }
        }
    }

    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        self.inner.send(buf).await
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        self.inner.send_to(buf, target).await
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        self.inner.remote_addr()
    }

    async fn close(&self) -> webrtc_util::Result<()> {
        self.inner.close().await
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

/// Relay sockets from a port range, each wrapped in the peer policy.
struct PolicedRelays {
    inner: RelayAddressGeneratorRanges,
    policy: PeerPolicy,
}

#[async_trait]
impl RelayAddressGenerator for PolicedRelays {
    fn validate(&self) -> Result<(), turn::Error> {
        self.inner.validate()
    }

    async fn allocate_conn(
        &self,
        use_ipv4: bool,
        requested_port: u16,
    ) -> Result<(Arc<dyn Conn + Send + Sync>, SocketAddr), turn::Error> {
        let (conn, addr) = self.inner.allocate_conn(use_ipv4, requested_port).await?;
        let relay = PolicedRelay {
            inner: conn,
            policy: self.policy.clone(),
        };
        Ok((Arc::new(relay), addr))
    }
}

/// A relay socket that neither sends to nor accepts from a peer the policy refuses. The gate
/// already keeps such peers from getting a permission; this holds whatever the server does.
struct PolicedRelay {
    inner: Arc<dyn Conn + Send + Sync>,
    policy: PeerPolicy,
}

#[async_trait]
impl Conn for PolicedRelay {
    async fn connect(&self, addr: SocketAddr) -> webrtc_util::Result<()> {
        self.inner.connect(addr).await
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        self.inner.recv(buf).await
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        loop {
            let (n, from) = self.inner.recv_from(buf).await?;
            if self.policy.allows(from.ip()) {
                return Ok((n, from));
            }
        }
    }

    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        self.inner.send(buf).await
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        if !self.policy.allows(target.ip()) {
            return Err(webrtc_util::Error::Other(format!(
                "relaying to {target} is not allowed"
            )));
        }
        self.inner.send_to(buf, target).await
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        self.inner.remote_addr()
    }

    async fn close(&self) -> webrtc_util::Result<()> {
        self.inner.close().await
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stun::agent::TransactionId;
    use stun::message::{METHOD_REFRESH, Setter};
    use stun::textattrs::{Nonce, Realm, Username};

    const SECRET: &str = "gate-test-secret-0123456789abcdef";

    fn gate(max_per_user: usize) -> Gate {
        Gate {
            auth: Arc::new(RestAuth {
                secret: SECRET.into(),
            }),
            quota: Arc::new(Quota {
                max_per_user,
                clients: Mutex::new(HashMap::new()),
            }),
            policy: PeerPolicy::new(false, &[]).unwrap(),
        }
    }

    fn username(user: &str) -> String {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        crate::turn_credentials(SECRET, user, now.as_secs() + 600).0
    }

    /// A request as a client sends it; signed with `password` when given.
    fn request(
        typ: MessageType,
        username: &str,
        password: Option<&str>,
        peers: &[&str],
    ) -> Vec<u8> {
        let mut setters: Vec<Box<dyn Setter>> = vec![
            Box::new(Message {
                transaction_id: TransactionId::new(),
                ..Message::default()
            }),
            Box::new(typ),
        ];
        for peer in peers {
            setters.push(Box::new(PeerAddress {
                ip: peer.parse().unwrap(),
                port: 9,
            }));
        }
        setters.push(Box::new(Username::new(ATTR_USERNAME, username.into())));
        setters.push(Box::new(Realm::new(ATTR_REALM, "switchboard".into())));
        setters.push(Box::new(Nonce::new(
            stun::attributes::ATTR_NONCE,
            "nonce".into(),
        )));
        if let Some(password) = password {
            setters.push(Box::new(MessageIntegrity::new_long_term_integrity(
                username.into(),
                "switchboard".into(),
                password.into(),
            )));
        }
        let mut m = Message::new();
        m.build(&setters).unwrap();
        m.raw
    }

    /// Signed with the credentials of `username` exactly (its expiry fixed by the caller, so
    /// a second boundary passing mid-test does not change the key).
    fn signed_as(typ: MessageType, username: &str, peers: &[&str]) -> Vec<u8> {
        let password = crate::turn_password(SECRET, username);
        request(typ, username, Some(&password), peers)
    }

    fn from(port: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], port))
    }

    /// The error code of an answer, after checking it is signed with the user's key.
    fn answered_code(verdict: Verdict, username: &str) -> u16 {
        let Verdict::Answer(raw) = verdict else {
            panic!("no answer: {verdict:?}");
        };
        let mut m = Message {
            raw,
            ..Message::default()
        };
        m.decode().unwrap();
        assert_eq!(m.typ.class, CLASS_ERROR_RESPONSE);
        let password = crate::turn_password(SECRET, username);
        let key = generate_auth_key(username, "switchboard", &password);
        MessageIntegrity(key)
            .check(&mut m.clone())
            .expect("the answer is signed");
        let mut code = ErrorCodeAttribute::default();
        code.get_from(&m).unwrap();
        code.code.0
    }

    const ALLOCATE: MessageType = MessageType {
        method: METHOD_ALLOCATE,
        class: CLASS_REQUEST,
    };
    const PERMISSION: MessageType = MessageType {
        method: METHOD_CREATE_PERMISSION,
        class: CLASS_REQUEST,
    };
    const BIND: MessageType = MessageType {
        method: METHOD_CHANNEL_BIND,
        class: CLASS_REQUEST,
    };
    const SEND: MessageType = MessageType {
        method: METHOD_SEND,
        class: CLASS_INDICATION,
    };

    #[test]
    fn unauthenticated_allocations_do_not_count_against_the_user() {
        let gate = gate(2);
        let now = SystemTime::now();
        let victim = username("victim");
        for port in 1..50 {
            let forged = request(ALLOCATE, &victim, Some("wrong"), &[]);
            assert_eq!(gate.judge(&forged, from(port), now), Verdict::Pass);
            let unsigned = request(ALLOCATE, &victim, None, &[]);
            assert_eq!(gate.judge(&unsigned, from(port), now), Verdict::Pass);
        }
        for port in [100, 101] {
            let allocate = signed_as(ALLOCATE, &victim, &[]);
            assert_eq!(gate.judge(&allocate, from(port), now), Verdict::Pass);
        }
        // The same client again is not a new allocation; a third client is over the limit.
        let again = signed_as(ALLOCATE, &victim, &[]);
        assert_eq!(gate.judge(&again, from(100), now), Verdict::Pass);
        let third = signed_as(ALLOCATE, &victim, &[]);
        assert_eq!(
            answered_code(gate.judge(&third, from(102), now), &victim),
            486
        );
        // Released, the place is free again; forgotten after CLIENT_IDLE without a request.
        gate.quota.release(&victim, from(100));
        assert_eq!(gate.judge(&third, from(102), now), Verdict::Pass);
        let later = now + CLIENT_IDLE + Duration::from_secs(1);
        let refresh = signed_as(
            MessageType::new(METHOD_REFRESH, CLASS_REQUEST),
            &victim,
            &[],
        );
        assert_eq!(
            gate.judge(&refresh, from(102), later - Duration::from_secs(2)),
            Verdict::Pass
        );
        let fourth = signed_as(ALLOCATE, &victim, &[]);
        assert_eq!(
            gate.judge(&fourth, from(103), later),
            Verdict::Pass,
            "101 was idle"
        );
        let fifth = signed_as(ALLOCATE, &victim, &[]);
        assert_eq!(
            answered_code(gate.judge(&fifth, from(104), later), &victim),
            486,
            "102 refreshed, so it still counts"
        );
    }

    #[test]
    fn permissions_towards_special_addresses_get_403() {
        let gate = gate(10);
        let now = SystemTime::now();
        let user = username("carol");
        for method in [PERMISSION, BIND] {
            for peer in ["10.0.0.1", "169.254.169.254", "::ffff:127.0.0.1", "fe80::1"] {
                let refused = signed_as(method, &user, &[peer]);
                assert_eq!(
                    answered_code(gate.judge(&refused, from(1), now), &user),
                    403
                );
            }
            // Every peer address counts, not just the first.
            let mixed = signed_as(method, &user, &["8.8.8.8", "192.168.1.1"]);
            assert_eq!(answered_code(gate.judge(&mixed, from(1), now), &user), 403);
            let public = signed_as(method, &user, &["8.8.8.8"]);
            assert_eq!(gate.judge(&public, from(1), now), Verdict::Pass);
            // Without credentials the server challenges it, and nothing is said here.
            let unsigned = request(method, &user, None, &["10.0.0.1"]);
            assert_eq!(gate.judge(&unsigned, from(1), now), Verdict::Pass);
        }
    }

    #[test]
    fn send_indications_towards_special_addresses_are_dropped() {
        let gate = gate(10);
        let now = SystemTime::now();
        let user = username("dan");
        for peer in ["127.0.0.1", "10.1.1.1", "::ffff:169.254.169.254"] {
            let send = request(SEND, &user, None, &[peer]);
            assert_eq!(gate.judge(&send, from(1), now), Verdict::Drop, "{peer}");
        }
        let send = request(SEND, &user, None, &["8.8.8.8"]);
        assert_eq!(gate.judge(&send, from(1), now), Verdict::Pass);
        assert_eq!(
            gate.judge(b"\x40\x00\x00\x04data", from(1), now),
            Verdict::Pass
        );
    }
}
