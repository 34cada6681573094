//! The inventory of one platform image: its layers applied in order, read from the blob
//! cache when there (a layer copied once is not downloaded again), else from the registry.
//! With a cache the inventory itself is kept by manifest digest, so scanning again with a
//! newer database re-matches without reading a layer, where the cache is trusted with it.
//!
//! Layers are read and parsed on blocking threads, so a caller's timeout around
//! [`inventory`] can fire; dropping its future cancels that work, which stops at its next
//! step (a chunk of a layer, a tar entry, a file, an rpm query).

use std::io::Read;

use bytes::Bytes;
use futures_util::StreamExt;

use super::layers::Files;
use super::{Cancel, Inventory, Limits};
use crate::cache::BlobCache;
use crate::error::{Error, Result};
use crate::manifest::{Manifest, RawManifest};
use crate::store::ImageStore;
use crate::verify::ByteStream;

fn inventory_key(manifest: &RawManifest) -> String {
    format!("inventory/sha256/{}.json", manifest.digest.hex())
}

/// A stream as `Read`, for the tar reader on a blocking thread.
struct StreamReader {
    stream: ByteStream,
    chunk: Bytes,
    handle: tokio::runtime::Handle,
    cancel: Cancel,
    /// Why the bytes stopped, kept with its class: the tar reader sees only an I/O error
    /// and would read a layer cut short (or not the layer named) as a damaged one.
    failed: Option<Error>,
    /// The stream has ended (or failed): it is not polled again, which a stream need not
    /// allow.
    ended: bool,
}

/// How often a reader waiting for the next chunk looks at its cancel flag.
const CANCEL_POLL: std::time::Duration = std::time::Duration::from_millis(250);

impl Read for StreamReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            if self.ended {
                return Ok(0);
            }
            if self.cancel.is_cancelled() {
                return Err(std::io::Error::other("scan abandoned (timed out)"));
            }
            // Waits in short slices (`next` on a stream is cancel-safe), so a stalled
            // download does not keep this thread once the scan is abandoned.
            match self
                .handle
                .block_on(tokio::time::timeout(CANCEL_POLL, self.stream.next()))
            {
                Err(_) => continue,
                Ok(Some(Ok(c))) => self.chunk = c,
                Ok(Some(Err(e))) => {
                    self.ended = true;
                    let message = e.message.clone();
                    self.failed = Some(e);
                    return Err(std::io::Error::other(message));
                }
                Ok(None) => {
                    self.ended = true;
                    return Ok(0);
                }
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}

/// Cancels the blocking work of a scan when its future ends, finished or dropped.
struct CancelOnDrop(Cancel);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// Returns the inventory and whether it came from the cache. `reuse`: take an inventory
/// the cache holds. Only a cache nobody else writes may be trusted with that: on a
/// shared bucket, anyone holding its credentials could leave an empty inventory that hides
/// an image's packages from every later scan. Layers are checked against their digests
/// wherever they are read from (the cache's sidecar is as writable as its bytes), and a
/// layer that fails the check, or cannot be read to its end, fails the scan.
pub async fn inventory(
    store: &dyn ImageStore,
    cache: Option<&BlobCache>,
    repo: &str,
    manifest: &RawManifest,
    reuse: bool,
) -> Result<(Inventory, bool)> {
    if let Some(cache) = cache.filter(|_| reuse)
        && let Ok(doc) = cache.get_named(&inventory_key(manifest)).await
        && let Ok(inv) = serde_json::from_slice::<Inventory>(&doc)
    {
        return Ok((inv, true));
    }
    let Manifest::Image(image) = manifest.parse()? else {
        return Err(Error::invalid(format!(
            "{} is not an image manifest",
            manifest.digest
        )));
    };
    let cancel = Cancel::default();
    let _cancel_on_drop = CancelOnDrop(cancel.clone());
    let mut files = Files::new(Limits::default(), cancel.clone());
    for layer in image.layers.iter().filter(|l| !l.is_foreign()) {
        let cached = match cache {
            Some(c) if c.meta(&layer.digest).await?.is_some() => c.get(layer, None).await.ok(),
            _ => None,
        };
        let stream = match cached {
            Some(s) => s,
            None => store.get_blob(repo, layer, None).await?,
        };
        let reader = StreamReader {
            stream,
            chunk: Bytes::new(),
            handle: tokio::runtime::Handle::current(),
            cancel: cancel.clone(),
            failed: None,
            ended: false,
        };
        let name = layer.digest.to_string();
        let failed;
        (files, failed) = tokio::task::spawn_blocking(move || {
            let (mut files, mut reader) = (files, reader);
            files.apply(&name, &mut reader);
            // A tar ends at its end-of-archive blocks and a gzip stream at its member's
            // end: the rest of the layer is read too, so that all of it meets the digest.
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
            (files, reader.failed)
        })
        .await
        .map_err(|e| Error::internal(format!("reading a layer: {e}")))?;
        // A layer whose bytes could not all be read, or were not the layer's, fails the
        // scan: an inventory of part of it would hide what the rest holds. A layer that
        // is what its digest says but no valid tar stays a warning.
        if let Some(e) = failed {
            return Err(e.context(format!("layer {}", layer.digest)));
        }
    }
    let inv = tokio::task::spawn_blocking(move || Inventory::from_files(&files))
        .await
        .map_err(|e| Error::internal(format!("reading the package databases: {e}")))?;
    if let Some(cache) = cache {
        let json = serde_json::to_vec(&inv).map_err(|e| Error::internal(e.to_string()))?;
        if let Err(e) = cache.put_named(&inventory_key(manifest), json).await {
            tracing::warn!("keeping the inventory of {}: {e}", manifest.digest);
        }
    }
    Ok((inv, false))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;
    use crate::error::FailureClass;
    use crate::manifest::{Descriptor, OCI_MANIFEST};
    use crate::verify::verified;

    const STATUS: &str =
        "Package: libssl3\nStatus: install ok installed\nVersion: 3.0.11-1~deb12u2\n";

    fn layer(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, body) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(body.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, path, *body).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn desc(media_type: &str, bytes: &[u8]) -> Descriptor {
        Descriptor {
            media_type: media_type.into(),
            digest: Digest::of(bytes),
            size: bytes.len() as u64,
            urls: None,
            annotations: None,
            platform: None,
        }
    }

    async fn fill(cache: &BlobCache, bytes: Bytes) -> crate::cache::BlobMeta {
        let d = desc("application/vnd.oci.image.layer.v1.tar", &bytes);
        let stream = futures_util::stream::iter([Ok(bytes)]);
        let checked = verified(Box::pin(stream), d.digest.clone(), d.size, None);
        cache.fill(&d, checked).await.unwrap()
    }

    /// What a worker holding the shared bucket's credentials can leave there: an empty
    /// inventory under an image's manifest, and a layer's bytes replaced along with their
    /// sidecar. Neither reaches a scan that does not trust the cache with inventories.
    #[tokio::test]
    async fn a_shared_cache_cannot_hide_packages_from_a_scan() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BlobCache::open(dir.path().to_str().unwrap()).unwrap();
        // The real layer spans several reads; the forged one is the same size, a tar that
        // ends after its first file and zeros after it, so a reader that stops at the end
        // of the tar never reaches the bytes that fail the digest.
        let big = vec![0u8; 3 << 20];
        let good = Bytes::from(layer(&[
            ("var/lib/dpkg/status", STATUS.as_bytes()),
            ("usr/share/big", &big),
        ]));
        let forged_status = STATUS.replace("libssl3", "libfoo3");
        let mut empty = layer(&[("var/lib/dpkg/status", forged_status.as_bytes())]);
        empty.resize(good.len(), 0);
        let empty = Bytes::from(empty);
        fill(&cache, good.clone()).await;
        let config = Bytes::from_static(b"{}");
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": desc("application/vnd.oci.image.config.v1+json", &config),
            "layers": [desc("application/vnd.oci.image.layer.v1.tar", &good)],
        });
        let manifest = RawManifest::from_bytes(Bytes::from(manifest.to_string()), None).unwrap();
        cache
            .put_named(&inventory_key(&manifest), br#"{"packages":[]}"#.to_vec())
            .await
            .unwrap();

        let (trusted, cached) = inventory(&cache, Some(&cache), "app", &manifest, true)
            .await
            .unwrap();
        assert!(
            cached && trusted.packages.is_empty(),
            "the knob reuses what is there"
        );
        let (read, cached) = inventory(&cache, Some(&cache), "app", &manifest, false)
            .await
            .unwrap();
        assert!(!cached);
        assert_eq!(read.packages.len(), 1, "{read:?}");

        // The layer replaced by an empty one, its sidecar rewritten to match.
        let forged = fill(&cache, empty.clone()).await;
        let hex = Digest::of(&good).hex().to_owned();
        cache
            .put_named(&format!("blobs/sha256/{hex}"), empty.to_vec())
            .await
            .unwrap();
        cache
            .put_named(
                &format!("blobs/sha256/{hex}.meta"),
                serde_json::to_vec(&forged).unwrap(),
            )
            .await
            .unwrap();
        let e = inventory(&cache, Some(&cache), "app", &manifest, false)
            .await
            .unwrap_err();
        assert_eq!(e.class, FailureClass::DigestMismatch, "{e}");
    }
}
