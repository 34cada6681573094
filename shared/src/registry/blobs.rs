//! Blobs: existence and size, a verified stream, a monolithic upload with a known length,
//! and cross-repository mounts — each under the gate, retried where a request can be
//! repeated (a consumed stream cannot: the copy is retried whole).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::{StreamExt, TryStreamExt};
use reqwest::{Method, StatusCode, Url};

use super::classify::request_error_text;
use super::fetch::{Target, answer, network};
use super::{Registry, Side};
use crate::digest::Digest;
use crate::error::{Error, FailureClass, Result};
use crate::manifest::Descriptor;
use crate::store::{BlobLook, OpenedUpload};
use crate::verify::{ByteStream, verified};

impl Registry {
    pub async fn blob_exists(&self, repo: &str, digest: &Digest, side: Side) -> Result<bool> {
        Ok(self.head_blob(repo, digest, side).await?.is_some())
    }

    /// A blob's size by a HEAD request: `None` when the registry does not hold it. What a
    /// schema 1 manifest does not say, and a verified read needs.
    pub async fn blob_size(&self, repo: &str, digest: &Digest) -> Result<Option<u64>> {
        let what = format!("{}/{repo}@{digest}", self.host);
        match self.head_blob(repo, digest, Side::Source).await? {
            None => Ok(None),
            Some(Some(size)) => Ok(Some(size)),
            Some(None) => Err(Error::invalid(format!(
                "{what}: the registry did not say the blob's size"
            ))),
        }
    }

    /// `None` when the blob is not there; else its `Content-Length`, if the registry said it.
    async fn head_blob(
        &self,
        repo: &str,
        digest: &Digest,
        side: Side,
    ) -> Result<Option<Option<u64>>> {
        let url = self.repo_url(repo, &format!("blobs/{digest}"))?;
        let what = format!("{}/{repo}@{digest}", self.host);
        self.retry
            .run(&format!("head blob {what}"), || async {
                let head = self.send(Method::HEAD, &url, Target::pull(repo, side, &what), |r| r);
                match self.own_request("blob-head", &what, head).await {
                    // The header itself: reqwest's `content_length` is the body's, none
                    // for a HEAD.
                    Ok(resp) => Ok(Some(
                        resp.headers()
                            .get(reqwest::header::CONTENT_LENGTH)
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.parse::<u64>().ok()),
                    )),
                    Err(e) if e.class == FailureClass::NotFound => Ok(None),
                    Err(e) => Err(e),
                }
            })
            .await
    }

    /// Opens a blob as a stream verified against `desc` (size and digest). One attempt:
    /// the caller retries the whole copy, since a consumed stream cannot be replayed. The
    /// request is bounded up to its answer; its body between chunks ([`idle_bounded`]),
    /// not as a whole.
    pub async fn blob_stream(
        &self,
        repo: &str,
        desc: &Descriptor,
        progress: Option<Arc<AtomicU64>>,
    ) -> Result<ByteStream> {
        let raw = self.unverified_blob_stream(repo, desc).await?;
        Ok(verified(raw, desc.digest.clone(), desc.size, progress))
    }

    /// The blob's bytes as the registry sends them: its length checked against `desc` when
    /// it says one, the body bounded between chunks, and nothing else. For a reader that
    /// hashes what it takes itself (the streamed save, which must know the hash of a cut
    /// read's first bytes to take it up again) and would otherwise hash every byte twice;
    /// it must bound the size and compare the digest.
    pub(crate) async fn unverified_blob_stream(
        &self,
        repo: &str,
        desc: &Descriptor,
    ) -> Result<ByteStream> {
        let what = format!("{}/{repo}@{}", self.host, desc.digest);
        let url = self.repo_url(repo, &format!("blobs/{}", desc.digest))?;
        let get = self.send(
            Method::GET,
            &url,
            Target::pull(repo, Side::Source, &what),
            |r| r,
        );
        let (resp, permit) = self.send_held("blob-get", &what, get).await?;
        if resp.content_length().is_some_and(|n| n != desc.size) {
            return Err(Error::new(
                FailureClass::DigestMismatch,
                format!(
                    "{what}: the registry sends {} bytes where the manifest says {}",
                    resp.content_length().unwrap_or_default(),
                    desc.size
                ),
            ));
        }
        let reading = what.clone();
        let raw = resp
            .bytes_stream()
            // The request holds its concurrency slot until its body is read or dropped.
            .inspect(move |_| {
                let _held = &permit;
            })
            .map_err(move |e| {
                Error::new(
                    FailureClass::Network,
                    format!("reading {reading}: {}", request_error_text(&e)),
                )
            })
            .boxed();
        Ok(idle_bounded(raw, super::BODY_READ_TIMEOUT, desc.size, what))
    }

    /// Uploads a blob from a stream: a POST for an upload location, then one PUT of the
    /// whole body with its length. If the stream fails (a digest mismatch on its last chunk
    /// included) the upload is abandoned unfinished, and the stream's own error returned.
    ///
    /// `opened`: the upload [`Registry::look_or_open`] opened, used instead of a POST.
    pub async fn push_blob(
        &self,
        repo: &str,
        desc: &Descriptor,
        stream: ByteStream,
        opened: Option<OpenedUpload>,
    ) -> Result<()> {
        let what = format!("{}/{repo}@{}", self.host, desc.digest);
        let target = Target::push(repo, &what);
        let given = opened.is_some();
        let OpenedUpload { at: opened, end } = match opened {
            Some(opened) => opened,
            None => {
                let start = self.repo_url(repo, "blobs/uploads/")?;
                let post = self.send(Method::POST, &start, target, |r| {
                    r.header(reqwest::header::CONTENT_LENGTH, 0)
                });
                let opened = self.own_request("blob-upload", &what, post).await?;
                self.opened_upload(&opened, target).await?
            }
        };
        let mut location = opened.clone();
        location
            .query_pairs_mut()
            .append_pair("digest", &desc.digest.to_string());
        let failure = Arc::new(std::sync::Mutex::new(None::<Error>));
        let seen = failure.clone();
        let body = stream.inspect_err(move |e: &Error| {
            if let Ok(mut slot) = seen.lock() {
                *slot = Some(e.clone());
            }
        });
        let req = self
            .client_for(repo)?
            .put(location.clone())
            .header(reqwest::header::CONTENT_LENGTH, desc.size)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(reqwest::Body::wrap_stream(body));
        let req = self.authorised(req, location.as_str(), target).await?;
        // The PUT's body is the blob: not bounded as a whole here (the copy is, as a task,
        // and its source between chunks).
        let permit = self.admit(1).await;
        let started = std::time::Instant::now();
        let sent = match req.send().await {
            Ok(resp) => answer(resp, target).await.map(drop),
            Err(e) => Err(network(&e, target)),
        };
        drop(permit);
        // Finished: nothing to end, whatever happens to this future from here on.
        let end = match &sent {
            Ok(()) => {
                end.disarm();
                None
            }
            Err(_) => Some(end),
        };
        // An upload opened when the blob was looked for may have expired while the blob
        // was fetched (a slow source, the cache filled first): a retry opens a new one.
        let sent = match sent {
            Err(e) if given && e.class == FailureClass::NotFound => Err(Error::new(
                FailureClass::Network,
                format!(
                    "{what}: the upload opened when the blob was looked for is gone: {}",
                    e.message
                ),
            )),
            sent => sent,
        };
        self.observe(
            "blob-put",
            started.elapsed(),
            sent.as_ref().err().map(|e| e.class),
        )
        .await;
        self.hold_back_on_429(&sent).await;
        if let Some(end) = end {
            self.end_upload(end, target).await;
        }
        if let Some(e) = failure.lock().ok().and_then(|mut s| s.take()) {
            return Err(e);
        }
        sent
    }

    /// Cross-repository mount. `Ok(false)` when the registry declined (it then expects an
    /// ordinary upload).
    pub async fn mount_blob(&self, repo: &str, from_repo: &str, digest: &Digest) -> Result<bool> {
        let what = format!("{}/{repo} mount {digest} from {from_repo}", self.host);
        Ok(
            match self
                .mount(repo, from_repo, digest, "blob-mount", &what)
                .await?
            {
                Mounted::Linked => true,
                Mounted::Opened(opened) => {
                    // A repository this job already put the blob in, declined: the registry
                    // does not mount, and a mount's answer says nothing of what it holds
                    // ([`Registry::look_or_open`]).
                    self.mounts.store(MOUNTS_DECLINED, Ordering::Relaxed);
                    // Declined: the upload it opened instead is not the one we make.
                    if let Some(opened) = opened {
                        self.end_upload(opened.end, Target::push(repo, &what)).await;
                    }
                    false
                }
                Mounted::Declined => false,
            },
        )
    }

    /// `POST …/uploads/?mount=<digest>&from=<from_repo>`, retried on transient answers
    /// (5xx, 429, cut connections) like every other request. Any other refusal is a
    /// decline, a refused reading of the other repository included: the caller looks and
    /// uploads instead, where a real want of rights shows.
    async fn mount(
        &self,
        repo: &str,
        from_repo: &str,
        digest: &Digest,
        op: &'static str,
        what: &str,
    ) -> Result<Mounted> {
        let mut url = Url::parse(&self.repo_url(repo, "blobs/uploads/")?)
            .map_err(|e| Error::invalid(format!("{what}: {e}")))?;
        // The repository mounted from is named to the registry as well: held to the same
        // grammar, or not asked (the caller uploads instead).
        if crate::reference::validate_repository(from_repo).is_err() {
            return Ok(Mounted::Declined);
        }
        url.query_pairs_mut()
            .append_pair("mount", &digest.to_string())
            .append_pair("from", from_repo);
        self.retry
            .run(what, || async {
                let post = self.send(Method::POST, url.as_str(), Target::push(repo, what), |r| {
                    r.header(reqwest::header::CONTENT_LENGTH, 0)
                });
                match self.own_request(op, what, post).await {
                    Ok(resp) if resp.status() == StatusCode::CREATED => {
                        self.mounts.store(MOUNTS_HONOURED, Ordering::Relaxed);
                        Ok(Mounted::Linked)
                    }
                    Ok(resp) if resp.status() == StatusCode::ACCEPTED => {
                        let opened = self.opened_upload(&resp, Target::push(repo, what)).await;
                        Ok(Mounted::Opened(opened.ok()))
                    }
                    Ok(_) => Ok(Mounted::Declined),
                    Err(e) if !e.class.is_retryable() => Ok(Mounted::Declined),
                    Err(e) => Err(e),
                }
            })
            .await
    }

    /// Whether `repo` holds the blob, asked as a mount from `repo` itself: a registry that
    /// holds it links it again (201, nothing to send), one that does not opens the upload
    /// the copy needs (202) — one request where a look and an upload's start are two.
    ///
    /// A registry that ignores the question (some answer 202 to every mount, holding the
    /// blob or not) must not have present blobs sent again, so a 202 is believed only from
    /// a registry that has answered a mount with 201 in this process: until then a HEAD
    /// goes beside the POST (at once, no round trip more), and a HEAD that finds what the
    /// POST did not marks the registry as one that does not mount — HEAD alone from then
    /// on, as for one that declined a cross-repository mount or refuses the question.
    pub async fn look_or_open(&self, repo: &str, digest: &Digest) -> Result<BlobLook> {
        let head = || async {
            Ok(
                match self.blob_exists(repo, digest, Side::Destination).await? {
                    true => BlobLook::Present,
                    false => BlobLook::Absent(None),
                },
            )
        };
        match self.mounts.load(Ordering::Relaxed) {
            MOUNTS_DECLINED => head().await,
            MOUNTS_HONOURED => match self.mount_from_itself(repo, digest).await? {
                Some(look) => Ok(look),
                None => head().await,
            },
            _ => {
                let (asked, looked) =
                    futures_util::future::join(self.mount_from_itself(repo, digest), head()).await;
                match (asked?, looked?) {
                    (Some(BlobLook::Present), _) => Ok(BlobLook::Present),
                    (Some(BlobLook::Absent(opened)), BlobLook::Present) => {
                        self.mounts.store(MOUNTS_DECLINED, Ordering::Relaxed);
                        if let Some(opened) = opened {
                            self.abandon_opened(repo, opened).await;
                        }
                        Ok(BlobLook::Present)
                    }
                    (Some(absent), BlobLook::Absent(_)) => Ok(absent),
                    (None, looked) => Ok(looked),
                }
            }
        }
    }

    /// A mount from `repo` itself: 201 present, 202 absent with the upload opened; `None`
    /// when the registry refuses the question or answers it otherwise.
    async fn mount_from_itself(&self, repo: &str, digest: &Digest) -> Result<Option<BlobLook>> {
        let what = format!("{}/{repo} look for {digest}", self.host);
        Ok(
            match self.mount(repo, repo, digest, "blob-look", &what).await? {
                Mounted::Linked => Some(BlobLook::Present),
                Mounted::Opened(Some(opened)) => Some(BlobLook::Absent(Some(opened))),
                Mounted::Opened(None) | Mounted::Declined => None,
            },
        )
    }
}

/// A registry's answer to a mount.
enum Mounted {
    /// 201: the blob is in the repository now.
    Linked,
    /// 202: an upload opened instead (if the registry said where).
    Opened(Option<OpenedUpload>),
    /// Any other answer, or a refusal.
    Declined,
}

/// What a registry has shown of its mounts in this process ([`Registry::look_or_open`]).
pub(super) const MOUNTS_UNKNOWN: u8 = 0;
const MOUNTS_HONOURED: u8 = 1;
const MOUNTS_DECLINED: u8 = 2;

impl Registry {
    /// Ends an upload [`Registry::look_or_open`] opened that no copy will finish.
    pub async fn abandon_opened(&self, repo: &str, opened: OpenedUpload) {
        let what = format!("{}/{repo} upload", self.host);
        self.end_upload(opened.end, Target::push(repo, &what)).await
    }
}

/// How a blob's body must keep moving: a chunk at least every `idle`, and at least `least`
/// bytes (or the rest of the blob, if less) in every `window` spent waiting on it (time
/// the reader spends elsewhere, held back by its own writer, does not count). The second
/// bounds a body that drips a byte just often enough never to be idle; its window is twice
/// the idle bound, so one stall the idle bound allows never fails a body that otherwise
/// moves (at the default, about 110 bytes a second over ten minutes).
#[derive(Debug, Clone, Copy)]
struct Pace {
    idle: std::time::Duration,
    window: std::time::Duration,
    least: u64,
}

const DRIP_WINDOW: std::time::Duration = std::time::Duration::from_secs(600);
const DRIP_LEAST: u64 = 64 << 10;

/// `stream` (a body of `size` bytes), failing when no chunk arrives for `idle`, or too
/// little in ten minutes of waiting: a body that stops moving, or only pretends to move.
fn idle_bounded(
    stream: ByteStream,
    idle: std::time::Duration,
    size: u64,
    what: String,
) -> ByteStream {
    let pace = Pace {
        idle,
        window: DRIP_WINDOW,
        least: DRIP_LEAST,
    };
    paced(stream, pace, size, what)
}

fn paced(stream: ByteStream, pace: Pace, size: u64, what: String) -> ByteStream {
    // The body, the time waited on it and the bytes it brought in this window, and the
    // bytes before the window.
    let state = (stream, std::time::Duration::ZERO, 0u64, 0u64);
    futures_util::stream::unfold(Some(state), move |state| {
        let what = what.clone();
        async move {
            let (mut stream, mut waited, mut moved, mut before) = state?;
            let asked = tokio::time::Instant::now();
            let next = tokio::time::timeout(pace.idle, stream.next()).await;
            waited += asked.elapsed();
            let fail = |why: String| {
                let e = Error::new(FailureClass::Network, format!("reading {what}: {why}"));
                Some((Err(e), None))
            };
            match next {
                Ok(Some(item)) => {
                    moved += item.as_ref().map_or(0, |c| c.len() as u64);
                    if waited >= pace.window {
                        if moved < pace.least.min(size.saturating_sub(before)) {
                            return fail(format!(
                                "{moved} bytes arrived in {}s of waiting (a body this slow is \
                                 treated as stalled)",
                                waited.as_secs()
                            ));
                        }
                        before += moved;
                        (waited, moved) = (std::time::Duration::ZERO, 0);
                    }
                    Some((item, Some((stream, waited, moved, before))))
                }
                Ok(None) => None,
                Err(_) => fail(format!("nothing arrived for {}s", pace.idle.as_secs())),
            }
        }
    })
    .boxed()
}

impl Registry {
    /// The upload a 202 opened: where it continues, and the DELETE that ends it unused
    /// ([`Registry::upload_end`]).
    async fn opened_upload(
        &self,
        resp: &reqwest::Response,
        target: Target<'_>,
    ) -> Result<OpenedUpload> {
        let at = upload_location(resp, target.what)?;
        let end = self.upload_end(&at, target).await;
        Ok(OpenedUpload { at, end })
    }
}

/// Where an opened upload continues: its `Location`, relative to the request's URL.
fn upload_location(resp: &reqwest::Response, what: &str) -> Result<Url> {
    let location = resp
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            Error::new(
                FailureClass::DestinationRejected,
                format!("{what}: the registry opened an upload without saying where"),
            )
        })?;
    resp.url().join(location).map_err(|e| {
        Error::new(
            FailureClass::DestinationRejected,
            format!("{what}: the upload location is not a URL: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use bytes::Bytes;
    use futures_util::StreamExt;

    use super::{Pace, idle_bounded, paced};
    use crate::error::FailureClass;

    /// A body that sends one chunk and then nothing ends at the idle bound, naming the
    /// blob; one that keeps moving is read to its end however long it takes.
    #[tokio::test]
    async fn a_body_that_stops_moving_ends_at_the_idle_bound() {
        let stalled = futures_util::stream::once(async { Ok(Bytes::from_static(b"first")) })
            .chain(futures_util::stream::pending())
            .boxed();
        let started = Instant::now();
        let mut read = idle_bounded(
            stalled,
            Duration::from_millis(200),
            1 << 20,
            "reg/app@x".into(),
        );
        assert_eq!(
            read.next().await.expect("chunk").expect("ok").as_ref(),
            b"first"
        );
        let e = read.next().await.expect("error").unwrap_err();
        assert_eq!(e.class, FailureClass::Network);
        assert!(e.message.contains("reg/app@x") && e.message.contains("nothing arrived"));
        assert!(read.next().await.is_none(), "nothing after the error");
        assert!(started.elapsed() < Duration::from_secs(5));

        let slow = futures_util::stream::iter(0..5)
            .then(|i| async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                Ok(Bytes::from(vec![i; 3]))
            })
            .boxed();
        let chunks: Vec<_> = idle_bounded(slow, Duration::from_millis(300), 15, "b".into())
            .collect()
            .await;
        assert_eq!(chunks.len(), 5);
        assert!(chunks.iter().all(|c| c.is_ok()));
    }

    /// A body that drips a byte just often enough never to be idle ends once a window of
    /// waiting brought less than its least; a slow one that moves enough is read to its end.
    #[tokio::test]
    async fn a_body_that_drips_ends_at_its_least_pace() {
        let pace = Pace {
            idle: Duration::from_millis(200),
            window: Duration::from_millis(500),
            least: 100,
        };
        let drip = futures_util::stream::iter(0..1000)
            .then(|_| async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok(Bytes::from_static(b"x"))
            })
            .boxed();
        let started = Instant::now();
        let read: Vec<_> = paced(drip, pace, 1000, "reg/app@drip".into())
            .collect()
            .await;
        let e = read.last().expect("items").as_ref().unwrap_err();
        assert!(
            e.message.contains("reg/app@drip") && e.message.contains("treated as stalled"),
            "{e}"
        );
        assert!(read.len() < 20, "{} bytes let through", read.len());
        assert!(started.elapsed() < Duration::from_secs(3));

        let steady = futures_util::stream::iter(0..30)
            .then(|_| async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok(Bytes::from(vec![0u8; 64]))
            })
            .boxed();
        let read: Vec<_> = paced(steady, pace, 30 * 64, "b".into()).collect().await;
        assert_eq!(read.len(), 30);
        assert!(read.iter().all(|c| c.is_ok()));

        // A small blob held back for longer than a window, then sent whole: its rest was
        // less than the least, and it all came.
        let held = futures_util::stream::once(async {
            tokio::time::sleep(Duration::from_millis(150)).await;
            Ok(Bytes::from_static(b"small"))
        })
        .boxed();
        let pace = Pace {
            window: Duration::from_millis(100),
            ..pace
        };
        let read: Vec<_> = paced(held, pace, 5, "small".into()).collect().await;
        assert_eq!(read.len(), 1);
        assert!(read.iter().all(|c| c.is_ok()), "{read:?}");
    }
}
