//! Docker schema 1 sources: a real registry (distribution with its schema 1 switch on, which
//! verifies the manifest's JWS signature) holds a signed schema 1 image; `mirror` and `save`
//! convert it to schema 2 as Hangar does, with the layers' uncompressed digests as
//! `diff_ids`; skopeo reads the result; the validations pass; `load` lands the same digest.

mod common;

use std::io::Write;

use base64::Engine;
use common::*;
use hangar_loadtest::seed::{self, Format};
use hangar_loadtest::services::{RegistryConfig, RegistryProcess};
use hangar_shared::digest::Digest;
use p256::ecdsa::signature::Signer;
use serde::Serialize;
use serde_json::{Value, json};

const SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

fn b64(bytes: impl AsRef<[u8]>) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A schema 1 manifest signed as libtrust signs one: the document indented by three spaces,
/// a protected header saying where the signatures go in, an ES256 JWS with its key.
fn sign_schema1(doc: &Value) -> Vec<u8> {
    let mut payload = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"   ");
    doc.serialize(&mut serde_json::Serializer::with_formatter(
        &mut payload,
        formatter,
    ))
    .unwrap();
    let close = payload.iter().rposition(|b| *b == b'}').unwrap();
    let format_length = payload[..close]
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .unwrap()
        + 1;
    let protected = b64(json!({
        "formatLength": format_length,
        "formatTail": b64(&payload[format_length..]),
        "time": "2026-11-29T00:00:00Z"
    })
    .to_string());
    let key = p256::ecdsa::SigningKey::from_bytes(&[7u8; 32].into()).unwrap();
    let signature: p256::ecdsa::Signature =
        key.sign(format!("{protected}.{}", b64(&payload)).as_bytes());
    let point = key.verifying_key().to_encoded_point(false);
    let signatures = json!([{
        "header": {
            "jwk": {"crv": "P-256", "kty": "EC", "x": b64(point.x().unwrap()), "y": b64(point.y().unwrap())},
            "alg": "ES256"
        },
        "signature": b64(signature.to_bytes()),
        "protected": protected
    }]);
    let mut signed = payload[..format_length].to_vec();
    signed.extend_from_slice(b",\n   \"signatures\": ");
    signed.extend_from_slice(signatures.to_string().as_bytes());
    signed.extend_from_slice(b"\n}");
    signed
}

fn v1_id(n: u8) -> String {
    Digest::of(&[n]).hex().to_owned()
}

/// The schema 1 image `repo:v1`: two layers and a `throwaway` one on top. Returns the
/// layers' (blob, diff_id) oldest first, without the throwaway one, and the manifest's digest.
async fn push_schema1(
    addr: &str,
    dir: &std::path::Path,
    repo: &str,
) -> (Vec<(Digest, Digest)>, Digest) {
    let reg = registry(addr).await;
    let mut layers = Vec::new();
    for seed_n in [11, 12] {
        let file = seed::write_layer(dir, seed_n, 300_000).unwrap();
        seed::push_layer_file(&reg, repo, Format::Docker, &file, None)
            .await
            .unwrap();
        layers.push((file.digest.clone(), file.diff_id.clone()));
    }
    // The empty layer an instruction like CMD leaves: a gzip of an empty tar.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&[0u8; 1024]).unwrap();
    let empty = seed::push_bytes(
        &reg,
        repo,
        Format::Docker.layer_type(),
        gz.finish().unwrap().into(),
    )
    .await
    .unwrap();
    let compat = |n: u8, parent: Option<u8>, cmd: &str, throwaway: bool| {
        let mut c = json!({
            "id": v1_id(n),
            "created": format!("2016-0{n}-01T00:00:00Z"),
            "container_config": {"Cmd": ["/bin/sh", "-c", cmd]},
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["sh"], "Env": ["PATH=/bin"]}
        });
        if let Some(p) = parent {
            c["parent"] = json!(v1_id(p));
        }
        if throwaway {
            c["throwaway"] = json!(true);
        }
        json!({"v1Compatibility": c.to_string()})
    };
    let doc = json!({
        "schemaVersion": 1,
        "name": repo,
        "tag": "v1",
        "architecture": "amd64",
        "fsLayers": [
            {"blobSum": empty.digest.to_string()},
            {"blobSum": layers[1].0.to_string()},
            {"blobSum": layers[0].0.to_string()}
        ],
        "history": [
            compat(3, Some(2), "#(nop) CMD [\"sh\"]", true),
            compat(2, Some(1), "#(nop) ADD file:app in /", false),
            compat(1, None, "#(nop) ADD file:base in /", false)
        ]
    });
    let signed = sign_schema1(&doc);
    let manifest = seed::push_manifest(&reg, repo, "v1", SIGNED, signed.into())
        .await
        .expect("the registry takes the signed schema1 manifest");
    let _ = manifest;
    // The registry names it by its payload, which the GET's digest header says.
    let out = std::process::Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", "--format", "{{.Digest}}"])
        .arg(format!("docker://{addr}/{repo}:v1"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo inspect source: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let digest: Digest = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    (layers, digest)
}

/// The schema 2 manifest listed by the index at `addr/repo:v1`, with its config.
fn converted_at(addr: &str, repo: &str) -> (String, Value, Value) {
    let index: Value =
        serde_json::from_slice(&skopeo_raw(&format!("{addr}/{repo}:v1")).expect("destination tag"))
            .unwrap();
    let entries = index["manifests"].as_array().expect("an index");
    assert_eq!(entries.len(), 1, "{index}");
    assert_eq!(
        entries[0]["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    assert_eq!(entries[0]["platform"]["architecture"], "amd64");
    let digest = entries[0]["digest"].as_str().unwrap().to_owned();
    let manifest: Value =
        serde_json::from_slice(&skopeo_raw(&format!("{addr}/{repo}@{digest}")).unwrap()).unwrap();
    let out = std::process::Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", "--config", "--raw"])
        .arg(format!("docker://{addr}/{repo}@{digest}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        digest,
        manifest,
        serde_json::from_slice(&out.stdout).unwrap(),
    )
}

#[tokio::test]
async fn a_schema1_source_is_converted_to_schema2_by_mirror_save_and_load() {
    let src = RegistryProcess::start_with(RegistryConfig {
        schema1: true,
        ..Default::default()
    })
    .unwrap();
    let env = Env::new();
    let (layers, schema1_digest) = push_schema1(&src.addr, env.dir.path(), "lib/old").await;
    let list = env.write_list("list.txt", &[format!("{}/lib/old:v1", src.addr)]);

    let out = env.mirror(&list, &[]);
    assert!(out.status.success(), "mirror: {}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "Docker schema1 manifest {schema1_digest} converted to schema2"
        )),
        "the log says the digest changes: {}",
        text(&out)
    );
    let (digest, manifest, config) = converted_at(&env.dst.addr, "lib/old");
    assert_ne!(digest, schema1_digest.to_string());
    // The throwaway layer is gone; the others keep their blobs, oldest first.
    let blobs: Vec<&str> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap())
        .collect();
    let expect: Vec<String> = layers.iter().map(|(b, _)| b.to_string()).collect();
    assert_eq!(blobs, expect);
    let diff_ids: Vec<String> = layers.iter().map(|(_, d)| d.to_string()).collect();
    assert_eq!(config["rootfs"]["diff_ids"], json!(diff_ids));
    assert_eq!(config["history"].as_array().unwrap().len(), 3);
    assert_eq!(config["history"][2]["empty_layer"], true);
    assert_eq!(
        config["history"][0]["created_by"],
        "/bin/sh -c #(nop) ADD file:base in /"
    );
    assert_eq!(config["config"]["Cmd"], json!(["sh"]));
    assert!(
        config.get("id").is_none() && config.get("parent").is_none(),
        "{config}"
    );

    // skopeo copies the converted image, checking every blob and the config.
    let copied = env.path("copied");
    let out = std::process::Command::new("skopeo")
        .args(["copy", "--src-tls-verify=false"])
        .arg(format!("docker://{}/lib/old@{digest}", env.dst.addr))
        .arg(format!("dir:{}", copied.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo copy: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The conversion is the same every time: validation compares with it.
    let validate = hangar(&[
        "mirror",
        "validate",
        "--tls-verify=false",
        "-f",
        list.to_str().unwrap(),
        "-d",
        &env.dst.addr,
    ]);
    assert!(validate.status.success(), "{}", text(&validate));
    assert_eq!(
        text(&validate).matches("PASS:").count(),
        1,
        "{}",
        text(&validate)
    );

    // save → the archive holds the converted image; save validate passes; load lands it
    // at the same digest.
    let archive = env.path("old.zip");
    let a = archive.to_str().unwrap();
    let saved = hangar(&[
        "save",
        "--tls-verify=false",
        "-y",
        "-f",
        list.to_str().unwrap(),
        "-d",
        a,
    ]);
    assert!(saved.status.success(), "save: {}", text(&saved));
    let v = hangar(&[
        "save",
        "validate",
        "--tls-verify=false",
        "-f",
        list.to_str().unwrap(),
        "-d",
        a,
    ]);
    assert!(v.status.success(), "save validate: {}", text(&v));
    assert_eq!(text(&v).matches("PASS").count(), 1, "{}", text(&v));
    let third = RegistryProcess::start().unwrap();
    let loaded = hangar(&["load", "--tls-verify=false", "-s", a, "-d", &third.addr]);
    assert!(loaded.status.success(), "load: {}", text(&loaded));
    let (loaded_digest, _, _) = converted_at(&third.addr, "lib/old");
    assert_eq!(loaded_digest, digest);
}

#[tokio::test]
async fn a_schema1_image_is_refused_by_commands_that_act_where_it_is() {
    let src = RegistryProcess::start_with(RegistryConfig {
        schema1: true,
        ..Default::default()
    })
    .unwrap();
    let env = Env::new();
    push_schema1(&src.addr, env.dir.path(), "lib/old").await;
    let list = env.write_list("list.txt", &[format!("{}/lib/old:v1", src.addr)]);
    let failed = env.path("failed.txt");
    let out = hangar(&[
        "inspect",
        "list",
        "--tls-verify=false",
        "-y",
        "-f",
        list.to_str().unwrap(),
        "-o",
        failed.to_str().unwrap(),
        "-r",
        env.path("report.txt").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(
        std::fs::read_to_string(&failed).unwrap(),
        format!("{}/lib/old:v1\n", src.addr)
    );
    assert!(
        text(&out)
            .contains("a Docker schema1 image is converted to schema2 only where it is copied to"),
        "{}",
        text(&out)
    );
}

/// On the fleet the converted config travels inline in the platform's tasks (the source
/// has no such blob): a worker lands the same digest an embedded mirror does.
#[tokio::test(flavor = "multi_thread")]
async fn the_fleet_lands_a_converted_schema1_image_at_the_same_digest() {
    let src = RegistryProcess::start_with(RegistryConfig {
        schema1: true,
        ..Default::default()
    })
    .unwrap();
    let env = Env::new();
    push_schema1(&src.addr, env.dir.path(), "lib/old").await;
    let list = env.write_list("list.txt", &[format!("{}/lib/old:v1", src.addr)]);
    let out = env.mirror(&list, &[]);
    assert!(out.status.success(), "embedded mirror: {}", text(&out));
    let (embedded, _, _) = converted_at(&env.dst.addr, "lib/old");

    let nats = hangar_loadtest::services::NatsProcess::start().expect("nats-server");
    let authfile = env.path("auth.json");
    std::fs::write(&authfile, r#"{"auths":{}}"#).unwrap();
    let port = hangar_loadtest::services::free_port().unwrap();
    let _worker = common::fleet::start_worker(
        &nats.url(),
        &authfile,
        env.path("worker.log"),
        &format!("127.0.0.1:{port}"),
    );
    let fleet_dst = RegistryProcess::start().unwrap();
    let out = hangar(&[
        "submit",
        list.to_str().unwrap(),
        "--tls-verify=false",
        "-d",
        &fleet_dst.addr,
        "--nats",
        &nats.url(),
        "-o",
        env.path("fleet-failed.txt").to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "fleet: {}\nworker: {}",
        text(&out),
        std::fs::read_to_string(env.path("worker.log")).unwrap_or_default()
    );
    let (fleet, _, config) = converted_at(&fleet_dst.addr, "lib/old");
    assert_eq!(fleet, embedded);
    assert_eq!(config["rootfs"]["type"], "layers");
}
