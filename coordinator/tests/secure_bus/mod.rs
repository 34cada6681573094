//! The locked-down bus for the tests in `bus.rs` and `sign_index.rs`: a throwaway PKI,
//! nats-server with TLS and the deployed permissions, a worker and `serve` with their
//! identities, and the helpers that publish a task and read its final event.

// Each test file uses some of the helpers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::*;
use hangar_loadtest::services::{free_port, wait_for_port};
use hangar_shared::digest::Digest;
use hangar_shared::manifest::Descriptor;
use hangar_shared::queue::jetstream::{self, NatsOptions};
use hangar_shared::store::RepoRef;
use hangar_shared::task::{BlobTask, Event, EventKind, Task, TaskEnvelope};

pub const COORDINATOR_PW: &str = "coordinator-test-pw";
pub const WORKER_PW: &str = "worker-test-pw";
pub const INTRUDER_PW: &str = "intruder-test-pw";

/// PEM files of a throwaway PKI.
pub struct Pki {
    pub ca: PathBuf,
    pub server: (PathBuf, PathBuf),
    pub dir: PathBuf,
}

impl Pki {
    pub fn new(dir: &Path) -> Self {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
            IsCa, KeyPair, KeyUsagePurpose,
        };
        let dir = dir.join("pki");
        std::fs::create_dir_all(&dir).unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "hangar bus test CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
        let ca_path = dir.join("ca.crt");
        std::fs::write(&ca_path, ca.pem()).unwrap();
        let issue = |name: &str, sans: Vec<String>, usage: ExtendedKeyUsagePurpose| {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::new(sans).unwrap();
            p.distinguished_name.push(DnType::CommonName, name);
            p.extended_key_usages = vec![usage];
            let cert = p.signed_by(&key, &ca).unwrap();
            let (c, k) = (
                dir.join(format!("{name}.crt")),
                dir.join(format!("{name}.key")),
            );
            std::fs::write(&c, cert.pem()).unwrap();
            std::fs::write(&k, key.serialize_pem()).unwrap();
            (c, k)
        };
        let server = issue(
            "nats",
            vec!["127.0.0.1".into(), "localhost".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        for client in ["coordinator", "worker", "intruder"] {
            issue(client, vec![], ExtendedKeyUsagePurpose::ClientAuth);
        }
        Self {
            ca: ca_path,
            server,
            dir,
        }
    }

    pub fn client(&self, name: &str) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("{name}.crt")),
            self.dir.join(format!("{name}.key")),
        )
    }
}

/// nats-server with TLS (client certificates required) and deploy's permissions, plus an
/// `intruder` user who may publish only on `intruder.>`.
pub struct SecureNats {
    pub child: Child,
    pub port: u16,
    pub log: PathBuf,
    pub pki: Pki,
}

impl SecureNats {
    pub fn start(dir: &Path) -> Self {
        let pki = Pki::new(dir);
        let (port, monitor) = (free_port().unwrap(), free_port().unwrap());
        let permissions =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/k8s/nats/permissions.conf");
        let permissions = std::fs::read_to_string(permissions).expect("permissions.conf");
        let config = format!(
            r#"
listen: 127.0.0.1:{port}
http: 127.0.0.1:{monitor}
jetstream {{ store_dir: "{store}" }}
tls {{
  cert_file: "{cert}"
  key_file: "{key}"
  ca_file: "{ca}"
  verify: true
  timeout: 5
}}
{permissions}
INTRUDER = {{
  publish: {{ allow: ["intruder.>"] }}
  subscribe: {{ allow: ["_INBOX.intruder.>"] }}
}}
authorization {{
  users: [
    {{user: coordinator, password: $HANGAR_NATS_COORDINATOR_PASSWORD, permissions: $HANGAR_COORDINATOR}}
    {{user: worker, password: $HANGAR_NATS_WORKER_PASSWORD, permissions: $HANGAR_WORKER}}
    {{user: intruder, password: "{INTRUDER_PW}", permissions: $INTRUDER}}
  ]
}}
"#,
            store = dir.join("nats-store").display(),
            cert = pki.server.0.display(),
            key = pki.server.1.display(),
            ca = pki.ca.display(),
        );
        let conf = dir.join("nats.conf");
        std::fs::write(&conf, config).unwrap();
        let log = dir.join("nats.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(hangar_loadtest::services::nats_binary())
            .arg("-c")
            .arg(&conf)
            // The passwords reach the server as the deployments give them: from the
            // environment (a Secret), referenced by name in the config.
            .env("HANGAR_NATS_COORDINATOR_PASSWORD", COORDINATOR_PW)
            .env("HANGAR_NATS_WORKER_PASSWORD", WORKER_PW)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start nats-server (scripts/dev-services.sh installs it)");
        let nats = Self {
            child,
            port,
            log,
            pki,
        };
        wait_for_port(&format!("127.0.0.1:{port}"), Duration::from_secs(15))
            .unwrap_or_else(|e| panic!("{e}: {}", nats.log_text()));
        nats
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `--nats*` flags for `who` (a user with its client certificate).
    pub fn flags(&self, who: &str, password: &str) -> Vec<String> {
        let (cert, key) = self.pki.client(who);
        vec![
            "--nats".into(),
            self.url(),
            "--nats-user".into(),
            who.into(),
            "--nats-password".into(),
            password.into(),
            "--nats-ca".into(),
            self.pki.ca.display().to_string(),
            "--nats-tls-cert".into(),
            cert.display().to_string(),
            "--nats-tls-key".into(),
            key.display().to_string(),
        ]
    }

    pub fn options(&self, who: &str, password: &str) -> NatsOptions {
        let (cert, key) = self.pki.client(who);
        NatsOptions {
            url: self.url(),
            user: Some(who.into()),
            password: Some(password.into()),
            ca: Some(self.pki.ca.clone()),
            tls_cert: Some(cert),
            tls_key: Some(key),
            ..Default::default()
        }
    }

    pub async fn coordinator(&self) -> async_nats::Client {
        jetstream::connect(&self.options("coordinator", COORDINATOR_PW))
            .await
            .expect("the coordinator connects")
    }

    /// The coordinator's connection once it has made the streams and buckets, as
    /// `hangar-coord` does before a worker may find them.
    pub async fn coordinator_with_streams(&self) -> async_nats::Client {
        let client = self.coordinator().await;
        jetstream::ensure_streams(&async_nats::jetstream::new(client.clone()))
            .await
            .expect("the coordinator makes the streams");
        client
    }
}

impl Drop for SecureNats {
    fn drop(&mut self) {
        // A failed test shows what the server refused: usually the reason.
        if std::thread::panicking() {
            for l in self.log_text().lines().filter(|l| l.contains("Violation")) {
                eprintln!("nats-server: {l}");
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `hangar-worker` process, killed when dropped.
pub struct Worker {
    pub child: Child,
    pub log: PathBuf,
}

impl Worker {
    pub fn start(nats: &SecureNats, log: PathBuf, extra: &[&str]) -> Self {
        let bin = PathBuf::from(env!("CARGO_BIN_EXE_hangar-coord")).with_file_name("hangar-worker");
        assert!(
            bin.exists(),
            "{} is missing: run cargo test --workspace",
            bin.display()
        );
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(bin)
            .args(nats.flags("worker", WORKER_PW))
            .args(["--tls-verify=false", "--listen", "127.0.0.1:0"])
            .args(extra)
            .env("REGISTRY_AUTH_FILE", "/nonexistent/auth.json")
            .env("HANGAR_LOG", "info,hangar_worker=debug")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start hangar-worker");
        Self { child, log }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Until the worker says it is ready (its consumers exist).
    pub async fn wait_ready(&self) {
        for _ in 0..300 {
            if self.log_text().contains("worker ready") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("worker not ready: {}", self.log_text());
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn envelope(job: &str, id: u64, task: Task) -> TaskEnvelope {
    TaskEnvelope {
        job: job.into(),
        id,
        nonce: hangar_shared::task::new_nonce(),
        key: format!("bus-test/{id}"),
        trace: None,
        task,
    }
}

/// The next final event of `job`.
pub async fn final_event(events: &mut hangar_shared::queue::jetstream::EventFeed) -> Event {
    loop {
        let e = tokio::time::timeout(Duration::from_secs(60), events.recv())
            .await
            .expect("an event within 60 s")
            .expect("events stream open");
        match &e.kind {
            EventKind::Failed { last: false, .. }
            | EventKind::Started { .. }
            | EventKind::Waiting { .. } => continue,
            _ => return e,
        }
    }
}

/// A blob of the source image, and a task copying it to `dest_repo` at the destination.
pub async fn blob_task(env: &Env, line: &str, dest_repo: &str) -> (Descriptor, Task) {
    let raw = skopeo_raw(line).expect("source manifest");
    let m: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    let layer = &m["layers"][0];
    let desc: Descriptor = serde_json::from_value(layer.clone()).unwrap();
    let repo = line
        .trim_start_matches(&format!("{}/", env.src.addr))
        .split(':')
        .next()
        .unwrap()
        .to_owned();
    let task = Task::Blob(Box::new(BlobTask {
        desc: desc.clone(),
        source: RepoRef::registry(&env.src.addr, &repo),
        dest: RepoRef::registry(&env.dst.addr, dest_repo),
        mount_from: vec![],
        inline: None,
    }));
    (desc, task)
}

pub async fn blob_status(addr: &str, repo: &str, digest: &Digest) -> u16 {
    reqwest::Client::new()
        .head(format!("http://{addr}/v2/{repo}/blobs/{digest}"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Every blob and the manifest of `src_ref` are at `dst_ref`'s registry, byte for byte.
pub async fn assert_copied(src_ref: &str, dst_ref: &str, dst_addr: &str) {
    let src_raw = skopeo_raw(src_ref).expect("source");
    let dst_raw = skopeo_raw(dst_ref).unwrap_or_else(|| panic!("{dst_ref} missing"));
    // The destination tag holds an index naming the source manifest by its digest.
    assert!(
        index_digests(&dst_raw).contains(&sha(&src_raw)),
        "{dst_ref}: {}",
        String::from_utf8_lossy(&dst_raw)
    );
    let repo_and_tag = dst_ref.trim_start_matches(&format!("{dst_addr}/"));
    let repo = repo_and_tag.split(':').next().unwrap();
    let pinned = skopeo_raw(&format!("{dst_addr}/{repo}@{}", sha(&src_raw))).expect("by digest");
    assert_eq!(pinned, src_raw, "{dst_ref}: manifest bytes");
    let m: serde_json::Value = serde_json::from_slice(&src_raw).unwrap();
    let mut digests = vec![m["config"]["digest"].as_str().unwrap().to_owned()];
    for l in m["layers"].as_array().unwrap() {
        digests.push(l["digest"].as_str().unwrap().to_owned());
    }
    for d in digests {
        let d: Digest = d.parse().unwrap();
        assert_eq!(blob_status(dst_addr, repo, &d).await, 200, "{repo} {d}");
    }
}

/// `hangar-coord serve` as the coordinator identity, killed when dropped.
pub struct Serve(pub Child);

impl Serve {
    pub fn start(nats: &SecureNats, listen: &str, log: PathBuf) -> Self {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_hangar-coord"))
            .args(["serve", "--tls-verify=false", "--listen", listen])
            .args(nats.flags("coordinator", COORDINATOR_PW))
            .env("REGISTRY_AUTH_FILE", "/nonexistent/auth.json")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("hangar-coord serve");
        wait_for_port(listen, Duration::from_secs(20)).unwrap();
        Self(child)
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
