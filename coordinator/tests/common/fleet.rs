//! Fleet processes for tests: `hangar-coord serve` and `hangar-worker` as real child
//! processes, killed (SIGKILL) when dropped, restartable, freezable (SIGSTOP).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

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

/// `hangar-worker --nats NATS --tls-verify=false --listen 127.0.0.1:0 ARGS`, logging to
/// `log` (appended across restarts).
pub fn worker(nats: &str, log: &Path, args: &[&str], envs: &[(&str, &str)]) -> Proc {
    let (nats, log) = (nats.to_owned(), log.to_owned());
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let envs: Vec<(String, String)> = envs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Proc::start(Box::new(move || {
        let out = log_file(&log);
        Command::new(worker_binary())
            .args([
                "--nats",
                &nats,
                "--tls-verify=false",
                "--listen",
                "127.0.0.1:0",
            ])
            .args(&args)
            .env("REGISTRY_AUTH_FILE", "/nonexistent/auth.json")
            .env("HANGAR_LOG", "info,hangar_worker=debug")
            .envs(envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("start hangar-worker")
    }))
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
