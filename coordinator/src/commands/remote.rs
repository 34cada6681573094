//! The client side of `serve`: `submit --server`, `status`, `cancel`. `submit` follows the
//! job until it ends, prints the same summary line as the embedded mode, writes the failed
//! list locally and exits with the job's outcome.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use indicatif::HumanBytes;

use crate::cli::{ApiClientArgs, MirrorArgs};
use crate::console::Console;
use crate::engine::job::JobSnapshot;

/// The coordinator's base URL. Its API takes a bearer token (`--token-file`, `--token`):
/// credentials written into the URL would go out as Basic auth, which it refuses, and
/// show in every message, so they are refused here.
fn base(server: &str) -> Result<String> {
    let s = server.trim_end_matches('/');
    let url = if s.starts_with("http://") || s.starts_with("https://") {
        s.to_owned()
    } else {
        format!("http://{s}")
    };
    let shown = hangar_shared::redact::redact_url(&url);
    if shown != url {
        bail!(
            "--server {shown}: the coordinator's API takes a bearer token (--token-file), \
             not credentials in its URL"
        );
    }
    Ok(url)
}

/// An HTTP client that sends the caller's bearer token with every request (marked
/// sensitive, so no debug output shows it) and trusts `--server-ca` if given.
fn api_client(api: &ApiClientArgs) -> Result<reqwest::Client> {
    let token = match (&api.token_file, &api.token) {
        (Some(path), _) => {
            let text =
                hangar_shared::local_file::read_text(path, hangar_shared::local_file::CONFIG)
                    .with_context(|| format!("cannot read token file {}", path.display()))?;
            let token = text.lines().next().unwrap_or_default().trim().to_owned();
            if token.is_empty() {
                bail!("token file {} is empty", path.display());
            }
            Some(token)
        }
        (None, Some(t)) if !t.trim().is_empty() => Some(t.trim().to_owned()),
        _ => None,
    };
    let mut builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(60));
    if let Some(token) = token {
        let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
            .context("the API token holds characters a header cannot carry")?;
        value.set_sensitive(true);
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(reqwest::header::AUTHORIZATION, value);
        builder = builder.default_headers(headers);
    }
    if let Some(ca) = &api.server_ca {
        let pem = hangar_shared::local_file::read(ca, hangar_shared::local_file::CONFIG)
            .with_context(|| format!("cannot read CA certificate {}", ca.display()))?;
        let cert = reqwest::Certificate::from_pem(&pem)
            .with_context(|| format!("{} is not a PEM certificate", ca.display()))?;
        builder = builder.add_root_certificate(cert);
    }
    builder.build().context("building the API client")
}

/// What the coordinator said to one request.
enum Answer<T> {
    Got(T),
    /// It answered, and meant it (401, 403, 404, 400): asking again changes nothing.
    Refused(anyhow::Error),
    /// It could not be reached, or failed (connection refused while it restarts, 5xx, a
    /// timeout): worth asking again.
    Unreachable(anyhow::Error),
}

async fn ask<T: serde::de::DeserializeOwned>(http: &reqwest::Client, url: &str) -> Answer<T> {
    let resp = match http.get(url).send().await {
        Ok(r) => r,
        Err(e) => return Answer::Unreachable(anyhow::Error::new(e).context(format!("GET {url}"))),
    };
    let status = resp.status();
    let body = match read_capped(resp, SNAPSHOT_LIMIT).await {
        Ok(Body::Read(b)) => b,
        Ok(Body::TooLarge) if status.is_server_error() => {
            return Answer::Unreachable(anyhow::anyhow!("GET {url}: HTTP {status}"));
        }
        Ok(Body::TooLarge) => {
            return Answer::Refused(anyhow::anyhow!(
                "GET {url}: the answer is over {} MiB; refused",
                SNAPSHOT_LIMIT >> 20
            ));
        }
        Err(e) => return Answer::Unreachable(anyhow::Error::new(e).context(format!("GET {url}"))),
    };
    if !status.is_success() {
        let e = anyhow::anyhow!("GET {url}: HTTP {status}: {}", said(&body));
        return if status.is_server_error() || status.as_u16() == 429 {
            Answer::Unreachable(e)
        } else {
            Answer::Refused(e)
        };
    }
    match serde_json::from_slice(&body) {
        Ok(v) => Answer::Got(v),
        Err(e) => {
            Answer::Refused(anyhow::Error::new(e).context(format!("GET {url}: unexpected answer")))
        }
    }
}

async fn get_json<T: serde::de::DeserializeOwned>(http: &reqwest::Client, url: &str) -> Result<T> {
    match ask(http, url).await {
        Answer::Got(v) => Ok(v),
        Answer::Refused(e) | Answer::Unreachable(e) => Err(e),
    }
}

/// The most a job's results may weigh (scan inventories are tens of KB per image).
const RESULTS_LIMIT: usize = 512 << 20;
/// The most a job's snapshot (or the list of jobs) may weigh: its failed lines, at a few
/// hundred bytes each, for a hundred thousand images.
const SNAPSHOT_LIMIT: usize = 64 << 20;
/// The most any other answer may weigh (a job id, a refusal).
const ANSWER_LIMIT: usize = 1 << 20;

/// Runs a per-image job (sign, sign validate, scan, mirror validate) on the coordinator
/// and hands back each image's outcomes for this process to render, as if its own.
pub async fn run_images(
    remote: (&str, &ApiClientArgs),
    spec: &crate::spec::JobSpec,
    outage: Duration,
    console: &Console,
) -> Result<(JobSnapshot, Vec<crate::engine::work::ImageReport>)> {
    let (server, api) = remote;
    let http = api_client(api)?;
    let (url, id) = post_job(&http, server, spec, outage, console).await?;
    let mut shown = 0;
    let snap = follow(&http, &format!("{url}/{id}"), outage, console, |snap| {
        let done = snap.done();
        if done != shown {
            console.info(
                None,
                format!("{done}/{} images done ({} failed)", snap.total, snap.failed),
            );
            shown = done;
        }
    })
    .await?;
    if let Some(m) = &snap.message {
        console.error(None, m);
    }
    if snap.state == "cancelled" {
        bail!("job {id} was cancelled");
    }
    let results_url = format!("{url}/{id}/results");
    let resp = http
        .get(&results_url)
        .send()
        .await
        .with_context(|| format!("GET {results_url}"))?;
    let status = resp.status();
    let body = read_capped(resp, RESULTS_LIMIT)
        .await
        .with_context(|| format!("GET {results_url}"))?
        .or_refuse(RESULTS_LIMIT)
        .with_context(|| format!("GET {results_url}"))?;
    if !status.is_success() {
        bail!("GET {results_url}: HTTP {status}: {}", said(&body));
    }
    let results = serde_json::from_slice(&body)
        .with_context(|| format!("GET {results_url}: unexpected answer"))?;
    Ok((snap, results))
}

/// A per-image job for the coordinator: where it is, and the job.
pub struct Remote<'a> {
    pub server: &'a str,
    pub api: &'a ApiClientArgs,
    pub spec: crate::spec::JobSpec,
    /// How long the coordinator may be away before the command gives up (`--timeout`).
    pub outage: Duration,
}

/// Runs the job on the coordinator and tells `finished` of each of the `count` images
/// it planned, as a local run would.
pub async fn replay(
    remote: Remote<'_>,
    count: usize,
    console: &Console,
    mut finished: impl FnMut(usize, crate::engine::work::ImageOutcomes),
) -> Result<()> {
    let (snap, results) = run_images(
        (remote.server, remote.api),
        &remote.spec,
        remote.outage,
        console,
    )
    .await?;
    let mut seen = vec![false; count];
    for report in results {
        let item = report.item;
        match seen.get_mut(item) {
            Some(s) if !*s => *s = true,
            _ => bail!(
                "job {}: the coordinator reported image {item} of {count} twice or out of range",
                snap.id
            ),
        }
        finished(item, report.outcomes());
    }
    let missing = seen.iter().filter(|s| !**s).count();
    if missing > 0 {
        bail!(
            "job {} ended {} with {missing} of {count} images unreported",
            snap.id,
            snap.state
        );
    }
    Ok(())
}

/// A response's body, refused once it passes `limit` bytes.
/// An error answer's body for a message: its first 4 KiB.
fn said(body: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(&body[..body.len().min(4096)])
}

/// An answer's body, read up to a bound.
enum Body {
    Read(Vec<u8>),
    /// Longer than the bound (by its `Content-Length`, or as it came): not read further.
    TooLarge,
}

impl Body {
    fn or_refuse(self, limit: usize) -> Result<Vec<u8>> {
        match self {
            Body::Read(b) => Ok(b),
            Body::TooLarge => bail!("the answer is over {} MiB; refused", limit >> 20),
        }
    }
}

/// Reads at most `limit` bytes of an answer; a failed read is the connection's error.
async fn read_capped(mut resp: reqwest::Response, limit: usize) -> reqwest::Result<Body> {
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Ok(Body::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if body.len() + chunk.len() > limit {
            return Ok(Body::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Body::Read(body))
}

/// Backoff between attempts to reach a coordinator that is away: 0.5 s doubling to 5 s.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(500 * 2u64.pow(attempt.min(3))).min(Duration::from_secs(5))
}

/// Follows a job until it ends, riding out coordinator restarts and short outages: a poll
/// that cannot reach it is repeated with backoff for as long as `outage` allows since the
/// last answer; an answer it means (401, 404, …) ends the watch. `each` sees every snapshot.
async fn follow(
    http: &reqwest::Client,
    url: &str,
    outage: Duration,
    console: &Console,
    mut each: impl FnMut(&JobSnapshot),
) -> Result<JobSnapshot> {
    let mut last_answer = std::time::Instant::now();
    let mut failures = 0u32;
    loop {
        let wait = if failures == 0 {
            Duration::from_millis(500)
        } else {
            backoff(failures)
        };
        tokio::time::sleep(wait).await;
        match ask::<JobSnapshot>(http, url).await {
            Answer::Got(snap) => {
                if failures > 0 {
                    console.info(None, "The coordinator answers again");
                }
                failures = 0;
                last_answer = std::time::Instant::now();
                each(&snap);
                if snap.state != "running" && snap.state != "queued" {
                    return Ok(snap);
                }
            }
            Answer::Refused(e) => return Err(e),
            Answer::Unreachable(e) => {
                if last_answer.elapsed() > outage {
                    return Err(e.context(format!(
                        "the coordinator has not answered for {} (--timeout)",
                        humantime::format_duration(outage)
                    )));
                }
                if failures == 0 {
                    console.warn(None, format!("Lost the coordinator ({e:#}); retrying"));
                }
                failures += 1;
            }
        }
    }
}

/// Sends a job to the coordinator and returns its URL and id. Only the job's
/// specification travels: local paths, credentials and NATS settings stay here.
async fn post_job(
    http: &reqwest::Client,
    server: &str,
    spec: &crate::spec::JobSpec,
    outage: Duration,
    console: &Console,
) -> Result<(String, String)> {
    let url = format!("{}/jobs", base(server)?);
    let body = serde_json::to_vec(spec)?;
    let mut request = http
        .post(&url)
        .header(reqwest::header::CONTENT_TYPE, "application/json");
    if let Some(parent) = hangar_shared::telemetry::traceparent(&tracing::Span::current()) {
        request = request.header("traceparent", parent);
    }
    // Retried only while the coordinator cannot be connected to, or turns the connection
    // away (503): the job was not sent. An answer lost after that could mean a job running
    // twice, so it is not retried.
    let started = std::time::Instant::now();
    let mut attempt = 0u32;
    let resp = loop {
        let Some(req) = request.try_clone() else {
            bail!("POST {url}: the request cannot be repeated");
        };
        match req.body(body.clone()).send().await {
            // The coordinator's connections are all taken: it read nothing of the job.
            Ok(resp)
                if resp.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE
                    && started.elapsed() < outage =>
            {
                if attempt == 0 {
                    console.warn(None, format!("{server} is busy (503); retrying"));
                }
                attempt += 1;
                tokio::time::sleep(backoff(attempt)).await;
            }
            Ok(resp) => break resp,
            Err(e) if e.is_connect() && started.elapsed() < outage => {
                if attempt == 0 {
                    console.warn(None, format!("Cannot reach {server} ({e}); retrying"));
                }
                attempt += 1;
                tokio::time::sleep(backoff(attempt)).await;
            }
            Err(e) => return Err(anyhow::Error::new(e).context(format!("POST {url}"))),
        }
    };
    let status = resp.status();
    let body = read_capped(resp, ANSWER_LIMIT)
        .await
        .with_context(|| format!("POST {url}"))?
        .or_refuse(ANSWER_LIMIT)
        .with_context(|| format!("POST {url}"))?;
    let answer: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    if !status.is_success() {
        bail!(
            "the coordinator refused the job: {}",
            answer["error"].as_str().unwrap_or("no reason given")
        );
    }
    let id = answer["id"]
        .as_str()
        .context("the coordinator answered without a job id")?
        .to_owned();
    console.info(None, format!("Job {id} submitted to {server}"));
    Ok((url, id))
}

pub async fn submit(server: &str, args: &MirrorArgs, console: Arc<Console>) -> Result<()> {
    let Some(file) = &args.file else {
        bail!("no list")
    };
    let list = hangar_shared::local_file::read_text(file, hangar_shared::local_file::LIST)
        .with_context(|| format!("cannot read image list {}", file.display()))?;
    if args.scan_db.is_some() {
        bail!(
            "--scan-db does not run through `serve` yet (it needs the database where the report is written): use --nats"
        );
    }
    let outage = humantime::parse_duration(&args.timeout)
        .with_context(|| format!("invalid --timeout {:?}", args.timeout))?;
    let spec = crate::spec::JobSpec::mirror(list, args);
    let remote = Remote {
        server,
        api: &args.fleet.remote.api,
        spec,
        outage,
    };
    copy_job(remote, &args.failed, &console).await
}

/// Runs a copying job (mirror, save, sync, load) on the coordinator, following it with the
/// same lines as here, and writes its failed lines to `failed` here.
pub async fn copy_job(
    remote: Remote<'_>,
    failed: &std::path::Path,
    console: &Console,
) -> Result<()> {
    let http = api_client(remote.api)?;
    let outage = remote.outage;
    let run = super::ListRun::of(remote.spec.kind);
    let (url, id) = post_job(&http, remote.server, &remote.spec, outage, console).await?;
    let mut shown = 0;
    let snap = follow(&http, &format!("{url}/{id}"), outage, console, |snap| {
        let done = snap.done();
        if done != shown {
            console.info(
                None,
                format!("{done}/{} images done ({} failed)", snap.total, snap.failed),
            );
            shown = done;
        }
    })
    .await?;
    console.info(
        None,
        format!(
            "Images: {} copied, {} already present, {} failed, {} skipped; {} copied; job {}",
            snap.copied,
            snap.present,
            snap.failed,
            snap.skipped,
            HumanBytes(snap.bytes_copied),
            snap.state
        ),
    );
    if let Some(m) = &snap.message {
        console.error(None, m);
    }
    if snap.state == "cancelled" {
        bail!("job {id} was cancelled");
    }
    for f in &snap.failures {
        console.error(None, format!("Failed: [{}]: {}", f.line, f.error));
    }
    if snap.failed > snap.failures.len() {
        console.error(
            None,
            format!(
                "{} more failed: the coordinator's log says why",
                snap.failed - snap.failures.len()
            ),
        );
    }
    super::finish(console, failed, &snap.failed_lines, run)?;
    if snap.state != "succeeded" {
        bail!("job {id} {}", snap.state);
    }
    Ok(())
}

pub async fn status(args: &crate::cli::StatusArgs, console: &Console) -> Result<()> {
    let http = api_client(&args.api)?;
    let url = match &args.job {
        Some(id) => format!("{}/jobs/{id}", base(&args.server)?),
        None => format!("{}/jobs", base(&args.server)?),
    };
    if args.watch {
        let Some(id) = &args.job else {
            bail!("status --watch follows one job: name it");
        };
        let outage = humantime::parse_duration(&args.timeout)
            .with_context(|| format!("invalid --timeout {:?}", args.timeout))?;
        let mut shown = None;
        let mut waits = std::collections::HashSet::new();
        let snap = follow(&http, &url, outage, console, |s| {
            for t in &s.in_flight {
                if let Some(on) = &t.waiting_on
                    && waits.insert((t.task, on.clone()))
                {
                    console.info(
                        None,
                        format!(
                            "job {id}: {} ({}, delivery {}) waits on {on}",
                            t.what, t.worker, t.attempt
                        ),
                    );
                }
            }
            let now = (s.copied, s.failed, s.skipped, s.state.clone());
            if shown.as_ref() != Some(&now) {
                console.info(
                    None,
                    format!(
                        "job {id}: {}/{} images done ({} failed), {}",
                        s.done(),
                        s.total,
                        s.failed,
                        s.state
                    ),
                );
                shown = Some(now);
            }
        })
        .await?;
        print_status(&serde_json::to_value(&snap)?, args.json)?;
        return Ok(());
    }
    let v: serde_json::Value = get_json(&http, &url).await?;
    print_status(&v, args.json)
}

/// The coordinator's answer: as it is with `--json`, else as a table.
fn print_status(v: &serde_json::Value, json: bool) -> Result<()> {
    if json {
        crate::stdout::outln!("{}", serde_json::to_string_pretty(v)?)?;
        return Ok(());
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let text = match v {
        serde_json::Value::Array(_) => {
            let all: Vec<JobSnapshot> = serde_json::from_value(v.clone())
                .context("the coordinator answered with something other than jobs")?;
            super::status_table::jobs(&all, now)
        }
        _ => {
            let one: JobSnapshot = serde_json::from_value(v.clone())
                .context("the coordinator answered with something other than a job")?;
            super::status_table::job(&one, now)
        }
    };
    // The coordinator's words (messages, failed list lines) may hold escape sequences.
    crate::stdout::write(crate::console::escape_controls(&text).as_bytes())?;
    Ok(())
}

pub async fn cancel(server: &str, api: &ApiClientArgs, job: &str) -> Result<()> {
    let url = format!("{}/jobs/{job}", base(server)?);
    let resp = api_client(api)?
        .delete(&url)
        .send()
        .await
        .with_context(|| format!("DELETE {url}"))?;
    let status = resp.status();
    let body = read_capped(resp, ANSWER_LIMIT)
        .await
        .with_context(|| format!("DELETE {url}"))?
        .or_refuse(ANSWER_LIMIT)
        .with_context(|| format!("DELETE {url}"))?;
    if !status.is_success() {
        bail!("cancel {job}: HTTP {status}: {}", said(&body));
    }
    crate::stdout::outln!(
        "{}",
        crate::console::escape_controls(&String::from_utf8_lossy(&body))
    )?;
    Ok(())
}
