//! The containers configuration a Hangar user relies on: Docker credential helpers named in
//! an auth file (`credHelpers`, `credsStore`), run as Docker runs them, against a real
//! registry that wants a password.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::{Env, index_digests, push_image, registry, sha, text};
use hangar_loadtest::seed::Format;
use hangar_loadtest::services::{RegistryConfig, RegistryProcess};

/// A `docker-credential-NAME` in `dir` that knows one server.
fn fake_helper(dir: &std::path::Path, name: &str, server: &str) {
    let path = dir.join(format!("docker-credential-{name}"));
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 2\nread server\nif [ \"$server\" = \"{server}\" ]; then\n  printf '{{\"ServerURL\":\"%s\",\"Username\":\"mirror-user\",\"Secret\":\"s3cret-pass\"}}' \"$server\"\nelse\n  echo 'credentials not found in native keychain'; exit 1\nfi\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn credential_helpers_are_run_as_docker_runs_them() {
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("htpasswd");
    let hashed = Command::new("htpasswd")
        .args(["-Bbn", "mirror-user", "s3cret-pass"])
        .output()
        .expect("htpasswd (apache2-utils)");
    std::fs::write(&htpasswd, &hashed.stdout).unwrap();
    let secured = RegistryProcess::start_with(RegistryConfig {
        htpasswd: Some(&htpasswd),
        ..Default::default()
    })
    .unwrap();
    let env = Env::new();
    let src = registry(&env.src.addr).await;
    let pushed = push_image(
        &src,
        env.dir.path(),
        "team/private",
        Some("1"),
        Format::Oci,
        "amd64",
        (&[640], 10_000),
    )
    .await;
    let list = env.write_list("list.txt", &[format!("{}/team/private:1", env.src.addr)]);
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    fake_helper(&bin, "fake", &secured.addr);
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mirror = |authfile: &std::path::Path, project: &str| {
        Command::new(env!("CARGO_BIN_EXE_hangar-coord"))
            .args(["mirror", "--tls-verify=false", "-f"])
            .arg(&list)
            .args(["-d", &secured.addr, "--destination-project", project, "-o"])
            .arg(env.path("failed.txt"))
            .arg("--authfile")
            .arg(authfile)
            .env("PATH", &path)
            .output()
            .expect("hangar-coord")
    };
    // A helper named for the registry, and a default one for every registry.
    for (name, doc, project) in [
        (
            "credHelpers",
            format!(r#"{{"credHelpers":{{"{}":"fake"}}}}"#, secured.addr),
            "helpers",
        ),
        ("credsStore", r#"{"credsStore":"fake"}"#.to_owned(), "store"),
    ] {
        let authfile = dir.path().join(format!("{name}.json"));
        std::fs::write(&authfile, doc).unwrap();
        let out = mirror(&authfile, project);
        assert!(out.status.success(), "{name}: {}", text(&out));
        let copied = Command::new("skopeo")
            .args([
                "inspect",
                "--raw",
                "--tls-verify=false",
                "--creds",
                "mirror-user:s3cret-pass",
            ])
            .arg(format!("docker://{}/{project}/private:1", secured.addr))
            .output()
            .expect("skopeo");
        assert!(copied.status.success(), "{name}");
        assert_eq!(
            index_digests(&copied.stdout),
            vec![sha(&pushed.bytes)],
            "{name}"
        );
        // The secret never reaches the output.
        assert!(!text(&out).contains("s3cret-pass"), "{name}");
    }
    // A helper that is not installed is an error naming it, not an anonymous push.
    let authfile = dir.path().join("missing.json");
    std::fs::write(
        &authfile,
        format!(r#"{{"credHelpers":{{"{}":"absent"}}}}"#, secured.addr),
    )
    .unwrap();
    let out = mirror(&authfile, "missing");
    assert!(!out.status.success());
    assert!(
        text(&out).contains("credential helper docker-credential-absent: not found on PATH"),
        "{}",
        text(&out)
    );
}
