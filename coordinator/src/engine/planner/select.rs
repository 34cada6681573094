//! An image's selection: its top manifest, and the platforms `--arch/--os` keep.

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use hangar_shared::cache::BlobCache;
use hangar_shared::error::{Error, FailureClass, Result};
use hangar_shared::manifest::{Descriptor, ImageConfig, Manifest, PlatformFilter, RawManifest};
use hangar_shared::reference::ImageRef;
use hangar_shared::registry::Side;
use hangar_shared::retry::RetryPolicy;
use hangar_shared::store::ImageStore;
use hangar_shared::verify::verified;

use super::Selection;
use super::schema1::Schema1Use;

/// Reads a small JSON blob (an image config) fully, verified; returns it parsed and raw.
/// With a blob cache, the config is read from it when there and kept in it otherwise, so
/// a later job does not fetch it from the source again.
pub async fn read_config(
    store: &dyn ImageStore,
    cache: Option<&BlobCache>,
    repo: &str,
    desc: &Descriptor,
) -> Result<(ImageConfig, Bytes)> {
    if desc.size > 16 << 20 {
        return Err(Error::invalid(format!(
            "config blob {} is {} bytes, too large",
            desc.digest, desc.size
        )));
    }
    let mut cached: Option<Bytes> = None;
    if let Some(cache) = cache
        && cache.meta(&desc.digest).await?.is_some()
        && let Ok(stream) = cache.get(desc, None).await
        && let Ok(chunks) = stream.try_collect::<Vec<Bytes>>().await
    {
        cached = Some(Bytes::from(chunks.concat()));
    }
    let bytes = match cached {
        Some(b) => b,
        None => {
            let what = format!("read config {}", desc.digest);
            let chunks: Vec<Bytes> = RetryPolicy::default()
                .run(&what, || async {
                    store.get_blob(repo, desc, None).await?.try_collect().await
                })
                .await?;
            let bytes = Bytes::from(chunks.concat());
            if let Some(cache) = cache {
                let once =
                    futures_util::stream::once(std::future::ready(Ok(bytes.clone()))).boxed();
                let stream = verified(once, desc.digest.clone(), desc.size, None);
                if let Err(e) = cache.fill(desc, stream).await {
                    tracing::warn!("keeping config {} in the cache: {e}", desc.digest);
                }
            }
            bytes
        }
    };
    Ok((parse_config(&bytes, &desc.digest)?, bytes))
}

fn parse_config(bytes: &[u8], digest: &hangar_shared::digest::Digest) -> Result<ImageConfig> {
    serde_json::from_slice(bytes).map_err(|e| {
        Error::invalid(format!(
            "config blob {digest} is not a valid image config: {e}"
        ))
    })
}

/// The most manifests an index may list (distribution's 4 MiB manifest limit holds about
/// 20,000; real multi-platform images list a few dozen).
pub const MAX_INDEX_ENTRIES: usize = 1000;

/// Fetches the source's top manifest and selects its platforms.
pub async fn select(
    store: &dyn ImageStore,
    cache: Option<&BlobCache>,
    source: &ImageRef,
    filter: &PlatformFilter,
    provenance: bool,
    schema1: Schema1Use,
) -> Result<Selection> {
    let repo = source.repository();
    let top = store
        .get_manifest(&repo, &source.manifest_reference(), Side::Source)
        .await?
        .ok_or_else(|| Error::not_found(format!("{source}: manifest unknown")))?;
    match top.parse()? {
        Manifest::Index(mut index) => {
            if index.manifests.len() > MAX_INDEX_ENTRIES {
                return Err(Error::invalid(format!(
                    "{source}: the index lists {} manifests; at most {MAX_INDEX_ENTRIES} are accepted",
                    index.manifests.len()
                )));
            }
            // An entry listed twice is one manifest: fetched, copied and signed once. The
            // source index itself is still pushed unchanged when everything was selected.
            let listed = index.manifests.len();
            let mut seen = std::collections::HashSet::new();
            index.manifests.retain(|m| seen.insert(m.digest.clone()));
            let duplicates = listed - index.manifests.len();
            let passes: Vec<bool> = index
                .manifests
                .iter()
                .map(|m| {
                    !m.is_attestation() && filter.matches(&m.platform.clone().unwrap_or_default())
                })
                .collect();
            let kept: Vec<&Descriptor> = index
                .manifests
                .iter()
                .zip(&passes)
                .filter(|(_, p)| **p)
                .map(|(m, _)| m)
                .collect();
            let mut entries: Vec<Descriptor> = kept.iter().map(|m| (*m).clone()).collect();
            if provenance {
                for m in index.manifests.iter().filter(|m| m.is_attestation()) {
                    if m.attests()
                        .is_some_and(|d| kept.iter().any(|k| k.digest == d))
                    {
                        entries.push(m.clone());
                    }
                }
            }
            let complete = entries.len() == index.manifests.len();
            if duplicates > 0 {
                tracing::warn!("{source}: the index lists {duplicates} manifests more than once");
            }
            Ok(Selection {
                top: Some(top),
                entries,
                complete,
                single: false,
                config: None,
            })
        }
        Manifest::Image(image) => {
            let (config, raw_config) = read_config(store, cache, &repo, &image.config).await?;
            Ok(single(top, &config, raw_config, filter))
        }
        Manifest::Schema1 if schema1 == Schema1Use::Convert => {
            let (converted, raw_config) = super::schema1::convert(store, source, &top).await?;
            let config =
                parse_config(&raw_config, &hangar_shared::digest::Digest::of(&raw_config))?;
            Ok(single(converted, &config, raw_config, filter))
        }
        Manifest::Schema1 => Err(Error::new(
            FailureClass::UnsupportedMediaType,
            format!(
                "{source}: a Docker schema1 image is converted to schema2 only where it is copied to (mirror, save, sync); this command does not take it"
            ),
        )),
    }
}

/// A single platform manifest's selection: its platform is its config's.
fn single(
    top: RawManifest,
    config: &ImageConfig,
    raw_config: Bytes,
    filter: &PlatformFilter,
) -> Selection {
    let platform = config.platform();
    let mut entry = top.descriptor();
    entry.platform = Some(platform.clone());
    let entries = if filter.matches(&platform) {
        vec![entry]
    } else {
        Vec::new()
    };
    Selection {
        top: Some(top),
        entries,
        complete: false,
        single: true,
        config: Some(raw_config),
    }
}
