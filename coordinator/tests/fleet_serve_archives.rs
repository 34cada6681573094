//! `save`, `sync` and `load` (and their validations) through `serve`: the coordinator names archives only inside its
//! `--archive-root`, its workers gather, write and read them, and the command that asked
//! follows the job and writes its failed list. Real nats-server, Garage and registries.

mod common;

use std::process::{Command, Stdio};

use common::fleet::{self, Proc};
use common::{Env, index_digests, sha, skopeo_raw, text};
use hangar_loadtest::services::{GarageProcess, NatsProcess, free_port};
use hangar_shared::store::ImageStore;

#[tokio::test(flavor = "multi_thread")]
async fn save_sync_and_load_run_through_serve_inside_its_archive_root() {
    let env = Env::new();
    let nats = NatsProcess::start().expect("nats-server");
    let garage = GarageProcess::start().expect("garage (scripts/dev-services.sh installs it)");
    let cache = garage.cache_url();
    let aws = [
        ("AWS_ACCESS_KEY_ID", garage.key_id.as_str()),
        ("AWS_SECRET_ACCESS_KEY", garage.secret.as_str()),
    ];
    let (bucket, query) = cache
        .trim_start_matches("s3://")
        .split_once('?')
        .expect("query");
    let root = format!("s3://{bucket}/air/?{query}");
    let listen = format!("127.0.0.1:{}", free_port().unwrap());
    let server = format!("http://{listen}");
    let _coord = fleet::serve(
        &nats.url(),
        &listen,
        &env.path("coord.log"),
        &["--cache", &cache, "--archive-root", &root],
        &aws,
    );
    let worker_args = ["--cache", cache.as_str(), "--archive-root", root.as_str()];
    let _workers: Vec<Proc> = (0..2)
        .map(|i| {
            fleet::worker(
                &nats.url(),
                &env.path(&format!("w{i}.log")),
                &worker_args,
                &aws,
            )
        })
        .collect();

    let src = common::registry(&env.src.addr).await;
    let mut lines = Vec::new();
    for i in 0..3u64 {
        // The last name is longer: a long enough project makes it no repository name.
        let repo = match i {
            2 => "served/app-2-with-a-longer-name".to_owned(),
            _ => format!("served/app-{i}"),
        };
        common::push_image(
            &src,
            env.dir.path(),
            &repo,
            Some("v1"),
            hangar_loadtest::seed::Format::Oci,
            "amd64",
            (&[9300 + i], 400_000),
        )
        .await;
        lines.push(format!("{}/{repo}:v1", env.src.addr));
    }
    let first = env.write_list("first.txt", &lines[..2]);
    let last = env.write_list("last.txt", &lines[2..]);
    let archive = format!("s3://{bucket}/air/served.zip?{query}");
    // The client has no S3 credentials and no NATS: everything happens on the fleet.
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_hangar-coord"))
            .args(args)
            .args(["--tls-verify=false", "--server", &server])
            .env("REGISTRY_AUTH_FILE", "/nonexistent/auth.json")
            .stdin(Stdio::null())
            .output()
            .expect("hangar-coord");
        (out.status.success(), text(&out))
    };

    let (ok, out) = run(&[
        "save",
        "-f",
        first.to_str().unwrap(),
        "-d",
        &archive,
        "-o",
        env.path("sf.txt").to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    assert!(
        out.contains("submitted to") && out.contains("2 copied"),
        "{out}"
    );
    let (ok, out) = run(&[
        "sync",
        "-f",
        last.to_str().unwrap(),
        "-d",
        &archive,
        "-o",
        env.path("syf.txt").to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    let (ok, out) = run(&[
        "load",
        "-s",
        &archive,
        "-d",
        &env.dst.addr,
        "-o",
        env.path("lf.txt").to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    assert!(out.contains("3 copied"), "{out}");
    for line in &lines {
        let source = skopeo_raw(line).expect("source");
        let loaded = skopeo_raw(&line.replace(&env.src.addr, &env.dst.addr)).expect("loaded");
        assert_eq!(index_digests(&loaded), vec![sha(&source)], "{line}");
    }

    // A line naming an image the archive does not hold is refused before any work: it is
    // in the job's snapshot from the start, so in this client's failed list, and counted.
    let absent = format!("{}/served/absent:v9", env.src.addr);
    let partial = env.write_list("partial.txt", &[lines[0].clone(), absent.clone()]);
    let (ok, out) = run(&[
        "load",
        "-s",
        &archive,
        "-f",
        partial.to_str().unwrap(),
        "-d",
        &env.dst.addr,
        "-o",
        env.path("pf.txt").to_str().unwrap(),
    ]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("1/2 images done (1 failed)") || out.contains("1 failed"),
        "{out}"
    );
    let failed = std::fs::read_to_string(env.path("pf.txt")).unwrap_or_default();
    assert_eq!(failed.trim(), absent, "{out}");
    assert!(
        out.contains(&format!("Failed: [{absent}]: not found in archive")),
        "{out}"
    );

    // The load checked: the coordinator reads the archive's index, its workers the
    // destination; this command renders each image's verdict by the names it was given.
    let (ok, out) = run(&[
        "load",
        "validate",
        "-s",
        &archive,
        "-d",
        &env.dst.addr,
        "-o",
        env.path("lvf.txt").to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    assert!(out.contains("3 passed, 0 failed"), "{out}");
    assert!(out.contains(&format!("PASS: [{}]", lines[0])), "{out}");
    let (ok, out) = run(&[
        "load",
        "validate",
        "-s",
        &archive,
        "-d",
        &env.dst.addr,
        "--project",
        "elsewhere",
        "-o",
        env.path("lvf2.txt").to_str().unwrap(),
    ]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("0 passed, 3 failed") && out.contains("destination image does not exist"),
        "{out}"
    );
    let failed = std::fs::read_to_string(env.path("lvf2.txt")).unwrap();
    assert_eq!(failed.lines().count(), 3, "{failed}");

    // A project that makes one image's name longer than a repository name may be fails
    // that image alone, as on the command line; the job and the other images go on.
    let project = format!("{}{}", "deep1234/".repeat(27), "projec");
    assert_eq!(project.len() + "/app-0".len(), 255);
    let (ok, out) = run(&[
        "load",
        "-s",
        &archive,
        "-d",
        &env.dst.addr,
        "--project",
        &project,
        "-o",
        env.path("lpf.txt").to_str().unwrap(),
    ]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("2 copied") && out.contains("1 failed"),
        "{out}"
    );
    // The client did not run the job, and says why the image failed all the same.
    assert!(
        out.contains(&format!("Failed: [{}]: ", lines[2]))
            && out.contains("at most 255 are allowed"),
        "{out}"
    );
    let failed = std::fs::read_to_string(env.path("lpf.txt")).unwrap_or_default();
    assert_eq!(failed.trim(), lines[2], "{out}");
    // skopeo counts the registry's host in a name's 255 characters, so the registry is
    // asked directly.
    let dst = common::registry(&env.dst.addr).await;
    let loaded = dst
        .get_manifest(
            &format!("{project}/app-0"),
            "v1",
            hangar_shared::registry::Side::Source,
        )
        .await
        .unwrap();
    assert!(loaded.is_some(), "{out}");

    // Validating it: the coordinator's workers read the archive.
    let all = env.write_list("all.txt", &lines);
    let (ok, out) = run(&[
        "save",
        "validate",
        "-f",
        all.to_str().unwrap(),
        "-d",
        &archive,
        "-o",
        env.path("svf.txt").to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    assert!(out.contains("3 passed, 0 failed"), "{out}");
    let more = env.write_list("more.txt", &[format!("{}/served/absent:v1", env.src.addr)]);
    let (ok, out) = run(&[
        "sync",
        "validate",
        "-f",
        more.to_str().unwrap(),
        "-d",
        &archive,
        "-o",
        env.path("syvf.txt").to_str().unwrap(),
    ]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("0 passed, 1 failed") && out.contains("served/absent"),
        "{out}"
    );

    // An archive outside the coordinator's root is refused before anything runs.
    let outside = format!("s3://{bucket}/elsewhere/x.zip?{query}");
    let (ok, out) = run(&[
        "save",
        "-f",
        first.to_str().unwrap(),
        "-d",
        &outside,
        "-o",
        env.path("sf2.txt").to_str().unwrap(),
    ]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("the coordinator's archive roots")
            && out.contains("hangar-coord serve --archive-root"),
        "{out}"
    );
}
