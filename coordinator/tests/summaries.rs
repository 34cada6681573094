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
