//! The client side of `serve`: `submit --server`, `status`, `cancel`. `submit` follows the
//! job until it ends, prints the same summary line as the embedded mode, writes the failed
//! list locally and exits with the job's outcome.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use indicatif::HumanBytes;

use crate::cli::{ApiClientArgs, MirrorArgs};
use crate::console::Console;
use crate::job::JobSnapshot;
use crate::serve::JobRequest;

fn base(server: &str) -> String {
    let s = server.trim_end_matches('/');
    if s.starts_with("http://") || s.starts_with("https://") {
        s.to_owned()
    } else {
        format!("http://{s}")
    }
}

/// An HTTP client that sends the caller's bearer token with every request (marked
/// sensitive, so no debug output shows it) and trusts `--server-ca` if given.
fn api_client(api: &ApiClientArgs) -> Result<reqwest::Client> {
    let token = match (&api.token_file, &api.token) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path)
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
        let pem = std::fs::read(ca)
            .with_context(|| format!("cannot read CA certificate {}", ca.display()))?;
        let cert = reqwest::Certificate::from_pem(&pem)
            .with_context(|| format!("{} is not a PEM certificate", ca.display()))?;
        builder = builder.add_root_certificate(cert);
    }
    builder.build().context("building the API client")
}

async fn get_json<T: serde::de::DeserializeOwned>(http: &reqwest::Client, url: &str) -> Result<T> {
    let resp = http
        .get(url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = resp.status();
    let body = resp.bytes().await?;
    if !status.is_success() {
        bail!(
            "GET {url}: HTTP {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    serde_json::from_slice(&body).with_context(|| format!("GET {url}: unexpected answer"))
}

pub async fn submit(server: &str, args: &MirrorArgs, console: Arc<Console>) -> Result<()> {
    let Some(file) = &args.file else {
        bail!("no list")
    };
    let list = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read image list {}", file.display()))?;
    // Local paths and NATS credentials stay here.
    let mut sent = args.clone();
    sent.file = None;
    sent.authfile = None;
    sent.cache = None;
    sent.fleet = Default::default();
    let http = api_client(&args.fleet.api)?;
    let url = format!("{}/jobs", base(server));
    let body = serde_json::to_vec(&JobRequest {
        list,
        args: sent,
        schedule: None,
        trace: None,
        owner: None,
    })?;
    let mut request = http
        .post(&url)
        .header(reqwest::header::CONTENT_TYPE, "application/json");
    if let Some(parent) = hangar_shared::telemetry::traceparent(&tracing::Span::current()) {
        request = request.header("traceparent", parent);
    }
    let resp = request
        .body(body)
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    let status = resp.status();
    let answer: serde_json::Value =
        serde_json::from_slice(&resp.bytes().await?).unwrap_or_default();
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
    let mut shown = 0;
    let snap = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let snap: JobSnapshot = get_json(&http, &format!("{url}/{id}")).await?;
        let done = snap.copied + snap.failed + snap.skipped;
        if done != shown {
            console.info(
                None,
                format!("{done}/{} images done ({} failed)", snap.total, snap.failed),
            );
            shown = done;
        }
        if snap.state != "running" && snap.state != "queued" {
            break snap;
        }
    };
    console.info(
        None,
        format!(
            "Images: {} copied, {} failed, {} skipped; {} copied; job {}",
            snap.copied,
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
    super::finish(&console, &args.failed, &snap.failed_lines, "copy")?;
    if snap.state != "succeeded" {
        bail!("job {id} {}", snap.state);
    }
    Ok(())
}

pub async fn status(server: &str, api: &ApiClientArgs, job: Option<&str>) -> Result<()> {
    let http = api_client(api)?;
    let url = match job {
        Some(id) => format!("{}/jobs/{id}", base(server)),
        None => format!("{}/jobs", base(server)),
    };
    let v: serde_json::Value = get_json(&http, &url).await?;
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

pub async fn cancel(server: &str, api: &ApiClientArgs, job: &str) -> Result<()> {
    let url = format!("{}/jobs/{job}", base(server));
    let resp = api_client(api)?
        .delete(&url)
        .send()
        .await
        .with_context(|| format!("DELETE {url}"))?;
    let status = resp.status();
    let body = resp.bytes().await?;
    if !status.is_success() {
        bail!(
            "cancel {job}: HTTP {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    println!("{}", String::from_utf8_lossy(&body));
    Ok(())
}
