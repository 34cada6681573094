//! A schema 1 source converted to schema 2 for a copy (Hangar's only digest change): each
//! layer is read once, verified against its `blobSum`, to learn its size and its digest
//! uncompressed; the converted config rides inline with its platform's tasks, since the
//! source holds no such blob.

use std::collections::HashMap;

use bytes::Bytes;
use hangar_shared::digest::Digest;
use hangar_shared::error::{Error, Result};
use hangar_shared::manifest::{Descriptor, RawManifest};
use hangar_shared::reference::ImageRef;
use hangar_shared::retry::RetryPolicy;
use hangar_shared::schema1::{self, DOCKER_LAYER_GZIP, Layer, Schema1};
use hangar_shared::store::ImageStore;

use super::INLINE_LIMIT;

/// What a command does with a schema 1 image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schema1Use {
    /// Copies convert it to schema 2, as Hangar does (and their validations compare with
    /// the same conversion).
    Convert,
    /// Commands that act on the image where it is (sign, scan, inspect) cannot: the
    /// converted image exists only where it is copied to.
    Refuse,
}

/// The schema 2 image `raw` (a schema 1 manifest of `source`) converts to: its manifest,
/// and its config bytes.
pub async fn convert(
    store: &dyn ImageStore,
    source: &ImageRef,
    raw: &RawManifest,
) -> Result<(RawManifest, Bytes)> {
    let repo = source.repository();
    let s1 = Schema1::parse(&raw.bytes).map_err(|e| e.context(source))?;
    let mut measured: HashMap<Digest, Layer> = HashMap::new();
    let mut layers = Vec::new();
    for blob in s1.layer_blobs() {
        if let Some(layer) = measured.get(&blob) {
            layers.push(layer.clone());
            continue;
        }
        let what = format!("{source}: schema1 layer {blob}");
        let size = store
            .blob_size(&repo, &blob)
            .await?
            .ok_or_else(|| Error::not_found(format!("{what}: blob unknown to the registry")))?;
        // A consumed stream cannot be replayed: the read is retried whole.
        let (diff_id, gzip) = RetryPolicy::default()
            .run(&what, || {
                uncompressed_digest(store, &repo, &blob, size, &what)
            })
            .await?;
        let layer = Layer {
            blob: blob.clone(),
            size,
            diff_id,
            gzip,
        };
        measured.insert(blob, layer.clone());
        layers.push(layer);
    }
    let converted = s1.to_schema2(&layers)?;
    if converted.config.len() > INLINE_LIMIT {
        return Err(Error::invalid(format!(
            "{source}: the schema2 config converted from its schema1 history is {} bytes; at most {INLINE_LIMIT} are carried",
            converted.config.len()
        )));
    }
    let manifest = RawManifest::from_bytes(converted.manifest, None)?;
    tracing::warn!(
        "{source}: Docker schema1 manifest {} converted to schema2 {} (its digest changes, as with Hangar)",
        raw.digest,
        manifest.digest
    );
    Ok((manifest, converted.config))
}

async fn uncompressed_digest(
    store: &dyn ImageStore,
    repo: &str,
    blob: &Digest,
    size: u64,
    what: &str,
) -> Result<(Digest, bool)> {
    let desc = Descriptor {
        media_type: DOCKER_LAYER_GZIP.into(),
        digest: blob.clone(),
        size,
        urls: None,
        annotations: None,
        platform: None,
    };
    let stream = store.get_blob(repo, &desc, None).await?;
    schema1::diff_id(stream, blob, what).await
}
