//! The archive written here as a `save` or `sync` gathers (one archive, embedded): each
//! image goes into the zip as it completes, while later ones are still being fetched;
//! without a cache of the user's, its layers are streamed from their source into the zip
//! (`archive::streamed`) instead of gathered into a cache first.

use std::path::PathBuf;
use std::sync::Arc;

use hangar_shared::archive::streamed::StreamedSource;
use hangar_shared::archive::writer::{ArchiveWriter, Written};
use hangar_shared::archive::{ArchiveReader, BlobSource};
use hangar_shared::cache::BlobCache;
use hangar_shared::store::RegistryPool;

use crate::console::Console;
use crate::engine::job::{self, CopySpec};
use crate::engine::planner::{self, ImageJob, ImagePlan};

/// Where the archive goes and what it starts from.
pub struct Archive<'a> {
    pub location: &'a str,
    /// `sync`'s archive, whose entries go first.
    pub base: Option<Arc<ArchiveReader>>,
    /// What the gathering writes (manifests, configs; every blob when not streamed).
    pub cache: Arc<BlobCache>,
    /// Where a streamed save says each image is saved, once its layers are in the zip.
    pub console: Arc<Console>,
}

/// The writer's task, fed by the copy's completions; aborted (its fetches with it) when
/// dropped unfinished, as when the gathering fails, rather than left writing beside a
/// cache directory being removed. It ends with the images whose blobs could not be read
/// (streamed), by their list entry's index.
pub struct Writer(tokio::task::JoinHandle<hangar_shared::Result<(ArchiveWriter, Unsaved)>>);

/// Images left out of a streamed archive: their list entry's index, and why.
pub type Unsaved = Vec<(usize, hangar_shared::Error)>;

impl Drop for Writer {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Writer {
    /// Once the copy is over (no more completions): the archive closed and in place, and
    /// the images left out of it.
    pub async fn finish(mut self) -> anyhow::Result<(Written, Unsaved)> {
        let (writer, unsaved) = (&mut self.0).await??;
        Ok((writer.finish().await?, unsaved))
    }
}

/// Opens the archive and sets `spec` to hand it each image as it completes. `staging`: a
/// directory of the run's own, to stream layers through; `None` gathers them in the cache.
pub async fn start(
    to: Archive<'_>,
    staging: Option<PathBuf>,
    registries: Arc<RegistryPool>,
    spec: &mut CopySpec,
) -> anyhow::Result<Writer> {
    let streamed = staging.map(|dir| {
        Arc::new(StreamedSource::new(
            to.cache.clone(),
            registries,
            spec.transfers,
            spec.retry.clone(),
            dir,
        ))
    });
    spec.extras.streamed = streamed.is_some();
    let source: Arc<dyn BlobSource> = match &streamed {
        Some(s) => s.clone(),
        None => hangar_shared::cache::archive_source(to.cache.clone()),
    };
    let mut writer = ArchiveWriter::create(to.location, to.base, source).await?;
    let (tx, mut completed) = tokio::sync::mpsc::unbounded_channel();
    spec.completions = Some(tx);
    if streamed.is_some() {
        writer.isolate_images().await?;
    }
    let (console, label) = (to.console, to.location.to_owned());
    Ok(Writer(tokio::spawn(async move {
        // Streamed, an image is saved only once its layers, read as they are written, are
        // in the zip: each is said then, not when its plan completed or its entries queued;
        // one whose blob could not be read is left out, and said failed.
        let mut saying = tokio::task::JoinSet::new();
        while let Some((job, plan)) = completed.recv().await {
            let image = planner::archive_image(&job, &plan)?;
            let Some(streamed) = &streamed else {
                writer.add(&image).await?;
                continue;
            };
            expect(streamed, &job, &plan);
            writer.add(&image).await?;
            let written = writer.written(&image).await?;
            let (console, label) = (console.clone(), label.clone());
            saying.spawn(async move {
                let n = job.entry.index;
                let source = &job.name.source;
                match written.await {
                    Ok(None) => {
                        console.info(Some(n), job::saved(source, &label));
                        None
                    }
                    Ok(Some(e)) => {
                        console.error(Some(n), job::not_saved(source, &label, &e));
                        Some((n, e))
                    }
                    // The archive failed as a whole: said where it fails.
                    Err(_) => None,
                }
            });
        }
        let unsaved = saying.join_all().await.into_iter().flatten().collect();
        Ok((writer, unsaved))
    })))
}

/// Tells the streamed source where each of the plan's blobs is read. Every one: a config
/// one image carries inline may be one another image left to the writer
/// (`Extras::streamed`, decided by the first to name it); the source reads the cache
/// first, which holds whatever the pipeline wrote (a schema 1 image's converted config,
/// which its source does not hold, among them).
fn expect(streamed: &StreamedSource, job: &ImageJob, plan: &ImagePlan) {
    let from = plan.source.as_ref().unwrap_or(&job.source);
    for desc in plan.platforms.iter().flat_map(|p| p.blobs.iter()) {
        streamed.expect(from, desc);
    }
}
