//! JetStream overhead: tasks per second through the real queue with empty handlers —
//! publish (ack awaited), pull, ack — on a throwaway nats-server.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use futures_util::StreamExt;
use hangar_shared::digest::Digest;
use hangar_shared::queue::TaskQueue;
use hangar_shared::queue::jetstream::{self, JetStreamQueue, NatsOptions};
use hangar_shared::store::RepoRef;
use hangar_shared::task::{BlobTask, Task, TaskEnvelope, TaskKind};

use crate::services::NatsProcess;

pub struct QueueBench {
    pub tasks: u64,
    pub publishers: usize,
    pub slots: usize,
    pub publish_secs: f64,
    pub total_secs: f64,
}

/// A small blob task, for queue measurements and tests.
pub fn sample_task(job: &str, id: u64) -> TaskEnvelope {
    let digest = Digest::of(&id.to_le_bytes());
    TaskEnvelope {
        job: job.into(),
        id,
        nonce: hangar_shared::task::new_nonce(),
        key: format!("{job}/{id}"),
        trace: None,
        task: Task::Blob(Box::new(BlobTask {
            desc: crate::seed::descriptor("application/octet-stream", digest, 1),
            source: RepoRef::registry("src.example", "bench/app"),
            dest: RepoRef::registry("dst.example", "bench/app"),
            mount_from: Vec::new(),
            inline: None,
        })),
    }
}

pub async fn run(tasks: u64, publishers: usize, slots: usize) -> Result<QueueBench> {
    let nats = NatsProcess::start()?;
    let opts = NatsOptions {
        url: nats.url(),
        ..Default::default()
    };
    let consumer = Arc::new(
        JetStreamQueue::consumer(
            jetstream::connect(&opts).await?,
            &[(TaskKind::Blob, slots)],
            jetstream::ACK_WAIT,
        )
        .await?,
    );
    let publisher = Arc::new(JetStreamQueue::publisher(jetstream::connect(&opts).await?).await?);
    let start = Instant::now();
    let consuming = {
        let consumer = consumer.clone();
        tokio::spawn(async move {
            let mut done = 0u64;
            let mut acks = futures_util::stream::FuturesUnordered::new();
            while done < tasks {
                tokio::select! {
                    Some(d) = consumer.next() => acks.push(d.ack()),
                    Some(r) = acks.next(), if !acks.is_empty() => {
                        r?;
                        done += 1;
                    }
                }
            }
            anyhow::Ok(())
        })
    };
    let results: Vec<_> = futures_util::stream::iter(0..tasks)
        .map(|i| {
            let publisher = publisher.clone();
            async move { publisher.publish(sample_task("bench.1", i)).await }
        })
        .buffer_unordered(publishers)
        .collect()
        .await;
    results.into_iter().collect::<Result<Vec<_>, _>>()?;
    let publish_secs = start.elapsed().as_secs_f64();
    tokio::time::timeout(Duration::from_secs(300), consuming).await???;
    Ok(QueueBench {
        tasks,
        publishers,
        slots,
        publish_secs,
        total_secs: start.elapsed().as_secs_f64(),
    })
}
