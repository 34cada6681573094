//! The fleet backend: tasks on a JetStream work-queue stream, events on a second stream.
//!
//! | what | name | settings |
//! |---|---|---|
//! | task stream | `HANGAR_TASKS`, subjects `hangar.task.<kind>.<job>` | work-queue retention, file storage, 2 min duplicate window |
//! | task consumers | durable `hangar-<kind>`, one per kind, filter `hangar.task.<kind>.>` | pull, explicit ack, `ack_wait` 60 s, `max_deliver` 3 |
//! | event stream | `HANGAR_EVENTS`, subjects `hangar.event.<job>` | limits retention, file storage, 24 h max age |
//!
//! Everything is created idempotently at start (`get_or_create`). Each task is published
//! with `Nats-Msg-Id` = `<job>/<task id>`, so a re-publish inside the window is dropped by
//! the server. Workers hold a long task with `AckProgress`, nak with a delay, and report a
//! task failed for good once `max_deliver` deliveries are spent (the consumer would stop
//! redelivering it silently otherwise).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::pull, stream};
use async_trait::async_trait;
use futures_util::StreamExt;
use tokio::sync::{Mutex, mpsc};

use super::{Delivery, DeliveryHandle, EventSink, TaskQueue};
use crate::error::{Error, FailureClass, Result};
use crate::task::{Event, TaskEnvelope, TaskKind};

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

/// `hangar.task.<kind>.<job>`: the job in the subject lets a cancel purge just its tasks.
pub fn task_subject(kind: TaskKind, job: &str) -> String {
    format!("hangar.task.{}.{job}", kind.as_str())
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

pub fn event_subject(job: &str) -> String {
    format!("hangar.event.{job}")
}

/// How to reach NATS: `nats://host:port`, with optional user/password, token, creds file,
/// and TLS (a private CA to trust, a client certificate).
#[derive(Clone, Default)]
pub struct NatsOptions {
    pub url: String,
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    pub creds: Option<std::path::PathBuf>,
    pub require_tls: bool,
    /// PEM file of the CA(s) that signed the server's certificate. async-nats then trusts
    /// only these, not the system's roots.
    pub ca: Option<std::path::PathBuf>,
    /// PEM client certificate (chain) and its key, for servers that verify clients.
    pub tls_cert: Option<std::path::PathBuf>,
    pub tls_key: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for NatsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NatsOptions({})", redact_url(&self.url))
    }
}

/// A NATS URL fit for logs: any `user:password@` or `token@` part removed.
pub fn redact_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((_, host)) => format!("{scheme}://<redacted>@{host}"),
            None => url.to_owned(),
        },
        None => url
            .rsplit_once('@')
            .map(|(_, h)| format!("<redacted>@{h}"))
            .unwrap_or_else(|| url.to_owned()),
    }
}

pub async fn connect(opts: &NatsOptions) -> Result<async_nats::Client> {
    let mut o = async_nats::ConnectOptions::new()
        .name("hangar")
        // A permissions violation is only an -ERR line from the server (the refused request
        // itself just times out): log it, or a locked-down bus fails without saying why.
        .event_callback(|event| async move {
            match event {
                async_nats::Event::ServerError(e) => tracing::warn!("nats server: {e}"),
                async_nats::Event::ClientError(e) => tracing::warn!("nats client: {e}"),
                _ => {}
            }
        });
    if let (Some(u), Some(p)) = (&opts.user, &opts.password) {
        o = o
            .user_and_password(u.clone(), p.clone())
            .custom_inbox_prefix(inbox_prefix(u));
    }
    if let Some(t) = &opts.token {
        o = o.token(t.clone());
    }
    if let Some(c) = &opts.creds {
        o = o
            .credentials_file(c)
            .await
            .map_err(|e| Error::invalid(format!("NATS credentials file {}: {e}", c.display())))?;
    }
    // Bad TLS files would otherwise surface as an endless reconnect loop: check them here.
    if let Some(ca) = &opts.ca {
        check_pem(ca, "--nats-ca", "CERTIFICATE")?;
        o = o.add_root_certificates(ca.clone());
    }
    match (&opts.tls_cert, &opts.tls_key) {
        (Some(cert), Some(key)) => {
            check_pem(cert, "--nats-tls-cert", "CERTIFICATE")?;
            check_pem(key, "--nats-tls-key", "PRIVATE KEY")?;
            o = o.add_client_certificate(cert.clone(), key.clone());
        }
        (None, None) => {}
        _ => {
            return Err(Error::invalid(
                "--nats-tls-cert and --nats-tls-key go together",
            ));
        }
    }
    // Whoever names a CA or a client certificate means TLS: never fall back to plain text
    // (and send a password in it) because the server did not offer TLS.
    let require_tls = opts.require_tls || opts.ca.is_some() || opts.tls_cert.is_some();
    o = o
        .require_tls(require_tls)
        .retry_on_initial_connect()
        .max_reconnects(None);
    tokio::time::timeout(Duration::from_secs(15), o.connect(&opts.url))
        .await
        .map_err(|_| {
            bus(format!(
                "cannot connect to {} within 15 s",
                redact_url(&opts.url)
            ))
        })?
        .map_err(bus)
}

/// `_INBOX.<user>`: replies to a user's requests (JetStream API answers, KV reads) land
/// under its own prefix, so the server's permissions can let each identity subscribe to its
/// replies only (`_INBOX.worker.>`) instead of everyone's (`_INBOX.>`). Characters NATS
/// gives a meaning in subjects are replaced.
pub fn inbox_prefix(user: &str) -> String {
    let token: String = user
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("_INBOX.{token}")
}

/// `path` is readable and holds a PEM block of `kind` (a substring of its label, so
/// "PRIVATE KEY" accepts PKCS#8, RSA and EC keys).
fn check_pem(path: &std::path::Path, flag: &str, kind: &str) -> Result<()> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::invalid(format!("{flag} {}: {e}", path.display())))?;
    let found = text
        .lines()
        .any(|l| l.starts_with("-----BEGIN ") && l.contains(kind));
    if !found {
        return Err(Error::invalid(format!(
            "{flag} {}: no PEM {kind} in it",
            path.display()
        )));
    }
    Ok(())
}

/// Creates (or finds) both streams.
pub async fn ensure_streams(js: &jetstream::Context) -> Result<()> {
    js.get_or_create_stream(stream::Config {
        name: TASK_STREAM.into(),
        subjects: vec!["hangar.task.>".into()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .map_err(bus)?;
    js.get_or_create_stream(stream::Config {
        name: EVENT_STREAM.into(),
        subjects: vec!["hangar.event.>".into()],
        storage: stream::StorageType::File,
        max_age: Duration::from_secs(24 * 3600),
        ..Default::default()
    })
    .await
    .map_err(bus)?;
    Ok(())
}

use super::exhausted::{self, Sent, SentTasks};

pub struct JetStreamQueue {
    js: jetstream::Context,
    ack_wait: Duration,
    sent: SentTasks,
    /// Deliveries pulled by the per-kind fetchers, for `next`.
    incoming: Mutex<Option<mpsc::Receiver<Delivery>>>,
    fetchers: Vec<tokio::task::JoinHandle<()>>,
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
        let sent: SentTasks = Arc::default();
        let watcher = tokio::spawn(exhausted::watch(js.clone(), sent.clone(), start, delay));
        Ok(Self {
            js,
            ack_wait: ACK_WAIT,
            incoming: Mutex::new(None),
            fetchers: vec![watcher],
            sent,
        })
    }

    /// A consumer (a worker) pulling up to `concurrency[kind]` tasks of each kind at once.
    /// `ack_wait` applies when this call creates the consumers (the first worker does).
    pub async fn consumer(
        client: async_nats::Client,
        concurrency: &[(TaskKind, usize)],
        ack_wait: Duration,
    ) -> Result<Self> {
        let js = jetstream::new(client);
        ensure_streams(&js).await?;
        let total: usize = concurrency.iter().map(|(_, n)| n).sum();
        let (tx, rx) = mpsc::channel(total.max(1));
        let stream = js.get_stream(TASK_STREAM).await.map_err(bus)?;
        let mut fetchers = Vec::new();
        let mut effective_ack_wait = ack_wait;
        for (kind, n) in concurrency.iter().copied().filter(|(_, n)| *n > 0) {
            let name = format!("hangar-{}", kind.as_str());
            let consumer: jetstream::consumer::PullConsumer = stream
                .get_or_create_consumer(
                    &name,
                    pull::Config {
                        durable_name: Some(name.clone()),
                        filter_subject: format!("hangar.task.{}.>", kind.as_str()),
                        ack_policy: jetstream::consumer::AckPolicy::Explicit,
                        ack_wait,
                        max_deliver: MAX_DELIVER as i64,
                        ..Default::default()
                    },
                )
                .await
                .map_err(bus)?;
            // The consumer may predate this worker: its own ack_wait is what counts.
            effective_ack_wait = effective_ack_wait.min(consumer.cached_info().config.ack_wait);
            fetchers.push(tokio::spawn(fetch_loop(consumer, n, tx.clone())));
        }
        Ok(Self {
            js,
            ack_wait: effective_ack_wait,
            incoming: Mutex::new(Some(rx)),
            fetchers,
            sent: Arc::default(),
        })
    }
}

impl JetStreamQueue {
    /// Per kind: tasks waiting in the stream, and tasks delivered but not yet acked.
    pub async fn pending(&self) -> Result<Vec<(TaskKind, u64, u64)>> {
        let stream = self.js.get_stream(TASK_STREAM).await.map_err(bus)?;
        let mut out = Vec::new();
        for kind in KINDS {
            if let Ok(info) = stream
                .consumer_info(format!("hangar-{}", kind.as_str()))
                .await
            {
                out.push((kind, info.num_pending, info.num_ack_pending as u64));
            }
        }
        Ok(out)
    }
}

impl Drop for JetStreamQueue {
    fn drop(&mut self) {
        for f in &self.fetchers {
            f.abort();
        }
    }
}

/// Pulls as many messages as there are free slots, in one request, and hands them on;
/// stops when nobody listens. A slot is freed when its delivery is settled.
async fn fetch_loop(
    consumer: jetstream::consumer::PullConsumer,
    slots: usize,
    tx: mpsc::Sender<Delivery>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(slots));
    loop {
        let Ok(first) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut permits = vec![first];
        while let Ok(p) = slots.clone().try_acquire_owned() {
            permits.push(p);
        }
        let batch = consumer
            .fetch()
            .max_messages(permits.len())
            .expires(Duration::from_secs(5))
            .messages()
            .await;
        let mut batch = match batch {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!("pulling tasks: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        while let Some(msg) = batch.next().await {
            let Ok(msg) = msg else { continue };
            let attempt = msg.info().map(|i| i.delivered.max(1) as u32).unwrap_or(1);
            let mut task: TaskEnvelope = match serde_json::from_slice(&msg.payload) {
                Ok(t) => t,
                Err(e) => {
                    // A message we cannot read will never become readable: end it.
                    tracing::error!("dropping unreadable task message: {e}");
                    let _ = msg.ack_with(AckKind::Term).await;
                    continue;
                }
            };
            task.trace = msg
                .headers
                .as_ref()
                .and_then(|h| h.get(TRACEPARENT_HEADER))
                .map(|v| v.as_str().to_owned());
            let Some(permit) = permits.pop() else { break };
            let handle = Box::new(JsHandle {
                msg,
                _permit: permit,
            });
            if tx.send(Delivery::new(task, attempt, handle)).await.is_err() {
                return;
            }
        }
    }
}

struct JsHandle {
    msg: jetstream::Message,
    /// Frees a fetch slot when the delivery is settled.
    _permit: tokio::sync::OwnedSemaphorePermit,
}

#[async_trait]
impl DeliveryHandle for JsHandle {
    async fn ack(self: Box<Self>) -> Result<()> {
        self.msg.double_ack().await.map_err(bus)
    }

    async fn nak(
        self: Box<Self>,
        _task: TaskEnvelope,
        _attempt: u32,
        delay: Duration,
    ) -> Result<()> {
        self.msg
            .ack_with(AckKind::Nak(Some(delay)))
            .await
            .map_err(bus)
    }

    async fn in_progress(&self) -> Result<()> {
        self.msg.ack_with(AckKind::Progress).await.map_err(bus)
    }
}

#[async_trait]
impl TaskQueue for JetStreamQueue {
    async fn publish(&self, mut task: TaskEnvelope) -> Result<()> {
        // The trace context travels as a header, where NATS tooling and other services look.
        let trace = task.trace.take();
        let payload = serde_json::to_vec(&task).map_err(|e| Error::internal(e.to_string()))?;
        let mut publish = jetstream::message::PublishMessage::build()
            .payload(payload.into())
            .message_id(format!("{}/{}", task.job, task.id));
        if let Some(trace) = trace {
            publish = publish.header(TRACEPARENT_HEADER, trace.as_str());
        }
        // A server restart is survived: the client reconnects and the same message id
        // makes a repeated publish harmless.
        let mut delay = Duration::from_millis(100);
        let deadline = tokio::time::Instant::now() + PUBLISH_PATIENCE;
        loop {
            let attempt = async {
                self.js
                    .send_publish(task_subject(task.task.kind(), &task.job), publish.clone())
                    .await
                    .map_err(bus)?
                    .await
                    .map_err(bus)
            };
            match attempt.await {
                Ok(ack) => {
                    if let Ok(mut sent) = self.sent.lock() {
                        sent.insert(
                            ack.sequence,
                            Sent {
                                job: task.job.clone(),
                                id: task.id,
                            },
                        );
                    }
                    return Ok(());
                }
                Err(e) if tokio::time::Instant::now() + delay > deadline => return Err(e),
                Err(e) => {
                    tracing::warn!("publishing task {}: {e}; retrying in {delay:?}", task.key);
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn next(&self) -> Option<Delivery> {
        let mut guard = self.incoming.lock().await;
        guard.as_mut()?.recv().await
    }

    /// Stops pulling and hands back at once what was pulled but not started, so a worker
    /// restart does not leave those tasks waiting out `ack_wait`.
    async fn close(&self) {
        for f in &self.fetchers {
            f.abort();
        }
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

/// Publishes events to `hangar.event.<job>`, waiting for the stream's ack (retrying
/// through a short NATS outage) before the caller may ack the task.
pub struct JetStreamSink {
    js: jetstream::Context,
}

impl JetStreamSink {
    pub fn new(client: async_nats::Client) -> Self {
        Self {
            js: jetstream::new(client),
        }
    }
}

#[async_trait]
impl EventSink for JetStreamSink {
    /// One publish, its ack not awaited: a lost notice costs a line of the job's view.
    async fn notify(&self, event: Event) {
        if let Ok(payload) = serde_json::to_vec(&event) {
            let _ = self
                .js
                .publish(event_subject(&event.job), payload.into())
                .await;
        }
    }

    async fn emit(&self, event: Event) -> Result<()> {
        let payload = serde_json::to_vec(&event).map_err(|e| Error::internal(e.to_string()))?;
        let deadline = tokio::time::Instant::now() + PUBLISH_PATIENCE;
        let mut delay = Duration::from_millis(100);
        loop {
            let sent = async {
                self.js
                    .publish(event_subject(&event.job), payload.clone().into())
                    .await
                    .map_err(bus)?
                    .await
                    .map_err(bus)
            };
            match sent.await {
                Ok(_) => return Ok(()),
                Err(e) if tokio::time::Instant::now() + delay > deadline => return Err(e),
                Err(_) => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

/// Follows a job's events from the start of the stream into a channel.
pub async fn follow_events(
    client: async_nats::Client,
    job: &str,
) -> Result<mpsc::UnboundedReceiver<Event>> {
    let js = jetstream::new(client);
    ensure_streams(&js).await?;
    let stream = js.get_stream(EVENT_STREAM).await.map_err(bus)?;
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: event_subject(job),
            ..Default::default()
        })
        .await
        .map_err(bus)?;
    let mut messages = consumer.messages().await.map_err(bus)?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(msg) = messages.next().await {
            let Ok(msg) = msg else { continue };
            if let Ok(event) = serde_json::from_slice::<Event>(&msg.payload)
                && tx.send(event).is_err()
            {
                return;
            }
        }
    });
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_credentials_in_logs() {
        assert_eq!(
            redact_url("nats://user:pw@10.0.0.1:4222"),
            "nats://<redacted>@10.0.0.1:4222"
        );
        assert_eq!(
            redact_url("tls://s3cr3t@nats:4222"),
            "tls://<redacted>@nats:4222"
        );
        assert_eq!(redact_url("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
        let o = NatsOptions {
            url: "nats://a:b@h:1".into(),
            password: Some("b".into()),
            ..Default::default()
        };
        assert!(!format!("{o:?}").contains(":b@"));
    }

    #[test]
    fn inboxes_are_per_user_and_subject_safe() {
        assert_eq!(inbox_prefix("worker"), "_INBOX.worker");
        assert_eq!(inbox_prefix("a.b *>c"), "_INBOX.a_b___c");
    }

    #[tokio::test]
    async fn tls_files_are_checked_before_connecting() {
        let dir = std::env::temp_dir().join(format!("hangar-nats-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let not_pem = dir.join("not.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        let url = "nats://127.0.0.1:1".to_owned();
        let cases = [
            (
                NatsOptions {
                    url: url.clone(),
                    ca: Some(dir.join("missing.pem")),
                    ..Default::default()
                },
                "--nats-ca",
            ),
            (
                NatsOptions {
                    url: url.clone(),
                    ca: Some(not_pem.clone()),
                    ..Default::default()
                },
                "no PEM CERTIFICATE",
            ),
            (
                NatsOptions {
                    url: url.clone(),
                    tls_cert: Some(not_pem.clone()),
                    ..Default::default()
                },
                "go together",
            ),
        ];
        for (opts, want) in cases {
            let e = connect(&opts).await.unwrap_err();
            assert_eq!(e.class, FailureClass::InvalidInput, "{e}");
            assert!(e.message.contains(want), "{e}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
