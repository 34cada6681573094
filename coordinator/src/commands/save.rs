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
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context as _, Result, bail};
use hangar_shared::archive::writer::{Written, plan_volumes, volume_path, write_archive};
use hangar_shared::archive::{ArchiveImage, ArchiveReader};
use hangar_shared::digest::Digest;
use hangar_shared::task::{AssembleTask, Outcome, Task};
use indicatif::HumanBytes;

pub(crate) use super::save_gather::read_jobs;
use super::save_gather::{FailedList, Gathered, Writing, damaged_cache, gather};
use crate::cli::{ArchiveListArgs, SaveArgs, SyncArgs};
use crate::console::Console;
use crate::engine::job::Backend;
use crate::engine::per_image::{self, PerImage};
use crate::engine::tasks::{Bus, Here};
use crate::spec::{JobKind, JobSpec};

type Sigint = Option<tokio::signal::unix::Signal>;

/// Writes one archive: here, or on the fleet by a worker's assemble task. Here, a Ctrl-C
/// that `sigint` hears drops the writing unfinished (its temporary file removed, an upload
/// aborted); on the fleet the assemble task's run hears Ctrl-C itself.
async fn assemble(
    console: &Console,
    g: &Gathered,
    n: usize,
    location: &str,
    base: Option<&Arc<ArchiveReader>>,
    images: &[ArchiveImage],
    sigint: &mut Sigint,
) -> Result<Written> {
    let Some(client) = &g.fleet else {
        let source = hangar_shared::cache::archive_source(g.cache.clone());
        return tokio::select! {
            written = write_archive(location, base.cloned(), images, source) => Ok(written?),
            _ = crate::engine::ctrl_c(sigint) => {
                bail!("interrupted while {location} was written; it was not written")
            }
        };
    };
    let key = format!("{}/{n}.json", g.job);
    let plan = serde_json::to_vec(images)?;
    let images_digest = hangar_shared::digest::Digest::of(&plan);
    g.cache.put_doc(&key, plan).await?;
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
        images_digest,
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
/// refused before any work with why (failed from the start, as a mirror's are). A run
/// started again (a damaged cache refetched) starts its figures again.
pub fn watch_begins(watch: Option<&Watch>, images: usize, refused: &[(String, String)]) {
    if let Some(w) = watch
        && let Ok(mut s) = w.lock()
    {
        s.total = images + refused.len();
        s.clear_failed();
        for (line, why) in refused {
            s.image_failed(line, Some(why));
        }
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
        args.list.platforms.log(&console);
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
    let writing = match (part_size, &args.list.fleet.bus.nats) {
        (None, None) => Writing::AsTheyComplete(None),
        _ => Writing::AtTheEnd,
    };
    // From the start, so that a Ctrl-C between the copy and the writing is not lost: the
    // job's own listener is gone by then, and Ctrl-C no longer ends the process.
    let mut sigint = crate::engine::listen_for_ctrl_c(watch.is_none());
    if watch.is_none() {
        args.list.platforms.log(&console);
    }
    let g = refetching_once(&console, async |retry_left| {
        let failed = FailedList {
            path: &failed_file,
            retry_left,
            run: super::ListRun::Save,
        };
        let g = gather(
            &args.list,
            dest,
            writing,
            debug,
            console.clone(),
            watch,
            failed,
        )
        .await?;
        // A Ctrl-C the copy heard stopped it; the images it completed are written.
        if g.interrupted {
            crate::engine::forget_ctrl_c(&mut sigint);
        }
        write_save(&g, dest, part_size, args.yes, &console, &mut sigint).await?;
        Ok(g)
    })
    .await?;
    super::finish(&console, &failed_file, &g.failed, super::ListRun::Save)
}

/// Runs `attempt` (gather, then write) once more when a damaged cache entry failed it: the
/// cache evicted the entry, so the second gathering fetches it again. `attempt` is told
/// whether that second chance is still to come.
async fn refetching_once<T>(
    console: &Console,
    mut attempt: impl AsyncFnMut(bool) -> Result<T>,
) -> Result<T> {
    match attempt(true).await {
        Err(e) if damaged_cache(&e) => {
            console.warn(None, format!("{e:#}; fetching it again"));
            attempt(false).await
        }
        other => other,
    }
}

async fn write_save(
    g: &Gathered,
    dest: &str,
    part_size: Option<u64>,
    yes: bool,
    console: &Console,
    sigint: &mut Sigint,
) -> Result<()> {
    let Some(part) = part_size else {
        let w = match &g.written {
            Some(w) => w.clone(),
            None => assemble(console, g, 1, dest, None, &g.images, sigint).await?,
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
        let w = assemble(console, g, n + 1, &path, None, volume, sigint).await?;
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
    let writing = match &args.list.fleet.bus.nats {
        None => Writing::AsTheyComplete(Some(&base)),
        Some(_) => Writing::AtTheEnd,
    };
    if watch.is_none() {
        args.list.platforms.log(&console);
    }
    let (g, w) = refetching_once(&console, async |retry_left| {
        let failed = FailedList {
            path: &failed_file,
            retry_left,
            run: super::ListRun::Sync,
        };
        let g = gather(
            &args.list,
            dest,
            writing,
            debug,
            console.clone(),
            watch,
            failed,
        )
        .await?;
        let w = match &g.written {
            Some(w) => w.clone(),
            // Only on the fleet: here the archive was written as images completed.
            None => assemble(&console, &g, 1, dest, Some(&base), &g.images, &mut None).await?,
        };
        Ok((g, w))
    })
    .await?;
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
    super::finish(&console, &failed_file, &g.failed, super::ListRun::Sync)
}
