//! `generate-list` on KDM data and chart repositories made here, as Rancher's are laid out:
//! the exact files Hangar writes, the filters (channel ranges, newest patch per minor,
//! Rancher-version annotations and questions ranges, RKE1 projects), release image lists
//! from a server of ours (and a hostile one), and the errors. The fixture is in
//! `common/generate_list.rs`; `generate_list_git.rs` clones the repositories.

mod common;

use common::generate_list::*;
use common::text;

#[test]
fn kdm_and_chart_repositories_give_hangars_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fixture(root);
    let mut args = vec![
        "--rancher",
        "2.9.1",
        "--kdm",
        "./kdm.json",
        "--chart",
        "./chart-repo",
        "--system-chart",
        "./system-chart-repo",
        "-y",
    ];
    args.extend(ALL_OUTPUTS);
    let out = generate(root, &args);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(read(root, "out/linux.txt"), FIXTURE_LINUX.join("\n"));
    assert_eq!(
        read(root, "out/windows.txt"),
        [
            "rancher/bar:1.2",
            "rancher/foo-windows:v1.0.0",
            "rancher/hyperkube:v1.28.15-rancher1",
            "rancher/kubelet-pause:v0.1.6",
            "rancher/rke-tools:v0.1.100",
        ]
        .join("\n")
    );
    assert_eq!(
        read(root, "out/source.txt"),
        [
            "rancher/bar:1.2 [./chart-repo;foo:1.0.0]",
            "rancher/bar:1.2 [./chart-repo;foo:1.0.0]",
            "rancher/empty-tag:latest [./chart-repo;foo:1.0.0]",
            "rancher/foo-windows:v1.0.0 [./chart-repo;foo:1.0.0]",
            "rancher/foo:v1.0.0 [./chart-repo;foo:1.0.0]",
            "rancher/hyperkube:v1.28.15-rancher1 rke-system-linux",
            "rancher/hyperkube:v1.28.15-rancher1 rke-system-windows",
            "rancher/kubelet-pause:v0.1.6 rke-system-windows",
            "rancher/mirrored-coredns-coredns:1.10.1 rke-system-linux",
            "rancher/mirrored-coreos-etcd:v3.5.10 rke-system-linux",
            "rancher/mirrored-pause:3.7 rke-system-linux",
            "rancher/rke-tools:v0.1.100 rke-system-linux",
            "rancher/rke-tools:v0.1.100 rke-system-windows",
            "rancher/sys:v0.1.0 [./system-chart-repo;sys:0.1.0]",
        ]
        .join("\n")
    );
    assert_eq!(
        read(root, "out/versions.txt"),
        "K3s, RKE2, RKE versions for Rancher v2.9.1:\n\nK3s Versions:\n\nRKE2 Versions:\n\nRKE Versions:\nv1.28.15-rancher1-1"
    );
    assert_eq!(
        read(root, "out/rke.txt"),
        [
            "rancher/hyperkube:v1.28.15-rancher1",
            "rancher/mirrored-coredns-coredns:1.10.1",
            "rancher/mirrored-coreos-etcd:v3.5.10",
            "rancher/mirrored-pause:3.7",
            "rancher/rke-tools:v0.1.100",
        ]
        .join("\n")
    );
    for empty in ["out/k3s.txt", "out/rke2.txt", "out/rke2w.txt"] {
        assert_eq!(read(root, empty), "", "{empty}");
    }

    // A newer system chart outside the range hides the chart: only the newest counts.
    write(
        root,
        "system-chart-repo/charts/sys/v0.2.0/Chart.yaml",
        "name: sys\nversion: 0.2.0\n",
    );
    write(
        root,
        "system-chart-repo/charts/sys/v0.2.0/questions.yml",
        "rancher_min_version: 2.10.0\n",
    );
    let out = generate(root, &args);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!read(root, "out/linux.txt").contains("rancher/sys"));

    // Rancher 2.12 has no RKE1; and every line takes --registry.
    let mut later = args.clone();
    later[1] = "2.12.0";
    later.extend(["--registry", "my.reg:5000"]);
    let out = generate(root, &later);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        read(root, "out/versions.txt"),
        "K3s, RKE2 versions for Rancher v2.12.0:\n\nK3s Versions:\n\nRKE2 Versions:"
    );
    assert_eq!(read(root, "out/linux.txt"), "");
    let out = generate(
        root,
        &args
            .iter()
            .copied()
            .chain(["--registry", "my.reg:5000"])
            .collect::<Vec<_>>(),
    );
    assert!(out.status.success(), "{}", text(&out));
    for file in [
        "out/linux.txt",
        "out/windows.txt",
        "out/source.txt",
        "out/rke.txt",
    ] {
        let body = read(root, file);
        assert!(
            body.lines().all(|l| l.starts_with("my.reg:5000/rancher/")),
            "{file}: {body}"
        );
    }
}

/// A packaged chart found through the repository's `index.yaml`, a Rancher GC build's
/// webhook, the default file names, and K3s/RKE2 releases whose image lists come from a
/// server of ours standing in for GitHub's release downloads.
#[tokio::test(flavor = "multi_thread")]
async fn releases_and_packaged_charts() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut tgz = Vec::new();
    {
        let gz = flate2::write::GzEncoder::new(&mut tgz, flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        for (name, body) in [
            (
                "rancher-webhook/Chart.yaml",
                "name: rancher-webhook\nversion: 104.0.0+up0.5.0\n",
            ),
            (
                "rancher-webhook/values.yaml",
                "image: {repository: rancher/rancher-webhook, tag: v0.5.0}\n",
            ),
            (
                "rancher-webhook/charts/sub/values.yaml",
                "list:\n  - {repository: rancher/sub, tag: 7}\n",
            ),
        ] {
            let mut header = tar::Header::new_gnu();
            header.set_size(body.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            tar.append_data(&mut header, name, body.as_bytes()).unwrap();
        }
        tar.into_inner().unwrap().finish().unwrap();
    }
    std::fs::create_dir_all(root.join("charts/assets/rancher-webhook")).unwrap();
    std::fs::write(
        root.join("charts/assets/rancher-webhook/rancher-webhook-104.0.0+up0.5.0.tgz"),
        &tgz,
    )
    .unwrap();
    write(
        root,
        "charts/index.yaml",
        "apiVersion: v1\nentries:\n  rancher-webhook:\n  - name: rancher-webhook\n    version: 104.0.0+up0.5.0\n    annotations:\n      catalog.cattle.io/rancher-version: '>= 2.9.0-0 < 2.10.0-0'\n    urls:\n    - assets/rancher-webhook/rancher-webhook-104.0.0+up0.5.0.tgz\n",
    );
    let release = |v: &str| {
        format!(
            r#"{{"version":"{v}","minChannelServerVersion":"v2.9.0-alpha1","maxChannelServerVersion":"v2.9.99"}}"#
        )
    };
    write(
        root,
        "kdm.json",
        &format!(
            r#"{{"k3s": {{"releases": [{}, {}, {}]}}, "rke2": {{"releases": [{}]}}}}"#,
            release("v1.30.4+k3s1"),
            release("v1.30.5+k3s1"),
            release("v1.29.9+k3s1"),
            release("v1.30.5+rke2r1"),
        ),
    );
    let index_yaml = std::fs::read(root.join("charts/index.yaml")).unwrap();
    let mut files: std::collections::HashMap<String, Vec<u8>> = [
        (
            "/k3s-io/k3s/releases/download/v1.30.5+k3s1/k3s-images.txt",
            "docker.io/rancher/mirrored-pause:3.6\ndocker.io/rancher/klipper-lb:v0.4.9\n",
        ),
        (
            "/k3s-io/k3s/releases/download/v1.29.9+k3s1/k3s-images.txt",
            "docker.io/rancher/mirrored-pause:3.6\r\n\r\n",
        ),
        (
            "/rancher/rke2/releases/download/v1.30.5+rke2r1/rke2-images-all.linux-amd64.txt",
            "docker.io/rancher/rke2-runtime:v1.30.5-rke2r1\n",
        ),
        (
            "/rancher/rke2/releases/download/v1.30.5+rke2r1/rke2-images.windows-amd64.txt",
            "docker.io/rancher/rke2-runtime:v1.30.5-rke2r1-windows-amd64\n",
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.as_bytes().to_vec()))
    .collect();
    // The chart repository served too, as an http(s) repository is.
    files.insert("/charts/index.yaml".into(), index_yaml);
    files.insert(
        "/charts/assets/rancher-webhook/rancher-webhook-104.0.0+up0.5.0.tgz".into(),
        tgz.clone(),
    );
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
        let body = files.get(uri.path()).cloned();
        async move {
            match body {
                Some(b) => (axum::http::StatusCode::OK, b),
                None => (
                    axum::http::StatusCode::NOT_FOUND,
                    b"no such release".to_vec(),
                ),
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let root_owned = root.to_owned();
    let run = move |args: Vec<String>| {
        let root = root_owned.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                generate(&root, &args)
            })
            .await
            .unwrap()
        }
    };
    let out = run([
        "--rancher",
        "2.9.1-ent",
        "--kdm",
        "kdm.json",
        "--chart",
        "charts",
        "--release-base",
        &base,
    ]
    .map(String::from)
    .to_vec())
    .await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("Replaced \"rancher/rancher-webhook:v0.5.0\""),
        "{}",
        text(&out)
    );
    assert_eq!(
        read(root, "v2.9.1-ent-images.txt"),
        [
            "cnrancher/rancher-webhook:v0.5.0",
            "rancher/k3s-upgrade:v1.29.9-k3s1",
            "rancher/k3s-upgrade:v1.30.5-k3s1",
            "rancher/klipper-lb:v0.4.9",
            "rancher/mirrored-pause:3.6",
            "rancher/rke2-runtime:v1.30.5-rke2r1",
            "rancher/rke2-upgrade:v1.30.5-rke2r1",
            "rancher/sub:7",
            "rancher/system-agent-installer-k3s:v1.29.9-k3s1",
            "rancher/system-agent-installer-k3s:v1.30.5-k3s1",
            "rancher/system-agent-installer-rke2:v1.30.5-rke2r1",
        ]
        .join("\n")
    );
    assert_eq!(
        read(root, "v2.9.1-ent-versions.txt"),
        "K3s, RKE2 versions for Rancher v2.9.1:\n\nK3s Versions:\nv1.30.5+k3s1\nv1.29.9+k3s1\n\nRKE2 Versions:\nv1.30.5+rke2r1"
    );

    // The same charts from the repository over http: the source names its URL.
    let out = run([
        "--rancher",
        "2.9.1",
        "--chart",
        &format!("{base}/charts"),
        "-o",
        "http.txt",
        "--output-source",
        "http-source.txt",
        "-y",
    ]
    .map(String::from)
    .to_vec())
    .await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        read(root, "http.txt"),
        "rancher/rancher-webhook:v0.5.0\nrancher/sub:7"
    );
    let sources = read(root, "http-source.txt");
    assert!(
        sources.contains(&format!(
            "rancher/sub:7 [{base}/charts;rancher-webhook:104.0.0+up0.5.0]"
        )),
        "{sources}"
    );

    // Credentials in the repository's URL are used, and neither printed nor recorded in
    // the source file.
    let with_password = base.replacen("http://", "http://u:s3cret-pw@", 1);
    let out = run([
        "--rancher",
        "2.9.1",
        "--chart",
        &format!("{with_password}/charts"),
        "-o",
        "http-pw.txt",
        "--output-source",
        "http-pw-source.txt",
        "-y",
    ]
    .map(String::from)
    .to_vec())
    .await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains("s3cret-pw"), "{}", text(&out));
    assert_eq!(read(root, "http-pw.txt"), read(root, "http.txt"));
    let sources = read(root, "http-pw-source.txt");
    let shown = base.replacen("http://", "http://<redacted>@", 1);
    assert!(
        sources.contains(&format!("rancher/sub:7 [{shown}/charts;"))
            && !sources.contains("s3cret-pw"),
        "{sources}"
    );

    // A release whose list is missing fails the run naming the URL and status; a server
    // that never stops answering is cut at the list's bound, in bounded time.
    write(
        root,
        "kdm.json",
        &format!(
            r#"{{"k3s": {{"releases": [{}]}}, "rke2": {{"releases": []}}}}"#,
            release("v1.31.0+k3s1")
        ),
    );
    let out = run([
        "--rancher",
        "2.9.1",
        "--kdm",
        "kdm.json",
        "--release-base",
        &base,
        "-y",
    ]
    .map(String::from)
    .to_vec())
    .await;
    assert!(!out.status.success());
    assert!(
        text(&out).contains("k3s-images.txt") && text(&out).contains("404"),
        "{}",
        text(&out)
    );
    let endless = axum::Router::new().fallback(|| async {
        let chunk = bytes::Bytes::from(vec![b'a'; 64 << 10]);
        axum::body::Body::from_stream(futures_util::stream::repeat_with(move || {
            Ok::<_, std::io::Error>(chunk.clone())
        }))
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hostile = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, endless).await });
    let started = std::time::Instant::now();
    let out = run([
        "--rancher",
        "2.9.1",
        "--kdm",
        "kdm.json",
        "--release-base",
        &hostile,
        "-y",
    ]
    .map(String::from)
    .to_vec())
    .await;
    assert!(!out.status.success());
    assert!(
        text(&out).contains("answered more than 4 MiB"),
        "{}",
        text(&out)
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
    // The same server as the KDM data and as a chart repository: cut at their bounds.
    for (flag, bound) in [("--kdm", "64 MiB"), ("--chart", "16 MiB")] {
        let out = run(
            ["--rancher", "2.9.1", flag, &format!("{hostile}/data"), "-y"]
                .map(String::from)
                .to_vec(),
        )
        .await;
        assert!(!out.status.success(), "{flag}");
        assert!(
            text(&out).contains(&format!("answered more than {bound}")),
            "{flag}: {}",
            text(&out)
        );
    }
}

#[test]
fn bad_input_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fixture(root);
    for (args, says) in [
        (vec!["--kdm", "kdm.json"], "rancher version not specified"),
        (
            vec!["--rancher", "two", "--kdm", "kdm.json"],
            "\"vtwo\" is not a valid semver version",
        ),
        (
            vec![
                "--rancher",
                "2.9.1",
                "--min-kube-version",
                "1.28",
                "--kdm",
                "kdm.json",
            ],
            "invalid min-kube-version provided: 1.28",
        ),
        (
            vec!["--rancher", "2.9.1", "--chart", "oci://example.com/charts"],
            "only paths and http(s) URLs are read",
        ),
        (
            vec!["--rancher", "2.9.1", "--git-base", "file:///nonexistent"],
            "cloning file:///nonexistent/rancher/charts (branch release-v2.9) failed",
        ),
        (
            vec!["--rancher", "2.9.1", "--kdm", "missing.json"],
            "missing.json",
        ),
    ] {
        let out = generate(root, &args);
        assert!(!out.status.success(), "{args:?}");
        assert!(text(&out).contains(says), "{args:?}: {}", text(&out));
    }
    // A repository is read as it is: a symlink in it (out of it, or in a loop) is refused.
    std::os::unix::fs::symlink(root.join("chart-repo"), root.join("chart-repo/charts/loop"))
        .unwrap();
    let out = generate(root, &["--rancher", "2.9.1", "--chart", "chart-repo", "-y"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("symlink found at path"),
        "{}",
        text(&out)
    );
    // A broken KDM document names its file.
    write(root, "bad.json", "{\"k3s\": ");
    let out = generate(root, &["--rancher", "2.9.1", "--kdm", "bad.json", "-y"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("bad.json: KDM data is not valid JSON"),
        "{}",
        text(&out)
    );
}
