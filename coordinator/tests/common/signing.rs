//! Signing helpers: key pairs made by `generate-sigstore-key`, `sign` and `sign validate`
//! runs, the independent cosign implementation (tests/fixtures/cosign_check.py), and
//! reading `.sig` manifests.

use std::path::{Path, PathBuf};
use std::process::Command;

use bytes::Bytes;

use super::{Env, hangar, text};

pub fn s(p: &Path) -> String {
    p.display().to_string()
}

pub fn python() -> PathBuf {
    let venv = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.venv/bin/python"));
    assert!(
        venv.exists(),
        "{} is missing: scripts/dev-services.sh installs it",
        venv.display()
    );
    venv
}

pub fn cosign_check(args: &[&str]) -> std::process::Output {
    Command::new(python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/cosign_check.py"
        ))
        .args(args)
        .output()
        .expect("python")
}

/// A key pair with passphrase "test-pass" under `dir/PREFIX.{key,pub}`.
pub fn generate(dir: &Path, prefix: &str) -> (PathBuf, PathBuf) {
    let pass = dir.join("pass.txt");
    std::fs::write(&pass, "test-pass\n").expect("pass");
    let prefix_path = dir.join(prefix);
    let out = hangar(&[
        "generate-sigstore-key",
        "-p",
        &s(&prefix_path),
        "--passphrase-file",
        &s(&pass),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    (
        dir.join(format!("{prefix}.key")),
        dir.join(format!("{prefix}.pub")),
    )
}

pub fn sign(env: &Env, list: &Path, key: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "sign".to_owned(),
        "--tls-verify=false".into(),
        "-f".into(),
        s(list),
        "-p".into(),
        s(key),
        "--passphrase-file".into(),
        s(&env.path("pass.txt")),
        "-o".into(),
        s(&env.path("sign-failed.txt")),
    ];
    args.extend(extra.iter().map(|x| x.to_string()));
    hangar(&args)
}

pub fn validate(env: &Env, list: &Path, public: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "sign".to_owned(),
        "validate".into(),
        "--tls-verify=false".into(),
        "-f".into(),
        s(list),
        "-k".into(),
        s(public),
        "-o".into(),
        s(&env.path("validate-failed.txt")),
    ];
    if !extra.contains(&"-r") {
        args.extend(["-r".to_owned(), s(&env.path("report.json"))]);
    }
    args.extend(extra.iter().map(|x| x.to_string()));
    hangar(&args)
}

pub async fn get_blob(addr: &str, repo: &str, digest: &str) -> Bytes {
    reqwest::get(format!("http://{addr}/v2/{repo}/blobs/{digest}"))
        .await
        .expect("GET blob")
        .error_for_status()
        .expect("blob")
        .bytes()
        .await
        .expect("bytes")
}

pub fn sig_tag(digest: &str) -> String {
    format!("sha256-{}.sig", digest.trim_start_matches("sha256:"))
}

/// The layers (payload digest, signature) of a `.sig` manifest.
pub fn sig_layers(raw: &[u8]) -> Vec<(String, String)> {
    let v: serde_json::Value = serde_json::from_slice(raw).expect("sig manifest");
    v["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| {
            (
                l["digest"].as_str().unwrap_or_default().to_owned(),
                l["annotations"]["dev.cosignproject.cosign/signature"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect()
}

/// How many digests `sign validate`'s JSON report at `report` lists, and those it found
/// unsigned (Hangar passes an image any of whose digests is signed: the report says which
/// were not).
pub fn report_verdicts(report: &Path) -> (usize, Vec<String>) {
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(report).expect("the report")).expect("JSON");
    let images: Vec<&serde_json::Value> = doc["results"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|r| r["images"].as_array().into_iter().flatten())
        .collect();
    let unsigned = images
        .iter()
        .filter(|i| i["payload"] == "no signatures found")
        .map(|i| i["digest"].as_str().unwrap_or_default().to_owned())
        .collect();
    (images.len(), unsigned)
}
