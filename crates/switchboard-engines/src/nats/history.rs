//! Positions and history in JetStream. A channel's messages are one subject of the history
//! stream of its namespace's `history_size`; each message carries its offset and epoch in
//! headers. Publishing appends `offset + 1` only if the subject's last message is still the
//! one read (compare-and-set on the subject's last sequence), so offsets are consecutive across
//! nodes without any lock. The stream keeps `history_size + 1` messages per subject for
//! `idle_ttl`: the last message always survives `history_size = 0`, and a channel keeps its
//! position (and epoch) for `idle_ttl` after its last publish, like the other engines;
//! `history_ttl` is applied when reading.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::message::StreamMessage;
use bytes::Bytes;
use switchboard_core::engine::{
    EngineError, HistoryQuery, HistoryResult, Publication, StreamOptions, StreamPosition,
};

use super::names::Topic;
use super::store::stream_config;
use super::{Inner, unavailable};
use crate::order::Position;
use crate::wire;

const OFFSET: &str = "Sb-Offset";
const EPOCH: &str = "Sb-Epoch";

/// Publishers racing on one channel retry this many times before giving up.
const MAX_ATTEMPTS: usize = 64;

/// A channel's last message: its stream sequence and position.
struct Last {
    sequence: u64,
    offset: u64,
    epoch: Arc<str>,
}

fn new_epoch() -> String {
    format!("{:08x}", rand::random::<u32>())
}

fn headers(offset: u64, epoch: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(OFFSET, offset.to_string().as_str());
    headers.insert(EPOCH, epoch);
    headers
}

fn position_of(headers: Option<&HeaderMap>) -> Option<(u64, Arc<str>)> {
    let headers = headers?;
    let offset = headers.get(OFFSET)?.as_str().parse().ok()?;
    let epoch = headers.get(EPOCH)?.as_str();
    Some((offset, epoch.into()))
}

fn last_of(message: &StreamMessage) -> Option<Last> {
    let (offset, epoch) = position_of(Some(&message.headers))?;
    Some(Last {
        sequence: message.sequence,
        offset,
        epoch,
    })
}

impl Inner {
    /// The history stream for `size`, created once per run (and again after NATS lost it).
    async fn history_stream(&self, size: usize) -> Result<String, EngineError> {
        let name = self.names.history_stream(size);
        if self.history_streams.lock().contains(&size) {
            return Ok(name);
        }
        let config = stream_config(
            name.clone(),
            self.names.history_subjects(size),
            size.saturating_add(1).min(i64::MAX as usize) as i64,
            self.idle_ttl,
        );
        self.ensure_stream(config).await?;
        self.history_streams.lock().insert(size);
        Ok(name)
    }

    /// A channel's last message, or `None` when it has no stream.
    async fn last_message(&self, size: usize, channel: &str) -> Result<Option<Last>, EngineError> {
        let stream = self.history_stream(size).await?;
        let subject = self.names.history(size, channel);
        let last = self.last(&stream, &subject).await.inspect_err(|_| {
            // The stream may be gone (NATS lost its data): make it again next time.
            self.history_streams.lock().remove(&size);
        })?;
        match last {
            None => Ok(None),
            Some(message) => last_of(&message)
                .map(Some)
                .ok_or_else(|| unavailable(format!("unreadable message in {subject}"))),
        }
    }

    /// Where `channel` stands, for the delivery checks. A channel without a stream gets one
    /// (with its epoch) here: knowing the epoch before the first message arrives is what lets
    /// a node that receives offset 2 before offset 1 see the gap instead of skipping 1.
    pub(crate) async fn position(&self, channel: &str) -> Result<Option<Position>, EngineError> {
        let size = (self.stream_options)(channel).history_size;
        let last = self.position_or_start(size, channel).await?;
        Ok(Some((last.offset, last.epoch)))
    }

    pub(crate) async fn publish(
        &self,
        channel: &str,
        data: Bytes,
        options: StreamOptions,
    ) -> Result<StreamPosition, EngineError> {
        let size = options.history_size;
        let subject = self.names.history(size, channel);
        for _ in 0..MAX_ATTEMPTS {
            let (expected, offset, epoch): (u64, u64, Arc<str>) =
                match self.last_message(size, channel).await? {
                    Some(last) => (last.sequence, last.offset + 1, last.epoch),
                    None => (0, 1, new_epoch().into()),
                };
            let appended = self
                .append(
                    subject.clone(),
                    Some(expected),
                    Some(headers(offset, &epoch)),
                    data.clone(),
                )
                .await?;
            if appended.is_none() {
                continue; // another node published first: take the next offset
            }
            // Delivered only once JetStream holds it: a subscriber never sees a message that
            // history does not have. Nodes receiving these out of order fill from history.
            let payload = wire::encode_publication(offset, &epoch, &data);
            if let Err(e) = self
                .core_publish(&Topic::Channel(channel.into()), payload)
                .await
            {
                // Stored all the same: nodes get it by filling the gap it leaves, or by
                // catching up once the connection is back. Reporting a failure would only
                // make the publisher send it twice.
                tracing::warn!("announcing offset {offset} of {channel}: {e}");
            }
            return Ok(StreamPosition { offset, epoch });
        }
        Err(unavailable(format!(
            "too many concurrent publishes on {channel}"
        )))
    }

    /// The channel's position, starting a stream (an empty one with a new epoch, marked by an
    /// offset-0 message) when it has none, so subscribers and later publishers agree on the
    /// epoch.
    async fn position_or_start(&self, size: usize, channel: &str) -> Result<Last, EngineError> {
        let subject = self.names.history(size, channel);
        for _ in 0..MAX_ATTEMPTS {
            if let Some(last) = self.last_message(size, channel).await? {
                return Ok(last);
            }
            let epoch = new_epoch();
            let marker = headers(0, &epoch);
            if let Some(sequence) = self
                .append(subject.clone(), Some(0), Some(marker), Bytes::new())
                .await?
            {
                return Ok(Last {
                    sequence,
                    offset: 0,
                    epoch: epoch.into(),
                });
            }
        }
        Err(unavailable(format!(
            "could not start a stream for {channel}"
        )))
    }

    /// When this node's last subscriber of `channel` left: a stream nothing was published to
    /// (only its offset-0 marker) is dropped, so readers leave nothing behind. A publish racing
    /// with this comes after the marker and stays.
    pub(crate) async fn drop_unpublished(&self, channel: &str) -> Result<(), EngineError> {
        let size = (self.stream_options)(channel).history_size;
        if let Some(last) = self.last_message(size, channel).await?
            && last.offset == 0
        {
            let stream = self.names.history_stream(size);
            let subject = self.names.history(size, channel);
            self.purge_through(&stream, &subject, last.sequence).await?;
        }
        Ok(())
    }

    pub(crate) async fn history(
        &self,
        channel: &str,
        query: &HistoryQuery,
        options: StreamOptions,
    ) -> Result<HistoryResult, EngineError> {
        let size = options.history_size;
        // Reading never starts a stream (spec §8): subscribing does, and publishing.
        let Some(last) = self.last_message(size, channel).await? else {
            return Ok(HistoryResult::unstarted(query, new_epoch()));
        };
        let (top, epoch) = (last.offset, last.epoch);
        let answer = |publications: Vec<Publication>, complete: bool| HistoryResult {
            publications,
            position: StreamPosition {
                offset: top,
                epoch: epoch.clone(),
            },
            complete,
        };
        let since = match &query.since {
            Some((offset, since_epoch)) => {
                // Offset 0 has seen nothing, so it continues any epoch.
                if (*offset != 0 && **since_epoch != *epoch) || *offset > top {
                    return Ok(answer(Vec::new(), false));
                }
                if *offset == top {
                    return Ok(answer(Vec::new(), true));
                }
                Some(*offset)
            }
            None => None,
        };
        if query.limit == Some(0) && since.is_none() {
            return Ok(answer(Vec::new(), true));
        }
        let kept = if size == 0 {
            Vec::new()
        } else {
            self.kept(size, channel, &epoch, options.history_ttl)
                .await?
        };
        let Some(since) = since else {
            let skip = query
                .limit
                .map_or(0, |limit| kept.len().saturating_sub(limit));
            return Ok(answer(kept.into_iter().skip(skip).collect(), true));
        };
        let complete = kept.first().is_some_and(|p| p.offset <= since + 1);
        let after = kept.into_iter().filter(|p| p.offset > since);
        let publications = match query.limit {
            Some(limit) => after.take(limit).collect(),
            None => after.collect(),
        };
        Ok(answer(publications, complete))
    }

    /// What history holds of a channel: at most `size` messages, none older than `ttl`.
    async fn kept(
        &self,
        size: usize,
        channel: &str,
        epoch: &Arc<str>,
        ttl: Duration,
    ) -> Result<Vec<Publication>, EngineError> {
        let stream = self.names.history_stream(size);
        let subject = self.names.history(size, channel);
        let messages = self.read(&stream, subject, DeliverPolicy::All).await?;
        let cutoff = SystemTime::now()
            .checked_sub(ttl)
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs() as i64);
        let mut kept: Vec<Publication> = messages
            .into_iter()
            .filter_map(|message| {
                let published = message.info().ok()?.published.unix_timestamp();
                let (offset, message_epoch) = position_of(message.headers.as_ref())?;
                (offset > 0 && message_epoch == *epoch && published >= cutoff).then(|| {
                    Publication {
                        offset,
                        epoch: epoch.clone(),
                        data: message.payload.clone(),
                    }
                })
            })
            .collect();
        let extra = kept.len().saturating_sub(size);
        kept.drain(..extra);
        Ok(kept)
    }
}
