//! `load`: archive → registry through the same pipeline as `mirror`, with the archive as
//! the source store (every blob a verified range of the zip, copied in parallel). The
//! destination index is built from the archive's index entry and merged with what the tag
//! already holds, so per-arch archives loaded one after another make one multi-arch image.

use std::collections::BTreeSet;
use std::sync::Arc;

use anyhow::{Context as _, Result, bail};
use hangar_shared::archive::{ArchiveImage, ArchiveReader};
use hangar_shared::imagelist::{ImageList, LineKind, ListEntry};
use hangar_shared::manifest::PlatformFilter;
use hangar_shared::retry::RetryPolicy;

use crate::cli::LoadArgs;
use crate::console::Console;
use crate::engine::job::{self, Backend, CopySpec};
use crate::engine::per_image::PerImage;
use crate::engine::planner::ImageJob;
use crate::engine::tasks::{Bus, Here};
use crate::engine::tracker::Extras;
use crate::engine::work::{self, Work};
use hangar_shared::task::{Outcome, Verdict};

struct Selected {
    jobs: Vec<ImageJob>,
    /// List lines refused before any work (naming images the archive does not hold, or
    /// that cannot be named at the destination), and why.
    failed: Vec<(String, String)>,
    filter: PlatformFilter,
    jobs_at_once: usize,
}

fn filter(args: &LoadArgs) -> PlatformFilter {
    args.platforms.filter()
}

/// The archive's images to load (all, or those of `-f`), with their destinations.
fn select(
    archive: &ArchiveReader,
    location: &str,
    args: &LoadArgs,
    dest_registry: &str,
    debug: bool,
    console: &Console,
) -> Result<Selected> {
    super::check_project("--project", &args.project)?;
    let some = |s: &str| (!s.trim().is_empty()).then(|| s.trim().to_owned());
    let mut wanted: Vec<(ListEntry, Option<&ArchiveImage>)> = Vec::new();
    let mut failed = Vec::new();
    match &args.file {
        Some(file) => {
            let list = ImageList::read(file)?;
            super::report_list_warnings(console, &list, &file.display().to_string());
            for entry in list.entries {
                let LineKind::Default(r) = &entry.kind else {
                    super::ignore_mirror_line(console, &entry, file, "load");
                    continue;
                };
                let r = r
                    .clone()
                    .with_registry(some(&args.source_registry).as_deref());
                let source = format!("{}/{}", r.registry, r.repository());
                let tag = r.tag.clone().unwrap_or_default();
                // The last match wins, as in Hangar.
                let found = archive
                    .index
                    .list
                    .iter()
                    .rev()
                    .find(|i| i.source == source && i.tag == tag);
                match found {
                    Some(i) => wanted.push((entry, Some(i))),
                    None => {
                        let why = format!("not found in archive {}", archive.label());
                        console.error(
                            Some(entry.index),
                            format!(
                                "Failed to load image [{}]: {why}",
                                crate::commands::quoted_line(&entry.original),
                            ),
                        );
                        failed.push((entry.original.clone(), why));
                    }
                }
            }
        }
        None => {
            for (n, image) in archive.index.list.iter().enumerate() {
                let entry = ListEntry {
                    index: n + 1,
                    line_no: n + 1,
                    original: image.name(),
                    kind: LineKind::Invalid(String::new()),
                };
                wanted.push((entry, Some(image)));
            }
        }
    }
    let mut jobs = Vec::new();
    for (mut entry, image) in wanted {
        let Some(image) = image else { continue };
        let named = image.reference().and_then(|source| {
            let dest = source
                .clone()
                .with_registry(Some(dest_registry))
                .with_project(some(&args.project).as_deref())?;
            Ok((source, dest))
        });
        let (source, dest) = match named {
            Ok(named) => named,
            Err(e) => {
                console.error(
                    Some(entry.index),
                    format!("Failed to load image [{}]: {e}", image.name()),
                );
                failed.push((entry.original.clone(), e.to_string()));
                continue;
            }
        };
        if let LineKind::Invalid(_) = entry.kind {
            entry.kind = LineKind::Default(source.clone());
        }
        jobs.push(ImageJob::from_archive(
            entry,
            location,
            Arc::new(image.clone()),
            source,
            dest,
        ));
    }
    let at_once = super::clamp_jobs(args.jobs, debug, console);
    Ok(Selected {
        jobs_at_once: at_once.min(jobs.len()).max(1),
        jobs,
        failed,
        filter: filter(args),
    })
}

fn endpoints(args: &LoadArgs) -> Result<(String, String)> {
    let Some(source) = args.source.clone() else {
        bail!("the archive to load is required: use -s/--source");
    };
    let Some(dest) = args
        .destination
        .as_deref()
        .map(str::trim)
        .filter(|d| !d.is_empty())
    else {
        bail!("the destination registry is required: use -d/--destination");
    };
    Ok((source, dest.trim_end_matches('/').to_owned()))
}

pub async fn load(
    args: &LoadArgs,
    debug: bool,
    console: Arc<Console>,
    watch: Option<&super::save::Watch>,
) -> Result<()> {
    // Through `serve`, the coordinator opens the archive (inside its --archive-root) and
    // its fleet loads it: nothing of it is read here.
    if let Some(server) = &args.fleet.remote.server {
        let list = match &args.file {
            Some(f) => hangar_shared::local_file::read_text(f, hangar_shared::local_file::LIST)
                .with_context(|| format!("cannot read image list {}", f.display()))?,
            None => String::new(),
        };
        let outage = humantime::parse_duration(&args.timeout)
            .map_err(|e| anyhow::anyhow!("invalid --timeout {:?}: {e}", args.timeout))?;
        let remote = super::remote::Remote {
            server,
            api: &args.fleet.remote.api,
            spec: crate::spec::JobSpec::load(list, args),
            outage: if outage.is_zero() {
                std::time::Duration::from_secs(600)
            } else {
                outage
            },
        };
        return super::remote::copy_job(remote, &args.failed, &console).await;
    }
    let (location, dest) = endpoints(args)?;
    let archive = Arc::new(ArchiveReader::open(&location).await?);
    let selected = select(&archive, &location, args, &dest, debug, &console)?;
    if watch.is_none() {
        args.platforms.log(&console);
    }
    super::save::watch_begins(watch, selected.jobs.len(), &selected.failed);
    let projects: BTreeSet<String> = selected
        .jobs
        .iter()
        .map(|j| j.name.dest.project.clone())
        .collect();
    super::harbor::ensure_projects(
        &dest,
        &projects,
        args.access.tls_verify,
        args.access.authfile.as_deref(),
        &console,
    )
    .await;
    let timeout = humantime::parse_duration(&args.timeout)
        .map_err(|e| anyhow::anyhow!("invalid --timeout {:?}: {e}", args.timeout))?;
    let spec = CopySpec {
        planners: selected.jobs_at_once,
        transfers: args
            .transfers
            .unwrap_or((selected.jobs_at_once * 2).max(3))
            .max(1),
        images: selected.jobs,
        filter: selected.filter,
        provenance: args.provenance,
        overwrite: args.overwrite,
        task_timeout: (!timeout.is_zero()).then_some(timeout),
        retry: RetryPolicy::default(),
        // Under `serve` (a watched job) signals are the service's.
        interruptible: watch.is_none(),
        cache: None,
        extras: Extras {
            sign_key: args.sign_key.clone(),
            ..Default::default()
        },
        archive: Some((location.clone(), archive.clone())),
        completions: None,
        // Archives carry no signatures: Hangar's save drops them.
        signatures: false,
        sign_keys: Default::default(),
    };
    console.info(
        None,
        format!(
            "Loading {} images from {location} into {dest} with {} transfers at once",
            spec.images.len(),
            spec.transfers
        ),
    );
    // On the fleet the workers read the archive themselves, by range, with their own
    // credentials: it must be where they can reach it (s3://, or a path they all share
    // inside their --archive-root).
    let fleet = match &args.fleet.bus.nats {
        Some(_) => {
            if !location.starts_with("s3://") {
                console.warn(
                    None,
                    format!(
                        "{location} is read by the workers: it must be at this path on every worker, inside its --archive-root"
                    ),
                );
            }
            Some(super::mirror::fleet_client(&args.fleet.bus).await?)
        }
        None => None,
    };
    let pool = Arc::new(
        super::limited_pool(
            args.access.tls_verify,
            args.access.authfile.as_deref(),
            &args.rate,
            fleet.as_ref(),
        )
        .await?,
    );
    // Under `serve`, the job's own id, so that its cancel purges this run's queued tasks;
    // a fresh run, so that a resumed job's tasks are not taken for the earlier run's.
    let (id, run) = match watch.and_then(|w| w.lock().ok().map(|s| s.id.clone())) {
        Some(served) => (served, job::new_job_id()),
        None => (job::new_job_id(), "1".to_owned()),
    };
    let backend = match fleet {
        Some(client) => Backend::Fleet(client),
        None => Backend::Embedded,
    };
    let mut spec = spec;
    if let Backend::Embedded = backend {
        spec.sign_keys = super::sign::keys_here(
            args.sign_key.as_deref(),
            args.sign_passphrase_file.as_deref(),
        )?;
    }
    let mut failed: Vec<String> = selected.failed.into_iter().map(|(line, _)| line).collect();
    let every_line: Vec<String> = failed
        .iter()
        .cloned()
        .chain(spec.images.iter().map(|j| j.entry.original.clone()))
        .collect();
    let report = job::run_copy(
        spec,
        pool,
        console.clone(),
        backend,
        (&id, &run),
        watch.cloned(),
    )
    .await
    .map_err(|e| super::all_failed(&console, &args.failed, &every_line, e, super::ListRun::Copy))?;
    let more = super::summarise(&console, &report, "loaded", failed.len());
    failed.extend(more);
    super::finish(&console, &args.failed, &failed, super::ListRun::Copy)
}

/// What `load validate` checks: the archive's images (all, or those of `-f`) with their
/// destinations, each with what its copy should hold (the archive's own entries: nothing
/// but the destination is read).
pub(crate) struct Checks {
    pub jobs: Vec<ImageJob>,
    pub targets: Vec<work::Target>,
    /// List lines refused before any work (naming images the archive does not hold), and
    /// why.
    pub failed: Vec<(String, String)>,
    pub filter: PlatformFilter,
    pub planners: usize,
    pub timeout: Option<std::time::Duration>,
}

pub(crate) fn checks(
    archive: &ArchiveReader,
    args: &LoadArgs,
    debug: bool,
    console: &Console,
) -> Result<Checks> {
    let (location, dest) = endpoints(args)?;
    let selected = select(archive, &location, args, &dest, debug, console)?;
    let timeout = humantime::parse_duration(&args.timeout)
        .map_err(|e| anyhow::anyhow!("invalid --timeout {:?}: {e}", args.timeout))?;
    let (filter, provenance) = (&selected.filter, args.provenance);
    let targets = selected
        .jobs
        .iter()
        .map(|job| work::Target {
            image: job.name.source.clone(),
            dest: Some(job.name.dest.clone()),
            expect: Some(
                job.archived
                    .as_ref()
                    .map(|image| {
                        image
                            .selected(filter, provenance)
                            .into_iter()
                            .map(|s| s.descriptor(archive.blob_size(&s.digest).unwrap_or(0)))
                            .collect()
                    })
                    .unwrap_or_default(),
            ),
        })
        .collect();
    Ok(Checks {
        targets,
        planners: selected.jobs_at_once.max(4),
        filter: selected.filter,
        failed: selected.failed,
        jobs: selected.jobs,
        timeout: (!timeout.is_zero()).then_some(timeout),
    })
}

/// `load validate`'s verdicts, as they come.
#[derive(Default)]
struct Tally {
    passed: usize,
    failed: Vec<String>,
}

impl Tally {
    /// One image's end: `n` its `[IMG:N]`, `line` its list line.
    fn record(
        &mut self,
        console: &Console,
        (n, source, dest, line): (usize, &str, &str, &str),
        result: work::ImageOutcomes,
    ) {
        let n = Some(n);
        match result.map(|mut o| o.pop().map(|(_, o)| o)) {
            Ok(Some(Outcome::Checked {
                verdict: Verdict::Pass { .. },
            })) => {
                self.passed += 1;
                console.info(n, format!("PASS: [{source}]"))
            }
            Ok(other) => {
                let why = match other {
                    Some(Outcome::Checked {
                        verdict: Verdict::Fail { why },
                    }) => why,
                    None => "the archive selects nothing of it".to_owned(),
                    Some(other) => format!("unexpected outcome {other:?}"),
                };
                console.error(n, format!("FAILED: [{source}] != [{dest}]: {why}"));
                self.failed.push(line.to_owned());
            }
            Err(e) => {
                console.error(
                    n,
                    format!("FAILED: [{source}] => [{dest}]: {}: {}", e.class, e.message),
                );
                self.failed.push(line.to_owned());
            }
        }
    }
}

/// Every image the archive holds (or `-f` selects) must be in the destination's index at
/// its tag (every archived platform digest passing `--arch/--os`, and each kept attestation
/// with `--provenance`): a check task per image, here, on the fleet (`--nats`), or on a
/// coordinator's fleet (`--server`: it reads the archive, inside its `--archive-root`).
pub async fn validate(args: &LoadArgs, debug: bool, console: Arc<Console>) -> Result<()> {
    let mut tally = Tally::default();
    if let Some(server) = &args.fleet.remote.server {
        let list = match &args.file {
            Some(f) => hangar_shared::local_file::read_text(f, hangar_shared::local_file::LIST)
                .with_context(|| format!("cannot read image list {}", f.display()))?,
            None => String::new(),
        };
        let mut spec = crate::spec::JobSpec::load(list, args);
        spec.kind = crate::spec::JobKind::LoadValidate;
        let outage = humantime::parse_duration(&args.timeout)
            .map_err(|e| anyhow::anyhow!("invalid --timeout {:?}: {e}", args.timeout))?;
        let outage = if outage.is_zero() {
            std::time::Duration::from_secs(600)
        } else {
            outage
        };
        let (snap, reports) =
            super::remote::run_images((server, &args.fleet.remote.api), &spec, outage, &console)
                .await?;
        // Lines refused before any work (the archive does not hold them) are in the job's
        // failed lines without an image of their own.
        let reported: std::collections::HashSet<String> = reports
            .iter()
            .filter_map(|r| r.image.as_ref().map(|i| i.line.clone()))
            .collect();
        for line in snap.failed_lines.iter().filter(|l| !reported.contains(*l)) {
            console.error(
                None,
                format!("FAILED: [{line}]: not loaded from the archive"),
            );
            tally.failed.push(line.clone());
        }
        for report in reports {
            let Some(image) = report.image.clone() else {
                bail!(
                    "job {}: the coordinator's results do not name their images",
                    snap.id
                );
            };
            let dest = image.dest.clone().unwrap_or_default();
            let names = (
                image.entry,
                image.source.as_str(),
                dest.as_str(),
                image.line.as_str(),
            );
            tally.record(&console, names, report.outcomes());
        }
    } else {
        let (location, _) = endpoints(args)?;
        let archive = ArchiveReader::open(&location).await?;
        let checks = checks(&archive, args, debug, &console)?;
        args.platforms.log(&console);
        tally
            .failed
            .extend(checks.failed.iter().map(|(line, _)| line.clone()));
        let (backend, pool) = super::backend(
            &args.fleet.bus,
            args.access.tls_verify,
            args.access.authfile.as_deref(),
            &args.rate,
        )
        .await?;
        let mut here = Here::new(pool.clone());
        here.task_timeout = checks.timeout;
        // Tasks at once: as many as the images planned at once can give (three each).
        here.transfers = checks.planners * 3;
        let job_id = job::new_job_id();
        let bus = Bus::open(backend, &job_id, here, &console).await?;
        let jobs = &checks.jobs;
        let finished = |i: usize, result: work::ImageOutcomes| {
            let job = &jobs[i];
            let (source, dest) = (job.name.source.to_string(), job.name.dest.to_string());
            let names = (
                job.entry.index,
                source.as_str(),
                dest.as_str(),
                job.entry.original.as_str(),
            );
            tally.record(&console, names, result);
        };
        let how = PerImage {
            job: &job_id,
            planners: checks.planners,
            timeout: checks.timeout,
            trace: hangar_shared::telemetry::traceparent(&tracing::Span::current()),
            interruptible: true,
        };
        let work = Work::Contains {
            provenance: args.provenance,
        };
        work::run(
            &work,
            &checks.targets,
            &checks.filter,
            &pool,
            bus,
            how,
            finished,
        )
        .await?;
    }
    super::verdicts(&console, tally.passed, tally.failed.len(), 0);
    super::finish(
        &console,
        &args.failed,
        &tally.failed,
        super::ListRun::Validate,
    )
}
