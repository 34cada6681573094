//! The mirror benchmark: the same seeded list copied four ways into fresh registries —
//! `hangar-coord mirror`, skopeo (`skopeo copy --all` per image, one after another, as a
//! skopeo user scripts it), a raw bound (every unique blob GET→PUT in parallel, no
//! verification, no manifests) and the copy floor (the raw bound and the mounts and
//! manifests a complete copy needs, [`crate::floor`]) — on loopback and through the delay
//! proxy.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use futures_util::StreamExt;
use hangar_shared::manifest::Descriptor;
use hangar_shared::reference::ImageRef;
use hangar_shared::registry::Registry;

use crate::floor::{self, ImageCopy};
use crate::proxy::{self, ProxyOptions};
use crate::services::RegistryProcess;

#[derive(Debug, Clone)]
pub struct Measurement {
    pub network: String,
    pub tool: String,
    pub seconds: f64,
    pub bytes: u64,
    pub peak_rss_kib: Option<u64>,
}

/// Writes the page cache's dirty pages out before a timed run, so that what earlier steps
/// wrote (the seeded images, the tool before) is not written back during the next tool's
/// time: on this machine the registries' disk is the machine's.
pub fn settle() {
    let _ = Command::new("sync").status();
}

/// Runs a child, polling its peak RSS (VmHWM) until it exits.
pub fn run_measured(cmd: &mut Command) -> Result<(Duration, Option<u64>)> {
    let p = run_profiled(cmd)?;
    Ok((p.elapsed, p.peak_rss_kib))
}

/// What one run of a command cost.
pub struct Profile {
    pub elapsed: Duration,
    pub peak_rss_kib: Option<u64>,
    /// User + system CPU time, as last seen before it exited (20 ms polls).
    pub cpu: Duration,
    /// Bytes it passed to `write` (files and pipes: `wchar`), read as it exited.
    pub written: u64,
}

/// A numeric field of `/proc/PID/io` (`name: value`).
fn io_field(pid: u32, name: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .ok()?
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// Runs `cmd` to its end, polling its peak RSS and CPU time.
pub fn run_profiled(cmd: &mut Command) -> Result<Profile> {
    let start = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("spawning {cmd:?}"))?;
    let pid = child.id();
    let ended = exit_watch(pid);
    let status_path = format!("/proc/{pid}/status");
    let stat_path = format!("/proc/{pid}/stat");
    let mut peak = None;
    let mut cpu = Duration::ZERO;
    let mut written = 0;
    loop {
        if let Some(w) = io_field(pid, "wchar:") {
            written = written.max(w);
        }
        if let Ok(text) = std::fs::read_to_string(&status_path)
            && let Some(kib) = text
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        {
            peak = Some(peak.map_or(kib, |p: u64| p.max(kib)));
        }
        if let Ok(text) = std::fs::read_to_string(&stat_path)
            && let Some(ticks) = cpu_ticks(&text)
        {
            // The kernel's USER_HZ is 100 on Linux.
            cpu = Duration::from_millis(ticks * 10);
        }
        let at = match ended.recv_timeout(Duration::from_millis(20)) {
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
            Ok(at) => at,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => None,
        };
        // Exited and not reaped yet: read once more, its last writes count.
        if let Some(w) = io_field(pid, "wchar:") {
            written = written.max(w);
        }
        let status = child.wait()?;
        if !status.success() {
            bail!("{cmd:?} failed: {status}");
        }
        return Ok(Profile {
            elapsed: at.unwrap_or_else(Instant::now) - start,
            peak_rss_kib: peak,
            cpu,
            written,
        });
    }
}

/// When the child `pid` exits, told by a thread that waits for it without reaping it
/// (`waitid` with `WNOWAIT`): the run's time is its exit's moment, not up to a poll later
/// (20 ms, where a save takes about 1.3 s), and its `/proc` entries can still be read.
/// `None` if the wait failed.
fn exit_watch(pid: u32) -> std::sync::mpsc::Receiver<Option<Instant>> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let exited = loop {
            // SAFETY: an all-zero `siginfo_t` is a valid value, and `waitid` writes only
            // into it, which outlives the call.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            let waited = unsafe {
                libc::waitid(
                    libc::P_PID,
                    pid as libc::id_t,
                    &mut info,
                    libc::WEXITED | libc::WNOWAIT,
                )
            };
            match waited {
                0 => break Some(Instant::now()),
                _ if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => {}
                _ => break None,
            }
        };
        let _ = tx.send(exited);
    });
    rx
}

/// utime + stime of a `/proc/PID/stat` line (fields 14 and 15, after the command name).
fn cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let user: u64 = fields.get(11)?.parse().ok()?;
    let system: u64 = fields.get(12)?.parse().ok()?;
    Some(user + system)
}

/// Every unique blob of the list, with the repository it lives in.
pub async fn unique_blobs(
    reg: &Registry,
    lines: &[String],
) -> Result<BTreeMap<String, (String, Descriptor)>> {
    blobs_of(&floor::read_images(reg, lines).await?)
}

/// Every unique blob of `images`, with the first repository that holds it.
pub fn blobs_of(images: &[ImageCopy]) -> Result<BTreeMap<String, (String, Descriptor)>> {
    let mut out = BTreeMap::new();
    for image in images {
        for img in image.platforms()? {
            for b in img.blobs() {
                out.entry(b.digest.to_string())
                    .or_insert_with(|| (image.repo.clone(), b.clone()));
            }
        }
    }
    Ok(out)
}

/// Bytes of the configs a fleet's coordinator carries in its tasks (a tag naming one image
/// manifest, not an index: its config is read while planning, up to 256 KiB), which no
/// worker downloads.
pub async fn carried_configs(reg: &Registry, lines: &[String]) -> Result<u64> {
    let mut configs = BTreeMap::new();
    for image in floor::read_images(reg, lines).await? {
        if let ([img], false) = (image.platforms()?.as_slice(), image.is_index())
            && img.config.size <= 256 << 10
        {
            configs.insert(img.config.digest.to_string(), img.config.size);
        }
    }
    Ok(configs.values().sum())
}

/// GET→PUT every blob with `parallel` at once, no verification: the bound a copier could reach.
pub async fn raw_copy(
    src: &str,
    dst: &str,
    blobs: &BTreeMap<String, (String, Descriptor)>,
    parallel: usize,
) -> Result<()> {
    let http = reqwest::Client::new();
    let results: Vec<Result<()>> = futures_util::stream::iter(blobs.values())
        .map(|(repo, desc)| {
            let http = http.clone();
            async move {
                let get = http
                    .get(format!("http://{src}/v2/{repo}/blobs/{}", desc.digest))
                    .send()
                    .await?
                    .error_for_status()?;
                let post = http
                    .post(format!("http://{dst}/v2/{repo}/blobs/uploads/"))
                    .send()
                    .await?
                    .error_for_status()?;
                let location = post
                    .headers()
                    .get("location")
                    .and_then(|l| l.to_str().ok())
                    .context("no upload location")?
                    .to_owned();
                let location = if location.starts_with("http") {
                    location
                } else {
                    format!("http://{dst}{location}")
                };
                let sep = if location.contains('?') { '&' } else { '?' };
                http.put(format!("{location}{sep}digest={}", desc.digest))
                    .header("content-length", desc.size)
                    .header("content-type", "application/octet-stream")
                    .body(reqwest::Body::wrap_stream(get.bytes_stream()))
                    .send()
                    .await?
                    .error_for_status()?;
                Ok(())
            }
        })
        .buffer_unordered(parallel)
        .collect()
        .await;
    results.into_iter().collect()
}

pub struct BenchSpec {
    pub hangar: PathBuf,
    pub list: PathBuf,
    pub lines: Vec<String>,
    pub source: String,
    pub delay: Duration,
    pub jobs: usize,
    pub workdir: PathBuf,
    /// More rounds of hangar against its raw bound and its floor after the table
    /// (`--rounds`).
    pub rounds: usize,
}

impl BenchSpec {
    /// `hangar-coord mirror` of `list` into `dest`, output discarded.
    pub fn mirror_command(&self, list: &Path, dest: &str) -> Command {
        let mut cmd = Command::new(&self.hangar);
        cmd.args([
            "mirror",
            "--tls-verify=false",
            "-j",
            &self.jobs.to_string(),
            "-d",
            dest,
            "-f",
        ])
        .arg(list)
        .arg("-o")
        .arg(self.workdir.join("bench-failed.txt"))
        .stdout(std::process::Stdio::null());
        cmd
    }
}

fn rewrite_list(lines: &[String], from: &str, to: &str, path: &Path) -> Result<()> {
    let text: Vec<String> = lines.iter().map(|l| l.replacen(from, to, 1)).collect();
    std::fs::write(path, text.join("\n") + "\n")?;
    Ok(())
}

/// One network setting: four tools, each into a fresh destination registry.
pub async fn run_network(
    spec: &BenchSpec,
    network: &str,
    delay: Duration,
) -> Result<Vec<Measurement>> {
    let reg = crate::seed::connect(&spec.source).await?;
    let images = floor::read_images(&reg, &spec.lines).await?;
    let blobs = blobs_of(&images)?;
    let bytes: u64 = blobs.values().map(|(_, d)| d.size).sum();
    let mut out = Vec::new();
    let opts = ProxyOptions {
        delay,
        ..Default::default()
    };
    let src_proxy = proxy::start("127.0.0.1:0", &spec.source, opts).await?;
    let list = spec.workdir.join(format!("list-{network}.txt"));
    rewrite_list(&spec.lines, &spec.source, &src_proxy.addr, &list)?;

    for tool in ["hangar", "skopeo", "raw", "floor"] {
        let copy = (&blobs, images.as_slice());
        let (elapsed, rss) = one_copy(spec, tool, &src_proxy.addr, &list, copy, opts).await?;
        out.push(Measurement {
            network: network.to_owned(),
            tool: tool.to_owned(),
            seconds: elapsed.as_secs_f64(),
            bytes,
            peak_rss_kib: rss,
        });
    }
    Ok(out)
}

/// One tool's copy of the list (through the source's proxy at `src_addr`) into a fresh
/// destination behind a proxy of its own: its wall time and peak RSS.
async fn one_copy(
    spec: &BenchSpec,
    tool: &str,
    src_addr: &str,
    list: &Path,
    (blobs, images): (&BTreeMap<String, (String, Descriptor)>, &[ImageCopy]),
    opts: ProxyOptions,
) -> Result<(Duration, Option<u64>)> {
    let dest = RegistryProcess::start()?;
    let dst_proxy = proxy::start("127.0.0.1:0", &dest.addr, opts).await?;
    let (src, dst) = (src_addr.to_owned(), dst_proxy.addr.clone());
    tokio::task::block_in_place(settle);
    let (elapsed, rss) = match tool {
        "hangar" => {
            let mut cmd = spec.mirror_command(list, &dst);
            tokio::task::block_in_place(|| run_measured(&mut cmd))?
        }
        "skopeo" => {
            let start = Instant::now();
            let mut peak = 0;
            for line in &spec.lines {
                let r = ImageRef::parse(line)?;
                let mut cmd = Command::new("skopeo");
                cmd.args([
                    "copy",
                    "--all",
                    "--src-tls-verify=false",
                    "--dest-tls-verify=false",
                    "-q",
                ])
                .arg(format!(
                    "docker://{src}/{}:{}",
                    r.repository(),
                    r.manifest_reference()
                ))
                .arg(format!(
                    "docker://{dst}/{}:{}",
                    r.repository(),
                    r.manifest_reference()
                ));
                let (_, rss) = tokio::task::block_in_place(|| run_measured(&mut cmd))?;
                peak = peak.max(rss.unwrap_or(0));
            }
            (start.elapsed(), Some(peak))
        }
        "floor" => {
            let start = Instant::now();
            let (mounts, manifests) = floor::floor_copy(&src, &dst, blobs, images, 32).await?;
            let elapsed = start.elapsed();
            println!("copy floor: {mounts} mounts, {manifests} manifests pushed");
            let copied = crate::seed::connect(&dest.addr).await?;
            floor::check_copied(&copied, images).await?;
            (elapsed, None)
        }
        _ => {
            let start = Instant::now();
            raw_copy(&src, &dst, blobs, 32).await?;
            (start.elapsed(), None)
        }
    };
    drop(dst_proxy);
    drop(dest);
    Ok((elapsed, rss))
}

/// `spec.rounds` more copies by hangar, by the raw bound and by the copy floor at `delay`
/// each way, back to back, the first of them a different one each round: (hangar's
/// seconds, the raw bound's, the floor's) per round.
pub async fn mirror_rounds(spec: &BenchSpec, delay: Duration) -> Result<Vec<[f64; 3]>> {
    let reg = crate::seed::connect(&spec.source).await?;
    let images = floor::read_images(&reg, &spec.lines).await?;
    let blobs = blobs_of(&images)?;
    let opts = ProxyOptions {
        delay,
        ..Default::default()
    };
    let src_proxy = proxy::start("127.0.0.1:0", &spec.source, opts).await?;
    let list = spec.workdir.join("list-rounds.txt");
    rewrite_list(&spec.lines, &spec.source, &src_proxy.addr, &list)?;
    let tools = ["hangar", "raw", "floor"];
    let mut rounds = Vec::new();
    for round in 0..spec.rounds {
        let mut seconds = [0.0; 3];
        for at in round_order(round) {
            let copy = (&blobs, images.as_slice());
            let (elapsed, _) =
                one_copy(spec, tools[at], &src_proxy.addr, &list, copy, opts).await?;
            seconds[at] = elapsed.as_secs_f64();
        }
        rounds.push(seconds);
    }
    Ok(rounds)
}

/// The order of hangar (0), its raw bound (1) and its floor (2) in round `round`: each of
/// the six in turn, so that over six rounds each runs first, and right after each other,
/// equally often (what ran before warms or loads the machine for what follows).
pub fn round_order(round: usize) -> [usize; 3] {
    const ORDERS: [[usize; 3]; 6] = [
        [0, 1, 2],
        [1, 2, 0],
        [2, 0, 1],
        [0, 2, 1],
        [2, 1, 0],
        [1, 0, 2],
    ];
    ORDERS[round % ORDERS.len()]
}

/// Rounds of (hangar, raw bound, floor) seconds as (hangar, bound) pairs for each bound,
/// named: the raw bound, then the floor as `floor`.
pub fn against_bounds<'a>(rounds: &[[f64; 3]], floor: &'a str) -> [(&'a str, Vec<(f64, f64)>); 2] {
    let pairs = |at: usize| rounds.iter().map(|r| (r[0], r[at])).collect();
    [("raw bound", pairs(1)), (floor, pairs(2))]
}

/// Each round's times and ratio to `bound` (whose seconds are each pair's second), and the
/// median ratio: on this machine a single run's ratio moved by ±15 % (the raw bound's own
/// time by as much), so one round cannot tell 0.7 from 0.8.
pub fn rounds_report(what: &str, bound: &str, pairs: &[(f64, f64)]) -> String {
    let mut s = format!(
        "{what}, rounds: {} (hangar s, {bound} s, ratio)\n",
        pairs.len()
    );
    let mut ratios: Vec<f64> = pairs.iter().map(|(h, r)| r / h).collect();
    for (n, ((h, r), ratio)) in pairs.iter().zip(&ratios).enumerate() {
        s.push_str(&format!(
            "  round {}: {h:.2} s, {r:.2} s, {ratio:.2}x\n",
            n + 1
        ));
    }
    ratios.sort_by(f64::total_cmp);
    if let Some(median) = median(&ratios) {
        s.push_str(&format!("  median ratio: {median:.2}x\n"));
    }
    s
}

/// The middle of sorted `values` (the mean of the two middle ones for an even count).
fn median(sorted: &[f64]) -> Option<f64> {
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

pub fn table(rows: &[Measurement]) -> String {
    let mut s = String::from(
        "| network | tool | wall s | MB/s | vs skopeo | vs raw bound | vs copy floor | peak RSS |\n|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let find = |tool: &str| {
            rows.iter()
                .find(|x| x.network == r.network && x.tool == tool)
                .map(|x| x.seconds)
        };
        let ratio = |base: Option<f64>| {
            base.map(|b| format!("{:.2}x", b / r.seconds))
                .unwrap_or_default()
        };
        s.push_str(&format!(
            "| {} | {} | {:.2} | {:.0} | {} | {} | {} | {} |\n",
            r.network,
            r.tool,
            r.seconds,
            r.bytes as f64 / 1e6 / r.seconds,
            ratio(find("skopeo")),
            ratio(find("raw")),
            ratio(find("floor")),
            r.peak_rss_kib
                .map(|k| format!("{:.1} MB", k as f64 / 1024.0))
                .unwrap_or_else(|| "-".into()),
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_profiled_run_ends_when_its_command_does_and_counts_its_last_writes() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "sleep 0.05; exec head -c 300000 /dev/zero"])
            .stdout(std::process::Stdio::null());
        let p = run_profiled(&mut cmd).expect("run");
        assert!(p.elapsed >= Duration::from_millis(50), "{:?}", p.elapsed);
        assert!(p.written >= 300_000, "{} bytes written", p.written);
        let mut failing = Command::new("sh");
        failing.args(["-c", "exit 3"]);
        let e = run_profiled(&mut failing)
            .err()
            .expect("a failed command is an error");
        assert!(e.to_string().contains("exit status: 3"), "{e}");
    }

    #[test]
    fn rounds_pair_hangar_with_each_bound_and_vary_their_order() {
        let rounds = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]];
        let [(raw, to_raw), (floor, to_floor)] = against_bounds(&rounds, "copy floor");
        assert_eq!((raw, floor), ("raw bound", "copy floor"));
        assert_eq!(to_raw, [(1.0, 2.0), (4.0, 5.0)]);
        assert_eq!(to_floor, [(1.0, 3.0), (4.0, 6.0)]);
        let orders: Vec<[usize; 3]> = (0..6).map(round_order).collect();
        for order in &orders {
            let mut sorted = *order;
            sorted.sort();
            assert_eq!(sorted, [0, 1, 2], "{order:?} runs each once");
        }
        // Each ordered pair of neighbours equally often: every tool follows every other.
        for a in 0..3 {
            for b in (0..3).filter(|b| *b != a) {
                let follows = orders
                    .iter()
                    .filter(|o| o.windows(2).any(|w| w == [a, b]))
                    .count();
                assert_eq!(follows, 2, "{b} right after {a}");
            }
            assert_eq!(orders.iter().filter(|o| o[0] == a).count(), 2, "{a} first");
        }
        assert_eq!(round_order(6), round_order(0));
    }

    #[test]
    fn the_median_is_the_middle_or_the_mean_of_the_two_middle_values() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[0.7]), Some(0.7));
        assert_eq!(median(&[0.6, 0.8]), Some(0.7));
        assert_eq!(median(&[0.5, 0.7, 0.9]), Some(0.7));
        let report = rounds_report("x", "raw bound", &[(1.0, 0.5), (1.0, 0.9), (1.0, 0.7)]);
        assert!(report.ends_with("median ratio: 0.70x\n"), "{report}");
        assert!(
            report.contains("round 2: 1.00 s, 0.90 s, 0.90x"),
            "{report}"
        );
    }
}
