//! The planner: resolves one list entry's source manifests (index → platform manifests
//! filtered by `--arch/--os`, attestations kept with their images) into an [`ImagePlan`]:
//! which platform manifests to push, which blobs each needs, and what goes at the tag.
//! It does no copying; the tracker turns plans into tasks.
//!
//! `select` reads an image's top manifest and picks its platforms; `archive` plans images
//! read from an archive (`load`) and the archive entry of an image saved.

mod archive;
mod schema1;
mod select;

use std::sync::Arc;

use futures_util::StreamExt;

use bytes::Bytes;
use hangar_shared::archive::ArchiveImage;
use hangar_shared::cache::BlobCache;
use hangar_shared::digest::Digest;
use hangar_shared::error::{Error, FailureClass, Result};
use hangar_shared::imagelist::ListEntry;
use hangar_shared::manifest::{Descriptor, Manifest, PlatformFilter, RawManifest};
use hangar_shared::reference::ImageRef;
use hangar_shared::registry::Side;
use hangar_shared::store::{ImageStore, RepoRef, StoreRef};

pub use archive::{archive_image, plan_archive};
pub use schema1::Schema1Use;
pub use select::{read_config, select};

/// One list entry with its resolved endpoints: the repository it is read from and the one
/// it goes to, each in a store of any kind (a registry, an archive, the blob cache).
#[derive(Debug, Clone)]
pub struct ImageJob {
    pub entry: ListEntry,
    pub source: RepoRef,
    pub dest: RepoRef,
    /// How the list names the image at either end.
    pub name: Names,
    /// The image's entry in the archive it is loaded from: what plans it.
    pub archived: Option<Arc<ArchiveImage>>,
}

/// An image's names at its two ends: the source's tag or digest (and the registry whose
/// `registries.conf` mirrors read it), the destination's tag, and how logs and reports say it.
#[derive(Debug, Clone)]
pub struct Names {
    pub source: ImageRef,
    pub dest: ImageRef,
}

impl ImageJob {
    /// Registry to registry (`mirror`).
    pub fn between_registries(entry: ListEntry, source: ImageRef, dest: ImageRef) -> Self {
        Self {
            entry,
            source: RepoRef::registry(&source.registry, &source.repository()),
            dest: RepoRef::registry(&dest.registry, &dest.repository()),
            name: Names { source, dest },
            archived: None,
        }
    }

    /// Read from the archive at `location` (`load`), planned by the archive's own entry.
    pub fn from_archive(
        entry: ListEntry,
        location: &str,
        image: Arc<ArchiveImage>,
        source: ImageRef,
        dest: ImageRef,
    ) -> Self {
        Self {
            entry,
            source: RepoRef {
                store: StoreRef::Archive {
                    location: location.to_owned(),
                },
                repo: source.repository(),
            },
            dest: RepoRef::registry(&dest.registry, &dest.repository()),
            name: Names { source, dest },
            archived: Some(image),
        }
    }

    /// Gathered into the blob cache for an archive's assembler (`save`, `sync`) instead of
    /// pushed to the registry its name points at.
    pub fn into_cache(mut self) -> Self {
        self.dest = RepoRef {
            store: StoreRef::Cache,
            repo: String::new(),
        };
        self
    }
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
        /// The destination held nothing at `tag` when the plan looked.
        absent: bool,
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

/// Whether the destination's manifest at the image's tag (`found`) already holds the
/// selection: the very source index for a complete one; for a subset, an index listing
/// every selected digest that the copy's merge would leave exactly as it is (a registry
/// holds what its indexes list).
fn already_present(found: RawManifest, selection: &Selection) -> Option<Digest> {
    // A complete selection is copied as the source index itself: only that is present.
    if selection.complete {
        let same = selection
            .top
            .as_ref()
            .is_some_and(|t| t.digest == found.digest);
        return same.then_some(found.digest);
    }
    let Ok(Manifest::Index(index)) = found.parse() else {
        return None;
    };
    // Present only if the merge the copy would make leaves the index as it is: every
    // selected digest listed, nothing the merge would drop or reorder, already OCI.
    let listed = |d: &Digest| index.manifests.iter().any(|m| &m.digest == d);
    let all_listed = selection.entries.iter().all(|e| listed(&e.digest));
    let unchanged =
        !hangar_shared::index_builder::build(Some(&index), &selection.entries, false).changed;
    (all_listed && unchanged).then_some(found.digest)
}

/// Platform manifests read at once per image: an index's selected platforms are fetched
/// together (one round trip, not one each), a hostile index's hundreds a few at a time.
const MANIFESTS_AT_ONCE: usize = 8;
/// The most bytes one image's platform manifests may come to: an index of 1,000 entries of
/// 4 MiB each would hold 4 GiB per image planned, and several images are planned at once.
const IMAGE_MANIFESTS_LIMIT: usize = 16 << 20;

/// Resolves everything one image needs. `dest`: the destination to look at first (a registry destination of a plain copy), so
/// that an image whose tag already lists its selection is found present — when the source
/// holds no signature or attestation for it that a copy would carry.
///
/// Each round trip is made once and as early as it can be: the destination's tag is read,
/// and the source's tags listed (for its attachments), while the source's tag is read.
pub async fn plan(
    store: &dyn ImageStore,
    cache: Option<&BlobCache>,
    job: &ImageJob,
    filter: &PlatformFilter,
    provenance: bool,
    signatures: bool,
    dest: Option<&dyn ImageStore>,
) -> Result<Planned> {
    let source = &job.name.source;
    if source.is_signature_tag() {
        return Err(Error::invalid(format!(
            "{source}: image is a sigstore signature"
        )));
    }
    let looked_at = async {
        Ok::<_, Error>(match dest.filter(|_| job.name.dest.tag.is_some()) {
            Some(dest) => Some(
                dest.get_manifest(
                    &job.name.dest.repository(),
                    &job.name.dest.manifest_reference(),
                    Side::Destination,
                )
                .await,
            ),
            None => None,
        })
    };
    let repo = source.repository();
    let listing = async {
        Ok::<_, Error>(match signatures {
            true => listed_tags(store, &repo).await,
            false => None,
        })
    };
    let selecting = select(
        store,
        cache,
        source,
        filter,
        provenance,
        Schema1Use::Convert,
    );
    // The image's own failure ends the plan at once, the look and the listing dropped.
    let (selection, looked_at, listed) =
        futures_util::future::try_join3(selecting, looked_at, listing).await?;
    if !selection.entries.iter().any(|e| !e.is_attestation()) {
        return Ok(Planned::Skip(NO_PLATFORM.to_owned()));
    }
    let Some(top) = selection.top.clone() else {
        return Err(Error::internal("selection without a manifest"));
    };
    // Digests that keep their identity at the destination: every selected platform
    // manifest, and the index when it is copied whole.
    let mut kept: Vec<Digest> = selection.entries.iter().map(|e| e.digest.clone()).collect();
    if selection.complete {
        kept.push(top.digest.clone());
    }
    // The look is a shortcut, not a step: a destination this process may not read (on the
    // fleet only the workers may hold its credentials) is planned as ever.
    let absent = matches!(looked_at, Some(Ok(None)));
    let present = match looked_at {
        Some(Ok(Some(found))) => already_present(found, &selection),
        Some(Err(e)) => {
            tracing::debug!(image = %job.name.dest, "the destination's tag could not be read: {e}");
            None
        }
        _ => None,
    };
    let listing = async {
        match signatures {
            true => attachments(store, &repo, &kept, listed.as_ref()).await,
            false => Ok(Vec::new()),
        }
    };
    let reading = platform_manifests(store, &repo, source, &selection, &top);
    let (carried, manifests) = match present {
        Some(digest) => {
            let carried = listing.await?;
            if carried.is_empty() {
                return Ok(Planned::Present(digest));
            }
            (carried, reading.await?)
        }
        None => {
            let (carried, manifests) = futures_util::future::join(listing, reading).await;
            // The image's own manifests first: their failure is the one to report.
            let manifests = manifests?;
            (carried?, manifests)
        }
    };
    let mut platforms = Vec::with_capacity(selection.entries.len());
    for (entry, manifest) in selection.entries.iter().zip(manifests) {
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
        let blobs = image.unique_blobs();
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
    let top_plan = match &job.name.dest.tag {
        Some(tag) => TopPlan::Index {
            tag: tag.clone(),
            source_index: selection.complete.then_some(top),
            absent,
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
        // The attachments were listed for the selected digests; a platform manifest that
        // is not the entry that named it (a converted schema 1) is listed again.
        let mut pushed: Vec<Digest> = platforms
            .iter()
            .map(|p| p.manifest.digest.clone())
            .collect();
        match &top_plan {
            TopPlan::Index {
                source_index: Some(i),
                ..
            }
            | TopPlan::ByDigest(i) => pushed.push(i.digest.clone()),
            _ => {}
        }
        match pushed == kept {
            true => platforms.extend(carried),
            false => platforms.extend(attachments(store, &repo, &pushed, listed.as_ref()).await?),
        }
    }
    Ok(Planned::Plan(ImagePlan {
        platforms,
        top: top_plan,
        source: None,
    }))
}

/// The selection's platform manifests, in its order: the top manifest itself for a single
/// image, else each entry read from `repo`.
async fn platform_manifests(
    store: &dyn ImageStore,
    repo: &str,
    source: &ImageRef,
    selection: &Selection,
    top: &RawManifest,
) -> Result<Vec<RawManifest>> {
    if selection.single {
        return Ok(selection.entries.iter().map(|_| top.clone()).collect());
    }
    // Built before they are streamed: a stream's own `map` closure here makes the planner's
    // future lose `Send` (rustc's higher-ranked lifetime limits).
    let reads: Vec<_> = selection
        .entries
        .iter()
        .map(|entry| async move {
            store
                .get_manifest(repo, &entry.digest.to_string(), Side::Source)
                .await?
                .ok_or_else(|| {
                    Error::not_found(format!(
                        "{source}: platform manifest {} is missing",
                        entry.digest
                    ))
                })
        })
        .collect();
    let found = within_budget(reads, &format!("{source}: its platform manifests")).await?;
    Ok(found.into_iter().flatten().collect())
}

/// Runs manifest reads a few at a time, in order, failing once what they brought comes to
/// more than one image's budget ([`IMAGE_MANIFESTS_LIMIT`]); `what` names them.
async fn within_budget<F, M>(reads: Vec<F>, what: &str) -> Result<Vec<Option<RawManifest>>>
where
    F: std::future::Future<Output = Result<M>>,
    M: Into<Option<RawManifest>>,
{
    let mut read = futures_util::stream::iter(reads).buffered(MANIFESTS_AT_ONCE);
    let (mut out, mut total) = (Vec::new(), 0);
    while let Some(manifest) = read.next().await {
        let manifest: Option<RawManifest> = manifest?.into();
        total += manifest.as_ref().map_or(0, |m| m.bytes.len());
        if total > IMAGE_MANIFESTS_LIMIT {
            return Err(Error::invalid(format!(
                "{what} come to more than {} MiB; a real image's are some tens of KB",
                IMAGE_MANIFESTS_LIMIT >> 20
            )));
        }
        out.push(manifest);
    }
    Ok(out)
}

/// Tags listed in one request to learn which attachments a repository holds; a repository
/// with more is asked tag by tag.
const TAG_PAGE: usize = 1000;

/// `repo`'s tags when they fit in one page; `None` when there are more, or the listing is
/// refused or fails (no answer: the lookups decide).
async fn listed_tags(
    store: &dyn ImageStore,
    repo: &str,
) -> Option<std::collections::HashSet<String>> {
    match store.tags_upto(repo, TAG_PAGE).await {
        Ok(Some(tags)) => Some(tags.into_iter().collect()),
        _ => None,
    }
}

/// The cosign signatures and attestations (`sha256-<hex>.sig`, `.att`) the source holds for
/// `digests`. When the repository's tags fit in one page (`listed`), that listing answers for
/// every digest (one request instead of two per digest, each a 404 on most repositories);
/// otherwise — registries page long lists, popular repositories have thousands of tags —
/// each tag is looked up, all at once.
async fn attachments(
    store: &dyn ImageStore,
    repo: &str,
    digests: &[Digest],
    listed: Option<&std::collections::HashSet<String>>,
) -> Result<Vec<PlatformPlan>> {
    let mut tags: Vec<String> = digests
        .iter()
        .flat_map(|d| ["sig", "att"].map(|s| format!("{}.{s}", d.tag_form())))
        .collect();
    if let Some(listed) = listed {
        tags.retain(|t| listed.contains(t));
    }
    // Two lookups per platform of an index of up to 1,000: a few at a time, their
    // manifests within the image's budget.
    let lookups: Vec<_> = tags
        .iter()
        .map(|tag| store.get_manifest(repo, tag, Side::Source))
        .collect();
    let found = within_budget(lookups, &format!("{repo}: its signatures and attestations")).await?;
    let mut out = Vec::new();
    for (tag, manifest) in tags.into_iter().zip(found) {
        {
            let Some(manifest) = manifest else {
                continue;
            };
            let Manifest::Image(image) = manifest.parse()? else {
                continue;
            };
            let blobs = image.unique_blobs();
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
