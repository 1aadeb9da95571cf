//! Which node reports `channel_occupied` when a channel has subscribers on several nodes.
//!
//! The hub tells each node when a channel gets its first subscriber there. Across nodes the
//! channel is occupied once: the node that held it first reports it. Each node remembers
//! when its subscribers of a channel began (wall-clock milliseconds, so comparable between
//! nodes); before reporting, a node asks every node whether it has held the channel since
//! earlier (ties broken by a per-process token). Two nodes occupying a channel at once thus
//! agree on one reporter, where "report if nobody else holds it" would have both stay
//! silent. `channel_vacated` needs no such rule: it is reported when, after the delay, no
//! node holds the channel (see `webhooks.rs`).
//!
//! A node counts as holding a channel until its own `channel_vacated` is settled (sent, or
//! dropped because another node holds the channel), not only until its last subscriber
//! left: a node that took over while the first was leaving does not report the channel
//! occupied again, as the first node's leave is not reported either.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

/// The node request asking whether this node held a channel before the asker did.
pub const OCCUPIED_BEFORE: &str = "pusher_occupied_before";

pub struct Occupancy {
    /// Since when (ms since the epoch, token) each channel with subscribers here has had them.
    since: Mutex<HashMap<String, (u64, u64)>>,
    /// Tells this process apart from another node whose clock gave the same millisecond.
    token: u64,
}

impl Default for Occupancy {
    fn default() -> Self {
        Occupancy {
            since: Mutex::new(HashMap::new()),
            token: rand::random(),
        }
    }
}

impl Occupancy {
    /// `hub_channel` got its first subscriber on this node. Returns the question to ask every
    /// node before reporting it (the argument of an [`OCCUPIED_BEFORE`] request). Back
    /// before its leave was settled, the node keeps its first time.
    pub fn occupied(&self, hub_channel: &str) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let (since, token) = *self
            .since
            .lock()
            .entry(hub_channel.to_owned())
            .or_insert((now, self.token));
        format!("{hub_channel}\0{since}\0{token}")
    }

    /// This node's `channel_vacated` of `hub_channel` was settled with no subscriber of it
    /// left here: the node no longer holds it.
    pub fn released(&self, hub_channel: &str) {
        self.since.lock().remove(hub_channel);
    }

    /// Answers an [`OCCUPIED_BEFORE`] question: 1 when this node has held the channel since
    /// before the asker (never for the asker itself), else 0.
    pub fn answer(&self, question: &str) -> usize {
        let mut parts = question.split('\0');
        let (Some(channel), Some(since), Some(token), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return 0;
        };
        let (Ok(since), Ok(token)) = (since.parse::<u64>(), token.parse::<u64>()) else {
            return 0;
        };
        match self.since.lock().get(channel) {
            Some(&mine) => usize::from(mine < (since, token)),
            None => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_earliest_holder_reports_and_no_node_answers_itself() {
        let (a, b) = (Occupancy::default(), Occupancy::default());
        let asked_by_a = a.occupied("ch");
        std::thread::sleep(std::time::Duration::from_millis(2));
        let asked_by_b = b.occupied("ch");
        // A was first: nobody held it before A; A held it before B.
        assert_eq!(a.answer(&asked_by_a) + b.answer(&asked_by_a), 0);
        assert_eq!(a.answer(&asked_by_b) + b.answer(&asked_by_b), 1);
        // Once A let go, B's question finds no earlier holder.
        a.released("ch");
        assert_eq!(a.answer(&asked_by_b) + b.answer(&asked_by_b), 0);
    }

    #[test]
    fn a_node_back_before_its_leave_was_settled_keeps_its_first_time() {
        let a = Occupancy::default();
        let first = a.occupied("ch");
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert_eq!(a.occupied("ch"), first);
        a.released("ch");
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert_ne!(a.occupied("ch"), first);
    }

    #[test]
    fn the_same_millisecond_is_settled_by_the_token() {
        let (a, b) = (Occupancy::default(), Occupancy::default());
        a.since.lock().insert("ch".into(), (5, a.token));
        b.since.lock().insert("ch".into(), (5, b.token));
        let ask = |o: &Occupancy| format!("ch\0{}\0{}", 5, o.token);
        let reporters = [&a, &b]
            .iter()
            .filter(|asker| a.answer(&ask(asker)) + b.answer(&ask(asker)) == 0)
            .count();
        assert_eq!(reporters, 1);
    }

    #[test]
    fn malformed_questions_count_for_nothing() {
        let o = Occupancy::default();
        o.occupied("ch");
        for q in ["", "ch", "ch\0x\u{0}1", "ch\0999999999999999\u{0}1\0extra"] {
            assert_eq!(o.answer(q), 0, "{q:?}");
        }
    }
}
