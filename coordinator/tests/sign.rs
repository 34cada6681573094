//! Signing against real registries, cross-checked by an independent cosign implementation
//! (tests/fixtures/cosign_check.py: Python's cryptography, PyNaCl and hashlib).

mod common;

use std::path::PathBuf;

use bytes::Bytes;
use common::signing::*;
use common::*;
use hangar_loadtest::seed::{self, Format};

#[test]
fn generated_keys_have_cosigns_format_and_modes() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("dir");
    let (key, public) = generate(dir.path(), "cosign");
    assert_eq!(
        std::fs::metadata(&key).expect("key").permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(&public)
            .expect("pub")
            .permissions()
            .mode()
            & 0o777,
        0o644
    );
    let out = cosign_check(&["decrypt", &s(&key), "test-pass"]);
    assert!(
        out.status.success(),
        "an independent scrypt + secretbox opens it: {}",
        text(&out)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        std::fs::read_to_string(&public).expect("pub").trim(),
        "the decrypted private key belongs to the public key written beside it"
    );
    let again = hangar(&[
        "generate-sigstore-key",
        "-p",
        &s(&dir.path().join("cosign")),
        "--passphrase-file",
        &s(&dir.path().join("pass.txt")),
    ]);
    assert!(!again.status.success(), "no overwrite without -y");
    let forced = hangar(&[
        "generate-sigstore-key",
        "-y",
        "-p",
        &s(&dir.path().join("cosign")),
        "--passphrase-file",
        &s(&dir.path().join("pass.txt")),
    ]);
    assert!(forced.status.success(), "{}", text(&forced));
    // A pair that cannot be written whole (its public half's path is a directory) leaves
    // the old pair as it was, and no temporary file behind.
    let prefix = dir.path().join("half");
    let key_file = dir.path().join("half.key");
    std::fs::write(&key_file, "old private key").unwrap();
    std::fs::create_dir(dir.path().join("half.pub")).unwrap();
    let failed = hangar(&[
        "generate-sigstore-key",
        "-y",
        "-p",
        &s(&prefix),
        "--passphrase-file",
        &s(&dir.path().join("pass.txt")),
    ]);
    assert!(!failed.status.success(), "{}", text(&failed));
    assert!(text(&failed).contains("half.pub"), "{}", text(&failed));
    assert_eq!(
        std::fs::read_to_string(&key_file).unwrap(),
        "old private key"
    );
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("partial") || n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn sign_validate_tamper_other_key_unsigned_and_no_duplicates() {
    let env = Env::new();
    let src = registry(&env.src.addr).await;
    let (idx, amd, arm) = push_multiarch(
        &src,
        env.dir.path(),
        "library/signed",
        "v1",
        Format::Oci,
        140,
    )
    .await;
    push_image(
        &src,
        env.dir.path(),
        "library/plain",
        Some("1"),
        Format::Docker,
        "amd64",
        (&[150], 20_000),
    )
    .await;
    let (key, public) = generate(env.dir.path(), "k");
    let signed_list = env.write_list(
        "signed.txt",
        &[format!("{}/library/signed:v1", env.src.addr)],
    );
    // Hangar's keyless flags beside a key are taken, as Hangar takes them.
    let out = sign(
        &env,
        &signed_list,
        &key,
        &[
            "-j",
            "2",
            "--oidc-issuer",
            "https://oauth2.sigstore.dev/auth",
            "--oidc-client-id",
            "sigstore",
        ],
    );
    assert!(out.status.success(), "sign: {}", text(&out));

    // Index and both platforms signed; the independent verifier agrees.
    for d in [&idx.digest, &amd.digest, &arm.digest] {
        let raw = skopeo_raw(&format!(
            "{}/library/signed:{}",
            env.src.addr,
            sig_tag(&d.to_string())
        ))
        .expect("signature manifest");
        let layers = sig_layers(&raw);
        assert_eq!(layers.len(), 1, "{d}");
        let payload = get_blob(&env.src.addr, "library/signed", &layers[0].0).await;
        let payload_file = env.path("payload");
        std::fs::write(&payload_file, &payload).expect("payload");
        let out = cosign_check(&[
            "verify",
            &s(&public),
            &s(&payload_file),
            &layers[0].1,
            &d.to_string(),
        ]);
        assert!(
            out.status.success(),
            "independent verify of {d}: {}",
            text(&out)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout)
                .contains(&format!("{}/library/signed", env.src.addr)),
            "the payload names the repository"
        );
    }

    let out = validate(&env, &signed_list, &public, &["--offline=true"]);
    assert!(out.status.success(), "validate: {}", text(&out));
    assert!(text(&out).contains("PASS"), "{}", text(&out));
    assert!(
        text(&out).contains("Validated: ") && text(&out).contains(" passed, 0 failed"),
        "{}",
        text(&out)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.path("report.json")).expect("report"))
            .expect("json");
    let images = report["results"][0]["images"].as_array().expect("images");
    assert_eq!(images.len(), 3, "{report}");
    assert!(report["time"].is_string());
    for i in images {
        assert!(
            i["payload"]
                .as_str()
                .unwrap_or_default()
                .contains("docker-manifest-digest"),
            "{i}"
        );
        assert_eq!(i["tlogVerified"], false);
    }

    // CSV and YAML reports.
    let out = validate(
        &env,
        &signed_list,
        &public,
        &["--format", "csv", "-r", &s(&env.path("r.csv"))],
    );
    assert!(out.status.success(), "{}", text(&out));
    let csv = std::fs::read_to_string(env.path("r.csv")).expect("csv");
    assert!(csv.starts_with("image,arch,os,payload,digest,tlogVerify,mediaType,certificateIssuer,certificateSubject,githubWorkflowName,githubWorkflowRef,githubWorkflowRepository,githubWorkflowSha,githubWorkflowTrigger\n"), "{csv}");
    assert_eq!(csv.lines().count(), 4, "{csv}");
    let out = validate(
        &env,
        &signed_list,
        &public,
        &["--format", "yaml", "-r", &s(&env.path("r.yaml"))],
    );
    assert!(out.status.success(), "{}", text(&out));
    let yaml = std::fs::read_to_string(env.path("r.yaml")).expect("yaml");
    // Hangar's YAML names the list `result`.
    assert!(
        yaml.contains("\nresult:\n") && yaml.contains("tlogVerified: false"),
        "{yaml}"
    );
    // `[FORMAT]` in a given name is the format, as in Hangar.
    let out = validate(
        &env,
        &signed_list,
        &public,
        &["--format", "csv", "-r", &s(&env.path("named.[FORMAT]"))],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(env.path("named.csv").exists(), "{}", text(&out));

    // Signing again adds nothing.
    let out = sign(&env, &signed_list, &key, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("Already signed"), "{}", text(&out));
    let raw = skopeo_raw(&format!(
        "{}/library/signed:{}",
        env.src.addr,
        sig_tag(&amd.digest.to_string())
    ))
    .expect("sig");
    assert_eq!(sig_layers(&raw).len(), 1, "no duplicate signature");

    // Another key: fails, naming the image.
    let (_, other_pub) = generate(&env.dir.path().join("other-dir").tap_mkdir(), "other");
    let out = validate(&env, &signed_list, &other_pub, &[]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains(&format!("FAILED: [{}/library/signed:v1]", env.src.addr)),
        "{}",
        text(&out)
    );
    // A failed image is left out of the report, as in Hangar.
    assert_eq!(report_verdicts(&env.path("report.json")).0, 0);

    // An unsigned image: a warning, not a failure.
    let plain_list = env.write_list("plain.txt", &[format!("{}/library/plain:1", env.src.addr)]);
    let out = validate(&env, &plain_list, &public, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "No signature found of image [{}/library/plain:1]",
            env.src.addr
        )),
        "{}",
        text(&out)
    );
    assert_eq!(
        report_verdicts(&env.path("report.json")).1.len(),
        1,
        "cosign's words as the payload"
    );

    // A tampered signature: fails.
    let tag = sig_tag(&arm.digest.to_string());
    let raw = skopeo_raw(&format!("{}/library/signed:{tag}", env.src.addr)).expect("sig");
    let mut doc: serde_json::Value = serde_json::from_slice(&raw).expect("json");
    let sig = doc["layers"][0]["annotations"]["dev.cosignproject.cosign/signature"]
        .as_str()
        .expect("sig")
        .to_owned();
    let forged = format!(
        "{}{}",
        &sig[..sig.len() - 8],
        if sig.ends_with("AAAAAAA=") {
            "BBBBBBB="
        } else {
            "AAAAAAA="
        }
    );
    doc["layers"][0]["annotations"]["dev.cosignproject.cosign/signature"] = forged.into();
    seed::push_manifest(
        &src,
        "library/signed",
        &tag,
        "application/vnd.oci.image.manifest.v1+json",
        Bytes::from(serde_json::to_vec(&doc).expect("json")),
    )
    .await
    .expect("push forged");
    let out = validate(&env, &signed_list, &public, &[]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("FAILED"), "{}", text(&out));
    assert!(
        text(&out).contains(&arm.digest.to_string()),
        "names the bad digest: {}",
        text(&out)
    );
}

trait TapMkdir {
    fn tap_mkdir(self) -> Self;
}

impl TapMkdir for PathBuf {
    fn tap_mkdir(self) -> Self {
        std::fs::create_dir_all(&self).expect("mkdir");
        std::fs::write(self.join("pass.txt"), "test-pass\n").expect("pass");
        self
    }
}

#[tokio::test]
async fn a_signature_made_by_independent_code_is_accepted() {
    let env = Env::new();
    let src = registry(&env.src.addr).await;
    let m = push_image(
        &src,
        env.dir.path(),
        "team/py",
        Some("1"),
        Format::Docker,
        "amd64",
        (&[160], 20_000),
    )
    .await;
    let out_dir = env.path("py");
    let reference = format!("{}/team/py", env.src.addr);
    let out = cosign_check(&["sign", &s(&out_dir), &reference, &m.digest.to_string()]);
    assert!(out.status.success(), "{}", text(&out));
    let payload = Bytes::from(std::fs::read(out_dir.join("payload")).expect("payload"));
    let signature = std::fs::read_to_string(out_dir.join("sig")).expect("sig");
    // The signature manifest, written here from cosign's layout (not by hangar's code).
    let layer = seed::push_bytes(
        &src,
        "team/py",
        "application/vnd.dev.cosign.simplesigning.v1+json",
        payload.clone(),
    )
    .await
    .expect("payload blob");
    let config_json = serde_json::json!({"architecture":"","os":"","rootfs":{"type":"layers","diff_ids":[layer.digest.to_string()]},"config":{}});
    let config = seed::push_bytes(
        &src,
        "team/py",
        "application/vnd.oci.image.config.v1+json",
        Bytes::from(config_json.to_string()),
    )
    .await
    .expect("config");
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": config.size, "digest": config.digest.to_string()},
        "layers": [{"mediaType": "application/vnd.dev.cosign.simplesigning.v1+json", "size": layer.size, "digest": layer.digest.to_string(),
                    "annotations": {"dev.cosignproject.cosign/signature": signature}}],
    });
    seed::push_manifest(
        &src,
        "team/py",
        &sig_tag(&m.digest.to_string()),
        "application/vnd.oci.image.manifest.v1+json",
        Bytes::from(manifest.to_string()),
    )
    .await
    .expect("sig manifest");
    let list = env.write_list("l.txt", &[format!("{}/team/py:1", env.src.addr)]);
    let out = validate(&env, &list, &out_dir.join("key.pub"), &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("PASS"), "{}", text(&out));
}

#[test]
fn keyless_and_tlog_fail_clearly() {
    let dir = tempfile::tempdir().expect("dir");
    let list = dir.path().join("l.txt");
    std::fs::write(&list, "example.invalid/a/b:1\n").expect("list");
    let out = hangar(&["sign", "-f", &s(&list), "--oidc-provider", "github-actions"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("keyless signing"), "{}", text(&out));
    let out = hangar(&["sign", "-f", &s(&list), "-p", "x.key", "--tlog-upload"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("--tlog-upload is not supported"),
        "{}",
        text(&out)
    );
}
