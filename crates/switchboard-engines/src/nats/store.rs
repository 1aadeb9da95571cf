//! The JetStream calls every part of the engine builds on: making sure a stream exists,
//! reading a subject's last message, appending with compare-and-set on a subject's last
//! sequence, and reading many messages at once through a short-lived consumer.

use std::future::IntoFuture;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::{PublishMessage, StreamMessage};
use async_nats::jetstream::stream::{self, DiscardPolicy, LastRawMessageErrorKind, StorageType};
use bytes::Bytes;
use futures_util::StreamExt;
use switchboard_core::engine::EngineError;

use super::{Inner, unavailable};

/// Longest wait for the messages of one read.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// A file-backed stream keeping `per_subject` messages per subject for at most `max_age`
/// (zero: forever).
pub(crate) fn stream_config(
    name: String,
    subjects: String,
    per_subject: i64,
    max_age: Duration,
) -> stream::Config {
    stream::Config {
        name,
        subjects: vec![subjects],
        max_messages_per_subject: per_subject,
        max_age,
        storage: StorageType::File,
        discard: DiscardPolicy::Old,
        // No publish is retried with the same id: keep the dedup window small (and within
        // the age limit, as JetStream wants).
        duplicate_window: match max_age {
            Duration::ZERO => Duration::from_secs(1),
            age => age.min(Duration::from_secs(1)),
        },
        ..Default::default()
    }
}

impl Inner {
    /// Creates the stream unless it exists (an existing one is left as it is).
    pub(crate) async fn ensure_stream(&self, config: stream::Config) -> Result<(), EngineError> {
        let name = config.name.clone();
        let Err(first) = self.timed(self.js.get_or_create_stream(config)).await else {
            return Ok(());
        };
        // Two nodes creating it at once: the one that loses is told the subjects overlap with
        // an existing stream (JetStream error 10065), which is the very stream it wanted.
        match self.timed(self.js.get_stream(&name)).await {
            Ok(_) => Ok(()),
            Err(_) => Err(unavailable(format!("stream {name}: {first}"))),
        }
    }

    /// The last message of `subject`, `None` when it has none.
    pub(crate) async fn last(
        &self,
        stream: &str,
        subject: &str,
    ) -> Result<Option<StreamMessage>, EngineError> {
        let handle = self
            .js
            .get_stream_no_info(stream)
            .await
            .map_err(unavailable)?;
        let start = Instant::now();
        let result = handle.get_last_raw_message_by_subject(subject).await;
        let found = match result {
            Ok(message) => Ok(Some(message)),
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(unavailable(format!("reading {subject}: {e}"))),
        };
        self.stats.record(start.elapsed(), found.is_ok());
        found
    }

    /// Appends to `subject` (a stream must hold it). With `expected`, only when the subject's
    /// last message has that sequence (0: none): `Ok(None)` when another append came first.
    /// Returns the new message's sequence.
    pub(crate) async fn append(
        &self,
        subject: String,
        expected: Option<u64>,
        headers: Option<HeaderMap>,
        payload: Bytes,
    ) -> Result<Option<u64>, EngineError> {
        let mut publish = PublishMessage::build().payload(payload);
        if let Some(headers) = headers {
            publish = publish.headers(headers);
        }
        if let Some(sequence) = expected {
            publish = publish.expected_last_subject_sequence(sequence);
        }
        let start = Instant::now();
        let result = async { self.js.send_publish(subject, publish).await?.await }.await;
        let outcome = match result {
            Ok(ack) => Ok(Some(ack.sequence)),
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Ok(None),
            Err(e) => Err(unavailable(e)),
        };
        self.stats.record(start.elapsed(), outcome.is_ok());
        outcome
    }

    /// Removes every message of `subject`; returns how many there were.
    pub(crate) async fn purge(&self, stream: &str, subject: &str) -> Result<u64, EngineError> {
        let handle = self
            .js
            .get_stream_no_info(stream)
            .await
            .map_err(unavailable)?;
        let purged = self
            .timed(handle.purge().filter(subject).into_future())
            .await?;
        Ok(purged.purged)
    }

    /// Removes the messages of `subject` up to and including `sequence` (a later one stays).
    pub(crate) async fn purge_through(
        &self,
        stream: &str,
        subject: &str,
        sequence: u64,
    ) -> Result<(), EngineError> {
        let handle = self
            .js
            .get_stream_no_info(stream)
            .await
            .map_err(unavailable)?;
        self.timed(
            handle
                .purge()
                .filter(subject)
                .sequence(sequence + 1)
                .into_future(),
        )
        .await
        .map(drop)
    }

    /// Every message of the subjects matching `filter` that `policy` selects, in stream
    /// order, read through a consumer made for this read and deleted after it.
    pub(crate) async fn read(
        &self,
        stream: &str,
        filter: String,
        policy: DeliverPolicy,
    ) -> Result<Vec<async_nats::jetstream::Message>, EngineError> {
        let handle = self
            .js
            .get_stream_no_info(stream)
            .await
            .map_err(unavailable)?;
        let config = pull::Config {
            filter_subject: filter,
            deliver_policy: policy,
            ack_policy: AckPolicy::None,
            inactive_threshold: Duration::from_secs(30),
            memory_storage: true,
            ..Default::default()
        };
        let consumer = self.timed(handle.create_consumer(config)).await?;
        let pending = consumer.cached_info().num_pending as usize;
        let name = consumer.cached_info().name.clone();
        let result = async {
            let mut messages = Vec::with_capacity(pending);
            if pending == 0 {
                return Ok(messages);
            }
            let mut batch = self
                .timed(consumer.fetch().max_messages(pending).messages())
                .await?;
            let deadline = tokio::time::Instant::now() + READ_TIMEOUT;
            while messages.len() < pending {
                match tokio::time::timeout_at(deadline, batch.next()).await {
                    Ok(Some(Ok(message))) => messages.push(message),
                    Ok(Some(Err(e))) => return Err(unavailable(e)),
                    // Fewer than counted: some aged out meanwhile.
                    Ok(None) => break,
                    Err(_) => return Err(unavailable("reading messages timed out")),
                }
            }
            Ok(messages)
        }
        .await;
        // Deleted in the background: the answer need not wait for it (the server drops it
        // by itself after `inactive_threshold` if this fails).
        tokio::spawn(async move {
            let _ = handle.delete_consumer(&name).await;
        });
        result
    }
}
