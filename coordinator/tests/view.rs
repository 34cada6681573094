//! `view provenance` and `view sbom` against a real registry: an index with one platform
//! image and its buildx attestation manifest (an SLSA provenance and an SPDX statement),
//! printed to stdout and written with `-o`; an image without attestations fails naming it.

mod common;

use bytes::Bytes;
use common::*;
use hangar_loadtest::seed::{self, Format};
use hangar_shared::manifest::{
    ANNOTATION_REFERENCE_DIGEST, ANNOTATION_REFERENCE_TYPE, Platform, RawManifest,
};
use serde_json::{Value, json};

const IN_TOTO: &str = "application/vnd.in-toto+json";

fn provenance_predicate() -> Value {
    json!({
        "builder": {"id": "https://github.com/example/builder@v1?a=1&b=<2>"},
        "buildType": "https://mobyproject.org/buildkit@v1",
        "invocation": {"configSource": {"entryPoint": "Dockerfile"}},
        "metadata": {"buildStartedOn": "2025-01-01T00:00:00Z", "reproducible": false}
    })
}

fn sbom_predicate() -> Value {
    json!({
        "spdxVersion": "SPDX-2.3",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": "sbom",
        "packages": [{"name": "busybox", "versionInfo": "1.36.1", "SPDXID": "SPDXRef-Package-1"}]
    })
}

const PROVENANCE: &str = "https://slsa.dev/provenance/v0.2";
const SBOM: &str = "https://spdx.dev/Document";

fn statement_of(image: &RawManifest, predicate_type: &str, predicate: Value) -> Value {
    json!({
        "_type": "https://in-toto.io/Statement/v0.1",
        "predicateType": predicate_type,
        "subject": [{"name": "pkg:docker/test/app@v1?platform=linux%2Famd64",
                     "digest": {"sha256": image.digest.hex()}}],
        "predicate": predicate,
    })
}

fn statement(image: &RawManifest, predicate_type: &str, predicate: Value) -> Bytes {
    Bytes::from(serde_json::to_vec(&statement_of(image, predicate_type, predicate)).unwrap())
}

/// A buildx-style attestation manifest for `image`, its two layers the statements.
async fn push_attestation(
    reg: &hangar_shared::registry::Registry,
    repo: &str,
    image: &RawManifest,
) -> RawManifest {
    let config = seed::push_bytes(
        reg,
        repo,
        "application/vnd.oci.image.config.v1+json",
        Bytes::from_static(br#"{"architecture":"unknown","os":"unknown","rootfs":{"type":"layers","diff_ids":[]}}"#),
    )
    .await
    .expect("push config");
    let mut layers = Vec::new();
    for (ty, predicate) in [
        (PROVENANCE, provenance_predicate()),
        (SBOM, sbom_predicate()),
    ] {
        let desc = seed::push_bytes(reg, repo, IN_TOTO, statement(image, ty, predicate))
            .await
            .expect("push statement");
        layers.push(
            json!({"mediaType": IN_TOTO, "digest": desc.digest.to_string(),
                           "size": desc.size, "annotations": {"in-toto.io/predicate-type": ty}}),
        );
    }
    let body = Bytes::from(
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": config.media_type, "digest": config.digest.to_string(), "size": config.size},
            "layers": layers,
        }))
        .unwrap(),
    );
    let digest = hangar_shared::digest::Digest::of(&body).to_string();
    seed::push_manifest(
        reg,
        repo,
        &digest,
        "application/vnd.oci.image.manifest.v1+json",
        body,
    )
    .await
    .expect("push attestation manifest")
}

fn json_of(stdout: &[u8]) -> Value {
    serde_json::from_slice(stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}",
            String::from_utf8_lossy(stdout)
                .chars()
                .take(400)
                .collect::<String>()
        )
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn view_prints_provenance_and_sbom_and_fails_without_attestations() {
    let env = Env::new();
    let reg = registry(&env.src.addr).await;
    let repo = "test/app";
    let amd = push_image(
        &reg,
        env.dir.path(),
        repo,
        None,
        Format::Oci,
        "amd64",
        (&[900, 901], 20_000),
    )
    .await;
    let att = push_attestation(&reg, repo, &amd).await;
    let unknown = Platform {
        architecture: "unknown".into(),
        os: "unknown".into(),
        ..Default::default()
    };
    push_index(
        &reg,
        repo,
        "v1",
        Format::Oci,
        &[
            (amd.clone(), seed::platform("amd64"), None),
            (
                att,
                unknown,
                Some(json!({ANNOTATION_REFERENCE_DIGEST: amd.digest.to_string(),
                            ANNOTATION_REFERENCE_TYPE: "attestation-manifest"})),
            ),
        ],
    )
    .await;
    let image = format!("{}/{repo}:v1", env.src.addr);
    let platform = ["--override-arch", "amd64", "--override-os", "linux"];

    let mut args = vec!["view", "provenance", "--tls-verify=false", &image];
    args.extend(platform);
    let out = hangar(&args);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        json_of(&out.stdout),
        statement_of(&amd, PROVENANCE, provenance_predicate())
    );
    // As Hangar prints it: the whole statement, two-space indent, keys in order.
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.starts_with("{\n  \"_type\": "), "{printed}");
    let at = |key: &str| printed.find(&format!("\n  \"{key}\": ")).expect(key);
    assert!(at("_type") < at("predicate") && at("predicate") < at("predicateType"));
    assert!(at("predicateType") < at("subject"), "{printed}");
    // And Go's escapes of `&`, `<`, `>`.
    assert!(
        printed.contains(r"builder@v1?a=1\u0026b=\u003c2\u003e"),
        "{printed}"
    );

    let mut args = vec!["view", "sbom", "--tls-verify=false", &image];
    args.extend(platform);
    let out = hangar(&args);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        json_of(&out.stdout),
        statement_of(&amd, SBOM, sbom_predicate())
    );

    // -o writes the same JSON to a file (docker:// given explicitly).
    let file = env.path("sbom.json");
    let docker = format!("docker://{image}");
    let file_arg = file.display().to_string();
    let mut args = vec![
        "view",
        "sbom",
        "--tls-verify=false",
        "-o",
        &file_arg,
        &docker,
    ];
    args.extend(platform);
    let out = hangar(&args);
    assert!(out.status.success(), "{}", text(&out));
    let written = std::fs::read(&file).expect("-o file written");
    assert_eq!(
        json_of(&written),
        statement_of(&amd, SBOM, sbom_predicate())
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("SPDX-2.3"),
        "with -o nothing goes to stdout"
    );

    // A platform the index does not hold.
    let out = hangar(&[
        "view",
        "provenance",
        "--tls-verify=false",
        "--override-arch",
        "s390x",
        &image,
    ]);
    assert!(!out.status.success());
    assert!(text(&out).contains("s390x"), "{}", text(&out));

    // An image without attestations fails, naming the image.
    push_image(
        &reg,
        env.dir.path(),
        "test/plain",
        Some("v2"),
        Format::Docker,
        "amd64",
        (&[902], 10_000),
    )
    .await;
    let plain = format!("{}/test/plain:v2", env.src.addr);
    for kind in ["provenance", "sbom"] {
        let out = hangar(&["view", kind, "--tls-verify=false", &plain]);
        assert!(!out.status.success(), "{kind}: {}", text(&out));
        let t = text(&out);
        assert!(t.contains("test/plain"), "{kind}: {t}");
        assert!(t.contains("attestation"), "{kind}: {t}");
    }
}
