//! The fleet: a coordinator and three `hangar-worker` processes on a real nats-server
//! (JetStream), mirroring between real registries.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use common::*;
use futures_util::StreamExt;
use hangar_loadtest::services::{NatsProcess, RegistryConfig, RegistryProcess};

/// A `hangar-worker` process, killed when dropped.
struct Worker(Child);

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn worker_binary() -> PathBuf {
    let coord = PathBuf::from(env!("CARGO_BIN_EXE_hangar-coord"));
    let worker = coord.with_file_name("hangar-worker");
    assert!(
        worker.exists(),
        "{} is missing: run the tests with `cargo test --workspace`",
        worker.display()
    );
    worker
}

fn start_worker(nats: &str, authfile: &std::path::Path, log: PathBuf) -> Worker {
    let out = std::fs::File::create(log).unwrap();
    Worker(
        Command::new(worker_binary())
            .args([
                "--nats",
                nats,
                "--tls-verify=false",
                "--blob-concurrency",
                "4",
            ])
            .arg("--authfile")
            .arg(authfile)
            .env("HANGAR_LOG", "info,hangar_worker=debug")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start hangar-worker"),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn three_workers_mirror_a_list_fetching_each_blob_once_and_no_secret_on_the_bus() {
    let env = Env::new();
    let nats = NatsProcess::start().expect("nats-server");
    // The destination wants a password, which only the workers' own auth file holds.
    let htpasswd = env.path("htpasswd");
    let hashed = Command::new("htpasswd")
        .args(["-Bbn", "fleet-user", "fleet-secret-pw"])
        .output()
        .unwrap();
    std::fs::write(&htpasswd, &hashed.stdout).unwrap();
    let dst = RegistryProcess::start_with(RegistryConfig {
        htpasswd: Some(&htpasswd),
        ..Default::default()
    })
    .unwrap();
    let authfile = env.path("worker-auth.json");
    std::fs::write(
        &authfile,
        format!(
            r#"{{"auths":{{"{}":{{"auth":"{}"}}}}}}"#,
            dst.addr, "ZmxlZXQtdXNlcjpmbGVldC1zZWNyZXQtcHc="
        ),
    )
    .unwrap();

    let lines = seed_shared_repos(&env, 6).await;
    let list = env.write_list("list.txt", &lines);
    // Everything on the bus, as it flies.
    let spy = async_nats::connect(nats.url()).await.unwrap();
    let mut seen = spy.subscribe(">").await.unwrap();
    let collected = tokio::spawn(async move {
        let mut all = Vec::new();
        while let Ok(Some(m)) =
            tokio::time::timeout(std::time::Duration::from_secs(8), seen.next()).await
        {
            all.push(String::from_utf8_lossy(&m.payload).into_owned());
        }
        all
    });

    let workers: Vec<Worker> = (0..3)
        .map(|i| start_worker(&nats.url(), &authfile, env.path(&format!("worker-{i}.log"))))
        .collect();
    let out = hangar(&[
        "submit",
        list.to_str().unwrap(),
        "--tls-verify=false",
        "-d",
        &dst.addr,
        "-j",
        "6",
        "--nats",
        &nats.url(),
        "-o",
        env.path("failed.txt").to_str().unwrap(),
    ]);
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("runs on the fleet"), "{log}");
    for line in &lines {
        let src_raw = skopeo_raw(line).unwrap();
        let dst_ref = line.replace(&env.src.addr, &dst.addr);
        let check = Command::new("skopeo")
            .args([
                "inspect",
                "--raw",
                "--tls-verify=false",
                "--creds",
                "fleet-user:fleet-secret-pw",
            ])
            .arg(format!("docker://{dst_ref}"))
            .output()
            .unwrap();
        assert!(check.status.success(), "{}", text(&check));
        assert_eq!(
            index_digests(&check.stdout),
            vec![sha(&src_raw)],
            "{dst_ref}"
        );
    }
    let gets = blob_gets(&env.src.log());
    assert_eq!(gets.len(), 14, "{gets:?}");
    assert!(
        gets.values().all(|n| *n == 1),
        "each unique blob fetched exactly once across the fleet: {gets:?}"
    );
    // Work was shared: more than one worker handled tasks.
    drop(workers);
    let handled: Vec<usize> = (0..3)
        .map(|i| {
            std::fs::read_to_string(env.path(&format!("worker-{i}.log")))
                .unwrap_or_default()
                .matches("task finished")
                .count()
        })
        .collect();
    assert!(
        handled.iter().filter(|n| **n > 0).count() >= 2,
        "tasks per worker: {handled:?}"
    );

    let messages = collected.await.unwrap();
    assert!(
        messages.iter().any(|m| m.contains("\"kind\":\"blob\"")),
        "tasks crossed the bus"
    );
    for m in &messages {
        assert!(
            !m.contains("fleet-secret-pw")
                && !m.contains("ZmxlZXQtdXNlcjpmbGVldC1zZWNyZXQtcHc=")
                && !m.contains("worker-auth.json"),
            "a secret on the bus: {m}"
        );
    }
    for i in 0..3 {
        let wlog =
            std::fs::read_to_string(env.path(&format!("worker-{i}.log"))).unwrap_or_default();
        assert!(
            !wlog.contains("fleet-secret-pw"),
            "a secret in worker {i}'s log"
        );
    }
}
