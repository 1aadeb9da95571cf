//! Pusher Channels compatibility: pusher-js, Laravel Echo and the Pusher server SDKs talk to
//! the same hub as the native doors.
//!
//! - `config.rs`: `[[pusher.apps]]`.
//! - `signing.rs`: channel, user, API request and webhook signatures.
//! - `codec.rs`: the door's wire form, a `DoorCodec` that turns hub frames into Pusher
//!   events (WebSocket frames or SockJS lines), with each presence channel's members.
//! - `conn.rs`: one connection's commands (subscribe with signatures, presence, sign-in,
//!   client events), whatever carries them.
//! - `ws.rs`: the WebSocket door `/app/{key}` (Pusher protocol 7) on the shared WebSocket
//!   driver (`ws/conn.rs`).
//! - `http.rs`: pusher-js's HTTP fallbacks (`xhr_streaming`, `xhr` polling) and
//!   `http_sessions.rs`, their sessions.
//! - `door.rs`: the door's state (the apps, the fallbacks' sessions, what every door shares).
//! - `api.rs`: the HTTP API under `/apps/{app_id}` with request signing.
//! - `webhooks.rs`: batched, signed, retried webhooks, checked across nodes.
//! - `occupancy.rs`: which node reports a channel occupied when several hold it.
//!
//! How Pusher maps onto the hub (channel names, event envelopes) is in
//! `switchboard_proto::pusher`.

pub(crate) mod api;
mod codec;
pub mod config;
pub(crate) mod conn;
pub(crate) mod door;
pub(crate) mod http;
mod http_sessions;
pub mod occupancy;
pub mod signing;
pub mod webhooks;
pub(crate) mod ws;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use switchboard_core::ClientSink;
use switchboard_core::hub::{Hub, NodeExtension, OccupancyObserver};
use switchboard_proto::{Disconnect, pusher as proto};

use self::config::{PusherAppConfig, PusherConfig};
use self::occupancy::{OCCUPIED_BEFORE, Occupancy};
use self::webhooks::Webhooks;
use crate::metrics::ServerStats;

/// A signed-in connection: its socket id and its sink.
type SignedIn = (Arc<str>, Weak<dyn ClientSink>);

/// One configured app at run time.
pub struct App {
    pub config: PusherAppConfig,
    /// Connections of signed-in users, for `terminate_connections`.
    users: Mutex<HashMap<String, Vec<SignedIn>>>,
    pub webhooks: Option<Webhooks>,
    /// Live connections, against `max_connections`.
    connections: AtomicUsize,
}

/// One connection's place in its app's `max_connections`, given back when dropped.
pub(crate) struct ConnectionSlot(Arc<App>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

impl App {
    fn new(
        config: PusherAppConfig,
        stats: &Arc<ServerStats>,
        hub: &Arc<Hub>,
        occupancy: &Arc<Occupancy>,
    ) -> Result<App, String> {
        let webhooks = if config.webhooks.is_empty() {
            None
        } else {
            let (hub, occupancy) = (Arc::downgrade(hub), occupancy.clone());
            Some(Webhooks::start(&config, stats, hub, occupancy)?)
        };
        Ok(App {
            config,
            users: Mutex::new(HashMap::new()),
            webhooks,
            connections: AtomicUsize::new(0),
        })
    }

    /// Takes a connection slot, unless the app holds `max_connections` already.
    pub(crate) fn take_slot(self: &Arc<Self>) -> Option<ConnectionSlot> {
        let before = self.connections.fetch_add(1, Ordering::AcqRel);
        let slot = ConnectionSlot(self.clone());
        match self.config.max_connections {
            Some(max) if before >= max => None,
            _ => Some(slot),
        }
    }

    /// The hub channel of this app's Pusher channel `channel`.
    pub fn hub_channel(&self, channel: &str) -> String {
        proto::hub_channel(&self.config.namespace, channel)
    }

    /// Whether hub channel `hub` is one of this app's (its namespace matches).
    pub fn owns_hub_channel(&self, hub: &str) -> bool {
        proto::split_namespace(hub).0 == self.config.namespace
    }

    /// Remembers that the connection `socket_id` signed in as `user`.
    pub fn signed_in(&self, user: &str, socket_id: &Arc<str>, sink: Weak<dyn ClientSink>) {
        let mut users = self.users.lock();
        let list = users.entry(user.to_owned()).or_default();
        list.retain(|(_, s)| s.strong_count() > 0);
        list.push((socket_id.clone(), sink));
    }

    /// Forgets the connection `socket_id` of `user` (it closed).
    pub fn signed_out(&self, user: &str, socket_id: &str) {
        let mut users = self.users.lock();
        if let Some(list) = users.get_mut(user) {
            list.retain(|(s, sink)| &**s != socket_id && sink.strong_count() > 0);
            if list.is_empty() {
                users.remove(user);
            }
        }
    }

    /// Closes every connection signed in as `user` (close 4009); returns how many.
    pub fn terminate_user(&self, user: &str) -> usize {
        let list = self.users.lock().remove(user).unwrap_or_default();
        let mut count = 0;
        for (_, sink) in list {
            if let Some(sink) = sink.upgrade() {
                sink.disconnect(conn::TERMINATED);
                count += 1;
            }
        }
        count
    }
}

/// Every Pusher app of the server.
pub struct Pusher {
    apps: Vec<Arc<App>>,
    /// Since when this node holds each channel, for `channel_occupied` across nodes.
    occupancy: Arc<Occupancy>,
}

impl Pusher {
    /// The apps of `config`, their webhooks sending from within the running Tokio runtime.
    /// Fails on a webhook that cannot work (a bad URL or CA file).
    pub fn new(
        config: &PusherConfig,
        stats: &Arc<ServerStats>,
        hub: &Arc<Hub>,
    ) -> Result<Arc<Pusher>, String> {
        let occupancy = Arc::new(Occupancy::default());
        let apps = config
            .apps
            .iter()
            .map(|a| App::new(a.clone(), stats, hub, &occupancy).map(Arc::new))
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Arc::new(Pusher { apps, occupancy }))
    }

    pub fn by_key(&self, key: &str) -> Option<&Arc<App>> {
        self.apps.iter().find(|a| a.config.key == key)
    }

    pub fn by_id(&self, id: &str) -> Option<&Arc<App>> {
        self.apps.iter().find(|a| a.config.id == id)
    }

    /// The app whose namespace holds hub channel `hub`, with its Pusher channel name (none
    /// when the name is no valid Pusher channel).
    fn app_of(&self, hub: &str) -> Option<(&Arc<App>, String)> {
        let app = self.apps.iter().find(|a| a.owns_hub_channel(hub))?;
        let name = proto::pusher_channel(hub);
        proto::valid_channel_name(&name).then_some((app, name))
    }

    /// Hooks the webhooks that follow the hub's channel occupancy, and the requests every
    /// node answers.
    pub fn observe(self: &Arc<Self>, hub: &Hub) {
        if self.apps.iter().any(|a| a.webhooks.is_some()) {
            hub.set_occupancy_observer(Arc::new(OccupancyHooks(Arc::downgrade(self))));
        }
        hub.set_node_extension(Arc::new(Extension(Arc::downgrade(self))));
    }
}

/// The node request that ends a signed-in user's connections on every node.
pub const TERMINATE_REQUEST: &str = "pusher_terminate";

/// The argument of [`TERMINATE_REQUEST`]: `<app id>` NUL `<user id>`.
pub fn terminate_argument(app: &str, user: &str) -> String {
    format!("{app}\0{user}")
}

/// Answers the Pusher door's node requests on this node.
struct Extension(Weak<Pusher>);

impl NodeExtension for Extension {
    fn on_request(&self, name: &str, argument: &str) -> usize {
        let Some(pusher) = self.0.upgrade() else {
            return 0;
        };
        match (name, argument.split_once('\0')) {
            (TERMINATE_REQUEST, Some((app, user))) => {
                pusher.by_id(app).map_or(0, |app| app.terminate_user(user))
            }
            (OCCUPIED_BEFORE, _) => pusher.occupancy.answer(argument),
            _ => 0,
        }
    }
}

/// Reports `channel_occupied` / `channel_vacated` of Pusher channels, whoever (native or
/// Pusher client) occupied them.
struct OccupancyHooks(Weak<Pusher>);

impl OccupancyObserver for OccupancyHooks {
    fn occupied(&self, channel: &str) {
        if let Some(pusher) = self.0.upgrade()
            && let Some((app, name)) = pusher.app_of(channel)
            && let Some(hooks) = &app.webhooks
        {
            hooks.channel_occupied(&name, pusher.occupancy.occupied(channel));
        }
    }

    fn vacated(&self, channel: &str) {
        if let Some(pusher) = self.0.upgrade()
            && let Some((app, name)) = pusher.app_of(channel)
            && let Some(hooks) = &app.webhooks
        {
            hooks.channel_vacated(&name, channel);
        }
    }
}

/// The close a connection gets when the server ends it for `reason`, in Pusher's codes:
/// 4000-4099 do not reconnect, 4100-4199 reconnect after a backoff, 4200-4299 reconnect at
/// once.
pub fn close_code(reason: &Disconnect) -> u16 {
    match reason.code {
        "slow_consumer" => 4100,
        "forbidden" => 4009,
        "unavailable" if reason.ws_close == 1001 => 4200,
        "unavailable" => 4201,
        "closed" => 1000,
        _ if (4000..4400).contains(&reason.ws_close) => reason.ws_close,
        _ => 4200,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_closes_map_to_pusher_codes() {
        assert_eq!(close_code(&Disconnect::SHUTDOWN), 4200);
        assert_eq!(close_code(&Disconnect::NO_PONG), 4201);
        assert_eq!(close_code(&Disconnect::SLOW_CONSUMER), 4100);
        assert_eq!(close_code(&Disconnect::BY_SERVER), 4009);
        assert_eq!(close_code(&conn::TERMINATED), 4009);
        assert_eq!(close_code(&Disconnect::CLIENT_CLOSED), 1000);
        for refusal in [
            conn::APP_NOT_FOUND,
            conn::APP_DISABLED,
            conn::BAD_VERSION,
            conn::UNSUPPORTED_PROTOCOL,
            conn::NO_PROTOCOL,
        ] {
            assert_eq!(close_code(&refusal), refusal.ws_close);
        }
    }
}
