//! Push one manifest's bytes unchanged, so its digest is preserved. A PUT of identical
//! bytes is idempotent, so no existence check is spent on it.

use hangar_shared::error::Result;
use hangar_shared::task::{ManifestTask, Outcome};

use crate::Context;

pub async fn push(ctx: &Context, task: &ManifestTask) -> Result<Outcome> {
    let manifest = task.manifest.to_raw()?;
    let dest = ctx.stores.resolve(&task.dest.store).await?;
    dest.put_manifest(&task.dest.repo, &task.reference, &manifest)
        .await?;
    Ok(Outcome::ManifestPushed)
}
