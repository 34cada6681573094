//! Planning an image from where `registries.conf` says to pull it: each of its mirrors in
//! order, then the registry itself (or where its `location` redirects it), the first that
//! plans the image winning — containers/image's order. A mirror that fails is passed over
//! (said in `--debug`); only the last candidate's error is the image's. The image keeps its
//! name in every report; its blobs are read from the candidate that planned it.
//!
//! The signature policy is checked here, against the candidate used, under the image's own
//! name: an image read from a mirror is accepted only if what the mirror holds satisfies it.

use hangar_shared::cache::BlobCache;
use hangar_shared::error::{Error, Result};
use hangar_shared::manifest::{PlatformFilter, RawManifest};
use hangar_shared::reference::ImageRef;
use hangar_shared::registry::RegistriesConf;
use hangar_shared::registry::Side;
use hangar_shared::store::{RegistryPool, RepoRef, StoreRef};

use crate::engine::planner::{self, ImageJob, Planned};

pub struct Planning<'a> {
    pub pool: &'a RegistryPool,
    pub cache: Option<&'a BlobCache>,
    pub filter: &'a PlatformFilter,
    pub provenance: bool,
    pub signatures: bool,
    /// Look at the destination's tag first: a re-run's images are found present there
    /// (a plain copy to a registry; not for `--overwrite`, signing or scanning, which act
    /// on images already there).
    pub look_first: bool,
}

impl Planning<'_> {
    pub async fn plan(&self, job: &ImageJob) -> Result<Planned> {
        let candidates = candidates(&job.name.source)?;
        let last = candidates.len() - 1;
        let mut outcome = None;
        for (n, candidate) in candidates.into_iter().enumerate() {
            let mirrored = candidate != job.name.source;
            let attempt = self.plan_from(job, &candidate).await;
            match attempt {
                Err(e) if n < last => {
                    tracing::debug!(
                        image = %job.name.source,
                        from = %candidate,
                        "passed over (registries.conf): {e}"
                    );
                }
                Ok(Planned::Plan(mut plan)) => {
                    if mirrored {
                        tracing::debug!(image = %job.name.source, from = %candidate, "read through registries.conf");
                        plan.source = Some(RepoRef::registry(
                            &candidate.registry,
                            &candidate.repository(),
                        ));
                    }
                    return Ok(Planned::Plan(plan));
                }
                other => {
                    outcome = Some(other);
                    break;
                }
            }
        }
        outcome.unwrap_or_else(|| Err(Error::internal("no source to plan from")))
    }

    async fn plan_from(&self, job: &ImageJob, candidate: &ImageRef) -> Result<Planned> {
        let store = self
            .pool
            .registry(&candidate.registry)
            .await
            .and_then(|store| store.reachable().map(|()| store))?;
        if let Some(policy) = crate::commands::signature_policy()? {
            // The scope and identity are the image's own name; its signatures are read
            // where the image is read.
            policy
                .check_at(store.as_ref(), candidate, &job.name.source)
                .await?;
        }
        let mut at = job.clone();
        at.source = RepoRef::registry(&candidate.registry, &candidate.repository());
        at.name.source = candidate.clone();
        // A destination this process cannot reach is the workers' business: no look.
        // Only a store that names images by tag can already hold this one at its tag.
        let dest = match &job.dest.store {
            StoreRef::Registry { host } if self.look_first => self.pool.registry(host).await.ok(),
            _ => None,
        };
        planner::plan(
            store.as_ref(),
            self.cache,
            &at,
            self.filter,
            self.provenance,
            self.signatures,
            dest.as_ref()
                .map(|d| d.as_ref() as &dyn hangar_shared::store::ImageStore),
        )
        .await
    }
}

/// Reads `image`'s selection where `registries.conf` says to pull it from: its mirrors in
/// order, then the registry itself, the first that has it winning (a failure is passed over,
/// the last one is the image's). Returns where it was read, for the tasks that read it again.
pub async fn select_at(
    pool: &RegistryPool,
    cache: Option<&BlobCache>,
    image: &ImageRef,
    filter: &PlatformFilter,
    provenance: bool,
    schema1: planner::Schema1Use,
) -> Result<(ImageRef, planner::Selection)> {
    let candidates = candidates(image)?;
    let last = candidates.len() - 1;
    for (n, candidate) in candidates.into_iter().enumerate() {
        let selected = async {
            let store = pool.registry(&candidate.registry).await?;
            planner::select(
                store.as_ref(),
                cache,
                &candidate,
                filter,
                provenance,
                schema1,
            )
            .await
        }
        .await;
        match selected {
            Ok(selection) => return Ok((candidate, selection)),
            Err(e) if n < last => {
                tracing::debug!(image = %image, from = %candidate, "passed over (registries.conf): {e}");
            }
            Err(e) => return Err(e),
        }
    }
    Err(Error::internal("no source to read from"))
}

/// `image`'s top manifest where `registries.conf` says to pull it from (mirrors first, the
/// first that has it), with the registry and the name it was read at.
pub async fn manifest_at(
    pool: &RegistryPool,
    image: &ImageRef,
) -> Result<(
    std::sync::Arc<hangar_shared::registry::Registry>,
    ImageRef,
    RawManifest,
)> {
    let candidates = candidates(image)?;
    let last = candidates.len() - 1;
    for (n, candidate) in candidates.into_iter().enumerate() {
        let found = async {
            let reg = pool.registry(&candidate.registry).await?;
            let top = reg
                .manifest_opt(
                    &candidate.repository(),
                    &candidate.manifest_reference(),
                    Side::Source,
                )
                .await?;
            Ok::<_, Error>((reg, top))
        }
        .await;
        match found {
            Ok((reg, Some(top))) => return Ok((reg, candidate, top)),
            Ok((_, None)) if n == last => {
                return Err(Error::not_found(format!("manifest unknown: {image}")));
            }
            Err(e) if n == last => return Err(e),
            Ok((_, None)) | Err(_) => {
                tracing::debug!(image = %image, from = %candidate, "passed over (registries.conf)");
            }
        }
    }
    Err(Error::internal("no source to read from"))
}

/// The registry an image is read from first (`registries.conf`'s first mirror, or its own).
pub fn first_host(image: &ImageRef) -> Option<String> {
    candidates(image)
        .ok()?
        .into_iter()
        .next()
        .map(|c| c.registry)
}

/// Where to read `image` from, in order; just `image` when the configuration says nothing.
fn candidates(image: &ImageRef) -> Result<Vec<ImageRef>> {
    let name = format!("{}/{}", image.registry, image.repository());
    let sources = RegistriesConf::global()?.pull_sources(&name, image.digest.is_some());
    let mut out = Vec::with_capacity(sources.len());
    for source in sources {
        if source == name {
            out.push(image.clone());
            continue;
        }
        let at = source
            .split_once('/')
            .and_then(|(registry, repository)| {
                // A one-segment repository (`host/name`) has no project.
                let (project, name) = repository.split_once('/').unwrap_or(("", repository));
                (!name.is_empty()).then_some(())?;
                Some(ImageRef {
                    registry: registry.to_owned(),
                    project: project.to_owned(),
                    name: name.to_owned(),
                    tag: image.tag.clone(),
                    digest: image.digest.clone(),
                })
            })
            .ok_or_else(|| {
                Error::invalid(format!(
                    "registries.conf: {name} is to be read from {source}, which is not `host/repository`"
                ))
            })?;
        out.push(at);
    }
    Ok(out)
}
