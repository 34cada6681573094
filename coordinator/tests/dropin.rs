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
    assert!(
        common::text(&out).contains("[FATA] some images failed to copy"),
        "{}",
        common::text(&out)
    );
}
