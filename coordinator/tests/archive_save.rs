//! What `save` itself promises: images written as they complete, a registry's budget
//! kept, a config read once, a damaged cache entry fetched again.

mod common;

use common::archive::*;
use common::*;
use hangar_loadtest::seed::{self, Format};

#[tokio::test]
async fn a_damaged_cached_blob_is_evicted_and_fetched_again() {
    let env = Env::new();
    let src = registry(&env.src.addr).await;
    push_image(
        &src,
        env.dir.path(),
        "library/c",
        Some("1"),
        Format::Docker,
        "amd64",
        (&[130], 80_000),
    )
    .await;
    let list = env.write_list("l.txt", &[format!("{}/library/c:1", env.src.addr)]);
    let cache = env.path("cache");
    let first = env.path("first.zip");
    assert!(
        save(&env, &list, &first, &["--cache", &s(&cache)])
            .status
            .success()
    );
    let layer = seed::write_layer(env.dir.path(), 130, 80_000)
        .expect("layer")
        .digest;
    let cached = cache.join("blobs/sha256").join(layer.hex());
    let mut bytes = std::fs::read(&cached).expect("cached layer");
    bytes[1000] ^= 0xff;
    std::fs::write(&cached, &bytes).expect("damage it");
    let gets_before = blob_gets(&env.src.log())
        .get(&layer.to_string())
        .copied()
        .unwrap_or(0);
    let second = env.path("second.zip");
    let out = save(&env, &list, &second, &["--cache", &s(&cache)]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("is damaged"), "{}", text(&out));
    // The first attempt's failure is not the run's: no failed list is left behind.
    assert!(!env.path("save-failed.txt").exists(), "{}", text(&out));
    let gets_after = blob_gets(&env.src.log())
        .get(&layer.to_string())
        .copied()
        .unwrap_or(0);
    assert_eq!(gets_after, gets_before + 1, "fetched again, once");
    let v = hangar(&["archive", "verify", &s(&second)]);
    assert!(v.status.success(), "{}", text(&v));
}

/// A shared bucket is everyone's to write who holds its keys: a layer replaced together
/// with its sidecar passes the sidecar's size and CRC-32. `save` through such a cache
/// checks each blob against its digest, evicts the forged one and fetches it again; the
/// archive holds the real layer.
#[tokio::test]
async fn a_layer_forged_with_its_sidecar_in_a_shared_bucket_is_not_saved() {
    let env = Env::new();
    let garage = hangar_loadtest::services::GarageProcess::start()
        .expect("garage (scripts/dev-services.sh installs it)");
    let src = registry(&env.src.addr).await;
    push_image(
        &src,
        env.dir.path(),
        "library/f",
        Some("1"),
        Format::Docker,
        "amd64",
        (&[140], 60_000),
    )
    .await;
    let list = env.write_list("l.txt", &[format!("{}/library/f:1", env.src.addr)]);
    let with_bucket = |args: &[String]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_hangar-coord"))
            .args(args)
            .env("REGISTRY_AUTH_FILE", "/nonexistent/auth.json")
            .env("AWS_ACCESS_KEY_ID", &garage.key_id)
            .env("AWS_SECRET_ACCESS_KEY", &garage.secret)
            .output()
            .expect("hangar-coord")
    };
    let save_via_bucket = |archive: &std::path::Path| {
        with_bucket(&[
            "save".into(),
            "--tls-verify=false".into(),
            "-y".into(),
            "-f".into(),
            s(&list),
            "-d".into(),
            s(archive),
            "-o".into(),
            s(&env.path("save-failed.txt")),
            "--cache".into(),
            garage.cache_url(),
        ])
    };
    let out = save_via_bucket(&env.path("first.zip"));
    assert!(out.status.success(), "{}", text(&out));

    // Another holder of the keys rewrites the layer and its sidecar together (the sidecar
    // made the way the cache makes one, for the forged bytes).
    let layer = seed::write_layer(env.dir.path(), 140, 60_000).expect("layer");
    let forged = vec![7u8; layer.size as usize];
    let layer = layer.digest;
    let local = hangar_shared::cache::BlobCache::open(&s(&env.path("forger"))).unwrap();
    let desc = hangar_shared::manifest::Descriptor {
        media_type: "application/octet-stream".into(),
        digest: hangar_shared::digest::Digest::of(&forged),
        size: forged.len() as u64,
        urls: None,
        annotations: None,
        platform: None,
    };
    let once = futures_util::stream::iter([Ok(bytes::Bytes::from(forged.clone()))]);
    local
        .fill(&desc, Box::pin(once))
        .await
        .expect("the forger's sidecar");
    let forged_file = env.path("forged.bin");
    std::fs::write(&forged_file, &forged).unwrap();
    let meta_file = env
        .path("forger/blobs/sha256")
        .join(format!("{}.meta", desc.digest.hex()));
    for (file, key) in [
        (&forged_file, format!("blobs/sha256/{}", layer.hex())),
        (&meta_file, format!("blobs/sha256/{}.meta", layer.hex())),
    ] {
        let location = garage.cache_url().replacen(
            &format!("s3://{}", garage.bucket),
            &format!("s3://{}/{key}", garage.bucket),
            1,
        );
        // Built beside this package's binaries (`cargo build --workspace`).
        let loadtest = std::path::PathBuf::from(env!("CARGO_BIN_EXE_hangar-coord"))
            .with_file_name("hangar-loadtest");
        let put = std::process::Command::new(loadtest)
            .args(["put-object", &location, &s(file)])
            .env("AWS_ACCESS_KEY_ID", &garage.key_id)
            .env("AWS_SECRET_ACCESS_KEY", &garage.secret)
            .output()
            .expect("put-object");
        assert!(put.status.success(), "{}", text(&put));
    }

    let gets_before = blob_gets(&env.src.log())
        .get(&layer.to_string())
        .copied()
        .unwrap_or(0);
    let second = env.path("second.zip");
    let out = save_via_bucket(&second);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("evicted"), "{}", text(&out));
    let gets_after = blob_gets(&env.src.log())
        .get(&layer.to_string())
        .copied()
        .unwrap_or(0);
    assert_eq!(gets_after, gets_before + 1, "fetched again, once");
    let v = hangar(&["archive", "verify", &s(&second)]);
    assert!(v.status.success(), "{}", text(&v));
}

/// `save` writes each image into the zip as soon as it is gathered: with one image behind a
/// slow link, the fast one is in the archive's temporary file seconds before the save ends
/// (an assembler that waited for everything would write it all in the last moment).
#[tokio::test]
async fn save_writes_each_image_as_it_completes() {
    let env = Env::new();
    let src = registry(&env.src.addr).await;
    // Larger than the writer's 1 MiB buffer, so the file shows it.
    let size = 3_000_000;
    for (repo, seed) in [("fast/a", 71), ("slow/b", 72)] {
        push_image(
            &src,
            env.dir.path(),
            repo,
            Some("1"),
            Format::Oci,
            "amd64",
            (&[seed], size),
        )
        .await;
    }
    let slow = hangar_loadtest::proxy::start(
        "127.0.0.1:0",
        &env.src.addr,
        hangar_loadtest::proxy::ProxyOptions {
            rate_limit: Some(400_000),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let list = env.write_list(
        "list.txt",
        &[
            format!("{}/fast/a:1", env.src.addr),
            format!("{}/slow/b:1", slow.addr),
        ],
    );
    let archive = env.path("out.zip");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_hangar-coord"))
        .args(["save", "--tls-verify=false", "-y", "-f"])
        .arg(&list)
        .arg("-d")
        .arg(&archive)
        .arg("-o")
        .arg(env.path("save-failed.txt"))
        .env("REGISTRY_AUTH_FILE", "/nonexistent/hangar-test-auth.json")
        .stdout(std::fs::File::create(env.path("save.log")).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The writer's temporary file: `.out.zip.partial-<pid>-<random>`.
    let prefix = format!(".out.zip.partial-{}-", child.id());
    let dir = env.path("");
    let partial_size = || {
        std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .find(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .and_then(|e| e.metadata().ok())
            .map_or(0, |m| m.len())
    };
    let mut first_image_in = None;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        // All but the writer's last buffered MiB of the fast image's layer.
        let written = partial_size();
        if first_image_in.is_none() && written >= size - (1 << 20) {
            first_image_in = Some(std::time::Instant::now());
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let ended = std::time::Instant::now();
    assert!(status.success());
    let first = first_image_in.expect("the fast image went into the archive before the end");
    assert!(
        ended - first > std::time::Duration::from_secs(2),
        "the fast image was written {:?} before the end: {}",
        ended - first,
        std::fs::read_to_string(env.path("save.log")).unwrap_or_default()
    );
    let names = zip_names(&archive);
    assert_eq!(names.last().map(String::as_str), Some("index.json"));
    assert_eq!(ls_images(&archive).len(), 2, "{names:?}");
}

/// `save --rate-limit` keeps to a registry's budget: behind a proxy answering 429 beyond 15
/// requests a second (which the same save trips without a budget, as the mirror test
/// shows), a budget of 5/s gets no 429 and the archive holds every image.
#[tokio::test(flavor = "multi_thread")]
async fn save_keeps_to_a_registrys_budget() {
    let env = Env::new();
    let lines = seed_shared_repos(&env, 6).await;
    let (proxy, through) = burst_limited_source(&env, &lines).await;
    let list = env.write_list("list.txt", &through);
    let archive = env.path("budget.zip");
    let budget = format!("{}=5", proxy.addr);
    let out = save(&env, &list, &archive, &["-j", "6", "--rate-limit", &budget]);
    assert!(out.status.success(), "{}", text(&out));
    let throttled = proxy.throttled.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(throttled, 0, "{}", text(&out));
    assert_eq!(ls_images(&archive).len(), 6);
}

/// One config named by an index's platform (left to the streamed writer) and by a single
/// image (carried inline by the planner), listed in either order: the save reads it from
/// where it is, and both images load. (Which of the two the tracker meets first is the
/// planners' race; the writer must not depend on it.)
#[tokio::test(flavor = "multi_thread")]
async fn a_config_both_inline_and_streamed_is_saved_once() {
    let env = Env::new();
    let src = registry(&env.src.addr).await;
    let single = push_image(
        &src,
        env.dir.path(),
        "lib/app",
        Some("single"),
        Format::Docker,
        "amd64",
        (&[41, 42], 20_000),
    )
    .await;
    push_index(
        &src,
        "lib/app",
        "multi",
        Format::Docker,
        &[(single.clone(), seed::platform("amd64"), None)],
    )
    .await;
    for (n, order) in [["multi", "single"], ["single", "multi"]]
        .iter()
        .enumerate()
    {
        let lines: Vec<String> = order
            .iter()
            .map(|t| format!("{}/lib/app:{t}", env.src.addr))
            .collect();
        let list = env.write_list(&format!("list{n}.txt"), &lines);
        let archive = env.path(&format!("both{n}.zip"));
        let out = save(&env, &list, &archive, &["-j", "2"]);
        assert!(out.status.success(), "{order:?}: {}", text(&out));
        let out = load(&env, &archive, &[]);
        assert!(out.status.success(), "{order:?}: {}", text(&out));
        for tag in order {
            let top = skopeo_raw(&format!("{}/lib/app:{tag}", env.dst.addr)).expect("loaded");
            assert_eq!(index_digests(&top), vec![sha(&single.bytes)], "{tag}");
        }
    }
}

/// A layer its source no longer has fails its image, not the archive (as Hangar's save
/// does): the other image is saved and loads, the archive lists only it, the failed list
/// only the lost one, and each is said as it is.
#[tokio::test(flavor = "multi_thread")]
async fn a_layer_the_source_lost_fails_its_image_and_the_rest_is_saved() {
    let env = Env::new();
    let hostile = common::hostile::start_hostile().await;
    let src = registry(&env.src.addr).await;
    push_image(
        &src,
        env.dir.path(),
        "team/kept",
        Some("1"),
        Format::Docker,
        "amd64",
        (&[61, 62], 20_000),
    )
    .await;
    let kept = format!("{}/team/kept:1", env.src.addr);
    let gone = format!("{}/gone/app:1", hostile.addr);
    let list = env.write_list("list.txt", &[gone.clone(), kept.clone()]);
    let archive = env.path("partial.zip");
    let out = save(&env, &list, &archive, &[]);
    let log = text(&out);
    assert!(!out.status.success(), "{log}");
    assert!(
        log.contains(&format!("Failed to save image [{gone}]")),
        "{log}"
    );
    assert!(log.contains(&format!("Saved image [{kept}]")), "{log}");
    assert!(!log.contains(&format!("Saved image [{gone}]")), "{log}");
    let failed = std::fs::read_to_string(env.path("save-failed.txt")).expect("failed list");
    assert_eq!(failed.lines().collect::<Vec<_>>(), vec![gone.as_str()]);
    assert_eq!(ls_images(&archive), vec![kept.clone()]);
    let loaded = load(&env, &archive, &[]);
    assert!(loaded.status.success(), "{}", text(&loaded));
    assert!(tag_exists(&format!("{}/team/kept:1", env.dst.addr)));
}

/// With `--part-size` the volumes are written once every image is gathered. A Ctrl-C
/// then (here while they are read from a cache behind a slow link) stops the writing at
/// once, and no volume nor temporary file is left: by then the copy's own listener is gone
/// and Ctrl-C no longer ends the process by itself.
#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_while_the_volumes_are_written_stops_them() {
    let env = Env::new();
    let garage = hangar_loadtest::services::GarageProcess::start()
        .expect("garage (scripts/dev-services.sh installs it)");
    let src = registry(&env.src.addr).await;
    push_image(
        &src,
        env.dir.path(),
        "team/big",
        Some("1"),
        Format::Docker,
        "amd64",
        (&[151], 4_000_000),
    )
    .await;
    let upstream = garage.endpoint.trim_start_matches("http://").to_owned();
    let slow = hangar_loadtest::proxy::start(
        "127.0.0.1:0",
        &upstream,
        hangar_loadtest::proxy::ProxyOptions {
            rate_limit: Some(500_000),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let cache = garage
        .cache_url()
        .replace(&garage.endpoint, &format!("http://{}", slow.addr));
    let list = env.write_list("list.txt", &[format!("{}/team/big:1", env.src.addr)]);
    let out_dir = env.path("out");
    std::fs::create_dir(&out_dir).unwrap();
    let log = env.path("save.log");
    let out = std::fs::File::create(&log).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_hangar-coord"))
        .args([
            "save",
            "--tls-verify=false",
            "-y",
            "--part-size",
            "100M",
            "-f",
        ])
        .arg(&list)
        .arg("-d")
        .arg(out_dir.join("vol.zip"))
        .arg("-o")
        .arg(env.path("save-failed.txt"))
        .args(["--cache", &cache])
        .env("REGISTRY_AUTH_FILE", "/nonexistent/hangar-test-auth.json")
        .env("AWS_ACCESS_KEY_ID", &garage.key_id)
        .env("AWS_SECRET_ACCESS_KEY", &garage.secret)
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    // The copy's summary is the last line before the volumes are written.
    let started = std::time::Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("Blobs: ")
    {
        assert!(child.try_wait().unwrap().is_none(), "ended before writing");
        assert!(started.elapsed() < std::time::Duration::from_secs(60));
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let sent = std::time::Instant::now();
    let int = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(int.success());
    let status = child.wait().unwrap();
    let took = sent.elapsed();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(status.code(), Some(1), "{text}");
    assert!(text.contains("interrupted while"), "{text}");
    // Reading the 4 MB layer through the link takes 8 s.
    assert!(took < std::time::Duration::from_secs(3), "{took:?}: {text}");
    let left: Vec<_> = std::fs::read_dir(&out_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
