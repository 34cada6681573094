//! Fleet processes for tests: `hangar-coord serve` and `hangar-worker` as real child
//! processes, killed (SIGKILL) when dropped, restartable, freezable (SIGSTOP).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{Env, index_digests, push_image, registry, sha, skopeo_raw};

/// Any child process, killed (SIGKILL) and reaped when dropped.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A child process killed when dropped.
pub struct Proc {
    child: Option<Child>,
    spawn: Box<dyn Fn() -> Child + Send>,
}

impl Proc {
    fn start(spawn: Box<dyn Fn() -> Child + Send>) -> Self {
        Self {
            child: Some(spawn()),
            spawn,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// SIGKILL, as a node failure or an OOM kill would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Killed and started again with the same arguments (the same port, for `serve`).
    pub fn restart(&mut self, down_for: Duration) {
        self.kill();
        std::thread::sleep(down_for);
        self.child = Some((self.spawn)());
    }

    /// SIGSTOP / SIGCONT: a process frozen by its node, holding what it held.
    pub fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .args([signal, &self.pid().to_string()])
            .status();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.signal("-CONT");
        self.kill();
    }
}

pub fn worker_binary() -> PathBuf {
    let coord = PathBuf::from(env!("CARGO_BIN_EXE_hangar-coord"));
    let worker = coord.with_file_name("hangar-worker");
    assert!(
        worker.exists(),
        "{} is missing: run the tests with `cargo test --workspace`",
        worker.display()
    );
    worker
}

fn log_file(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("log file")
}

/// `hangar-worker --nats NATS --tls-verify=false ARGS` with `envs`, its output appended to
/// `log`: the one way the tests start a worker (`worker` and `spawn_worker` wrap it).
fn worker_child(nats: &str, log: &Path, args: &[String], envs: &[(String, String)]) -> Child {
    let out = log_file(log);
    Command::new(worker_binary())
        .args(["--nats", nats, "--tls-verify=false"])
        .args(args)
        .env("REGISTRY_AUTH_FILE", "/nonexistent/auth.json")
        .env("HANGAR_LOG", "info,hangar_worker=debug")
        .envs(envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("log"))
        .stderr(out)
        .spawn()
        .expect("start hangar-worker")
}

fn owned_args(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

fn owned_envs(envs: &[(&str, &str)]) -> Vec<(String, String)> {
    envs.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// `hangar-worker --nats NATS --tls-verify=false --listen 127.0.0.1:0 ARGS`, logging to
/// `log` (appended across restarts). `--listen 127.0.0.1:0` is left out when `args` name
/// their own `--listen` (clap refuses the flag twice).
pub fn worker(nats: &str, log: &Path, args: &[&str], envs: &[(&str, &str)]) -> Proc {
    let (nats, log) = (nats.to_owned(), log.to_owned());
    let own_listen = args
        .iter()
        .any(|a| *a == "--listen" || a.starts_with("--listen="));
    let mut all: Vec<String> = Vec::new();
    if !own_listen {
        all.extend(["--listen".to_owned(), "127.0.0.1:0".to_owned()]);
    }
    all.extend(owned_args(args));
    let envs = owned_envs(envs);
    Proc::start(Box::new(move || worker_child(&nats, &log, &all, &envs)))
}

/// `hangar-worker --nats NATS --tls-verify=false ARGS` with exactly the caller's `args` (no
/// `--listen` unless they give one), logging to `log` (appended); killed when dropped, its
/// `Child` at hand (`.0`) for signals and exit checks.
pub fn spawn_worker(
    nats: &str,
    log: impl AsRef<Path>,
    args: &[&str],
    envs: &[(&str, &str)],
) -> Killed {
    Killed(worker_child(
        nats,
        log.as_ref(),
        &owned_args(args),
        &owned_envs(envs),
    ))
}

/// A worker with four blob slots on `listen`, reading registry credentials from `authfile`.
pub fn start_worker(nats: &str, authfile: &Path, log: PathBuf, listen: &str) -> Killed {
    let authfile = authfile.to_str().unwrap();
    spawn_worker(
        nats,
        log,
        &[
            "--blob-concurrency",
            "4",
            "--listen",
            listen,
            "--authfile",
            authfile,
        ],
        &[],
    )
}

/// A worker with two blob slots whose unanswered tasks go back to the queue after three
/// seconds (`--ack-wait 3s`), so that another worker takes over quickly.
pub fn start_fast_failover_worker(nats: &str, log: PathBuf) -> Killed {
    spawn_worker(
        nats,
        log,
        &[
            "--blob-concurrency",
            "2",
            "--ack-wait",
            "3s",
            "--listen",
            "127.0.0.1:0",
        ],
        &[],
    )
}

/// `chaos/app-<i>:v1` for `i` below `n` in the source, each with one layer of `size`
/// bytes seeded from `seed + i`.
pub async fn push_apps(env: &Env, n: u64, seed: u64, size: u64) {
    let src = registry(&env.src.addr).await;
    for i in 0..n {
        push_image(
            &src,
            env.dir.path(),
            &format!("chaos/app-{i}"),
            Some("v1"),
            hangar_loadtest::seed::Format::Oci,
            "amd64",
            (&[seed + i], size),
        )
        .await;
    }
}

/// Images with one 6 MB layer each behind a proxy capped at 3 MB/s per connection: each
/// blob copy takes about two seconds, long enough to break something in the middle.
pub async fn slow_source(env: &Env, n: u64) -> (Vec<String>, hangar_loadtest::proxy::Proxy) {
    slow_source_of(env, n, 6_000_000).await
}

/// [`slow_source`] with layers of `size` bytes.
pub async fn slow_source_of(
    env: &Env,
    n: u64,
    size: u64,
) -> (Vec<String>, hangar_loadtest::proxy::Proxy) {
    push_apps(env, n, 1000, size).await;
    let proxy = hangar_loadtest::proxy::start(
        "127.0.0.1:0",
        &env.src.addr,
        hangar_loadtest::proxy::ProxyOptions {
            rate_limit: Some(3_000_000),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let lines = (0..n)
        .map(|i| format!("{}/chaos/app-{i}:v1", proxy.addr))
        .collect();
    (lines, proxy)
}

/// `hangar-coord serve` on `listen`, killed when dropped.
pub fn start_coordinator(nats: &str, listen: &str, log: PathBuf) -> Killed {
    spawn_coordinator(nats, listen, log, &[])
}

/// `hangar-coord serve` on `listen` with `envs`, holding credentials of its own (in
/// `coord-auth.json` next to `log`) that must stay with it; waits for its port.
pub fn spawn_coordinator(nats: &str, listen: &str, log: PathBuf, envs: &[(&str, &str)]) -> Killed {
    // The coordinator's own credentials, which must stay with it.
    let authfile = log.with_file_name("coord-auth.json");
    std::fs::write(
        &authfile,
        r#"{"auths":{"unused.example":{"auth":"dXNlcjpjb29yZC1zZWNyZXQ="}}}"#,
    )
    .unwrap();
    let out = std::fs::File::create(log).unwrap();
    let c = Killed(
        Command::new(env!("CARGO_BIN_EXE_hangar-coord"))
            .args([
                "serve",
                "--tls-verify=false",
                "--listen",
                listen,
                "--nats",
                nats,
            ])
            .arg("--authfile")
            .arg(&authfile)
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("hangar-coord serve"),
    );
    hangar_loadtest::services::wait_for_port(listen, Duration::from_secs(20)).unwrap();
    c
}

/// `GET /jobs/{id}` on the coordinator at `base`.
pub async fn job_state(http: &reqwest::Client, base: &str, id: &str) -> serde_json::Value {
    http.get(format!("{base}/jobs/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// `hangar-coord serve --tls-verify=false --listen LISTEN --nats NATS ARGS`, logging to
/// `log`; waits for its port.
pub fn serve(nats: &str, listen: &str, log: &Path, args: &[&str], envs: &[(&str, &str)]) -> Proc {
    let (nats, listen_at, log) = (nats.to_owned(), listen.to_owned(), log.to_owned());
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let envs: Vec<(String, String)> = envs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Proc::start(Box::new(move || {
        let out = log_file(&log);
        let child = Command::new(env!("CARGO_BIN_EXE_hangar-coord"))
            .args([
                "serve",
                "--tls-verify=false",
                "--listen",
                &listen_at,
                "--nats",
                &nats,
            ])
            .args(&args)
            .env("REGISTRY_AUTH_FILE", "/nonexistent/auth.json")
            .envs(envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("hangar-coord serve");
        let _ = hangar_loadtest::services::wait_for_port(&listen_at, Duration::from_secs(30));
        child
    }))
}

/// `submit` of `list` through the fleet at `nats` into the destination's `chaos` project, as
/// a child process with its output piped.
pub fn submit_child(env: &Env, list: &std::path::Path, nats: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_hangar-coord"))
        .args([
            "submit",
            list.to_str().unwrap(),
            "--tls-verify=false",
            "-j",
            "4",
            "--destination-project",
            "chaos",
        ])
        .args([
            "-d",
            &env.dst.addr,
            "--nats",
            nats,
            "-o",
            env.path("failed.txt").to_str().unwrap(),
        ])
        .env("REGISTRY_AUTH_FILE", "/nonexistent/auth.json")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("submit")
}

/// Every image of `slow_source(env, n)` is in the destination with the source's digest.
pub fn assert_all_copied(env: &Env, n: u64) {
    for i in 0..n {
        let src = skopeo_raw(&format!("{}/chaos/app-{i}:v1", env.src.addr)).unwrap();
        let dst = skopeo_raw(&format!("{}/chaos/app-{i}:v1", env.dst.addr)).expect("copied");
        assert_eq!(index_digests(&dst), vec![sha(&src)], "chaos/app-{i}");
    }
}

/// A plain client of the test's nats-server.
pub async fn nats_client(nats: &hangar_loadtest::services::NatsProcess) -> async_nats::Client {
    use hangar_shared::queue::jetstream::{self, NatsOptions};
    jetstream::connect(&NatsOptions {
        url: nats.url(),
        ..Default::default()
    })
    .await
    .expect("connect to nats-server")
}
