//! The fleet's scale-out: one seeded list mirrored by 1, 2, 4 and 8 `hangar-worker`
//! processes on one nats-server, each into a fresh destination. On a small machine every
//! process shares the same cores and the same loopback, so with `link` each worker's
//! registry traffic goes through a link of its own ([`crate::link`], named to it by
//! `HTTP_PROXY`): a bandwidth cap and a delay, as a pod's share of a real network. The
//! registries, NATS and the coordinator stay on the uncapped loopback.
//!
//! Each row says what the run cost the machine: its idle CPU, NATS messages per unique
//! blob, and the coordinator's CPU time per task.

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};

use crate::bench::{BenchSpec, carried_configs, run_profiled, unique_blobs};
use crate::link::{self, LinkOptions};
use crate::services::{NatsProcess, RegistryProcess};

pub struct FleetRow {
    /// "embedded" or "N workers".
    pub mode: String,
    pub workers: usize,
    pub seconds: f64,
    pub bytes: u64,
    /// The machine's idle CPU over the run, 0–1.
    pub idle: f64,
    /// NATS messages (in) per unique blob.
    pub msgs_per_blob: f64,
    /// NATS messages (in) over the run.
    pub msgs: u64,
    /// Tasks published (the task stream's sequence advanced by this run).
    pub tasks: u64,
    /// The coordinator's user + system CPU time.
    pub coordinator_cpu: Duration,
    pub coordinator_rss_kib: Option<u64>,
}

/// Idle and total jiffies of the machine (`/proc/stat`'s first line; iowait counts idle).
fn cpu_jiffies() -> Result<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = text.lines().next().context("/proc/stat is empty")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Ok((idle, v.iter().sum()))
}

/// The server's messages in, and the task stream's last sequence.
async fn nats_counts(http: &reqwest::Client, nats: &NatsProcess) -> Result<(u64, u64)> {
    let base = nats.monitor_url();
    let varz: serde_json::Value = http
        .get(format!("{base}/varz"))
        .send()
        .await?
        .json()
        .await?;
    let jsz: serde_json::Value = http
        .get(format!("{base}/jsz?streams=true"))
        .send()
        .await?
        .json()
        .await?;
    let tasks = jsz["account_details"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|a| a["stream_detail"].as_array().cloned().unwrap_or_default())
        .find(|s| s["name"] == "HANGAR_TASKS")
        .and_then(|s| s["state"]["last_seq"].as_u64())
        .unwrap_or(0);
    Ok((varz["in_msgs"].as_u64().unwrap_or(0), tasks))
}

/// Runs the list embedded (through one link when given) and on `workers` workers.
pub async fn run(
    spec: &BenchSpec,
    workers: &[usize],
    blob_concurrency: usize,
    link_opts: Option<LinkOptions>,
) -> Result<Vec<FleetRow>> {
    let nats = NatsProcess::start()?;
    let worker_bin = spec.hangar.with_file_name("hangar-worker");
    if !worker_bin.exists() {
        bail!(
            "{} is missing: build it with cargo build --release --bin hangar-worker",
            worker_bin.display()
        );
    }
    let http = reqwest::Client::builder().no_proxy().build()?;
    let source = crate::seed::connect(&spec.source).await?;
    let blobs = unique_blobs(&source, &spec.lines).await?;
    let bytes: u64 = blobs.values().map(|(_, d)| d.size).sum();
    let downloaded = bytes - carried_configs(&source, &spec.lines).await?;
    let mut out = Vec::new();
    for &n in std::iter::once(&0).chain(workers) {
        let dest = RegistryProcess::start()?;
        let mut links = Vec::new();
        let mut procs = Vec::new();
        for _ in 0..n {
            let mut cmd = Command::new(&worker_bin);
            cmd.args(["--nats", &nats.url(), "--tls-verify=false"])
                .args(["--blob-concurrency", &blob_concurrency.to_string()])
                .args(["--listen", "127.0.0.1:0"])
                .env("REGISTRY_AUTH_FILE", "/nonexistent/auth.json")
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            if let Some(opts) = link_opts {
                let l = link::start(opts).await?;
                // An inherited NO_PROXY (often `localhost,127.0.0.1`) would bypass the link.
                cmd.env("HTTP_PROXY", &l.url)
                    .env_remove("NO_PROXY")
                    .env_remove("no_proxy");
                links.push(l);
            }
            procs.push(cmd.spawn()?);
        }
        let mut cmd = spec.mirror_command(&spec.list, &dest.addr);
        if n > 0 {
            cmd.args(["--nats", &nats.url()]);
        } else if let Some(opts) = link_opts {
            // Embedded, the command's own transfers take the one link.
            let l = link::start(opts).await?;
            cmd.env("HTTP_PROXY", &l.url)
                .env_remove("NO_PROXY")
                .env_remove("no_proxy");
            links.push(l);
        }
        cmd.stderr(Stdio::null());
        // Workers connect and make their consumers before the clock starts.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (msgs0, tasks0) = nats_counts(&http, &nats).await?;
        let cpu0 = cpu_jiffies()?;
        let profile = tokio::task::block_in_place(|| run_profiled(&mut cmd))?;
        let cpu1 = cpu_jiffies()?;
        let (msgs1, tasks1) = nats_counts(&http, &nats).await?;
        for mut p in procs {
            let _ = p.kill();
            let _ = p.wait();
        }
        let (idle, total) = (cpu1.0 - cpu0.0, (cpu1.1 - cpu0.1).max(1));
        out.push(FleetRow {
            mode: match n {
                0 => "embedded".to_owned(),
                1 => "1 worker".to_owned(),
                n => format!("{n} workers"),
            },
            workers: n,
            seconds: profile.elapsed.as_secs_f64(),
            bytes,
            idle: idle as f64 / total as f64,
            msgs_per_blob: (msgs1 - msgs0) as f64 / blobs.len().max(1) as f64,
            msgs: msgs1 - msgs0,
            tasks: tasks1 - tasks0,
            coordinator_cpu: profile.cpu,
            coordinator_rss_kib: profile.peak_rss_kib,
        });
        // Every blob crossed a link both ways, or the row measured something else.
        if link_opts.is_some() {
            let (up, down) = links
                .iter()
                .map(|l| l.carried())
                .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
            if up < bytes || down < downloaded {
                bail!(
                    "{} workers: the links carried {up} bytes up and {down} down, less than the \
                     {bytes} bytes of the list ({downloaded} of them downloaded by workers): \
                     traffic bypassed them",
                    n
                );
            }
        }
        drop(links);
    }
    Ok(out)
}

pub fn table(rows: &[FleetRow]) -> String {
    let mut s = String::from(
        "| mode | wall s | MB/s | vs 1 worker | idle CPU | NATS msgs / blob | tasks | NATS msgs / task | coordinator CPU / task | coordinator peak RSS |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let one = rows.iter().find(|r| r.workers == 1).map(|r| r.seconds);
    for r in rows {
        let per_task = match r.tasks {
            0 => "-".to_owned(),
            t => format!("{:.0} µs", r.coordinator_cpu.as_secs_f64() * 1e6 / t as f64),
        };
        s.push_str(&format!(
            "| {} | {:.2} | {:.1} | {} | {:.0} % | {} | {} | {} | {} | {} |\n",
            r.mode,
            r.seconds,
            r.bytes as f64 / 1e6 / r.seconds,
            match (one, r.workers) {
                (Some(b), 1..) => format!("{:.2}x", b / r.seconds),
                _ => "-".into(),
            },
            r.idle * 100.0,
            match r.workers {
                0 => "-".to_owned(),
                _ => format!("{:.1}", r.msgs_per_blob),
            },
            r.tasks,
            match r.tasks {
                0 => "-".to_owned(),
                t => format!("{:.1}", r.msgs as f64 / t as f64),
            },
            per_task,
            r.coordinator_rss_kib
                .map(|k| format!("{:.1} MB", k as f64 / 1024.0))
                .unwrap_or_else(|| "-".into()),
        ));
    }
    s
}
