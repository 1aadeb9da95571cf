//! Pusher webhooks: `channel_occupied`, `channel_vacated`, `member_added`,
//! `member_removed`, `client_event` and `cache_miss`, POSTed as
//! `{"time_ms","events":[...]}` with `X-Pusher-Key` and `X-Pusher-Signature` (HMAC-SHA256 of
//! the body with the app secret).
//!
//! Events are batched (what arrives within [`BATCH_WINDOW`] goes in one request, at most
//! [`MAX_BATCH`] per request) and retried with exponential backoff when the endpoint fails.
//! `channel_vacated` and `member_removed` wait [`LEAVE_DELAY`] first: if the channel is
//! occupied again (or the member back) meanwhile, neither event is sent, so a page reload
//! does not flap the application's state. The queue is bounded; past it, events are dropped
//! and logged rather than held without bound.
//!
//! With several nodes, what one node sees is checked against the cluster before it is sent:
//! `channel_occupied` goes out from the node that held the channel first (`occupancy.rs`),
//! `channel_vacated` only when no node holds the channel any more, and `member_removed` only
//! when the user has no connection left in the channel on any node. A check that cannot be
//! made (the engine unreachable) lets the event through: a repeat is better than a loss.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use switchboard_core::hub::Hub;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::config::PusherAppConfig;
use super::occupancy::{OCCUPIED_BEFORE, Occupancy};
use super::signing;
use crate::http_client::Endpoint;
use crate::metrics::ServerStats;

/// How long events gather before a request goes out.
pub const BATCH_WINDOW: Duration = Duration::from_millis(50);
/// Events per request.
pub const MAX_BATCH: usize = 100;
/// How long `channel_vacated` and `member_removed` wait for a re-occupation.
pub const LEAVE_DELAY: Duration = Duration::from_secs(3);
/// Events waiting to be sent, per app.
const QUEUE: usize = 10_000;
/// Requests in flight (or waiting to retry) per app; past it, batching waits, the queue fills
/// and then drops, so a dead endpoint holds bounded memory.
const IN_FLIGHT: usize = 64;
/// How long a failing request is retried (Pusher retries for 5 minutes), waiting 1 s, 2 s,
/// 4 s, ... (at most [`MAX_BACKOFF`]) between attempts.
const RETRY_FOR: Duration = Duration::from_secs(300);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The sending side of one app's webhooks.
pub struct Webhooks {
    tx: mpsc::Sender<Pending>,
}

/// An event on its way, with what must still hold across the cluster when it is sent.
struct Pending {
    event: Value,
    check: Check,
}

enum Check {
    /// Sent as it is.
    Nothing,
    /// `channel_occupied`: only if no node held the channel before this one did (the
    /// argument of an [`OCCUPIED_BEFORE`] request).
    FirstHolder { question: String },
    /// `channel_vacated`: only if no node holds the channel.
    NoSubscribers { hub_channel: String },
    /// `member_removed`: only if the user has no connection in the channel on any node.
    MemberGone { hub_channel: String, user: String },
}

/// One endpoint and the events it wants (empty: all).
struct Hook {
    endpoint: Endpoint,
    events: Vec<String>,
}

impl Webhooks {
    /// Starts the app's webhook task (within the running Tokio runtime). Fails on a webhook
    /// URL or CA file that cannot work.
    pub fn start(
        app: &PusherAppConfig,
        stats: &Arc<ServerStats>,
        hub: Weak<Hub>,
        occupancy: Arc<Occupancy>,
    ) -> Result<Webhooks, String> {
        let hooks = app
            .webhooks
            .iter()
            .map(|h| {
                Ok(Hook {
                    endpoint: Endpoint::new(&h.url, h.ca.as_deref())
                        .map_err(|e| format!("pusher app `{}`: webhook {e}", app.id))?,
                    events: h.events.clone(),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let sender = Sender {
            key: app.key.clone(),
            secret: app.secret.clone(),
            hooks,
            hub,
            occupancy,
            in_flight: Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT)),
            stats: stats.clone(),
        };
        tokio::spawn(run(rx, sender));
        Ok(Webhooks { tx })
    }

    fn send(&self, event: Value, check: Check) {
        if self.tx.try_send(Pending { event, check }).is_err() {
            tracing::warn!("pusher webhook queue full: an event was dropped");
        }
    }

    /// `question`: what [`super::occupancy::Occupancy::occupied`] returned.
    pub fn channel_occupied(&self, channel: &str, question: String) {
        self.send(
            json!({"name": "channel_occupied", "channel": channel}),
            Check::FirstHolder { question },
        );
    }

    pub fn channel_vacated(&self, channel: &str, hub_channel: &str) {
        self.send(
            json!({"name": "channel_vacated", "channel": channel}),
            Check::NoSubscribers {
                hub_channel: hub_channel.to_owned(),
            },
        );
    }

    pub fn member_added(&self, channel: &str, user_id: &str) {
        self.send(
            json!({"name": "member_added", "channel": channel, "user_id": user_id}),
            Check::Nothing,
        );
    }

    pub fn member_removed(&self, channel: &str, hub_channel: &str, user_id: &str) {
        self.send(
            json!({"name": "member_removed", "channel": channel, "user_id": user_id}),
            Check::MemberGone {
                hub_channel: hub_channel.to_owned(),
                user: user_id.to_owned(),
            },
        );
    }

    pub fn cache_miss(&self, channel: &str) {
        self.send(
            json!({"name": "cache_miss", "channel": channel}),
            Check::Nothing,
        );
    }

    /// `data` is the client's data as JSON text; Pusher reports it as a string.
    pub fn client_event(
        &self,
        channel: &str,
        event: &str,
        data: &str,
        socket_id: &str,
        user_id: Option<&str>,
    ) {
        let data: String = match serde_json::from_str::<Value>(data) {
            Ok(Value::String(s)) => s,
            _ => data.to_owned(),
        };
        let mut e = json!({
            "name": "client_event",
            "channel": channel,
            "event": event,
            "data": data,
            "socket_id": socket_id,
        });
        if let Some(user) = user_id {
            e["user_id"] = json!(user);
        }
        self.send(e, Check::Nothing);
    }
}

struct Sender {
    key: String,
    secret: String,
    hooks: Vec<Hook>,
    /// For the cluster-wide checks; weak, as the hub holds the Pusher door that holds this.
    hub: Weak<Hub>,
    occupancy: Arc<Occupancy>,
    in_flight: Arc<tokio::sync::Semaphore>,
    stats: Arc<ServerStats>,
}

/// The (channel, user) of an event: "" for occupancy events.
fn identity(event: &Value) -> (String, String) {
    let field = |name: &str| {
        event
            .get(name)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    (field("channel"), field("user_id"))
}

fn name(event: &Value) -> &str {
    event.get("name").and_then(Value::as_str).unwrap_or("")
}

async fn run(mut rx: mpsc::Receiver<Pending>, sender: Sender) {
    // Delayed leaves, by (channel, user), with when they are due.
    let mut delayed: HashMap<(String, String), (Instant, Pending)> = HashMap::new();
    loop {
        let next_due = delayed.values().map(|(due, _)| *due).min();
        let first = tokio::select! {
            event = rx.recv() => match event {
                Some(e) => Some(e),
                None => return,
            },
            _ = sleep_until_opt(next_due) => None,
        };
        let mut batch = Vec::new();
        if let Some(first) = first {
            batch.push(first);
            // Gather what arrives within the window.
            let until = Instant::now() + BATCH_WINDOW;
            while batch.len() < MAX_BATCH {
                match tokio::time::timeout_at(until, rx.recv()).await {
                    Ok(Some(e)) => batch.push(e),
                    _ => break,
                }
            }
        }
        let mut ready = Vec::new();
        for pending in batch {
            match name(&pending.event) {
                "channel_vacated" | "member_removed" => {
                    let key = identity(&pending.event);
                    delayed.insert(key, (Instant::now() + LEAVE_DELAY, pending));
                }
                "channel_occupied" | "member_added"
                    if delayed.remove(&identity(&pending.event)).is_some() =>
                {
                    // Back before its leave was reported: neither is.
                }
                _ => ready.push(pending),
            }
        }
        let now = Instant::now();
        let due: Vec<_> = delayed
            .iter()
            .filter(|(_, (at, _))| *at <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            if let Some((_, pending)) = delayed.remove(&key) {
                ready.push(pending);
            }
        }
        let mut events = Vec::with_capacity(ready.len());
        for pending in ready {
            if sender.still_holds(&pending.check).await {
                events.push(pending.event);
            }
        }
        if !events.is_empty() {
            sender.deliver(events).await;
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Sender {
    /// Whether what `check` asks of the cluster holds (or cannot be asked). Checking a
    /// `channel_vacated` settles it, which also ends this node's claim on the channel (see
    /// `occupancy.rs`).
    async fn still_holds(&self, check: &Check) -> bool {
        let Some(hub) = self.hub.upgrade() else {
            return true;
        };
        let answer = match check {
            Check::Nothing => return true,
            Check::FirstHolder { question } => hub
                .ask_extension(OCCUPIED_BEFORE, question)
                .await
                .map(|earlier| earlier == 0),
            Check::NoSubscribers { hub_channel } => {
                let answer = hub.cluster_subscriber_count(hub_channel).await;
                // Settled: unless subscribers came back here meanwhile, this node let go.
                if hub.subscriber_count(hub_channel) == 0 {
                    self.occupancy.released(hub_channel);
                }
                answer.map(|count| count == 0)
            }
            Check::MemberGone { hub_channel, user } => hub
                .presence(hub_channel)
                .await
                .map(|members| !members.iter().any(|m| *m.user == **user)),
        };
        answer.unwrap_or_else(|e| {
            tracing::warn!("webhook check across nodes failed ({e}): the event goes out");
            true
        })
    }

    /// Sends `events` to every endpoint that wants some of them, each request retried.
    async fn deliver(&self, events: Vec<Value>) {
        for hook in &self.hooks {
            let wanted: Vec<&Value> = events
                .iter()
                .filter(|e| hook.events.is_empty() || hook.events.iter().any(|w| w == name(e)))
                .collect();
            if wanted.is_empty() {
                continue;
            }
            let time_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            let body = serde_json::to_string(&json!({"time_ms": time_ms, "events": wanted}))
                .expect("webhook body serializes");
            let signature = signing::sign(&self.secret, &body);
            let request = Request {
                endpoint: hook.endpoint.clone(),
                key: self.key.clone(),
                signature,
                body,
            };
            let stats = self.stats.clone();
            let Ok(permit) = self.in_flight.clone().acquire_owned().await else {
                return;
            };
            // One endpoint's retries must not hold up the next: each request runs apart.
            tokio::spawn(async move {
                request.send_with_retries(&stats).await;
                drop(permit);
            });
        }
    }
}

/// One signed webhook request.
struct Request {
    endpoint: Endpoint,
    key: String,
    signature: String,
    body: String,
}

impl Request {
    async fn send_with_retries(&self, stats: &ServerStats) {
        let url = self.endpoint.url();
        let headers = [
            ("content-type", "application/json"),
            ("x-pusher-key", self.key.as_str()),
            ("x-pusher-signature", self.signature.as_str()),
        ];
        let give_up = Instant::now() + RETRY_FOR;
        let mut wait = Duration::from_secs(1);
        for attempt in 1.. {
            match self.endpoint.post(&headers, self.body.clone()).await {
                Ok(status) if status.is_success() => {
                    stats.webhooks_sent.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Ok(status) => tracing::warn!("webhook {url} answered {status} (attempt {attempt})"),
                Err(e) => tracing::warn!("webhook {url} failed: {e} (attempt {attempt})"),
            }
            stats.webhooks_failed.fetch_add(1, Ordering::Relaxed);
            if Instant::now() + wait > give_up {
                tracing::error!("webhook {url}: giving up after {attempt} attempts");
                return;
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(MAX_BACKOFF);
        }
    }
}
