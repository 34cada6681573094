//! The embedded mode: one process runs the planner, an in-process queue, the worker's own
//! handlers and the tracker. The fleet mode swaps the queue and the event sink for
//! JetStream; nothing else here changes.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hangar_shared::archive::ArchiveReader;
use hangar_shared::error::{Error, FailureClass, Result};
use hangar_shared::manifest::PlatformFilter;
use hangar_shared::retry::RetryPolicy;
use hangar_shared::store::{RegistryPool, StoreRef};
use tokio::sync::mpsc;
use tracing::Instrument as _;

pub use super::tasks::Backend;
use super::tasks::{Bus, Here, News};
use crate::console::{Console, Progress};
use crate::engine::planner::{self, ImageJob, ImagePlan};
pub use crate::engine::snapshot::JobSnapshot;
use crate::engine::tracker::{Extras, ImageResult, Observer, Stats, Tracker};

/// A copy job: every image from its source to its destination, whatever stores those are
/// (`mirror`, `save`, `sync`, `load`).
pub struct CopySpec {
    pub images: Vec<ImageJob>,
    pub filter: PlatformFilter,
    pub provenance: bool,
    pub overwrite: bool,
    /// Images resolved at once (`-j`).
    pub planners: usize,
    /// Blob and manifest transfers at once.
    pub transfers: usize,
    pub task_timeout: Option<Duration>,
    pub retry: RetryPolicy,
    /// Ctrl-C stops the job (a command); a service's jobs leave signals to the service.
    pub interruptible: bool,
    /// The embedded workers' blob cache (`--cache`); fleet workers have their own.
    pub cache: Option<Arc<hangar_shared::cache::BlobCache>>,
    /// Where images come from and go to when not registry → registry.
    pub extras: Extras,
    /// Copy cosign signatures and attestations along (mirror without --remove-signatures).
    pub signatures: bool,
    /// The embedded workers' signing keys, by name (`extras.sign_key` names one).
    pub sign_keys: std::collections::HashMap<String, Arc<hangar_shared::sign::KeyPair>>,
    /// The archive images are loaded from (its index plans them; its entries feed the copy).
    pub archive: Option<(String, Arc<ArchiveReader>)>,
    /// Told of each copied image as it completes (save writes it into the archive then).
    pub completions: Option<mpsc::UnboundedSender<(ImageJob, ImagePlan)>>,
}

pub struct JobReport {
    pub results: Vec<(ImageJob, ImageResult)>,
    pub stats: Stats,
    /// The run's blobs, each unique digest counted once.
    pub blobs: crate::engine::tracker::BlobSummary,
    pub elapsed: Duration,
    /// Copied images with their plans, in the order they finished, when the job kept
    /// plans (`Extras::keep_plans`, or a scan); empty otherwise.
    pub completed: Vec<(ImageJob, ImagePlan)>,
    /// Package inventories read by scan tasks: image, platform entry, inventory.
    pub scans: Vec<(
        ImageJob,
        hangar_shared::manifest::Descriptor,
        hangar_shared::scan::Inventory,
    )>,
    pub scan_failures: Vec<(ImageJob, hangar_shared::error::Error)>,
    /// A Ctrl-C stopped the run (its unfinished images are failed).
    pub interrupted: bool,
}

struct LogObserver<'a> {
    /// Names the destination when it is not the image's registry (an archive).
    dest_label: Option<&'a str>,
    /// The archive's writer says when an image is saved (its layers are read as it writes).
    saved_by_writer: bool,
    console: &'a Console,
    progress: &'a Progress,
    watch: Option<Arc<std::sync::Mutex<JobSnapshot>>>,
}

impl Observer for LogObserver<'_> {
    fn image_finished(&mut self, job: &ImageJob, result: &ImageResult) {
        if let Some(w) = &self.watch
            && let Ok(mut snap) = w.lock()
        {
            match result {
                ImageResult::Copied {
                    already_present: true,
                    ..
                } => snap.present += 1,
                ImageResult::Copied { .. } => snap.copied += 1,
                ImageResult::Skipped(_) => snap.skipped += 1,
                ImageResult::Failed(e) => {
                    snap.image_failed(&job.entry.original, Some(&failure_text(e)));
                }
            }
        }
        let n = Some(job.entry.index);
        match result {
            ImageResult::Copied {
                digest: Some(d),
                already_present: true,
                ..
            } => self.console.info(
                n,
                format!(
                    "Already present: [{}] == [{}] ({d})",
                    job.name.source, job.name.dest
                ),
            ),
            // Said by the archive's writer once the image is in the zip.
            ImageResult::Copied { .. } if self.saved_by_writer => {}
            ImageResult::Copied {
                digest, preserved, ..
            } => {
                let detail = match digest {
                    Some(d) if *preserved => format!(" ({d}, source digest preserved)"),
                    Some(d) => format!(" ({d})"),
                    None => String::new(),
                };
                self.console.info(
                    n,
                    match self.dest_label {
                        Some(label) => saved(&job.name.source, label),
                        None => format!(
                            "Copied image [{}] => [{}]{detail}",
                            job.name.source, job.name.dest
                        ),
                    },
                );
            }
            ImageResult::Skipped(why) => self
                .console
                .warn(n, format!("Skip copy image [{}]: {why}", job.name.source)),
            ImageResult::Failed(e) => self.console.error(
                n,
                match self.dest_label {
                    Some(label) => not_saved(&job.name.source, label, e),
                    None => format!(
                        "Failed to copy image [{}] => [{}]: {}",
                        job.name.source,
                        job.name.dest,
                        failure_text(e)
                    ),
                },
            ),
        }
        self.progress.image_done();
    }
}

/// Hangar's line for an image saved into the archive `label`.
pub fn saved(source: &impl std::fmt::Display, label: &str) -> String {
    format!("Saved image [{source}] => [{label}]")
}

/// An image's failure as the logs say it (class and message).
pub fn failure_text(e: &Error) -> String {
    format!("{}: {}", e.class, e.message)
}

/// Hangar's line for an image that could not be saved into the archive `label`.
pub fn not_saved(source: &impl std::fmt::Display, label: &str, e: &Error) -> String {
    format!(
        "Failed to save image [{source}] => [{label}]: {}",
        failure_text(e)
    )
}

/// A job id that is unique across runs and a valid NATS subject token.
pub fn new_job_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("j{nanos:x}{:x}", std::process::id())
}

/// How a job plans its images (`--dry-run` plans with the same).
pub struct Planning {
    pub pool: Arc<RegistryPool>,
    pub cache: Option<Arc<hangar_shared::cache::BlobCache>>,
    /// The archive a load plans from (its index), instead of registries.
    pub archive: Option<Arc<ArchiveReader>>,
    pub filter: PlatformFilter,
    pub provenance: bool,
    /// Plan the images' cosign signatures and attestations too.
    pub signatures: bool,
    /// Look at each image's destination tag first (see `pull_source::Planning`).
    pub look_first: bool,
    /// Images planned at once (`-j`).
    pub planners: usize,
    /// `--timeout`: bounds each image's planning as a whole.
    pub bound: Option<Duration>,
    /// Places for images planned and not finished: one is taken before an image is
    /// planned and comes with its plan, for the job to give back when the image finishes.
    pub places: Option<Arc<tokio::sync::Semaphore>>,
}

/// An image's place among those a copy job holds planned and unfinished ([`Planning::places`]).
pub type Place = Option<tokio::sync::OwnedSemaphorePermit>;

/// Images a copy job holds planned and unfinished at most, for `planners` planned at once:
/// so that a long list whose copies are slower than its plans holds a window of plans and
/// queued tasks, not the whole list's. Eight per planner keep the transfers busy (an image
/// brings two blobs or more; transfers are twice the planners). A place is taken before
/// an image's planning starts, never by a planning under way: a read it has started holds
/// a request slot of its registry that the copies may be waiting for.
pub fn images_in_progress(planners: usize) -> usize {
    planners.max(1) * 8
}

/// The job's planning stream: each image (by its position in `images`) planned from its
/// archive entry, or from the registry through `registries.conf`'s mirrors with the
/// signature policy checked there, `planners` at once, as they finish.
pub fn planning(
    images: Vec<ImageJob>,
    how: Planning,
) -> futures_util::stream::BoxStream<'static, (usize, Result<planner::Planned>, Place)> {
    let planners = how.planners.max(1);
    let how = Arc::new(how);
    futures_util::stream::iter(images.into_iter().enumerate())
        .map(move |(i, job)| {
            let how = how.clone();
            async move {
                let place = match &how.places {
                    Some(places) => places.clone().acquire_owned().await.ok(),
                    None => None,
                };
                let source = job.name.source.clone();
                // `--timeout` bounds an image's planning as a whole, every manifest, config
                // and signature read of it with their retries: a registry that answers one
                // byte at a time cannot hold the job.
                let bound = how.bound;
                let work = async {
                    if let (Some(archive), Some(image)) = (&how.archive, &job.archived) {
                        // containers/image copies an archived image from an `oci:` layout:
                        // the signature policy's transport default applies, before anything
                        // of it is planned.
                        let allowed = crate::commands::signature_policy().and_then(|policy| {
                            policy.map_or(Ok(()), |p| p.check_archived(&job.name.source))
                        });
                        allowed?;
                        return planner::plan_archive(
                            archive.as_ref(),
                            image,
                            &job,
                            &how.filter,
                            how.provenance,
                        )
                        .await;
                    }
                    // From the registry, or through registries.conf's mirrors; the signature
                    // policy is checked there, before anything of the image is planned.
                    let planning = crate::engine::pull_source::Planning {
                        pool: &how.pool,
                        cache: how.cache.as_deref(),
                        filter: &how.filter,
                        provenance: how.provenance,
                        signatures: how.signatures,
                        look_first: how.look_first,
                    };
                    planning.plan(&job).await
                };
                let planned = match bound {
                    None => work.await,
                    Some(bound) => tokio::time::timeout(bound, work).await.unwrap_or_else(|_| {
                        Err(Error::new(
                            FailureClass::Network,
                            format!(
                                "{source}: planning did not finish within {} (--timeout)",
                                humantime::format_duration(bound)
                            ),
                        ))
                    }),
                };
                (i, planned, place)
            }
        })
        .buffer_unordered(planners)
        .boxed()
}

/// `run` names this execution of the job: task message ids and the event subject carry
/// `<job>.<run>`, so a resumed job never confuses its events with an earlier run's.
pub async fn run_copy(
    spec: CopySpec,
    pool: Arc<RegistryPool>,
    console: Arc<Console>,
    backend: Backend,
    job: (&str, &str),
    watch: Option<Arc<std::sync::Mutex<JobSnapshot>>>,
) -> Result<JobReport> {
    let started = Instant::now();
    let job_id = format!("{}.{}", job.0, job.1);
    // Extras when this function returns: the job's span, every task's span is its child.
    let span = tracing::info_span!(
        "job",
        otel.name = %format!("job {}", job.0),
        job = %job_id,
        images = spec.images.len(),
    );
    // Connections made ahead of the plans; what is still connecting when the job returns
    // is dropped with it.
    let mut warming = tokio::task::JoinSet::new();
    let mut sigint = super::listen_for_ctrl_c(spec.interruptible);
    // Here (not on the fleet, whose workers may reach what this process cannot), every
    // destination registry is asked once before any work: one that does not answer fails
    // the job in seconds, one line each, rather than every image after its retries.
    if matches!(backend, Backend::Embedded) {
        let hosts: std::collections::BTreeSet<&str> = spec
            .images
            .iter()
            .filter_map(|j| match &j.dest.store {
                StoreRef::Registry { host } => Some(host.as_str()),
                _ => None,
            })
            .collect();
        // The sources are connected meanwhile (their probes are the first thing every plan
        // waits for), not waited for here: a source's failure is its images' to report.
        let sources: std::collections::BTreeSet<String> = spec
            .images
            .iter()
            .filter(|j| matches!(j.source.store, StoreRef::Registry { .. }))
            .filter_map(|j| crate::engine::pull_source::first_host(&j.name.source))
            .filter(|h| !hosts.contains(h.as_str()))
            .collect();
        for host in sources {
            let pool = pool.clone();
            warming.spawn(
                async move {
                    if let Err(e) = pool.registry(&host).await {
                        tracing::debug!(host, "connecting ahead of the plans: {e}");
                    }
                }
                .in_current_span(),
            );
        }
        let probes = hosts
            .iter()
            .map(|h| async { (*h, pool.registry(h).await.and_then(|r| r.reachable())) });
        let probed = futures_util::future::join_all(probes);
        // A silent destination takes its whole probe timeout: Ctrl-C ends the wait.
        let probed = tokio::select! {
            probed = probed => probed,
            _ = super::ctrl_c(&mut sigint) => {
                return Err(Error::new(
                    FailureClass::Network,
                    "interrupted while the destination was asked whether it answers; nothing was copied",
                ));
            }
        };
        let unreachable: Vec<(&str, Error)> = probed
            .into_iter()
            .filter_map(|(h, r)| r.err().map(|e| (h, e)))
            .collect();
        for (_, e) in &unreachable {
            console.error(None, &e.message);
        }
        if !unreachable.is_empty() {
            return Err(Error::new(
                FailureClass::Network,
                format!(
                    "the destination {} cannot be reached; nothing was copied",
                    unreachable
                        .iter()
                        .map(|(h, _)| *h)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
    }
    let bytes_moved = Arc::new(AtomicU64::new(0));
    let here = Here {
        pool: pool.clone(),
        cache: spec.cache.clone(),
        archive: spec.archive.clone(),
        sign_keys: spec.sign_keys.clone(),
        retry: spec.retry,
        task_timeout: spec.task_timeout,
        transfers: spec.transfers,
        bytes_moved: bytes_moved.clone(),
    };
    // On the fleet the destination is the workers' to reach (their credentials, their
    // in-flight caps): this process does not look at it first.
    let here_only = matches!(backend, Backend::Embedded);
    let mut bus = Bus::open(backend, &job_id, here, &console).await?;
    let queue = bus.queue.clone();
    let (plan_tx, mut plans) = mpsc::channel(64);
    let mut stream = planning(
        spec.images.clone(),
        Planning {
            pool: pool.clone(),
            cache: spec.cache.clone(),
            archive: spec.archive.as_ref().map(|(_, a)| a.clone()),
            filter: spec.filter.clone(),
            provenance: spec.provenance,
            signatures: spec.signatures,
            look_first: here_only
                && !spec.overwrite
                && spec.extras.sign_key.is_none()
                && !spec.extras.scan,
            planners: spec.planners,
            bound: spec.task_timeout,
            places: Some(Arc::new(tokio::sync::Semaphore::new(images_in_progress(
                spec.planners,
            )))),
        },
    );
    let planning = tokio::spawn(async move {
        while let Some(item) = stream.next().await {
            if plan_tx.send(item).await.is_err() {
                break;
            }
        }
    });

    let progress = console.start_progress(spec.images.len() as u64, bytes_moved);
    let mut extras = spec.extras.clone();
    // Whoever is told of completed images is told of their plans.
    extras.keep_plans |= spec.completions.is_some();
    let mut tracker = Tracker::new(job_id, queue.clone(), spec.images, spec.overwrite, extras);
    tracker.trace = hangar_shared::telemetry::traceparent(&span);
    let dest_label = spec.extras.dest_label.clone();
    let mut obs = LogObserver {
        dest_label: dest_label.as_deref(),
        saved_by_writer: spec.extras.streamed,
        console: &console,
        progress: &progress,
        watch: watch.clone(),
    };
    let (mut interrupted, mut heard_ctrl_c) = (false, false);
    let mut announced = 0;
    let mut in_flight = crate::engine::in_flight::InFlight::default();
    while !tracker.is_finished() {
        tokio::select! {
            Some((i, planned, place)) = plans.recv() => {
                tracker.hold_place(i, place);
                tracker.add_plan(i, planned, &mut obs).await?
            }
            news = bus.next() => match news {
                News::Event(event) => {
                    // Only tasks this job published, with their nonce: a stray or forged
                    // event must not grow or rewrite the view.
                    if tracker.expects(&event) {
                        in_flight.observe(&event);
                    }
                    tracker.on_event(event, &mut obs).await?;
                    if let Some(w) = &watch
                        && let Ok(mut snap) = w.lock()
                    {
                        snap.in_flight = in_flight.view(|t| tracker.describe(t));
                    }
                }
                News::Stopped { why, purge } => {
                    // No event can come any more: what is unfinished stays so.
                    console.error(None, &why);
                    tracker.abandon(&why, &mut obs);
                    interrupted |= purge;
                }
            },
            _ = super::ctrl_c(&mut sigint) => {
                console.warn(None, "Interrupted: stopping; unfinished images are reported failed");
                tracker.abandon("interrupted", &mut obs);
                interrupted = true;
                heard_ctrl_c = true;
            }
        }
        if let Some(tx) = &spec.completions {
            for (job, plan) in tracker.completed_since(announced) {
                // Nobody listening any more (the archive writer stopped): its error is
                // reported by whoever started it.
                let _ = tx.send((job.clone(), plan.clone()));
            }
            announced = tracker.completed_count();
        }
    }
    planning.abort();
    bus.close(interrupted).await;
    console.stop_progress(progress);
    let mut report = tracker.into_report(started.elapsed());
    report.interrupted = heard_ctrl_c;
    Ok(report)
}
