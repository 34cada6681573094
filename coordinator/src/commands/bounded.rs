//! Reads of outside input with a bound on their size (and, over http, their time): a
//! file or an answer larger than the caller's `cap` is refused as it comes, never held.

use std::path::Path;

use anyhow::{Context as _, Result, bail};
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt as _;

/// How long one download may take as a whole (the client bounds each read, not a server
/// that sends a byte at a time).
const DOWNLOAD_TIME: std::time::Duration = std::time::Duration::from_secs(600);

/// A local file, whole, up to `cap` bytes.
pub fn read_file(path: &Path, cap: u64) -> Result<Vec<u8>> {
    hangar_shared::local_file::read(path, cap)
        .with_context(|| format!("reading {}", path.display()))
}

/// A local text file, whole, up to `cap` bytes.
pub fn read_text(path: &Path, cap: u64) -> Result<String> {
    hangar_shared::local_file::read_text(path, cap)
        .with_context(|| format!("reading {}", path.display()))
}

/// A GET of at most `cap` bytes within [`DOWNLOAD_TIME`]: written to `to`, or returned.
pub async fn get(
    http: &reqwest::Client,
    url: &str,
    to: Option<&Path>,
    cap: u64,
) -> Result<Vec<u8>> {
    Downloads::new(http.clone(), None).get(url, to, cap).await
}

/// Downloads, each bounded in time as a whole (the caller bounds each in size).
#[derive(Clone)]
pub struct Downloads {
    http: reqwest::Client,
    within: std::time::Duration,
}

impl Downloads {
    /// `within` each, or [`DOWNLOAD_TIME`].
    pub fn new(http: reqwest::Client, within: Option<std::time::Duration>) -> Self {
        Self {
            http,
            within: within.unwrap_or(DOWNLOAD_TIME),
        }
    }

    /// A GET of at most `cap` bytes: written to `to`, or returned.
    pub async fn get(&self, url: &str, to: Option<&Path>, cap: u64) -> Result<Vec<u8>> {
        match tokio::time::timeout(self.within, get_once(&self.http, url, to, cap)).await {
            Ok(done) => done,
            Err(_) => bail!(
                "{}: not downloaded within {}",
                hangar_shared::redact::redact_url(url),
                humantime::format_duration(self.within)
            ),
        }
    }
}

async fn get_once(
    http: &reqwest::Client,
    url: &str,
    to: Option<&Path>,
    cap: u64,
) -> Result<Vec<u8>> {
    // Shown without a URL's credentials (reqwest takes them as Basic auth).
    let shown = hangar_shared::redact::redact_url(url);
    let resp = http
        .get(url)
        .send()
        .await
        .with_context(|| format!("failed to get url {shown:?}"))?;
    // Only a whole answer: a partial one (206) or none (204) is not the file.
    if resp.status() != reqwest::StatusCode::OK {
        bail!("failed to get url {shown:?}: {}", resp.status());
    }
    let mut file = match to {
        Some(p) => Some(
            tokio::fs::File::create(p)
                .await
                .with_context(|| p.display().to_string())?,
        ),
        None => None,
    };
    let (mut body, mut seen) = (Vec::new(), 0u64);
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.with_context(|| format!("reading {shown}"))?;
        seen += chunk.len() as u64;
        if seen > cap {
            bail!("{shown} answered more than {} MiB", cap >> 20);
        }
        match file.as_mut() {
            Some(f) => f.write_all(&chunk).await?,
            None => body.extend_from_slice(&chunk),
        }
    }
    if let Some(f) = file.as_mut() {
        f.flush().await?;
    }
    Ok(body)
}
