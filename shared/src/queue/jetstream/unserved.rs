//! Which kinds of task no worker pulls. A worker pulls each kind it takes through that
//! kind's durable consumer, with a pull request always waiting while it has a free slot;
//! a kind whose tasks wait with no pull request and none out on delivery has no live
//! worker taking it: every worker was started without it (`--check-concurrency 0`), or
//! every worker that took it is gone. Without this a run of such tasks waits forever: a
//! message never delivered raises no max-deliveries advisory.

use async_nats::jetstream::{self, context::ConsumerInfoErrorKind};

use super::{TASK_STREAM, bus};
use crate::error::Result;
use crate::task::TaskKind;

/// Of `kinds`, those with no worker pulling them now. An answer NATS cannot give (it is
/// restarting) is an error, never "unserved".
pub async fn kinds(js: &jetstream::Context, kinds: &[TaskKind]) -> Result<Vec<TaskKind>> {
    if kinds.is_empty() {
        return Ok(Vec::new());
    }
    let stream = js.get_stream(TASK_STREAM).await.map_err(bus)?;
    let mut unserved = Vec::new();
    for kind in kinds {
        match stream
            .consumer_info(format!("hangar-{}", kind.as_str()))
            .await
        {
            Ok(info) => {
                if info.num_pending > 0 && info.num_waiting == 0 && info.num_ack_pending == 0 {
                    unserved.push(*kind);
                }
            }
            // No worker taking this kind has ever started.
            Err(e) if matches!(e.kind(), ConsumerInfoErrorKind::NotFound) => unserved.push(*kind),
            Err(e) => return Err(bus(e)),
        }
    }
    Ok(unserved)
}
