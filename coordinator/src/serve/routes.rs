//! The API's handlers: submit, list, status, results, cancel, metrics, and the
//! authentication every route but `/healthz` and `/metrics` passes through.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Extension, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hangar_shared::queue::jetstream::purge_job;

use super::{JobRequest, Refusal, Server, auth, refuse, snapshot_of};
use crate::engine::job::{self, JobSnapshot};
use crate::spec::JobSpec;

/// The most a job specification may be: a list is at most the bucket's 1 MB value plus
/// its flags.
pub(super) const BODY_LIMIT: usize = 2 << 20;
/// How long a job specification may take to arrive: the connection's head is bounded
/// (10 s), and a caller trickling a body would otherwise hold one of the places
/// (`--max-connections`) for ever. 2 MiB in 20 s is 100 KB/s.
const BODY_TIME: std::time::Duration = std::time::Duration::from_secs(20);

pub(super) async fn submit(
    State(server): State<Server>,
    Extension(caller): Extension<Arc<auth::Caller>>,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> Response {
    // The role before the body: a reader's token does not get to send one.
    if let Err(e) = caller.require(auth::Role::Submit, "submitting a job") {
        return refuse(StatusCode::FORBIDDEN, e);
    }
    let body = match tokio::time::timeout(BODY_TIME, axum::body::to_bytes(body, BODY_LIMIT)).await {
        Ok(Ok(body)) => body,
        Ok(Err(e)) => {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            return match too_large {
                true => refuse(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("job specification: {e} (at most {} MiB)", BODY_LIMIT >> 20),
                ),
                false => refuse(StatusCode::BAD_REQUEST, format!("job specification: {e}")),
            };
        }
        Err(_) => {
            return refuse(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the job specification did not arrive within {} s",
                    BODY_TIME.as_secs()
                ),
            );
        }
    };
    let spec = match JobSpec::from_json(&body) {
        Ok(spec) => spec,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, format!("job specification: {e}")),
    };
    if let Err(e) = super::limits::timeout_allowed(&spec) {
        return refuse(StatusCode::BAD_REQUEST, e);
    }
    let _place = match server.place_for(&caller.name) {
        Ok(place) => place,
        Err(running) => {
            return refuse(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "{running} jobs of {:?} are running, the most one caller may run at once: \
                     wait for one to end, or cancel one",
                    caller.name
                ),
            );
        }
    };
    let id = job::new_job_id();
    // Only the server's own schedules name a schedule (a client's would make the real cron
    // run think itself busy and skip), and only the server says who submitted.
    let request = JobRequest {
        spec,
        schedule: None,
        trace: headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        owner: Some(caller.name.clone()),
    };
    let checked = server.tokens.is_some().then_some(caller.as_ref());
    match server.start(id.clone(), request, checked).await {
        Ok(()) => {
            tracing::info!(job = %id, caller = %caller.name, "job submitted");
            (StatusCode::CREATED, Json(serde_json::json!({ "id": id }))).into_response()
        }
        Err(Refusal::Forbidden(e)) => {
            tracing::warn!(caller = %caller.name, "job refused: {e}");
            refuse(StatusCode::FORBIDDEN, e)
        }
        Err(Refusal::Invalid(e)) => refuse(StatusCode::BAD_REQUEST, e),
    }
}

/// Lets a request through with its [`auth::Caller`], or answers 401. The token is never
/// logged: only the name it maps to.
pub(super) async fn authenticate(
    State(server): State<Server>,
    mut req: Request,
    next: Next,
) -> Response {
    let caller = match &server.tokens {
        None => Arc::new(auth::Caller::unauthenticated()),
        Some(tokens) => {
            let presented = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(auth::bearer);
            match presented.and_then(|t| tokens.authenticate(t)) {
                Some(c) => c,
                None => {
                    let mut resp = refuse(
                        StatusCode::UNAUTHORIZED,
                        "a valid bearer token is needed (hangar-coord --token-file or HANGAR_TOKEN)",
                    );
                    resp.headers_mut().insert(
                        header::WWW_AUTHENTICATE,
                        header::HeaderValue::from_static("Bearer realm=\"hangar\""),
                    );
                    return resp;
                }
            }
        }
    };
    req.extensions_mut().insert(caller);
    next.run(req).await
}

pub(super) async fn list(
    State(server): State<Server>,
    Extension(caller): Extension<Arc<auth::Caller>>,
) -> Response {
    if let Err(e) = caller.require(auth::Role::Read, "listing jobs") {
        return refuse(StatusCode::FORBIDDEN, e);
    }
    let jobs: Vec<JobSnapshot> = server
        .jobs
        .lock()
        .map(|j| j.values().map(snapshot_of).collect())
        .unwrap_or_default();
    Json(jobs).into_response()
}

pub(super) async fn status(
    State(server): State<Server>,
    Extension(caller): Extension<Arc<auth::Caller>>,
    Path(id): Path<String>,
) -> Response {
    if let Err(e) = caller.require(auth::Role::Read, "reading a job") {
        return refuse(StatusCode::FORBIDDEN, e);
    }
    let snap = server
        .jobs
        .lock()
        .ok()
        .and_then(|j| j.get(&id).map(snapshot_of));
    match snap {
        Some(s) => Json(s).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({ "error": format!("no job {id}") })),
        )
            .into_response(),
    }
}

/// Each image's outcomes of a finished job over images where they are: what the client
/// renders its reports from.
pub(super) async fn results(
    State(server): State<Server>,
    Extension(caller): Extension<Arc<auth::Caller>>,
    Path(id): Path<String>,
) -> Response {
    let found = server.jobs.lock().ok().and_then(|j| {
        j.get(&id).map(|r| {
            let kept = r.results.as_ref().map(Arc::clone);
            (snapshot_of(r), kept, r.owner.clone(), r.results_dropped)
        })
    });
    let Some((snap, kept, owner, dropped)) = found else {
        return refuse(StatusCode::NOT_FOUND, format!("no job {id}"));
    };
    // Outcomes say what images hold (packages, signatures): its submitter's to read.
    if let Err(e) = caller.may_read_results(owner.as_deref()) {
        return refuse(StatusCode::FORBIDDEN, e);
    }
    if super::limits::open(&snap.state) {
        return refuse(
            StatusCode::CONFLICT,
            format!("job {id} is still {}", snap.state),
        );
    }
    match kept {
        // Encoded under the lock, not copied out first: a large job's outcomes (scan
        // inventories) are held once.
        Some(kept) => match kept.lock().map(|k| (!k.over()).then(|| k.encode())) {
            Ok(Some(Ok(body))) => {
                ([(header::CONTENT_TYPE, "application/json")], body).into_response()
            }
            Ok(None) => refuse(
                StatusCode::GONE,
                format!(
                    "the results of job {id} were dropped: with the other jobs' they came to \
                     more than the coordinator holds for results ({} bytes, --results-memory); \
                     run it with fewer images",
                    server.results_budget.limit()
                ),
            ),
            _ => refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the results of job {id} cannot be read"),
            ),
        },
        None if matches!(snap.kind.as_str(), "" | "mirror" | "save" | "sync" | "load") => refuse(
            StatusCode::NOT_FOUND,
            format!("job {id} copies images: its figures are the job itself"),
        ),
        None if dropped => refuse(
            StatusCode::GONE,
            format!(
                "the results of job {id} are no longer held: the coordinator holds those of the newest {} finished jobs",
                super::HELD_RESULTS
            ),
        ),
        None => refuse(
            StatusCode::GONE,
            format!(
                "the results of job {id} are no longer held (the coordinator restarted since it ended)"
            ),
        ),
    }
}

pub(super) async fn cancel(
    State(server): State<Server>,
    Extension(caller): Extension<Arc<auth::Caller>>,
    Path(id): Path<String>,
) -> Response {
    let owner = server
        .jobs
        .lock()
        .ok()
        .and_then(|j| j.get(&id).map(|r| r.owner.clone()));
    let Some(owner) = owner else {
        return refuse(StatusCode::NOT_FOUND, format!("no job {id}"));
    };
    if let Err(e) = caller.may_cancel(owner.as_deref()) {
        return refuse(StatusCode::FORBIDDEN, e);
    }
    tracing::info!(job = %id, caller = %caller.name, "job cancelled");
    let found = server.jobs.lock().ok().and_then(|mut j| {
        j.get_mut(&id).map(|r| {
            if let Ok(mut s) = r.snapshot.lock()
                && s.state == "running"
            {
                s.state = "cancelled".into();
            }
            (snapshot_of(r), r.task.take())
        })
    });
    let Some((snap, task)) = found else {
        return (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({ "error": format!("no job {id}") })),
        )
            .into_response();
    };
    // Stop publishing first, so nothing lands after the purge.
    if let Some(task) = task {
        task.abort();
        let _ = task.await;
    }
    let purged = purge_job(server.nats.clone(), &id).await.unwrap_or(0);
    if let Ok(Some(stored)) = super::stored::get(&server.kv, &id).await {
        server.save(&id, &stored.request, &snap).await;
    }
    Json(serde_json::json!({ "id": id, "state": snap.state, "purged_tasks": purged }))
        .into_response()
}

pub(super) async fn metrics(State(server): State<Server>) -> impl IntoResponse {
    let snapshots: Vec<JobSnapshot> = server
        .jobs
        .lock()
        .map(|j| j.values().map(snapshot_of).collect())
        .unwrap_or_default();
    let page = server.metrics.render(&snapshots);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], page)
}
