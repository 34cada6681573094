//! Jobs end promptly under the faults a cluster has: the coordinator killed and restarted
//! under a client that follows its job, with real nats-server, registries and workers.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::fleet::{self, Proc};
use common::{Env, index_digests, sha, skopeo_raw};
use hangar_loadtest::proxy::{self, ProxyOptions};
use hangar_loadtest::services::{NatsProcess, free_port};

/// `n` images with layers of their own behind a proxy that caps each connection's
/// bandwidth, so a job lasts long enough to be interrupted. Lines name the proxy.
async fn slow_source(env: &Env, n: u64, layer: u64) -> (Vec<String>, proxy::Proxy) {
    let src = common::registry(&env.src.addr).await;
    for i in 0..n {
        common::push_image(
            &src,
            env.dir.path(),
            &format!("chaos/app-{i}"),
            Some("v1"),
            hangar_loadtest::seed::Format::Oci,
            "amd64",
            (&[5000 + i], layer),
        )
        .await;
    }
    let proxy = proxy::start(
        "127.0.0.1:0",
        &env.src.addr,
        ProxyOptions {
            rate_limit: Some(400_000),
            ..Default::default()
        },
    )
    .await
    .expect("proxy");
    let lines = (0..n)
        .map(|i| format!("{}/chaos/app-{i}:v1", proxy.addr))
        .collect();
    (lines, proxy)
}

fn digests_match(env: &Env, lines: &[String], proxy: &str) {
    for line in lines {
        let source = skopeo_raw(&line.replace(proxy, &env.src.addr)).expect("source");
        let copied = skopeo_raw(&line.replace(proxy, &env.dst.addr)).expect("copied");
        assert_eq!(index_digests(&copied), vec![sha(&source)], "{line}");
    }
}

async fn job_ids(base: &str) -> Vec<String> {
    let Ok(resp) = reqwest::get(format!("{base}/jobs")).await else {
        return Vec::new();
    };
    let jobs: serde_json::Value = resp.json().await.unwrap_or_default();
    jobs.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|j| j["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn submit_and_status_watch_outlive_a_coordinator_restart() {
    let env = Env::new();
    let nats = NatsProcess::start().expect("nats-server");
    let (lines, proxy) = slow_source(&env, 4, 1_500_000).await;
    // A list longer than one NATS message (comments here): the coordinator keeps it in
    // parts, and the restarted one resumes the job from them.
    let mut padded = lines.clone();
    padded.extend((0..12_000).map(|i| format!("# {i:05} {}", "x".repeat(100))));
    let list = env.write_list("list.txt", &padded);
    assert!(std::fs::metadata(&list).unwrap().len() > 1 << 20);
    let listen = format!("127.0.0.1:{}", free_port().unwrap());
    let base = format!("http://{listen}");
    let mut coord = fleet::serve(&nats.url(), &listen, &env.path("coord.log"), &[], &[]);
    let _workers: Vec<Proc> = (0..2)
        .map(|i| {
            fleet::worker(
                &nats.url(),
                &env.path(&format!("w{i}.log")),
                &["--ack-wait", "5s"],
                &[],
            )
        })
        .collect();
    let client = |args: &[&str], log: &str| {
        Command::new(env!("CARGO_BIN_EXE_hangar-coord"))
            .args(args)
            .env("REGISTRY_AUTH_FILE", "/nonexistent/auth.json")
            .stdout(std::fs::File::create(env.path(log)).unwrap())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("client")
    };
    let mut submit = client(
        &[
            "submit",
            list.to_str().unwrap(),
            "--server",
            &base,
            "-d",
            &env.dst.addr,
            "--tls-verify=false",
            "-j",
            "2",
            "-o",
            env.path("failed.txt").to_str().unwrap(),
        ],
        "submit.log",
    );
    let mut id = None;
    for _ in 0..100 {
        if let Some(first) = job_ids(&base).await.into_iter().next() {
            id = Some(first);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let id = id.expect("the job appears");
    let mut watch = client(
        &["status", &id, "--watch", "--json", "--server", &base],
        "watch.log",
    );
    // Mid-job the snapshot shows who runs what.
    let mut in_flight = Vec::new();
    for _ in 0..20 {
        let snap: serde_json::Value = reqwest::get(format!("{base}/jobs/{id}"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        in_flight = snap["in_flight"].as_array().cloned().unwrap_or_default();
        if !in_flight.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        in_flight.iter().any(
            |t| t["what"].as_str().is_some_and(|w| w.starts_with("blob "))
                && t["worker"]
                    .as_str()
                    .is_some_and(|w| w.starts_with("worker-"))
        ),
        "{in_flight:?}"
    );
    // Then the coordinator dies without warning and comes back two seconds later.
    tokio::time::sleep(Duration::from_secs(1)).await;
    coord.restart(Duration::from_secs(2));
    let last_fault = Instant::now();
    let wait = |child: &mut std::process::Child| loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            last_fault.elapsed() < Duration::from_secs(120),
            "the client still runs two minutes after the last fault"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let submitted = wait(&mut submit);
    let watched = wait(&mut watch);
    let logs = std::fs::read_to_string(env.path("submit.log")).unwrap_or_default();
    let coord_log = std::fs::read_to_string(env.path("coord.log")).unwrap_or_default();
    assert!(submitted.success(), "{logs}\n{coord_log}");
    assert!(
        coord_log.contains(&format!("Resuming job {id}")),
        "{coord_log}"
    );
    assert!(
        logs.contains("retrying") || logs.contains("answers again"),
        "{logs}"
    );
    assert!(watched.success());
    let watch_log = std::fs::read_to_string(env.path("watch.log")).unwrap_or_default();
    assert!(
        watch_log.contains("\"state\": \"succeeded\""),
        "{watch_log}"
    );
    digests_match(&env, &lines, &proxy.addr);
}

/// A task whose deliveries all ran out while the publisher was not listening (NATS
/// restarting, the publisher reconnecting) still ends: the advisory waits in its stream and
/// is read when the publisher is back.
#[tokio::test(flavor = "multi_thread")]
async fn a_task_whose_deliveries_ran_out_unheard_still_ends() {
    use async_nats::jetstream::{self, consumer::pull};
    use futures_util::StreamExt;
    use hangar_shared::queue::TaskQueue;
    use hangar_shared::queue::jetstream::{
        JetStreamQueue, MAX_DELIVER, TASK_STREAM, follow_events,
    };
    use hangar_shared::task::{AssembleTask, EventKind, Task, TaskEnvelope};

    let nats = NatsProcess::start().expect("nats-server");
    let client = async_nats::connect(nats.url()).await.unwrap();
    // Not reading advisories for the first 15 s: the deliveries run out meanwhile.
    let publisher =
        JetStreamQueue::publisher_reading_advisories_after(client.clone(), Duration::from_secs(15))
            .await
            .unwrap();
    // A "worker" that takes the task and dies with it, each time.
    let js = jetstream::new(client.clone());
    let stream = js.get_stream(TASK_STREAM).await.unwrap();
    let consumer: jetstream::consumer::PullConsumer = stream
        .get_or_create_consumer(
            "hangar-assemble",
            pull::Config {
                durable_name: Some("hangar-assemble".into()),
                filter_subject: "hangar.task.assemble.>".into(),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(1),
                max_deliver: MAX_DELIVER as i64,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut events = follow_events(client.clone(), "job-x").await.unwrap();
    publisher
        .publish(TaskEnvelope {
            job: "job-x".into(),
            id: 7,
            nonce: 7,
            key: "assemble/x".into(),
            trace: None,
            task: Task::Assemble(AssembleTask {
                output: "/nowhere/x.zip".into(),
                base: None,
                images: "archives/x.json".into(),
                images_digest: hangar_shared::digest::Digest::of(b"[]"),
            }),
        })
        .await
        .unwrap();
    let started = Instant::now();
    let mut deliveries = 0;
    while deliveries < MAX_DELIVER {
        let mut batch = consumer.fetch().max_messages(1).messages().await.unwrap();
        if let Some(Ok(_never_acked)) = batch.next().await {
            deliveries += 1;
        }
        assert!(started.elapsed() < Duration::from_secs(30));
    }
    // Workers keep asking; the server finds the task exhausted when the last delivery's
    // ack_wait is over and it would deliver it again — well before reading resumes.
    let mut more = consumer
        .fetch()
        .max_messages(1)
        .expires(Duration::from_secs(3))
        .messages()
        .await
        .unwrap();
    assert!(more.next().await.is_none(), "no fourth delivery");
    assert!(
        tokio::time::timeout(Duration::from_millis(200), events.recv())
            .await
            .is_err(),
        "nobody reads advisories yet"
    );
    let event = tokio::time::timeout(Duration::from_secs(30), events.recv())
        .await
        .expect("the task ends in an event")
        .expect("event");
    assert_eq!(event.task, 7);
    match event.kind {
        EventKind::Failed { last, message, .. } => {
            assert!(last);
            assert!(message.contains("no worker answered"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

/// The fleet's real faults at once, sized for CI: three workers sharing a Garage cache,
/// each killed -9 and replaced in turn, nats-server restarted, the coordinator killed and
/// restarted, under a `submit --server` that follows the job. The job ends `succeeded`
/// within two minutes of the last fault, every digest checked with skopeo.
#[tokio::test(flavor = "multi_thread")]
async fn a_job_ends_through_worker_kills_and_nats_and_coordinator_restarts() {
    let env = Env::new();
    let mut nats = NatsProcess::start().expect("nats-server");
    let garage = hangar_loadtest::services::GarageProcess::start()
        .expect("garage (scripts/dev-services.sh installs it)");
    let cache = garage.cache_url();
    let aws = [
        ("AWS_ACCESS_KEY_ID", garage.key_id.as_str()),
        ("AWS_SECRET_ACCESS_KEY", garage.secret.as_str()),
    ];
    let (lines, proxy) = slow_source(&env, 6, 1_500_000).await;
    let list = env.write_list("list.txt", &lines);
    let listen = format!("127.0.0.1:{}", free_port().unwrap());
    let base = format!("http://{listen}");
    let mut coord = fleet::serve(
        &nats.url(),
        &listen,
        &env.path("coord.log"),
        &["--cache", &cache],
        &aws,
    );
    let worker_args = [
        "--ack-wait",
        "5s",
        "--cache",
        cache.as_str(),
        "--grace",
        "0s",
    ];
    let mut workers: Vec<Proc> = (0..3)
        .map(|i| {
            fleet::worker(
                &nats.url(),
                &env.path(&format!("w{i}.log")),
                &worker_args,
                &aws,
            )
        })
        .collect();
    let mut submit = Command::new(env!("CARGO_BIN_EXE_hangar-coord"))
        .args([
            "submit",
            list.to_str().unwrap(),
            "--server",
            &base,
            "-d",
            &env.dst.addr,
            "--tls-verify=false",
            "-j",
            "3",
            "-o",
            env.path("failed.txt").to_str().unwrap(),
        ])
        .env("REGISTRY_AUTH_FILE", "/nonexistent/auth.json")
        .stdout(std::fs::File::create(env.path("submit.log")).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("submit");
    let mut faults = Vec::new();
    let started = Instant::now();
    let mut step = 0;
    let mut last_fault = Instant::now();
    let status = loop {
        if let Some(status) = submit.try_wait().unwrap() {
            break status;
        }
        // A fault every 1.5 s for the first ten, then let the job finish.
        if step < 10 && started.elapsed() > Duration::from_millis(1500 * (step + 1)) {
            match step {
                3 => {
                    nats.restart(Duration::from_secs(1)).expect("nats restart");
                    faults.push("nats restarted");
                }
                6 => {
                    coord.restart(Duration::from_secs(1));
                    faults.push("coordinator restarted");
                }
                n => {
                    workers[(n % 3) as usize].restart(Duration::ZERO);
                    faults.push("worker killed -9 and replaced");
                }
            }
            last_fault = Instant::now();
            step += 1;
        }
        assert!(
            last_fault.elapsed() < Duration::from_secs(120),
            "still running two minutes after the last fault ({faults:?})\n{}",
            std::fs::read_to_string(env.path("coord.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let ended = last_fault.elapsed();
    let log = std::fs::read_to_string(env.path("submit.log")).unwrap_or_default();
    assert!(
        status.success(),
        "{faults:?}\n{log}\n{}",
        std::fs::read_to_string(env.path("coord.log")).unwrap_or_default()
    );
    digests_match(&env, &lines, &proxy.addr);
    // How many times the source was asked for each unique blob: dedup held under chaos?
    let gets = common::blob_gets(&env.src.log());
    let fetches: usize = gets.values().sum();
    eprintln!(
        "chaos: {} faults ({faults:?}); the job ended {:.1} s after the last; {fetches} source blob GETs for {} unique blobs",
        faults.len(),
        ended.as_secs_f64(),
        gets.len()
    );
}

/// A worker frozen (SIGSTOP) while it copies — holding deliveries and blob leases — holds
/// nobody up for long: its deliveries go to the other worker after `ack_wait`, its leases
/// lapse after 30 s, and the job ends well inside two minutes.
#[tokio::test(flavor = "multi_thread")]
async fn a_frozen_worker_holding_leases_does_not_stall_the_job() {
    let env = Env::new();
    let nats = NatsProcess::start().expect("nats-server");
    let garage = hangar_loadtest::services::GarageProcess::start()
        .expect("garage (scripts/dev-services.sh installs it)");
    let cache = garage.cache_url();
    let aws = [
        ("AWS_ACCESS_KEY_ID", garage.key_id.as_str()),
        ("AWS_SECRET_ACCESS_KEY", garage.secret.as_str()),
    ];
    let (lines, proxy) = slow_source(&env, 4, 1_500_000).await;
    let list = env.write_list("list.txt", &lines);
    let worker_args = ["--ack-wait", "5s", "--cache", cache.as_str()];
    let frozen = fleet::worker(&nats.url(), &env.path("frozen.log"), &worker_args, &aws);
    let listen = format!("127.0.0.1:{}", free_port().unwrap());
    let base = format!("http://{listen}");
    let _coord = fleet::serve(
        &nats.url(),
        &listen,
        &env.path("coord.log"),
        &["--cache", &cache],
        &aws,
    );
    let mut submit = Command::new(env!("CARGO_BIN_EXE_hangar-coord"))
        .args([
            "submit",
            list.to_str().unwrap(),
            "--server",
            &base,
            "-d",
            &env.dst.addr,
            "--tls-verify=false",
            "-j",
            "4",
            "-o",
            env.path("failed.txt").to_str().unwrap(),
        ])
        .env("REGISTRY_AUTH_FILE", "/nonexistent/auth.json")
        .envs(aws)
        .stdout(std::fs::File::create(env.path("submit.log")).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("submit");
    // The lone worker takes what it can, starts filling the cache (leases held), and
    // freezes; only then does a second worker appear.
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let mut held = false;
    for _ in 0..100 {
        if let Ok(kv) = js.get_key_value(hangar_shared::lease::LEASE_BUCKET).await
            && let Ok(mut keys) = kv.keys().await
            && futures_util::StreamExt::next(&mut keys).await.is_some()
        {
            held = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(held, "the first worker took a lease");
    frozen.signal("-STOP");
    let frozen_at = Instant::now();
    let _thawed = fleet::worker(&nats.url(), &env.path("thawed.log"), &worker_args, &aws);
    // The job's view says what holds it up: a task waiting on a lease the frozen worker has.
    let id = job_ids(&base).await.into_iter().next().expect("the job");
    let mut seen_waiting = None;
    let status = loop {
        if let Some(status) = submit.try_wait().unwrap() {
            break status;
        }
        if seen_waiting.is_none()
            && let Ok(resp) = reqwest::get(format!("{base}/jobs/{id}")).await
            && let Ok(snap) = resp.json::<serde_json::Value>().await
        {
            seen_waiting = snap["in_flight"].as_array().and_then(|tasks| {
                tasks
                    .iter()
                    .find(|t| {
                        t["waiting_on"]
                            .as_str()
                            .is_some_and(|w| w.contains("lease"))
                    })
                    .cloned()
            });
        }
        assert!(
            frozen_at.elapsed() < Duration::from_secs(120),
            "still running two minutes after the freeze"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(env.path("submit.log")).unwrap_or_default()
    );
    digests_match(&env, &lines, &proxy.addr);
    let waiting = seen_waiting.expect("a task shown waiting on the frozen worker's lease");
    assert!(
        waiting["what"]
            .as_str()
            .is_some_and(|w| w.starts_with("blob sha256:")),
        "{waiting}"
    );
    assert!(
        waiting["worker"]
            .as_str()
            .is_some_and(|w| w.starts_with("worker-")),
        "{waiting}"
    );
    eprintln!(
        "frozen worker: the job ended {:.1} s after the freeze",
        frozen_at.elapsed().as_secs_f64()
    );
    drop(frozen);
}

/// `submit --nats` (the coordinator in the submitting process) rides out a NATS restart:
/// its publishes are retried, its event consumer resumes, and the job ends with every image.
#[tokio::test(flavor = "multi_thread")]
async fn submit_nats_outlives_a_nats_restart() {
    let env = Env::new();
    let mut nats = NatsProcess::start().expect("nats-server");
    let (lines, proxy) = slow_source(&env, 4, 1_500_000).await;
    let list = env.write_list("list.txt", &lines);
    let _workers: Vec<Proc> = (0..2)
        .map(|i| {
            fleet::worker(
                &nats.url(),
                &env.path(&format!("w{i}.log")),
                &["--ack-wait", "5s"],
                &[],
            )
        })
        .collect();
    let mut submit = Command::new(env!("CARGO_BIN_EXE_hangar-coord"))
        .args([
            "submit",
            list.to_str().unwrap(),
            "--nats",
            &nats.url(),
            "-d",
            &env.dst.addr,
            "--tls-verify=false",
            "-j",
            "2",
            "-o",
            env.path("failed.txt").to_str().unwrap(),
        ])
        .env("REGISTRY_AUTH_FILE", "/nonexistent/auth.json")
        .stdout(std::fs::File::create(env.path("submit.log")).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("submit");
    tokio::time::sleep(Duration::from_secs(2)).await;
    nats.restart(Duration::from_secs(1)).expect("nats restart");
    let restarted = Instant::now();
    let status = loop {
        if let Some(s) = submit.try_wait().unwrap() {
            break s;
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(120),
            "submit still runs two minutes after the restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(env.path("submit.log")).unwrap_or_default()
    );
    digests_match(&env, &lines, &proxy.addr);
}
