//! `generate-list`'s fixture: KDM data and chart repositories laid out as Rancher's are,
//! and running the command on them.

use std::path::Path;
use std::process::{Command, Output};

pub fn write(root: &Path, rel: &str, body: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, body).unwrap();
}

/// `hangar-coord generate-list ARGS` run from `dir`, so relative repository paths are
/// named in sources as given.
pub fn generate(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hangar-coord"))
        .arg("generate-list")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("hangar-coord generate-list")
}

pub const KDM: &str = r#"{
  "K8sVersionRKESystemImages": {
    "v1.28.15-rancher1-1": {"etcd":"rancher/mirrored-coreos-etcd:v3.5.10","alpine":"rancher/rke-tools:v0.1.100",
      "nginxProxy":"rancher/rke-tools:v0.1.100","certDownloader":"rancher/rke-tools:v0.1.100",
      "kubernetesServicesSidecar":"rancher/rke-tools:v0.1.100","kubernetes":"rancher/hyperkube:v1.28.15-rancher1",
      "coredns":"rancher/mirrored-coredns-coredns:1.10.1","weaveNode":"weaveworks/weave-kube:2.8.1",
      "podInfraContainer":"rancher/mirrored-pause:3.7","windowsPodInfraContainer":"rancher/kubelet-pause:v0.1.6"},
    "v1.28.14-rancher1-1": {"kubernetes":"rancher/hyperkube:v1.28.14-rancher1"},
    "v1.26.15-rancher1-1": {"kubernetes":"rancher/hyperkube:v1.26.15-rancher1"}
  },
  "K8sVersionServiceOptions": {"v1.28": {}, "v1.26": {}},
  "K8sVersionWindowsServiceOptions": {"v1.28": {}},
  "K8sVersionInfo": {"v1.26": {"maxRancherVersion": "v2.8.99"}},
  "k3s":  {"releases": [{"version":"v1.27.16+k3s1","minChannelServerVersion":"v2.7.0-alpha1","maxChannelServerVersion":"v2.8.99"}]},
  "rke2": {"releases": []}
}"#;

/// The fixture: KDM data, a chart repository without an index (charts found by their
/// `Chart.yaml`) and a system-chart repository with `questions.yml` ranges.
pub fn fixture(root: &Path) {
    write(root, "kdm.json", KDM);
    let chart = |dir: &str, name: &str, version: &str, range: &str| {
        format!(
            "apiVersion: v2\nname: {name}\nversion: {version}\nannotations:\n  catalog.cattle.io/rancher-version: \"{range}\"\n"
        )
        .pipe(|body| write(root, &format!("{dir}/Chart.yaml"), &body))
    };
    chart(
        "chart-repo/charts/foo/1.0.0",
        "foo",
        "1.0.0",
        ">= 2.9.0-0 < 2.10.0-0",
    );
    write(
        root,
        "chart-repo/charts/foo/1.0.0/values.yaml",
        "image: {repository: rancher/foo, tag: v1.0.0}\nwindows:\n  image: {repository: rancher/foo-windows, tag: v1.0.0, os: windows}\nboth: {repository: rancher/bar, tag: \"1.2\", os: \"linux,windows\"}\nempty: {repository: rancher/empty-tag, tag: \"\"}\n",
    );
    chart(
        "chart-repo/charts/foo/0.9.0",
        "foo",
        "0.9.0",
        ">= 2.9.0-0 < 2.10.0-0",
    );
    write(
        root,
        "chart-repo/charts/foo/0.9.0/values.yaml",
        "image: {repository: rancher/foo, tag: v0.9.0}\n",
    );
    chart(
        "chart-repo/charts/old/2.0.0",
        "old",
        "2.0.0",
        ">= 2.7.0-0 < 2.8.0-0",
    );
    write(
        root,
        "chart-repo/charts/old/2.0.0/values.yaml",
        "image: {repository: rancher/old, tag: v2}\n",
    );
    write(
        root,
        "system-chart-repo/charts/sys/v0.1.0/Chart.yaml",
        "name: sys\nversion: 0.1.0\n",
    );
    write(
        root,
        "system-chart-repo/charts/sys/v0.1.0/questions.yml",
        "rancher_min_version: 2.9.0\nrancher_max_version: 2.9.99\n",
    );
    write(
        root,
        "system-chart-repo/charts/sys/v0.1.0/values.yaml",
        "image: {repository: rancher/sys, tag: v0.1.0}\n",
    );
    std::fs::create_dir_all(root.join("out")).unwrap();
}

pub trait Pipe: Sized {
    fn pipe<R>(self, f: impl FnOnce(Self) -> R) -> R {
        f(self)
    }
}
impl<T> Pipe for T {}

pub fn read(root: &Path, rel: &str) -> String {
    std::fs::read_to_string(root.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

pub const ALL_OUTPUTS: [&str; 16] = [
    "-o",
    "out/linux.txt",
    "--output-windows",
    "out/windows.txt",
    "--output-source",
    "out/source.txt",
    "--output-versions",
    "out/versions.txt",
    "--rke-images",
    "out/rke.txt",
    "--k3s-images",
    "out/k3s.txt",
    "--rke2-images",
    "out/rke2.txt",
    "--rke2-windows-images",
    "out/rke2w.txt",
];

/// The Linux images the fixture gives for Rancher v2.9, sorted as Hangar writes them.
pub const FIXTURE_LINUX: [&str; 9] = [
    "rancher/bar:1.2",
    "rancher/empty-tag:latest",
    "rancher/foo:v1.0.0",
    "rancher/hyperkube:v1.28.15-rancher1",
    "rancher/mirrored-coredns-coredns:1.10.1",
    "rancher/mirrored-coreos-etcd:v3.5.10",
    "rancher/mirrored-pause:3.7",
    "rancher/rke-tools:v0.1.100",
    "rancher/sys:v0.1.0",
];
