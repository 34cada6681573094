//! Scan throughput: `hangar-coord scan` over the seeded list (every layer read and parsed,
//! inventories kept in a cache), then the same scan again, when only matching is left.

use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, Result, bail};

use crate::bench::{BenchSpec, unique_blobs};

pub struct ScanRun {
    pub step: &'static str,
    pub seconds: f64,
}

fn run(cmd: &mut Command) -> Result<f64> {
    let start = Instant::now();
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(start.elapsed().as_secs_f64())
}

/// A synthetic OSV database of `n` records (Debian:12, PyPI), dated now.
fn write_db(dir: &std::path::Path, n: usize) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    for i in 0..n {
        let (eco, name) = if i % 2 == 0 {
            ("Debian:12", format!("pkg{i}"))
        } else {
            ("PyPI", format!("py{i}"))
        };
        let body = format!(
            r#"{{"id":"BENCH-{i}","modified":"{now}","affected":[{{"package":{{"ecosystem":"{eco}","name":"{name}"}},"ranges":[{{"type":"ECOSYSTEM","events":[{{"introduced":"0"}},{{"fixed":"9.9"}}]}}]}}]}}"#
        );
        std::fs::write(dir.join(format!("BENCH-{i}.json")), body)?;
    }
    Ok(())
}

pub async fn bench(spec: &BenchSpec) -> Result<(Vec<ScanRun>, u64, usize)> {
    let reg = crate::seed::connect(&spec.source).await?;
    let blobs = unique_blobs(&reg, &spec.lines).await?;
    // Configs are small; count layers (everything but configs is a layer here).
    let layer_bytes: u64 = blobs
        .values()
        .filter(|(_, d)| !d.media_type.contains("config"))
        .map(|(_, d)| d.size)
        .sum();
    let db = spec.workdir.join("bench-osv");
    write_db(&db, 5000)?;
    let cache = spec.workdir.join("bench-scan-cache");
    let jobs = spec.jobs.to_string();
    let cmd = |report: &str| {
        let mut c = Command::new(&spec.hangar);
        c.args([
            "scan",
            "--tls-verify=false",
            "-j",
            &jobs,
            "--format",
            "json",
            "-f",
        ])
        .arg(&spec.list)
        .arg("--db")
        .arg(&db)
        .arg("--cache")
        .arg(&cache)
        .arg("-r")
        .arg(spec.workdir.join(report))
        .arg("-o")
        .arg(spec.workdir.join("scan-failed.txt"));
        c
    };
    let full = tokio::task::block_in_place(|| run(&mut cmd("scan1.json")))?;
    let rematch = tokio::task::block_in_place(|| run(&mut cmd("scan2.json")))?;
    Ok((
        vec![
            ScanRun {
                step: "full scan (layers read)",
                seconds: full,
            },
            ScanRun {
                step: "re-match (inventories cached)",
                seconds: rematch,
            },
        ],
        layer_bytes,
        spec.lines.len(),
    ))
}

pub fn table(rows: &[ScanRun], layer_bytes: u64, images: usize) -> String {
    let mut s = String::from("| step | wall s | layer MB/s | images/min |\n|---|---|---|---|\n");
    for r in rows {
        s.push_str(&format!(
            "| {} | {:.2} | {:.0} | {:.0} |\n",
            r.step,
            r.seconds,
            layer_bytes as f64 / 1e6 / r.seconds,
            images as f64 * 60.0 / r.seconds
        ));
    }
    s
}
