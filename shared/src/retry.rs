//! Retries with exponential backoff and full jitter for transient failures only
//! (connection errors, 5xx, 429); a server's `Retry-After` is honoured as a floor.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;

use crate::error::{FailureClass, Result};

/// Told of every retry, by failure class (metrics).
pub trait RetryObserver: Send + Sync {
    fn retrying(&self, class: FailureClass);
}

#[derive(Clone)]
pub struct RetryPolicy {
    /// Total tries, the first one included.
    pub attempts: u32,
    pub base: Duration,
    pub max: Duration,
    pub observer: Option<Arc<dyn RetryObserver>>,
}

impl std::fmt::Debug for RetryPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RetryPolicy({} tries, {:?}..{:?})",
            self.attempts, self.base, self.max
        )
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 4,
            base: Duration::from_millis(200),
            max: Duration::from_secs(10),
            observer: None,
        }
    }
}

impl RetryPolicy {
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let cap = self
            .base
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.max);
        let jittered = Duration::from_millis(rand::rng().random_range(0..=cap.as_millis() as u64));
        match retry_after {
            Some(floor) => jittered.max(floor.min(Duration::from_secs(120))),
            None => jittered,
        }
    }

    /// Runs `op` until it succeeds, fails permanently, or the attempts are used up.
    pub async fn run<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut attempt = 0;
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(e) if e.class.is_retryable() && attempt + 1 < self.attempts => {
                    let delay = self.delay(attempt, e.retry_after);
                    attempt += 1;
                    if let Some(o) = &self.observer {
                        o.retrying(e.class);
                    }
                    // Each attempt is detail (`--debug`); what finally failed is reported
                    // once, per image, by whoever asked.
                    tracing::debug!(
                        class = %e.class,
                        "{what}: failed, retrying in {delay:?} ({attempt}/{}). Error: {e}",
                        self.attempts - 1
                    );
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::error::{Error, FailureClass};

    fn fast() -> RetryPolicy {
        RetryPolicy {
            attempts: 3,
            base: Duration::from_millis(1),
            max: Duration::from_millis(2),
            observer: None,
        }
    }

    #[tokio::test]
    async fn retries_transient_then_succeeds() {
        let calls = AtomicU32::new(0);
        let out = fast()
            .run("op", || async {
                if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                    Err(Error::new(FailureClass::Server, "500"))
                } else {
                    Ok(7)
                }
            })
            .await;
        assert_eq!(out.unwrap(), 7);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn never_retries_client_errors() {
        let calls = AtomicU32::new(0);
        let out: Result<()> = fast()
            .run("op", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(Error::new(FailureClass::NotFound, "404"))
            })
            .await;
        assert!(out.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn retry_after_is_a_floor() {
        let d = fast().delay(0, Some(Duration::from_secs(3)));
        assert!(d >= Duration::from_secs(3));
    }
}
