//! `mirror` and signatures against real registries: `.sig` attachments carried unless
//! removed, identities pinned on validation, and `--sign-key` signing what a mirror copies.

mod common;

use common::signing::*;
use common::*;
use hangar_loadtest::seed::Format;

#[tokio::test]
async fn mirror_carries_signatures_unless_removed_and_identity_can_be_pinned() {
    let env = Env::new();
    let src = registry(&env.src.addr).await;
    let (_, amd, _) = push_multiarch(
        &src,
        env.dir.path(),
        "library/carry",
        "v1",
        Format::Oci,
        170,
    )
    .await;
    let (key, public) = generate(env.dir.path(), "k");
    let src_list = env.write_list("src.txt", &[format!("{}/library/carry:v1", env.src.addr)]);
    assert!(sign(&env, &src_list, &key, &[]).status.success());

    let out = env.mirror(&src_list, &[]);
    assert!(out.status.success(), "mirror: {}", text(&out));
    let dst_sig = format!(
        "{}/library/carry:{}",
        env.dst.addr,
        sig_tag(&amd.digest.to_string())
    );
    assert!(skopeo_raw(&dst_sig).is_some(), "the signature travelled");
    let dst_list = env.write_list("dst.txt", &[format!("{}/library/carry:v1", env.dst.addr)]);
    let out = validate(&env, &dst_list, &public, &[]);
    assert!(
        out.status.success(),
        "carried signatures verify at the destination: {}",
        text(&out)
    );
    // Pinned to the original repository: accepted; pinned elsewhere: Hangar's message.
    let original = format!("{}/library/carry", env.src.addr);
    let out = validate(&env, &dst_list, &public, &["--exact-repository", &original]);
    assert!(out.status.success(), "{}", text(&out));
    let out = validate(
        &env,
        &dst_list,
        &public,
        &[
            "--exact-repository",
            &format!("{}/library/carry", env.dst.addr),
        ],
    );
    assert!(!out.status.success());
    assert!(
        text(&out).contains("Signature for identity"),
        "{}",
        text(&out)
    );

    // --remove-signatures: nothing carried.
    let other = hangar_loadtest::services::RegistryProcess::start().expect("registry");
    let out = hangar(&[
        "mirror",
        "--tls-verify=false",
        "-f",
        &s(&src_list),
        "-d",
        &other.addr,
        "--remove-signatures",
        "-o",
        &s(&env.path("f.txt")),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(skopeo_raw(&format!("{}/library/carry:v1", other.addr)).is_some());
    assert!(
        skopeo_raw(&format!(
            "{}/library/carry:{}",
            other.addr,
            sig_tag(&amd.digest.to_string())
        ))
        .is_none(),
        "no signature with --remove-signatures"
    );

    // A signature tag listed by itself is refused.
    let sig_list = env.write_list(
        "sig.txt",
        &[format!(
            "{}/library/carry:{}",
            env.src.addr,
            sig_tag(&amd.digest.to_string())
        )],
    );
    let out = env.mirror(&sig_list, &[]);
    assert!(!out.status.success());
    assert!(text(&out).contains("sigstore signature"), "{}", text(&out));
}

#[tokio::test]
async fn mirror_signs_what_it_copies_with_sign_key() {
    let env = Env::new();
    let src = registry(&env.src.addr).await;
    let (_, amd, arm) =
        push_multiarch(&src, env.dir.path(), "library/ms", "v1", Format::Oci, 180).await;
    let (key, public) = generate(env.dir.path(), "k");
    let list = env.write_list("l.txt", &[format!("{}/library/ms:v1", env.src.addr)]);
    let out = env.mirror(
        &list,
        &[
            "--sign-key",
            &s(&key),
            "--sign-passphrase-file",
            &s(&env.path("pass.txt")),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    for d in [&amd.digest, &arm.digest] {
        assert!(
            skopeo_raw(&format!(
                "{}/library/ms:{}",
                env.dst.addr,
                sig_tag(&d.to_string())
            ))
            .is_some()
        );
    }
    let dst_list = env.write_list("d.txt", &[format!("{}/library/ms:v1", env.dst.addr)]);
    let out = validate(
        &env,
        &dst_list,
        &public,
        &[
            "--exact-repository",
            &format!("{}/library/ms", env.dst.addr),
        ],
    );
    assert!(
        out.status.success(),
        "signed as the destination repository: {}",
        text(&out)
    );
    assert_eq!(
        report_verdicts(&env.path("report.json")),
        (3, Vec::new()),
        "the index and both platforms, all signed: {}",
        text(&out)
    );
}

/// Embedded, the index a mirror merged into a tag is signed whatever else the tag held
/// (as Hangar signs it): the process wrote it itself. Only the fleet checks another
/// worker's index against the plan (`sign_index.rs`).
#[tokio::test]
async fn an_index_merged_over_an_unsigned_platform_is_signed_embedded() {
    let env = Env::new();
    let src = registry(&env.src.addr).await;
    let (_, amd, arm) =
        push_multiarch(&src, env.dir.path(), "library/mm", "v1", Format::Oci, 181).await;
    let (key, _) = generate(env.dir.path(), "k");
    let list = env.write_list("l.txt", &[format!("{}/library/mm:v1", env.src.addr)]);
    // An earlier run copied arm64 alone, unsigned.
    let out = env.mirror(&list, &["--arch", "arm64"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = env.mirror(
        &list,
        &[
            "--arch",
            "amd64",
            "--sign-key",
            &s(&key),
            "--sign-passphrase-file",
            &s(&env.path("pass.txt")),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let index = skopeo_raw(&format!("{}/library/mm:v1", env.dst.addr)).expect("index");
    let listed = index_digests(&index);
    assert!(
        listed.contains(&amd.digest.to_string()) && listed.contains(&arm.digest.to_string()),
        "merged: {listed:?}"
    );
    let sig = |d: &str| skopeo_raw(&format!("{}/library/mm:{}", env.dst.addr, sig_tag(d)));
    assert!(sig(&sha(&index)).is_some(), "the merged index is signed");
    assert!(sig(&amd.digest.to_string()).is_some());
    assert!(
        sig(&arm.digest.to_string()).is_none(),
        "the earlier run's stays unsigned"
    );
}
