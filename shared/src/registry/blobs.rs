//! Blobs: existence, a verified stream by whole-blob range request, a monolithic upload with
//! a known length, and cross-repository mounts — each under the gate, retried where a
//! request can be repeated (a consumed stream cannot: the copy is retried whole).

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use futures_util::{StreamExt, TryStreamExt};
use oci_client::RegistryOperation;
use oci_client::client::BlobResponse;
use oci_client::errors::OciDistributionError;

use super::{Call, Registry, Side, classify};
use crate::digest::Digest;
use crate::error::{Error, FailureClass, Result};
use crate::manifest::Descriptor;
use crate::verify::{ByteStream, verified};

impl Registry {
    pub async fn blob_exists(&self, repo: &str, digest: &Digest, side: Side) -> Result<bool> {
        let r = self.repo_ref(repo);
        let what = format!("{}/{repo}@{digest}", self.host);
        self.retry
            .run(&format!("head blob {what}"), || async {
                self.send(
                    Call::pull("blob-head", side, &what, &r),
                    self.client.blob_exists(&r, &digest.to_string()),
                )
                .await
                .map(|(found, _)| found)
            })
            .await
    }

    /// Opens a blob as a stream verified against `desc` (size and digest). One attempt:
    /// the caller retries the whole copy, since a consumed stream cannot be replayed.
    pub async fn blob_stream(
        &self,
        repo: &str,
        desc: &Descriptor,
        progress: Option<Arc<AtomicU64>>,
    ) -> Result<ByteStream> {
        let r = self.repo_ref(repo);
        let what = format!("{}/{repo}@{}", self.host, desc.digest);
        let digest = desc.digest.to_string();
        // A whole-blob range request: oci-client does not re-hash a 206 answer, and
        // `verified` below hashes every byte once. A registry that ignores Range answers
        // 200, which oci-client verifies as well.
        let request = async {
            if desc.size == 0 {
                self.client.pull_blob_stream(&r, digest.as_str()).await
            } else {
                match self
                    .client
                    .pull_blob_stream_partial(&r, digest.as_str(), 0, Some(desc.size))
                    .await
                {
                    Ok(BlobResponse::Full(s) | BlobResponse::Partial(s)) => Ok(s),
                    Err(e) => Err(e),
                }
            }
        };
        let (sized, permit) = self
            .send(Call::pull("blob-get", Side::Source, &what, &r), request)
            .await?;
        let what_stream = what.clone();
        let raw = sized
            .stream
            // The request holds its concurrency slot until its body is read or dropped.
            .inspect(move |_| {
                let _held = &permit;
            })
            .map_err(move |e| {
                // oci-client checks the digest at the end of the stream too.
                let class = match e
                    .get_ref()
                    .map(|inner| inner.is::<oci_client::errors::DigestError>())
                {
                    Some(true) => FailureClass::DigestMismatch,
                    _ => FailureClass::Network,
                };
                Error::new(class, format!("reading {what_stream}: {e}"))
            })
            .boxed();
        Ok(verified(raw, desc.digest.clone(), desc.size, progress))
    }

    /// Uploads a blob from a stream in one PUT with a known length. If the stream fails
    /// (including a digest mismatch on its last chunk) the upload is abandoned unfinished.
    pub async fn push_blob(&self, repo: &str, desc: &Descriptor, stream: ByteStream) -> Result<()> {
        let r = self.repo_ref(repo);
        let what = format!("{}/{repo}@{}", self.host, desc.digest);
        let failure = Arc::new(std::sync::Mutex::new(None::<Error>));
        let seen = failure.clone();
        let body = stream.map_err(move |e: Error| {
            let msg = e.message.clone();
            if let Ok(mut slot) = seen.lock() {
                *slot = Some(e);
            }
            OciDistributionError::GenericError(Some(msg))
        });
        // An upload is a POST and a PUT.
        let res = self
            .send(
                Call {
                    requests: 2,
                    bounded: false,
                    ..Call::push("blob-put", &what, &r)
                },
                self.client
                    .push_blob_stream(&r, body, &desc.digest.to_string(), Some(desc.size)),
            )
            .await;
        if let Some(e) = failure.lock().ok().and_then(|mut s| s.take()) {
            return Err(e);
        }
        res.map(drop)
    }

    /// Cross-repository mount. `Ok(false)` when the registry declined (it then expects an
    /// ordinary upload).
    pub async fn mount_blob(&self, repo: &str, from_repo: &str, digest: &Digest) -> Result<bool> {
        let what = format!("{}/{repo} mount {digest} from {from_repo}", self.host);
        // Transient answers (5xx, 429, cut connections) are retried like every other
        // request; only a refusal is a decline.
        self.retry
            .run(&what, || self.mount_once(repo, from_repo, digest, &what))
            .await
    }

    async fn mount_once(
        &self,
        repo: &str,
        from_repo: &str,
        digest: &Digest,
        what: &str,
    ) -> Result<bool> {
        let r = self.repo_ref(repo);
        let from = self.repo_ref(from_repo);
        self.authorise(&r, RegistryOperation::Push).await?;
        let _permit = self.admit(1).await;
        let started = Instant::now();
        let mounted = tokio::time::timeout(
            self.request_timeout,
            self.client.mount_blob(&r, &from, &digest.to_string()),
        )
        .await;
        let result = match mounted {
            Err(_) => Err(self.timed_out(what)),
            Ok(Ok(())) => Ok(true),
            Ok(Err(
                OciDistributionError::SpecViolationError(_)
                | OciDistributionError::RegistryNoLocationError,
            )) => Ok(false),
            Ok(Err(e)) => {
                let e = classify(e, Side::Destination, what);
                // Any other refusal is a decline, a refused reading of the other repository
                // included: the caller looks and uploads instead, where a real want of
                // rights shows.
                if e.class.is_retryable() {
                    Err(e)
                } else {
                    Ok(false)
                }
            }
        };
        let class = result.as_ref().err().map(|e| e.class);
        self.observe("blob-mount", started.elapsed(), class).await;
        if class == Some(FailureClass::RateLimited)
            && let Some(g) = &self.gate
        {
            g.back_off(&self.host, Duration::from_secs(1)).await;
        }
        result
    }
}
