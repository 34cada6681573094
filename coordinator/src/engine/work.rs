//! Per-image work that copies nothing — signing, verifying signatures, scanning, checking
//! a mirror — planned the same way wherever it is asked from: the command line (embedded
//! or `--nats`) and `serve` plan with [`plan`] and follow with [`run`]; each image ends
//! in an [`ImageOutcomes`] that the command renders. `serve` hands the same outcomes to
//! the client that asked ([`ImageReport`]), which renders them as it would its own.

use std::sync::Arc;

use hangar_shared::cache::BlobCache;
use hangar_shared::error::{Error, FailureClass, Result};
use hangar_shared::manifest::{Descriptor, PlatformFilter};
use hangar_shared::reference::ImageRef;
use hangar_shared::registry::Side;
use hangar_shared::sign::cosign;
use hangar_shared::store::{ImageStore, RegistryPool, RepoRef, StoreRef};
use hangar_shared::task::{CheckTask, ManifestBody, Outcome, ScanTask, SignTask, Task};
use serde::{Deserialize, Serialize};

use super::per_image::{self, PerImage, Planned};
use super::planner::Schema1Use;
use super::tasks::Bus;
use super::{planner, pull_source};

/// One image's end: each task's outcome with the manifest it was for, in planned order
/// (none: nothing selected, a skip), or why the image failed.
pub type ImageOutcomes = std::result::Result<Vec<(Descriptor, Outcome)>, Error>;

/// What is done to each image.
#[derive(Clone)]
pub enum Work {
    /// Sign every selected platform digest, and the index's with `with_index`, with the
    /// key of this name (a file here; the workers' key of that name on the fleet).
    Sign { key: String, with_index: bool },
    /// Verify the same digests' signatures with this public key (PEM); with `identity`,
    /// the payload must name that repository.
    Verify {
        public_key: String,
        identity: Option<String>,
        with_index: bool,
    },
    /// Read every selected platform image's package inventory (layers from `cache` when
    /// there, here; the workers' own cache on the fleet).
    Scan { cache: Option<Arc<BlobCache>> },
    /// The destination's index holds what the source's selection names, or what the
    /// target expects (`mirror validate`, `load validate`).
    Contains { provenance: bool },
    /// `store` holds every manifest the source's selection names (`save validate`: an
    /// archive).
    Holds { store: StoreRef, provenance: bool },
}

/// One image: where it is, and for [`Work::Contains`] where its copy should be.
#[derive(Debug, Clone)]
pub struct Target {
    pub image: ImageRef,
    pub dest: Option<ImageRef>,
    /// What the copy should hold when it is known without reading the source (an
    /// archive's entries: `load validate`).
    pub expect: Option<Vec<Descriptor>>,
}

impl Target {
    pub fn at(image: ImageRef) -> Self {
        Self {
            image,
            dest: None,
            expect: None,
        }
    }
}

/// The tasks of one image.
pub async fn plan(
    work: &Work,
    pool: &RegistryPool,
    target: &Target,
    filter: &PlatformFilter,
) -> Planned<Descriptor> {
    let image = &target.image;
    let at = RepoRef::registry(&image.registry, &image.repository());
    match work {
        Work::Sign { key, with_index } => {
            let identity = cosign::docker_reference(&image.registry, &image.repository());
            Ok(subjects(pool, image, filter, *with_index)
                .await?
                .into_iter()
                .map(|d| {
                    let task = Task::Sign(SignTask {
                        dest: at.clone(),
                        digest: d.digest.clone(),
                        identity: identity.clone(),
                        key: key.clone(),
                        index_of: None,
                    });
                    (d, task)
                })
                .collect())
        }
        Work::Verify {
            public_key,
            identity,
            with_index,
        } => {
            // Signatures are read where the image is read (registries.conf's mirrors first).
            let (read_at, selection) =
                pull_source::select_at(pool, None, image, filter, false, Schema1Use::Refuse)
                    .await?;
            let at = RepoRef::registry(&read_at.registry, &read_at.repository());
            Ok(subjects_of(selection, *with_index)
                .into_iter()
                .map(|d| {
                    let task = Task::Check(CheckTask::Signature {
                        store: at.clone(),
                        digest: d.digest.clone(),
                        public_key: public_key.clone(),
                        identity: identity.clone(),
                    });
                    (d, task)
                })
                .collect())
        }
        Work::Scan { cache } => {
            let (read_at, sel) = pull_source::select_at(
                pool,
                cache.as_deref(),
                image,
                filter,
                false,
                Schema1Use::Refuse,
            )
            .await?;
            let store = pool.registry(&read_at.registry).await?;
            let at = RepoRef::registry(&read_at.registry, &read_at.repository());
            let mut out = Vec::new();
            for e in sel.entries.iter().filter(|e| !e.is_attestation()) {
                let manifest = match (&sel.top, sel.single) {
                    (Some(top), true) => top.clone(),
                    _ => store
                        .get_manifest(&read_at.repository(), &e.digest.to_string(), Side::Source)
                        .await?
                        .ok_or_else(|| {
                            Error::not_found(format!("{image}: manifest {} is missing", e.digest))
                        })?,
                };
                let task = Task::Scan(ScanTask {
                    store: at.clone(),
                    manifest: ManifestBody::from(&manifest),
                });
                out.push((e.clone(), task));
            }
            Ok(out)
        }
        Work::Contains { .. } if target.expect.is_some() => {
            let dest = target
                .dest
                .as_ref()
                .ok_or_else(|| Error::internal("a check without a destination"))?;
            let expect = target.expect.clone().unwrap_or_default();
            let Some(first) = expect.first().cloned() else {
                return Ok(Vec::new());
            };
            let check = CheckTask::Contains {
                store: RepoRef::registry(&dest.registry, &dest.repository()),
                reference: dest.manifest_reference(),
                expect,
                whole: None,
            };
            Ok(vec![(first, Task::Check(check))])
        }
        Work::Holds { store, provenance } => {
            let (_, selection) =
                pull_source::select_at(pool, None, image, filter, *provenance, Schema1Use::Convert)
                    .await?;
            let Some(top) = selection.top.as_ref() else {
                return Ok(Vec::new());
            };
            if !selection.entries.iter().any(|e| !e.is_attestation()) {
                return Ok(Vec::new());
            }
            let check = CheckTask::Present {
                store: RepoRef {
                    store: store.clone(),
                    repo: image.repository(),
                },
                expect: selection.entries.clone(),
            };
            Ok(vec![(top.descriptor(), Task::Check(check))])
        }
        Work::Contains { provenance } => {
            let dest = target
                .dest
                .as_ref()
                .ok_or_else(|| Error::internal("a mirror check without a destination"))?;
            let (_, selection) =
                pull_source::select_at(pool, None, image, filter, *provenance, Schema1Use::Convert)
                    .await?;
            let Some(top) = selection.top.as_ref() else {
                return Ok(Vec::new());
            };
            if !selection.entries.iter().any(|e| !e.is_attestation()) {
                return Ok(Vec::new());
            }
            // A complete selection is the source index itself: the destination holding
            // that very index passes without looking further.
            let whole = selection.complete.then(|| top.digest.clone());
            let check = CheckTask::Contains {
                store: RepoRef::registry(&dest.registry, &dest.repository()),
                reference: dest.manifest_reference(),
                expect: selection.entries.clone(),
                whole,
            };
            Ok(vec![(top.descriptor(), Task::Check(check))])
        }
    }
}

/// The index digest (when `with_index` and the image is an index) and every platform
/// digest passing the filter (attestations never pass: their platform is unknown).
async fn subjects(
    pool: &RegistryPool,
    image: &ImageRef,
    filter: &PlatformFilter,
    with_index: bool,
) -> Result<Vec<Descriptor>> {
    let store = pool.registry(&image.registry).await?;
    let sel = planner::select(
        store.as_ref(),
        None,
        image,
        filter,
        false,
        Schema1Use::Refuse,
    )
    .await?;
    Ok(subjects_of(sel, with_index))
}

fn subjects_of(sel: planner::Selection, with_index: bool) -> Vec<Descriptor> {
    let mut out = Vec::new();
    if let Some(top) = &sel.top
        && !sel.single
        && with_index
    {
        out.push(top.descriptor());
    }
    out.extend(sel.entries.into_iter().filter(|e| !e.is_attestation()));
    out
}

/// Plans and runs `work` on every target, telling `finished` of each image once.
pub async fn run(
    work: &Work,
    targets: &[Target],
    filter: &PlatformFilter,
    pool: &RegistryPool,
    bus: Bus,
    how: PerImage<'_>,
    finished: impl FnMut(usize, ImageOutcomes),
) -> Result<()> {
    per_image::per_image(
        bus,
        how,
        targets.len(),
        |i| plan(work, pool, &targets[i], filter),
        finished,
    )
    .await
}

/// An image's end as `serve` reports it to the client that asked: `item` is the image's
/// position among the list's images.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageReport {
    pub item: usize,
    /// The image as the list named it, for a client that does not plan it itself (the
    /// archive a `load-validate` reads is the coordinator's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ReportedImage>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outcomes: Vec<(Descriptor, Outcome)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ReportedError>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReportedImage {
    /// Its `[IMG:N]` number.
    pub entry: usize,
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dest: Option<String>,
    /// The list's line, for the failed list.
    pub line: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReportedError {
    pub class: FailureClass,
    pub message: String,
}

impl ImageReport {
    pub fn new(item: usize, outcomes: &ImageOutcomes) -> Self {
        match outcomes {
            Ok(o) => Self {
                item,
                image: None,
                outcomes: o.clone(),
                error: None,
            },
            Err(e) => Self {
                item,
                image: None,
                outcomes: Vec::new(),
                error: Some(ReportedError {
                    class: e.class,
                    message: e.message.clone(),
                }),
            },
        }
    }

    pub fn outcomes(self) -> ImageOutcomes {
        match self.error {
            Some(e) => Err(Error::new(e.class, e.message)),
            None => Ok(self.outcomes),
        }
    }
}
