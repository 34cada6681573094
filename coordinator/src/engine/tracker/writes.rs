//! Manifest and index writes, one at a time per key: a platform manifest's digest on a
//! registry (`manifest/<registry>@<digest>`) and a repository's tags (`index/<repo>`).
//! Concurrent identical PUTs race inside distribution's filesystem storage, across
//! repositories too, and index merges into one repository's tags must see each other; so a
//! write whose key is busy queues behind it here and starts when the one before settles.
//! What a platform manifest or an image's top needs before it may be written (its blobs, the
//! other platforms) is decided by the callers; this file decides when and what is written.

use std::collections::VecDeque;

use hangar_shared::error::{Error, Result};
use hangar_shared::task::{IndexTask, ManifestBody, ManifestTask, Outcome, Task};

use super::{ImageResult, Observer, TaskRef, Tracker};
use crate::engine::planner::TopPlan;

impl Tracker {
    /// Pushes platform `platform` of `image` by digest (or at its attachment tag).
    pub(super) async fn publish_manifest(&mut self, image: usize, platform: usize) -> Result<()> {
        let state = &self.images[image];
        let Some(plan) = &state.plan else {
            return Ok(());
        };
        let p = &plan.platforms[platform];
        let dest = self.dest_repo(image);
        let task = Task::Manifest(ManifestTask {
            dest: dest.clone(),
            reference: p
                .push_tag
                .clone()
                .unwrap_or_else(|| p.manifest.digest.to_string()),
            manifest: ManifestBody::from(&p.manifest),
        });
        // A digest is written once per store: concurrent PUTs of one manifest race in
        // distribution's storage, across its repositories too.
        let key = format!("manifest/{}@{}", dest.store, p.manifest.digest);
        self.write(
            task,
            TaskRef::Manifest {
                image,
                platform,
                key,
            },
        )
        .await
    }

    /// Publishes a manifest write, or queues it behind the one in flight for its key.
    async fn write(&mut self, task: Task, r: TaskRef) -> Result<()> {
        let key = match &r {
            TaskRef::Manifest { key, .. } | TaskRef::Top { key, .. } => key.clone(),
            TaskRef::Blob(_) | TaskRef::Sign { .. } | TaskRef::Scan { .. } => {
                return Err(Error::internal("only manifest writes are keyed"));
            }
        };
        match self.writes.get_mut(&key) {
            Some(queue) => queue.push_back((task, r)),
            None => {
                self.writes.insert(key.clone(), VecDeque::new());
                self.publish(key, task, r).await?;
            }
        }
        Ok(())
    }

    /// The write for `key` finished: start the next one queued behind it.
    pub(super) async fn release(&mut self, key: &str) -> Result<()> {
        let next = self.writes.get_mut(key).and_then(VecDeque::pop_front);
        match next {
            Some((task, r)) => self.publish(key.to_owned(), task, r).await,
            None => {
                self.writes.remove(key);
                Ok(())
            }
        }
    }

    /// A platform manifest is in: sign and scan it, and write the top once it was the last.
    pub(super) async fn manifest_written(
        &mut self,
        image: usize,
        platform: usize,
        key: &str,
        obs: &mut dyn Observer,
    ) -> Result<()> {
        self.release(key).await?;
        self.manifest_landed(image, platform).await?;
        let state = &mut self.images[image];
        state.pending_manifests = state.pending_manifests.saturating_sub(1);
        if state.pending_manifests == 0 && state.result.is_none() {
            self.publish_top(image, obs).await?;
        }
        Ok(())
    }

    /// What goes at the tag once every platform is in: the index, the complete source
    /// index by digest, or nothing (the image is then finished).
    async fn publish_top(&mut self, image: usize, obs: &mut dyn Observer) -> Result<()> {
        let state = &self.images[image];
        let Some(plan) = &state.plan else {
            return Ok(());
        };
        if !self.dest_repo(image).store.holds_tags() {
            // Archives keep platform manifests only; the assembler writes the rest.
            self.complete(
                image,
                ImageResult::Copied {
                    digest: None,
                    preserved: true,
                    already_present: false,
                },
                obs,
            );
            return Ok(());
        }
        let dest = self.dest_repo(image);
        let (key, task) = match &plan.top {
            TopPlan::Index {
                tag,
                source_index,
                absent,
            } => (
                format!("index/{dest}"),
                Task::Index(IndexTask {
                    dest: dest.clone(),
                    tag: tag.clone(),
                    added: plan
                        .platforms
                        .iter()
                        .filter(|p| !p.is_attachment())
                        .map(|p| p.entry.clone())
                        .collect(),
                    source_index: source_index.as_ref().map(ManifestBody::from),
                    overwrite: self.overwrite,
                    // Another image of the run writing the tag may have written it since.
                    absent: *absent
                        && !self
                            .tag_peers
                            .contains_key(&super::follow_ups::tag_key(&dest, tag)),
                }),
            ),
            TopPlan::ByDigest(index) => (
                format!("manifest/{}@{}", dest.store, index.digest),
                Task::Manifest(ManifestTask {
                    dest: dest.clone(),
                    reference: index.digest.to_string(),
                    manifest: ManifestBody::from(index),
                }),
            ),
            TopPlan::Nothing => {
                let digest = plan.platforms.first().map(|p| p.manifest.digest.clone());
                self.complete(
                    image,
                    ImageResult::Copied {
                        digest,
                        preserved: true,
                        already_present: false,
                    },
                    obs,
                );
                return Ok(());
            }
        };
        self.write(task, TaskRef::Top { image, key }).await
    }

    /// The image's top is written: it is copied, once its signatures are in.
    pub(super) async fn top_written(
        &mut self,
        image: usize,
        key: &str,
        outcome: Option<Outcome>,
        obs: &mut dyn Observer,
    ) -> Result<()> {
        self.release(key).await?;
        // A digest the worker reported is signed only as an index of what was planned.
        let reported = matches!(
            outcome,
            Some(Outcome::IndexPushed { .. } | Outcome::IndexUnchanged { .. })
        );
        let result = match outcome {
            Some(Outcome::IndexPushed { digest, preserved }) => ImageResult::Copied {
                digest: Some(digest),
                preserved,
                already_present: false,
            },
            Some(Outcome::IndexUnchanged { digest }) => {
                let preserved = matches!(
                    self.images[image].plan.as_ref().map(|p| &p.top),
                    Some(TopPlan::Index { source_index: Some(src), .. }) if src.digest == digest
                );
                ImageResult::Copied {
                    digest: Some(digest),
                    preserved,
                    already_present: true,
                }
            }
            _ => {
                let digest = match &self.images[image].plan.as_ref().map(|p| &p.top) {
                    Some(TopPlan::ByDigest(m)) => Some(m.digest.clone()),
                    _ => None,
                };
                ImageResult::Copied {
                    digest,
                    preserved: true,
                    already_present: false,
                }
            }
        };
        if let ImageResult::Copied {
            digest: Some(d), ..
        } = &result
        {
            let index_of = reported.then(|| self.planned_children(image));
            self.publish_sign(image, d.clone(), index_of).await?;
        }
        self.complete(image, result, obs);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use hangar_shared::digest::Digest;
    use hangar_shared::error::FailureClass;
    use hangar_shared::task::{Outcome, Task};

    use super::super::testkit::{Harness, blob, job, kinds, platform, tagged};
    use super::super::{Extras, ImageResult};
    use crate::engine::planner::{ImagePlan, Planned, TopPlan};

    #[tokio::test]
    async fn a_manifest_is_published_only_after_all_its_blobs() {
        let mut h = Harness::new(
            vec![job("src.io/lib/a:1", "dst.io/proj/a:1")],
            Extras::default(),
        );
        let amd64 = platform("amd64", &[blob("config"), blob("layer")]);
        let digest = amd64.manifest.digest.clone();
        h.add(0, tagged("1", vec![amd64])).await;
        let blobs = h.take();
        assert_eq!(kinds(&blobs), ["blob", "blob"]);
        h.ok(&blobs[0]).await;
        assert!(h.take().is_empty(), "one blob still missing");
        h.ok(&blobs[1]).await;
        let tasks = h.take();
        let Task::Manifest(m) = &tasks[0].task else {
            panic!("a manifest task: {tasks:?}");
        };
        assert_eq!(m.reference, digest.to_string(), "pushed by digest");
        assert_eq!(tasks[0].key, format!("job/manifest/dst.io@{digest}"));
    }

    #[tokio::test]
    async fn the_index_is_published_after_every_platform_and_finishes_the_image() {
        let mut h = Harness::new(
            vec![job("src.io/lib/a:1", "dst.io/proj/a:1")],
            Extras::default(),
        );
        let platforms = vec![
            platform("amd64", &[blob("c-amd64")]),
            platform("arm64", &[blob("c-arm64")]),
        ];
        h.add(0, tagged("1", platforms)).await;
        for t in &h.take() {
            h.ok(t).await;
        }
        let manifests = h.take();
        assert_eq!(kinds(&manifests), ["manifest", "manifest"]);
        h.ok(&manifests[0]).await;
        assert!(h.take().is_empty(), "one platform still missing");
        h.ok(&manifests[1]).await;
        let tops = h.take();
        let Task::Index(index) = &tops[0].task else {
            panic!("an index task: {tops:?}");
        };
        assert_eq!((index.tag.as_str(), index.added.len()), ("1", 2));
        assert!(h.finished.0.is_empty());
        let digest = Digest::of(b"written");
        h.done(
            &tops[0],
            Outcome::IndexPushed {
                digest: digest.clone(),
                preserved: false,
            },
        )
        .await;
        assert!(matches!(
            &h.finished.0[0].1,
            ImageResult::Copied { digest: Some(d), preserved: false, .. } if *d == digest
        ));
        assert_eq!(h.tracker.completed_count(), 1);
    }

    #[tokio::test]
    async fn writes_of_one_manifest_digest_on_a_registry_run_one_at_a_time() {
        let mut h = Harness::new(
            vec![
                job("src.io/lib/a:1", "dst.io/proj/a:1"),
                job("src.io/lib/a:1", "dst.io/proj/b:1"),
            ],
            Extras::default(),
        );
        let amd64 = platform("amd64", &[blob("config")]);
        h.add(0, tagged("1", vec![amd64.clone()])).await;
        h.add(1, tagged("1", vec![amd64])).await;
        let copy = h.take();
        h.ok(&copy[0]).await;
        let step = h.take();
        assert_eq!(
            kinds(&step),
            ["blob", "manifest"],
            "a mount, image 0's push"
        );
        h.ok(&step[0]).await;
        assert!(h.take().is_empty(), "image 1's push waits for image 0's");
        h.ok(&step[1]).await;
        let next = h.take();
        assert_eq!(
            kinds(&next),
            ["manifest", "index"],
            "image 1's push, image 0's index"
        );
        assert_eq!(next[0].key, step[1].key, "one key for both repositories");
    }

    #[tokio::test]
    async fn index_writes_to_one_repository_run_one_at_a_time() {
        let mut h = Harness::new(
            vec![
                job("src.io/lib/a:1", "dst.io/proj/a:1"),
                job("src.io/lib/a:2", "dst.io/proj/a:2"),
            ],
            Extras::default(),
        );
        h.add(0, tagged("1", vec![platform("amd64", &[blob("c1")])]))
            .await;
        h.add(1, tagged("2", vec![platform("amd64", &[blob("c2")])]))
            .await;
        for _ in 0..2 {
            for t in &h.take() {
                h.ok(t).await;
            }
        }
        let first = h.take();
        assert_eq!(kinds(&first), ["index"], "the second tag's index waits");
        assert_eq!(first[0].key, "job/index/dst.io/proj/a");
        h.ok(&first[0]).await;
        let second = h.take();
        assert_eq!(kinds(&second), ["index"]);
        assert_eq!(second[0].key, first[0].key);
    }

    #[tokio::test]
    async fn a_failed_write_fails_its_image_and_starts_the_next_write_of_its_key() {
        let mut h = Harness::new(
            vec![
                job("src.io/lib/a:1", "dst.io/proj/a:1"),
                job("src.io/lib/a:2", "dst.io/proj/a:2"),
            ],
            Extras::default(),
        );
        let amd64 = platform("amd64", &[blob("config")]);
        h.add(0, tagged("1", vec![amd64.clone()])).await;
        h.add(1, tagged("2", vec![amd64])).await;
        let blobs = h.take();
        h.ok(&blobs[0]).await;
        let pushes = h.take();
        assert_eq!(kinds(&pushes), ["manifest"], "one push, the other queued");
        h.fail(&pushes[0], FailureClass::DestinationRejected, true)
            .await;
        assert_eq!(h.finished.class(0), Some(FailureClass::DestinationRejected));
        assert_eq!(kinds(&h.take()), ["manifest"], "the queued push goes out");
    }

    #[tokio::test]
    async fn a_digest_pinned_single_image_is_copied_once_its_manifest_is_in() {
        let mut h = Harness::new(
            vec![job("src.io/lib/a:1", "dst.io/proj/a:1")],
            Extras::default(),
        );
        let amd64 = platform("amd64", &[blob("config")]);
        let digest = amd64.manifest.digest.clone();
        let plan = ImagePlan {
            platforms: vec![amd64],
            top: TopPlan::Nothing,
            source: None,
        };
        h.add(0, Planned::Plan(plan)).await;
        h.settle().await;
        assert!(matches!(
            &h.finished.0[0].1,
            ImageResult::Copied { digest: Some(d), preserved: true, .. } if *d == digest
        ));
    }

    #[tokio::test]
    async fn a_save_finishes_an_image_once_its_platform_manifests_are_in_the_cache() {
        let image = job("src.io/lib/a:1", "dst.io/proj/a:1").into_cache();
        let mut h = Harness::new(vec![image], Extras::default());
        h.add(0, tagged("1", vec![platform("amd64", &[blob("config")])]))
            .await;
        let blobs = h.take();
        let Task::Blob(b) = &blobs[0].task else {
            panic!("a blob task");
        };
        assert_eq!(b.dest.store, hangar_shared::store::StoreRef::Cache);
        h.ok(&blobs[0]).await;
        let pushes = h.take();
        assert!(pushes[0].key.starts_with("job/manifest/cache@"));
        h.ok(&pushes[0]).await;
        assert!(h.take().is_empty(), "no index in an archive");
        assert!(matches!(
            h.finished.0[0].1,
            ImageResult::Copied { digest: None, .. }
        ));
    }
}
