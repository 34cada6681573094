//! `hangar-coord serve` with a fleet: jobs submitted, followed, listed and cancelled through
//! its API, what it keeps in NATS KV, and scheduled runs.

mod common;

use std::process::{Command, Stdio};

use common::fleet::{
    Killed as Coordinator, Killed as Worker, job_state, slow_source, start_coordinator,
    start_fast_failover_worker, start_worker,
};
use common::*;
use futures_util::StreamExt;
use hangar_loadtest::services::NatsProcess;

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

/// `serve --schedule`: a run every 2 seconds; while the first run cannot finish (no worker
/// yet) the next ones are skipped, not stacked; once a worker finishes it, runs resume.
#[tokio::test(flavor = "multi_thread")]
async fn scheduled_runs_start_and_skip_while_the_previous_is_busy() {
    let env = Env::new();
    let nats = NatsProcess::start().expect("nats-server");
    let mut lines = seed_shared_repos(&env, 2).await;
    // Over the API's 2 MiB: a schedule's list is read up to 64 MiB, and its runs are kept
    // (in parts) like any job's.
    lines.extend((0..30_000).map(|i| format!("# {i:05} {}", "x".repeat(100))));
    let list = env.write_list("list.txt", &lines);
    assert!(std::fs::metadata(&list).unwrap().len() > 2 << 20);
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
    for line in lines.iter().filter(|l| !l.starts_with('#')) {
        assert!(skopeo_raw(&line.replace(&env.src.addr, &env.dst.addr)).is_some());
    }
}

/// The outcomes `serve` holds for its clients share one budget (`--results-memory`): a scan
/// whose inventories pass it has them dropped — the job itself runs to its end — and its
/// client is told why, naming the flag, instead of the service holding them without bound.
#[tokio::test(flavor = "multi_thread")]
async fn outcomes_past_the_services_budget_are_dropped_and_the_client_told() {
    let env = Env::new();
    let nats = NatsProcess::start().expect("nats-server");
    let listen = format!(
        "127.0.0.1:{}",
        hangar_loadtest::services::free_port().unwrap()
    );
    let _coord = common::fleet::serve(
        &nats.url(),
        &listen,
        &env.path("coord.log"),
        &["--results-memory", "4K"],
        &[],
    );
    let _worker = common::fleet::worker(&nats.url(), &env.path("w.log"), &[], &[]);
    // Each image's inventory: 100 packages, some 9 KB encoded.
    let mut status = String::new();
    for i in 0..100 {
        status.push_str(&format!("Package: pkg{i}\nVersion: 1.{i}\n\n"));
    }
    let (layer, diff) = files_layer(&[
        ("etc/os-release", b"ID=debian\nVERSION_ID=12\n"),
        ("var/lib/dpkg/status", status.as_bytes()),
    ]);
    push_files_image(&env.src.addr, "held/big", vec![(layer, diff)]).await;
    let db = env.path("osv");
    std::fs::create_dir_all(&db).unwrap();
    std::fs::write(
        db.join("X-1.json"),
        r#"{"id":"X-1","modified":"2025-01-01T00:00:00Z","affected":[{"package":{"ecosystem":"Debian:12","name":"pkg1"},"ranges":[{"type":"ECOSYSTEM","events":[{"introduced":"0"}]}]}]}"#,
    )
    .unwrap();
    let list = env.write_list("list.txt", &[format!("{}/held/big:1", env.src.addr)]);
    let out = Command::new(env!("CARGO_BIN_EXE_hangar-coord"))
        .args(["scan", "--tls-verify=false", "--skip-db-age-check", "-f"])
        .arg(&list)
        .arg("--db")
        .arg(&db)
        .arg("-r")
        .arg(env.path("report.json"))
        .args(["--coordinator", &format!("http://{listen}")])
        .env("REGISTRY_AUTH_FILE", "/nonexistent/auth.json")
        .stdin(Stdio::null())
        .output()
        .expect("hangar-coord scan");
    let log = text(&out);
    assert!(!out.status.success(), "{log}");
    assert!(
        log.contains("were dropped")
            && log.contains("(4096 bytes, --results-memory)")
            && log.contains("HTTP 410"),
        "{log}"
    );
    assert!(!env.path("report.json").exists(), "no report from nothing");
}
