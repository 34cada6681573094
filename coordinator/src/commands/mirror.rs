//! `mirror`: registry → registry for every line of a list, through the planner, the queue,
//! the worker handlers and the tracker.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use hangar_shared::cache::BlobCache;
use hangar_shared::imagelist::{ImageList, LineKind, ListEntry};
use hangar_shared::manifest::PlatformFilter;
use hangar_shared::queue::jetstream::{self, NatsOptions};
use hangar_shared::reference::{DEFAULT_REGISTRY, ImageRef};
use hangar_shared::retry::RetryPolicy;

use crate::cli::MirrorArgs;
use crate::console::Console;
use crate::engine::job::{self, Backend, CopySpec};
use crate::engine::planner::ImageJob;

pub struct Prepared {
    pub images: Vec<ImageJob>,
    /// Lines with a list format's shape but no valid image: failed before any work.
    pub rejected: Vec<(ListEntry, String)>,
    pub filter: PlatformFilter,
    pub jobs: usize,
    pub timeout: Option<Duration>,
    pub cache: Option<Arc<BlobCache>>,
}

/// Reads the list and works out each line's source and destination (shared with validate).
pub fn prepare(args: &MirrorArgs, debug: bool, console: &Console) -> Result<Prepared> {
    let Some(file) = &args.file else {
        bail!("image list file not provided: use -f/--file");
    };
    let list = ImageList::read(file)?;
    let prepared = prepare_list(list, &file.display().to_string(), args, debug, console)?;
    args.platforms.log(console);
    Ok(prepared)
}

/// Works out each entry's source and destination; `label` names the list in messages.
pub fn prepare_list(
    list: ImageList,
    label: &str,
    args: &MirrorArgs,
    debug: bool,
    console: &Console,
) -> Result<Prepared> {
    super::report_list_warnings(console, &list, label);
    // Hangar runs an empty list to its end: a pipeline's list of new images may be empty.
    if list.entries.is_empty() {
        console.warn(None, format!("No images in list {label}"));
    }
    let some = |s: &str| {
        let s = s
            .trim()
            .trim_start_matches("docker://")
            .trim_end_matches('/');
        (!s.is_empty()).then(|| s.to_owned())
    };
    if some(&args.destination).is_none()
        && !args.into_archive
        && list
            .entries
            .iter()
            .any(|e| matches!(e.kind, LineKind::Default(_)))
    {
        console.warn(
            None,
            "No -d/--destination given: images go to docker.io (Hangar's default)",
        );
    }
    for (flag, value) in [
        ("-s/--source", &args.source),
        ("-d/--destination", &args.destination),
    ] {
        if let Some(registry) = some(value) {
            hangar_shared::reference::validate_registry(&registry)
                .map_err(|e| anyhow::anyhow!("{flag}: {}", e.message))?;
        }
    }
    for (flag, value) in [
        ("--source-project", &args.source_project),
        ("--destination-project", &args.destination_project),
    ] {
        super::check_project(flag, value)?;
    }
    let mut rejected = Vec::new();
    let images = list
        .entries
        .iter()
        .filter_map(|entry| {
            let (source, dest) = match &entry.kind {
                LineKind::Invalid(why) => {
                    rejected.push((entry.clone(), why.clone()));
                    return None;
                }
                LineKind::Default(r) => {
                    let dest = ImageRef {
                        registry: some(&args.destination)
                            .unwrap_or_else(|| DEFAULT_REGISTRY.to_owned()),
                        ..r.clone()
                    };
                    (r.clone(), dest)
                }
                LineKind::Mirror {
                    source,
                    dest,
                    dest_registry_explicit,
                } => {
                    let registry = some(&args.destination)
                        .or_else(|| dest_registry_explicit.then(|| dest.registry.clone()))
                        .unwrap_or_else(|| DEFAULT_REGISTRY.to_owned());
                    (
                        source.clone(),
                        ImageRef {
                            registry,
                            ..dest.clone()
                        },
                    )
                }
            };
            let source = source
                .with_registry(some(&args.source).as_deref())
                .with_project(some(&args.source_project).as_deref());
            let dest = dest.with_project(some(&args.destination_project).as_deref());
            match (source, dest) {
                (Ok(source), Ok(dest)) => {
                    Some(ImageJob::between_registries(entry.clone(), source, dest))
                }
                // The projects are checked above: what is left is a name made too long.
                (Err(e), _) | (_, Err(e)) => {
                    rejected.push((entry.clone(), e.message));
                    None
                }
            }
        })
        .collect::<Vec<_>>();
    let jobs = super::clamp_jobs(args.jobs, debug, console);
    let timeout = humantime::parse_duration(&args.timeout)
        .with_context(|| format!("invalid --timeout {:?}", args.timeout))?;
    Ok(Prepared {
        jobs: jobs.min(images.len()).max(1),
        images,
        rejected,
        filter: args.platforms.filter(),
        timeout: (!timeout.is_zero()).then_some(timeout),
        cache: match &args.cache {
            Some(url) => Some(Arc::new(BlobCache::open(url)?)),
            None => None,
        },
    })
}

/// The job to run, and the lines rejected before it.
pub fn spec(prepared: Prepared, args: &MirrorArgs) -> (CopySpec, Vec<(ListEntry, String)>) {
    let spec = CopySpec {
        images: prepared.images,
        filter: prepared.filter,
        provenance: args.provenance,
        overwrite: args.overwrite,
        planners: prepared.jobs,
        transfers: args.transfers.unwrap_or((prepared.jobs * 2).max(3)).max(1),
        task_timeout: prepared.timeout,
        retry: RetryPolicy::default(),
        cache: prepared.cache,
        interruptible: true,
        extras: crate::engine::tracker::Extras {
            sign_key: args.sign_key.clone(),
            scan: args.scan_db.is_some(),
            ..Default::default()
        },
        archive: None,
        completions: None,
        signatures: !args.remove_signatures,
        sign_keys: Default::default(),
    };
    (spec, prepared.rejected)
}

pub async fn run(args: &MirrorArgs, debug: bool, console: Arc<Console>) -> Result<()> {
    if args.dry_run {
        let prepared = prepare(args, debug, &console)?;
        let pool = Arc::new(super::pool(args.tls_verify, args.authfile.as_deref()));
        super::report_rejected(&console, &prepared.rejected, "plan");
        return super::plan::run(
            &prepared.images,
            &prepared.filter,
            args.provenance,
            prepared.jobs,
            pool,
            super::plan::Target::Registry {
                look_first: !args.overwrite && args.sign_key.is_none() && args.scan_db.is_none(),
            },
            &console,
        )
        .await;
    }
    if let Some(server) = &args.fleet.remote.server {
        return super::remote::submit(server, args, console).await;
    }
    let prepared = prepare(args, debug, &console)?;
    let (spec, prepared_rejected) = spec(prepared, args);
    let backend = match &args.fleet.bus.nats {
        Some(_) => Backend::Fleet(fleet_client(&args.fleet.bus).await?),
        None => Backend::Embedded,
    };
    let fleet = match &backend {
        Backend::Fleet(client) => Some(client),
        Backend::Embedded => None,
    };
    let pool = Arc::new(
        super::limited_pool(args.tls_verify, args.authfile.as_deref(), &args.rate, fleet).await?,
    );
    let total = spec.images.len();
    console.info(
        None,
        format!(
            "Mirroring {total} images with {} transfers at once",
            spec.transfers
        ),
    );
    let mut spec = spec;
    if let Backend::Embedded = backend {
        spec.sign_keys = super::sign::keys_here(
            args.sign_key.as_deref(),
            args.sign_passphrase_file.as_deref(),
        )?;
    }
    // Loaded before any copy, so a missing or stale database fails the command early.
    let scan_db = match &args.scan_db {
        Some(location) => Some(
            super::scan_db::open_db(
                location,
                args.tls_verify,
                args.authfile.as_deref(),
                Some("30d"),
                &console,
            )
            .await?,
        ),
        None => None,
    };
    let id = job::new_job_id();
    let every_line: Vec<String> = prepared_rejected
        .iter()
        .map(|(entry, _)| entry.original.clone())
        .chain(spec.images.iter().map(|j| j.entry.original.clone()))
        .collect();
    let report = job::run_copy(spec, pool, console.clone(), backend, (&id, "1"), None)
        .await
        .map_err(|e| {
            super::all_failed(&console, &args.failed, &every_line, e, super::ListRun::Copy)
        })?;
    if let Some(db) = &scan_db {
        super::scan::report_job(&report, db, &args.scan_report, false, &console)?;
    }

    let mut failed_lines = super::report_rejected(&console, &prepared_rejected, "copy");
    let more = super::summarise(&console, &report, "copied", failed_lines.len());
    failed_lines.extend(more);
    super::finish(&console, &args.failed, &failed_lines, super::ListRun::Copy)
}

/// Connects to the fleet's NATS with the `--nats*` flags.
pub async fn fleet_client(f: &crate::cli::BusArgs) -> Result<async_nats::Client> {
    let Some(url) = &f.nats else {
        bail!("--nats is required");
    };
    let patience = humantime::parse_duration(&f.unserved_timeout)
        .with_context(|| format!("invalid --unserved-timeout {:?}", f.unserved_timeout))?;
    crate::engine::tasks::set_unserved_patience(patience);
    Ok(jetstream::connect(&NatsOptions {
        url: url.clone(),
        user: f.nats_user.clone(),
        password: f.nats_password.clone(),
        token: f.nats_token.clone(),
        creds: f.nats_creds.clone(),
        require_tls: f.nats_tls,
        ca: f.nats_ca.clone(),
        tls_cert: f.nats_tls_cert.clone(),
        tls_key: f.nats_tls_key.clone(),
    })
    .await?)
}
