//! The cache as the rest of the pipeline sees it: the archive writer's blob source (each
//! blob checked against its sidecar's size and CRC-32, cheaper than SHA-256; it was
//! verified on the way in) and `save`'s destination store (content-addressed, so a
//! repository does not matter and a mount is a look).

use std::sync::Arc;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;

use super::{BlobCache, BlobMeta, blob_path, body_stream, cache_err};
use crate::digest::Digest;
use crate::error::{Error, FailureClass, Result};
use crate::manifest::Descriptor;
use crate::verify::{ByteStream, verified};

/// Fails at the end of `inner` unless its bytes match `meta`'s size and CRC-32; a damaged
/// entry is evicted, so the next fill fetches it again.
fn crc_checked(inner: ByteStream, digest: Digest, meta: BlobMeta, cache: BlobCache) -> ByteStream {
    crate::verify::crc_checked(inner, meta.size, meta.crc32, move || async move {
        cache.evict(&digest).await;
        Error::new(
            FailureClass::CacheDamaged,
            format!(
                "blob cache: {digest} is damaged (size or CRC-32 differs from its record); \
                 evicted"
            ),
        )
    })
}

pub(super) fn octet(digest: &Digest, size: u64) -> Descriptor {
    Descriptor {
        media_type: "application/octet-stream".into(),
        digest: digest.clone(),
        size,
        urls: None,
        annotations: None,
        platform: None,
    }
}

#[async_trait::async_trait]
impl crate::archive::BlobSource for BlobCache {
    async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        Ok(self.meta(digest).await?.map(|m| m.size))
    }
    /// Checked against the sidecar's size and CRC-32, not re-hashed: every cached blob was
    /// verified against its digest on the way in, and the CRC catches what storage may
    /// have damaged since, at a fraction of SHA-256's cost.
    async fn blob_stream(&self, digest: &Digest, size: u64) -> Result<ByteStream> {
        let meta = self
            .meta(digest)
            .await?
            .ok_or_else(|| Error::not_found(format!("blob cache: {digest} is not cached")))?;
        if meta.size != size {
            return Err(Error::new(
                FailureClass::DigestMismatch,
                format!(
                    "blob cache: {digest} holds {} bytes, {size} expected",
                    meta.size
                ),
            ));
        }
        if let Some(bytes) = self.held_blob(digest) {
            return Ok(futures_util::stream::once(std::future::ready(Ok(bytes))).boxed());
        }
        let got = match self.store.get(&blob_path(digest)).await {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(Error::new(
                    FailureClass::NotFound,
                    format!("blob cache: {digest} is listed but missing"),
                ));
            }
            Err(e) => return Err(cache_err(e)),
        };
        Ok(crc_checked(
            body_stream(got, cache_err),
            digest.clone(),
            meta,
            self.clone(),
        ))
    }
}

/// The cache as an archive's blob source when others write it too (a shared bucket, a
/// fleet's): each blob is checked against its digest as it streams, not only against its
/// sidecar's size and CRC-32, which whoever rewrote the blob could rewrite with it. A
/// mismatch evicts the entry and fails as [`FailureClass::CacheDamaged`], so one more
/// gathering fetches it again instead of every later archive failing on it.
pub struct DigestChecked(pub Arc<BlobCache>);

#[async_trait::async_trait]
impl crate::archive::BlobSource for DigestChecked {
    async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        self.0.blob_size(digest).await
    }

    async fn blob_stream(&self, digest: &Digest, size: u64) -> Result<ByteStream> {
        // A sidecar of another size, or an entry listed but gone: damaged before any byte.
        let stream = match self.0.blob_stream(digest, size).await {
            Ok(stream) => stream,
            Err(e)
                if matches!(
                    e.class,
                    FailureClass::DigestMismatch | FailureClass::NotFound
                ) =>
            {
                self.0.evict(digest).await;
                return Err(Error::new(
                    FailureClass::CacheDamaged,
                    format!("{}; evicted", e.message),
                ));
            }
            Err(e) => return Err(e),
        };
        let (cache, digest) = (self.0.clone(), digest.clone());
        let checked = verified(stream, digest.clone(), size, None);
        Ok(checked
            .then(move |chunk| {
                let (cache, digest) = (cache.clone(), digest.clone());
                async move {
                    match chunk {
                        Err(e) if e.class == FailureClass::DigestMismatch => {
                            cache.evict(&digest).await;
                            Err(Error::new(
                                FailureClass::CacheDamaged,
                                format!("blob cache: {}; evicted", e.message),
                            ))
                        }
                        other => other,
                    }
                }
            })
            .boxed())
    }
}

/// The cache as the source of an archive this process writes: checked by digest when the
/// cache is a shared bucket, by its sidecars when it is this machine's directory.
pub fn archive_source(cache: Arc<BlobCache>) -> Arc<dyn crate::archive::BlobSource> {
    if cache.is_shared() {
        Arc::new(DigestChecked(cache))
    } else {
        cache
    }
}

/// The cache as a destination (`save` fills it; the assembler then writes the archive from
/// it). Content-addressed, so repositories do not matter and a "mount" is a lookup.
#[async_trait::async_trait]
impl crate::store::ImageStore for BlobCache {
    async fn blob_exists(
        &self,
        _repo: &str,
        digest: &Digest,
        _side: crate::registry::Side,
    ) -> Result<bool> {
        Ok(self.meta(digest).await?.is_some())
    }
    async fn get_blob(
        &self,
        _repo: &str,
        desc: &Descriptor,
        progress: Option<Arc<std::sync::atomic::AtomicU64>>,
    ) -> Result<ByteStream> {
        self.get(desc, progress).await
    }
    async fn put_blob(&self, _repo: &str, desc: &Descriptor, stream: ByteStream) -> Result<()> {
        self.fill(desc, stream).await.map(drop)
    }
    async fn mount_blob(&self, _repo: &str, _from: &str, digest: &Digest) -> Result<bool> {
        Ok(self.meta(digest).await?.is_some())
    }
    async fn get_manifest(
        &self,
        _repo: &str,
        reference: &str,
        _side: crate::registry::Side,
    ) -> Result<Option<crate::manifest::RawManifest>> {
        let Ok(digest) = reference.parse::<Digest>() else {
            return Ok(None);
        };
        let Some(meta) = self.meta(&digest).await? else {
            return Ok(None);
        };
        let chunks: Vec<Bytes> = self
            .get(&octet(&digest, meta.size), None)
            .await?
            .try_collect()
            .await?;
        crate::manifest::RawManifest::from_bytes(Bytes::from(chunks.concat()), Some(&digest))
            .map(Some)
    }
    /// Manifests are kept as blobs by digest; tags have no meaning here.
    async fn put_manifest(
        &self,
        _repo: &str,
        _reference: &str,
        manifest: &crate::manifest::RawManifest,
    ) -> Result<()> {
        if self.meta(&manifest.digest).await?.is_some() {
            return Ok(());
        }
        let desc = octet(&manifest.digest, manifest.bytes.len() as u64);
        let bytes = manifest.bytes.clone();
        let once = futures_util::stream::once(std::future::ready(Ok(bytes))).boxed();
        self.fill(&desc, verified(once, desc.digest.clone(), desc.size, None))
            .await
            .map(drop)
    }
    async fn list_tags(&self, _repo: &str) -> Result<Vec<String>> {
        Err(Error::invalid("the blob cache has no tags"))
    }
    async fn delete_manifest(&self, _repo: &str, digest: &Digest) -> Result<()> {
        self.evict(digest).await;
        Ok(())
    }
}
