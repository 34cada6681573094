//! The client side of `serve`: `submit --server`, `status`, `cancel`. `submit` follows the
//! job until it ends, prints the same summary line as the embedded mode, writes the failed
//! list locally and exits with the job's outcome.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use indicatif::HumanBytes;

use crate::cli::MirrorArgs;
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
    let http = reqwest::Client::new();
    let url = format!("{}/jobs", base(server));
    let body = serde_json::to_vec(&JobRequest {
        list,
        args: sent,
        schedule: None,
        trace: None,
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

pub async fn status(server: &str, job: Option<&str>) -> Result<()> {
    let http = reqwest::Client::new();
    let url = match job {
        Some(id) => format!("{}/jobs/{id}", base(server)),
        None => format!("{}/jobs", base(server)),
    };
    let v: serde_json::Value = get_json(&http, &url).await?;
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

pub async fn cancel(server: &str, job: &str) -> Result<()> {
    let url = format!("{}/jobs/{job}", base(server));
    let resp = reqwest::Client::new()
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
