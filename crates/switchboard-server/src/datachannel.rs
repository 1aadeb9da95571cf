//! The data channel door (spec §9): the native frames of §3 over a `switchboard` data channel
//! of a client's `POST /rtc` peer connection, one JSON frame per message, `connected` first.
//! A codec (frames as they are: a data channel keeps message boundaries) and a driver that
//! moves messages between the connection's machine and the media plane's channel link.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use switchboard_core::{Claims, ClientSink, Session};
use switchboard_proto::command::request_id;
use switchboard_proto::{Disconnect, Outgoing, encode};
use switchboard_rtc::media::{ChannelLink, OnChannel};

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
            message = link.incoming.recv() => match message {
                Some(payload) => on_message(&state, &mut machine, &mut session, &payload).await,
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
}
