//! Every Redis key and pub/sub channel the engine uses, under the deployment's prefix, so
//! several deployments can share one Redis.

#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
}

/// What a pub/sub channel this engine subscribes to carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Topic {
    /// Publications and join/leave events of a hub channel.
    Channel(String),
    /// Events of a signaling room.
    Room(String),
    /// Server API requests for every node.
    Control,
    /// Answers to this node's requests.
    Replies,
}

impl Keys {
    pub(super) fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    fn key(&self, kind: &str, name: &str) -> String {
        format!("{}:{kind}:{name}", self.prefix)
    }

    /// Hash `{t: last offset, e: epoch}` of a channel's stream.
    pub(super) fn meta(&self, channel: &str) -> String {
        self.key("m", channel)
    }

    /// Redis stream of a channel's history; entry ids are `<offset>-0`.
    pub(super) fn history(&self, channel: &str) -> String {
        self.key("h", channel)
    }

    /// Hash of a channel's presence: client id → member.
    pub(super) fn presence(&self, channel: &str) -> String {
        self.key("p", channel)
    }

    /// Hash of a room's members: peer id → `<join seq>|<peer>`.
    pub(super) fn room(&self, room: &str) -> String {
        self.key("r", room)
    }

    /// Hash of a room's peer metadata: peer id → raw JSON.
    pub(super) fn room_meta(&self, room: &str) -> String {
        self.key("rm", room)
    }

    /// Counter giving a room's joins their order.
    pub(super) fn room_seq(&self, room: &str) -> String {
        self.key("rs", room)
    }

    /// Hash of the nodes' self-descriptions: node id → JSON.
    pub(super) fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }

    /// Sorted set of node ids by their last heartbeat (Unix milliseconds).
    pub(super) fn node_seen(&self) -> String {
        format!("{}:seen", self.prefix)
    }

    /// Set of the presence (`p:<channel>`) and room (`r:<room>`) entries a node holds
    /// members in, so whoever reaps a dead node knows where to look.
    pub(super) fn node_holdings(&self, node: &str) -> String {
        self.key("nk", node)
    }

    /// Lock that lets one node reap a dead one.
    pub(super) fn reap_lock(&self, node: &str) -> String {
        self.key("reap", node)
    }

    pub(super) fn topic(&self, topic: &Topic, node: &str) -> String {
        match topic {
            Topic::Channel(channel) => self.key("c", channel),
            Topic::Room(room) => self.key("rc", room),
            Topic::Control => format!("{}:ctl", self.prefix),
            Topic::Replies => self.key("reply", node),
        }
    }

    /// The topic a pub/sub channel name stands for (this node's own names only).
    pub(super) fn parse_topic(&self, name: &str, node: &str) -> Option<Topic> {
        let rest = name.strip_prefix(&self.prefix)?.strip_prefix(':')?;
        if rest == "ctl" {
            return Some(Topic::Control);
        }
        let (kind, name) = rest.split_once(':')?;
        match kind {
            "c" => Some(Topic::Channel(name.to_owned())),
            "rc" => Some(Topic::Room(name.to_owned())),
            "reply" if name == node => Some(Topic::Replies),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_round_trip_even_with_separators_in_names() {
        let keys = Keys::new("sb");
        for topic in [
            Topic::Channel("chat:lobby".into()),
            Topic::Channel("a:b:c#user".into()),
            Topic::Room("call:1".into()),
            Topic::Control,
            Topic::Replies,
        ] {
            let name = keys.topic(&topic, "n1");
            assert_eq!(keys.parse_topic(&name, "n1"), Some(topic));
        }
        assert_eq!(keys.parse_topic("other:c:x", "n1"), None);
        assert_eq!(keys.parse_topic("sb:reply:n2", "n1"), None);
    }
}
