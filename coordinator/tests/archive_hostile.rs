//! Archives made to exhaust whoever reads them (`tests/fixtures/make_archive.py`): each is
//! refused, or read once, within a bound of time and memory, with an error naming it.

mod common;

use std::time::Duration;

use common::archive::*;
use common::*;

/// Each hostile archive's `archive verify`, `archive ls` and `load`, measured.
fn each_reader(env: &Env, archive: &std::path::Path) -> Vec<(&'static str, Measured)> {
    let a = s(archive);
    let failed = s(&env.path("load-failed.txt"));
    let limit = Duration::from_secs(60);
    vec![
        ("verify", run_measured(&["archive", "verify", &a], limit)),
        ("ls", run_measured(&["archive", "ls", "-f", &a], limit)),
        (
            "load",
            run_measured(
                &[
                    "load",
                    "--tls-verify=false",
                    "-s",
                    &a,
                    "-d",
                    &env.dst.addr,
                    "-o",
                    &failed,
                ],
                limit,
            ),
        ),
    ]
}

const MB: u64 = 1 << 20;

/// An image listing its platform 900 times, the manifest 3.5 MiB: read and hashed once
/// (900 times would be 3 GB), planned once, one entry in the destination's index.
#[tokio::test]
async fn a_platform_listed_900_times_is_read_and_loaded_once() {
    let env = Env::new();
    let archive = env.path("repeated.zip");
    let made = make_archive("repeated", &archive, "docker.io/library/rep", "v1");
    for (what, m) in each_reader(&env, &archive) {
        assert!(m.success, "{what}: {}", m.output);
        assert!(m.peak_rss < 150 * MB, "{what}: {} MB", m.peak_rss / MB);
        assert!(
            m.elapsed < Duration::from_secs(30),
            "{what}: {:?}",
            m.elapsed
        );
    }
    let raw = skopeo_raw(&format!("{}/library/rep:v1", env.dst.addr)).expect("loaded");
    assert_eq!(
        index_digests(&raw),
        vec![made["manifest"].as_str().unwrap_or_default().to_owned()],
        "one platform, once"
    );
}

/// The same 3.5 MiB manifest under 900 variants: 900 entries of the index, each a plan of
/// its own (3 GB of manifests and descriptor copies). `load` refuses the image once its
/// manifests pass one image's 16 MiB, naming it and the archive; listing and verifying it
/// read the manifest once.
#[tokio::test]
async fn one_manifest_under_900_variants_is_refused_by_load_within_its_budget() {
    let env = Env::new();
    let archive = env.path("variants.zip");
    make_archive("variants", &archive, "docker.io/library/var", "v1");
    for (what, m) in each_reader(&env, &archive) {
        assert!(m.peak_rss < 150 * MB, "{what}: {} MB", m.peak_rss / MB);
        assert!(
            m.elapsed < Duration::from_secs(30),
            "{what}: {:?}",
            m.elapsed
        );
        if what == "load" {
            assert!(!m.success, "{what}: {}", m.output);
            assert!(
                m.output.contains("library/var:v1")
                    && m.output.contains("variants.zip")
                    && m.output
                        .contains("platform manifests come to more than 16 MiB"),
                "{what}: {}",
                m.output
            );
        } else {
            assert!(m.success, "{what}: {}", m.output);
        }
    }
    assert!(
        skopeo_raw(&format!("{}/library/var:v1", env.dst.addr)).is_none(),
        "nothing pushed at the tag"
    );
}

/// Past the 1,000 platforms a registry's index is accepted with, an image is a hostile
/// index: the archive is refused, naming it.
#[tokio::test]
async fn an_image_of_more_than_1000_platforms_is_refused() {
    let env = Env::new();
    let archive = env.path("toomany.zip");
    make_archive("toomany", &archive, "docker.io/library/many", "v1");
    for (what, m) in each_reader(&env, &archive) {
        assert!(!m.success, "{what}: {}", m.output);
        assert!(
            m.output.contains("toomany.zip") && m.output.contains("more than 1000 entries"),
            "{what}: {}",
            m.output
        );
    }
}

/// Entries that share one local header, each a prefix of the layer (so each a valid blob
/// of its own digest): a small archive naming terabytes. Refused before any is read.
#[tokio::test]
async fn entries_sharing_bytes_are_refused() {
    let env = Env::new();
    let archive = env.path("overlap.zip");
    make_archive("overlap", &archive, "docker.io/library/ovl", "v1");
    for (what, m) in each_reader(&env, &archive) {
        assert!(!m.success, "{what}: {}", m.output);
        assert!(
            m.output.contains("overlap.zip") && m.output.contains("overlap; each entry"),
            "{what}: {}",
            m.output
        );
        assert!(
            m.elapsed < Duration::from_secs(10),
            "{what}: {:?}",
            m.elapsed
        );
    }
    assert!(skopeo_raw(&format!("{}/library/ovl:v1", env.dst.addr)).is_none());
}

/// 150,000 entries of long names: a central directory of 51 MiB is more than an archive
/// has, and is refused while it is read, its memory bounded.
#[tokio::test]
async fn a_central_directory_past_its_bound_is_refused() {
    let env = Env::new();
    let archive = env.path("many.zip");
    make_archive("manyentries", &archive, "docker.io/library/many", "v1");
    for (what, m) in each_reader(&env, &archive) {
        assert!(!m.success, "{what}: {}", m.output);
        assert!(
            m.output
                .contains("many.zip: its central directory is larger than 48 MiB"),
            "{what}: {}",
            m.output
        );
        assert!(m.peak_rss < 200 * MB, "{what}: {} MB", m.peak_rss / MB);
        assert!(
            m.elapsed < Duration::from_secs(20),
            "{what}: {:?}",
            m.elapsed
        );
    }
}
