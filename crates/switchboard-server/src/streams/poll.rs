//! Long polling (`GET /poll`): stateless between polls, the cursor carries everything. Each
//! request is a short-lived observer client of the hub: it subscribes its channels from the
//! cursor's positions (so what was published between two polls is recovered from history),
//! answers as soon as something arrives or after `timeout`, and leaves.
//!
//! Two more drivers of the door core: the request's own outbox refuses what does not fit in
//! one answer (the cursor then stops at the last message in it), and the long-poll session of
//! `&session=` keeps its frames in its outbox between polls.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Query, Request, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use switchboard_core::session::Announce;
use switchboard_core::{Claims, ClientSink, Session};
use switchboard_proto::ErrorCode;

use super::codec::{Cursor, StreamCodec, StreamKind};
use super::open::{no_buffering, read_request, start_positions, subscribe_channels};
use super::sessions::PollDoor;
use super::state::StreamsState;
use crate::admission::Permit;
use crate::door::{Framing, Machine, NoControl, Outbox, Output, Overflow};
use crate::http::{admit, admit_user, error_response};

const DEFAULT_TIMEOUT: u64 = 25;
/// Longest wait, below the 60 s idle timeout of common proxies.
const MAX_TIMEOUT: u64 = 55;

/// Opens the session a long poller talks back through (spec §5): a client of the hub whose
/// frames wait in its outbox for the next poll that names it (`&session=`). Returns its id and
/// the `connected` frame that announces it.
fn open_poll_session(
    streams: &StreamsState,
    claims: Claims,
    permit: Permit,
    heartbeat: u64,
) -> (String, Bytes) {
    let state = &streams.shared;
    let outbox = Arc::new(Outbox::new(
        state.limits.client_queue_bytes,
        Overflow::Disconnect,
        state.stats.clone(),
    ));
    let codec = StreamCodec::new(StreamKind::Poll, Cursor::none(streams.cursor_key.clone()));
    let machine = Machine::new(codec, outbox.clone(), Framing::Plain);
    let sink: Arc<dyn ClientSink> = outbox.clone();
    let mut session = Session::open(state.hub.clone(), state.auth.clone(), claims, sink);
    session.return_replies();
    let id = crate::config::random_hex(16);
    let connected = session.connected_frame(None, heartbeat, Some(&id));
    let door = PollDoor::new(outbox, machine, permit);
    streams.sessions.insert_poll(id.clone(), session, door);
    (id, connected)
}

/// `GET /poll?channel=...[&cursor=...][&timeout=...][&session=...]`.
pub(crate) async fn poll(State(streams): State<Arc<StreamsState>>, request: Request) -> Response {
    let state = &streams.shared;
    let (parts, _) = request.into_parts();
    let door = match read_request(&streams, &parts, false) {
        Ok(door) => door,
        Err(refusal) => {
            state.count_error();
            return refusal.into_response();
        }
    };
    let params = Query::<Vec<(String, String)>>::try_from_uri(&parts.uri)
        .map(|Query(q)| q)
        .unwrap_or_default();
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    // The session of an earlier poll, if this node still has it: what its commands
    // subscribed arrives through it.
    let session_id = param("session");
    let poll_session = session_id
        .as_deref()
        .and_then(|id| streams.sessions.touch_poll(id));
    let timeout = match param("timeout") {
        None => DEFAULT_TIMEOUT,
        Some(v) => match v.parse::<u64>() {
            Ok(secs) => secs.min(MAX_TIMEOUT),
            Err(_) => {
                return error_response(ErrorCode::BadRequest, "`timeout` must be whole seconds");
            }
        },
    };
    let starts = match start_positions(state, &door).await {
        Ok(starts) => starts,
        Err(refusal) => return refusal.into_response(),
    };
    // This request's own client: what fits in one answer.
    let outbox: Arc<Outbox<NoControl>> = Arc::new(Outbox::new(
        state.limits.client_queue_bytes,
        Overflow::Refuse,
        state.stats.clone(),
    ));
    let cursor = Cursor::new(streams.cursor_key.clone(), &door.channels, starts.clone());
    let mut machine = Machine::new(
        StreamCodec::new(StreamKind::Poll, cursor),
        outbox.clone(),
        Framing::Plain,
    );
    let first = door.cursor.is_none();
    if first {
        // The session is the long poller's connection: it counts against the limits.
        let permit = match admit(state, &parts.headers, &parts.extensions) {
            Ok(permit) => permit,
            Err(refusal) => return refusal.into_response(),
        };
        if let Err(refusal) = admit_user(state, &door.claims.user) {
            return refusal.into_response();
        }
        let heartbeat = state.limits.ping_interval.as_secs();
        let claims = door.claims.clone();
        let (id, connected) = open_poll_session(&streams, claims, permit, heartbeat);
        outbox.push_own(connected);
        tracing::debug!("long-poll session {id} opened");
    }
    let sink: Arc<dyn ClientSink> = outbox.clone();
    let mut session =
        Session::open_observer(state.hub.clone(), state.auth.clone(), door.claims, sink);
    // The first poll announces every channel; later ones only a channel whose missed
    // messages history no longer held.
    let announce = if first {
        Announce::Always
    } else {
        Announce::IfNotRecovered
    };
    subscribe_channels(
        state,
        &mut session,
        (&door.channels, starts),
        announce,
        &outbox,
    )
    .await;
    let session_door = poll_session.as_deref().and_then(|cell| cell.poll.as_ref());
    if !first {
        let wait = async {
            loop {
                // Registered before looking, so news arriving in between is not missed.
                let mut notified = std::pin::pin!(session_door.map(|d| d.arrived.notified()));
                if let Some(n) = notified.as_mut().as_pin_mut() {
                    n.enable();
                }
                let session_news = session_door.is_some_and(PollDoor::has_news);
                if outbox.has_frames() || outbox.is_closing() || session_news {
                    return;
                }
                let session_woken = async {
                    match notified.as_mut().as_pin_mut() {
                        Some(n) => n.await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = outbox.woken() => {}
                    _ = session_woken => {}
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(timeout), wait).await;
    }
    // Leaving the hub first: nothing arrives after what the answer holds.
    session.close().await;

    let (mut frames, _) = drain(&mut machine);
    let mut ended = false;
    if let Some(door) = session_door {
        let mut machine = door.machine.lock();
        machine.codec_mut().begin_answer();
        let (more, over) = drain(&mut machine);
        if !frames.is_empty() && !more.is_empty() {
            frames.push(Bytes::from_static(b","));
        }
        frames.extend(more);
        ended = over;
    }
    if ended && let Some(id) = &session_id {
        // Its last frames (the disconnect) are in this answer: the session is over.
        streams.sessions.remove(id);
    }
    answer(&frames, &machine.codec().cursor().text())
}

/// What a machine has for this answer, and whether its client is over (its goodbye is among
/// them: the server closed it).
fn drain(machine: &mut Machine<StreamCodec>) -> (Vec<Bytes>, bool) {
    let mut frames = Vec::new();
    loop {
        match machine.poll_output(Instant::now) {
            Output::Write => frames.extend(std::iter::from_fn(|| machine.take_chunk())),
            Output::Wait(_) => return (frames, false),
            Output::Close(_) => return (frames, true),
        }
    }
}

/// `{"messages":[...],"cursor":"..."}`: `frames` are the array's elements with their commas.
fn answer_body(frames: &[Bytes], cursor: &str) -> Vec<u8> {
    let len: usize = frames.iter().map(Bytes::len).sum();
    let mut out = Vec::with_capacity(len + cursor.len() + 32);
    out.extend_from_slice(b"{\"messages\":[");
    frames.iter().for_each(|f| out.extend_from_slice(f));
    out.extend_from_slice(b"],\"cursor\":\"");
    out.extend_from_slice(cursor.as_bytes());
    out.extend_from_slice(b"\"}");
    out
}

fn answer(frames: &[Bytes], cursor: &str) -> Response {
    let mut response = answer_body(frames, cursor).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    no_buffering(headers);
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::ServerStats;
    use crate::streams::cursor::CursorKey;
    use switchboard_proto::Disconnect;

    fn session_machine() -> (Arc<Outbox<NoControl>>, Machine<StreamCodec>) {
        let stats = Arc::new(ServerStats::default());
        let outbox = Arc::new(Outbox::new(1 << 20, Overflow::Disconnect, stats));
        let cursor = Cursor::none(Arc::new(CursorKey::new(b"k")));
        let codec = StreamCodec::new(StreamKind::Poll, cursor);
        let machine = Machine::new(codec, outbox.clone(), Framing::Plain);
        (outbox, machine)
    }

    fn messages(frames: &[Bytes]) -> Vec<serde_json::Value> {
        let body: serde_json::Value =
            serde_json::from_slice(&answer_body(frames, "c")).expect("an answer is JSON");
        body["messages"].as_array().unwrap().clone()
    }

    #[test]
    fn every_answer_of_a_session_is_an_array_of_its_own_and_the_last_says_why() {
        let (outbox, mut machine) = session_machine();
        for round in 0..3 {
            outbox.push_own(Bytes::from(format!("{{\"round\":{round}}}")));
            outbox.push_own(Bytes::from_static(b"{\"second\":true}"));
            machine.codec_mut().begin_answer();
            let (frames, over) = drain(&mut machine);
            assert!(!over);
            let got = messages(&frames);
            assert_eq!(got.len(), 2, "round {round}");
            assert_eq!(got[0]["round"], round);
        }
        outbox.close(Disconnect::SLOW_CONSUMER);
        machine.codec_mut().begin_answer();
        let (frames, over) = drain(&mut machine);
        assert!(over, "the session is over");
        let got = messages(&frames);
        assert_eq!(got[0]["type"], "disconnect");
        assert_eq!(got[0]["code"], Disconnect::SLOW_CONSUMER.code);
    }
}
