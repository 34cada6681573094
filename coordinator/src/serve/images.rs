//! Jobs over images where they are — sign, sign-validate, scan, mirror-validate — run by
//! `serve` on the fleet with the same plan as the command line ([`work`]). Each image's
//! outcomes are kept for the client that asked (`GET /jobs/{id}/results`), which writes
//! the reports itself: the server keeps no report file and needs no database.

use std::sync::Arc;

use hangar_shared::imagelist::ImageList;
use hangar_shared::task::{Outcome, Verdict};

use super::{JobRequest, Refusal, Server, auth};
use crate::commands::{mirror, targets};
use crate::engine::job::{Backend, JobSnapshot};
use crate::engine::per_image::PerImage;
use crate::engine::tasks::{Bus, Here};
use crate::engine::work::{self, ImageOutcomes, ImageReport, ReportedImage, Work};
use crate::spec::JobKind;

/// A job's images as planned here, with what the job needs beside them.
struct Planned {
    targets: Vec<work::Target>,
    /// Each target's original list line, for the failed list.
    lines: Vec<String>,
    /// Each target's `[IMG:N]` number.
    entries: Vec<usize>,
    /// Lines refused before any work.
    /// Lines refused before any work, and why.
    rejected: Vec<(String, String)>,
    filter: hangar_shared::manifest::PlatformFilter,
    planners: usize,
    timeout: Option<std::time::Duration>,
}

fn plan_list(server: &Server, id: &str, request: &JobRequest) -> Result<Planned, Refusal> {
    let spec = &request.spec;
    let list = ImageList::parse(&spec.list);
    let label = format!("job {id}");
    let invalid = |e: anyhow::Error| Refusal::Invalid(format!("{e:#}"));
    if spec.kind == JobKind::MirrorValidate {
        let mut args = spec.mirror_args();
        args.tls_verify = server.defaults.tls_verify;
        let prepared =
            mirror::prepare_list(list, &label, &args, false, &server.console).map_err(invalid)?;
        return Ok(Planned {
            targets: prepared
                .images
                .iter()
                .map(|j| work::Target {
                    image: j.name.source.clone(),
                    dest: Some(j.name.dest.clone()),
                    expect: None,
                })
                .collect(),
            lines: prepared
                .images
                .iter()
                .map(|j| j.entry.original.clone())
                .collect(),
            entries: prepared.images.iter().map(|j| j.entry.index).collect(),
            rejected: prepared
                .rejected
                .iter()
                .map(|(e, why)| (e.original.clone(), why.clone()))
                .collect(),
            filter: prepared.filter,
            planners: prepared.jobs.max(4),
            timeout: prepared.timeout,
        });
    }
    let t = targets::resolve(list, &label, &spec.list_args(), false, &server.console)
        .map_err(invalid)?;
    Ok(Planned {
        targets: t.work(),
        lines: t.items.iter().map(|i| i.entry.original.clone()).collect(),
        entries: t.items.iter().map(|i| i.entry.index).collect(),
        rejected: t.failed,
        filter: t.filter,
        planners: t.jobs,
        timeout: t.timeout,
    })
}

/// A load-validate job's images: the archive's (inside the coordinator's roots), each with
/// what its copy should hold, read from the archive's index here.
async fn plan_load_validate(server: &Server, request: &JobRequest) -> Result<Planned, Refusal> {
    let spec = &request.spec;
    let roots = server.archive_roots.as_deref().ok_or_else(|| {
        Refusal::Invalid("load-validate jobs need `hangar-coord serve --archive-root`".into())
    })?;
    let named = spec.source.archive.clone().unwrap_or_default();
    let location = roots
        .check("archive", &named)
        .map_err(|e| Refusal::Forbidden(e.message))?;
    let invalid = |e: anyhow::Error| Refusal::Invalid(format!("{e:#}"));
    let archive = hangar_shared::archive::ArchiveReader::open(&location)
        .await
        .map_err(|e| Refusal::Invalid(e.message))?;
    let dir = tempfile::tempdir().map_err(|e| Refusal::Invalid(e.to_string()))?;
    let list = (!spec.list.trim().is_empty())
        .then(|| {
            let path = dir.path().join("list.txt");
            std::fs::write(&path, &spec.list).map(|()| path)
        })
        .transpose()
        .map_err(|e| Refusal::Invalid(e.to_string()))?;
    let args = super::archives::load_args(server, spec, location, list, dir.path().join("f"));
    let checks =
        crate::commands::load::checks(&archive, &args, false, &server.console).map_err(invalid)?;
    Ok(Planned {
        lines: checks
            .jobs
            .iter()
            .map(|j| j.entry.original.clone())
            .collect(),
        entries: checks.jobs.iter().map(|j| j.entry.index).collect(),
        targets: checks.targets,
        rejected: checks.failed,
        filter: checks.filter,
        planners: checks.planners,
        timeout: checks.timeout,
    })
}

/// A signing job writes where its images are; every other kind only reads.
fn authorise(
    caller: &auth::Caller,
    kind: JobKind,
    planned: &Planned,
    sign_key: Option<&str>,
) -> Result<(), Refusal> {
    let repo =
        |r: &hangar_shared::reference::ImageRef| format!("{}/{}", r.registry, r.repository());
    let mut reads: Vec<String> = planned.targets.iter().map(|t| repo(&t.image)).collect();
    reads.extend(
        planned
            .targets
            .iter()
            .filter_map(|t| t.dest.as_ref())
            .map(repo),
    );
    let writes = if kind == JobKind::Sign {
        reads.clone()
    } else {
        Vec::new()
    };
    caller
        .authorise_images(&reads, &writes, sign_key)
        .map_err(Refusal::Forbidden)
}

/// The work a job's kind names, with the coordinator's own cache for the configs it
/// reads while planning a scan.
fn work_of(server: &Server, request: &JobRequest) -> Result<Work, Refusal> {
    let o = &request.spec.options;
    Ok(match request.spec.kind {
        JobKind::Sign => Work::Sign {
            key: o.sign_key.clone().unwrap_or_default(),
            with_index: true,
        },
        JobKind::SignValidate => Work::Verify {
            public_key: o.public_key.clone().unwrap_or_default(),
            identity: o.exact_repository.clone(),
            with_index: true,
        },
        JobKind::Scan => Work::Scan {
            cache: match &server.defaults.cache {
                Some(url) => Some(Arc::new(
                    hangar_shared::cache::BlobCache::open(url)
                        .map_err(|e| Refusal::Invalid(e.to_string()))?,
                )),
                None => None,
            },
        },
        JobKind::MirrorValidate | JobKind::LoadValidate => Work::Contains {
            provenance: request.spec.options.provenance,
        },
        // The workers read the archive; the coordinator names it only inside its roots.
        JobKind::SaveValidate | JobKind::SyncValidate => {
            let roots = server.archive_roots.as_deref().ok_or_else(|| {
                Refusal::Invalid(format!(
                    "{} jobs need `hangar-coord serve --archive-root`",
                    request.spec.kind.as_str()
                ))
            })?;
            let named = request.spec.destination.archive.clone().unwrap_or_default();
            let location = roots
                .check("archive", &named)
                .map_err(|e| Refusal::Forbidden(e.message))?;
            Work::Holds {
                store: hangar_shared::store::StoreRef::Archive { location },
                provenance: request.spec.options.provenance,
            }
        }
        other => {
            return Err(Refusal::Invalid(format!(
                "{} is not a job over images where they are",
                other.as_str()
            )));
        }
    })
}

/// Counts an image's end in the job's figures: a failed check or task fails it, a
/// missing signature or no selected platform skips it, anything else is done.
fn count(snapshot: &mut JobSnapshot, line: &str, outcomes: &ImageOutcomes) {
    match outcomes {
        Err(e) => snapshot.image_failed(line, Some(&crate::engine::job::failure_text(e))),
        Ok(o) if o.is_empty() => snapshot.skipped += 1,
        Ok(o) => {
            let verdict = |want: fn(&Verdict) -> bool| {
                o.iter()
                    .any(|(_, x)| matches!(x, Outcome::Checked { verdict } if want(verdict)))
            };
            let failed = o.iter().find_map(|(_, x)| match x {
                Outcome::Checked {
                    verdict: Verdict::Fail { why },
                } => Some(why.as_str()),
                _ => None,
            });
            if let Some(why) = failed {
                snapshot.image_failed(line, Some(why));
            } else if verdict(|v| matches!(v, Verdict::Absent)) {
                snapshot.skipped += 1;
            } else {
                snapshot.copied += 1;
            }
        }
    }
}

impl Server {
    /// Starts (or resumes) a job over images where they are.
    pub(super) async fn start_images(
        &self,
        id: String,
        request: JobRequest,
        caller: Option<&auth::Caller>,
    ) -> Result<(), Refusal> {
        let planned = match request.spec.kind {
            JobKind::LoadValidate => plan_load_validate(self, &request).await?,
            _ => plan_list(self, &id, &request)?,
        };
        if let Some(caller) = caller {
            authorise(
                caller,
                request.spec.kind,
                &planned,
                request.spec.options.sign_key.as_deref(),
            )?;
        }
        let work = work_of(self, &request)?;
        let first = super::running(
            &id,
            request.spec.kind,
            planned.targets.len() + planned.rejected.len(),
            &planned.rejected,
        );
        let results: super::Results = Arc::new(std::sync::Mutex::new(super::held::Held::new(
            self.results_budget.clone(),
        )));
        let (server, kept, job) = (self.clone(), results.clone(), id.clone());
        self.launch(
            id,
            request,
            first,
            Some(results),
            move |watch, trace| async move {
                let pool = Arc::new(crate::commands::gated_pool(
                    server.defaults.tls_verify,
                    server.defaults.authfile.as_deref(),
                    server.gate.clone(),
                ));
                let run_id = format!("{job}.{}", server.run);
                let bus = Bus::open(
                    Backend::Fleet(server.nats.clone()),
                    &run_id,
                    Here::new(pool.clone()),
                    &server.console,
                )
                .await
                .map_err(|e| e.to_string())?;
                let how = PerImage {
                    job: &run_id,
                    planners: planned.planners,
                    timeout: planned.timeout,
                    trace,
                    interruptible: false,
                };
                work::run(
                    &work,
                    &planned.targets,
                    &planned.filter,
                    &pool,
                    bus,
                    how,
                    |i, r| {
                        if let Ok(mut s) = watch.lock() {
                            count(&mut s, &planned.lines[i], &r);
                        }
                        if let Ok(mut k) = kept.lock() {
                            let mut report = ImageReport::new(i, &r);
                            let target = &planned.targets[i];
                            report.image = Some(ReportedImage {
                                entry: planned.entries[i],
                                source: target.image.to_string(),
                                dest: target.dest.as_ref().map(|d| d.to_string()),
                                line: planned.lines[i].clone(),
                            });
                            k.push(report);
                        }
                    },
                )
                .await
                .map_err(|e| e.to_string())
            },
        )
        .await
    }
}
