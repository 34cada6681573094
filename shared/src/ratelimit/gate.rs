//! [`RateGate`]: the [`Gate`] every registry client asks, for the fleet (its ledger in NATS
//! KV) or for one process (in memory), with the [`Limits`] it enforces. It holds only what
//! the rules share; each rule is an `impl RateGate` block in its own file (`budget.rs`,
//! `slots.rs`, `hold.rs`), and this file says in which order they are asked.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use async_trait::async_trait;

use super::latency::LatencyWatch;
use super::ledger::{KvLedger, Ledger, MemoryLedger, key};
use super::{Gate, Permit, Request};
use crate::error::{Error, Result};
use crate::queue::jetstream::storage;

/// Per-registry limits, as given to a worker.
#[derive(Debug, Default, Clone)]
pub struct Limits {
    /// Requests per second, the whole fleet together.
    pub budgets: HashMap<String, u32>,
    /// Requests in flight, the whole fleet together.
    pub concurrency: HashMap<String, u32>,
}

impl Limits {
    /// Parses `HOST=N` (N > 0), naming the flag in the error.
    pub fn parse_entry(flag: &str, spec: &str) -> Result<(String, u32)> {
        spec.rsplit_once('=')
            .and_then(|(h, n)| {
                let n = n.parse::<u32>().ok().filter(|n| *n > 0)?;
                (!h.is_empty()).then(|| (h.to_owned(), n))
            })
            .ok_or_else(|| Error::invalid(format!("{flag} {spec:?}: expected HOST=N, N > 0")))
    }
}

pub struct RateGate {
    pub(super) ledger: Arc<dyn Ledger>,
    /// The limits this process was given (it publishes them to the fleet).
    pub(super) limits: Limits,
    /// What its requests obey: per host, the lowest of its own and every live process's.
    pub(super) effective: RwLock<Limits>,
    /// Tells this process's slot holders apart from every other worker's.
    pub(super) holder: String,
    pub(super) next_slot: AtomicU64,
    /// The last `blocked_until` seen per unbudgeted host, and when it was read.
    pub(super) seen: Mutex<HashMap<String, (u64, u64)>>,
    pub(super) latency: Mutex<HashMap<(String, &'static str), LatencyWatch>>,
}

impl std::fmt::Debug for RateGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateGate")
            .field("limits", &self.limits)
            .finish()
    }
}

impl RateGate {
    /// The fleet's gate: limits and holds shared through NATS KV. `holder` names this
    /// process (unique in the fleet) in the slots it takes and the limits it publishes.
    pub async fn fleet(
        client: async_nats::Client,
        limits: Limits,
        holder: &str,
    ) -> Result<Arc<Self>> {
        let js = jetstream::new(client);
        let kv = storage::bucket(&js, storage::rate_bucket()).await?;
        let gate = Arc::new(Self::with_ledger(Arc::new(KvLedger(kv)), limits, holder));
        // Before the first request: the fleet's caps hold from it on.
        gate.exchange_limits(true).await;
        Self::keep_limits_current(&gate);
        Ok(gate)
    }

    /// The same rules for one process alone.
    pub fn local(limits: Limits) -> Self {
        Self::with_ledger(Arc::new(MemoryLedger::default()), limits, "local")
    }

    pub(super) fn with_ledger(ledger: Arc<dyn Ledger>, limits: Limits, holder: &str) -> Self {
        Self {
            ledger,
            effective: RwLock::new(limits.clone()),
            limits,
            holder: holder.to_owned(),
            next_slot: AtomicU64::new(0),
            seen: Mutex::new(HashMap::new()),
            latency: Mutex::new(HashMap::new()),
        }
    }
}

#[async_trait]
impl Gate for RateGate {
    async fn admit(&self, host: &str, requests: u32) -> Permit {
        let k = key(host);
        // The slot first: a request waiting for one should not hold a place in the window.
        let slot = self.take_slot(host, &k).await;
        self.spend(host, &k, requests).await;
        slot.map(Permit::new).unwrap_or_default()
    }

    async fn back_off(&self, host: &str, wait: Duration) {
        self.block(host, wait, "rate-limited").await;
    }

    async fn observe(&self, host: &str, request: Request) -> bool {
        if !request.is_latency_signal() {
            return false;
        }
        // Per operation: a blob GET answered through a redirect is slower than a manifest
        // HEAD on a healthy registry, and must not read as a slowdown next to it.
        let slowdown = self.latency.lock().ok().and_then(|mut m| {
            m.entry((host.to_owned(), request.op))
                .or_default()
                .sample(request.elapsed, Instant::now())
        });
        match slowdown {
            Some(wait) => {
                self.block(host, wait, "answers slowing down").await;
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_host_equals_n_and_name_the_flag_when_wrong() {
        assert_eq!(
            Limits::parse_entry("--rate-limit", "registry.example:5000=20").unwrap(),
            ("registry.example:5000".to_owned(), 20)
        );
        for bad in ["x", "h=0", "h=-1", "=3", "h=many"] {
            let e = Limits::parse_entry("--max-in-flight", bad).unwrap_err();
            assert!(e.message.contains("--max-in-flight"), "{e}");
        }
    }
}
