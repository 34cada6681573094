//! Registry limits kept by the whole fleet: a request-rate budget (`--rate-limit`), a cap on
//! requests in flight (`--max-in-flight`), and holding back from a registry slowing down.

mod common;

use common::fleet::{Killed as Worker, spawn_worker, start_worker};
use common::*;
use hangar_loadtest::services::{NatsProcess, RegistryProcess};

/// Fleet-wide rate control: a destination that answers 429 to more than 15 requests a
/// second. Without a budget, two workers trip it; with `--rate-limit HOST=7` (for the
/// whole fleet, kept in NATS KV) they never exceed it and see no 429.
/// These tests measure what a fleet does to a registry (requests per second, requests in
/// flight, a slowing registry): run one at a time, so that one's workers do not load the
/// machine under another's measurement (the in-flight cap once read one over its limit
/// while the three ran together on this 2-core machine; alone it held in every run).
static ALONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread")]
async fn a_fleet_budget_keeps_the_workers_under_a_registrys_limit() {
    let _alone = ALONE.lock().await;
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
    let _alone = ALONE.lock().await;
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
    let _alone = ALONE.lock().await;
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

/// A rate write the bucket always refuses (here a value past the bucket's size, made so by
/// hand) lets the request through with a warning, as a ledger that cannot be read does: a
/// compare-and-swap loop that read again after every refusal asked for ever.
#[tokio::test(flavor = "multi_thread")]
async fn a_rate_write_the_bucket_refuses_lets_the_request_through() {
    use hangar_shared::ratelimit::{Gate, Limits, RATE_BUCKET, RateGate};
    let nats = NatsProcess::start().expect("nats-server");
    let client = async_nats::connect(nats.url()).await.unwrap();
    async_nats::jetstream::new(client.clone())
        .create_key_value(async_nats::jetstream::kv::Config {
            bucket: RATE_BUCKET.into(),
            history: 1,
            max_value_size: 8,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut limits = Limits::default();
    limits.budgets.insert("reg.example".into(), 100);
    limits.concurrency.insert("reg.example".into(), 2);
    let gate = RateGate::fleet(client, limits, "refused-writes")
        .await
        .unwrap();
    for _ in 0..3 {
        let admitted = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            gate.admit("reg.example", 1),
        )
        .await;
        assert!(
            admitted.is_ok(),
            "the request waited on a write that cannot succeed"
        );
    }
}
