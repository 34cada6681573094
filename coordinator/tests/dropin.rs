//! A Hangar user's scripts run unchanged: the `hangar` name, the words and exit codes they
//! check, Hangar's log format, output into a closed pipe.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};

/// The binary under the name `hangar`, as the install links it.
fn hangar_named() -> std::path::PathBuf {
    let real = std::path::PathBuf::from(env!("CARGO_BIN_EXE_hangar-coord"));
    let dir = tempfile::tempdir().expect("tempdir").keep();
    let link = dir.join("hangar");
    std::os::unix::fs::symlink(&real, &link).expect("symlink");
    link
}

#[test]
fn the_hangar_name_version_and_completions() {
    let hangar = hangar_named();
    let out = Command::new(&hangar).arg("version").output().expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    // `hangar version v0.1.0 - <commit>`: the commit is known (a git work tree builds it).
    assert!(text.starts_with("hangar version v"), "{text}");
    assert!(!text.trim().ends_with("unknown"), "{text}");
    let out = Command::new(&hangar).arg("-v").output().expect("run");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("hangar version"));
    let out = Command::new(&hangar)
        .args(["completion", "bash"])
        .output()
        .expect("run");
    let script = String::from_utf8_lossy(&out.stdout);
    assert!(
        script.contains("complete -F _hangar") && script.contains(" hangar"),
        "{script}"
    );
    // cobra's --no-descriptions: the same completions, none described.
    let fish = |extra: &[&str]| {
        let out = Command::new(&hangar)
            .args(["completion", "fish"])
            .args(extra)
            .output()
            .expect("run");
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let (described, bare) = (fish(&[]), fish(&["--no-descriptions"]));
    assert!(described.contains(" -d 'Print help'"), "{described}");
    assert!(!bare.contains(" -d '"), "{bare}");
    assert_eq!(described.lines().count(), bare.lines().count());
    assert!(bare.contains("-l destination"), "{bare}");
    let out = Command::new(&hangar).arg("--help").output().expect("run");
    assert!(String::from_utf8_lossy(&out.stdout).contains("Usage: hangar "));
    // Under its own name, its own name.
    let out = common::hangar(&["version"]);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("hangar-coord version v"));
}

#[test]
fn usage_errors_exit_1_and_fatal_errors_say_fata_in_local_time() {
    let out = common::hangar(&["mirror", "--no-such-flag"]);
    assert_eq!(out.status.code(), Some(1), "{}", common::text(&out));
    let out = common::hangar(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    // A fatal error: Hangar's `[FATA]` tag, the time as the `TZ` says.
    let out = Command::new(env!("CARGO_BIN_EXE_hangar-coord"))
        .args(["archive", "ls", "/nonexistent/saved.zip"])
        .env("TZ", "Asia/Shanghai")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("[FATA] archive /nonexistent/saved.zip does not exist"),
        "{err}"
    );
    let shanghai = chrono::Utc::now() + chrono::Duration::hours(8);
    let hour = format!("[{}:", shanghai.format("%H"));
    assert!(err.starts_with(&hour), "{err} (expected {hour} for UTC+8)");
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let archive = dir.path().join("a.zip");
    assert!(
        common::hangar(&["archive", "init", archive.to_str().expect("utf-8")])
            .status
            .success()
    );
    for _ in 0..10 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_hangar-coord"))
            .args(["completion", "zsh"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run");
        // Read one byte and hang up, as `| head -c1` does.
        let mut one = [0u8; 1];
        let mut stdout = child.stdout.take().expect("stdout");
        stdout.read_exact(&mut one).expect("a byte");
        drop(stdout);
        let mut err = String::new();
        child
            .stderr
            .take()
            .expect("stderr")
            .read_to_string(&mut err)
            .expect("stderr");
        let status = child.wait().expect("wait");
        assert!(!err.contains("panicked"), "{err}");
        assert!(
            status.success() || status.code().is_none(),
            "{status:?}: {err}"
        );
    }
}

/// Hangar ends save, sync, load and export with the same words a script greps for.
#[test]
fn failed_copies_say_failed_to_copy_whatever_the_command() {
    let env = common::Env::new();
    let list = env.write_list("list.txt", &[format!("{}/no/such:1", env.src.addr)]);
    let archive = env.path("a.zip");
    let out = common::hangar(&[
        "save",
        "--tls-verify=false",
        "-f",
        list.to_str().expect("utf-8"),
        "-d",
        archive.to_str().expect("utf-8"),
        "-o",
        env.path("save-failed.txt").to_str().expect("utf-8"),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let text = common::text(&out);
    assert!(text.contains("[FATA] some images failed to copy"), "{text}");
    // The failed lines logged as Hangar logs them, then where they went.
    let line = format!("{}/no/such:1", env.src.addr);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("[ERRO] Save failed image list: \n{line}\n")),
        "{stderr}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "[INFO] Failed image list exported to {:?}",
            env.path("save-failed.txt").display().to_string()
        )),
        "{stdout}"
    );
    // Hangar names the platforms it selects before the run, as given.
    let mirror = common::hangar(&[
        "mirror",
        "--tls-verify=false",
        "-f",
        list.to_str().expect("utf-8"),
        "-d",
        &env.dst.addr,
        "--arch",
        "arm64,amd64",
        "-o",
        env.path("mirror-failed.txt").to_str().expect("utf-8"),
    ]);
    for (out, arch) in [(&out, "amd64,arm64"), (&mirror, "arm64,amd64")] {
        let text = common::text(out);
        assert!(
            text.contains(&format!("[INFO] Arch List: [{arch}]")),
            "{text}"
        );
        assert!(text.contains("[INFO] OS List: [linux]"), "{text}");
    }
    let text = common::text(&mirror);
    assert!(
        text.contains(&format!("[ERRO] Copy failed image list: \n{line}")),
        "{text}"
    );
}

/// Hangar's Trivy flags: those that only tune online updates are accepted and said to be
/// ignored, in one line; those naming what this scanner cannot use say what to use instead.
#[test]
fn scan_takes_hangars_trivy_flags() {
    let dir = tempfile::tempdir().expect("tempdir");
    let list = dir.path().join("list.txt");
    std::fs::write(&list, "nginx:1.25\n").expect("list");
    let list = list.to_str().expect("utf-8");
    let out = common::hangar(&[
        "scan",
        "-f",
        list,
        "--skip-db-update",
        "--offline-scan",
        "--skip-java-db-update",
    ]);
    let text = common::text(&out);
    assert!(
        text.contains("Ignored (this scanner is offline")
            && text.contains("--skip-db-update, --skip-java-db-update, --offline-scan"),
        "{text}"
    );
    assert_eq!(text.matches("Ignored").count(), 1, "{text}");
    for refused in [
        vec!["-s", "http://trivy:4954"],
        vec!["--trivy-db-repo", "reg.local/trivy-db:2"],
    ] {
        let mut args = vec!["scan", "-f", list];
        args.extend(refused.iter().copied());
        let out = common::hangar(&args);
        assert_eq!(out.status.code(), Some(1), "{}", common::text(&out));
        assert!(
            common::text(&out).contains("--db"),
            "{}",
            common::text(&out)
        );
    }
}

/// Hangar's hidden `--sigstore-private-key` / `--sigstore-passphrase-file` of mirror and
/// load sign each image as it lands; sign validate then passes at the destination.
#[tokio::test(flavor = "multi_thread")]
async fn mirror_and_load_sign_as_they_land_with_hangars_hidden_flags() {
    let env = common::Env::new();
    let lines = common::seed_shared_repos(&env, 1).await;
    let list = env.write_list("list.txt", &lines);
    let s = |p: &std::path::Path| p.to_str().expect("utf-8").to_owned();
    let pass = env.path("pass.txt");
    std::fs::write(&pass, "correct horse\n").expect("passphrase");
    let out = common::hangar(&[
        "generate-sigstore-key",
        "-p",
        &s(&env.path("k")),
        "--passphrase-file",
        &s(&pass),
    ]);
    assert!(out.status.success(), "{}", common::text(&out));
    let (key, public) = (env.path("k.key"), env.path("k.pub"));
    let sign_flags = [
        "--sigstore-private-key".to_owned(),
        s(&key),
        "--sigstore-passphrase-file".to_owned(),
        s(&pass),
    ];
    // mirror into project `m`, load (from a saved archive) into project `l`.
    let mut mirror = vec![
        "mirror",
        "--tls-verify=false",
        "-f",
        list.to_str().unwrap(),
        "-d",
        &env.dst.addr,
        "--destination-project",
        "m",
    ];
    mirror.extend(sign_flags.iter().map(String::as_str));
    let out = common::hangar(&mirror);
    assert!(out.status.success(), "{}", common::text(&out));
    let archive = env.path("a.zip");
    let out = common::hangar(&[
        "save",
        "--tls-verify=false",
        "-f",
        list.to_str().unwrap(),
        "-d",
        &s(&archive),
    ]);
    assert!(out.status.success(), "{}", common::text(&out));
    let mut load = vec![
        "load",
        "--tls-verify=false",
        "-s",
        archive.to_str().unwrap(),
        "-d",
        &env.dst.addr,
        "--project",
        "l",
    ];
    load.extend(sign_flags.iter().map(String::as_str));
    let out = common::hangar(&load);
    assert!(out.status.success(), "{}", common::text(&out));
    for project in ["m", "l"] {
        let name = lines[0].rsplit('/').next().expect("name");
        let dest = env.write_list(
            &format!("{project}.txt"),
            &[format!("{}/{project}/{name}", env.dst.addr)],
        );
        let out = common::hangar(&[
            "sign",
            "validate",
            "--tls-verify=false",
            "-f",
            dest.to_str().unwrap(),
            "-k",
            &s(&public),
            "-r",
            &s(&env.path(&format!("{project}-report.json"))),
        ]);
        let text = common::text(&out);
        assert!(out.status.success(), "{project}: {text}");
        assert!(!text.contains("No signature found"), "{project}: {text}");
        let report = env.path(&format!("{project}-report.json"));
        let (digests, unsigned) = common::signing::report_verdicts(&report);
        assert!(digests > 0, "{project}: {text}");
        assert_eq!(unsigned, Vec::<String>::new(), "{project}: {text}");
    }
}

/// TLS spoken to a plain-HTTP registry names the flag that fixes it.
#[tokio::test(flavor = "multi_thread")]
async fn tls_to_a_plain_http_registry_names_tls_verify_false() {
    let env = common::Env::new();
    let lines = common::seed_shared_repos(&env, 1).await;
    let list = env.write_list("list.txt", &lines);
    let out = common::hangar(&[
        "mirror",
        "-f",
        list.to_str().expect("utf-8"),
        "-d",
        &env.dst.addr,
        "-o",
        env.path("failed.txt").to_str().expect("utf-8"),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let text = common::text(&out);
    assert!(
        text.contains("does not speak TLS") && text.contains("--tls-verify=false"),
        "{text}"
    );
}

/// Hangar runs an empty list to its end (a pipeline's list of new images may be empty):
/// mirror, its validation and save exit 0, save with an archive of no image.
#[test]
fn an_empty_list_runs_to_its_end() {
    let env = common::Env::new();
    let empty = env.write_list("empty.txt", &["# nothing new today".to_owned()]);
    let empty = empty.to_str().expect("utf-8");
    let failed = env.path("f.txt");
    let failed = failed.to_str().expect("utf-8");
    let dst = env.dst.addr.as_str();
    let archive = env.path("empty.zip");
    let archive = archive.to_str().expect("utf-8");
    for args in [
        &[
            "mirror",
            "--tls-verify=false",
            "-f",
            empty,
            "-d",
            dst,
            "-o",
            failed,
        ][..],
        &[
            "mirror",
            "validate",
            "--tls-verify=false",
            "-f",
            empty,
            "-d",
            dst,
            "-o",
            failed,
        ][..],
        &[
            "save",
            "--tls-verify=false",
            "-f",
            empty,
            "-d",
            archive,
            "-o",
            failed,
        ][..],
    ] {
        let out = common::hangar(args);
        let text = common::text(&out);
        assert!(out.status.success(), "{args:?}: {text}");
        assert!(text.contains("No images in list"), "{text}");
        assert!(text.contains("[INFO] Done"), "{text}");
    }
    assert!(!std::path::Path::new(failed).exists(), "nothing failed");
    let ls = common::hangar(&["archive", "ls", "--image-only", archive]);
    assert!(ls.status.success(), "{}", common::text(&ls));
    assert!(ls.stdout.is_empty(), "{}", common::text(&ls));
    assert!(
        common::hangar(&["archive", "verify", archive])
            .status
            .success()
    );
}

/// A destination that takes the connection and never answers keeps the first look waiting
/// up to its timeout: Ctrl-C ends that wait at once, and the failed list holds the list.
#[test]
fn ctrl_c_while_a_silent_destination_is_asked_ends_the_run() {
    let env = common::Env::new();
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = silent.local_addr().expect("addr").to_string();
    let (asked, asking) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in silent.incoming().flatten() {
            held.push(c);
            let _ = asked.send(());
        }
    });
    let line = format!("{}/x/y:1", env.src.addr);
    let list = env.write_list("list.txt", std::slice::from_ref(&line));
    let failed = env.path("f.txt");
    let child = Command::new(env!("CARGO_BIN_EXE_hangar-coord"))
        .args(["mirror", "--tls-verify=false", "-f"])
        .arg(&list)
        .args(["-d", &addr, "-o"])
        .arg(&failed)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // SIGINT once the probe is under way (the listener holds its connection).
    asking
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("the destination was never asked");
    std::thread::sleep(std::time::Duration::from_millis(200));
    let sent = std::time::Instant::now();
    let int = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(int.success());
    let out = child.wait_with_output().expect("wait");
    let took = sent.elapsed();
    let text = common::text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("[FATA] interrupted while the destination was asked"),
        "{text}"
    );
    assert!(took < std::time::Duration::from_secs(5), "{took:?}: {text}");
    assert_eq!(
        std::fs::read_to_string(&failed)
            .expect("failed list")
            .trim(),
        line
    );
}

/// A closed port fails in seconds with one line naming the registry, not a retry round per
/// request; the dry run fails the same way and names each image's destination.
#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_registry_fails_fast_with_one_line() {
    let env = common::Env::new();
    let lines = common::seed_shared_repos(&env, 2).await;
    let list = env.write_list("list.txt", &lines);
    let list = list.to_str().expect("utf-8");
    let started = std::time::Instant::now();
    let out = common::hangar(&[
        "mirror",
        "--tls-verify=false",
        "-f",
        list,
        "-d",
        "127.0.0.1:1",
        "-o",
        env.path("f.txt").to_str().expect("utf-8"),
    ]);
    let text = common::text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        text.matches("registry 127.0.0.1:1 cannot be reached")
            .count(),
        1,
        "{text}"
    );
    assert!(
        !text.contains("WARN") && !text.contains("retrying"),
        "{text}"
    );
    // Nothing was copied: every line is in the failed list, for the retry with -f.
    let failed = std::fs::read_to_string(env.path("f.txt")).expect("the failed list");
    let mut failed: Vec<&str> = failed.lines().collect();
    failed.sort();
    let mut want: Vec<&str> = lines.iter().map(String::as_str).collect();
    want.sort();
    assert_eq!(failed, want);
    // A source that does not answer fails its images at once, the others go on.
    let mixed = env.write_list(
        "mixed.txt",
        &[lines[0].clone(), "127.0.0.1:1/gone/app:1".to_owned()],
    );
    let out = common::hangar(&[
        "mirror",
        "--tls-verify=false",
        "-f",
        mixed.to_str().expect("utf-8"),
        "-d",
        &env.dst.addr,
        "-o",
        env.path("f2.txt").to_str().expect("utf-8"),
    ]);
    let text = common::text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("registry 127.0.0.1:1 cannot be reached"),
        "{text}"
    );
    assert!(text.contains("Copied image"), "{text}");
    // The dry run: exit 1 for the unreachable destination; each plan line names where the
    // image would go.
    let out = common::hangar(&[
        "mirror",
        "--tls-verify=false",
        "-f",
        list,
        "-d",
        "127.0.0.1:1",
        "--dry-run",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", common::text(&out));
    let out = common::hangar(&[
        "mirror",
        "--tls-verify=false",
        "-f",
        list,
        "-d",
        &env.dst.addr,
        "--dry-run",
    ]);
    let text = common::text(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains(&format!("=> [{}/", env.dst.addr)), "{text}");
}
