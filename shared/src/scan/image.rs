//! The inventory of one platform image: its layers applied in order, read from the blob
//! cache when there (a layer copied once is not downloaded again), else from the registry.
//! With a cache the inventory itself is kept by manifest digest, so scanning again with a
//! newer database re-matches without reading a layer.
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
}

/// How often a reader waiting for the next chunk looks at its cancel flag.
const CANCEL_POLL: std::time::Duration = std::time::Duration::from_millis(250);

impl Read for StreamReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
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
                Ok(Some(Err(e))) => return Err(std::io::Error::other(e.message)),
                Ok(None) => return Ok(0),
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

/// Returns the inventory and whether it came from the cache.
pub async fn inventory(
    store: &dyn ImageStore,
    cache: Option<&BlobCache>,
    repo: &str,
    manifest: &RawManifest,
) -> Result<(Inventory, bool)> {
    if let Some(cache) = cache
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
        };
        let name = layer.digest.to_string();
        files = tokio::task::spawn_blocking(move || {
            let mut files = files;
            files.apply(&name, reader);
            files
        })
        .await
        .map_err(|e| Error::internal(format!("reading a layer: {e}")))?;
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
