//! Read one platform image's package inventory: layers from this worker's cache when there
//! (a mirror through the cache has just put them there, checked against their digests),
//! else from the store; the inventory is kept in the cache by manifest digest, and taken
//! from there where this worker trusts the cache with it (`--reuse-inventories`).

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
        ctx.reuse_inventories,
    )
    .await?;
    Ok(Outcome::Scanned {
        inventory: Box::new(inventory),
        cached,
    })
}
