//! Fleet-wide holds: after a `429`, or when a registry's answers slow down sharply (see
//! `latency.rs`), every worker stops sending it requests for a while. The hold is the
//! `blocked_until` of the registry's [`Window`] in the ledger; a budgeted request sees it
//! as it spends (`budget.rs`), an unbudgeted one reads it here, at most every 250 ms, so a
//! registry without a budget costs the ledger almost nothing.

use std::time::Duration;

use super::budget::Window;
use super::gate::RateGate;
use super::ledger::{key, now_ms, read, swap};

impl RateGate {
    /// No budget for `host`: only honour a fleet-wide block, read at most every 250 ms.
    pub(super) async fn wait_out_hold(&self, host: &str, k: &str) {
        let now = now_ms();
        let cached = self.seen.lock().ok().and_then(|m| m.get(k).copied());
        let blocked_until = match cached {
            Some((until, read_at)) if now.saturating_sub(read_at) < 250 => until,
            _ => {
                let until = read::<Window>(&*self.ledger, k)
                    .await
                    .map_or(0, |(w, _)| w.sane(now).blocked_until);
                if let Ok(mut m) = self.seen.lock() {
                    m.insert(k.to_owned(), (until, now));
                }
                until
            }
        };
        if blocked_until > now {
            crate::waiting::on(format!(
                "{host}: a fleet-wide hold (after a 429 or answers slowing down)"
            ));
            tokio::time::sleep(Duration::from_millis(blocked_until - now)).await;
        }
    }

    /// Holds every request to `host` for `wait` (at least a second), fleet-wide.
    pub(super) async fn block(&self, host: &str, wait: Duration, why: &str) {
        let k = key(host);
        let until = now_ms() + wait.as_millis().max(1000) as u64;
        for _ in 0..20 {
            let Some((w, revision)) = read::<Window>(&*self.ledger, &k).await else {
                return;
            };
            let w = w.sane(now_ms());
            if w.blocked_until >= until {
                return;
            }
            let next = Window {
                blocked_until: until,
                ..w
            };
            if swap(&*self.ledger, &k, &next, revision).await {
                tracing::warn!(host, "{why}: the fleet holds requests for {wait:?}");
                if let Ok(mut m) = self.seen.lock() {
                    m.insert(k, (until, now_ms()));
                }
                return;
            }
        }
    }
}
