//! What the fleet reports: workers' retry counters on `/metrics`, a real Prometheus
//! scraping the coordinator and the workers during a job (checked by `promtool`), and a job
//! traced as one OTLP trace across the coordinator and two workers.

mod common;

use std::process::{Command, Stdio};

use common::fleet::{
    Killed as Worker, spawn_coordinator, spawn_worker, start_coordinator, start_worker,
};
use common::*;
use hangar_loadtest::services::NatsProcess;

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
            let mut url =
                reqwest::Url::parse(&format!("http://127.0.0.1:{prom_port}/api/v1/query")).unwrap();
            url.query_pairs_mut().append_pair("query", q);
            let v: serde_json::Value = http
                .get(url)
                .send()
                .await
                .unwrap()
                .json()
                .await
                // While it starts, Prometheus may answer with text: no value yet (polled).
                .unwrap_or(serde_json::Value::Null);
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
