//! Write an archive from blobs in this worker's cache: the fleet's assembler. The images
//! come from a document the coordinator left in the shared cache (taken only with the
//! digest the task names); a `sync` base is opened afresh here, so a retried task never
//! writes from a stale copy of it. On a fleet worker
//! the archive (and its base) must lie under the worker's `--archive-root`s, and what is
//! written is the location as checked (normalised, links resolved), not the task's text.

use std::sync::Arc;

use hangar_shared::archive::writer::write_archive;
use hangar_shared::archive::{ArchiveImage, ArchiveReader, BlobSource};
use hangar_shared::cache::{BlobCache, DigestChecked};
use hangar_shared::digest::Digest;
use hangar_shared::error::{Error, FailureClass, Result};
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
    let images = read_plan(cache, &task.images, &task.images_digest).await?;
    let base = match &base {
        Some(location) => Some(Arc::new(ArchiveReader::open(location).await?)),
        None => None,
    };
    // On a fleet worker the bucket is every worker's to write, sidecars included: each
    // blob is checked against its digest, not only against its sidecar's size and CRC-32.
    let source: Arc<dyn BlobSource> = match &ctx.policy {
        Some(_) => Arc::new(DigestChecked(cache.clone())),
        None => cache.clone(),
    };
    let written = write_archive(&output, base, &images, source).await?;
    Ok(Outcome::Assembled {
        images: written.images,
        entries: written.entries,
        bytes: written.bytes,
    })
}

/// The archive's images as the coordinator planned them: the plan is read from the shared
/// bucket, and taken only if its bytes are the ones the task names.
async fn read_plan(cache: &BlobCache, key: &str, digest: &Digest) -> Result<Vec<ArchiveImage>> {
    let doc = cache.get_doc(key).await?;
    let found = Digest::of(&doc);
    if found != *digest {
        return Err(Error::new(
            FailureClass::DigestMismatch,
            format!("archive plan {key}: its bytes hash to {found}, the task names {digest}"),
        ));
    }
    serde_json::from_slice(&doc).map_err(|e| Error::invalid(format!("archive plan {key}: {e}")))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use futures_util::TryStreamExt as _;
    use hangar_shared::archive::BlobSource;
    use hangar_shared::cache::{BlobCache, DigestChecked};
    use hangar_shared::digest::Digest;
    use hangar_shared::error::FailureClass;
    use hangar_shared::manifest::Descriptor;
    use hangar_shared::verify::verified;
    use std::sync::Arc;

    fn desc(bytes: &[u8]) -> Descriptor {
        Descriptor {
            media_type: "application/octet-stream".into(),
            digest: Digest::of(bytes),
            size: bytes.len() as u64,
            urls: None,
            annotations: None,
            platform: None,
        }
    }

    async fn fill(cache: &BlobCache, bytes: &'static [u8]) -> hangar_shared::cache::BlobMeta {
        let d = desc(bytes);
        let stream = futures_util::stream::iter([Ok(Bytes::from_static(bytes))]);
        cache
            .fill(
                &d,
                verified(Box::pin(stream), d.digest.clone(), d.size, None),
            )
            .await
            .unwrap()
    }

    /// A worker with the bucket's credentials can replace a blob's bytes and its sidecar
    /// together: the sidecar's size and CRC-32 then pass, the digest does not.
    #[tokio::test]
    async fn a_blob_replaced_with_its_sidecar_is_refused() {
        let dir = std::env::temp_dir().join(format!(
            "hangar-assemble-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let cache = Arc::new(BlobCache::open(dir.to_str().unwrap()).unwrap());
        let (good, evil): (&[u8], &[u8]) = (b"the real layer", b"another layer!");
        fill(&cache, good).await;
        let forged_meta = fill(&cache, evil).await;
        let hex = Digest::of(good).hex().to_owned();
        cache
            .put_named(&format!("blobs/sha256/{hex}"), evil.to_vec())
            .await
            .unwrap();
        cache
            .put_named(
                &format!("blobs/sha256/{hex}.meta"),
                serde_json::to_vec(&forged_meta).unwrap(),
            )
            .await
            .unwrap();
        let size = good.len() as u64;
        // The sidecar alone is satisfied...
        let by_crc: Vec<Bytes> = cache
            .blob_stream(&Digest::of(good), size)
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        assert_eq!(by_crc.concat(), evil);
        // ...the assembler's reading is not, and the entry is evicted to be fetched again.
        let e = DigestChecked(cache.clone())
            .blob_stream(&Digest::of(good), size)
            .await
            .unwrap()
            .try_collect::<Vec<Bytes>>()
            .await
            .unwrap_err();
        assert_eq!(e.class, FailureClass::CacheDamaged, "{e}");
        assert!(e.message.contains("evicted"), "{e}");
        assert_eq!(cache.meta(&Digest::of(good)).await.unwrap(), None);

        // A sidecar recording another size is damage found before any byte: evicted too.
        let mut longer = fill(&cache, good).await;
        longer.size += 1;
        cache
            .put_named(
                &format!("blobs/sha256/{hex}.meta"),
                serde_json::to_vec(&longer).unwrap(),
            )
            .await
            .unwrap();
        let Err(e) = DigestChecked(cache.clone())
            .blob_stream(&Digest::of(good), size)
            .await
        else {
            panic!("a sidecar of another size is refused");
        };
        assert_eq!(e.class, FailureClass::CacheDamaged, "{e}");
        assert_eq!(cache.meta(&Digest::of(good)).await.unwrap(), None);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// The plan is the bucket's to rewrite too: only the bytes the task names are taken.
    #[tokio::test]
    async fn a_plan_rewritten_in_the_bucket_is_refused() {
        let dir = std::env::temp_dir().join(format!("hangar-plan-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cache = BlobCache::open(dir.to_str().unwrap()).unwrap();
        let planned = b"[]".to_vec();
        cache.put_doc("job/0.json", planned.clone()).await.unwrap();
        let digest = Digest::of(&planned);
        let images = super::read_plan(&cache, "job/0.json", &digest)
            .await
            .unwrap();
        assert!(images.is_empty());
        let forged = br#"[{"source":"evil/app","tag":"v1"}]"#.to_vec();
        cache.put_doc("job/0.json", forged).await.unwrap();
        let e = super::read_plan(&cache, "job/0.json", &digest)
            .await
            .unwrap_err();
        assert_eq!(e.class, FailureClass::DigestMismatch, "{e}");
        assert!(e.message.contains("job/0.json"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
