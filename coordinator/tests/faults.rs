//! Transient answers stay transient: `hangar-coord mirror` through a proxy that plays a flaky
//! distribution registry (seeded: 500 `UNKNOWN`, 503 `UNAVAILABLE`, 429 with and without
//! `Retry-After`, 503 carrying a not-found code, blob bodies cut halfway) still copies every
//! image, digests intact, as skopeo sees them.

mod common;

use std::sync::atomic::Ordering;

use common::*;
use hangar_loadtest::proxy::{self, Injected, Proxy, ProxyOptions};
use hangar_loadtest::seed::Format;
use hangar_shared::registry::Side;

/// Eight single-platform images sharing two base layers and four two-platform indexes
/// (OCI and Docker); returns their `repo:tag`s.
async fn seed_source(env: &Env) -> Vec<String> {
    let mut images: Vec<String> = seed_shared_repos(env, 8)
        .await
        .iter()
        .map(|l| {
            l.trim_start_matches(&format!("{}/", env.src.addr))
                .to_owned()
        })
        .collect();
    let src = registry(&env.src.addr).await;
    for i in 0..4u64 {
        let repo = format!("multi/app-{i}");
        let format = if i % 2 == 0 {
            Format::Oci
        } else {
            Format::Docker
        };
        push_multiarch(&src, env.dir.path(), &repo, "v2", format, 3000 + 10 * i).await;
        images.push(format!("{repo}:v2"));
    }
    images
}

/// `hangar-coord mirror --tls-verify=false -j 4 -f LIST -s SOURCE -d DEST -o FAILED`.
async fn mirror(env: &Env, images: &[String], source: &str, dest: &str) -> std::process::Output {
    let lines: Vec<String> = images
        .iter()
        .map(|i| format!("{}/{i}", env.src.addr))
        .collect();
    let list = env.write_list("list.txt", &lines);
    let args: Vec<String> = [
        "mirror",
        "--tls-verify=false",
        "-j",
        "4",
        "-f",
        &list.display().to_string(),
        "-s",
        source,
        "-d",
        dest,
        "-o",
        &env.path("failed.txt").display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    tokio::task::spawn_blocking(move || hangar(&args))
        .await
        .expect("mirror")
}

/// A proxy in front of `upstream` with `opts`, at most two faults in a row to one request:
/// hangar tries a request four times (the retry policy's default), so every image must get
/// through whichever retries the seed's faults land on (which request gets which ordinal
/// depends on timing: in one full run of the suite a copy's four tries all met faults).
/// Faults without end are a registry that is down, which these tests are not about.
fn faulty(upstream: &str, opts: ProxyOptions) -> impl std::future::Future<Output = Proxy> {
    let upstream = upstream.to_owned();
    let opts = ProxyOptions {
        faults_in_a_row: opts.faults_in_a_row.or(Some(2)),
        ..opts
    };
    async move {
        proxy::start("127.0.0.1:0", &upstream, opts)
            .await
            .expect("proxy")
    }
}

/// `hangar-coord save --tls-verify=false -y -f LIST -d ARCHIVE EXTRA…`.
fn save_args(list: &std::path::Path, archive: &std::path::Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["save", "--tls-verify=false", "-y", "-f"]
        .map(String::from)
        .to_vec();
    args.push(list.display().to_string());
    args.extend(["-d".to_owned(), archive.display().to_string()]);
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

/// `hangar-coord load` of `archive` into the destination registry.
async fn load_into_dest(env: &Env, archive: &std::path::Path) -> std::process::Output {
    let args: Vec<String> = [
        "load",
        "--tls-verify=false",
        "-s",
        &archive.display().to_string(),
        "-d",
        &env.dst.addr,
        "-o",
        &env.path("failed.txt").display().to_string(),
    ]
    .map(String::from)
    .to_vec();
    tokio::task::spawn_blocking(move || hangar(&args))
        .await
        .expect("load")
}

fn raw(reference: &str) -> Vec<u8> {
    skopeo_raw(reference).unwrap_or_else(|| panic!("skopeo inspect --raw {reference}"))
}

/// Every image is at the destination with the source's digests, checked with skopeo: a
/// complete index byte for byte (`index_kept`: a copy keeps it; a load from an archive,
/// which holds platform images, builds Hangar's index over the same platforms), a single
/// image wrapped in an index that names its digest; every platform manifest byte for byte
/// and its config and layers present.
async fn assert_all_landed(
    env: &Env,
    images: &[String],
    out: &std::process::Output,
    index_kept: bool,
) {
    let log = text(out);
    assert!(out.status.success(), "mirror failed:\n{log}");
    let failed = std::fs::read_to_string(env.path("failed.txt")).unwrap_or_default();
    assert!(failed.trim().is_empty(), "failed list: {failed}\n{log}");
    let dst = registry(&env.dst.addr).await;
    for image in images {
        let (repo, _) = image.split_once(':').expect("repo:tag");
        let src_top = raw(&format!("{}/{image}", env.src.addr));
        let dst_top = raw(&format!("{}/{image}", env.dst.addr));
        let src_is_index = !index_digests(&src_top).is_empty();
        let platforms = if src_is_index {
            if index_kept {
                assert_eq!(sha(&dst_top), sha(&src_top), "{image}: index digest kept");
            } else {
                let (mut src, mut dst) = (index_digests(&src_top), index_digests(&dst_top));
                src.sort();
                dst.sort();
                assert_eq!(dst, src, "{image}: the same platforms");
            }
            index_digests(&src_top)
        } else {
            assert_eq!(index_digests(&dst_top), vec![sha(&src_top)], "{image}");
            vec![sha(&src_top)]
        };
        for digest in platforms {
            let src_m = raw(&format!("{}/{repo}@{digest}", env.src.addr));
            let dst_m = raw(&format!("{}/{repo}@{digest}", env.dst.addr));
            assert_eq!(sha(&dst_m), digest, "{image}: platform {digest}");
            assert_eq!(src_m, dst_m, "{image}: platform {digest} byte for byte");
            let v: serde_json::Value = serde_json::from_slice(&dst_m).expect("manifest json");
            let blobs = v["layers"]
                .as_array()
                .into_iter()
                .flatten()
                .chain(std::iter::once(&v["config"]))
                .map(|d| {
                    d["digest"]
                        .as_str()
                        .expect("digest")
                        .parse()
                        .expect("digest")
                });
            for blob in blobs {
                assert!(
                    dst.blob_exists(repo, &blob, Side::Destination)
                        .await
                        .expect("HEAD blob"),
                    "{image}: blob {blob} at the destination"
                );
            }
        }
    }
}

fn count(c: &std::sync::atomic::AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

fn assert_every_kind(injected: &Injected) {
    for (kind, c) in [
        ("500 UNKNOWN", &injected.unknown_500),
        ("503 UNAVAILABLE", &injected.unavailable_503),
        ("429 with Retry-After", &injected.too_many_429),
        ("429 without Retry-After", &injected.too_many_bare_429),
        ("503 with a 4xx code", &injected.misleading_503),
    ] {
        assert!(count(c) > 0, "no {kind} injected: {injected}");
    }
}

/// 8 % of the source's answers are errors and 5 % of its blob bodies are cut halfway.
/// The seeds are ones whose first faults come early (the 5th error by the 17th request, a
/// cut by the 3rd blob GET), so every kind shows within the run's ~70 requests.
#[tokio::test(flavor = "multi_thread")]
async fn mirror_copies_everything_through_a_flaky_source() {
    let env = Env::new();
    let images = seed_source(&env).await;
    assert_eq!(images.len(), 12);
    let proxy = faulty(
        &env.src.addr,
        ProxyOptions {
            fail_ratio: Some((0.08, 24)),
            cut_blob_bodies: Some((0.05, 36)),
            ..Default::default()
        },
    )
    .await;
    let out = mirror(&env, &images, &proxy.addr, &env.dst.addr).await;
    eprintln!("source proxy injected: {}", proxy.injected);
    assert_all_landed(&env, &images, &out, true).await;
    assert_every_kind(&proxy.injected);
    assert!(
        count(&proxy.injected.cut_bodies) > 0,
        "no blob body cut: {}",
        proxy.injected
    );
}

/// 8 % of the destination's answers are errors, pushes (POST, PUT) included; the seed puts
/// the 5th error by the 19th request.
#[tokio::test(flavor = "multi_thread")]
async fn mirror_copies_everything_through_a_flaky_destination() {
    let env = Env::new();
    let images = seed_source(&env).await;
    let proxy = faulty(
        &env.dst.addr,
        ProxyOptions {
            fail_ratio: Some((0.08, 22)),
            ..Default::default()
        },
    )
    .await;
    let out = mirror(&env, &images, &env.src.addr, &proxy.addr).await;
    eprintln!("destination proxy injected: {}", proxy.injected);
    assert_all_landed(&env, &images, &out, true).await;
    assert_every_kind(&proxy.injected);
    assert!(
        count(&proxy.injected.on_writes) > 0,
        "no push answered with an error: {}",
        proxy.injected
    );
}

/// `save` without a cache streams every layer from the source into the zip: through a
/// source whose answers fail (5 %) and whose blob bodies are cut halfway (10 %: the
/// planner's config reads are retried 4 times, and more cuts than that make a failed
/// image a matter of the seed's luck), each cut read is taken up again where it stopped, the archive is written once (the bytes the process wrote are
/// about the archive's size, not twice it), and it loads with every digest intact.
#[tokio::test(flavor = "multi_thread")]
async fn save_streams_every_layer_through_a_flaky_source() {
    let env = Env::new();
    let images = seed_source(&env).await;
    let proxy = faulty(
        &env.src.addr,
        ProxyOptions {
            fail_ratio: Some((0.05, 24)),
            cut_blob_bodies: Some((0.1, 36)),
            ..Default::default()
        },
    )
    .await;
    let lines: Vec<String> = images
        .iter()
        .map(|i| format!("{}/{i}", env.src.addr))
        .collect();
    let list = env.write_list("list.txt", &lines);
    let archive = env.path("saved.zip");
    let args = save_args(&list, &archive, &["-j", "4", "-s", &proxy.addr]);
    let run = run_measured_async(args, std::time::Duration::from_secs(300)).await;
    eprintln!("source proxy injected: {}", proxy.injected);
    assert!(run.success, "save failed:\n{}", run.output);
    assert!(
        count(&proxy.injected.cut_bodies) > 0,
        "no blob body cut: {}",
        proxy.injected
    );
    let size = std::fs::metadata(&archive).expect("archive").len();
    assert!(
        run.written < size + size / 2,
        "{} bytes written for an archive of {size}: staged before the zip?",
        run.written
    );
    let out = load_into_dest(&env, &archive).await;
    assert_all_landed(&env, &images, &out, false).await;
}

/// A source serving wrong bytes for every layer fails each image of a streamed save (its
/// layers, smaller than a piece, are refused before a byte of them is written): nothing at
/// the archive's path, nothing staged left beside it, the error says what was wrong, no
/// image is said to be saved, and every line of the list is in the failed list.
#[tokio::test(flavor = "multi_thread")]
async fn a_streamed_save_from_a_source_serving_wrong_bytes_leaves_nothing() {
    let env = Env::new();
    let images = seed_shared_repos(&env, 2).await;
    // JSON is ASCII: only layer bytes carry 0xff.
    let proxy = faulty(
        &env.src.addr,
        ProxyOptions {
            corrupt: Some((0xff, 0x00)),
            ..Default::default()
        },
    )
    .await;
    let list = env.write_list("list.txt", &images);
    let out_dir = env.path("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let archive = out_dir.join("bad.zip");
    let failed = env.path("failed.txt");
    let failed_arg = failed.display().to_string();
    let args = save_args(&list, &archive, &["-s", &proxy.addr, "-o", &failed_arg]);
    let out = tokio::task::spawn_blocking(move || hangar(&args))
        .await
        .expect("save");
    let log = text(&out);
    assert!(!out.status.success(), "{log}");
    assert!(
        log.contains("[FATA] ") && log.contains("@sha256:") && log.contains("bytes hash to"),
        "{log}"
    );
    assert!(
        !log.contains("Saved image") && log.contains("No archive was written"),
        "{log}"
    );
    let failed = std::fs::read_to_string(&failed).expect("a failed list");
    for line in &images {
        assert!(failed.lines().any(|l| l == line), "{line} not in {failed}");
    }
    let left: Vec<String> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(left.is_empty(), "left beside the archive: {left:?}\n{log}");
}

/// A layer that arrives before the writer's turn is staged on disk once the writer has kept
/// it waiting, and read back from there when its turn comes: through a source that sends
/// each connection 200 KB a second, an image's two 1 MB layers come in together, so the
/// second one in the archive's order waits for the first and is staged meanwhile (the
/// process writes more than the archive), and the archive loads with every digest intact.
#[tokio::test(flavor = "multi_thread")]
async fn a_layer_arriving_before_its_turn_is_staged_and_read_back() {
    let env = Env::new();
    let src = registry(&env.src.addr).await;
    push_image(
        &src,
        env.dir.path(),
        "team/two",
        Some("v1"),
        Format::Docker,
        "amd64",
        (&[4100, 4101], 1_000_000),
    )
    .await;
    let slow = faulty(
        &env.src.addr,
        ProxyOptions {
            rate_limit: Some(200_000),
            ..Default::default()
        },
    )
    .await;
    let list = env.write_list("list.txt", &[format!("{}/team/two:v1", slow.addr)]);
    let archive = env.path("two.zip");
    let args = save_args(&list, &archive, &[]);
    let run = run_measured_async(args, std::time::Duration::from_secs(120)).await;
    assert!(run.success, "save failed:\n{}", run.output);
    let size = std::fs::metadata(&archive).expect("archive").len();
    assert!(
        run.written > size + 256 * 1024,
        "{} bytes written for an archive of {size}: nothing staged?",
        run.written
    );
    let out = load_into_dest(&env, &archive).await;
    assert_all_landed(&env, &["team/two:v1".to_owned()], &out, false).await;
}

/// On a fast link the writer reaches each layer well within the wait before staging: an
/// image's two 2 MB layers, fetched together, are written once each (into the zip), where
/// staging at once wrote the second one's bytes twice more.
#[tokio::test(flavor = "multi_thread")]
async fn a_save_on_a_fast_link_writes_each_byte_once() {
    let env = Env::new();
    let src = registry(&env.src.addr).await;
    push_image(
        &src,
        env.dir.path(),
        "team/fast",
        Some("v1"),
        Format::Oci,
        "amd64",
        (&[4200, 4201], 2_000_000),
    )
    .await;
    let list = env.write_list("list.txt", &[format!("{}/team/fast:v1", env.src.addr)]);
    let archive = env.path("fast.zip");
    let args = save_args(&list, &archive, &[]);
    let run = run_measured_async(args, std::time::Duration::from_secs(120)).await;
    assert!(run.success, "save failed:\n{}", run.output);
    let size = std::fs::metadata(&archive).expect("archive").len();
    assert!(
        run.written < size + 512 * 1024,
        "{} bytes written for an archive of {size}: staged although the writer came soon",
        run.written
    );
}
