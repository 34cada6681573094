//! `mirror` against registries that fail, reset connections, ask to wait, or must be spared
//! (a budget and an in-flight cap).

mod common;

use common::*;
use hangar_loadtest::proxy::{self, ProxyOptions};
use hangar_loadtest::seed::Format;

/// One single-platform image mirrored from the source through a fault-injecting proxy.
async fn mirror_through_faults(
    env: &Env,
    repo: &str,
    seed: u64,
    faults: ProxyOptions,
) -> (
    std::process::Output,
    hangar_shared::manifest::RawManifest,
    proxy::Proxy,
) {
    let src = registry(&env.src.addr).await;
    let m = push_image(
        &src,
        env.dir.path(),
        repo,
        Some("1"),
        Format::Oci,
        "amd64",
        (&[seed], 20_000),
    )
    .await;
    let proxy = proxy::start("127.0.0.1:0", &env.src.addr, faults)
        .await
        .unwrap();
    let list = env.write_list("list.txt", &[format!("{}/{repo}:1", proxy.addr)]);
    let project = repo.split('/').next().unwrap_or("library");
    // Each retry is `--debug` detail: the tests below read them.
    let out = env.mirror(&list, &["--destination-project", project, "--debug"]);
    (out, m, proxy)
}

#[tokio::test(flavor = "multi_thread")]
async fn mirror_retries_connection_resets() {
    let env = Env::new();
    // The first two blob GETs from the source end in a connection reset.
    let faults = ProxyOptions {
        reset_blob_gets: 2,
        ..Default::default()
    };
    let (out, m, _proxy) = mirror_through_faults(&env, "team/flaky", 700, faults).await;
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("retrying"), "the resets were retried: {log}");
    let top = skopeo_raw(&format!("{}/team/flaky:1", env.dst.addr)).unwrap();
    assert_eq!(index_digests(&top), vec![m.digest.to_string()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn mirror_waits_out_retry_after_when_rate_limited() {
    let env = Env::new();
    // From the first blob GET on, blob requests get 429 with Retry-After for two seconds.
    let faults = ProxyOptions {
        throttle_blobs: Some(std::time::Duration::from_secs(2)),
        ..Default::default()
    };
    let (out, m, proxy) = mirror_through_faults(&env, "team/limited", 900, faults).await;
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    assert!(
        proxy.throttled.load(std::sync::atomic::Ordering::Relaxed) >= 1,
        "the proxy answered 429"
    );
    // The first retry waits what the server asked (2 s), not the 0-200 ms backoff.
    let waited = log
        .lines()
        .filter(|l| l.contains("retrying in"))
        .filter_map(|l| {
            l.split("retrying in ")
                .nth(1)?
                .split(' ')
                .next()
                .map(str::to_owned)
        })
        .collect::<Vec<_>>();
    assert!(
        waited
            .first()
            .is_some_and(|w| w.ends_with('s') && !w.ends_with("ms") && w.starts_with('2')),
        "waited {waited:?}: {log}"
    );
    assert!(log.contains("rate-limited"), "{log}");
    let top = skopeo_raw(&format!("{}/team/limited:1", env.dst.addr)).unwrap();
    assert_eq!(index_digests(&top), vec![m.digest.to_string()]);
}

/// `mirror --rate-limit` and `--max-in-flight` hold a lone mirror (no fleet) to a source
/// registry's limits: behind a proxy answering 429 beyond 15 requests a second, the same
/// mirror that trips it without limits gets no 429 with a budget of 5/s, and never has more
/// than two requests in flight there.
#[tokio::test(flavor = "multi_thread")]
async fn mirror_keeps_to_a_registrys_budget_and_in_flight_cap() {
    let env = Env::new();
    let lines = seed_shared_repos(&env, 6).await;
    let mut runs = Vec::new();
    for limited in [false, true] {
        let dst = hangar_loadtest::services::RegistryProcess::start().unwrap();
        let (proxy, through) = burst_limited_source(&env, &lines).await;
        let list = env.write_list(&format!("list-{limited}.txt"), &through);
        let mut args = vec![
            "mirror".to_owned(),
            "--tls-verify=false".into(),
            "-f".into(),
            list.display().to_string(),
            "-d".into(),
            dst.addr.clone(),
            "-j".into(),
            "6".into(),
            "-o".into(),
            env.path("failed.txt").display().to_string(),
        ];
        if limited {
            args.extend([
                "--rate-limit".into(),
                format!("{}=5", proxy.addr),
                "--max-in-flight".into(),
                format!("{}=2", proxy.addr),
            ]);
        }
        let out = hangar(&args);
        let throttled = proxy.throttled.load(std::sync::atomic::Ordering::Relaxed);
        let in_flight = proxy
            .in_flight_peak
            .load(std::sync::atomic::Ordering::SeqCst);
        // Without limits, retries may or may not get every image through the 429s.
        if limited {
            for line in &through {
                let copied = line.replace(&proxy.addr, &dst.addr);
                assert!(skopeo_raw(&copied).is_some(), "{copied}: {}", text(&out));
            }
        }
        runs.push((out.status.success(), throttled, in_flight, text(&out)));
    }
    let (_, free_429s, free_peak, _) = &runs[0];
    let (ok, limited_429s, limited_peak, log) = &runs[1];
    eprintln!(
        "lone mirror: without limits {free_429s} 429s, {free_peak} in flight; with 5/s and 2 in flight {limited_429s} 429s, {limited_peak} in flight"
    );
    assert!(*ok, "{log}");
    assert!(*free_429s > 0, "without limits the burst limit is hit");
    assert_eq!(*limited_429s, 0, "{log}");
    assert!(*limited_peak <= 2, "in flight: {limited_peak}");
    assert!(*free_peak > 2, "without the cap more overlap: {free_peak}");
}

/// `--dry-run` measures the source's bandwidth by reading up to 16 MiB of the largest
/// blob. Behind a link of 300 KB/s that read alone would take a minute (and a source that
/// trickles within the stream's pace bound, hours); the probe stops after 5 s and reports
/// what it measured.
#[tokio::test(flavor = "multi_thread")]
async fn a_dry_runs_bandwidth_probe_of_a_slow_source_ends_in_seconds() {
    let env = Env::new();
    let src = registry(&env.src.addr).await;
    push_image(
        &src,
        env.dir.path(),
        "team/big",
        Some("1"),
        Format::Oci,
        "amd64",
        (&[801], 20_000_000),
    )
    .await;
    let slow = proxy::start(
        "127.0.0.1:0",
        &env.src.addr,
        ProxyOptions {
            rate_limit: Some(300_000),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let list = env.write_list("list.txt", &[format!("{}/team/big:1", slow.addr)]);
    let started = std::time::Instant::now();
    let out = env.mirror(&list, &["--dry-run"]);
    let took = started.elapsed();
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("Plan: measured"), "{log}");
    assert!(
        took < std::time::Duration::from_secs(20),
        "the dry run took {took:?}: {log}"
    );
}
