//! The Pusher protocol as the bench needs it to drive sockudo: the app's credentials, the
//! config file that sets sockudo up for a fair run, and the signing of HTTP API requests
//! (`auth_signature` = hex HMAC-SHA256 of "METHOD\nPATH\nsorted query", with the body's MD5).

use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha2::Sha256;

pub(crate) const APP_ID: &str = "bench";
pub(crate) const APP_KEY: &str = "bench-key";
pub(crate) const APP_SECRET: &str = "bench-secret";

/// Writes sockudo's config for a bench run into `dir` and returns its path. Everything a fair
/// comparison does not need is off: rate limits (its default allows 20 connections a minute
/// per IP), metrics, webhooks' queue, server pings. Its per-connection buffer stays at its
/// default (1,000 messages, allocated up front: raising it costs memory per connection); the
/// closed-loop publisher keeps far fewer than that in flight.
pub(crate) fn sockudo_config(dir: &Path, port: u16) -> PathBuf {
    let text = format!(
        r#"host = "127.0.0.1"
port = {port}
debug = false
mode = "production"

[app_manager]
driver = "memory"

[[app_manager.array.apps]]
id = "{APP_ID}"
key = "{APP_KEY}"
secret = "{APP_SECRET}"
enabled = true
enable_client_messages = true
max_connections = 0
max_client_events_per_second = 1000000

[adapter]
driver = "local"

[cache]
driver = "memory"

[queue]
driver = "none"

[rate_limiter]
enabled = false

[event_limits]
max_batch_size = 100

[metrics]
enabled = false

[websocket]
auto_ping = false
ping_interval = 3600
idle_timeout = 3600
"#
    );
    std::fs::create_dir_all(dir).expect("sockudo config dir");
    let path = dir.join("sockudo.toml");
    std::fs::write(&path, text).expect("sockudo config");
    path
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The signed query string of `POST path` with `body` (Pusher HTTP API, auth_version 1.0).
pub(crate) fn signed_query(path: &str, body: &[u8], timestamp: u64) -> String {
    let body_md5 = hex(&Md5::digest(body));
    // Already in sorted order, as the signature requires.
    let query = format!(
        "auth_key={APP_KEY}&auth_timestamp={timestamp}&auth_version=1.0&body_md5={body_md5}"
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(APP_SECRET.as_bytes()).expect("hmac key");
    mac.update(format!("POST\n{path}\n{query}").as_bytes());
    let signature = hex(&mac.finalize().into_bytes());
    format!("{query}&auth_signature={signature}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_covers_method_path_and_sorted_query() {
        let query = signed_query("/apps/bench/events", b"{}", 1_700_000_000);
        assert!(query.starts_with(
            "auth_key=bench-key&auth_timestamp=1700000000&auth_version=1.0&body_md5=99914b932bd37a50b983c5e7c90ae93b&auth_signature="
        ));
        let signature = query.rsplit('=').next().unwrap();
        assert_eq!(signature.len(), 64);
        // Another body, another signature.
        assert_ne!(
            signed_query("/apps/bench/events", b"{ }", 1_700_000_000),
            query
        );
    }
}
