//! Test kit for the tracker as a state machine: plans built by hand (no registry), a
//! [`Tracker`] over the real in-process [`MemoryQueue`], and the test playing the workers
//! (it takes what was published and answers with events). Shared by the tests of every
//! tracker file and the planner's, so each of them reads as steps and assertions.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::FutureExt;
use hangar_shared::digest::Digest;
use hangar_shared::error::{Error, FailureClass};
use hangar_shared::imagelist::{LineKind, ListEntry};
use hangar_shared::manifest::{Descriptor, OCI_MANIFEST, Platform, RawManifest};
use hangar_shared::queue::{MemoryQueue, TaskQueue};
use hangar_shared::reference::ImageRef;
use hangar_shared::task::{Event, Outcome, Task, TaskEnvelope};

use super::{Extras, ImageResult, Observer, Tracker};
use crate::engine::planner::{ImageJob, ImagePlan, Planned, PlatformPlan, TopPlan};

/// A layer blob whose digest and size come from `name`.
pub(crate) fn blob(name: &str) -> Descriptor {
    Descriptor {
        media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
        digest: Digest::of(name.as_bytes()),
        size: name.len() as u64,
        urls: None,
        annotations: None,
        platform: None,
    }
}

/// An image manifest with `config` and `layers`, as a registry would serve it.
pub(crate) fn manifest(config: &Descriptor, layers: &[Descriptor]) -> RawManifest {
    let json = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config,
        "layers": layers,
    });
    RawManifest::from_bytes(Bytes::from(json.to_string()), None).expect("a valid manifest")
}

/// A `linux/<arch>` platform whose first blob is its config.
pub(crate) fn platform(arch: &str, blobs: &[Descriptor]) -> PlatformPlan {
    let manifest = manifest(&blobs[0], &blobs[1..]);
    let mut entry = manifest.descriptor();
    entry.platform = Some(Platform {
        architecture: arch.into(),
        os: "linux".into(),
        ..Platform::default()
    });
    PlatformPlan {
        entry,
        manifest,
        blobs: blobs.to_vec(),
        inline: None,
        push_tag: None,
    }
}

/// An image tagged `tag` at the destination, its index built from `platforms`.
pub(crate) fn tagged(tag: &str, platforms: Vec<PlatformPlan>) -> Planned {
    Planned::Plan(ImagePlan {
        platforms,
        top: TopPlan::Index {
            tag: tag.into(),
            source_index: None,
            absent: false,
        },
        source: None,
    })
}

pub(crate) fn job(src: &str, dst: &str) -> ImageJob {
    let source = ImageRef::parse(src).expect("source reference");
    ImageJob::between_registries(
        ListEntry {
            index: 1,
            line_no: 1,
            original: src.into(),
            kind: LineKind::Default(source.clone()),
        },
        source,
        ImageRef::parse(dst).expect("destination reference"),
    )
}

/// Images as they finished, by destination.
#[derive(Default)]
pub(super) struct Finished(pub Vec<(String, ImageResult)>);

impl Observer for Finished {
    fn image_finished(&mut self, job: &ImageJob, result: &ImageResult) {
        self.0.push((job.dest.to_string(), result.clone()));
    }
}

impl Finished {
    /// The failure class of the `n`th image to finish, if it failed.
    pub fn class(&self, n: usize) -> Option<FailureClass> {
        match &self.0.get(n)?.1 {
            ImageResult::Failed(e) => Some(e.class),
            _ => None,
        }
    }
}

/// A tracker over a [`MemoryQueue`], with the test as its workers.
pub(super) struct Harness {
    pub tracker: Tracker,
    pub queue: Arc<MemoryQueue>,
    pub finished: Finished,
}

impl Harness {
    pub fn new(jobs: Vec<ImageJob>, extras: Extras) -> Self {
        let queue = Arc::new(MemoryQueue::new(3));
        let tracker = Tracker::new("job".into(), queue.clone(), jobs, false, extras);
        Self {
            tracker,
            queue,
            finished: Finished::default(),
        }
    }

    pub async fn add(&mut self, image: usize, planned: Planned) {
        self.tracker
            .add_plan(image, Ok(planned), &mut self.finished)
            .await
            .expect("add_plan");
    }

    /// Everything published since the last call, in order.
    /// What the tracker has published and no one has taken, in the order it published
    /// (the queue serves quick tasks first; the tests judge the tracker, not the queue).
    pub fn take(&self) -> Vec<TaskEnvelope> {
        let mut out = Vec::new();
        while let Some(Some(d)) = self.queue.next().now_or_never() {
            out.push(d.task);
        }
        out.sort_by_key(|t| t.id);
        out
    }

    pub async fn event(&mut self, event: Event) {
        self.tracker
            .on_event(event, &mut self.finished)
            .await
            .expect("on_event");
    }

    pub async fn done(&mut self, task: &TaskEnvelope, outcome: Outcome) {
        self.event(Event::done(task, outcome)).await;
    }

    /// What a worker sends for each task kind when it succeeded plainly.
    pub async fn ok(&mut self, task: &TaskEnvelope) {
        let outcome = match &task.task {
            Task::Blob(b) => Outcome::BlobCopied {
                bytes: b.desc.size,
                cached: false,
            },
            Task::Manifest(_) => Outcome::ManifestPushed,
            Task::Index(_) => Outcome::IndexPushed {
                digest: Digest::of(b"index"),
                preserved: false,
            },
            Task::Sign(_) => Outcome::Signed { added: true },
            Task::Check(_) => Outcome::Checked {
                verdict: hangar_shared::task::Verdict::Pass { payload: None },
            },
            Task::Assemble(_) | Task::Scan(_) => panic!("no plain outcome for {task:?}"),
        };
        self.done(task, outcome).await;
    }

    /// Answers every task taken, then whatever that published, until nothing is left.
    pub async fn settle(&mut self) {
        loop {
            let tasks = self.take();
            if tasks.is_empty() {
                return;
            }
            for t in &tasks {
                self.ok(t).await;
            }
        }
    }

    pub async fn fail(&mut self, task: &TaskEnvelope, class: FailureClass, last: bool) {
        let err = Error::new(class, "injected");
        self.event(Event::failed(task, &err, 1, last)).await;
    }
}

/// The task kinds in `tasks`, to compare a step's publications at a glance.
pub(crate) fn kinds(tasks: &[TaskEnvelope]) -> Vec<&'static str> {
    tasks.iter().map(|t| t.task.kind().as_str()).collect()
}

/// The blob tasks among `tasks`.
pub(crate) fn blob_tasks(tasks: &[TaskEnvelope]) -> Vec<&hangar_shared::task::BlobTask> {
    tasks
        .iter()
        .filter_map(|t| match &t.task {
            Task::Blob(b) => Some(&**b),
            _ => None,
        })
        .collect()
}
