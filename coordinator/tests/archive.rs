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

fn ls_images(archive: &Path) -> Vec<String> {
    let out = hangar(&["archive", "ls", "--image-only", &s(archive)]);
    assert!(out.status.success(), "archive ls: {}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn tag_exists(reference: &str) -> bool {
    skopeo_raw(reference).is_some()
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

    let export_list = env.write_list("export.txt", &[line("m3"), line("m1"), line("nothere")]);
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

fn make_archive(mode: &str, out: &Path, source: &str, tag: &str) -> serde_json::Value {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/make_archive.py"
    );
    let o = std::process::Command::new("python3")
        .args([script, mode, &s(out), source, tag])
        .output()
        .expect("python3");
    assert!(o.status.success(), "{}", text(&o));
    serde_json::from_slice(&o.stdout).expect("script output")
}

#[tokio::test]
async fn an_archive_written_by_an_independent_writer_loads() {
    let env = Env::new();
    let archive = env.path("python.zip");
    let made = make_archive("good", &archive, "docker.io/library/pyimg", "v1");
    assert!(
        hangar(&["archive", "verify", &s(&archive)])
            .status
            .success()
    );
    let out = load(&env, &archive, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let raw = skopeo_raw(&format!("{}/library/pyimg:v1", env.dst.addr)).expect("loaded");
    assert_eq!(
        index_digests(&raw),
        vec![made["manifest"].as_str().unwrap_or_default().to_owned()]
    );
    let copied = std::process::Command::new("skopeo")
        .args(["copy", "--src-tls-verify=false"])
        .arg(format!("docker://{}/library/pyimg:v1", env.dst.addr))
        .arg(format!("oci:{}:x", s(&env.path("oci"))))
        .output()
        .expect("skopeo");
    assert!(copied.status.success(), "{}", text(&copied));
}

/// Key order of every JSON object in `v`, recursively, as `path: k1,k2,…` lines (python
/// keeps document order, serde_json here would sort).
fn key_orders(raw: &[u8]) -> String {
    let script = r#"
import json, sys
def walk(o, path, out):
    if isinstance(o, dict):
        out.append(path + ": " + ",".join(o.keys()))
        for k, v in o.items(): walk(v, path + "." + k, out)
    elif isinstance(o, list):
        for v in o: walk(v, path + "[]", out)
out = []
walk(json.loads(sys.stdin.read()), "$", out)
print("\n".join(sorted(set(out))))
"#;
    let mut child = std::process::Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    use std::io::Write as _;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(raw)
        .expect("write");
    let out = child.wait_with_output().expect("python3");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn written_archives_follow_the_documented_layout_and_field_order() {
    let env = Env::new();
    let src = registry(&env.src.addr).await;
    push_multiarch(&src, env.dir.path(), "library/f", "1", Format::Oci, 80).await;
    let list = env.write_list("l.txt", &[format!("{}/library/f:1", env.src.addr)]);
    let archive = env.path("f.zip");
    assert!(save(&env, &list, &archive, &[]).status.success());
    let script = r#"
import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
for i in z.infolist():
    assert i.compress_type == 0, i.filename
    assert not i.filename.endswith("/"), i.filename
sys.stdout.buffer.write(z.read("index.json"))
"#;
    let o = std::process::Command::new("python3")
        .args(["-c", script, &s(&archive)])
        .output()
        .expect("python3");
    assert!(o.status.success(), "{}", text(&o));
    let raw = o.stdout;
    assert!(
        !raw.contains(&b'\n'),
        "single-line JSON, as Go's json.Marshal writes"
    );
    let orders = key_orders(&raw);
    for expected in [
        "$: list,version,time",
        "$.list[]: source,tag,archList,osList,images",
        "$.list[].images[]: arch,os,mediaType,layers,config,digest",
    ] {
        assert!(
            orders.lines().any(|l| l == expected),
            "{expected} in\n{orders}"
        );
    }
    let index: serde_json::Value = serde_json::from_slice(&raw).expect("json");
    assert_eq!(index["version"], "v1.2.0");
    let time = index["time"].as_str().unwrap_or_default();
    assert!(
        time.len() >= 20 && time.as_bytes()[10] == b'T',
        "RFC 3339: {time}"
    );
    let image = &index["list"][0];
    assert_eq!(image["source"], format!("{}/library/f", env.src.addr));
    let spec = &image["images"][0];
    let hex = spec["digest"]
        .as_str()
        .unwrap_or_default()
        .trim_start_matches("sha256:")
        .to_owned();
    let layout = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys,zipfile; z=zipfile.ZipFile(sys.argv[1]); sys.stdout.write(z.read(sys.argv[2]+'/index.json').decode()+'\\n'+z.read(sys.argv[2]+'/oci-layout').decode())",
            &s(&archive),
            &hex,
        ])
        .output()
        .expect("python3");
    let layout = String::from_utf8_lossy(&layout.stdout).to_string();
    let (idx, oci) = layout.split_once('\n').expect("two entries");
    assert_eq!(oci, r#"{"imageLayoutVersion":"1.0.0"}"#);
    assert!(
        idx.starts_with(r#"{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:"#),
        "{idx}"
    );
}

#[tokio::test]
async fn damaged_archives_fail_clearly_and_tag_nothing() {
    let env = Env::new();
    let src = registry(&env.src.addr).await;
    push_image(
        &src,
        env.dir.path(),
        "library/d",
        Some("1"),
        Format::Docker,
        "amd64",
        (&[90, 91], 50_000),
    )
    .await;
    let list = env.write_list("l.txt", &[format!("{}/library/d:1", env.src.addr)]);
    let good = env.path("good.zip");
    assert!(save(&env, &list, &good, &[]).status.success());
    let bytes = std::fs::read(&good).expect("archive");
    let dest_ref = format!("{}/library/d:1", env.dst.addr);

    // Truncated.
    let truncated = env.path("truncated.zip");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).expect("write");
    let out = load(&env, &truncated, &[]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("not a valid zip file"),
        "{}",
        text(&out)
    );
    assert!(text(&out).contains("truncated.zip"), "{}", text(&out));

    // A layer whose bytes do not match its digest (a flipped byte inside the entry).
    let layer = seed::write_layer(env.dir.path(), 91, 50_000)
        .expect("layer")
        .digest;
    let name = format!("share/sha256/{}", layer.hex());
    let offset = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys,zipfile,struct\nz=zipfile.ZipFile(sys.argv[1]); i=z.getinfo(sys.argv[2]); f=open(sys.argv[1],'rb'); f.seek(i.header_offset); h=f.read(30); n,e=struct.unpack('<HH',h[26:30]); print(i.header_offset+30+n+e)",
            &s(&good),
            &name,
        ])
        .output()
        .expect("python3");
    let offset: usize = String::from_utf8_lossy(&offset.stdout)
        .trim()
        .parse()
        .expect("offset");
    let mut flipped = bytes.clone();
    flipped[offset + 100] ^= 0xff;
    let corrupt = env.path("corrupt.zip");
    std::fs::write(&corrupt, &flipped).expect("write");
    let out = load(&env, &corrupt, &[]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains(&name),
        "the entry is named: {}",
        text(&out)
    );
    assert!(!tag_exists(&dest_ref), "nothing tagged after a bad blob");
    let v = hangar(&["archive", "verify", &s(&corrupt)]);
    assert!(!v.status.success());
    assert!(text(&v).contains(&name), "{}", text(&v));

    // Unsafe entry names.
    for (mode, shown) in [("traversal", "a/../../evil"), ("absolute", "/etc/evil")] {
        let bad = env.path(&format!("{mode}.zip"));
        make_archive(mode, &bad, "docker.io/library/evil", "1");
        let out = load(&env, &bad, &[]);
        assert!(!out.status.success(), "{mode}");
        assert!(text(&out).contains(shown), "{mode}: {}", text(&out));
        assert!(text(&out).contains("unsafe entry name"), "{}", text(&out));
        assert!(!tag_exists(&format!("{}/library/evil:1", env.dst.addr)));
    }

    // An index naming a blob the archive does not hold.
    let missing = env.path("missing.zip");
    let made = make_archive("missing", &missing, "docker.io/library/gap", "1");
    let out = load(&env, &missing, &[]);
    assert!(!out.status.success());
    let layer_hex = made["layer"]
        .as_str()
        .unwrap_or_default()
        .trim_start_matches("sha256:")
        .to_owned();
    assert!(
        text(&out).contains(&format!("share/sha256/{layer_hex}")),
        "{}",
        text(&out)
    );
    assert!(!tag_exists(&format!("{}/library/gap:1", env.dst.addr)));
    assert!(
        !hangar(&["archive", "verify", &s(&missing)])
            .status
            .success()
    );

    // A manifest past the 4 MiB a registry's is read up to: refused by name, nothing tagged.
    let big = env.path("bigmanifest.zip");
    let made = make_archive("bigmanifest", &big, "docker.io/library/big", "1");
    let out = load(&env, &big, &[]);
    assert!(!out.status.success(), "{}", text(&out));
    let manifest_hex = made["manifest"]
        .as_str()
        .unwrap_or_default()
        .trim_start_matches("sha256:")
        .to_owned();
    assert!(
        text(&out).contains(&manifest_hex) && text(&out).contains("too large for a manifest"),
        "{}",
        text(&out)
    );
    assert!(!tag_exists(&format!("{}/library/big:1", env.dst.addr)));

    // An index version older than v1.2.0.
    let old = env.path("old.zip");
    let script = "import sys,zipfile\nz=zipfile.ZipFile(sys.argv[1],'w')\nz.writestr('index.json','{\"version\":\"v1.1.0\",\"time\":\"2024-01-01T00:00:00Z\"}')";
    let o = std::process::Command::new("python3")
        .args(["-c", script, &s(&old)])
        .output()
        .expect("python3");
    assert!(o.status.success());
    let out = hangar(&["archive", "ls", &s(&old)]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("this tool does not support index version v1.1.0"),
        "{}",
        text(&out)
    );
}

#[tokio::test]
async fn load_creates_missing_harbor_projects() {
    let env = Env::new();
    let src = registry(&env.src.addr).await;
    push_image(
        &src,
        env.dir.path(),
        "newproj/h",
        Some("1"),
        Format::Docker,
        "amd64",
        (&[95], 10_000),
    )
    .await;
    push_image(
        &src,
        env.dir.path(),
        "oldproj/h",
        Some("1"),
        Format::Docker,
        "amd64",
        (&[96], 10_000),
    )
    .await;
    let list = env.write_list(
        "l.txt",
        &[
            format!("{}/newproj/h:1", env.src.addr),
            format!("{}/oldproj/h:1", env.src.addr),
        ],
    );
    let archive = env.path("h.zip");
    assert!(save(&env, &list, &archive, &[]).status.success());

    let port = hangar_loadtest::services::free_port().expect("port");
    let log = env.path("harbor.log");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/harbor_standin.py"
    );
    let standin = std::process::Command::new("python3")
        .args([
            script,
            &port.to_string(),
            &env.dst.addr,
            &s(&log),
            "admin:Harbor12345",
            "oldproj",
        ])
        .spawn()
        .map(Reaped)
        .expect("stand-in");
    let addr = format!("127.0.0.1:{port}");
    hangar_loadtest::services::wait_for_port(&addr, std::time::Duration::from_secs(10))
        .expect("up");
    let auth = env.path("auth.json");
    let token = base64_of("admin:Harbor12345");
    std::fs::write(
        &auth,
        format!(r#"{{"auths":{{"{addr}":{{"auth":"{token}"}}}}}}"#),
    )
    .expect("auth");
    let out = hangar(&[
        "load",
        "--tls-verify=false",
        "-s",
        &s(&archive),
        "-d",
        &addr,
        "--authfile",
        &s(&auth),
        "-o",
        &s(&env.path("f.txt")),
    ]);
    drop(standin);
    assert!(out.status.success(), "{}", text(&out));
    let calls: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .expect("log")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    let posts: Vec<&serde_json::Value> = calls.iter().filter(|c| c["call"] == "POST").collect();
    assert_eq!(
        posts.len(),
        1,
        "only the missing project is created: {calls:?}"
    );
    assert_eq!(posts[0]["project"], "newproj");
    assert_eq!(
        posts[0]["authorized"], true,
        "basic auth from the auth file"
    );
    assert_eq!(
        posts[0]["body"],
        serde_json::json!({"project_name": "newproj", "metadata": {"public": "false"}})
    );
    assert_eq!(posts[0]["content_type"], "application/json");
    assert!(
        calls
            .iter()
            .any(|c| c["call"] == "HEAD" && c["project"] == "oldproj")
    );
    assert!(
        text(&out).contains("Created Harbor project \"newproj\""),
        "{}",
        text(&out)
    );
    assert!(tag_exists(&format!("{}/newproj/h:1", env.dst.addr)));

    // Without credentials the creation fails: a warning, and the load goes on.
    let standin = std::process::Command::new("python3")
        .args([
            script,
            &port.to_string(),
            &env.dst.addr,
            &s(&log),
            "admin:Harbor12345",
        ])
        .spawn()
        .map(Reaped)
        .expect("stand-in");
    hangar_loadtest::services::wait_for_port(&addr, std::time::Duration::from_secs(10))
        .expect("up");
    let out = load_to(&env, &archive, &addr);
    drop(standin);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("Please create the Harbor Project manually."),
        "{}",
        text(&out)
    );
}

/// Kills and reaps the process when the test ends, however it ends.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn load_to(env: &Env, archive: &Path, addr: &str) -> std::process::Output {
    hangar(&[
        "load",
        "--tls-verify=false",
        "-s",
        &s(archive),
        "-d",
        addr,
        "-o",
        &s(&env.path("f2.txt")),
    ])
}

fn base64_of(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[tokio::test]
async fn kill_during_sync_leaves_a_readable_archive() {
    let env = Env::new();
    let src = registry(&env.src.addr).await;
    push_image(
        &src,
        env.dir.path(),
        "big/base",
        Some("1"),
        Format::Docker,
        "amd64",
        (&[120, 121, 122], 12_000_000),
    )
    .await;
    push_image(
        &src,
        env.dir.path(),
        "big/new",
        Some("1"),
        Format::Docker,
        "amd64",
        (&[123], 4_000_000),
    )
    .await;
    let archive = env.path("k.zip");
    let base_list = env.write_list("base.txt", &[format!("{}/big/base:1", env.src.addr)]);
    assert!(save(&env, &base_list, &archive, &[]).status.success());
    let pristine = std::fs::read(&archive).expect("archive");
    let old = ls_images(&archive);
    let mut new = old.clone();
    new.push(format!("{}/big/new:1", env.src.addr));
    let list = env.write_list("new.txt", &[format!("{}/big/new:1", env.src.addr)]);
    let partial_exists = || {
        std::fs::read_dir(env.dir.path())
            .expect("dir")
            .filter_map(|e| e.ok())
            .any(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(".k.zip.partial-")
            })
    };
    // `None`: kill as soon as the new archive's temporary file appears (a kill that is
    // certain to land mid-write, however slow the machine); then kills at fixed delays.
    let mut plan: Vec<Option<u64>> = vec![None, None, None];
    plan.extend([50u64, 150, 250, 400, 600, 900, 1300, 2000].map(Some));
    let (mut killed_mid_write, mut saw_old, mut saw_new) = (false, false, false);
    for when in plan {
        std::fs::write(&archive, &pristine).expect("restore");
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_hangar-coord"))
            .args([
                "sync",
                "--tls-verify=false",
                "-f",
                &s(&list),
                "-d",
                &s(&archive),
                "-o",
                &s(&env.path("sf.txt")),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("sync");
        match when {
            Some(ms) => std::thread::sleep(std::time::Duration::from_millis(ms)),
            None => {
                let start = std::time::Instant::now();
                while !partial_exists()
                    && start.elapsed() < std::time::Duration::from_secs(60)
                    && child.try_wait().ok().flatten().is_none()
                {
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        killed_mid_write |= partial_exists();
        let images = ls_images(&archive);
        assert!(images == old || images == new, "after {when:?}: {images:?}");
        saw_old |= images == old;
        saw_new |= images == new;
        let v = hangar(&["archive", "verify", &s(&archive)]);
        assert!(v.status.success(), "after {when:?}: {}", text(&v));
    }
    // And one run left to finish: the new content.
    std::fs::write(&archive, &pristine).expect("restore");
    let out = hangar(&[
        "sync",
        "--tls-verify=false",
        "-f",
        &s(&list),
        "-d",
        &s(&archive),
        "-o",
        &s(&env.path("sf.txt")),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    saw_new |= ls_images(&archive) == new;
    assert!(
        killed_mid_write,
        "at least one kill landed while the new archive was being written"
    );
    assert!(
        saw_old && saw_new,
        "kills landed both before and after the switch"
    );
    // The next run clears what a killed one left behind.
    std::fs::write(&archive, &pristine).expect("restore");
    let out = hangar(&[
        "sync",
        "--tls-verify=false",
        "-f",
        &s(&list),
        "-d",
        &s(&archive),
        "-o",
        &s(&env.path("sf.txt")),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(ls_images(&archive), new);
    let leftovers: Vec<String> = std::fs::read_dir(env.dir.path())
        .expect("dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".partial-") || n.starts_with(".hangar-cache-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
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
    let again = hangar(&["archive", "init", &s(&a)]);
    assert!(!again.status.success(), "init refuses an existing file");
    assert!(text(&again).contains("already exists"), "{}", text(&again));
}

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

/// `archive store file` keeps local files and downloads as Hangar's custom-file images, and
/// `archive export file` gives the bytes back: listed as custom files, laid out and encoded
/// as Hangar writes them, verified by `archive verify`, replaced when stored again under the
/// same name; bad input (a directory, a missing name, an image that is not a file) fails
/// clearly and leaves the archive as it was.
#[tokio::test(flavor = "multi_thread")]
async fn store_file_and_export_file() {
    let env = Env::new();
    let archive = env.path("files.zip");
    let out = hangar(&["archive", "init", &s(&archive)]);
    assert!(out.status.success(), "{}", text(&out));
    let local = env.path("notes & ümlauts.txt");
    std::fs::write(&local, "first <version>\n").unwrap();
    let served: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let body = served.clone();
    let app = axum::Router::new().route(
        "/files/blob.bin",
        axum::routing::get(move || {
            let body = body.clone();
            async move { body }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/files/blob.bin", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let out = hangar(&[
        "archive",
        "store",
        "file",
        "-f",
        &s(&archive),
        &s(&local),
        &url,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("Add OCI File [docker.io/hangar-file/blob.bin]"));
    let ls = hangar(&["archive", "ls", &s(&archive)]);
    let rows = String::from_utf8_lossy(&ls.stdout).into_owned();
    assert!(
        rows.contains("docker.io/hangar-file/notes & ümlauts.txt:latest | NOARCH | NOOS |")
            && rows.contains("(custom file)"),
        "{rows}"
    );
    let names = zip_names(&archive);
    assert_eq!(names.last().map(String::as_str), Some("index.json"));
    assert_eq!(
        names.iter().filter(|n| n.ends_with("/oci-layout")).count(),
        2
    );
    let verify = hangar(&["archive", "verify", &s(&archive)]);
    assert!(verify.status.success(), "{}", text(&verify));

    // The index entry and manifest as Hangar writes them.
    let json = hangar(&["archive", "ls", "--json", &s(&archive)]);
    let index: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let entry = index["list"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["source"] == "docker.io/hangar-file/blob.bin")
        .expect("entry")
        .clone();
    assert_eq!(entry["tag"], "latest");
    assert!(entry.get("archList").is_none() && entry.get("osList").is_none());
    let spec = &entry["images"][0];
    assert!(spec.get("arch").is_none());
    assert_eq!(
        spec["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(
        spec["annotations"]["org.opencontainers.image.description"],
        url
    );
    let manifest_hex = spec["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:");
    let py = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys,zipfile; sys.stdout.buffer.write(zipfile.ZipFile(sys.argv[1]).read(sys.argv[2]))",
        ])
        .arg(&archive)
        .arg(format!("share/sha256/{manifest_hex}"))
        .output()
        .unwrap();
    let manifest = String::from_utf8(py.stdout).unwrap();
    assert!(
        manifest.starts_with("{\n  \"schemaVersion\": 2,\n  \"mediaType\": \"application/vnd.oci.image.manifest.v1+json\",\n  \"config\": {\n    \"mediaType\": \"application/vnd.cncf.helm.config.v1+json\",")
            && manifest.contains("\"mediaType\": \"application/vnd.content.hangar.file.layer.v1\",")
            && manifest.contains("\"org.opencontainers.image.title\": \"blob.bin\",\n    \"org.opencontainers.image.vendor\": \"Hangar\"\n  }\n}"),
        "{manifest}"
    );

    // Export, into a directory of its own.
    let workdir = env.path("out");
    std::fs::create_dir_all(&workdir).unwrap();
    let export = |name: &str, yes: bool| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_hangar-coord"));
        cmd.args(["archive", "export", "file", "-f", &s(&archive), "-n", name])
            .current_dir(&workdir)
            .stdin(std::process::Stdio::null());
        if yes {
            cmd.arg("-y");
        }
        cmd.output().unwrap()
    };
    let out = export("blob.bin", false);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read(workdir.join("blob.bin")).unwrap(), served);
    let out = export("notes & ümlauts.txt", false);
    assert!(out.status.success(), "{}", text(&out));
    // Stored again with other bytes: replaced, not listed twice.
    std::fs::write(&local, "second\n").unwrap();
    let out = hangar(&["archive", "store", "f", "-f", &s(&archive), &s(&local)]);
    assert!(out.status.success(), "{}", text(&out));
    let listed = ls_images(&archive);
    assert_eq!(
        listed
            .iter()
            .filter(|l| l.contains("notes & ümlauts.txt"))
            .count(),
        1,
        "{listed:?}"
    );
    // Without -y an existing file is left alone.
    let out = export("notes & ümlauts.txt", false);
    assert!(!out.status.success());
    let exported = workdir.join("notes & ümlauts.txt");
    assert_eq!(
        std::fs::read_to_string(&exported).unwrap(),
        "first <version>\n"
    );
    let out = export("notes & ümlauts.txt", true);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(&exported).unwrap(), "second\n");

    // Bad input: clear errors, the archive untouched.
    let before = std::fs::read(&archive).unwrap();
    let out = hangar(&[
        "archive",
        "store",
        "file",
        "-f",
        &s(&archive),
        &s(env.dir.path()),
    ]);
    assert!(!out.status.success());
    assert!(text(&out).contains("is a directory"), "{}", text(&out));
    let out = hangar(&[
        "archive",
        "store",
        "file",
        "-f",
        &s(&archive),
        "/no/such/file",
    ]);
    assert!(!out.status.success());
    assert!(text(&out).contains("/no/such/file"), "{}", text(&out));
    assert_eq!(std::fs::read(&archive).unwrap(), before);
    let out = export("missing.txt", true);
    assert!(!out.status.success());
    assert!(text(&out).contains("\"missing.txt\""), "{}", text(&out));
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
