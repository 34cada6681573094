//! `inspect list -f LIST` against a real registry: a multi-arch image, a single image and a
//! missing one, in each report format, checked against skopeo.

mod common;

use std::process::Command;

use common::*;
use hangar_loadtest::seed::Format;

struct Seeded {
    multi: String,
    single: String,
    missing: String,
    /// Platform digests of the multi-arch index, as skopeo reads it.
    multi_digests: Vec<String>,
    /// The single image's manifest digest, as skopeo reads it.
    single_digest: String,
}

async fn seed(env: &Env) -> Seeded {
    let src = registry(&env.src.addr).await;
    push_multiarch(
        &src,
        env.dir.path(),
        "library/multi",
        "v1",
        Format::Oci,
        700,
    )
    .await;
    let single = seed_shared_repos(env, 1).await.remove(0);
    let multi = format!("{}/library/multi:v1", env.src.addr);
    let multi_digests = index_digests(&skopeo_raw(&multi).expect("skopeo reads the index"));
    assert_eq!(multi_digests.len(), 2);
    let single_digest = sha(&skopeo_raw(&single).expect("skopeo reads the image"));
    Seeded {
        missing: format!("{}/library/nope:1", env.src.addr),
        multi,
        single,
        multi_digests,
        single_digest,
    }
}

fn run_in(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_hangar-coord"))
        .args(args)
        .current_dir(dir)
        .env("REGISTRY_AUTH_FILE", "/nonexistent/hangar-test-auth.json")
        .output()
        .expect("run hangar-coord")
}

#[tokio::test(flavor = "multi_thread")]
async fn inspect_list_reports_every_format_and_lists_failures() {
    let env = Env::new();
    let s = seed(&env).await;
    let list = env.write_list(
        "list.txt",
        &[
            "# a comment".into(),
            s.multi.clone(),
            s.single.clone(),
            s.missing.clone(),
        ],
    );
    let failed = env.path("failed.txt");
    for format in ["txt", "json", "yaml", "csv"] {
        let report = env.path(&format!("report.{format}"));
        let _ = std::fs::remove_file(&failed);
        let out = hangar(&[
            "inspect",
            "list",
            "-f",
            list.to_str().unwrap(),
            "--tls-verify=false",
            "--format",
            format,
            "-r",
            report.to_str().unwrap(),
            "-o",
            failed.to_str().unwrap(),
            "-j",
            "3",
            "-y",
        ]);
        let log = text(&out);
        assert_eq!(out.status.code(), Some(1), "{format}: {log}");
        assert!(log.contains("some images failed to inspect"), "{log}");
        assert_eq!(
            std::fs::read_to_string(&failed).unwrap(),
            format!("{}\n", s.missing),
            "{format}: the failed list holds the missing line"
        );
        let body = std::fs::read_to_string(&report).expect("report written despite failures");
        match format {
            "txt" => assert_eq!(
                body,
                format!(
                    "   1 | {}/library/multi:v1 | linux/amd64,linux/arm64v8\n   2 | {} | linux/amd64\n\n",
                    env.src.addr, s.single
                ),
                "txt rows in list order"
            ),
            "csv" => {
                // Hangar writes the CSV and a newline: it ends in a blank line.
                assert!(body.ends_with("\n\n"), "{body}");
                let rows: Vec<Vec<&str>> = body
                    .lines()
                    .filter(|l| !l.is_empty())
                    .map(|l| l.split(',').collect())
                    .collect();
                assert_eq!(
                    rows[0],
                    [
                        "image",
                        "digest",
                        "platform",
                        "osVersion",
                        "osFeature",
                        "mediaType"
                    ]
                );
                assert_eq!(rows.len(), 4, "{body}");
                let oci = "application/vnd.oci.image.manifest.v1+json";
                let docker = "application/vnd.docker.distribution.manifest.v2+json";
                assert_eq!(
                    rows[1],
                    [
                        s.multi.as_str(),
                        &s.multi_digests[0],
                        "linux/amd64",
                        "",
                        "",
                        oci
                    ]
                );
                assert_eq!(
                    rows[2],
                    [
                        s.multi.as_str(),
                        &s.multi_digests[1],
                        "linux/arm64v8",
                        "",
                        "",
                        oci
                    ]
                );
                assert_eq!(
                    rows[3],
                    [
                        s.single.as_str(),
                        &s.single_digest,
                        "linux/amd64",
                        "",
                        "",
                        docker
                    ]
                );
            }
            _ => {
                let v: serde_json::Value = if format == "json" {
                    serde_json::from_str(&body).unwrap()
                } else {
                    serde_yaml_ng::from_str(&body).unwrap()
                };
                assert_eq!(v["version"], "v1.2.0", "{format}");
                assert!(v["time"].is_string(), "{format}");
                let images = v["list"].as_array().expect("list");
                assert_eq!(images.len(), 2, "{format}: {body}");
                assert_eq!(
                    images[0]["source"],
                    format!("{}/library/multi", env.src.addr)
                );
                assert_eq!(images[0]["tag"], "v1");
                assert!(images[0].get("archList").is_none(), "{format}");
                let specs = images[0]["images"].as_array().unwrap();
                let digests: Vec<&str> = specs
                    .iter()
                    .map(|i| i["digest"].as_str().unwrap())
                    .collect();
                assert_eq!(digests, s.multi_digests, "{format}: digests as skopeo's");
                assert_eq!(specs[0]["arch"], "amd64");
                assert_eq!(specs[0]["os"], "linux");
                assert_eq!(specs[1]["arch"], "arm64");
                assert_eq!(specs[1]["variant"], "v8");
                let media_type = if format == "yaml" {
                    "mime"
                } else {
                    "mediaType"
                };
                assert_eq!(
                    specs[1][media_type],
                    "application/vnd.oci.image.manifest.v1+json"
                );
                let single = &images[1]["images"][0];
                assert_eq!(
                    format!("{}:{}", images[1]["source"].as_str().unwrap(), "v1"),
                    s.single
                );
                assert_eq!(single["digest"], s.single_digest.as_str(), "{format}");
                assert_eq!(single["arch"], "amd64");
                assert_eq!(single["os"], "linux");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn inspect_list_defaults_registry_override_and_exit_codes() {
    let env = Env::new();
    let s = seed(&env).await;
    let work = env.path("work");
    std::fs::create_dir(&work).unwrap();
    // The registry of every line replaced with --registry.
    let list = env.write_list(
        "list.txt",
        &[
            "elsewhere.invalid/library/multi:v1".into(),
            s.single.clone(),
        ],
    );
    let args = [
        "inspect",
        "list",
        "-f",
        list.to_str().unwrap(),
        "--tls-verify=false",
        "--registry",
        &env.src.addr,
    ];
    let ok = run_in(&work, &args);
    assert!(ok.status.success(), "{}", text(&ok));
    assert!(text(&ok).contains("Done"), "{}", text(&ok));
    let body = std::fs::read_to_string(work.join("inspect-report.txt"))
        .expect("default report name and format");
    assert!(
        body.starts_with(&format!("   1 | {}/library/multi:v1 | ", env.src.addr)),
        "{body}"
    );
    assert_eq!(body.lines().filter(|l| !l.is_empty()).count(), 2, "{body}");
    assert!(
        !work.join("inspect-failed.txt").exists(),
        "no failed list when nothing failed"
    );

    // An existing report is kept unless -y (no terminal answers the question).
    let again = run_in(&work, &args);
    assert_eq!(again.status.code(), Some(1), "{}", text(&again));
    assert_eq!(
        std::fs::read_to_string(work.join("inspect-report.txt")).unwrap(),
        body
    );

    // The default failed list, and an unknown format written as txt.
    let bad = env.write_list("bad.txt", std::slice::from_ref(&s.missing));
    let out = run_in(
        &work,
        &[
            "inspect",
            "list",
            "-f",
            bad.to_str().unwrap(),
            "--tls-verify=false",
            "--format",
            "xml",
            "-y",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("some images failed to inspect"));
    assert_eq!(
        std::fs::read_to_string(work.join("inspect-failed.txt")).unwrap(),
        format!("{}\n", s.missing)
    );
    assert_eq!(
        std::fs::read_to_string(work.join("inspect-report.txt")).unwrap(),
        "\n",
        "an empty txt report"
    );

    // `inspect REF` is as it was; `inspect` alone still wants a reference.
    let raw = hangar(&["inspect", "--tls-verify=false", "--raw", &s.single]);
    assert!(raw.status.success(), "{}", text(&raw));
    assert_eq!(sha(&raw.stdout), s.single_digest);
    let bare = hangar(&["inspect"]);
    assert!(!bare.status.success());
    assert!(text(&bare).contains("<REFERENCE>"), "{}", text(&bare));
}
