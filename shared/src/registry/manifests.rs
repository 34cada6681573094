//! Manifest operations: read (bounded), push, list tags (page by page, bounded), delete.

use reqwest::Method;

use super::classify::transient_rejection;
use super::fetch::Target;
use super::{Registry, Side, conf};
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
        let what = format!("{}/{repo}:{reference}", self.host);
        let url = self.manifest_url(repo, reference)?;
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
                let put = self.send(Method::PUT, &url, Target::push(repo, &what), |r| {
                    r.header(reqwest::header::CONTENT_TYPE, content_type.clone())
                        .body(manifest.bytes.clone())
                });
                let (result, was_racy) = match self.own_request("manifest-put", &what, put).await {
                    Ok(_) => (Ok(()), false),
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

    /// Every tag of `repo`, sorted, following the registry's pages (at most
    /// [`MAX_TAG_PAGES`], each read up to 4 MiB, [`MAX_TAG_BYTES`] of names and page
    /// addresses in all, no page asked twice).
    pub async fn tags(&self, repo: &str) -> Result<Vec<String>> {
        self.tags_within(repo, MAX_TAG_PAGES).await
    }

    pub(super) async fn tags_within(&self, repo: &str, max_pages: usize) -> Result<Vec<String>> {
        let what = format!("list tags {}/{repo}", self.host);
        let mut tags = Vec::new();
        let mut bytes = 0usize;
        let mut asked = std::collections::HashSet::new();
        let mut next = Some(self.repo_url(repo, "tags/list")?);
        while let Some(url) = next {
            if asked.len() >= max_pages {
                return Err(Error::invalid(format!(
                    "{what}: more than {max_pages} pages of tags"
                )));
            }
            // The pages' addresses are the registry's words and are kept: they count
            // against the same budget as the names.
            bytes += url.len() + std::mem::size_of::<String>();
            if !asked.insert(url.clone()) {
                return Err(Error::invalid(format!(
                    "{what}: the registry names a page of tags it gave already"
                )));
            }
            let (page, after) = self
                .retry
                .run(&what, || {
                    self.own_request("tags", &what, self.fetch_tags_page(repo, &url, &what))
                })
                .await?;
            // What a name costs held, not only its characters (empty names are not free).
            bytes += page
                .iter()
                .map(|t| t.len() + std::mem::size_of::<String>())
                .sum::<usize>();
            if bytes > MAX_TAG_BYTES {
                return Err(Error::invalid(format!(
                    "{what}: more than {} MiB of tags",
                    MAX_TAG_BYTES >> 20
                )));
            }
            tags.extend(page);
            next = after;
        }
        tags.sort();
        tags.dedup();
        Ok(tags)
    }

    /// The repository's tags when they fit in one page of `n`; `None` when there may be
    /// more (the registry paged them). One request.
    pub async fn tags_upto(&self, repo: &str, n: usize) -> Result<Option<Vec<String>>> {
        let what = format!("list tags {}/{repo}", self.host);
        let url = self.repo_url(repo, &format!("tags/list?n={n}"))?;
        let (tags, next) = self
            .retry
            .run(&what, || {
                self.own_request("tags", &what, self.fetch_tags_page(repo, &url, &what))
            })
            .await?;
        Ok((next.is_none() && tags.len() < n).then_some(tags))
    }

    /// Deletes a manifest by digest.
    pub async fn delete_manifest(&self, repo: &str, digest: &Digest) -> Result<()> {
        let what = format!("delete {}/{repo}@{digest}", self.host);
        let url = self.repo_url(repo, &format!("manifests/{digest}"))?;
        let delete = self.send(Method::DELETE, &url, Target::push(repo, &what), |r| r);
        self.own_request("manifest-delete", &what, delete)
            .await
            .map(drop)
    }
}

/// How many pages of tags one listing follows: a registry that pages forever is cut off.
pub const MAX_TAG_PAGES: usize = 10_000;
/// How many bytes of tag names one listing keeps (a million tags of 64 characters).
pub const MAX_TAG_BYTES: usize = 64 << 20;
