//! A lane's consumer, or the whole task stream, deleted under a running worker (an
//! operator's `nats consumer rm`, a server that lost its state): the worker neither spins
//! asking a consumer that is gone, nor stops taking tasks. It asks again after a pause
//! (longer each time), makes the consumer again once it can, and goes on.

mod common;

use std::time::{Duration, Instant};

use async_nats::jetstream as js;
use common::fleet::nats_client;
use hangar_loadtest::queue_bench::sample_task;
use hangar_loadtest::services::NatsProcess;
use hangar_shared::queue::TaskQueue;
use hangar_shared::queue::jetstream::{self, JetStreamQueue, Lane, TASK_STREAM};
use hangar_shared::task::{Task, TaskEnvelope, TaskKind};

/// Messages the server has taken from its clients so far (`/varz`): every pull request
/// is one.
async fn messages_in(nats: &NatsProcess) -> u64 {
    let varz: serde_json::Value = reqwest::get(format!("{}/varz", nats.monitor_url()))
        .await
        .expect("/varz")
        .json()
        .await
        .expect("/varz is JSON");
    varz["in_msgs"].as_u64().expect("in_msgs")
}

/// How many messages the server takes over `span`.
async fn messages_over(nats: &NatsProcess, span: Duration) -> u64 {
    let before = messages_in(nats).await;
    tokio::time::sleep(span).await;
    messages_in(nats).await - before
}

/// Publishes `task` (the publisher makes the streams if they are gone) and waits for the
/// worker to be handed it.
async fn delivered(client: &async_nats::Client, worker: &JetStreamQueue, task: TaskEnvelope) {
    let publisher = JetStreamQueue::publisher(client.clone()).await.unwrap();
    let started = Instant::now();
    publisher.publish(task.clone()).await.unwrap();
    let delivery = tokio::time::timeout(Duration::from_secs(20), worker.next())
        .await
        .expect("the task reaches the worker: its consumer is made again")
        .expect("the queue is open");
    assert_eq!(delivery.task.id, task.id);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "delivered after {:?}",
        started.elapsed()
    );
    delivery.ack().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_whose_consumer_is_deleted_makes_it_again_without_spinning() {
    let nats = NatsProcess::start().expect("nats-server");
    let client = nats_client(&nats).await;
    let worker = JetStreamQueue::consumer(
        client.clone(),
        &[(TaskKind::Blob, 1)],
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    let idle = messages_over(&nats, Duration::from_secs(3)).await;
    let js = js::new(client.clone());

    // The lane's consumer deleted: made again at the first pause.
    let task = sample_task("gone.r1", 1);
    let lane = Lane::of(&task.task);
    assert!(matches!(task.task, Task::Blob(_)));
    let stream = js.get_stream(TASK_STREAM).await.unwrap();
    stream.delete_consumer(&lane.consumer()).await.unwrap();
    delivered(&client, &worker, task).await;
    let info = stream.clone().consumer_info(lane.consumer()).await.unwrap();
    assert_eq!(
        info.config.max_deliver,
        i64::from(jetstream::MAX_DELIVER),
        "made with the lane's settings"
    );
    assert_eq!(info.config.ack_wait, Duration::from_secs(30));

    // The whole stream gone: every request is refused until a coordinator makes it again.
    js.delete_stream(TASK_STREAM).await.unwrap();
    let refused = messages_over(&nats, Duration::from_secs(3)).await;
    // Asked at once after each refusal, the worker would make thousands of requests here.
    assert!(
        refused <= idle + 20,
        "{refused} messages in 3 s with the stream gone, {idle} while idle"
    );
    delivered(&client, &worker, sample_task("gone.r2", 2)).await;
    worker.leave().await;
}
