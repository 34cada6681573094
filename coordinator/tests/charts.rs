//! `archive store chart`: a packaged chart and a chart directory stored as Hangar's chart
//! images, listed as Helm charts, verified, and pushed by `load` as OCI artifacts with their
//! digests; a custom file beside them is skipped by `load`.

mod common;

use std::path::Path;

use common::*;

fn s(p: &Path) -> String {
    p.display().to_string()
}

const CHART_YAML: &str = "apiVersion: v2\nname: NAME\nversion: 1.2.3+build\ndescription: A test chart\nhome: https://example.com/chart\nappVersion: \"4.5\"\n";

/// A chart directory `dir/NAME` with a Chart.yaml, values and one template.
fn chart_dir(dir: &Path, name: &str) -> std::path::PathBuf {
    let root = dir.join(format!("{name}-src"));
    std::fs::create_dir_all(root.join("templates")).unwrap();
    std::fs::write(root.join("Chart.yaml"), CHART_YAML.replace("NAME", name)).unwrap();
    std::fs::write(root.join("values.yaml"), "replicas: 1\n").unwrap();
    std::fs::write(
        root.join("templates/cm.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n",
    )
    .unwrap();
    root
}

/// `helm package`'s layout: every entry under `<name>/`.
fn chart_tgz(dir: &Path, name: &str) -> std::path::PathBuf {
    let src = chart_dir(dir, &format!("{name}-packed"));
    let to = dir.join(format!("{name}-1.2.3+build.tgz"));
    let gz = flate2::write::GzEncoder::new(
        std::fs::File::create(&to).unwrap(),
        flate2::Compression::default(),
    );
    let mut tar = tar::Builder::new(gz);
    // The directory's Chart.yaml names `<name>-packed`: write the real one for `name`.
    let yaml = CHART_YAML.replace("NAME", name);
    let mut header = tar::Header::new_gnu();
    header.set_size(yaml.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, format!("{name}/Chart.yaml"), yaml.as_bytes())
        .unwrap();
    tar.append_path_with_name(src.join("values.yaml"), format!("{name}/values.yaml"))
        .unwrap();
    tar.into_inner().unwrap().finish().unwrap();
    to
}

#[tokio::test(flavor = "multi_thread")]
async fn store_list_verify_and_load_charts() {
    let env = Env::new();
    let archive = env.path("charts.zip");
    assert!(hangar(&["archive", "init", &s(&archive)]).status.success());

    let tgz = chart_tgz(env.dir.path(), "packed");
    let dir = chart_dir(env.dir.path(), "fromdir");
    let note = env.path("notes.txt");
    std::fs::write(&note, "a custom file\n").unwrap();

    let out = hangar(&[
        "archive",
        "store",
        "chart",
        "-f",
        &s(&archive),
        &s(&tgz),
        &s(&dir),
    ]);
    assert!(out.status.success(), "store chart: {}", text(&out));
    assert!(
        text(&out).contains("Add OCI Helm Chart [docker.io/hangar-helm/packed]"),
        "{}",
        text(&out)
    );
    let out = hangar(&["archive", "store", "file", "-f", &s(&archive), &s(&note)]);
    assert!(out.status.success(), "store file: {}", text(&out));

    // A chart named directly is taken as it is: -n and -v choose from repositories only
    // (Hangar ignores them here too).
    let second = chart_tgz(env.dir.path(), "second");
    let out = hangar(&[
        "archive",
        "store",
        "chart",
        "-f",
        &s(&archive),
        "-n",
        "other",
        "-v",
        "9.9.9",
        &s(&second),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("Add OCI Helm Chart [docker.io/hangar-helm/second]\n"),
        "{}",
        text(&out)
    );

    let ls = hangar(&["archive", "ls", &s(&archive)]);
    assert!(ls.status.success(), "{}", text(&ls));
    let rows = String::from_utf8_lossy(&ls.stdout).into_owned();
    for name in ["packed", "fromdir", "second"] {
        let row = rows
            .lines()
            .find(|l| l.contains(&format!("docker.io/hangar-helm/{name}:1.2.3-build")))
            .unwrap_or_else(|| panic!("{name} not listed:\n{rows}"));
        assert!(
            row.contains("NOARCH | NOOS") && row.ends_with("(helm chart)"),
            "{row}"
        );
    }
    assert!(
        rows.lines()
            .any(|l| l.contains("hangar-file/notes.txt:latest") && l.ends_with("(custom file)")),
        "{rows}"
    );

    let verify = hangar(&["archive", "verify", &s(&archive)]);
    assert!(verify.status.success(), "verify: {}", text(&verify));

    let out = hangar(&[
        "load",
        "--tls-verify=false",
        "-s",
        &s(&archive),
        "-d",
        &env.dst.addr,
        "-o",
        &s(&env.path("load-failed.txt")),
    ]);
    assert!(out.status.success(), "load: {}", text(&out));

    let tgz_digest = sha(&std::fs::read(&tgz).unwrap());
    for name in ["packed", "fromdir"] {
        let raw = skopeo_raw(&format!("{}/hangar-helm/{name}:1.2.3-build", env.dst.addr))
            .unwrap_or_else(|| panic!("{name} was not loaded: {}", text(&out)));
        let manifest: serde_json::Value = serde_json::from_slice(&raw).unwrap();
        assert_eq!(
            manifest["config"]["mediaType"], "application/vnd.cncf.helm.config.v1+json",
            "{manifest}"
        );
        assert_eq!(
            manifest["layers"][0]["mediaType"],
            "application/vnd.cncf.helm.chart.content.v1.tar+gzip"
        );
        assert_eq!(
            manifest["annotations"]["org.opencontainers.image.title"],
            name
        );
        if name == "packed" {
            assert_eq!(manifest["layers"][0]["digest"], tgz_digest.as_str());
        }
    }
    // The custom file is not an image: skipped, not pushed.
    assert!(skopeo_raw(&format!("{}/hangar-file/notes.txt:latest", env.dst.addr)).is_none());
}

/// Charts chosen from Helm repositories by name (and version), on disk and over http, and
/// an OCI chart copied from a registry as it is: its manifest's digest is the one `load`
/// pushes. A repository index pointing outside its directory is refused.
#[tokio::test(flavor = "multi_thread")]
async fn charts_from_helm_repositories_and_oci_registries() {
    use hangar_loadtest::seed;
    let env = Env::new();
    let archive = env.path("repos.zip");
    assert!(hangar(&["archive", "init", &s(&archive)]).status.success());

    // A repository directory: index.yaml and the packages beside it.
    let repo = env.path("helm-repo");
    std::fs::create_dir_all(&repo).unwrap();
    let newest = chart_tgz(&repo, "packed");
    let index = "apiVersion: v1\nentries:\n  packed:\n  - name: packed\n    version: 1.2.3+build\n    urls: [packed-1.2.3+build.tgz]\n  - name: packed\n    version: 2.0.0-rc.1\n    urls: [missing-rc.tgz]\n  - name: packed\n    version: 0.1.0\n    urls: [missing-old.tgz]\n";
    std::fs::write(repo.join("index.yaml"), index).unwrap();
    let out = hangar(&[
        "archive",
        "store",
        "chart",
        "-f",
        &s(&archive),
        "-n",
        "packed",
        &s(&repo),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("Add OCI Helm Chart [docker.io/hangar-helm/packed]"),
        "{}",
        text(&out)
    );
    let out = hangar(&["archive", "store", "chart", "-f", &s(&archive), &s(&repo)]);
    assert!(!out.status.success());
    assert!(text(&out).contains("-n NAME"), "{}", text(&out));

    // The same repository over http, the version asked for.
    let served = repo.clone();
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
        let path = served.join(uri.path().trim_start_matches("/charts/"));
        async move {
            match std::fs::read(&path) {
                Ok(b) => (axum::http::StatusCode::OK, b),
                Err(_) => (axum::http::StatusCode::NOT_FOUND, Vec::new()),
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/charts", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let http_archive = env.path("http.zip");
    assert!(
        hangar(&["archive", "init", &s(&http_archive)])
            .status
            .success()
    );
    let out = hangar(&[
        "archive",
        "store",
        "chart",
        "-f",
        &s(&http_archive),
        "-n",
        "packed",
        "-v",
        "1.2.3+build",
        &base,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let out = hangar(&[
        "archive",
        "store",
        "chart",
        "-f",
        &s(&http_archive),
        "-n",
        "packed",
        "-v",
        "9.9.9",
        &base,
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("has no version \"9.9.9\""),
        "{}",
        text(&out)
    );

    // An index naming a package outside its repository is refused.
    std::fs::write(
        repo.join("index.yaml"),
        "apiVersion: v1\nentries:\n  packed:\n  - name: packed\n    version: 3.0.0\n    urls: [../../etc/passwd]\n",
    )
    .unwrap();
    let out = hangar(&[
        "archive",
        "store",
        "chart",
        "-f",
        &s(&archive),
        "-n",
        "packed",
        &s(&repo),
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("lies outside the repository"),
        "{}",
        text(&out)
    );
    // A package that is not what its index says (Helm's `digest`) is refused; so is one
    // reached through a symbolic link out of the repository.
    std::fs::write(
        repo.join("index.yaml"),
        format!(
            "apiVersion: v1\nentries:\n  packed:\n  - name: packed\n    version: 1.2.3+build\n    digest: {}\n    urls: [packed-1.2.3+build.tgz]\n",
            "0".repeat(64)
        ),
    )
    .unwrap();
    let out = hangar(&[
        "archive",
        "store",
        "chart",
        "-f",
        &s(&archive),
        "-n",
        "packed",
        &s(&repo),
    ]);
    assert!(!out.status.success());
    assert!(text(&out).contains("the index says"), "{}", text(&out));
    std::fs::copy(&newest, env.path("outside.tgz")).unwrap();
    std::os::unix::fs::symlink(env.path("outside.tgz"), repo.join("linked.tgz")).unwrap();
    std::fs::write(
        repo.join("index.yaml"),
        "apiVersion: v1\nentries:\n  packed:\n  - name: packed\n    version: 1.2.3+build\n    urls: [linked.tgz]\n",
    )
    .unwrap();
    let out = hangar(&[
        "archive",
        "store",
        "chart",
        "-f",
        &s(&archive),
        "-n",
        "packed",
        &s(&repo),
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("lies outside the repository"),
        "{}",
        text(&out)
    );

    // An OCI chart in a registry, as `helm push` makes it.
    let src = registry(&env.src.addr).await;
    let tgz = bytes::Bytes::from(std::fs::read(&newest).unwrap());
    let config = bytes::Bytes::from_static(
        br#"{"name":"ocichart","version":"0.1.0+up1","apiVersion":"v2"}"#,
    );
    let repo_name = "charts/ocichart";
    let config_desc = seed::push_bytes(
        &src,
        repo_name,
        "application/vnd.cncf.helm.config.v1+json",
        config,
    )
    .await
    .unwrap();
    let layer_desc = seed::push_bytes(
        &src,
        repo_name,
        "application/vnd.cncf.helm.chart.content.v1.tar+gzip",
        tgz,
    )
    .await
    .unwrap();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config_desc,
        "layers": [layer_desc],
        "annotations": {"org.opencontainers.image.title": "ocichart"},
    });
    let pushed = seed::push_manifest(
        &src,
        repo_name,
        "0.1.0_up1",
        "application/vnd.oci.image.manifest.v1+json",
        bytes::Bytes::from(serde_json::to_vec(&manifest).unwrap()),
    )
    .await
    .unwrap();
    let oci_archive = env.path("oci.zip");
    assert!(
        hangar(&["archive", "init", &s(&oci_archive)])
            .status
            .success()
    );
    let out = hangar(&[
        "archive",
        "store",
        "chart",
        "--tls-verify=false",
        "-f",
        &s(&oci_archive),
        &format!("oci://{}/charts", env.src.addr),
        "-n",
        "ocichart",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let rows =
        String::from_utf8_lossy(&hangar(&["archive", "ls", &s(&oci_archive)]).stdout).into_owned();
    assert!(
        rows.lines().any(
            |l| l.contains(&format!("{}/charts/ocichart:0.1.0_up1", env.src.addr))
                && l.ends_with("(helm chart)")
        ),
        "{rows}"
    );
    let out = hangar(&[
        "load",
        "--tls-verify=false",
        "-s",
        &s(&oci_archive),
        "-d",
        &env.dst.addr,
        "-o",
        &s(&env.path("oci-failed.txt")),
    ]);
    assert!(out.status.success(), "load: {}", text(&out));
    let loaded =
        skopeo_raw(&format!("{}/charts/ocichart:0.1.0_up1", env.dst.addr)).expect("loaded");
    assert_eq!(
        sha(&loaded),
        pushed.digest.to_string(),
        "the chart's digest is kept"
    );
    // Not a chart: refused by name.
    let out = hangar(&[
        "archive",
        "store",
        "chart",
        "--tls-verify=false",
        "-f",
        &s(&oci_archive),
        &format!("oci://{}/charts/absent", env.src.addr),
        "-v",
        "1.0.0",
    ]);
    assert!(!out.status.success());
    assert!(text(&out).contains("oci://"), "{}", text(&out));
}
