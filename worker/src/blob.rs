//! Ensure one blob is in one destination repository: HEAD first, then a cross-repository
//! mount when a candidate shares the registry, else one verified stream source → dest.

use futures_util::StreamExt;
use hangar_shared::error::Result;
use hangar_shared::registry::Side;
use hangar_shared::task::{BlobTask, Outcome};
use hangar_shared::verify::verified;

use crate::Context;

pub async fn copy(ctx: &Context, task: &BlobTask) -> Result<Outcome> {
    let digest = &task.desc.digest;
    let dest = ctx.stores.resolve(&task.dest.store).await?;
    if dest
        .blob_exists(&task.dest.repo, digest, Side::Destination)
        .await?
    {
        return Ok(Outcome::BlobPresent);
    }
    for candidate in task
        .mount_from
        .iter()
        .filter(|c| c.store == task.dest.store && c.repo != task.dest.repo)
    {
        if dest
            .mount_blob(&task.dest.repo, &candidate.repo, digest)
            .await?
        {
            return Ok(Outcome::BlobMounted {
                from: candidate.to_string(),
            });
        }
    }
    if let Some(bytes) = &task.inline {
        let what = format!("push blob {digest} -> {}", task.dest);
        ctx.retry
            .run(&what, || async {
                let once =
                    futures_util::stream::once(std::future::ready(Ok(bytes.clone()))).boxed();
                let stream = verified(
                    once,
                    digest.clone(),
                    task.desc.size,
                    Some(ctx.bytes_moved.clone()),
                );
                dest.put_blob(&task.dest.repo, &task.desc, stream).await
            })
            .await?;
        return Ok(Outcome::BlobCopied {
            bytes: task.desc.size,
        });
    }
    let source = ctx.stores.resolve(&task.source.store).await?;
    let what = format!("copy blob {digest} {} -> {}", task.source, task.dest);
    ctx.retry
        .run(&what, || async {
            let stream = source
                .get_blob(&task.source.repo, &task.desc, Some(ctx.bytes_moved.clone()))
                .await?;
            dest.put_blob(&task.dest.repo, &task.desc, stream).await
        })
        .await?;
    Ok(Outcome::BlobCopied {
        bytes: task.desc.size,
    })
}
