//! `mirror validate`: every selected source platform digest (and attestation, with
//! `--provenance`) must be in the destination's index at the tag. The source is read
//! here; the destination by a check task, here or on the fleet (`--nats`).

use std::sync::Arc;

use anyhow::{Context as _, Result};
use hangar_shared::error::FailureClass;
use hangar_shared::task::{Outcome, Verdict};

use crate::cli::MirrorArgs;
use crate::console::Console;
use crate::engine::per_image::PerImage;
use crate::engine::planner::NO_PLATFORM;
use crate::engine::tasks::{Bus, Here};
use crate::engine::work::{self, Work};
use crate::spec::{JobKind, JobSpec};

pub async fn run(args: &MirrorArgs, debug: bool, console: Arc<Console>) -> Result<()> {
    let prepared = super::mirror::prepare(args, debug, &console)?;
    let mut failed = super::report_rejected(&console, &prepared.rejected, "validate");
    let images = &prepared.images;
    let (mut passed, mut skipped) = (0, 0);
    let finished = |i: usize, result: work::ImageOutcomes| {
        let job = &images[i];
        let n = Some(job.entry.index);
        let verdict = result.map(|mut outcomes| outcomes.pop().map(|(_, o)| o));
        match verdict {
            Ok(None) => {
                skipped += 1;
                console.warn(
                    n,
                    format!("Skip validate image [{}]: {NO_PLATFORM}", job.name.source),
                )
            }
            Ok(Some(Outcome::Checked {
                verdict: Verdict::Pass { .. },
            })) => {
                passed += 1;
                console.info(
                    n,
                    format!("PASS: [{}] == [{}]", job.name.source, job.name.dest),
                )
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
                    format!(
                        "FAILED: [{}] != [{}]: {why}",
                        job.name.source, job.name.dest
                    ),
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
                        job.name.source, job.name.dest, e.message
                    ),
                );
                failed.push(job.entry.original.clone());
            }
        }
    };
    if let Some(server) = &args.fleet.remote.server {
        let Some(file) = &args.file else {
            anyhow::bail!("image list file not provided: use -f/--file");
        };
        let list = hangar_shared::local_file::read_text(file, hangar_shared::local_file::LIST)
            .with_context(|| format!("cannot read image list {}", file.display()))?;
        let mut spec = JobSpec::mirror(list, args);
        spec.kind = JobKind::MirrorValidate;
        let remote = super::remote::Remote {
            server,
            api: &args.fleet.remote.api,
            spec,
            outage: prepared
                .timeout
                .unwrap_or(std::time::Duration::from_secs(600)),
        };
        super::remote::replay(remote, images.len(), &console, finished).await?;
    } else {
        let (backend, pool) = super::backend(
            &args.fleet.bus,
            args.tls_verify,
            args.authfile.as_deref(),
            &args.rate,
        )
        .await?;
        let mut here = Here::new(pool.clone());
        here.task_timeout = prepared.timeout;
        // Tasks at once: as many as the images planned at once can give (three each).
        here.transfers = prepared.jobs.max(4) * 3;
        let job_id = crate::engine::job::new_job_id();
        let bus = Bus::open(backend, &job_id, here, &console).await?;
        let targets: Vec<work::Target> = images
            .iter()
            .map(|j| work::Target {
                image: j.name.source.clone(),
                dest: Some(j.name.dest.clone()),
                expect: None,
            })
            .collect();
        let how = PerImage {
            job: &job_id,
            planners: prepared.jobs.max(4),
            timeout: prepared.timeout,
            trace: hangar_shared::telemetry::traceparent(&tracing::Span::current()),
            interruptible: true,
        };
        let work = Work::Contains {
            provenance: args.provenance,
        };
        work::run(&work, &targets, &prepared.filter, &pool, bus, how, finished).await?;
    }
    super::verdicts(&console, passed, failed.len(), skipped);
    super::finish(&console, &args.failed, &failed, super::ListRun::Copy)
}
