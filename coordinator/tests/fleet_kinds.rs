//! Kinds of work beyond mirror on the fleet, with real nats-server, Garage and registries.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::fleet::{self, Proc};
use common::{Env, index_digests, sha, skopeo_raw, text};
use hangar_loadtest::proxy::{self, ProxyOptions};
use hangar_loadtest::services::{GarageProcess, NatsProcess};

/// `load -s s3://… --nats`: the workers read the archive by range from S3 themselves (not
/// the process that asked), one of two is killed -9 mid-job, and every image lands with
/// its digest; a worker whose --archive-root does not cover the archive refuses to read it.
#[tokio::test(flavor = "multi_thread")]
async fn load_of_an_s3_archive_runs_on_the_workers_through_a_kill() {
    let env = Env::new();
    let nats = NatsProcess::start().expect("nats-server");
    let garage = GarageProcess::start().expect("garage (scripts/dev-services.sh installs it)");
    let cache = garage.cache_url();
    let aws = [
        ("AWS_ACCESS_KEY_ID", garage.key_id.as_str()),
        ("AWS_SECRET_ACCESS_KEY", garage.secret.as_str()),
    ];
    let src = common::registry(&env.src.addr).await;
    let mut lines = Vec::new();
    for i in 0..4u64 {
        let repo = format!("air/app-{i}");
        common::push_image(
            &src,
            env.dir.path(),
            &repo,
            Some("v1"),
            hangar_loadtest::seed::Format::Oci,
            "amd64",
            (&[7000 + i], 1_500_000),
        )
        .await;
        lines.push(format!("{}/{repo}:v1", env.src.addr));
    }
    let list = env.write_list("list.txt", &lines);
    let (bucket, query) = cache
        .trim_start_matches("s3://")
        .split_once('?')
        .expect("query");
    let archive = format!("s3://{bucket}/air/saved.zip?{query}");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_hangar-coord"))
            .args(args)
            .env("REGISTRY_AUTH_FILE", "/nonexistent/auth.json")
            .envs(aws)
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
        "-o",
        env.path("sf.txt").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "save: {}", text(&out));

    // The destination takes pushes slowly, so the load lasts long enough to lose a worker.
    let slow_dst = proxy::start(
        "127.0.0.1:0",
        &env.dst.addr,
        ProxyOptions {
            rate_limit: Some(400_000),
            ..Default::default()
        },
    )
    .await
    .expect("proxy");
    // A root names its S3 service too: an archive on another endpoint is outside it.
    let root = format!("s3://{bucket}/air/?{query}");
    let worker_args = ["--ack-wait", "5s", "--archive-root", root.as_str()];
    let mut workers: Vec<Proc> = (0..2)
        .map(|i| {
            fleet::worker(
                &nats.url(),
                &env.path(&format!("w{i}.log")),
                &worker_args,
                &aws,
            )
        })
        .collect();
    let mut load = Command::new(env!("CARGO_BIN_EXE_hangar-coord"))
        .args([
            "load",
            "--tls-verify=false",
            "-s",
            &archive,
            "-d",
            &slow_dst.addr,
            "--nats",
            &nats.url(),
            "-j",
            "4",
            "-o",
            env.path("lf.txt").to_str().unwrap(),
        ])
        .env("REGISTRY_AUTH_FILE", "/nonexistent/auth.json")
        .envs(aws)
        .stdout(std::fs::File::create(env.path("load.log")).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("load");
    tokio::time::sleep(Duration::from_secs(2)).await;
    workers[0].kill();
    let killed = Instant::now();
    let status = loop {
        if let Some(s) = load.try_wait().unwrap() {
            break s;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(120),
            "load still runs"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let log = std::fs::read_to_string(env.path("load.log")).unwrap_or_default();
    assert!(status.success(), "{log}");
    assert!(log.contains("runs on the fleet"), "{log}");
    for line in &lines {
        let source = skopeo_raw(line).expect("source");
        let loaded = skopeo_raw(&line.replace(&env.src.addr, &env.dst.addr)).expect("loaded");
        assert_eq!(index_digests(&loaded), vec![sha(&source)], "{line}");
    }
    // The workers did the reading: their logs show blob tasks, from the archive.
    let worker_logs: String = (0..2)
        .map(|i| std::fs::read_to_string(env.path(&format!("w{i}.log"))).unwrap_or_default())
        .collect();
    assert!(worker_logs.contains("kind=\"blob\""), "{worker_logs}");

    // A worker whose roots do not cover the archive refuses to read it, naming the roots.
    drop(workers);
    let _narrow = fleet::worker(
        &nats.url(),
        &env.path("narrow.log"),
        &[
            "--ack-wait",
            "5s",
            "--archive-root",
            &format!("s3://{bucket}/elsewhere/?{query}"),
        ],
        &aws,
    );
    let out = run(&[
        "load",
        "--tls-verify=false",
        "-s",
        &archive,
        "-d",
        &env.dst.addr,
        "--project",
        "refused",
        "--nats",
        &nats.url(),
        "-o",
        env.path("lf2.txt").to_str().unwrap(),
    ]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("archive roots"), "{}", text(&out));
}
