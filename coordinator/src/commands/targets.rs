//! The images of a default-format list, with `--registry` / `--project` applied, for the
//! commands that work on images where they are (sign, sign validate, scan).

use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use hangar_shared::error::Error;
use hangar_shared::imagelist::{ImageList, LineKind, ListEntry};
use hangar_shared::manifest::PlatformFilter;
use hangar_shared::reference::ImageRef;

use crate::cli::ListArgs;
use crate::console::Console;

pub struct Target {
    pub entry: ListEntry,
    pub image: ImageRef,
}

pub struct Targets {
    pub items: Vec<Target>,
    /// Lines refused before any work, and why.
    pub failed: Vec<(String, String)>,
    pub filter: PlatformFilter,
    pub jobs: usize,
    pub timeout: Option<Duration>,
}

pub fn targets(list: &ListArgs, debug: bool, console: &Console) -> Result<Targets> {
    let Some(file) = &list.file else {
        bail!("image list file not provided: use -f/--file");
    };
    let parsed = ImageList::read(file)?;
    resolve(parsed, &file.display().to_string(), list, debug, console)
}

/// The targets of a list already read (`label` names it in warnings): the list flags of
/// `list` apply, its file is not read.
pub fn resolve(
    parsed: ImageList,
    label: &str,
    list: &ListArgs,
    debug: bool,
    console: &Console,
) -> Result<Targets> {
    super::check_project("--project", &list.project)?;
    super::report_list_warnings(console, &parsed, label);
    let some = |s: &str| (!s.trim().is_empty()).then(|| s.trim().to_owned());
    let mut items = Vec::new();
    let mut failed = Vec::new();
    let mut refuse = |entry: &ListEntry, why: String| {
        console.error(
            Some(entry.index),
            format!(
                "Failed [{}] (line {}): {why}",
                crate::commands::quoted_line(&entry.original),
                entry.line_no
            ),
        );
        failed.push((entry.original.clone(), why));
    };
    for entry in parsed.entries {
        let image = match &entry.kind {
            LineKind::Default(r) => r.clone(),
            LineKind::Mirror { .. } => {
                refuse(&entry, "only the default list format is read here".into());
                continue;
            }
            LineKind::Invalid(why) => {
                refuse(&entry, why.clone());
                continue;
            }
        };
        let image = match image
            .with_registry(some(&list.registry).as_deref())
            .with_project(some(&list.project).as_deref())
        {
            Ok(image) => image,
            Err(e) => {
                refuse(&entry, e.to_string());
                continue;
            }
        };
        if image.is_signature_tag() {
            refuse(&entry, "image is a sigstore signature".into());
            continue;
        }
        items.push(Target { entry, image });
    }
    let jobs = super::clamp_jobs(list.jobs, debug, console);
    let timeout = humantime::parse_duration(&list.timeout)
        .with_context(|| format!("invalid --timeout {:?}", list.timeout))?;
    Ok(Targets {
        items,
        failed,
        filter: list.platforms.filter(),
        jobs,
        timeout: (!timeout.is_zero()).then_some(timeout),
    })
}

impl Targets {
    /// The refused lines, for a failed list.
    pub fn failed_lines(&self) -> Vec<String> {
        self.failed.iter().map(|(line, _)| line.clone()).collect()
    }

    /// The images as the engine takes them.
    pub fn work(&self) -> Vec<crate::engine::work::Target> {
        self.items
            .iter()
            .map(|t| crate::engine::work::Target::at(t.image.clone()))
            .collect()
    }

    /// How the engine runs them: `-j` images planned at once, each within `--timeout`.
    pub fn per_image<'a>(&self, job: &'a str) -> crate::engine::per_image::PerImage<'a> {
        crate::engine::per_image::PerImage {
            job,
            planners: self.jobs,
            timeout: self.timeout,
            trace: hangar_shared::telemetry::traceparent(&tracing::Span::current()),
            interruptible: true,
        }
    }
}

/// A per-image command's run: its job id, the pool it plans with and the bus its tasks go
/// on — this process's own handlers, or the fleet's with `--nats`.
pub struct Run {
    pub job: String,
    pub pool: std::sync::Arc<hangar_shared::store::RegistryPool>,
    pub bus: crate::engine::tasks::Bus,
}

/// Opens a [`Run`]; `here` adds what this process's handlers need (keys, a cache) when
/// they are the ones running the tasks (`true`: embedded).
pub async fn open(
    list: &ListArgs,
    t: &Targets,
    console: &Console,
    here: impl FnOnce(&mut crate::engine::tasks::Here, bool) -> Result<()>,
) -> Result<Run> {
    use crate::engine::job::Backend;
    let (backend, pool) = super::backend(
        &list.bus,
        list.access.tls_verify,
        list.access.authfile.as_deref(),
        &list.rate,
    )
    .await?;
    let mut h = crate::engine::tasks::Here::new(pool.clone());
    h.task_timeout = t.timeout;
    // Tasks at once: as many as the images planned at once can give (three each).
    h.transfers = t.jobs.max(1) * 3;
    here(&mut h, matches!(backend, Backend::Embedded))?;
    let job = crate::engine::job::new_job_id();
    let bus = crate::engine::tasks::Bus::open(backend, &job, h, console).await?;
    Ok(Run { job, pool, bus })
}

/// The list's text, as a job specification carries it.
pub fn list_text(list: &ListArgs) -> Result<String> {
    let Some(file) = &list.file else {
        bail!("image list file not provided: use -f/--file");
    };
    hangar_shared::local_file::read_text(file, hangar_shared::local_file::LIST)
        .with_context(|| format!("cannot read image list {}", file.display()))
}

/// How long a coordinator may be away before a command following its job gives up: the
/// command's `--timeout` (10 minutes when it is 0).
pub fn outage(list: &ListArgs) -> Result<Duration> {
    let t = humantime::parse_duration(&list.timeout)
        .with_context(|| format!("invalid --timeout {:?}", list.timeout))?;
    Ok(if t.is_zero() {
        Duration::from_secs(600)
    } else {
        t
    })
}

/// Bounds one image's work by `--timeout`.
pub async fn with_timeout<T>(
    limit: Option<Duration>,
    work: impl std::future::Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    match limit {
        Some(l) => tokio::time::timeout(l, work).await.unwrap_or_else(|_| {
            Err(Error::new(
                hangar_shared::error::FailureClass::Network,
                format!("timed out after {l:?}"),
            ))
        }),
        None => work.await,
    }
}
