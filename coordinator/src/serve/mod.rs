//! `hangar-coord serve`: the fleet's coordinator as a service. It takes jobs over HTTP,
//! plans and tracks them with the same pipeline as `mirror --nats`, keeps every job in a
//! JetStream KV bucket (`hangar-jobs`), and after a restart resumes the jobs that were
//! running: they are planned again under a new run id, and the idempotent handlers skip
//! whatever the earlier run already copied.
//!
//! API (JSON, `docs/API.md`, handlers in [`routes`]): `POST /jobs` a [`JobSpec`] → `{id}`;
//! `GET /jobs`; `GET /jobs/{id}`; `GET /jobs/{id}/results`; `DELETE /jobs/{id}` (cancel:
//! stop tracking, purge its queued tasks); `/metrics`; `/healthz`. Every route but the last two needs a bearer token from `--api-tokens`
//! ([`auth`]); without a token file the API answers only on loopback, unless the operator
//! says `--insecure-no-auth`.
//!
//! This file is the job registry: what a job is, how it is started, stored, resumed and
//! forgotten. How the service is reached (its listener, router and start-up) is
//! [`listen`]; what one caller may hold, [`limits`].

mod archives;
pub mod auth;
mod held;
mod images;
mod limits;
mod listen;
mod routes;
mod stored;

pub use listen::{Access, run};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::{Context as _, Result};
use async_nats::jetstream::{self, kv};
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use hangar_shared::imagelist::ImageList;
use hangar_shared::queue::jetstream::purge_job;
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use crate::cli::MirrorArgs;
use crate::commands::mirror;
use crate::console::Console;
use crate::engine::job::{self, Backend, JobSnapshot};
use crate::spec::JobSpec;

pub const JOB_BUCKET: &str = "hangar-jobs";

/// A job as the coordinator keeps it: the client's specification (no credentials, no
/// paths: the coordinator and the workers use their own) and what the server adds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRequest {
    pub spec: JobSpec,
    /// The schedule that started it, if any (kept, so a resumed run still counts as busy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// The W3C trace the job's spans join: the submitter's (its `traceparent` header), or
    /// the job's own from its first run, so a resumed job stays one trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
    /// The name of the token that submitted it (set by the server, never by the client):
    /// only it or an admin may cancel the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

struct Running {
    snapshot: Arc<Mutex<JobSnapshot>>,
    task: Option<tokio::task::JoinHandle<()>>,
    schedule: Option<String>,
    owner: Option<String>,
    /// Each image's outcomes, for jobs over images where they are (sign, scan, …): held
    /// in memory for the client to render, not kept in the bucket.
    results: Option<Results>,
    /// Its outcomes were dropped to hold newer jobs' ([`HELD_RESULTS`]).
    results_dropped: bool,
}

/// A job's per-image outcomes, as they come, within the service's budget for them.
type Results = Arc<Mutex<held::Held>>;

/// Finished jobs whose outcomes are held for their clients, the newest by start; an older
/// one's are dropped (its client is told they are gone): memory stays bounded however
/// many jobs run.
const HELD_RESULTS: usize = 16;

/// A job's first snapshot: running since now, the lines `refused` before any work failed,
/// with why.
fn running(
    id: &str,
    kind: crate::spec::JobKind,
    total: usize,
    refused: &[(String, String)],
) -> JobSnapshot {
    let mut first = JobSnapshot {
        id: id.to_owned(),
        kind: kind.as_str().into(),
        state: "running".into(),
        total,
        started: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        ..Default::default()
    };
    for (line, why) in refused {
        first.image_failed(line, Some(why));
    }
    first
}

/// Drops the outcomes of finished jobs beyond the `keep` that ended last (a long job just
/// ended keeps its own for its client).
fn drop_old_results(jobs: &mut HashMap<String, Running>, keep: usize) {
    let old = limits::oldest_finished(jobs.iter().filter(|(_, r)| r.results.is_some()), keep);
    for id in old {
        if let Some(r) = jobs.get_mut(&id) {
            r.results = None;
            r.results_dropped = true;
        }
    }
}

/// Why a job was not started.
#[derive(Debug)]
enum Refusal {
    /// The request itself is wrong (400).
    Invalid(String),
    /// The caller may not do it (403), naming the rule.
    Forbidden(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Invalid(m) | Refusal::Forbidden(m) => f.write_str(m),
        }
    }
}

fn refuse(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

#[derive(Clone)]
struct Server {
    nats: async_nats::Client,
    kv: kv::Store,
    jobs: Arc<Mutex<HashMap<String, Running>>>,
    defaults: Arc<MirrorArgs>,
    console: Arc<Console>,
    run: Arc<String>,
    /// The fleet's rate gate, for the registry requests jobs make while planning.
    gate: Option<Arc<dyn hangar_shared::ratelimit::Gate>>,
    /// The callers' tokens; `None`: no authentication (loopback or `--insecure-no-auth`).
    tokens: Option<Arc<auth::Tokens>>,
    metrics: Arc<crate::metrics::Metrics>,
    /// `--archive-root`: where save, sync and load jobs may name archives.
    archive_roots: Option<Arc<hangar_worker::context::policy::ArchiveRoots>>,
    /// Per caller, the jobs being started now (see [`limits::Place`]).
    admitting: Arc<Mutex<HashMap<String, usize>>>,
    /// `--keep-jobs`: finished jobs remembered.
    keep_jobs: usize,
    /// `--results-memory`: what every job's held outcomes may weigh together.
    results_budget: Arc<held::Budget>,
}

fn snapshot_of(r: &Running) -> JobSnapshot {
    r.snapshot.lock().map(|s| s.clone()).unwrap_or_default()
}

impl Server {
    /// A place for one more of `owner`'s jobs, or how many it has: the check and the
    /// taking under one lock, so that requests at once cannot all pass the check.
    fn place_for(&self, owner: &str) -> Result<limits::Place, usize> {
        let Ok(mut admitting) = self.admitting.lock() else {
            return Err(0);
        };
        let held = self.running_of(owner) + admitting.get(owner).copied().unwrap_or(0);
        if held >= limits::RUNNING_PER_CALLER {
            return Err(held);
        }
        *admitting.entry(owner.to_owned()).or_default() += 1;
        Ok(limits::Place::new(self.admitting.clone(), owner))
    }

    /// How many of `owner`'s jobs are queued or running.
    fn running_of(&self, owner: &str) -> usize {
        let Ok(jobs) = self.jobs.lock() else { return 0 };
        jobs.values()
            .filter(|r| r.owner.as_deref() == Some(owner) && limits::ended(r).is_none())
            .count()
    }

    /// Forgets the finished jobs past the newest `--keep-jobs`, here and in the bucket:
    /// neither grows with every job ever run. In the bucket a job's key is purged from the
    /// stream underneath, marker and all (a KV purge would leave a marker per job).
    fn forget_old_jobs(&self, jobs: &mut HashMap<String, Running>) {
        let gone = limits::oldest_finished(jobs.iter(), self.keep_jobs);
        if gone.is_empty() {
            return;
        }
        for id in &gone {
            jobs.remove(id);
        }
        let js = jetstream::new(self.nats.clone());
        tokio::spawn(async move {
            let stream = match js.get_stream(format!("KV_{JOB_BUCKET}")).await {
                Ok(stream) => stream,
                Err(e) => return tracing::warn!("forgetting {} jobs: {e}", gone.len()),
            };
            for id in gone {
                for subject in stored::subjects(JOB_BUCKET, &id) {
                    if let Err(e) = stream.purge().filter(subject).await {
                        tracing::warn!("forgetting job {id}: {e}");
                    }
                }
            }
        });
    }

    /// Whether a job started by schedule `name` is still queued or running.
    fn busy(&self, name: &str) -> Option<String> {
        let jobs = self.jobs.lock().ok()?;
        jobs.iter()
            .find(|(_, r)| r.schedule.as_deref() == Some(name) && limits::ended(r).is_none())
            .map(|(id, _)| id.clone())
    }

    async fn save(&self, id: &str, request: &JobRequest, snapshot: &JobSnapshot) {
        if let Err(e) = self.try_save(id, request, snapshot).await {
            tracing::warn!("{e}");
        }
    }

    async fn try_save(
        &self,
        id: &str,
        request: &JobRequest,
        snapshot: &JobSnapshot,
    ) -> Result<(), String> {
        stored::put(&self.kv, id, request, snapshot).await
    }

    /// Starts (or resumes) a job in the background.
    /// A job that cannot be stored could not be resumed: it is refused rather than run.
    async fn start(
        &self,
        id: String,
        request: JobRequest,
        caller: Option<&auth::Caller>,
    ) -> Result<(), Refusal> {
        request.spec.check().map_err(Refusal::Invalid)?;
        use crate::spec::JobKind;
        match request.spec.kind {
            JobKind::Mirror => {}
            JobKind::Save | JobKind::Sync | JobKind::Load => {
                return self.start_archive(id, request, caller).await;
            }

            _ => return self.start_images(id, request, caller).await,
        }
        let mut args = request.spec.mirror_args();
        // The coordinator's own TLS, credentials and cache (`serve --cache`, the fleet's
        // bucket, for the configs it reads while planning); the workers copy through theirs.
        args.tls_verify = self.defaults.tls_verify;
        args.authfile = self.defaults.authfile.clone();
        args.cache = self.defaults.cache.clone();
        let list = ImageList::parse(&request.spec.list);
        let prepared =
            mirror::prepare_list(list, &format!("job {id}"), &args, false, &self.console)
                .map_err(|e| Refusal::Invalid(format!("{e:#}")))?;
        // Checked on every start, resumed jobs included: a token file changed since the
        // job was submitted applies to its next run too.
        if let Some(caller) = caller {
            caller
                .authorise_job(&prepared.images, &args)
                .map_err(Refusal::Forbidden)?;
        }
        let (mut spec, rejected) = mirror::spec(prepared, &args);
        spec.interruptible = false;
        let first = running(
            &id,
            request.spec.kind,
            spec.images.len() + rejected.len(),
            &rejected
                .iter()
                .map(|(e, why)| (e.original.clone(), why.clone()))
                .collect::<Vec<_>>(),
        );
        let server = self.clone();
        let run_id = id.clone();
        self.launch(id, request, first, None, move |watch, _| async move {
            let pool = Arc::new(crate::commands::gated_pool(
                args.tls_verify,
                args.authfile.as_deref(),
                server.gate.clone(),
            ));
            let report = job::run_copy(
                spec,
                pool,
                server.console.clone(),
                Backend::Fleet(server.nats.clone()),
                (&run_id, &server.run),
                Some(watch.clone()),
            )
            .await
            .map_err(|e| format!("{e:#}"))?;
            if let Ok(mut s) = watch.lock() {
                // The figures the command line's summary gives.
                s.bytes_copied = report.stats.bytes_copied;
                s.blobs_copied = report.blobs.copied;
                s.blobs_from_cache = report.blobs.from_cache;
                // Every mount, into further repositories too: each saved a fetch.
                s.blobs_mounted = report.blobs.mounted + report.blobs.extra_mounts;
                s.blobs_present = report.blobs.present;
            }
            Ok(())
        })
        .await
    }

    /// Runs a job that was checked and planned: stored first (a job that cannot be stored
    /// could not be resumed, so it is refused rather than run), then `work` — given the
    /// snapshot to keep current and the job's trace — spawned under the job's span; its end
    /// (`Err`: why the run failed) is recorded in the snapshot and stored.
    async fn launch<F>(
        &self,
        id: String,
        mut request: JobRequest,
        first: JobSnapshot,
        results: Option<Results>,
        work: impl FnOnce(Arc<Mutex<JobSnapshot>>, Option<String>) -> F,
    ) -> Result<(), Refusal>
    where
        F: std::future::Future<Output = std::result::Result<(), String>> + Send + 'static,
    {
        let span =
            tracing::info_span!("serve job", otel.name = %format!("serve job {id}"), job = %id);
        hangar_shared::telemetry::adopt(&span, request.trace.as_deref());
        if request.trace.is_none() {
            request.trace = hangar_shared::telemetry::traceparent(&span);
        }
        self.try_save(&id, &request, &first)
            .await
            .map_err(Refusal::Invalid)?;
        let snapshot = Arc::new(Mutex::new(first));
        let run = work(snapshot.clone(), request.trace.clone());
        let (schedule, owner) = (request.schedule.clone(), request.owner.clone());
        let (server, watch, job) = (self.clone(), snapshot.clone(), id.clone());
        let task = tokio::spawn(
            async move {
                let outcome = run.await;
                let last = {
                    let Ok(mut s) = watch.lock() else { return };
                    s.ended = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs());
                    match outcome {
                        Ok(()) => {
                            s.state = if s.failed == 0 { "succeeded" } else { "failed" }.into()
                        }
                        Err(why) => {
                            s.state = "failed".into();
                            s.message = Some(why);
                        }
                    }
                    s.clone()
                };
                server.save(&job, &request, &last).await;
                if let Ok(mut jobs) = server.jobs.lock() {
                    server.forget_old_jobs(&mut jobs);
                }
            }
            .instrument(span),
        );
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.insert(
                id,
                Running {
                    snapshot,
                    task: Some(task),
                    schedule,
                    owner,
                    results,
                    results_dropped: false,
                },
            );
            drop_old_results(&mut jobs, HELD_RESULTS);
            self.forget_old_jobs(&mut jobs);
        }
        Ok(())
    }

    /// The caller a stored job runs as: its owner's token as the file says now. A job whose
    /// owner's token is gone runs as nobody, and is refused.
    fn caller_of(&self, request: &JobRequest) -> Option<Arc<auth::Caller>> {
        let tokens = self.tokens.as_ref()?;
        if request.owner.is_none() && request.schedule.is_some() {
            // The operator's own schedule file: trusted as the command line is.
            return None;
        }
        Some(
            request
                .owner
                .as_deref()
                .and_then(|o| tokens.by_name(o))
                .unwrap_or_else(|| Arc::new(auth::Caller::nobody())),
        )
    }

    /// Picks up the jobs a previous coordinator left running.
    async fn resume(&self) -> Result<usize> {
        let mut keys = self.kv.keys().await.context("listing jobs")?;
        let mut resumed = 0;
        while let Some(key) = keys.next().await {
            let Ok(key) = key else { continue };
            if !stored::is_job_key(&key) {
                continue;
            }
            let stored = match stored::get(&self.kv, &key).await {
                Ok(Some(stored)) => stored,
                Ok(None) => continue,
                Err(e) => {
                    self.console.error(None, format!("cannot resume: {e}"));
                    continue;
                }
            };
            if stored.snapshot.state == "running" {
                self.console.info(None, format!("Resuming job {key}"));
                // The earlier run's queued tasks would only be redone: drop them.
                if let Err(e) = purge_job(self.nats.clone(), &key).await {
                    tracing::warn!("purging the earlier run of job {key}: {e}");
                }
                let caller = self.caller_of(&stored.request);
                if let Err(e) = self
                    .start(key.clone(), stored.request.clone(), caller.as_deref())
                    .await
                {
                    self.console
                        .error(None, format!("cannot resume job {key}: {e}"));
                    let mut snapshot = stored.snapshot;
                    snapshot.state = "failed".into();
                    snapshot.message = Some(format!("cannot resume: {e}"));
                    self.save(&key, &stored.request, &snapshot).await;
                } else {
                    resumed += 1;
                }
            } else if let Ok(mut jobs) = self.jobs.lock() {
                jobs.insert(
                    key,
                    Running {
                        snapshot: Arc::new(Mutex::new(stored.snapshot)),
                        task: None,
                        schedule: stored.request.schedule.clone(),
                        owner: stored.request.owner.clone(),
                        results: None,
                        results_dropped: false,
                    },
                );
            }
        }
        if let Ok(mut jobs) = self.jobs.lock() {
            self.forget_old_jobs(&mut jobs);
        }
        Ok(resumed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(ended: u64, state: &str) -> Running {
        Running {
            snapshot: Arc::new(Mutex::new(JobSnapshot {
                ended,
                state: state.into(),
                ..Default::default()
            })),
            task: None,
            schedule: None,
            owner: None,
            results: Some(Arc::new(Mutex::new(held::Held::new(held::Budget::new(
                usize::MAX,
            ))))),
            results_dropped: false,
        }
    }

    #[test]
    fn only_the_newest_finished_jobs_are_remembered() {
        let mut jobs = HashMap::new();
        for (id, ended, state) in [
            ("old", 1, "succeeded"),
            ("mid", 2, "failed"),
            ("new", 3, "succeeded"),
            ("run", 0, "running"),
        ] {
            jobs.insert(id.to_owned(), job(ended, state));
        }
        assert_eq!(
            limits::oldest_finished(jobs.iter(), 2),
            vec!["old".to_owned()]
        );
        assert!(limits::oldest_finished(jobs.iter(), 3).is_empty());
    }

    #[test]
    fn only_the_newest_finished_jobs_keep_their_outcomes() {
        let mut jobs = HashMap::new();
        for (id, ended, state) in [
            ("old", 1, "succeeded"),
            ("mid", 2, "failed"),
            ("new", 3, "succeeded"),
            ("running", 0, "running"),
        ] {
            jobs.insert(id.to_owned(), job(ended, state));
        }
        drop_old_results(&mut jobs, 2);
        let held = |id: &str| jobs[id].results.is_some();
        assert!(held("new") && held("mid") && held("running"));
        assert!(!held("old") && jobs["old"].results_dropped);
    }
}
