//! The vulnerability database as osv.dev publishes it (`<Ecosystem>/all.zip`), several
//! `--db` merged, databases with nothing usable refused by name, and installed versions that
//! do not parse reported, against images in a real registry.

mod common;

use std::io::Write as _;
use std::path::Path;

use common::*;

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn record(id: &str, eco: &str, name: &str, events: &str, modified: &str) -> String {
    format!(
        r#"{{"id":"{id}","modified":"{modified}","summary":"{id} summary","affected":[{{"package":{{"ecosystem":"{eco}","name":"{name}"}},"ranges":[{{"type":"ECOSYSTEM","events":{events}}}]}}]}}"#
    )
}

/// Records as (file name, JSON).
type Records = Vec<(String, String)>;

/// Debian's records and Alpine's, dated now.
fn records() -> (Records, Records) {
    let t = now();
    let debian = vec![
        (
            "DEBIAN-CVE-2024-0001",
            record(
                "DEBIAN-CVE-2024-0001",
                "Debian:12",
                "openssl",
                r#"[{"introduced":"0"},{"fixed":"3.0.11-1~deb12u3"}]"#,
                &t,
            ),
        ),
        (
            "DEBIAN-CVE-2024-0002",
            record(
                "DEBIAN-CVE-2024-0002",
                "Debian:11",
                "openssl",
                r#"[{"introduced":"0"},{"fixed":"9"}]"#,
                &t,
            ),
        ),
        (
            "DEBIAN-CVE-2024-0003",
            record(
                "DEBIAN-CVE-2024-0003",
                "Debian:12",
                "zlib",
                r#"[{"introduced":"0"},{"fixed":"1:1.2.13.dfsg-2"}]"#,
                &t,
            ),
        ),
    ];
    let alpine = vec![
        (
            "ALPINE-CVE-2024-0005",
            record(
                "ALPINE-CVE-2024-0005",
                "Alpine:v3.20",
                "openssl",
                r#"[{"introduced":"0"},{"fixed":"3.3.2-r0"}]"#,
                &t,
            ),
        ),
        (
            "ALPINE-CVE-2024-0006",
            record(
                "ALPINE-CVE-2024-0006",
                "Alpine:v3.20",
                "busybox",
                r#"[{"introduced":"0"},{"fixed":"1.36.1-r29"}]"#,
                &t,
            ),
        ),
    ];
    let named = |v: Vec<(&str, String)>| {
        v.into_iter()
            .map(|(id, r)| (format!("{id}.json"), r))
            .collect()
    };
    (named(debian), named(alpine))
}

fn write_json(dir: &Path, records: &[(String, String)]) {
    std::fs::create_dir_all(dir).expect("db dir");
    for (name, body) in records {
        std::fs::write(dir.join(name), body).expect("record");
    }
}

/// A zip of `entries` as osv.dev builds its `all.zip`: one deflated JSON entry per record.
fn write_zip(path: &Path, entries: &[(String, String)]) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("zip dir");
    }
    let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, body) in entries {
        z.start_file(name.as_str(), opts).expect("zip entry");
        z.write_all(body.as_bytes()).expect("zip body");
    }
    std::fs::write(path, z.finish().expect("zip").into_inner()).expect("write zip");
}

async fn seed_images(env: &Env, busybox: &str) {
    let os_debian: &[u8] = b"ID=debian\nVERSION_ID=\"12\"\n";
    let status: &[u8] = b"Package: libssl3\nStatus: install ok installed\nVersion: 3.0.11-1~deb12u2\nSource: openssl\n\nPackage: zlib1g\nStatus: install ok installed\nVersion: 1:1.2.13.dfsg-1\nSource: zlib\n\n";
    push_files_image(
        &env.src.addr,
        "scan/debian",
        vec![files_layer(&[
            ("etc/os-release", os_debian),
            ("var/lib/dpkg/status", status),
        ])],
    )
    .await;
    let apk = format!(
        "P:musl\nV:1.2.5-r0\no:musl\n\nP:busybox\nV:{busybox}\no:busybox\n\nP:libcrypto3\nV:3.3.1-r0\no:openssl\n\n"
    );
    push_files_image(
        &env.src.addr,
        "scan/alpine",
        vec![files_layer(&[
            ("etc/os-release", b"ID=alpine\nVERSION_ID=3.20.3\n"),
            ("lib/apk/db/installed", apk.as_bytes()),
        ])],
    )
    .await;
}

fn list(env: &Env) -> std::path::PathBuf {
    env.write_list(
        "l.txt",
        &[
            format!("{}/scan/debian:1", env.src.addr),
            format!("{}/scan/alpine:1", env.src.addr),
        ],
    )
}

/// `scan` of `list` against every database of `dbs`, the json report at `report`.
fn scan(
    env: &Env,
    list: &Path,
    dbs: &[&Path],
    report: &Path,
    extra: &[&str],
) -> std::process::Output {
    let mut args = vec![
        "scan".to_owned(),
        "--tls-verify=false".into(),
        "-f".into(),
        s(list),
        "--format".into(),
        "json".into(),
        "-r".into(),
        s(report),
        "-o".into(),
        s(&env.path("scan-failed.txt")),
    ];
    for db in dbs {
        args.extend(["--db".to_owned(), s(db)]);
    }
    args.extend(extra.iter().map(|x| x.to_string()));
    hangar(&args)
}

/// The report's findings as (image, package, installed, fixed, id), sorted.
fn findings(report: &Path) -> Vec<(String, String, String, String, String)> {
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(report).expect("report")).expect("json");
    let mut out = Vec::new();
    for r in r["results"].as_array().expect("results") {
        let image = r["reference"]
            .as_str()
            .unwrap_or_default()
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        for i in r["images"].as_array().expect("images") {
            for v in i["vulnerabilities"].as_array().expect("vulnerabilities") {
                let f = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
                out.push((
                    image.clone(),
                    f("package"),
                    f("installed"),
                    f("fixed"),
                    f("id"),
                ));
            }
        }
    }
    out.sort();
    out
}

fn row(a: &str, b: &str, c: &str, d: &str, e: &str) -> (String, String, String, String, String) {
    (a.into(), b.into(), c.into(), d.into(), e.into())
}

#[tokio::test]
async fn osv_dev_layout_and_several_databases_find_what_json_records_find() {
    let env = Env::new();
    seed_images(&env, "1.36.1-r28").await;
    let list = list(&env);
    let (debian, alpine) = records();
    let all: Vec<(String, String)> = debian.iter().chain(&alpine).cloned().collect();

    // The records as *.json files.
    let json = env.path("json");
    write_json(&json, &all);
    let out = scan(&env, &list, &[&json], &env.path("json.json"), &[]);
    assert!(out.status.success(), "{}", text(&out));
    let expected = vec![
        row(
            "alpine:1",
            "busybox",
            "1.36.1-r28",
            "1.36.1-r29",
            "ALPINE-CVE-2024-0006",
        ),
        row(
            "alpine:1",
            "libcrypto3",
            "3.3.1-r0",
            "3.3.2-r0",
            "ALPINE-CVE-2024-0005",
        ),
        row(
            "debian:1",
            "libssl3",
            "3.0.11-1~deb12u2",
            "3.0.11-1~deb12u3",
            "DEBIAN-CVE-2024-0001",
        ),
        row(
            "debian:1",
            "zlib1g",
            "1:1.2.13.dfsg-1",
            "1:1.2.13.dfsg-2",
            "DEBIAN-CVE-2024-0003",
        ),
    ];
    assert_eq!(findings(&env.path("json.json")), expected);

    // The same records in osv.dev's layout: <Ecosystem>/all.zip. Dated from the zips' records,
    // so the age check passes without being skipped.
    let layout = env.path("osv-dev");
    write_zip(&layout.join("Debian").join("all.zip"), &debian);
    write_zip(&layout.join("Alpine").join("all.zip"), &alpine);
    let out = scan(&env, &list, &[&layout], &env.path("layout.json"), &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("5 records, newest"), "{}", text(&out));
    assert_eq!(findings(&env.path("layout.json")), expected);

    // Mixed: Debian as a zip, Alpine as *.json files beside it.
    let mixed = env.path("mixed");
    write_zip(&mixed.join("Debian").join("all.zip"), &debian);
    write_json(&mixed.join("Alpine"), &alpine);
    let out = scan(&env, &list, &[&mixed], &env.path("mixed.json"), &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(findings(&env.path("mixed.json")), expected);

    // Two --db: one ecosystem each (a directory and a bare zip), merged; the same record in
    // both counts once.
    let deb_only = env.path("debian-only");
    write_json(&deb_only, &debian);
    let alpine_zip = env.path("alpine-all.zip");
    let mut alpine_and_one_debian = alpine.clone();
    alpine_and_one_debian.push(debian[0].clone());
    write_zip(&alpine_zip, &alpine_and_one_debian);
    let out = scan(
        &env,
        &list,
        &[&deb_only, &alpine_zip],
        &env.path("two.json"),
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("Vulnerability databases merged: 5 records from 2 databases"),
        "{}",
        text(&out)
    );
    assert_eq!(findings(&env.path("two.json")), expected);
    let out = scan(&env, &list, &[&deb_only], &env.path("one.json"), &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        findings(&env.path("one.json")),
        expected[2..].to_vec(),
        "one database alone finds only its own"
    );

    // Each database is dated on its own: a stale one is refused by name even beside a
    // fresh one.
    let stale = env.path("stale");
    write_json(
        &stale,
        &[(
            "OLD-1.json".into(),
            record(
                "OLD-1",
                "Alpine:v3.20",
                "musl",
                r#"[{"introduced":"0"}]"#,
                "2020-01-01T00:00:00Z",
            ),
        )],
    );
    let out = scan(
        &env,
        &list,
        &[&layout, &stale],
        &env.path("stale.json"),
        &[],
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("the vulnerability database {} is", s(&stale)))
            && text(&out).contains("older than --db-max-age"),
        "{}",
        text(&out)
    );
}

#[tokio::test]
async fn a_database_with_no_usable_records_is_an_error_naming_it() {
    let env = Env::new();
    seed_images(&env, "1.36.1-r28").await;
    let list = list(&env);
    let (debian, _) = records();

    let empty_dir = env.path("empty");
    std::fs::create_dir_all(&empty_dir).expect("dir");
    let no_records_zip = env.path("readme.zip");
    write_zip(&no_records_zip, &[("README.txt".into(), "hello".into())]);
    let empty_zip = env.path("empty.zip");
    write_zip(&empty_zip, &[]);
    let layout_of_empty_zips = env.path("layout-empty");
    write_zip(&layout_of_empty_zips.join("Debian").join("all.zip"), &[]);
    let not_osv = env.path("not-osv");
    write_json(
        &not_osv,
        &[
            (
                "package.json".into(),
                r#"{"name":"x","version":"1.0"}"#.into(),
            ),
            ("list.json".into(), "[1, 2, 3]".into()),
            (
                "undated.json".into(),
                r#"{"id":"X-1","affected":[]}"#.into(),
            ),
        ],
    );
    let good = env.path("good");
    write_json(&good, &debian);

    for (db, extra) in [
        (vec![&empty_dir], &[][..]),
        (vec![&empty_dir], &["--skip-db-age-check"][..]),
        (vec![&no_records_zip], &["--skip-db-age-check"][..]),
        (vec![&empty_zip], &["--skip-db-age-check"][..]),
        (vec![&layout_of_empty_zips], &["--skip-db-age-check"][..]),
        (vec![&not_osv], &["--skip-db-age-check"][..]),
        (vec![&good, &empty_dir], &[][..]),
    ] {
        let named = db.last().expect("db");
        let report = env.path("r.json");
        let _ = std::fs::remove_file(&report);
        let dbs: Vec<&Path> = db.iter().map(|p| p.as_path()).collect();
        let out = scan(&env, &list, &dbs, &report, extra);
        assert!(!out.status.success(), "{db:?}: {}", text(&out));
        assert!(
            text(&out).contains(&format!("{}: no usable OSV records", s(named))),
            "{db:?}: {}",
            text(&out)
        );
        assert!(!report.exists(), "no report from an unusable database");
    }
}

#[tokio::test]
async fn an_installed_version_that_does_not_parse_is_a_warning_naming_it() {
    let env = Env::new();
    seed_images(&env, "1.36.1-bogus").await;
    let list = list(&env);
    let (debian, alpine) = records();
    let db = env.path("db");
    write_json(
        &db,
        &debian.iter().chain(&alpine).cloned().collect::<Vec<_>>(),
    );
    let report = env.path("r.json");
    let out = scan(&env, &list, &[&db], &report, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let log = text(&out);
    let image = format!("{}/scan/alpine:1", env.src.addr);
    let warning = log
        .lines()
        .find(|l| l.contains("does not parse"))
        .unwrap_or_else(|| panic!("no warning: {log}"));
    assert!(
        warning.contains(&format!("[{image}@sha256:"))
            && warning
                .contains(r#"package busybox version "1.36.1-bogus" does not parse in apk order"#)
            && warning.contains("1 vulnerability records for it could not be checked"),
        "{warning}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains(&format!("Scanned [{image}@"))
                && l.contains("1 installed versions not parsed (not checked)")),
        "counted in the summary: {log}"
    );
    assert!(
        log.lines()
            .filter(|l| l.contains("Scanned [") && l.contains("/scan/debian:1@"))
            .all(|l| !l.contains("not parsed")),
        "{log}"
    );
    // Not reported as affected by a range it could not be placed in, and nothing else lost.
    assert_eq!(
        findings(&report),
        vec![
            row(
                "alpine:1",
                "libcrypto3",
                "3.3.1-r0",
                "3.3.2-r0",
                "ALPINE-CVE-2024-0005"
            ),
            row(
                "debian:1",
                "libssl3",
                "3.0.11-1~deb12u2",
                "3.0.11-1~deb12u3",
                "DEBIAN-CVE-2024-0001"
            ),
            row(
                "debian:1",
                "zlib1g",
                "1:1.2.13.dfsg-1",
                "1:1.2.13.dfsg-2",
                "DEBIAN-CVE-2024-0003"
            ),
        ]
    );
}
