//! Write an archive from blobs in this worker's cache: the fleet's assembler. The images
//! come from a document the coordinator left in the shared cache; a `sync` base is opened
//! afresh here, so a retried task never writes from a stale copy of it. On a fleet worker
//! the archive (and its base) must lie under the worker's `--archive-root`s, and what is
//! written is the location as checked (normalised, links resolved), not the task's text.

use std::sync::Arc;

use hangar_shared::archive::writer::write_archive;
use hangar_shared::archive::{ArchiveImage, ArchiveReader};
use hangar_shared::error::{Error, Result};
use hangar_shared::task::{AssembleTask, Outcome};

use crate::Context;

pub async fn write(ctx: &Context, task: &AssembleTask) -> Result<Outcome> {
    let Some(cache) = &ctx.cache else {
        return Err(Error::invalid(
            "an assemble task reached a worker without a blob cache (--cache)",
        ));
    };
    // Refused before anything is read: a task from outside the coordinator gets nothing.
    let (output, base) = match &ctx.policy {
        Some(policy) => (
            policy.archives.check("archive", &task.output)?,
            match &task.base {
                Some(b) => Some(policy.archives.check("base archive", b)?),
                None => None,
            },
        ),
        None => (task.output.clone(), task.base.clone()),
    };
    let doc = cache.get_doc(&task.images).await?;
    let images: Vec<ArchiveImage> = serde_json::from_slice(&doc)
        .map_err(|e| Error::invalid(format!("archive plan {}: {e}", task.images)))?;
    let base = match &base {
        Some(location) => Some(Arc::new(ArchiveReader::open(location).await?)),
        None => None,
    };
    let written = write_archive(&output, base, &images, cache.clone()).await?;
    Ok(Outcome::Assembled {
        images: written.images,
        entries: written.entries,
        bytes: written.bytes,
    })
}
