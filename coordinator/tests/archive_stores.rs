//! Archives in other places and under faults: `archive store file` and `export file`,
//! Harbor projects created at load, and a kill -9 in the middle of `sync`.

mod common;

use common::archive::*;
use common::*;
use hangar_loadtest::seed::Format;

#[tokio::test]
async fn load_creates_missing_harbor_projects() {
    let env = Env::new();
    let src = registry(&env.src.addr).await;
    push_image(
        &src,
        env.dir.path(),
        "newproj/h",
        Some("1"),
        Format::Docker,
        "amd64",
        (&[95], 10_000),
    )
    .await;
    push_image(
        &src,
        env.dir.path(),
        "oldproj/h",
        Some("1"),
        Format::Docker,
        "amd64",
        (&[96], 10_000),
    )
    .await;
    let list = env.write_list(
        "l.txt",
        &[
            format!("{}/newproj/h:1", env.src.addr),
            format!("{}/oldproj/h:1", env.src.addr),
        ],
    );
    let archive = env.path("h.zip");
    assert!(save(&env, &list, &archive, &[]).status.success());

    let port = hangar_loadtest::services::free_port().expect("port");
    let log = env.path("harbor.log");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/harbor_standin.py"
    );
    let standin = std::process::Command::new("python3")
        .args([
            script,
            &port.to_string(),
            &env.dst.addr,
            &s(&log),
            "admin:Harbor12345",
            "oldproj",
        ])
        .spawn()
        .map(Reaped)
        .expect("stand-in");
    let addr = format!("127.0.0.1:{port}");
    hangar_loadtest::services::wait_for_port(&addr, std::time::Duration::from_secs(10))
        .expect("up");
    let auth = env.path("auth.json");
    let token = base64_of("admin:Harbor12345");
    std::fs::write(
        &auth,
        format!(r#"{{"auths":{{"{addr}":{{"auth":"{token}"}}}}}}"#),
    )
    .expect("auth");
    let out = hangar(&[
        "load",
        "--tls-verify=false",
        "-s",
        &s(&archive),
        "-d",
        &addr,
        "--authfile",
        &s(&auth),
        "-o",
        &s(&env.path("f.txt")),
    ]);
    drop(standin);
    assert!(out.status.success(), "{}", text(&out));
    let calls: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .expect("log")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    let posts: Vec<&serde_json::Value> = calls.iter().filter(|c| c["call"] == "POST").collect();
    assert_eq!(
        posts.len(),
        1,
        "only the missing project is created: {calls:?}"
    );
    assert_eq!(posts[0]["project"], "newproj");
    assert_eq!(
        posts[0]["authorized"], true,
        "basic auth from the auth file"
    );
    assert_eq!(
        posts[0]["body"],
        serde_json::json!({"project_name": "newproj", "metadata": {"public": "false"}})
    );
    assert_eq!(posts[0]["content_type"], "application/json");
    assert!(
        calls
            .iter()
            .any(|c| c["call"] == "HEAD" && c["project"] == "oldproj")
    );
    assert!(
        text(&out).contains("Created Harbor project \"newproj\""),
        "{}",
        text(&out)
    );
    assert!(tag_exists(&format!("{}/newproj/h:1", env.dst.addr)));

    // Without credentials the creation fails: a warning, and the load goes on.
    let standin = std::process::Command::new("python3")
        .args([
            script,
            &port.to_string(),
            &env.dst.addr,
            &s(&log),
            "admin:Harbor12345",
        ])
        .spawn()
        .map(Reaped)
        .expect("stand-in");
    hangar_loadtest::services::wait_for_port(&addr, std::time::Duration::from_secs(10))
        .expect("up");
    let out = load_to(&env, &archive, &addr);
    drop(standin);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("Please create the Harbor Project manually."),
        "{}",
        text(&out)
    );
}

/// Kills and reaps the process when the test ends, however it ends.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn base64_of(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[tokio::test]
async fn kill_during_sync_leaves_a_readable_archive() {
    let env = Env::new();
    let src = registry(&env.src.addr).await;
    push_image(
        &src,
        env.dir.path(),
        "big/base",
        Some("1"),
        Format::Docker,
        "amd64",
        (&[120, 121, 122], 12_000_000),
    )
    .await;
    push_image(
        &src,
        env.dir.path(),
        "big/new",
        Some("1"),
        Format::Docker,
        "amd64",
        (&[123], 4_000_000),
    )
    .await;
    let archive = env.path("k.zip");
    let base_list = env.write_list("base.txt", &[format!("{}/big/base:1", env.src.addr)]);
    assert!(save(&env, &base_list, &archive, &[]).status.success());
    let pristine = std::fs::read(&archive).expect("archive");
    let old = ls_images(&archive);
    let mut new = old.clone();
    new.push(format!("{}/big/new:1", env.src.addr));
    let list = env.write_list("new.txt", &[format!("{}/big/new:1", env.src.addr)]);
    let partial_exists = || {
        std::fs::read_dir(env.dir.path())
            .expect("dir")
            .filter_map(|e| e.ok())
            .any(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(".k.zip.partial-")
            })
    };
    // `None`: kill as soon as the new archive's temporary file appears (a kill that is
    // certain to land mid-write, however slow the machine); then kills at fixed delays.
    let mut plan: Vec<Option<u64>> = vec![None, None, None];
    plan.extend([50u64, 150, 250, 400, 600, 900, 1300, 2000].map(Some));
    let (mut killed_mid_write, mut saw_old, mut saw_new) = (false, false, false);
    for when in plan {
        std::fs::write(&archive, &pristine).expect("restore");
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_hangar-coord"))
            .args([
                "sync",
                "--tls-verify=false",
                "-f",
                &s(&list),
                "-d",
                &s(&archive),
                "-o",
                &s(&env.path("sf.txt")),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("sync");
        match when {
            Some(ms) => std::thread::sleep(std::time::Duration::from_millis(ms)),
            None => {
                let start = std::time::Instant::now();
                while !partial_exists()
                    && start.elapsed() < std::time::Duration::from_secs(60)
                    && child.try_wait().ok().flatten().is_none()
                {
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        killed_mid_write |= partial_exists();
        let images = ls_images(&archive);
        assert!(images == old || images == new, "after {when:?}: {images:?}");
        saw_old |= images == old;
        saw_new |= images == new;
        let v = hangar(&["archive", "verify", &s(&archive)]);
        assert!(v.status.success(), "after {when:?}: {}", text(&v));
    }
    // And one run left to finish: the new content.
    std::fs::write(&archive, &pristine).expect("restore");
    let out = hangar(&[
        "sync",
        "--tls-verify=false",
        "-f",
        &s(&list),
        "-d",
        &s(&archive),
        "-o",
        &s(&env.path("sf.txt")),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    saw_new |= ls_images(&archive) == new;
    assert!(
        killed_mid_write,
        "at least one kill landed while the new archive was being written"
    );
    assert!(
        saw_old && saw_new,
        "kills landed both before and after the switch"
    );
    // The next run clears what a killed one left behind.
    std::fs::write(&archive, &pristine).expect("restore");
    let out = hangar(&[
        "sync",
        "--tls-verify=false",
        "-f",
        &s(&list),
        "-d",
        &s(&archive),
        "-o",
        &s(&env.path("sf.txt")),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(ls_images(&archive), new);
    let leftovers: Vec<String> = std::fs::read_dir(env.dir.path())
        .expect("dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".partial-") || n.starts_with(".hangar-cache-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// `archive store file` keeps local files and downloads as Hangar's custom-file images, and
/// `archive export file` gives the bytes back: listed as custom files, laid out and encoded
/// as Hangar writes them, verified by `archive verify`, replaced when stored again under the
/// same name; bad input (a directory, a missing name, an image that is not a file) fails
/// clearly and leaves the archive as it was.
#[tokio::test(flavor = "multi_thread")]
async fn store_file_and_export_file() {
    let env = Env::new();
    let archive = env.path("files.zip");
    let out = hangar(&["archive", "init", &s(&archive)]);
    assert!(out.status.success(), "{}", text(&out));
    let local = env.path("notes & ümlauts.txt");
    std::fs::write(&local, "first <version>\n").unwrap();
    let served: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let body = served.clone();
    let app = axum::Router::new().route(
        "/files/blob.bin",
        axum::routing::get(move || {
            let body = body.clone();
            async move { body }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/files/blob.bin", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let out = hangar(&[
        "archive",
        "store",
        "file",
        "-f",
        &s(&archive),
        &s(&local),
        &url,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("Add OCI File [docker.io/hangar-file/blob.bin]"));
    let ls = hangar(&["archive", "ls", &s(&archive)]);
    let rows = String::from_utf8_lossy(&ls.stdout).into_owned();
    assert!(
        rows.contains("docker.io/hangar-file/notes & ümlauts.txt:latest | NOARCH | NOOS |")
            && rows.contains("(custom file)"),
        "{rows}"
    );
    let names = zip_names(&archive);
    assert_eq!(names.last().map(String::as_str), Some("index.json"));
    assert_eq!(
        names.iter().filter(|n| n.ends_with("/oci-layout")).count(),
        2
    );
    let verify = hangar(&["archive", "verify", &s(&archive)]);
    assert!(verify.status.success(), "{}", text(&verify));

    // The index entry and manifest as Hangar writes them.
    let json = hangar(&["archive", "ls", "--json", &s(&archive)]);
    let index: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let entry = index["list"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["source"] == "docker.io/hangar-file/blob.bin")
        .expect("entry")
        .clone();
    assert_eq!(entry["tag"], "latest");
    assert!(entry.get("archList").is_none() && entry.get("osList").is_none());
    let spec = &entry["images"][0];
    assert!(spec.get("arch").is_none());
    assert_eq!(
        spec["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(
        spec["annotations"]["org.opencontainers.image.description"],
        url
    );
    let manifest_hex = spec["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:");
    let py = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys,zipfile; sys.stdout.buffer.write(zipfile.ZipFile(sys.argv[1]).read(sys.argv[2]))",
        ])
        .arg(&archive)
        .arg(format!("share/sha256/{manifest_hex}"))
        .output()
        .unwrap();
    let manifest = String::from_utf8(py.stdout).unwrap();
    assert!(
        manifest.starts_with("{\n  \"schemaVersion\": 2,\n  \"mediaType\": \"application/vnd.oci.image.manifest.v1+json\",\n  \"config\": {\n    \"mediaType\": \"application/vnd.cncf.helm.config.v1+json\",")
            && manifest.contains("\"mediaType\": \"application/vnd.content.hangar.file.layer.v1\",")
            && manifest.contains("\"org.opencontainers.image.title\": \"blob.bin\",\n    \"org.opencontainers.image.vendor\": \"Hangar\"\n  }\n}"),
        "{manifest}"
    );

    // Export, into a directory of its own.
    let workdir = env.path("out");
    std::fs::create_dir_all(&workdir).unwrap();
    let export = |name: &str, yes: bool| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_hangar-coord"));
        cmd.args(["archive", "export", "file", "-f", &s(&archive), "-n", name])
            .current_dir(&workdir)
            .stdin(std::process::Stdio::null());
        if yes {
            cmd.arg("-y");
        }
        cmd.output().unwrap()
    };
    let out = export("blob.bin", false);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read(workdir.join("blob.bin")).unwrap(), served);
    let out = export("notes & ümlauts.txt", false);
    assert!(out.status.success(), "{}", text(&out));
    // Stored again with other bytes: replaced, not listed twice.
    std::fs::write(&local, "second\n").unwrap();
    let out = hangar(&["archive", "store", "f", "-f", &s(&archive), &s(&local)]);
    assert!(out.status.success(), "{}", text(&out));
    let listed = ls_images(&archive);
    assert_eq!(
        listed
            .iter()
            .filter(|l| l.contains("notes & ümlauts.txt"))
            .count(),
        1,
        "{listed:?}"
    );
    // Without -y an existing file is left alone.
    let out = export("notes & ümlauts.txt", false);
    assert!(!out.status.success());
    let exported = workdir.join("notes & ümlauts.txt");
    assert_eq!(
        std::fs::read_to_string(&exported).unwrap(),
        "first <version>\n"
    );
    let out = export("notes & ümlauts.txt", true);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(&exported).unwrap(), "second\n");

    // Bad input: clear errors, the archive untouched.
    let before = std::fs::read(&archive).unwrap();
    let out = hangar(&[
        "archive",
        "store",
        "file",
        "-f",
        &s(&archive),
        &s(env.dir.path()),
    ]);
    assert!(!out.status.success());
    assert!(text(&out).contains("is a directory"), "{}", text(&out));
    let out = hangar(&[
        "archive",
        "store",
        "file",
        "-f",
        &s(&archive),
        "/no/such/file",
    ]);
    assert!(!out.status.success());
    assert!(text(&out).contains("/no/such/file"), "{}", text(&out));
    assert_eq!(std::fs::read(&archive).unwrap(), before);
    let out = export("missing.txt", true);
    assert!(!out.status.success());
    assert!(text(&out).contains("\"missing.txt\""), "{}", text(&out));
}
