//! `mirror` through the blob cache, on disk and on a real S3 server.

mod common;

use common::*;
use hangar_loadtest::seed;

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

    // A destination without one image's project (Harbor answers its uploads 404
    // NAME_UNKNOWN): that image fails, and the cache, which did nothing wrong, keeps its
    // entries: nothing is evicted or fetched again.
    let fourth_dst = hangar_loadtest::services::RegistryProcess::start().unwrap();
    let no_project = hangar_loadtest::proxy::start(
        "127.0.0.1:0",
        &fourth_dst.addr,
        hangar_loadtest::proxy::ProxyOptions {
            refuse_uploads_to: Some("shared/app-0"),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let before = blob_gets(&env.src.log());
    let out = run(&no_project.addr);
    let log = text(&out);
    assert!(!out.status.success(), "{log}");
    assert!(
        log.contains("shared/app-0") && log.contains("NAME_UNKNOWN"),
        "{log}"
    );
    assert!(!log.contains("is damaged"), "{log}");
    assert_eq!(blob_gets(&env.src.log()), before, "nothing fetched again");
    assert_eq!(
        sha(&std::fs::read(&cached).unwrap()),
        base.to_string(),
        "the shared base layer is still cached"
    );
    for line in &lines[1..] {
        let dst = line.replace(&env.src.addr, &fourth_dst.addr);
        assert!(skopeo_raw(&dst).is_some(), "{dst} copied: {log}");
    }
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
