//! Archives against real registries: save, ls, validate, load, sync, merge, export,
//! volumes and init, each checked against the registries it reads and writes.

mod common;

use common::archive::*;
use common::*;
use hangar_loadtest::seed::{self, Format};

#[tokio::test]
async fn save_ls_validate_load_validate_preserves_platform_digests() {
    let env = Env::new();
    let src = registry(&env.src.addr).await;
    let (_, amd, arm) =
        push_multiarch(&src, env.dir.path(), "library/multi", "v1", Format::Oci, 10).await;
    let single = push_image(
        &src,
        env.dir.path(),
        "team/single",
        Some("2.0"),
        Format::Docker,
        "amd64",
        (&[10, 30], 50_000),
    )
    .await;
    let list = env.write_list(
        "list.txt",
        &[
            format!("{}/library/multi:v1", env.src.addr),
            format!("{}/team/single:2.0", env.src.addr),
        ],
    );
    let archive = env.path("out.zip");
    let out = save(&env, &list, &archive, &["-j", "2"]);
    assert!(out.status.success(), "save: {}", text(&out));
    // Each image is said saved once, when its layers are in the zip.
    for image in ["library/multi:v1", "team/single:2.0"] {
        let said = format!(
            "Saved image [{}/{image}] => [{}]",
            env.src.addr,
            s(&archive)
        );
        assert_eq!(
            text(&out).matches(&said).count(),
            1,
            "{said}\n{}",
            text(&out)
        );
    }

    // Hangar's layout, stored entries, every blob once, index last.
    let names = zip_names(&archive);
    assert_eq!(names.last().map(String::as_str), Some("index.json"));
    for m in [&amd, &arm, &single] {
        let hex = m.digest.hex();
        assert!(names.contains(&format!("{hex}/index.json")), "{names:?}");
        assert!(names.contains(&format!("{hex}/oci-layout")), "{names:?}");
        assert!(names.contains(&format!("share/sha256/{hex}")), "{names:?}");
    }
    let mut unique = names.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), names.len(), "no entry twice: {names:?}");
    let shared_layer = names
        .iter()
        .filter(|n| n.starts_with("share/sha256/"))
        .count();
    // 3 manifests + 3 configs + layers 10, 11, 12, 30 (10 shared by all three).
    assert_eq!(shared_layer, 10, "{names:?}");

    let ls = hangar(&["archive", "ls", &s(&archive)]);
    assert!(ls.status.success(), "{}", text(&ls));
    assert!(
        text(&ls).contains("[INFO] Created time: 20"),
        "{}",
        text(&ls)
    );
    let hidden = hangar(&["--hide-log-time", "archive", "ls", &s(&archive)]);
    let hidden = String::from_utf8_lossy(&hidden.stdout).to_string();
    assert!(
        hidden.starts_with("- [INFO] Index version: v1.2.0\n- [INFO] Images:\n"),
        "Hangar leaves the created time out with --hide-log-time:\n{hidden}"
    );
    let rows: Vec<String> = String::from_utf8_lossy(&ls.stdout)
        .lines()
        .filter(|l| l.contains(" | "))
        .map(str::to_owned)
        .collect();
    assert_eq!(rows.len(), 2, "{rows:?}");
    let multi = rows
        .iter()
        .find(|r| r.contains("/library/multi:v1"))
        .expect("multi row");
    assert!(
        multi.contains("amd64,arm64 | linux |") || multi.contains("arm64,amd64 | linux |"),
        "{multi}"
    );
    // Layers 10, 11, 12 are 50,000-byte tar.gz files: K units.
    assert!(multi.trim_end().ends_with('K'), "{multi}");
    let only = hangar(&["archive", "ls", "--image-only", &s(&archive)]);
    let only = String::from_utf8_lossy(&only.stdout).to_string();
    assert!(
        only.contains(&format!("{}/team/single:2.0", env.src.addr)),
        "{only}"
    );

    let v = hangar(&[
        "save",
        "validate",
        "--tls-verify=false",
        "-f",
        &s(&list),
        "-d",
        &s(&archive),
        "-o",
        &s(&env.path("v.txt")),
    ]);
    assert!(v.status.success(), "save validate: {}", text(&v));
    assert_eq!(text(&v).matches("PASS").count(), 2, "{}", text(&v));

    let out = load(&env, &archive, &["-j", "2"]);
    assert!(out.status.success(), "load: {}", text(&out));
    // load -f skips a mirror-format line with Hangar's warning, and loads the rest.
    let part = env.write_list(
        "part.txt",
        &[
            "a.io/x b.io/x 1".to_owned(),
            format!("{}/team/single:2.0", env.src.addr),
        ],
    );
    let out = load(&env, &archive, &["-f", &s(&part), "--project", "part"]);
    assert!(out.status.success(), "load -f: {}", text(&out));
    assert!(
        text(&out)
            .contains("[WARN] [IMG:1] Ignore image list line \"a.io/x b.io/x 1\": invalid format"),
        "{}",
        text(&out)
    );
    assert!(skopeo_raw(&format!("{}/part/single:2.0", env.dst.addr)).is_some());
    let v = hangar(&[
        "load",
        "validate",
        "--tls-verify=false",
        "-s",
        &s(&archive),
        "-d",
        &env.dst.addr,
    ]);
    assert!(v.status.success(), "load validate: {}", text(&v));

    // skopeo, independently: platform digests preserved, the index lists both.
    let raw = skopeo_raw(&format!("{}/library/multi:v1", env.dst.addr)).expect("loaded index");
    let digests = index_digests(&raw);
    assert!(digests.contains(&amd.digest.to_string()), "{digests:?}");
    assert!(digests.contains(&arm.digest.to_string()), "{digests:?}");
    let amd_raw = skopeo_raw(&format!("{}/library/multi@{}", env.dst.addr, amd.digest))
        .expect("amd64 manifest");
    assert_eq!(sha(&amd_raw), amd.digest.to_string());
    let single_raw = skopeo_raw(&format!("{}/team/single:2.0", env.dst.addr)).expect("single");
    assert!(
        index_digests(&single_raw).contains(&single.digest.to_string()),
        "the single image is reachable through the rebuilt index"
    );
    let copied = std::process::Command::new("skopeo")
        .args(["copy", "--src-tls-verify=false", "--override-arch", "amd64"])
        .arg(format!("docker://{}/team/single:2.0", env.dst.addr))
        .arg(format!("dir:{}", s(&env.path("skopeo-dir"))))
        .output()
        .expect("skopeo");
    assert!(
        copied.status.success(),
        "skopeo pulls the loaded image: {}",
        text(&copied)
    );
    let _ = seed::platform("amd64");
}

#[tokio::test]
async fn sync_appends_and_everything_loads() {
    let env = Env::new();
    let src = registry(&env.src.addr).await;
    let a = push_image(
        &src,
        env.dir.path(),
        "library/a",
        Some("1"),
        Format::Docker,
        "amd64",
        (&[1, 2], 20_000),
    )
    .await;
    let b = push_image(
        &src,
        env.dir.path(),
        "library/b",
        Some("1"),
        Format::Oci,
        "amd64",
        (&[1, 3], 20_000),
    )
    .await;
    let archive = env.path("s.zip");
    let first = env.write_list("first.txt", &[format!("{}/library/a:1", env.src.addr)]);
    assert!(save(&env, &first, &archive, &[]).status.success());
    let second = env.write_list("second.txt", &[format!("{}/library/b:1", env.src.addr)]);
    let out = hangar(&[
        "sync",
        "--tls-verify=false",
        "-f",
        &s(&second),
        "-d",
        &s(&archive),
        "-o",
        &s(&env.path("sync-failed.txt")),
    ]);
    assert!(out.status.success(), "sync: {}", text(&out));
    assert_eq!(
        ls_images(&archive),
        vec![
            format!("{}/library/a:1", env.src.addr),
            format!("{}/library/b:1", env.src.addr)
        ]
    );
    let names = zip_names(&archive);
    assert_eq!(
        names.iter().filter(|n| *n == "index.json").count(),
        1,
        "{names:?}"
    );
    assert_eq!(names.last().map(String::as_str), Some("index.json"));
    let v = hangar(&[
        "sync",
        "validate",
        "--tls-verify=false",
        "-f",
        &s(&second),
        "-d",
        &s(&archive),
        "-o",
        &s(&env.path("v.txt")),
    ]);
    assert!(v.status.success(), "sync validate: {}", text(&v));
    let out = load(&env, &archive, &[]);
    assert!(out.status.success(), "load: {}", text(&out));
    for (repo, m) in [("library/a", &a), ("library/b", &b)] {
        let raw = skopeo_raw(&format!("{}/{repo}:1", env.dst.addr)).expect("loaded");
        assert!(
            index_digests(&raw).contains(&m.digest.to_string()),
            "{repo}"
        );
    }
    let verify = hangar(&["archive", "verify", &s(&archive)]);
    assert!(verify.status.success(), "{}", text(&verify));

    // sync needs an existing archive.
    let out = hangar(&["sync", "-f", &s(&second), "-d", &s(&env.path("nope.zip"))]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("nope.zip does not exist"),
        "{}",
        text(&out)
    );
}

#[tokio::test]
async fn single_arch_archives_loaded_one_after_another_merge_into_one_index() {
    let env = Env::new();
    let src = registry(&env.src.addr).await;
    let (_, amd, arm) =
        push_multiarch(&src, env.dir.path(), "library/app", "v2", Format::Oci, 40).await;
    let list = env.write_list("l.txt", &[format!("{}/library/app:v2", env.src.addr)]);
    let (amd_zip, arm_zip) = (env.path("amd.zip"), env.path("arm.zip"));
    assert!(
        save(&env, &list, &amd_zip, &["-a", "amd64"])
            .status
            .success()
    );
    assert!(
        save(&env, &list, &arm_zip, &["-a", "arm64"])
            .status
            .success()
    );
    assert!(load(&env, &amd_zip, &[]).status.success());
    let raw = skopeo_raw(&format!("{}/library/app:v2", env.dst.addr)).expect("after amd64");
    assert_eq!(index_digests(&raw), vec![amd.digest.to_string()]);
    let out = load(&env, &arm_zip, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let raw = skopeo_raw(&format!("{}/library/app:v2", env.dst.addr)).expect("after arm64");
    let digests = index_digests(&raw);
    assert_eq!(digests.len(), 2, "{digests:?}");
    assert!(digests.contains(&amd.digest.to_string()) && digests.contains(&arm.digest.to_string()));

    // --overwrite replaces instead of merging.
    let out = load(&env, &amd_zip, &["--overwrite"]);
    assert!(out.status.success(), "{}", text(&out));
    let raw = skopeo_raw(&format!("{}/library/app:v2", env.dst.addr)).expect("overwritten");
    assert_eq!(index_digests(&raw), vec![amd.digest.to_string()]);
}

#[tokio::test]
async fn merge_and_export() {
    let env = Env::new();
    let src = registry(&env.src.addr).await;
    for (repo, seed_) in [("library/m1", 60), ("library/m2", 61), ("library/m3", 62)] {
        push_image(
            &src,
            env.dir.path(),
            repo,
            Some("1"),
            Format::Docker,
            "amd64",
            (&[59, seed_], 10_000),
        )
        .await;
    }
    let line = |r: &str| format!("{}/library/{r}:1", env.src.addr);
    let (x, y) = (env.path("x.zip"), env.path("y.zip"));
    assert!(
        save(
            &env,
            &env.write_list("x.txt", &[line("m1"), line("m2")]),
            &x,
            &[]
        )
        .status
        .success()
    );
    assert!(
        save(&env, &env.write_list("y.txt", &[line("m3")]), &y, &[])
            .status
            .success()
    );
    let merged = env.path("merged.zip");
    let out = hangar(&[
        "archive",
        "merge",
        "-f",
        &s(&x),
        "-f",
        &s(&y),
        "-o",
        &s(&merged),
    ]);
    assert!(out.status.success(), "merge: {}", text(&out));
    // x's images (in the order they finished saving), then y's.
    let mut listed = ls_images(&merged);
    listed[..2].sort();
    assert_eq!(listed, vec![line("m1"), line("m2"), line("m3")]);
    let names = zip_names(&merged);
    let shared = format!(
        "share/sha256/{}",
        seed::write_layer(env.dir.path(), 59, 10_000)
            .expect("layer")
            .digest
            .hex()
    );
    assert_eq!(
        names.iter().filter(|n| **n == shared).count(),
        1,
        "the shared layer once"
    );
    assert!(hangar(&["archive", "verify", &s(&merged)]).status.success());
    // Hangar's -f is a string slice: a comma list works as well.
    let commas = env.path("merged-commas.zip");
    let out = hangar(&[
        "archive",
        "merge",
        "-f",
        &format!("{},{}", s(&x), s(&y)),
        "-o",
        &s(&commas),
    ]);
    assert!(out.status.success(), "merge -f a,b: {}", text(&out));
    let mut listed = ls_images(&commas);
    listed[..2].sort();
    assert_eq!(listed, vec![line("m1"), line("m2"), line("m3")]);

    // A mirror-format line is skipped with Hangar's warning, not failed.
    let export_list = env.write_list(
        "export.txt",
        &[
            line("m3"),
            line("m1"),
            "a.io/x b.io/x 1".to_owned(),
            line("nothere"),
        ],
    );
    let exported = env.path("exported.zip");
    let failed = env.path("export-failed.txt");
    let out = hangar(&[
        "archive",
        "export",
        "-f",
        &s(&export_list),
        "-s",
        &s(&merged),
        "-d",
        &s(&exported),
        "--failed",
        &s(&failed),
    ]);
    assert!(!out.status.success(), "a missing image fails the export");
    assert!(
        text(&out).contains("Ignore image list line \"a.io/x b.io/x 1\": invalid format"),
        "{}",
        text(&out)
    );
    assert!(
        text(&out).contains("[FATA] some images failed to export"),
        "{}",
        text(&out)
    );
    assert_eq!(
        std::fs::read_to_string(&failed)
            .expect("failed list")
            .trim(),
        line("nothere")
    );
    assert_eq!(ls_images(&exported), vec![line("m3"), line("m1")]);
    assert!(
        hangar(&["archive", "verify", &s(&exported)])
            .status
            .success()
    );

    // merge refuses to overwrite without -y when stdin says no.
    let out = hangar(&[
        "archive",
        "merge",
        "-f",
        &s(&x),
        "-f",
        &s(&y),
        "-o",
        &s(&merged),
    ]);
    assert!(!out.status.success(), "{}", text(&out));
}

#[tokio::test]
async fn volumes_are_complete_archives_and_load_in_reverse_order() {
    let env = Env::new();
    let src = registry(&env.src.addr).await;
    let mut lines = Vec::new();
    let mut digests = Vec::new();
    for i in 0..4u64 {
        let repo = format!("vol/img{i}");
        let m = push_image(
            &src,
            env.dir.path(),
            &repo,
            Some("1"),
            Format::Docker,
            "amd64",
            (&[70 + i], 300_000),
        )
        .await;
        lines.push(format!("{}/{repo}:1", env.src.addr));
        digests.push((repo, m.digest));
    }
    let list = env.write_list("l.txt", &lines);
    let archive = env.path("vol.zip");
    let out = save(&env, &list, &archive, &["--part-size", "700K"]);
    assert!(out.status.success(), "{}", text(&out));
    let volumes: Vec<_> = (1..=2)
        .map(|n| env.path(&format!("vol.part{n}.zip")))
        .collect();
    assert!(
        !env.path("vol.part3.zip").exists() && !archive.exists(),
        "{}",
        text(&out)
    );
    let mut seen = Vec::new();
    for v in &volumes {
        let images = ls_images(v);
        assert_eq!(
            images.len(),
            2,
            "two 300 KB images per 700 KB volume: {images:?}"
        );
        seen.extend(images);
        assert!(hangar(&["archive", "verify", &s(v)]).status.success());
        assert!(std::fs::metadata(v).expect("volume").len() < 700 * 1024 + 64 * 1024);
    }
    seen.sort();
    assert_eq!(seen, lines, "every image in exactly one volume");
    for v in volumes.iter().rev() {
        let out = load(&env, v, &[]);
        assert!(out.status.success(), "{}", text(&out));
    }
    for (repo, d) in digests {
        let raw = skopeo_raw(&format!("{}/{repo}:1", env.dst.addr)).expect("loaded");
        assert_eq!(index_digests(&raw), vec![d.to_string()]);
    }
    // One image bigger than a volume: said so, and it gets a volume of its own.
    let out = save(&env, &list, &env.path("tiny.zip"), &["--part-size", "100K"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("bigger than the volume size"),
        "{}",
        text(&out)
    );
    assert!(env.path("tiny.part4.zip").exists());
}

#[test]
fn init_writes_an_empty_index_and_ls_json_prints_the_index() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = dir.path().join("a.zip");
    let out = hangar(&["archive", "init", &s(&a)]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(zip_names(&a), vec!["index.json".to_owned()]);
    let out = hangar(&["archive", "ls", "--json", &s(&a)]);
    assert!(out.status.success(), "{}", text(&out));
    let json = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(!json.ends_with('\n'), "no trailing newline, as Hangar");
    let index: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(index["version"], "v1.2.0");
    assert!(
        index.get("list").is_none(),
        "an empty list is omitted: {json}"
    );
    assert!(
        json.contains("\n  \"version\": \"v1.2.0\""),
        "2-space indent: {json}"
    );
    // Go's writer (Hangar's) puts each entry's sizes in a data descriptor: flag bit 3 of
    // the local header.
    let bytes = std::fs::read(&a).unwrap();
    assert_eq!(&bytes[..4], b"PK\x03\x04");
    assert_ne!(u16::from_le_bytes([bytes[6], bytes[7]]) & 0x8, 0);
    let again = hangar(&["archive", "init", &s(&a)]);
    assert!(!again.status.success(), "init refuses an existing file");
    assert!(
        text(&again).contains(&format!("file {:?} already exists", s(&a))),
        "{}",
        text(&again)
    );
}
