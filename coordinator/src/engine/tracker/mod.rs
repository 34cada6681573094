//! The tracker folds plans and events into job state and publishes follow-up tasks:
//! blobs first (one task per unique digest and destination repository), a platform
//! manifest once all its blobs are in, the tag's index once all platforms are in.
//!
//! It is one state machine split by concept, each part an `impl Tracker` over the fields
//! declared here: [`blobs`] registers and schedules blobs per destination and digest,
//! [`writes`] runs manifest and index writes one at a time per key, [`follow_ups`] signs and
//! scans what landed and holds an image's result until they are done, [`finished`] hands
//! the report what a job's end keeps. This file keeps the public API, the per-image state
//! and the event dispatch, so one event's path reads top down from [`Tracker::on_event`].
//! A copied image's plan is dropped as it finishes unless the caller keeps plans
//! ([`Extras::keep_plans`]), so a long list costs its results and blobs, not its manifests.

mod blobs;
mod finished;
mod follow_ups;
#[cfg(test)]
pub(crate) mod testkit;
mod writes;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use hangar_shared::digest::Digest;
use hangar_shared::error::{Error, FailureClass, Result};
use hangar_shared::queue::TaskQueue;
use hangar_shared::store::{RepoRef, StoreRef};
use hangar_shared::task::{Event, EventKind, JobId, Task, TaskEnvelope, TaskId, TaskKind};

use crate::engine::planner::{ImageJob, ImagePlan, Planned};
pub use blobs::BlobSummary;
use blobs::{BlobKey, BlobState, Group, Handling};

#[derive(Debug, Clone)]
pub enum ImageResult {
    Copied {
        digest: Option<Digest>,
        preserved: bool,
        /// The destination tag already held exactly this: nothing of the image was new.
        already_present: bool,
    },
    Skipped(String),
    Failed(Error),
}

/// Counts for the summary.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub blobs_copied: u64,
    pub blobs_mounted: u64,
    pub blobs_present: u64,
    /// Copied from the blob cache: upstream fetches saved.
    pub blobs_from_cache: u64,
    pub bytes_copied: u64,
    /// What a per-image copier would have moved: every blob of every image.
    pub bytes_naive: u64,
    pub retries: u64,
    pub signatures_added: u64,
}

/// What a published task was for, by its id.
enum TaskRef {
    Blob(BlobKey),
    Manifest {
        image: usize,
        platform: usize,
        key: String,
    },
    Top {
        image: usize,
        key: String,
    },
    Sign {
        image: usize,
    },
    Scan {
        image: usize,
        platform: usize,
    },
}

struct ImageState {
    job: ImageJob,
    plan: Option<ImagePlan>,
    pending_blobs: Vec<usize>,
    pending_manifests: usize,
    /// Signatures and scans still running; the image's result waits for them in `held`.
    pending_follow_ups: usize,
    held: Option<ImageResult>,
    result: Option<ImageResult>,
    /// Its place among the images planned and unfinished, given back as it finishes.
    place: crate::engine::job::Place,
}

/// Receives images as they finish.
pub trait Observer: Send {
    fn image_finished(&mut self, job: &ImageJob, result: &ImageResult);
}

/// What a job does beside carrying its images from end to end (each image names its
/// ends: [`ImageJob::source`], [`ImageJob::dest`]).
#[derive(Debug, Clone, Default)]
pub struct Extras {
    /// How logs name the destination when it is not a registry (the archive's path).
    pub dest_label: Option<String>,
    /// Sign every platform manifest and index as it lands, with the workers' key of this name.
    pub sign_key: Option<String>,
    /// Read every platform manifest's package inventory as it lands.
    pub scan: bool,
    /// Blobs the planner does not hold are not copied by tasks: the archive writer reads
    /// them from their source as it writes them (`save`/`sync` without a cache), so each
    /// byte reaches the disk once.
    pub streamed: bool,
    /// The caller reads the copied images' plans once the job is over (an archive's
    /// index). Otherwise a copied image's plan is dropped as it finishes, so that what a job
    /// holds grows with its images in flight and its blobs, not with its list's manifests.
    pub keep_plans: bool,
}

pub struct Tracker {
    job: JobId,
    queue: Arc<dyn TaskQueue>,
    overwrite: bool,
    extras: Extras,
    /// Images copied, in the order they finished (Hangar writes archives in this order).
    completed: Vec<usize>,
    inventories: Vec<(usize, usize, hangar_shared::scan::Inventory)>,
    scan_failures: Vec<(usize, Error)>,
    next_id: TaskId,
    /// The tasks outstanding, each with the nonce its events must carry and its kind.
    tasks: HashMap<TaskId, (u64, TaskKind, TaskRef)>,
    images: Vec<ImageState>,
    /// Blobs on their way to a destination repository, or failed there.
    blobs: HashMap<BlobKey, BlobState>,
    /// Blobs in their destination repository, and how they got there.
    landed: HashMap<BlobKey, Handling>,
    groups: HashMap<(StoreRef, Digest), Group>,
    /// Manifest writes to one key run one at a time: a digest on a registry (concurrent
    /// PUTs of the same manifest race inside distribution's storage, across repositories
    /// too) and a repository's tags (index merges must see each other, and two tags often
    /// get identical indexes).
    writes: HashMap<String, VecDeque<(Task, TaskRef)>>,
    unfinished: usize,
    /// Bytes of copied images whose plans were dropped that a per-image copier would have
    /// moved (their part of [`BlobSummary::saved_bytes`]).
    needed_of_dropped: u64,
    pub stats: Stats,
    /// The job's trace context, handed to every task it publishes.
    pub trace: Option<String>,
    /// Tasks the queue refused for good (too large for the bus), settled as failed tasks
    /// once the step that published them is over.
    refused: Vec<Event>,
    /// With a key: images writing one destination tag with others of the job.
    tag_peers: follow_ups::TagPeers,
}

impl Tracker {
    pub fn new(
        job: JobId,
        queue: Arc<dyn TaskQueue>,
        jobs: Vec<ImageJob>,
        overwrite: bool,
        extras: Extras,
    ) -> Self {
        let unfinished = jobs.len();
        let images: Vec<ImageState> = jobs
            .into_iter()
            .map(|job| ImageState {
                job,
                plan: None,
                pending_blobs: Vec::new(),
                pending_manifests: 0,
                pending_follow_ups: 0,
                held: None,
                result: None,
                place: None,
            })
            .collect();
        let tag_peers = follow_ups::tag_peers(&images);
        Self {
            job,
            queue,
            overwrite,
            extras,
            completed: Vec::new(),
            inventories: Vec::new(),
            scan_failures: Vec::new(),
            next_id: 0,
            tasks: HashMap::new(),
            trace: None,
            refused: Vec::new(),
            tag_peers,
            images,
            blobs: HashMap::new(),
            landed: HashMap::new(),
            groups: HashMap::new(),
            writes: HashMap::new(),
            unfinished,
            needed_of_dropped: 0,
            stats: Stats::default(),
        }
    }

    pub fn is_finished(&self) -> bool {
        self.unfinished == 0
    }

    #[cfg(test)]
    pub fn unique_blobs(&self) -> usize {
        let keys = self.blobs.keys().chain(self.landed.keys());
        let mut digests: Vec<&Digest> = keys.map(|(_, d)| d).collect();
        digests.sort();
        digests.dedup();
        digests.len()
    }

    /// Copied images whose plans are kept ([`Extras::keep_plans`]), in the order they
    /// finished, from the `n`th on.
    pub fn completed_since(&self, n: usize) -> impl Iterator<Item = (&ImageJob, &ImagePlan)> {
        self.completed[n.min(self.completed.len())..]
            .iter()
            .filter_map(|i| {
                let s = &self.images[*i];
                s.plan.as_ref().map(|p| (&s.job, p))
            })
    }

    pub fn completed_count(&self) -> usize {
        self.completed.len()
    }

    fn source_repo(&self, image: usize) -> RepoRef {
        self.images[image].job.source.clone()
    }

    fn dest_repo(&self, image: usize) -> RepoRef {
        self.images[image].job.dest.clone()
    }

    fn finish(&mut self, image: usize, result: ImageResult, obs: &mut dyn Observer) {
        let state = &mut self.images[image];
        if state.result.is_some() {
            return;
        }
        let copied = matches!(result, ImageResult::Copied { .. });
        obs.image_finished(&state.job, &result);
        state.result = Some(result);
        state.place = None;
        self.unfinished -= 1;
        if !copied {
            return;
        }
        self.completed.push(image);
        // Every blob of a copied image is settled: its part of the summary is final.
        if !self.extras.keep_plans
            && !self.extras.scan
            && let Some(plan) = self.images[image].plan.take()
        {
            self.needed_of_dropped += self.needed_bytes(image, &plan);
        }
    }

    async fn publish(&mut self, key: String, task: Task, r: TaskRef) -> Result<()> {
        self.next_id += 1;
        let id = self.next_id;
        let nonce = hangar_shared::task::new_nonce();
        self.tasks.insert(id, (nonce, task.kind(), r));
        let published = self
            .queue
            .publish(TaskEnvelope {
                job: self.job.clone(),
                id,
                nonce,
                key: format!("{}/{key}", self.job),
                trace: self.trace.clone(),
                task,
            })
            .await;
        match published {
            // A task the bus will never carry fails as the task would have: its images,
            // not the job (a registry's oversized manifest must not stop everyone's copy).
            Err(e) if e.class == FailureClass::InvalidInput => {
                self.refused.push(Event {
                    job: self.job.clone(),
                    task: id,
                    nonce,
                    kind: EventKind::Failed {
                        class: e.class,
                        message: e.message,
                        attempt: 1,
                        last: true,
                    },
                });
                Ok(())
            }
            other => other,
        }
    }

    /// Settles the tasks the queue refused, and whatever settling them refuses in turn.
    async fn settle_refused(&mut self, obs: &mut dyn Observer) -> Result<()> {
        while let Some(event) = self.refused.pop() {
            self.fold(event, obs).await?;
        }
        Ok(())
    }

    /// Holds `image`'s place until it finishes (taken before its plan, see
    /// [`crate::engine::job::images_in_progress`]).
    pub fn hold_place(&mut self, image: usize, place: crate::engine::job::Place) {
        if let Some(state) = self.images.get_mut(image)
            && state.result.is_none()
        {
            state.place = place;
        }
    }

    /// Takes one image's plan (or its planning failure).
    pub async fn add_plan(
        &mut self,
        image: usize,
        planned: Result<Planned>,
        obs: &mut dyn Observer,
    ) -> Result<()> {
        self.take_plan(image, planned, obs).await?;
        self.settle_refused(obs).await
    }

    async fn take_plan(
        &mut self,
        image: usize,
        planned: Result<Planned>,
        obs: &mut dyn Observer,
    ) -> Result<()> {
        let mut plan = match planned {
            Ok(Planned::Plan(p)) => p,
            Ok(Planned::Skip(why)) => {
                self.finish(image, ImageResult::Skipped(why), obs);
                return Ok(());
            }
            Ok(Planned::Present(digest)) => {
                let result = ImageResult::Copied {
                    digest: Some(digest),
                    preserved: false,
                    already_present: true,
                };
                self.finish(image, result, obs);
                return Ok(());
            }
            Err(e) => {
                self.finish(image, ImageResult::Failed(e), obs);
                return Ok(());
            }
        };
        self.images[image].pending_manifests = plan.platforms.len();
        let to_start = self.register_blobs(image, &plan);
        // Blob bytes the planner held are the blobs' records' now, until each lands.
        for platform in &mut plan.platforms {
            platform.inline = None;
        }
        self.images[image].plan = Some(plan);
        for key in to_start {
            self.schedule_blob(key).await?;
        }
        if self.images[image].result.is_none() {
            let ready: Vec<usize> = (0..self.images[image].pending_blobs.len())
                .filter(|p| self.images[image].pending_blobs[*p] == 0)
                .collect();
            for p in ready {
                self.publish_manifest(image, p).await?;
            }
        }
        Ok(())
    }

    /// Whether `event` is about a task outstanding, with the nonce it was given.
    pub fn expects(&self, event: &Event) -> bool {
        self.tasks
            .get(&event.task)
            .is_some_and(|(nonce, ..)| *nonce == event.nonce)
    }

    /// What a task of this job is, for the in-flight view; `None` once it is finished.
    pub fn describe(&self, task: TaskId) -> Option<String> {
        Some(match &self.tasks.get(&task)?.2 {
            TaskRef::Blob((repo, digest)) => format!("blob {digest} → {repo}"),
            TaskRef::Manifest { key, .. } => format!("manifest {key}"),
            TaskRef::Top { key, .. } => format!("index {key}"),
            TaskRef::Sign { image } => format!("sign {}", self.images[*image].job.name.dest),
            TaskRef::Scan { image, .. } => format!("scan {}", self.images[*image].job.name.dest),
        })
    }

    /// Folds one event in, publishing whatever it unblocks.
    pub async fn on_event(&mut self, event: Event, obs: &mut dyn Observer) -> Result<()> {
        self.fold(event, obs).await?;
        self.settle_refused(obs).await
    }

    async fn fold(&mut self, event: Event, obs: &mut dyn Observer) -> Result<()> {
        // Only an event carrying the task's nonce is about it: another is ignored whatever
        // it says (a worker reporting on a task it was never given).
        if !self.expects(&event) {
            return Ok(());
        }
        let (outcome, error) = match event.kind {
            // Notices for the in-flight view (`crate::engine::in_flight`), nothing to settle.
            EventKind::Started { .. } | EventKind::Waiting { .. } => return Ok(()),
            EventKind::Done { outcome } => (Some(outcome), None),
            EventKind::Failed {
                last: false,
                class,
                message,
                attempt,
            } => {
                self.stats.retries += 1;
                tracing::debug!(task = event.task, attempt, %class, "task will be retried: {message}");
                return Ok(());
            }
            EventKind::Failed { class, message, .. } => (None, Some(Error::new(class, message))),
        };
        let Some((_, kind, r)) = self.tasks.remove(&event.task) else {
            return Ok(());
        };
        let (outcome, error) = match outcome {
            Some(o) if !o.answers(kind) => (None, Some(o.mismatch(kind))),
            _ => (outcome, error),
        };
        match (r, error) {
            (TaskRef::Blob(key), None) => self.blob_done(key, outcome).await,
            (TaskRef::Blob(key), Some(e)) => self.blob_failed(key, e, obs).await,
            (
                TaskRef::Manifest {
                    image,
                    platform,
                    key,
                },
                None,
            ) => self.manifest_written(image, platform, &key, obs).await,
            (TaskRef::Top { image, key }, None) => {
                self.top_written(image, &key, outcome, obs).await
            }
            (TaskRef::Manifest { image, key, .. } | TaskRef::Top { image, key }, Some(e)) => {
                self.release(&key).await?;
                self.finish(image, ImageResult::Failed(e), obs);
                Ok(())
            }
            (TaskRef::Sign { image }, None) => {
                self.sign_done(image, outcome, obs);
                Ok(())
            }
            (TaskRef::Scan { image, platform }, result) => {
                self.scan_done(image, platform, outcome, result, obs);
                Ok(())
            }
            (TaskRef::Sign { image }, Some(e)) => {
                self.sign_failed(image, e, obs);
                Ok(())
            }
        }
    }

    /// Gives up on unfinished images (cancellation).
    ///
    /// An image whose copy is done and that waits only on follow-ups is not reported as a
    /// failed copy: with a signature outstanding it fails for that (the job asked for it
    /// signed), with only scans outstanding it stands and the scans are reported cancelled.
    pub fn abandon(&mut self, why: &str, obs: &mut dyn Observer) {
        for i in 0..self.images.len() {
            if self.images[i].result.is_some() {
                continue;
            }
            let Some(held) = self.images[i].held.take() else {
                self.finish(
                    i,
                    ImageResult::Failed(Error::new(FailureClass::Cancelled, why)),
                    obs,
                );
                continue;
            };
            let signing = self
                .tasks
                .values()
                .any(|(.., t)| matches!(t, TaskRef::Sign { image } if *image == i));
            if signing {
                let e = Error::new(
                    FailureClass::Cancelled,
                    format!("{why}: copied, but its signatures were not confirmed"),
                );
                self.finish(i, ImageResult::Failed(e), obs);
            } else {
                self.scan_failures
                    .push((i, Error::new(FailureClass::Cancelled, why)));
                self.finish(i, held, obs);
            }
        }
    }
}

#[cfg(test)]
mod tests;
