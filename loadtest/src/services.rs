//! Real services for tests and benchmarks, each on a free loopback port with throwaway
//! storage, stopped (and its storage removed) when dropped.

use std::io::{self, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free loopback port (bound and released), never one this process handed out before:
/// tests running at once in one process were sometimes given the same port, and one
/// test's registry answered another's coordinator.
pub fn free_port() -> io::Result<u16> {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    for _ in 0..64 {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if given.insert(port) {
            return Ok(port);
        }
    }
    Err(io::Error::other(
        "no free port that this process has not handed out",
    ))
}

pub fn wait_for_port(addr: &str, limit: Duration) -> io::Result<()> {
    let start = Instant::now();
    while start.elapsed() < limit {
        // A connection to a free port in the ephemeral range can land on itself (TCP's
        // simultaneous open): that answer is nobody's, the service is not up yet.
        if let Ok(s) = TcpStream::connect(addr)
            && s.local_addr().ok() != s.peer_addr().ok()
        {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(io::Error::new(
        io::ErrorKind::TimedOut,
        format!("{addr} did not come up in {limit:?}"),
    ))
}

/// Debian's `docker-registry` (distribution 2.8) with filesystem storage, deletes enabled
/// and the access log on, so tests can count requests.
pub struct RegistryProcess {
    pub addr: String,
    child: Child,
    dir: tempfile::TempDir,
    log: PathBuf,
}

#[derive(Default)]
pub struct RegistryConfig<'a> {
    /// An htpasswd file to require basic auth.
    pub htpasswd: Option<&'a Path>,
    /// Serve TLS with this certificate and key (PEM).
    pub tls: Option<(&'a Path, &'a Path)>,
    /// With `tls`: require a client certificate signed by one of these CAs (PEM).
    pub client_cas: Option<&'a Path>,
    /// Require bearer tokens from a token server.
    pub token: Option<TokenAuth<'a>>,
    /// Accept signed Docker schema 1 manifests (distribution refuses them by default).
    pub schema1: bool,
}

/// Docker token auth: tokens from `realm`, signed by a key whose certificate is in `roots`.
pub struct TokenAuth<'a> {
    pub realm: &'a str,
    pub service: &'a str,
    pub issuer: &'a str,
    pub roots: &'a Path,
}

impl RegistryProcess {
    pub fn start() -> io::Result<Self> {
        Self::start_with(RegistryConfig::default())
    }

    pub fn start_with(cfg: RegistryConfig<'_>) -> io::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("hangar-registry-")
            .tempdir()?;
        let port = free_port()?;
        let addr = format!("127.0.0.1:{port}");
        let auth = match (cfg.htpasswd, &cfg.token) {
            (Some(p), _) => format!(
                "auth:\n  htpasswd:\n    realm: hangar-test\n    path: {}\n",
                p.display()
            ),
            (None, Some(t)) => format!(
                "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                t.realm,
                t.service,
                t.issuer,
                t.roots.display()
            ),
            (None, None) => String::new(),
        };
        let tls = match cfg.tls {
            Some((cert, key)) => format!(
                "  tls:\n    certificate: {}\n    key: {}\n{}",
                cert.display(),
                key.display(),
                cfg.client_cas
                    .map(|cas| format!("    clientcas:\n      - {}\n", cas.display()))
                    .unwrap_or_default()
            ),
            None => String::new(),
        };
        let compatibility = match cfg.schema1 {
            true => "compatibility:\n  schema1:\n    enabled: true\n",
            false => "",
        };
        let config = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n{auth}{compatibility}http:\n  addr: {addr}\n{tls}",
            dir.path().join("data").display()
        );
        let config_path = dir.path().join("config.yml");
        std::fs::File::create(&config_path)?.write_all(config.as_bytes())?;
        let log = dir.path().join("registry.log");
        let mut cmd = Command::new(registry_binary());
        cmd.arg("serve").arg(&config_path);
        let child = spawn_logged(cmd, &log, "docker-registry")?;
        let mut reg = Self {
            addr,
            child,
            dir,
            log,
        };
        if let Err(e) = wait_for_port(&reg.addr, Duration::from_secs(15)) {
            let _ = reg.child.kill();
            return Err(e);
        }
        Ok(reg)
    }

    /// The access log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How many `METHOD` requests for blob `digest` the registry has served so far.
    pub fn blob_requests(&self, method: &str, digest: &str) -> usize {
        let needle = format!("/blobs/{digest}");
        self.log()
            .lines()
            .filter(|l| l.contains(&format!("\"{method} ")) && l.contains(&needle))
            .count()
    }

    pub fn storage(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for RegistryProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn registry_binary() -> String {
    std::env::var("HANGAR_DOCKER_REGISTRY").unwrap_or_else(|_| "docker-registry".to_owned())
}

/// `nats-server` 2.15 with JetStream and file storage in a throwaway directory.
pub struct NatsProcess {
    pub addr: String,
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
    monitor: u16,
}

impl NatsProcess {
    pub fn start() -> io::Result<Self> {
        Self::start_with_config("")
    }

    /// The same server with `config` (nats-server's configuration syntax, e.g.
    /// `max_payload: 65536`) under the command line's options.
    pub fn start_with_config(config: &str) -> io::Result<Self> {
        // A free port can be taken by another test between asking and binding: a server
        // that does not come up is started again on new ports.
        let mut last = None;
        for _ in 0..3 {
            let dir = tempfile::Builder::new().prefix("hangar-nats-").tempdir()?;
            let (port, monitor) = (free_port()?, free_port()?);
            std::fs::write(dir.path().join("nats.conf"), config)?;
            let child = spawn_nats(dir.path(), port, monitor)?;
            let mut nats = Self {
                addr: format!("127.0.0.1:{port}"),
                child,
                dir,
                port,
                monitor,
            };
            match wait_for_port(&nats.addr, Duration::from_secs(15)) {
                Ok(()) => return Ok(nats),
                Err(e) => {
                    let _ = nats.child.kill();
                    let _ = nats.child.wait();
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("nats-server did not start")))
    }

    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    /// The server's monitoring endpoint (`/varz`, `/jsz`).
    pub fn monitor_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.monitor)
    }

    /// Kills the server (SIGKILL) and starts it again on the same port and storage.
    pub fn restart(&mut self, down_for: Duration) -> io::Result<()> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(down_for);
        self.child = spawn_nats(self.dir.path(), self.port, self.monitor)?;
        wait_for_port(&self.addr, Duration::from_secs(15))
    }
}

fn spawn_nats(dir: &Path, port: u16, monitor: u16) -> io::Result<Child> {
    let mut cmd = Command::new(nats_binary());
    cmd.arg("-c").arg(dir.join("nats.conf"));
    cmd.args([
        "-js",
        "-a",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-m",
        &monitor.to_string(),
        "-sd",
    ])
    .arg(dir.join("store"));
    spawn_logged(cmd, &dir.join("nats.log"), "nats-server")
}

impl Drop for NatsProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `HANGAR_NATS_SERVER`, else the project's `.venv` (where dev-services.sh installs it),
/// else `nats-server` on the PATH.
pub fn nats_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("HANGAR_NATS_SERVER") {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/nats-server");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("nats-server")
}

/// Garage (a real self-hosted S3 store): one node, sqlite metadata, replication factor 1,
/// a fixed test key and one bucket. Stopped and wiped when dropped.
pub struct GarageProcess {
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    pub key_id: String,
    pub secret: String,
    child: Child,
    dir: tempfile::TempDir,
}

/// `HANGAR_GARAGE`, else `garage` in cargo's bin directory, else on the PATH.
fn garage_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("HANGAR_GARAGE") {
        return PathBuf::from(p);
    }
    if let Some(home) = std::env::var_os("CARGO_HOME")
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo").into()))
    {
        let p = Path::new(&home).join("bin/garage");
        if p.exists() {
            return p;
        }
    }
    PathBuf::from("garage")
}

impl GarageProcess {
    pub fn start() -> io::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("hangar-garage-")
            .tempdir()?;
        let (rpc, s3, admin) = (free_port()?, free_port()?, free_port()?);
        let config = dir.path().join("garage.toml");
        std::fs::write(
            &config,
            format!(
                "metadata_dir = \"{d}/meta\"\ndata_dir = \"{d}/data\"\ndb_engine = \"sqlite\"\nreplication_factor = 1\n\
                 rpc_bind_addr = \"127.0.0.1:{rpc}\"\nrpc_public_addr = \"127.0.0.1:{rpc}\"\n\
                 rpc_secret = \"{secret}\"\n\n[s3_api]\ns3_region = \"garage\"\napi_bind_addr = \"127.0.0.1:{s3}\"\n\
                 root_domain = \".s3.garage.localhost\"\n\n[admin]\napi_bind_addr = \"127.0.0.1:{admin}\"\n",
                d = dir.path().display(),
                secret = "4c5e1a9b2f3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7",
            ),
        )?;
        let child = spawn_garage(&config)?;
        let mut g = Self {
            endpoint: format!("http://127.0.0.1:{s3}"),
            region: "garage".into(),
            bucket: "hangar".into(),
            key_id: "GK0123456789abcdef01234567".into(),
            secret: "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef".into(),
            child,
            dir,
        };
        if let Err(e) = g.configure(&config, rpc) {
            let _ = g.child.kill();
            return Err(e);
        }
        Ok(g)
    }

    fn configure(&self, config: &Path, rpc: u16) -> io::Result<()> {
        wait_for_port(&format!("127.0.0.1:{rpc}"), Duration::from_secs(20))?;
        let garage = |args: &[&str]| -> io::Result<String> {
            let out = Command::new(garage_binary())
                .arg("-c")
                .arg(config)
                .args(args)
                .output()?;
            if !out.status.success() {
                return Err(io::Error::other(format!(
                    "garage {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr)
                )));
            }
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        };
        // The node may take a moment to answer its own CLI.
        let mut id = String::new();
        for _ in 0..50 {
            if let Ok(out) = garage(&["node", "id", "-q"]) {
                id = out.trim().split('@').next().unwrap_or("").to_owned();
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if id.is_empty() {
            return Err(io::Error::other("garage never reported its node id"));
        }
        garage(&["layout", "assign", "-z", "dc1", "-c", "1G", &id])?;
        garage(&["layout", "apply", "--version", "1"])?;
        garage(&[
            "key",
            "import",
            "--yes",
            "-n",
            "hangar-test",
            &self.key_id,
            &self.secret,
        ])?;
        garage(&["bucket", "create", &self.bucket])?;
        garage(&[
            "bucket",
            "allow",
            "--read",
            "--write",
            "--owner",
            &self.bucket,
            "--key",
            "hangar-test",
        ])?;
        let s3 = self.endpoint.trim_start_matches("http://").to_owned();
        wait_for_port(&s3, Duration::from_secs(20))
    }

    /// Kills the server and starts it again on the same ports and storage.
    pub fn restart(&mut self, down_for: Duration) -> io::Result<()> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(down_for);
        self.child = spawn_garage(&self.dir.path().join("garage.toml"))?;
        wait_for_port(
            self.endpoint.trim_start_matches("http://"),
            Duration::from_secs(20),
        )
    }

    /// The cache URL for this bucket (credentials go in `AWS_*` variables).
    pub fn cache_url(&self) -> String {
        format!(
            "s3://{}?endpoint={}&region={}",
            self.bucket, self.endpoint, self.region
        )
    }
}

fn spawn_garage(config: &Path) -> io::Result<Child> {
    let dir = config.parent().unwrap_or(Path::new("."));
    let mut cmd = Command::new(garage_binary());
    cmd.arg("-c")
        .arg(config)
        .arg("server")
        .env("RUST_LOG", "warn");
    spawn_logged(cmd, &dir.join("garage.log"), "garage")
}

/// Starts a service with its output appended to `log`; a missing binary says how to get it.
fn spawn_logged(mut cmd: Command, log: &Path, what: &str) -> io::Result<Child> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot start {what} (run scripts/dev-services.sh): {e}"),
            )
        })
}

impl Drop for GarageProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
