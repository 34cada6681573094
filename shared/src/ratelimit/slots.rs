//! Requests in flight: at most N to a registry at once, the whole fleet together, a blob's
//! body included. A request holds a leased slot in the registry's `.slots` key of the
//! ledger until it is done ([`SlotHolder`], renewed while held, given back when dropped);
//! a worker that dies leaves its slots to expire with their lease. A task counts its slots
//! (`HELD`, see [`one_task`]) so that a copy within one registry takes one slot, not two.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::gate::RateGate;
use super::ledger::{Ledger, now_ms, read, swap};

/// A concurrency slot is leased for this long and renewed while its request runs.
const SLOT_LEASE: Duration = Duration::from_secs(30);
/// How far apart the clocks of a fleet's processes may be, as leases in the ledger go.
pub(super) const CLOCK_SLACK_MS: u64 = 5_000;

tokio::task_local! {
    /// Per host, the slots the current task holds. A copy within one registry reads its body
    /// while it uploads it: the upload rides on the download's slot, or the copy would wait
    /// for a second slot while holding the first, and with every slot so held, forever.
    static HELD: RefCell<HashMap<String, usize>>;
}

/// Runs `work` as one task as far as slots go (see `HELD`): the worker runs each handler so.
pub async fn one_task<F: std::future::Future>(work: F) -> F::Output {
    HELD.scope(RefCell::new(HashMap::new()), work).await
}

/// Whether the current task already holds a slot on `host`.
fn holding(host: &str) -> bool {
    HELD.try_with(|h| h.borrow().get(host).copied().unwrap_or(0) > 0)
        .unwrap_or(false)
}

fn count_held(host: &str, up: bool) {
    let _ = HELD.try_with(|h| {
        let mut h = h.borrow_mut();
        let n = h.entry(host.to_owned()).or_default();
        *n = if up { *n + 1 } else { n.saturating_sub(1) };
    });
}

/// Slot holder → lease end (ms since the epoch).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Slots {
    held: BTreeMap<String, u64>,
}

impl RateGate {
    /// Waits for one of `host`'s concurrency slots; `None` when it has no limit, when the
    /// current task holds one there already, or when the ledger cannot be reached.
    pub(super) async fn take_slot(&self, host: &str, k: &str) -> Option<SlotHolder> {
        let limit = self.concurrency(host)? as usize;
        if holding(host) {
            return None;
        }
        let k = format!("{k}.slots");
        let id = format!(
            "{}-{}",
            self.holder,
            self.next_slot.fetch_add(1, Ordering::Relaxed)
        );
        let mut wait = Duration::from_millis(20);
        loop {
            let (mut slots, revision) = read::<Slots>(&*self.ledger, &k).await?;
            let now = now_ms();
            // A lease further away than any process writes (a clock ahead, a hostile
            // writer) would keep its slot for good: it is no lease.
            let latest = now + SLOT_LEASE.as_millis() as u64 + CLOCK_SLACK_MS;
            slots
                .held
                .retain(|_, until| *until > now && *until <= latest);
            if slots.held.len() < limit {
                slots
                    .held
                    .insert(id.clone(), now + SLOT_LEASE.as_millis() as u64);
                if swap(&*self.ledger, &k, &slots, revision).await {
                    count_held(host, true);
                    return Some(SlotHolder::start(
                        self.ledger.clone(),
                        k,
                        id,
                        host.to_owned(),
                    ));
                }
                continue;
            }
            crate::waiting::on(format!(
                "{host}: a free request slot (--max-in-flight {limit}, all held)"
            ));
            // Jittered, so waiters do not all ask again at the same moment.
            let jitter = Duration::from_millis(u64::from(rand::random::<u8>() % 20));
            tokio::time::sleep(wait + jitter).await;
            wait = (wait * 2).min(Duration::from_millis(200));
        }
    }
}

/// A leased concurrency slot: renewed while held, given back when dropped.
pub(super) struct SlotHolder {
    renew: tokio::task::JoinHandle<()>,
    release: Option<(Arc<dyn Ledger>, String, String)>,
    host: String,
}

impl SlotHolder {
    fn start(ledger: Arc<dyn Ledger>, key: String, id: String, host: String) -> Self {
        let (renew_ledger, renew_key, renew_id) = (ledger.clone(), key.clone(), id.clone());
        let renew = tokio::spawn(async move {
            loop {
                tokio::time::sleep(SLOT_LEASE / 3).await;
                update_slot(&*renew_ledger, &renew_key, &renew_id, true).await;
            }
        });
        Self {
            renew,
            release: Some((ledger, key, id)),
            host,
        }
    }
}

impl Drop for SlotHolder {
    fn drop(&mut self) {
        self.renew.abort();
        count_held(&self.host, false);
        if let (Some((ledger, key, id)), Ok(rt)) =
            (self.release.take(), tokio::runtime::Handle::try_current())
        {
            rt.spawn(async move { update_slot(&*ledger, &key, &id, false).await });
        }
    }
}

/// Renews (`keep`) or gives back slot `id`; gives up quietly, the lease then ends it.
async fn update_slot(ledger: &dyn Ledger, key: &str, id: &str, keep: bool) {
    for _ in 0..20 {
        let Some((mut slots, revision)) = read::<Slots>(ledger, key).await else {
            return;
        };
        if keep {
            match slots.held.get_mut(id) {
                Some(until) => *until = now_ms() + SLOT_LEASE.as_millis() as u64,
                None => return,
            }
        } else if slots.held.remove(id).is_none() {
            return;
        }
        if swap(ledger, key, &slots, revision).await {
            return;
        }
    }
}

/// The most requests in flight at once when `n` of them, 30 ms each, go to `host` through
/// `gates` in turn.
#[cfg(test)]
pub(super) async fn peak_in_flight(gates: &[Arc<RateGate>], host: &'static str, n: usize) -> usize {
    use super::Gate as _;
    use std::sync::atomic::AtomicUsize;
    let (now, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let gate = gates[i % gates.len()].clone();
        let (now, peak) = (now.clone(), peak.clone());
        tasks.spawn(async move {
            let _permit = gate.admit(host, 1).await;
            let n = now.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(n, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(30)).await;
            now.fetch_sub(1, Ordering::SeqCst);
        });
    }
    while tasks.join_next().await.is_some() {}
    peak.load(Ordering::SeqCst)
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::ratelimit::{Gate, Limits};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_local_gate_caps_requests_in_flight() {
        let gate = Arc::new(RateGate::local(Limits {
            concurrency: HashMap::from([("r.example".to_owned(), 3)]),
            ..Default::default()
        }));
        assert_eq!(
            peak_in_flight(std::slice::from_ref(&gate), "r.example", 12).await,
            3
        );
        // A slot leased until next year by a hostile writer is no slot held.
        let hostile = Slots {
            held: BTreeMap::from([("squatter".to_owned(), now_ms() + 31_536_000_000)]),
        };
        let k = "r_example.slots";
        // The peak's last releases may still be writing the ledger: write over them.
        let mut written = false;
        for _ in 0..50 {
            let (_, revision) = read::<Slots>(&*gate.ledger, k).await.expect("ledger");
            written = swap(&*gate.ledger, k, &hostile, revision).await;
            if written {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(written, "the hostile lease was written");
        let permits = tokio::time::timeout(Duration::from_secs(2), async {
            let mut held = Vec::new();
            for _ in 0..3 {
                held.push(gate.admit("r.example", 1).await);
            }
            held
        });
        assert!(permits.await.is_ok(), "all three slots are free");
        // Other registries are not held by this one's cap.
        let free = tokio::time::timeout(Duration::from_secs(1), gate.admit("other", 1)).await;
        assert!(free.is_ok());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_copy_within_one_registry_rides_on_its_download_slot() {
        let gate = Arc::new(RateGate::local(Limits {
            concurrency: HashMap::from([("r.example".to_owned(), 1)]),
            ..Default::default()
        }));
        let copy = one_task(async {
            let download = gate.admit("r.example", 1).await;
            // The upload of the same body: with one slot, waiting for a second would hang.
            let upload = tokio::time::timeout(Duration::from_secs(2), gate.admit("r.example", 2))
                .await
                .expect("the upload rides on the download's slot");
            // Another task still finds the registry's only slot taken.
            let other = tokio::spawn({
                let gate = gate.clone();
                async move { one_task(gate.admit("r.example", 1)).await }
            });
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(!other.is_finished(), "the cap still holds for other tasks");
            drop((upload, download));
            tokio::time::timeout(Duration::from_secs(2), other)
                .await
                .expect("the slot comes back when the copy is done")
                .unwrap();
        });
        copy.await;
    }
}
