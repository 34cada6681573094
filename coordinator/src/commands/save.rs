//! `save` and `sync`: the list's images are gathered into the blob cache by the same
//! pipeline as `mirror` (its destination is the cache), and the assembler writes the
//! archive from the cache: image by image as they complete, while later ones are still
//! being fetched, when it writes one archive here (`save_writer`; then, without a cache of
//! the user's, layers are streamed from their source into the zip instead of gathered
//! first); once all are gathered when it writes volumes (their split needs every size) or
//! runs on a worker of the fleet. `sync` is the same write with the old archive's entries first,
//! into a new file renamed over the old one: killing it at any moment leaves the old
//! archive or the new one, never a broken zip (unlike Hangar, cnrancher/hangar#152).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::engine::planner::ImageJob;
use anyhow::{Context as _, Result, bail};
use hangar_shared::archive::writer::{Written, plan_volumes, volume_path, write_archive};
use hangar_shared::archive::{ArchiveImage, ArchiveReader};
use hangar_shared::cache::BlobCache;
use hangar_shared::digest::Digest;
use hangar_shared::imagelist::{ImageList, LineKind};
use hangar_shared::task::{AssembleTask, Outcome, Task};
use indicatif::HumanBytes;

use crate::cli::{ArchiveListArgs, MirrorArgs, SaveArgs, SyncArgs};
use crate::console::Console;
use crate::engine::job::{self, Backend};
use crate::engine::per_image::{self, PerImage};
use crate::engine::planner;
use crate::engine::tasks::{Bus, Here};
use crate::engine::tracker::ImageResult;
use crate::spec::{JobKind, JobSpec};

/// A cache directory that exists for one command and is removed with it.
struct TempCache(PathBuf);

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
            console.warn(
                Some(e.index),
                format!(
                    "Skip image list line {:?} ({}:{}): archives take the default list format only",
                    e.original,
                    file.display(),
                    e.line_no
                ),
            );
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

struct Gathered {
    images: Vec<ArchiveImage>,
    failed: Vec<String>,
    cache: Arc<BlobCache>,
    fleet: Option<async_nats::Client>,
    job: String,
    /// The archive, when it was written as the images completed.
    written: Option<Written>,
    _temp: Option<TempCache>,
}

/// When the archive is written.
#[derive(Clone, Copy)]
enum Writing<'a> {
    /// Image by image as they complete, after `base`'s entries (one archive, written here).
    AsTheyComplete(Option<&'a Arc<ArchiveReader>>),
    /// Once everything is gathered.
    AtTheEnd,
}

/// Copies the list's images into the blob cache; returns their index entries in the order
/// they finished.
async fn gather(
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
            prepared.cache = Some(Arc::new(BlobCache::open(&dir.display().to_string())?));
            Some(TempCache(dir))
        }
    };
    let Some(cache) = prepared.cache.clone() else {
        bail!("no blob cache");
    };
    let scan_db = match &list.scan_db {
        Some(location) => Some(
            super::scan::open_db(
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
    watch_begins(
        watch,
        spec.images.len(),
        rejected.iter().map(|(e, _)| e.original.clone()).collect(),
    );
    spec.extras.scan = scan_db.is_some();
    // Archives never carry signatures (Hangar's save removes them).
    spec.signatures = false;
    spec.extras.dest_label = Some(archive.to_owned());
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
                    snap.failed = all.len();
                    snap.failed_lines = all.clone();
                }
                if let Err(w) = super::write_failed(&console, failed.path, &all) {
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
        _temp: temp,
    })
}

/// Where a run's failed list goes, and whether a damaged cache entry may still be fetched
/// again (the run is then made again, and writes its own list).
struct FailedList<'a> {
    path: &'a Path,
    retry_left: bool,
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
                snap.failed += 1;
                snap.failed_lines.push(job.entry.original.clone());
            }
        }
    }
}

/// Writes one archive: here, or on the fleet by a worker's assemble task.
async fn assemble(
    console: &Console,
    g: &Gathered,
    n: usize,
    location: &str,
    base: Option<&Arc<ArchiveReader>>,
    images: &[ArchiveImage],
) -> Result<Written> {
    let Some(client) = &g.fleet else {
        return Ok(write_archive(location, base.cloned(), images, g.cache.clone()).await?);
    };
    let key = format!("{}/{n}.json", g.job);
    g.cache.put_doc(&key, serde_json::to_vec(images)?).await?;
    let job_id = format!("{}.a{n}", g.job);
    // Followed by the engine like any task: the archive's end is its one image's end.
    let bus = Bus::open(
        Backend::Fleet(client.clone()),
        &job_id,
        Here::new(Arc::new(super::pool(None, None))),
        console,
    )
    .await?;
    let task = Task::Assemble(AssembleTask {
        output: location.to_owned(),
        // The worker opens the archive itself, by its location.
        base: base.map(|b| b.label().to_owned()),
        images: key,
    });
    let how = PerImage {
        job: &job_id,
        planners: 1,
        timeout: None,
        trace: hangar_shared::telemetry::traceparent(&tracing::Span::current()),
        interruptible: true,
    };
    let mut ended = None;
    per_image::per_image(
        bus,
        how,
        1,
        |_| {
            let task = task.clone();
            async move { Ok(vec![((), task)]) }
        },
        |_, r| ended = Some(r),
    )
    .await?;
    match ended {
        Some(Ok(mut outcomes)) => match outcomes.pop() {
            Some((
                (),
                Outcome::Assembled {
                    images,
                    entries,
                    bytes,
                },
            )) => Ok(Written {
                path: location.into(),
                images,
                entries,
                bytes,
            }),
            other => bail!("writing {location} on the fleet: unexpected outcome {other:?}"),
        },
        // Typed, so a damaged cache entry is told apart from other failures.
        Some(Err(e)) => {
            let class = e.class;
            Err(anyhow::Error::new(e).context(format!("writing {location} on the fleet ({class})")))
        }
        None => bail!("the fleet's events ended before {location} was written"),
    }
}

/// A cached blob failed its CRC on the way into the archive; the cache evicted it, so one
/// more gathering fetches it again.
fn damaged_cache(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<hangar_shared::Error>()
            .is_some_and(|e| e.class == hangar_shared::FailureClass::CacheDamaged)
    })
}

/// The list's text, for a job specification.
pub(super) fn list_text(list: &ArchiveListArgs) -> Result<String> {
    let Some(file) = &list.file else {
        bail!("image list file not provided: use -f/--file");
    };
    hangar_shared::local_file::read_text(file, hangar_shared::local_file::LIST)
        .with_context(|| format!("cannot read image list {}", file.display()))
}

/// Sends a save or sync to the coordinator (`--server`): its fleet gathers and writes the
/// archive, which must be inside the coordinator's `--archive-root`.
async fn remote_copy(
    server: &str,
    list: &ArchiveListArgs,
    spec: JobSpec,
    default_failed: &str,
    console: &Console,
) -> Result<()> {
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
    let failed = list.failed.clone().unwrap_or_else(|| default_failed.into());
    super::remote::copy_job(remote, &failed, console).await
}

/// A job's snapshot, kept up to date while it runs (`serve`).
pub type Watch = Arc<std::sync::Mutex<crate::engine::job::JobSnapshot>>;

/// Tells a watched job its size as its run starts: the images it runs, and the lines
/// refused before any work (failed from the start, as a mirror's are). A run started again
/// (a damaged cache refetched) starts its figures again.
pub fn watch_begins(watch: Option<&Watch>, images: usize, refused: Vec<String>) {
    if let Some(w) = watch
        && let Ok(mut s) = w.lock()
    {
        s.total = images + refused.len();
        s.failed = refused.len();
        s.failed_lines = refused;
        (s.copied, s.present, s.skipped) = (0, 0, 0);
    }
}

pub async fn save(
    args: &SaveArgs,
    debug: bool,
    console: Arc<Console>,
    watch: Option<&Watch>,
) -> Result<()> {
    let dest = &args.destination;
    let part_size = args
        .part_size
        .as_deref()
        .map(super::parse_size)
        .transpose()?;
    if args.dry_run {
        let prepared = read_jobs(&args.list, debug, &console)?;
        let pool = Arc::new(super::pool(
            args.list.access.tls_verify,
            args.list.access.authfile.as_deref(),
        ));
        super::report_rejected(&console, &prepared.rejected, "plan");
        return super::plan::run(
            &prepared.images,
            &prepared.filter,
            args.list.provenance,
            prepared.jobs,
            pool,
            super::plan::Target::Archive { part_size },
            &console,
        )
        .await;
    }
    if let Some(server) = &args.list.fleet.remote.server {
        let spec = JobSpec::into_archive(JobKind::Save, list_text(&args.list)?, &args.list, dest);
        return remote_copy(server, &args.list, spec, "save-failed.txt", &console).await;
    }
    super::may_overwrite(dest, args.yes)?;
    let failed_file = args
        .list
        .failed
        .clone()
        .unwrap_or_else(|| "save-failed.txt".into());
    let mut retried = false;
    let writing = match (part_size, &args.list.fleet.bus.nats) {
        (None, None) => Writing::AsTheyComplete(None),
        _ => Writing::AtTheEnd,
    };
    let g = loop {
        let g = match gather(
            &args.list,
            dest,
            writing,
            debug,
            console.clone(),
            watch,
            FailedList {
                path: &failed_file,
                retry_left: !retried,
            },
        )
        .await
        {
            Err(e) if !retried && damaged_cache(&e) => {
                console.warn(None, format!("{e:#}; fetching it again"));
                retried = true;
                continue;
            }
            g => g?,
        };
        match write_save(&g, dest, part_size, args.yes, &console).await {
            Err(e) if !retried && damaged_cache(&e) => {
                console.warn(None, format!("{e:#}; fetching it again"));
                retried = true;
            }
            Err(e) => return Err(e),
            Ok(()) => break g,
        }
    };
    super::finish(&console, &failed_file, &g.failed, "copy")
}

async fn write_save(
    g: &Gathered,
    dest: &str,
    part_size: Option<u64>,
    yes: bool,
    console: &Console,
) -> Result<()> {
    let Some(part) = part_size else {
        let w = match &g.written {
            Some(w) => w.clone(),
            None => assemble(console, g, 1, dest, None, &g.images).await?,
        };
        console.info(
            None,
            format!(
                "Archive {} written: {} images, {} entries, {}",
                w.path.display(),
                w.images,
                w.entries,
                HumanBytes(w.bytes)
            ),
        );
        return Ok(());
    };
    let mut sizes: HashMap<Digest, u64> = HashMap::new();
    for d in g
        .images
        .iter()
        .flat_map(|i| i.images.iter().flat_map(|s| s.blobs()))
    {
        if !sizes.contains_key(d)
            && let Some(m) = g.cache.meta(d).await?
        {
            sizes.insert(d.clone(), m.size);
        }
    }
    let (volumes, oversized) =
        plan_volumes(&g.images, |d| sizes.get(d).copied().unwrap_or(0), part);
    for o in oversized {
        console.warn(None, o);
    }
    let count = volumes.len();
    for (n, volume) in volumes.iter().enumerate() {
        let path = volume_path(dest, n + 1);
        super::may_overwrite(&path, yes)?;
        let w = assemble(console, g, n + 1, &path, None, volume).await?;
        console.info(
            None,
            format!(
                "Volume {}/{count} {} written: {} images, {}",
                n + 1,
                w.path.display(),
                w.images,
                HumanBytes(w.bytes)
            ),
        );
    }
    Ok(())
}

pub async fn sync(
    args: &SyncArgs,
    debug: bool,
    console: Arc<Console>,
    watch: Option<&Watch>,
) -> Result<()> {
    let Some(dest) = &args.destination else {
        bail!("the archive to sync into is required: use -d/--destination");
    };
    if let Some(server) = &args.list.fleet.remote.server {
        let spec = JobSpec::into_archive(JobKind::Sync, list_text(&args.list)?, &args.list, dest);
        return remote_copy(server, &args.list, spec, "sync-failed.txt", &console).await;
    }
    if !dest.starts_with("s3://") && !Path::new(dest).exists() {
        bail!("archive {dest} does not exist");
    }
    // Opened first so a damaged archive is refused before anything is fetched.
    let base = Arc::new(ArchiveReader::open(dest).await?);
    let failed_file = args
        .list
        .failed
        .clone()
        .unwrap_or_else(|| "sync-failed.txt".into());
    let mut retried = false;
    let writing = match &args.list.fleet.bus.nats {
        None => Writing::AsTheyComplete(Some(&base)),
        Some(_) => Writing::AtTheEnd,
    };
    let (g, w) = loop {
        let g = match gather(
            &args.list,
            dest,
            writing,
            debug,
            console.clone(),
            watch,
            FailedList {
                path: &failed_file,
                retry_left: !retried,
            },
        )
        .await
        {
            Err(e) if !retried && damaged_cache(&e) => {
                console.warn(None, format!("{e:#}; fetching it again"));
                retried = true;
                continue;
            }
            g => g?,
        };
        let assembled = match &g.written {
            Some(w) => Ok(w.clone()),
            None => assemble(&console, &g, 1, dest, Some(&base), &g.images).await,
        };
        match assembled {
            Err(e) if !retried && damaged_cache(&e) => {
                console.warn(None, format!("{e:#}; fetching it again"));
                retried = true;
            }
            Err(e) => return Err(e),
            Ok(w) => break (g, w),
        }
    };
    console.info(
        None,
        format!(
            "Archive {} updated: {} images added, {} in all, {}",
            w.path.display(),
            g.images.len(),
            w.images,
            HumanBytes(w.bytes)
        ),
    );
    super::finish(&console, &failed_file, &g.failed, "copy")
}
