//! Every local path a command takes works as a user types it: relative, with `..`, through a
//! symlink, with spaces and non-ASCII characters (issue 14: `archive ls ../saved.zip` was
//! refused by the object store's path parser).

mod common;

use std::process::Command;

use common::{Env, index_digests, seed_shared_repos, sha, skopeo_raw, text};

fn hangar_in(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_hangar-coord"))
        .args(args)
        .current_dir(dir)
        .env("REGISTRY_AUTH_FILE", "/nonexistent/hangar-test-auth.json")
        .output()
        .expect("run hangar-coord")
}

#[tokio::test(flavor = "multi_thread")]
async fn archive_paths_with_dot_dot_symlinks_spaces_and_non_ascii() {
    let env = Env::new();
    let lines = seed_shared_repos(&env, 2).await;
    let base = env.path("über archives");
    let (here, there) = (base.join("work dir"), base.join("saved"));
    std::fs::create_dir_all(&here).unwrap();
    std::fs::create_dir_all(&there).unwrap();
    std::os::unix::fs::symlink(&there, base.join("link")).unwrap();
    std::fs::write(here.join("list.txt"), lines[..1].join("\n") + "\n").unwrap();
    std::fs::write(here.join("more.txt"), lines[1..].join("\n") + "\n").unwrap();

    let run = |args: &[&str]| {
        let out = hangar_in(&here, args);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        out
    };
    run(&[
        "save",
        "--tls-verify=false",
        "-f",
        "list.txt",
        "-d",
        "../saved/a b.zip",
    ]);
    // Relative with `..`, through a symlink, and `.` segments: each command that reads one.
    let ls = run(&["archive", "ls", "--image-only", "../link/./a b.zip"]);
    assert!(
        String::from_utf8_lossy(&ls.stdout).contains(&lines[0]),
        "{}",
        text(&ls)
    );
    run(&[
        "sync",
        "--tls-verify=false",
        "-f",
        "more.txt",
        "-d",
        "../saved/../link/a b.zip",
    ]);
    run(&["archive", "verify", "../link/a b.zip"]);
    run(&[
        "archive",
        "merge",
        "-f",
        "../saved/a b.zip",
        "-f",
        "../link/a b.zip",
        "-o",
        "../saved/merged ü.zip",
        "-y",
    ]);
    run(&[
        "save",
        "validate",
        "--tls-verify=false",
        "-f",
        "list.txt",
        "-d",
        "../link/a b.zip",
    ]);
    run(&[
        "load",
        "--tls-verify=false",
        "-s",
        "../link/../saved/merged ü.zip",
        "-d",
        &env.dst.addr,
        "-o",
        "load-failed.txt",
    ]);
    for line in &lines {
        let source = skopeo_raw(line).expect("source");
        let loaded = skopeo_raw(&line.replace(&env.src.addr, &env.dst.addr)).expect("loaded");
        assert_eq!(index_digests(&loaded), vec![sha(&source)], "{line}");
    }
    // A stored file in and out by relative paths.
    std::fs::write(base.join("notes ü.txt"), b"hello").unwrap();
    run(&[
        "archive",
        "store",
        "file",
        "-f",
        "../link/a b.zip",
        "../notes ü.txt",
    ]);
    std::fs::create_dir_all(here.join("out")).unwrap();
    let out = hangar_in(
        &here.join("out"),
        &[
            "archive",
            "export",
            "file",
            "-f",
            "../../saved/a b.zip",
            "-n",
            "notes ü.txt",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::read(here.join("out/notes ü.txt")).unwrap(),
        b"hello"
    );
}
