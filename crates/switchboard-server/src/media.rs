//! The media door (spec §9): WHIP ingest, WHEP playback and the client's own link
//! (`POST /rtc`, for data channels and SFU rooms) over plain HTTP offer/answer. A
//! POST carries an SDP offer; the answer comes back `201 Created` with the session's
//! resource in `Location` (`/rtc/<id>`: PATCH adds trickled candidates, DELETE ends it) and
//! the ICE servers in `Link` headers. The peer connections themselves live in
//! `switchboard_rtc::media`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use switchboard_core::session::may_join_room;
use switchboard_proto::ErrorCode;
use switchboard_rtc::WebrtcConfig;
use switchboard_rtc::media::{Media, MediaError, Offer, SessionKind};

use crate::datachannel;
use crate::http::{ApiError, admit, admit_user, request_claims};
use crate::state::AppState;

/// The media door's state.
pub(crate) struct MediaDoor {
    pub shared: Arc<AppState>,
    pub media: Media,
    /// For the ICE servers (with TURN credentials) handed out in `Link` headers.
    pub webrtc: WebrtcConfig,
}

/// The local address a request came in on (the media candidate when the socket listens on
/// every address).
#[derive(Debug, Clone, Copy)]
pub(crate) struct LocalAddr(pub SocketAddr);

const MAX_ROOM_LEN: usize = 255;

/// `POST /whip/<room>`: publish the offer's media into the room.
pub(crate) async fn whip(
    State(door): State<Arc<MediaDoor>>,
    Path(room): Path<String>,
    request: Request,
) -> Response {
    offer(&door, Some(room), SessionKind::Whip, request).await
}

/// `POST /whep/<room>`: play the room's most recent publisher.
pub(crate) async fn whep(
    State(door): State<Arc<MediaDoor>>,
    Path(room): Path<String>,
    request: Request,
) -> Response {
    offer(&door, Some(room), SessionKind::Whep { of: None }, request).await
}

/// `POST /whep/<room>/<peer>`: play one publisher of the room.
pub(crate) async fn whep_one(
    State(door): State<Arc<MediaDoor>>,
    Path((room, peer)): Path<(String, String)>,
    request: Request,
) -> Response {
    offer(
        &door,
        Some(room),
        SessionKind::Whep { of: Some(peer) },
        request,
    )
    .await
}

/// `POST /rtc`: the client's own link to the server; each `switchboard` data channel it opens
/// is a door (`datachannel.rs`) for the client the token names.
pub(crate) async fn rtc(State(door): State<Arc<MediaDoor>>, request: Request) -> Response {
    offer(&door, None, SessionKind::Link, request).await
}

async fn offer(
    door: &MediaDoor,
    room: Option<String>,
    kind: SessionKind,
    request: Request,
) -> Response {
    let state = &door.shared;
    let (parts, body) = request.into_parts();
    let refuse = |code, message: String| {
        state.count_error();
        ApiError::new(code, message).into_response()
    };
    let claims = match request_claims(state, parts.uri.query(), &parts.headers) {
        Ok(claims) => claims,
        Err(refusal) => {
            state.count_error();
            return refusal.into_response();
        }
    };
    if let Some(room) = &room {
        if room.is_empty() || room.len() > MAX_ROOM_LEN {
            return refuse(
                ErrorCode::BadRequest,
                "a room name must be 1 to 255 bytes".into(),
            );
        }
        if !may_join_room(&state.hub, &claims, room) {
            return refuse(
                ErrorCode::Forbidden,
                format!("the token does not allow room `{room}`"),
            );
        }
    }
    // A peer connection is a connection: the connection limits apply (spec §8), its permit
    // held as long as the peer lives. A link's data channels are the user's sessions too.
    let mut admitted = admit(state, &parts.headers, &parts.extensions);
    if room.is_none() {
        admitted = admitted.and_then(|permit| admit_user(state, &claims.user).map(|()| permit));
    }
    let permit = match admitted {
        Ok(permit) => permit,
        Err(refusal) => return refusal.into_response(),
    };
    let on_channel = room
        .is_none()
        .then(|| datachannel::door(state.clone(), claims.clone()));
    if !content_type_is(&parts.headers, "application/sdp") {
        state.count_error();
        return unsupported_media_type("an offer is application/sdp");
    }
    let sdp = match read_text(body, door.media_limit()).await {
        Ok(text) => text,
        Err(refusal) => {
            state.count_error();
            return refusal;
        }
    };
    let layer = query_value(parts.uri.query(), "layer");
    if let Some(layer) = &layer
        && !switchboard_rtc::media::valid_layer(layer)
    {
        return refuse(
            ErrorCode::BadRequest,
            "`layer` names a simulcast layer (rid): 1 to 8 letters or digits".into(),
        );
    }
    let local_ip = parts.extensions.get::<LocalAddr>().map(|a| a.0.ip());
    let offer = Offer {
        room: room.unwrap_or_default(),
        kind,
        sdp,
        user: claims.user.clone(),
        local_ip,
        on_channel,
        hold: Some(Box::new(permit)),
        layer,
    };
    match door.media.offer(offer).await {
        Ok(answer) => {
            let mut response = (StatusCode::CREATED, answer.sdp).into_response();
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/sdp"),
            );
            if let Ok(location) = HeaderValue::from_str(&format!("/rtc/{}", answer.id)) {
                headers.insert(header::LOCATION, location);
            }
            for link in ice_links(&door.webrtc, &claims.user) {
                if let Ok(value) = HeaderValue::from_str(&link) {
                    headers.append(header::LINK, value);
                }
            }
            response
        }
        Err(e) => {
            state.count_error();
            media_error(e)
        }
    }
}

/// The value of `key` in a query string (none when absent or empty).
fn query_value(query: Option<&str>, key: &str) -> Option<String> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.to_owned())
        .filter(|v| !v.is_empty())
}

/// `PATCH /rtc/<id>`: trickled candidates (`application/trickle-ice-sdpfrag`).
pub(crate) async fn patch(
    State(door): State<Arc<MediaDoor>>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    if !content_type_is(&parts.headers, "application/trickle-ice-sdpfrag") {
        door.shared.count_error();
        return unsupported_media_type("a trickle is application/trickle-ice-sdpfrag");
    }
    let fragment = match read_text(body, door.media_limit()).await {
        Ok(text) => text,
        Err(refusal) => return refusal,
    };
    match door.media.trickle(&id, &fragment).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => {
            door.shared.count_error();
            media_error(e)
        }
    }
}

/// `DELETE /rtc/<id>`: ends the session. The id is the capability: unguessable, and only
/// ever sent to the client that opened the session.
pub(crate) async fn delete(State(door): State<Arc<MediaDoor>>, Path(id): Path<String>) -> Response {
    match door.media.end(&id).await {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) => {
            door.shared.count_error();
            media_error(e)
        }
    }
}

impl MediaDoor {
    fn media_limit(&self) -> usize {
        self.webrtc.media.max_sdp_bytes
    }
}

fn content_type_is(headers: &HeaderMap, wanted: &str) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(wanted))
}

fn unsupported_media_type(message: &str) -> Response {
    let mut response = ApiError::new(ErrorCode::BadRequest, message).into_response();
    *response.status_mut() = StatusCode::UNSUPPORTED_MEDIA_TYPE;
    response
}

/// The body as UTF-8, at most `limit` bytes.
async fn read_text(body: axum::body::Body, limit: usize) -> Result<String, Response> {
    let bytes: Bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::new(
            ErrorCode::TooLarge,
            format!("the body is over {limit} bytes ([webrtc.media] max_sdp_bytes)"),
        )
        .into_response()
    })?;
    String::from_utf8(bytes.to_vec())
        .map_err(|_| ApiError::new(ErrorCode::BadRequest, "the body is not UTF-8").into_response())
}

fn media_error(e: MediaError) -> Response {
    ApiError::new(datachannel::error_code(&e), e.to_string()).into_response()
}

/// The ICE servers as `Link` headers (RFC 9725 §4.6).
fn ice_links(webrtc: &WebrtcConfig, user: &str) -> Vec<String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let servers = webrtc.ice_servers(user, now);
    let mut links = Vec::new();
    for server in servers.as_array().into_iter().flatten() {
        let urls = server["urls"].as_array().cloned().unwrap_or_default();
        for url in urls.iter().filter_map(|u| u.as_str()) {
            let mut link = format!("<{url}>; rel=\"ice-server\"");
            if let (Some(username), Some(credential)) =
                (server["username"].as_str(), server["credential"].as_str())
            {
                link.push_str(&format!(
                    "; username=\"{username}\"; credential=\"{credential}\"; credential-type=\"password\""
                ));
            }
            links.push(link);
        }
    }
    links
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ice_servers_become_link_headers_with_turn_credentials() {
        let webrtc = WebrtcConfig {
            stun_urls: vec!["stun:stun.example:3478".into()],
            turn_urls: vec!["turn:turn.example:3478?transport=udp".into()],
            turn_secret: Some("s3cret".into()),
            ..WebrtcConfig::default()
        };
        let links = ice_links(&webrtc, "alice");
        assert_eq!(links.len(), 2);
        assert_eq!(links[0], "<stun:stun.example:3478>; rel=\"ice-server\"");
        assert!(
            links[1].starts_with(
                "<turn:turn.example:3478?transport=udp>; rel=\"ice-server\"; username=\""
            ) && links[1].contains(":alice\"; credential=\"")
                && links[1].ends_with("credential-type=\"password\""),
            "{}",
            links[1]
        );
    }

    #[test]
    fn content_types_match_without_parameters_or_case() {
        let mut headers = HeaderMap::new();
        assert!(!content_type_is(&headers, "application/sdp"));
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("Application/SDP; charset=utf-8"),
        );
        assert!(content_type_is(&headers, "application/sdp"));
        assert!(!content_type_is(
            &headers,
            "application/trickle-ice-sdpfrag"
        ));
    }
}
