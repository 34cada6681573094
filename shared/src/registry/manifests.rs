//! Manifest operations: read (bounded, by our own request), push, list tags, delete.

use oci_client::RegistryOperation;
use oci_client::secrets::RegistryAuth;

use super::classify::{status_error, transient_rejection};
use super::{Call, Registry, Side, conf};
use crate::digest::Digest;
use crate::error::{Error, FailureClass, Result};
use crate::manifest::RawManifest;

impl Registry {
    /// The manifest at `reference` (tag or digest), verified when asked for by digest.
    pub async fn manifest(&self, repo: &str, reference: &str, side: Side) -> Result<RawManifest> {
        if side == Side::Source {
            conf::RegistriesConf::global()?.check_not_blocked(&self.host, repo)?;
        }
        let expected: Option<Digest> = reference.parse().ok();
        let what = format!("{}/{repo}:{reference}", self.host);
        self.retry
            .run(&format!("get manifest {what}"), || async {
                let answer = self
                    .own_request(
                        "manifest-get",
                        &what,
                        self.fetch_manifest(repo, reference, side, &what),
                    )
                    .await;
                RawManifest::from_bytes(answer?, expected.as_ref()).map_err(|e| e.context(&what))
            })
            .await
    }

    /// Like [`Self::manifest`], with "not found" as `None`.
    pub async fn manifest_opt(
        &self,
        repo: &str,
        reference: &str,
        side: Side,
    ) -> Result<Option<RawManifest>> {
        match self.manifest(repo, reference, side).await {
            Ok(m) => Ok(Some(m)),
            Err(e) if e.class == FailureClass::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        manifest: &RawManifest,
    ) -> Result<()> {
        let r = self.reference(repo, reference);
        let what = format!("{}/{repo}:{reference}", self.host);
        let content_type: reqwest::header::HeaderValue =
            manifest.media_type.parse().map_err(|_| {
                Error::invalid(format!(
                    "media type {:?} is not a valid header",
                    manifest.media_type
                ))
            })?;
        // Whether the last attempt's failure was a racy rejection, retried as transient: once
        // the retries are spent it is the rejection it was (kept as a flag, not read back
        // out of the message).
        let racy = std::sync::atomic::AtomicBool::new(false);
        self.retry
            .run(&format!("put manifest {what}"), || async {
                let sent = self
                    .send(
                        Call::push("manifest-put", &what, &r),
                        self.client.push_manifest_raw(
                            &r,
                            manifest.bytes.clone(),
                            content_type.clone(),
                        ),
                    )
                    .await
                    .map(drop);
                let (result, was_racy) = match sent {
                    Ok(()) => (Ok(()), false),
                    Err(e) => {
                        let (e, was_racy) = transient_rejection(e);
                        (Err(e), was_racy)
                    }
                };
                racy.store(was_racy, std::sync::atomic::Ordering::Relaxed);
                result
            })
            .await
            .map_err(|mut e| {
                if racy.load(std::sync::atomic::Ordering::Relaxed) {
                    e.class = FailureClass::DestinationRejected;
                }
                e
            })
    }

    pub async fn tags(&self, repo: &str) -> Result<Vec<String>> {
        let r = self.repo_ref(repo);
        let what = format!("{}/{repo}", self.host);
        let mut tags = self
            .retry
            .run(&format!("list tags {what}"), || async {
                self.send(
                    Call::pull("tags", Side::Source, &what, &r),
                    self.client.list_tags(&r, &self.auth, None, None),
                )
                .await
                .map(|(t, _)| t.tags)
            })
            .await?;
        tags.sort();
        Ok(tags)
    }

    /// The repository's tags when they fit in one page of `n`; `None` when there may be
    /// more (the registry paged them). One request.
    pub async fn tags_upto(&self, repo: &str, n: usize) -> Result<Option<Vec<String>>> {
        let what = format!("list tags {}/{repo}", self.host);
        self.retry
            .run(&what, || {
                self.own_request("tags", &what, self.fetch_tags_page(repo, n, &what))
            })
            .await
    }

    /// Deletes a manifest by digest (oci-client has no DELETE).
    pub async fn delete_manifest(&self, repo: &str, digest: &Digest) -> Result<()> {
        let r = self.reference(repo, &digest.to_string());
        let what = format!("{}/{repo}@{digest}", self.host);
        let token = self.authorise(&r, RegistryOperation::Push).await?;
        let url = format!(
            "{}://{}/v2/{repo}/manifests/{digest}",
            self.scheme, self.api_host
        );
        let mut req = self.http.delete(&url);
        req = match (&token, &self.auth) {
            (Some(t), _) => req.bearer_auth(t),
            (None, RegistryAuth::Basic(u, p)) => req.basic_auth(u, Some(p)),
            _ => req,
        };
        let resp = req
            .send()
            .await
            .map_err(|e| Error::new(FailureClass::Network, format!("delete {what}: {e}")))?;
        match resp.status().as_u16() {
            200..=299 => Ok(()),
            code => Err(status_error(
                code,
                Side::Destination,
                &format!("delete {what}"),
            )),
        }
    }
}
