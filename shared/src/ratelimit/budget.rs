//! The request budget: at most N requests per second to a registry, the whole fleet
//! together. Each registry has one [`Window`] in the ledger, a one-second window and its
//! count, and a request takes its place in it with a compare-and-swap; past the budget it
//! waits for the next window. The window also carries the registry's fleet-wide hold
//! (`hold.rs` sets it), so one read tells a budgeted request both.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::gate::RateGate;
use super::ledger::{now_ms, read, swap};

#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize)]
pub(super) struct Window {
    /// Start of the current one-second window (ms since the epoch).
    pub(super) start: u64,
    pub(super) count: u32,
    pub(super) blocked_until: u64,
}

/// No hold is written longer than a capped `Retry-After`; this leaves a few seconds for
/// clocks that differ between processes.
const MAX_HOLD_MS: u64 = 125_000;

impl Window {
    /// The window as read from the ledger, which is bus data: a hold further away than
    /// any process writes (a clock hours ahead, or a hostile writer) is no hold, and a
    /// window that starts further ahead than clocks differ is over.
    pub(super) fn sane(mut self, now: u64) -> Self {
        if self.blocked_until > now + MAX_HOLD_MS {
            self.blocked_until = 0;
        }
        if self.start > now + super::slots::CLOCK_SLACK_MS {
            (self.start, self.count) = (0, 0);
        }
        self
    }
}

impl RateGate {
    /// Waits for a place in `host`'s one-second window for `requests` requests.
    pub(super) async fn spend(&self, host: &str, k: &str, requests: u32) {
        let Some(limit) = self.budget(host) else {
            self.wait_out_hold(host, k).await;
            return;
        };
        let requests = requests.min(limit);
        loop {
            let Some((w, revision)) = read::<Window>(&*self.ledger, k).await else {
                return;
            };
            let now = now_ms();
            let w = w.sane(now);
            if w.blocked_until > now {
                crate::waiting::on(format!(
                    "{host}: a fleet-wide hold (after a 429 or answers slowing down)"
                ));
                tokio::time::sleep(Duration::from_millis(w.blocked_until - now)).await;
                continue;
            }
            let (start, count) = if now.saturating_sub(w.start) >= 1000 {
                (now, 0)
            } else {
                (w.start, w.count)
            };
            if count.saturating_add(requests) > limit {
                crate::waiting::on(format!(
                    "{host}: its request budget (--rate-limit {limit}/s)"
                ));
                tokio::time::sleep(Duration::from_millis(start + 1000 - now)).await;
                continue;
            }
            let next = Window {
                start,
                count: count + requests,
                blocked_until: w.blocked_until,
            };
            if swap(&*self.ledger, k, &next, revision).await {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::ratelimit::{Gate, Limits};

    #[tokio::test]
    async fn a_local_budget_holds_the_request_past_it_until_the_next_second() {
        let gate = RateGate::local(Limits {
            budgets: HashMap::from([("r.example".to_owned(), 5)]),
            ..Default::default()
        });
        for _ in 0..5 {
            gate.admit("r.example", 1).await;
        }
        let sixth = tokio::time::timeout(Duration::from_millis(300), gate.admit("r.example", 1));
        assert!(sixth.await.is_err(), "the sixth request in a second waits");
        // A 429 holds even an unbudgeted registry.
        gate.back_off("s.example", Duration::from_secs(1)).await;
        let held = tokio::time::timeout(Duration::from_millis(300), gate.admit("s.example", 1));
        assert!(held.await.is_err(), "held after a 429");
    }

    /// The ledger is bus data: a hold a day away (a clock ahead, a hostile writer) and a
    /// window that starts in an hour neither stop a registry's requests nor keep a real
    /// 429's hold from being written.
    #[tokio::test]
    async fn a_hold_or_window_from_far_in_the_future_is_not_obeyed() {
        let gate = RateGate::local(Limits {
            budgets: HashMap::from([("r.example".to_owned(), 5)]),
            ..Default::default()
        });
        let day = 86_400_000;
        for host in ["r.example", "s.example"] {
            let hostile = Window {
                start: now_ms() + 3_600_000,
                count: 5,
                blocked_until: now_ms() + day,
            };
            assert!(swap(&*gate.ledger, &super::super::ledger::key(host), &hostile, 0).await);
            let admitted = tokio::time::timeout(Duration::from_secs(2), gate.admit(host, 1));
            assert!(
                admitted.await.is_ok(),
                "{host}: not held by a hold a day away"
            );
        }
        gate.back_off("s.example", Duration::from_secs(2)).await;
        let held = tokio::time::timeout(Duration::from_millis(500), gate.admit("s.example", 1));
        assert!(held.await.is_err(), "a real 429 still holds");
    }
}
