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

/// registries.conf as containers/image reads it: `insecure` lets a plain-HTTP registry be
/// used when `--tls-verify` is left out, `blocked` stops its images being read, and a broken
/// file is an error naming it and the line.
#[tokio::test(flavor = "multi_thread")]
async fn registries_conf_insecure_and_blocked() {
    let env = Env::new();
    let src = registry(&env.src.addr).await;
    let pushed = push_image(
        &src,
        env.dir.path(),
        "team/app",
        Some("1"),
        Format::Oci,
        "amd64",
        (&[512], 4_000),
    )
    .await;
    let list = env.write_list("list.txt", &[format!("{}/team/app:1", env.src.addr)]);
    let home = env.dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let mirror = |conf: &std::path::Path, project: &str| {
        Command::new(env!("CARGO_BIN_EXE_hangar-coord"))
            .args(["mirror", "-f"])
            .arg(&list)
            .args(["-d", &env.dst.addr, "--destination-project", project, "-o"])
            .arg(env.path(&format!("failed-{project}.txt")))
            .env("REGISTRY_AUTH_FILE", "/nonexistent/hangar-test-auth.json")
            .env("HOME", &home)
            .env("CONTAINERS_REGISTRIES_CONF", conf)
            .output()
            .expect("hangar-coord")
    };
    let write = |name: &str, text: String| {
        let p = env.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };

    // Without a word about these registries, TLS is required: the copy fails.
    let empty = write("empty.conf", "unqualified-search-registries = []\n".into());
    let out = mirror(&empty, "plain");
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("--tls-verify=false"), "{}", text(&out));

    let insecure = write(
        "insecure.conf",
        format!(
            "[[registry]]\nlocation = \"{}\"\ninsecure = true\n\n[[registry]]\nlocation = \"{}\"\ninsecure = true\n",
            env.src.addr, env.dst.addr
        ),
    );
    let out = mirror(&insecure, "allowed");
    assert!(out.status.success(), "{}", text(&out));
    let copied = common::skopeo_raw(&format!("{}/allowed/app:1", env.dst.addr))
        .expect("the image was mirrored");
    assert_eq!(index_digests(&copied), vec![sha(&pushed.bytes)]);

    // The source's project blocked, the registry itself not: nothing is read from it.
    let blocked = write(
        "blocked.conf",
        format!(
            "[[registry]]\nlocation = \"{src}\"\ninsecure = true\n\n[[registry]]\nprefix = \"{src}/team\"\nlocation = \"{src}/team\"\nblocked = true\n\n[[registry]]\nlocation = \"{dst}\"\ninsecure = true\n",
            src = env.src.addr,
            dst = env.dst.addr
        ),
    );
    let out = mirror(&blocked, "refused");
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("is blocked in") && text(&out).contains("blocked.conf"),
        "{}",
        text(&out)
    );
    assert!(common::skopeo_raw(&format!("{}/refused/app:1", env.dst.addr)).is_none());

    let broken = write(
        "broken.conf",
        "[[registry]]\nlocation = \"x\"\ninsecure = yes\n".into(),
    );
    let out = mirror(&broken, "broken");
    assert!(!out.status.success());
    assert!(
        text(&out).contains("broken.conf") && text(&out).contains("line 3"),
        "{}",
        text(&out)
    );
}

/// registries.conf mirrors: an image whose registry is unreachable is read from the mirror
/// configured for it (blobs included), keeps its own name in the report, and lands with its
/// digest; a mirror that lacks the image is passed over for the next candidate.
#[tokio::test(flavor = "multi_thread")]
async fn registries_conf_mirrors_serve_an_unreachable_registry() {
    let env = Env::new();
    let src = registry(&env.src.addr).await;
    let pushed = push_image(
        &src,
        env.dir.path(),
        "hub/team/app",
        Some("1"),
        Format::Oci,
        "amd64",
        (&[700, 300], 9_000),
    )
    .await;
    // Nothing listens on port 1: the registry of record cannot answer.
    let gone = "127.0.0.1:1";
    let list = env.write_list("list.txt", &[format!("{gone}/team/app:1")]);
    let home = env.dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let conf = env.dir.path().join("mirrors.conf");
    std::fs::write(
        &conf,
        format!(
            "[[registry]]\nprefix = \"{gone}/team\"\nlocation = \"{gone}/team\"\n\n\
             [[registry.mirror]]\nlocation = \"{src}/empty/team\"\ninsecure = true\n\n\
             [[registry.mirror]]\nlocation = \"{src}/hub/team\"\ninsecure = true\n\n\
             [[registry]]\nprefix = \"{gone}/solo\"\nlocation = \"{gone}/solo\"\n\n\
             [[registry.mirror]]\nlocation = \"{src}/solo\"\ninsecure = true\n\n\
             [[registry]]\nlocation = \"{dst}\"\ninsecure = true\n",
            src = env.src.addr,
            dst = env.dst.addr
        ),
    )
    .unwrap();
    let mirror = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_hangar-coord"))
            .args(["mirror", "-f"])
            .arg(&list)
            .args([
                "-d",
                &env.dst.addr,
                "--destination-project",
                "mirrored",
                "-o",
            ])
            .arg(env.path("failed.txt"))
            .args(extra)
            .env("REGISTRY_AUTH_FILE", "/nonexistent/hangar-test-auth.json")
            .env("HOME", &home)
            .env("CONTAINERS_REGISTRIES_CONF", &conf)
            .output()
            .expect("hangar-coord")
    };
    // The pre-flight plans as the copy will: through the mirror.
    let out = mirror(&["--dry-run"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("Plan [{gone}/team/app:1] => [")),
        "{}",
        text(&out)
    );
    assert!(common::skopeo_raw(&format!("{}/mirrored/app:1", env.dst.addr)).is_none());
    let out = mirror(&[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("{gone}/team/app:1")),
        "the image keeps its name: {}",
        text(&out)
    );
    let copied = common::skopeo_raw(&format!("{}/mirrored/app:1", env.dst.addr))
        .expect("the image was mirrored");
    assert_eq!(index_digests(&copied), vec![sha(&pushed.bytes)]);

    // The commands that read images where they are read them through the mirrors too.
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_hangar-coord"))
            .args(args)
            .env("REGISTRY_AUTH_FILE", "/nonexistent/hangar-test-auth.json")
            .env("HOME", &home)
            .env("CONTAINERS_REGISTRIES_CONF", &conf)
            .output()
            .expect("hangar-coord")
    };
    let out = run(&["inspect", "--raw", &format!("docker://{gone}/team/app:1")]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        sha(&out.stdout),
        sha(&pushed.bytes),
        "read through the mirror"
    );
    let out = run(&["inspect", &format!("docker://{gone}/team/app:1")]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("\"Architecture\": \"amd64\""),
        "{}",
        text(&out)
    );
    // A one-segment repository (as inspect reads `host/solo`), through a one-segment mirror.
    let solo = push_image(
        &src,
        env.dir.path(),
        "solo",
        Some("1"),
        Format::Oci,
        "amd64",
        (&[701], 2_000),
    )
    .await;
    let out = run(&["inspect", "--raw", &format!("{gone}/solo:1")]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(out.stdout, solo.bytes.to_vec());
    let out = run(&[
        "mirror",
        "validate",
        "-f",
        list.to_str().unwrap(),
        "-d",
        &env.dst.addr,
        "--destination-project",
        "mirrored",
        "-o",
        env.path("vf.txt").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("1 passed, 0 failed"), "{}", text(&out));
    let db = env.path("db");
    std::fs::create_dir_all(&db).unwrap();
    std::fs::write(
        db.join("X-1.json"),
        r#"{"id":"X-1","modified":"2026-11-01T00:00:00Z","affected":[]}"#,
    )
    .unwrap();
    let out = run(&[
        "scan",
        "-f",
        list.to_str().unwrap(),
        "--db",
        db.to_str().unwrap(),
        "--skip-db-age-check",
        "-r",
        env.path("scan.csv").to_str().unwrap(),
        "-o",
        env.path("sf.txt").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "Scanned [{gone}/team/app:1@{}]",
            sha(&pushed.bytes)
        )),
        "{}",
        text(&out)
    );
}
