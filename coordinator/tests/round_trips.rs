//! Requests sent at once rather than one round trip after another, shown by a peer
//! (`common::hostile`) that holds one request until another has arrived.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::hostile::{Seen, mirror_one, start_hostile, start_hostile_seeing};
use common::{Env, run_measured};

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
