//! `login` and `logout` with containers/common's flags, against a basic-auth registry and
//! one that never answers.

mod common;

use std::process::Command;

use common::*;
use hangar_loadtest::seed::Format;
use hangar_loadtest::services::{RegistryConfig, RegistryProcess};

#[tokio::test(flavor = "multi_thread")]
async fn login_logout_and_mirror_into_a_basic_auth_registry() {
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("htpasswd");
    let hashed = Command::new("htpasswd")
        .args(["-Bbn", "mirror-user", "s3cret-pass"])
        .output()
        .expect("htpasswd (apache2-utils)");
    assert!(hashed.status.success());
    std::fs::write(&htpasswd, &hashed.stdout).unwrap();
    let secured = RegistryProcess::start_with(RegistryConfig {
        htpasswd: Some(&htpasswd),
        ..Default::default()
    })
    .unwrap();
    let env = Env::new();
    let src = registry(&env.src.addr).await;
    push_image(
        &src,
        env.dir.path(),
        "team/private",
        Some("1"),
        Format::Oci,
        "amd64",
        (&[600], 10_000),
    )
    .await;
    let list = env.write_list("list.txt", &[format!("{}/team/private:1", env.src.addr)]);
    let authfile = dir.path().join("auth.json");
    let af = authfile.to_str().unwrap();

    let mirror = || {
        hangar(&[
            "mirror",
            "--tls-verify=false",
            "-f",
            list.to_str().unwrap(),
            "-d",
            &secured.addr,
            "-o",
            env.path("f.txt").to_str().unwrap(),
            "--authfile",
            af,
        ])
    };
    let denied = mirror();
    assert_eq!(denied.status.code(), Some(1));
    assert!(
        text(&denied).contains("auth"),
        "classified as auth: {}",
        text(&denied)
    );

    let wrong = hangar(&[
        "login",
        &secured.addr,
        "-u",
        "mirror-user",
        "-p",
        "wrong",
        "--authfile",
        af,
        "--tls-verify=false",
    ]);
    assert_eq!(wrong.status.code(), Some(1), "{}", text(&wrong));
    assert!(!authfile.exists(), "nothing stored for a rejected login");

    // Hangar's whole login flag set (containers/common's).
    let ok = hangar(&[
        "login",
        &secured.addr,
        "-u",
        "mirror-user",
        "-p",
        "s3cret-pass",
        "--authfile",
        af,
        "--tls-verify=false",
        "--retry-times",
        "5",
        "--timeout",
        "30s",
        "-v",
    ]);
    assert!(ok.status.success(), "{}", text(&ok));
    assert_eq!(
        String::from_utf8_lossy(&ok.stdout),
        format!("Used: {af}\nLogin Succeeded!\n"),
        "containers/common's lines, bare"
    );
    let stored = std::fs::read_to_string(&authfile).unwrap();
    assert!(
        stored.contains(&secured.addr) && !stored.contains("s3cret-pass"),
        "stored base64 in auths: {stored}"
    );

    let mirrored = mirror();
    assert!(mirrored.status.success(), "{}", text(&mirrored));
    assert!(
        !text(&mirrored).contains("s3cret-pass"),
        "password never logged"
    );
    let check = skopeo_inspect(
        &format!("{}/team/private:1", secured.addr),
        &["--creds", "mirror-user:s3cret-pass"],
    );
    assert!(check.status.success(), "{}", text(&check));

    let out = hangar(&["logout", &secured.addr, "--authfile", af]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        !std::fs::read_to_string(&authfile)
            .unwrap()
            .contains(&secured.addr)
    );
    let again = hangar(&["logout", &secured.addr, "--authfile", af]);
    assert_eq!(again.status.code(), Some(1));

    // --compat-auth-file: a Docker config of its own, written and cleared there only.
    let compat = dir.path().join("docker-config.json");
    let cf = compat.to_str().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_hangar-coord"))
        .args([
            "login",
            &secured.addr,
            "-u",
            "mirror-user",
            "--password-stdin",
        ])
        .args(["--compat-auth-file", cf, "--tls-verify=false"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"s3cret-pass\n")
        .unwrap();
    let ok = child.wait_with_output().unwrap();
    assert!(ok.status.success(), "{}", text(&ok));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&compat).unwrap()).unwrap();
    assert!(v["auths"][&secured.addr]["auth"].is_string(), "{v}");
    let who = hangar(&[
        "login",
        &secured.addr,
        "--get-login",
        "--compat-auth-file",
        cf,
    ]);
    assert_eq!(
        String::from_utf8_lossy(&who.stdout),
        "mirror-user\n",
        "{}",
        text(&who)
    );
    assert!(
        !std::fs::read_to_string(&authfile)
            .unwrap()
            .contains(&secured.addr),
        "the auth file untouched"
    );
    let out = hangar(&[
        "logout",
        &secured.addr,
        "--compat-auth-file",
        cf,
        "--tls-verify=false",
        "--timeout",
        "5s",
        "--retry-times",
        "3",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("Removed login credentials for {}\n", secured.addr)
    );
    assert!(
        !std::fs::read_to_string(&compat)
            .unwrap()
            .contains(&secured.addr)
    );
}

/// A registry that takes the connection and never answers: `login --timeout` ends the
/// check at its bound, and stores nothing.
#[test]
fn login_gives_up_on_a_silent_registry_at_its_timeout() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in silent.incoming().flatten() {
            held.push(c);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let authfile = dir.path().join("auth.json");
    let started = std::time::Instant::now();
    let out = hangar(&[
        "login",
        &addr,
        "-u",
        "u",
        "-p",
        "p",
        "--authfile",
        authfile.to_str().unwrap(),
        "--tls-verify=false",
        "--timeout",
        "2s",
    ]);
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("within 2s"), "{}", text(&out));
    assert!(took < std::time::Duration::from_secs(15), "{took:?}");
    assert!(!authfile.exists(), "nothing stored");
}
