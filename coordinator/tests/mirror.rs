//! `hangar-coord mirror` end to end against real registries, cross-checked with skopeo.

mod common;

use common::*;
use hangar_loadtest::proxy::{self, ProxyOptions};
use hangar_loadtest::seed::{self, Format};
use hangar_shared::manifest::{ANNOTATION_REFERENCE_DIGEST, ANNOTATION_REFERENCE_TYPE, Platform};

#[tokio::test(flavor = "multi_thread")]
async fn mirror_single_docker_and_oci_images_preserve_platform_digests() {
    let env = Env::new();
    let src = registry(&env.src.addr).await;
    let docker = push_image(
        &src,
        env.dir.path(),
        "team/docker-app",
        Some("1.0"),
        Format::Docker,
        "amd64",
        (&[1, 2], 40_000),
    )
    .await;
    let oci = push_image(
        &src,
        env.dir.path(),
        "team/oci-app",
        Some("2.0"),
        Format::Oci,
        "amd64",
        (&[3], 40_000),
    )
    .await;
    let list = env.write_list(
        "list.txt",
        &[
            format!("{}/team/docker-app:1.0", env.src.addr),
            format!("{}/team/oci-app:2.0", env.src.addr),
        ],
    );
    let out = env.mirror(&list, &["-j", "2"]);
    assert!(out.status.success(), "{}", text(&out));
    for (repo, tag, m) in [
        ("team/docker-app", "1.0", &docker),
        ("team/oci-app", "2.0", &oci),
    ] {
        let top =
            skopeo_raw(&format!("{}/{repo}:{tag}", env.dst.addr)).expect("destination tag exists");
        let v: serde_json::Value = serde_json::from_slice(&top).unwrap();
        assert_eq!(
            v["mediaType"], "application/vnd.oci.image.index.v1+json",
            "Hangar wraps single images in an OCI index"
        );
        assert_eq!(index_digests(&top), vec![m.digest.to_string()]);
        assert_eq!(v["manifests"][0]["platform"]["architecture"], "amd64");
        let platform = skopeo_raw(&format!("{}/{repo}@{}", env.dst.addr, m.digest))
            .expect("platform manifest by digest");
        assert_eq!(
            platform,
            m.bytes.to_vec(),
            "platform manifest pushed byte for byte"
        );
    }
    assert!(
        !env.path("failed.txt").exists(),
        "no failed list when nothing failed"
    );
    let validate = hangar(&[
        "mirror",
        "validate",
        "--tls-verify=false",
        "-f",
        list.to_str().unwrap(),
        "-d",
        &env.dst.addr,
    ]);
    assert!(validate.status.success(), "{}", text(&validate));
    assert_eq!(text(&validate).matches("PASS:").count(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn mirror_complete_index_keeps_its_digest_and_subset_gets_hangar_index() {
    let env = Env::new();
    let src = registry(&env.src.addr).await;
    let (idx, amd, arm) = push_multiarch(
        &src,
        env.dir.path(),
        "library/multi",
        "v1",
        Format::Docker,
        10,
    )
    .await;
    let list = env.write_list("list.txt", &[format!("{}/library/multi:v1", env.src.addr)]);

    // Only amd64: an OCI index built by Hangar's rules, platform digest preserved.
    let out = env.mirror(&list, &["--arch", "amd64"]);
    assert!(out.status.success(), "{}", text(&out));
    let top = skopeo_raw(&format!("{}/library/multi:v1", env.dst.addr)).unwrap();
    assert_eq!(index_digests(&top), vec![amd.digest.to_string()]);
    assert_ne!(sha(&top), idx.digest.to_string());

    // A later arm64-only run merges into the same index.
    let out = env.mirror(&list, &["--arch", "arm64"]);
    assert!(out.status.success(), "{}", text(&out));
    let merged = skopeo_raw(&format!("{}/library/multi:v1", env.dst.addr)).unwrap();
    assert_eq!(
        index_digests(&merged),
        vec![amd.digest.to_string(), arm.digest.to_string()]
    );

    // Every platform selected and nothing else under the tag: the source index unchanged.
    let out = env.mirror(&list, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let full = skopeo_raw(&format!("{}/library/multi:v1", env.dst.addr)).unwrap();
    assert_eq!(
        sha(&full),
        idx.digest.to_string(),
        "complete index keeps its digest"
    );
    assert_eq!(full, idx.bytes.to_vec());
    assert!(text(&out).contains("source digest preserved"));
}

#[tokio::test(flavor = "multi_thread")]
async fn mirror_copies_provenance_attestations_with_their_images() {
    let env = Env::new();
    let src = registry(&env.src.addr).await;
    let dir = env.dir.path();
    let amd = push_image(
        &src,
        dir,
        "library/prov",
        None,
        Format::Oci,
        "amd64",
        (&[20], 30_000),
    )
    .await;
    let arm = push_image(
        &src,
        dir,
        "library/prov",
        None,
        Format::Oci,
        "arm64",
        (&[21], 30_000),
    )
    .await;
    let att = |of: &hangar_shared::manifest::RawManifest| serde_json::json!({ANNOTATION_REFERENCE_DIGEST: of.digest.to_string(), ANNOTATION_REFERENCE_TYPE: "attestation-manifest"});
    let unknown = Platform {
        architecture: "unknown".into(),
        os: "unknown".into(),
        ..Default::default()
    };
    let att_amd = push_image(
        &src,
        dir,
        "library/prov",
        None,
        Format::Oci,
        "unknown",
        (&[22], 2_000),
    )
    .await;
    let att_arm = push_image(
        &src,
        dir,
        "library/prov",
        None,
        Format::Oci,
        "unknown",
        (&[23], 2_000),
    )
    .await;
    push_index(
        &src,
        "library/prov",
        "v1",
        Format::Oci,
        &[
            (amd.clone(), seed::platform("amd64"), None),
            (arm.clone(), seed::platform("arm64"), None),
            (att_amd.clone(), unknown.clone(), Some(att(&amd))),
            (att_arm.clone(), unknown.clone(), Some(att(&arm))),
        ],
    )
    .await;
    let list = env.write_list("list.txt", &[format!("{}/library/prov:v1", env.src.addr)]);

    let out = env.mirror(&list, &["--arch", "amd64"]);
    assert!(out.status.success(), "{}", text(&out));
    let top = skopeo_raw(&format!("{}/library/prov:v1", env.dst.addr)).unwrap();
    assert_eq!(
        index_digests(&top),
        vec![amd.digest.to_string(), att_amd.digest.to_string()]
    );
    assert!(skopeo_raw(&format!("{}/library/prov@{}", env.dst.addr, att_amd.digest)).is_some());
    assert!(skopeo_raw(&format!("{}/library/prov@{}", env.dst.addr, att_arm.digest)).is_none());

    let out = env.mirror(
        &list,
        &["--arch", "amd64", "--provenance=false", "--overwrite"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let top = skopeo_raw(&format!("{}/library/prov:v1", env.dst.addr)).unwrap();
    assert_eq!(index_digests(&top), vec![amd.digest.to_string()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn mirror_digest_pinned_and_mirror_format_lines() {
    let env = Env::new();
    let src = registry(&env.src.addr).await;
    let (idx, _, _) = push_multiarch(
        &src,
        env.dir.path(),
        "library/pinned",
        "v1",
        Format::Oci,
        30,
    )
    .await;
    let single = push_image(
        &src,
        env.dir.path(),
        "team/app",
        Some("3.1"),
        Format::Docker,
        "amd64",
        (&[40], 20_000),
    )
    .await;
    let list = env.write_list(
        "list.txt",
        &[
            format!("{}/library/pinned@{}", env.src.addr, idx.digest),
            format!("{}/library/pinned:stable@{}", env.src.addr, idx.digest),
            format!("{}/team/app mirrored/app-copy 3.1", env.src.addr),
        ],
    );
    let out = env.mirror(&list, &["-j", "3"]);
    assert!(out.status.success(), "{}", text(&out));
    let by_digest = skopeo_raw(&format!("{}/library/pinned@{}", env.dst.addr, idx.digest))
        .expect("index by digest");
    assert_eq!(by_digest, idx.bytes.to_vec());
    let tagged = skopeo_raw(&format!("{}/library/pinned:stable", env.dst.addr))
        .expect("pinned line with tag");
    assert_eq!(sha(&tagged), idx.digest.to_string());
    let mirrored = skopeo_raw(&format!("{}/mirrored/app-copy:3.1", env.dst.addr))
        .expect("mirror-format destination");
    assert_eq!(index_digests(&mirrored), vec![single.digest.to_string()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn mirror_failures_go_to_the_failed_list_with_exit_1() {
    let env = Env::new();
    let src = registry(&env.src.addr).await;
    push_image(
        &src,
        env.dir.path(),
        "team/ok",
        Some("1"),
        Format::Oci,
        "amd64",
        (&[50], 10_000),
    )
    .await;
    // An index nested in an index: a media type we cannot copy as a platform image.
    let inner = push_multiarch(
        &src,
        env.dir.path(),
        "team/nested",
        "inner",
        Format::Oci,
        60,
    )
    .await
    .0;
    push_index(
        &src,
        "team/nested",
        "outer",
        Format::Oci,
        &[(inner, seed::platform("amd64"), None)],
    )
    .await;
    let missing_line = format!("{}/team/missing:1", env.src.addr);
    let nested_line = format!("{}/team/nested:outer", env.src.addr);
    let upper_line = format!("{}/team/UPPER:1", env.src.addr);
    let pinned = push_multiarch(&src, env.dir.path(), "team/pinned", "v1", Format::Oci, 70)
        .await
        .0;
    let partial_pin_line = format!("{}/team/pinned@{}", env.src.addr, pinned.digest);
    let list = env.write_list(
        "list.txt",
        &[
            format!("{}/team/ok:1", env.src.addr),
            missing_line.clone(),
            "TEST INVALID IMAGE LIST LINE".into(),
            nested_line.clone(),
            upper_line.clone(),
            partial_pin_line.clone(),
        ],
    );
    let out = env.mirror(&list, &["-j", "2", "--arch", "amd64"]);
    let log = text(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(log.contains("some images failed to copy"), "{log}");
    assert!(
        log.contains("[IMG:4]") && log.contains("invalid repository name component \"UPPER\""),
        "{log}"
    );
    assert!(log.contains("copies the whole index"), "{log}");
    assert!(
        log.contains("invalid format") && log.contains(":3)"),
        "invalid line named with its line number: {log}"
    );
    assert!(log.contains("not-found"), "{log}");
    assert!(
        log.contains("unsupported media type application/vnd.oci.image.index.v1+json"),
        "{log}"
    );
    let mut failed: Vec<String> = std::fs::read_to_string(env.path("failed.txt"))
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    failed.sort();
    let mut expected = vec![missing_line, nested_line, upper_line, partial_pin_line];
    expected.sort();
    assert_eq!(failed, expected);
    assert!(
        skopeo_raw(&format!("{}/team/ok:1", env.dst.addr)).is_some(),
        "the good image still went through"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn mirror_fetches_each_unique_blob_once_across_images() {
    let env = Env::new();
    let lines = seed_shared_repos(&env, 6).await;
    let list = env.write_list("list.txt", &lines);
    let out = env.mirror(&list, &["-j", "6"]);
    assert!(out.status.success(), "{}", text(&out));
    let gets = blob_gets(&env.src.log());
    let base = seed::write_layer(env.dir.path(), 100, 30_000)
        .unwrap()
        .digest
        .to_string();
    assert_eq!(
        gets.get(&base),
        Some(&1),
        "shared base layer fetched exactly once: {gets:?}"
    );
    assert!(
        gets.values().all(|n| *n == 1),
        "every blob fetched at most once: {gets:?}"
    );
    // 6 configs + 6 own layers + 2 base layers.
    assert_eq!(gets.len(), 14, "{gets:?}");
    let hex = base.trim_start_matches("sha256:");
    // A mount from another repository, or the look at its own (a mount from itself).
    let (mut mounts, mut looks) = (0, 0);
    for l in env
        .dst
        .log()
        .lines()
        .filter(|l| l.contains("mount=") && l.contains(hex))
    {
        let repo = l
            .split("/v2/")
            .nth(1)
            .and_then(|r| r.split("/blobs/").next())
            .expect("a repository in the path");
        match l.contains(&format!("from={}", repo.replace('/', "%2F"))) {
            true => looks += 1,
            false => mounts += 1,
        }
    }
    assert_eq!(
        (mounts, looks),
        (5, 1),
        "the base layer looked for and copied once, mounted into the other five repositories"
    );
    for line in &lines {
        let dst = line.replace(&env.src.addr, &env.dst.addr);
        assert!(skopeo_raw(&dst).is_some(), "{dst} exists");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn mirror_skips_blobs_the_destination_already_holds() {
    let env = Env::new();
    let lines = seed_shared_repos(&env, 3).await;
    // The destination already holds app-0, copied by skopeo (an independent client).
    let pre = std::process::Command::new("skopeo")
        .args([
            "copy",
            "--all",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
        ])
        .arg(format!("docker://{}/shared/app-0:v1", env.src.addr))
        .arg(format!("docker://{}/shared/app-0:v1", env.dst.addr))
        .output()
        .unwrap();
    assert!(pre.status.success(), "{}", text(&pre));
    let before = blob_gets(&env.src.log());
    let list = env.write_list("list.txt", &lines);
    let out = env.mirror(&list, &["-j", "3"]);
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    let after = blob_gets(&env.src.log());
    let base = seed::write_layer(env.dir.path(), 100, 30_000)
        .unwrap()
        .digest
        .to_string();
    let fetched =
        |d: &str| after.get(d).copied().unwrap_or(0) - before.get(d).copied().unwrap_or(0);
    assert!(
        fetched(&base) <= 1,
        "the base layer is fetched at most once for the other repositories"
    );
    let own0 = seed::write_layer(env.dir.path(), 200, 30_000)
        .unwrap()
        .digest
        .to_string();
    assert_eq!(
        fetched(&own0),
        0,
        "app-0's own layer is in the destination: not fetched again"
    );
    let own0_hex = own0.trim_start_matches("sha256:").to_owned();
    let uploads = env
        .dst
        .log()
        .lines()
        .filter(|l| l.contains("PUT /v2/shared/app-0/blobs/uploads") && l.contains(&own0_hex))
        .count();
    assert_eq!(
        uploads, 1,
        "only skopeo's upload of app-0's own layer, none of ours"
    );
    // Per unique digest: app-0's config and own layer were there and nowhere else needed
    // (its base layers were there too, but app-1 and app-2 needed them: mounted or copied,
    // depending on which repository the registry's group served first).
    let present: u64 = log
        .lines()
        .find(|l| l.contains("Blobs: "))
        .and_then(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let i = words.iter().position(|w| *w == "already")?;
            words[i - 1].parse().ok()
        })
        .unwrap_or(0);
    assert!(
        present >= 2,
        "app-0's config, base layers and own layer were skipped: {log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn mirror_within_one_registry_mounts_instead_of_copying() {
    let env = Env::new();
    let src = registry(&env.src.addr).await;
    let m = push_image(
        &src,
        env.dir.path(),
        "team/source",
        Some("1"),
        Format::Oci,
        "amd64",
        (&[300, 301], 30_000),
    )
    .await;
    let list = env.write_list("list.txt", &[format!("{}/team/source:1", env.src.addr)]);
    let out = hangar(&[
        "mirror",
        "--tls-verify=false",
        "-f",
        list.to_str().unwrap(),
        "-d",
        &env.src.addr,
        "--destination-project",
        "copy",
        "-o",
        env.path("failed.txt").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let log = env.src.log();
    let layer = seed::write_layer(env.dir.path(), 300, 30_000).unwrap();
    assert_eq!(
        env.src.blob_requests("GET", &layer.digest.to_string()),
        0,
        "no bytes fetched for a same-registry copy"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("POST /v2/copy/source/blobs/uploads/?") && l.contains("mount=")),
        "{log}"
    );
    let top = skopeo_raw(&format!("{}/copy/source:1", env.src.addr)).unwrap();
    assert_eq!(index_digests(&top), vec![m.digest.to_string()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn mirror_detects_corrupted_blobs_and_never_pushes_them() {
    let env = Env::new();
    let src = registry(&env.src.addr).await;
    // A blob made of 'Z' bytes; the proxy turns every 'Z' into 'Y' on the way out. Nothing
    // else the registry serves here contains 'Z'.
    let blob = bytes::Bytes::from(vec![b'Z'; 64 * 1024]);
    let layer = seed::push_bytes(
        &src,
        "team/corrupt",
        "application/vnd.oci.image.layer.v1.tar",
        blob,
    )
    .await
    .unwrap();
    let config = seed::push_bytes(
        &src,
        "team/corrupt",
        Format::Oci.config_type(),
        seed::config_json(&seed::platform("amd64"), &[]),
    )
    .await
    .unwrap();
    seed::push_manifest(
        &src,
        "team/corrupt",
        "1",
        Format::Oci.manifest_type(),
        seed::manifest_json(Format::Oci, &config, std::slice::from_ref(&layer)),
    )
    .await
    .unwrap();
    let proxy = proxy::start(
        "127.0.0.1:0",
        &env.src.addr,
        ProxyOptions {
            corrupt: Some((b'Z', b'Y')),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let list = env.write_list("list.txt", &[format!("{}/team/corrupt:1", proxy.addr)]);
    let out = env.mirror(&list, &["--destination-project", "team"]);
    let log = text(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(log.contains("digest-mismatch"), "{log}");
    let dst = registry(&env.dst.addr).await;
    assert!(
        !dst.blob_exists(
            "team/corrupt",
            &layer.digest,
            hangar_shared::registry::Side::Destination
        )
        .await
        .unwrap(),
        "corrupted blob never committed"
    );
    assert!(
        skopeo_raw(&format!("{}/team/corrupt:1", env.dst.addr)).is_none(),
        "no manifest tagged"
    );
    let puts = env
        .dst
        .log()
        .lines()
        .filter(|l| {
            l.contains("PUT ") && l.contains(&layer.digest.to_string()) && l.contains("\" 201 ")
        })
        .count();
    assert_eq!(puts, 0);
}

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

#[tokio::test(flavor = "multi_thread")]
async fn a_second_job_through_the_cache_fetches_nothing_and_a_damaged_entry_is_refetched() {
    let env = Env::new();
    let lines = seed_shared_repos(&env, 3).await;
    let list = env.write_list("list.txt", &lines);
    let cache = env.path("cache");
    let cache_arg = cache.to_str().unwrap().to_owned();
    let out = env.mirror(&list, &["-j", "3", "--cache", &cache_arg]);
    assert!(out.status.success(), "{}", text(&out));
    let first = blob_gets(&env.src.log());
    assert_eq!(first.len(), 8, "{first:?}");

    // A new destination, the same cache: nothing is fetched from the source.
    let second_dst = hangar_loadtest::services::RegistryProcess::start().unwrap();
    let run = |dst: &str| {
        hangar(&[
            "mirror",
            "--tls-verify=false",
            "-f",
            list.to_str().unwrap(),
            "-d",
            dst,
            "-j",
            "3",
            "--cache",
            &cache_arg,
            "-o",
            env.path("failed2.txt").to_str().unwrap(),
        ])
    };
    let out = run(&second_dst.addr);
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    assert_eq!(
        blob_gets(&env.src.log()),
        first,
        "the second job fetched from the source"
    );
    assert!(log.contains("+ 5 from the cache"), "{log}");
    for line in &lines {
        let src = skopeo_raw(line).unwrap();
        let dst = skopeo_raw(&line.replace(&env.src.addr, &second_dst.addr)).expect("copied");
        assert_eq!(index_digests(&dst), vec![sha(&src)]);
    }

    // Damage one cached blob: the next job notices, evicts it and fetches it again.
    let base = seed::write_layer(env.dir.path(), 100, 30_000)
        .unwrap()
        .digest;
    let cached = cache.join("blobs/sha256").join(base.hex());
    let mut bytes = std::fs::read(&cached).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&cached, bytes).unwrap();
    let third_dst = hangar_loadtest::services::RegistryProcess::start().unwrap();
    let out = run(&third_dst.addr);
    assert!(out.status.success(), "{}", text(&out));
    let after = blob_gets(&env.src.log());
    assert_eq!(
        after.get(&base.to_string()),
        Some(&2),
        "the damaged blob was fetched once more"
    );
    assert_eq!(
        sha(&std::fs::read(&cached).unwrap()),
        base.to_string(),
        "the cache entry was rewritten whole and right"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cache_works_on_a_real_s3_server_and_survives_it_going_away() {
    let env = Env::new();
    let mut garage = hangar_loadtest::services::GarageProcess::start()
        .expect("garage (scripts/dev-services.sh installs it)");
    let lines = seed_shared_repos(&env, 3).await;
    let list = env.write_list("list.txt", &lines);
    let run = |dst: &str, garage: &hangar_loadtest::services::GarageProcess| {
        std::process::Command::new(env!("CARGO_BIN_EXE_hangar-coord"))
            .args([
                "mirror",
                "--tls-verify=false",
                "-f",
                list.to_str().unwrap(),
                "-d",
                dst,
                "-j",
                "3",
            ])
            .args([
                "--cache",
                &garage.cache_url(),
                "-o",
                env.path("failed.txt").to_str().unwrap(),
            ])
            .env("REGISTRY_AUTH_FILE", "/nonexistent/auth.json")
            .env("AWS_ACCESS_KEY_ID", &garage.key_id)
            .env("AWS_SECRET_ACCESS_KEY", &garage.secret)
            .output()
            .unwrap()
    };
    let out = run(&env.dst.addr, &garage);
    assert!(out.status.success(), "{}", text(&out));
    let first = blob_gets(&env.src.log());
    let second = hangar_loadtest::services::RegistryProcess::start().unwrap();
    let out = run(&second.addr, &garage);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        blob_gets(&env.src.log()),
        first,
        "the second job found every blob in the bucket"
    );
    assert!(text(&out).contains("+ 5 from the cache"), "{}", text(&out));

    // The S3 server goes away for a few seconds while a job runs: retries carry it over.
    let third = hangar_loadtest::services::RegistryProcess::start().unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_hangar-coord"))
        .args([
            "mirror",
            "--tls-verify=false",
            "-f",
            list.to_str().unwrap(),
            "-d",
            &third.addr,
            "-j",
            "3",
        ])
        .args([
            "--cache",
            &garage.cache_url(),
            "-o",
            env.path("failed.txt").to_str().unwrap(),
        ])
        .env("REGISTRY_AUTH_FILE", "/nonexistent/auth.json")
        .env("AWS_ACCESS_KEY_ID", &garage.key_id)
        .env("AWS_SECRET_ACCESS_KEY", &garage.secret)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    garage.restart(std::time::Duration::from_secs(3)).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    for line in &lines {
        let src = skopeo_raw(line).unwrap();
        let dst = skopeo_raw(&line.replace(&env.src.addr, &third.addr)).expect("copied");
        assert_eq!(index_digests(&dst), vec![sha(&src)]);
    }
}

#[tokio::test]
async fn dry_run_plans_without_copying() {
    let env = Env::new();
    let lines = seed_shared_repos(&env, 3).await;
    // The destination already has the first image (and so the two shared base layers).
    let first = env.write_list("first.txt", &lines[..1]);
    assert!(env.mirror(&first, &[]).status.success());
    let list = env.write_list("all.txt", &lines);
    let out = env.mirror(&list, &["--dry-run"]);
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    // The first is found at its tag, as the copy would find it; the other two need 2
    // configs, the 2 shared base layers and 2 own layers: 6 unique blobs in one registry.
    assert!(
        log.contains("Plan: 3 images (2 to copy, 1 already present, 0 skipped, 0 failed), 2 platform manifests; 6 unique blobs"),
        "{log}"
    );
    assert!(log.contains("already present (sha256:"), "{log}");

    // The first image's tag now names an index that lists nothing: it is planned again.
    let dst = registry(&env.dst.addr).await;
    let empty = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;
    hangar_loadtest::seed::push_manifest(
        &dst,
        "shared/app-0",
        "v1",
        "application/vnd.oci.image.index.v1+json",
        bytes::Bytes::from_static(empty),
    )
    .await
    .expect("push an empty index");
    let out = env.mirror(&list, &["--dry-run"]);
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    // 3 configs, 2 shared base layers and 3 own layers: 8 unique blobs in one registry...
    assert!(
        log.contains("Plan: 3 images (3 to copy, 0 already present, 0 skipped, 0 failed), 3 platform manifests; 8 unique blobs"),
        "{log}"
    );
    // ...of which the destination holds the first image's four; 30 KB layers in 60 KB
    // volumes give one image per volume.
    assert!(
        log.contains("the destination already holds 4 of them"),
        "{log}"
    );
    assert!(log.contains("measured"), "{log}");
    for line in &lines[1..] {
        assert!(
            skopeo_raw(&line.replace(&env.src.addr, &env.dst.addr)).is_none(),
            "nothing copied"
        );
    }
    let archive = env.path("plan.zip");
    let out = hangar(&[
        "save",
        "--tls-verify=false",
        "--dry-run",
        "-f",
        list.to_str().unwrap(),
        "-d",
        archive.to_str().unwrap(),
        "--part-size",
        "60K",
    ]);
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("the archive will be about"), "{log}");
    assert!(log.contains("in 3 volume(s)"), "{log}");
    assert!(
        !archive.exists() && !env.path("plan.part1.zip").exists(),
        "nothing written"
    );
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

/// Of `repo`'s uploads in a registry's access log: how many were opened (POST 202), used
/// (PUT 201) and ended (DELETE 204).
fn uploads(log: &str, repo: &str) -> (usize, usize, usize) {
    let count = |method: &str, status: &str| {
        log.lines()
            .filter(|l| l.contains(&format!("\"{method} /v2/{repo}/blobs/uploads/")))
            .filter(|l| l.contains(&format!("\" {status} ")))
            .count()
    };
    (
        count("POST", "202"),
        count("PUT", "201"),
        count("DELETE", "204"),
    )
}

/// A copy that fails after the destination opened its upload (the source has lost a
/// layer) ends the upload its look opened: every upload opened and not used by a PUT gets
/// a DELETE the registry accepts.
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_copy_ends_the_upload_its_look_opened() {
    let env = Env::new();
    let src = registry(&env.src.addr).await;
    push_image(
        &src,
        env.dir.path(),
        "team/lost",
        Some("v1"),
        Format::Docker,
        "amd64",
        (&[300, 301], 20_000),
    )
    .await;
    let lost = seed::write_layer(env.dir.path(), 301, 20_000)
        .unwrap()
        .digest
        .to_string();
    let link = env.src.storage().join(format!(
        "data/docker/registry/v2/repositories/team/lost/_layers/sha256/{}/link",
        lost.trim_start_matches("sha256:")
    ));
    std::fs::remove_file(&link).expect("the layer's link in the source repository");
    let list = env.write_list("list.txt", &[format!("{}/team/lost:v1", env.src.addr)]);
    let out = env.mirror(&list, &[]);
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("Images: 0 copied, 0 already present, 1 failed"),
        "{said}"
    );
    let log = env.dst.log();
    let (opened, used, ended) = uploads(&log, "team/lost");
    assert!(opened > used, "the lost layer's upload was opened: {log}");
    assert_eq!(ended, opened - used, "every unused upload ended: {log}");
}

/// A copy dropped at its task's timeout (`--timeout`) while its source has not answered yet
/// ends the upload its look opened at the destination: every upload opened and not used got
/// a DELETE the registry accepted, and none is left open in its storage when the mirror
/// has given up.
/// (One dropped mid-PUT is not: distribution refuses to end an upload whose bytes no
/// longer match the state its location carries, and keeps it until its purge.)
#[tokio::test(flavor = "multi_thread")]
async fn a_copy_dropped_at_its_timeout_leaves_no_upload_behind() {
    let env = Env::new();
    let src = registry(&env.src.addr).await;
    push_image(
        &src,
        env.dir.path(),
        "team/slow",
        Some("v1"),
        Format::Docker,
        "amd64",
        (&[310], 50_000),
    )
    .await;
    // The source's answers once the planner's four requests (`/v2/`, the tag, the config,
    // the tag listing for attachments) are made and a fifth is, 3 s late: the layer's copy
    // is dropped at 2 s with its upload open and nothing sent into it.
    const PLANNING_REQUESTS: u64 = 4;
    let slow = proxy::start(
        "127.0.0.1:0",
        &env.src.addr,
        ProxyOptions {
            slow_from: Some((PLANNING_REQUESTS + 1, std::time::Duration::from_secs(3))),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let list = env.write_list("list.txt", &[format!("{}/team/slow:v1", slow.addr)]);
    let out = tokio::task::block_in_place(|| env.mirror(&list, &["--timeout", "2s"]));
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("timed out after 2s"), "{said}");
    let log = env.dst.log();
    let (opened, used, ended) = uploads(&log, "team/slow");
    assert!(opened > used, "the layer's upload was opened: {log}");
    assert_eq!(ended, opened - used, "every unused upload was ended: {log}");
    // A cancelled upload keeps only its hash state's small file in distribution's storage;
    // its `data` (what was sent) and `startedat` go.
    let uploads = env
        .dst
        .storage()
        .join("data/docker/registry/v2/repositories/team/slow/_uploads");
    let kept: Vec<_> = std::fs::read_dir(&uploads)
        .map(|d| d.flatten().map(|e| e.path().join("startedat")).collect())
        .unwrap_or_else(|_| Vec::new())
        .into_iter()
        .filter(|p: &std::path::PathBuf| p.exists())
        .collect();
    assert!(kept.is_empty(), "uploads left open: {kept:?}");
}
