//! Blobs into a registry against peers: looks that are mounts from the blob's own
//! repository, registries that ignore mounts, uploads opened and gone, and uploads nobody
//! will finish ended (declined mounts, dropped copies), their DELETE under the gate.

use std::sync::{Arc, Mutex};

use super::{Seen, blob, connected, peer, plain_http};
use crate::registry::{Registry, RegistryOptions};

/// A mount the registry declines by opening an upload (202) ends that upload, so that the
/// registry does not keep it; the caller then uploads as usual.
#[tokio::test]
async fn a_declined_mount_ends_the_upload_it_opened() {
    let (addr, seen) = peer(Arc::new(|path: &str, _| {
        if path.starts_with("/v2/app/blobs/uploads/?mount=") {
            let at = "Location: /v2/app/blobs/uploads/u1?_state=s\r\n".to_owned();
            return (202, at, String::new());
        }
        (204, String::new(), String::new())
    }))
    .await;
    let reg = connected(&addr).await;
    let digest = crate::digest::Digest::of(b"x");
    assert!(
        !reg.mount_blob("app", "other", &digest)
            .await
            .expect("declined")
    );
    let seen = seen.lock().expect("seen").clone();
    assert!(
        seen.iter()
            .any(|s| s.method == "DELETE" && s.path == "/v2/app/blobs/uploads/u1?_state=s"),
        "{seen:?}"
    );
}

/// A registry answering mounts as distribution does, or as one that ignores them (202 to
/// every mount, whatever it holds); it holds the blob `held`, and its uploads' PUTs answer
/// `put_status`.
async fn mounting_peer(honours: bool, put_status: u16) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let held = crate::digest::Digest::of(b"held").hex().to_owned();
    peer(Arc::new(move |path: &str, _| {
        let opened = "Location: /v2/app/blobs/uploads/u1?_state=s\r\n".to_owned();
        match path {
            p if p.contains("mount=") => {
                let from_itself = p.contains("from=app") && p.contains(&held);
                match honours && from_itself {
                    true => (201, String::new(), String::new()),
                    false => (202, opened, String::new()),
                }
            }
            p if p.starts_with("/v2/app/blobs/sha256:") => match p.contains(&held) {
                true => (200, "Content-Length: 4\r\n".to_owned(), String::new()),
                false => (404, String::new(), String::new()),
            },
            p if p.starts_with("/v2/app/blobs/uploads/u1") => {
                (put_status, String::new(), String::new())
            }
            _ => (200, String::new(), "{}".to_owned()),
        }
    }))
    .await
}

fn methods(seen: &Arc<Mutex<Vec<Seen>>>, from: usize) -> Vec<String> {
    let seen = seen.lock().expect("seen");
    let mut m: Vec<String> = seen[from..].iter().map(|s| s.method.clone()).collect();
    m.sort();
    m
}

/// A blob is looked for as a mount from its own repository. Until the registry has shown
/// it mounts, a HEAD goes beside that POST; after a 201, the POST alone (its 202 opens the
/// upload the PUT then uses); after a declined cross-repository mount, the HEAD alone.
#[tokio::test]
async fn a_blob_is_looked_for_by_a_mount_from_its_own_repository() {
    use crate::store::BlobLook;
    let (addr, seen) = mounting_peer(true, 201).await;
    let reg = connected(&addr).await;
    let held = crate::digest::Digest::of(b"held");
    let at = seen.lock().expect("seen").len();
    let look = reg.look_or_open("app", &held).await.expect("look");
    assert!(matches!(look, BlobLook::Present), "{look:?}");
    assert_eq!(methods(&seen, at), ["HEAD", "POST"]);

    let (desc, stream) = blob(b"new");
    let at = seen.lock().expect("seen").len();
    let BlobLook::Absent(Some(opened)) = reg.look_or_open("app", &desc.digest).await.expect("look")
    else {
        panic!("a registry that mounts opens the upload with the look");
    };
    reg.push_blob("app", &desc, stream, Some(opened))
        .await
        .expect("upload");
    assert_eq!(
        methods(&seen, at),
        ["POST", "PUT"],
        "no HEAD, no second POST"
    );
    let put = seen.lock().expect("seen").last().expect("put").path.clone();
    assert!(
        put.starts_with("/v2/app/blobs/uploads/u1?_state=s&digest="),
        "{put}"
    );

    // A cross-repository mount declined: the registry's 202s say nothing any more.
    assert!(
        !reg.mount_blob("app", "other", &held)
            .await
            .expect("declined")
    );
    let at = seen.lock().expect("seen").len();
    let look = reg.look_or_open("app", &desc.digest).await.expect("look");
    assert!(matches!(look, BlobLook::Absent(None)), "{look:?}");
    assert_eq!(methods(&seen, at), ["HEAD"]);
}

/// A registry that answers 202 to every mount while it holds the blob: the HEAD beside the
/// first look finds it (not sent again), its upload is ended, and later looks are HEADs.
#[tokio::test]
async fn a_registry_that_ignores_mounts_has_its_blobs_found_by_a_head() {
    use crate::store::BlobLook;
    let (addr, seen) = mounting_peer(false, 201).await;
    let reg = connected(&addr).await;
    let held = crate::digest::Digest::of(b"held");
    let at = seen.lock().expect("seen").len();
    let look = reg.look_or_open("app", &held).await.expect("look");
    assert!(matches!(look, BlobLook::Present), "{look:?}");
    assert_eq!(
        methods(&seen, at),
        ["DELETE", "HEAD", "POST"],
        "the upload it opened is ended"
    );
    let at = seen.lock().expect("seen").len();
    let look = reg.look_or_open("app", &held).await.expect("look");
    assert!(matches!(look, BlobLook::Present), "{look:?}");
    assert_eq!(methods(&seen, at), ["HEAD"]);
}

/// An upload opened by the look and gone by the time of its PUT (404) fails the attempt as
/// one to retry, which opens a new upload — not as a missing blob.
#[tokio::test]
async fn an_upload_opened_by_the_look_and_gone_is_retried() {
    let (addr, _) = mounting_peer(true, 404).await;
    let reg = connected(&addr).await;
    let (desc, stream) = blob(b"new");
    let Ok(crate::store::BlobLook::Absent(Some(opened))) =
        reg.look_or_open("app", &desc.digest).await
    else {
        panic!("an upload opened");
    };
    let e = reg
        .push_blob("app", &desc, stream, Some(opened))
        .await
        .expect_err("gone");
    assert!(e.class.is_retryable(), "{e}");
    assert!(e.message.contains("is gone"), "{e}");
}

/// A registry that opens the look's upload (202) without saying where: the look is not an
/// error and not taken for "absent" on the POST's word — the HEAD answers, beside the POST
/// while the registry's mounts are unknown, after it once they are honoured.
#[tokio::test]
async fn a_look_answered_202_without_a_location_falls_back_to_the_head() {
    use crate::store::BlobLook;
    let held = crate::digest::Digest::of(b"held").hex().to_owned();
    let (addr, seen) = peer(Arc::new(move |path: &str, _| match path {
        p if p.contains("mount=") && p.contains(&held) => (201, String::new(), String::new()),
        p if p.contains("mount=") => (202, String::new(), String::new()),
        p if p.starts_with("/v2/app/blobs/sha256:") => match p.contains(&held) {
            true => (200, "Content-Length: 4\r\n".to_owned(), String::new()),
            false => (404, String::new(), String::new()),
        },
        _ => (200, String::new(), "{}".to_owned()),
    }))
    .await;
    let reg = connected(&addr).await;
    let new = crate::digest::Digest::of(b"new");
    let at = seen.lock().expect("seen").len();
    let look = reg.look_or_open("app", &new).await.expect("look");
    assert!(matches!(look, BlobLook::Absent(None)), "{look:?}");
    assert_eq!(methods(&seen, at), ["HEAD", "POST"]);

    // A 201 for a blob it holds: mounts are honoured, the POST goes alone, and its 202
    // without a location is followed by a HEAD.
    let held = crate::digest::Digest::of(b"held");
    let look = reg.look_or_open("app", &held).await.expect("look");
    assert!(matches!(look, BlobLook::Present), "{look:?}");
    let at = seen.lock().expect("seen").len();
    let look = reg.look_or_open("app", &new).await.expect("look");
    assert!(matches!(look, BlobLook::Absent(None)), "{look:?}");
    let seen = seen.lock().expect("seen")[at..].to_vec();
    let order: Vec<&str> = seen.iter().map(|s| s.method.as_str()).collect();
    assert_eq!(order, ["POST", "HEAD"], "{seen:?}");
}

/// An upload the look opened and dropped unused (its copy dropped at a timeout) is ended
/// from its `Drop`, and `uploads_ended` waits for that DELETE's answer.
#[tokio::test(flavor = "multi_thread")]
async fn an_opened_upload_dropped_unused_is_ended() {
    use crate::store::BlobLook;
    let (addr, seen) = mounting_peer(true, 201).await;
    let gate = Arc::new(CountingGate::default());
    let reg = Registry::connect(
        &addr,
        &RegistryOptions {
            gate: Some(gate.clone()),
            ..plain_http()
        },
        None,
    )
    .await
    .expect("connect");
    let held = crate::digest::Digest::of(b"held");
    assert!(matches!(
        reg.look_or_open("app", &held).await.expect("look"),
        BlobLook::Present
    ));
    let new = crate::digest::Digest::of(b"new");
    let BlobLook::Absent(Some(opened)) = reg.look_or_open("app", &new).await.expect("look") else {
        panic!("an upload opened by the look");
    };
    let at = seen.lock().expect("seen").len();
    let admitted = gate.admitted();
    drop(opened);
    crate::registry::uploads_ended(std::time::Duration::from_secs(5)).await;
    let seen = seen.lock().expect("seen")[at..].to_vec();
    assert!(
        seen.iter()
            .any(|s| s.method == "DELETE" && s.path == "/v2/app/blobs/uploads/u1?_state=s"),
        "{seen:?}"
    );
    // The DELETE sent from the `Drop` waited for the registry's gate like any request.
    assert_eq!(gate.admitted(), admitted + 1);
}

/// A gate that admits everything and counts what it admits.
#[derive(Debug, Default)]
struct CountingGate(std::sync::atomic::AtomicU32);

impl CountingGate {
    fn admitted(&self) -> u32 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[async_trait::async_trait]
impl crate::ratelimit::Gate for CountingGate {
    async fn admit(&self, _host: &str, requests: u32) -> crate::ratelimit::Permit {
        self.0
            .fetch_add(requests, std::sync::atomic::Ordering::SeqCst);
        crate::ratelimit::Permit::default()
    }
    async fn back_off(&self, _host: &str, _wait: std::time::Duration) {}
    async fn observe(&self, _host: &str, _request: crate::ratelimit::Request) -> bool {
        false
    }
}
