//! Tasks out, outcomes back, on either backend: the in-process queue with this process's
//! own worker handlers, or JetStream with `hangar-worker`s. Copy jobs drive a [`Bus`]
//! through the tracker (`job`); per-image work that copies nothing is followed by
//! [`super::per_image`].

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use hangar_shared::archive::ArchiveReader;
use hangar_shared::cache::BlobCache;
use hangar_shared::error::Result;
use hangar_shared::queue::jetstream::{self, JetStreamQueue};
use hangar_shared::queue::{ChannelSink, MemoryQueue, TaskQueue};
use hangar_shared::retry::RetryPolicy;
use hangar_shared::sign::KeyPair;
use hangar_shared::store::{RegistryPool, Stores};
use hangar_shared::task::Event;
use hangar_worker::Context;
use tokio::sync::{mpsc, oneshot};

use crate::console::Console;

/// Deliveries of one task. Each delivery already retries transient request failures with
/// backoff; one redelivery covers a handler that failed as a whole.
pub const MAX_DELIVER: u32 = 2;

/// How long a kind of task may wait with no worker pulling it before the run gives up on
/// it, by default: the time after which the fleet also takes a silent worker for gone (its
/// leases). The process's `--unserved-timeout` replaces it; zero waits for ever.
pub const UNSERVED_PATIENCE: Duration = hangar_shared::lease::LEASE_TTL;

static PATIENCE_MS: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(UNSERVED_PATIENCE.as_millis() as u64);

/// Sets this process's patience for kinds of task no worker takes (`--unserved-timeout`),
/// read by every fleet run it opens.
pub fn set_unserved_patience(patience: Duration) {
    PATIENCE_MS.store(
        patience.as_millis().min(u64::MAX as u128) as u64,
        std::sync::atomic::Ordering::Relaxed,
    );
}

fn unserved_patience() -> Duration {
    Duration::from_millis(PATIENCE_MS.load(std::sync::atomic::Ordering::Relaxed))
}

/// Where the tasks run.
pub enum Backend {
    /// Worker handlers in this process, on the in-process queue.
    Embedded,
    /// `hangar-worker` processes pulling from JetStream.
    Fleet(async_nats::Client),
}

/// What this process's own handlers need when the backend is embedded (a fleet's workers
/// have their own stores, cache and keys).
pub struct Here {
    pub pool: Arc<RegistryPool>,
    pub cache: Option<Arc<BlobCache>>,
    /// An archive the tasks read from (`load`), by its location.
    pub archive: Option<(String, Arc<ArchiveReader>)>,
    pub sign_keys: HashMap<String, Arc<KeyPair>>,
    pub retry: RetryPolicy,
    pub task_timeout: Option<Duration>,
    /// Tasks run at once.
    pub transfers: usize,
    pub bytes_moved: Arc<AtomicU64>,
}

impl Here {
    pub fn new(pool: Arc<RegistryPool>) -> Self {
        Self {
            pool,
            cache: None,
            archive: None,
            sign_keys: HashMap::new(),
            retry: RetryPolicy::default(),
            task_timeout: None,
            transfers: 4,
            bytes_moved: Arc::default(),
        }
    }
}

/// Where a run's events come from: this process's own handlers, or the fleet's stream,
/// read no faster than the run takes them in (a bounded channel: the stream keeps what
/// waits, not this process's memory).
enum Events {
    Here(mpsc::UnboundedReceiver<Event>),
    Fleet(jetstream::EventFeed),
}

impl Events {
    async fn recv(&mut self) -> Option<Event> {
        match self {
            Events::Here(rx) => rx.recv().await,
            Events::Fleet(rx) => rx.recv().await,
        }
    }
}

/// One run's queue and the events of its tasks.
pub struct Bus {
    pub queue: Arc<dyn TaskQueue>,
    events: Events,
    /// The embedded handlers, and what stops them (dropping their tasks in hand).
    workers: Option<(tokio::task::JoinHandle<()>, oneshot::Sender<()>)>,
    /// On the fleet: says why the run cannot go on when a kind of its tasks has had no
    /// worker pulling it for the process's patience (`--unserved-timeout`).
    unserved: Option<(mpsc::Receiver<String>, tokio::task::JoinHandle<()>)>,
    fleet: Option<Fleet>,
    /// Final failures of tasks whose answers went missing, for [`Bus::next`] to hand on.
    lost: VecDeque<Event>,
}

/// A run on the fleet.
struct Fleet {
    /// The client and run, so that an interrupted run's queued tasks are purged rather
    /// than left for the workers.
    client: async_nats::Client,
    job: String,
    /// What the run sent and has had no answer for ([`jetstream::ledger`]).
    publisher: Arc<JetStreamQueue>,
    /// When the run looks for tasks that left the queue with no answer, unless an answer
    /// settles one of its tasks before. Only an answer moves it: anyone holding the
    /// workers' login can send the run other events, forged ones included.
    look_at: tokio::time::Instant,
    /// When the last look began: a run whose answers keep coming still looks every
    /// [`BUSY`], so a lost task is not left until the rest of the run is done.
    looked: tokio::time::Instant,
    /// [`QUIET`] and [`BUSY`], as this run keeps them (tests shorten them).
    quiet: Duration,
    busy: Duration,
    /// Tasks found gone, waiting for the run to read through the last event stored when
    /// they were: asked once, so that events sent on and on (forged ones too) cannot keep
    /// that mark ahead of the run.
    gone: Option<jetstream::ledger::Missing>,
}

/// How long a fleet run goes without an answer before it looks for tasks that left the
/// queue with no answer, and again as long as none comes.
const QUIET: Duration = Duration::from_secs(10);
/// How often a run whose answers keep coming looks all the same: a look is up to 256
/// requests, and the run reads no event while it looks.
const BUSY: Duration = Duration::from_secs(60);

impl Bus {
    /// Opens the queue of run `job_id`: with embedded handlers running on `here`, or
    /// following the run's events on the fleet.
    pub async fn open(
        backend: Backend,
        job_id: &str,
        here: Here,
        console: &Console,
    ) -> Result<Self> {
        match backend {
            Backend::Embedded => {
                let queue: Arc<dyn TaskQueue> = Arc::new(MemoryQueue::new(MAX_DELIVER));
                let (event_tx, events) = mpsc::unbounded_channel();
                let stores = Stores::new(here.pool.clone(), here.cache.clone());
                if let Some((location, archive)) = &here.archive {
                    stores.add_archive(location, archive.clone()).await;
                }
                let ctx = Arc::new(Context {
                    name: "embedded".into(),
                    stores: Arc::new(stores),
                    retry: here.retry,
                    bytes_moved: here.bytes_moved,
                    task_timeout: here.task_timeout,
                    // One process: another delivery would be this same process again.
                    stall_after: None,
                    metrics: None,
                    cache: here.cache.clone(),
                    leases: None,
                    sign_keys: here.sign_keys,
                    policy: None,
                    looks: Default::default(),
                    copy_slots: None,
                    // A directory is the user's own; a bucket may be a fleet's, which any
                    // holder of its credentials writes.
                    reuse_inventories: !here.cache.as_ref().is_some_and(|c| c.is_shared()),
                });
                let (stop, stopped) = oneshot::channel::<()>();
                let workers = tokio::spawn(hangar_worker::run(
                    queue.clone(),
                    Arc::new(ChannelSink(event_tx)),
                    ctx,
                    here.transfers,
                    stopped,
                ));
                Ok(Self {
                    queue,
                    events: Events::Here(events),
                    workers: Some((workers, stop)),
                    unserved: None,
                    fleet: None,
                    lost: VecDeque::new(),
                })
            }
            Backend::Fleet(client) => {
                let events = jetstream::follow_events(client.clone(), job_id).await?;
                let publisher = Arc::new(JetStreamQueue::publisher(client.clone()).await?);
                let (tx, rx) = mpsc::channel(1);
                let (patience, watched) = (unserved_patience(), publisher.clone());
                let watch = tokio::spawn(async move {
                    if !patience.is_zero() {
                        watch_unserved(watched, patience, tx).await;
                    }
                });
                console.info(None, format!("Job {job_id} runs on the fleet"));
                Ok(Self {
                    queue: publisher.clone(),
                    events: Events::Fleet(events),
                    workers: None,
                    unserved: Some((rx, watch)),
                    fleet: Some(Fleet {
                        client,
                        job: job_id.to_owned(),
                        publisher,
                        look_at: tokio::time::Instant::now() + QUIET,
                        looked: tokio::time::Instant::now(),
                        quiet: QUIET,
                        busy: BUSY,
                        gone: None,
                    }),
                    lost: VecDeque::new(),
                })
            }
        }
    }

    /// The next event of the run's tasks, or why none can come any more.
    pub async fn next(&mut self) -> News {
        loop {
            if let Some(event) = self.lost.pop_front() {
                return News::Event(event);
            }
            let unserved = async {
                match self.unserved.as_mut() {
                    Some((rx, _)) => rx.recv().await,
                    None => None,
                }
            };
            let look_at = self.fleet.as_ref().map(|f| f.look_at);
            let quiet = async {
                match look_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                event = self.events.recv() => return match event {
                    Some(event) => {
                        if let Some(fleet) = &mut self.fleet
                            && fleet.publisher.answered(&event)
                        {
                            let now = tokio::time::Instant::now();
                            fleet.look_at = (now + fleet.quiet).min(fleet.looked + fleet.busy);
                        }
                        News::Event(event)
                    }
                    None => News::Stopped {
                        why: "the workers stopped before this image was done".into(),
                        purge: false,
                    },
                },
                Some(why) = unserved => return News::Stopped { why, purge: true },
                () = quiet => self.look_for_lost().await,
            }
        }
    }

    /// Publishes again the tasks that left the queue with no answer the run could still
    /// read, or takes in their failures ([`jetstream::ledger`]). Only once the run has
    /// read every event stored for it when they were found gone (or that event is gone
    /// from the stream too, so nothing before it can still come); until then, the next
    /// look asks again.
    async fn look_for_lost(&mut self) {
        let (Some(fleet), Events::Fleet(feed)) = (&mut self.fleet, &self.events) else {
            return;
        };
        // Set first: a look dropped half-way (the run's `select!` drops `next`) waits its
        // turn like any other.
        fleet.looked = tokio::time::Instant::now();
        fleet.look_at = fleet.looked + fleet.quiet;
        // Kept until recovered: a look dropped half-way waits for the same mark.
        let looked = match fleet.gone.clone() {
            Some(gone) => Ok(gone),
            None => fleet.publisher.missing(&fleet.job).await,
        };
        let gone = match looked {
            Ok(gone) if gone.gone.is_empty() => return,
            Ok(gone) => {
                fleet.gone = Some(gone.clone());
                gone
            }
            // NATS restarting, or a coordinator whose permissions predate the look: said,
            // and asked again in a minute rather than every quiet moment.
            Err(e) => {
                tracing::warn!("looking for tasks whose answers went missing: {e}");
                fleet.look_at = tokio::time::Instant::now() + BUSY;
                return;
            }
        };
        let read = feed.read_through() >= gone.through
            || fleet
                .publisher
                .event_dropped(gone.through)
                .await
                .unwrap_or(false);
        if read {
            fleet.gone = None;
            let failed = fleet.publisher.recover(gone).await;
            self.lost.extend(failed);
        }
    }

    /// No more tasks; waits for the embedded handlers to drain (or stops them). An
    /// interrupted fleet run's queued tasks are purged: nobody follows them any more.
    pub async fn close(self, interrupted: bool) {
        if let Some((_, watch)) = &self.unserved {
            watch.abort();
        }
        self.queue.close().await;
        if let (true, Some(Fleet { client, job, .. })) = (interrupted, &self.fleet)
            && let Err(e) = jetstream::purge_run(client.clone(), job).await
        {
            tracing::warn!("purging the interrupted run {job}: {e}");
        }
        if let Some((workers, stop)) = self.workers {
            if interrupted {
                // The tasks in hand are dropped, and this waits until they are.
                let _ = stop.send(());
                let _ = workers.await;
            } else {
                // The queue is closed and drained once every task has ended.
                let _ = workers.await;
            }
        }
    }
}

#[cfg(test)]
impl Bus {
    /// A bus whose worker is a test: it takes tasks from `queue` and sends `events`.
    pub(crate) fn fed_by(queue: Arc<MemoryQueue>, events: mpsc::UnboundedReceiver<Event>) -> Self {
        Self {
            queue,
            events: Events::Here(events),
            workers: None,
            unserved: None,
            fleet: None,
            lost: VecDeque::new(),
        }
    }
}

/// What [`Bus::next`] brings.
pub enum News {
    Event(Event),
    /// No event can come any more: `why`; `purge` when the run's queued tasks must go.
    Stopped {
        why: String,
        purge: bool,
    },
}

/// Tells `tx` once some kind of the run's tasks has had no worker pulling it for
/// `patience` in a row. Moments NATS cannot answer (it restarts) prove nothing either way.
async fn watch_unserved(queue: Arc<JetStreamQueue>, patience: Duration, tx: mpsc::Sender<String>) {
    let poll = (patience / 10).max(Duration::from_millis(200));
    let mut since: HashMap<jetstream::Lane, tokio::time::Instant> = HashMap::new();
    loop {
        tokio::time::sleep(poll).await;
        // The run is over (its bus dropped, even on an early return): nothing to watch.
        if tx.is_closed() {
            return;
        }
        let Ok(lanes) = queue.unserved().await else {
            // NATS cannot say (it restarts): the time without an answer proves nothing.
            since.clear();
            continue;
        };
        let now = tokio::time::Instant::now();
        since.retain(|l, _| lanes.contains(l));
        for lane in lanes {
            let first = *since.entry(lane).or_insert(now);
            if now.duration_since(first) >= patience {
                let _ = tx
                    .send(format!(
                        "no worker took this job's {} tasks for {}: start workers that take them ({})",
                        lane.name(),
                        humantime::format_duration(patience),
                        lane.how_to_take()
                    ))
                    .await;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests;
