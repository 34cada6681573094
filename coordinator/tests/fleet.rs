//! The fleet: a coordinator and three `hangar-worker` processes on a real nats-server
//! (JetStream), mirroring between real registries.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use common::*;
use futures_util::StreamExt;
use hangar_loadtest::services::{NatsProcess, RegistryConfig, RegistryProcess};

/// A `hangar-worker` process, killed when dropped.
// Children killed with the test, whatever they are (workers, coordinators, Prometheus).
use common::fleet::{Killed as Worker, Killed as Coordinator, worker_binary};

/// A worker on `nats` with `args` on top of the common ones, logging to `log`.
fn spawn_worker(nats: &str, log: PathBuf, args: &[&str], envs: &[(&str, &str)]) -> Worker {
    let out = std::fs::File::create(log).unwrap();
    Worker(
        Command::new(worker_binary())
            .args(["--nats", nats, "--tls-verify=false"])
            .args(args)
            .env("REGISTRY_AUTH_FILE", "/nonexistent/auth.json")
            .env("HANGAR_LOG", "info,hangar_worker=debug")
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start hangar-worker"),
    )
}

fn start_worker(nats: &str, authfile: &std::path::Path, log: PathBuf, listen: &str) -> Worker {
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

/// Images with one 6 MB layer each behind a proxy capped at 3 MB/s per connection: each
/// blob copy takes about two seconds, long enough to break something in the middle.
async fn slow_source(env: &Env, n: u64) -> (Vec<String>, hangar_loadtest::proxy::Proxy) {
    let src = registry(&env.src.addr).await;
    for i in 0..n {
        push_image(
            &src,
            env.dir.path(),
            &format!("chaos/app-{i}"),
            Some("v1"),
            hangar_loadtest::seed::Format::Oci,
            "amd64",
            (&[1000 + i], 6_000_000),
        )
        .await;
    }
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

fn start_fast_failover_worker(nats: &str, log: PathBuf) -> Worker {
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

fn submit_child(env: &Env, list: &std::path::Path, nats: &str) -> Child {
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

fn assert_all_copied(env: &Env, n: u64) {
    for i in 0..n {
        let src = skopeo_raw(&format!("{}/chaos/app-{i}:v1", env.src.addr)).unwrap();
        let dst = skopeo_raw(&format!("{}/chaos/app-{i}:v1", env.dst.addr)).expect("copied");
        assert_eq!(index_digests(&dst), vec![sha(&src)], "chaos/app-{i}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_mid_blob_loses_nothing() {
    let env = Env::new();
    let nats = NatsProcess::start().expect("nats-server");
    let (lines, _proxy) = slow_source(&env, 4).await;
    let list = env.write_list("list.txt", &lines);
    let mut doomed = start_fast_failover_worker(&nats.url(), env.path("doomed.log"));
    let _survivor = start_fast_failover_worker(&nats.url(), env.path("survivor.log"));
    let submit = submit_child(&env, &list, &nats.url());
    // Wait until the doomed worker holds a blob task, then kill -9 it.
    let started = std::time::Instant::now();
    while !std::fs::read_to_string(env.path("doomed.log"))
        .unwrap_or_default()
        .lines()
        .any(|l| l.contains("task started") && l.contains("kind=\"blob\""))
    {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "the doomed worker never took a blob task"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    doomed.0.kill().unwrap();
    let out = submit.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_all_copied(&env, 4);
    let survivor = std::fs::read_to_string(env.path("survivor.log")).unwrap_or_default();
    assert!(
        survivor.contains("attempt=2"),
        "the killed worker's tasks were redelivered to the survivor:\n{survivor}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn nats_restarting_mid_run_loses_nothing() {
    let env = Env::new();
    let mut nats = NatsProcess::start().expect("nats-server");
    let (lines, _proxy) = slow_source(&env, 4).await;
    let list = env.write_list("list.txt", &lines);
    let _a = start_fast_failover_worker(&nats.url(), env.path("a.log"));
    let _b = start_fast_failover_worker(&nats.url(), env.path("b.log"));
    let submit = submit_child(&env, &list, &nats.url());
    std::thread::sleep(std::time::Duration::from_millis(1500));
    nats.restart(std::time::Duration::from_secs(1)).unwrap();
    let out = submit.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_all_copied(&env, 4);
}

/// `hangar-coord serve` on `listen`, killed when dropped.
fn start_coordinator(nats: &str, listen: &str, log: PathBuf) -> Coordinator {
    spawn_coordinator(nats, listen, log, &[])
}

fn spawn_coordinator(nats: &str, listen: &str, log: PathBuf, envs: &[(&str, &str)]) -> Coordinator {
    // The coordinator's own credentials, which must stay with it.
    let authfile = log.with_file_name("coord-auth.json");
    std::fs::write(
        &authfile,
        r#"{"auths":{"unused.example":{"auth":"dXNlcjpjb29yZC1zZWNyZXQ="}}}"#,
    )
    .unwrap();
    let out = std::fs::File::create(log).unwrap();
    let c = Coordinator(
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
    hangar_loadtest::services::wait_for_port(listen, std::time::Duration::from_secs(20)).unwrap();
    c
}

async fn job_state(http: &reqwest::Client, base: &str, id: &str) -> serde_json::Value {
    http.get(format!("{base}/jobs/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_submit_status_and_cancel() {
    let env = Env::new();
    let nats = NatsProcess::start().expect("nats-server");
    let listen = format!(
        "127.0.0.1:{}",
        hangar_loadtest::services::free_port().unwrap()
    );
    let _coord = start_coordinator(&nats.url(), &listen, env.path("coord.log"));
    let _workers: Vec<Worker> = (0..2)
        .map(|i| start_fast_failover_worker(&nats.url(), env.path(&format!("w{i}.log"))))
        .collect();
    let lines = seed_shared_repos(&env, 3).await;
    let list = env.write_list("list.txt", &lines);
    let server = format!("http://{listen}");
    let out = hangar(&[
        "submit",
        list.to_str().unwrap(),
        "--server",
        &server,
        "-d",
        &env.dst.addr,
        "-o",
        env.path("failed.txt").to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out),
        std::fs::read_to_string(env.path("coord.log")).unwrap_or_default()
    );
    for line in &lines {
        let src = skopeo_raw(line).unwrap();
        let dst = skopeo_raw(&line.replace(&env.src.addr, &env.dst.addr)).expect("copied");
        assert_eq!(index_digests(&dst), vec![sha(&src)]);
    }
    let table = hangar(&["status", "--server", &server]);
    let table_text = String::from_utf8_lossy(&table.stdout);
    assert!(
        table_text.starts_with("JOB ")
            && table_text.contains("succeeded")
            && table_text.contains("3/3"),
        "{table_text}"
    );
    let all = hangar(&["status", "--json", "--server", &server]);
    assert!(all.status.success(), "{}", text(&all));
    let jobs: serde_json::Value = serde_json::from_slice(&all.stdout).unwrap();
    assert_eq!(jobs[0]["state"], "succeeded", "{jobs}");
    assert_eq!(jobs[0]["copied"], 3);
    let page = reqwest::get(format!("{server}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("hangar_jobs{state=\"succeeded\"} 1"),
        "{page}"
    );
    assert!(
        page.contains("hangar_job_blobs{result=\"copied\"} 8"),
        "{page}"
    );
    assert!(
        page.contains("hangar_job_blobs{result=\"mounted\"} 4"),
        "{page}"
    );

    // A slow job, cancelled while it runs.
    let (slow, _proxy) = slow_source(&env, 3).await;
    let http = reqwest::Client::new();
    let request = serde_json::json!({
        "version": 1, "kind": "mirror", "list": slow.join("\n"),
        "destination": {"registry": env.dst.addr, "project": "cancelled"},
    });
    let created: serde_json::Value = http
        .post(format!("{server}/jobs"))
        .json(&request)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    std::thread::sleep(std::time::Duration::from_millis(700));
    let cancelled = hangar(&["cancel", &id, "--server", &server]);
    assert!(cancelled.status.success(), "{}", text(&cancelled));
    assert_eq!(job_state(&http, &server, &id).await["state"], "cancelled");
    let missing = hangar(&["status", "no-such-job", "--server", &server]);
    assert_eq!(missing.status.code(), Some(1));

    // What the coordinator keeps in KV names no credential file and holds no secret.
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let kv = js.get_key_value("hangar-jobs").await.unwrap();
    let mut keys = kv.keys().await.unwrap();
    let mut seen = 0;
    while let Some(Ok(key)) = keys.next().await {
        let value = kv.get(&key).await.unwrap().unwrap();
        let value = String::from_utf8_lossy(&value);
        assert!(
            !value.contains("coord-auth.json") && !value.contains("coord-secret"),
            "{value}"
        );
        seen += 1;
    }
    assert_eq!(seen, 2, "both jobs are kept");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_coordinator_restarted_mid_run_resumes_its_job() {
    let env = Env::new();
    let nats = NatsProcess::start().expect("nats-server");
    let listen = format!(
        "127.0.0.1:{}",
        hangar_loadtest::services::free_port().unwrap()
    );
    let first = start_coordinator(&nats.url(), &listen, env.path("coord-1.log"));
    let _workers: Vec<Worker> = (0..2)
        .map(|i| start_fast_failover_worker(&nats.url(), env.path(&format!("w{i}.log"))))
        .collect();
    let (lines, _proxy) = slow_source(&env, 4).await;
    let server = format!("http://{listen}");
    let http = reqwest::Client::new();
    let request = serde_json::json!({
        "version": 1, "kind": "mirror", "list": lines.join("\n"),
        "destination": {"registry": env.dst.addr, "project": "chaos"},
        "options": {"jobs": 4},
    });
    let created: serde_json::Value = http
        .post(format!("{server}/jobs"))
        .json(&request)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    drop(first); // SIGKILL mid-run
    let _second = start_coordinator(&nats.url(), &listen, env.path("coord-2.log"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    let state = loop {
        let s = job_state(&http, &server, &id).await;
        if s["state"] != "running" || std::time::Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    };
    assert_eq!(
        state["state"],
        "succeeded",
        "{state}\n{}",
        std::fs::read_to_string(env.path("coord-2.log")).unwrap_or_default()
    );
    assert!(
        std::fs::read_to_string(env.path("coord-2.log"))
            .unwrap_or_default()
            .contains(&format!("Resuming job {id}"))
    );
    assert_all_copied(&env, 4);
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

#[tokio::test(flavor = "multi_thread")]
async fn a_task_no_worker_answers_is_reported_failed_after_max_deliveries() {
    use hangar_shared::queue::TaskQueue;
    use hangar_shared::queue::jetstream::{self, JetStreamQueue, NatsOptions};
    use hangar_shared::task::{EventKind, TaskKind};

    let nats = NatsProcess::start().expect("nats-server");
    let client = jetstream::connect(&NatsOptions {
        url: nats.url(),
        ..Default::default()
    })
    .await
    .unwrap();
    // A hung worker: it takes deliveries and never answers them.
    let hung = JetStreamQueue::consumer(
        client.clone(),
        &[(TaskKind::Blob, 1)],
        std::time::Duration::from_millis(500),
    )
    .await
    .unwrap();
    let publisher = JetStreamQueue::publisher(client.clone()).await.unwrap();
    let mut events = jetstream::follow_events(client.clone(), "advisory.r1")
        .await
        .unwrap();
    publisher
        .publish(hangar_loadtest::queue_bench::sample_task("advisory.r1", 7))
        .await
        .unwrap();
    let taker = tokio::spawn(async move {
        let mut deliveries = 0;
        while let Some(d) = hung.next().await {
            deliveries += 1;
            drop(d);
        }
        deliveries
    });
    let event = tokio::time::timeout(std::time::Duration::from_secs(30), events.recv())
        .await
        .expect("the exhausted task was reported")
        .unwrap();
    assert_eq!(event.task, 7);
    match event.kind {
        EventKind::Failed {
            last,
            attempt,
            message,
            ..
        } => {
            assert!(last, "reported as final");
            assert_eq!(attempt, 3, "{message}");
            assert!(message.contains("no worker answered"), "{message}");
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    taker.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_stops_within_its_grace_period_on_sigterm_and_nothing_is_lost() {
    let env = Env::new();
    let nats = NatsProcess::start().expect("nats-server");
    let (lines, _proxy) = slow_source(&env, 4).await;
    let list = env.write_list("list.txt", &lines);
    let mut leaving = spawn_worker(
        &nats.url(),
        env.path("leaving.log"),
        &[
            "--blob-concurrency",
            "2",
            "--ack-wait",
            "3s",
            "--listen",
            "127.0.0.1:0",
            "--grace",
            "1s",
        ],
        &[],
    );
    let _staying = start_fast_failover_worker(&nats.url(), env.path("staying.log"));
    let submit = submit_child(&env, &list, &nats.url());
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let sent = std::time::Instant::now();
    let term = Command::new("kill")
        .args(["-TERM", &leaving.0.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let status = loop {
        if let Some(s) = leaving.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            sent.elapsed() < std::time::Duration::from_secs(10),
            "the worker did not stop in time"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(status.success(), "a clean exit after SIGTERM");
    assert!(
        sent.elapsed() < std::time::Duration::from_secs(5),
        "stopped within the grace period: {:?}",
        sent.elapsed()
    );
    let log = std::fs::read_to_string(env.path("leaving.log")).unwrap();
    assert!(log.contains("stopping: no new tasks"), "{log}");
    let out = submit.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_all_copied(&env, 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn worker_metrics_count_retries_by_failure_class() {
    let env = Env::new();
    let nats = NatsProcess::start().expect("nats-server");
    let src = registry(&env.src.addr).await;
    // An index: the coordinator reads only manifests, so every blob GET is a worker's.
    push_multiarch(
        &src,
        env.dir.path(),
        "team/flaky",
        "1",
        hangar_loadtest::seed::Format::Oci,
        1500,
    )
    .await;
    // The source sits behind a proxy that resets the first two blob GETs.
    let proxy = hangar_loadtest::proxy::start(
        "127.0.0.1:0",
        &env.src.addr,
        hangar_loadtest::proxy::ProxyOptions {
            reset_blob_gets: 2,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let list = env.write_list("list.txt", &[format!("{}/team/flaky:1", proxy.addr)]);
    let port = hangar_loadtest::services::free_port().unwrap();
    let _worker = start_worker(
        &nats.url(),
        std::path::Path::new("/nonexistent/auth.json"),
        env.path("w.log"),
        &format!("127.0.0.1:{port}"),
    );
    let out = hangar(&[
        "submit",
        list.to_str().unwrap(),
        "--tls-verify=false",
        "-d",
        &env.dst.addr,
        "--nats",
        &nats.url(),
        "--destination-project",
        "team",
        "-o",
        env.path("failed.txt").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let page = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let retried: u64 = page
        .lines()
        .find(|l| l.starts_with("hangar_retries_total{class=\"network\"}"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(retried >= 1, "network retries counted:\n{page}");
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

/// `save --nats`: workers gather the blobs into the shared Garage bucket, one of them writes
/// the archive as an S3 multipart upload; `load` then reads it from S3 by range.
#[tokio::test(flavor = "multi_thread")]
async fn workers_save_an_archive_to_s3_and_it_loads_from_there() {
    let env = Env::new();
    let nats = NatsProcess::start().expect("nats-server");
    let garage = hangar_loadtest::services::GarageProcess::start()
        .expect("garage (scripts/dev-services.sh installs it)");
    let cache = garage.cache_url();
    let aws = [
        ("AWS_ACCESS_KEY_ID", garage.key_id.clone()),
        ("AWS_SECRET_ACCESS_KEY", garage.secret.clone()),
    ];
    let envs: Vec<(&str, &str)> = aws.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let _workers: Vec<Worker> = (0..3)
        .map(|i| {
            let args = ["--listen", "127.0.0.1:0", "--cache", &cache];
            spawn_worker(&nats.url(), env.path(&format!("sw{i}.log")), &args, &envs)
        })
        .collect();
    let lines = seed_shared_repos(&env, 3).await;
    let list = env.write_list("list.txt", &lines);
    let (bucket_and_query, _) = (cache.trim_start_matches("s3://"), ());
    let (bucket, query) = bucket_and_query.split_once('?').expect("query");
    let archive = format!("s3://{bucket}/archives-out/saved.zip?{query}");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_hangar-coord"))
            .args(args)
            .env("REGISTRY_AUTH_FILE", "/nonexistent/auth.json")
            .envs(envs.iter().copied())
            .output()
            .expect("hangar-coord")
    };
    let out = run(&[
        "save",
        "--tls-verify=false",
        "-f",
        list.to_str().unwrap(),
        "-d",
        &archive,
        "--nats",
        &nats.url(),
        "--cache",
        &cache,
        "-j",
        "3",
        "-o",
        env.path("sf.txt").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "save on the fleet: {}", text(&out));
    assert!(text(&out).contains("runs on the fleet"), "{}", text(&out));
    let assembled_by: Vec<usize> = (0..3)
        .filter(|i| {
            std::fs::read_to_string(env.path(&format!("sw{i}.log")))
                .unwrap_or_default()
                .contains("kind=\"assemble\"")
        })
        .collect();
    assert_eq!(assembled_by.len(), 1, "one worker wrote the archive");

    let ls = run(&["archive", "ls", "--image-only", &archive]);
    assert!(ls.status.success(), "{}", text(&ls));
    let mut listed: Vec<String> = String::from_utf8_lossy(&ls.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    listed.sort();
    let mut expected = lines.clone();
    expected.sort();
    assert_eq!(listed, expected);
    assert!(run(&["archive", "verify", &archive]).status.success());

    let out = run(&[
        "load",
        "--tls-verify=false",
        "-s",
        &archive,
        "-d",
        &env.dst.addr,
        "-j",
        "3",
        "-o",
        env.path("lf.txt").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "load from S3: {}", text(&out));
    for line in &lines {
        let dst = line.replace(&env.src.addr, &env.dst.addr);
        let src_raw = skopeo_raw(line).expect("source");
        let dst_raw = skopeo_raw(&dst).expect("loaded");
        assert!(index_digests(&dst_raw).contains(&sha(&src_raw)), "{dst}");
    }
}

/// `submit --sign-key NAME`: workers holding the key sign every image as it lands; the key,
/// its path and its passphrase never travel on the bus.
#[tokio::test(flavor = "multi_thread")]
async fn workers_sign_during_a_mirror_and_the_key_never_travels() {
    let env = Env::new();
    let nats = NatsProcess::start().expect("nats-server");
    let pass = env.path("pass.txt");
    std::fs::write(&pass, "fleet-key-passphrase\n").unwrap();
    let prefix = env.path("fleet-signing-key");
    let out = hangar(&[
        "generate-sigstore-key",
        "-p",
        prefix.to_str().unwrap(),
        "--passphrase-file",
        pass.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let key_path = format!("{}.key", prefix.display());
    let spy = async_nats::connect(nats.url()).await.unwrap();
    let mut seen = spy.subscribe(">").await.unwrap();
    let collected = tokio::spawn(async move {
        let mut all = Vec::new();
        while let Ok(Some(m)) =
            tokio::time::timeout(std::time::Duration::from_secs(8), seen.next()).await
        {
            all.push(format!(
                "{} {:?} {}",
                m.subject,
                m.headers,
                String::from_utf8_lossy(&m.payload)
            ));
        }
        all
    });
    let sign_arg = format!("release={key_path}");
    let workers: Vec<Worker> = (0..3)
        .map(|i| {
            spawn_worker(
                &nats.url(),
                env.path(&format!("signw{i}.log")),
                &[
                    "--listen",
                    "127.0.0.1:0",
                    "--sign-key",
                    &sign_arg,
                    "--sign-passphrase-file",
                    pass.to_str().unwrap(),
                ],
                &[],
            )
        })
        .collect();
    let lines = seed_shared_repos(&env, 4).await;
    let list = env.write_list("list.txt", &lines);
    let out = hangar(&[
        "submit",
        list.to_str().unwrap(),
        "--tls-verify=false",
        "-d",
        &env.dst.addr,
        "-j",
        "4",
        "--nats",
        &nats.url(),
        "--sign-key",
        "release",
        "-o",
        env.path("failed.txt").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let signers: usize = (0..3)
        .filter(|i| {
            std::fs::read_to_string(env.path(&format!("signw{i}.log")))
                .unwrap_or_default()
                .contains("kind=\"sign\"")
        })
        .count();
    assert!(signers >= 1, "workers ran sign tasks");
    let dst_lines: Vec<String> = lines
        .iter()
        .map(|l| l.replace(&env.src.addr, &env.dst.addr))
        .collect();
    let dst_list = env.write_list("dst.txt", &dst_lines);
    let v = hangar(&[
        "sign",
        "validate",
        "--tls-verify=false",
        "-f",
        dst_list.to_str().unwrap(),
        "-k",
        &format!("{}.pub", prefix.display()),
        "-r",
        env.path("report.json").to_str().unwrap(),
        "-o",
        env.path("vf.txt").to_str().unwrap(),
    ]);
    assert!(v.status.success(), "{}", text(&v));
    assert_eq!(text(&v).matches("PASS").count(), 4, "{}", text(&v));
    assert!(!text(&v).contains("No signature found"), "{}", text(&v));
    // The spy stops after 8 s of silence, which polling workers never leave.
    drop(workers);
    let messages = collected.await.unwrap();
    assert!(
        messages.iter().any(|m| m.contains("hangar.task.sign.")),
        "sign tasks went over the bus"
    );
    let key_pem = std::fs::read_to_string(&key_path).unwrap();
    let key_body = key_pem.lines().nth(1).unwrap().to_owned();
    for m in &messages {
        assert!(!m.contains(&key_path), "key path on the bus: {m}");
        assert!(
            !m.contains("fleet-signing-key"),
            "key file name on the bus: {m}"
        );
        assert!(
            !m.contains("fleet-key-passphrase"),
            "passphrase on the bus: {m}"
        );
        assert!(!m.contains(&key_body), "key material on the bus: {m}");
    }
}

/// `submit --scan-db`: workers read each copied image's inventory from the shared cache the
/// mirror just filled (no layer read twice, from anywhere), and the report lists findings.
#[tokio::test(flavor = "multi_thread")]
async fn workers_scan_during_a_mirror_reading_each_layer_once() {
    let env = Env::new();
    let nats = NatsProcess::start().expect("nats-server");
    let garage = hangar_loadtest::services::GarageProcess::start()
        .expect("garage (scripts/dev-services.sh installs it)");
    let cache = garage.cache_url();
    let aws = [
        ("AWS_ACCESS_KEY_ID", garage.key_id.clone()),
        ("AWS_SECRET_ACCESS_KEY", garage.secret.clone()),
    ];
    let envs: Vec<(&str, &str)> = aws.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let _workers: Vec<Worker> = (0..2)
        .map(|i| {
            let args = ["--listen", "127.0.0.1:0", "--cache", &cache];
            spawn_worker(&nats.url(), env.path(&format!("scw{i}.log")), &args, &envs)
        })
        .collect();
    let status: &[u8] = b"Package: libssl3\nStatus: install ok installed\nVersion: 3.0.11-1~deb12u2\nSource: openssl\n";
    for repo in ["scanfleet/a", "scanfleet/b"] {
        push_files_image(
            &env.src.addr,
            repo,
            vec![
                files_layer(&[("etc/os-release", b"ID=debian\nVERSION_ID=12\n")]),
                files_layer(&[
                    ("var/lib/dpkg/status", status),
                    ("etc/motd", repo.as_bytes()),
                ]),
            ],
        )
        .await;
    }
    let db = env.path("osv");
    std::fs::create_dir_all(&db).unwrap();
    let now = String::from_utf8(
        Command::new("date")
            .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    std::fs::write(
        db.join("r.json"),
        format!(
            r#"{{"id":"DEBIAN-CVE-2024-9","modified":"{}","affected":[{{"package":{{"ecosystem":"Debian:12","name":"openssl"}},"ranges":[{{"type":"ECOSYSTEM","events":[{{"introduced":"0"}},{{"fixed":"3.0.11-1~deb12u3"}}]}}]}}]}}"#,
            now.trim()
        ),
    )
    .unwrap();
    let list = env.write_list(
        "list.txt",
        &[
            format!("{}/scanfleet/a:1", env.src.addr),
            format!("{}/scanfleet/b:1", env.src.addr),
        ],
    );
    let report = env.path("scan.json");
    let out = Command::new(env!("CARGO_BIN_EXE_hangar-coord"))
        .args([
            "submit",
            list.to_str().unwrap(),
            "--tls-verify=false",
            "-d",
            &env.dst.addr,
            "--nats",
            &nats.url(),
            "--scan-db",
            db.to_str().unwrap(),
            "--scan-report",
            report.to_str().unwrap(),
            "-o",
            env.path("failed.txt").to_str().unwrap(),
        ])
        .env("REGISTRY_AUTH_FILE", "/nonexistent/auth.json")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let scanners = (0..2)
        .filter(|i| {
            std::fs::read_to_string(env.path(&format!("scw{i}.log")))
                .unwrap_or_default()
                .contains("kind=\"scan\"")
        })
        .count();
    assert!(scanners >= 1, "scan tasks ran on the workers");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let results = r["results"].as_array().unwrap();
    assert_eq!(results.len(), 2, "{r}");
    for res in results {
        let v = &res["images"][0]["vulnerabilities"][0];
        assert_eq!(v["id"], "DEBIAN-CVE-2024-9", "{r}");
        assert_eq!(v["fixed"], "3.0.11-1~deb12u3");
    }
    // Each source blob fetched once (by the mirror); the scan read nothing from any registry.
    for (digest, n) in blob_gets(&env.src.log()) {
        assert_eq!(n, 1, "{digest} fetched {n} times from the source");
    }
    assert!(
        blob_gets(&env.dst.log()).is_empty(),
        "the scan read no layer back from the destination"
    );

    // The database as an S3 object (a zip), read by `scan --db s3://…`.
    let zip = env.path("all.zip");
    let py = Command::new("python3")
        .args([
            "-c",
            "import sys,zipfile\nz=zipfile.ZipFile(sys.argv[1],'w',zipfile.ZIP_DEFLATED)\nz.write(sys.argv[2],'r.json')",
            zip.to_str().unwrap(),
            db.join("r.json").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(py.status.success());
    let (bucket_and_query, _) = (cache.trim_start_matches("s3://"), ());
    let (bucket, query) = bucket_and_query.split_once('?').unwrap();
    let location = format!("s3://{bucket}/osv/all.zip?{query}");
    let loadtest =
        PathBuf::from(env!("CARGO_BIN_EXE_hangar-coord")).with_file_name("hangar-loadtest");
    let put = Command::new(loadtest)
        .args(["put-object", &location, zip.to_str().unwrap()])
        .envs(envs.iter().copied())
        .output()
        .unwrap();
    assert!(put.status.success(), "{}", text(&put));
    let out = Command::new(env!("CARGO_BIN_EXE_hangar-coord"))
        .args([
            "scan",
            "--tls-verify=false",
            "-f",
            list.to_str().unwrap(),
            "--db",
            &location,
            "--format",
            "json",
            "-r",
            env.path("s3scan.json").to_str().unwrap(),
            "-o",
            env.path("sf.txt").to_str().unwrap(),
        ])
        .env("REGISTRY_AUTH_FILE", "/nonexistent/auth.json")
        .envs(envs.iter().copied())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("1 records"), "{}", text(&out));
    let r = std::fs::read_to_string(env.path("s3scan.json")).unwrap();
    assert_eq!(r.matches("\"id\": \"DEBIAN-CVE-2024-9\"").count(), 2, "{r}");
}

/// A real Prometheus scrapes the coordinator and two workers during a fleet job: the byte
/// and task counters rise, and `promtool check metrics` accepts both `/metrics` outputs.
#[tokio::test(flavor = "multi_thread")]
async fn prometheus_scrapes_the_fleet_during_a_job() {
    let env = Env::new();
    let nats = NatsProcess::start().expect("nats-server");
    let port = || hangar_loadtest::services::free_port().unwrap();
    let coord_listen = format!("127.0.0.1:{}", port());
    let _coord = start_coordinator(&nats.url(), &coord_listen, env.path("coord.log"));
    let authfile = env.path("auth.json");
    std::fs::write(&authfile, r#"{"auths":{}}"#).unwrap();
    let worker_listens: Vec<String> = (0..2).map(|_| format!("127.0.0.1:{}", port())).collect();
    let _workers: Vec<Worker> = worker_listens
        .iter()
        .enumerate()
        .map(|(i, l)| start_worker(&nats.url(), &authfile, env.path(&format!("pw{i}.log")), l))
        .collect();
    for l in &worker_listens {
        hangar_loadtest::services::wait_for_port(l, std::time::Duration::from_secs(20)).unwrap();
    }
    let prom_port = port();
    let targets: Vec<String> = worker_listens.iter().map(|l| format!("\"{l}\"")).collect();
    let config = env.path("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{scrape_interval: 1s}}\nscrape_configs:\n  - job_name: hangar-coordinator\n    static_configs: [{{targets: [\"{coord_listen}\"]}}]\n  - job_name: hangar-worker\n    static_configs: [{{targets: [{}]}}]\n",
            targets.join(", ")
        ),
    )
    .unwrap();
    let prom_log = std::fs::File::create(env.path("prometheus.log")).unwrap();
    let _prometheus = Worker(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                env.path("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(prom_log.try_clone().unwrap())
            .stderr(prom_log)
            .spawn()
            .expect("prometheus (scripts/dev-services.sh installs it)"),
    );
    hangar_loadtest::services::wait_for_port(
        &format!("127.0.0.1:{prom_port}"),
        std::time::Duration::from_secs(30),
    )
    .unwrap();
    let http = reqwest::Client::new();
    let query = |q: &'static str| {
        let http = http.clone();
        async move {
            let v: serde_json::Value = http
                .get(format!("http://127.0.0.1:{prom_port}/api/v1/query"))
                .query(&[("query", q)])
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["data"]["result"][0]["value"][1]
                .as_str()
                .and_then(|s| s.parse::<f64>().ok())
                .unwrap_or(0.0)
        }
    };
    // Before the job: the workers are scraped, nothing has moved.
    let mut up = 0.0;
    for _ in 0..60 {
        up = query("count(up == 1)").await;
        if up >= 3.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    assert_eq!(up, 3.0, "coordinator and two workers scraped");
    let before = query("sum(hangar_bytes_total)").await;
    assert_eq!(before, 0.0);

    let lines = seed_shared_repos(&env, 4).await;
    let list = env.write_list("list.txt", &lines);
    let out = hangar(&[
        "submit",
        list.to_str().unwrap(),
        "--server",
        &format!("http://{coord_listen}"),
        "-d",
        &env.dst.addr,
        "-o",
        env.path("failed.txt").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let (mut bytes, mut tasks, mut jobs) = (0.0, 0.0, 0.0);
    for _ in 0..60 {
        bytes = query("sum(hangar_bytes_total{direction=\"out\"})").await;
        tasks = query("sum(hangar_tasks_total{result=\"ok\"})").await;
        jobs = query("sum(hangar_jobs{state=\"succeeded\"})").await;
        // Each target is scraped on its own clock: the coordinator may report the job done
        // before the last worker scrape carries its final byte count, so wait for all three.
        if bytes > 4.0 * 30_000.0 && tasks >= 4.0 * 2.0 && jobs >= 1.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    assert!(bytes > 4.0 * 30_000.0, "bytes counted: {bytes}");
    assert!(tasks >= 4.0 * 2.0, "tasks counted: {tasks}");
    assert_eq!(jobs, 1.0, "the coordinator reports the finished job");

    for target in std::iter::once(&coord_listen).chain(worker_listens.iter()) {
        let text_body = http
            .get(format!("http://{target}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let mut child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text_body.as_bytes())
            .unwrap();
        let checked = child.wait_with_output().unwrap();
        assert!(
            checked.status.success(),
            "promtool check metrics on {target}: {}{}",
            String::from_utf8_lossy(&checked.stdout),
            String::from_utf8_lossy(&checked.stderr)
        );
    }
}

/// `serve --schedule`: a run every 2 seconds; while the first run cannot finish (no worker
/// yet) the next ones are skipped, not stacked; once a worker finishes it, runs resume.
#[tokio::test(flavor = "multi_thread")]
async fn scheduled_runs_start_and_skip_while_the_previous_is_busy() {
    let env = Env::new();
    let nats = NatsProcess::start().expect("nats-server");
    let lines = seed_shared_repos(&env, 2).await;
    let list = env.write_list("list.txt", &lines);
    let schedule = env.path("schedule.yaml");
    std::fs::write(
        &schedule,
        format!(
            "- name: every-two-seconds\n  cron: \"*/2 * * * * *\"\n  list: {}\n  destination: {{registry: \"{}\"}}\n",
            list.display(),
            env.dst.addr
        ),
    )
    .unwrap();
    let listen = format!(
        "127.0.0.1:{}",
        hangar_loadtest::services::free_port().unwrap()
    );
    let log = env.path("coord.log");
    let out = std::fs::File::create(&log).unwrap();
    let _coord = Coordinator(
        Command::new(env!("CARGO_BIN_EXE_hangar-coord"))
            .args([
                "serve",
                "--tls-verify=false",
                "--listen",
                &listen,
                "--nats",
                &nats.url(),
                "--schedule",
            ])
            .arg(&schedule)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap(),
    );
    hangar_loadtest::services::wait_for_port(&listen, std::time::Duration::from_secs(20)).unwrap();
    let http = reqwest::Client::new();
    let jobs = || {
        let http = http.clone();
        let url = format!("http://{listen}/jobs");
        async move {
            let v: Vec<serde_json::Value> =
                http.get(url).send().await.unwrap().json().await.unwrap();
            v
        }
    };
    tokio::time::sleep(std::time::Duration::from_secs(7)).await;
    let first = jobs().await;
    let coord_log = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(
        first.len(),
        1,
        "one run, the rest skipped: {first:?}\n{coord_log}"
    );
    assert_eq!(first[0]["state"], "running");
    assert!(
        coord_log
            .matches("Skipped scheduled run of \"every-two-seconds\"")
            .count()
            >= 2,
        "{coord_log}"
    );
    // A worker finishes the first run; the schedule starts the next one.
    let authfile = env.path("auth.json");
    std::fs::write(&authfile, r#"{"auths":{}}"#).unwrap();
    let _worker = start_worker(&nats.url(), &authfile, env.path("w.log"), "127.0.0.1:0");
    let mut all = Vec::new();
    for _ in 0..120 {
        all = jobs().await;
        if all.len() >= 2 && all.iter().any(|j| j["state"] == "succeeded") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert!(all.len() >= 2, "{all:?}");
    assert!(all.iter().any(|j| j["state"] == "succeeded"), "{all:?}");
    for line in &lines {
        assert!(skopeo_raw(&line.replace(&env.src.addr, &env.dst.addr)).is_some());
    }
}

/// Fleet-wide rate control: a destination that answers 429 to more than 15 requests a
/// second. Without a budget, two workers trip it; with `--rate-limit HOST=7` (for the
/// whole fleet, kept in NATS KV) they never exceed it and see no 429.
#[tokio::test(flavor = "multi_thread")]
async fn a_fleet_budget_keeps_the_workers_under_a_registrys_limit() {
    let env = Env::new();
    let nats = NatsProcess::start().expect("nats-server");
    let lines = seed_shared_repos(&env, 4).await;
    let list = env.write_list("list.txt", &lines);
    let authfile = env.path("auth.json");
    std::fs::write(&authfile, r#"{"auths":{}}"#).unwrap();
    let mut results = Vec::new();
    let (nats_url, failed) = (nats.url(), env.path("failed.txt").display().to_string());
    for budget in [None, Some(7u64)] {
        let dst = RegistryProcess::start().unwrap();
        let proxy = hangar_loadtest::proxy::start(
            "127.0.0.1:0",
            &dst.addr,
            hangar_loadtest::proxy::ProxyOptions {
                burst_limit: Some(15),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let rate = budget.map(|b| format!("{}={b}", proxy.addr));
        let workers: Vec<Worker> = (0..2)
            .map(|i| {
                let mut args = vec!["--listen", "127.0.0.1:0", "--blob-concurrency", "8"];
                if let Some(r) = &rate {
                    args.extend(["--rate-limit", r.as_str()]);
                }
                let authfile = authfile.to_str().unwrap().to_owned();
                let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
                all.extend(["--authfile".to_owned(), authfile]);
                let refs: Vec<&str> = all.iter().map(String::as_str).collect();
                spawn_worker(
                    &nats.url(),
                    env.path(&format!("rl{i}-{budget:?}.log")),
                    &refs,
                    &[],
                )
            })
            .collect();
        let mut submit = vec![
            "submit",
            list.to_str().unwrap(),
            "--tls-verify=false",
            "-d",
            &proxy.addr,
            "-j",
            "4",
            "--nats",
            nats_url.as_str(),
            "-o",
            failed.as_str(),
        ];
        // The coordinator's own requests (reading what the destination holds) count too.
        if let Some(r) = &rate {
            submit.extend(["--rate-limit", r.as_str()]);
        }
        let out = hangar(&submit);
        drop(workers);
        let throttled = proxy.throttled.load(std::sync::atomic::Ordering::Relaxed);
        let peak = proxy.peak.load(std::sync::atomic::Ordering::Relaxed);
        results.push((budget, out.status.success(), throttled, peak, text(&out)));
    }
    let (_, _, unlimited_429s, unlimited_peak, _) = &results[0];
    let (_, ok, limited_429s, limited_peak, log) = &results[1];
    assert!(*ok, "the budgeted job completes: {log}");
    assert!(
        *unlimited_429s > 0,
        "without a budget the burst limit is hit (peak {unlimited_peak}/s)"
    );
    assert_eq!(
        *limited_429s, 0,
        "with the budget: no 429 (peak {limited_peak}/s)"
    );
    // Two fixed one-second windows may overlap one of the proxy's: at most twice the budget.
    assert!(
        *limited_peak <= 14,
        "peak {limited_peak} requests in a second"
    );
    eprintln!(
        "rate control: without budget {unlimited_429s} 429s (peak {unlimited_peak}/s); with 7/s {limited_429s} 429s (peak {limited_peak}/s)"
    );
}

/// `--max-in-flight` caps the requests in flight to a registry for the whole fleet, bodies
/// included: two workers with eight blob slots each stay within three at the registry's
/// door (counted there, by a proxy that follows every exchange to its last byte), where
/// without the cap they go well past it; and every request shows in the workers' per-registry
/// metrics.
#[tokio::test(flavor = "multi_thread")]
async fn a_fleet_in_flight_cap_holds_across_workers() {
    let env = Env::new();
    let nats = NatsProcess::start().expect("nats-server");
    let lines = seed_shared_repos(&env, 4).await;
    let list = env.write_list("list.txt", &lines);
    let authfile = env.path("auth.json");
    std::fs::write(&authfile, r#"{"auths":{}}"#).unwrap();
    let mut peaks = Vec::new();
    for cap in [None, Some(3u64)] {
        let dst = RegistryProcess::start().unwrap();
        let proxy = hangar_loadtest::proxy::start(
            "127.0.0.1:0",
            &dst.addr,
            hangar_loadtest::proxy::ProxyOptions {
                // Slow answers, so requests overlap.
                delay: std::time::Duration::from_millis(30),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let listens: Vec<String> = (0..2)
            .map(|_| {
                format!(
                    "127.0.0.1:{}",
                    hangar_loadtest::services::free_port().unwrap()
                )
            })
            .collect();
        let workers: Vec<Worker> = listens
            .iter()
            .enumerate()
            .map(|(i, listen)| {
                let mut args: Vec<String> = ["--blob-concurrency", "8", "--listen", listen]
                    .iter()
                    .map(|s| s.to_string())
                    .collect();
                if let Some(n) = cap {
                    args.extend(["--max-in-flight".into(), format!("{}={n}", proxy.addr)]);
                }
                args.extend(["--authfile".into(), authfile.to_str().unwrap().to_owned()]);
                let refs: Vec<&str> = args.iter().map(String::as_str).collect();
                spawn_worker(
                    &nats.url(),
                    env.path(&format!("cap{i}-{cap:?}.log")),
                    &refs,
                    &[],
                )
            })
            .collect();
        let out = hangar(&[
            "submit",
            list.to_str().unwrap(),
            "--tls-verify=false",
            "-d",
            &proxy.addr,
            "-j",
            "4",
            "--nats",
            &nats.url(),
            "-o",
            env.path("failed.txt").to_str().unwrap(),
        ]);
        assert!(out.status.success(), "cap {cap:?}: {}", text(&out));
        for line in &lines {
            let copied = line.replace(&env.src.addr, &dst.addr);
            assert!(skopeo_raw(&copied).is_some(), "{copied} copied");
        }
        let mut requests = 0.0;
        for listen in &listens {
            let page = reqwest::get(format!("http://{listen}/metrics"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            let label = format!("registry=\"{}\"", proxy.addr);
            requests += page
                .lines()
                .filter(|l| l.starts_with("hangar_registry_requests_total") && l.contains(&label))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>();
            assert!(
                page.contains("hangar_registry_request_seconds_bucket"),
                "{page}"
            );
        }
        assert!(requests > 0.0, "per-registry requests counted");
        drop(workers);
        peaks.push(
            proxy
                .in_flight_peak
                .load(std::sync::atomic::Ordering::SeqCst),
        );
    }
    eprintln!(
        "in flight at the registry: uncapped {}, capped at 3: {}",
        peaks[0], peaks[1]
    );
    assert!(
        peaks[0] > 3,
        "uncapped, the workers overlap more: {peaks:?}"
    );
    assert!(peaks[1] <= 3, "the cap holds: {peaks:?}");
}

/// A destination that starts answering slowly part-way through a fleet job makes a worker
/// hold the whole fleet back from it (counted in `hangar_registry_holds_total{reason="slow"}`),
/// and the job still completes.
#[tokio::test(flavor = "multi_thread")]
async fn a_registry_slowing_down_holds_the_fleet_back() {
    let env = Env::new();
    let nats = NatsProcess::start().expect("nats-server");
    let lines = seed_shared_repos(&env, 6).await;
    let list = env.write_list("list.txt", &lines);
    let authfile = env.path("auth.json");
    std::fs::write(&authfile, r#"{"auths":{}}"#).unwrap();
    let proxy = hangar_loadtest::proxy::start(
        "127.0.0.1:0",
        &env.dst.addr,
        hangar_loadtest::proxy::ProxyOptions {
            slow_from: Some((20, std::time::Duration::from_millis(600))),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let listen = format!(
        "127.0.0.1:{}",
        hangar_loadtest::services::free_port().unwrap()
    );
    let _worker = start_worker(&nats.url(), &authfile, env.path("slow.log"), &listen);
    hangar_loadtest::services::wait_for_port(&listen, std::time::Duration::from_secs(20)).unwrap();
    let out = hangar(&[
        "submit",
        list.to_str().unwrap(),
        "--tls-verify=false",
        "-d",
        &proxy.addr,
        "--nats",
        &nats.url(),
        "-o",
        env.path("failed.txt").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let page = reqwest::get(format!("http://{listen}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let holds: f64 = page
        .lines()
        .filter(|l| {
            l.starts_with("hangar_registry_holds_total")
                && l.contains("reason=\"slow\"")
                && l.contains(&proxy.addr)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(holds >= 1.0, "no slow-down hold: {page}");
    let log = std::fs::read_to_string(env.path("slow.log")).unwrap();
    assert!(log.contains("answers slowing down"), "{log}");
}

/// A blob lease outlives its bucket's max age while its holder is alive (it is renewed),
/// keeps other workers out until it is given back, and a dead holder's lease expires.
#[tokio::test(flavor = "multi_thread")]
async fn a_blob_lease_is_renewed_while_held_and_expires_when_its_holder_dies() {
    use hangar_shared::lease::BlobLeases;
    let nats = NatsProcess::start().expect("nats-server");
    let client = async_nats::connect(nats.url()).await.unwrap();
    let ttl = std::time::Duration::from_secs(2);
    // A bucket left by an older fleet, whose leases lived ten minutes, is brought to the
    // new max age: a lease lives as long as its last renewal, not the bucket's history.
    async_nats::jetstream::new(client.clone())
        .create_key_value(async_nats::jetstream::kv::Config {
            bucket: hangar_shared::lease::LEASE_BUCKET.into(),
            history: 1,
            max_age: std::time::Duration::from_secs(600),
            ..Default::default()
        })
        .await
        .unwrap();
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

/// One exported span, as an OTLP receiver sees it.
#[derive(Debug, Clone)]
struct SeenSpan {
    service: String,
    instance: String,
    trace: Vec<u8>,
    id: Vec<u8>,
    parent: Vec<u8>,
    name: String,
}

/// A minimal OTLP/HTTP receiver: `POST /v1/traces` with a protobuf body, every span kept.
async fn otlp_receiver() -> (String, std::sync::Arc<std::sync::Mutex<Vec<SeenSpan>>>) {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = seen.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let sink = sink.clone();
            async move {
                let request = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                let mut seen = sink.lock().unwrap();
                for resource in request.resource_spans {
                    let attr = |key: &str| {
                        resource
                            .resource
                            .iter()
                            .flat_map(|r| r.attributes.iter())
                            .find(|kv| kv.key == key)
                            .and_then(|kv| kv.value.as_ref())
                            .map(|v| format!("{:?}", v.value))
                            .unwrap_or_default()
                    };
                    let (service, instance) = (attr("service.name"), attr("service.instance.id"));
                    for span in resource.scope_spans.into_iter().flat_map(|s| s.spans) {
                        seen.push(SeenSpan {
                            service: service.clone(),
                            instance: instance.clone(),
                            trace: span.trace_id,
                            id: span.span_id,
                            parent: span.parent_span_id,
                            name: span.name,
                        });
                    }
                }
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), seen)
}

/// A job submitted with tracing on is one trace: the submit command's span is its root, the
/// coordinator's job span hangs under it, and every task span from both workers hangs under
/// the job span, its context having crossed NATS in the message headers.
#[tokio::test(flavor = "multi_thread")]
async fn a_job_is_one_trace_across_the_coordinator_and_two_workers() {
    let env = Env::new();
    let nats = NatsProcess::start().expect("nats-server");
    let (endpoint, seen) = otlp_receiver().await;
    let otel = |instance: &str| {
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(), endpoint.clone()),
            ("OTEL_BSP_SCHEDULE_DELAY".to_owned(), "200".to_owned()),
            (
                "OTEL_RESOURCE_ATTRIBUTES".to_owned(),
                format!("service.instance.id={instance}"),
            ),
        ]
    };
    let port = || hangar_loadtest::services::free_port().unwrap();
    let listen = format!("127.0.0.1:{}", port());
    let coord_env = otel("coord");
    let coord_env: Vec<(&str, &str)> = coord_env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let _coord = spawn_coordinator(&nats.url(), &listen, env.path("coord.log"), &coord_env);
    let worker_listens: Vec<String> = (0..2).map(|_| format!("127.0.0.1:{}", port())).collect();
    let _workers: Vec<Worker> = worker_listens
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let e = otel(&format!("w{i}"));
            let e: Vec<(&str, &str)> = e.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            // One blob at a time each, so both workers take part.
            spawn_worker(
                &nats.url(),
                env.path(&format!("w{i}.log")),
                &["--blob-concurrency", "1", "--listen", l],
                &e,
            )
        })
        .collect();
    for l in &worker_listens {
        // Ready means consuming: a worker that joined late might find the queue drained.
        let mut ready = false;
        for _ in 0..200 {
            if let Ok(r) = reqwest::get(format!("http://{l}/readyz")).await {
                ready = r.status().is_success();
            }
            if ready {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert!(ready, "worker on {l} ready");
    }
    let lines = seed_shared_repos(&env, 4).await;
    let list = env.write_list("list.txt", &lines);
    let out = Command::new(env!("CARGO_BIN_EXE_hangar-coord"))
        .args(["submit", list.to_str().unwrap(), "--server"])
        .arg(format!("http://{listen}"))
        .args(["-d", &env.dst.addr, "-o"])
        .arg(env.path("failed.txt"))
        .env("REGISTRY_AUTH_FILE", "/nonexistent/hangar-test-auth.json")
        .envs(otel("submit"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));

    let named = |spans: &[SeenSpan], name: &str| -> Vec<SeenSpan> {
        spans.iter().filter(|s| s.name == name).cloned().collect()
    };
    let mut spans = Vec::new();
    for _ in 0..100 {
        spans = seen.lock().unwrap().clone();
        let jobs = spans.iter().filter(|s| s.name.starts_with("job ")).count();
        let workers: std::collections::HashSet<&str> = spans
            .iter()
            .filter(|s| s.name.ends_with(" task"))
            .map(|s| s.instance.as_str())
            .collect();
        if jobs == 1 && workers.len() == 2 && !named(&spans, "hangar-coord submit").is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let roots = named(&spans, "hangar-coord submit");
    assert_eq!(roots.len(), 1, "{spans:#?}");
    let root = &roots[0];
    assert!(root.parent.is_empty(), "submit starts the trace");
    assert!(root.instance.contains("submit"));
    let served: Vec<&SeenSpan> = spans
        .iter()
        .filter(|s| s.name.starts_with("serve job "))
        .collect();
    assert_eq!(served.len(), 1, "{spans:#?}");
    assert_eq!(
        (&served[0].trace, &served[0].parent),
        (&root.trace, &root.id)
    );
    assert!(served[0].service.contains("hangar-coord") && served[0].instance.contains("coord"));
    let job: Vec<&SeenSpan> = spans
        .iter()
        .filter(|s| s.name.starts_with("job "))
        .collect();
    assert_eq!(job.len(), 1, "{spans:#?}");
    assert_eq!(
        (&job[0].trace, &job[0].parent),
        (&root.trace, &served[0].id)
    );
    let tasks: Vec<&SeenSpan> = spans.iter().filter(|s| s.name.ends_with(" task")).collect();
    // Four images: blobs, manifests and indexes, each a task.
    assert!(tasks.len() >= 4 * 3, "{tasks:#?}");
    for task in &tasks {
        assert_eq!(&task.trace, &root.trace, "{task:?} is in the job's trace");
        assert_eq!(
            &task.parent, &job[0].id,
            "{task:?} is a child of the job span"
        );
        assert!(task.service.contains("hangar-worker"), "{task:?}");
    }
    let instances: std::collections::HashSet<&str> =
        tasks.iter().map(|t| t.instance.as_str()).collect();
    assert_eq!(
        instances.len(),
        2,
        "both workers traced tasks: {instances:?}"
    );
    for kind in ["blob task", "manifest task", "index task"] {
        assert!(tasks.iter().any(|t| t.name == kind), "no {kind} span");
    }
}
