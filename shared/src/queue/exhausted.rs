//! No task without an end. A task whose `max_deliver` deliveries ran out without an
//! answer (its workers died or froze each time) stays unacknowledged and is never delivered
//! again; nothing would report it, and its job would wait for ever. The server says so in
//! a max-deliveries advisory. A plain subscription loses the advisories sent while it is
//! down (NATS restarting, the publisher reconnecting), so they are kept in a stream of
//! their own, `HANGAR_ADVISORIES`, and the publisher reads it from where it started: an
//! advisory sent while it was away is read when it is back.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::DeliverPolicy, consumer::pull, stream};
use futures_util::StreamExt;

use super::jetstream::ledger::SentTasks;
use super::jetstream::{TASK_STREAM, event_subject, storage};
use crate::error::{Error, FailureClass, Result};

pub const ADVISORY_STREAM: &str = "HANGAR_ADVISORIES";

fn advisory_subject() -> String {
    format!("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{TASK_STREAM}.*")
}

#[derive(serde::Deserialize)]
struct MaxDeliveries {
    stream_seq: u64,
    #[serde(default)]
    deliveries: u64,
}

fn bus(e: impl std::fmt::Display) -> Error {
    Error::new(FailureClass::Network, format!("nats: {e}"))
}

/// Creates (or finds) the advisory stream and gives the sequence a reader starting now
/// should start from.
pub async fn ensure_stream(js: &jetstream::Context) -> Result<u64> {
    let mut stream = js
        .get_or_create_stream(stream::Config {
            name: ADVISORY_STREAM.into(),
            subjects: vec![advisory_subject()],
            storage: stream::StorageType::File,
            max_age: storage::ADVISORIES_MAX_AGE,
            max_bytes: storage::ADVISORIES_MAX_BYTES,
            ..Default::default()
        })
        .await
        .map_err(bus)?;
    let last = stream.info().await.map_err(bus)?.state.last_sequence;
    Ok(last + 1)
}

/// Turns the max-deliveries advisories stored from `start` on, for tasks this process
/// published, into final failures. `after` holds the reading back (tests show that an
/// advisory sent while nobody read is still acted on).
pub async fn watch(js: jetstream::Context, sent: SentTasks, start: u64, after: Duration) {
    tokio::time::sleep(after).await;
    loop {
        if let Err(e) = read(&js, &sent, start).await {
            tracing::warn!("reading max-deliveries advisories: {e}; again in 1 s");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn read(js: &jetstream::Context, sent: &SentTasks, start: u64) -> Result<()> {
    let stream = js.get_stream(ADVISORY_STREAM).await.map_err(bus)?;
    // An ordered consumer carries on from the last sequence it saw across reconnects.
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: start,
            },
            ..Default::default()
        })
        .await
        .map_err(bus)?;
    let mut messages = consumer.messages().await.map_err(bus)?;
    while let Some(msg) = messages.next().await {
        let Ok(msg) = msg else { continue };
        let Ok(adv) = serde_json::from_slice::<MaxDeliveries>(&msg.payload) else {
            continue;
        };
        // Kept in the ledger until the failure is read back: should it not arrive (a
        // flooded events stream), the run takes it in from there once quiet.
        let Some(failure) = sent
            .lock()
            .ok()
            .and_then(|mut s| s.exhausted(adv.stream_seq, adv.deliveries as u32))
        else {
            continue;
        };
        if let Ok(payload) = serde_json::to_vec(&failure)
            && let Ok(ack) = js
                .publish(event_subject(&failure.job), payload.into())
                .await
        {
            let _ = ack.await;
        }
    }
    Ok(())
}
