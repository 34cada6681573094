//! The worker loop: pull a task, run its handler, report an event, then ack, or nak with
//! backoff while the failure is transient and deliveries remain.

use std::sync::Arc;

use futures_util::FutureExt;
use tracing::Instrument;

use hangar_shared::error::{Error, FailureClass, Result};
use hangar_shared::queue::{EventSink, TaskQueue};
use hangar_shared::task::{Event, EventKind, Outcome, Task};

use crate::{Context, assemble, blob, check, index, manifest, scan, sign};

pub async fn handle(ctx: &Context, task: &Task) -> Result<Outcome> {
    let work = async {
        match task {
            Task::Blob(t) => blob::copy(ctx, t).await,
            Task::Manifest(t) => manifest::push(ctx, t).await,
            Task::Index(t) => index::write(ctx, t).await,
            Task::Assemble(t) => assemble::write(ctx, t).await,
            Task::Sign(t) => sign::sign(ctx, t).await,
            Task::Scan(t) => scan::scan(ctx, t).await,
            Task::Check(t) => check::check(ctx, t).await,
        }
    };
    let work = hangar_shared::ratelimit::one_task(work);
    match ctx.task_timeout {
        Some(limit) => tokio::time::timeout(limit, work).await.unwrap_or_else(|_| {
            Err(Error::new(
                FailureClass::Network,
                format!("{} task timed out after {limit:?}", task.kind().as_str()),
            ))
        }),
        None => work.await,
    }
}

/// Runs `concurrency` consumers until the queue is closed and drained, or until `stop` is
/// sent (its sender dropped unsent stops nothing): then every task in hand is dropped and
/// handed back to the queue at once — another worker takes it now, not once its lease
/// (`ack_wait`) runs out — and this returns once all of them are (what they leave to end,
/// an upload's DELETE, is on its way by then).
pub async fn run(
    queue: Arc<dyn TaskQueue>,
    events: Arc<dyn EventSink>,
    ctx: Arc<Context>,
    concurrency: usize,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let (give_back, given_back) = tokio::sync::watch::channel(false);
    let mut consumers = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (queue, events, ctx) = (queue.clone(), events.clone(), ctx.clone());
        let mut give_back = given_back.clone();
        consumers.spawn(async move {
            loop {
                // Stopping first: a worker that stops takes no new task.
                let delivery = tokio::select! {
                    biased;
                    _ = stopping(&mut give_back) => None,
                    d = queue.next() => d,
                };
                let Some(delivery) = delivery else { return };
                let span = tracing::info_span!(
                    "task",
                    otel.name = %format!("{} task", delivery.task.task.kind().as_str()),
                    job = %delivery.task.job,
                    key = %delivery.task.key,
                    attempt = delivery.attempt,
                    otel.status_code = tracing::field::Empty,
                    otel.status_message = tracing::field::Empty,
                );
                hangar_shared::telemetry::adopt(&span, delivery.task.trace.as_deref());
                process(&*queue, &events, &ctx, delivery, give_back.clone())
                    .instrument(span)
                    .await;
            }
        });
    }
    loop {
        tokio::select! {
            joined = consumers.join_next() => {
                if joined.is_none() {
                    return;
                }
            }
            Ok(()) = &mut stop => break,
        }
    }
    let _ = give_back.send(true);
    // Handing back is one message per task; a consumer that cannot (NATS gone) is not
    // waited for: its task comes back once its lease runs out.
    let handed_back = async { while consumers.join_next().await.is_some() {} };
    if tokio::time::timeout(HAND_BACK_WAIT, handed_back)
        .await
        .is_err()
    {
        consumers.shutdown().await;
    }
}

/// Resolves once the worker stops. (`wait_for`'s guard is not `Send`: it must not be
/// held by the consumers' futures.)
async fn stopping(give_back: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = give_back.wait_for(|stop| *stop).await;
}

/// How long a stopping worker waits for the tasks in hand to be handed back.
const HAND_BACK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// One delivery, start to settlement, inside its task span.
async fn process(
    queue: &dyn TaskQueue,
    events: &Arc<dyn EventSink>,
    ctx: &Context,
    delivery: hangar_shared::queue::Delivery,
    mut give_back: tokio::sync::watch::Receiver<bool>,
) {
    let started = std::time::Instant::now();
    events
        .notify(Event::started(&delivery.task, &ctx.name, delivery.attempt))
        .await;
    // What the handler waits on goes to the job's view as it happens.
    let waiting = {
        let env = &delivery.task;
        let (events, job, task, nonce) = (events.clone(), env.job.clone(), env.id, env.nonce);
        move |on: String| {
            let (events, job) = (events.clone(), job.clone());
            tokio::spawn(async move {
                events
                    .notify(Event {
                        job,
                        task,
                        nonce,
                        kind: EventKind::Waiting { on },
                    })
                    .await;
            });
        }
    };
    tracing::debug!(
        kind = delivery.task.task.kind().as_str(),
        key = %delivery.task.key,
        attempt = delivery.attempt,
        "task started"
    );
    let result = {
        // A panicking handler must still end in an event, or its image waits forever.
        let (mut watch, task_progress) = crate::progress::Watch::new();
        let work = std::panic::AssertUnwindSafe(crate::progress::scope(
            task_progress,
            waiting,
            handle(ctx, &delivery.task.task),
        ))
        .catch_unwind()
        .map(|r| r.unwrap_or_else(|_| Err(Error::internal("the task handler panicked"))));
        tokio::pin!(work);
        // Long copies tell the queue they are alive, so it does not redeliver them — unless
        // a copy has stopped moving bytes, when it is given up for another delivery.
        let mut heartbeat = tokio::time::interval(queue.heartbeat());
        heartbeat.tick().await;
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
        let stall = match delivery.task.task {
            Task::Blob(_) => ctx.stall_after,
            _ => None,
        };
        let result = loop {
            // The work first: a task that finished as the worker stopped is reported.
            tokio::select! {
                biased;
                r = &mut work => break Some(r),
                _ = stopping(&mut give_back) => break None,
                _ = tick.tick() => {
                    watch.drain(ctx);
                    if let Some(limit) = stall
                        && watch.stalled(limit)
                    {
                        break Some(Err(Error::new(
                            FailureClass::Network,
                            format!(
                                "no byte moved for {}s (--stall-timeout): given up for another delivery",
                                limit.as_secs()
                            ),
                        )));
                    }
                }
                _ = heartbeat.tick() => {
                    if let Err(e) = delivery.in_progress().await {
                        tracing::warn!("heartbeat for task {}: {e}", delivery.task.key);
                    }
                }
            }
        };
        watch.drain(ctx);
        result
    };
    let Some(result) = result else {
        // The worker is stopping: the handler is dropped (its upload ended) and the task
        // goes back to the queue with no failure of its own reported.
        let key = delivery.task.key.clone();
        match delivery.nak(std::time::Duration::ZERO).await {
            Ok(()) => tracing::info!(%key, "stopping: task handed back"),
            Err(e) => {
                tracing::warn!(%key, "stopping: task not handed back ({e}); it comes back once its lease runs out")
            }
        }
        return;
    };
    tracing::debug!(
        kind = delivery.task.task.kind().as_str(),
        key = %delivery.task.key,
        attempt = delivery.attempt,
        ms = started.elapsed().as_millis() as u64,
        ok = result.is_ok(),
        "task finished"
    );
    if let Some(m) = &ctx.metrics {
        let seconds = started.elapsed().as_secs_f64();
        let kind = delivery.task.task.kind();
        match &result {
            Ok(outcome) => m.observe(kind, seconds, Ok(outcome), ctx.cache.is_some()),
            Err(e) => {
                let last = !e.class.is_retryable() || delivery.attempt >= queue.max_deliver();
                m.observe(kind, seconds, Err((e.class, last)), ctx.cache.is_some());
            }
        }
    }
    if let Err(e) = &result {
        let span = tracing::Span::current();
        span.record("otel.status_code", "ERROR");
        span.record("otel.status_message", e.to_string());
    }
    let (event, last, delay) = match &result {
        Ok(outcome) => (Event::done(&delivery.task, outcome.clone()), true, None),
        Err(err) => {
            let last = !err.class.is_retryable() || delivery.attempt >= queue.max_deliver();
            let delay = ctx.retry.delay(delivery.attempt, err.retry_after);
            (
                Event::failed(&delivery.task, err, delivery.attempt, last),
                last,
                Some(delay),
            )
        }
    };
    // Ack only once the outcome is stored; if it cannot be, the task comes back.
    let settled = match (events.emit(event).await, last) {
        (Ok(()), true) => delivery.ack().await,
        (Ok(()), false) => delivery.nak(delay.unwrap_or_default()).await,
        (Err(e), _) => {
            tracing::warn!(
                "cannot report task {}: {e}; handing it back",
                delivery.task.key
            );
            delivery.nak(std::time::Duration::from_secs(1)).await
        }
    };
    if let Err(e) = settled {
        tracing::warn!("cannot settle a delivery: {e}");
    }
}
