//! One Pusher connection's commands (protocol 7), whatever carries them (the WebSocket door
//! or the HTTP fallbacks): subscriptions with their signatures, presence identities, sign-in,
//! client events. It talks to the hub directly and answers through the connection's outbox;
//! how frames look on the wire is the codec's (`codec.rs`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;
use switchboard_core::ClientSink;
use switchboard_core::hub::{ClientEntry, HubError};
use switchboard_proto::pusher::{self as proto, valid_channel_name};
use switchboard_proto::{Disconnect, Position};

use super::codec::PresenceControl;
use super::{App, signing};
use crate::door::Outbox;
use crate::state::AppState;

/// The outbox of a Pusher connection.
pub(crate) type PusherOutbox = Outbox<Box<PresenceControl>>;

/// Pusher's refusals at connection time, and the server's own closes.
const fn pusher_close(ws_close: u16, message: &'static str, reconnect: bool) -> Disconnect {
    Disconnect {
        code: "pusher",
        message,
        ws_close,
        reconnect,
    }
}
pub(super) const APP_NOT_FOUND: Disconnect =
    pusher_close(4001, "application does not exist", false);
pub(super) const APP_DISABLED: Disconnect = pusher_close(4003, "application disabled", false);
pub(super) const BAD_VERSION: Disconnect =
    pusher_close(4006, "invalid version string format", false);
pub(super) const UNSUPPORTED_PROTOCOL: Disconnect =
    pusher_close(4007, "unsupported protocol version (5 to 7 are)", false);
pub(super) const NO_PROTOCOL: Disconnect =
    pusher_close(4008, "no protocol version supplied", false);
pub(super) const OVER_QUOTA: Disconnect = pusher_close(4004, "over connection quota", false);
pub(super) const TERMINATED: Disconnect = Disconnect {
    code: "forbidden",
    message: "connection terminated by the server",
    ws_close: 4009,
    reconnect: false,
};

/// Longest event name (Pusher's limit).
pub(super) const MAX_EVENT_NAME: usize = 200;
/// Client event rate limit error (the connection goes on).
pub(crate) const RATE_LIMITED: u16 = 4301;

/// A fresh Pusher socket id, `<digits>.<digits>`.
pub(crate) fn new_socket_id() -> Arc<str> {
    format!(
        "{}.{}",
        rand::random::<u32>() % 1_000_000_000,
        rand::random::<u32>() % 1_000_000_000
    )
    .into()
}

// ---- the connection: Pusher commands ----

/// One Pusher connection.
pub(crate) struct PusherConn {
    /// `None` for a refused connection (it only says goodbye).
    live: Option<Box<Live>>,
}

struct Live {
    state: Arc<AppState>,
    app: Arc<App>,
    socket_id: Arc<str>,
    client: Arc<ClientEntry>,
    /// Pusher channel name → its subscription.
    subscriptions: HashMap<String, Subscription>,
    /// Set by `pusher:signin`.
    user: Option<String>,
    /// Client events in the current one-second window.
    window: (Instant, u32),
    /// Held for the app's `max_connections` until the connection is dropped.
    _slot: super::ConnectionSlot,
}

struct Subscription {
    hub: String,
    /// The presence user this connection subscribed as.
    user_id: Option<String>,
}

/// A client frame: `{"event","data","channel"}`; `data` is an object or a JSON string.
#[derive(Deserialize)]
struct ClientFrame {
    event: String,
    #[serde(default)]
    data: Option<Box<RawValue>>,
    #[serde(default)]
    channel: Option<String>,
}

#[derive(Deserialize)]
struct SubscribeData {
    channel: String,
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    channel_data: Option<String>,
}

#[derive(Deserialize)]
struct SigninData {
    auth: String,
    user_data: String,
}

/// The user of a presence subscription: `user_id` of its `channel_data`, a non-empty string
/// or a number.
fn channel_data_user(data: &Value) -> Option<String> {
    match data.get("user_id") {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    }
}

/// The user `pusher:signin` names: the non-empty string `id` of its `user_data`.
fn signin_user(user_data: &str) -> Option<String> {
    serde_json::from_str::<Value>(user_data)
        .ok()
        .and_then(|d| d.get("id")?.as_str().map(str::to_owned))
        .filter(|id| !id.is_empty())
}

/// Fuzzing entry point (`fuzz/`): one client frame (or a SockJS body of them) through every
/// step of reading it that needs no hub: the frame, each command's data, presence and
/// sign-in identities, channel names, and a client event's way out to Pusher subscribers.
#[doc(hidden)]
pub fn fuzz_pusher_frame(data: &[u8]) {
    if let Ok(messages) = serde_json::from_slice::<Vec<String>>(data) {
        for message in messages {
            fuzz_pusher_frame(message.as_bytes());
        }
        return;
    }
    let Ok(frame) = serde_json::from_slice::<ClientFrame>(data) else {
        return;
    };
    let raw = frame.data.as_deref();
    if let Some(sub) = data_as::<SubscribeData>(raw) {
        if valid_channel_name(&sub.channel) {
            let hub = proto::hub_channel("app", &sub.channel);
            assert_eq!(proto::split_namespace(&hub).0, "app");
            assert_eq!(proto::pusher_channel(&hub), sub.channel);
        }
        let channel_data = sub.channel_data.as_deref();
        if let Some(data) = channel_data.and_then(|d| serde_json::from_str::<Value>(d).ok()) {
            let _ = channel_data_user(&data);
        }
        let _ = (
            is_private(&sub.channel),
            is_presence(&sub.channel),
            is_cache(&sub.channel),
        );
    }
    let _ = data_as::<Value>(raw).and_then(|d| d.get("channel")?.as_str().map(str::to_owned));
    if let Some(signin) = data_as::<SigninData>(raw) {
        let _ = signin_user(&signin.user_data);
    }
    if frame.event.starts_with("client-") {
        let data = raw.map_or("null", RawValue::get);
        // As `client_event` publishes it, then as the hub hands it to Pusher subscribers.
        let raw = RawValue::from_string(data.to_owned()).expect("it came from a parsed frame");
        let envelope = proto::envelope(&frame.event, &raw, Some("u"), Some("1.2"));
        let channel = frame.channel.as_deref().unwrap_or("private-c");
        let publication = switchboard_proto::Publication {
            offset: 1,
            epoch: "e".into(),
            data: envelope,
        };
        let native =
            switchboard_proto::encode::message(&proto::hub_channel("app", channel), &publication);
        let message = proto::from_native_message(&native).expect("a native message translates");
        assert_eq!(message.exclude_socket.as_deref(), Some("1.2"));
    }
}

/// Pusher sends command data as an object, some clients as a JSON string of one.
fn data_as<T: serde::de::DeserializeOwned>(data: Option<&RawValue>) -> Option<T> {
    let raw = data?.get();
    if raw.starts_with('"') {
        let text: String = serde_json::from_str(raw).ok()?;
        serde_json::from_str(&text).ok()
    } else {
        serde_json::from_str(raw).ok()
    }
}

fn is_private(channel: &str) -> bool {
    channel.starts_with("private-") || channel.starts_with("presence-")
}

fn is_presence(channel: &str) -> bool {
    channel.starts_with("presence-")
}

/// `cache-`, `private-cache-`, `private-encrypted-cache-` and `presence-cache-` channels
/// replay their last event to a new subscriber.
fn is_cache(channel: &str) -> bool {
    [
        "cache-",
        "private-cache-",
        "private-encrypted-cache-",
        "presence-cache-",
    ]
    .iter()
    .any(|p| channel.starts_with(p))
}

impl PusherConn {
    pub(crate) fn refused() -> PusherConn {
        PusherConn { live: None }
    }

    /// A connection of `app` whose frames go to `outbox`; queues
    /// `pusher:connection_established`.
    pub(crate) fn open(
        state: &Arc<AppState>,
        app: Arc<App>,
        socket_id: Arc<str>,
        outbox: &Arc<PusherOutbox>,
    ) -> PusherConn {
        let Some(slot) = app.take_slot() else {
            state.count_error();
            outbox.close(OVER_QUOTA);
            return PusherConn::refused();
        };
        let sink: Arc<dyn ClientSink> = outbox.clone();
        let client = state.hub.register("", None, None, sink);
        let established = proto::connection_established(&socket_id, app.config.activity_timeout);
        outbox.push_own(established);
        PusherConn {
            live: Some(Box::new(Live {
                state: state.clone(),
                app,
                socket_id,
                client,
                subscriptions: HashMap::new(),
                user: None,
                window: (Instant::now(), 0),
                _slot: slot,
            })),
        }
    }
}

impl PusherConn {
    /// Handles one client message.
    pub(crate) async fn handle(&mut self, outbox: &Arc<PusherOutbox>, payload: &[u8]) {
        if let Some(live) = self.live.as_mut() {
            live.on_message(outbox, payload).await;
        }
    }

    /// Leaves the hub (once, when the connection ends).
    pub(crate) async fn shut(self) {
        if let Some(live) = self.live {
            live.close().await;
        }
    }
}

impl Live {
    fn error(&self, outbox: &PusherOutbox, code: Option<u16>, message: &str) {
        self.state.count_error();
        outbox.push_own(proto::error_frame(code, message));
    }

    async fn on_message(&mut self, outbox: &Arc<PusherOutbox>, payload: &[u8]) {
        let frame: ClientFrame = match serde_json::from_slice(payload) {
            Ok(f) => f,
            Err(e) => {
                return self.error(outbox, None, &format!("invalid frame: {e}"));
            }
        };
        let data = frame.data.as_deref();
        match frame.event.as_str() {
            "pusher:ping" => {
                outbox.push_own(proto::pong());
            }
            "pusher:pong" => {}
            "pusher:subscribe" => match data_as::<SubscribeData>(data) {
                Some(sub) => self.subscribe(outbox, sub).await,
                None => self.error(outbox, None, "pusher:subscribe needs data.channel"),
            },
            "pusher:unsubscribe" => match data_as::<Value>(data)
                .and_then(|d| d.get("channel")?.as_str().map(str::to_owned))
            {
                Some(channel) => self.unsubscribe(outbox, &channel).await,
                None => self.error(outbox, None, "pusher:unsubscribe needs data.channel"),
            },
            "pusher:signin" => match data_as::<SigninData>(data) {
                Some(signin) => self.signin(outbox, signin),
                None => self.error(
                    outbox,
                    None,
                    "pusher:signin needs data.auth and data.user_data",
                ),
            },
            event if event.starts_with("client-") => {
                self.client_event(outbox, event, frame.channel.as_deref(), data)
                    .await
            }
            other => self.error(outbox, None, &format!("unknown event `{other}`")),
        }
    }

    fn subscription_error(
        &self,
        outbox: &PusherOutbox,
        channel: &str,
        status: u16,
        kind: &str,
        message: &str,
    ) {
        self.state.count_error();
        outbox.push_own(proto::subscription_error(channel, kind, message, status));
    }

    async fn subscribe(&mut self, outbox: &Arc<PusherOutbox>, sub: SubscribeData) {
        let channel = sub.channel.as_str();
        if self.subscriptions.contains_key(channel) {
            // pusher-js never subscribes twice; answering again keeps a client in sync.
            if !is_presence(channel) {
                outbox.push_own(proto::subscription_succeeded(channel));
            }
            return;
        }
        if let Err((status, kind, message)) = self.check_subscription(&sub) {
            return self.subscription_error(outbox, channel, status, kind, &message);
        }
        let hub_channel = self.app.hub_channel(channel);
        let mut user_id = None;
        if is_presence(channel) {
            match self
                .presence_identity(&hub_channel, sub.channel_data.as_deref())
                .await
            {
                Ok((user, info)) => {
                    self.client.set_channel_member(&hub_channel, &user, info);
                    user_id = Some(user);
                }
                Err((status, message)) => {
                    return self.subscription_error(outbox, channel, status, "AuthError", &message);
                }
            }
            outbox.push_control(Box::new(PresenceControl::Watch {
                hub: hub_channel.as_str().into(),
                channel: channel.to_owned(),
            }));
        }
        let result = self.hub_subscribe(outbox, channel, &hub_channel).await;
        match result {
            Ok(cache_miss) => {
                if let Some(user) = &user_id {
                    self.presence_ready(outbox, &hub_channel, user).await;
                }
                if cache_miss {
                    outbox.push_own(proto::cache_miss(channel));
                    if let Some(hooks) = &self.app.webhooks {
                        hooks.cache_miss(channel);
                    }
                }
                self.subscriptions.insert(
                    channel.to_owned(),
                    Subscription {
                        hub: hub_channel,
                        user_id,
                    },
                );
            }
            Err(e) => {
                outbox.push_control(Box::new(PresenceControl::Forget {
                    hub: hub_channel.as_str().into(),
                }));
                self.subscription_error(outbox, channel, 503, "Unavailable", &e.to_string());
            }
        }
    }

    /// Whether this connection may subscribe as `sub` asks: the channel's name, the
    /// connection's limit, and for private, presence and encrypted channels the signature
    /// (for `#server-to-user-<id>`, the sign-in). A refusal is a status, a Pusher error type
    /// and a message.
    fn check_subscription(&self, sub: &SubscribeData) -> Result<(), (u16, &'static str, String)> {
        let channel = sub.channel.as_str();
        if let Some(user) = channel.strip_prefix(proto::USER_CHANNEL_PREFIX) {
            if self.user.as_deref() != Some(user) {
                let why = "sign in as this user first (pusher:signin)";
                return Err((403, "AuthError", why.into()));
            }
        } else if !valid_channel_name(channel) {
            let why = "channel names are 1 to 164 characters of A-Z a-z 0-9 _ - = @ , . ;";
            return Err((400, "InvalidChannel", why.into()));
        }
        let max = self.state.hub.config.max_subscriptions;
        if self.subscriptions.len() >= max {
            let why = format!("too many subscriptions (at most {max} per connection)");
            return Err((429, "LimitReached", why));
        }
        let public = !is_private(channel) && !channel.starts_with(proto::USER_CHANNEL_PREFIX);
        if public && !self.may_read_public(channel) {
            let why = "public channels of a Pusher app in the default namespace are read as an \
                       anonymous client would, and anonymous clients may not read it: give the \
                       app a `namespace` of its own, or set [default_namespace] allow_anonymous \
                       = true";
            return Err((403, "AuthError", why.into()));
        }
        if is_private(channel) {
            let config = &self.app.config;
            let data = if is_presence(channel) {
                sub.channel_data.as_deref()
            } else {
                None
            };
            let auth = sub.auth.as_deref().unwrap_or("");
            if !signing::verify_channel_auth(
                &config.key,
                &config.secret,
                &self.socket_id,
                channel,
                data,
                auth,
            ) {
                let why = "invalid signature for this socket and channel";
                return Err((401, "AuthError", why.into()));
            }
        }
        Ok(())
    }

    /// Whether this connection may read public channel `channel`. Pusher clients hold no
    /// token: an app with a namespace of its own has its public channels there, readable by
    /// its clients as Pusher's are; an app in the default namespace shares it with native
    /// channels, so its clients read like anonymous native clients, never past the claims a
    /// native channel needs.
    fn may_read_public(&self, channel: &str) -> bool {
        !self.app.config.namespace.is_empty()
            || switchboard_core::session::may_subscribe(
                &self.state.hub,
                &switchboard_core::Claims::anonymous(),
                &self.app.hub_channel(channel),
            )
    }

    /// The presence identity of `channel_data` (`{"user_id","user_info"}`), within the
    /// app's limits.
    async fn presence_identity(
        &self,
        hub_channel: &str,
        channel_data: Option<&str>,
    ) -> Result<(String, Option<Bytes>), (u16, String)> {
        let ns = self.state.hub.config.namespace(hub_channel);
        if !ns.presence || !self.state.hub.config.join_leave(hub_channel) {
            return Err((
                403,
                "presence channels need `presence` and `join_leave` on in their namespace".into(),
            ));
        }
        let data: Value = channel_data
            .and_then(|d| serde_json::from_str(d).ok())
            .ok_or((400, "presence channels need channel_data".to_string()))?;
        let user = channel_data_user(&data).ok_or((400, "channel_data needs a user_id".into()))?;
        let info = match data.get("user_info") {
            None | Some(Value::Null) => None,
            Some(info) => {
                let bytes = serde_json::to_vec(info).unwrap_or_default();
                if bytes.len() > self.app.config.max_user_info_size {
                    return Err((
                        413,
                        format!(
                            "user_info larger than {} bytes",
                            self.app.config.max_user_info_size
                        ),
                    ));
                }
                Some(Bytes::from(bytes))
            }
        };
        let members = self
            .state
            .hub
            .presence(hub_channel)
            .await
            .map_err(|e| (503, e.to_string()))?;
        let users: HashSet<&str> = members
            .iter()
            .map(|m| &*m.user)
            .filter(|u| !u.is_empty())
            .collect();
        if !users.contains(user.as_str()) && users.len() >= self.app.config.max_presence_members {
            return Err((
                403,
                format!(
                    "presence channel is full ({} members)",
                    self.app.config.max_presence_members
                ),
            ));
        }
        Ok((user, info))
    }

    /// Subscribes on the hub; `subscription_succeeded` goes out under the channel's lock,
    /// ahead of its first message (presence channels send it later, with their members).
    /// Cache channels subscribe from just before the last message, so it is replayed.
    /// Returns whether a cache channel had nothing to replay.
    async fn hub_subscribe(
        &self,
        outbox: &Arc<PusherOutbox>,
        channel: &str,
        hub_channel: &str,
    ) -> Result<bool, HubError> {
        let hub = &self.state.hub;
        let cache = is_cache(channel);
        let since = if cache {
            let last = hub
                .history(
                    hub_channel,
                    switchboard_core::engine::HistoryQuery {
                        since: None,
                        limit: Some(0),
                    },
                )
                .await?
                .position;
            (last.offset > 0).then(|| Position {
                offset: last.offset - 1,
                epoch: last.epoch.to_string(),
            })
        } else {
            None
        };
        let presence = is_presence(channel);
        let mut reply = |_: &switchboard_core::hub::SubscribeReply| {
            if !presence {
                outbox.push_own(proto::subscription_succeeded(channel));
            }
        };
        let had_last = since.is_some();
        let answer = hub
            .subscribe(&self.client, hub_channel, since, &mut reply)
            .await?;
        // Nothing published yet, or history no longer holds the last event.
        Ok(cache && (!had_last || answer.recovered == Some(false)))
    }

    /// Sends a presence channel's `subscription_succeeded` with its members, then what was
    /// held meanwhile, and reports the member to webhooks.
    async fn presence_ready(&self, outbox: &Arc<PusherOutbox>, hub_channel: &str, user: &str) {
        let members = self
            .state
            .hub
            .presence(hub_channel)
            .await
            .unwrap_or_default();
        let connections = members.iter().filter(|m| &*m.user == user).count();
        outbox.push_control(Box::new(PresenceControl::Ready {
            hub: hub_channel.into(),
            members,
        }));
        if connections <= 1
            && let Some(hooks) = &self.app.webhooks
        {
            hooks.member_added(&proto::pusher_channel(hub_channel), user);
        }
    }

    async fn unsubscribe(&mut self, outbox: &PusherOutbox, channel: &str) {
        let Some(sub) = self.subscriptions.remove(channel) else {
            return;
        };
        let hub_channel = sub.hub.clone();
        self.leave(sub).await;
        // After the hub let go: no join or leave of that channel can follow it in the queue.
        outbox.push_control(Box::new(PresenceControl::Forget {
            hub: hub_channel.as_str().into(),
        }));
    }

    async fn leave(&self, sub: Subscription) {
        let hub = &self.state.hub;
        hub.unsubscribe(&self.client, &sub.hub).await;
        if let Some(user) = sub.user_id {
            // The codec state of a closed connection goes with it; only webhooks remain.
            let still_there = hub
                .presence(&sub.hub)
                .await
                .map(|m| m.iter().any(|m| *m.user == *user))
                .unwrap_or(true);
            if !still_there && let Some(hooks) = &self.app.webhooks {
                hooks.member_removed(&proto::pusher_channel(&sub.hub), &sub.hub, &user);
            }
        }
    }

    fn signin(&mut self, outbox: &Arc<PusherOutbox>, signin: SigninData) {
        let config = &self.app.config;
        let valid = signing::verify_user_auth(
            &config.key,
            &config.secret,
            &self.socket_id,
            &signin.user_data,
            &signin.auth,
        );
        let user = signin_user(&signin.user_data);
        let user = match (valid, user) {
            (true, Some(user)) => user,
            (false, _) => {
                return self.error(outbox, Some(4009), "invalid signature for pusher:signin");
            }
            (true, None) => {
                return self.error(
                    outbox,
                    Some(4009),
                    "user_data needs a non-empty string `id`",
                );
            }
        };
        if let Some(old) = self.user.replace(user.clone()) {
            self.app.signed_out(&old, &self.socket_id);
        }
        let sink: Arc<dyn ClientSink> = outbox.clone();
        self.app
            .signed_in(&user, &self.socket_id, Arc::downgrade(&sink));
        outbox.push_own(proto::signin_success(&signin.user_data));
    }

    async fn client_event(
        &mut self,
        outbox: &Arc<PusherOutbox>,
        event: &str,
        channel: Option<&str>,
        data: Option<&RawValue>,
    ) {
        let config = &self.app.config;
        if !config.enable_client_events {
            return self.error(outbox, None, "client events are not enabled for this app");
        }
        let Some(channel) = channel else {
            return self.error(outbox, None, "a client event needs a channel");
        };
        if event.len() > MAX_EVENT_NAME {
            let why = format!("event names are at most {MAX_EVENT_NAME} characters");
            return self.error(outbox, None, &why);
        }
        if !is_private(channel) {
            return self.error(
                outbox,
                None,
                "client events are only allowed on private and presence channels",
            );
        }
        let Some(sub) = self.subscriptions.get(channel) else {
            return self.error(outbox, None, &format!("not subscribed to `{channel}`"));
        };
        let data = data.map_or("null", RawValue::get);
        if data.len() > config.max_event_size {
            return self.error(
                outbox,
                None,
                &format!("event data larger than {} bytes", config.max_event_size),
            );
        }
        let now = Instant::now();
        if now.duration_since(self.window.0).as_secs() >= 1 {
            self.window = (now, 0);
        }
        if self.window.1 >= config.max_client_events_per_second {
            return self.error(
                outbox,
                Some(RATE_LIMITED),
                &format!(
                    "client events are limited to {} per second",
                    config.max_client_events_per_second
                ),
            );
        }
        self.window.1 += 1;
        // Came from a parsed frame, so it is JSON; refused rather than trusted all the same.
        let Ok(raw) = RawValue::from_string(data.to_owned()) else {
            return self.error(outbox, None, "client event data must be JSON");
        };
        let envelope = proto::envelope(event, &raw, sub.user_id.as_deref(), Some(&self.socket_id));
        match self.state.hub.publish(&sub.hub, envelope).await {
            Ok(_) => {
                if let Some(hooks) = &self.app.webhooks {
                    hooks.client_event(
                        channel,
                        event,
                        data,
                        &self.socket_id,
                        sub.user_id.as_deref(),
                    );
                }
            }
            Err(e) => self.error(outbox, None, &e.to_string()),
        }
    }

    async fn close(mut self) {
        if let Some(user) = self.user.take() {
            self.app.signed_out(&user, &self.socket_id);
        }
        // One by one, so presence members removed reach the webhooks.
        for (_, sub) in std::mem::take(&mut self.subscriptions) {
            self.leave(sub).await;
        }
        self.state.hub.unregister(&self.client).await;
    }
}
