//! Rate control shared by the fleet, held in the JetStream KV bucket `hangar-rate`:
//!
//! - a request budget per registry (requests per second, the whole fleet together): every
//!   request first takes a place in the current one-second window with a compare-and-swap on
//!   the registry's key;
//! - a concurrency limit per registry (requests in flight, the whole fleet together, a blob's
//!   body included): a request holds a leased slot in the registry's `.slots` key until it is
//!   done; a worker that dies leaves its slots to expire with their lease;
//! - back-off: a `429` from a registry blocks it for every worker until its `Retry-After` (or
//!   a second) has passed, and so does a registry whose answers slow down sharply (the median
//!   of the last small requests several times its usual latency), for about the slowdown.
//!
//! Limits are the fleet's: one given to any live process (a worker's `--max-in-flight`)
//! holds for all of them, the coordinator's planning requests included; the lowest wins.
//!
//! When NATS cannot be reached the gate lets requests through rather than stop the copy.
//! A process without a fleet keeps the same ledger in memory: the same limits, for itself.
//!
//! This file is the table of contents and what a registry client sees (the [`Gate`] trait,
//! the [`Request`] it reports, the [`Permit`] it holds); each rule has a file of its own, so
//! one can be read, and changed, without the others:
//!
//! - `gate.rs`: [`RateGate`], the [`Gate`] of the fleet (or of one process), and its
//!   [`Limits`]; it asks the rules below in turn;
//! - `ledger.rs`: where windows and slots are kept, a compare-and-swap map (NATS KV, or
//!   memory for a process alone);
//! - `fleet_limits.rs`: each process's limits published under a lease, and the lowest of
//!   them obeyed by all;
//! - `budget.rs`: the request budget, one-second windows;
//! - `slots.rs`: requests in flight, leased slots, and [`one_task`] (a task counts its slots
//!   once);
//! - `hold.rs`: fleet-wide holds after a `429` or a slowdown;
//! - `latency.rs`: the watch on a registry's latency that calls a slowdown.

mod budget;
mod fleet_limits;
mod gate;
mod hold;
mod latency;
mod ledger;
mod slots;

use std::time::Duration;

use async_trait::async_trait;

use crate::error::FailureClass;

pub use gate::{Limits, RateGate};
pub use ledger::RATE_BUCKET;
pub use slots::one_task;

/// What a registry client asks before each request, and tells after it.
#[async_trait]
pub trait Gate: Send + Sync + std::fmt::Debug {
    /// Waits until `requests` more requests may go to `host`; the permit is held until the
    /// exchange is over (for a blob, until its body is read).
    async fn admit(&self, host: &str, requests: u32) -> Permit;
    /// The registry answered `429`: hold every request to it for `wait`.
    async fn back_off(&self, host: &str, wait: Duration);
    /// How one exchange went: `elapsed` until the answer's headers. Small requests (not
    /// uploads) are a latency signal. Returns whether the fleet was told to back off.
    async fn observe(&self, host: &str, request: Request) -> bool;
}

/// One exchange with a registry, as the gate and the metrics see it.
#[derive(Debug, Clone, Copy)]
pub struct Request {
    /// What was asked: `manifest-get`, `manifest-put`, `blob-head`, `blob-get`, `blob-put`,
    /// `blob-mount`, `tags`.
    pub op: &'static str,
    pub elapsed: Duration,
    pub failure: Option<FailureClass>,
}

impl Request {
    /// An upload's time is its body's: it says nothing about how the registry is coping.
    fn is_latency_signal(&self) -> bool {
        self.op != "blob-put" && self.failure.is_none()
    }
}

/// Held while a request runs; dropping it gives its concurrency slot back.
#[derive(Default)]
pub struct Permit(Option<Box<dyn std::any::Any + Send + Sync>>);

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Permit(slot)"
        } else {
            "Permit"
        })
    }
}

impl Permit {
    pub fn new(held: impl std::any::Any + Send + Sync) -> Self {
        Self(Some(Box::new(held)))
    }
}
