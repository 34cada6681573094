//! The smaller commands against real registries: inspect, list-tags, delete,
//! merge-manifest, convert-list (login and logout: `login.rs`).

mod common;

use std::process::Command;

use common::*;
use hangar_loadtest::seed::Format;
use hangar_loadtest::services::{RegistryConfig, RegistryProcess};

#[tokio::test(flavor = "multi_thread")]
async fn inspect_prints_raw_manifest_config_and_summary() {
    let env = Env::new();
    let src = registry(&env.src.addr).await;
    let (idx, amd, _) =
        push_multiarch(&src, env.dir.path(), "library/insp", "v1", Format::Oci, 400).await;
    let reference = format!("docker://{}/library/insp:v1", env.src.addr);
    let raw = hangar(&["inspect", "--tls-verify=false", "--raw", &reference]);
    assert!(raw.status.success(), "{}", text(&raw));
    assert_eq!(
        raw.stdout,
        idx.bytes.to_vec(),
        "--raw is the manifest exactly as served"
    );
    assert_eq!(
        Some(raw.stdout.clone()),
        skopeo_raw(&format!("{}/library/insp:v1", env.src.addr))
    );

    let summary = hangar(&[
        "inspect",
        "--tls-verify=false",
        "--override-arch",
        "amd64",
        &reference,
    ]);
    assert!(summary.status.success(), "{}", text(&summary));
    let v: serde_json::Value = serde_json::from_slice(&summary.stdout).unwrap();
    assert_eq!(v["Architecture"], "amd64");
    // OCI's config has an optional time: absent, it is null.
    assert_eq!(v["Created"], serde_json::Value::Null);
    let amd_manifest: serde_json::Value = serde_json::from_slice(&amd.bytes).unwrap();
    let layers: Vec<&str> = amd_manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap())
        .collect();
    assert_eq!(v["Layers"], serde_json::json!(layers));
    assert_eq!(v["LayersData"][1]["Digest"], layers[1]);
    assert_eq!(
        v["LayersData"][1]["Size"],
        amd_manifest["layers"][1]["size"]
    );
    // containers/image's ImageInspectInfo, as Hangar prints it: every field, Go's order.
    let printed = String::from_utf8(summary.stdout.clone()).unwrap();
    let keys: Vec<&str> = printed
        .lines()
        .filter_map(|l| l.strip_prefix("  \""))
        .filter_map(|l| l.split_once('"').map(|(k, _)| k))
        .collect();
    assert_eq!(
        keys,
        [
            "Tag",
            "Created",
            "DockerVersion",
            "Labels",
            "Architecture",
            "Variant",
            "Os",
            "Layers",
            "LayersData",
            "Env",
            "Author"
        ],
        "{printed}"
    );

    let config = hangar(&[
        "inspect",
        "--tls-verify=false",
        "--config",
        "--override-arch",
        "arm64",
        &reference,
    ]);
    assert!(config.status.success(), "{}", text(&config));
    let cfg: serde_json::Value = serde_json::from_slice(&config.stdout).unwrap();
    assert_eq!(cfg["architecture"], "arm64");
    let amd_cfg = hangar(&[
        "inspect",
        "--tls-verify=false",
        "--config",
        "--override-arch",
        "amd64",
        &reference,
    ]);
    assert_eq!(
        sha(&amd_cfg.stdout),
        amd_manifest["config"]["digest"].as_str().unwrap()
    );

    // Docker's has a plain one: absent, Go prints its zero.
    push_image(
        &src,
        env.dir.path(),
        "library/dock",
        Some("v1"),
        Format::Docker,
        "amd64",
        (&[7], 300),
    )
    .await;
    let docker = hangar(&[
        "inspect",
        "--tls-verify=false",
        &format!("{}/library/dock:v1", env.src.addr),
    ]);
    assert!(docker.status.success(), "{}", text(&docker));
    let v: serde_json::Value = serde_json::from_slice(&docker.stdout).unwrap();
    assert_eq!(v["Created"], "0001-01-01T00:00:00Z");

    let missing = hangar(&[
        "inspect",
        "--tls-verify=false",
        &format!("docker://{}/library/nope:1", env.src.addr),
    ]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        text(&missing).contains("manifest unknown"),
        "{}",
        text(&missing)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn list_tags_delete_and_merge_manifest() {
    let env = Env::new();
    let src = registry(&env.src.addr).await;
    let dir = env.dir.path();
    let amd = push_image(
        &src,
        dir,
        "team/merge",
        Some("amd64"),
        Format::Docker,
        "amd64",
        (&[500], 10_000),
    )
    .await;
    let arm = push_image(
        &src,
        dir,
        "team/merge",
        Some("arm64"),
        Format::Docker,
        "arm64",
        (&[501], 10_000),
    )
    .await;
    let repo = format!("{}/team/merge", env.src.addr);
    // An OCI manifest with annotations of its own: Hangar puts them on its entry.
    let oci = push_image(
        &src,
        dir,
        "team/merge",
        None,
        Format::Oci,
        "s390x",
        (&[502], 1_000),
    )
    .await;
    let mut body: serde_json::Value = serde_json::from_slice(&oci.bytes).unwrap();
    body["annotations"] = serde_json::json!({"org.example.note": "kept"});
    let bytes = bytes::Bytes::from(serde_json::to_vec(&body).unwrap());
    let annotated = hangar_shared::manifest::RawManifest {
        media_type: hangar_shared::manifest::OCI_MANIFEST.into(),
        digest: hangar_shared::digest::Digest::of(&bytes),
        bytes,
    };
    src.put_manifest("team/merge", "annotated", &annotated)
        .await
        .unwrap();

    let dry = hangar(&[
        "merge-manifest",
        "--tls-verify=false",
        "--dry-run",
        &format!("{repo}:all"),
        &format!("{repo}:amd64"),
        &format!("{repo}:arm64"),
        &format!("{repo}:annotated"),
    ]);
    assert!(dry.status.success(), "{}", text(&dry));
    // Hangar's log lines come first on stdout (its INFO lines go there), then the index.
    let printed = String::from_utf8_lossy(&dry.stdout).into_owned();
    let index = &printed[printed.find("\n{").expect("the index") + 1..];
    assert_eq!(
        index_digests(index.as_bytes()),
        vec![
            amd.digest.to_string(),
            arm.digest.to_string(),
            annotated.digest.to_string()
        ]
    );
    let v: serde_json::Value = serde_json::from_str(index).unwrap();
    assert_eq!(
        v["manifests"][2]["annotations"],
        serde_json::json!({"org.example.note": "kept"})
    );
    assert!(
        text(&dry).contains(&format!(
            "Image \"docker://{repo}:annotated\" is \"application/vnd.oci.image.manifest.v1+json\""
        )),
        "{}",
        text(&dry)
    );
    assert!(
        skopeo_raw(&format!("{repo}:all")).is_none(),
        "--dry-run pushes nothing"
    );

    let merged = hangar(&[
        "merge-manifest",
        "--tls-verify=false",
        &format!("{repo}:all"),
        &format!("{repo}:amd64"),
        &format!("{repo}:arm64"),
    ]);
    assert!(merged.status.success(), "{}", text(&merged));
    assert!(
        text(&merged).contains(&format!(
            "Pushing image manifest index docker://{repo}:all with 2 contents"
        )),
        "{}",
        text(&merged)
    );
    let all = skopeo_raw(&format!("{repo}:all")).expect("merged index pushed");
    assert_eq!(
        index_digests(&all),
        vec![amd.digest.to_string(), arm.digest.to_string()]
    );
    let v: serde_json::Value = serde_json::from_slice(&all).unwrap();
    assert_eq!(v["manifests"][1]["platform"]["architecture"], "arm64");

    let tags = hangar(&[
        "list-tags",
        "--tls-verify=false",
        &format!("docker://{repo}"),
    ]);
    assert!(tags.status.success(), "{}", text(&tags));
    assert_eq!(
        String::from_utf8_lossy(&tags.stdout),
        "[\n  \"all\",\n  \"amd64\",\n  \"annotated\",\n  \"arm64\"\n]\n"
    );

    let del = hangar(&[
        "delete",
        "--tls-verify=false",
        "-y",
        &format!("docker://{repo}:amd64"),
    ]);
    assert!(del.status.success(), "{}", text(&del));
    assert!(skopeo_raw(&format!("{repo}:amd64")).is_none(), "deleted");
    assert!(
        skopeo_raw(&format!("{repo}@{}", amd.digest)).is_none(),
        "deleted by digest"
    );
    let again = hangar(&[
        "delete",
        "--tls-verify=false",
        "-y",
        &format!("docker://{repo}:amd64"),
    ]);
    assert_eq!(again.status.code(), Some(1), "{}", text(&again));

    let elsewhere = hangar(&[
        "merge-manifest",
        "--tls-verify=false",
        &format!("{repo}:x"),
        &format!("{repo}:arm64"),
        &format!("{}/other/repo:1", env.src.addr),
    ]);
    assert_eq!(elsewhere.status.code(), Some(1));
    assert!(
        text(&elsewhere).contains("copies no blobs"),
        "{}",
        text(&elsewhere)
    );
}

/// The single-image commands read references as containers/image does: a registry's
/// namespace-less repository (`host/pause`) is `pause`, not `library/pause` — which may
/// hold another image, the one a `delete` must not touch.
#[tokio::test(flavor = "multi_thread")]
async fn single_image_commands_take_a_namespace_less_repository_as_named() {
    let env = Env::new();
    let src = registry(&env.src.addr).await;
    let dir = env.dir.path();
    let bare = push_image(
        &src,
        dir,
        "pause",
        Some("3.9"),
        Format::Oci,
        "amd64",
        (&[601], 1_000),
    )
    .await;
    let other = push_image(
        &src,
        dir,
        "library/pause",
        Some("3.9"),
        Format::Oci,
        "amd64",
        (&[602], 1_000),
    )
    .await;
    let named = format!("{}/pause:3.9", env.src.addr);

    let raw = hangar(&["inspect", "--tls-verify=false", "--raw", &named]);
    assert!(raw.status.success(), "{}", text(&raw));
    assert_eq!(
        raw.stdout,
        bare.bytes.to_vec(),
        "the repository named, not library/pause"
    );
    assert!(
        text(&raw).contains(&format!(
            "Image reference protocol not provided, use 'docker' as default: docker://{named}"
        )),
        "{}",
        text(&raw)
    );
    let tags = hangar(&[
        "list-tags",
        "--tls-verify=false",
        &format!("{}/pause", env.src.addr),
    ]);
    assert!(tags.status.success(), "{}", text(&tags));
    assert_eq!(String::from_utf8_lossy(&tags.stdout), "[\n  \"3.9\"\n]\n");
    // Only inspect warns; Hangar's other commands add the transport silently.
    assert!(tags.stderr.is_empty(), "{}", text(&tags));

    let del = hangar(&["delete", "--tls-verify=false", "-y", &named]);
    assert!(del.status.success(), "{}", text(&del));
    assert!(skopeo_raw(&named).is_none(), "pause:3.9 deleted");
    assert_eq!(
        skopeo_raw(&format!("{}/library/pause:3.9", env.src.addr)),
        Some(other.bytes.to_vec()),
        "library/pause:3.9 untouched"
    );
}

#[test]
fn convert_list_writes_mirror_lines_like_hangar() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("list.txt");
    std::fs::write(
        &input,
        format!(
            "\u{feff}alpine:3\nlibrary/mysql:5.7.5\na b c\nbad line here too\napp@sha256:{}\n",
            "a".repeat(64)
        ),
    )
    .unwrap();
    let out = hangar(&[
        "convert-list",
        "-i",
        input.to_str().unwrap(),
        "-s",
        "example.io",
        "-d",
        "docker.io",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let converted = std::fs::read_to_string(dir.path().join("list.txt.converted")).unwrap();
    assert_eq!(
        converted,
        "example.io/alpine docker.io/alpine 3\nexample.io/library/mysql docker.io/library/mysql 5.7.5"
    );
    assert!(
        text(&out).contains("list.txt:4"),
        "invalid line named: {}",
        text(&out)
    );
    // A digest pin has no mirror-format line: skipped, named, not half-converted.
    assert!(
        text(&out).contains("list.txt:5): a digest-pinned image has no tag"),
        "{}",
        text(&out)
    );
}

#[test]
fn signv1_is_refused_with_what_to_use_instead() {
    for args in [
        &["signv1", "-f", "l.txt", "-k", "k.key"][..],
        &["signv1", "validate", "-p", "k.pub", "-f", "l.txt"][..],
    ] {
        let out = hangar(args);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(
            text(&out).contains("signv1 (Hangar's sign v1, deprecated since v1.9) is not supported: sign with `hangar sign"),
            "{}",
            text(&out)
        );
    }
}

#[test]
fn version_and_completion() {
    let v = hangar(&["version"]);
    assert!(String::from_utf8_lossy(&v.stdout).starts_with("hangar-coord version v"));
    let c = hangar(&["completion", "bash"]);
    assert!(c.status.success());
    assert!(String::from_utf8_lossy(&c.stdout).contains("hangar-coord"));
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_verify_false_accepts_a_self_signed_registry_and_the_default_refuses_it() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
        ])
        .args(["-addext", "subjectAltName=IP:127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(made.status.success(), "{}", text(&made));
    let tls = RegistryProcess::start_with(RegistryConfig {
        tls: Some((&cert, &key)),
        ..Default::default()
    })
    .unwrap();
    let env = Env::new();
    let src = registry(&env.src.addr).await;
    let m = push_image(
        &src,
        env.dir.path(),
        "team/tls",
        Some("1"),
        Format::Oci,
        "amd64",
        (&[800], 10_000),
    )
    .await;
    let list = env.write_list("list.txt", &[format!("{}/team/tls:1", env.src.addr)]);
    let failed = env.path("f.txt");
    let args = |verify: &str| -> Vec<String> {
        vec![
            "mirror".into(),
            verify.into(),
            "-f".into(),
            list.display().to_string(),
            "-d".into(),
            tls.addr.clone(),
            "-o".into(),
            failed.display().to_string(),
        ]
    };
    // Verifying certificates (the default) fails on the source (plain HTTP) and the
    // self-signed destination alike.
    let strict = hangar(&args("--tls-verify=true"));
    assert_eq!(strict.status.code(), Some(1), "{}", text(&strict));
    let relaxed = hangar(&args("--tls-verify=false"));
    assert!(relaxed.status.success(), "{}", text(&relaxed));
    assert!(
        tls.log().contains("/v2/team/tls/manifests/1"),
        "the TLS registry was used"
    );
    let out = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{}/team/tls:1", tls.addr))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(index_digests(&out.stdout), vec![m.digest.to_string()]);
}

/// The test token server (a Python script), stopped when dropped.
struct TokenServer(std::process::Child);

impl Drop for TokenServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn mirror_into_a_bearer_token_registry() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("issuer.pem"), dir.path().join("issuer.key"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=hangar-test-issuer",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(made.status.success(), "{}", text(&made));
    let port = hangar_loadtest::services::free_port().unwrap();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/token_server.py"
    );
    let _server = TokenServer(
        Command::new("python3")
            .arg(script)
            .arg(port.to_string())
            .arg(&key)
            .arg(&cert)
            .args([
                "hangar-issuer",
                "hangar-registry",
                "token-user",
                "t0ken-pass",
            ])
            .spawn()
            .expect("python3"),
    );
    hangar_loadtest::services::wait_for_port(
        &format!("127.0.0.1:{port}"),
        std::time::Duration::from_secs(10),
    )
    .unwrap();
    let realm = format!("http://127.0.0.1:{port}/token");
    let secured = RegistryProcess::start_with(RegistryConfig {
        token: Some(hangar_loadtest::services::TokenAuth {
            realm: &realm,
            service: "hangar-registry",
            issuer: "hangar-issuer",
            roots: &cert,
        }),
        ..Default::default()
    })
    .unwrap();
    let env = Env::new();
    let src = registry(&env.src.addr).await;
    let m = push_image(
        &src,
        env.dir.path(),
        "team/tokened",
        Some("1"),
        Format::Oci,
        "amd64",
        (&[650], 10_000),
    )
    .await;
    let list = env.write_list("list.txt", &[format!("{}/team/tokened:1", env.src.addr)]);
    let authfile = dir.path().join("auth.json");
    let mirror = |authfile: &std::path::Path| {
        hangar(&[
            "mirror",
            "--tls-verify=false",
            "-f",
            list.to_str().unwrap(),
            "-d",
            &secured.addr,
            "-o",
            env.path("f.txt").to_str().unwrap(),
            "--authfile",
            authfile.to_str().unwrap(),
        ])
    };
    let denied = mirror(&authfile);
    assert_eq!(denied.status.code(), Some(1), "{}", text(&denied));
    assert!(text(&denied).contains("auth"), "{}", text(&denied));

    let login = hangar(&[
        "login",
        &secured.addr,
        "-u",
        "token-user",
        "-p",
        "t0ken-pass",
        "--authfile",
        authfile.to_str().unwrap(),
        "--tls-verify=false",
    ]);
    assert!(login.status.success(), "{}", text(&login));
    let ok = mirror(&authfile);
    assert!(ok.status.success(), "{}", text(&ok));
    assert!(!text(&ok).contains("t0ken-pass"));
    let check = skopeo_inspect(
        &format!("{}/team/tokened:1", secured.addr),
        &["--creds", "token-user:t0ken-pass"],
    );
    assert!(check.status.success(), "{}", text(&check));
    assert_eq!(index_digests(&check.stdout), vec![m.digest.to_string()]);
}
