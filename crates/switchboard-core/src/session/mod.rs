//! One client's commands (spec §3), whatever door it came through: permission checks, then
//! the hub. A door parses nothing itself: it hands each frame to [`Session::handle_frame`]
//! and sends back what it returns.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use serde_json::value::RawValue;
use switchboard_proto::encode;
use switchboard_proto::{Command, CommandError, ErrorCode, MediaMode, Outgoing, Position, Request};

use crate::auth::{AuthError, Authenticator, Claims};
use crate::engine::HistoryQuery;
use crate::hub::{ClientEntry, Hub, HubError, SubscribeReply};
use crate::media_link::{MediaLink, MediaRefusal, SFU_PEER};
use crate::rooms::RoomError;
use crate::sink::ClientSink;

/// When a door's own subscription announces itself with a `subscribed` push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Announce {
    /// Always, without `recovered` (a fresh stream).
    Always,
    /// Always, with `recovered` (a stream resumed from a cursor).
    Resumed,
    /// Only when history no longer held every missed message (a later long poll).
    IfNotRecovered,
}

/// A connected client: its claims and its place in the hub.
pub struct Session {
    hub: Arc<Hub>,
    auth: Arc<dyn Authenticator>,
    claims: Claims,
    client: Arc<ClientEntry>,
    /// Subscribe replies go through the sink, ahead of the channel's messages (WebSocket);
    /// otherwise they are returned to the caller (commands posted to a one-way door's
    /// session, whose answers travel in the HTTP response).
    replies_via_sink: bool,
    /// The door's WebRTC media, where it has some (the data channel door of `POST /rtc`).
    media: Option<Arc<dyn MediaLink>>,
    /// The room whose SFU that media is in.
    sfu_room: Option<String>,
}

/// What a command answers with: its reply, or an error frame (doors count errors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Reply(Bytes),
    Error(Bytes),
}

impl Answer {
    pub fn is_error(&self) -> bool {
        matches!(self, Answer::Error(_))
    }

    pub fn frame(&self) -> &Bytes {
        match self {
            Answer::Reply(frame) | Answer::Error(frame) => frame,
        }
    }

    pub fn into_frame(self) -> Bytes {
        match self {
            Answer::Reply(frame) | Answer::Error(frame) => frame,
        }
    }
}

impl From<CommandError> for Answer {
    fn from(e: CommandError) -> Self {
        Answer::Error(error_frame(&e))
    }
}

type Result<T = Bytes> = std::result::Result<T, CommandError>;

impl Session {
    /// Registers a client with `claims` (already verified) whose frames go to `sink`.
    pub fn open(
        hub: Arc<Hub>,
        auth: Arc<dyn Authenticator>,
        claims: Claims,
        sink: Arc<dyn ClientSink>,
    ) -> Session {
        let client = hub.register(&claims.user, claims.info.clone(), claims.exp, sink);
        Session::for_client(hub, auth, claims, client, true)
    }

    /// A session for one long-poll request: it receives its channels' messages but shows in
    /// no presence and announces no join or leave.
    pub fn open_observer(
        hub: Arc<Hub>,
        auth: Arc<dyn Authenticator>,
        claims: Claims,
        sink: Arc<dyn ClientSink>,
    ) -> Session {
        let client = hub.register_observer(&claims.user, claims.exp, sink);
        Session::for_client(hub, auth, claims, client, false)
    }

    fn for_client(
        hub: Arc<Hub>,
        auth: Arc<dyn Authenticator>,
        claims: Claims,
        client: Arc<ClientEntry>,
        replies_via_sink: bool,
    ) -> Session {
        Session {
            hub,
            auth,
            claims,
            client,
            replies_via_sink,
            media: None,
            sfu_room: None,
        }
    }

    /// Gives the session its door's WebRTC media: `join_room` with `"media": "sfu"` then
    /// works.
    pub fn set_media(&mut self, media: Arc<dyn MediaLink>) {
        self.media = Some(media);
    }

    /// Return every reply from [`Session::handle`] instead of queueing subscribe replies to
    /// the sink (see `replies_via_sink`).
    pub fn return_replies(&mut self) {
        self.replies_via_sink = false;
    }

    pub fn claims(&self) -> &Claims {
        &self.claims
    }

    pub fn client(&self) -> &Arc<ClientEntry> {
        &self.client
    }

    /// The `connected` frame, first on every door.
    /// `id`: that of the `connect` frame it answers, if any; `session`: the one-way doors'
    /// session secret.
    pub fn connected_frame(
        &self,
        id: Option<u64>,
        ping_interval: u64,
        session: Option<&str>,
    ) -> Bytes {
        encode::connected(
            id,
            &self.client.id_str,
            &self.claims.user,
            self.claims.exp,
            ping_interval,
            session,
        )
    }

    /// Leaves every channel and the hub. Call once when the connection ends.
    pub async fn close(mut self) {
        self.leave_sfu().await;
        self.hub.unregister(&self.client).await;
    }

    /// Runs one raw frame. Returns the frame to answer with, or `None` when the answer was
    /// already queued to the client's sink (a subscribe reply must precede its messages).
    pub async fn handle_frame(&mut self, frame: &[u8]) -> Option<Answer> {
        match switchboard_proto::parse_request(frame) {
            Ok(request) => self.handle(request).await,
            Err(e) => Some(e.into()),
        }
    }

    pub async fn handle(&mut self, request: Request) -> Option<Answer> {
        let id = request.id;
        let answer = match request.command {
            Command::Subscribe { channel, since } => {
                return match self.subscribe_command(id, &channel, since).await {
                    Ok(reply) => reply.map(Answer::Reply),
                    Err(e) => Some(e.into()),
                };
            }
            Command::Ping => return Some(Answer::Reply(encode::pong(id))),
            Command::Connect { .. } => Err(err(id, ErrorCode::BadRequest, "already connected")),
            Command::Unsubscribe { channel } => self.unsubscribe(id, &channel).await,
            Command::Publish { channel, data } => {
                self.publish(id, &channel, Bytes::from(data.get().to_owned()))
                    .await
            }
            Command::Presence { channel } => self.presence(id, &channel).await,
            Command::History {
                channel,
                since,
                limit,
            } => self.history(id, &channel, since, limit).await,
            Command::Refresh { token } => self.refresh(id, &token),
            Command::JoinRoom { room, meta, media } => self.join_room(id, &room, meta, media).await,
            Command::LeaveRoom { room } => {
                if self.sfu_room.as_deref() == Some(room.as_str()) {
                    self.leave_sfu().await;
                }
                self.hub.leave_room(&self.client, &room).await;
                Ok(encode::empty_reply(id))
            }
            Command::UpdateMeta { room, meta } => {
                let meta = Bytes::from(meta.get().to_owned());
                self.hub
                    .update_room_meta(&self.client, &room, meta)
                    .await
                    .map(|()| encode::empty_reply(id))
                    .map_err(|e| room_error(id, e))
            }
            Command::Signal { room, to, data }
                if to.as_deref() == Some(SFU_PEER)
                    && self.sfu_room.as_deref() == Some(room.as_str()) =>
            {
                self.signal_sfu(id, data.get().as_bytes()).await
            }
            Command::Signal { room, to, data } => {
                let data = Bytes::from(data.get().to_owned());
                self.hub
                    .signal(&self.client, &room, to.as_deref(), data)
                    .await
                    .map(|()| encode::empty_reply(id))
                    .map_err(|e| room_error(id, e))
            }
        };
        Some(match answer {
            Ok(reply) => Answer::Reply(reply),
            Err(e) => e.into(),
        })
    }

    /// The `subscribe` command: `Ok(None)` when the reply went through the sink.
    async fn subscribe_command(
        &mut self,
        id: Option<u64>,
        channel: &str,
        since: Option<Position>,
    ) -> Result<Option<Bytes>> {
        let sink = self.client.sink.clone();
        let via_sink = self.replies_via_sink;
        let mut returned = None;
        let mut send_reply = |r: &SubscribeReply| {
            let position = &r.position;
            let frame =
                encode::subscribe_reply(id, channel, position.offset, &position.epoch, r.recovered);
            if via_sink {
                sink.send(&Arc::new(Outgoing::new(frame)));
            } else {
                returned = Some(frame);
            }
        };
        self.subscribe(id, channel, since, &mut send_reply).await?;
        Ok(returned)
    }

    /// Subscribes a channel a one-way door names in its URL, announcing it with a
    /// `subscribed` push as `announce` says.
    pub async fn subscribe_for_door(
        &mut self,
        channel: &str,
        since: Option<Position>,
        announce: Announce,
    ) -> Result<()> {
        let sink = self.client.sink.clone();
        let mut send = |r: &SubscribeReply| {
            let recovered = match announce {
                Announce::Always => None,
                Announce::Resumed => r.recovered,
                Announce::IfNotRecovered if r.recovered == Some(false) => r.recovered,
                Announce::IfNotRecovered => return,
            };
            let frame =
                encode::subscribed(channel, r.position.offset, &r.position.epoch, recovered);
            sink.send(&Arc::new(Outgoing::new(frame)));
        };
        self.subscribe(None, channel, since, &mut send).await
    }

    async fn subscribe(
        &mut self,
        id: Option<u64>,
        channel: &str,
        since: Option<Position>,
        reply: &mut (dyn FnMut(&SubscribeReply) + Send),
    ) -> Result<()> {
        self.check_subscribe(id, channel)?;
        if self.client.is_subscribed(channel) {
            return Err(err(
                id,
                ErrorCode::BadRequest,
                format!("already subscribed to `{channel}`"),
            ));
        }
        let max = self.hub.config.max_subscriptions;
        if self.client.subscription_count() >= max {
            return Err(err(
                id,
                ErrorCode::RateLimited,
                format!("too many subscriptions (at most {max} per connection)"),
            ));
        }
        self.hub
            .subscribe(&self.client, channel, since, reply)
            .await
            .map(|_| ())
            .map_err(|e| hub_error(id, e))
    }

    async fn unsubscribe(&mut self, id: Option<u64>, channel: &str) -> Result {
        self.hub.unsubscribe(&self.client, channel).await;
        Ok(encode::empty_reply(id))
    }

    async fn publish(&mut self, id: Option<u64>, channel: &str, data: Bytes) -> Result {
        self.check_publish(id, channel)?;
        let position = self
            .hub
            .publish(channel, data)
            .await
            .map_err(|e| hub_error(id, e))?;
        Ok(encode::publish_reply(id, position.offset, &position.epoch))
    }

    async fn presence(&mut self, id: Option<u64>, channel: &str) -> Result {
        self.check_subscribe(id, channel)?;
        if !self.hub.config.namespace(channel).presence {
            return Err(err(
                id,
                ErrorCode::NotFound,
                "presence is not enabled for this channel's namespace",
            ));
        }
        let members = self
            .hub
            .presence_reply(channel)
            .await
            .map_err(|e| hub_error(id, e))?;
        Ok(encode::presence_reply(id, &members))
    }

    async fn history(
        &mut self,
        id: Option<u64>,
        channel: &str,
        since: Option<Position>,
        limit: Option<usize>,
    ) -> Result {
        self.check_subscribe(id, channel)?;
        let query = HistoryQuery {
            since: since.map(|p| (p.offset, p.epoch)),
            limit,
        };
        let history = self
            .hub
            .history(channel, query)
            .await
            .map_err(|e| hub_error(id, e))?;
        Ok(encode::history_reply(id, &history_page(channel, &history)))
    }

    async fn join_room(
        &mut self,
        id: Option<u64>,
        room: &str,
        meta: Option<Box<RawValue>>,
        media: Option<MediaMode>,
    ) -> Result {
        if !may_join_room(&self.hub, &self.claims, room) {
            return Err(err(
                id,
                ErrorCode::Forbidden,
                format!("not allowed to join room `{room}`"),
            ));
        }
        if media == Some(MediaMode::Sfu) {
            self.join_sfu(id, room).await?;
        }
        let meta = meta.map(|m| Bytes::from(m.get().to_owned()));
        let joined = self.hub.join_room(&self.client, room, meta).await;
        let (me, others) = match joined {
            Ok(joined) => joined,
            Err(e) => {
                if media.is_some() {
                    self.leave_sfu().await;
                }
                return Err(room_error(id, e));
            }
        };
        let ice_servers = self.hub.ice_servers(&self.claims.user);
        Ok(encode::join_room_reply(
            id,
            room,
            &me.peer,
            &others,
            &ice_servers,
        ))
    }

    /// The media half of `join_room` with `"media": "sfu"`, before the room join itself, so
    /// a refusal (a media limit) leaves no trace the other members could see.
    async fn join_sfu(
        &mut self,
        id: Option<u64>,
        room: &str,
    ) -> std::result::Result<(), CommandError> {
        let Some(media) = self.media.clone() else {
            return Err(err(
                id,
                ErrorCode::BadRequest,
                "`\"media\": \"sfu\"` is joined on the `switchboard` data channel of a \
                 `POST /rtc` peer connection, whose media it carries",
            ));
        };
        if let Some(joined) = &self.sfu_room {
            return Err(err(
                id,
                ErrorCode::BadRequest,
                format!("this peer connection's media is in room `{joined}` already"),
            ));
        }
        if self.client.in_room(room) {
            return Err(room_error(id, RoomError::AlreadyJoined(room.into())));
        }
        media
            .join(room, &self.client.id_str)
            .await
            .map_err(|e| media_error(id, e))?;
        self.sfu_room = Some(room.to_owned());
        Ok(())
    }

    async fn signal_sfu(&mut self, id: Option<u64>, data: &[u8]) -> Result {
        let Some(media) = self.media.clone() else {
            return Err(err(id, ErrorCode::NotFound, "no SFU on this connection"));
        };
        media
            .signal(data)
            .await
            .map(|()| encode::empty_reply(id))
            .map_err(|e| media_error(id, e))
    }

    async fn leave_sfu(&mut self) {
        if self.sfu_room.take().is_some()
            && let Some(media) = &self.media
        {
            media.leave().await;
        }
    }

    fn refresh(&mut self, id: Option<u64>, token: &str) -> Result {
        let claims = self.auth.verify(token).map_err(|e| match e {
            AuthError::Expired => err(id, ErrorCode::TokenExpired, "token expired"),
            AuthError::Invalid(why) => err(id, ErrorCode::Unauthorized, why),
        })?;
        if self.claims.anonymous || claims.user != self.claims.user {
            return Err(err(
                id,
                ErrorCode::Forbidden,
                "a refresh token must be for the connection's own user",
            ));
        }
        self.client
            .exp
            .store(claims.exp.unwrap_or(0), Ordering::Relaxed);
        self.claims = claims;
        Ok(encode::refresh_reply(id, self.claims.exp))
    }

    // ---- permissions (spec §2, §7) ----

    fn check_subscribe(&self, id: Option<u64>, channel: &str) -> Result<()> {
        if may_subscribe(&self.hub, &self.claims, channel) {
            Ok(())
        } else {
            Err(err(
                id,
                ErrorCode::Forbidden,
                format!("not allowed to subscribe to `{channel}`"),
            ))
        }
    }

    fn check_publish(&self, id: Option<u64>, channel: &str) -> Result<()> {
        if may_publish(&self.hub, &self.claims, channel) {
            Ok(())
        } else {
            Err(err(
                id,
                ErrorCode::Forbidden,
                format!("not allowed to publish to `{channel}`"),
            ))
        }
    }
}

/// Whether a client with `claims` may subscribe to (and read history and presence of)
/// `channel`.
pub fn may_subscribe(hub: &Hub, claims: &Claims, channel: &str) -> bool {
    if let Some((_, owner)) = channel.rsplit_once('#') {
        // A personal channel: its owner only, whatever the claims.
        return !claims.anonymous && !claims.user.is_empty() && owner == claims.user;
    }
    let ns = hub.config.namespace(channel);
    if claims.anonymous {
        ns.allow_anonymous.unwrap_or(hub.config.allow_anonymous)
    } else {
        ns.allow_anonymous == Some(true) || claims.may_subscribe_by_claims(channel)
    }
}

/// Whether a client with `claims` may join the signaling room `room` (the `rooms` claim;
/// anonymous clients when the server allows anonymous access).
pub fn may_join_room(hub: &Hub, claims: &Claims, room: &str) -> bool {
    if claims.anonymous {
        hub.config.allow_anonymous
    } else {
        crate::pattern::any_matches(&claims.rooms, room)
    }
}

/// Whether a client with `claims` may publish to `channel` from the client side (spec §2,
/// §8): a personal channel by its user only; an anonymous client where the server admits
/// anonymous clients everywhere (development mode) or the namespace lets clients publish;
/// anyone else as the namespace, else the claims, say.
pub fn may_publish(hub: &Hub, claims: &Claims, channel: &str) -> bool {
    let ns = hub.config.namespace(channel);
    if let Some((_, owner)) = channel.rsplit_once('#') {
        // Its user's whatever the claims say, unless the namespace lets no client publish.
        let owner = !claims.anonymous && !claims.user.is_empty() && owner == claims.user;
        return owner && ns.allow_client_publish != Some(false);
    }
    if claims.anonymous {
        // A namespace's `allow_anonymous` admits readers; publishing needs more.
        let admitted = ns.allow_anonymous.unwrap_or(hub.config.allow_anonymous);
        return admitted
            && ns
                .allow_client_publish
                .unwrap_or(hub.config.allow_anonymous);
    }
    match ns.allow_client_publish {
        Some(allowed) => allowed,
        None => claims.may_publish_by_claims(channel),
    }
}

/// A page of `channel`'s history as the wire shows it.
pub fn history_page<'a>(
    channel: &'a str,
    history: &'a crate::engine::HistoryResult,
) -> encode::History<'a> {
    encode::History {
        channel,
        publications: &history.publications,
        offset: history.position.offset,
        epoch: &history.position.epoch,
    }
}

fn err(id: Option<u64>, code: ErrorCode, message: impl Into<String>) -> CommandError {
    CommandError::new(id, code, message)
}

fn room_error(id: Option<u64>, e: RoomError) -> CommandError {
    let code = match &e {
        RoomError::NotInRoom(_) => ErrorCode::Forbidden,
        RoomError::UnknownPeer(_) => ErrorCode::NotFound,
        RoomError::AlreadyJoined(_) => ErrorCode::BadRequest,
        RoomError::Full(_) | RoomError::TooMany(_) => ErrorCode::RateLimited,
        RoomError::Engine(_) => ErrorCode::Unavailable,
    };
    err(id, code, e.to_string())
}

fn media_error(id: Option<u64>, e: MediaRefusal) -> CommandError {
    err(id, e.code, e.message)
}

fn hub_error(id: Option<u64>, e: HubError) -> CommandError {
    match e {
        HubError::Engine(e) => err(id, ErrorCode::Unavailable, e.to_string()),
        HubError::Gone | HubError::Overflow => err(id, ErrorCode::Unavailable, e.to_string()),
        HubError::TooLarge(message) => err(id, ErrorCode::TooLarge, message),
    }
}

pub fn error_frame(e: &CommandError) -> Bytes {
    encode::error(e.id, e.code, &e.message)
}

#[cfg(test)]
mod tests;
