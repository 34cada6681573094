//! Puts the git commit this binary is built from into `version` (`HANGAR_GIT_COMMIT`, given
//! by the environment — the container build passes it — or read from the work tree).

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=HANGAR_GIT_COMMIT");
    println!("cargo:rerun-if-changed=../.git/HEAD");
    println!("cargo:rerun-if-changed=../.git/refs/heads");
    let commit = std::env::var("HANGAR_GIT_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| {
            let out = Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
                .filter(|c| !c.is_empty())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=HANGAR_GIT_COMMIT={commit}");
}
