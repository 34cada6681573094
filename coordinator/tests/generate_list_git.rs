//! `generate-list --rancher` alone: Rancher's chart repositories cloned from a mirror of
//! GitHub made here (`--git-base`) and its KDM data read from `--kdm-base`.

mod common;

use std::path::Path;
use std::process::Command;

use common::generate_list::*;
use common::text;

/// `git -C dir ARGS`, which must succeed.
fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .output()
        .expect("git");
    assert!(out.status.success(), "git {args:?}: {}", text(&out));
}

/// `from` committed on `branch` and published as a bare repository at `to`.
fn publish(from: &Path, branch: &str, to: &Path) {
    git(from, &["init", "-q"]);
    git(from, &["checkout", "-q", "-b", branch]);
    git(from, &["add", "-A"]);
    git(from, &["commit", "-q", "-m", "charts"]);
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    let out = Command::new("git")
        .args(["clone", "-q", "--bare"])
        .arg(from)
        .arg(to)
        .output()
        .expect("git clone --bare");
    assert!(out.status.success(), "{}", text(&out));
}

/// Given only `--rancher`, Rancher's repositories are cloned (here from a mirror of
/// GitHub made of the fixture, `--git-base`) on the version's release branch, and its KDM
/// data read from `--kdm-base`: the same list as when they are given.
#[test]
fn only_rancher_given_clones_its_repositories_and_reads_its_kdm_data() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fixture(root);
    publish(
        &root.join("chart-repo"),
        "release-v2.9",
        &root.join("mirror/rancher/charts"),
    );
    publish(
        &root.join("system-chart-repo"),
        "release-v2.9",
        &root.join("mirror/rancher/system-charts"),
    );
    write(root, "kdm-site/release-v2.9/data.json", KDM);
    let git_base = format!("file://{}", root.join("mirror").display());
    let kdm_base = root.join("kdm-site").display().to_string();
    let out = generate(
        root,
        &[
            "--rancher",
            "2.9.1",
            "--git-base",
            &git_base,
            "--kdm-base",
            &kdm_base,
            "-o",
            "out/linux.txt",
            "--output-source",
            "out/source.txt",
            "-y",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "Cloning {git_base}/rancher/charts (branch release-v2.9)"
        )),
        "{}",
        text(&out)
    );
    assert_eq!(read(root, "out/linux.txt"), FIXTURE_LINUX.join("\n"));
    assert!(
        read(root, "out/source.txt").contains(&format!(
            "rancher/sys:v0.1.0 [{git_base}/rancher/system-charts;sys:0.1.0]"
        )),
        "{}",
        read(root, "out/source.txt")
    );
    // --dev reads the dev branch, which this mirror does not have: said, with the branch.
    let out = generate(
        root,
        &[
            "--rancher",
            "2.9.1",
            "--dev",
            "--git-base",
            &git_base,
            "--kdm-base",
            &kdm_base,
            "-y",
        ],
    );
    assert!(!out.status.success());
    assert!(
        text(&out).contains(&format!(
            "cloning {git_base}/rancher/charts (branch dev-v2.9) failed"
        )),
        "{}",
        text(&out)
    );
    // A GC build's sources are not guessed.
    let out = generate(
        root,
        &["--rancher", "2.9.1-ent", "--git-base", &git_base, "-y"],
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("give their sources"), "{}", text(&out));
}
