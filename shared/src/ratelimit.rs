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
//! When NATS cannot be reached the gate lets requests through rather than stop the copy.
//! A process without a fleet keeps the same ledger in memory: the same limits, for itself.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, kv};
use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, FailureClass, Result};

pub const RATE_BUCKET: &str = "hangar-rate";

/// A concurrency slot is leased for this long and renewed while its request runs.
const SLOT_LEASE: Duration = Duration::from_secs(30);

tokio::task_local! {
    /// Per host, the slots the current task holds. A copy within one registry reads its body
    /// while it uploads it: the upload rides on the download's slot, or the copy would wait
    /// for a second slot while holding the first, and with every slot so held, forever.
    static HELD: std::cell::RefCell<HashMap<String, usize>>;
}

/// Runs `work` as one task as far as slots go (see `HELD`): the worker runs each handler so.
pub async fn one_task<F: std::future::Future>(work: F) -> F::Output {
    HELD.scope(std::cell::RefCell::new(HashMap::new()), work)
        .await
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

#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize)]
struct Window {
    /// Start of the current one-second window (ms since the epoch).
    start: u64,
    count: u32,
    blocked_until: u64,
}

/// Slot holder → lease end (ms since the epoch).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Slots {
    held: BTreeMap<String, u64>,
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

/// Where the windows and slots are kept: a compare-and-swap map.
#[async_trait]
trait Ledger: Send + Sync {
    /// The value and revision under `k` (revision 0: none yet); `None` when the ledger
    /// cannot be reached.
    async fn entry(&self, k: &str) -> Option<(Vec<u8>, u64)>;
    /// Writes `value` if `k` is still at `revision`; false when someone got there first.
    async fn swap(&self, k: &str, value: Vec<u8>, revision: u64) -> bool;
}

struct KvLedger(kv::Store);

#[async_trait]
impl Ledger for KvLedger {
    async fn entry(&self, k: &str) -> Option<(Vec<u8>, u64)> {
        match self.0.entry(k).await {
            Ok(Some(e)) => Some((e.value.to_vec(), e.revision)),
            Ok(None) => Some((Vec::new(), 0)),
            Err(e) => {
                tracing::warn!("rate control: {e}; letting the request through");
                None
            }
        }
    }

    async fn swap(&self, k: &str, value: Vec<u8>, revision: u64) -> bool {
        if revision == 0 {
            self.0.create(k, value.into()).await.is_ok()
        } else {
            self.0.update(k, value.into(), revision).await.is_ok()
        }
    }
}

#[derive(Default)]
struct MemoryLedger(Mutex<HashMap<String, (Vec<u8>, u64)>>);

#[async_trait]
impl Ledger for MemoryLedger {
    async fn entry(&self, k: &str) -> Option<(Vec<u8>, u64)> {
        let map = self.0.lock().ok()?;
        Some(map.get(k).cloned().unwrap_or_default())
    }

    async fn swap(&self, k: &str, value: Vec<u8>, revision: u64) -> bool {
        let Ok(mut map) = self.0.lock() else {
            return false;
        };
        let current = map.get(k).map_or(0, |(_, r)| *r);
        if current != revision {
            return false;
        }
        map.insert(k.to_owned(), (value, revision + 1));
        true
    }
}

pub struct RateGate {
    ledger: Arc<dyn Ledger>,
    limits: Limits,
    /// Tells this process's slot holders apart from every other worker's.
    holder: String,
    next_slot: AtomicU64,
    /// The last `blocked_until` seen per unbudgeted host, and when it was read.
    seen: Mutex<HashMap<String, (u64, u64)>>,
    latency: Mutex<HashMap<(String, &'static str), LatencyWatch>>,
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
    /// process (unique in the fleet) in the slots it takes.
    pub async fn fleet(client: async_nats::Client, limits: Limits, holder: &str) -> Result<Self> {
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
        Ok(Self::with_ledger(Arc::new(KvLedger(kv)), limits, holder))
    }

    /// The same rules for one process alone.
    pub fn local(limits: Limits) -> Self {
        Self::with_ledger(Arc::new(MemoryLedger::default()), limits, "local")
    }

    fn with_ledger(ledger: Arc<dyn Ledger>, limits: Limits, holder: &str) -> Self {
        Self {
            ledger,
            limits,
            holder: holder.to_owned(),
            next_slot: AtomicU64::new(0),
            seen: Mutex::new(HashMap::new()),
            latency: Mutex::new(HashMap::new()),
        }
    }

    /// Waits for a place in `host`'s one-second window for `requests` requests.
    async fn spend(&self, host: &str, k: &str, requests: u32) {
        let Some(&limit) = self.limits.budgets.get(host) else {
            // No budget: only honour a fleet-wide block, read at most every 250 ms.
            let now = now_ms();
            let cached = self.seen.lock().ok().and_then(|m| m.get(k).copied());
            let blocked_until = match cached {
                Some((until, read_at)) if now.saturating_sub(read_at) < 250 => until,
                _ => {
                    let until = read::<Window>(&*self.ledger, k)
                        .await
                        .map_or(0, |(w, _)| w.blocked_until);
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

    /// Waits for one of `host`'s concurrency slots; `None` when it has no limit, when the
    /// current task holds one there already, or when the ledger cannot be reached.
    async fn take_slot(&self, host: &str, k: &str) -> Option<SlotHolder> {
        let limit = *self.limits.concurrency.get(host)? as usize;
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
            slots.held.retain(|_, until| *until > now);
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

    async fn block(&self, host: &str, wait: Duration, why: &str) {
        let k = key(host);
        let until = now_ms() + wait.as_millis().max(1000) as u64;
        for _ in 0..20 {
            let Some((w, revision)) = read::<Window>(&*self.ledger, &k).await else {
                return;
            };
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

/// A leased concurrency slot: renewed while held, given back when dropped.
struct SlotHolder {
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

async fn read<T: DeserializeOwned + Default>(ledger: &dyn Ledger, k: &str) -> Option<(T, u64)> {
    let (bytes, revision) = ledger.entry(k).await?;
    Some((serde_json::from_slice(&bytes).unwrap_or_default(), revision))
}

/// Writes `value` if the key is still at `revision`; false when someone got there first.
async fn swap<T: Serialize>(ledger: &dyn Ledger, k: &str, value: &T, revision: u64) -> bool {
    match serde_json::to_vec(value) {
        Ok(body) => ledger.swap(k, body, revision).await,
        Err(_) => true,
    }
}

/// How many recent small requests the slowdown test looks at.
const RECENT: usize = 8;

/// One registry's recent latencies, against its usual one.
#[derive(Debug, Default)]
struct LatencyWatch {
    /// The usual latency: the lowest seen, drifting slowly up to what is now normal.
    floor_ms: Option<f64>,
    recent: VecDeque<f64>,
    last_block: Option<Instant>,
}

impl LatencyWatch {
    /// Takes one latency; when the median of the recent ones is four times the usual latency
    /// and at least 250 ms above it, says how long the fleet should hold off (the excess,
    /// at most five seconds; at most once every five seconds).
    fn sample(&mut self, elapsed: Duration, now: Instant) -> Option<Duration> {
        let ms = elapsed.as_secs_f64() * 1000.0;
        let floor = match self.floor_ms {
            Some(f) if ms < f => ms,
            Some(f) => f + (ms - f) * 0.01,
            None => ms,
        };
        self.floor_ms = Some(floor);
        self.recent.push_back(ms);
        if self.recent.len() > RECENT {
            self.recent.pop_front();
        }
        if self.recent.len() < RECENT {
            return None;
        }
        let mut sorted: Vec<f64> = self.recent.iter().copied().collect();
        sorted.sort_by(f64::total_cmp);
        let median = sorted[RECENT / 2];
        let quiet = self
            .last_block
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(5));
        if median >= 4.0 * floor && median - floor >= 250.0 && quiet {
            self.last_block = Some(now);
            return Some(Duration::from_millis((median - floor).min(5000.0) as u64));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn feed(w: &mut LatencyWatch, ms: u64, n: usize, now: Instant) -> Vec<Duration> {
        (0..n)
            .filter_map(|_| w.sample(Duration::from_millis(ms), now))
            .collect()
    }

    #[test]
    fn a_sharp_slowdown_holds_the_fleet_back_once_then_waits() {
        let mut w = LatencyWatch::default();
        let t0 = Instant::now();
        assert!(feed(&mut w, 20, 50, t0).is_empty(), "steady: nothing");
        let holds = feed(&mut w, 600, RECENT, t0);
        assert_eq!(holds.len(), 1, "{holds:?}");
        assert!(holds[0] >= Duration::from_millis(500) && holds[0] <= Duration::from_millis(600));
        assert!(
            feed(&mut w, 600, RECENT, t0).is_empty(),
            "not again at once"
        );
        let later = t0 + Duration::from_secs(6);
        assert_eq!(feed(&mut w, 600, 1, later).len(), 1, "again after 5 s");
    }

    #[test]
    fn jitter_and_a_slow_but_steady_registry_are_left_alone() {
        let mut w = LatencyWatch::default();
        let t0 = Instant::now();
        // A few slow answers among fast ones do not move the median.
        for i in 0..100 {
            let ms = if i % 4 == 0 { 900 } else { 30 };
            assert!(w.sample(Duration::from_millis(ms), t0).is_none());
        }
        // A registry that is always 400 ms away is not slowing down.
        let mut w = LatencyWatch::default();
        assert!(feed(&mut w, 400, 100, t0).is_empty());
        // Small absolute rises (10 → 60 ms) are not worth holding anyone for.
        let mut w = LatencyWatch::default();
        feed(&mut w, 10, 20, t0);
        assert!(feed(&mut w, 60, 20, t0).is_empty());
    }

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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_local_gate_caps_requests_in_flight() {
        let gate = Arc::new(RateGate::local(Limits {
            concurrency: HashMap::from([("r.example".to_owned(), 3)]),
            ..Default::default()
        }));
        let (now, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..12 {
            let (gate, now, peak) = (gate.clone(), now.clone(), peak.clone());
            tasks.spawn(async move {
                let _permit = gate.admit("r.example", 1).await;
                let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(n, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(30)).await;
                now.fetch_sub(1, Ordering::SeqCst);
            });
        }
        while tasks.join_next().await.is_some() {}
        assert_eq!(peak.load(Ordering::SeqCst), 3);
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
