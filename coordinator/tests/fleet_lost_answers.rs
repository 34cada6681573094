//! A task that leaves the queue with no answer: a holder of the workers' login that
//! acknowledges tasks without answering them, or an events stream flooded past its size
//! that drops answers unread. Either way the task is gone and nothing would settle it; the
//! run must not wait for ever.

mod common;

use std::time::Duration;

use common::fleet::{
    assert_all_copied, nats_client, push_apps, start_fast_failover_worker, submit_child,
};
use common::*;
use hangar_loadtest::queue_bench::sample_task;
use hangar_loadtest::services::NatsProcess;
use hangar_shared::queue::jetstream::{self, JetStreamQueue, JetStreamSink};
use hangar_shared::queue::{EventSink, TaskQueue};
use hangar_shared::task::{Event, EventKind, Outcome, TaskKind};

async fn next(queue: &JetStreamQueue) -> hangar_shared::queue::Delivery {
    tokio::time::timeout(Duration::from_secs(30), queue.next())
        .await
        .expect("a delivery within 30 s")
        .expect("the queue is open")
}

/// A worker's queue with one blob copy slot (and the quick lane's), as a holder of the
/// workers' login may make; `ack_wait` applies when it makes the consumers.
async fn blob_taker(client: &async_nats::Client, ack_wait: Duration) -> JetStreamQueue {
    JetStreamQueue::consumer(client.clone(), &[(TaskKind::Blob, 1)], ack_wait)
        .await
        .unwrap()
}

/// What `publisher` finds missing of `job` once some task is gone: a message acked or
/// aged out leaves the stream as the server gets to it.
async fn once_gone(publisher: &JetStreamQueue, job: &str) -> jetstream::ledger::Missing {
    let started = std::time::Instant::now();
    loop {
        let missing = publisher.missing(job).await.unwrap();
        if !missing.gone.is_empty() {
            return missing;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no task of {job} left the queue"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Takes the next delivery and answers it as workers do: the event stored, then the task
/// acknowledged.
async fn answer_next(
    client: &async_nats::Client,
    queue: &JetStreamQueue,
    task: &hangar_shared::task::TaskEnvelope,
) {
    let delivery = next(queue).await;
    assert_eq!(delivery.task.id, task.id);
    JetStreamSink::new(client.clone())
        .emit(Event::done(task, Outcome::BlobPresent))
        .await
        .unwrap();
    delivery.ack().await.unwrap();
}

/// The publisher's side: a task in hand is not missing; acknowledged with no answer, it
/// is found gone and published once more (same id and nonce); lost again, it is reported
/// failed. A task whose answer is stored is missing only until the run has read that far.
#[tokio::test(flavor = "multi_thread")]
async fn a_task_acknowledged_without_an_answer_is_published_again_then_failed() {
    let nats = NatsProcess::start().expect("nats-server");
    let client = nats_client(&nats).await;
    let rogue = blob_taker(&client, Duration::from_secs(30)).await;
    let publisher = JetStreamQueue::publisher(client.clone()).await.unwrap();
    let mut events = jetstream::follow_events(client.clone(), "lost.r1")
        .await
        .unwrap();
    let task = sample_task("lost.r1", 7);
    publisher.publish(task.clone()).await.unwrap();

    let first = next(&rogue).await;
    assert_eq!(first.task.id, 7);
    let missing = publisher.missing("lost.r1").await.unwrap();
    assert!(missing.gone.is_empty(), "in a worker's hands: {missing:?}");
    first.ack().await.unwrap();

    let missing = once_gone(&publisher, "lost.r1").await;
    assert_eq!(missing.gone.len(), 1, "acknowledged, unanswered");
    assert_eq!(missing.through, 0, "no event was stored for the run");
    assert!(
        publisher.recover(missing).await.is_empty(),
        "published again, not failed"
    );
    let again = next(&rogue).await;
    assert_eq!(
        (again.task.id, again.task.nonce, again.attempt),
        (7, task.nonce, 1),
        "the same task, as a new message"
    );
    again.ack().await.unwrap();

    let failed = publisher
        .recover(once_gone(&publisher, "lost.r1").await)
        .await;
    assert_eq!(failed.len(), 1, "lost twice: {failed:?}");
    assert_eq!((failed[0].task, failed[0].nonce), (7, task.nonce));
    match &failed[0].kind {
        EventKind::Failed { last, message, .. } => {
            assert!(last);
            assert!(message.contains("left the queue 2 times"), "{message}");
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    assert!(
        publisher.missing("lost.r1").await.unwrap().gone.is_empty(),
        "a task reported failed is looked after no more"
    );

    // Answered as workers do: the event is stored, then the task acknowledged.
    let answered = sample_task("lost.r1", 8);
    publisher.publish(answered.clone()).await.unwrap();
    answer_next(&client, &rogue, &answered).await;
    let missing = once_gone(&publisher, "lost.r1").await;
    assert_eq!(missing.gone.len(), 1, "its answer is not read yet");
    assert!(missing.through > events.read_through());
    let event = tokio::time::timeout(Duration::from_secs(30), events.recv())
        .await
        .expect("the answer within 30 s")
        .expect("stream open");
    assert!(events.read_through() >= missing.through);
    publisher.answered(&event);
    assert!(
        publisher.missing("lost.r1").await.unwrap().gone.is_empty(),
        "answered"
    );

    // Answered, then the answer dropped unread, as a flooded events stream drops its
    // oldest: the task is published again.
    let dropped = sample_task("lost.r1", 9);
    publisher.publish(dropped.clone()).await.unwrap();
    answer_next(&client, &rogue, &dropped).await;
    let js = async_nats::jetstream::new(client.clone());
    let stream = js.get_stream(jetstream::EVENT_STREAM).await.unwrap();
    let last = stream
        .get_last_raw_message_by_subject("hangar.event.lost.r1")
        .await
        .unwrap();
    stream.delete_message(last.sequence).await.unwrap();
    let missing = once_gone(&publisher, "lost.r1").await;
    assert_eq!(missing.gone.len(), 1);
    assert!(
        events.read_through() >= missing.through,
        "every event still stored is read"
    );
    assert!(publisher.recover(missing).await.is_empty());
    let again = next(&rogue).await;
    assert_eq!((again.task.id, again.task.nonce), (9, dropped.nonce));
}

/// One look asks about a run's oldest 256 unanswered tasks at most (a request each): more
/// tasks gone than that are found by the next look, none forgotten.
#[tokio::test(flavor = "multi_thread")]
async fn more_tasks_gone_than_one_look_asks_about_are_found_by_the_next() {
    let nats = NatsProcess::start().expect("nats-server");
    let client = nats_client(&nats).await;
    let rogue = blob_taker(&client, Duration::from_secs(30)).await;
    let publisher = JetStreamQueue::publisher(client.clone()).await.unwrap();
    for id in 0..300 {
        publisher.publish(sample_task("many.r1", id)).await.unwrap();
    }
    for _ in 0..300 {
        next(&rogue).await.ack().await.unwrap();
    }
    let started = std::time::Instant::now();
    let first = loop {
        let missing = publisher.missing("many.r1").await.unwrap();
        if missing.gone.len() >= 256 {
            break missing;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{missing:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(first.gone.len(), 256, "the look's bound");
    assert!(publisher.recover(first).await.is_empty(), "published again");
    // The 44 left are the oldest now; beside them, the first 212 published again, which
    // the rogue holds unacknowledged (in the queue still).
    let second = publisher.missing("many.r1").await.unwrap();
    assert_eq!(second.gone.len(), 44, "the rest, at the next look");
    rogue.close().await;
}

/// A whole run: before any worker starts, a rogue holding the workers' login takes the
/// first blob task and acknowledges it without a word. The job still ends, every image
/// copied: once the run is quiet, the lost task is published again and a real worker does
/// it. (Without this the run waited for ever.)
#[tokio::test(flavor = "multi_thread")]
async fn a_run_whose_task_a_rogue_acknowledged_still_copies_everything() {
    let env = Env::new();
    let nats = NatsProcess::start().expect("nats-server");
    push_apps(&env, 3, 2000, 200_000).await;
    let lines: Vec<String> = (0..3)
        .map(|i| format!("{}/chaos/app-{i}:v1", env.src.addr))
        .collect();
    let list = env.write_list("list.txt", &lines);
    let client = nats_client(&nats).await;
    // The blob lanes' consumers take this ack wait, as the workers below have it; what the
    // rogue pulled but never saw, its `close` hands back.
    let rogue = blob_taker(&client, Duration::from_secs(3)).await;
    let mut submit = submit_child(&env, &list, &nats.url());
    let taken = next(&rogue).await;
    taken.ack().await.unwrap();
    let fault = std::time::Instant::now();
    // What else it pulled goes back to the queue.
    rogue.close().await;
    let _worker = start_fast_failover_worker(&nats.url(), env.path("worker.log"));

    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = submit.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(120) {
            let _ = submit.kill();
            let out = submit.wait_with_output().unwrap();
            panic!("the run waited on its lost task:\n{}", text(&out));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let ended = fault.elapsed();
    let out = submit.wait_with_output().unwrap();
    assert!(status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("published again"),
        "the run says what it did:\n{}",
        text(&out)
    );
    assert_all_copied(&env, 3);
    // For BENCHMARKS.md's chaos table (`--nocapture`).
    eprintln!(
        "the job ended {:.1} s after the rogue's ack",
        ended.as_secs_f64()
    );
}

/// A task whose deliveries ran out is reported failed from the server's advisory; when
/// that failure is dropped unread (a flooded events stream), the run still ends it: the
/// ledger keeps the task until its failure is read, and a quiet run takes it from there.
#[tokio::test(flavor = "multi_thread")]
async fn an_exhausted_tasks_failure_dropped_unread_is_still_taken_in() {
    let nats = NatsProcess::start().expect("nats-server");
    let client = nats_client(&nats).await;
    let hung = blob_taker(&client, Duration::from_millis(500)).await;
    let publisher = JetStreamQueue::publisher(client.clone()).await.unwrap();
    let task = sample_task("drop.r1", 5);
    publisher.publish(task.clone()).await.unwrap();
    let taker = tokio::spawn(async move {
        while let Some(d) = hung.next().await {
            drop(d);
        }
    });
    // The advisory's failure lands in the events stream; a flood drops it.
    let js = async_nats::jetstream::new(client.clone());
    let stream = js.get_stream(jetstream::EVENT_STREAM).await.unwrap();
    let started = std::time::Instant::now();
    let failure = loop {
        if let Ok(m) = stream
            .get_last_raw_message_by_subject("hangar.event.drop.r1")
            .await
        {
            break m;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no advisory failure"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    stream.delete_message(failure.sequence).await.unwrap();
    taker.abort();

    let missing = publisher.missing("drop.r1").await.unwrap();
    assert_eq!(
        missing.gone.len(),
        1,
        "still in the queue, but never delivered again"
    );
    assert_eq!(missing.through, 0, "no event left for the run");
    let failed = publisher.recover(missing).await;
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!((failed[0].task, failed[0].nonce), (5, task.nonce));
    match &failed[0].kind {
        EventKind::Failed { last, message, .. } => {
            assert!(last);
            assert!(message.contains("no worker answered"), "{message}");
        }
        other => panic!("expected a failure, got {other:?}"),
    }
}

/// A worker holding a task for ever — a nak with a delay of a day, or "in progress" sent
/// without end — no longer holds its run: the task queue has a max age (a week; given to
/// a stream an older version made, too), past which the message is gone with no answer,
/// and the run publishes it again. The tests shorten the age, as an operator may (a
/// shorter age is kept).
#[tokio::test(flavor = "multi_thread")]
async fn a_task_held_for_ever_leaves_the_queue_at_its_max_age_and_is_published_again() {
    held_for_ever(Hold::NakForADay).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_kept_in_progress_for_ever_leaves_the_queue_at_its_max_age() {
    held_for_ever(Hold::InProgressWithoutEnd).await;
}

enum Hold {
    NakForADay,
    InProgressWithoutEnd,
}

async fn held_for_ever(hold: Hold) {
    use async_nats::jetstream::stream;
    let nats = NatsProcess::start().expect("nats-server");
    let client = nats_client(&nats).await;
    let js = async_nats::jetstream::new(client.clone());
    // The task stream as an older version made it: no max age.
    js.create_stream(stream::Config {
        name: jetstream::TASK_STREAM.into(),
        subjects: vec!["hangar.task.>".into()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .unwrap();
    let rogue = blob_taker(&client, Duration::from_secs(30)).await;
    let publisher = JetStreamQueue::publisher(client.clone()).await.unwrap();
    let mut tasks = js.get_stream(jetstream::TASK_STREAM).await.unwrap();
    let config = tasks.info().await.unwrap().config.clone();
    assert_eq!(config.max_age, jetstream::storage::TASKS_MAX_AGE);
    let shortened = |age: Duration| stream::Config {
        max_age: age,
        duplicate_window: age.min(Duration::from_secs(120)),
        ..config.clone()
    };

    let task = sample_task("held.r1", 3);
    publisher.publish(task.clone()).await.unwrap();
    let held = next(&rogue).await;
    // Shortened once the task is in hand, so it cannot age out before.
    js.update_stream(shortened(Duration::from_secs(2)))
        .await
        .unwrap();
    let _next_run = JetStreamQueue::publisher(client.clone()).await.unwrap();
    assert_eq!(
        tasks.info().await.unwrap().config.max_age,
        Duration::from_secs(2),
        "an operator's shorter age is kept"
    );
    let keeping = match hold {
        Hold::NakForADay => {
            held.nak(Duration::from_secs(24 * 3600)).await.unwrap();
            None
        }
        Hold::InProgressWithoutEnd => Some(tokio::spawn(async move {
            loop {
                held.in_progress().await.unwrap();
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })),
    };
    let missing = once_gone(&publisher, "held.r1").await;
    js.update_stream(shortened(Duration::from_secs(3600)))
        .await
        .unwrap();
    assert!(publisher.recover(missing).await.is_empty());
    // The rogue still keeping its one slot busy, another worker takes the task.
    let other = match &keeping {
        Some(_) => Some(blob_taker(&client, Duration::from_secs(30)).await),
        None => None,
    };
    let again = next(other.as_ref().unwrap_or(&rogue)).await;
    assert_eq!(
        (again.task.id, again.task.nonce, again.attempt),
        (3, task.nonce, 1)
    );
}

/// A worker's queue closed while a consumer waits for a task: the wait ends at once with no
/// task (a stopping worker takes none), `close` does not wait behind it, and a task
/// published meanwhile goes to another worker, not to the closed queue's last pull request
/// (read out and handed back) to wait out a 60 s lease.
#[tokio::test(flavor = "multi_thread")]
async fn a_closed_queue_takes_no_task_and_keeps_none() {
    let nats = NatsProcess::start().expect("nats-server");
    let client = nats_client(&nats).await;
    let publisher = JetStreamQueue::publisher(client.clone()).await.unwrap();
    let closing = std::sync::Arc::new(blob_taker(&client, Duration::from_secs(60)).await);
    let waiting = {
        let closing = closing.clone();
        tokio::spawn(async move { closing.next().await.map(|d| d.task.id) })
    };
    // Its pull requests are out.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = std::time::Instant::now();
    closing.close().await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "close waited: {:?}",
        started.elapsed()
    );
    let taken = tokio::time::timeout(Duration::from_secs(1), waiting)
        .await
        .expect("the waiting consumer was let go")
        .unwrap();
    assert_eq!(taken, None, "no task after close");
    let task = sample_task("closed.r1", 7);
    publisher.publish(task.clone()).await.unwrap();
    let other = blob_taker(&client, Duration::from_secs(60)).await;
    let delivery = next(&other).await;
    assert_eq!((delivery.task.id, delivery.task.nonce), (7, task.nonce));
}
