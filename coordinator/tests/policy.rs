//! containers' signature policy (`policy.json`), honoured as Hangar honours it through
//! containers/image: `HOME` points at a temporary directory holding
//! `.config/containers/policy.json`, and real registries hold the images, signed with
//! `hangar-coord sign` where a test needs signatures.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::Engine;
use common::*;
use hangar_loadtest::seed::Format;
use hangar_loadtest::services::NatsProcess;

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// A home directory whose `~/.config/containers/policy.json` is `policy`.
struct Home(tempfile::TempDir);

impl Home {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("home");
        std::fs::create_dir_all(dir.path().join(".config/containers")).expect("config dir");
        Self(dir)
    }

    fn policy_path(&self) -> PathBuf {
        self.0.path().join(".config/containers/policy.json")
    }

    fn set(&self, policy: serde_json::Value) {
        std::fs::write(self.policy_path(), policy.to_string()).expect("policy.json");
    }

    /// `hangar-coord ARGS` with `HOME` here.
    fn run<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_hangar-coord"))
            .args(args)
            .env("HOME", self.0.path())
            .env("REGISTRY_AUTH_FILE", "/nonexistent/hangar-test-auth.json")
            .output()
            .expect("run hangar-coord")
    }

    /// `mirror -f LIST -d DST --tls-verify=false -o failed.txt EXTRA` with `HOME` here.
    fn mirror(&self, env: &Env, list: &Path, extra: &[&str]) -> Output {
        let _ = std::fs::remove_file(env.path("failed.txt"));
        let mut args = vec![
            "mirror".to_owned(),
            "--tls-verify=false".into(),
            "-f".into(),
            s(list),
            "-d".into(),
            env.dst.addr.clone(),
            "-o".into(),
            s(&env.path("failed.txt")),
        ];
        args.extend(extra.iter().map(|x| x.to_string()));
        self.run(&args)
    }
}

fn failed(env: &Env) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_to_string(env.path("failed.txt"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect();
    v.sort();
    v
}

/// A key pair with passphrase "test-pass" under `dir/PREFIX.{key,pub}`.
fn generate(dir: &Path, prefix: &str) -> (PathBuf, PathBuf) {
    std::fs::write(dir.join("pass.txt"), "test-pass\n").expect("pass");
    let out = hangar(&[
        "generate-sigstore-key",
        "-p",
        &s(&dir.join(prefix)),
        "--passphrase-file",
        &s(&dir.join("pass.txt")),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    (
        dir.join(format!("{prefix}.key")),
        dir.join(format!("{prefix}.pub")),
    )
}

fn sign(env: &Env, line: &str, key: &Path) {
    let list = env.write_list("to-sign.txt", &[line.to_owned()]);
    let out = hangar(&[
        "sign",
        "--tls-verify=false",
        "-f",
        &s(&list),
        "-p",
        &s(key),
        "--passphrase-file",
        &s(&env.path("pass.txt")),
        "-o",
        &s(&env.path("sign-failed.txt")),
    ]);
    assert!(out.status.success(), "sign {line}: {}", text(&out));
}

async fn push_plain(env: &Env, repo: &str, seed: u64) {
    let src = registry(&env.src.addr).await;
    push_image(
        &src,
        env.dir.path(),
        repo,
        Some("v1"),
        Format::Docker,
        "amd64",
        (&[seed], 10_000),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn reject_accept_insecure_policy_and_unsupported_requirements() {
    let env = Env::new();
    let home = Home::new();
    push_plain(&env, "library/a", 300).await;
    push_plain(&env, "team/b", 310).await;
    let a = format!("{}/library/a:v1", env.src.addr);
    let b = format!("{}/team/b:v1", env.src.addr);
    let a_dst = format!("{}/library/a:v1", env.dst.addr);
    let b_dst = format!("{}/team/b:v1", env.dst.addr);
    let list = env.write_list("list.txt", &[a.clone(), b.clone()]);
    let policy = s(&home.policy_path());

    // `reject` by default, `insecureAcceptAnything` for one repository: the most specific
    // scope wins, the rejected image fails with containers/image's words and the other
    // goes on.
    home.set(serde_json::json!({
        "default": [{"type": "reject"}],
        "transports": {
            "docker": {format!("{}/team/b", env.src.addr): [{"type": "insecureAcceptAnything"}]},
            "docker-daemon": {"": [{"type": "insecureAcceptAnything"}]}
        }
    }));
    let out = home.mirror(&env, &list, &[]);
    let log = text(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(
        log.contains(&format!(
            "Source image rejected: Running image docker://{a} is rejected by policy."
        )),
        "{log}"
    );
    assert!(log.contains(&policy), "the message names the file: {log}");
    assert!(
        log.contains("default: reject"),
        "and the requirement: {log}"
    );
    assert_eq!(failed(&env), vec![a.clone()]);
    assert!(
        skopeo_raw(&a_dst).is_none(),
        "nothing of a rejected image is copied"
    );
    assert!(
        skopeo_raw(&b_dst).is_some(),
        "the accepted image went through"
    );

    // --insecure-policy skips the evaluation entirely.
    let out = home.mirror(&env, &list, &["--insecure-policy"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(skopeo_raw(&a_dst).is_some());

    // `insecureAcceptAnything` for the source registry, with a scope for the registry's
    // host:port.
    push_plain(&env, "library/c", 320).await;
    let c = format!("{}/library/c:v1", env.src.addr);
    home.set(serde_json::json!({
        "default": [{"type": "reject"}],
        "transports": {"docker": {env.src.addr.clone(): [{"type": "insecureAcceptAnything"}]}}
    }));
    let out = home.mirror(
        &env,
        &env.write_list("c.txt", std::slice::from_ref(&c)),
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(skopeo_raw(&format!("{}/library/c:v1", env.dst.addr)).is_some());

    // GPG `signedBy` is named and refused before anything is copied.
    push_plain(&env, "library/d", 330).await;
    let d = format!("{}/library/d:v1", env.src.addr);
    home.set(serde_json::json!({
        "default": [{"type": "insecureAcceptAnything"}],
        "transports": {"docker": {env.src.addr.clone(): [
            {"type": "signedBy", "keyType": "GPGKeys", "keyPath": "/etc/pki/key.gpg"}
        ]}}
    }));
    let out = home.mirror(
        &env,
        &env.write_list("d.txt", std::slice::from_ref(&d)),
        &[],
    );
    let log = text(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(
        log.contains("requirement type \"signedBy\" (GPG simple signing) is not supported"),
        "{log}"
    );
    assert!(log.contains(&policy), "{log}");
    assert_eq!(failed(&env), vec![d.clone()]);
    assert!(skopeo_raw(&format!("{}/library/d:v1", env.dst.addr)).is_none());

    // An unknown requirement type makes the whole file invalid, as containers/image's
    // strict parser does.
    home.set(serde_json::json!({"default": [{"type": "acceptIfSunny"}]}));
    let out = home.mirror(
        &env,
        &env.write_list("d.txt", std::slice::from_ref(&d)),
        &[],
    );
    let log = text(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(
        log.contains("unknown policy requirement type \"acceptIfSunny\""),
        "{log}"
    );
    assert!(skopeo_raw(&format!("{}/library/d:v1", env.dst.addr)).is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn sigstore_signed_with_keys_and_identities() {
    let env = Env::new();
    let home = Home::new();
    let src = registry(&env.src.addr).await;
    push_multiarch(
        &src,
        env.dir.path(),
        "library/signed",
        "v1",
        Format::Oci,
        400,
    )
    .await;
    push_plain(&env, "library/plain", 410).await;
    push_plain(&env, "library/stranger", 420).await;
    let (key, public) = generate(env.dir.path(), "trusted");
    let (other_key, _) = generate(env.dir.path(), "other");
    let signed = format!("{}/library/signed:v1", env.src.addr);
    let plain = format!("{}/library/plain:v1", env.src.addr);
    let stranger = format!("{}/library/stranger:v1", env.src.addr);
    sign(&env, &signed, &key);
    sign(&env, &stranger, &other_key);
    let list = env.write_list(
        "list.txt",
        &[signed.clone(), plain.clone(), stranger.clone()],
    );
    let policy = s(&home.policy_path());

    // cosign's signatures name only the repository: `matchRepository` accepts them.
    home.set(serde_json::json!({
        "default": [{"type": "reject"}],
        "transports": {"docker": {env.src.addr.clone(): [{
            "type": "sigstoreSigned",
            "keyPath": s(&public),
            "signedIdentity": {"type": "matchRepository"}
        }]}}
    }));
    let out = home.mirror(&env, &list, &[]);
    let log = text(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(
        skopeo_raw(&format!("{}/library/signed:v1", env.dst.addr)).is_some(),
        "the image signed by the trusted key is copied: {log}"
    );
    assert_eq!(failed(&env), {
        let mut v = vec![plain.clone(), stranger.clone()];
        v.sort();
        v
    });
    let unsigned_line = log
        .lines()
        .find(|l| l.contains("library/plain") && l.contains("Source image rejected"))
        .unwrap_or_else(|| panic!("no refusal for the unsigned image: {log}"));
    assert!(
        unsigned_line.contains("A signature was required, but no signature exists")
            && unsigned_line.contains(&policy)
            && unsigned_line.contains(&format!("keyPath {}", public.display())),
        "{unsigned_line}"
    );
    let stranger_line = log
        .lines()
        .find(|l| l.contains("library/stranger") && l.contains("Source image rejected"))
        .unwrap_or_else(|| panic!("no refusal for the other key's image: {log}"));
    assert!(
        stranger_line.contains("invalid signature"),
        "{stranger_line}"
    );
    for repo in ["plain", "stranger"] {
        assert!(skopeo_raw(&format!("{}/library/{repo}:v1", env.dst.addr)).is_none());
    }

    // Without signedIdentity, containers/image's default matchRepoDigestOrExact wants a
    // tag in the signed identity for a tag reference; cosign's has none, so it is refused.
    home.set(serde_json::json!({
        "default": [{"type": "sigstoreSigned", "keyPath": s(&public)}]
    }));
    let only_signed = env.write_list("signed.txt", std::slice::from_ref(&signed));
    let out = home.mirror(&env, &only_signed, &["--overwrite"]);
    let log = text(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(
        log.contains(&format!(
            "Signature for identity \"{}/library/signed\" is not accepted",
            env.src.addr
        )),
        "{log}"
    );
    assert!(
        log.contains("signedIdentity matchRepoDigestOrExact"),
        "{log}"
    );

    // keyData (base64 of the PEM) with exactRepository, by digest: accepted.
    let raw = skopeo_raw(&signed).expect("source index");
    let pinned = format!("{}/library/signed@{}", env.src.addr, sha(&raw));
    let pem = std::fs::read(&public).expect("public key");
    home.set(serde_json::json!({
        "default": [{"type": "reject"}],
        "transports": {"docker": {format!("{}/library/signed", env.src.addr): [{
            "type": "sigstoreSigned",
            "keyData": base64::engine::general_purpose::STANDARD.encode(pem),
            "signedIdentity": {
                "type": "exactRepository",
                "dockerRepository": format!("{}/library/signed", env.src.addr)
            }
        }]}}
    }));
    let out = home.mirror(&env, &env.write_list("pinned.txt", &[pinned]), &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(skopeo_raw(&format!("{}/library/signed@{}", env.dst.addr, sha(&raw))).is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_fleet_honours_the_policy_too() {
    let env = Env::new();
    let home = Home::new();
    let nats = NatsProcess::start().expect("nats-server");
    push_plain(&env, "library/signed", 500).await;
    push_plain(&env, "library/plain", 510).await;
    let (key, public) = generate(env.dir.path(), "fleet");
    let signed = format!("{}/library/signed:v1", env.src.addr);
    let plain = format!("{}/library/plain:v1", env.src.addr);
    sign(&env, &signed, &key);
    home.set(serde_json::json!({
        "default": [{
            "type": "sigstoreSigned",
            "keyPath": s(&public),
            "signedIdentity": {"type": "matchRepository"}
        }]
    }));
    let _worker = common::fleet::worker(&nats.url(), &env.path("worker.log"), &[], &[]);
    let list = env.write_list("list.txt", &[signed.clone(), plain.clone()]);
    let out = home.run(&[
        "submit",
        &s(&list),
        "--tls-verify=false",
        "-d",
        &env.dst.addr,
        "--nats",
        &nats.url(),
        "-o",
        &s(&env.path("failed.txt")),
    ]);
    let log = text(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(log.contains("runs on the fleet"), "{log}");
    assert!(
        log.contains("A signature was required, but no signature exists"),
        "{log}"
    );
    assert_eq!(failed(&env), vec![plain]);
    assert!(skopeo_raw(&format!("{}/library/signed:v1", env.dst.addr)).is_some());
    assert!(skopeo_raw(&format!("{}/library/plain:v1", env.dst.addr)).is_none());
}

/// A source registry whose `.sig` holds 100 signatures (none valid) costs at most 64
/// fetched and checked payloads, whatever it holds: the image is refused saying so, and
/// only the newest 64 (the last: cosign appends) are asked for.
#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_signatures_is_checked_up_to_sixty_four() {
    let env = Env::new();
    let home = Home::new();
    let src = registry(&env.src.addr).await;
    let image = push_image(
        &src,
        env.dir.path(),
        "library/flood",
        Some("v1"),
        Format::Oci,
        "amd64",
        (&[430], 10_000),
    )
    .await;
    let (_, public) = generate(env.dir.path(), "trusted");
    let config = hangar_loadtest::seed::push_bytes(
        &src,
        "library/flood",
        "application/vnd.oci.image.config.v1+json",
        bytes::Bytes::from_static(b"{}"),
    )
    .await
    .expect("config");
    let mut payloads = Vec::new();
    for i in 0..100 {
        let body = format!(
            r#"{{"critical":{{"identity":{{"docker-reference":"x"}},"image":{{"docker-manifest-digest":"{}"}},"type":"cosign container image signature"}},"optional":{{"n":{i}}}}}"#,
            image.digest
        );
        payloads.push(
            hangar_loadtest::seed::push_bytes(
                &src,
                "library/flood",
                hangar_shared::sign::cosign::SIMPLE_SIGNING,
                bytes::Bytes::from(body),
            )
            .await
            .expect("payload"),
        );
    }
    let garbage = base64::engine::general_purpose::STANDARD.encode([7u8; 70]);
    let layers: Vec<serde_json::Value> = payloads
        .iter()
        .map(|d| {
            serde_json::json!({
                "mediaType": d.media_type, "digest": d.digest.to_string(), "size": d.size,
                "annotations": {"dev.cosignproject.cosign/signature": garbage}
            })
        })
        .collect();
    let sig = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": config.media_type, "digest": config.digest.to_string(), "size": config.size},
        "layers": layers,
    });
    hangar_loadtest::seed::push_manifest(
        &src,
        "library/flood",
        &format!("sha256-{}.sig", image.digest.hex()),
        "application/vnd.oci.image.manifest.v1+json",
        bytes::Bytes::from(sig.to_string()),
    )
    .await
    .expect("sig manifest");
    home.set(serde_json::json!({
        "default": [{"type": "reject"}],
        "transports": {"docker": {env.src.addr.clone(): [{
            "type": "sigstoreSigned",
            "keyPath": s(&public),
            "signedIdentity": {"type": "matchRepository"}
        }]}}
    }));
    let line = format!("{}/library/flood:v1", env.src.addr);
    let list = env.write_list("list.txt", std::slice::from_ref(&line));
    let out = home.mirror(&env, &list, &[]);
    let log = text(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(
        log.contains("100 signatures on sha256-")
            && log.contains("only the newest 64 were checked"),
        "{log}"
    );
    let gets = blob_gets(&env.src.log());
    let fetched: Vec<usize> = (0..100)
        .filter(|i| gets.contains_key(&payloads[*i].digest.to_string()))
        .collect();
    assert_eq!(fetched, (36..100).collect::<Vec<_>>(), "payloads fetched");
}
