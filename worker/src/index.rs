//! Write the destination index at a tag. When the source index is complete and the tag
//! holds nothing it lacks, the source index goes up unchanged (its digest preserved, which
//! Hangar never does); otherwise Hangar's builder merges with what is there (§4.3).
//! The existing index is read at push time, so a redelivered task merges correctly —
//! unless the run saw the tag empty and no other image of it writes there (`absent`): the
//! index is then what this image alone makes, the same bytes on every delivery.

use hangar_shared::digest::Digest;
use hangar_shared::error::Result;
use hangar_shared::index_builder;
use hangar_shared::manifest::{Index, Manifest, OCI_INDEX, RawManifest};
use hangar_shared::registry::Side;
use hangar_shared::task::{IndexTask, Outcome};

use crate::Context;

pub async fn write(ctx: &Context, task: &IndexTask) -> Result<Outcome> {
    let source_index = task.source_index.as_ref().map(|s| s.to_raw()).transpose()?;
    let dest = ctx.stores.resolve(&task.dest.store).await?;
    let existing = match task.absent {
        true => None,
        false => {
            dest.get_manifest(&task.dest.repo, &task.tag, Side::Destination)
                .await?
        }
    };
    let existing_index: Option<Index> = match existing.as_ref().map(RawManifest::parse) {
        Some(Ok(Manifest::Index(i))) => Some(i),
        _ => None,
    };
    if let Some(source) = &source_index {
        let holds_nothing_else = task.overwrite
            || match (&existing, &existing_index) {
                (None, _) => true,
                (Some(e), _) if e.digest == source.digest => true,
                (Some(_), Some(idx)) => {
                    let ours: Vec<&Digest> = task.added.iter().map(|d| &d.digest).collect();
                    idx.manifests.iter().all(|m| ours.contains(&&m.digest))
                }
                (Some(_), None) => false,
            };
        if holds_nothing_else {
            if existing.as_ref().is_some_and(|e| e.digest == source.digest) {
                return Ok(Outcome::IndexUnchanged {
                    digest: source.digest.clone(),
                });
            }
            dest.put_manifest(&task.dest.repo, &task.tag, source)
                .await?;
            return Ok(Outcome::IndexPushed {
                digest: source.digest.clone(),
                preserved: true,
            });
        }
    }
    let built = index_builder::build(existing_index.as_ref(), &task.added, task.overwrite);
    if !built.changed
        && let Some(e) = existing
    {
        return Ok(Outcome::IndexUnchanged { digest: e.digest });
    }
    let bytes = index_builder::serialize(&built.index);
    let raw = RawManifest {
        media_type: OCI_INDEX.to_owned(),
        digest: Digest::of(&bytes),
        bytes,
    };
    dest.put_manifest(&task.dest.repo, &task.tag, &raw).await?;
    Ok(Outcome::IndexPushed {
        digest: raw.digest,
        preserved: false,
    })
}
