//! Limits are the fleet's: a `--rate-limit` or `--max-in-flight` given to any live process
//! holds for every process on the same ledger — the coordinator asking a destination what
//! it holds while it plans a job included, though only the workers were given the cap.
//! Each process publishes its own limits under a lease in the ledger's `fleet.limits` key,
//! renewed while it runs; a request obeys the lowest limit any live process gives its host.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::gate::{Limits, RateGate};
use super::ledger::{now_ms, read, swap};
use super::slots::CLOCK_SLACK_MS;

/// Not a registry's key: those never hold a `.` (see `ledger::key`), slots end in `.slots`.
const LIMITS_KEY: &str = "fleet.limits";
/// A process's limits hold this long after it last renewed them.
const LIMITS_LEASE: Duration = Duration::from_secs(30);
/// How often a process reads the fleet's limits; it renews its own every fifth time.
const REFRESH: Duration = Duration::from_secs(2);
/// More publishers than this are not read: the key is bus data, bounded like any other.
const MAX_PUBLISHERS: usize = 4096;

#[derive(Debug, Default, Serialize, Deserialize)]
struct Published {
    holders: BTreeMap<String, Entry>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Entry {
    /// Lease end, ms since the epoch.
    until: u64,
    budgets: BTreeMap<String, u32>,
    concurrency: BTreeMap<String, u32>,
}

impl RateGate {
    /// Requests per second `host` may take, the fleet's lowest.
    pub(super) fn budget(&self, host: &str) -> Option<u32> {
        self.effective.read().ok()?.budgets.get(host).copied()
    }

    /// Requests `host` may have in flight, the fleet's lowest.
    pub(super) fn concurrency(&self, host: &str) -> Option<u32> {
        self.effective.read().ok()?.concurrency.get(host).copied()
    }

    /// Publishes this process's limits (with a fresh lease when `renew`) and takes in every
    /// live process's. When the ledger cannot be reached, the limits last seen stay.
    pub(super) async fn exchange_limits(&self, renew: bool) {
        let publish =
            renew && !(self.limits.budgets.is_empty() && self.limits.concurrency.is_empty());
        for _ in 0..20 {
            let Some((mut published, revision)) =
                read::<Published>(&*self.ledger, LIMITS_KEY).await
            else {
                return;
            };
            let now = now_ms();
            let latest = now + LIMITS_LEASE.as_millis() as u64 + CLOCK_SLACK_MS;
            published
                .holders
                .retain(|_, e| e.until > now && e.until <= latest);
            if publish {
                published.holders.insert(
                    self.holder.clone(),
                    Entry {
                        until: now + LIMITS_LEASE.as_millis() as u64,
                        budgets: self.limits.budgets.clone().into_iter().collect(),
                        concurrency: self.limits.concurrency.clone().into_iter().collect(),
                    },
                );
                if !swap(&*self.ledger, LIMITS_KEY, &published, revision).await {
                    continue;
                }
            }
            let merged = lowest(&self.limits, published.holders.values());
            if let Ok(mut effective) = self.effective.write() {
                *effective = merged;
            }
            return;
        }
    }

    /// Keeps this gate's view of the fleet's limits current while the gate lives.
    pub(super) fn keep_limits_current(gate: &Arc<Self>) {
        let weak: Weak<Self> = Arc::downgrade(gate);
        tokio::spawn(async move {
            let mut round = 0u64;
            loop {
                tokio::time::sleep(REFRESH).await;
                let Some(gate) = weak.upgrade() else { return };
                round += 1;
                gate.exchange_limits(round.is_multiple_of(5)).await;
            }
        });
    }
}

/// Per host, the lowest limit among `own` and the live publishers' (limits of 0 ignored:
/// they would stop a registry for good).
fn lowest<'a>(own: &Limits, others: impl Iterator<Item = &'a Entry>) -> Limits {
    fn take(into: &mut HashMap<String, u32>, host: &str, n: u32) {
        if n == 0 {
            return;
        }
        into.entry(host.to_owned())
            .and_modify(|m| *m = (*m).min(n))
            .or_insert(n);
    }
    let mut merged = own.clone();
    for entry in others.take(MAX_PUBLISHERS) {
        for (host, n) in &entry.budgets {
            take(&mut merged.budgets, host, *n);
        }
        for (host, n) in &entry.concurrency {
            take(&mut merged.concurrency, host, *n);
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::ledger::MemoryLedger;

    fn cap(host: &str, n: u32) -> Limits {
        Limits {
            concurrency: HashMap::from([(host.to_owned(), n)]),
            ..Default::default()
        }
    }

    /// A process given no cap (the coordinator planning a job) obeys the cap a worker on
    /// the same ledger was given, and both together keep to it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cap_given_to_one_process_holds_for_every_process_on_the_ledger() {
        let ledger: Arc<dyn super::super::ledger::Ledger> = Arc::new(MemoryLedger::default());
        let worker = Arc::new(RateGate::with_ledger(
            ledger.clone(),
            cap("r.example", 2),
            "w",
        ));
        let coordinator = Arc::new(RateGate::with_ledger(ledger, Limits::default(), "c"));
        assert_eq!(coordinator.concurrency("r.example"), None);
        worker.exchange_limits(true).await;
        coordinator.exchange_limits(true).await;
        assert_eq!(coordinator.concurrency("r.example"), Some(2));
        let peak = super::super::slots::peak_in_flight(
            &[worker.clone(), coordinator.clone()],
            "r.example",
            12,
        )
        .await;
        assert_eq!(peak, 2);
    }

    #[test]
    fn the_lowest_live_limit_wins_and_zero_is_ignored() {
        let own = cap("a", 5);
        let others = [
            Entry {
                until: 1,
                concurrency: BTreeMap::from([("a".into(), 3), ("b".into(), 0)]),
                budgets: BTreeMap::from([("b".into(), 7)]),
            },
            Entry {
                until: 1,
                concurrency: BTreeMap::from([("a".into(), 4), ("b".into(), 9)]),
                ..Default::default()
            },
        ];
        let merged = lowest(&own, others.iter());
        assert_eq!(merged.concurrency.get("a"), Some(&3));
        assert_eq!(merged.concurrency.get("b"), Some(&9));
        assert_eq!(merged.budgets.get("b"), Some(&7));
    }

    /// A publisher whose lease ran out (a worker gone) no longer limits anyone, nor one
    /// whose lease ends next year (a clock ahead, a hostile writer).
    #[tokio::test]
    async fn a_gone_process_limits_nobody_once_its_lease_ends_nor_a_lease_from_the_future() {
        let ledger: Arc<dyn super::super::ledger::Ledger> = Arc::new(MemoryLedger::default());
        let stale = Published {
            holders: BTreeMap::from([
                (
                    "gone".to_owned(),
                    Entry {
                        until: now_ms().saturating_sub(1),
                        concurrency: BTreeMap::from([("r.example".into(), 1)]),
                        ..Default::default()
                    },
                ),
                (
                    "squatter".to_owned(),
                    Entry {
                        until: now_ms() + 31_536_000_000,
                        concurrency: BTreeMap::from([("r.example".into(), 1)]),
                        ..Default::default()
                    },
                ),
            ]),
        };
        assert!(swap(&*ledger, LIMITS_KEY, &stale, 0).await);
        let gate = RateGate::with_ledger(ledger, Limits::default(), "c");
        gate.exchange_limits(true).await;
        assert_eq!(gate.concurrency("r.example"), None);
    }
}
