//! Scanning images with known dpkg, apk, rpm and Python contents against a small OSV
//! database written here, through a real registry.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn s(p: &Path) -> String {
    p.display().to_string()
}

const DPKG_STATUS: &str = "Package: libssl3\nStatus: install ok installed\nVersion: 3.0.11-1~deb12u2\nSource: openssl\nLicense: ignored\n\nPackage: bash\nStatus: install ok installed\nVersion: 5.2.15-2+b2\nSource: bash (5.2.15-2)\n\nPackage: zlib1g\nStatus: install ok installed\nVersion: 1:1.2.13.dfsg-1\nSource: zlib\n\nPackage: removed-pkg\nStatus: deinstall ok config-files\nVersion: 1.0\n\nStatus: install ok installed\nDescription: an entry with no name\n";

fn record(id: &str, eco: &str, name: &str, events: &str, extra: &str) -> String {
    let now = chrono_now();
    format!(
        r#"{{"id":"{id}","modified":"{now}","summary":"{id} summary","affected":[{{"package":{{"ecosystem":"{eco}","name":"{name}"}},"ranges":[{{"type":"ECOSYSTEM","events":{events}}}]{extra}}}]}}"#
    )
}

fn chrono_now() -> String {
    let out = Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .expect("date");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn write_db(dir: &Path) {
    std::fs::create_dir_all(dir).expect("db dir");
    let records = [
        (
            "DEBIAN-CVE-2024-0001.json",
            record(
                "DEBIAN-CVE-2024-0001",
                "Debian:12",
                "openssl",
                r#"[{"introduced":"0"},{"fixed":"3.0.11-1~deb12u3"}]"#,
                r#","ecosystem_specific":{"urgency":"high"}"#,
            )
            .replace(r#""modified""#, r#""aliases":["CVE-2024-0001"],"modified""#),
        ),
        (
            "CVE-2024-0001.json",
            record(
                "CVE-2024-0001",
                "Debian:12",
                "openssl",
                r#"[{"introduced":"0"},{"fixed":"3.0.11-1~deb12u3"}]"#,
                "",
            ),
        ),
        (
            "DEBIAN-CVE-2024-0002.json",
            record(
                "DEBIAN-CVE-2024-0002",
                "Debian:11",
                "bash",
                r#"[{"introduced":"0"},{"fixed":"9.9"}]"#,
                "",
            ),
        ),
        (
            "DEBIAN-CVE-2024-0003.json",
            record(
                "DEBIAN-CVE-2024-0003",
                "Debian:12",
                "zlib",
                r#"[{"introduced":"0"},{"fixed":"1:1.2.13.dfsg-1"}]"#,
                "",
            ),
        ),
        (
            "GHSA-test-0004.json",
            record(
                "GHSA-test-0004",
                "PyPI",
                "requests",
                r#"[{"introduced":"2.0"},{"fixed":"2.32.0"}]"#,
                r#","database_specific":{"severity":"MODERATE"}"#,
            ),
        ),
        (
            "ALPINE-CVE-2024-0005.json",
            record(
                "ALPINE-CVE-2024-0005",
                "Alpine:v3.20",
                "openssl",
                r#"[{"introduced":"0"},{"fixed":"3.3.2-r0"}]"#,
                "",
            ),
        ),
        (
            "ALPINE-CVE-2024-0006.json",
            record(
                "ALPINE-CVE-2024-0006",
                "Alpine:v3.20",
                "busybox",
                r#"[{"introduced":"0"},{"last_affected":"1.36.1-r28"}]"#,
                r#","database_specific":{"severity":"CRITICAL"}"#,
            ),
        ),
        (
            "RLSA-2024-0007.json",
            record(
                "RLSA-2024-0007",
                "Rocky Linux:9",
                "openssl",
                r#"[{"introduced":"0"},{"fixed":"1:3.0.7-28.el9"}]"#,
                r#","ecosystem_specific":{"severity":"Important"}"#,
            ),
        ),
        ("broken.json", "{ this is not json".to_owned()),
    ];
    for (name, body) in records {
        std::fs::write(dir.join(name), body).expect("record");
    }
}

fn scan(env: &Env, list: &Path, db: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "scan".to_owned(),
        "--tls-verify=false".into(),
        "-f".into(),
        s(list),
        "--db".into(),
        s(db),
        "-o".into(),
        s(&env.path("scan-failed.txt")),
    ];
    args.extend(extra.iter().map(|x| x.to_string()));
    hangar(&args)
}

async fn seed_images(env: &Env) {
    let os_debian: &[u8] =
        b"PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_ID=\"12\"\n";
    let requests_meta: &[u8] =
        b"Metadata-Version: 2.1\nName: requests\nVersion: 2.31.0\nLicense: Apache 2.0\n\nbody\n";
    let urllib3_meta: &[u8] = b"Metadata-Version: 2.1\nName: urllib3\nVersion: 1.0\n";
    push_files_image(
        &env.src.addr,
        "scan/debian",
        vec![
            files_layer(&[
                ("etc/os-release", os_debian),
                ("var/lib/dpkg/status", DPKG_STATUS.as_bytes()),
                (
                    "usr/lib/python3/dist-packages/urllib3-1.0.dist-info/METADATA",
                    urllib3_meta,
                ),
            ]),
            files_layer(&[
                (
                    "usr/lib/python3/dist-packages/requests-2.31.0.dist-info/METADATA",
                    requests_meta,
                ),
                (
                    "usr/lib/python3/dist-packages/.wh.urllib3-1.0.dist-info",
                    b"",
                ),
            ]),
        ],
    )
    .await;
    let apk: &[u8] = b"P:musl\nV:1.2.5-r0\no:musl\nL:MIT\n\nP:busybox\nV:1.36.1-r28\no:busybox\n\nP:libcrypto3\nV:3.3.1-r0\no:openssl\nL:Apache-2.0\n\n";
    push_files_image(
        &env.src.addr,
        "scan/alpine",
        vec![files_layer(&[
            ("etc/os-release", b"ID=alpine\nVERSION_ID=3.20.3\n"),
            ("lib/apk/db/installed", apk),
        ])],
    )
    .await;
    let rpmdb = env.path("rpmdb.sqlite");
    let out = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/make_rpmdb.py"
        ))
        .arg(&rpmdb)
        .args([
            "openssl-libs:1:3.0.7:27.el9:openssl-3.0.7-27.el9.src.rpm:Apache-2.0",
            "bash::5.1.8:9.el9:bash-5.1.8-9.el9.src.rpm:GPLv3+",
        ])
        .output()
        .expect("python3");
    assert!(out.status.success(), "{}", text(&out));
    let rpm_bytes = std::fs::read(&rpmdb).expect("rpmdb");
    push_files_image(
        &env.src.addr,
        "scan/rocky",
        vec![files_layer(&[
            ("etc/os-release", b"ID=\"rocky\"\nVERSION_ID=\"9.4\"\n"),
            ("var/lib/rpm/rpmdb.sqlite", &rpm_bytes),
        ])],
    )
    .await;
    // A damaged first layer; the second still counts.
    let (good, good_diff) = files_layer(&[
        ("etc/os-release", b"ID=alpine\nVERSION_ID=3.20.0\n"),
        (
            "lib/apk/db/installed",
            b"P:busybox\nV:1.36.1-r28\no:busybox\n",
        ),
    ]);
    let (bad, bad_diff) = files_layer(&[("etc/hostname", &[b'x'; 10_000])]);
    push_files_image(
        &env.src.addr,
        "scan/damaged",
        vec![(bad.slice(..bad.len() / 2), bad_diff), (good, good_diff)],
    )
    .await;
}

#[tokio::test]
async fn findings_reports_filters_cache_and_bad_input() {
    let env = Env::new();
    seed_images(&env).await;
    let db = env.path("osv");
    write_db(&db);
    let line = |r: &str| format!("{}/scan/{r}:1", env.src.addr);
    let list = env.write_list(
        "l.txt",
        &[
            line("debian"),
            line("alpine"),
            line("rocky"),
            line("damaged"),
        ],
    );
    let json_report = env.path("r.json");
    let out = scan(
        &env,
        &list,
        &db,
        &["--format", "json", "-r", &s(&json_report)],
    );
    assert!(out.status.success(), "{}", text(&out));
    let log = text(&out);
    assert!(
        log.contains("broken.json"),
        "a malformed record is named: {log}"
    );
    assert!(
        log.contains(&format!("[{}@", line("damaged")))
            && log.contains("damaged, read only in part"),
        "{log}"
    );
    assert!(
        log.contains("var/lib/dpkg/status:21"),
        "the malformed dpkg entry is named: {log}"
    );

    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json_report).expect("report")).expect("json");
    let mut found: Vec<(String, String, String, String, String, String)> = Vec::new();
    for r in report["results"].as_array().expect("results") {
        let name = r["reference"]
            .as_str()
            .unwrap_or_default()
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        for i in r["images"].as_array().expect("images") {
            assert_eq!(i["platform"]["arch"], "amd64");
            assert!(
                i["digest"]
                    .as_str()
                    .unwrap_or_default()
                    .starts_with("sha256:")
            );
            for v in i["vulnerabilities"].as_array().expect("vulnerabilities") {
                for key in [
                    "title",
                    "id",
                    "severity",
                    "package",
                    "installed",
                    "fixed",
                    "url",
                ] {
                    assert!(v.get(key).is_some(), "{key} in {v}");
                }
                found.push((
                    name.clone(),
                    v["package"].as_str().unwrap_or_default().into(),
                    v["installed"].as_str().unwrap_or_default().into(),
                    v["fixed"].as_str().unwrap_or_default().into(),
                    v["id"].as_str().unwrap_or_default().into(),
                    v["severity"].as_str().unwrap_or_default().into(),
                ));
            }
        }
    }
    found.sort();
    let row = |a: &str, b: &str, c: &str, d: &str, e: &str, f: &str| {
        (
            a.to_owned(),
            b.to_owned(),
            c.to_owned(),
            d.to_owned(),
            e.to_owned(),
            f.to_owned(),
        )
    };
    assert_eq!(
        found,
        vec![
            row(
                "alpine:1",
                "busybox",
                "1.36.1-r28",
                "",
                "ALPINE-CVE-2024-0006",
                "CRITICAL"
            ),
            row(
                "alpine:1",
                "libcrypto3",
                "3.3.1-r0",
                "3.3.2-r0",
                "ALPINE-CVE-2024-0005",
                "UNKNOWN"
            ),
            row(
                "damaged:1",
                "busybox",
                "1.36.1-r28",
                "",
                "ALPINE-CVE-2024-0006",
                "CRITICAL"
            ),
            row(
                "debian:1",
                "libssl3",
                "3.0.11-1~deb12u2",
                "3.0.11-1~deb12u3",
                "DEBIAN-CVE-2024-0001",
                "HIGH"
            ),
            row(
                "debian:1",
                "requests",
                "2.31.0",
                "2.32.0",
                "GHSA-test-0004",
                "MEDIUM"
            ),
            row(
                "rocky:1",
                "openssl-libs",
                "1:3.0.7-27.el9",
                "1:3.0.7-28.el9",
                "RLSA-2024-0007",
                "HIGH"
            ),
        ],
        "exact findings: release-scoped (Debian:11 not matched), source packages, aliases once, fixed versions excluded"
    );

    // CSV, YAML, SPDX and CycloneDX shapes.
    let out = scan(
        &env,
        &list,
        &db,
        &["--format", "csv", "-r", &s(&env.path("r.csv"))],
    );
    assert!(out.status.success());
    let csv = std::fs::read_to_string(env.path("r.csv")).expect("csv");
    assert!(
        csv.starts_with("image,arch,os,package,title,id,severity,installed,fixed,url\n"),
        "{csv}"
    );
    assert_eq!(csv.lines().count(), 7, "{csv}");
    let out = scan(
        &env,
        &list,
        &db,
        &["--format", "yaml", "-r", &s(&env.path("r.yaml"))],
    );
    assert!(out.status.success());
    let yaml = std::fs::read_to_string(env.path("r.yaml")).expect("yaml");
    assert!(
        yaml.contains("result:") && yaml.contains("vulnerabilities:"),
        "{yaml}"
    );
    let out = scan(
        &env,
        &list,
        &db,
        // Hangar's `[FORMAT]`, in a given name too: `spdx.json` for this format.
        &["--format", "spdx-json", "-r", &s(&env.path("r.[FORMAT]"))],
    );
    assert!(out.status.success());
    assert!(
        common::text(&out).contains("[INFO] Output Format: [spdx-json]"),
        "{}",
        common::text(&out)
    );
    let spdx: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.path("r.spdx.json")).expect("spdx"))
            .expect("json");
    for r in spdx["results"].as_array().expect("results") {
        for i in r["images"].as_array().expect("images") {
            let doc = &i["spdx"];
            for key in [
                "spdxVersion",
                "dataLicense",
                "SPDXID",
                "name",
                "documentNamespace",
                "creationInfo",
                "packages",
            ] {
                assert!(doc.get(key).is_some(), "SPDX {key}");
            }
            assert_eq!(doc["spdxVersion"], "SPDX-2.3");
            for p in doc["packages"].as_array().expect("packages") {
                for key in ["SPDXID", "name", "versionInfo", "downloadLocation"] {
                    assert!(p.get(key).is_some(), "SPDX package {key}");
                }
            }
        }
    }
    let out = scan(
        &env,
        &list,
        &db,
        &[
            "--format",
            "cyclonedx-json",
            "-r",
            &s(&env.path("r.cdx.json")),
        ],
    );
    assert!(out.status.success());
    let cdx: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.path("r.cdx.json")).expect("cdx")).expect("json");
    let bom = &cdx["results"][0]["images"][0]["cyclonedx"];
    assert_eq!(bom["bomFormat"], "CycloneDX");
    assert_eq!(bom["specVersion"], "1.5");
    assert!(bom["components"].as_array().is_some_and(|c| {
        c.iter()
            .all(|x| x["purl"].is_string() && x["name"].is_string())
    }));

    // The dpkg inventory matches an independent reading of the same status file.
    let out = scan(
        &env,
        &env.write_list("deb.txt", &[line("debian")]),
        &db,
        &["--format", "spdx-csv", "-r", &s(&env.path("r.spdx.csv"))],
    );
    assert!(out.status.success());
    let spdx_csv = std::fs::read_to_string(env.path("r.spdx.csv")).expect("spdx csv");
    assert!(
        spdx_csv
            .starts_with("image,arch,os,package,license,versionInfo,supplier,originator,SPDXID\n")
    );
    let mut ours: Vec<String> = spdx_csv
        .lines()
        .skip(1)
        .map(|l| {
            let c: Vec<&str> = l.split(',').collect();
            format!("{} {}", c[3], c[5])
        })
        .collect();
    ours.sort();
    let status = env.path("status");
    std::fs::write(&status, DPKG_STATUS).expect("status");
    let py = Command::new("python3").args(["-c", "import sys\nfor p in open(sys.argv[1]).read().split('\\n\\n'):\n f=dict(l.split(': ',1) for l in p.splitlines() if ': ' in l)\n if 'installed' in f.get('Status','').split() and 'Package' in f: print(f['Package'], f['Version'])", &s(&status)]).output().expect("python3");
    let mut theirs: Vec<String> = String::from_utf8_lossy(&py.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    theirs.push("requests 2.31.0".into());
    theirs.sort();
    assert_eq!(
        ours, theirs,
        "the whiteout removed urllib3; the deinstalled package is not listed"
    );

    // --severity and --exit-code.
    let out = scan(
        &env,
        &list,
        &db,
        &[
            "--severity",
            "CRITICAL",
            "--exit-code",
            "3",
            "--format",
            "json",
            "-r",
            &s(&env.path("crit.json")),
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let crit = std::fs::read_to_string(env.path("crit.json")).expect("crit");
    assert_eq!(
        crit.matches("\"severity\": \"CRITICAL\"").count(),
        2,
        "{crit}"
    );
    assert!(!crit.contains("\"HIGH\""), "{crit}");
    let out = scan(
        &env,
        &env.write_list("rocky.txt", &[line("rocky")]),
        &db,
        &[
            "--severity",
            "CRITICAL",
            "--exit-code",
            "3",
            "-r",
            &s(&env.path("x.csv")),
        ],
    );
    assert!(
        out.status.success(),
        "no critical finding there: {}",
        text(&out)
    );

    // With a cache: the second scan reads no layer.
    let cache = env.path("cache");
    let deb_list = env.write_list("deb2.txt", &[line("debian")]);
    assert!(
        scan(
            &env,
            &deb_list,
            &db,
            &["--cache", &s(&cache), "-r", &s(&env.path("c1.csv"))]
        )
        .status
        .success()
    );
    let gets = |log: &str| blob_gets(log).values().sum::<usize>();
    let before = gets(&env.src.log());
    let out = scan(
        &env,
        &deb_list,
        &db,
        &["--cache", &s(&cache), "-r", &s(&env.path("c2.csv"))],
    );
    assert!(out.status.success());
    assert!(
        text(&out).contains("inventory from the cache"),
        "{}",
        text(&out)
    );
    assert_eq!(gets(&env.src.log()), before, "no blob read on a re-scan");
    assert_eq!(
        std::fs::read_to_string(env.path("c1.csv")).expect("c1"),
        std::fs::read_to_string(env.path("c2.csv")).expect("c2")
    );
}

#[tokio::test]
async fn an_old_database_is_refused_unless_told() {
    let env = Env::new();
    push_files_image(
        &env.src.addr,
        "scan/tiny",
        vec![files_layer(&[(
            "etc/os-release",
            b"ID=alpine\nVERSION_ID=3.20.0\n",
        )])],
    )
    .await;
    let db = env.path("old");
    std::fs::create_dir_all(&db).expect("dir");
    std::fs::write(
        db.join("a.json"),
        r#"{"id":"OLD-1","modified":"2020-01-01T00:00:00Z","affected":[]}"#,
    )
    .expect("record");
    let list = env.write_list("l.txt", &[format!("{}/scan/tiny:1", env.src.addr)]);
    let out = scan(&env, &list, &db, &["-r", &s(&env.path("r.csv"))]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("older than --db-max-age"),
        "{}",
        text(&out)
    );
    let out = scan(
        &env,
        &list,
        &db,
        &["--skip-db-age-check", "-r", &s(&env.path("r.csv"))],
    );
    assert!(out.status.success(), "{}", text(&out));
    // The database as a zip, as osv.dev publishes it.
    let zip = env.path("all.zip");
    let py = Command::new("python3").args(["-c", "import sys,zipfile\nz=zipfile.ZipFile(sys.argv[1],'w',zipfile.ZIP_DEFLATED)\nz.write(sys.argv[2],'OLD-1.json')", &s(&zip), &s(&db.join("a.json"))]).output().expect("python3");
    assert!(py.status.success());
    let out = scan(
        &env,
        &list,
        &zip,
        &["--skip-db-age-check", "-r", &s(&env.path("r2.csv"))],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("1 records"), "{}", text(&out));

    // The same zip as an OCI artifact in a registry, as an air-gapped site mirrors it.
    let reg = registry(&env.src.addr).await;
    let zip_bytes = bytes::Bytes::from(std::fs::read(&zip).expect("zip"));
    let layer = hangar_loadtest::seed::push_bytes(&reg, "osv/db", "application/zip", zip_bytes)
        .await
        .expect("db layer");
    let config = hangar_loadtest::seed::push_bytes(
        &reg,
        "osv/db",
        "application/vnd.oci.empty.v1+json",
        bytes::Bytes::from_static(b"{}"),
    )
    .await
    .expect("config");
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": config.digest.to_string(), "size": config.size},
        "layers": [{"mediaType": "application/zip", "digest": layer.digest.to_string(), "size": layer.size}],
    });
    hangar_loadtest::seed::push_manifest(
        &reg,
        "osv/db",
        "latest",
        "application/vnd.oci.image.manifest.v1+json",
        bytes::Bytes::from(manifest.to_string()),
    )
    .await
    .expect("db manifest");
    let oci = format!("oci://{}/osv/db:latest", env.src.addr);
    let out = scan(
        &env,
        &list,
        Path::new(&oci),
        &["--skip-db-age-check", "-r", &s(&env.path("r3.csv"))],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("1 records"), "{}", text(&out));

    // And over HTTP.
    let port = hangar_loadtest::services::free_port().expect("port");
    let server = Command::new("python3")
        .args([
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--directory",
            &s(env.dir.path()),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map(Reaped)
        .expect("http.server");
    hangar_loadtest::services::wait_for_port(
        &format!("127.0.0.1:{port}"),
        std::time::Duration::from_secs(10),
    )
    .expect("up");
    let url = format!("http://127.0.0.1:{port}/all.zip");
    let out = scan(
        &env,
        &list,
        Path::new(&url),
        &["--skip-db-age-check", "-r", &s(&env.path("r4.csv"))],
    );
    drop(server);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("1 records"), "{}", text(&out));
}

/// Kills and reaps a helper process however the test ends.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn save_scans_what_it_gathers_reading_each_layer_once() {
    let env = Env::new();
    seed_images(&env).await;
    let db = env.path("osv");
    write_db(&db);
    let list = env.write_list("l.txt", &[format!("{}/scan/debian:1", env.src.addr)]);
    let report = env.path("save-scan.json");
    let out = hangar(&[
        "save",
        "--tls-verify=false",
        "-y",
        "-f",
        &s(&list),
        "-d",
        &s(&env.path("s.zip")),
        "--scan-db",
        &s(&db),
        "--scan-report",
        &s(&report),
        "-o",
        &s(&env.path("f.txt")),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).expect("report")).expect("json");
    let ids: Vec<&str> = r["results"][0]["images"][0]["vulnerabilities"]
        .as_array()
        .expect("vulnerabilities")
        .iter()
        .filter_map(|v| v["id"].as_str())
        .collect();
    let mut ids = ids;
    ids.sort();
    assert_eq!(ids, vec!["DEBIAN-CVE-2024-0001", "GHSA-test-0004"]);
    assert_eq!(
        r["results"][0]["reference"],
        format!("{}/scan/debian:1", env.src.addr)
    );
    for (digest, n) in blob_gets(&env.src.log()) {
        assert_eq!(n, 1, "{digest} read {n} times");
    }
}
