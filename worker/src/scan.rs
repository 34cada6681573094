//! Read one platform image's package inventory: layers from this worker's cache when there
//! (a mirror through the cache has just put them there), else from the store; the
//! inventory is kept in the cache by manifest digest, so no image is read twice.

use hangar_shared::error::Result;
use hangar_shared::scan::image;
use hangar_shared::task::{Outcome, ScanTask};

use crate::Context;

pub async fn scan(ctx: &Context, task: &ScanTask) -> Result<Outcome> {
    let store = ctx.stores.resolve(&task.store.store).await?;
    let (inventory, cached) = image::inventory(
        store.as_ref(),
        ctx.cache.as_deref(),
        &task.store.repo,
        &task.manifest.to_raw()?,
    )
    .await?;
    Ok(Outcome::Scanned {
        inventory: Box::new(inventory),
        cached,
    })
}
