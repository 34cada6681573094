//! `hangar-coord mirror` end to end against real registries, cross-checked with skopeo: what
//! arrives (platform digests, indexes, attestations, pinned lines), what fails, and a dry run.

mod common;

use common::*;
use hangar_loadtest::seed::{self, Format};
use hangar_shared::manifest::{ANNOTATION_REFERENCE_DIGEST, ANNOTATION_REFERENCE_TYPE, Platform};

#[tokio::test(flavor = "multi_thread")]
async fn mirror_single_docker_and_oci_images_preserve_platform_digests() {
    let env = Env::new();
    let src = registry(&env.src.addr).await;
    let docker = push_image(
        &src,
        env.dir.path(),
        "team/docker-app",
        Some("1.0"),
        Format::Docker,
        "amd64",
        (&[1, 2], 40_000),
    )
    .await;
    let oci = push_image(
        &src,
        env.dir.path(),
        "team/oci-app",
        Some("2.0"),
        Format::Oci,
        "amd64",
        (&[3], 40_000),
    )
    .await;
    let list = env.write_list(
        "list.txt",
        &[
            format!("{}/team/docker-app:1.0", env.src.addr),
            format!("{}/team/oci-app:2.0", env.src.addr),
        ],
    );
    let out = env.mirror(&list, &["-j", "2"]);
    assert!(out.status.success(), "{}", text(&out));
    for (repo, tag, m) in [
        ("team/docker-app", "1.0", &docker),
        ("team/oci-app", "2.0", &oci),
    ] {
        let top =
            skopeo_raw(&format!("{}/{repo}:{tag}", env.dst.addr)).expect("destination tag exists");
        let v: serde_json::Value = serde_json::from_slice(&top).unwrap();
        assert_eq!(
            v["mediaType"], "application/vnd.oci.image.index.v1+json",
            "Hangar wraps single images in an OCI index"
        );
        assert_eq!(index_digests(&top), vec![m.digest.to_string()]);
        assert_eq!(v["manifests"][0]["platform"]["architecture"], "amd64");
        let platform = skopeo_raw(&format!("{}/{repo}@{}", env.dst.addr, m.digest))
            .expect("platform manifest by digest");
        assert_eq!(
            platform,
            m.bytes.to_vec(),
            "platform manifest pushed byte for byte"
        );
    }
    assert!(
        !env.path("failed.txt").exists(),
        "no failed list when nothing failed"
    );
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
    assert_eq!(text(&validate).matches("PASS:").count(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn mirror_complete_index_keeps_its_digest_and_subset_gets_hangar_index() {
    let env = Env::new();
    let src = registry(&env.src.addr).await;
    let (idx, amd, arm) = push_multiarch(
        &src,
        env.dir.path(),
        "library/multi",
        "v1",
        Format::Docker,
        10,
    )
    .await;
    let list = env.write_list("list.txt", &[format!("{}/library/multi:v1", env.src.addr)]);

    // Only amd64: an OCI index built by Hangar's rules, platform digest preserved.
    let out = env.mirror(&list, &["--arch", "amd64"]);
    assert!(out.status.success(), "{}", text(&out));
    let top = skopeo_raw(&format!("{}/library/multi:v1", env.dst.addr)).unwrap();
    assert_eq!(index_digests(&top), vec![amd.digest.to_string()]);
    assert_ne!(sha(&top), idx.digest.to_string());

    // A later arm64-only run merges into the same index.
    let out = env.mirror(&list, &["--arch", "arm64"]);
    assert!(out.status.success(), "{}", text(&out));
    let merged = skopeo_raw(&format!("{}/library/multi:v1", env.dst.addr)).unwrap();
    assert_eq!(
        index_digests(&merged),
        vec![amd.digest.to_string(), arm.digest.to_string()]
    );

    // Every platform selected and nothing else under the tag: the source index unchanged.
    let out = env.mirror(&list, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let full = skopeo_raw(&format!("{}/library/multi:v1", env.dst.addr)).unwrap();
    assert_eq!(
        sha(&full),
        idx.digest.to_string(),
        "complete index keeps its digest"
    );
    assert_eq!(full, idx.bytes.to_vec());
    assert!(text(&out).contains("source digest preserved"));
}

#[tokio::test(flavor = "multi_thread")]
async fn mirror_copies_provenance_attestations_with_their_images() {
    let env = Env::new();
    let src = registry(&env.src.addr).await;
    let dir = env.dir.path();
    let amd = push_image(
        &src,
        dir,
        "library/prov",
        None,
        Format::Oci,
        "amd64",
        (&[20], 30_000),
    )
    .await;
    let arm = push_image(
        &src,
        dir,
        "library/prov",
        None,
        Format::Oci,
        "arm64",
        (&[21], 30_000),
    )
    .await;
    let att = |of: &hangar_shared::manifest::RawManifest| serde_json::json!({ANNOTATION_REFERENCE_DIGEST: of.digest.to_string(), ANNOTATION_REFERENCE_TYPE: "attestation-manifest"});
    let unknown = Platform {
        architecture: "unknown".into(),
        os: "unknown".into(),
        ..Default::default()
    };
    let att_amd = push_image(
        &src,
        dir,
        "library/prov",
        None,
        Format::Oci,
        "unknown",
        (&[22], 2_000),
    )
    .await;
    let att_arm = push_image(
        &src,
        dir,
        "library/prov",
        None,
        Format::Oci,
        "unknown",
        (&[23], 2_000),
    )
    .await;
    push_index(
        &src,
        "library/prov",
        "v1",
        Format::Oci,
        &[
            (amd.clone(), seed::platform("amd64"), None),
            (arm.clone(), seed::platform("arm64"), None),
            (att_amd.clone(), unknown.clone(), Some(att(&amd))),
            (att_arm.clone(), unknown.clone(), Some(att(&arm))),
        ],
    )
    .await;
    let list = env.write_list("list.txt", &[format!("{}/library/prov:v1", env.src.addr)]);

    let out = env.mirror(&list, &["--arch", "amd64"]);
    assert!(out.status.success(), "{}", text(&out));
    let top = skopeo_raw(&format!("{}/library/prov:v1", env.dst.addr)).unwrap();
    assert_eq!(
        index_digests(&top),
        vec![amd.digest.to_string(), att_amd.digest.to_string()]
    );
    assert!(skopeo_raw(&format!("{}/library/prov@{}", env.dst.addr, att_amd.digest)).is_some());
    assert!(skopeo_raw(&format!("{}/library/prov@{}", env.dst.addr, att_arm.digest)).is_none());

    let out = env.mirror(
        &list,
        &["--arch", "amd64", "--provenance=false", "--overwrite"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let top = skopeo_raw(&format!("{}/library/prov:v1", env.dst.addr)).unwrap();
    assert_eq!(index_digests(&top), vec![amd.digest.to_string()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn mirror_digest_pinned_and_mirror_format_lines() {
    let env = Env::new();
    let src = registry(&env.src.addr).await;
    let (idx, _, _) = push_multiarch(
        &src,
        env.dir.path(),
        "library/pinned",
        "v1",
        Format::Oci,
        30,
    )
    .await;
    let single = push_image(
        &src,
        env.dir.path(),
        "team/app",
        Some("3.1"),
        Format::Docker,
        "amd64",
        (&[40], 20_000),
    )
    .await;
    let list = env.write_list(
        "list.txt",
        &[
            format!("{}/library/pinned@{}", env.src.addr, idx.digest),
            format!("{}/library/pinned:stable@{}", env.src.addr, idx.digest),
            format!("{}/team/app mirrored/app-copy 3.1", env.src.addr),
        ],
    );
    let out = env.mirror(&list, &["-j", "3"]);
    assert!(out.status.success(), "{}", text(&out));
    let by_digest = skopeo_raw(&format!("{}/library/pinned@{}", env.dst.addr, idx.digest))
        .expect("index by digest");
    assert_eq!(by_digest, idx.bytes.to_vec());
    let tagged = skopeo_raw(&format!("{}/library/pinned:stable", env.dst.addr))
        .expect("pinned line with tag");
    assert_eq!(sha(&tagged), idx.digest.to_string());
    let mirrored = skopeo_raw(&format!("{}/mirrored/app-copy:3.1", env.dst.addr))
        .expect("mirror-format destination");
    assert_eq!(index_digests(&mirrored), vec![single.digest.to_string()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn mirror_failures_go_to_the_failed_list_with_exit_1() {
    let env = Env::new();
    let src = registry(&env.src.addr).await;
    push_image(
        &src,
        env.dir.path(),
        "team/ok",
        Some("1"),
        Format::Oci,
        "amd64",
        (&[50], 10_000),
    )
    .await;
    // An index nested in an index: a media type we cannot copy as a platform image.
    let inner = push_multiarch(
        &src,
        env.dir.path(),
        "team/nested",
        "inner",
        Format::Oci,
        60,
    )
    .await
    .0;
    push_index(
        &src,
        "team/nested",
        "outer",
        Format::Oci,
        &[(inner, seed::platform("amd64"), None)],
    )
    .await;
    let missing_line = format!("{}/team/missing:1", env.src.addr);
    let nested_line = format!("{}/team/nested:outer", env.src.addr);
    let upper_line = format!("{}/team/UPPER:1", env.src.addr);
    let pinned = push_multiarch(&src, env.dir.path(), "team/pinned", "v1", Format::Oci, 70)
        .await
        .0;
    let partial_pin_line = format!("{}/team/pinned@{}", env.src.addr, pinned.digest);
    let list = env.write_list(
        "list.txt",
        &[
            format!("{}/team/ok:1", env.src.addr),
            missing_line.clone(),
            "TEST INVALID IMAGE LIST LINE".into(),
            nested_line.clone(),
            upper_line.clone(),
            partial_pin_line.clone(),
        ],
    );
    let out = env.mirror(&list, &["-j", "2", "--arch", "amd64"]);
    let log = text(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(log.contains("some images failed to copy"), "{log}");
    assert!(
        log.contains("[IMG:4]") && log.contains("invalid repository name component \"UPPER\""),
        "{log}"
    );
    assert!(log.contains("copies the whole index"), "{log}");
    assert!(
        log.contains("invalid format") && log.contains(":3)"),
        "invalid line named with its line number: {log}"
    );
    assert!(log.contains("not-found"), "{log}");
    assert!(
        log.contains("unsupported media type application/vnd.oci.image.index.v1+json"),
        "{log}"
    );
    let mut failed: Vec<String> = std::fs::read_to_string(env.path("failed.txt"))
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    failed.sort();
    let mut expected = vec![missing_line, nested_line, upper_line, partial_pin_line];
    expected.sort();
    assert_eq!(failed, expected);
    assert!(
        skopeo_raw(&format!("{}/team/ok:1", env.dst.addr)).is_some(),
        "the good image still went through"
    );
}

#[tokio::test]
async fn dry_run_plans_without_copying() {
    let env = Env::new();
    let lines = seed_shared_repos(&env, 3).await;
    // The destination already has the first image (and so the two shared base layers).
    let first = env.write_list("first.txt", &lines[..1]);
    assert!(env.mirror(&first, &[]).status.success());
    let list = env.write_list("all.txt", &lines);
    let out = env.mirror(&list, &["--dry-run"]);
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    // The first is found at its tag, as the copy would find it; the other two need 2
    // configs, the 2 shared base layers and 2 own layers: 6 unique blobs in one registry.
    assert!(
        log.contains("Plan: 3 images (2 to copy, 1 already present, 0 skipped, 0 failed), 2 platform manifests; 6 unique blobs"),
        "{log}"
    );
    assert!(log.contains("already present (sha256:"), "{log}");

    // The first image's tag now names an index that lists nothing: it is planned again.
    let dst = registry(&env.dst.addr).await;
    let empty = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;
    hangar_loadtest::seed::push_manifest(
        &dst,
        "shared/app-0",
        "v1",
        "application/vnd.oci.image.index.v1+json",
        bytes::Bytes::from_static(empty),
    )
    .await
    .expect("push an empty index");
    let out = env.mirror(&list, &["--dry-run"]);
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    // 3 configs, 2 shared base layers and 3 own layers: 8 unique blobs in one registry...
    assert!(
        log.contains("Plan: 3 images (3 to copy, 0 already present, 0 skipped, 0 failed), 3 platform manifests; 8 unique blobs"),
        "{log}"
    );
    // ...of which the destination holds the first image's four; 30 KB layers in 60 KB
    // volumes give one image per volume.
    assert!(
        log.contains("the destination already holds 4 of them"),
        "{log}"
    );
    assert!(log.contains("measured"), "{log}");
    for line in &lines[1..] {
        assert!(
            skopeo_raw(&line.replace(&env.src.addr, &env.dst.addr)).is_none(),
            "nothing copied"
        );
    }
    let archive = env.path("plan.zip");
    let out = hangar(&[
        "save",
        "--tls-verify=false",
        "--dry-run",
        "-f",
        list.to_str().unwrap(),
        "-d",
        archive.to_str().unwrap(),
        "--part-size",
        "60K",
    ]);
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("the archive will be about"), "{log}");
    assert!(log.contains("in 3 volume(s)"), "{log}");
    assert!(
        !archive.exists() && !env.path("plan.part1.zip").exists(),
        "nothing written"
    );
}
