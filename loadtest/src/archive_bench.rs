//! The archive benchmark: the seeded list saved into a zip and loaded into a fresh registry
//! by hangar, beside skopeo copying the same images into an `oci:` layout and `dir:`
//! directories (one `skopeo copy --all` per image, as a script would), and raw bounds:
//! every unique blob GET to a file (save) or GET→PUT between registries (load), 32 at a
//! time, unverified; and the save floor, the raw save bound with the manifest reads a save
//! needs inside its clock ([`crate::floor`]).

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Instant;

use anyhow::Result;
use futures_util::StreamExt;
use hangar_shared::manifest::Descriptor;
use hangar_shared::reference::ImageRef;
use tokio::io::AsyncWriteExt;

use crate::bench::{
    BenchSpec, Measurement, raw_copy, run_measured, run_profiled, settle, unique_blobs,
};
use crate::services::RegistryProcess;

/// Every unique blob GET into its own file, `parallel` at a time.
pub async fn raw_save(
    src: &str,
    blobs: &BTreeMap<String, (String, Descriptor)>,
    dir: &std::path::Path,
    parallel: usize,
) -> Result<()> {
    let http = reqwest::Client::new();
    let results: Vec<Result<()>> = futures_util::stream::iter(blobs.values())
        .map(|(repo, desc)| {
            let http = http.clone();
            async move {
                let resp = http
                    .get(format!("http://{src}/v2/{repo}/blobs/{}", desc.digest))
                    .send()
                    .await?
                    .error_for_status()?;
                let mut file = tokio::fs::File::create(dir.join(desc.digest.hex())).await?;
                let mut body = resp.bytes_stream();
                while let Some(chunk) = body.next().await {
                    file.write_all(&chunk?).await?;
                }
                file.flush().await?;
                Ok(())
            }
        })
        .buffer_unordered(parallel)
        .collect()
        .await;
    results.into_iter().collect()
}

/// The save floor into `dir`: the list's manifests read, then [`raw_save`]; how many
/// manifests.
async fn floor_save(
    spec: &BenchSpec,
    blobs: &BTreeMap<String, (String, Descriptor)>,
    dir: &std::path::Path,
) -> Result<usize> {
    let manifests = crate::floor::read_manifests(&spec.source, &spec.lines, 32).await?;
    raw_save(&spec.source, blobs, dir, 32).await?;
    Ok(manifests)
}

fn row(tool: &str, seconds: f64, bytes: u64, rss: Option<u64>) -> Measurement {
    Measurement {
        network: "loopback".into(),
        tool: tool.into(),
        seconds,
        bytes,
        peak_rss_kib: rss,
    }
}

/// Issue 16 asks how many bytes a save writes per byte of archive (the archive once, plus
/// whatever it staged): `wchar` over the zip's size; and the disk space it used beside the
/// archive at most.
fn written_per_byte(tool: &str, written: u64, archive: &std::path::Path, beside: u64) {
    if let Ok(size) = std::fs::metadata(archive).map(|m| m.len()) {
        println!(
            "{tool}: {written} bytes written for a {size}-byte archive, {:.2} per byte saved; \
             at most {beside} bytes on disk beside the archive ({:.2} of it)",
            written as f64 / size as f64,
            beside as f64 / size as f64
        );
    }
}

/// Bytes in the files under `dir`, recursively.
fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(|e| e.ok())
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(_) => e.metadata().map(|m| m.len()).unwrap_or(0),
            Err(_) => 0,
        })
        .sum()
}

/// Runs `f` while polling (every 20 ms) the disk space a save uses beside its archive: its
/// temporary cache and staging (`.hangar-cache-*`) and `bench-cache` under `work`. The
/// most seen, with `f`'s result.
fn with_disk_peak<T>(work: &std::path::Path, f: impl FnOnce() -> T) -> (T, u64) {
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (done, work) = (done.clone(), work.to_owned());
        std::thread::spawn(move || {
            let mut peak = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let used: u64 = std::fs::read_dir(&work)
                    .into_iter()
                    .flatten()
                    .filter_map(|e| e.ok())
                    .filter(|e| {
                        let name = e.file_name().to_string_lossy().into_owned();
                        name.starts_with(".hangar-cache-") || name == "bench-cache"
                    })
                    .map(|e| dir_bytes(&e.path()))
                    .sum();
                peak = peak.max(used);
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            peak
        })
    };
    let out = f();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    (out, watcher.join().unwrap_or(0))
}

/// `hangar-coord save` of `list` into `archive` (streamed, unless the caller adds `--cache`).
fn save_command(spec: &BenchSpec, list: &std::path::Path, archive: &std::path::Path) -> Command {
    let mut save = Command::new(&spec.hangar);
    save.args([
        "save",
        "--tls-verify=false",
        "-y",
        "-j",
        &spec.jobs.to_string(),
        "-f",
    ])
    .arg(list)
    .arg("-d")
    .arg(archive)
    .arg("-o")
    .arg(spec.workdir.join("save-failed.txt"))
    .stdout(std::process::Stdio::null());
    save
}

/// `spec.rounds` more streamed saves, raw saves and save floors, back to back, a different
/// one first each round: (hangar's seconds, the raw bound's, the floor's) per round.
pub async fn save_rounds(spec: &BenchSpec) -> Result<Vec<[f64; 3]>> {
    let reg = crate::seed::connect(&spec.source).await?;
    let blobs = unique_blobs(&reg, &spec.lines).await?;
    let archive = spec.workdir.join("rounds.zip");
    let raw_dir = spec.workdir.join("raw-rounds");
    let mut rounds = Vec::new();
    for round in 0..spec.rounds {
        let mut seconds = [0.0; 3];
        for at in crate::bench::round_order(round) {
            tokio::task::block_in_place(settle);
            std::fs::create_dir_all(&raw_dir)?;
            let start = Instant::now();
            match at {
                0 => {
                    let mut save = save_command(spec, &spec.list, &archive);
                    tokio::task::block_in_place(|| run_profiled(&mut save))?;
                }
                1 => raw_save(&spec.source, &blobs, &raw_dir, 32).await?,
                _ => drop(floor_save(spec, &blobs, &raw_dir).await?),
            }
            seconds[at] = start.elapsed().as_secs_f64();
            let _ = std::fs::remove_dir_all(&raw_dir);
            let _ = std::fs::remove_file(&archive);
        }
        rounds.push(seconds);
    }
    Ok(rounds)
}

pub async fn run(spec: &BenchSpec) -> Result<Vec<Measurement>> {
    let reg = crate::seed::connect(&spec.source).await?;
    let blobs = unique_blobs(&reg, &spec.lines).await?;
    let bytes: u64 = blobs.values().map(|(_, d)| d.size).sum();
    let work = &spec.workdir;
    let mut out = Vec::new();
    let jobs = spec.jobs.to_string();

    let archive = work.join("bench.zip");
    let mut save = save_command(spec, &spec.list, &archive);
    tokio::task::block_in_place(settle);
    let (p, disk) =
        tokio::task::block_in_place(|| with_disk_peak(work, || run_profiled(&mut save)));
    let p = p?;
    out.push(row(
        "hangar save (zip)",
        p.elapsed.as_secs_f64(),
        bytes,
        p.peak_rss_kib,
    ));
    written_per_byte("hangar save (zip)", p.written, &archive, disk);

    // The same save gathering every blob into a cache first (as `--cache` does): the
    // streamed save's comparison in the same run.
    let staged = work.join("staged.zip");
    let cache = work.join("bench-cache");
    let mut cached = save_command(spec, &spec.list, &staged);
    cached.arg("--cache").arg(&cache);
    tokio::task::block_in_place(settle);
    let (p, disk) =
        tokio::task::block_in_place(|| with_disk_peak(work, || run_profiled(&mut cached)));
    let p = p?;
    let tool = "hangar save (zip) --cache, gathered first";
    out.push(row(tool, p.elapsed.as_secs_f64(), bytes, p.peak_rss_kib));
    written_per_byte(tool, p.written, &staged, disk);
    let _ = std::fs::remove_file(&staged);
    let _ = std::fs::remove_dir_all(&cache);

    // Over a WAN-like link fetching is the slow part, and writing the zip as images
    // complete hides behind it.
    let proxy = crate::proxy::start(
        "127.0.0.1:0",
        &spec.source,
        crate::proxy::ProxyOptions {
            delay: spec.delay,
            ..Default::default()
        },
    )
    .await?;
    let far: Vec<String> = spec
        .lines
        .iter()
        .map(|l| l.replace(&spec.source, &proxy.addr))
        .collect();
    let far_list = work.join("far-list.txt");
    std::fs::write(&far_list, far.join("\n") + "\n")?;
    let mut far_save = save_command(spec, &far_list, &work.join("far.zip"));
    tokio::task::block_in_place(settle);
    let (p, disk) =
        tokio::task::block_in_place(|| with_disk_peak(work, || run_profiled(&mut far_save)));
    let p = p?;
    let tool = format!(
        "hangar save (zip) via a {} ms proxy",
        spec.delay.as_millis()
    );
    out.push(row(&tool, p.elapsed.as_secs_f64(), bytes, p.peak_rss_kib));
    written_per_byte(&tool, p.written, &work.join("far.zip"), disk);
    let _ = std::fs::remove_file(work.join("far.zip"));

    for (tool, transport) in [("skopeo → oci:", "oci"), ("skopeo → dir:", "dir")] {
        let target = work.join(format!("skopeo-{transport}"));
        std::fs::create_dir_all(&target)?;
        tokio::task::block_in_place(settle);
        let start = Instant::now();
        let mut peak = 0;
        for (n, line) in spec.lines.iter().enumerate() {
            let r = ImageRef::parse(line)?;
            let dest = match transport {
                "oci" => format!("oci:{}:img{n}", target.display()),
                _ => format!("dir:{}/img{n}", target.display()),
            };
            let mut cmd = Command::new("skopeo");
            cmd.args(["copy", "--all", "--src-tls-verify=false", "-q"])
                .arg(format!(
                    "docker://{}/{}:{}",
                    spec.source,
                    r.repository(),
                    r.manifest_reference()
                ))
                .arg(dest);
            let (_, rss) = tokio::task::block_in_place(|| run_measured(&mut cmd))?;
            peak = peak.max(rss.unwrap_or(0));
        }
        out.push(row(tool, start.elapsed().as_secs_f64(), bytes, Some(peak)));
        let _ = std::fs::remove_dir_all(&target);
    }

    let raw_dir = work.join("raw-save");
    for (tool, floor) in [
        ("raw save (GET → files)", false),
        ("save floor (manifests, GET → files)", true),
    ] {
        std::fs::create_dir_all(&raw_dir)?;
        tokio::task::block_in_place(settle);
        let start = Instant::now();
        match floor {
            false => raw_save(&spec.source, &blobs, &raw_dir, 32).await?,
            true => {
                let manifests = floor_save(spec, &blobs, &raw_dir).await?;
                println!("save floor: {manifests} manifests read");
            }
        }
        out.push(row(tool, start.elapsed().as_secs_f64(), bytes, None));
        let _ = std::fs::remove_dir_all(&raw_dir);
    }

    let dest = RegistryProcess::start()?;
    let mut load = Command::new(&spec.hangar);
    load.args(["load", "--tls-verify=false", "-j", &jobs, "-s"])
        .arg(&archive)
        .args(["-d", &dest.addr, "-o"])
        .arg(work.join("load-failed.txt"))
        .stdout(std::process::Stdio::null());
    tokio::task::block_in_place(settle);
    let (t, rss) = tokio::task::block_in_place(|| run_measured(&mut load))?;
    out.push(row("hangar load (zip)", t.as_secs_f64(), bytes, rss));
    drop(dest);

    let dest = RegistryProcess::start()?;
    tokio::task::block_in_place(settle);
    let start = Instant::now();
    raw_copy(&spec.source, &dest.addr, &blobs, 32).await?;
    out.push(row(
        "raw load (GET → PUT)",
        start.elapsed().as_secs_f64(),
        bytes,
        None,
    ));
    Ok(out)
}

pub fn table(rows: &[Measurement]) -> String {
    let mut s = String::from("| tool | wall s | MB/s | peak RSS |\n|---|---|---|---|\n");
    for r in rows {
        s.push_str(&format!(
            "| {} | {:.2} | {:.0} | {} |\n",
            r.tool,
            r.seconds,
            r.bytes as f64 / 1e6 / r.seconds,
            r.peak_rss_kib
                .map(|k| format!("{:.1} MB", k as f64 / 1024.0))
                .unwrap_or_else(|| "-".into())
        ));
    }
    s
}
