//! How a job is kept in the `hangar-jobs` bucket, so that a restarted coordinator resumes
//! it. A value is one NATS message (1 MiB by default), the API takes lists of 2 MiB and a
//! schedule reads them up to 64 MiB, so a list longer than half a message is kept in parts
//! beside its job (`<id>.list.<n>`), which names their count, size and digest. A list never
//! changes, so every save writes the same parts: a coordinator killed mid-save leaves the
//! parts the job names. Read back, they are checked against it: the bucket is the
//! coordinator's alone, but a value that does not add up is an error naming the job, never
//! a different list. Only a job still to run is resumed, so a finished job is kept without
//! its list (its parts dropped): what the bucket holds grows with the jobs running, not
//! with the thousand kept.

use async_nats::jetstream::kv;
use bytes::Bytes;
use hangar_shared::digest::Digest;
use serde::{Deserialize, Serialize};

use super::JobRequest;
use crate::engine::job::JobSnapshot;

/// The largest value: NATS's default largest message, less room for its headers.
const VALUE_MAX: usize = (1 << 20) - 4096;
/// A list beyond this goes into parts, leaving its job's value room for the snapshot.
const LIST_INLINE_MAX: usize = VALUE_MAX / 2;
/// Parts of one list: enough for the largest list a schedule reads (64 MiB; the API takes
/// 2 MiB bodies).
const LIST_PARTS_MAX: usize = {
    let largest = hangar_shared::local_file::LIST as usize;
    let api = super::routes::BODY_LIMIT;
    (if largest > api { largest } else { api }).div_ceil(VALUE_MAX)
};

/// What the bucket keeps per job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct StoredJob {
    pub request: JobRequest,
    pub snapshot: JobSnapshot,
    /// Where the list is when it is not in `request` (then empty there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    list_parts: Option<ListParts>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ListParts {
    parts: usize,
    size: usize,
    digest: Digest,
}

/// Whether a key of the bucket is a job's (the others are parts of their lists; job ids
/// have no dots).
pub(super) fn is_job_key(key: &str) -> bool {
    !key.contains('.')
}

/// The subjects of the bucket's stream that hold job `id`: its value and its list's parts.
pub(super) fn subjects(bucket: &str, id: &str) -> [String; 2] {
    [format!("$KV.{bucket}.{id}"), format!("$KV.{bucket}.{id}.>")]
}

/// Stores the job: its list's parts first, when it has them, then the job naming them. A
/// snapshot of more failed lines than fit keeps the first.
pub(super) async fn put(
    kv: &kv::Store,
    id: &str,
    request: &JobRequest,
    snapshot: &JobSnapshot,
) -> Result<(), String> {
    let list = request.spec.list.as_bytes();
    let mut request = request.clone();
    let mut list_parts = None;
    // Only a job still to run is resumed, and only then is its list read back: a finished
    // one keeps its snapshot alone, so that the kept jobs (`--keep-jobs`) do not each hold
    // a list of up to 64 MiB.
    let finished = !super::limits::open(&snapshot.state);
    if finished {
        request.spec.list = String::new();
    } else if list.len() > LIST_INLINE_MAX {
        let parts: Vec<&[u8]> = list.chunks(VALUE_MAX).collect();
        if parts.len() > LIST_PARTS_MAX {
            return Err(format!(
                "saving job {id}: its list is {} bytes, and at most {} are kept",
                list.len(),
                LIST_PARTS_MAX * VALUE_MAX
            ));
        }
        for (n, part) in parts.iter().enumerate() {
            kv.put(format!("{id}.list.{n}"), Bytes::copy_from_slice(part))
                .await
                .map_err(|e| format!("saving part {n} of job {id}'s list: {e}"))?;
        }
        list_parts = Some(ListParts {
            parts: parts.len(),
            size: list.len(),
            digest: Digest::of(list),
        });
        request.spec.list = String::new();
    }
    let request_size = serde_json::to_vec(&request).map_or(0, |b| b.len());
    let stored = StoredJob {
        request,
        snapshot: snapshot.within(VALUE_MAX.saturating_sub(request_size + 256)),
        list_parts,
    };
    let bytes = serde_json::to_vec(&stored).map_err(|e| format!("encoding job {id}: {e}"))?;
    kv.put(id, bytes.into())
        .await
        .map_err(|e| format!("saving job {id}: {e}"))?;
    if finished && list.len() > LIST_INLINE_MAX {
        let [_, parts] = subjects(&kv.name, id);
        kv.stream
            .purge()
            .filter(parts)
            .await
            .map_err(|e| format!("dropping the list of finished job {id}: {e}"))?;
    }
    Ok(())
}

/// The job `id` as stored, its list put back together; `None` if there is none.
pub(super) async fn get(kv: &kv::Store, id: &str) -> Result<Option<StoredJob>, String> {
    let Some(value) = kv
        .get(id)
        .await
        .map_err(|e| format!("reading job {id}: {e}"))?
    else {
        return Ok(None);
    };
    let mut stored: StoredJob = serde_json::from_slice(&value)
        .map_err(|e| format!("job {id} in the bucket is not a job: {e}"))?;
    if let Some(parts) = stored.list_parts.take() {
        stored.request.spec.list = read_list(kv, id, &parts).await?;
    }
    Ok(Some(stored))
}

async fn read_list(kv: &kv::Store, id: &str, parts: &ListParts) -> Result<String, String> {
    let broken = |why: String| format!("job {id}'s list in the bucket: {why}");
    if parts.parts > LIST_PARTS_MAX || parts.size > LIST_PARTS_MAX * VALUE_MAX {
        return Err(broken(format!(
            "{} parts of {} bytes is more than a job has",
            parts.parts, parts.size
        )));
    }
    let mut list = Vec::with_capacity(parts.size);
    for n in 0..parts.parts {
        let part = kv
            .get(format!("{id}.list.{n}"))
            .await
            .map_err(|e| broken(format!("reading part {n}: {e}")))?
            .ok_or_else(|| broken(format!("part {n} is missing")))?;
        if list.len() + part.len() > parts.size {
            return Err(broken(format!("its parts are longer than {}", parts.size)));
        }
        list.extend_from_slice(&part);
    }
    if Digest::of(&list) != parts.digest {
        return Err(broken(format!(
            "its parts do not make the list stored ({} bytes, {})",
            parts.size, parts.digest
        )));
    }
    String::from_utf8(list).map_err(|_| broken("it is not UTF-8".into()))
}

#[cfg(test)]
mod tests {
    use async_nats::jetstream;
    use hangar_loadtest::services::NatsProcess;

    use super::*;

    fn request(list: String) -> JobRequest {
        let spec = serde_json::json!({ "version": 1, "kind": "mirror", "list": list });
        serde_json::from_value(serde_json::json!({ "spec": spec })).expect("a request")
    }

    async fn bucket(nats: &NatsProcess) -> kv::Store {
        let client = async_nats::connect(nats.url()).await.expect("nats");
        jetstream::new(client)
            .create_key_value(kv::Config {
                bucket: "jobs".into(),
                history: 1,
                ..Default::default()
            })
            .await
            .expect("the bucket")
    }

    #[tokio::test]
    async fn a_list_longer_than_a_message_comes_back_whole_and_checked() {
        let nats = NatsProcess::start().expect("nats-server");
        let kv = bucket(&nats).await;
        let list: String = (0..40_000)
            .map(|i| format!("registry.example/p/image-{i:05}:v1 é\n"))
            .collect();
        assert!(list.len() > 1 << 20);
        let snapshot = JobSnapshot {
            id: "j1".into(),
            state: "running".into(),
            ..Default::default()
        };
        put(&kv, "j1", &request(list.clone()), &snapshot)
            .await
            .expect("stored");
        put(&kv, "j2", &request("a.io/b/c:1\n".into()), &snapshot)
            .await
            .expect("stored");
        let back = get(&kv, "j1").await.unwrap().expect("the job");
        assert_eq!(back.request.spec.list, list);
        assert_eq!(back.snapshot.state, "running");
        let small = get(&kv, "j2").await.unwrap().expect("the job");
        assert_eq!(small.request.spec.list, "a.io/b/c:1\n");
        assert!(kv.get("j2.list.0").await.unwrap().is_none(), "inline");
        let mut keys: Vec<String> =
            futures_util::StreamExt::collect::<Vec<_>>(kv.keys().await.unwrap())
                .await
                .into_iter()
                .map(Result::unwrap)
                .filter(|k| is_job_key(k))
                .collect();
        keys.sort();
        assert_eq!(keys, ["j1", "j2"], "parts are not jobs");

        // Parts that do not add up are an error naming the job, never another list.
        kv.put(
            "j1.list.0",
            Bytes::from_static(b"registry.example/p/other:v1\n"),
        )
        .await
        .unwrap();
        let e = get(&kv, "j1").await.expect_err("a changed part");
        assert!(
            e.contains("job j1's list") && e.contains("do not make"),
            "{e}"
        );
        kv.delete("j1.list.1").await.unwrap();
        let e = get(&kv, "j1").await.expect_err("a missing part");
        assert!(e.contains("part 1 is missing"), "{e}");
        let claims = serde_json::json!({
            "request": { "spec": { "version": 1, "kind": "mirror", "list": "" } },
            "snapshot": snapshot,
            "list_parts": { "parts": 100_000, "size": 1usize << 40, "digest": Digest::of(b"") },
        });
        kv.put("j3", serde_json::to_vec(&claims).unwrap().into())
            .await
            .unwrap();
        let e = get(&kv, "j3").await.expect_err("more parts than a job has");
        assert!(e.contains("more than a job has"), "{e}");

        // Finished, a job keeps its snapshot and drops its list: only a running job is
        // resumed, and a thousand kept jobs would otherwise hold a list each.
        let list = (0..40_000)
            .map(|i| format!("registry.example/p/image-{i:05}:v2\n"))
            .collect::<String>();
        put(&kv, "j5", &request(list.clone()), &snapshot)
            .await
            .expect("stored");
        assert!(kv.get("j5.list.0").await.unwrap().is_some(), "in parts");
        let done = JobSnapshot {
            state: "succeeded".into(),
            ..snapshot.clone()
        };
        put(&kv, "j5", &request(list), &done).await.expect("stored");
        let back = get(&kv, "j5").await.unwrap().expect("the job");
        assert_eq!(back.snapshot.state, "succeeded");
        assert_eq!(back.request.spec.list, "");
        assert!(
            kv.get("j5.list.0").await.unwrap().is_none(),
            "parts dropped"
        );

        let too_long = "x".repeat(LIST_PARTS_MAX * VALUE_MAX + 1);
        let e = put(&kv, "j4", &request(too_long), &snapshot)
            .await
            .expect_err("longer than a schedule reads");
        assert!(e.contains("at most"), "{e}");
    }
}
