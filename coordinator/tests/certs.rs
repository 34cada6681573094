//! Registries with their own certificates, trusted the way containers/image (and so Hangar
//! and skopeo) trusts them: a CA in the user's `certs.d` directory for that host or in
//! `--cert-dir`, and a client certificate (`NAME.cert` with `NAME.key`) beside it for a
//! registry that asks for one. skopeo, an independent client, shows the registry really
//! asks.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{Env, index_digests, push_image, registry, sha, text};
use hangar_loadtest::seed::Format;
use hangar_loadtest::services::{RegistryConfig, RegistryProcess};
use hangar_shared::manifest::RawManifest;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair,
};

/// A CA made here, a server certificate for 127.0.0.1 and a client certificate, both
/// signed by it, written into `dir`.
struct Pki {
    ca_pem: String,
    server: (PathBuf, PathBuf),
    ca_file: PathBuf,
    client_cert: String,
    client_key: String,
}

fn pki(dir: &Path) -> Pki {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let server = (dir.join("tls.pem"), dir.join("tls.key"));
    std::fs::write(&server.0, cert.pem()).unwrap();
    std::fs::write(&server.1, key.serialize_pem()).unwrap();
    let ca_file = dir.join("clients-ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let client_key = KeyPair::generate().unwrap();
    let mut client = CertificateParams::new(Vec::<String>::new()).unwrap();
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client = client.signed_by(&client_key, &ca).unwrap();
    Pki {
        ca_pem: ca.pem(),
        server,
        ca_file,
        client_cert: client.pem(),
        client_key: client_key.serialize_pem(),
    }
}

/// `hangar-coord` with `HOME` at `home` and no auth file.
fn hangar(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hangar-coord"))
        .args(args)
        .env("HOME", home)
        .env("REGISTRY_AUTH_FILE", "/nonexistent/auth.json")
        .output()
        .expect("hangar-coord")
}

/// A registry serving TLS with a certificate of the CA in `pki` (and, with `clients`,
/// asking every client for a certificate signed by it), the test's registries, and an
/// image pushed to the source one as `team/app:1`.
async fn private_registry(
    pki: &Pki,
    clients: bool,
    layers: &[u64],
) -> (RegistryProcess, Env, RawManifest) {
    let private = RegistryProcess::start_with(RegistryConfig {
        tls: Some((&pki.server.0, &pki.server.1)),
        client_cas: clients.then_some(pki.ca_file.as_path()),
        ..Default::default()
    })
    .unwrap();
    let env = Env::new();
    let src = registry(&env.src.addr).await;
    let pushed = push_image(
        &src,
        env.dir.path(),
        "team/app",
        Some("1"),
        Format::Oci,
        "amd64",
        (layers, 10_000),
    )
    .await;
    (private, env, pushed)
}

/// A directory of certificates for a registry: `files` (name, contents).
fn cert_dir(at: &Path, files: &[(&str, &str)]) -> PathBuf {
    std::fs::create_dir_all(at).unwrap();
    for (name, body) in files {
        std::fs::write(at.join(name), body).unwrap();
    }
    at.to_owned()
}

/// A registry with its own CA (made here), trusted the way a private Harbor is: the CA in
/// the user's certs.d directory for that host, or in --cert-dir. Without it the copy is
/// refused (certificate checks stay on).
#[tokio::test(flavor = "multi_thread")]
async fn a_private_ca_is_trusted_from_certs_d_and_cert_dir() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let (private, env, pushed) = private_registry(&pki, false, &[650]).await;
    let given = cert_dir(
        &dir.path().join("given"),
        &[("private-ca.crt", &pki.ca_pem)],
    );
    // Into the private registry with skopeo, an independent client trusting the CA.
    let put = Command::new("skopeo")
        .args([
            "copy",
            "--src-tls-verify=false",
            "--dest-cert-dir",
            given.to_str().unwrap(),
        ])
        .arg(format!("docker://{}/team/app:1", env.src.addr))
        .arg(format!("docker://{}/team/app:1", private.addr))
        .output()
        .expect("skopeo");
    assert!(put.status.success(), "{}", text(&put));
    // Copies within the private registry, over TLS with certificate checks on.
    let list = env.write_list("list.txt", &[format!("{}/team/app:1", private.addr)]);
    let home = dir.path().join("home");
    let failed = env.path("failed.txt");
    let mirror = |project: &str, extra: &[&str]| {
        let mut args = vec!["mirror", "-f", list.to_str().unwrap(), "-d", &private.addr];
        args.extend([
            "--destination-project",
            project,
            "-o",
            failed.to_str().unwrap(),
        ]);
        args.extend(extra);
        hangar(&home, &args)
    };
    // Unknown CA: refused, saying what to do.
    let out = mirror("refused", &[]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("certificate is not trusted here") && text(&out).contains("--cert-dir"),
        "{}",
        text(&out)
    );
    let image = format!("docker://{}/team/app:1", private.addr);
    let inspect = |extra: &[&str]| {
        let mut args = vec!["inspect", "--raw"];
        args.extend(extra);
        args.push(&image);
        hangar(&home, &args)
    };
    assert!(!inspect(&[]).status.success());
    // In the user's certs.d for this host:port.
    let certs_d = home.join(".config/containers/certs.d").join(&private.addr);
    std::fs::create_dir_all(&certs_d).unwrap();
    std::fs::write(certs_d.join("ca.crt"), &pki.ca_pem).unwrap();
    let out = mirror("certs-d", &[]);
    assert!(out.status.success(), "{}", text(&out));
    let raw = inspect(&[]);
    assert!(raw.status.success(), "{}", text(&raw));
    assert_eq!(sha(&raw.stdout), sha(&pushed.bytes));
    // Or in --cert-dir (and nothing in certs.d).
    std::fs::remove_dir_all(home.join(".config")).unwrap();
    let out = mirror("cert-dir", &["--cert-dir", given.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    for project in ["certs-d", "cert-dir"] {
        let copied = Command::new("skopeo")
            .args(["inspect", "--raw", "--cert-dir", given.to_str().unwrap()])
            .arg(format!("docker://{}/{project}/app:1", private.addr))
            .output()
            .expect("skopeo");
        assert!(copied.status.success(), "{project}: {}", text(&copied));
        assert_eq!(
            index_digests(&copied.stdout),
            vec![sha(&pushed.bytes)],
            "{project}"
        );
    }
}

/// A registry that asks every client for a certificate signed by its CA (mutual TLS, as a
/// locked-down Harbor is set up): the `NAME.cert`/`NAME.key` pair in certs.d or --cert-dir
/// is presented on every request, blob uploads and reads included. Without it the copy
/// fails saying what is missing; a certificate without its key is an error naming the key.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_certificate_in_certs_d_is_presented() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let (private, env, pushed) = private_registry(&pki, true, &[700, 300]).await;
    let ca_only = cert_dir(&dir.path().join("ca-only"), &[("ca.crt", &pki.ca_pem)]);
    let with_client = cert_dir(
        &dir.path().join("with-client"),
        &[
            ("ca.crt", &pki.ca_pem),
            ("client.cert", &pki.client_cert),
            ("client.key", &pki.client_key),
        ],
    );
    let skopeo_inspect = |cert_dir: &Path, project: &str| {
        Command::new("skopeo")
            .args(["inspect", "--raw", "--cert-dir", cert_dir.to_str().unwrap()])
            .arg(format!("docker://{}/{project}/app:1", private.addr))
            .output()
            .expect("skopeo")
    };

    // Into the registry with skopeo, which is turned away without the certificate too.
    let skopeo_put = |cert_dir: &Path| {
        Command::new("skopeo")
            .args(["copy", "--src-tls-verify=false", "--dest-cert-dir"])
            .arg(cert_dir)
            .arg(format!("docker://{}/team/app:1", env.src.addr))
            .arg(format!("docker://{}/team/app:1", private.addr))
            .output()
            .expect("skopeo")
    };
    assert!(!skopeo_put(&ca_only).status.success());
    let put = skopeo_put(&with_client);
    assert!(put.status.success(), "{}", text(&put));

    // Copies within that registry: every read and write needs the certificate.
    let list = env.write_list("list.txt", &[format!("{}/team/app:1", private.addr)]);
    let home = dir.path().join("home");
    let failed = env.path("failed.txt");
    let mirror = |project: &str, extra: &[&str]| {
        let mut args = vec!["mirror", "-f", list.to_str().unwrap(), "-d", &private.addr];
        args.extend(["--destination-project", project]);
        args.extend(["-o", failed.to_str().unwrap()]);
        args.extend(extra);
        hangar(&home, &args)
    };
    // The CA alone is not enough: the registry turns away a client without a certificate.
    let out = mirror("refused", &["--cert-dir", ca_only.to_str().unwrap()]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("client certificate") && text(&out).contains("NAME.cert"),
        "{}",
        text(&out)
    );
    assert!(!skopeo_inspect(&with_client, "refused").status.success());

    // From the user's certs.d for this host:port (a symlink, as certs.d often holds).
    let certs_d = home.join(".config/containers/certs.d").join(&private.addr);
    std::fs::create_dir_all(home.join(".config/containers/certs.d")).unwrap();
    std::os::unix::fs::symlink(&with_client, &certs_d).unwrap();
    let out = mirror("certs-d", &[]);
    assert!(out.status.success(), "{}", text(&out));
    // Or from --cert-dir; and a save reads every blob from that registry.
    std::fs::remove_file(&certs_d).unwrap();
    let out = mirror("cert-dir", &["--cert-dir", with_client.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let saved = env.path("saved.zip");
    let again = env.write_list("again.txt", &[format!("{}/cert-dir/app:1", private.addr)]);
    let out = hangar(
        &home,
        &[
            "save",
            "-y",
            "--cert-dir",
            with_client.to_str().unwrap(),
            "-f",
            again.to_str().unwrap(),
            "-d",
            saved.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(saved.is_file());
    for project in ["certs-d", "cert-dir"] {
        // skopeo needs the certificate as well, and with it sees the same image.
        assert!(!skopeo_inspect(&ca_only, project).status.success());
        let copied = skopeo_inspect(&with_client, project);
        assert!(copied.status.success(), "{project}: {}", text(&copied));
        // Hangar's mirror lists the image under an index of its own, digest kept.
        assert_eq!(
            index_digests(&copied.stdout),
            vec![sha(&pushed.bytes)],
            "{project}"
        );
    }

    // A certificate without its key: an error naming the key, nothing copied.
    std::fs::remove_file(with_client.join("client.key")).unwrap();
    let out = mirror("no-key", &["--cert-dir", with_client.to_str().unwrap()]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("client.key"), "{}", text(&out));
    std::fs::write(with_client.join("client.key"), &pki.client_key).unwrap();
    assert!(!skopeo_inspect(&with_client, "no-key").status.success());
}

/// `insecure = true` on a repository prefix in registries.conf, as containers/image reads
/// it: that prefix's images are read from a registry whose CA nobody here trusts, while
/// the registry's other repositories keep their certificate checks (and fail).
#[tokio::test(flavor = "multi_thread")]
async fn insecure_on_a_repository_prefix_is_that_prefix_only() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let (private, env, pushed) = private_registry(&pki, false, &[600]).await;
    let given = cert_dir(&dir.path().join("given"), &[("ca.crt", &pki.ca_pem)]);
    for project in ["lab", "prod"] {
        let put = Command::new("skopeo")
            .args(["copy", "--src-tls-verify=false", "--dest-cert-dir"])
            .arg(&given)
            .arg(format!("docker://{}/team/app:1", env.src.addr))
            .arg(format!("docker://{}/{project}/app:1", private.addr))
            .output()
            .expect("skopeo");
        assert!(put.status.success(), "{}", text(&put));
    }
    let conf = env.path("registries.conf");
    std::fs::write(
        &conf,
        format!(
            "[[registry]]\nlocation = \"{}/lab\"\ninsecure = true\n\n[[registry]]\nlocation = \"{}\"\ninsecure = true\n",
            private.addr, env.dst.addr
        ),
    )
    .unwrap();
    let home = dir.path().join("home");
    let list = env.write_list(
        "list.txt",
        &[
            format!("{}/lab/app:1", private.addr),
            format!("{}/prod/app:1", private.addr),
        ],
    );
    let failed = env.path("failed.txt");
    let out = Command::new(env!("CARGO_BIN_EXE_hangar-coord"))
        .args(["mirror", "-f"])
        .arg(&list)
        .args(["-d", &env.dst.addr, "-o"])
        .arg(&failed)
        .env("HOME", &home)
        .env("REGISTRY_AUTH_FILE", "/nonexistent/auth.json")
        .env("CONTAINERS_REGISTRIES_CONF", &conf)
        .output()
        .expect("hangar-coord");
    // lab is copied; prod, whose certificate is checked, is not, and says why.
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("prod/app") && text(&out).contains("certificate is not trusted"),
        "{}",
        text(&out)
    );
    let failed_lines = std::fs::read_to_string(&failed).unwrap();
    assert_eq!(
        failed_lines.trim(),
        format!("{}/prod/app:1", private.addr),
        "{}",
        text(&out)
    );
    let copied = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{}/lab/app:1", env.dst.addr))
        .output()
        .expect("skopeo");
    assert!(copied.status.success(), "{}", text(&copied));
    assert_eq!(index_digests(&copied.stdout), vec![sha(&pushed.bytes)]);
    let absent = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{}/prod/app:1", env.dst.addr))
        .output()
        .expect("skopeo");
    assert!(!absent.status.success(), "{}", text(&absent));
}
