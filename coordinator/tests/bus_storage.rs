//! What the fleet keeps in JetStream is bounded, and only the coordinator sets the bounds.
//! On the locked-down bus of `deploy/k8s/nats/permissions.conf`: streams and buckets an
//! older version made without sizes (and a lease bucket whose leases lived ten minutes) are
//! brought to this version's by the coordinator; a worker may write keys but not change a
//! bucket (a lease bucket with max age 0 would keep a dead holder's leases for ever), and
//! the server refuses a value larger than the bucket's.

mod common;
mod secure_bus;

use std::time::Duration;

use async_nats::jetstream::{self as js, kv, stream};
use hangar_shared::lease::{BlobLeases, LEASE_BUCKET, LEASE_TTL};
use hangar_shared::queue::jetstream::{self, JetStreamQueue, storage};
use hangar_shared::ratelimit::RATE_BUCKET;
use secure_bus::*;

async fn config(js: &js::Context, name: &str) -> stream::Config {
    let mut s = js.get_stream(name).await.expect(name);
    s.info().await.expect(name).config.clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_coordinator_bounds_the_bus_and_workers_cannot_change_it() {
    let dir = tempfile::tempdir().unwrap();
    let nats = SecureNats::start(dir.path());
    let coordinator = nats.coordinator().await;
    let cjs = js::new(coordinator.clone());
    // What an older fleet left: no sizes anywhere, ten-minute leases.
    for bucket in [LEASE_BUCKET, RATE_BUCKET] {
        cjs.create_key_value(kv::Config {
            bucket: bucket.into(),
            history: 1,
            max_age: Duration::from_secs(600),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    cjs.create_stream(stream::Config {
        name: jetstream::EVENT_STREAM.into(),
        subjects: vec!["hangar.event.>".into()],
        max_age: Duration::from_secs(24 * 3600),
        ..Default::default()
    })
    .await
    .unwrap();
    cjs.create_stream(stream::Config {
        name: "HANGAR_ADVISORIES".into(),
        subjects: vec!["$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.HANGAR_TASKS.*".into()],
        max_age: Duration::from_secs(24 * 3600),
        ..Default::default()
    })
    .await
    .unwrap();
    let _publisher = JetStreamQueue::publisher(coordinator.clone())
        .await
        .unwrap();

    let events = config(&cjs, jetstream::EVENT_STREAM).await;
    assert_eq!(
        (events.max_bytes, events.max_message_size),
        (storage::EVENTS_MAX_BYTES, storage::EVENT_MAX_SIZE)
    );
    let advisories = config(&cjs, "HANGAR_ADVISORIES").await;
    assert_eq!(advisories.max_bytes, storage::ADVISORIES_MAX_BYTES);
    let leases = config(&cjs, &format!("KV_{LEASE_BUCKET}")).await;
    assert_eq!(
        (leases.max_age, leases.max_bytes, leases.max_message_size),
        (
            LEASE_TTL,
            storage::LEASES_MAX_BYTES,
            storage::LEASE_MAX_VALUE
        ),
        "the lease bucket is brought to the leases' life and sizes"
    );
    let rate = config(&cjs, &format!("KV_{RATE_BUCKET}")).await;
    assert_eq!(
        (rate.max_bytes, rate.max_message_size),
        (storage::RATE_MAX_BYTES, storage::RATE_MAX_VALUE)
    );

    // A worker uses the buckets as they are...
    let worker = jetstream::connect(&nats.options("worker", WORKER_PW))
        .await
        .unwrap();
    // A refused request is never answered: it ends at the context's timeout.
    let wjs = js::ContextBuilder::new()
        .timeout(Duration::from_secs(2))
        .build(worker.clone());
    let held = std::sync::Arc::new(BlobLeases::open(worker.clone(), "worker-1").await.unwrap());
    let digest: hangar_shared::Digest = format!("sha256:{}", "c".repeat(64)).parse().unwrap();
    let lease = held.acquire(&digest).await.unwrap().expect("a free digest");
    // ...but may not change them: with max age 0 a lease would never lapse.
    let mut forever = leases.clone();
    forever.max_age = Duration::ZERO;
    let refused = wjs.update_stream(forever).await;
    assert!(refused.is_err(), "a worker changed the lease bucket");
    let mut unbounded = rate.clone();
    unbounded.max_bytes = -1;
    assert!(wjs.update_stream(unbounded).await.is_err());
    let made = wjs
        .create_key_value(kv::Config {
            bucket: "hangar-elsewhere".into(),
            ..Default::default()
        })
        .await;
    assert!(made.is_err(), "a worker made a bucket");
    assert_eq!(
        config(&cjs, &format!("KV_{LEASE_BUCKET}")).await.max_age,
        LEASE_TTL
    );
    // A value larger than the bucket's is refused by the server, not stored.
    let kv = wjs.get_key_value(LEASE_BUCKET).await.unwrap();
    let big = vec![b'x'; storage::LEASE_MAX_VALUE as usize + 1];
    assert!(kv.put("too-big", big.into()).await.is_err());
    assert!(kv.get("too-big").await.unwrap().is_none());
    lease.release().await;
    assert!(!held.held(&digest).await.unwrap(), "released");

    let log = nats.log_text();
    let violations: Vec<&str> = log.lines().filter(|l| l.contains("Violation")).collect();
    // The coordinator needed nothing it was refused; the worker's three attempts were.
    let refused: Vec<&str> = violations
        .iter()
        .filter(|l| l.contains("$G/user:worker"))
        .filter_map(|l| l.split("Subject ").nth(1))
        .collect();
    assert_eq!(
        refused,
        [
            "\"$JS.API.STREAM.UPDATE.KV_hangar-blob-leases\"",
            "\"$JS.API.STREAM.UPDATE.KV_hangar-rate\"",
            "\"$JS.API.STREAM.CREATE.KV_hangar-elsewhere\"",
        ],
        "{log}"
    );
    assert_eq!(violations.len(), refused.len(), "{violations:?}");
}
