//! Kinds of work beyond mirror on the fleet, with real nats-server, Garage and registries.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::fleet::{self, Proc};
use common::{Env, index_digests, sha, skopeo_raw, text};
use hangar_loadtest::proxy::{self, ProxyOptions};
use hangar_loadtest::services::{GarageProcess, NatsProcess, free_port};

/// `load -s s3://… --nats`: the workers read the archive by range from S3 themselves (not
/// the process that asked), one of two is killed -9 mid-job, and every image lands with
/// its digest; a worker whose --archive-root does not cover the archive refuses to read it.
#[tokio::test(flavor = "multi_thread")]
async fn load_of_an_s3_archive_runs_on_the_workers_through_a_kill() {
    let env = Env::new();
    let nats = NatsProcess::start().expect("nats-server");
    let garage = GarageProcess::start().expect("garage (scripts/dev-services.sh installs it)");
    let cache = garage.cache_url();
    let aws = [
        ("AWS_ACCESS_KEY_ID", garage.key_id.as_str()),
        ("AWS_SECRET_ACCESS_KEY", garage.secret.as_str()),
    ];
    let src = common::registry(&env.src.addr).await;
    let mut lines = Vec::new();
    for i in 0..4u64 {
        let repo = format!("air/app-{i}");
        common::push_image(
            &src,
            env.dir.path(),
            &repo,
            Some("v1"),
            hangar_loadtest::seed::Format::Oci,
            "amd64",
            (&[7000 + i], 1_500_000),
        )
        .await;
        lines.push(format!("{}/{repo}:v1", env.src.addr));
    }
    let list = env.write_list("list.txt", &lines);
    let (bucket, query) = cache
        .trim_start_matches("s3://")
        .split_once('?')
        .expect("query");
    let archive = format!("s3://{bucket}/air/saved.zip?{query}");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_hangar-coord"))
            .args(args)
            .env("REGISTRY_AUTH_FILE", "/nonexistent/auth.json")
            .envs(aws)
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
        "-o",
        env.path("sf.txt").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "save: {}", text(&out));

    // The destination takes pushes slowly, so the load lasts long enough to lose a worker.
    let slow_dst = proxy::start(
        "127.0.0.1:0",
        &env.dst.addr,
        ProxyOptions {
            rate_limit: Some(400_000),
            ..Default::default()
        },
    )
    .await
    .expect("proxy");
    // A root names its S3 service too: an archive on another endpoint is outside it.
    let root = format!("s3://{bucket}/air/?{query}");
    let worker_args = ["--ack-wait", "5s", "--archive-root", root.as_str()];
    let mut workers: Vec<Proc> = (0..2)
        .map(|i| {
            fleet::worker(
                &nats.url(),
                &env.path(&format!("w{i}.log")),
                &worker_args,
                &aws,
            )
        })
        .collect();
    let mut load = Command::new(env!("CARGO_BIN_EXE_hangar-coord"))
        .args([
            "load",
            "--tls-verify=false",
            "-s",
            &archive,
            "-d",
            &slow_dst.addr,
            "--nats",
            &nats.url(),
            "-j",
            "4",
            "-o",
            env.path("lf.txt").to_str().unwrap(),
        ])
        .env("REGISTRY_AUTH_FILE", "/nonexistent/auth.json")
        .envs(aws)
        .stdout(std::fs::File::create(env.path("load.log")).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("load");
    tokio::time::sleep(Duration::from_secs(2)).await;
    workers[0].kill();
    let killed = Instant::now();
    let status = loop {
        if let Some(s) = load.try_wait().unwrap() {
            break s;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(120),
            "load still runs"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let log = std::fs::read_to_string(env.path("load.log")).unwrap_or_default();
    assert!(status.success(), "{log}");
    assert!(log.contains("runs on the fleet"), "{log}");
    for line in &lines {
        let source = skopeo_raw(line).expect("source");
        let loaded = skopeo_raw(&line.replace(&env.src.addr, &env.dst.addr)).expect("loaded");
        assert_eq!(index_digests(&loaded), vec![sha(&source)], "{line}");
    }
    // The workers did the reading: their logs show blob tasks, from the archive.
    let worker_logs: String = (0..2)
        .map(|i| std::fs::read_to_string(env.path(&format!("w{i}.log"))).unwrap_or_default())
        .collect();
    assert!(worker_logs.contains("kind=\"blob\""), "{worker_logs}");

    // Both validations run as check tasks on the surviving worker: it reads the archive
    // (save validate) and the destination (load validate).
    let nats_url = nats.url();
    let out = run(&[
        "save",
        "validate",
        "--tls-verify=false",
        "-f",
        list.to_str().unwrap(),
        "-d",
        &archive,
        "--nats",
        &nats_url,
        "-o",
        env.path("svf.txt").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("4 passed, 0 failed"), "{}", text(&out));
    let out = run(&[
        "load",
        "validate",
        "--tls-verify=false",
        "-s",
        &archive,
        "-d",
        &env.dst.addr,
        "--nats",
        &nats_url,
        "-o",
        env.path("lvf.txt").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("4 passed, 0 failed"), "{}", text(&out));
    let checked: String = (0..2)
        .map(|i| std::fs::read_to_string(env.path(&format!("w{i}.log"))).unwrap_or_default())
        .collect();
    assert!(checked.contains("kind=\"check\""), "{checked}");

    // A worker whose roots do not cover the archive refuses to read it, naming the roots.
    drop(workers);
    let _narrow = fleet::worker(
        &nats.url(),
        &env.path("narrow.log"),
        &[
            "--ack-wait",
            "5s",
            "--archive-root",
            &format!("s3://{bucket}/elsewhere/?{query}"),
        ],
        &aws,
    );
    let out = run(&[
        "load",
        "--tls-verify=false",
        "-s",
        &archive,
        "-d",
        &env.dst.addr,
        "--project",
        "refused",
        "--nats",
        &nats.url(),
        "-o",
        env.path("lf2.txt").to_str().unwrap(),
    ]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("archive roots"), "{}", text(&out));
    // Nor does it check one.
    let out = run(&[
        "save",
        "validate",
        "--tls-verify=false",
        "-f",
        list.to_str().unwrap(),
        "-d",
        &archive,
        "--nats",
        &nats.url(),
        "-o",
        env.path("svf2.txt").to_str().unwrap(),
    ]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("archive roots"), "{}", text(&out));
}

/// `sign`, `sign validate`, `scan` and `mirror validate` with `--nats`: every per-image
/// task runs on the workers (their logs show each kind), the signatures they write verify
/// for every digest, a wrong key fails every image, a scan finds the packages a layer
/// holds, and a destination missing the images fails validation naming it.
#[tokio::test(flavor = "multi_thread")]
async fn sign_validate_scan_and_mirror_validate_run_on_the_workers() {
    per_image_kinds_on_the_fleet(false).await;
}

/// The same through `serve`: the coordinator plans and runs each job on its fleet, and the
/// command that asked renders the outcomes and writes the reports.
#[tokio::test(flavor = "multi_thread")]
async fn sign_validate_scan_and_mirror_validate_run_through_serve() {
    per_image_kinds_on_the_fleet(true).await;
}

async fn per_image_kinds_on_the_fleet(through_serve: bool) {
    let env = Env::new();
    let nats = NatsProcess::start().expect("nats-server");
    let listen = format!("127.0.0.1:{}", free_port().unwrap());
    let server = format!("http://{listen}");
    let _coord =
        through_serve.then(|| fleet::serve(&nats.url(), &listen, &env.path("coord.log"), &[], &[]));
    let pass = env.path("pass.txt");
    std::fs::write(&pass, "fleet-key-passphrase\n").unwrap();
    let keygen = |prefix: &str| {
        let prefix = env.path(prefix);
        let out = common::hangar(&[
            "generate-sigstore-key",
            "-p",
            prefix.to_str().unwrap(),
            "--passphrase-file",
            pass.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", text(&out));
        prefix.display().to_string()
    };
    let (key, other) = (keygen("release"), keygen("other"));
    let sign_arg = format!("release={key}.key");
    let workers: Vec<Proc> = (0..2)
        .map(|i| {
            fleet::worker(
                &nats.url(),
                &env.path(&format!("w{i}.log")),
                &[
                    "--sign-key",
                    &sign_arg,
                    "--sign-passphrase-file",
                    pass.to_str().unwrap(),
                ],
                &[],
            )
        })
        .collect();

    let src = common::registry(&env.src.addr).await;
    let (index, amd, arm) = common::push_multiarch(
        &src,
        env.dir.path(),
        "fleet/multi",
        "v1",
        hangar_loadtest::seed::Format::Oci,
        9100,
    )
    .await;
    let status = b"Package: libssl3\nStatus: install ok installed\nVersion: 3.0.11-1~deb12u2\nSource: openssl\n\n";
    let (os, os_diff) = common::files_layer(&[
        ("etc/os-release", b"ID=debian\nVERSION_ID=12\n"),
        ("var/lib/dpkg/status", status),
    ]);
    common::push_files_image(&env.src.addr, "fleet/deb", vec![(os, os_diff)]).await;
    let lines = vec![
        format!("{}/fleet/multi:v1", env.src.addr),
        format!("{}/fleet/deb:1", env.src.addr),
    ];
    let list = env.write_list("list.txt", &lines);
    let l = list.to_str().unwrap();
    let nats_url = nats.url();
    let run = |args: &[&str]| {
        let via = match (through_serve, args[0]) {
            (false, _) => ["--nats", nats_url.as_str()],
            // `-s/--server` is Hangar's Trivy server for scan.
            (true, "scan") => ["--coordinator", server.as_str()],
            (true, _) => ["--server", server.as_str()],
        };
        let out = Command::new(env!("CARGO_BIN_EXE_hangar-coord"))
            .args(args)
            .args(["--tls-verify=false", "-f", l])
            .args(via)
            .env("REGISTRY_AUTH_FILE", "/nonexistent/auth.json")
            .stdin(Stdio::null())
            .output()
            .expect("hangar-coord");
        (out.status.success(), text(&out))
    };

    // Signing: by the workers' key named `release`; no key file here is read.
    let (ok, out) = run(&[
        "sign",
        "-p",
        "release",
        "-o",
        env.path("sf.txt").to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    let on_the_fleet = if through_serve {
        "submitted to"
    } else {
        "runs on the fleet"
    };
    assert!(out.contains(on_the_fleet), "{out}");
    let deb = skopeo_raw(&lines[1]).expect("deb image");
    for (repo, digest) in [
        ("fleet/multi", sha(&index.bytes)),
        ("fleet/multi", sha(&amd.bytes)),
        ("fleet/multi", sha(&arm.bytes)),
        ("fleet/deb", sha(&deb)),
    ] {
        let tag = digest.replace(':', "-") + ".sig";
        let sig = skopeo_raw(&format!("{}/{repo}:{tag}", env.src.addr))
            .unwrap_or_else(|| panic!("no signature of {repo}@{digest}: {out}"));
        assert!(
            String::from_utf8_lossy(&sig).contains("dev.cosignproject.cosign/signature"),
            "{repo}@{digest}"
        );
    }

    // Verifying: a check task per digest, on the workers.
    let report = env.path("report.json");
    let (ok, out) = run(&[
        "sign",
        "validate",
        "-k",
        &format!("{key}.pub"),
        "-r",
        report.to_str().unwrap(),
        "-o",
        env.path("vf.txt").to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    assert!(out.contains("2 passed, 0 failed"), "{out}");
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let verified: Vec<String> = doc["results"]
        .as_array()
        .expect("results")
        .iter()
        .flat_map(|v| v["images"].as_array().cloned().unwrap_or_default())
        .filter(|r| {
            r["payload"]
                .as_str()
                .is_some_and(|p| p.contains("docker-manifest-digest"))
        })
        .map(|r| r["digest"].as_str().unwrap_or_default().to_owned())
        .collect();
    for d in [
        sha(&index.bytes),
        sha(&amd.bytes),
        sha(&arm.bytes),
        sha(&deb),
    ] {
        assert!(verified.contains(&d), "{d} in {verified:?}");
    }
    let (ok, out) = run(&[
        "sign",
        "validate",
        "-k",
        &format!("{other}.pub"),
        "-r",
        env.path("other.json").to_str().unwrap(),
        "-o",
        env.path("of.txt").to_str().unwrap(),
    ]);
    assert!(!ok, "{out}");
    assert!(out.contains("0 passed, 2 failed"), "{out}");

    // Scanning: the workers read the layers, the inventory is matched here.
    let db = env.path("db");
    std::fs::create_dir_all(&db).unwrap();
    let modified = hangar_now();
    std::fs::write(
        db.join("DEBIAN-CVE-2024-0001.json"),
        format!(
            r#"{{"id":"DEBIAN-CVE-2024-0001","modified":"{modified}","affected":[{{"package":{{"ecosystem":"Debian:12","name":"openssl"}},"ranges":[{{"type":"ECOSYSTEM","events":[{{"introduced":"0"}},{{"fixed":"3.0.11-1~deb12u3"}}]}}]}}]}}"#
        ),
    )
    .unwrap();
    let scan_report = env.path("scan.json");
    let (ok, out) = run(&[
        "scan",
        "--db",
        db.to_str().unwrap(),
        "--format",
        "json",
        "-r",
        scan_report.to_str().unwrap(),
        "-o",
        env.path("scf.txt").to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    assert!(
        out.contains("debian 12, 1 packages, 1 vulnerabilities"),
        "{out}"
    );
    let scanned = std::fs::read_to_string(&scan_report).unwrap();
    assert!(scanned.contains("DEBIAN-CVE-2024-0001"), "{scanned}");
    assert!(scanned.contains(&sha(&deb)), "{scanned}");

    // Validating a mirror: the destination read by the workers.
    let (ok, out) = run(&[
        "mirror",
        "-d",
        &env.dst.addr,
        "-o",
        env.path("mf.txt").to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    let (ok, out) = run(&[
        "mirror",
        "validate",
        "-d",
        &env.dst.addr,
        "-o",
        env.path("mvf.txt").to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    assert!(out.contains("2 passed, 0 failed"), "{out}");
    let (ok, out) = run(&[
        "mirror",
        "validate",
        "-d",
        &env.dst.addr,
        "--destination-project",
        "nowhere",
        "-o",
        env.path("mvf2.txt").to_str().unwrap(),
    ]);
    assert!(!ok, "{out}");
    assert!(out.contains("destination image does not exist"), "{out}");

    // Any kind sent as a specification (`submit --spec`): each image's end reported here,
    // the failed lines written here.
    if through_serve {
        let submit = |name: &str, project: &str, extra: &str| {
            let spec = env.path(name);
            let doc = serde_json::json!({
                "version": 1, "kind": "mirror-validate", "list": lines.join("\n") + extra,
                "destination": {"registry": env.dst.addr, "project": project},
            });
            std::fs::write(&spec, doc.to_string()).unwrap();
            let failed = env.path(&format!("{name}.failed"));
            let out = Command::new(env!("CARGO_BIN_EXE_hangar-coord"))
                .args(["submit", "--spec"])
                .arg(&spec)
                .args(["--server", server.as_str(), "-o"])
                .arg(&failed)
                .env("REGISTRY_AUTH_FILE", "/nonexistent/auth.json")
                .stdin(Stdio::null())
                .output()
                .expect("hangar-coord submit --spec");
            let failed = std::fs::read_to_string(&failed).unwrap_or_default();
            (out.status.success(), text(&out), failed)
        };
        let (ok, out, failed) = submit("pass.json", "", "");
        assert!(ok, "{out}");
        assert!(out.contains("/results") && out.contains("Done: ["), "{out}");
        assert!(failed.is_empty(), "{failed}");
        let (ok, out, failed) = submit("fail.json", "nowhere", "\nNot/Lower:Case");
        assert!(!ok, "{out}");
        // Hangar's mirror validate ends in its copy words.
        assert!(out.contains("some images failed to copy"), "{out}");
        assert!(out.contains("Copy failed image list: \n"), "{out}");
        for line in &lines {
            assert!(failed.contains(line.as_str()), "{line} not in {failed}");
        }
        // A line the coordinator refuses before any work says why in the job's status.
        let id = out
            .split_whitespace()
            .skip_while(|w| *w != "Job")
            .nth(1)
            .unwrap_or_else(|| panic!("a job id in {out}"))
            .to_owned();
        let status = Command::new(env!("CARGO_BIN_EXE_hangar-coord"))
            .args(["status", &id, "--server", server.as_str()])
            .output()
            .expect("hangar-coord status");
        let shown = text(&status);
        for line in &lines {
            assert!(
                shown.contains(&format!("  {line}: ")),
                "{line} and why in {shown}"
            );
        }
        assert!(
            shown.contains("  Not/Lower:Case: ") && failed.contains("Not/Lower:Case"),
            "the refused line and why in {shown}"
        );
        assert!(
            out.contains("FAILED: [Not/Lower:Case]: image reference"),
            "{out}"
        );
        let (ok, out, _) = {
            std::fs::write(
                env.path("bad.json"),
                r#"{"version": 1, "kind": "mirror", "lisst": ""}"#,
            )
            .unwrap();
            let out = Command::new(env!("CARGO_BIN_EXE_hangar-coord"))
                .args(["submit", "--spec"])
                .arg(env.path("bad.json"))
                .args(["--server", server.as_str()])
                .output()
                .expect("hangar-coord submit --spec");
            (out.status.success(), text(&out), ())
        };
        assert!(!ok);
        assert!(out.contains("bad.json") && out.contains("lisst"), "{out}");
    }

    drop(workers);
    let logs: String = (0..2)
        .map(|i| std::fs::read_to_string(env.path(&format!("w{i}.log"))).unwrap_or_default())
        .collect();
    for kind in ["sign", "check", "scan"] {
        assert!(logs.contains(&format!("kind=\"{kind}\"")), "{kind}: {logs}");
    }
}

/// Now as OSV dates records.
fn hangar_now() -> String {
    let out = Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .expect("date");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}
