//! Faults on the fleet: a worker killed -9 mid-blob, nats-server and the coordinator
//! restarted mid-run, a task no worker answers, a worker stopped by SIGTERM; nothing is lost.

mod common;

use std::process::{Command, Stdio};

use common::fleet::{
    Killed as Worker, assert_all_copied, job_state, nats_client, slow_source, slow_source_of,
    spawn_worker, start_coordinator, start_fast_failover_worker, submit_child,
};
use common::*;
use hangar_loadtest::services::NatsProcess;

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
async fn a_task_no_worker_answers_is_reported_failed_after_max_deliveries() {
    use hangar_shared::queue::TaskQueue;
    use hangar_shared::queue::jetstream::{self, JetStreamQueue};
    use hangar_shared::task::{EventKind, TaskKind};

    let nats = NatsProcess::start().expect("nats-server");
    let client = nats_client(&nats).await;
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

/// Sends SIGTERM to `worker` and waits, `patience` at most, for its clean exit.
fn sigterm_and_wait(worker: &mut Worker, patience: std::time::Duration) {
    let sent = std::time::Instant::now();
    let term = Command::new("kill")
        .args(["-TERM", &worker.0.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let status = loop {
        if let Some(s) = worker.0.try_wait().unwrap() {
            break s;
        }
        assert!(sent.elapsed() < patience, "the worker did not stop in time");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(status.success(), "a clean exit after SIGTERM");
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
    sigterm_and_wait(&mut leaving, std::time::Duration::from_secs(10));
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

/// A worker whose grace ends with blob tasks still in hand hands them back: the other
/// worker takes them at once, where before they waited out their lease (`ack_wait`,
/// 60 s here).
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_stopped_past_its_grace_hands_its_tasks_back_at_once() {
    let env = Env::new();
    let nats = NatsProcess::start().expect("nats-server");
    // Twelve-megabyte blobs at 3 MB/s a connection: the leaving worker's are seconds from
    // done when its one-second grace ends, however loaded the machine.
    let (lines, _proxy) = slow_source_of(&env, 4, 12_000_000).await;
    let list = env.write_list("list.txt", &lines);
    // The first worker makes the consumers, with the default 60 s lease.
    let worker = |log: &str| {
        spawn_worker(
            &nats.url(),
            env.path(log),
            &[
                "--blob-concurrency",
                "2",
                "--listen",
                "127.0.0.1:0",
                "--grace",
                "1s",
            ],
            &[],
        )
    };
    let mut leaving = worker("leaving.log");
    let submit = submit_child(&env, &list, &nats.url());
    // A blob task in the leaving worker's hands for half a second is a layer (seconds from
    // done), not a config, which may be done before the grace begins: nothing handed back.
    let in_hand = || {
        let log = std::fs::read_to_string(env.path("leaving.log")).unwrap_or_default();
        let count = |what: &str| {
            log.lines()
                .filter(|l| l.contains(what) && l.contains("kind=\"blob\""))
                .count()
        };
        count("task started") > count("task finished")
    };
    let started = std::time::Instant::now();
    loop {
        if in_hand() {
            std::thread::sleep(std::time::Duration::from_millis(500));
            if in_hand() {
                break;
            }
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "the leaving worker never held a layer's blob task"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _staying = worker("staying.log");
    let sent = std::time::Instant::now();
    sigterm_and_wait(&mut leaving, std::time::Duration::from_secs(30));
    let log = std::fs::read_to_string(env.path("leaving.log")).unwrap();
    assert!(log.contains("grace period over"), "{log}");
    assert!(log.contains("stopping: task handed back"), "{log}");
    let out = submit.wait_with_output().unwrap();
    let took = sent.elapsed();
    assert!(out.status.success(), "{}", text(&out));
    assert_all_copied(&env, 4);
    let staying = std::fs::read_to_string(env.path("staying.log")).unwrap_or_default();
    assert!(
        staying.contains("attempt=2"),
        "the handed-back tasks went to the staying worker:\n{staying}"
    );
    eprintln!("the run ended {took:?} after SIGTERM");
    assert!(
        took < std::time::Duration::from_secs(45),
        "the run waited out the leases of the handed-back tasks: {took:?}\nleaving:\n{log}\nstaying:\n{staying}"
    );
}

/// Ctrl-C on a fleet run nobody is serving (no worker takes sign tasks): the run stops,
/// says so, and purges its queued tasks instead of leaving them for a worker that comes
/// later.
#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_fleet_run_leaves_no_task_queued() {
    let env = Env::new();
    let nats = NatsProcess::start().expect("nats-server");
    let lines = seed_shared_repos(&env, 2).await;
    let list = env.write_list("list.txt", &lines);
    let log = env.path("sign.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_hangar-coord"))
        .args([
            "sign",
            "--tls-verify=false",
            "-p",
            "release",
            "--nats",
            &nats.url(),
        ])
        .arg("-f")
        .arg(&list)
        .arg("-o")
        .arg(env.path("failed.txt"))
        .env("REGISTRY_AUTH_FILE", "/nonexistent/auth.json")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(env.path("sign.err")).unwrap())
        .spawn()
        .expect("hangar-coord sign");
    let queued = || queued_tasks(&nats);
    // Each image's index and platform digest: queued, with nobody to take them.
    let started = std::time::Instant::now();
    while queued().await < 2 {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "no task queued: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    let out = std::fs::read_to_string(&log).unwrap_or_default()
        + &std::fs::read_to_string(env.path("sign.err")).unwrap_or_default();
    assert!(!status.success(), "{out}");
    assert!(out.contains("interrupted"), "{out}");
    assert_eq!(queued().await, 0, "the run's tasks were purged: {out}");
}

/// Tasks in the task stream, and the names of its consumers, from the server's monitor.
async fn task_stream(nats: &NatsProcess) -> (u64, Vec<String>) {
    let url = format!("{}/jsz?streams=true&consumers=true", nats.monitor_url());
    let jsz: serde_json::Value = reqwest::get(url).await.unwrap().json().await.unwrap();
    let stream = jsz["account_details"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|a| a["stream_detail"].as_array().cloned().unwrap_or_default())
        .find(|s| s["name"] == "HANGAR_TASKS");
    let Some(stream) = stream else {
        return (0, Vec::new());
    };
    let consumers = stream["consumer_detail"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(str::to_owned))
        .collect();
    (stream["state"]["messages"].as_u64().unwrap_or(0), consumers)
}

async fn queued_tasks(nats: &NatsProcess) -> u64 {
    task_stream(nats).await.0
}

/// A kind of task no live worker takes: the worker that took check tasks is gone (its
/// durable consumer stays) and the one left was started with `--check-concurrency 0`. The
/// run does not wait forever: it fails once no worker has pulled its checks for its
/// patience (`--unserved-timeout`, 5 s here; 30 s by default), says which flag makes a
/// worker take them, and purges its tasks.
#[tokio::test(flavor = "multi_thread")]
async fn a_kind_no_live_worker_takes_fails_the_run_and_names_the_flag() {
    let env = Env::new();
    let nats = NatsProcess::start().expect("nats-server");
    let lines = seed_shared_repos(&env, 2).await;
    let list = env.write_list("list.txt", &lines);
    let taker = common::fleet::worker(&nats.url(), &env.path("taker.log"), &[], &[]);
    let started = std::time::Instant::now();
    while !task_stream(&nats)
        .await
        .1
        .iter()
        .any(|c| c == "hangar-check")
    {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "the first worker never made its check consumer"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    drop(taker);
    let _copier = common::fleet::worker(
        &nats.url(),
        &env.path("copier.log"),
        &["--check-concurrency", "0"],
        &[],
    );
    let started = std::time::Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_hangar-coord"))
        .args([
            "mirror",
            "validate",
            "--tls-verify=false",
            "-d",
            &env.dst.addr,
        ])
        .arg("-f")
        .arg(&list)
        .args(["--nats", &nats.url(), "--unserved-timeout", "5s", "-o"])
        .arg(env.path("failed.txt"))
        .env("REGISTRY_AUTH_FILE", "/nonexistent/auth.json")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("hangar-coord mirror validate");
    // Without the watch the run would wait for ever: it is stopped, and the test fails.
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > std::time::Duration::from_secs(120) {
            let _ = child.kill();
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let took = started.elapsed();
    let out = child.wait_with_output().unwrap();
    let text = text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("no worker took this job's check tasks for 5s")
            && text.contains("--check-concurrency above 0"),
        "{text}"
    );
    assert!(
        took < std::time::Duration::from_secs(120),
        "gave up after {took:?}"
    );
    let failed = std::fs::read_to_string(env.path("failed.txt")).unwrap_or_default();
    for line in &lines {
        assert!(
            failed.contains(line.as_str()),
            "{line} not in the failed list: {failed}"
        );
    }
    assert_eq!(
        queued_tasks(&nats).await,
        0,
        "the run's tasks were purged: {text}"
    );
}

/// On the bus, quick blob tasks (a mount here) have a lane and slots of their own: a
/// worker whose only copy slot is held by a copy still takes a mount published after it,
/// which in one lane would wait for that copy's end.
#[tokio::test(flavor = "multi_thread")]
async fn a_mount_is_taken_while_a_copy_holds_the_only_copy_slot() {
    use hangar_shared::queue::TaskQueue;
    use hangar_shared::queue::jetstream::{self, JetStreamQueue};
    use hangar_shared::task::{Task, TaskKind};

    let nats = NatsProcess::start().expect("nats-server");
    let client = nats_client(&nats).await;
    let worker =
        JetStreamQueue::consumer(client.clone(), &[(TaskKind::Blob, 1)], jetstream::ACK_WAIT)
            .await
            .unwrap();
    let publisher = JetStreamQueue::publisher(client.clone()).await.unwrap();
    let copy = hangar_loadtest::queue_bench::sample_task("lanes.r1", 1);
    let mut mount = hangar_loadtest::queue_bench::sample_task("lanes.r1", 2);
    if let Task::Blob(b) = &mut mount.task {
        b.mount_from = vec![hangar_shared::store::RepoRef::registry(
            "dst.example",
            "bench/other",
        )];
    }
    publisher.publish(copy).await.unwrap();
    let held = tokio::time::timeout(std::time::Duration::from_secs(30), worker.next())
        .await
        .expect("the copy is delivered")
        .expect("a delivery");
    assert_eq!(held.task.id, 1);
    publisher.publish(mount).await.unwrap();
    // The copy is held (not acked): its slot stays taken.
    let quick = tokio::time::timeout(std::time::Duration::from_secs(30), worker.next())
        .await
        .expect("the mount is delivered while the copy holds its slot")
        .expect("a delivery");
    assert_eq!(quick.task.id, 2);
    assert!(quick.task.task.is_quick());
    drop(held);
}

/// A destination that declines every mount (each is opened as a plain upload, as registries
/// that do not mount across repositories do) still receives every image from a worker with
/// one copy slot: each declined mount, taken in the quick lane, becomes a copy (which waits
/// for that slot), and the uploads the declines opened are ended.
#[tokio::test(flavor = "multi_thread")]
async fn declined_mounts_become_copies_on_the_fleet() {
    use hangar_loadtest::proxy::{self, ProxyOptions};
    let env = Env::new();
    let lines = seed_shared_repos(&env, 3).await;
    let dest = proxy::start(
        "127.0.0.1:0",
        &env.dst.addr,
        ProxyOptions {
            decline_mounts: true,
            ..Default::default()
        },
    )
    .await
    .expect("proxy");
    let nats = NatsProcess::start().expect("nats-server");
    let _worker = common::fleet::worker(
        &nats.url(),
        &env.path("worker.log"),
        &["--blob-concurrency", "1"],
        &[],
    );
    let list = env.write_list("declined.txt", &lines);
    let out = hangar(&[
        "submit",
        list.to_str().expect("utf-8"),
        "--tls-verify=false",
        "--nats",
        &nats.url(),
        "-d",
        &dest.addr,
        "-o",
        env.path("failed.txt").to_str().expect("utf-8"),
    ]);
    let log = std::fs::read_to_string(env.path("worker.log")).unwrap_or_default();
    assert!(out.status.success(), "{}\n{log}", text(&out));
    for i in 0..3 {
        let src = skopeo_raw(&format!("{}/shared/app-{i}:v1", env.src.addr)).expect("source");
        let dst = skopeo_raw(&format!("{}/shared/app-{i}:v1", env.dst.addr)).expect("copied");
        assert_eq!(index_digests(&dst), vec![sha(&src)], "shared/app-{i}");
    }
    // The shared base layers' mounts into the other repositories were among the declined.
    let cross = &dest.injected.declined_cross_repo;
    assert!(
        cross.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "no mount from another repository was declined: {}",
        dest.injected
    );
    // An ended upload keeps only its hash state's small file in distribution's storage.
    let repositories = env
        .dst
        .storage()
        .join("data/docker/registry/v2/repositories");
    assert!(
        repositories.join("shared").is_dir(),
        "{}",
        repositories.display()
    );
    let open: Vec<_> = walk(&repositories)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("/_uploads/") && p.ends_with("startedat"))
        .collect();
    assert!(open.is_empty(), "uploads left open: {open:?}");
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        match p.is_dir() {
            true => out.extend(walk(&p)),
            false => out.push(p),
        }
    }
    out
}
