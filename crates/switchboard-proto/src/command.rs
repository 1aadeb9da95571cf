//! Parsing of client commands (spec §3). Each malformed frame yields a [`CommandError`] with
//! the frame's `id` when one could be read, so the door can answer with an error frame and go on.

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::ErrorCode;

/// A position in a channel's stream: the offset of a message and the stream's epoch.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct Position {
    pub offset: u64,
    pub epoch: String,
}

/// One client command with its optional numeric id.
#[derive(Debug)]
pub struct Request {
    pub id: Option<u64>,
    pub command: Command,
}

#[derive(Debug)]
pub enum Command {
    Connect {
        token: String,
    },
    Subscribe {
        channel: String,
        since: Option<Position>,
    },
    Unsubscribe {
        channel: String,
    },
    Publish {
        channel: String,
        data: Box<RawValue>,
    },
    Presence {
        channel: String,
    },
    History {
        channel: String,
        since: Option<Position>,
        limit: Option<usize>,
    },
    Refresh {
        token: String,
    },
    Ping,
    JoinRoom {
        room: String,
        meta: Option<Box<RawValue>>,
        /// `"media": "sfu"`: the connection's WebRTC media joins the room's SFU (spec §9).
        media: Option<MediaMode>,
    },
    LeaveRoom {
        room: String,
    },
    UpdateMeta {
        room: String,
        meta: Box<RawValue>,
    },
    Signal {
        room: String,
        /// The target peer; `None` sends to every other peer of the room.
        to: Option<String>,
        data: Box<RawValue>,
    },
}

impl Command {
    pub fn name(&self) -> &'static str {
        match self {
            Command::Connect { .. } => "connect",
            Command::Subscribe { .. } => "subscribe",
            Command::Unsubscribe { .. } => "unsubscribe",
            Command::Publish { .. } => "publish",
            Command::Presence { .. } => "presence",
            Command::History { .. } => "history",
            Command::Refresh { .. } => "refresh",
            Command::Ping => "ping",
            Command::JoinRoom { .. } => "join_room",
            Command::LeaveRoom { .. } => "leave_room",
            Command::UpdateMeta { .. } => "update_meta",
            Command::Signal { .. } => "signal",
        }
    }
}

/// How a room member's media travels (`join_room`'s `media`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaMode {
    /// Through the server's SFU, on the member's `POST /rtc` peer connection.
    Sfu,
}

/// A frame that could not be understood: answered with `{"type":"error",...}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandError {
    pub id: Option<u64>,
    pub code: ErrorCode,
    pub message: String,
}

impl CommandError {
    pub fn new(id: Option<u64>, code: ErrorCode, message: impl Into<String>) -> Self {
        CommandError {
            id,
            code,
            message: message.into(),
        }
    }
}

/// Every field any command may carry, borrowed and unparsed, so each can be checked with a
/// precise message. Unknown fields are ignored (clients may add their own).
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<&'a RawValue>,
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    channel: Option<&'a RawValue>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    #[serde(borrow)]
    since: Option<&'a RawValue>,
    #[serde(borrow)]
    limit: Option<&'a RawValue>,
    #[serde(borrow)]
    token: Option<&'a RawValue>,
    #[serde(borrow)]
    room: Option<&'a RawValue>,
    #[serde(borrow)]
    meta: Option<&'a RawValue>,
    #[serde(borrow)]
    to: Option<&'a RawValue>,
    #[serde(borrow)]
    media: Option<&'a RawValue>,
}

/// The `id` of a command frame, where it has a readable one (to answer a command refused
/// before it is parsed, such as one past the client's rate).
pub fn request_id(frame: &[u8]) -> Option<u64> {
    #[derive(Deserialize)]
    struct Id {
        id: Option<u64>,
    }
    serde_json::from_slice::<Id>(frame).ok()?.id
}

/// Fuzzing entry point (`fuzz/`): one client frame through the parser; a frame that parses
/// has the id that an early refusal (`request_id`) would answer with.
#[doc(hidden)]
pub fn fuzz_command(frame: &[u8]) {
    let id = request_id(frame);
    if let Ok(request) = parse_request(frame) {
        assert_eq!(request.id, id);
    }
}

/// Parses one command frame (the UTF-8 JSON text of one WebSocket message, or one element of a
/// session POST body).
pub fn parse_request(frame: &[u8]) -> Result<Request, CommandError> {
    let text = std::str::from_utf8(frame)
        .map_err(|_| CommandError::new(None, ErrorCode::BadRequest, "frame is not valid UTF-8"))?;
    let env: Envelope = serde_json::from_str(text).map_err(|e| {
        let what = if e.classify() == serde_json::error::Category::Data {
            "frame must be a JSON object"
        } else {
            "malformed JSON"
        };
        CommandError::new(None, ErrorCode::BadRequest, format!("{what}: {e}"))
    })?;
    let id = match env.id {
        None => None,
        Some(raw) if raw.get() == "null" => None,
        Some(raw) => Some(serde_json::from_str::<u64>(raw.get()).map_err(|_| {
            CommandError::new(
                None,
                ErrorCode::BadRequest,
                "field `id` must be a non-negative integer",
            )
        })?),
    };
    let bad = |message: String| CommandError::new(id, ErrorCode::BadRequest, message);
    let kind: String = required(env.kind, "type").map_err(bad)?;
    let command = match kind.as_str() {
        "connect" => Command::Connect {
            token: required(env.token, "token").map_err(bad)?,
        },
        "subscribe" => Command::Subscribe {
            channel: channel(env.channel).map_err(bad)?,
            since: optional(env.since, "since").map_err(bad)?,
        },
        "unsubscribe" => Command::Unsubscribe {
            channel: channel(env.channel).map_err(bad)?,
        },
        "publish" => Command::Publish {
            channel: channel(env.channel).map_err(bad)?,
            data: raw(env.data).ok_or_else(|| bad("missing field `data`".into()))?,
        },
        "presence" => Command::Presence {
            channel: channel(env.channel).map_err(bad)?,
        },
        "history" => Command::History {
            channel: channel(env.channel).map_err(bad)?,
            since: optional(env.since, "since").map_err(bad)?,
            limit: optional(env.limit, "limit").map_err(bad)?,
        },
        "refresh" => Command::Refresh {
            token: required(env.token, "token").map_err(bad)?,
        },
        "ping" => Command::Ping,
        "join_room" => Command::JoinRoom {
            room: name(env.room, "room").map_err(bad)?,
            meta: raw(env.meta),
            media: media_mode(env.media).map_err(bad)?,
        },
        "leave_room" => Command::LeaveRoom {
            room: name(env.room, "room").map_err(bad)?,
        },
        "update_meta" => Command::UpdateMeta {
            room: name(env.room, "room").map_err(bad)?,
            meta: raw(env.meta).ok_or_else(|| bad("missing field `meta`".into()))?,
        },
        "signal" => Command::Signal {
            room: name(env.room, "room").map_err(bad)?,
            to: optional(env.to, "to").map_err(bad)?,
            data: raw(env.data).ok_or_else(|| bad("missing field `data`".into()))?,
        },
        other => return Err(bad(format!("unknown command type `{other}`"))),
    };
    Ok(Request { id, command })
}

/// Longest channel name accepted, in bytes.
pub const MAX_CHANNEL_LEN: usize = 255;

fn channel(raw: Option<&RawValue>) -> Result<String, String> {
    name(raw, "channel")
}

/// A channel or room name: a non-empty string of at most [`MAX_CHANNEL_LEN`] bytes.
fn name(raw: Option<&RawValue>, field: &str) -> Result<String, String> {
    let name: String = required(raw, field)?;
    if name.is_empty() {
        return Err(format!("field `{field}` must not be empty"));
    }
    if name.len() > MAX_CHANNEL_LEN {
        return Err(format!(
            "field `{field}` is longer than {MAX_CHANNEL_LEN} bytes"
        ));
    }
    Ok(name)
}

/// `join_room`'s `media`: absent (or null) for peer-to-peer signaling, or `"sfu"`.
fn media_mode(raw: Option<&RawValue>) -> Result<Option<MediaMode>, String> {
    match optional::<String>(raw, "media")?.as_deref() {
        None => Ok(None),
        Some("sfu") => Ok(Some(MediaMode::Sfu)),
        Some(other) => Err(format!(
            "field `media` must be \"sfu\" (or absent), not `{other}`"
        )),
    }
}

/// Any JSON, kept verbatim (`null` counts as absent).
fn raw(value: Option<&RawValue>) -> Option<Box<RawValue>> {
    value.filter(|v| v.get() != "null").map(|v| v.to_owned())
}

fn required<T: serde::de::DeserializeOwned>(
    raw: Option<&RawValue>,
    field: &str,
) -> Result<T, String> {
    match raw {
        None => Err(format!("missing field `{field}`")),
        Some(raw) => parse_field(raw, field),
    }
}

fn optional<T: serde::de::DeserializeOwned>(
    raw: Option<&RawValue>,
    field: &str,
) -> Result<Option<T>, String> {
    match raw {
        None => Ok(None),
        Some(raw) if raw.get() == "null" => Ok(None),
        Some(raw) => parse_field(raw, field).map(Some),
    }
}

fn parse_field<T: serde::de::DeserializeOwned>(raw: &RawValue, field: &str) -> Result<T, String> {
    serde_json::from_str(raw.get()).map_err(|e| format!("field `{field}` has the wrong type: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(frame: &str) -> CommandError {
        parse_request(frame.as_bytes()).unwrap_err()
    }

    #[test]
    fn parses_subscribe_with_since() {
        let r = parse_request(
            br#"{"type":"subscribe","id":3,"channel":"chat:a","since":{"offset":7,"epoch":"xy"}}"#,
        )
        .unwrap();
        assert_eq!(r.id, Some(3));
        match r.command {
            Command::Subscribe { channel, since } => {
                assert_eq!(channel, "chat:a");
                assert_eq!(
                    since,
                    Some(Position {
                        offset: 7,
                        epoch: "xy".into()
                    })
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn publish_keeps_data_verbatim() {
        let r =
            parse_request(br#"{"type":"publish","channel":"c","data":{"b":1, "a":[2]}}"#).unwrap();
        match r.command {
            Command::Publish { data, .. } => assert_eq!(data.get(), r#"{"b":1, "a":[2]}"#),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_frames_are_refused_with_their_id() {
        assert_eq!(err("{nope").code, ErrorCode::BadRequest);
        assert_eq!(err("[1,2]").id, None);
        let e = err(r#"{"type":"launch","id":9}"#);
        assert_eq!((e.id, e.code), (Some(9), ErrorCode::BadRequest));
        assert!(e.message.contains("launch"));
        let e = err(r#"{"type":"subscribe","id":4}"#);
        assert_eq!(e.id, Some(4));
        assert!(e.message.contains("channel"), "{}", e.message);
        let e = err(r#"{"type":"subscribe","id":5,"channel":42}"#);
        assert!(e.message.contains("wrong type"), "{}", e.message);
        let e = err(r#"{"type":"history","id":6,"channel":"a","limit":"x"}"#);
        assert!(e.message.contains("limit"), "{}", e.message);
        assert!(err(r#"{"id":1}"#).message.contains("type"));
        assert!(err(r#"{"type":"ping","id":"one"}"#).message.contains("id"));
        assert!(
            err(r#"{"type":"publish","channel":"a"}"#)
                .message
                .contains("data")
        );
        assert!(
            err(r#"{"type":"subscribe","channel":""}"#)
                .message
                .contains("empty")
        );
    }

    #[test]
    fn room_commands_parse_with_their_fields() {
        let r =
            parse_request(br#"{"type":"signal","id":2,"room":"r","to":"p1","data":{"sdp":"x"}}"#)
                .unwrap();
        match r.command {
            Command::Signal { room, to, data } => {
                assert_eq!((room.as_str(), to.as_deref()), ("r", Some("p1")));
                assert_eq!(data.get(), r#"{"sdp":"x"}"#);
            }
            other => panic!("{other:?}"),
        }
        assert!(
            err(r#"{"type":"join_room","id":1}"#)
                .message
                .contains("room")
        );
        assert!(
            err(r#"{"type":"signal","room":"r"}"#)
                .message
                .contains("data")
        );
        assert!(
            err(r#"{"type":"update_meta","room":"r"}"#)
                .message
                .contains("meta")
        );
        assert!(
            err(r#"{"type":"signal","room":"r","to":5,"data":1}"#)
                .message
                .contains("to")
        );
    }

    #[test]
    fn join_room_takes_media_sfu_and_nothing_else() {
        let media = |frame: &str| match parse_request(frame.as_bytes()).unwrap().command {
            Command::JoinRoom { media, .. } => media,
            other => panic!("{other:?}"),
        };
        assert_eq!(media(r#"{"type":"join_room","room":"r"}"#), None);
        assert_eq!(
            media(r#"{"type":"join_room","room":"r","media":null}"#),
            None
        );
        assert_eq!(
            media(r#"{"type":"join_room","room":"r","media":"sfu"}"#),
            Some(MediaMode::Sfu)
        );
        let e = err(r#"{"type":"join_room","id":3,"room":"r","media":"mesh"}"#);
        assert_eq!((e.id, e.code), (Some(3), ErrorCode::BadRequest));
        assert!(e.message.contains("media"), "{}", e.message);
        assert!(
            err(r#"{"type":"join_room","room":"r","media":1}"#)
                .message
                .contains("media")
        );
    }

    #[test]
    fn invalid_utf8_is_a_bad_request() {
        let e = parse_request(b"{\"type\":\"ping\xff\"}").unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
    }
}
