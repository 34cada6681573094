//! Mirroring on the fleet (a real nats-server, `hangar-worker` processes, real registries,
//! Garage): each source blob fetched once across the workers, across two concurrent jobs
//! and through the shared S3 cache; blob leases; credentials that stay with the workers and
//! never travel on the bus.

mod common;

use std::process::{Child, Command, Stdio};

use common::fleet::{Killed as Worker, spawn_worker, start_worker};
use common::*;
use futures_util::StreamExt;
use hangar_loadtest::services::{NatsProcess, RegistryConfig, RegistryProcess};

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

    let ports: Vec<u16> = (0..3)
        .map(|_| hangar_loadtest::services::free_port().unwrap())
        .collect();
    let workers: Vec<Worker> = (0..3)
        .map(|i| {
            let listen = format!("127.0.0.1:{}", ports[i]);
            start_worker(
                &nats.url(),
                &authfile,
                env.path(&format!("worker-{i}.log")),
                &listen,
            )
        })
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
    // A worker's metrics port holds at most 64 connections: a client holding them all
    // cannot take the worker's file descriptors; the 65th is answered 503 and closed.
    {
        use std::io::Read as _;
        let addr = format!("127.0.0.1:{}", ports[0]);
        let held: Vec<std::net::TcpStream> = (0..64)
            .map(|_| std::net::TcpStream::connect(&addr).unwrap())
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(300));
        let mut extra = std::net::TcpStream::connect(&addr).unwrap();
        extra
            .set_read_timeout(Some(std::time::Duration::from_secs(3)))
            .unwrap();
        let mut answer = String::new();
        let read = extra.read_to_string(&mut answer).map_err(|e| e.kind());
        assert!(
            read.is_ok() && answer.starts_with("HTTP/1.1 503"),
            "the 65th connection is told 503 and closed, not left waiting: {read:?} {answer:?}"
        );
        drop(held);
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    // Each worker reports what it did on /metrics; together they copied every blob.
    let http = reqwest::Client::new();
    let mut copied = 0u64;
    for port in &ports {
        let base = format!("http://127.0.0.1:{port}");
        assert_eq!(
            http.get(format!("{base}/healthz"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
        assert_eq!(
            http.get(format!("{base}/readyz"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
        let page = http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        copied += page
            .lines()
            .find(|l| l.starts_with("hangar_blobs_total{result=\"copied\"}"))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        assert!(!page.contains("fleet-secret-pw"));
        assert!(
            page.contains("hangar_queue_tasks{kind=\"blob\",state=\"pending\"}"),
            "queue depth exported:\n{page}"
        );
        assert!(
            page.contains("hangar_task_duration_seconds_bucket"),
            "{page}"
        );
    }
    assert_eq!(copied, 14, "copied blobs across the workers' /metrics");
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

#[tokio::test(flavor = "multi_thread")]
async fn two_concurrent_jobs_fetch_each_blob_once_across_the_fleet() {
    let env = Env::new();
    let nats = NatsProcess::start().expect("nats-server");
    let cache = env.path("leased-cache");
    let cache_arg = cache.to_str().unwrap().to_owned();
    let _workers: Vec<Worker> = (0..3)
        .map(|i| {
            let args = ["--listen", "127.0.0.1:0", "--cache", &cache_arg];
            spawn_worker(&nats.url(), env.path(&format!("lw{i}.log")), &args, &[])
        })
        .collect();
    // Index images only, so that the coordinators read no blobs themselves.
    let src = registry(&env.src.addr).await;
    let mut lines = Vec::new();
    for i in 0..4u64 {
        let repo = format!("leased/app-{i}");
        push_multiarch(
            &src,
            env.dir.path(),
            &repo,
            "v1",
            hangar_loadtest::seed::Format::Oci,
            2000,
        )
        .await;
        lines.push(format!("{}/{repo}:v1", env.src.addr));
    }
    let list = env.write_list("list.txt", &lines);
    let other = hangar_loadtest::services::RegistryProcess::start().unwrap();
    let jobs: Vec<Child> = [env.dst.addr.clone(), other.addr.clone()]
        .iter()
        .map(|dst| {
            Command::new(env!("CARGO_BIN_EXE_hangar-coord"))
                .args([
                    "submit",
                    list.to_str().unwrap(),
                    "--tls-verify=false",
                    "-d",
                    dst,
                    "-j",
                    "4",
                ])
                .args([
                    "--nats",
                    &nats.url(),
                    "-o",
                    env.path("failed.txt").to_str().unwrap(),
                ])
                .env("REGISTRY_AUTH_FILE", "/nonexistent/auth.json")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for job in jobs {
        let out = job.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
    }
    let gets = blob_gets(&env.src.log());
    // 4 repos share the same two base layers and configs (same seeds): 3 unique blobs per
    // platform (base, own, config) collapse across repositories.
    assert!(
        gets.values().all(|n| *n == 1),
        "a blob was fetched twice across two concurrent jobs: {gets:?}"
    );
    for line in &lines {
        let src_raw = skopeo_raw(line).unwrap();
        for dst in [&env.dst.addr, &other.addr] {
            let copied = skopeo_raw(&line.replace(&env.src.addr, dst)).expect("copied");
            assert_eq!(
                sha(&copied),
                sha(&src_raw),
                "complete index kept its digest"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_fleet_job_finds_every_blob_in_the_shared_s3_cache_even_while_s3_restarts() {
    let env = Env::new();
    let nats = NatsProcess::start().expect("nats-server");
    let mut garage = hangar_loadtest::services::GarageProcess::start()
        .expect("garage (scripts/dev-services.sh installs it)");
    let cache_arg = garage.cache_url();
    let aws = [
        ("AWS_ACCESS_KEY_ID", garage.key_id.clone()),
        ("AWS_SECRET_ACCESS_KEY", garage.secret.clone()),
    ];
    let envs: Vec<(&str, &str)> = aws.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let workers: Vec<Worker> = (0..3)
        .map(|i| {
            let args = ["--listen", "127.0.0.1:0", "--cache", &cache_arg];
            spawn_worker(&nats.url(), env.path(&format!("cw{i}.log")), &args, &envs)
        })
        .collect();
    let lines = seed_shared_repos(&env, 4).await;
    let list = env.write_list("list.txt", &lines);
    let submit = |dst: &str| {
        Command::new(env!("CARGO_BIN_EXE_hangar-coord"))
            .args([
                "submit",
                list.to_str().unwrap(),
                "--tls-verify=false",
                "-d",
                dst,
                "-j",
                "4",
                "--nats",
                &nats.url(),
            ])
            .args([
                "--cache",
                &cache_arg,
                "-o",
                env.path("failed.txt").to_str().unwrap(),
            ])
            .env("REGISTRY_AUTH_FILE", "/nonexistent/auth.json")
            .envs(aws.clone())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("submit")
    };
    let out = submit(&env.dst.addr).wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let first = blob_gets(&env.src.log());
    assert!(first.values().all(|n| *n == 1), "{first:?}");
    // The second job, to a new destination, while the S3 server is down for three seconds.
    let second = hangar_loadtest::services::RegistryProcess::start().unwrap();
    let running = submit(&second.addr);
    garage.restart(std::time::Duration::from_secs(3)).unwrap();
    let out = running.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        blob_gets(&env.src.log()),
        first,
        "the second job fetched nothing from the source"
    );
    for line in &lines {
        let src = skopeo_raw(line).unwrap();
        let dst = skopeo_raw(&line.replace(&env.src.addr, &second.addr)).expect("copied");
        assert_eq!(index_digests(&dst), vec![sha(&src)]);
    }
    drop(workers);
}

/// A blob lease outlives its bucket's max age while its holder is alive (it is renewed),
/// keeps other workers out until it is given back, and a dead holder's lease expires.
#[tokio::test(flavor = "multi_thread")]
async fn a_blob_lease_is_renewed_while_held_and_expires_when_its_holder_dies() {
    use hangar_shared::lease::BlobLeases;
    let nats = NatsProcess::start().expect("nats-server");
    let client = async_nats::connect(nats.url()).await.unwrap();
    let ttl = std::time::Duration::from_secs(2);
    let a = std::sync::Arc::new(
        BlobLeases::open_with_ttl(client.clone(), "worker-a", ttl)
            .await
            .unwrap(),
    );
    let b = std::sync::Arc::new(
        BlobLeases::open_with_ttl(client.clone(), "worker-b", ttl)
            .await
            .unwrap(),
    );
    let digest: hangar_shared::Digest = format!("sha256:{}", "a".repeat(64)).parse().unwrap();
    let lease = a.acquire(&digest).await.unwrap().expect("free at first");
    // Well past the max age: the renewals keep it.
    tokio::time::sleep(ttl * 3).await;
    assert!(
        b.acquire(&digest).await.unwrap().is_none(),
        "still held by a"
    );
    lease.release().await;
    let taken = b
        .acquire(&digest)
        .await
        .unwrap()
        .expect("free once given back");
    // A holder that dies renews nothing: its lease goes with the max age.
    let js = async_nats::jetstream::new(client.clone());
    let kv = js
        .get_key_value(hangar_shared::lease::LEASE_BUCKET)
        .await
        .unwrap();
    let orphan: hangar_shared::Digest = format!("sha256:{}", "b".repeat(64)).parse().unwrap();
    kv.create(orphan.hex(), "dead-worker".into()).await.unwrap();
    assert!(a.held(&orphan).await.unwrap());
    let mut gone = false;
    for _ in 0..50 {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        if !a.held(&orphan).await.unwrap() {
            gone = true;
            break;
        }
    }
    assert!(gone, "a dead holder's lease expires");
    drop(taken);
    // A holder whose lease is taken from it (lapsed while it was frozen, say) stops its fill
    // at the next renewal instead of going on unguarded.
    let contested: hangar_shared::Digest = format!("sha256:{}", "c".repeat(64)).parse().unwrap();
    let lease = a.acquire(&contested).await.unwrap().expect("free");
    kv.delete(contested.hex()).await.unwrap();
    kv.create(contested.hex(), "another-worker".into())
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let stopped = lease
        .guard(async {
            tokio::time::sleep(ttl * 10).await;
            Ok(())
        })
        .await;
    let e = stopped.expect_err("the fill stops with its lease");
    assert!(e.message.contains("could not be renewed"), "{e}");
    assert!(started.elapsed() < ttl * 3, "{:?}", started.elapsed());
}
