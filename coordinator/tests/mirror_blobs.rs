//! How `mirror` moves blobs: each unique blob fetched once, blobs the destination holds
//! skipped, mounts within a registry, corrupted bytes never pushed, unused uploads ended.

mod common;

use common::*;
use hangar_loadtest::proxy::{self, ProxyOptions};
use hangar_loadtest::seed::{self, Format};

#[tokio::test(flavor = "multi_thread")]
async fn mirror_fetches_each_unique_blob_once_across_images() {
    let env = Env::new();
    let lines = seed_shared_repos(&env, 6).await;
    let list = env.write_list("list.txt", &lines);
    let out = env.mirror(&list, &["-j", "6"]);
    assert!(out.status.success(), "{}", text(&out));
    let gets = blob_gets(&env.src.log());
    let base = seed::write_layer(env.dir.path(), 100, 30_000)
        .unwrap()
        .digest
        .to_string();
    assert_eq!(
        gets.get(&base),
        Some(&1),
        "shared base layer fetched exactly once: {gets:?}"
    );
    assert!(
        gets.values().all(|n| *n == 1),
        "every blob fetched at most once: {gets:?}"
    );
    // 6 configs + 6 own layers + 2 base layers.
    assert_eq!(gets.len(), 14, "{gets:?}");
    let hex = base.trim_start_matches("sha256:");
    // A mount from another repository, or the look at its own (a mount from itself).
    let (mut mounts, mut looks) = (0, 0);
    for l in env
        .dst
        .log()
        .lines()
        .filter(|l| l.contains("mount=") && l.contains(hex))
    {
        let repo = l
            .split("/v2/")
            .nth(1)
            .and_then(|r| r.split("/blobs/").next())
            .expect("a repository in the path");
        match l.contains(&format!("from={}", repo.replace('/', "%2F"))) {
            true => looks += 1,
            false => mounts += 1,
        }
    }
    assert_eq!(
        (mounts, looks),
        (5, 1),
        "the base layer looked for and copied once, mounted into the other five repositories"
    );
    for line in &lines {
        let dst = line.replace(&env.src.addr, &env.dst.addr);
        assert!(skopeo_raw(&dst).is_some(), "{dst} exists");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn mirror_skips_blobs_the_destination_already_holds() {
    let env = Env::new();
    let lines = seed_shared_repos(&env, 3).await;
    // The destination already holds app-0, copied by skopeo (an independent client).
    let pre = std::process::Command::new("skopeo")
        .args([
            "copy",
            "--all",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
        ])
        .arg(format!("docker://{}/shared/app-0:v1", env.src.addr))
        .arg(format!("docker://{}/shared/app-0:v1", env.dst.addr))
        .output()
        .unwrap();
    assert!(pre.status.success(), "{}", text(&pre));
    let before = blob_gets(&env.src.log());
    let list = env.write_list("list.txt", &lines);
    let out = env.mirror(&list, &["-j", "3"]);
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    let after = blob_gets(&env.src.log());
    let base = seed::write_layer(env.dir.path(), 100, 30_000)
        .unwrap()
        .digest
        .to_string();
    let fetched =
        |d: &str| after.get(d).copied().unwrap_or(0) - before.get(d).copied().unwrap_or(0);
    assert!(
        fetched(&base) <= 1,
        "the base layer is fetched at most once for the other repositories"
    );
    let own0 = seed::write_layer(env.dir.path(), 200, 30_000)
        .unwrap()
        .digest
        .to_string();
    assert_eq!(
        fetched(&own0),
        0,
        "app-0's own layer is in the destination: not fetched again"
    );
    let own0_hex = own0.trim_start_matches("sha256:").to_owned();
    let uploads = env
        .dst
        .log()
        .lines()
        .filter(|l| l.contains("PUT /v2/shared/app-0/blobs/uploads") && l.contains(&own0_hex))
        .count();
    assert_eq!(
        uploads, 1,
        "only skopeo's upload of app-0's own layer, none of ours"
    );
    // Per unique digest: app-0's config and own layer were there and nowhere else needed
    // (its base layers were there too, but app-1 and app-2 needed them: mounted or copied,
    // depending on which repository the registry's group served first).
    let present: u64 = log
        .lines()
        .find(|l| l.contains("Blobs: "))
        .and_then(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let i = words.iter().position(|w| *w == "already")?;
            words[i - 1].parse().ok()
        })
        .unwrap_or(0);
    assert!(
        present >= 2,
        "app-0's config, base layers and own layer were skipped: {log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn mirror_within_one_registry_mounts_instead_of_copying() {
    let env = Env::new();
    let src = registry(&env.src.addr).await;
    let m = push_image(
        &src,
        env.dir.path(),
        "team/source",
        Some("1"),
        Format::Oci,
        "amd64",
        (&[300, 301], 30_000),
    )
    .await;
    let list = env.write_list("list.txt", &[format!("{}/team/source:1", env.src.addr)]);
    let out = hangar(&[
        "mirror",
        "--tls-verify=false",
        "-f",
        list.to_str().unwrap(),
        "-d",
        &env.src.addr,
        "--destination-project",
        "copy",
        "-o",
        env.path("failed.txt").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let log = env.src.log();
    let layer = seed::write_layer(env.dir.path(), 300, 30_000).unwrap();
    assert_eq!(
        env.src.blob_requests("GET", &layer.digest.to_string()),
        0,
        "no bytes fetched for a same-registry copy"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("POST /v2/copy/source/blobs/uploads/?") && l.contains("mount=")),
        "{log}"
    );
    let top = skopeo_raw(&format!("{}/copy/source:1", env.src.addr)).unwrap();
    assert_eq!(index_digests(&top), vec![m.digest.to_string()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn mirror_detects_corrupted_blobs_and_never_pushes_them() {
    let env = Env::new();
    let src = registry(&env.src.addr).await;
    // A blob made of 'Z' bytes; the proxy turns every 'Z' into 'Y' on the way out. Nothing
    // else the registry serves here contains 'Z'.
    let blob = bytes::Bytes::from(vec![b'Z'; 64 * 1024]);
    let layer = seed::push_bytes(
        &src,
        "team/corrupt",
        "application/vnd.oci.image.layer.v1.tar",
        blob,
    )
    .await
    .unwrap();
    let config = seed::push_bytes(
        &src,
        "team/corrupt",
        Format::Oci.config_type(),
        seed::config_json(&seed::platform("amd64"), &[]),
    )
    .await
    .unwrap();
    seed::push_manifest(
        &src,
        "team/corrupt",
        "1",
        Format::Oci.manifest_type(),
        seed::manifest_json(Format::Oci, &config, std::slice::from_ref(&layer)),
    )
    .await
    .unwrap();
    let proxy = proxy::start(
        "127.0.0.1:0",
        &env.src.addr,
        ProxyOptions {
            corrupt: Some((b'Z', b'Y')),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let list = env.write_list("list.txt", &[format!("{}/team/corrupt:1", proxy.addr)]);
    let out = env.mirror(&list, &["--destination-project", "team"]);
    let log = text(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(log.contains("digest-mismatch"), "{log}");
    let dst = registry(&env.dst.addr).await;
    assert!(
        !dst.blob_exists(
            "team/corrupt",
            &layer.digest,
            hangar_shared::registry::Side::Destination
        )
        .await
        .unwrap(),
        "corrupted blob never committed"
    );
    assert!(
        skopeo_raw(&format!("{}/team/corrupt:1", env.dst.addr)).is_none(),
        "no manifest tagged"
    );
    let puts = env
        .dst
        .log()
        .lines()
        .filter(|l| {
            l.contains("PUT ") && l.contains(&layer.digest.to_string()) && l.contains("\" 201 ")
        })
        .count();
    assert_eq!(puts, 0);
}

/// Of `repo`'s uploads in a registry's access log: how many were opened (POST 202), used
/// (PUT 201) and ended (DELETE 204).
fn uploads(log: &str, repo: &str) -> (usize, usize, usize) {
    let count = |method: &str, status: &str| {
        log.lines()
            .filter(|l| l.contains(&format!("\"{method} /v2/{repo}/blobs/uploads/")))
            .filter(|l| l.contains(&format!("\" {status} ")))
            .count()
    };
    (
        count("POST", "202"),
        count("PUT", "201"),
        count("DELETE", "204"),
    )
}

/// A copy that fails after the destination opened its upload (the source has lost a
/// layer) ends the upload its look opened: every upload opened and not used by a PUT gets
/// a DELETE the registry accepts.
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_copy_ends_the_upload_its_look_opened() {
    let env = Env::new();
    let src = registry(&env.src.addr).await;
    push_image(
        &src,
        env.dir.path(),
        "team/lost",
        Some("v1"),
        Format::Docker,
        "amd64",
        (&[300, 301], 20_000),
    )
    .await;
    let lost = seed::write_layer(env.dir.path(), 301, 20_000)
        .unwrap()
        .digest
        .to_string();
    let link = env.src.storage().join(format!(
        "data/docker/registry/v2/repositories/team/lost/_layers/sha256/{}/link",
        lost.trim_start_matches("sha256:")
    ));
    std::fs::remove_file(&link).expect("the layer's link in the source repository");
    let list = env.write_list("list.txt", &[format!("{}/team/lost:v1", env.src.addr)]);
    let out = env.mirror(&list, &[]);
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("Images: 0 copied, 0 already present, 1 failed"),
        "{said}"
    );
    let log = env.dst.log();
    let (opened, used, ended) = uploads(&log, "team/lost");
    assert!(opened > used, "the lost layer's upload was opened: {log}");
    assert_eq!(ended, opened - used, "every unused upload ended: {log}");
}

/// A copy dropped at its task's timeout (`--timeout`) while its source has not answered yet
/// ends the upload its look opened at the destination: every upload opened and not used got
/// a DELETE the registry accepted, and none is left open in its storage when the mirror
/// has given up.
/// (One dropped mid-PUT is not: distribution refuses to end an upload whose bytes no
/// longer match the state its location carries, and keeps it until its purge.)
#[tokio::test(flavor = "multi_thread")]
async fn a_copy_dropped_at_its_timeout_leaves_no_upload_behind() {
    let env = Env::new();
    let src = registry(&env.src.addr).await;
    push_image(
        &src,
        env.dir.path(),
        "team/slow",
        Some("v1"),
        Format::Docker,
        "amd64",
        (&[310], 50_000),
    )
    .await;
    // The source's answers once the planner's four requests (`/v2/`, the tag, the config,
    // the tag listing for attachments) are made and a fifth is, 3 s late: the layer's copy
    // is dropped at 2 s with its upload open and nothing sent into it.
    const PLANNING_REQUESTS: u64 = 4;
    let slow = proxy::start(
        "127.0.0.1:0",
        &env.src.addr,
        ProxyOptions {
            slow_from: Some((PLANNING_REQUESTS + 1, std::time::Duration::from_secs(3))),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let list = env.write_list("list.txt", &[format!("{}/team/slow:v1", slow.addr)]);
    let out = tokio::task::block_in_place(|| env.mirror(&list, &["--timeout", "2s"]));
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("timed out after 2s"), "{said}");
    let log = env.dst.log();
    let (opened, used, ended) = uploads(&log, "team/slow");
    assert!(opened > used, "the layer's upload was opened: {log}");
    assert_eq!(ended, opened - used, "every unused upload was ended: {log}");
    // A cancelled upload keeps only its hash state's small file in distribution's storage;
    // its `data` (what was sent) and `startedat` go.
    let uploads = env
        .dst
        .storage()
        .join("data/docker/registry/v2/repositories/team/slow/_uploads");
    let kept: Vec<_> = std::fs::read_dir(&uploads)
        .map(|d| d.flatten().map(|e| e.path().join("startedat")).collect())
        .unwrap_or_else(|_| Vec::new())
        .into_iter()
        .filter(|p: &std::path::PathBuf| p.exists())
        .collect();
    assert!(kept.is_empty(), "uploads left open: {kept:?}");
}
