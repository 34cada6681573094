//! A hostile registry (`common::hostile`): endless, huge, slow or absurd answers. Each case
//! runs the real `hangar-coord` and asserts the error naming the input, the time it took and
//! the process's peak memory.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::hostile::{MB, Small, mirror_one, start_hostile, start_hostile_with};
use common::{Env, run_measured, sha};

const COPY_RSS_BOUND: u64 = 128 * MB;

#[tokio::test(flavor = "multi_thread")]
async fn huge_and_endless_manifests_are_refused_at_four_mib() {
    let env = Env::new();
    let hostile = start_hostile().await;
    for name in ["endless", "declared"] {
        let run = mirror_one(&env, &hostile.addr, name, "60s", Duration::from_secs(120));
        assert!(!run.success, "{name}: {}", run.output);
        assert!(
            run.output.contains("larger than 4096 KiB")
                && run.output.contains(&format!("{name}/app:1")),
            "{name}: {}",
            run.output
        );
        // Refused as it streams: well inside the timeout, and memory near a plain run's.
        assert!(
            run.elapsed < Duration::from_secs(30),
            "{name}: {:?}",
            run.elapsed
        );
        assert!(
            run.peak_rss < COPY_RSS_BOUND,
            "{name}: peak RSS {} MB",
            run.peak_rss / MB
        );
        let failed =
            std::fs::read_to_string(env.path(&format!("{name}-failed.txt"))).unwrap_or_default();
        assert!(failed.contains(&format!("{name}/app:1")), "{failed}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_manifest_sent_a_byte_at_a_time_ends_at_the_timeout() {
    let env = Env::new();
    let hostile = start_hostile().await;
    let run = mirror_one(&env, &hostile.addr, "slow", "10s", Duration::from_secs(60));
    assert!(!run.success, "{}", run.output);
    assert!(
        run.output.contains("slow/app:1") && run.output.contains("within 10s"),
        "{}",
        run.output
    );
    assert!(run.elapsed < Duration::from_secs(20), "{:?}", run.elapsed);
    assert!(
        run.peak_rss < COPY_RSS_BOUND,
        "peak RSS {} MB",
        run.peak_rss / MB
    );

    // So does mirror validate, per image.
    let list = env.path("slow.txt");
    let run = run_measured(
        &[
            "mirror",
            "validate",
            "--tls-verify=false",
            "--timeout",
            "5s",
            "-f",
            list.to_str().expect("utf-8"),
            "-d",
            &env.dst.addr,
            "-o",
            env.path("validate-failed.txt").to_str().expect("utf-8"),
        ],
        Duration::from_secs(60),
    );
    assert!(!run.success, "{}", run.output);
    assert!(
        run.output
            .contains("planning did not finish within 5s (--timeout)"),
        "{}",
        run.output
    );
    assert!(run.elapsed < Duration::from_secs(15), "{:?}", run.elapsed);

    // The one-shot commands take --timeout as well.
    let reference = format!("docker://{}/slow/app:1", hostile.addr);
    for args in [
        vec![
            "inspect",
            "--raw",
            "--tls-verify=false",
            "--timeout",
            "5s",
            reference.as_str(),
        ],
        vec![
            "inspect",
            "--tls-verify=false",
            "--timeout",
            "5s",
            reference.as_str(),
        ],
    ] {
        let run = run_measured(&args, Duration::from_secs(60));
        assert!(!run.success, "{args:?}: {}", run.output);
        assert!(run.output.contains("within 5s"), "{args:?}: {}", run.output);
        assert!(
            run.elapsed < Duration::from_secs(15),
            "{args:?}: {:?}",
            run.elapsed
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_index_is_deduplicated_and_capped() {
    let env = Env::new();
    let hostile = start_hostile().await;
    let run = mirror_one(&env, &hostile.addr, "many", "60s", Duration::from_secs(60));
    assert!(!run.success, "{}", run.output);
    assert!(
        run.output.contains("5000 manifests") && run.output.contains("at most 1000"),
        "{}",
        run.output
    );
    assert!(run.elapsed < Duration::from_secs(20), "{:?}", run.elapsed);
    assert!(
        run.peak_rss < COPY_RSS_BOUND,
        "peak RSS {} MB",
        run.peak_rss / MB
    );

    // 500 copies of one entry: one platform manifest fetched, one image copied, and the
    // source index (duplicates and all) kept at the destination with its digest.
    let run = mirror_one(&env, &hostile.addr, "dup", "60s", Duration::from_secs(60));
    assert!(run.success, "{}", run.output);
    assert_eq!(hostile.seen.platform_gets.load(Ordering::SeqCst), 1);
    let copied = common::skopeo_raw(&format!("{}/dup/app:1", env.dst.addr)).expect("copied");
    assert_eq!(sha(&copied), sha(&Small::new().index(500)));

    // 20 distinct platform manifests of 1 MiB each: past the 16 MiB an image's platforms
    // may come to (1,000 entries of 4 MiB would be 4 GiB per image planned).
    let run = mirror_one(&env, &hostile.addr, "heavy", "60s", Duration::from_secs(60));
    assert!(!run.success, "{}", run.output);
    assert!(
        run.output
            .contains("heavy/app:1: its platform manifests come to more than 16 MiB"),
        "{}",
        run.output
    );
    assert!(run.elapsed < Duration::from_secs(20), "{:?}", run.elapsed);
    assert!(
        run.peak_rss < COPY_RSS_BOUND,
        "peak RSS {} MB",
        run.peak_rss / MB
    );
    assert!(common::skopeo_raw(&format!("{}/heavy/app:1", env.dst.addr)).is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_endless_token_answer_is_refused_at_four_mib() {
    let env = Env::new();
    let hostile = start_hostile_with(true).await;
    let run = mirror_one(&env, &hostile.addr, "dup", "60s", Duration::from_secs(120));
    assert!(!run.success, "{}", run.output);
    assert!(
        run.output.contains("token from 127.0.0.1") && run.output.contains("larger than 4096 KiB"),
        "{}",
        run.output
    );
    assert!(run.elapsed < Duration::from_secs(30), "{:?}", run.elapsed);
    assert!(
        run.peak_rss < COPY_RSS_BOUND,
        "peak RSS {} MB",
        run.peak_rss / MB
    );
}

/// A blob whose body stops after its first KiB holds a fleet worker's delivery only until
/// `--stall-timeout`: the copy is given up (not held for `--timeout`, ten minutes), each
/// delivery in turn, and the job ends with the reason.
#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_blob_copy_is_given_up_for_another_delivery() {
    let env = Env::new();
    let hostile = start_hostile().await;
    let nats = hangar_loadtest::services::NatsProcess::start().expect("nats-server");
    let _worker = common::fleet::worker(
        &nats.url(),
        &env.path("worker.log"),
        &["--stall-timeout", "2s", "--ack-wait", "5s"],
        &[],
    );
    let list = env.write_list("stall.txt", &[format!("{}/stall/app:1", hostile.addr)]);
    let failed = env.path("stall-failed.txt");
    let run = run_measured(
        &[
            "submit",
            list.to_str().expect("utf-8"),
            "--nats",
            &nats.url(),
            "--tls-verify=false",
            "-d",
            &env.dst.addr,
            "-o",
            failed.to_str().expect("utf-8"),
        ],
        Duration::from_secs(120),
    );
    assert!(!run.success, "{}", run.output);
    let log = std::fs::read_to_string(env.path("worker.log")).unwrap_or_default();
    assert!(
        run.output.contains("no byte moved for 2s") || log.contains("no byte moved for 2s"),
        "{}\n{log}",
        run.output
    );
    // Three deliveries of a few seconds each and their back-off, not ten minutes.
    assert!(run.elapsed < Duration::from_secs(60), "{:?}", run.elapsed);
}

/// A registry's index too large for the bus (NATS carries 64 KiB a message here; the index
/// holds a 100 KB annotation) fails that image at once, naming `max_payload`, and not the
/// job: the other image of the list is copied, and nothing waits out the publish patience.
#[tokio::test(flavor = "multi_thread")]
async fn a_manifest_too_large_for_the_bus_fails_its_image_only() {
    let env = Env::new();
    let nats = hangar_loadtest::services::NatsProcess::start_with_config("max_payload: 65536")
        .expect("nats-server");
    let _worker = common::fleet::worker(&nats.url(), &env.path("worker.log"), &[], &[]);
    let reg = common::registry(&env.src.addr).await;
    let seeds: &[u64] = &[71];
    common::push_image(
        &reg,
        env.dir.path(),
        "small/app",
        Some("1"),
        hangar_loadtest::seed::Format::Oci,
        "amd64",
        (seeds, 4096),
    )
    .await;
    let amd64 = common::push_image(
        &reg,
        env.dir.path(),
        "big/app",
        None,
        hangar_loadtest::seed::Format::Oci,
        "amd64",
        (seeds, 4096),
    )
    .await;
    let pad = serde_json::json!({ "pad": "x".repeat(100_000) });
    common::push_index(
        &reg,
        "big/app",
        "1",
        hangar_loadtest::seed::Format::Oci,
        &[(amd64, hangar_loadtest::seed::platform("amd64"), Some(pad))],
    )
    .await;
    let big = format!("{}/big/app:1", env.src.addr);
    let small = format!("{}/small/app:1", env.src.addr);
    let list = env.write_list("list.txt", &[big.clone(), small.clone()]);
    let failed = env.path("failed.txt");
    let run = run_measured(
        &[
            "submit",
            list.to_str().expect("utf-8"),
            "--nats",
            &nats.url(),
            "--tls-verify=false",
            "-d",
            &env.dst.addr,
            "-o",
            failed.to_str().expect("utf-8"),
        ],
        Duration::from_secs(120),
    );
    assert!(!run.success, "{}", run.output);
    assert!(run.output.contains("max_payload 65536"), "{}", run.output);
    let failed = std::fs::read_to_string(&failed).expect("failed list");
    assert_eq!(failed.lines().collect::<Vec<_>>(), vec![big.as_str()]);
    assert!(
        common::skopeo_raw(&small.replace(&env.src.addr, &env.dst.addr)).is_some(),
        "the other image is copied"
    );
    assert!(run.elapsed < Duration::from_secs(45), "{:?}", run.elapsed);
}

/// A layer sent chunked (no length said up front) and without end is cut at its size, in a
/// save (whose fetch reads the registry's bytes unverified and counts them itself) as in a
/// copy: the image fails naming the layer, in seconds, with memory bounded, and no archive
/// is left behind.
#[tokio::test(flavor = "multi_thread")]
async fn a_layer_longer_than_its_size_is_cut_at_its_size() {
    let env = Env::new();
    let hostile = start_hostile().await;
    let layer = sha(b"a layer that never arrives");
    let list = env.write_list("longer.txt", &[format!("{}/longer/app:1", hostile.addr)]);
    let archive = env.path("longer.zip");
    let failed = env.path("longer-save-failed.txt");
    let save = run_measured(
        &[
            "save",
            "--tls-verify=false",
            "--timeout",
            "60s",
            "-f",
            list.to_str().expect("utf-8"),
            "-d",
            archive.to_str().expect("utf-8"),
            "-o",
            failed.to_str().expect("utf-8"),
        ],
        Duration::from_secs(120),
    );
    let copy = mirror_one(
        &env,
        &hostile.addr,
        "longer",
        "60s",
        Duration::from_secs(120),
    );
    for (what, run) in [("save", &save), ("mirror", &copy)] {
        assert!(!run.success, "{what}: {}", run.output);
        assert!(
            run.output.contains(&layer) && run.output.contains("more than the expected"),
            "{what}: {}",
            run.output
        );
        assert!(
            run.elapsed < Duration::from_secs(30),
            "{what}: {:?}",
            run.elapsed
        );
        assert!(
            run.peak_rss < COPY_RSS_BOUND,
            "{what}: peak RSS {} MB",
            run.peak_rss / MB
        );
    }
    assert!(!archive.exists(), "a half-written archive was left");
    assert!(
        !save.output.contains("Saved image") && save.output.contains("No archive was written"),
        "{}",
        save.output
    );
    for failed in [failed, env.path("longer-failed.txt")] {
        let failed = std::fs::read_to_string(&failed).unwrap_or_default();
        assert!(failed.contains("longer/app:1"), "{failed}\n{}", save.output);
    }
}

/// A config that is not JSON, its digest right, holding an escape sequence that would
/// retitle and clear the terminal: `inspect --config` shows it escaped, and says why.
#[tokio::test(flavor = "multi_thread")]
async fn a_config_that_is_not_json_cannot_drive_the_terminal() {
    use hangar_loadtest::seed::{self, Format};
    let env = Env::new();
    let reg = common::registry(&env.src.addr).await;
    let repo = "odd/config";
    let config = seed::push_bytes(
        &reg,
        repo,
        "application/vnd.example.config",
        bytes::Bytes::from_static(b"title \x1b]0;pwned\x07\x1b[2J end"),
    )
    .await
    .expect("config");
    let body = seed::manifest_json(Format::Oci, &config, &[]);
    seed::push_manifest(&reg, repo, "1", Format::Oci.manifest_type(), body)
        .await
        .expect("manifest");
    let reference = format!("docker://{}/{repo}:1", env.src.addr);
    let out = common::hangar(&["inspect", "--tls-verify=false", "--config", &reference]);
    assert!(out.status.success(), "{}", common::text(&out));
    assert!(!out.stdout.contains(&0x1b), "{:?}", out.stdout);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "title \\u{1b}]0;pwned\\u{7}\\u{1b}[2J end"
    );
    assert!(
        common::text(&out).contains("its config (application/vnd.example.config) is not JSON"),
        "{}",
        common::text(&out)
    );
}

/// A registry that redirects its tag listing to another host, whose page names its next
/// page there: the next page is refused (it is not the registry's own), and never asked.
#[tokio::test(flavor = "multi_thread")]
async fn a_tag_page_redirected_elsewhere_cannot_lead_the_listing_there() {
    let elsewhere = start_hostile().await;
    let hostile = start_hostile().await;
    let port = elsewhere.addr.rsplit(':').next().unwrap_or_default();
    let reference = format!("docker://{}/redirect/{port}/app", hostile.addr);
    let run = run_measured(
        &["list-tags", "--tls-verify=false", &reference],
        Duration::from_secs(60),
    );
    assert!(!run.success, "{}", run.output);
    assert!(
        run.output
            .contains("names the next page of tags on another host (127.0.0.1); refused"),
        "{}",
        run.output
    );
    assert!(
        !elsewhere.seen.second_page.load(Ordering::SeqCst),
        "the other host's next page was asked for"
    );
}
