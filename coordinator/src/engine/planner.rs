//! The planner: resolves one list entry's source manifests (index → platform manifests
//! filtered by `--arch/--os`, attestations kept with their images) into an [`ImagePlan`]:
//! which platform manifests to push, which blobs each needs, and what goes at the tag.
//! It does no copying; the tracker turns plans into tasks.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use hangar_shared::archive::{ArchiveImage, ArchiveReader, blob_entry};
use hangar_shared::cache::BlobCache;
use hangar_shared::digest::Digest;
use hangar_shared::error::{Error, FailureClass, Result};
use hangar_shared::imagelist::ListEntry;
use hangar_shared::manifest::{Descriptor, ImageConfig, Manifest, PlatformFilter, RawManifest};
use hangar_shared::reference::ImageRef;
use hangar_shared::registry::Side;
use hangar_shared::retry::RetryPolicy;
use hangar_shared::store::{ImageStore, RepoRef};
use hangar_shared::verify::verified;

/// One list entry with its resolved endpoints.
#[derive(Debug, Clone)]
pub struct ImageJob {
    pub entry: ListEntry,
    pub source: ImageRef,
    pub dest: ImageRef,
    /// The image's entry in the archive it is loaded from.
    pub archived: Option<Arc<ArchiveImage>>,
}

#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// The source's top manifest (index or platform manifest).
    pub top: Option<RawManifest>,
    /// Selected entries: platform descriptors (with platform and annotations), attestations included.
    pub entries: Vec<Descriptor>,
    /// Every entry of a source index was selected.
    pub complete: bool,
    /// The source is a single platform manifest, not an index.
    pub single: bool,
    /// The config blob, already read to learn a single manifest's platform.
    pub config: Option<Bytes>,
}

#[derive(Debug, Clone)]
pub struct PlatformPlan {
    pub entry: Descriptor,
    pub manifest: RawManifest,
    /// Unique blobs, config first.
    pub blobs: Vec<Descriptor>,
    /// Blob bytes the planner already holds (the config of a single manifest).
    pub inline: Option<(Digest, Bytes)>,
    /// A cosign attachment (`sha256-<hex>.sig` / `.att`) pushed at this tag, outside the index.
    pub push_tag: Option<String>,
}

impl PlatformPlan {
    pub fn is_attachment(&self) -> bool {
        self.push_tag.is_some()
    }
}

#[derive(Debug, Clone)]
pub enum TopPlan {
    /// An index at `tag`; `source_index` is set when the source index is complete.
    Index {
        tag: String,
        source_index: Option<RawManifest>,
    },
    /// A digest-pinned line without a tag: the complete source index, by digest.
    ByDigest(RawManifest),
    /// Nothing beyond the platform manifests (a digest-pinned single image, or a
    /// digest-pinned index whose platforms were filtered).
    Nothing,
}

#[derive(Debug, Clone)]
pub struct ImagePlan {
    pub platforms: Vec<PlatformPlan>,
    pub top: TopPlan,
    /// Where the image's blobs are read, when not its own registry and repository (a
    /// `registries.conf` mirror or redirect that planned it).
    pub source: Option<RepoRef>,
}

#[derive(Debug)]
pub enum Planned {
    Plan(ImagePlan),
    /// Nothing to copy, not a failure (Hangar's "no available image for specified arch and os").
    Skip(String),
    /// The destination tag already lists everything selected (this digest): a re-run's
    /// image, found with one look at the destination instead of a copy of no-ops.
    Present(Digest),
}

/// The largest blob carried inline in a task.
pub const INLINE_LIMIT: usize = 256 << 10;

pub const NO_PLATFORM: &str = "no available image for specified arch and os";

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
    let config = serde_json::from_slice(&bytes).map_err(|e| {
        Error::invalid(format!(
            "config blob {} is not a valid image config: {e}",
            desc.digest
        ))
    })?;
    Ok((config, bytes))
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
            let platform = config.platform();
            let mut entry = top.descriptor();
            entry.platform = Some(platform.clone());
            let entries = if filter.matches(&platform) {
                vec![entry]
            } else {
                Vec::new()
            };
            Ok(Selection {
                top: Some(top),
                entries,
                complete: false,
                single: true,
                config: Some(raw_config),
            })
        }
        Manifest::Schema1 => Err(Error::new(
            FailureClass::UnsupportedMediaType,
            format!(
                "{source}: Docker schema1 manifests are not supported (Hangar converts them to schema2, which changes the digest)"
            ),
        )),
    }
}

/// Resolves everything one image needs.
/// Whether the destination's manifest at the image's tag already holds the selection: the
/// very source index for a complete one, an index listing every selected digest for a
/// subset (one the merge would leave as it is; a registry holds what its indexes list).
async fn already_present(
    dest: &dyn ImageStore,
    job: &ImageJob,
    selection: &Selection,
) -> Result<Option<Digest>> {
    let Some(found) = dest
        .get_manifest(
            &job.dest.repository(),
            &job.dest.manifest_reference(),
            Side::Destination,
        )
        .await?
    else {
        return Ok(None);
    };
    // A complete selection is copied as the source index itself: only that is present.
    if selection.complete {
        let same = selection
            .top
            .as_ref()
            .is_some_and(|t| t.digest == found.digest);
        return Ok(same.then_some(found.digest));
    }
    let Ok(Manifest::Index(index)) = found.parse() else {
        return Ok(None);
    };
    let listed = |d: &Digest| index.manifests.iter().any(|m| &m.digest == d);
    Ok(selection
        .entries
        .iter()
        .all(|e| listed(&e.digest))
        .then_some(found.digest))
}

/// `dest`: the destination to look at first (a registry destination of a plain copy), so
/// that an image whose tag already lists its selection is found present — when the source
/// holds no signature or attestation for it that a copy would carry.
pub async fn plan(
    store: &dyn ImageStore,
    cache: Option<&BlobCache>,
    job: &ImageJob,
    filter: &PlatformFilter,
    provenance: bool,
    signatures: bool,
    dest: Option<&dyn ImageStore>,
) -> Result<Planned> {
    let source = &job.source;
    if source.is_signature_tag() {
        return Err(Error::invalid(format!(
            "{source}: image is a sigstore signature"
        )));
    }
    let selection = select(store, cache, source, filter, provenance).await?;
    if !selection.entries.iter().any(|e| !e.is_attestation()) {
        return Ok(Planned::Skip(NO_PLATFORM.to_owned()));
    }
    let Some(top) = selection.top.clone() else {
        return Err(Error::internal("selection without a manifest"));
    };
    let repo = source.repository();
    if let Some(dest) = dest
        && job.dest.tag.is_some()
    {
        // Both looks at once: the destination's tag, and what a copy would carry beside it.
        let mut kept: Vec<Digest> = selection.entries.iter().map(|e| e.digest.clone()).collect();
        if selection.complete {
            kept.push(top.digest.clone());
        }
        let carried = async {
            match signatures {
                true => attachments(store, &repo, &kept).await.map(|a| a.is_empty()),
                false => Ok(true),
            }
        };
        let (present, nothing_carried) =
            futures_util::future::join(already_present(dest, job, &selection), carried).await;
        // The look is a shortcut, not a step: a destination this process may not read (on
        // the fleet only the workers may hold its credentials) is planned as ever.
        let present = present.unwrap_or_else(|e| {
            tracing::debug!(image = %job.dest, "the destination's tag could not be read: {e}");
            None
        });
        if let (Some(digest), true) = (present, nothing_carried?) {
            return Ok(Planned::Present(digest));
        }
    }
    let mut platforms = Vec::with_capacity(selection.entries.len());
    for entry in &selection.entries {
        let manifest = if selection.single {
            top.clone()
        } else {
            store
                .get_manifest(&repo, &entry.digest.to_string(), Side::Source)
                .await?
                .ok_or_else(|| {
                    Error::not_found(format!(
                        "{source}: platform manifest {} is missing",
                        entry.digest
                    ))
                })?
        };
        let image = match manifest.parse()? {
            Manifest::Image(i) => i,
            Manifest::Index(_) => {
                return Err(Error::new(
                    FailureClass::UnsupportedMediaType,
                    format!(
                        "{source}: unsupported media type {} for platform entry {} (an index inside an index)",
                        manifest.media_type, entry.digest
                    ),
                ));
            }
            Manifest::Schema1 => {
                return Err(Error::new(
                    FailureClass::UnsupportedMediaType,
                    format!(
                        "{source}: schema1 manifest {} inside a manifest list is not supported",
                        entry.digest
                    ),
                ));
            }
        };
        let mut blobs: Vec<Descriptor> = Vec::new();
        for b in image.blobs() {
            if !blobs.iter().any(|x| x.digest == b.digest) {
                blobs.push(b.clone());
            }
        }
        let mut entry = entry.clone();
        entry.media_type = manifest.media_type.clone();
        entry.size = manifest.bytes.len() as u64;
        // Small enough to ride in a task message (NATS' default limit is 1 MiB, base64 adds
        // a third); a bigger config is fetched again by the blob task.
        let inline = match (&selection.config, selection.single) {
            (Some(bytes), true) if bytes.len() <= INLINE_LIMIT => {
                Some((image.config.digest.clone(), bytes.clone()))
            }
            _ => None,
        };
        platforms.push(PlatformPlan {
            entry,
            manifest,
            blobs,
            inline,
            push_tag: None,
        });
    }
    let top_plan = match &job.dest.tag {
        Some(tag) => TopPlan::Index {
            tag: tag.clone(),
            source_index: selection.complete.then_some(top),
        },
        None if selection.complete => TopPlan::ByDigest(top),
        None if selection.single => TopPlan::Nothing,
        // Pushing a subset of a pinned index's platforms with nothing tagged would leave
        // manifests that nothing references and that garbage collection may take.
        None => {
            return Err(Error::invalid(format!(
                "{source}: --arch/--os select only some platforms of the pinned index; \
                 a digest-pinned line without a tag copies the whole index (select all \
                 platforms, or add a tag: name:tag@sha256:…)"
            )));
        }
    };
    if signatures {
        // Digests that keep their identity at the destination: every platform manifest, and
        // the index when it is pushed unchanged.
        let mut kept: Vec<Digest> = platforms
            .iter()
            .map(|p| p.manifest.digest.clone())
            .collect();
        match &top_plan {
            TopPlan::Index {
                source_index: Some(i),
                ..
            }
            | TopPlan::ByDigest(i) => kept.push(i.digest.clone()),
            _ => {}
        }
        platforms.extend(attachments(store, &repo, &kept).await?);
    }
    Ok(Planned::Plan(ImagePlan {
        platforms,
        top: top_plan,
        source: None,
    }))
}

/// The cosign signatures and attestations (`sha256-<hex>.sig`, `.att`) the source holds for
/// `digests`, looked up all at once. (A tag listing would be one request, but registries
/// page long tag lists, and popular repositories have thousands of tags.)
async fn attachments(
    store: &dyn ImageStore,
    repo: &str,
    digests: &[Digest],
) -> Result<Vec<PlatformPlan>> {
    let tags: Vec<String> = digests
        .iter()
        .flat_map(|d| ["sig", "att"].map(|s| format!("{}.{s}", d.tag_form())))
        .collect();
    let found = futures_util::future::try_join_all(
        tags.iter()
            .map(|tag| store.get_manifest(repo, tag, Side::Source)),
    )
    .await?;
    let mut out = Vec::new();
    for (tag, manifest) in tags.into_iter().zip(found) {
        {
            let Some(manifest) = manifest else {
                continue;
            };
            let Manifest::Image(image) = manifest.parse()? else {
                continue;
            };
            let mut blobs: Vec<Descriptor> = Vec::new();
            for b in image.blobs() {
                if !blobs.iter().any(|x| x.digest == b.digest) {
                    blobs.push(b.clone());
                }
            }
            out.push(PlatformPlan {
                entry: manifest.descriptor(),
                manifest,
                blobs,
                inline: None,
                push_tag: Some(tag),
            });
        }
    }
    Ok(out)
}

/// Plans one archived image for `load`: the platform manifests its index entry lists,
/// filtered by `--arch/--os`, read from the archive. The archive keeps no source index, so
/// the destination index is built from these, as Hangar does.
pub async fn plan_archive(
    archive: &ArchiveReader,
    image: &ArchiveImage,
    job: &ImageJob,
    filter: &PlatformFilter,
    provenance: bool,
) -> Result<Planned> {
    let name = image.name();
    if image.is_signature() {
        return Err(Error::invalid(format!(
            "{name}: image is a sigstore signature; load does not load signatures by themselves"
        )));
    }
    if image.is_custom() {
        return plan_archived_chart(archive, image, job).await;
    }
    let specs = image.selected(filter, provenance);
    if !specs.iter().any(|s| !s.is_attestation()) {
        return Ok(Planned::Skip(NO_PLATFORM.to_owned()));
    }
    let missing = |d: &Digest, what: &str| {
        Error::invalid(format!(
            "{name}: archive {}: entry {:?} ({what} {d}) is missing",
            archive.label(),
            blob_entry(d)
        ))
    };
    let mut platforms = Vec::with_capacity(specs.len());
    for spec in specs {
        if !archive.has_blob(&spec.digest) {
            return Err(missing(&spec.digest, "manifest"));
        }
        for d in spec.blobs() {
            if !archive.has_blob(d) {
                return Err(missing(d, "blob"));
            }
        }
        let manifest = archive.manifest(&spec.digest).await?;
        let Manifest::Image(parsed) = manifest.parse()? else {
            return Err(Error::new(
                FailureClass::UnsupportedMediaType,
                format!(
                    "{name}: archived manifest {} is not an image manifest",
                    spec.digest
                ),
            ));
        };
        let mut blobs: Vec<Descriptor> = Vec::new();
        for b in parsed.blobs() {
            if !archive.has_blob(&b.digest) {
                return Err(missing(&b.digest, "blob"));
            }
            if !blobs.iter().any(|x| x.digest == b.digest) {
                blobs.push(b.clone());
            }
        }
        platforms.push(PlatformPlan {
            entry: spec.descriptor(manifest.bytes.len() as u64),
            manifest,
            blobs,
            inline: None,
            push_tag: None,
        });
    }
    let top = match &job.dest.tag {
        Some(tag) => TopPlan::Index {
            tag: tag.clone(),
            source_index: None,
        },
        None => TopPlan::Nothing,
    };
    Ok(Planned::Plan(ImagePlan {
        platforms,
        top,
        source: None,
    }))
}

/// A stored Helm chart (`archive store chart`) is pushed as it is, digests preserved, at
/// `dest:<tag>` without an index (as Hangar does); stored custom files are skipped.
async fn plan_archived_chart(
    archive: &ArchiveReader,
    image: &ArchiveImage,
    job: &ImageJob,
) -> Result<Planned> {
    let skip = || {
        Ok(Planned::Skip(
            "a stored custom file, not an image (not loaded)".to_owned(),
        ))
    };
    let [spec] = image.images.as_slice() else {
        return skip();
    };
    if !archive.has_blob(&spec.digest) {
        return skip();
    }
    let manifest = archive.manifest(&spec.digest).await?;
    let Manifest::Image(parsed) = manifest.parse()? else {
        return skip();
    };
    if parsed.layers.first().map(|l| l.media_type.as_str())
        != Some(hangar_shared::archive::custom::HELM_CHART_LAYER)
    {
        return skip();
    }
    let mut blobs: Vec<Descriptor> = Vec::new();
    for b in parsed.blobs() {
        if !archive.has_blob(&b.digest) {
            return Err(Error::invalid(format!(
                "{}: archive {}: entry {:?} (blob {}) is missing",
                image.name(),
                archive.label(),
                blob_entry(&b.digest),
                b.digest
            )));
        }
        if !blobs.iter().any(|x| x.digest == b.digest) {
            blobs.push(b.clone());
        }
    }
    let tag = job.dest.tag.clone().unwrap_or_else(|| image.tag.clone());
    Ok(Planned::Plan(ImagePlan {
        platforms: vec![PlatformPlan {
            entry: spec.descriptor(manifest.bytes.len() as u64),
            manifest,
            blobs,
            inline: None,
            push_tag: Some(tag),
        }],
        top: TopPlan::Nothing,
        source: None,
    }))
}

/// The archive index entry for an image `save` copied.
pub fn archive_image(job: &ImageJob, plan: &ImagePlan) -> Result<ArchiveImage> {
    let mut specs = Vec::with_capacity(plan.platforms.len());
    for p in plan.platforms.iter().filter(|p| !p.is_attachment()) {
        let Manifest::Image(image) = p.manifest.parse()? else {
            return Err(Error::internal("a platform plan without an image manifest"));
        };
        let layers = image
            .layers
            .iter()
            .filter(|l| !l.is_foreign())
            .map(|l| l.digest.clone())
            .collect();
        specs.push(hangar_shared::archive::ImageSpec::from_descriptor(
            &p.entry,
            &image.config.digest,
            layers,
        ));
    }
    let source = &job.source;
    let tag = source
        .tag
        .clone()
        .or_else(|| source.digest.as_ref().map(|d| d.to_string()))
        .unwrap_or_else(|| hangar_shared::reference::DEFAULT_TAG.to_owned());
    Ok(ArchiveImage::new(
        format!("{}/{}", source.registry, source.repository()),
        tag,
        specs,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::tracker::testkit::{blob, job, platform};

    #[test]
    fn an_archive_entry_lists_platform_manifests_without_attachments_or_foreign_layers() {
        let (config, layer) = (blob("config"), blob("layer"));
        let mut foreign = blob("foreign");
        foreign.media_type = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip".into();
        let amd64 = platform("amd64", &[config.clone(), layer.clone(), foreign]);
        let digest = amd64.manifest.digest.clone();
        let mut sig = platform("unknown", &[blob("sig-config")]);
        sig.push_tag = Some("sha256-abc.sig".into());
        assert!(sig.is_attachment() && !amd64.is_attachment());
        let plan = ImagePlan {
            platforms: vec![amd64, sig],
            top: TopPlan::Nothing,
            source: None,
        };
        let entry = archive_image(&job("src.io/lib/a:1", "dst.io/proj/a:1"), &plan).expect("entry");
        assert_eq!(
            (entry.source.as_str(), entry.tag.as_str()),
            ("src.io/lib/a", "1")
        );
        assert_eq!(entry.arch_list, ["amd64"]);
        assert_eq!(entry.images.len(), 1, "the attachment is not archived");
        let spec = &entry.images[0];
        assert_eq!(spec.digest, digest);
        assert_eq!(spec.config.as_ref(), Some(&config.digest));
        assert_eq!(spec.layers, [layer.digest], "foreign layers live elsewhere");
    }

    #[test]
    fn an_archive_entry_of_a_tagless_pinned_line_is_tagged_by_its_digest() {
        let pin = hangar_shared::digest::Digest::of(b"index");
        let plan = ImagePlan {
            platforms: vec![platform("amd64", &[blob("config")])],
            top: TopPlan::Nothing,
            source: None,
        };
        let job = job(&format!("src.io/lib/a@{pin}"), "dst.io/proj/a:1");
        let entry = archive_image(&job, &plan).expect("entry");
        assert_eq!(entry.tag, pin.to_string());
        assert_eq!(entry.reference().expect("reference").digest, Some(pin));
    }

    #[test]
    fn an_archive_entry_needs_image_manifests() {
        let mut odd = platform("amd64", &[blob("config")]);
        odd.manifest = RawManifest::from_bytes(
            Bytes::from_static(br#"{"schemaVersion":2,"manifests":[]}"#),
            None,
        )
        .expect("an index");
        let plan = ImagePlan {
            platforms: vec![odd],
            top: TopPlan::Nothing,
            source: None,
        };
        let err = archive_image(&job("src.io/lib/a:1", "dst.io/proj/a:1"), &plan).unwrap_err();
        assert_eq!(err.class, FailureClass::Internal);
    }
}
