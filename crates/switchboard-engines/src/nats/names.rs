//! Every stream and subject the NATS engine uses, under the deployment's prefix, so several
//! deployments can share one NATS. A channel, room, client or node name becomes one subject
//! token (base64url without padding): names may hold `.`, `*`, `>` or spaces, tokens can't.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// A name as one subject token.
pub(crate) fn token(name: &str) -> String {
    URL_SAFE_NO_PAD.encode(name)
}

/// The name a token stands for.
pub(crate) fn untoken(token: &str) -> Option<String> {
    String::from_utf8(URL_SAFE_NO_PAD.decode(token).ok()?).ok()
}

/// What a core NATS subscription of this engine carries.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Topic {
    /// Publications and join/leave events of a hub channel.
    Channel(String),
    /// Events of a signaling room.
    Room(String),
}

#[derive(Debug, Clone)]
pub(crate) struct Names {
    prefix: String,
}

impl Names {
    /// The prefix names streams too, so it may only hold characters streams and subjects allow.
    pub(super) fn new(prefix: &str) -> Result<Names, String> {
        let fine = !prefix.is_empty()
            && prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !fine {
            return Err(format!(
                "[engine] prefix {prefix:?}: NATS needs letters, digits, '-' or '_'"
            ));
        }
        Ok(Names {
            prefix: prefix.to_owned(),
        })
    }

    /// The stream keeping the history of channels whose namespace keeps `size` messages.
    pub(super) fn history_stream(&self, size: usize) -> String {
        format!("{}_history_{size}", self.prefix)
    }

    pub(super) fn history_subjects(&self, size: usize) -> String {
        format!("{}.h.{size}.*", self.prefix)
    }

    /// A channel's subject in its history stream.
    pub(super) fn history(&self, size: usize, channel: &str) -> String {
        format!("{}.h.{size}.{}", self.prefix, token(channel))
    }

    /// Presence: one subject per member, `<prefix>.pr.<channel>.<node>.<client>`.
    pub(super) fn presence_stream(&self) -> String {
        format!("{}_presence", self.prefix)
    }

    pub(super) fn presence_subjects(&self) -> String {
        format!("{}.pr.*.*.*", self.prefix)
    }

    pub(super) fn presence_member(&self, channel: &str, node: &str, client: &str) -> String {
        format!(
            "{}.pr.{}.{}.{}",
            self.prefix,
            token(channel),
            token(node),
            token(client)
        )
    }

    /// Every member of `channel`.
    pub(super) fn presence_of(&self, channel: &str) -> String {
        format!("{}.pr.{}.*.*", self.prefix, token(channel))
    }

    /// Every member `node` holds, in any channel.
    pub(super) fn presence_held_by(&self, node: &str) -> String {
        format!("{}.pr.*.{}.*", self.prefix, token(node))
    }

    /// The channel and client of a presence subject.
    pub(super) fn parse_presence(&self, subject: &str) -> Option<(String, String)> {
        let rest = subject.strip_prefix(&self.prefix)?.strip_prefix(".pr.")?;
        let mut parts = rest.split('.');
        let channel = untoken(parts.next()?)?;
        let _node = parts.next()?;
        let client = untoken(parts.next()?)?;
        Some((channel, client))
    }

    /// Rooms: one subject per room holding its whole roster (changed with compare-and-set).
    pub(super) fn rooms_stream(&self) -> String {
        format!("{}_rooms", self.prefix)
    }

    pub(super) fn rooms_subjects(&self) -> String {
        format!("{}.room.*", self.prefix)
    }

    pub(super) fn room_roster(&self, room: &str) -> String {
        format!("{}.room.{}", self.prefix, token(room))
    }

    pub(super) fn parse_room_roster(&self, subject: &str) -> Option<String> {
        untoken(subject.strip_prefix(&self.prefix)?.strip_prefix(".room.")?)
    }

    /// Nodes: one subject per node holding its last heartbeat.
    pub(super) fn nodes_stream(&self) -> String {
        format!("{}_nodes", self.prefix)
    }

    pub(super) fn nodes_subjects(&self) -> String {
        format!("{}.node.*", self.prefix)
    }

    pub(super) fn node(&self, node: &str) -> String {
        format!("{}.node.{}", self.prefix, token(node))
    }

    /// Core NATS subject of a topic.
    pub(super) fn topic(&self, topic: &Topic) -> String {
        match topic {
            Topic::Channel(channel) => format!("{}.c.{}", self.prefix, token(channel)),
            Topic::Room(room) => format!("{}.rc.{}", self.prefix, token(room)),
        }
    }

    /// Server API requests every node answers.
    pub(super) fn control(&self) -> String {
        format!("{}.ctl", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_separators_become_single_tokens_and_come_back() {
        let names = Names::new("sb").unwrap();
        for name in [
            "chat:lobby",
            "a.b.c",
            "*",
            ">",
            "with space",
            "x#alice",
            "é",
        ] {
            let t = token(name);
            assert!(
                t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
                "{t}"
            );
            assert_eq!(untoken(&t).as_deref(), Some(name));
            let subject = names.presence_member(name, "node1", "client.1");
            assert_eq!(
                names.parse_presence(&subject),
                Some((name.to_owned(), "client.1".to_owned()))
            );
            assert_eq!(
                names.parse_room_roster(&names.room_roster(name)).as_deref(),
                Some(name)
            );
        }
    }

    #[test]
    fn prefixes_that_would_break_subjects_are_refused() {
        assert!(Names::new("switchboard").is_ok());
        assert!(Names::new("sb-test_1").is_ok());
        for bad in ["", "a.b", "a*", "a>", "a b", "a/b"] {
            assert!(Names::new(bad).is_err(), "{bad:?}");
        }
    }
}
