//! The data channel door (spec §9): the native frames of §3 over a `switchboard` data channel
//! of a client's `POST /rtc` peer connection, one JSON frame per message, `connected` first.
//! A codec (frames as they are: a data channel keeps message boundaries), a driver that
//! moves messages between the connection's machine and the media plane's channel link, and
//! the session's media (`DoorMedia`): `join_room` with `"media": "sfu"` puts the peer
//! connection's media in the room's SFU, renegotiated by `signal` frames from and to "sfu".

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use switchboard_core::engine::BoxFuture;
use switchboard_core::{Claims, ClientSink, MediaLink, MediaRefusal, SFU_PEER, Session};
use switchboard_proto::command::request_id;
use switchboard_proto::{Disconnect, ErrorCode, Outgoing, encode};
use switchboard_rtc::media::{
    ChannelLink, ChannelWriter, Description, DescriptionKind, MediaError, OnChannel, OnDescription,
};

use crate::door::{
    Deadline, DoorCodec, Framing, Heartbeat, Machine, NoControl, Out, Outbox, Output, Overflow,
};
use crate::state::AppState;

/// Each frame one message.
pub(crate) struct ChannelCodec;

impl DoorCodec for ChannelCodec {
    type Control = NoControl;

    fn shared(&mut self, frame: &Outgoing, out: &mut Out<'_, Self::Control>) {
        out.push(frame.json().clone());
    }

    fn own(&mut self, json: Bytes, out: &mut Out<'_, Self::Control>) {
        out.push(json);
    }

    /// None: the peer connection's ICE consent checks keep it alive, and one that goes silent
    /// is dropped by the media plane, which ends this door.
    fn heartbeat(&mut self) -> Option<Heartbeat> {
        None
    }

    fn goodbye(&mut self, reason: &Disconnect, out: &mut Out<'_, Self::Control>) {
        out.push(encode::disconnect(reason));
    }
}

/// What a `POST /rtc` peer connection does with each `switchboard` data channel: a session
/// for the client the request's token named. (The connection's permit is held by the peer
/// connection, see `media.rs`.)
pub(crate) fn door(state: Arc<AppState>, claims: Claims) -> OnChannel {
    Arc::new(move |link: ChannelLink| {
        tokio::spawn(serve(state.clone(), claims.clone(), link));
    })
}

async fn serve(state: Arc<AppState>, claims: Claims, mut link: ChannelLink) {
    let outbox = Arc::new(Outbox::new(
        state.limits.client_queue_bytes,
        Overflow::Disconnect,
        state.stats.clone(),
    ));
    let mut machine = Machine::new(ChannelCodec, outbox.clone(), Framing::Plain);
    machine.limit_commands(
        state.limits.client_rate,
        state.limits.client_burst,
        Instant::now(),
    );
    let sink: Arc<dyn ClientSink> = outbox.clone();
    let mut session = Session::open(state.hub.clone(), state.auth.clone(), claims, sink);
    session.set_media(Arc::new(DoorMedia {
        writer: link.outgoing.clone(),
        outbox: outbox.clone(),
    }));
    let ping = state.limits.ping_interval.as_secs();
    outbox.push_own(session.connected_frame(None, ping, None));
    let mut deadline = Deadline::default();
    'serve: loop {
        match machine.poll_output(Instant::now) {
            Output::Write => {
                while let Some(message) = machine.take_chunk() {
                    if link.outgoing.send(message).await.is_err() {
                        break 'serve;
                    }
                }
                continue;
            }
            Output::Close(_) => {
                link.outgoing.close().await;
                break;
            }
            Output::Wait(at) => deadline.set(at),
        }
        tokio::select! {
            _ = outbox.woken() => {}
            message = link.incoming.recv(), if !machine.is_closing() => match message {
                Some(payload) => on_message(&state, &mut machine, &mut session, &payload).await,
                // The client sent faster than its commands are taken: a clear goodbye, then
                // the channel closes.
                None if link.flooded.load(Ordering::Acquire) => {
                    state.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
                    outbox.close(Disconnect::FLOODED);
                }
                // The channel or its peer connection closed.
                None => break,
            },
            _ = std::future::poll_fn(|cx| deadline.poll(cx)) => {}
        }
    }
    session.close().await;
}

async fn on_message(
    state: &AppState,
    machine: &mut Machine<ChannelCodec>,
    session: &mut Session,
    payload: &[u8],
) {
    state.stats.frames_in.fetch_add(1, Ordering::Relaxed);
    let outbox = machine.outbox().clone();
    if payload.len() > state.limits.max_frame_size {
        state.count_error();
        outbox.push_own(encode::frame_too_large(None, state.limits.max_frame_size));
        return;
    }
    if !machine.admit_command(Instant::now) {
        // Counted like every door's refused command (the WebSocket and POST /session ones).
        state.count_error();
        state.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
        outbox.push_own(encode::rate_limited(
            request_id(payload),
            state.limits.client_rate,
        ));
        return;
    }
    if machine.is_closing() {
        return;
    }
    if let Some(answer) = session.handle_frame(payload).await {
        if answer.is_error() {
            state.count_error();
        }
        outbox.push_own(answer.into_frame());
    }
}

/// The session's media: the peer connection this channel belongs to.
struct DoorMedia {
    writer: ChannelWriter,
    outbox: Arc<Outbox<NoControl>>,
}

impl MediaLink for DoorMedia {
    fn join(&self, room: &str, peer: &str) -> BoxFuture<Result<(), MediaRefusal>> {
        let writer = self.writer.clone();
        let outbox = self.outbox.clone();
        let (room, peer) = (room.to_owned(), peer.to_owned());
        Box::pin(async move {
            let frame_room = room.clone();
            let on_description: OnDescription = Arc::new(move |description: Description| {
                outbox.push_own(sfu_signal(&frame_room, &description));
            });
            writer
                .sfu_join(&room, &peer, on_description)
                .await
                .map_err(refusal)
        })
    }

    fn signal(&self, data: &[u8]) -> BoxFuture<Result<(), MediaRefusal>> {
        let writer = self.writer.clone();
        let parsed = parse_signal(data);
        Box::pin(async move {
            match parsed? {
                Some(description) => writer.sfu_describe(description).await.map_err(refusal),
                None => Ok(()),
            }
        })
    }

    fn leave(&self) -> BoxFuture<()> {
        let writer = self.writer.clone();
        Box::pin(async move { writer.sfu_leave().await })
    }
}

/// `{"type":"signal","room","from":"sfu","data":{"sdp":{"type","sdp"}}}`.
fn sfu_signal(room: &str, description: &Description) -> Bytes {
    let data = serde_json::json!({
        "sdp": {"type": description.kind.as_str(), "sdp": description.sdp}
    });
    let data = RawValue::from_string(data.to_string()).expect("serialized JSON is JSON");
    encode::signal(room, SFU_PEER, &data)
}

/// The `data` of a client's signal to "sfu": a session description, or a candidate (`None`).
fn parse_signal(data: &[u8]) -> Result<Option<Description>, MediaRefusal> {
    #[derive(Deserialize)]
    struct Signal {
        sdp: Option<Init>,
        candidate: Option<serde::de::IgnoredAny>,
    }
    #[derive(Deserialize)]
    struct Init {
        #[serde(rename = "type")]
        kind: String,
        sdp: String,
    }
    let bad = |message: String| MediaRefusal::new(ErrorCode::BadRequest, message);
    let signal: Signal = serde_json::from_slice(data).map_err(|e| {
        bad(format!(
            "a signal to \"sfu\" holds {{\"sdp\": {{\"type\", \"sdp\"}}}}: {e}"
        ))
    })?;
    match signal.sdp {
        Some(init) => {
            let kind = match init.kind.as_str() {
                "offer" => DescriptionKind::Offer,
                "answer" => DescriptionKind::Answer,
                other => {
                    return Err(bad(format!(
                        "the SFU takes an `offer` or an `answer`, not `{other}`"
                    )));
                }
            };
            Ok(Some(Description {
                kind,
                sdp: init.sdp,
            }))
        }
        // The server is ICE lite: it answers the client's checks wherever they come from,
        // so trickled candidates add nothing. Accepted, for clients that send them anyway.
        None if signal.candidate.is_some() => Ok(None),
        None => Err(bad(
            "a signal to \"sfu\" holds {\"sdp\": {\"type\", \"sdp\"}}".into(),
        )),
    }
}

fn refusal(e: MediaError) -> MediaRefusal {
    MediaRefusal::new(error_code(&e), e.to_string())
}

/// The code a media refusal is answered with, on HTTP (`media.rs`) and on this door alike.
pub(crate) fn error_code(e: &MediaError) -> ErrorCode {
    match e {
        MediaError::BadSdp(_) | MediaError::Conflict(_) => ErrorCode::BadRequest,
        MediaError::NotFound(_) => ErrorCode::NotFound,
        MediaError::Full(_) | MediaError::Unavailable => ErrorCode::Unavailable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::door::codec::testing::pieces;

    #[test]
    fn each_frame_is_one_message_as_it_is() {
        let frame = Arc::new(Outgoing::new(Bytes::from_static(b"{\"type\":\"message\"}")));
        let shared = pieces(|out| ChannelCodec.shared(&frame, out));
        assert_eq!(shared.len(), 1);
        assert_eq!(shared[0].as_ptr(), frame.json().as_ptr(), "not copied");
        let own = pieces(|out| ChannelCodec.own(Bytes::from_static(b"{}"), out));
        assert_eq!(own, [Bytes::from_static(b"{}")]);
        let bye = pieces(|out| ChannelCodec.goodbye(&Disconnect::SHUTDOWN, out));
        assert_eq!(bye.len(), 1, "a disconnect frame and nothing else");
        assert!(ChannelCodec.heartbeat().is_none());
    }

    #[test]
    fn signals_to_the_sfu_hold_a_description_or_a_candidate() {
        let offer = parse_signal(br#"{"sdp":{"type":"offer","sdp":"v=0\r\n"}}"#).unwrap();
        assert_eq!(
            offer,
            Some(Description {
                kind: DescriptionKind::Offer,
                sdp: "v=0\r\n".into()
            })
        );
        let candidate = parse_signal(
            br#"{"candidate":{"candidate":"candidate:1 1 udp 1 127.0.0.1 9 typ host"}}"#,
        );
        assert_eq!(candidate, Ok(None));
        for bad in [
            &br#"{"sdp":{"type":"rollback","sdp":""}}"#[..],
            br#"{"sdp":"v=0"}"#,
            br#"{"nothing":1}"#,
            br#"[1]"#,
        ] {
            let e = parse_signal(bad).unwrap_err();
            assert_eq!(
                e.code,
                ErrorCode::BadRequest,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn the_sfu_signals_as_the_peer_sfu() {
        let frame = sfu_signal(
            "call",
            &Description {
                kind: DescriptionKind::Answer,
                sdp: "v=0".into(),
            },
        );
        let frame: serde_json::Value = serde_json::from_slice(&frame).unwrap();
        assert_eq!(
            frame,
            serde_json::json!({"type": "signal", "room": "call", "from": "sfu",
                "data": {"sdp": {"type": "answer", "sdp": "v=0"}}})
        );
    }
}
