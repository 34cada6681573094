//! Blobs, registered once per (destination repository, digest) however many images and
//! platforms need them; each such key is one task, and its waiters are the
//! (image, platform) pairs whose manifests it holds back.
//!
//! A digest needed in several repositories of one registry is fetched from the source once:
//! the first repository gets a copy task, the rest wait in that registry's group for the
//! digest and are then mounted from it. The group is what this file adds to the per-key
//! state, so both live here with the outcomes that settle them.

use std::collections::VecDeque;

use hangar_shared::digest::Digest;
use hangar_shared::error::{Error, Result};
use hangar_shared::manifest::Descriptor;
use hangar_shared::store::RepoRef;
use hangar_shared::task::{BlobTask, Outcome, Task};

use super::{ImageResult, Observer, TaskRef, Tracker};
use crate::engine::planner::ImagePlan;

pub(super) type BlobKey = (RepoRef, Digest);

#[derive(Debug, PartialEq, Eq)]
enum BlobStatus {
    Waiting,
    Queued,
    Failed,
}

/// A blob on its way to one destination repository (or failed there, to be tried again from
/// another image's source). Once it lands, only how it got there is kept (`Tracker::landed`):
/// a long list's landed blobs cost their keys, not their descriptors and sources.
pub(super) struct BlobState {
    desc: Descriptor,
    inline: Option<bytes::Bytes>,
    source: RepoRef,
    status: BlobStatus,
    error: Option<Error>,
    /// (image, platform) pairs waiting for this blob.
    waiters: Vec<(usize, usize)>,
}

impl BlobState {
    #[cfg(test)]
    pub(super) fn holds_inline(&self) -> bool {
        self.inline.is_some()
    }
}

/// How a blob reached its destination repository, least work first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Handling {
    Present,
    Mounted,
    FromCache,
    Copied,
}

/// The run's blobs as the summary counts them: each unique digest once, by the most work
/// any destination needed for it, so the parts add up to the whole.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlobSummary {
    pub unique: u64,
    /// Fetched from their source.
    pub copied: u64,
    /// Served from the blob cache instead of the source.
    pub from_cache: u64,
    /// Mounted from a repository of the destination registry, nothing transferred.
    pub mounted: u64,
    /// Already in every destination repository that needed them.
    pub present: u64,
    /// Mounts into further repositories of a digest counted above.
    pub extra_mounts: u64,
    /// Bytes an image-by-image copier would have moved (each image's blobs once, those
    /// already at the destination left out) and were not, thanks to dedup and mounts.
    pub saved_bytes: u64,
}

impl Tracker {
    pub fn blob_summary(&self) -> BlobSummary {
        let mut best: std::collections::HashMap<&Digest, Handling> = Default::default();
        let mut mount_keys = 0u64;
        for ((_, digest), &h) in &self.landed {
            if h == Handling::Mounted {
                mount_keys += 1;
            }
            let e = best.entry(digest).or_insert(h);
            *e = (*e).max(h);
        }
        let mut s = BlobSummary {
            unique: best.len() as u64,
            ..Default::default()
        };
        for h in best.values() {
            match h {
                Handling::Present => s.present += 1,
                Handling::Mounted => s.mounted += 1,
                Handling::FromCache => s.from_cache += 1,
                Handling::Copied => s.copied += 1,
            }
        }
        s.extra_mounts = mount_keys.saturating_sub(s.mounted);
        let mut needed = self.needed_of_dropped;
        for (i, image) in self.images.iter().enumerate() {
            if let Some(plan) = &image.plan {
                needed += self.needed_bytes(i, plan);
            }
        }
        s.saved_bytes = needed.saturating_sub(self.stats.bytes_copied);
        s
    }

    /// What an image-by-image copier would have moved for `image`: each of its blobs once,
    /// those already at the destination left out.
    pub(super) fn needed_bytes(&self, image: usize, plan: &ImagePlan) -> u64 {
        let repo = self.dest_repo(image);
        let mut seen = std::collections::HashSet::new();
        let mut needed = 0;
        for desc in plan.platforms.iter().flat_map(|p| p.blobs.iter()) {
            let key = (repo.clone(), desc.digest.clone());
            let handled = self.landed.get(&key);
            if seen.insert(&desc.digest) && handled.is_some_and(|h| *h != Handling::Present) {
                needed += desc.size;
            }
        }
        needed
    }
}

/// One digest on one destination registry: where it is already, whether a copy of it is
/// running, and the repositories waiting to mount it from there.
#[derive(Default)]
pub(super) struct Group {
    done_in: Vec<RepoRef>,
    in_flight: bool,
    waiting: VecDeque<BlobKey>,
}

impl Tracker {
    /// Registers the blobs of `image`'s plan, counting per platform those still to come;
    /// returns the keys to schedule (new ones, and failed ones tried again from this
    /// image's source).
    pub(super) fn register_blobs(&mut self, image: usize, plan: &ImagePlan) -> Vec<BlobKey> {
        let dest_repo = self.dest_repo(image);
        // A registries.conf mirror that planned the image serves its blobs too.
        let source_repo = plan
            .source
            .clone()
            .unwrap_or_else(|| self.source_repo(image));
        self.images[image].pending_blobs = vec![0; plan.platforms.len()];
        let mut to_start = Vec::new();
        for (p, platform) in plan.platforms.iter().enumerate() {
            for desc in &platform.blobs {
                self.stats.bytes_naive += desc.size;
                let key = (dest_repo.clone(), desc.digest.clone());
                if self.landed.contains_key(&key) {
                    continue;
                }
                match self.blobs.get_mut(&key) {
                    Some(b) if b.status == BlobStatus::Failed => {
                        // Another image may reach it from another source: try again from
                        // this one's.
                        b.status = BlobStatus::Waiting;
                        b.error = None;
                        b.source = source_repo.clone();
                        b.waiters.push((image, p));
                        self.images[image].pending_blobs[p] += 1;
                        to_start.push(key);
                    }
                    Some(b) => {
                        b.waiters.push((image, p));
                        self.images[image].pending_blobs[p] += 1;
                    }
                    None => {
                        let inline = platform
                            .inline
                            .as_ref()
                            .filter(|(d, _)| *d == desc.digest)
                            .map(|(_, b)| b.clone());
                        // Left to the archive writer, which fetches it when it writes it.
                        if self.extras.streamed && inline.is_none() {
                            self.landed.insert(key, Handling::Copied);
                            self.stats.blobs_copied += 1;
                            self.stats.bytes_copied += desc.size;
                            continue;
                        }
                        self.blobs.insert(
                            key.clone(),
                            BlobState {
                                desc: desc.clone(),
                                inline,
                                source: source_repo.clone(),
                                status: BlobStatus::Waiting,
                                error: None,
                                waiters: vec![(image, p)],
                            },
                        );
                        self.images[image].pending_blobs[p] += 1;
                        to_start.push(key);
                    }
                }
            }
        }
        to_start
    }

    /// Starts a blob now, or parks it behind the copy of the same digest to the same registry.
    pub(super) async fn schedule_blob(&mut self, key: BlobKey) -> Result<()> {
        let group_key = (key.0.store.clone(), key.1.clone());
        let group = self.groups.entry(group_key).or_default();
        let mount_from = if let Some(done) = group.done_in.first() {
            vec![done.clone()]
        } else if group.in_flight {
            group.waiting.push_back(key);
            return Ok(());
        } else {
            group.in_flight = true;
            Vec::new()
        };
        self.start_blob(key, mount_from).await
    }

    async fn start_blob(&mut self, key: BlobKey, mut mount_from: Vec<RepoRef>) -> Result<()> {
        let Some(state) = self.blobs.get_mut(&key) else {
            return Ok(());
        };
        state.status = BlobStatus::Queued;
        if state.source.store == key.0.store {
            // Same registry: mount from the source repository, no bytes at all.
            mount_from.insert(0, state.source.clone());
        }
        let task = Task::Blob(Box::new(BlobTask {
            desc: state.desc.clone(),
            source: state.source.clone(),
            dest: key.0.clone(),
            mount_from,
            inline: state.inline.clone(),
        }));
        let name = format!("blob/{}/{}", key.0, key.1);
        self.publish(name, task, TaskRef::Blob(key)).await
    }

    pub(super) async fn blob_done(&mut self, key: BlobKey, outcome: Option<Outcome>) -> Result<()> {
        let handled = match &outcome {
            Some(Outcome::BlobCopied { bytes, cached }) => {
                self.stats.blobs_copied += 1;
                if *cached {
                    self.stats.blobs_from_cache += 1;
                }
                // A worker's count: summed without overflow.
                self.stats.bytes_copied = self.stats.bytes_copied.saturating_add(*bytes);
                if *cached {
                    Handling::FromCache
                } else {
                    Handling::Copied
                }
            }
            Some(Outcome::BlobMounted { .. }) => {
                self.stats.blobs_mounted += 1;
                Handling::Mounted
            }
            _ => {
                self.stats.blobs_present += 1;
                Handling::Present
            }
        };
        // Landed: only how is kept; its descriptor, source and bytes (a config up to
        // 256 KiB per image) are not needed again.
        let waiters = match self.blobs.remove(&key) {
            Some(b) => b.waiters,
            None => Vec::new(),
        };
        let was = self.landed.entry(key.clone()).or_insert(handled);
        *was = (*was).max(handled);
        let released = {
            let group = self
                .groups
                .entry((key.0.store.clone(), key.1.clone()))
                .or_default();
            group.in_flight = false;
            group.done_in.push(key.0.clone());
            std::mem::take(&mut group.waiting)
        };
        for other in released {
            self.start_blob(other, vec![key.0.clone()]).await?;
        }
        for (image, p) in waiters {
            let state = &mut self.images[image];
            if state.result.is_some() {
                continue;
            }
            state.pending_blobs[p] -= 1;
            if state.pending_blobs[p] == 0 {
                self.publish_manifest(image, p).await?;
            }
        }
        Ok(())
    }

    pub(super) async fn blob_failed(
        &mut self,
        key: BlobKey,
        error: Error,
        obs: &mut dyn Observer,
    ) -> Result<()> {
        let waiters = match self.blobs.get_mut(&key) {
            Some(b) => {
                b.status = BlobStatus::Failed;
                b.error = Some(error.clone());
                std::mem::take(&mut b.waiters)
            }
            None => Vec::new(),
        };
        let next = {
            let group = self
                .groups
                .entry((key.0.store.clone(), key.1.clone()))
                .or_default();
            group.in_flight = false;
            let next = group.waiting.pop_front();
            if next.is_some() {
                group.in_flight = true;
            }
            next
        };
        if let Some(next) = next {
            self.start_blob(next, Vec::new()).await?;
        }
        for (image, _) in waiters {
            self.finish(image, ImageResult::Failed(error.clone()), obs);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::slice::from_ref;

    use hangar_shared::error::FailureClass;
    use hangar_shared::store::RepoRef;
    use hangar_shared::task::Outcome;

    use super::super::testkit::{Harness, blob, blob_tasks, job, kinds, platform, tagged};
    use super::super::{Extras, ImageResult};

    #[tokio::test]
    async fn blobs_are_read_from_the_mirror_that_planned_the_image() {
        let mut h = Harness::new(
            vec![job("docker.io/library/app:1", "dst.io/proj/app:1")],
            Extras::default(),
        );
        let mirror = RepoRef::registry("mirror.local:5000", "hub/library/app");
        let mut planned = tagged("1", vec![platform("amd64", &[blob("config")])]);
        if let crate::engine::planner::Planned::Plan(p) = &mut planned {
            p.source = Some(mirror.clone());
        }
        h.add(0, planned).await;
        let tasks = h.take();
        let blobs = blob_tasks(&tasks);
        assert_eq!(blobs.len(), 1);
        assert_eq!(blobs[0].source, mirror);
    }

    #[tokio::test]
    async fn an_image_read_from_an_archive_copies_its_blobs_from_the_archive_to_its_registry() {
        let image = job("src.io/lib/app:1", "dst.io/proj/app:1");
        let entry =
            hangar_shared::archive::ArchiveImage::new("src.io/lib/app".into(), "1".into(), vec![]);
        let archived = crate::engine::planner::ImageJob::from_archive(
            image.entry,
            "/srv/saved.zip",
            std::sync::Arc::new(entry),
            image.name.source,
            image.name.dest,
        );
        let mut h = Harness::new(vec![archived], Extras::default());
        h.add(0, tagged("1", vec![platform("amd64", &[blob("config")])]))
            .await;
        let tasks = h.take();
        let blobs = blob_tasks(&tasks);
        assert_eq!(blobs.len(), 1);
        assert_eq!(
            blobs[0].source.store,
            hangar_shared::store::StoreRef::Archive {
                location: "/srv/saved.zip".into()
            }
        );
        assert_eq!(blobs[0].dest, RepoRef::registry("dst.io", "proj/app"));
    }

    #[tokio::test]
    async fn a_blob_shared_by_two_images_of_one_repository_is_published_once() {
        let mut h = Harness::new(
            vec![
                job("src.io/lib/app:1", "dst.io/proj/app:1"),
                job("src.io/lib/app:2", "dst.io/proj/app:2"),
            ],
            Extras::default(),
        );
        let (shared, own) = (blob("shared"), blob("own"));
        h.add(0, tagged("1", vec![platform("amd64", from_ref(&shared))]))
            .await;
        h.add(
            1,
            tagged("2", vec![platform("amd64", &[own, shared.clone()])]),
        )
        .await;
        let tasks = h.take();
        let digests: Vec<_> = blob_tasks(&tasks).iter().map(|b| &b.desc.digest).collect();
        assert_eq!(digests.len(), 2, "one task per digest: {digests:?}");
        assert_eq!(digests.iter().filter(|d| ***d == shared.digest).count(), 1);
        for t in &tasks {
            h.ok(t).await;
        }
        // Both images' manifests follow the one copy.
        assert_eq!(kinds(&h.take()), ["manifest", "manifest"]);
        assert_eq!(h.tracker.stats.blobs_copied, 2);
        assert_eq!(h.tracker.unique_blobs(), 2);
        assert_eq!(h.tracker.stats.bytes_naive, 2 * shared.size + 3);
    }

    #[tokio::test]
    async fn a_blob_needed_in_two_repositories_of_one_registry_is_copied_once_then_mounted() {
        let mut h = Harness::new(
            vec![
                job("src.io/lib/a:1", "dst.io/proj/a:1"),
                job("src.io/lib/b:1", "dst.io/proj/b:1"),
            ],
            Extras::default(),
        );
        let layer = blob("layer");
        h.add(0, tagged("1", vec![platform("amd64", from_ref(&layer))]))
            .await;
        h.add(1, tagged("1", vec![platform("amd64", from_ref(&layer))]))
            .await;
        let first = h.take();
        let copies = blob_tasks(&first);
        assert_eq!(copies.len(), 1, "the second repository waits for the copy");
        assert_eq!(copies[0].dest, RepoRef::registry("dst.io", "proj/a"));
        assert!(copies[0].mount_from.is_empty(), "a copy from the source");
        h.ok(&first[0]).await;
        let next = h.take();
        let mounts = blob_tasks(&next);
        assert_eq!(mounts.len(), 1);
        assert_eq!(mounts[0].dest, RepoRef::registry("dst.io", "proj/b"));
        assert_eq!(
            mounts[0].mount_from,
            [RepoRef::registry("dst.io", "proj/a")]
        );
        // Image 0's manifest goes out with the mount: it waits on nothing else.
        assert_eq!(kinds(&next), ["blob", "manifest"]);
    }

    #[tokio::test]
    async fn a_source_on_the_destination_registry_is_a_mount_candidate_from_the_start() {
        let mut h = Harness::new(
            vec![job("dst.io/lib/a:1", "dst.io/proj/a:1")],
            Extras::default(),
        );
        h.add(0, tagged("1", vec![platform("amd64", &[blob("layer")])]))
            .await;
        let tasks = h.take();
        assert_eq!(
            blob_tasks(&tasks)[0].mount_from,
            [RepoRef::registry("dst.io", "lib/a")]
        );
    }

    #[tokio::test]
    async fn a_blob_already_present_counts_as_present_and_unblocks_its_manifest() {
        let mut h = Harness::new(
            vec![job("src.io/lib/a:1", "dst.io/proj/a:1")],
            Extras::default(),
        );
        h.add(0, tagged("1", vec![platform("amd64", &[blob("layer")])]))
            .await;
        let tasks = h.take();
        h.done(&tasks[0], Outcome::BlobPresent).await;
        let stats = &h.tracker.stats;
        assert_eq!(
            (stats.blobs_present, stats.blobs_copied, stats.bytes_copied),
            (1, 0, 0)
        );
        assert_eq!(kinds(&h.take()), ["manifest"]);
    }

    #[tokio::test]
    async fn a_blob_already_in_from_an_earlier_image_is_not_published_again() {
        let mut h = Harness::new(
            vec![
                job("src.io/lib/a:1", "dst.io/proj/a:1"),
                job("src.io/lib/a:2", "dst.io/proj/a:2"),
            ],
            Extras::default(),
        );
        let layer = blob("layer");
        h.add(0, tagged("1", vec![platform("amd64", from_ref(&layer))]))
            .await;
        let tasks = h.take();
        h.done(&tasks[0], Outcome::BlobMounted { from: "x".into() })
            .await;
        h.settle().await;
        h.add(1, tagged("2", vec![platform("arm64", &[layer])]))
            .await;
        assert_eq!(kinds(&h.take()), ["manifest"]);
        assert_eq!(h.tracker.stats.blobs_mounted, 1);
    }

    #[tokio::test]
    async fn a_transient_failure_is_not_final_and_a_last_one_fails_the_image_with_its_class() {
        let mut h = Harness::new(
            vec![job("src.io/lib/a:1", "dst.io/proj/a:1")],
            Extras::default(),
        );
        h.add(0, tagged("1", vec![platform("amd64", &[blob("layer")])]))
            .await;
        let tasks = h.take();
        h.fail(&tasks[0], FailureClass::Network, false).await;
        assert!(h.finished.0.is_empty(), "a retried task settles nothing");
        assert!(h.take().is_empty());
        assert_eq!(h.tracker.stats.retries, 1);
        assert!(h.tracker.describe(tasks[0].id).is_some(), "still in flight");
        h.fail(&tasks[0], FailureClass::Server, true).await;
        assert_eq!(h.finished.class(0), Some(FailureClass::Server));
        assert!(h.tracker.is_finished());
        assert!(h.take().is_empty(), "no manifest for a failed image");
    }

    #[tokio::test]
    async fn a_failed_copy_hands_the_digest_to_the_next_repository_waiting_for_it() {
        let mut h = Harness::new(
            vec![
                job("src.io/lib/a:1", "dst.io/proj/a:1"),
                job("src.io/lib/b:1", "dst.io/proj/b:1"),
            ],
            Extras::default(),
        );
        let layer = blob("layer");
        h.add(0, tagged("1", vec![platform("amd64", from_ref(&layer))]))
            .await;
        h.add(1, tagged("1", vec![platform("amd64", &[layer])]))
            .await;
        let first = h.take();
        h.fail(&first[0], FailureClass::NotFound, true).await;
        assert_eq!(h.finished.class(0), Some(FailureClass::NotFound));
        let next = h.take();
        let copies = blob_tasks(&next);
        assert_eq!(copies.len(), 1);
        assert_eq!(copies[0].dest, RepoRef::registry("dst.io", "proj/b"));
        assert_eq!(copies[0].source, RepoRef::registry("src.io", "lib/b"));
        assert!(copies[0].mount_from.is_empty(), "nothing to mount from");
    }

    #[tokio::test]
    async fn a_failed_blob_is_tried_again_from_a_later_images_source() {
        let mut h = Harness::new(
            vec![
                job("src.io/lib/a:1", "dst.io/proj/a:1"),
                job("mirror.io/lib/a:1", "dst.io/proj/a:2"),
            ],
            Extras::default(),
        );
        let layer = blob("layer");
        h.add(0, tagged("1", vec![platform("amd64", from_ref(&layer))]))
            .await;
        let first = h.take();
        h.fail(&first[0], FailureClass::NotFound, true).await;
        h.add(1, tagged("2", vec![platform("amd64", &[layer])]))
            .await;
        let again = h.take();
        let copies = blob_tasks(&again);
        assert_eq!(copies.len(), 1);
        assert_eq!(copies[0].source, RepoRef::registry("mirror.io", "lib/a"));
        h.ok(&again[0]).await;
        h.settle().await;
        assert!(matches!(h.finished.0[1].1, ImageResult::Copied { .. }));
    }
}
