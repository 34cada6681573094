//! `save` and `sync`'s gathering: the list's images through the mirror pipeline into the
//! blob cache (a temporary one when the user names none), the archive written as they
//! complete where it is written here (`save_writer`), and what the writer left out turned
//! into failures.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Result, bail};
use hangar_shared::archive::writer::Written;
use hangar_shared::archive::{ArchiveImage, ArchiveReader};
use hangar_shared::cache::BlobCache;
use hangar_shared::imagelist::{ImageList, LineKind};

use super::save::{Watch, watch_begins};
use crate::cli::{ArchiveListArgs, MirrorArgs};
use crate::console::Console;
use crate::engine::job::{self, Backend};
use crate::engine::planner::{self, ImageJob};
use crate::engine::tracker::ImageResult;

/// A cache directory that exists for one command and is removed with it.
pub(super) struct TempCache(PathBuf);

impl Drop for TempCache {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn mirror_args(list: &ArchiveListArgs) -> MirrorArgs {
    MirrorArgs {
        file: list.file.clone(),
        platforms: list.platforms.clone(),
        source: list.source.clone(),
        jobs: list.jobs,
        timeout: list.timeout.clone(),
        provenance: list.provenance,
        tls_verify: list.access.tls_verify,
        authfile: list.access.authfile.clone(),
        cache: list.cache.clone(),
        transfers: list.transfers,
        into_archive: true,
        ..Default::default()
    }
}

/// The list's default-format lines as jobs (mirror-format lines are skipped, as in Hangar).
pub(crate) fn read_jobs(
    list: &ArchiveListArgs,
    debug: bool,
    console: &Console,
) -> Result<crate::commands::mirror::Prepared> {
    let Some(file) = &list.file else {
        bail!("image list file not provided: use -f/--file");
    };
    let mut parsed = ImageList::read(file)?;
    parsed.entries.retain(|e| {
        let mirror_format = matches!(e.kind, LineKind::Mirror { .. });
        if mirror_format {
            crate::commands::ignore_mirror_line(console, e, file, "an archive");
        }
        !mirror_format
    });
    super::mirror::prepare_list(
        parsed,
        &file.display().to_string(),
        &mirror_args(list),
        debug,
        console,
    )
}

pub(super) struct Gathered {
    pub(super) images: Vec<ArchiveImage>,
    pub(super) failed: Vec<String>,
    pub(super) cache: Arc<BlobCache>,
    pub(super) fleet: Option<async_nats::Client>,
    pub(super) job: String,
    /// The archive, when it was written as the images completed.
    pub(super) written: Option<Written>,
    /// A Ctrl-C stopped the copy.
    pub(super) interrupted: bool,
    _temp: Option<TempCache>,
}

/// When the archive is written.
#[derive(Clone, Copy)]
pub(super) enum Writing<'a> {
    /// Image by image as they complete, after `base`'s entries (one archive, written here).
    AsTheyComplete(Option<&'a Arc<ArchiveReader>>),
    /// Once everything is gathered.
    AtTheEnd,
}

/// Copies the list's images into the blob cache; returns their index entries in the order
/// they finished.
pub(super) async fn gather(
    list: &ArchiveListArgs,
    archive: &str,
    writing: Writing<'_>,
    debug: bool,
    console: Arc<Console>,
    watch: Option<&Watch>,
    failed: FailedList<'_>,
) -> Result<Gathered> {
    let margs = mirror_args(list);
    let fleet = match &list.fleet.bus.nats {
        Some(_) if list.cache.is_none() => {
            bail!("on the fleet (--nats), --cache must name the workers' shared cache (s3://…)")
        }
        Some(_) => Some(super::mirror::fleet_client(&list.fleet.bus).await?),
        None => None,
    };
    let mut prepared = read_jobs(list, debug, &console)?;
    let temp = match &prepared.cache {
        Some(_) => None,
        None => {
            let temp_root = std::env::temp_dir();
            let parent = match archive.starts_with("s3://") {
                true => temp_root.as_path(),
                false => Path::new(archive)
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(Path::new(".")),
            };
            hangar_shared::archive::writer::remove_stale(parent, ".hangar-cache-");
            let dir = parent.join(format!(".hangar-cache-{}", std::process::id()));
            prepared.cache = Some(Arc::new(BlobCache::for_run(&dir.display().to_string())?));
            Some(TempCache(dir))
        }
    };
    let Some(cache) = prepared.cache.clone() else {
        bail!("no blob cache");
    };
    let scan_db = match &list.scan_db {
        Some(location) => Some(
            super::scan_db::open_db(
                location,
                list.access.tls_verify,
                list.access.authfile.as_deref(),
                Some("30d"),
                &console,
            )
            .await?,
        ),
        None => None,
    };
    let (mut spec, rejected) = super::mirror::spec(prepared, &margs);
    // Under `serve` (a watched job) signals are the service's.
    spec.interruptible = watch.is_none();
    spec.images = spec.images.into_iter().map(ImageJob::into_cache).collect();
    if margs.transfers.is_none() {
        // The archive is written one entry at a time: more transfers than images at once
        // only hold more buffers (measured: the same wall time from 5 to 60 transfers).
        spec.transfers = spec.planners.max(3);
    }
    let refused: Vec<(String, String)> = rejected
        .iter()
        .map(|(e, why)| (e.original.clone(), why.clone()))
        .collect();
    watch_begins(watch, spec.images.len(), &refused);
    spec.extras.scan = scan_db.is_some();
    // Archives never carry signatures (Hangar's save removes them).
    spec.signatures = false;
    spec.extras.dest_label = Some(archive.to_owned());
    // The archive's index is made of the copied images' plans.
    spec.extras.keep_plans = true;
    let pool = Arc::new(
        super::limited_pool(
            list.access.tls_verify,
            list.access.authfile.as_deref(),
            &list.rate,
            fleet.as_ref(),
        )
        .await?,
    );
    console.info(
        None,
        format!(
            "Saving {} images into {} with {} transfers at once",
            spec.images.len(),
            archive,
            spec.transfers
        ),
    );
    // Under `serve`, the job's own id, so that its cancel purges this run's queued tasks;
    // a fresh run, so that a resumed job's tasks are not taken for the earlier run's.
    let (id, run) = match watch.and_then(|w| w.lock().ok().map(|s| s.id.clone())) {
        Some(served) => (served, job::new_job_id()),
        None => (job::new_job_id(), "1".to_owned()),
    };
    let backend = match &fleet {
        Some(client) => Backend::Fleet(client.clone()),
        None => Backend::Embedded,
    };
    let writer = match (writing, &backend) {
        (Writing::AsTheyComplete(base), Backend::Embedded) => {
            // Without a cache of the user's (and nothing to scan from one), layers go from
            // their source straight into the zip: written to disk once, not twice.
            let staging = match (&temp, &scan_db) {
                (Some(t), None) => Some(t.0.clone()),
                _ => None,
            };
            let to = super::save_writer::Archive {
                location: archive,
                base: base.cloned(),
                cache: cache.clone(),
                console: console.clone(),
            };
            Some(super::save_writer::start(to, staging, pool.clone(), &mut spec).await?)
        }
        _ => None,
    };
    let report = job::run_copy(
        spec,
        pool,
        console.clone(),
        backend,
        (&id, &run),
        watch.cloned(),
    )
    .await?;
    // The scan report first: a save that cannot write it leaves no archive, as before the
    // archive was written image by image (dropped unfinished, the writer abandons it).
    if let Some(db) = &scan_db {
        super::scan::report_job(&report, db, &list.scan_report, true, &console)?;
    }
    // The job is over, so is the list of completed images: the archive can be closed.
    let mut report = report;
    let written = match writer {
        Some(writer) => match writer.finish().await {
            Ok((written, unsaved)) => {
                leave_out(&mut report, unsaved, watch);
                Some(written)
            }
            // No archive: no image of the list was saved (unless a damaged cache entry is
            // fetched again, and the run with it).
            Err(e) => {
                if failed.retry_left && damaged_cache(&e) {
                    return Err(e);
                }
                console.error(
                    None,
                    format!("No archive was written to {archive}: no image of the list is saved"),
                );
                // Every line but those skipped (no platform to save: not a failure).
                let mut all: Vec<String> =
                    rejected.iter().map(|(e, _)| e.original.clone()).collect();
                all.extend(
                    report
                        .results
                        .iter()
                        .filter(|(_, r)| !matches!(r, ImageResult::Skipped(_)))
                        .map(|(job, _)| job.entry.original.clone()),
                );
                if let Some(mut snap) = watch.and_then(|w| w.lock().ok()) {
                    snap.copied = 0;
                    snap.present = 0;
                    snap.clear_failed();
                    let why = format!("no archive was written: {e:#}");
                    for line in &all {
                        snap.image_failed(line, Some(&why));
                    }
                }
                if let Err(w) = super::write_failed(&console, failed.path, &all, failed.run) {
                    console.error(None, format!("{w:#}"));
                }
                return Err(e);
            }
        },
        None => None,
    };
    let mut failed = super::report_rejected(&console, &rejected, "save");
    let more = super::summarise(&console, &report, "saved", failed.len());
    failed.extend(more);
    let images = report
        .completed
        .iter()
        .map(|(job, plan)| planner::archive_image(job, plan))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Gathered {
        images,
        failed,
        cache,
        fleet,
        job: id,
        written,
        interrupted: report.interrupted,
        _temp: temp,
    })
}

/// Where a run's failed list goes, and whether a damaged cache entry may still be fetched
/// again (the run is then made again, and writes its own list).
pub(super) struct FailedList<'a> {
    pub(super) path: &'a Path,
    pub(super) retry_left: bool,
    /// Save or sync: how the list is named in the log.
    pub(super) run: super::ListRun,
}

/// Images the archive's writer left out (a blob it could not read) are failures, not
/// completions: in the report, and in a watched job's counts.
fn leave_out(
    report: &mut job::JobReport,
    unsaved: super::save_writer::Unsaved,
    watch: Option<&Watch>,
) {
    for (n, e) in unsaved {
        report.completed.retain(|(job, _)| job.entry.index != n);
        for (job, result) in &mut report.results {
            if job.entry.index != n {
                continue;
            }
            let present = matches!(
                result,
                ImageResult::Copied {
                    already_present: true,
                    ..
                }
            );
            *result = ImageResult::Failed(e.clone());
            if let Some(mut snap) = watch.and_then(|w| w.lock().ok()) {
                match present {
                    true => snap.present = snap.present.saturating_sub(1),
                    false => snap.copied = snap.copied.saturating_sub(1),
                }
                snap.image_failed(
                    &job.entry.original,
                    Some(&crate::engine::job::failure_text(&e)),
                );
            }
        }
    }
}

/// A cached blob failed its CRC on the way into the archive; the cache evicted it, so one
/// more gathering fetches it again.
pub(super) fn damaged_cache(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<hangar_shared::Error>()
            .is_some_and(|e| e.class == hangar_shared::FailureClass::CacheDamaged)
    })
}
