//! The fleet bus's look for tasks that left the queue with no answer, against a real
//! nats-server.

use super::*;
use hangar_loadtest::queue_bench::sample_task;
use hangar_loadtest::services::NatsProcess;
use hangar_shared::queue::EventSink;
use hangar_shared::queue::jetstream::JetStreamSink;
use hangar_shared::registry::RegistryOptions;
use hangar_shared::task::{Outcome, TaskKind};

/// A client, a worker's queue (one copy slot) and a fleet bus for run `job`.
async fn fleet_bus(nats: &NatsProcess, job: &str) -> (async_nats::Client, JetStreamQueue, Bus) {
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let worker = JetStreamQueue::consumer(
        client.clone(),
        &[(TaskKind::Blob, 1)],
        Duration::from_secs(30),
    )
    .await
    .expect("consumer");
    let pool = Arc::new(RegistryPool::new(RegistryOptions::default(), None));
    let bus = Bus::open(
        Backend::Fleet(client.clone()),
        job,
        Here::new(pool),
        &Console::new(true),
    )
    .await
    .expect("bus");
    (client, worker, bus)
}

/// A fleet bus for run `job`, a worker's queue, and a task it took, answered and
/// acknowledged, the answer not yet taken in by the run.
async fn answered_unread(
    nats: &NatsProcess,
    job: &str,
) -> (Bus, JetStreamQueue, hangar_shared::task::TaskEnvelope) {
    let (client, worker, bus) = fleet_bus(nats, job).await;
    let task = sample_task(job, 1);
    bus.queue.publish(task.clone()).await.expect("publish");
    let delivery = tokio::time::timeout(Duration::from_secs(30), worker.next())
        .await
        .expect("delivered")
        .expect("open");
    JetStreamSink::new(client.clone())
        .emit(Event::done(&task, Outcome::BlobPresent))
        .await
        .expect("answer");
    delivery.ack().await.expect("ack");
    (bus, worker, task)
}

/// A task answered and acknowledged whose answer the run has not taken in yet is not
/// lost: the run looks, finds it gone from the queue, sees the run's last event is
/// further than it has read, and publishes nothing. Once it has read the answer, the
/// task is settled.
#[tokio::test(flavor = "multi_thread")]
async fn a_quiet_run_publishes_nothing_again_for_an_answer_it_has_not_read() {
    let nats = NatsProcess::start().expect("nats-server");
    let (mut bus, worker, task) = answered_unread(&nats, "late.r1").await;

    bus.look_for_lost().await;
    assert!(bus.lost.is_empty());
    let again = tokio::time::timeout(Duration::from_secs(2), worker.next()).await;
    assert!(
        again.is_err(),
        "published again while its answer waited unread"
    );

    match tokio::time::timeout(Duration::from_secs(30), bus.next()).await {
        Ok(News::Event(event)) => assert_eq!((event.task, event.nonce), (1, task.nonce)),
        _ => panic!("the answer"),
    }
    let fleet = bus.fleet.as_ref().expect("fleet");
    let missing = fleet.publisher.missing("late.r1").await.expect("look");
    assert!(missing.gone.is_empty(), "settled: {missing:?}");
}

/// The mark a look waits for is kept, not asked again (events sent on and on would
/// keep a fresh one ahead of the run); and when the event at that mark is dropped from
/// the stream before the run read it, nothing before it can come: the task is
/// published again.
#[tokio::test(flavor = "multi_thread")]
async fn a_look_waits_for_its_mark_and_not_once_the_mark_is_dropped() {
    let nats = NatsProcess::start().expect("nats-server");
    let (mut bus, worker, task) = answered_unread(&nats, "flood.r1").await;
    bus.look_for_lost().await;
    let mark = bus
        .fleet
        .as_ref()
        .and_then(|f| f.gone.as_ref())
        .map(|g| g.through)
        .expect("a mark to wait for");
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let sink = JetStreamSink::new(client.clone());
    sink.emit(Event::started(&task, "forger", 1))
        .await
        .expect("a later event");
    bus.look_for_lost().await;
    assert_eq!(
        bus.fleet
            .as_ref()
            .and_then(|f| f.gone.as_ref())
            .map(|g| g.through),
        Some(mark),
        "the same mark"
    );

    let js = async_nats::jetstream::new(client);
    let events = js
        .get_stream(jetstream::EVENT_STREAM)
        .await
        .expect("stream");
    events.delete_message(mark).await.expect("dropped");
    bus.look_for_lost().await;
    let again = tokio::time::timeout(Duration::from_secs(30), worker.next())
        .await
        .expect("published again")
        .expect("open");
    assert_eq!((again.task.id, again.task.nonce), (1, task.nonce));
}

/// A run whose answers keep coming still looks (every `busy`): a task a rogue
/// acknowledged is published again while the others are answered, not once they stop.
#[tokio::test(flavor = "multi_thread")]
async fn a_busy_run_still_finds_a_lost_task() {
    let nats = NatsProcess::start().expect("nats-server");
    let (client, worker, mut bus) = fleet_bus(&nats, "busy.r1").await;
    if let Some(fleet) = bus.fleet.as_mut() {
        (fleet.quiet, fleet.busy) = (Duration::from_secs(2), Duration::from_secs(3));
        fleet.look_at = tokio::time::Instant::now() + fleet.quiet;
    }
    let lost = sample_task("busy.r1", 1);
    bus.queue.publish(lost.clone()).await.expect("publish");
    let taken = tokio::time::timeout(Duration::from_secs(30), worker.next())
        .await
        .expect("delivered")
        .expect("open");
    taken.ack().await.expect("acknowledged without an answer");

    // Another task answered every half second, for twelve seconds.
    let sink = JetStreamSink::new(client.clone());
    let started = tokio::time::Instant::now();
    let mut id = 1;
    let mut republished = None;
    while started.elapsed() < Duration::from_secs(12) && republished.is_none() {
        id += 1;
        let busy = sample_task("busy.r1", id);
        bus.queue.publish(busy.clone()).await.expect("publish");
        let d = tokio::time::timeout(Duration::from_secs(30), worker.next())
            .await
            .expect("delivered")
            .expect("open");
        if d.task.id == 1 {
            republished = Some(started.elapsed());
            break;
        }
        sink.emit(Event::done(&d.task, Outcome::BlobPresent))
            .await
            .expect("answer");
        d.ack().await.expect("ack");
        let until = tokio::time::Instant::now() + Duration::from_millis(500);
        while let Ok(news) = tokio::time::timeout_at(until, bus.next()).await {
            assert!(matches!(news, News::Event(_)));
        }
    }
    assert!(
        republished.is_some(),
        "the lost task waited while the run was busy"
    );
}
