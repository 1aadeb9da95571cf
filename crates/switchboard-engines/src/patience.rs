//! Reads that may fail for a moment after a reconnect, retried before their failure counts.

/// How long a read needed to catch a channel up may keep failing before the channel counts as
/// lost: right after a reconnect the broker may not answer yet (Redis's command connection
/// reconnects on its first call, JetStream recovers its streams after a restart).
pub(crate) const CATCH_UP_PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs `read` until it succeeds or [`CATCH_UP_PATIENCE`] has passed; the last result.
pub(crate) async fn patiently<T, E, F, Fut>(mut read: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let deadline = tokio::time::Instant::now() + CATCH_UP_PATIENCE;
    loop {
        match read().await {
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            result => return result,
        }
    }
}
