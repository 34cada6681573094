//! `save`, `sync` and `load` jobs run by `serve` on its fleet, with the commands' own code:
//! the workers gather into the fleet's cache and one of them writes the archive (save,
//! sync), or the workers read the archive by range (load). The coordinator opens and names
//! archives only inside its `--archive-root`, as a worker writes only inside its own: a
//! caller of the API gets no other file read or written.

use hangar_shared::archive::ArchiveReader;
use hangar_shared::reference::ImageRef;
use hangar_worker::context::policy::ArchiveRoots;

use super::{JobRequest, Refusal, Server, auth};
use crate::cli::{ArchiveListArgs, LoadArgs, PlatformArgs, SaveArgs, SyncArgs};
use crate::spec::{JobKind, JobSpec};

fn repo(r: &ImageRef) -> String {
    format!("{}/{}", r.registry, r.repository())
}

/// The repositories a save or sync reads, resolved by the very code its run uses (`-s`
/// applied, mirror-format lines skipped), so what is authorised is what is read.
fn list_reads(server: &Server, spec: &JobSpec) -> Result<Vec<String>, Refusal> {
    let refuse = |e: &dyn std::fmt::Display| Refusal::Invalid(format!("{e:#}"));
    let dir = tempfile::tempdir().map_err(|e| refuse(&e))?;
    let list = dir.path().join("list.txt");
    std::fs::write(&list, &spec.list).map_err(|e| refuse(&e))?;
    let args = archive_list_args(server, spec, list);
    let prepared = crate::commands::save::read_jobs(&args, false, &server.console)
        .map_err(|e| Refusal::Invalid(format!("{e:#}")))?;
    Ok(prepared
        .images
        .iter()
        .map(|j| repo(&j.name.source))
        .collect())
}

/// The repositories an archive's images were saved from: what a load of it reads.
fn archive_reads(archive: &ArchiveReader) -> Vec<String> {
    archive
        .index
        .list
        .iter()
        .filter_map(|i| i.reference().ok())
        .map(|r| repo(&r))
        .collect()
}

/// The repositories a load writes: each archived image under the destination registry,
/// `--project` applied. A project that is no repository path refuses the job; an image
/// whose name the project makes too long is left out, since the load fails that image
/// alone and writes nothing of it (as the command line does).
fn load_writes(spec: &JobSpec, archive: &ArchiveReader) -> Result<Vec<String>, String> {
    // Trimmed as the load itself trims its flags.
    let (registry, project) = (
        spec.destination.registry.as_deref().map(str::trim),
        spec.destination.project.as_deref().map(str::trim),
    );
    crate::commands::check_project("project", project.unwrap_or_default())
        .map_err(|e| e.to_string())?;
    Ok(archive
        .index
        .list
        .iter()
        .filter_map(|i| i.reference().ok())
        .filter_map(|r| r.with_registry(registry).with_project(project).ok())
        .map(|r| repo(&r))
        .collect())
}

fn archive_list_args(server: &Server, spec: &JobSpec, list: std::path::PathBuf) -> ArchiveListArgs {
    let d = &server.defaults;
    let o = &spec.options;
    ArchiveListArgs {
        file: Some(list.clone()),
        platforms: PlatformArgs {
            arch: o.arch.clone(),
            os: o.os.clone(),
        },
        source: spec.source.registry.clone().unwrap_or_default(),
        // The job's failed lines are in its snapshot; this file dies with the job's folder.
        failed: Some(list.with_file_name("failed.txt")),
        jobs: o.jobs,
        timeout: o.timeout.clone(),
        provenance: o.provenance,
        access: crate::cli::RegistryArgs {
            tls_verify: d.tls_verify,
            authfile: d.authfile.clone(),
        },
        cache: d.cache.clone(),
        transfers: o.transfers,
        scan_db: None,
        scan_report: list.with_file_name("scan-report.json"),
        fleet: d.fleet.clone(),
        rate: d.rate.clone(),
    }
}

pub(super) fn load_args(
    server: &Server,
    spec: &JobSpec,
    location: String,
    list: Option<std::path::PathBuf>,
    failed: std::path::PathBuf,
) -> LoadArgs {
    let d = &server.defaults;
    let o = &spec.options;
    LoadArgs {
        source: Some(location),
        destination: spec.destination.registry.clone(),
        file: list,
        source_registry: spec.source.registry.clone().unwrap_or_default(),
        project: spec.destination.project.clone().unwrap_or_default(),
        platforms: PlatformArgs {
            arch: o.arch.clone(),
            os: o.os.clone(),
        },
        failed,
        jobs: o.jobs,
        timeout: o.timeout.clone(),
        provenance: o.provenance,
        overwrite: o.overwrite,
        access: crate::cli::RegistryArgs {
            tls_verify: d.tls_verify,
            authfile: d.authfile.clone(),
        },
        skip_login: false,
        transfers: o.transfers,
        sign_key: o.sign_key.clone(),
        sign_passphrase_file: None,
        rate: d.rate.clone(),
        fleet: d.fleet.clone(),
    }
}

impl Server {
    /// Starts (or resumes) a save, sync or load job.
    pub(super) async fn start_archive(
        &self,
        id: String,
        request: JobRequest,
        caller: Option<&auth::Caller>,
    ) -> Result<(), Refusal> {
        let roots: &ArchiveRoots = self.archive_roots.as_deref().ok_or_else(|| {
            Refusal::Invalid(format!(
                "{} jobs need `hangar-coord serve --archive-root`: the coordinator reads and \
                 writes archives only inside its roots",
                request.spec.kind.as_str()
            ))
        })?;
        let spec = request.spec.clone();
        let named = match spec.kind {
            JobKind::Load => spec.source.archive.clone(),
            _ => spec.destination.archive.clone(),
        }
        .unwrap_or_default();
        let location = roots
            .check("archive", &named)
            .map_err(|e| Refusal::Forbidden(e.message))?;
        if let Some(caller) = caller {
            let (reads, writes) = match spec.kind {
                // A load reads what the archive holds (saved by whoever) and writes it.
                JobKind::Load => {
                    let archive = ArchiveReader::open(&location)
                        .await
                        .map_err(|e| Refusal::Invalid(e.message))?;
                    let writes = load_writes(&spec, &archive).map_err(Refusal::Invalid)?;
                    (archive_reads(&archive), writes)
                }
                _ => (list_reads(self, &spec)?, Vec::new()),
            };
            let key = spec.options.sign_key.as_deref();
            caller
                .authorise_images(&reads, &writes, key)
                .map_err(Refusal::Forbidden)?;
            caller
                .authorise_overwrite(spec.options.overwrite)
                .map_err(Refusal::Forbidden)?;
        }
        let first = super::running(&id, spec.kind, 0, &[]);
        let server = self.clone();
        self.launch(id, request, first, None, move |watch, _| async move {
            // The commands' futures are not provably `Send` (closures over borrowed state
            // inside their streams), so the job runs on a runtime of its own, on a thread of
            // its own; this task waits for it.
            let (tx, rx) = tokio::sync::oneshot::channel();
            // Held by this task: a cancel aborts it, which drops this and stops the job's
            // run where it is (its futures dropped) on its own runtime.
            let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
            std::thread::spawn(move || {
                let ran = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .map_err(anyhow::Error::from)
                    .and_then(|rt| {
                        rt.block_on(async {
                            tokio::select! {
                                r = run(&server, &spec, location, &watch) => r,
                                _ = stopped => Err(anyhow::anyhow!("cancelled")),
                            }
                        })
                    });
                let _ = tx.send(ran);
            });
            rx.await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("the job's thread ended without a word")))
                .map_err(|e| format!("{e:#}"))
        })
        .await
    }
}

/// Runs the job with the command's own code, on the fleet (the server's NATS identity), in
/// a folder of its own for the list it was given.
async fn run(
    server: &Server,
    spec: &JobSpec,
    location: String,
    watch: &crate::commands::save::Watch,
) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("hangar-job-").tempdir()?;
    let list = dir.path().join("list.txt");
    std::fs::write(&list, &spec.list)?;
    let console = server.console.clone();
    match spec.kind {
        JobKind::Save => {
            let args = SaveArgs {
                list: archive_list_args(server, spec, list),
                destination: location,
                yes: true,
                part_size: None,
                dry_run: false,
            };
            crate::commands::save::save(&args, false, console, Some(watch)).await
        }
        JobKind::Sync => {
            let args = SyncArgs {
                list: archive_list_args(server, spec, list),
                destination: Some(location),
            };
            crate::commands::save::sync(&args, false, console, Some(watch)).await
        }
        _ => {
            let chosen = (!spec.list.trim().is_empty()).then_some(list.clone());
            let args = load_args(
                server,
                spec,
                location,
                chosen,
                list.with_file_name("failed.txt"),
            );
            crate::commands::load::load(&args, false, console, Some(watch)).await
        }
    }
}
