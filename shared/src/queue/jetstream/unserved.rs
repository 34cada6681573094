//! Which lanes of tasks no worker pulls. A worker pulls each kind it takes through that
//! kind's durable consumer, with a pull request always waiting while it has a free slot;
//! a run whose own tasks of a kind wait in the stream while that kind's consumer has no
//! pull request and nothing out on delivery has no live worker taking them: every worker
//! was started without the kind (`--check-concurrency 0`), or every one that took it is
//! gone. Without this such a run waits forever: a message never delivered raises no
//! max-deliveries advisory.

use async_nats::jetstream::{self, context::ConsumerInfoErrorKind};
use futures_util::TryStreamExt;

use super::{Lane, TASK_STREAM, bus, task_subject};
use crate::error::Result;

/// Of the lanes a run sent tasks in (`sent`: lane and the run's id), those whose tasks of
/// this run are still queued with no worker pulling them now. An answer NATS cannot give
/// (it is restarting) is an error, never "unserved".
pub async fn lanes(js: &jetstream::Context, sent: &[(Lane, String)]) -> Result<Vec<Lane>> {
    if sent.is_empty() {
        return Ok(Vec::new());
    }
    let stream = js.get_stream(TASK_STREAM).await.map_err(bus)?;
    let mut unserved = Vec::new();
    for (lane, run) in sent {
        // A work queue keeps a message until it is acked: this run's own backlog of the kind.
        let mut subjects = stream
            .info_with_subjects(task_subject(*lane, run))
            .await
            .map_err(bus)?;
        let mut queued = 0usize;
        while let Some((_, n)) = subjects.try_next().await.map_err(bus)? {
            queued += n;
        }
        if queued == 0 {
            continue;
        }
        let none = match stream.consumer_info(lane.consumer()).await {
            Ok(info) => info.num_waiting == 0 && info.num_ack_pending == 0,
            // No worker taking this lane has ever started.
            Err(e) if matches!(e.kind(), ConsumerInfoErrorKind::NotFound) => true,
            Err(e) => return Err(bus(e)),
        };
        if none && !unserved.contains(lane) {
            unserved.push(*lane);
        }
    }
    Ok(unserved)
}
