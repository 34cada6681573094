//! Output that adds up: a no-op re-run counts and logs its images as already present, the
//! blob line's parts add up to its unique total, and validate ends with its count.

mod common;

use common::{Env, seed_shared_repos, text};

/// The numbers of `Blobs: U unique = C copied + K from the cache + M mounted + P already present`.
fn blob_line(log: &str) -> [u64; 5] {
    let line = log
        .lines()
        .find(|l| l.contains("Blobs: "))
        .unwrap_or_else(|| panic!("no blob line in {log}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    let number_before = |word: &str| -> u64 {
        let i = words
            .iter()
            .position(|w| *w == word)
            .unwrap_or_else(|| panic!("no {word:?} in {line}"));
        words[i - 1].parse().unwrap_or_else(|_| panic!("{line}"))
    };
    [
        number_before("unique"),
        number_before("copied"),
        number_before("from"),
        number_before("mounted"),
        number_before("already"),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rerun_is_already_present_and_the_blob_line_adds_up() {
    let env = Env::new();
    // Three images sharing two base layers, each with one of its own.
    let lines = seed_shared_repos(&env, 3).await;
    let list = env.write_list("list.txt", &lines);

    let first = env.mirror(&list, &[]);
    let log = text(&first);
    assert!(first.status.success(), "{log}");
    assert!(
        log.contains("Images: 3 copied, 0 already present, 0 failed"),
        "{log}"
    );
    let [unique, copied, cache, mounted, present] = blob_line(&log);
    assert_eq!(unique, copied + cache + mounted + present, "{log}");
    // 2 shared + 3 own layers and 3 configs, each fetched once; the shared ones mounted
    // into the other two repositories.
    assert_eq!((unique, copied), (8, 8), "{log}");
    assert!(
        log.contains("(and 4 mounts into further repositories)"),
        "{log}"
    );

    let again = env.mirror(&list, &[]);
    let log = text(&again);
    assert!(again.status.success(), "{log}");
    assert!(
        log.contains("Images: 0 copied, 3 already present, 0 failed"),
        "{log}"
    );
    assert_eq!(log.matches("Already present: [").count(), 3, "{log}");
    assert!(!log.contains("Copied image"), "{log}");
    let [unique, copied, cache, mounted, present] = blob_line(&log);
    assert_eq!(unique, copied + cache + mounted + present, "{log}");
    assert_eq!((copied, present), (0, unique), "{log}");
    assert!(log.contains("0 B saved by dedup and mounts"), "{log}");

    let validated = common::hangar(&[
        "mirror",
        "validate",
        "--tls-verify=false",
        "-f",
        list.to_str().expect("utf-8"),
        "-d",
        &env.dst.addr,
    ]);
    assert!(
        text(&validated).contains("Validated: 3 passed, 0 failed, 0 skipped"),
        "{}",
        text(&validated)
    );
}

/// An image whose tag is gone from the destination but whose blobs are still there (an
/// interrupted run, a deleted tag) is copied again without a blob sent or fetched: each
/// blob is asked for as a mount from its own repository (a HEAD beside it until the
/// registry has shown it mounts) and found present — no upload.
#[tokio::test(flavor = "multi_thread")]
async fn blobs_already_at_the_destination_are_found_and_not_sent() {
    let env = Env::new();
    let lines = seed_shared_repos(&env, 2).await;
    let list = env.write_list("list.txt", &lines);
    let first = env.mirror(&list, &[]);
    assert!(first.status.success(), "{}", text(&first));
    let log = env.dst.log();
    // The source's tags listed once per image, for its signatures and attestations.
    assert_eq!(env.src.log().matches("/tags/list").count(), 2);

    let dst = common::registry(&env.dst.addr).await;
    let tagged = dst
        .manifest_opt(
            "shared/app-0",
            "v1",
            hangar_shared::registry::Side::Destination,
        )
        .await
        .expect("read")
        .expect("tagged");
    dst.delete_manifest("shared/app-0", &tagged.digest)
        .await
        .expect("delete");
    let puts_before = log.matches("\"PUT /v2/shared/app-0/blobs/uploads/").count();
    let gets_before = env.src.log().matches("/blobs/sha256:").count();

    let again = env.mirror(&list, &[]);
    let log = text(&again);
    assert!(again.status.success(), "{log}");
    assert!(
        log.contains("Images: 1 copied, 1 already present, 0 failed"),
        "{log}"
    );
    // The copied image's 2 shared layers, its own layer and its config: all present.
    let [unique, copied, cache, mounted, present] = blob_line(&log);
    assert_eq!(
        (unique, copied, cache, mounted, present),
        (4, 0, 0, 0, 4),
        "{log}"
    );
    let dst_log = env.dst.log();
    assert_eq!(
        dst_log
            .matches("\"PUT /v2/shared/app-0/blobs/uploads/")
            .count(),
        puts_before,
        "{dst_log}"
    );
    // Only the planner's read of each image's config (for its platform), no layer.
    assert_eq!(
        env.src.log().matches("/blobs/sha256:").count(),
        gets_before + 2,
        "no blob read again from the source for the copy"
    );
    // And the image is whole again at its tag, as an independent client reads it.
    assert!(common::skopeo_raw(&format!("{}/shared/app-0:v1", env.dst.addr)).is_some());
}

/// A copy job holds at most eight images per planner planned and unfinished: with `-j 1`,
/// a list of twenty is planned in turns as images finish, the shared layers of later ones
/// mounted from where earlier ones' copies landed.
#[tokio::test(flavor = "multi_thread")]
async fn a_list_longer_than_the_images_in_progress_is_copied_whole_and_deduplicated() {
    let env = Env::new();
    let lines = seed_shared_repos(&env, 20).await;
    let list = env.write_list("list.txt", &lines);
    let out = env.mirror(&list, &["-j", "1"]);
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("Images: 20 copied, 0 already present, 0 failed"),
        "{log}"
    );
    let [unique, copied, cache, mounted, present] = blob_line(&log);
    // 2 shared layers, 20 own layers and 20 configs, each fetched once; the shared ones
    // mounted into the 19 other repositories.
    assert_eq!(
        (unique, copied, cache, mounted, present),
        (42, 42, 0, 0, 0),
        "{log}"
    );
    assert!(
        log.contains("(and 38 mounts into further repositories)"),
        "{log}"
    );
}
