//! The tracker folds plans and events into job state and publishes follow-up tasks:
//! blobs first (one task per unique digest and destination repository), a platform
//! manifest once all its blobs are in, the tag's index once all platforms are in.
//!
//! A digest needed in several repositories of one registry is fetched from the source once:
//! the first repository gets a copy task, the rest wait and are then mounted from it.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use hangar_shared::digest::Digest;
use hangar_shared::error::{Error, FailureClass, Result};
use hangar_shared::manifest::Descriptor;
use hangar_shared::queue::TaskQueue;
use hangar_shared::store::{RepoRef, StoreRef};
use hangar_shared::task::{
    BlobTask, Event, EventKind, IndexTask, JobId, ManifestBody, ManifestTask, Outcome, ScanTask,
    SignTask, Task, TaskEnvelope, TaskId,
};

use crate::planner::{ImageJob, ImagePlan, Planned, TopPlan};

#[derive(Debug, Clone)]
pub enum ImageResult {
    Copied {
        digest: Option<Digest>,
        preserved: bool,
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

type BlobKey = (RepoRef, Digest);

#[derive(Debug, PartialEq, Eq)]
enum BlobStatus {
    Waiting,
    Queued,
    Done,
    Failed,
}

struct BlobState {
    desc: Descriptor,
    inline: Option<bytes::Bytes>,
    source: RepoRef,
    status: BlobStatus,
    error: Option<Error>,
    /// (image, platform) pairs waiting for this blob.
    waiters: Vec<(usize, usize)>,
}

#[derive(Default)]
struct Group {
    done_in: Vec<RepoRef>,
    in_flight: bool,
    waiting: VecDeque<BlobKey>,
}

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
}

/// Receives images as they finish.
pub trait Observer: Send {
    fn image_finished(&mut self, job: &ImageJob, result: &ImageResult);
}

/// Where a job's images come from and go to, when not registry → registry.
#[derive(Debug, Clone, Default)]
pub struct Ends {
    /// The store every image is read from (`load`: the archive); registries otherwise.
    pub source: Option<StoreRef>,
    /// Gather blobs and manifests in the blob cache for the assembler (`save`, `sync`)
    /// instead of pushing them to a registry.
    pub to_cache: bool,
    /// How logs name the destination when it is not a registry (the archive's path).
    pub dest_label: Option<String>,
    /// Sign every platform manifest and index as it lands, with the workers' key of this name.
    pub sign_key: Option<String>,
    /// Read every platform manifest's package inventory as it lands.
    pub scan: bool,
}

pub struct Tracker {
    job: JobId,
    queue: Arc<dyn TaskQueue>,
    overwrite: bool,
    ends: Ends,
    /// Images copied, in the order they finished (Hangar writes archives in this order).
    completed: Vec<usize>,
    inventories: Vec<(usize, usize, hangar_shared::scan::Inventory)>,
    scan_failures: Vec<(usize, Error)>,
    next_id: TaskId,
    tasks: HashMap<TaskId, TaskRef>,
    images: Vec<ImageState>,
    blobs: HashMap<BlobKey, BlobState>,
    groups: HashMap<(StoreRef, Digest), Group>,
    /// Manifest writes to one key run one at a time: a digest on a registry (concurrent
    /// PUTs of the same manifest race inside distribution's storage, across repositories
    /// too) and a repository's tags (index merges must see each other, and two tags often
    /// get identical indexes).
    writes: HashMap<String, VecDeque<(Task, TaskRef)>>,
    unfinished: usize,
    pub stats: Stats,
    /// The job's trace context, handed to every task it publishes.
    pub trace: Option<String>,
}

impl Tracker {
    pub fn new(
        job: JobId,
        queue: Arc<dyn TaskQueue>,
        jobs: Vec<ImageJob>,
        overwrite: bool,
        ends: Ends,
    ) -> Self {
        let unfinished = jobs.len();
        let images = jobs
            .into_iter()
            .map(|job| ImageState {
                job,
                plan: None,
                pending_blobs: Vec::new(),
                pending_manifests: 0,
                pending_follow_ups: 0,
                held: None,
                result: None,
            })
            .collect();
        Self {
            job,
            queue,
            overwrite,
            ends,
            completed: Vec::new(),
            inventories: Vec::new(),
            scan_failures: Vec::new(),
            next_id: 0,
            tasks: HashMap::new(),
            trace: None,
            images,
            blobs: HashMap::new(),
            groups: HashMap::new(),
            writes: HashMap::new(),
            unfinished,
            stats: Stats::default(),
        }
    }

    pub fn is_finished(&self) -> bool {
        self.unfinished == 0
    }

    pub fn unique_blobs(&self) -> usize {
        let mut digests: Vec<&Digest> = self.blobs.keys().map(|(_, d)| d).collect();
        digests.sort();
        digests.dedup();
        digests.len()
    }

    pub fn results(&self) -> impl Iterator<Item = (&ImageJob, Option<&ImageResult>)> {
        self.images.iter().map(|i| (&i.job, i.result.as_ref()))
    }

    /// Copied images with their plans, in the order they finished.
    pub fn completed(&self) -> impl Iterator<Item = (&ImageJob, &ImagePlan)> {
        self.completed_since(0)
    }

    /// Like [`Self::completed`], from the `n`th on.
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
        let job = &self.images[image].job;
        match &self.ends.source {
            Some(store) => RepoRef {
                store: store.clone(),
                repo: job.source.repository(),
            },
            None => RepoRef::registry(&job.source.registry, &job.source.repository()),
        }
    }

    fn dest_repo(&self, image: usize) -> RepoRef {
        let job = &self.images[image].job;
        if self.ends.to_cache {
            RepoRef {
                store: StoreRef::Cache,
                repo: String::new(),
            }
        } else {
            RepoRef::registry(&job.dest.registry, &job.dest.repository())
        }
    }

    fn finish(&mut self, image: usize, result: ImageResult, obs: &mut dyn Observer) {
        let state = &mut self.images[image];
        if state.result.is_some() {
            return;
        }
        if matches!(result, ImageResult::Copied { .. }) {
            self.completed.push(image);
        }
        obs.image_finished(&state.job, &result);
        state.result = Some(result);
        self.unfinished -= 1;
    }

    async fn publish(&mut self, key: String, task: Task, r: TaskRef) -> Result<()> {
        self.next_id += 1;
        let id = self.next_id;
        self.tasks.insert(id, r);
        self.queue
            .publish(TaskEnvelope {
                job: self.job.clone(),
                id,
                key: format!("{}/{key}", self.job),
                trace: self.trace.clone(),
                task,
            })
            .await
    }

    /// Takes one image's plan (or its planning failure).
    pub async fn add_plan(
        &mut self,
        image: usize,
        planned: Result<Planned>,
        obs: &mut dyn Observer,
    ) -> Result<()> {
        let plan = match planned {
            Ok(Planned::Plan(p)) => p,
            Ok(Planned::Skip(why)) => {
                self.finish(image, ImageResult::Skipped(why), obs);
                return Ok(());
            }
            Err(e) => {
                self.finish(image, ImageResult::Failed(e), obs);
                return Ok(());
            }
        };
        let dest_repo = self.dest_repo(image);
        let source_repo = self.source_repo(image);
        self.images[image].pending_blobs = vec![0; plan.platforms.len()];
        self.images[image].pending_manifests = plan.platforms.len();
        let mut to_start = Vec::new();
        for (p, platform) in plan.platforms.iter().enumerate() {
            for desc in &platform.blobs {
                self.stats.bytes_naive += desc.size;
                let key = (dest_repo.clone(), desc.digest.clone());
                match self.blobs.get_mut(&key) {
                    Some(b) if b.status == BlobStatus::Done => {}
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
                        self.blobs.insert(
                            key.clone(),
                            BlobState {
                                desc: desc.clone(),
                                inline: platform
                                    .inline
                                    .as_ref()
                                    .filter(|(d, _)| *d == desc.digest)
                                    .map(|(_, b)| b.clone()),
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

    /// Starts a blob now, or parks it behind the copy of the same digest to the same registry.
    async fn schedule_blob(&mut self, key: BlobKey) -> Result<()> {
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

    async fn publish_manifest(&mut self, image: usize, platform: usize) -> Result<()> {
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
        let store = match &dest.store {
            StoreRef::Registry { host } => host.clone(),
            _ => "cache".to_owned(),
        };
        let key = format!("manifest/{store}@{}", p.manifest.digest);
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
    async fn release(&mut self, key: &str) -> Result<()> {
        let next = self.writes.get_mut(key).and_then(VecDeque::pop_front);
        match next {
            Some((task, r)) => self.publish(key.to_owned(), task, r).await,
            None => {
                self.writes.remove(key);
                Ok(())
            }
        }
    }

    async fn publish_top(&mut self, image: usize, obs: &mut dyn Observer) -> Result<()> {
        let state = &self.images[image];
        let Some(plan) = &state.plan else {
            return Ok(());
        };
        if self.ends.to_cache {
            // Archives keep platform manifests only; the assembler writes the rest.
            self.complete(
                image,
                ImageResult::Copied {
                    digest: None,
                    preserved: true,
                },
                obs,
            );
            return Ok(());
        }
        let dest = self.dest_repo(image);
        let (key, task) = match &plan.top {
            TopPlan::Index { tag, source_index } => (
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
                }),
            ),
            TopPlan::ByDigest(index) => (
                format!("manifest/{}@{}", state.job.dest.registry, index.digest),
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
                    },
                    obs,
                );
                return Ok(());
            }
        };
        self.write(task, TaskRef::Top { image, key }).await
    }

    /// Folds one event in, publishing whatever it unblocks.
    /// What a task of this job is, for the in-flight view; `None` once it is finished.
    pub fn describe(&self, task: TaskId) -> Option<String> {
        Some(match self.tasks.get(&task)? {
            TaskRef::Blob((repo, digest)) => format!("blob {digest} → {repo}"),
            TaskRef::Manifest { key, .. } => format!("manifest {key}"),
            TaskRef::Top { key, .. } => format!("index {key}"),
            TaskRef::Sign { image } => format!("sign {}", self.images[*image].job.dest),
            TaskRef::Scan { image, .. } => format!("scan {}", self.images[*image].job.dest),
        })
    }

    pub async fn on_event(&mut self, event: Event, obs: &mut dyn Observer) -> Result<()> {
        let (outcome, error) = match event.kind {
            // Notices for the in-flight view (`crate::in_flight`), nothing to settle.
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
        let Some(r) = self.tasks.remove(&event.task) else {
            return Ok(());
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
            ) => {
                self.release(&key).await?;
                let signable = self.images[image].plan.as_ref().and_then(|p| {
                    let p = &p.platforms[platform];
                    (!p.is_attachment() && !p.entry.is_attestation())
                        .then(|| p.manifest.digest.clone())
                });
                if let Some(digest) = signable {
                    self.publish_sign(image, digest).await?;
                    if self.ends.scan {
                        self.publish_scan(image, platform).await?;
                    }
                }
                let state = &mut self.images[image];
                state.pending_manifests = state.pending_manifests.saturating_sub(1);
                if state.pending_manifests == 0 && state.result.is_none() {
                    self.publish_top(image, obs).await?;
                }
                Ok(())
            }
            (TaskRef::Top { image, key }, None) => {
                self.release(&key).await?;
                let result = match outcome {
                    Some(Outcome::IndexPushed { digest, preserved }) => ImageResult::Copied {
                        digest: Some(digest),
                        preserved,
                    },
                    Some(Outcome::IndexUnchanged { digest }) => {
                        let preserved = matches!(
                            self.images[image].plan.as_ref().map(|p| &p.top),
                            Some(TopPlan::Index { source_index: Some(src), .. }) if src.digest == digest
                        );
                        ImageResult::Copied {
                            digest: Some(digest),
                            preserved,
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
                        }
                    }
                };
                if let ImageResult::Copied {
                    digest: Some(d), ..
                } = &result
                {
                    self.publish_sign(image, d.clone()).await?;
                }
                self.complete(image, result, obs);
                Ok(())
            }
            (TaskRef::Manifest { image, key, .. } | TaskRef::Top { image, key }, Some(e)) => {
                self.release(&key).await?;
                self.finish(image, ImageResult::Failed(e), obs);
                Ok(())
            }
            (TaskRef::Sign { image }, None) => {
                if let Some(Outcome::Signed { added: true }) = outcome {
                    self.stats.signatures_added += 1;
                }
                self.follow_up_done(image, obs);
                Ok(())
            }
            (TaskRef::Scan { image, platform }, result) => {
                match (outcome, result) {
                    (Some(Outcome::Scanned { inventory, .. }), None) => {
                        self.inventories.push((image, platform, *inventory));
                    }
                    (_, Some(e)) => {
                        // A scan failure does not undo the copy: it is reported with the scan.
                        self.scan_failures.push((image, e));
                    }
                    _ => {}
                }
                self.follow_up_done(image, obs);
                Ok(())
            }
            (TaskRef::Sign { image }, Some(e)) => {
                self.images[image].pending_follow_ups = 0;
                self.images[image].held = None;
                self.finish(image, ImageResult::Failed(e.context("signing")), obs);
                Ok(())
            }
        }
    }

    /// Signs `digest` in the image's destination with the job's key, if it has one.
    async fn publish_sign(&mut self, image: usize, digest: Digest) -> Result<()> {
        let Some(key) = self.ends.sign_key.clone() else {
            return Ok(());
        };
        let dest = self.dest_repo(image);
        let job = &self.images[image].job;
        let identity = hangar_shared::sign::cosign::docker_reference(
            &job.dest.registry,
            &job.dest.repository(),
        );
        self.images[image].pending_follow_ups += 1;
        let name = format!("sign/{dest}@{digest}");
        let task = Task::Sign(SignTask {
            dest,
            digest,
            identity,
            key,
        });
        self.publish(name, task, TaskRef::Sign { image }).await
    }

    /// Reads the package inventory of a platform manifest just written.
    async fn publish_scan(&mut self, image: usize, platform: usize) -> Result<()> {
        let Some(plan) = &self.images[image].plan else {
            return Ok(());
        };
        let manifest = ManifestBody::from(&plan.platforms[platform].manifest);
        let store = self.dest_repo(image);
        self.images[image].pending_follow_ups += 1;
        let name = format!("scan/{store}@{}", manifest.digest);
        let task = Task::Scan(ScanTask { store, manifest });
        self.publish(name, task, TaskRef::Scan { image, platform })
            .await
    }

    /// Inventories read by scan tasks: (image, platform index, inventory).
    pub fn inventories(
        &self,
    ) -> impl Iterator<
        Item = (
            &ImageJob,
            &crate::planner::PlatformPlan,
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

    pub fn scan_failures(&self) -> impl Iterator<Item = (&ImageJob, &Error)> {
        self.scan_failures
            .iter()
            .map(|(i, e)| (&self.images[*i].job, e))
    }

    /// A signature or scan of `image` is done: the image finishes when it was the last.
    fn follow_up_done(&mut self, image: usize, obs: &mut dyn Observer) {
        let state = &mut self.images[image];
        state.pending_follow_ups = state.pending_follow_ups.saturating_sub(1);
        if state.pending_follow_ups == 0
            && let Some(result) = state.held.take()
        {
            self.finish(image, result, obs);
        }
    }

    /// Finishes an image once its signatures are written; until then its result waits.
    fn complete(&mut self, image: usize, result: ImageResult, obs: &mut dyn Observer) {
        if self.images[image].pending_follow_ups > 0 {
            self.images[image].held = Some(result);
        } else {
            self.finish(image, result, obs);
        }
    }

    async fn blob_done(&mut self, key: BlobKey, outcome: Option<Outcome>) -> Result<()> {
        match &outcome {
            Some(Outcome::BlobCopied { bytes, cached }) => {
                self.stats.blobs_copied += 1;
                if *cached {
                    self.stats.blobs_from_cache += 1;
                }
                self.stats.bytes_copied += bytes;
            }
            Some(Outcome::BlobMounted { .. }) => self.stats.blobs_mounted += 1,
            _ => self.stats.blobs_present += 1,
        }
        let waiters = match self.blobs.get_mut(&key) {
            Some(b) => {
                b.status = BlobStatus::Done;
                std::mem::take(&mut b.waiters)
            }
            None => Vec::new(),
        };
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

    async fn blob_failed(
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

    /// Gives up on unfinished images (cancellation).
    pub fn abandon(&mut self, why: &str, obs: &mut dyn Observer) {
        for i in 0..self.images.len() {
            if self.images[i].result.is_none() {
                self.finish(
                    i,
                    ImageResult::Failed(Error::new(FailureClass::Cancelled, why)),
                    obs,
                );
            }
        }
    }
}
