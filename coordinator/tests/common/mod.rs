//! Test harness: real registries on free loopback ports, images pushed over the
//! distribution API, the real `hangar-coord` binary, and skopeo as an independent client.

#![allow(dead_code)]

pub mod archive;
pub mod deploy;
pub mod fleet;
pub mod generate_list;
pub mod hostile;
pub mod signing;

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hangar_loadtest::seed::{self, Format};
use hangar_loadtest::services::RegistryProcess;
use hangar_shared::digest::Digest;
use hangar_shared::manifest::{Platform, RawManifest};
use hangar_shared::registry::Registry;

pub struct Env {
    pub src: RegistryProcess,
    pub dst: RegistryProcess,
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Self {
        Self {
            src: RegistryProcess::start().expect("start source registry"),
            dst: RegistryProcess::start().expect("start destination registry"),
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn write_list(&self, name: &str, lines: &[String]) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, lines.join("\n") + "\n").expect("write list");
        p
    }

    /// `hangar-coord mirror -f LIST -d DST --tls-verify=false -o FAILED` plus `extra`.
    pub fn mirror(&self, list: &Path, extra: &[&str]) -> Output {
        let failed = self.path("failed.txt");
        let mut args: Vec<String> = vec!["mirror".into(), "--tls-verify=false".into(), "-f".into()];
        args.push(list.display().to_string());
        args.extend([
            "-d".into(),
            self.dst.addr.clone(),
            "-o".into(),
            failed.display().to_string(),
        ]);
        args.extend(extra.iter().map(|s| s.to_string()));
        hangar(&args)
    }
}

pub fn hangar<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hangar-coord"))
        .args(args)
        .env("REGISTRY_AUTH_FILE", "/nonexistent/hangar-test-auth.json")
        .output()
        .expect("run hangar-coord")
}

pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `skopeo inspect --raw` of `docker://REF`.
pub fn skopeo_raw(reference: &str) -> Option<Vec<u8>> {
    let out = skopeo_inspect(reference, &[]);
    out.status.success().then_some(out.stdout)
}

/// `skopeo inspect --raw` of `reference` (no TLS check) with `extra` flags, e.g. `--creds`.
pub fn skopeo_inspect(reference: &str, extra: &[&str]) -> std::process::Output {
    Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .args(extra)
        .arg(format!("docker://{reference}"))
        .output()
        .expect("run skopeo")
}

pub fn sha(bytes: &[u8]) -> String {
    Digest::of(bytes).to_string()
}

pub async fn registry(addr: &str) -> Registry {
    seed::connect(addr).await.expect("connect")
}

/// Pushes one platform image with layers made from `layer_seeds` (each `size` bytes) and
/// returns its manifest. `reference` is a tag, or `None` to push by digest only.
pub async fn push_image(
    reg: &Registry,
    dir: &Path,
    repo: &str,
    reference: Option<&str>,
    format: Format,
    arch: &str,
    (layer_seeds, size): (&[u64], u64),
) -> RawManifest {
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    for s in layer_seeds {
        let file = seed::write_layer(dir, *s, size).expect("layer");
        layers.push(
            seed::push_layer_file(reg, repo, format, &file, None)
                .await
                .expect("push layer"),
        );
        diff_ids.push(file.diff_id.clone());
    }
    let platform = seed::platform(arch);
    let config = seed::push_bytes(
        reg,
        repo,
        format.config_type(),
        seed::config_json(&platform, &diff_ids),
    )
    .await
    .expect("push config");
    let body = seed::manifest_json(format, &config, &layers);
    let reference = reference
        .map(str::to_owned)
        .unwrap_or_else(|| Digest::of(&body).to_string());
    seed::push_manifest(reg, repo, &reference, format.manifest_type(), body)
        .await
        .expect("push manifest")
}

pub async fn push_index(
    reg: &Registry,
    repo: &str,
    tag: &str,
    format: Format,
    entries: &[(RawManifest, Platform, Option<serde_json::Value>)],
) -> RawManifest {
    seed::push_manifest(
        reg,
        repo,
        tag,
        format.index_type(),
        seed::index_json(format, entries),
    )
    .await
    .expect("push index")
}

/// A two-platform index (amd64, arm64) in `repo:tag`; returns (index, amd64, arm64).
pub async fn push_multiarch(
    reg: &Registry,
    dir: &Path,
    repo: &str,
    tag: &str,
    format: Format,
    base_seed: u64,
) -> (RawManifest, RawManifest, RawManifest) {
    let amd = push_image(
        reg,
        dir,
        repo,
        None,
        format,
        "amd64",
        (&[base_seed, base_seed + 1], 50_000),
    )
    .await;
    let arm = push_image(
        reg,
        dir,
        repo,
        None,
        format,
        "arm64",
        (&[base_seed, base_seed + 2], 50_000),
    )
    .await;
    let idx = push_index(
        reg,
        repo,
        tag,
        format,
        &[
            (amd.clone(), seed::platform("amd64"), None),
            (arm.clone(), seed::platform("arm64"), None),
        ],
    )
    .await;
    (idx, amd, arm)
}

pub fn index_digests(raw: &[u8]) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_slice(raw).expect("index json");
    v["manifests"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|m| m["digest"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

pub fn bytes(b: &RawManifest) -> Bytes {
    b.bytes.clone()
}

/// `n` repositories sharing two base layers (seeds 100, 101) plus one own layer each.
pub async fn seed_shared_repos(env: &Env, n: u64) -> Vec<String> {
    let src = registry(&env.src.addr).await;
    let mut lines = Vec::new();
    for i in 0..n {
        let repo = format!("shared/app-{i}");
        push_image(
            &src,
            env.dir.path(),
            &repo,
            Some("v1"),
            Format::Docker,
            "amd64",
            (&[100, 101, 200 + i], 30_000),
        )
        .await;
        lines.push(format!("{}/{repo}:v1", env.src.addr));
    }
    lines
}

/// Blob GETs in a registry's access log, by digest.
pub fn blob_gets(log: &str) -> std::collections::BTreeMap<String, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for l in log
        .lines()
        .filter(|l| l.contains("\"GET /v2/") && l.contains("/blobs/sha256:"))
    {
        if let Some(d) = l
            .split("/blobs/")
            .nth(1)
            .and_then(|r| r.split([' ', '"', '?']).next())
        {
            *counts.entry(d.to_owned()).or_insert(0) += 1;
        }
    }
    counts
}

/// A tar.gz layer of `files` (path, body); returns (compressed bytes, diff id).
pub fn files_layer(files: &[(&str, &[u8])]) -> (Bytes, Digest) {
    let mut b = tar::Builder::new(Vec::new());
    for (p, body) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, p, *body).expect("tar");
    }
    let raw = b.into_inner().expect("tar");
    let diff = Digest::of(&raw);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &raw).expect("gz");
    (Bytes::from(gz.finish().expect("gz")), diff)
}

/// Pushes an amd64 image of `layers` (already compressed) at `repo:tag`.
pub async fn push_files_image(addr: &str, repo: &str, layers: Vec<(Bytes, Digest)>) {
    let reg = registry(addr).await;
    let mut descs = Vec::new();
    let mut diffs = Vec::new();
    for (bytes, diff) in layers {
        descs.push(
            seed::push_bytes(&reg, repo, Format::Oci.layer_type(), bytes)
                .await
                .expect("layer"),
        );
        diffs.push(diff);
    }
    let config = seed::push_bytes(
        &reg,
        repo,
        Format::Oci.config_type(),
        seed::config_json(&seed::platform("amd64"), &diffs),
    )
    .await
    .expect("config");
    let body = seed::manifest_json(Format::Oci, &config, &descs);
    seed::push_manifest(&reg, repo, "1", Format::Oci.manifest_type(), body)
        .await
        .expect("manifest");
}

/// A proxy in front of the source registry that answers 429 to requests beyond 15 a
/// second (10 ms each way), and `lines` rewritten to reach the source through it.
pub async fn burst_limited_source(
    env: &Env,
    lines: &[String],
) -> (hangar_loadtest::proxy::Proxy, Vec<String>) {
    let proxy = hangar_loadtest::proxy::start(
        "127.0.0.1:0",
        &env.src.addr,
        hangar_loadtest::proxy::ProxyOptions {
            burst_limit: Some(15),
            delay: std::time::Duration::from_millis(10),
            ..Default::default()
        },
    )
    .await
    .expect("proxy");
    let through = lines
        .iter()
        .map(|l| l.replace(&env.src.addr, &proxy.addr))
        .collect();
    (proxy, through)
}

/// What a run of `hangar-coord` did: exit success, output, wall time, peak RSS in bytes,
/// and the bytes it wrote (`wchar`: every `write`, files and pipes alike).
pub struct Measured {
    pub success: bool,
    pub output: String,
    pub elapsed: Duration,
    pub peak_rss: u64,
    pub written: u64,
}

/// A field of `/proc/PID/FILE` (`Name: value …`), as a number.
fn proc_field(pid: u32, file: &str, name: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .ok()?
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// [`run_measured`] from async code: on a blocking thread, so the test's own servers keep
/// running meanwhile.
#[allow(dead_code)]
pub async fn run_measured_async(args: Vec<String>, limit: Duration) -> Measured {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_measured(&args, limit)
    })
    .await
    .expect("run_measured")
}

/// Runs `hangar-coord ARGS`, polling its peak RSS (`VmHWM`) and bytes written until it
/// exits (read once more while it is a zombie, so the last writes count); killed (and the
/// test failed) after `limit`.
pub fn run_measured(args: &[&str], limit: Duration) -> Measured {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_hangar-coord"))
        .args(args)
        .env("REGISTRY_AUTH_FILE", "/nonexistent/hangar-test-auth.json")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn hangar-coord");
    let pid = child.id();
    let (mut peak, mut written) = (0u64, 0u64);
    // Drained on threads, so a chatty child never blocks on a full pipe.
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let status = loop {
        if let Some(kib) = proc_field(pid, "status", "VmHWM:") {
            peak = peak.max(kib * 1024);
        }
        let exited = std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'))
        });
        if let Some(w) = proc_field(pid, "io", "wchar:") {
            written = written.max(w);
        }
        if !exited {
            std::thread::sleep(Duration::from_millis(20));
            if started.elapsed() <= limit {
                continue;
            }
        }
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("hangar-coord {args:?} still running after {limit:?}");
        }
    };
    let output = format!(
        "{}{}",
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default()
    );
    Measured {
        success: status.success(),
        output,
        elapsed: started.elapsed(),
        peak_rss: peak,
        written,
    }
}
