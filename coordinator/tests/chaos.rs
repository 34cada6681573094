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
    let list = env.write_list("list.txt", &lines);
    let listen = format!("127.0.0.1:{}", free_port().unwrap());
    let base = format!("http://{listen}");
    let mut coord = fleet::serve(&nats.url(), &listen, &env.path("coord.log"), &[]);
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
    let mut watch = client(&["status", &id, "--watch", "--server", &base], "watch.log");
    // Mid-job: the coordinator dies without warning and comes back two seconds later.
    tokio::time::sleep(Duration::from_secs(2)).await;
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
    assert!(
        submitted.success(),
        "{logs}\n{}",
        std::fs::read_to_string(env.path("coord.log")).unwrap_or_default()
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
            key: "assemble/x".into(),
            trace: None,
            task: Task::Assemble(AssembleTask {
                output: "/nowhere/x.zip".into(),
                base: None,
                images: "archives/x.json".into(),
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
    assert!(events.try_recv().is_err(), "nobody reads advisories yet");
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
