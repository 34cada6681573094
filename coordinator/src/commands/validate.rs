//! `mirror validate`: every selected source platform digest (and attestation, with
//! `--provenance`) must be in the destination's index at the tag. The source is read
//! here; the destination by a check task, here or on the fleet (`--nats`).

use std::sync::Arc;

use anyhow::Result;
use hangar_shared::error::{Error, FailureClass};
use hangar_shared::manifest::PlatformFilter;
use hangar_shared::store::{RegistryPool, RepoRef};
use hangar_shared::task::{CheckTask, Outcome, Task, Verdict};

use crate::cli::MirrorArgs;
use crate::console::Console;
use crate::engine::planner::{self, ImageJob, NO_PLATFORM};
use crate::engine::tasks::{self, Bus, Here, PerImage};

/// The check of one image: its source's selection, to be found in the destination. An
/// image with no selected platform has nothing to check (a skip).
async fn plan(
    pool: &RegistryPool,
    job: &ImageJob,
    filter: &PlatformFilter,
    provenance: bool,
) -> Result<Vec<((), Task)>, Error> {
    let source = pool.registry(&job.source.registry).await?;
    let selection = planner::select(source.as_ref(), None, &job.source, filter, provenance).await?;
    if !selection.entries.iter().any(|e| !e.is_attestation()) {
        return Ok(Vec::new());
    }
    // A complete selection is the source index itself: the destination holding that very
    // index passes without looking further.
    let whole = selection
        .top
        .as_ref()
        .filter(|_| selection.complete)
        .map(|t| t.digest.clone());
    let check = CheckTask::Contains {
        store: RepoRef::registry(&job.dest.registry, &job.dest.repository()),
        reference: job.dest.manifest_reference(),
        expect: selection.entries,
        whole,
    };
    Ok(vec![((), Task::Check(check))])
}

pub async fn run(args: &MirrorArgs, debug: bool, console: Arc<Console>) -> Result<()> {
    let prepared = super::mirror::prepare(args, debug, &console)?;
    let (backend, pool) = super::backend(
        &args.fleet.bus,
        args.tls_verify,
        args.authfile.as_deref(),
        &args.rate,
    )
    .await?;
    let mut here = Here::new(pool.clone());
    here.task_timeout = prepared.timeout;
    let job_id = crate::engine::job::new_job_id();
    let bus = Bus::open(backend, &job_id, here, &console).await?;
    let filter = prepared.filter.clone();
    let mut failed = super::report_rejected(&console, &prepared.rejected, "validate");
    let (images, pool, filter) = (&prepared.images, &pool, &filter);
    let (mut passed, mut skipped) = (0, 0);
    tasks::per_image(
        bus,
        PerImage {
            job: &job_id,
            planners: prepared.jobs.max(4),
            timeout: prepared.timeout,
            trace: hangar_shared::telemetry::traceparent(&tracing::Span::current()),
            interruptible: true,
        },
        images.len(),
        |i| plan(pool, &images[i], filter, args.provenance),
        |i, result| {
            let job = &images[i];
            let n = Some(job.entry.index);
            let verdict = result.map(|mut outcomes| outcomes.pop().map(|(_, o)| o));
            match verdict {
                Ok(None) => {
                    skipped += 1;
                    console.warn(
                        n,
                        format!("Skip validate image [{}]: {NO_PLATFORM}", job.source),
                    )
                }
                Ok(Some(Outcome::Checked {
                    verdict: Verdict::Pass { .. },
                })) => {
                    passed += 1;
                    console.info(n, format!("PASS: [{}] == [{}]", job.source, job.dest))
                }
                Ok(Some(other)) => {
                    let why = match other {
                        Outcome::Checked {
                            verdict: Verdict::Fail { why },
                        } => why,
                        other => format!("unexpected outcome {other:?}"),
                    };
                    console.error(
                        n,
                        format!("FAILED: [{}] != [{}]: {why}", job.source, job.dest),
                    );
                    failed.push(job.entry.original.clone());
                }
                Err(e) => {
                    let class = if e.class == FailureClass::NotFound {
                        "not found"
                    } else {
                        e.class.as_str()
                    };
                    console.error(
                        n,
                        format!(
                            "FAILED: [{}] => [{}]: {class}: {}",
                            job.source, job.dest, e.message
                        ),
                    );
                    failed.push(job.entry.original.clone());
                }
            }
        },
    )
    .await?;
    super::verdicts(&console, passed, failed.len(), skipped);
    super::finish(&console, &args.failed, &failed, "validate")
}
