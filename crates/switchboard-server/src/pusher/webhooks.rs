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

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::config::{PusherAppConfig, WebhookConfig};
use super::signing;
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
    tx: mpsc::Sender<Value>,
}

impl Webhooks {
    /// Starts the app's webhook task (within the running Tokio runtime).
    pub fn start(app: &PusherAppConfig, stats: &Arc<ServerStats>) -> Webhooks {
        let (tx, rx) = mpsc::channel(QUEUE);
        let sender = Sender {
            key: app.key.clone(),
            secret: app.secret.clone(),
            hooks: app.webhooks.clone(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("a plain HTTP client builds"),
            in_flight: Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT)),
            stats: stats.clone(),
        };
        tokio::spawn(run(rx, sender));
        Webhooks { tx }
    }

    fn send(&self, event: Value) {
        if self.tx.try_send(event).is_err() {
            tracing::warn!("pusher webhook queue full: an event was dropped");
        }
    }

    pub fn channel_occupied(&self, channel: &str) {
        self.send(json!({"name": "channel_occupied", "channel": channel}));
    }

    pub fn channel_vacated(&self, channel: &str) {
        self.send(json!({"name": "channel_vacated", "channel": channel}));
    }

    pub fn member_added(&self, channel: &str, user_id: &str) {
        self.send(json!({"name": "member_added", "channel": channel, "user_id": user_id}));
    }

    pub fn member_removed(&self, channel: &str, user_id: &str) {
        self.send(json!({"name": "member_removed", "channel": channel, "user_id": user_id}));
    }

    pub fn cache_miss(&self, channel: &str) {
        self.send(json!({"name": "cache_miss", "channel": channel}));
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
        self.send(e);
    }
}

struct Sender {
    key: String,
    secret: String,
    hooks: Vec<WebhookConfig>,
    http: reqwest::Client,
    in_flight: Arc<tokio::sync::Semaphore>,
    stats: Arc<ServerStats>,
}

/// The identity of an event that a later one may cancel: (channel, user) for members,
/// (channel, "") for occupancy.
fn leave_key(event: &Value) -> Option<(String, String, &'static str)> {
    let channel = event.get("channel")?.as_str()?.to_owned();
    let user = event
        .get("user_id")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    match event.get("name")?.as_str()? {
        "channel_vacated" => Some((channel, user, "channel_occupied")),
        "member_removed" => Some((channel, user, "member_added")),
        _ => None,
    }
}

async fn run(mut rx: mpsc::Receiver<Value>, sender: Sender) {
    // Delayed leaves, by (channel, user), with when they are due.
    let mut delayed: HashMap<(String, String), (Instant, Value)> = HashMap::new();
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
        for event in batch {
            if let Some((channel, user, _)) = leave_key(&event) {
                delayed.insert((channel, user), (Instant::now() + LEAVE_DELAY, event));
                continue;
            }
            let name = event.get("name").and_then(Value::as_str).unwrap_or("");
            if name == "channel_occupied" || name == "member_added" {
                let channel = event["channel"].as_str().unwrap_or("").to_owned();
                let user = event
                    .get("user_id")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned();
                if delayed.remove(&(channel, user)).is_some() {
                    // Back before its leave was reported: neither is.
                    continue;
                }
            }
            ready.push(event);
        }
        let now = Instant::now();
        let due: Vec<_> = delayed
            .iter()
            .filter(|(_, (at, _))| *at <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            if let Some((_, event)) = delayed.remove(&key) {
                ready.push(event);
            }
        }
        if !ready.is_empty() {
            sender.deliver(ready).await;
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
    /// Sends `events` to every endpoint that wants some of them, each request retried.
    async fn deliver(&self, events: Vec<Value>) {
        for hook in &self.hooks {
            let wanted: Vec<&Value> = events
                .iter()
                .filter(|e| {
                    hook.events.is_empty()
                        || e.get("name")
                            .and_then(Value::as_str)
                            .is_some_and(|n| hook.events.iter().any(|w| w == n))
                })
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
            // One endpoint's retries must not hold up the next: each request runs apart.
            let request = self
                .http
                .post(&hook.url)
                .header("content-type", "application/json")
                .header("x-pusher-key", &self.key)
                .header("x-pusher-signature", signature)
                .body(body);
            let url = hook.url.clone();
            let stats = self.stats.clone();
            let Ok(permit) = self.in_flight.clone().acquire_owned().await else {
                return;
            };
            tokio::spawn(async move {
                send_with_retries(request, &url, &stats).await;
                drop(permit);
            });
        }
    }
}

async fn send_with_retries(request: reqwest::RequestBuilder, url: &str, stats: &ServerStats) {
    let give_up = Instant::now() + RETRY_FOR;
    let mut wait = Duration::from_secs(1);
    for attempt in 1.. {
        let Some(this) = request.try_clone() else {
            return;
        };
        match this.send().await {
            Ok(r) if r.status().is_success() => {
                stats.webhooks_sent.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Ok(r) => tracing::warn!("webhook {url} answered {} (attempt {attempt})", r.status()),
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
