//! Bounds on outside input that is not a registry's answer, each against a hostile peer
//! written here: a job specification file past its 64 MiB, a Helm repository whose package
//! never ends (cut at 256 MiB, streamed to disk, the archive left as it was), a coordinator
//! whose job snapshot or results never end (cut at 64 and 512 MiB), files named on the
//! command line or by configuration that never end (a list, a policy, a key). Each asserts
//! the error naming the input, the time and the process's peak memory.

mod common;

use std::time::Duration;

use common::*;

const MB: u64 = 1 << 20;

#[test]
fn a_job_specification_past_its_bound_is_refused_before_anything_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("huge.json");
    let file = std::fs::File::create(&spec).unwrap();
    file.set_len(64 * MB + 1).unwrap();
    // Nothing listens on port 9 of the loopback: a request would fail differently.
    let run = run_measured(
        &[
            "submit",
            "--spec",
            spec.to_str().unwrap(),
            "--server",
            "http://127.0.0.1:9",
        ],
        Duration::from_secs(60),
    );
    assert!(!run.success, "{}", run.output);
    assert!(
        run.output.contains("job specification")
            && run.output.contains("huge.json: larger than 64 MiB"),
        "{}",
        run.output
    );
    assert!(run.elapsed < Duration::from_secs(20), "{:?}", run.elapsed);
    assert!(
        run.peak_rss < 160 * MB,
        "peak RSS {} MiB",
        run.peak_rss / MB
    );
}

/// A list, a `policy.json` and a signing key that are links to `/dev/zero`: each refused
/// naming it at its cap (64 MiB for lists, 4 MiB for configuration), not read for ever.
#[test]
fn endless_local_files_are_refused_at_their_caps() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("list.txt");
    std::os::unix::fs::symlink("/dev/zero", &list).unwrap();
    let run = run_measured(
        &[
            "mirror",
            "-f",
            list.to_str().unwrap(),
            "-d",
            "127.0.0.1:9",
            "-o",
            dir.path().join("failed.txt").to_str().unwrap(),
        ],
        Duration::from_secs(60),
    );
    assert!(!run.success, "{}", run.output);
    assert!(
        run.output.contains("list.txt") && run.output.contains("larger than 64 MiB"),
        "{}",
        run.output
    );
    assert!(
        run.peak_rss < 200 * MB,
        "peak RSS {} MiB",
        run.peak_rss / MB
    );
    let key = dir.path().join("cosign.key");
    std::os::unix::fs::symlink("/dev/zero", &key).unwrap();
    let good = dir.path().join("good.txt");
    std::fs::write(&good, "127.0.0.1:9/a/b:c\n").unwrap();
    let run = run_measured(
        &[
            "sign",
            "-f",
            good.to_str().unwrap(),
            "-p",
            key.to_str().unwrap(),
            "-o",
            dir.path().join("sign-failed.txt").to_str().unwrap(),
        ],
        Duration::from_secs(60),
    );
    assert!(!run.success, "{}", run.output);
    assert!(
        run.output.contains("cosign.key") && run.output.contains("larger than 4 MiB"),
        "{}",
        run.output
    );
}

/// A `policy.json` that is a link to `/dev/zero` fails the image it would judge, naming the
/// file, at 4 MiB.
#[tokio::test(flavor = "multi_thread")]
async fn an_endless_policy_file_is_refused_at_its_cap() {
    let env = Env::new();
    let lines = seed_shared_repos(&env, 1).await;
    let list = env.write_list("list.txt", &lines);
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(home.path().join(".config/containers")).unwrap();
    std::os::unix::fs::symlink(
        "/dev/zero",
        home.path().join(".config/containers/policy.json"),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hangar-coord"))
        .args(["mirror", "--tls-verify=false", "-f", list.to_str().unwrap()])
        .args([
            "-d",
            &env.dst.addr,
            "-o",
            env.path("failed.txt").to_str().unwrap(),
        ])
        .env("HOME", home.path())
        .env("REGISTRY_AUTH_FILE", "/nonexistent/auth.json")
        .output()
        .unwrap();
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("policy.json") && said.contains("larger than 4 MiB"),
        "{said}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_endless_chart_package_is_cut_at_its_bound_and_the_archive_is_left_as_it_was() {
    let env = Env::new();
    let archive = env.path("charts.zip");
    assert!(
        hangar(&["archive", "init", archive.to_str().unwrap()])
            .status
            .success()
    );
    let before = std::fs::read(&archive).unwrap();
    let index = "apiVersion: v1\nentries:\n  big:\n  - name: big\n    version: 1.0.0\n    urls: [big-1.0.0.tgz]\n";
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| async move {
        if uri.path().ends_with("/index.yaml") {
            return axum::body::Body::from(index);
        }
        let chunk = bytes::Bytes::from(vec![0x1f; 64 << 10]);
        axum::body::Body::from_stream(futures_util::stream::repeat_with(move || {
            Ok::<_, std::io::Error>(chunk.clone())
        }))
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/charts", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let args: Vec<String> = [
        "archive",
        "store",
        "chart",
        "-f",
        archive.to_str().unwrap(),
        "-n",
        "big",
        "-v",
        "1.0.0",
        &base,
    ]
    .map(String::from)
    .to_vec();
    let run = run_measured_async(args, Duration::from_secs(120)).await;
    assert!(!run.success, "{}", run.output);
    assert!(
        run.output
            .contains("big-1.0.0.tgz answered more than 256 MiB"),
        "{}",
        run.output
    );
    assert!(run.elapsed < Duration::from_secs(60), "{:?}", run.elapsed);
    // Streamed to a file as it comes, never held.
    assert!(
        run.peak_rss < 100 * MB,
        "peak RSS {} MiB",
        run.peak_rss / MB
    );
    assert_eq!(
        std::fs::read(&archive).unwrap(),
        before,
        "the archive is unchanged"
    );
}

/// A coordinator that takes any job as `j`, then answers its snapshot endlessly — or, with
/// `finished`, answers a finished snapshot and then endless results.
async fn endless_coordinator(finished: bool) -> String {
    let endless = || {
        let chunk = bytes::Bytes::from(vec![b' '; 64 << 10]);
        axum::body::Body::from_stream(futures_util::stream::repeat_with(move || {
            Ok::<_, std::io::Error>(chunk.clone())
        }))
    };
    let app = axum::Router::new()
        .route(
            "/jobs",
            axum::routing::post(|| async { axum::body::Body::from(r#"{"id":"j"}"#) }),
        )
        .route(
            "/jobs/j",
            axum::routing::get(move || async move {
                match finished {
                    true => axum::body::Body::from(
                        r#"{"id":"j","state":"succeeded","total":1,"copied":1,"failed":0,"skipped":0,"bytes_copied":0,"failed_lines":[]}"#,
                    ),
                    false => endless(),
                }
            }),
        )
        .route("/jobs/j/results", axum::routing::get(move || async move { endless() }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test(flavor = "multi_thread")]
async fn a_coordinator_answering_endlessly_is_cut_at_the_clients_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("list.txt");
    std::fs::write(&list, "127.0.0.1:9/lib/a:1\n").unwrap();
    let list = list.display().to_string();

    let server = endless_coordinator(false).await;
    let args: Vec<String> = ["submit", &list, "--server", &server, "-d", "127.0.0.1:9"]
        .map(String::from)
        .to_vec();
    let run = run_measured_async(args, Duration::from_secs(120)).await;
    assert!(!run.success, "{}", run.output);
    assert!(
        run.output
            .contains("/jobs/j: the answer is over 64 MiB; refused"),
        "{}",
        run.output
    );
    assert!(run.elapsed < Duration::from_secs(30), "{:?}", run.elapsed);
    assert!(
        run.peak_rss < 200 * MB,
        "peak RSS {} MiB",
        run.peak_rss / MB
    );

    let server = endless_coordinator(true).await;
    let args: Vec<String> = [
        "mirror",
        "validate",
        "-f",
        &list,
        "--server",
        &server,
        "-d",
        "127.0.0.1:9",
    ]
    .map(String::from)
    .to_vec();
    let run = run_measured_async(args, Duration::from_secs(120)).await;
    assert!(!run.success, "{}", run.output);
    assert!(
        run.output.contains("/jobs/j/results") && run.output.contains("over 512 MiB; refused"),
        "{}",
        run.output
    );
    assert!(run.elapsed < Duration::from_secs(60), "{:?}", run.elapsed);
    // The bound itself, held once.
    assert!(
        run.peak_rss < 800 * MB,
        "peak RSS {} MiB",
        run.peak_rss / MB
    );
}

/// `archive store file` of a URL that never ends is refused at `--max-size`, and one that
/// trickles at `--timeout`; each as it comes (the file streamed to disk, never held), the
/// archive left as it was.
#[tokio::test(flavor = "multi_thread")]
async fn a_stored_file_past_its_size_or_time_is_refused_and_the_archive_is_left_as_it_was() {
    let env = Env::new();
    let archive = env.path("files.zip");
    assert!(
        hangar(&["archive", "init", archive.to_str().unwrap()])
            .status
            .success()
    );
    let before = std::fs::read(&archive).unwrap();
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| async move {
        let chunk = bytes::Bytes::from(vec![b'x'; 64 << 10]);
        if uri.path().ends_with("/endless.bin") {
            return axum::body::Body::from_stream(futures_util::stream::repeat_with(move || {
                Ok::<_, std::io::Error>(chunk.clone())
            }));
        }
        // A byte every 200 ms: each read well inside the client's read timeout.
        axum::body::Body::from_stream(futures_util::stream::unfold((), |()| async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            Some((Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"x")), ()))
        }))
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let store = |url: String, bound: [&str; 2]| -> Vec<String> {
        let mut args = vec!["archive", "store", "file", "-f", archive.to_str().unwrap()];
        args.extend(bound);
        args.iter().map(|s| s.to_string()).chain([url]).collect()
    };

    let endless = format!("{base}/endless.bin");
    let run = run_measured_async(
        store(endless.clone(), ["--max-size", "64M"]),
        Duration::from_secs(120),
    )
    .await;
    assert!(!run.success, "{}", run.output);
    assert!(
        run.output
            .contains(&format!("{endless} answered more than 64 MiB")),
        "{}",
        run.output
    );
    assert!(run.output.contains("--max-size 64M"), "{}", run.output);
    assert!(run.elapsed < Duration::from_secs(60), "{:?}", run.elapsed);
    assert!(
        run.peak_rss < 100 * MB,
        "peak RSS {} MiB",
        run.peak_rss / MB
    );

    let trickled = format!("{base}/trickled.bin");
    let run = run_measured_async(
        store(trickled.clone(), ["--timeout", "3s"]),
        Duration::from_secs(60),
    )
    .await;
    assert!(!run.success, "{}", run.output);
    assert!(
        run.output
            .contains(&format!("{trickled}: not downloaded within 3s")),
        "{}",
        run.output
    );
    assert!(
        run.elapsed >= Duration::from_secs(3) && run.elapsed < Duration::from_secs(15),
        "{:?}",
        run.elapsed
    );
    assert_eq!(
        std::fs::read(&archive).unwrap(),
        before,
        "the archive is unchanged"
    );
}

/// A project flag is a repository path: one with a `..` or `.` segment (percent-encoded or
/// not), which a URL would resolve to another repository, fails the command naming the
/// flag before any registry is asked (nothing listens on port 9).
#[test]
fn project_flags_that_would_resolve_elsewhere_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("list.txt");
    std::fs::write(&list, "127.0.0.1:9/team/app:v1\n").unwrap();
    for flag in ["--destination-project", "--source-project"] {
        for project in ["mirror/../prod", "mirror/%2e%2e/prod", "./x", "a//b"] {
            let out = hangar(&[
                "mirror",
                "-f",
                list.to_str().unwrap(),
                "-d",
                "127.0.0.1:9",
                flag,
                project,
            ]);
            let text = text(&out);
            assert!(!out.status.success(), "{flag} {project}: {text}");
            assert!(
                text.contains(&format!("{flag}: repository"))
                    && text.contains("invalid repository name component"),
                "{flag} {project}: {text}"
            );
            assert!(!text.contains("127.0.0.1:9: "), "{flag} {project}: {text}");
        }
    }
}

/// An archive's `index.json` is read whole and parsed into a struct per entry, so short
/// JSON entries would cost many times their bytes: more than 100,000 images, or an index
/// past 64 MiB, is refused naming the archive, with the parse's memory bounded.
#[test]
fn a_hostile_archive_index_is_refused_within_its_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let make = |name: &str, index: &str| {
        let zip = dir.path().join(name);
        let status = std::process::Command::new("python3")
            .args([
                "-c",
                "import sys,zipfile\nz=zipfile.ZipFile(sys.argv[1],'w'); z.writestr('index.json', open(sys.argv[2]).read()); z.close()",
                zip.to_str().unwrap(),
                index,
            ])
            .status()
            .expect("python3");
        assert!(status.success());
        zip
    };
    // 2,000,000 images of the shortest entry a parse takes: 30 MB of JSON.
    let many = dir.path().join("many.json");
    let entries = vec![r#"{"source":"a"}"#; 2_000_000].join(",");
    std::fs::write(
        &many,
        format!(r#"{{"version":"v1.2.0","list":[{entries}]}}"#),
    )
    .unwrap();
    // Past the size bound: one long source.
    let big = dir.path().join("big.json");
    let long = "a".repeat(65 << 20);
    std::fs::write(
        &big,
        format!(r#"{{"version":"v1.2.0","list":[{{"source":"{long}"}}]}}"#),
    )
    .unwrap();
    for (zip, expected) in [
        (
            make("many.zip", many.to_str().unwrap()),
            "more than 100000 entries",
        ),
        (
            make("big.zip", big.to_str().unwrap()),
            "too large for a JSON document",
        ),
    ] {
        let run = run_measured(
            &["archive", "ls", zip.to_str().unwrap()],
            Duration::from_secs(60),
        );
        assert!(!run.success, "{}", run.output);
        let name = zip.file_name().unwrap().to_str().unwrap();
        assert!(
            run.output.contains(name) && run.output.contains(expected),
            "{}",
            run.output
        );
        assert!(run.elapsed < Duration::from_secs(30), "{:?}", run.elapsed);
        // The JSON's bytes twice (read, then joined) and the entries parsed up to the bound.
        assert!(
            run.peak_rss < 160 * MB,
            "{name}: peak {} MB",
            run.peak_rss / MB
        );
    }
}

/// What a list line says reaches the terminal escaped and bounded: an escape sequence in a
/// line (which would retitle or clear the terminal) is printed as text, and a line of a
/// megabyte costs a message of a few hundred bytes.
#[test]
fn list_lines_cannot_drive_or_flood_the_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("list.txt");
    let long = "x".repeat(1 << 20);
    std::fs::write(
        &list,
        format!("reg.io/a/\u{1b}]0;pwned\u{7}b:1\n{long}@sha256:00\n"),
    )
    .unwrap();
    let failed = dir.path().join("failed.txt");
    let out = hangar(&[
        "mirror",
        "-f",
        list.to_str().unwrap(),
        "-d",
        "127.0.0.1:9",
        "-o",
        failed.to_str().unwrap(),
    ]);
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(
        !said.contains('\u{1b}') && !said.contains('\u{7}'),
        "{said:?}"
    );
    assert!(said.contains("\\u{1b}]0;pwned\\u{7}"), "{said}");
    assert!(said.len() < 4 << 10, "{} bytes said", said.len());
}

/// A list that fails whole is named in the log as Hangar names it, as many lines as fit
/// in 8 KiB, each cut at 200 characters: the failed list holds every one, whole.
#[test]
fn the_logged_failed_list_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("list.txt");
    let lines: Vec<String> = (0..150)
        .map(|i| format!("reg.io/Bad..{i}:{}", "x".repeat(400)))
        .collect();
    std::fs::write(&list, lines.join("\n")).unwrap();
    let failed = dir.path().join("failed.txt");
    let out = hangar(&[
        "mirror",
        "-f",
        list.to_str().unwrap(),
        "-d",
        "127.0.0.1:9",
        "-o",
        failed.to_str().unwrap(),
    ]);
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    let listed = said
        .split("Copy failed image list: \n")
        .nth(1)
        .expect("the failed list logged");
    let shown = listed
        .lines()
        .take_while(|l| l.starts_with("reg.io/Bad.."))
        .count();
    assert!((30..60).contains(&shown), "{shown} lines: {said}");
    assert!(
        listed.contains(&format!(
            "… and {} more, in {}",
            150 - shown,
            failed.display()
        )),
        "{said}"
    );
    assert!(
        listed.lines().next().unwrap().ends_with("… (414 bytes)"),
        "{said}"
    );
    assert_eq!(
        std::fs::read_to_string(&failed).unwrap(),
        lines.join("\n") + "\n"
    );
}
