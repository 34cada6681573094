//! The fleet backend: tasks on a JetStream work-queue stream, events on a second stream.
//!
//! | what | name | settings |
//! |---|---|---|
//! | task stream | `HANGAR_TASKS`, subjects `hangar.task.<lane>.<job>` | work-queue retention, file storage, 7 day max age, 2 min duplicate window |
//! | task consumers | durable `hangar-<lane>`, one per lane, filter `hangar.task.<lane>.>` | pull, explicit ack, `ack_wait` 60 s, `max_deliver` 3 |
//! | event stream | `HANGAR_EVENTS`, subjects `hangar.event.<job>` | limits retention, file storage, 24 h max age, 512 MiB, 1 MiB per event |
//!
//! A lane is a task kind, and for blobs a second one for the quick blob tasks (`lane.rs`).
//!
//! Everything is created idempotently at start (`get_or_create`). Each task is published
//! with `Nats-Msg-Id` = `<job>/<task id>`, so a re-publish inside the window is dropped by
//! the server. Workers hold a long task with `AckProgress`, nak with a delay, and report a
//! task failed for good once `max_deliver` deliveries are spent (the consumer would stop
//! redelivering it silently otherwise).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, stream};
use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{Mutex, mpsc};

use super::{Delivery, TaskQueue};
use crate::error::{Error, FailureClass, Result};
use crate::task::{TaskEnvelope, TaskKind};

mod connect;
mod events;
mod fetch;
mod lane;
pub mod ledger;
pub mod storage;
pub mod unserved;

pub use connect::{NatsOptions, connect, inbox_prefix, redact_url};
pub use events::{EventFeed, JetStreamSink, follow_events};
pub use fetch::PULL_EXPIRES;
pub use lane::{Lane, QUICK_BLOB_SLOTS};

pub const TASK_STREAM: &str = "HANGAR_TASKS";
pub const EVENT_STREAM: &str = "HANGAR_EVENTS";
pub const MAX_DELIVER: u32 = 3;
pub const ACK_WAIT: Duration = Duration::from_secs(60);
/// W3C trace context of the job a task belongs to.
const TRACEPARENT_HEADER: &str = "traceparent";

/// How long a publish keeps trying through a NATS outage before the job gives up.
pub const PUBLISH_PATIENCE: Duration = Duration::from_secs(60);
pub const KINDS: [TaskKind; 7] = [
    TaskKind::Blob,
    TaskKind::Manifest,
    TaskKind::Index,
    TaskKind::Assemble,
    TaskKind::Sign,
    TaskKind::Scan,
    TaskKind::Check,
];

fn bus(e: impl std::fmt::Display) -> Error {
    Error::new(FailureClass::Network, format!("nats: {e}"))
}

/// Room kept in a message for its headers (message id, trace context).
const HEADER_ROOM: usize = 1024;

/// Refuses, at once and for good, a message the server would not take: `what` is `len`
/// bytes and the server carries at most `max_payload` in one message. Retrying it would only
/// wait out [`PUBLISH_PATIENCE`] and then fail the whole job.
fn fits(js: &jetstream::Context, what: &str, len: usize) -> Result<()> {
    let max = js.client().server_info().max_payload;
    if max == 0 || len + HEADER_ROOM <= max {
        return Ok(());
    }
    Err(Error::new(
        FailureClass::InvalidInput,
        format!(
            "{what} is {len} bytes, more than NATS carries in one message (max_payload {max}): \
             raise max_payload on the NATS server, or run this without the fleet"
        ),
    ))
}

/// `hangar.task.<lane>.<job>`: the job in the subject lets a cancel purge just its tasks.
pub fn task_subject(lane: Lane, job: &str) -> String {
    format!("hangar.task.{}.{job}", lane.name())
}

/// Drops every queued task of every run of `job` (a cancelled job); task subjects are
/// `hangar.task.<kind>.<job>.<run>`.
pub async fn purge_job(client: async_nats::Client, job: &str) -> Result<u64> {
    let js = jetstream::new(client);
    let stream = js.get_stream(TASK_STREAM).await.map_err(bus)?;
    let purged = stream
        .purge()
        .filter(format!("hangar.task.*.{job}.*"))
        .await
        .map_err(bus)?;
    Ok(purged.purged)
}

/// Drops the queued tasks of one run (`<job>.<run>`, or a job id of its own): an
/// interrupted run's, which nobody follows any more.
pub async fn purge_run(client: async_nats::Client, run: &str) -> Result<u64> {
    let js = jetstream::new(client);
    let stream = js.get_stream(TASK_STREAM).await.map_err(bus)?;
    let purged = stream
        .purge()
        .filter(format!("hangar.task.*.{run}"))
        .await
        .map_err(bus)?;
    Ok(purged.purged)
}

pub fn event_subject(job: &str) -> String {
    format!("hangar.event.{job}")
}

/// Creates (or finds) both streams, and before them the buckets workers share: a worker
/// that finds the streams finds the buckets ([`storage`]).
pub async fn ensure_streams(js: &jetstream::Context) -> Result<()> {
    storage::bucket(js, storage::lease_bucket()).await?;
    storage::bucket(js, storage::rate_bucket()).await?;
    js.get_or_create_stream(stream::Config {
        name: TASK_STREAM.into(),
        subjects: vec!["hangar.task.>".into()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        max_age: storage::TASKS_MAX_AGE,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .map_err(bus)?;
    js.get_or_create_stream(storage::events_stream())
        .await
        .map_err(bus)?;
    Ok(())
}

use super::exhausted;
use ledger::Sent;

pub struct JetStreamQueue {
    js: jetstream::Context,
    ack_wait: Duration,
    /// What this publisher sent and has had no answer for ([`ledger`]).
    sent: ledger::SentTasks,
    /// The lanes and runs of the tasks this publisher sent, for [`Self::unserved`].
    kinds: std::sync::Mutex<std::collections::BTreeSet<(Lane, String)>>,
    /// Deliveries pulled by the per-kind fetchers, for `next`.
    incoming: Mutex<Option<mpsc::Receiver<Delivery>>>,
    /// The publisher's advisory watcher; ended with the queue.
    watcher: Option<tokio::task::JoinHandle<()>>,
    /// A worker's per-lane fetch loops ([`fetch`]); they end on `stop`.
    fetchers: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl JetStreamQueue {
    /// A publisher only (the coordinator). Every task it publishes ends in an event: a
    /// task whose deliveries ran out without an answer (its workers died or hung) is
    /// reported failed for good from the server's max-deliveries advisory, kept in a stream
    /// so that one sent while this process was away is not lost ([`exhausted`]).
    pub async fn publisher(client: async_nats::Client) -> Result<Self> {
        Self::publisher_reading_advisories_after(client, Duration::ZERO).await
    }

    /// [`Self::publisher`] that starts reading advisories only after `delay` (from where
    /// it started all the same): for tests of advisories sent while nobody read.
    pub async fn publisher_reading_advisories_after(
        client: async_nats::Client,
        delay: Duration,
    ) -> Result<Self> {
        let js = jetstream::new(client);
        ensure_streams(&js).await?;
        let start = exhausted::ensure_stream(&js).await?;
        storage::bring_to_bounds(&js).await;
        let sent: ledger::SentTasks = Arc::default();
        let watcher = tokio::spawn(exhausted::watch(js.clone(), sent.clone(), start, delay));
        Ok(Self {
            js,
            ack_wait: ACK_WAIT,
            incoming: Mutex::new(None),
            watcher: Some(watcher),
            fetchers: Default::default(),
            stop: tokio::sync::watch::Sender::new(false),
            sent,
            kinds: Default::default(),
        })
    }

    /// A consumer (a worker) pulling up to `concurrency[kind]` tasks of each kind at once,
    /// and quick blob tasks in their own lane ([`Lane::for_worker`]). `ack_wait` applies
    /// when this call creates the consumers (the first worker does).
    pub async fn consumer(
        client: async_nats::Client,
        concurrency: &[(TaskKind, usize)],
        ack_wait: Duration,
    ) -> Result<Self> {
        let js = jetstream::new(client);
        ensure_streams(&js).await?;
        let lanes = Lane::for_worker(concurrency);
        let total: usize = lanes.iter().map(|(_, n)| n).sum();
        let (tx, rx) = mpsc::channel(total.max(1));
        let stream = js.get_stream(TASK_STREAM).await.map_err(bus)?;
        let stop = tokio::sync::watch::Sender::new(false);
        let mut fetchers = Vec::new();
        let mut effective_ack_wait = ack_wait;
        for (lane, n) in lanes {
            let name = lane.consumer();
            let mut source = fetch::LaneConsumer {
                stream: stream.clone(),
                config: pull::Config {
                    durable_name: Some(name.clone()),
                    filter_subject: format!("hangar.task.{}.>", lane.name()),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait,
                    max_deliver: MAX_DELIVER as i64,
                    ..Default::default()
                },
            };
            let consumer = source.get().await?;
            // The consumer may predate this worker: its own ack_wait is what counts, and
            // what it is made again with (the other workers' heartbeats keep to it).
            let lane_ack_wait = consumer.cached_info().config.ack_wait;
            source.config.ack_wait = lane_ack_wait;
            effective_ack_wait = effective_ack_wait.min(lane_ack_wait);
            fetchers.push(tokio::spawn(fetch::fetch_loop(
                source,
                consumer,
                n,
                tx.clone(),
                stop.subscribe(),
            )));
        }
        Ok(Self {
            js,
            ack_wait: effective_ack_wait,
            incoming: Mutex::new(Some(rx)),
            watcher: None,
            fetchers: std::sync::Mutex::new(fetchers),
            stop,
            sent: Arc::default(),
            kinds: Default::default(),
        })
    }
}

impl JetStreamQueue {
    /// Publishes `publish` on `subject` and gives its sequence in the task stream. A server
    /// restart is survived: the client reconnects and the same message id makes a repeated
    /// publish harmless.
    async fn send(
        &self,
        subject: String,
        publish: jetstream::message::PublishMessage,
        key: &str,
    ) -> Result<u64> {
        let mut delay = Duration::from_millis(100);
        let deadline = tokio::time::Instant::now() + PUBLISH_PATIENCE;
        loop {
            let attempt = async {
                self.js
                    .send_publish(subject.clone(), publish.clone())
                    .await
                    .map_err(bus)?
                    .await
                    .map_err(bus)
            };
            match attempt.await {
                Ok(ack) => return Ok(ack.sequence),
                Err(e) if tokio::time::Instant::now() + delay > deadline => return Err(e),
                Err(e) => {
                    tracing::warn!("publishing task {key}: {e}; retrying in {delay:?}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// The lanes of the tasks this publisher sent that no worker pulls now
    /// ([`unserved::lanes`]).
    pub async fn unserved(&self) -> Result<Vec<Lane>> {
        let sent: Vec<(Lane, String)> = match self.kinds.lock() {
            Ok(k) => k.iter().cloned().collect(),
            Err(_) => Vec::new(),
        };
        unserved::lanes(&self.js, &sent).await
    }

    /// Per kind (its lanes together): tasks waiting in the stream, and tasks delivered but
    /// not yet acked.
    pub async fn pending(&self) -> Result<Vec<(TaskKind, u64, u64)>> {
        let stream = self.js.get_stream(TASK_STREAM).await.map_err(bus)?;
        let mut out: Vec<(TaskKind, u64, u64)> = Vec::new();
        for lane in Lane::all() {
            if let Ok(info) = stream.consumer_info(lane.consumer()).await {
                let (pending, unacked) = (info.num_pending, info.num_ack_pending as u64);
                match out.iter_mut().find(|(k, _, _)| *k == lane.kind) {
                    Some((_, p, u)) => {
                        *p += pending;
                        *u += unacked;
                    }
                    None => out.push((lane.kind, pending, unacked)),
                }
            }
        }
        Ok(out)
    }
}

impl JetStreamQueue {
    /// A worker's last words on the bus: the queue closed (a second close changes nothing),
    /// its fetch loops read out, handing back what arrives there, and the hand-backs, which
    /// are published but not yet written, flushed before the process ends.
    pub async fn leave(&self) {
        self.close().await;
        self.drained(PULL_EXPIRES + Duration::from_secs(1)).await;
        let client = self.js.client();
        let flushed = tokio::time::timeout(Duration::from_secs(2), client.flush()).await;
        if flushed.map_or(true, |f| f.is_err()) {
            tracing::warn!(
                "NATS did not take the last messages; their tasks come back once their leases run out"
            );
        }
    }

    /// Waits, `within` at most, for the fetch loops a [`TaskQueue::close`] stopped to read
    /// their last requests to the end (a [`PULL_EXPIRES`] at most): what arrives there is
    /// handed back before the process goes. What is left then is ended.
    async fn drained(&self, within: Duration) {
        let fetchers = match self.fetchers.lock() {
            Ok(mut f) => std::mem::take(&mut *f),
            Err(_) => return,
        };
        let aborts: Vec<_> = fetchers.iter().map(|f| f.abort_handle()).collect();
        let all = futures_util::future::join_all(fetchers);
        if tokio::time::timeout(within, all).await.is_err() {
            aborts.iter().for_each(|a| a.abort());
        }
    }
}

impl Drop for JetStreamQueue {
    fn drop(&mut self) {
        if let Some(w) = &self.watcher {
            w.abort();
        }
        if let Ok(fetchers) = self.fetchers.lock() {
            fetchers.iter().for_each(|f| f.abort());
        }
    }
}

#[async_trait]
impl TaskQueue for JetStreamQueue {
    async fn publish(&self, mut task: TaskEnvelope) -> Result<()> {
        if let Ok(mut kinds) = self.kinds.lock() {
            kinds.insert((Lane::of(&task.task), task.job.clone()));
        }
        // The trace context travels as a header, where NATS tooling and other services look.
        let trace = task.trace.take();
        let payload = serde_json::to_vec(&task).map_err(|e| Error::internal(e.to_string()))?;
        fits(&self.js, &format!("task {}", task.key), payload.len())?;
        let payload = Bytes::from(payload);
        let mut publish = jetstream::message::PublishMessage::build()
            .payload(payload.clone())
            .message_id(format!("{}/{}", task.job, task.id));
        if let Some(trace) = &trace {
            publish = publish.header(TRACEPARENT_HEADER, trace.as_str());
        }
        let subject = task_subject(Lane::of(&task.task), &task.job);
        let seq = self.send(subject.clone(), publish, &task.key).await?;
        if let Ok(mut sent) = self.sent.lock() {
            sent.insert(
                seq,
                Sent {
                    job: task.job.clone(),
                    id: task.id,
                    nonce: task.nonce,
                    subject,
                    payload,
                    trace,
                    again: 0,
                    exhausted: None,
                },
            );
        }
        Ok(())
    }

    /// `None` once the queue is closed: a stopping worker takes no new task (`close` hands
    /// back what is left), and no consumer waits on the lock `close` needs.
    async fn next(&self) -> Option<Delivery> {
        let mut stop = self.stop.subscribe();
        let mut guard = tokio::select! {
            biased;
            _ = fetch::stopped(&mut stop) => return None,
            guard = self.incoming.lock() => guard,
        };
        let incoming = guard.as_mut()?;
        tokio::select! {
            biased;
            _ = fetch::stopped(&mut stop) => None,
            delivery = incoming.recv() => delivery,
        }
    }

    /// Stops pulling and hands back at once what was pulled but not started (and, as the
    /// fetch loops read their last requests out, what still arrives: [`fetch`]), so a
    /// worker restart does not leave those tasks waiting out `ack_wait`.
    async fn close(&self) {
        if let Some(w) = &self.watcher {
            w.abort();
        }
        self.stop.send_replace(true);
        if let Some(mut rx) = self.incoming.lock().await.take() {
            rx.close();
            while let Ok(d) = rx.try_recv() {
                let _ = d.nak(Duration::ZERO).await;
            }
        }
    }

    fn max_deliver(&self) -> u32 {
        MAX_DELIVER
    }

    /// A third of `ack_wait`: two heartbeats may be lost before a task is redelivered.
    fn heartbeat(&self) -> Duration {
        (self.ack_wait / 3).max(Duration::from_millis(200))
    }
}
