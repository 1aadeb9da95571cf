//! The Switchboard server: the doors (WebSocket now; SSE, streaming and polling plug in the
//! same way), the server API, auth, config and metrics, around the hub of
//! `switchboard-core`.

mod admission;
mod api;
mod app;
pub mod auth;
pub mod config;
mod datachannel;
mod demo;
mod door;
mod http;
mod http_client;
mod media;
mod metrics;
pub mod pusher;
mod state;
mod status;
mod streams;
mod tls;
mod ws;

// Entry points of the fuzz targets in `fuzz/`: they reach private parsers without making
// those parsers part of the API.
#[doc(hidden)]
pub use pusher::conn::fuzz_pusher_frame;
#[doc(hidden)]
pub use streams::cursor::fuzz_cursor;
#[doc(hidden)]
pub use streams::direct::fuzz_stream_head;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use switchboard_core::{Authenticator, Hub, MemoryEngine, unix_now};
use tokio::net::{TcpListener, TcpStream};

use crate::app::Doors;
use crate::auth::JwtAuthenticator;
use crate::config::Resolved;
use crate::metrics::ServerStats;
use crate::state::AppState;
use crate::streams::direct::Peeked;

/// Lets a request drop its own HTTP connection (a streaming response whose client stopped
/// reading cannot otherwise be ended: hyper only polls a body when it can write).
#[derive(Clone)]
pub struct ConnectionKill(Arc<tokio::sync::Notify>);

impl ConnectionKill {
    pub fn kill(&self) {
        self.0.notify_one();
    }
}

/// How long shutdown waits for clients to receive their `disconnect` and go.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The engine `[engine]` asks for.
async fn build_engine(
    config: &config::EngineConfig,
    hub_config: &switchboard_core::HubConfig,
) -> Result<Arc<dyn switchboard_core::Engine>, String> {
    let idle_ttl = hub_config.stream_idle_ttl;
    let prefix = config
        .prefix
        .clone()
        .unwrap_or_else(|| "switchboard".into());
    match (config.kind, &config.data_dir) {
        (config::EngineKind::Redis, None) => {
            let options = switchboard_engines::redis::RedisOptions {
                url: config
                    .redis_url
                    .clone()
                    .unwrap_or_else(|| "redis://127.0.0.1:6379".into()),
                prefix,
                node_id: switchboard_core::engine::new_node_id(),
                node_ttl: Duration::from_secs(config.node_ttl.max(1)),
                idle_ttl,
            };
            let engine = switchboard_engines::redis::RedisEngine::connect(options.clone()).await?;
            tracing::info!(
                "redis engine at {} (prefix {:?}), node {}",
                options.url,
                options.prefix,
                engine.node_id()
            );
            Ok(Arc::new(engine))
        }
        (config::EngineKind::Nats, None) => {
            let namespaces = hub_config.clone();
            let options = switchboard_engines::nats::NatsOptions {
                url: config
                    .nats_url
                    .clone()
                    .unwrap_or_else(|| "nats://127.0.0.1:4222".into()),
                prefix,
                node_id: switchboard_core::engine::new_node_id(),
                node_ttl: Duration::from_secs(config.node_ttl.max(1)),
                idle_ttl,
                stream_options: Arc::new(move |channel| namespaces.stream_options(channel)),
            };
            let engine = switchboard_engines::nats::NatsEngine::connect(options.clone()).await?;
            tracing::info!(
                "nats engine at {} (prefix {:?}), node {}",
                options.url,
                options.prefix,
                engine.node_id()
            );
            Ok(Arc::new(engine))
        }
        (config::EngineKind::Redis | config::EngineKind::Nats, Some(_)) => Err(
            "[engine] data_dir is for the memory engine; Redis and NATS keep history themselves"
                .into(),
        ),
        (config::EngineKind::Memory, None) => Ok(Arc::new(MemoryEngine::new(idle_ttl))),
        (config::EngineKind::Memory, Some(dir)) => {
            let store = switchboard_engines::durable::RedbStore::open(dir)?;
            let engine = MemoryEngine::durable(idle_ttl, Arc::new(store))
                .map_err(|e| format!("cannot restore history from {}: {e}", dir.display()))?;
            tracing::info!("history kept on disk in {}", dir.display());
            Ok(Arc::new(engine))
        }
    }
}

/// ICE servers for room peers, from `[webrtc]`, with TURN credentials minted per request.
struct IceFromConfig(switchboard_rtc::WebrtcConfig);

impl switchboard_core::rooms::IceServers for IceFromConfig {
    fn for_user(&self, user: &str) -> serde_json::Value {
        self.0.ice_servers(user, unix_now())
    }
}

/// Answers the server API's question of which node holds a room's media.
struct MediaRoomsOfNode(switchboard_rtc::media::Media);

impl switchboard_core::hub::MediaRooms for MediaRoomsOfNode {
    fn peers_in(&self, room: &str) -> usize {
        self.0.peers_in(room)
    }
}

/// A bound, not yet running server.
pub struct Server {
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    doors: Arc<Doors>,
    /// The embedded TURN server, when `[webrtc.turn]` is set.
    turn: Option<switchboard_rtc::turn_server::TurnServer>,
}

impl Server {
    /// Builds the hub and binds the listener.
    pub async fn bind(resolved: &Resolved) -> Result<Server, String> {
        let config = &resolved.config;
        let hub_config = config.hub_config();
        let engine = build_engine(&config.engine, &hub_config).await?;
        let hub = Hub::new(hub_config, engine);
        let mut webrtc = config.webrtc.clone();
        let turn = match &webrtc.turn {
            None => None,
            Some(turn_config) => {
                let secret = webrtc.turn_secret.clone().ok_or(
                    "[webrtc.turn] needs [webrtc] turn_secret: its credentials are signed with it",
                )?;
                let turn = switchboard_rtc::turn_server::start(turn_config, &secret).await?;
                // The bound port (the config may say 0), at the address clients reach.
                let mut public = turn_config.clone();
                public.listen.set_port(turn.local_addr().port());
                webrtc.turn_urls.push(public.url());
                Some(turn)
            }
        };
        hub.set_ice_servers(Arc::new(IceFromConfig(webrtc.clone())));
        let auth = JwtAuthenticator::new(&config.auth)?;
        let auth: Arc<dyn Authenticator> = Arc::new(auth);
        let tls = match &config.tls {
            Some(t) => Some(tls::server_config(&t.cert, &t.key)?),
            None => None,
        };
        let listener = listen(resolved.listen)
            .map_err(|e| format!("cannot listen on {}: {e}", resolved.listen))?;
        let http_addr = listener
            .local_addr()
            .map_err(|e| format!("cannot read the listener's address: {e}"))?;
        let media = switchboard_rtc::media::Media::start(&webrtc.media, http_addr)
            .await
            .map_err(|e| format!("cannot start the media plane (UDP): {e}"))?;
        hub.set_media_rooms(Arc::new(MediaRoomsOfNode(media.clone())));
        let stats = Arc::new(ServerStats::default());
        let apps = pusher::Pusher::new(&config.pusher, &stats, &hub)?;
        apps.observe(&hub);
        let admission = Arc::new(admission::Admission::new(&config.limits, stats.clone())?);
        let shared = Arc::new(AppState {
            hub,
            auth,
            stats,
            limits: config.limits.clone(),
            api_key: config.auth.api_key.clone(),
            shutting_down: AtomicBool::new(false),
            allowed_origins: config.auth.allowed_origins.clone(),
            admission,
            media_stats: media.stats().clone(),
        });
        let streams = Arc::new(streams::StreamsState {
            shared: shared.clone(),
            sessions: streams::sessions::Sessions::new(
                config.limits.client_rate,
                config.limits.client_burst,
            ),
            cursor_key: Arc::new(streams::cursor::CursorKey::new(
                config.cursor_secret().as_bytes(),
            )),
        });
        let pusher = Arc::new(pusher::door::PusherDoor {
            shared: shared.clone(),
            apps,
            http_sessions: Default::default(),
        });
        let media = Arc::new(media::MediaDoor {
            shared: shared.clone(),
            media,
            webrtc,
        });
        Ok(Server {
            listener,
            tls,
            doors: Arc::new(Doors {
                shared,
                streams,
                pusher,
                media,
            }),
            turn,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Whether clients reach this server over TLS (`https://`, `wss://`).
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The embedded TURN server's UDP address, when it runs.
    pub fn turn_addr(&self) -> Option<SocketAddr> {
        self.turn.as_ref().map(|t| t.local_addr())
    }

    pub fn hub(&self) -> &Arc<Hub> {
        &self.doors.shared.hub
    }

    /// Serves until `shutdown` resolves, then tells every client to reconnect and drains.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let doors = self.doors;
        let state = doors.shared.clone();
        let ticker = tokio::spawn(tick(doors.clone()));
        let on_shutdown = {
            let state = state.clone();
            async move {
                shutdown.await;
                state.shutting_down.store(true, Ordering::Relaxed);
                state.hub.shutdown();
            }
        };
        let router = app::router(&doors);
        let handshake_timeout = state.limits.handshake_timeout;
        let ice_tcp = doors
            .media
            .media
            .takes_ice_tcp()
            .then(|| doors.media.media.clone());
        let result = serve_http(
            self.listener,
            self.tls,
            router,
            ice_tcp,
            handshake_timeout,
            on_shutdown,
        )
        .await;
        let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
        while state.hub.connection_count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        ticker.abort();
        if let Some(turn) = self.turn {
            turn.close().await;
        }
        result
    }
}

/// Accepts connections and serves HTTP/1.1 on each (with upgrades, which the WebSocket door
/// takes over), over TLS when configured, until `shutdown`; then lets in-flight requests
/// finish. With `ice_tcp`, a connection that opens with a framed STUN request is media
/// (ICE over TCP), handed to the media plane before any TLS.
async fn serve_http(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    router: axum::Router,
    ice_tcp: Option<switchboard_rtc::media::Media>,
    handshake_timeout: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    // Every HTTP connection task holds a receiver; shutdown is announced through it and
    // complete once they have all let go.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let local = tcp.local_addr().ok();
        let router = router.clone();
        let stopped = stopped.clone();
        let acceptor = acceptor.clone();
        let ice_tcp = ice_tcp.clone();
        tokio::spawn(async move {
            // Every step a client must take before it is served is bounded by the handshake
            // timeout: a slow or silent client (slowloris) holds nothing for long.
            if let Some(media) = ice_tcp {
                match peek_ice_tcp(&tcp, handshake_timeout).await {
                    Some(true) => return media.accept_tcp(tcp, peer),
                    Some(false) => {}
                    None => return tracing::debug!("connection silent or too slow"),
                }
            }
            match acceptor {
                None => match streams::direct::peek_stream_request(&tcp, handshake_timeout).await {
                    Peeked::Stream(head) => {
                        streams::direct::serve(tcp, *head, peer, router, stopped).await
                    }
                    Peeked::Other => {
                        serve_connection(tcp, peer, local, router, handshake_timeout, stopped).await
                    }
                    Peeked::TooSlow => tracing::debug!("request head too slow"),
                },
                Some(acceptor) => {
                    let handshake = tokio::time::timeout(handshake_timeout, acceptor.accept(tcp));
                    match handshake.await {
                        Ok(Ok(stream)) => {
                            serve_connection(
                                stream,
                                peer,
                                local,
                                router,
                                handshake_timeout,
                                stopped,
                            )
                            .await
                        }
                        Ok(Err(e)) => tracing::debug!("TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                }
            }
        });
    }
    drop(listener);
    let _ = stop.send(true);
    let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
    while stop.receiver_count() > 1 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Whether a new connection opens with ICE over TCP (`None`: it said too little in time).
/// HTTP and TLS tell themselves apart by their first byte, so they wait for nothing here.
async fn peek_ice_tcp(tcp: &TcpStream, timeout: Duration) -> Option<bool> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut start = [0u8; 4];
    loop {
        let n = match tokio::time::timeout_at(deadline, tcp.peek(&mut start)).await {
            Ok(Ok(n)) => n,
            // An error or a closed connection: HTTP's own handling says the rest.
            Ok(Err(_)) => return Some(false),
            Err(_) => return None,
        };
        if n == 0 {
            return Some(false);
        }
        if let Some(verdict) = switchboard_rtc::media::looks_like_ice_tcp(&start[..n]) {
            return Some(verdict);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Serves one HTTP/1.1 connection until it ends, is upgraded, or shutdown asks it to stop.
async fn serve_connection<I>(
    io: I,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    router: axum::Router,
    handshake_timeout: Duration,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use tower_service::Service;

    let kill = ConnectionKill(Arc::new(tokio::sync::Notify::new()));
    let handle = kill.clone();
    let service = hyper::service::service_fn(move |mut request: axum::http::Request<_>| {
        request.extensions_mut().insert(handle.clone());
        request.extensions_mut().insert(admission::PeerAddr(peer));
        if let Some(local) = local {
            request.extensions_mut().insert(media::LocalAddr(local));
        }
        let mut router = router.clone();
        async move { router.call(request).await }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(handshake_timeout)
        .serve_connection(hyper_util::rt::TokioIo::new(io), service)
        .with_upgrades();
    let mut connection = std::pin::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = stopped.changed() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
        // Dropping the connection closes its socket.
        _ = kill.0.notified() => return,
    };
    if let Err(e) = result {
        tracing::debug!("http connection: {e}");
    }
}

/// The one shared timer: token expiry and engine upkeep every second, keep-alives every
/// ping interval (no per-connection timers).
async fn tick(doors: Arc<Doors>) {
    let state = &doors.shared;
    let mut every_second = tokio::time::interval(Duration::from_secs(1));
    every_second.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ping_every = state.limits.ping_interval.as_secs().max(1);
    let mut seconds = 0u64;
    loop {
        every_second.tick().await;
        seconds += 1;
        let now = unix_now();
        state.hub.expire_tokens(now);
        state.hub.engine().maintain(now);
        doors.streams.sessions.expire_polls(now);
        doors.pusher.http_sessions.expire(now);
        if seconds.is_multiple_of(ping_every) {
            state.hub.heartbeat();
        }
    }
}

/// Pending connections the kernel queues for `accept`. The usual 128 overflows in a burst of
/// handshakes (reconnect storms, the bench's 256 in flight): the kernel then drops SYNs and
/// clients retry only after a second. The kernel caps it at `net.core.somaxconn`.
const ACCEPT_BACKLOG: u32 = 4096;

/// Binds like `TcpListener::bind` (with `SO_REUSEADDR`, as std does), with a deep backlog.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(ACCEPT_BACKLOG)
}
