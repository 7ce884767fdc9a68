//! Polling until a condition holds or a deadline passes.

use std::future::Future;
use std::time::{Duration, Instant};

/// How often [`wait_until`] checks.
const POLL_EVERY: Duration = Duration::from_millis(25);

/// Calls `check` until it returns `Some`, and returns that value; panics naming
/// `what` if `timeout` passes first. Use it instead of sleeping and hoping.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}
