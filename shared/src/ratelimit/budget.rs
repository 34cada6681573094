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
            if count + requests > limit {
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
}
