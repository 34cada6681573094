//! `save validate` / `sync validate`: every selected source platform of the list must be
//! in the archive. A check task per image reads the archive here, on the fleet's workers
//! (`--nats`; the archive must be where they can read it, inside their `--archive-root`),
//! or on a coordinator's fleet (`--server`; inside its `--archive-root`).

use std::sync::Arc;

use anyhow::{Context as _, Result};
use hangar_shared::archive::ArchiveReader;
use hangar_shared::store::StoreRef;
use hangar_shared::task::{Outcome, Verdict};

use super::save::{list_text, read_jobs};
use crate::cli::ArchiveListArgs;
use crate::console::Console;
use crate::engine::per_image::PerImage;
use crate::engine::planner;
use crate::engine::tasks::{Bus, Here};
use crate::engine::work::{self, Work};
use crate::spec::{JobKind, JobSpec};

pub async fn run(
    list: &ArchiveListArgs,
    archive: &str,
    default_failed: &str,
    debug: bool,
    console: Arc<Console>,
) -> Result<()> {
    let prepared = read_jobs(list, debug, &console)?;
    list.platforms.log(&console);
    let mut failed = super::report_rejected(&console, &prepared.rejected, "validate");
    let label = archive.to_owned();
    let (mut passed, mut skipped) = (0, 0);
    let images = &prepared.images;
    let finished = |i: usize, result: work::ImageOutcomes| {
        let job = &images[i];
        let n = Some(job.entry.index);
        match result.map(|mut o| o.pop().map(|(_, o)| o)) {
            Ok(None) => {
                skipped += 1;
                console.warn(
                    n,
                    format!(
                        "Skip validate image [{}]: {}",
                        job.name.source,
                        planner::NO_PLATFORM
                    ),
                )
            }
            Ok(Some(Outcome::Checked {
                verdict: Verdict::Pass { .. },
            })) => {
                passed += 1;
                console.info(n, format!("PASS: [{}]", job.name.source));
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
                    format!("FAILED: [{}] != [{label}]: {why}", job.name.source),
                );
                failed.push(job.entry.original.clone());
            }
            Err(e) => {
                console.error(
                    n,
                    format!("FAILED: [{}]: {}: {}", job.name.source, e.class, e.message),
                );
                failed.push(job.entry.original.clone());
            }
        }
    };
    if let Some(server) = &list.fleet.remote.server {
        // The coordinator's workers read the archive, inside its --archive-root.
        let kind = match default_failed {
            "sync-failed.txt" => JobKind::SyncValidate,
            _ => JobKind::SaveValidate,
        };
        let spec = JobSpec::into_archive(kind, list_text(list)?, list, archive);
        let outage = humantime::parse_duration(&list.timeout)
            .with_context(|| format!("invalid --timeout {:?}", list.timeout))?;
        let remote = super::remote::Remote {
            server,
            api: &list.fleet.remote.api,
            spec,
            outage: if outage.is_zero() {
                std::time::Duration::from_secs(600)
            } else {
                outage
            },
        };
        super::remote::replay(remote, images.len(), &console, finished).await?;
    } else {
        // Opened here: an archive that cannot be read fails at once, naming it.
        let reader = Arc::new(ArchiveReader::open(archive).await?);
        let (backend, pool) = super::backend(
            &list.fleet.bus,
            list.access.tls_verify,
            list.access.authfile.as_deref(),
            &list.rate,
        )
        .await?;
        let mut here = Here::new(pool.clone());
        here.task_timeout = prepared.timeout;
        // Tasks at once: as many as the images planned at once can give (three each).
        here.transfers = prepared.jobs.max(4) * 3;
        here.archive = Some((archive.to_owned(), reader));
        let job_id = crate::engine::job::new_job_id();
        let bus = Bus::open(backend, &job_id, here, &console).await?;
        let targets: Vec<work::Target> = images
            .iter()
            .map(|j| work::Target::at(j.name.source.clone()))
            .collect();
        let how = PerImage {
            job: &job_id,
            planners: prepared.jobs.max(4),
            timeout: prepared.timeout,
            trace: hangar_shared::telemetry::traceparent(&tracing::Span::current()),
            interruptible: true,
        };
        let work = Work::Holds {
            store: StoreRef::Archive {
                location: archive.to_owned(),
            },
            provenance: list.provenance,
        };
        work::run(&work, &targets, &prepared.filter, &pool, bus, how, finished).await?;
    }
    let failed_file = list.failed.clone().unwrap_or_else(|| default_failed.into());
    super::verdicts(&console, passed, failed.len(), skipped);
    super::finish(&console, &failed_file, &failed, super::ListRun::Validate)
}
