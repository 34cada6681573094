//! Requests sent at once rather than one round trip after another, shown by a peer
//! (`common::hostile`) that holds one request until another has arrived.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::hostile::{Seen, mirror_one, start_hostile, start_hostile_seeing};
use common::{Env, run_measured};
use hangar_loadtest::seed::Format;

/// The source's tags (for the image's signatures) are listed while its tag is read, not one
/// round trip after: the peer answers the tag only once the listing has arrived.
#[tokio::test(flavor = "multi_thread")]
async fn the_source_tags_are_listed_while_its_tag_is_read() {
    let env = Env::new();
    let hostile = start_hostile().await;
    let run = mirror_one(&env, &hostile.addr, "waits", "60s", Duration::from_secs(60));
    assert!(run.success, "{}", run.output);
    assert!(
        hostile.seen.waits_listed_before_tag.load(Ordering::SeqCst),
        "the tag was read before the tags were listed"
    );
    let copied = common::skopeo_raw(&format!("{}/waits/app:1", env.dst.addr));
    assert!(copied.is_some(), "nothing at the destination");
}

/// The sources are connected while the destinations are asked whether they answer (before
/// any image is planned), not after: each peer holds its `/v2/` until the other's arrives.
/// The destination here holds no repository, so the copy itself fails.
#[tokio::test(flavor = "multi_thread")]
async fn sources_are_connected_while_the_destination_is_asked() {
    let env = Env::new();
    let seen = Arc::new(Seen {
        hold_v2: true,
        ..Seen::default()
    });
    let source = start_hostile_seeing(false, seen.clone()).await;
    let dest = start_hostile_seeing(false, seen.clone()).await;
    let list = env.write_list("pair.txt", &[format!("{}/waits/app:1", source.addr)]);
    let failed = env.path("pair-failed.txt");
    let run = run_measured(
        &[
            "mirror",
            "--tls-verify=false",
            "-f",
            list.to_str().expect("utf-8"),
            "-d",
            &dest.addr,
            "-o",
            failed.to_str().expect("utf-8"),
        ],
        Duration::from_secs(60),
    );
    assert!(
        seen.v2_overlapped.load(Ordering::SeqCst),
        "the source was asked only after the destination answered\n{}",
        run.output
    );
}

/// The destination's tag is read once per image, by the plan's look: a tag found empty
/// takes the image's index without a second read. Two lines writing one tag still merge:
/// the second index reads what the first wrote.
#[tokio::test(flavor = "multi_thread")]
async fn the_destination_tag_is_read_once_unless_another_line_writes_it() {
    let env = Env::new();
    let src = common::registry(&env.src.addr).await;
    let dir = env.dir.path();
    common::push_multiarch(&src, dir, "c/multi", "1", Format::Oci, 700).await;
    common::push_image(
        &src,
        dir,
        "c/solo",
        Some("1"),
        Format::Oci,
        "amd64",
        (&[710], 2_000),
    )
    .await;
    let amd = common::push_image(
        &src,
        dir,
        "a/app",
        Some("1"),
        Format::Oci,
        "amd64",
        (&[720], 2_000),
    )
    .await;
    let arm = common::push_image(
        &src,
        dir,
        "b/app",
        Some("1"),
        Format::Oci,
        "arm64",
        (&[730], 2_000),
    )
    .await;
    let mirror = |list: &std::path::Path, extra: &[&str]| {
        let failed = env.path("failed.txt");
        let mut args = vec![
            "mirror",
            "--tls-verify=false",
            "-f",
            list.to_str().expect("utf-8"),
            "-d",
            &env.dst.addr,
            "-o",
            failed.to_str().expect("utf-8"),
            "-j",
            "4",
        ];
        args.extend_from_slice(extra);
        let out = common::hangar(&args);
        assert!(out.status.success(), "{}", common::text(&out));
    };
    // hangar's reads only (skopeo checks below read too).
    let tag_reads = |repo: &str| {
        let line = format!("\"GET /v2/{repo}/manifests/1 ");
        env.dst
            .log()
            .lines()
            .filter(|l| l.contains(&line) && l.contains("\"hangar-fleet/"))
            .count()
    };

    let fresh = env.write_list(
        "fresh.txt",
        &[
            format!("{}/c/multi:1", env.src.addr),
            format!("{}/c/solo:1", env.src.addr),
        ],
    );
    mirror(&fresh, &[]);
    assert_eq!(tag_reads("c/multi"), 1, "{}", env.dst.log());
    assert_eq!(tag_reads("c/solo"), 1, "{}", env.dst.log());
    for repo in ["c/multi", "c/solo"] {
        let at = common::skopeo_raw(&format!("{}/{repo}:1", env.dst.addr));
        assert!(at.is_some(), "{repo}:1 at the destination");
    }

    let one_tag = env.write_list(
        "one-tag.txt",
        &[
            format!("{}/a/app:1", env.src.addr),
            format!("{}/b/app:1", env.src.addr),
        ],
    );
    mirror(&one_tag, &["--destination-project", "p"]);
    let merged = common::skopeo_raw(&format!("{}/p/app:1", env.dst.addr)).expect("p/app:1");
    let mut listed = common::index_digests(&merged);
    listed.sort();
    let mut want = vec![amd.digest.to_string(), arm.digest.to_string()];
    want.sort();
    assert_eq!(listed, want, "both lines' platforms in the one index");
    // Each line's plan looks once, and each index reads the tag again before it goes up:
    // the other line may have written it since (whether it did depends on timing).
    assert_eq!(tag_reads("p/app"), 4, "{}", env.dst.log());
}
