//! Events: published with the stream's ack awaited, and followed per job.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};
use async_trait::async_trait;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::{EVENT_STREAM, PUBLISH_PATIENCE, bus, ensure_streams, event_subject, fits};
use crate::error::{Error, Result};
use crate::queue::EventSink;
use crate::task::{Event, EventKind};

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
        let mut payload = serde_json::to_vec(&event).map_err(|e| Error::internal(e.to_string()))?;
        // A result too large for the bus (a scan's inventory of a huge image) fails its task
        // for good, said in a message that fits: redelivering it would only end the same way.
        if let Err(e) = fits(&self.js, "the task's result", payload.len()) {
            let failed = Event {
                kind: EventKind::Failed {
                    class: e.class,
                    message: e.message,
                    attempt: 1,
                    last: true,
                },
                job: event.job.clone(),
                task: event.task,
                nonce: event.nonce,
            };
            payload = serde_json::to_vec(&failed).map_err(|e| Error::internal(e.to_string()))?;
        }
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

/// Events read ahead of the run that takes them in; past them the stream is not read on.
const EVENTS_AHEAD: usize = 1024;

/// A job's events as the run takes them in, and how far into the stream that is.
pub struct EventFeed {
    rx: mpsc::Receiver<(u64, Option<Event>)>,
    read_through: u64,
}

impl EventFeed {
    /// The next event, or `None` once the stream can no longer be read.
    pub async fn recv(&mut self) -> Option<Event> {
        loop {
            let (seq, event) = self.rx.recv().await?;
            self.read_through = seq;
            if let Some(event) = event {
                return Some(event);
            }
        }
    }

    /// The stream sequence of the last message of the job's subject taken in (an
    /// unreadable one too: whatever is stored after it is still to come).
    pub fn read_through(&self) -> u64 {
        self.read_through
    }
}

/// Follows a job's events from the start of the stream into a channel, no faster than
/// the receiver takes them (however many the bus holds, only [`EVENTS_AHEAD`] are here).
pub async fn follow_events(client: async_nats::Client, job: &str) -> Result<EventFeed> {
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
    let (tx, rx) = mpsc::channel(EVENTS_AHEAD);
    tokio::spawn(async move {
        while let Some(msg) = messages.next().await {
            let Ok(msg) = msg else { continue };
            let Ok(seq) = msg.info().map(|i| i.stream_sequence) else {
                continue;
            };
            let event = serde_json::from_slice::<Event>(&msg.payload).ok();
            if tx.send((seq, event)).await.is_err() {
                return;
            }
        }
    });
    Ok(EventFeed {
        rx,
        read_through: 0,
    })
}
