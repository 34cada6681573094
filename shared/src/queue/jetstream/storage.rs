//! What the fleet may keep in JetStream: the events stream and the two KV buckets that
//! workers write (blob leases and the rate ledger) have a size in bytes and per message,
//! so a worker flooding them fills its share of the bucket, not the server's disk, and a
//! reader never takes in a value larger than the rules write.
//!
//! Buckets are made with the streams (by whoever gets there first on an open bus, by the
//! coordinator on a locked-down one, where workers may not create or change a stream) and
//! only the coordinator brings an existing one to these settings: a worker able to update
//! the lease bucket could set its max age to 0 and keep a dead holder's leases for ever.

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};

use super::{EVENT_STREAM, bus};
use crate::error::Result;
use crate::lease::{LEASE_BUCKET, LEASE_TTL};
use crate::queue::exhausted::ADVISORY_STREAM;
use crate::ratelimit::RATE_BUCKET;

/// Events are read as they come; a day of them beyond this drops the oldest first. NATS
/// reserves every stream's size on its disk (about 0.9 GiB for these four together).
pub const EVENTS_MAX_BYTES: i64 = 512 << 20;
/// An event is a task's outcome: a scan inventory is the largest (tens of KB).
pub const EVENT_MAX_SIZE: i32 = 1 << 20;
/// A lease is a holder's name under a digest: 64 MiB is some 300,000 at once.
pub const LEASES_MAX_BYTES: i64 = 64 << 20;
pub const LEASE_MAX_VALUE: i32 = 1 << 10;
/// A window or the slots of one registry, and every live process's published limits. A
/// value is rewritten whole on every change, so it may be as large as a message (a slots
/// map of thousands of `--max-in-flight` slots): the rules' compare-and-swap loops would
/// otherwise retry a write the server always refuses.
pub const RATE_MAX_BYTES: i64 = 256 << 20;
pub const RATE_MAX_VALUE: i32 = 1 << 20;
/// The server's max-deliveries advisories: one small message per task whose deliveries
/// ran out.
pub const ADVISORIES_MAX_BYTES: i64 = 64 << 20;
pub const ADVISORIES_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// A task older than this leaves the queue whatever its state. A worker holding one for
/// ever (work in progress sent without end, a nak with a delay of years) would hold its
/// run for ever; past this, the task is gone with no answer, which its run publishes again
/// and then fails ([`super::ledger`]). A week: well past three deliveries of the longest
/// timeout a job may set (a day each), and a run publishes the tasks of the images it has
/// in progress, not its whole list. An operator's shorter age is kept.
pub const TASKS_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long a registry's rate state outlives its last write.
const RATE_MAX_AGE: Duration = Duration::from_secs(3600);

pub fn lease_bucket() -> kv::Config {
    kv::Config {
        bucket: LEASE_BUCKET.into(),
        history: 1,
        max_age: LEASE_TTL,
        max_bytes: LEASES_MAX_BYTES,
        max_value_size: LEASE_MAX_VALUE,
        ..Default::default()
    }
}

pub fn rate_bucket() -> kv::Config {
    kv::Config {
        bucket: RATE_BUCKET.into(),
        history: 1,
        max_age: RATE_MAX_AGE,
        max_bytes: RATE_MAX_BYTES,
        max_value_size: RATE_MAX_VALUE,
        ..Default::default()
    }
}

pub fn events_stream() -> stream::Config {
    stream::Config {
        name: EVENT_STREAM.into(),
        subjects: vec!["hangar.event.>".into()],
        storage: stream::StorageType::File,
        max_age: Duration::from_secs(24 * 3600),
        max_bytes: EVENTS_MAX_BYTES,
        max_message_size: EVENT_MAX_SIZE,
        ..Default::default()
    }
}

/// The bucket, made with `config` when it does not exist.
pub async fn bucket(js: &jetstream::Context, config: kv::Config) -> Result<kv::Store> {
    match js.get_key_value(&config.bucket).await {
        Ok(kv) => Ok(kv),
        Err(_) => js.create_key_value(config).await.map_err(bus),
    }
}

/// Brings the events, advisory and task streams and the shared buckets, made by an older
/// version or by hand, to this version's age and sizes. The coordinator's to do. Each
/// stream on its own, and what fails is said, not a reason to fail the run: an older
/// version's unbounded streams still work (a server that cannot reserve the sizes, a
/// coordinator whose permissions predate a bound).
pub async fn bring_to_bounds(js: &jetstream::Context) {
    let events = events_stream();
    let wanted = [
        (
            events.name.clone(),
            events.max_age,
            events.max_bytes,
            events.max_message_size,
        ),
        (
            ADVISORY_STREAM.to_owned(),
            ADVISORIES_MAX_AGE,
            ADVISORIES_MAX_BYTES,
            -1,
        ),
        kv_bounds(&lease_bucket()),
        kv_bounds(&rate_bucket()),
    ];
    for (name, max_age, max_bytes, max_message_size) in wanted {
        bound(js, &name, |config| {
            (config.max_age, config.max_bytes, config.max_message_size) =
                (max_age, max_bytes, max_message_size);
        })
        .await;
    }
    // The task stream is given its max age only: its sizes are the operator's, and so is a
    // shorter age.
    bound(js, super::TASK_STREAM, |config| {
        if config.max_age.is_zero() || config.max_age > TASKS_MAX_AGE {
            config.max_age = TASKS_MAX_AGE;
        }
    })
    .await;
}

/// Applies `change` to stream `name`'s configuration, and updates the stream if it changed;
/// a failure is said.
async fn bound(js: &jetstream::Context, name: &str, change: impl FnOnce(&mut stream::Config)) {
    if let Err(e) = try_bound(js, name, change).await {
        tracing::warn!(stream = %name, "bounding the stream: {e}");
    }
}

async fn try_bound(
    js: &jetstream::Context,
    name: &str,
    change: impl FnOnce(&mut stream::Config),
) -> Result<()> {
    // The stream's configuration comes with it: no second request.
    let stream = js.get_stream(name).await.map_err(bus)?;
    let config = stream.cached_info().config.clone();
    let mut wanted = config.clone();
    change(&mut wanted);
    // NATS refuses a duplicate window longer than the max age.
    if !wanted.max_age.is_zero() {
        wanted.duplicate_window = wanted.duplicate_window.min(wanted.max_age);
    }
    if (wanted.max_age, wanted.max_bytes, wanted.max_message_size)
        == (config.max_age, config.max_bytes, config.max_message_size)
    {
        return Ok(());
    }
    tracing::info!(
        stream = %name,
        "bringing the stream to max age {:?}, {} bytes, {} per message",
        wanted.max_age,
        wanted.max_bytes,
        wanted.max_message_size
    );
    js.update_stream(wanted).await.map_err(bus)?;
    Ok(())
}

fn kv_bounds(config: &kv::Config) -> (String, Duration, i64, i32) {
    (
        format!("KV_{}", config.bucket),
        config.max_age,
        config.max_bytes,
        config.max_value_size,
    )
}
