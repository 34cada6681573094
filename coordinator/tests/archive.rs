//! Archives against real registries: save, ls, validate, load, sync, merge, export,
//! volumes, verify, damaged input, a Python-built archive, Harbor projects, and a kill -9
//! in the middle of sync.

mod common;

use std::path::Path;

use common::*;
use hangar_loadtest::seed::{self, Format};

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn save(env: &Env, list: &Path, archive: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "save".to_owned(),
        "--tls-verify=false".into(),
        "-f".into(),
        s(list),
        "-d".into(),
        s(archive),
        "-o".into(),
        s(&env.path("save-failed.txt")),
        "-y".into(),
    ];
    args.extend(extra.iter().map(|x| x.to_string()));
    hangar(&args)
}

fn load(env: &Env, archive: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "load".to_owned(),
        "--tls-verify=false".into(),
        "-s".into(),
        s(archive),
        "-d".into(),
        env.dst.addr.clone(),
        "-o".into(),
        s(&env.path("load-failed.txt")),
    ];
    args.extend(extra.iter().map(|x| x.to_string()));
    hangar(&args)
}

fn zip_names(archive: &Path) -> Vec<String> {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys,zipfile; [print(i.filename, i.compress_type) for i in zipfile.ZipFile(sys.argv[1]).infolist()]",
        ])
        .arg(archive)
        .output()
        .expect("python3");
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let (name, method) = l.rsplit_once(' ').expect("name method");
            assert_eq!(method, "0", "{name} must be stored, not compressed");
            name.to_owned()
        })
        .collect()
}

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
