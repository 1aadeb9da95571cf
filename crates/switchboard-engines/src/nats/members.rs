//! Presence members and room peers in JetStream.
//!
//! - Presence: one subject per member, `<prefix>.pr.<channel>.<node>.<client>`, holding the
//!   member (with the node that holds it); leaving purges the subject. Listing a channel reads
//!   the last message of each of its subjects; a dead node's members are found by its token.
//! - Rooms: one subject per room holding its whole roster in join order, changed only with
//!   compare-and-set on the subject's last sequence, so the peer limit holds across nodes.

use async_nats::jetstream::consumer::DeliverPolicy;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use switchboard_core::engine::{EngineError, PresenceMember, RoomPeer};

use super::{Inner, unavailable};
use crate::wire::{self, Stored};

/// Writers racing on one roster retry this many times before giving up.
const MAX_ATTEMPTS: usize = 64;

/// A room peer as its roster holds it.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct RosterPeer {
    /// Peer id.
    p: String,
    /// The node holding it.
    n: String,
    u: String,
    #[serde(default)]
    i: Option<Box<RawValue>>,
    #[serde(default)]
    m: Option<Box<RawValue>>,
}

impl RosterPeer {
    fn peer(&self) -> RoomPeer {
        let bytes = |raw: &Option<Box<RawValue>>| {
            raw.as_ref()
                .map(|r| Bytes::copy_from_slice(r.get().as_bytes()))
        };
        RoomPeer {
            peer: self.p.as_str().into(),
            user: self.u.as_str().into(),
            info: bytes(&self.i),
            meta: bytes(&self.m),
        }
    }
}

/// What a change to a roster decided.
pub(crate) enum Change<R> {
    /// Leave the roster as it is.
    Keep(R),
    /// Write the changed roster.
    Write(R),
}

impl Inner {
    pub(crate) async fn presence_add(
        &self,
        channel: &str,
        member: PresenceMember,
    ) -> Result<(), EngineError> {
        let subject = self
            .names
            .presence_member(channel, &self.node, &member.client);
        let value = Stored::encode(&self.node, &member.user, &member.info);
        self.append(subject, None, None, value.into())
            .await
            .map(drop)
    }

    pub(crate) async fn presence_remove(
        &self,
        channel: &str,
        client: &str,
    ) -> Result<(), EngineError> {
        let subject = self.names.presence_member(channel, &self.node, client);
        self.purge(&self.names.presence_stream(), &subject)
            .await
            .map(drop)
    }

    pub(crate) async fn presence(&self, channel: &str) -> Result<Vec<PresenceMember>, EngineError> {
        let messages = self
            .read(
                &self.names.presence_stream(),
                self.names.presence_of(channel),
                DeliverPolicy::LastPerSubject,
            )
            .await?;
        Ok(messages
            .iter()
            .filter_map(|message| {
                let (_, client) = self.names.parse_presence(&message.subject)?;
                let stored = Stored::decode(&message.payload)?;
                self.is_live(&stored.n).then(|| stored.into_member(&client))
            })
            .collect())
    }

    /// Reads `room`'s roster, lets `change` decide, and writes the result if asked, retrying
    /// when another writer came first. An emptied roster is removed.
    pub(crate) async fn change_roster<R>(
        &self,
        room: &str,
        mut change: impl FnMut(&mut Vec<RosterPeer>) -> Change<R>,
    ) -> Result<R, EngineError> {
        let stream = self.names.rooms_stream();
        let subject = self.names.room_roster(room);
        for _ in 0..MAX_ATTEMPTS {
            let last = self.last(&stream, &subject).await?;
            let (expected, mut roster) = match last {
                Some(message) => (message.sequence, roster_of(&message.payload)?),
                None => (0, Vec::new()),
            };
            let outcome = match change(&mut roster) {
                Change::Keep(outcome) => return Ok(outcome),
                Change::Write(outcome) => outcome,
            };
            let value = serde_json::to_vec(&roster).map_err(unavailable)?;
            let Some(sequence) = self
                .append(subject.clone(), Some(expected), None, value.into())
                .await?
            else {
                continue;
            };
            if roster.is_empty() {
                // Only up to our write: a join that came after it stays.
                self.purge_through(&stream, &subject, sequence).await?;
            }
            return Ok(outcome);
        }
        Err(unavailable(format!(
            "too many concurrent changes in room {room}"
        )))
    }

    pub(crate) async fn room_join(
        &self,
        room: &str,
        peer: RoomPeer,
        max_peers: usize,
    ) -> Result<Vec<RoomPeer>, EngineError> {
        self.change_roster(room, |roster| {
            let before: Vec<RoomPeer> = roster
                .iter()
                .filter(|p| self.is_live(&p.n) && *p.p != *peer.peer)
                .map(RosterPeer::peer)
                .collect();
            if before.len() >= max_peers {
                return Change::Keep(Err(EngineError::RoomFull));
            }
            roster.retain(|p| *p.p != *peer.peer);
            roster.push(RosterPeer {
                p: peer.peer.to_string(),
                n: self.node.clone(),
                u: peer.user.to_string(),
                i: wire::raw(&peer.info),
                m: wire::raw(&peer.meta),
            });
            Change::Write(Ok(before))
        })
        .await?
    }

    pub(crate) async fn room_leave(&self, room: &str, peer: &str) -> Result<bool, EngineError> {
        self.change_roster(room, |roster| {
            let before = roster.len();
            roster.retain(|p| p.p != peer);
            if roster.len() == before {
                Change::Keep(false)
            } else {
                Change::Write(true)
            }
        })
        .await
    }

    pub(crate) async fn room_update(
        &self,
        room: &str,
        peer: &str,
        meta: Option<Bytes>,
    ) -> Result<Option<RoomPeer>, EngineError> {
        self.change_roster(room, |roster| {
            match roster.iter_mut().find(|p| p.p == peer) {
                Some(found) => {
                    found.m = wire::raw(&meta);
                    Change::Write(Some(found.peer()))
                }
                None => Change::Keep(None),
            }
        })
        .await
    }

    pub(crate) async fn room_peers(&self, room: &str) -> Result<Vec<RoomPeer>, EngineError> {
        let last = self
            .last(&self.names.rooms_stream(), &self.names.room_roster(room))
            .await?;
        let roster = match last {
            Some(message) => roster_of(&message.payload)?,
            None => Vec::new(),
        };
        Ok(roster
            .iter()
            .filter(|p| self.is_live(&p.n))
            .map(RosterPeer::peer)
            .collect())
    }
}

pub(crate) fn roster_of(payload: &[u8]) -> Result<Vec<RosterPeer>, EngineError> {
    serde_json::from_slice(payload).map_err(|e| unavailable(format!("unreadable roster: {e}")))
}

impl RosterPeer {
    pub(crate) fn node(&self) -> &str {
        &self.n
    }

    pub(crate) fn id(&self) -> &str {
        &self.p
    }
}
