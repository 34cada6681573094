//! Ensure one blob is in one destination repository: a cross-repository mount when a
//! candidate shares the registry, else a look (which a registry answers with the upload
//! already opened), else one verified stream source → dest.

use futures_util::StreamExt;
use futures_util::future::Either;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use hangar_shared::cache::BlobCache;
use hangar_shared::error::{FailureClass, Result};
use hangar_shared::lease::BlobLeases;
use hangar_shared::manifest::Descriptor;
use hangar_shared::store::{BlobLook, ImageStore, OpenedUpload};
use hangar_shared::task::{BlobTask, Outcome};
use hangar_shared::verify::{ByteStream, verified};

use crate::Context;

pub async fn copy(ctx: &Context, task: &BlobTask) -> Result<Outcome> {
    let digest = &task.desc.digest;
    // A source archive is read only inside a fleet worker's archive roots: its store
    // resolver (`policy::Confined`) checks every archive a task names.
    let can = task.dest.store.abilities();
    if can.leased_fills {
        // The destination is the fleet's blob cache (`save` gathers there for the
        // assembler): filling it is the copy, under the lease on the digest.
        return into_cache(ctx, task).await;
    }
    let dest = ctx.stores.resolve(&task.dest.store).await?;
    // A mount needs no look first: it links the blob whether or not the repository
    // already had it, in one request (the look would be a second, on every mount).
    let candidates = task
        .mount_from
        .iter()
        .filter(|c| can.mounts && c.store == task.dest.store && c.repo != task.dest.repo);
    for candidate in candidates {
        if dest
            .mount_blob(&task.dest.repo, &candidate.repo, digest)
            .await?
        {
            return Ok(Outcome::BlobMounted {
                from: candidate.to_string(),
            });
        }
    }
    // Copies keep to the worker's copy slots, from whichever lane they came.
    let _slot = match task.inline {
        None => copy_slot(ctx).await,
        Some(_) => None,
    };
    // A blob streamed from its source is asked for while the destination is looked at, once
    // the looks have shown they find little there ([`crate::context::looks`]).
    let streamed = task.inline.is_none() && !through_the_cache(ctx, task);
    let (look, early) = if streamed && ctx.looks.mostly_absent() {
        let reading = async {
            let source = ctx.stores.resolve(&task.source.store).await?;
            let progress = Some(crate::progress::counter(ctx));
            source
                .get_blob(&task.source.repo, &task.desc, progress)
                .await
        };
        let looking = dest.look_before_put(&task.dest.repo, digest);
        tokio::pin!(reading, looking);
        // The look decides: a blob already there does not wait for the source's answer
        // (the read is dropped unread).
        match futures_util::future::select(looking, reading).await {
            Either::Left((look, reading)) => match look? {
                BlobLook::Present => (BlobLook::Present, None),
                absent => (absent, Some(reading.await)),
            },
            Either::Right((early, looking)) => (looking.await?, Some(early)),
        }
    } else {
        (dest.look_before_put(&task.dest.repo, digest).await?, None)
    };
    ctx.looks.record(matches!(look, BlobLook::Present));
    let opened = match look {
        // The early read, if any, is dropped unread.
        BlobLook::Present => return Ok(Outcome::BlobPresent),
        BlobLook::Absent(opened) => Opened(std::sync::Mutex::new(opened)),
    };
    let copied = put(ctx, task, dest.as_ref(), &opened, early).await;
    opened.close(dest.as_ref(), &task.dest.repo).await;
    copied
}

/// Whether a copied blob goes source → cache → destination: with a cache, unless the
/// source is read locally (an archive).
fn through_the_cache(ctx: &Context, task: &BlobTask) -> bool {
    ctx.cache.is_some() && !task.source.store.abilities().local_reads
}

/// One of the worker's copy slots, if it counts them; waiting for one is not a stall.
async fn copy_slot(ctx: &Context) -> Option<tokio::sync::OwnedSemaphorePermit> {
    let slots = ctx.copy_slots.as_ref()?;
    match slots.clone().try_acquire_owned() {
        Ok(slot) => Some(slot),
        Err(_) => {
            hangar_shared::waiting::on("a copy slot (--blob-concurrency)");
            slots.clone().acquire_owned().await.ok()
        }
    }
}

/// The blob into `dest`, which does not hold it: the task's inline bytes, through the
/// cache, or streamed from the source (the first attempt from `early`, the source's answer
/// asked for during the look, when there is one).
async fn put(
    ctx: &Context,
    task: &BlobTask,
    dest: &dyn ImageStore,
    opened: &Opened,
    early: Option<Result<ByteStream>>,
) -> Result<Outcome> {
    let digest = &task.desc.digest;
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
                    Some(crate::progress::counter(ctx)),
                );
                opened.put(dest, &task.dest.repo, &task.desc, stream).await
            })
            .await?;
        return Ok(Outcome::BlobCopied {
            bytes: task.desc.size,
            cached: false,
        });
    }
    if let Some(cache) = ctx
        .cache
        .as_deref()
        .filter(|_| through_the_cache(ctx, task))
    {
        return through_cache(ctx, cache, task, dest, opened).await;
    }
    let source = ctx.stores.resolve(&task.source.store).await?;
    let what = format!("copy blob {digest} {} -> {}", task.source, task.dest);
    let early = std::sync::Mutex::new(early);
    ctx.retry
        .run(&what, || async {
            let first = early.lock().ok().and_then(|mut e| e.take());
            let stream = match first {
                Some(stream) => stream?,
                None => {
                    source
                        .get_blob(
                            &task.source.repo,
                            &task.desc,
                            Some(crate::progress::counter(ctx)),
                        )
                        .await?
                }
            };
            opened.put(dest, &task.dest.repo, &task.desc, stream).await
        })
        .await?;
    Ok(Outcome::BlobCopied {
        bytes: task.desc.size,
        cached: false,
    })
}

/// The upload the destination opened when it was asked for the blob: the first attempt's
/// PUT goes there, a retry opens its own, and one left unused is ended.
struct Opened(std::sync::Mutex<Option<OpenedUpload>>);

impl Opened {
    async fn put(
        &self,
        dest: &dyn ImageStore,
        repo: &str,
        desc: &Descriptor,
        stream: ByteStream,
    ) -> Result<()> {
        let opened = self.0.lock().ok().and_then(|mut o| o.take());
        match opened {
            Some(opened) => dest.put_blob_opened(repo, desc, stream, opened).await,
            None => dest.put_blob(repo, desc, stream).await,
        }
    }

    async fn close(self, dest: &dyn ImageStore, repo: &str) {
        if let Some(opened) = self.0.into_inner().ok().flatten() {
            dest.drop_upload(repo, opened).await;
        }
    }
}

/// Source → cache only (`save`: the assembler writes the archive from the cache).
async fn into_cache(ctx: &Context, task: &BlobTask) -> Result<Outcome> {
    let Some(cache) = &ctx.cache else {
        return Err(hangar_shared::error::Error::invalid(
            "a save task reached a worker without a blob cache (--cache)",
        ));
    };
    let there = ensure_cached(ctx, cache, task, Some(crate::progress::counter(ctx))).await?;
    Ok(if there {
        Outcome::BlobPresent
    } else {
        Outcome::BlobCopied {
            bytes: task.desc.size,
            cached: false,
        }
    })
}

/// Puts the blob in the cache unless it is there, under the fleet-wide lease when there is
/// one. Returns whether it was there already, or was filled meanwhile by someone else.
async fn ensure_cached(
    ctx: &Context,
    cache: &BlobCache,
    task: &BlobTask,
    progress: Option<Arc<AtomicU64>>,
) -> Result<bool> {
    let digest = &task.desc.digest;
    let hit = ctx
        .retry
        .run(&format!("look up blob {digest} in the cache"), || {
            cache.meta(digest)
        })
        .await?
        .is_some_and(|m| m.size == task.desc.size);
    if hit {
        return Ok(true);
    }
    let what = format!("copy blob {digest} {} -> cache", task.source);
    let fill = || fill_cache(ctx, cache, task, progress.clone());
    match &ctx.leases {
        None => ctx.retry.run(&what, fill).await.map(|()| false),
        Some(leases) => fill_once(leases, cache, task, || ctx.retry.run(&what, fill)).await,
    }
}

/// One verified stream into the cache: the task's inline bytes, or the source's.
async fn fill_cache(
    ctx: &Context,
    cache: &BlobCache,
    task: &BlobTask,
    progress: Option<Arc<AtomicU64>>,
) -> Result<()> {
    let stream = match &task.inline {
        Some(bytes) => {
            let once = futures_util::stream::once(std::future::ready(Ok(bytes.clone()))).boxed();
            verified(once, task.desc.digest.clone(), task.desc.size, progress)
        }
        None => {
            let source = ctx.stores.resolve(&task.source.store).await?;
            source
                .get_blob(&task.source.repo, &task.desc, progress)
                .await?
        }
    };
    cache.fill(&task.desc, stream).await.map(drop)
}

/// Source → cache (verified, committed only when whole) unless the cache has it, then
/// cache → destination. A cached copy that fails verification is evicted and refetched.
async fn through_cache(
    ctx: &Context,
    cache: &BlobCache,
    task: &BlobTask,
    dest: &dyn ImageStore,
    opened: &Opened,
) -> Result<Outcome> {
    let digest = &task.desc.digest;
    let hit = ensure_cached(ctx, cache, task, None).await?;
    // Whether the last attempt failed on the cache's side (its entry gone, its bytes not
    // their digest): only that says the entry is damaged. A destination's 404 (a project
    // it does not have) or its own digest complaint says nothing about the cache.
    let cache_failed = Arc::new(AtomicBool::new(false));
    let deliver = || {
        let cache_failed = cache_failed.clone();
        async move {
            cache_failed.store(false, Ordering::Relaxed);
            let failed = |_: &_| cache_failed.store(true, Ordering::Relaxed);
            let stream = cache
                .get(&task.desc, Some(crate::progress::counter(ctx)))
                .await
                .inspect_err(failed)?;
            let watched = {
                let cache_failed = cache_failed.clone();
                stream
                    .inspect(move |chunk| {
                        if chunk.is_err() {
                            cache_failed.store(true, Ordering::Relaxed);
                        }
                    })
                    .boxed()
            };
            opened.put(dest, &task.dest.repo, &task.desc, watched).await
        }
    };
    let what = format!("copy blob {digest} via the cache -> {}", task.dest);
    match ctx.retry.run(&what, deliver).await {
        Err(e)
            if hit
                && cache_failed.load(Ordering::Relaxed)
                && matches!(
                    e.class,
                    FailureClass::DigestMismatch | FailureClass::NotFound
                ) =>
        {
            tracing::warn!("cached blob {digest} is damaged; evicting it and fetching again");
            cache.evict(digest).await;
            ctx.retry
                .run(&what, || fill_cache(ctx, cache, task, None))
                .await?;
            ctx.retry.run(&what, deliver).await?;
            Ok(Outcome::BlobCopied {
                bytes: task.desc.size,
                cached: false,
            })
        }
        other => other.map(|()| Outcome::BlobCopied {
            bytes: task.desc.size,
            cached: hit,
        }),
    }
}

/// Fills the cache under the fleet-wide lease for the digest, or waits for whoever holds
/// it. Returns whether the blob turned up filled by someone else (a cache hit).
async fn fill_once<F, Fut>(
    leases: &Arc<BlobLeases>,
    cache: &BlobCache,
    task: &BlobTask,
    fill: F,
) -> Result<bool>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let digest = &task.desc.digest;
    loop {
        if let Some(lease) = leases.acquire(digest).await? {
            // The last holder may have filled it between our cache miss and this lease.
            if cache
                .meta(digest)
                .await?
                .is_some_and(|m| m.size == task.desc.size)
            {
                lease.release().await;
                return Ok(true);
            }
            let filled = lease.guard(fill()).await;
            lease.release().await;
            return filled.map(|()| false);
        }
        // Someone else is fetching it: wait for the cache entry, or for the lease to go.
        hangar_shared::waiting::on(format!(
            "the lease on {digest}: another worker is fetching it into the cache"
        ));
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            if cache
                .meta(digest)
                .await?
                .is_some_and(|m| m.size == task.desc.size)
            {
                return Ok(true);
            }
            if !leases.held(digest).await? {
                break;
            }
        }
    }
}
