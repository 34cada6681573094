//! Archive test helpers: `save` and `load` of the real binary, what a zip holds, what
//! `archive ls` lists.

use std::path::Path;

use super::{Env, hangar, skopeo_raw, text};

pub fn s(p: &Path) -> String {
    p.display().to_string()
}

pub fn save(env: &Env, list: &Path, archive: &Path, extra: &[&str]) -> std::process::Output {
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

pub fn load(env: &Env, archive: &Path, extra: &[&str]) -> std::process::Output {
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

pub fn zip_names(archive: &Path) -> Vec<String> {
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

pub fn ls_images(archive: &Path) -> Vec<String> {
    let out = hangar(&["archive", "ls", "--image-only", &s(archive)]);
    assert!(out.status.success(), "archive ls: {}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

pub fn tag_exists(reference: &str) -> bool {
    skopeo_raw(reference).is_some()
}

pub fn load_to(env: &Env, archive: &Path, addr: &str) -> std::process::Output {
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

/// An archive written by `tests/fixtures/make_archive.py` in `mode` (an independent
/// writer, and the maker of hostile archives); what it made, as the script prints it.
#[allow(dead_code)]
pub fn make_archive(mode: &str, out: &Path, source: &str, tag: &str) -> serde_json::Value {
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
