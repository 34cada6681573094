//! Rate control shared by the fleet: per-registry request budgets (requests per second, the
//! whole fleet together) and back-off after a `429`, held in the JetStream KV bucket
//! `hangar-rate`, one key per registry. Every request to a budgeted registry first takes a
//! slot in the current one-second window with a compare-and-swap on the key; a `429` from
//! any registry blocks it for every worker until its `Retry-After` (or a second) has passed.
//! When NATS cannot be reached the gate lets requests through rather than stop the copy.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, kv};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::{Error, FailureClass, Result};

pub const RATE_BUCKET: &str = "hangar-rate";

/// What a registry client asks before each request, and tells after a 429.
#[async_trait]
pub trait Gate: Send + Sync + std::fmt::Debug {
    async fn admit(&self, host: &str);
    async fn back_off(&self, host: &str, wait: Duration);
}

#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize)]
struct Window {
    /// Start of the current one-second window (ms since the epoch).
    start: u64,
    count: u32,
    blocked_until: u64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn key(host: &str) -> String {
    host.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

pub struct FleetBudget {
    kv: kv::Store,
    /// Requests per second per registry host, for the whole fleet.
    budgets: HashMap<String, u32>,
    /// The last `blocked_until` seen per unbudgeted host, and when it was read.
    seen: Mutex<HashMap<String, (u64, u64)>>,
}

impl std::fmt::Debug for FleetBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetBudget")
            .field("budgets", &self.budgets)
            .finish()
    }
}

impl FleetBudget {
    pub async fn open(client: async_nats::Client, budgets: HashMap<String, u32>) -> Result<Self> {
        let js = jetstream::new(client);
        let kv = match js.get_key_value(RATE_BUCKET).await {
            Ok(kv) => kv,
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: RATE_BUCKET.into(),
                    history: 1,
                    max_age: Duration::from_secs(3600),
                    ..Default::default()
                })
                .await
                .map_err(|e| Error::new(FailureClass::Network, format!("rate bucket: {e}")))?,
        };
        Ok(Self {
            kv,
            budgets,
            seen: Mutex::new(HashMap::new()),
        })
    }

    async fn read(&self, k: &str) -> Option<(Window, u64)> {
        match self.kv.entry(k).await {
            Ok(Some(e)) => Some((
                serde_json::from_slice(&e.value).unwrap_or_default(),
                e.revision,
            )),
            Ok(None) => Some((Window::default(), 0)),
            Err(e) => {
                tracing::warn!("rate control: {e}; letting the request through");
                None
            }
        }
    }

    /// Writes `w` if the key is still at `revision`; false when someone got there first.
    async fn swap(&self, k: &str, w: Window, revision: u64) -> bool {
        let Ok(body) = serde_json::to_vec(&w) else {
            return true;
        };
        let r = if revision == 0 {
            self.kv
                .create(k, body.into())
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        } else {
            self.kv
                .update(k, body.into(), revision)
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        };
        r.is_ok()
    }
}

#[async_trait]
impl Gate for FleetBudget {
    async fn admit(&self, host: &str) {
        let k = key(host);
        let Some(&limit) = self.budgets.get(host) else {
            // No budget: only honour a fleet-wide block, read at most every 250 ms.
            let now = now_ms();
            let cached = self.seen.lock().ok().and_then(|m| m.get(&k).copied());
            let blocked_until = match cached {
                Some((until, read_at)) if now.saturating_sub(read_at) < 250 => until,
                _ => {
                    let until = self.read(&k).await.map_or(0, |(w, _)| w.blocked_until);
                    if let Ok(mut m) = self.seen.lock() {
                        m.insert(k.clone(), (until, now));
                    }
                    until
                }
            };
            if blocked_until > now {
                tokio::time::sleep(Duration::from_millis(blocked_until - now)).await;
            }
            return;
        };
        loop {
            let Some((w, revision)) = self.read(&k).await else {
                return;
            };
            let now = now_ms();
            if w.blocked_until > now {
                tokio::time::sleep(Duration::from_millis(w.blocked_until - now)).await;
                continue;
            }
            let (start, count) = if now.saturating_sub(w.start) >= 1000 {
                (now, 0)
            } else {
                (w.start, w.count)
            };
            if count >= limit {
                tokio::time::sleep(Duration::from_millis(start + 1000 - now)).await;
                continue;
            }
            let next = Window {
                start,
                count: count + 1,
                blocked_until: w.blocked_until,
            };
            if self.swap(&k, next, revision).await {
                return;
            }
        }
    }

    async fn back_off(&self, host: &str, wait: Duration) {
        let k = key(host);
        let until = now_ms() + wait.as_millis().max(1000) as u64;
        for _ in 0..20 {
            let Some((w, revision)) = self.read(&k).await else {
                return;
            };
            if w.blocked_until >= until {
                return;
            }
            if self
                .swap(
                    &k,
                    Window {
                        blocked_until: until,
                        ..w
                    },
                    revision,
                )
                .await
            {
                tracing::warn!(host, "rate-limited: the fleet holds requests for {wait:?}");
                if let Ok(mut m) = self.seen.lock() {
                    m.insert(k, (until, now_ms()));
                }
                return;
            }
        }
    }
}
