//! Small blobs of a run's own cache, held in memory instead of written to files. A save
//! puts every manifest and config of its list through the cache (a few KiB each); as files,
//! each with its sidecar and each written by rename, they cost the save a seventh of its
//! CPU in the filesystem's inode allocation alone (`perf`: `ext4_create` 14.6 % of a
//! 100-image save) and a blocking-thread handoff for every look. What a run holds is
//! bounded by a budget; a blob past it, or larger than [`HELD_MAX`], goes to disk as before.
//! The run's directory is its own, so the records of what it wrote there are kept here too,
//! and a look for a blob (a save looks for every layer it streams) never touches the disk.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;

use super::BlobMeta;
use crate::digest::Digest;

/// The largest blob held in memory: manifests and configs, not layers.
pub const HELD_MAX: u64 = 64 << 10;

#[derive(Debug)]
pub struct Held {
    budget: u64,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Bytes held or reserved by fills under way.
    used: u64,
    blobs: HashMap<Digest, (Bytes, BlobMeta)>,
    /// Blobs written to the run's directory, with their records.
    written: HashMap<Digest, BlobMeta>,
}

/// Room taken for one blob while it is read; given back unless the blob is kept.
pub struct Room<'a> {
    held: &'a Held,
    size: u64,
}

impl Held {
    pub fn new(budget: u64) -> Self {
        Self {
            budget,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Room for a blob of `size` bytes, if it is small and the budget has it.
    pub fn reserve(&self, size: u64) -> Option<Room<'_>> {
        if size > HELD_MAX {
            return None;
        }
        let mut inner = self.inner.lock().ok()?;
        if inner.used + size > self.budget {
            return None;
        }
        inner.used += size;
        Some(Room { held: self, size })
    }

    pub fn get(&self, digest: &Digest) -> Option<Bytes> {
        let inner = self.inner.lock().ok()?;
        inner.blobs.get(digest).map(|(bytes, _)| bytes.clone())
    }

    /// The record of a blob held in memory or written to the run's directory: a run's
    /// cache has nothing else.
    pub fn meta(&self, digest: &Digest) -> Option<BlobMeta> {
        let inner = self.inner.lock().ok()?;
        match inner.blobs.get(digest) {
            Some((_, meta)) => Some(*meta),
            None => inner.written.get(digest).copied(),
        }
    }

    pub fn written(&self, digest: &Digest, meta: BlobMeta) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.written.insert(digest.clone(), meta);
        }
    }

    pub fn remove(&self, digest: &Digest) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.written.remove(digest);
            if let Some((bytes, _)) = inner.blobs.remove(digest) {
                inner.used -= bytes.len() as u64;
            }
        }
    }

    #[cfg(test)]
    pub fn used(&self) -> u64 {
        self.inner.lock().map(|i| i.used).unwrap_or(0)
    }
}

impl Room<'_> {
    /// Keeps `bytes` (at most the room's size) under `digest`; a second fill of the same
    /// digest keeps the first.
    pub fn keep(mut self, digest: Digest, bytes: Bytes) -> BlobMeta {
        let meta = BlobMeta {
            size: bytes.len() as u64,
            crc32: crc32fast::hash(&bytes),
        };
        if let Ok(mut inner) = self.held.inner.lock()
            && !inner.blobs.contains_key(&digest)
        {
            // The room becomes the blob's: what it did not use is given back (the count
            // stays exact even if the blob outgrew its room, which `fill` refuses).
            inner.used = inner.used - self.size + meta.size;
            inner.blobs.insert(digest, (bytes, meta));
            self.size = 0;
        }
        meta
    }
}

impl Drop for Room<'_> {
    fn drop(&mut self) {
        if let Ok(mut inner) = self.held.inner.lock() {
            inner.used -= self.size;
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_util::{StreamExt, TryStreamExt};

    use super::super::BlobCache;
    use super::super::tests::{desc, stream_of, tempfile_dir};
    use super::*;
    use crate::error::FailureClass;
    use crate::verify::verified;

    async fn fill(cache: &BlobCache, bytes: &[u8]) -> crate::error::Result<BlobMeta> {
        let d = desc(bytes);
        let once =
            futures_util::stream::once(std::future::ready(Ok(Bytes::copy_from_slice(bytes))))
                .boxed();
        cache
            .fill(&d, verified(once, d.digest.clone(), d.size, None))
            .await
    }

    fn files_in(dir: &std::path::Path) -> usize {
        std::fs::read_dir(dir).map_or(0, |entries| {
            entries
                .flatten()
                .map(|e| match e.path().is_dir() {
                    true => files_in(&e.path()),
                    false => 1,
                })
                .sum()
        })
    }

    #[tokio::test]
    async fn a_runs_small_blobs_stay_in_memory_and_its_layers_go_to_disk() {
        let dir = tempfile_dir();
        let cache = BlobCache::for_run(dir.to_str().unwrap()).unwrap();
        let config = b"{\"architecture\":\"amd64\"}".to_vec();
        let layer = vec![7u8; HELD_MAX as usize + 1];
        let meta = fill(&cache, &config).await.unwrap();
        assert_eq!(meta.crc32, crc32fast::hash(&config));
        assert_eq!(files_in(&dir), 0, "a config is not written to a file");
        fill(&cache, &layer).await.unwrap();
        assert_eq!(files_in(&dir), 2, "a layer and its sidecar are");
        for bytes in [&config, &layer] {
            let d = desc(bytes);
            assert_eq!(
                cache.meta(&d.digest).await.unwrap().map(|m| m.size),
                Some(d.size)
            );
            let back: Vec<Bytes> = cache
                .get(&d, None)
                .await
                .unwrap()
                .try_collect()
                .await
                .unwrap();
            assert_eq!(back.concat(), *bytes);
            let streamed: Vec<Bytes> =
                crate::archive::BlobSource::blob_stream(&cache, &d.digest, d.size)
                    .await
                    .unwrap()
                    .try_collect()
                    .await
                    .unwrap();
            assert_eq!(streamed.concat(), *bytes);
        }
        cache.evict(&desc(&config).digest).await;
        assert!(cache.meta(&desc(&config).digest).await.unwrap().is_none());
        assert_eq!(cache.held.as_ref().map(|h| h.used()), Some(0));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn past_its_budget_a_run_writes_small_blobs_to_disk() {
        let dir = tempfile_dir();
        let held = Held::new(100);
        let first = held.reserve(60).unwrap();
        assert!(held.reserve(41).is_none(), "100 bytes in all");
        let kept = first.keep(Digest::of(b"x"), Bytes::from_static(b"x"));
        assert_eq!(kept.size, 1);
        assert_eq!(held.used(), 1, "the room a blob did not use is given back");
        drop(held.reserve(99).unwrap());
        assert_eq!(held.used(), 1, "room not kept is given back");

        let cache = BlobCache::for_run(dir.to_str().unwrap()).unwrap();
        let blobs: Vec<Vec<u8>> = (0u8..=(super::super::RUN_HELD / HELD_MAX) as u8)
            .map(|i| vec![i; HELD_MAX as usize])
            .collect();
        for b in &blobs {
            fill(&cache, b).await.unwrap();
        }
        assert_eq!(
            files_in(&dir),
            2,
            "the one past the budget, with its sidecar"
        );
        for b in &blobs {
            assert!(cache.meta(&desc(b).digest).await.unwrap().is_some());
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn wrong_or_overlong_bytes_are_not_held() {
        let dir = tempfile_dir();
        let cache = BlobCache::for_run(dir.to_str().unwrap()).unwrap();
        let d = desc(b"hello cache");
        let wrong = stream_of(b"hellO cache");
        let err = cache
            .fill(&d, verified(wrong, d.digest.clone(), d.size, None))
            .await
            .unwrap_err();
        assert_eq!(err.class, FailureClass::DigestMismatch);
        // An unverified stream that goes on past the size it was announced with.
        let endless =
            futures_util::stream::repeat_with(|| Ok(Bytes::from_static(&[0u8; 4096]))).boxed();
        let err = cache.fill(&d, endless).await.unwrap_err();
        assert_eq!(err.class, FailureClass::DigestMismatch);
        assert!(cache.meta(&d.digest).await.unwrap().is_none());
        assert_eq!(cache.held.as_ref().map(|h| h.used()), Some(0));
        assert_eq!(files_in(&dir), 0);
        let _ = std::fs::remove_dir_all(dir);
    }
}
