//! A worker's pulling: one loop per lane asks for as many messages as it has free slots, in
//! one request, and hands them to the worker's consumers. A stopping worker stops asking
//! and reads its last request to its end, handing back (a nak with no delay) what arrives:
//! a message the server sent to a request nobody reads any more would wait out its
//! `ack_wait` before another worker could take it.
//!
//! A request the server refuses (its consumer deleted, JetStream not yet up after a restart)
//! is answered at once; asked again at once, a worker would spin thousands of requests a
//! second at a consumer that is gone. It waits, longer each time, and makes the consumer
//! again before it asks.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer, consumer::pull};
use async_trait::async_trait;
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};

use super::super::{Delivery, DeliveryHandle};
use super::{TRACEPARENT_HEADER, bus};
use crate::error::Result;
use crate::task::TaskEnvelope;

/// How long one pull request waits for messages: also the longest a stopping worker reads
/// its last request on.
pub const PULL_EXPIRES: Duration = Duration::from_secs(2);

/// The first pause after a refused request, and the longest: a worker refused for long
/// asks as often as an idle one, whose requests wait [`PULL_EXPIRES`] for a message.
const RETRY_FIRST: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = PULL_EXPIRES;

/// A lane's durable consumer, as the worker makes it (or finds it) again.
pub(super) struct LaneConsumer {
    pub stream: jetstream::stream::Stream,
    pub config: pull::Config,
}

impl LaneConsumer {
    pub async fn get(&self) -> Result<PullConsumer> {
        let name = self.config.durable_name.clone().unwrap_or_default();
        self.stream
            .get_or_create_consumer(&name, self.config.clone())
            .await
            .map_err(bus)
    }
}

/// Pulls as many messages as there are free slots, in one request, and hands them on,
/// until `stop` (or nobody listens). A slot is freed when its delivery is settled.
pub(super) async fn fetch_loop(
    source: LaneConsumer,
    mut consumer: PullConsumer,
    slots: usize,
    tx: mpsc::Sender<Delivery>,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(slots));
    let mut retry = RETRY_FIRST;
    loop {
        let first = tokio::select! {
            biased;
            _ = stopped(&mut stop) => return,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let mut permits = vec![first];
        while let Ok(p) = slots.clone().try_acquire_owned() {
            permits.push(p);
        }
        let batch = consumer
            .fetch()
            .max_messages(permits.len())
            .expires(PULL_EXPIRES)
            .messages()
            .await;
        let mut refused = None;
        let mut batch = match batch {
            Ok(b) => b,
            Err(e) => {
                drop(permits);
                if !pause(
                    &source,
                    &mut consumer,
                    &e.to_string(),
                    &mut retry,
                    &mut stop,
                )
                .await
                {
                    return;
                }
                continue;
            }
        };
        let mut handing_back = *stop.borrow();
        loop {
            let next = match handing_back {
                // The request is read to its end (its expiry at most): the server sends
                // nothing more to it after that.
                true => batch.next().await,
                // Stopping first: nothing is handed on once the worker stops.
                false => tokio::select! {
                    biased;
                    _ = stopped(&mut stop) => {
                        handing_back = true;
                        continue;
                    }
                    m = batch.next() => m,
                },
            };
            let Some(msg) = next else { break };
            let msg = match msg {
                Ok(msg) => msg,
                Err(e) => {
                    refused = Some(e.to_string());
                    continue;
                }
            };
            if handing_back {
                hand_back(&msg).await;
                continue;
            }
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
            let Some(permit) = permits.pop() else {
                hand_back(&msg).await;
                continue;
            };
            let handle = Box::new(JsHandle {
                msg,
                _permit: permit,
            });
            // Nobody takes deliveries any more (the queue was closed): this one goes back.
            if let Err(mpsc::error::SendError(unsent)) =
                tx.send(Delivery::new(task, attempt, handle)).await
            {
                let _ = unsent.nak(Duration::ZERO).await;
                handing_back = true;
            }
        }
        drop(permits);
        match refused {
            Some(e) => {
                if !pause(&source, &mut consumer, &e, &mut retry, &mut stop).await {
                    return;
                }
            }
            None => retry = RETRY_FIRST,
        }
    }
}

/// After a refused request: waits `retry` (doubled for the next time, up to
/// [`RETRY_MAX`]), then makes the consumer again, as it may be gone. False once the queue
/// stops.
async fn pause(
    source: &LaneConsumer,
    consumer: &mut PullConsumer,
    error: &str,
    retry: &mut Duration,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    tracing::warn!(
        "pulling tasks of {}: {error}; asking again in {retry:?}",
        source.config.durable_name.as_deref().unwrap_or_default()
    );
    tokio::select! {
        biased;
        _ = stopped(stop) => return false,
        _ = tokio::time::sleep(*retry) => {}
    }
    *retry = (*retry * 2).min(RETRY_MAX);
    match source.get().await {
        Ok(made) => *consumer = made,
        Err(e) => tracing::warn!("making the consumer again: {e}"),
    }
    true
}

/// Resolves once the queue stops pulling (or is gone).
pub(super) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn hand_back(msg: &jetstream::Message) {
    if let Err(e) = msg.ack_with(AckKind::Nak(None)).await {
        tracing::warn!("handing back a task pulled while stopping: {e}");
    }
}

pub(super) struct JsHandle {
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
