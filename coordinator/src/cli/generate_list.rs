//! `generate-list`: Hangar's flags and defaults.

use std::path::PathBuf;

use clap::Args;

#[derive(Args, Debug)]
pub struct GenerateListArgs {
    /// Rancher version (`v` added when missing; a `-ent` suffix means a Rancher Prime
    /// Manager GC build).
    #[arg(long = "rancher")]
    pub rancher: Option<String>,
    /// Linux image list (default: RANCHER-images.txt).
    #[arg(short = 'o', long = "output")]
    pub output: Option<PathBuf>,
    /// Windows image list.
    #[arg(long = "output-windows")]
    pub output_windows: Option<PathBuf>,
    /// `IMAGE SOURCE,…` lines: where each image was found.
    #[arg(long = "output-source")]
    pub output_source: Option<PathBuf>,
    /// K3s, RKE2 and RKE versions supported (default: RANCHER-versions.txt).
    #[arg(long = "output-versions")]
    pub output_versions: Option<PathBuf>,
    /// RKE1 Linux images from KDM.
    #[arg(long = "rke-images")]
    pub rke_images: Option<PathBuf>,
    /// RKE2 Linux images from KDM.
    #[arg(long = "rke2-images")]
    pub rke2_images: Option<PathBuf>,
    /// RKE2 Windows images from KDM.
    #[arg(long = "rke2-windows-images")]
    pub rke2_windows_images: Option<PathBuf>,
    /// K3s Linux images from KDM.
    #[arg(long = "k3s-images")]
    pub k3s_images: Option<PathBuf>,
    /// KDM data.json: a path, or an http(s) URL.
    #[arg(long = "kdm")]
    pub kdm: Option<String>,
    /// Chart repository: a cloned directory, or an http(s) URL serving its index.yaml
    /// (repeatable, or comma-separated).
    #[arg(long = "chart")]
    pub charts: Vec<String>,
    /// System-chart repository: a cloned directory, or an http(s) URL (repeatable, or
    /// comma-separated).
    #[arg(long = "system-chart")]
    pub system_charts: Vec<String>,
    /// Dev branches instead of release branches (when Rancher's repositories are read:
    /// no --kdm, --chart or --system-chart given).
    #[arg(long = "dev")]
    pub dev: bool,
    /// Where Rancher's chart repositories are cloned from when no source is given
    /// (`BASE/rancher/charts`, `BASE/rancher/system-charts`): GitHub, or a mirror of it.
    #[arg(long = "git-base", default_value = "https://github.com")]
    pub git_base: String,
    /// The longest one download (KDM data, a chart index or package, a release image list)
    /// or one git clone may take (default: 10m a download, 30m a clone).
    #[arg(long = "timeout")]
    pub timeout: Option<String>,
    /// Where Rancher's KDM data is read from when no source is given
    /// (`BASE/release-vX.Y/data.json`): Rancher's release site, a mirror of it, or a
    /// directory laid out the same way.
    #[arg(
        long = "kdm-base",
        default_value = "https://releases.rancher.com/kontainer-driver-metadata"
    )]
    pub kdm_base: String,
    /// Keep only the newest patch of each K3s/RKE2 minor.
    #[arg(long = "kdm-remove-deprecated", default_value_t = true, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub kdm_remove_deprecated: bool,
    /// Minimum RKE1 Kubernetes version (checked, and without effect, as in Hangar v1.9.3+).
    #[arg(long = "min-kube-version")]
    pub min_kube_version: Option<String>,
    /// Registry put on every image written.
    #[arg(long = "registry", default_value = "")]
    pub registry: String,
    /// Where K3s and RKE2 release image lists are downloaded from: GitHub, or a mirror of
    /// its release downloads (`BASE/k3s-io/k3s/releases/download/VERSION/k3s-images.txt`).
    #[arg(long = "release-base", default_value = "https://github.com")]
    pub release_base: String,
    /// Check the TLS certificates of the KDM URL and the release downloads.
    #[arg(long = "tls-verify", default_value_t = true, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub tls_verify: bool,
    /// Overwrite output files without asking.
    #[arg(short = 'y', long = "auto-yes")]
    pub yes: bool,
}
