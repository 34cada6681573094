//! What a job's tracker hands its report once the job is over, moved out rather than
//! copied (a list's results and plans would otherwise be held twice at the job's end), and
//! the same seen in place by the tracker's tests.

use std::time::Duration;

#[cfg(test)]
use hangar_shared::error::Error;

use super::{ImageResult, Tracker};
use crate::engine::job::JobReport;
use crate::engine::planner::{ImageJob, ImagePlan};

impl Tracker {
    /// The job's report once it is over, `elapsed` after it started: the summary's counts,
    /// and the results, the copied images with their kept plans in the order they
    /// finished, the inventories and the scans that failed, moved out rather than copied.
    pub fn into_report(self, elapsed: Duration) -> JobReport {
        let blobs = self.blob_summary();
        let mut images: Vec<(ImageJob, Option<ImageResult>, Option<ImagePlan>)> = self
            .images
            .into_iter()
            .map(|s| (s.job, s.result, s.plan))
            .collect();
        let scans = self
            .inventories
            .into_iter()
            .filter_map(|(i, p, inv)| {
                let (job, _, plan) = &images[i];
                let entry = plan.as_ref()?.platforms.get(p)?.entry.clone();
                Some((job.clone(), entry, inv))
            })
            .collect();
        let scan_failures = self
            .scan_failures
            .into_iter()
            .map(|(i, e)| (images[i].0.clone(), e))
            .collect();
        let completed = self
            .completed
            .iter()
            .filter_map(|i| {
                let (job, _, plan) = &mut images[*i];
                Some((job.clone(), plan.take()?))
            })
            .collect();
        let results = images
            .into_iter()
            .filter_map(|(job, result, _)| Some((job, result?)))
            .collect();
        JobReport {
            results,
            stats: self.stats,
            blobs,
            elapsed,
            completed,
            scans,
            scan_failures,
            interrupted: false,
        }
    }

    /// Blob bytes the planner held that the tracker still holds (in plans or blob records).
    #[cfg(test)]
    pub fn inline_held(&self) -> usize {
        let in_plans = self
            .images
            .iter()
            .filter_map(|i| i.plan.as_ref())
            .flat_map(|p| p.platforms.iter())
            .filter(|p| p.inline.is_some())
            .count();
        in_plans + self.blobs.values().filter(|b| b.holds_inline()).count()
    }

    #[cfg(test)]
    pub fn results(&self) -> impl Iterator<Item = (&ImageJob, Option<&ImageResult>)> {
        self.images.iter().map(|i| (&i.job, i.result.as_ref()))
    }

    /// Inventories read by scan tasks: (image, platform index, inventory).
    #[cfg(test)]
    pub fn inventories(
        &self,
    ) -> impl Iterator<
        Item = (
            &ImageJob,
            &crate::engine::planner::PlatformPlan,
            &hangar_shared::scan::Inventory,
        ),
    > {
        self.inventories.iter().filter_map(|(i, p, inv)| {
            let s = &self.images[*i];
            s.plan
                .as_ref()
                .map(|plan| (&s.job, &plan.platforms[*p], inv))
        })
    }

    #[cfg(test)]
    pub fn scan_failures(&self) -> impl Iterator<Item = (&ImageJob, &Error)> {
        self.scan_failures
            .iter()
            .map(|(i, e)| (&self.images[*i].job, e))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use hangar_shared::digest::Digest;
    use hangar_shared::task::{Outcome, Task};

    use super::super::Extras;
    use super::super::testkit::{Harness, blob, blob_tasks, job, platform, tagged};

    /// Two images sharing a base layer, in two repositories of one registry, copied to the
    /// end: the base is copied into one and mounted into the other.
    async fn copied(extras: Extras) -> Harness {
        let mut h = Harness::new(
            vec![
                job("src.io/lib/a:1", "dst.io/proj/a:1"),
                job("src.io/lib/b:1", "dst.io/proj/b:1"),
            ],
            extras,
        );
        for (image, config) in [(0, "config-a"), (1, "config-b")] {
            let amd64 = platform("amd64", &[blob(config), blob("a shared base layer")]);
            h.add(image, tagged("1", vec![amd64])).await;
        }
        loop {
            let tasks = h.take();
            if tasks.is_empty() {
                break;
            }
            for t in &tasks {
                match &t.task {
                    Task::Blob(b) if !b.mount_from.is_empty() => {
                        let from = b.mount_from[0].to_string();
                        h.done(t, Outcome::BlobMounted { from }).await;
                    }
                    _ => h.ok(t).await,
                }
            }
        }
        assert!(h.tracker.is_finished());
        h
    }

    #[tokio::test]
    async fn a_config_the_planner_held_is_let_go_once_it_landed() {
        let mut h = Harness::new(vec![job("src.io/lib/a:1", "dst.io/proj/a:1")], {
            Extras {
                keep_plans: true,
                ..Extras::default()
            }
        });
        let config = Bytes::from_static(b"{\"architecture\":\"amd64\"}");
        let mut amd64 = platform("amd64", &[blob("config"), blob("layer")]);
        amd64.blobs[0].digest = Digest::of(&config);
        amd64.blobs[0].size = config.len() as u64;
        amd64.inline = Some((amd64.blobs[0].digest.clone(), config));
        h.add(0, tagged("1", vec![amd64])).await;
        assert_eq!(h.tracker.inline_held(), 1, "the config's record carries it");
        let blobs = h.take();
        let carried = blob_tasks(&blobs);
        assert!(carried.iter().any(|b| b.inline.is_some()), "its task too");
        h.ok(&blobs[0]).await;
        h.ok(&blobs[1]).await;
        assert_eq!(h.tracker.inline_held(), 0);
        h.settle().await;
        assert!(h.tracker.is_finished());
        assert_eq!(h.tracker.completed_since(0).count(), 1, "the plan is kept");
    }

    #[tokio::test]
    async fn a_copied_image_drops_its_plan_unless_the_caller_keeps_plans() {
        let dropped = copied(Extras::default()).await;
        let keeping = Extras {
            keep_plans: true,
            ..Extras::default()
        };
        let kept = copied(keeping).await;
        assert_eq!(dropped.tracker.completed_since(0).count(), 0);
        assert_eq!(kept.tracker.completed_since(0).count(), 2);
        // The summary counts a dropped plan's bytes as it counts a kept one's: the mount
        // saved one copy of the base layer either way.
        let summary = dropped.tracker.blob_summary();
        assert_eq!(summary, kept.tracker.blob_summary());
        assert_eq!(summary.saved_bytes, "a shared base layer".len() as u64);
        assert_eq!(kept.tracker.into_report(Duration::ZERO).completed.len(), 2);
        assert!(
            dropped
                .tracker
                .into_report(Duration::ZERO)
                .completed
                .is_empty()
        );
    }
}
