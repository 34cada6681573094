//! Work beyond copying on the fleet: `save` to an S3 archive (and `load` from it), signing
//! during a mirror with a key that never travels, scanning during a mirror from the shared
//! cache (and `scan --db s3://…`).

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::fleet::{Killed as Worker, spawn_worker};
use common::*;
use futures_util::StreamExt;
use hangar_loadtest::seed::Format;
use hangar_loadtest::services::NatsProcess;

/// An OSV database directory under `env` holding one Debian 12 record, modified now:
/// `package` before `fixed` is vulnerable.
fn osv_db(env: &Env, id: &str, package: &str, fixed: &str) -> PathBuf {
    let db = env.path("osv");
    std::fs::create_dir_all(&db).unwrap();
    let now = Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .unwrap()
        .stdout;
    std::fs::write(
        db.join("r.json"),
        format!(
            r#"{{"id":"{id}","modified":"{}","affected":[{{"package":{{"ecosystem":"Debian:12","name":"{package}"}},"ranges":[{{"type":"ECOSYSTEM","events":[{{"introduced":"0"}},{{"fixed":"{fixed}"}}]}}]}}]}}"#,
            String::from_utf8_lossy(&now).trim()
        ),
    )
    .unwrap();
    db
}

/// The AWS_* variables that let a process reach `garage`'s bucket.
fn garage_env(garage: &hangar_loadtest::services::GarageProcess) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID", garage.key_id.clone()),
        ("AWS_SECRET_ACCESS_KEY", garage.secret.clone()),
    ]
}

/// `save --nats`: workers gather the blobs into the shared Garage bucket, one of them writes
/// the archive as an S3 multipart upload; `load` then reads it from S3 by range.
#[tokio::test(flavor = "multi_thread")]
async fn workers_save_an_archive_to_s3_and_it_loads_from_there() {
    let env = Env::new();
    let nats = NatsProcess::start().expect("nats-server");
    let garage = hangar_loadtest::services::GarageProcess::start()
        .expect("garage (scripts/dev-services.sh installs it)");
    let cache = garage.cache_url();
    let aws = garage_env(&garage);
    let envs: Vec<(&str, &str)> = aws.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let _workers: Vec<Worker> = (0..3)
        .map(|i| {
            let args = ["--listen", "127.0.0.1:0", "--cache", &cache];
            spawn_worker(&nats.url(), env.path(&format!("sw{i}.log")), &args, &envs)
        })
        .collect();
    let lines = seed_shared_repos(&env, 3).await;
    let list = env.write_list("list.txt", &lines);
    let (bucket_and_query, _) = (cache.trim_start_matches("s3://"), ());
    let (bucket, query) = bucket_and_query.split_once('?').expect("query");
    let archive = format!("s3://{bucket}/archives-out/saved.zip?{query}");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_hangar-coord"))
            .args(args)
            .env("REGISTRY_AUTH_FILE", "/nonexistent/auth.json")
            .envs(envs.iter().copied())
            .output()
            .expect("hangar-coord")
    };
    let out = run(&[
        "save",
        "--tls-verify=false",
        "-f",
        list.to_str().unwrap(),
        "-d",
        &archive,
        "--nats",
        &nats.url(),
        "--cache",
        &cache,
        "-j",
        "3",
        "-o",
        env.path("sf.txt").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "save on the fleet: {}", text(&out));
    assert!(text(&out).contains("runs on the fleet"), "{}", text(&out));
    let assembled_by: Vec<usize> = (0..3)
        .filter(|i| {
            std::fs::read_to_string(env.path(&format!("sw{i}.log")))
                .unwrap_or_default()
                .contains("kind=\"assemble\"")
        })
        .collect();
    assert_eq!(assembled_by.len(), 1, "one worker wrote the archive");

    let ls = run(&["archive", "ls", "--image-only", &archive]);
    assert!(ls.status.success(), "{}", text(&ls));
    let mut listed: Vec<String> = String::from_utf8_lossy(&ls.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    listed.sort();
    let mut expected = lines.clone();
    expected.sort();
    assert_eq!(listed, expected);
    assert!(run(&["archive", "verify", &archive]).status.success());

    let out = run(&[
        "load",
        "--tls-verify=false",
        "-s",
        &archive,
        "-d",
        &env.dst.addr,
        "-j",
        "3",
        "-o",
        env.path("lf.txt").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "load from S3: {}", text(&out));
    for line in &lines {
        let dst = line.replace(&env.src.addr, &env.dst.addr);
        let src_raw = skopeo_raw(line).expect("source");
        let dst_raw = skopeo_raw(&dst).expect("loaded");
        assert!(index_digests(&dst_raw).contains(&sha(&src_raw)), "{dst}");
    }
}

/// `submit --sign-key NAME`: workers holding the key sign every image as it lands; the key,
/// its path and its passphrase never travel on the bus.
#[tokio::test(flavor = "multi_thread")]
async fn workers_sign_during_a_mirror_and_the_key_never_travels() {
    let env = Env::new();
    let nats = NatsProcess::start().expect("nats-server");
    let pass = env.path("pass.txt");
    std::fs::write(&pass, "fleet-key-passphrase\n").unwrap();
    let prefix = env.path("fleet-signing-key");
    let out = hangar(&[
        "generate-sigstore-key",
        "-p",
        prefix.to_str().unwrap(),
        "--passphrase-file",
        pass.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let key_path = format!("{}.key", prefix.display());
    let spy = async_nats::connect(nats.url()).await.unwrap();
    let mut seen = spy.subscribe(">").await.unwrap();
    let collected = tokio::spawn(async move {
        let mut all = Vec::new();
        while let Ok(Some(m)) =
            tokio::time::timeout(std::time::Duration::from_secs(8), seen.next()).await
        {
            all.push(format!(
                "{} {:?} {}",
                m.subject,
                m.headers,
                String::from_utf8_lossy(&m.payload)
            ));
        }
        all
    });
    let sign_arg = format!("release={key_path}");
    let workers: Vec<Worker> = (0..3)
        .map(|i| {
            spawn_worker(
                &nats.url(),
                env.path(&format!("signw{i}.log")),
                &[
                    "--listen",
                    "127.0.0.1:0",
                    "--sign-key",
                    &sign_arg,
                    "--sign-passphrase-file",
                    pass.to_str().unwrap(),
                ],
                &[],
            )
        })
        .collect();
    let lines = seed_shared_repos(&env, 4).await;
    // Two lines writing one tag: the second index merges the first line's platform, which
    // the signer must take as planned even while that platform's own signature is running.
    let src = registry(&env.src.addr).await;
    let mut all = lines.clone();
    for (name, arch, seed) in [("a", "amd64", 300), ("b", "arm64", 301)] {
        let repo = format!("merge/{name}");
        push_image(
            &src,
            env.dir.path(),
            &repo,
            Some("v1"),
            Format::Oci,
            arch,
            (&[seed], 20_000),
        )
        .await;
        all.push(format!(
            "{}/{repo} {}/proj/merged v1",
            env.src.addr, env.dst.addr
        ));
    }
    let list = env.write_list("list.txt", &all);
    let out = hangar(&[
        "submit",
        list.to_str().unwrap(),
        "--tls-verify=false",
        "-d",
        &env.dst.addr,
        "-j",
        "4",
        "--nats",
        &nats.url(),
        "--sign-key",
        "release",
        "-o",
        env.path("failed.txt").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let signers: usize = (0..3)
        .filter(|i| {
            std::fs::read_to_string(env.path(&format!("signw{i}.log")))
                .unwrap_or_default()
                .contains("kind=\"sign\"")
        })
        .count();
    assert!(signers >= 1, "workers ran sign tasks");
    let mut dst_lines: Vec<String> = lines
        .iter()
        .map(|l| l.replace(&env.src.addr, &env.dst.addr))
        .collect();
    dst_lines.push(format!("{}/proj/merged:v1", env.dst.addr));
    let dst_list = env.write_list("dst.txt", &dst_lines);
    let v = hangar(&[
        "sign",
        "validate",
        "--tls-verify=false",
        "-f",
        dst_list.to_str().unwrap(),
        "-k",
        &format!("{}.pub", prefix.display()),
        "-r",
        env.path("report.json").to_str().unwrap(),
        "-o",
        env.path("vf.txt").to_str().unwrap(),
    ]);
    assert!(v.status.success(), "{}", text(&v));
    assert_eq!(text(&v).matches("PASS").count(), 5, "{}", text(&v));
    let merged = skopeo_raw(&format!("{}/proj/merged:v1", env.dst.addr)).expect("the merged tag");
    let merged: serde_json::Value = serde_json::from_slice(&merged).unwrap();
    let mut arches: Vec<&str> = merged["manifests"]
        .as_array()
        .expect("an index at the merged tag")
        .iter()
        .filter_map(|d| d["platform"]["architecture"].as_str())
        .collect();
    arches.sort();
    assert_eq!(
        arches,
        ["amd64", "arm64"],
        "both lines' platforms at one tag"
    );
    let (digests, unsigned) = common::signing::report_verdicts(&env.path("report.json"));
    assert!(digests >= 5, "{digests} digests: {}", text(&v));
    assert_eq!(unsigned, Vec::<String>::new(), "{}", text(&v));
    // The spy stops after 8 s of silence, which polling workers never leave.
    drop(workers);
    let messages = collected.await.unwrap();
    assert!(
        messages.iter().any(|m| m.contains("hangar.task.sign.")),
        "sign tasks went over the bus"
    );
    let key_pem = std::fs::read_to_string(&key_path).unwrap();
    let key_body = key_pem.lines().nth(1).unwrap().to_owned();
    for m in &messages {
        assert!(!m.contains(&key_path), "key path on the bus: {m}");
        assert!(
            !m.contains("fleet-signing-key"),
            "key file name on the bus: {m}"
        );
        assert!(
            !m.contains("fleet-key-passphrase"),
            "passphrase on the bus: {m}"
        );
        assert!(!m.contains(&key_body), "key material on the bus: {m}");
    }
}

/// `submit --scan-db`: workers read each copied image's inventory from the shared cache the
/// mirror just filled (no layer read twice, from anywhere), and the report lists findings.
#[tokio::test(flavor = "multi_thread")]
async fn workers_scan_during_a_mirror_reading_each_layer_once() {
    let env = Env::new();
    let nats = NatsProcess::start().expect("nats-server");
    let garage = hangar_loadtest::services::GarageProcess::start()
        .expect("garage (scripts/dev-services.sh installs it)");
    let cache = garage.cache_url();
    let aws = garage_env(&garage);
    let envs: Vec<(&str, &str)> = aws.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let _workers: Vec<Worker> = (0..2)
        .map(|i| {
            let args = ["--listen", "127.0.0.1:0", "--cache", &cache];
            spawn_worker(&nats.url(), env.path(&format!("scw{i}.log")), &args, &envs)
        })
        .collect();
    let status: &[u8] = b"Package: libssl3\nStatus: install ok installed\nVersion: 3.0.11-1~deb12u2\nSource: openssl\n";
    for repo in ["scanfleet/a", "scanfleet/b"] {
        push_files_image(
            &env.src.addr,
            repo,
            vec![
                files_layer(&[("etc/os-release", b"ID=debian\nVERSION_ID=12\n")]),
                files_layer(&[
                    ("var/lib/dpkg/status", status),
                    ("etc/motd", repo.as_bytes()),
                ]),
            ],
        )
        .await;
    }
    let db = osv_db(&env, "DEBIAN-CVE-2024-9", "openssl", "3.0.11-1~deb12u3");
    let list = env.write_list(
        "list.txt",
        &[
            format!("{}/scanfleet/a:1", env.src.addr),
            format!("{}/scanfleet/b:1", env.src.addr),
        ],
    );
    let report = env.path("scan.json");
    let out = Command::new(env!("CARGO_BIN_EXE_hangar-coord"))
        .args([
            "submit",
            list.to_str().unwrap(),
            "--tls-verify=false",
            "-d",
            &env.dst.addr,
            "--nats",
            &nats.url(),
            "--scan-db",
            db.to_str().unwrap(),
            "--scan-report",
            report.to_str().unwrap(),
            "-o",
            env.path("failed.txt").to_str().unwrap(),
        ])
        .env("REGISTRY_AUTH_FILE", "/nonexistent/auth.json")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let scanners = (0..2)
        .filter(|i| {
            std::fs::read_to_string(env.path(&format!("scw{i}.log")))
                .unwrap_or_default()
                .contains("kind=\"scan\"")
        })
        .count();
    assert!(scanners >= 1, "scan tasks ran on the workers");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let results = r["results"].as_array().unwrap();
    assert_eq!(results.len(), 2, "{r}");
    for res in results {
        let v = &res["images"][0]["vulnerabilities"][0];
        assert_eq!(v["id"], "DEBIAN-CVE-2024-9", "{r}");
        assert_eq!(v["fixed"], "3.0.11-1~deb12u3");
    }
    // Each source blob fetched once (by the mirror); the scan read nothing from any registry.
    for (digest, n) in blob_gets(&env.src.log()) {
        assert_eq!(n, 1, "{digest} fetched {n} times from the source");
    }
    assert!(
        blob_gets(&env.dst.log()).is_empty(),
        "the scan read no layer back from the destination"
    );

    let (bucket, query) = cache.trim_start_matches("s3://").split_once('?').unwrap();
    let loadtest =
        PathBuf::from(env!("CARGO_BIN_EXE_hangar-coord")).with_file_name("hangar-loadtest");
    let put_object = |key: &str, file: &std::path::Path| {
        let put = Command::new(&loadtest)
            .args(["put-object", &format!("s3://{bucket}/{key}?{query}")])
            .arg(file)
            .envs(envs.iter().copied())
            .output()
            .unwrap();
        assert!(put.status.success(), "{}", text(&put));
    };
    // An empty inventory left in the shared bucket, as anyone holding its credentials
    // could, hides nothing: a fleet worker reads the layers (from the cache, checked
    // against their digests) unless it is told to trust the cache's inventories.
    // The platform manifest (the destination's tag holds Hangar's index of it).
    let raw = skopeo_raw(&format!("{}/scanfleet/a:1", env.src.addr)).expect("source");
    let planted = env.path("empty-inventory.json");
    std::fs::write(&planted, br#"{"packages":[]}"#).unwrap();
    put_object(
        &format!(
            "inventory/sha256/{}.json",
            sha(&raw).trim_start_matches("sha256:")
        ),
        &planted,
    );
    let again = env.path("again.json");
    let out = Command::new(env!("CARGO_BIN_EXE_hangar-coord"))
        .args(["submit", list.to_str().unwrap(), "--tls-verify=false", "-d"])
        .args([&env.dst.addr, "--nats", &nats.url(), "--scan-db"])
        .args([
            db.to_str().unwrap(),
            "--scan-report",
            again.to_str().unwrap(),
        ])
        .args(["-o", env.path("failed2.txt").to_str().unwrap()])
        .env("REGISTRY_AUTH_FILE", "/nonexistent/auth.json")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let r = std::fs::read_to_string(&again).unwrap();
    assert_eq!(r.matches("\"id\": \"DEBIAN-CVE-2024-9\"").count(), 2, "{r}");

    // The database as an S3 object (a zip), read by `scan --db s3://…`.
    let zip = env.path("all.zip");
    let py = Command::new("python3")
        .args([
            "-c",
            "import sys,zipfile\nz=zipfile.ZipFile(sys.argv[1],'w',zipfile.ZIP_DEFLATED)\nz.write(sys.argv[2],'r.json')",
            zip.to_str().unwrap(),
            db.join("r.json").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(py.status.success());
    let location = format!("s3://{bucket}/osv/all.zip?{query}");
    put_object("osv/all.zip", &zip);
    let out = Command::new(env!("CARGO_BIN_EXE_hangar-coord"))
        .args([
            "scan",
            "--tls-verify=false",
            "-f",
            list.to_str().unwrap(),
            "--db",
            &location,
            "--format",
            "json",
            "-r",
            env.path("s3scan.json").to_str().unwrap(),
            "-o",
            env.path("sf.txt").to_str().unwrap(),
        ])
        .env("REGISTRY_AUTH_FILE", "/nonexistent/auth.json")
        .envs(envs.iter().copied())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("1 records"), "{}", text(&out));
    let r = std::fs::read_to_string(env.path("s3scan.json")).unwrap();
    assert_eq!(r.matches("\"id\": \"DEBIAN-CVE-2024-9\"").count(), 2, "{r}");
}

/// A scan whose result is too large for the bus (an inventory of 3,000 packages where NATS
/// carries 64 KiB a message) fails that scan for good at once, naming `max_payload`, and
/// is not delivered again to end the same way; the image is still copied.
#[tokio::test(flavor = "multi_thread")]
async fn a_scan_result_too_large_for_the_bus_fails_its_scan_at_once() {
    let env = Env::new();
    let nats = NatsProcess::start_with_config("max_payload: 65536").expect("nats-server");
    let garage = hangar_loadtest::services::GarageProcess::start()
        .expect("garage (scripts/dev-services.sh installs it)");
    let cache = garage.cache_url();
    let aws = garage_env(&garage);
    let envs: Vec<(&str, &str)> = aws.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let _worker = spawn_worker(
        &nats.url(),
        env.path("w.log"),
        &["--listen", "127.0.0.1:0", "--cache", &cache],
        &envs,
    );
    let status: String = (0..3000)
        .map(|i| {
            format!(
                "Package: pkg{i}\nStatus: install ok installed\nVersion: 1.0-{i}\nSource: src{i}\n\n"
            )
        })
        .collect();
    push_files_image(
        &env.src.addr,
        "scanbig/a",
        vec![files_layer(&[
            ("etc/os-release", b"ID=debian\nVERSION_ID=12\n"),
            ("var/lib/dpkg/status", status.as_bytes()),
        ])],
    )
    .await;
    let db = osv_db(&env, "DEBIAN-CVE-2024-1", "src1", "2.0");
    let image = format!("{}/scanbig/a:1", env.src.addr);
    let list = env.write_list("list.txt", std::slice::from_ref(&image));
    let run = run_measured(
        &[
            "submit",
            list.to_str().unwrap(),
            "--tls-verify=false",
            "-d",
            &env.dst.addr,
            "--nats",
            &nats.url(),
            "--scan-db",
            db.to_str().unwrap(),
            "--scan-report",
            env.path("scan.json").to_str().unwrap(),
            "-o",
            env.path("failed.txt").to_str().unwrap(),
        ],
        std::time::Duration::from_secs(150),
    );
    assert!(run.output.contains("max_payload 65536"), "{}", run.output);
    let log = std::fs::read_to_string(env.path("w.log")).unwrap_or_default();
    assert_eq!(
        log.matches("task started kind=\"scan\"").count(),
        1,
        "one delivery of the scan: {log}"
    );
    assert!(
        skopeo_raw(&image.replace(&env.src.addr, &env.dst.addr)).is_some(),
        "the image is copied"
    );
    // Not three deliveries' ack waits and back-offs.
    assert!(
        run.elapsed < std::time::Duration::from_secs(60),
        "{:?}",
        run.elapsed
    );
}
