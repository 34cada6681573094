//! `generate-list`: the image list of a Rancher version, from its KDM data (K3s, RKE2 and
//! RKE1 images) and its chart repositories, written as Hangar writes it: sorted lists with
//! no trailing newline, sources per image, the supported Kubernetes versions, and one list
//! per distribution.
//!
//! Deliberate differences from Hangar: absolute paths are paths (Hangar takes anything
//! starting with `/` for a URL), a chart repository may be an http(s) URL (its
//! `index.yaml`, and the packages chosen from it; Hangar refuses URLs), release image lists are downloaded with the usual
//! certificate checks (Hangar inverts `--tls-verify` there) and from `--release-base` when
//! given (a mirror of GitHub's release downloads, for sites that cannot reach GitHub), a
//! numeric tag is written as its number, an image a Rancher GC build renames keeps its
//! sources, and `--registry` never swallows a one-segment image with a tag. Given only
//! `--rancher`, Rancher's repositories are cloned with the `git` command (Hangar uses
//! go-git) from GitHub or `--git-base`, and its KDM data read from `--kdm-base`
//! (`rancher_sources`); a GC build's are not guessed.

mod charts;
mod constraint;
mod kdm;
mod rancher_sources;
mod version;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use hangar_shared::redact::redact_location;

use super::bounded::Downloads;
use crate::cli::GenerateListArgs;
use crate::console::Console;
use kdm::{Distro, Kdm};

/// The largest KDM document and release image list read (the real ones are a few MiB and
/// a few KiB): a server answering without end cannot take the memory.
const MAX_KDM: u64 = 64 << 20;
const MAX_IMAGE_LIST: u64 = 4 << 20;

/// The main lists images go to.
#[derive(Clone, Copy)]
pub enum Lists {
    Linux,
    Windows,
}

/// What the sources yield: images with where each came from, per-distribution lists and
/// the Kubernetes versions supported.
#[derive(Default)]
pub struct Found {
    linux: BTreeMap<String, BTreeSet<String>>,
    windows: BTreeMap<String, BTreeSet<String>>,
    rke1_linux: BTreeSet<String>,
    k3s_linux: BTreeSet<String>,
    rke2_linux: BTreeSet<String>,
    rke2_windows: BTreeSet<String>,
    rke1_versions: BTreeSet<String>,
    k3s_versions: Vec<String>,
    rke2_versions: Vec<String>,
}

impl Found {
    pub fn add(&mut self, list: Lists, image: &str, source: &str) {
        let set = match list {
            Lists::Linux => &mut self.linux,
            Lists::Windows => &mut self.windows,
        };
        set.entry(image.to_owned())
            .or_default()
            .insert(source.to_owned());
    }
}

pub async fn run(args: &GenerateListArgs, console: &Console) -> Result<()> {
    // Ctrl-C ends the run as a whole, so that what it holds (a clone's git, temporary
    // directories) is dropped and cleaned up: git runs in a process group of its own and no
    // longer hears the terminal.
    tokio::select! {
        done = generate(args, console) => done,
        _ = tokio::signal::ctrl_c() => bail!("interrupted"),
    }
}

async fn generate(args: &GenerateListArgs, console: &Console) -> Result<()> {
    let Some(given) = args.rancher.as_deref().filter(|r| !r.trim().is_empty()) else {
        bail!("rancher version not specified, use '--rancher' to specify the rancher version");
    };
    let named = match given.trim().starts_with('v') {
        true => given.trim().to_owned(),
        false => format!("v{}", given.trim()),
    };
    let gc = named.contains("-ent");
    let stripped = named.split("-ent").next().unwrap_or(&named).to_owned();
    let Some(rancher) = version::parse(&stripped).filter(|_| stripped.starts_with('v')) else {
        bail!("{stripped:?} is not a valid semver version");
    };
    if gc {
        console.info(None, "Set to Rancher Prime Manager GC version");
    }
    if let Some(min) = &args.min_kube_version
        && !min.is_empty()
        && version::parse(min)
            .filter(|_| min.starts_with('v'))
            .is_none()
    {
        bail!("invalid min-kube-version provided: {min}");
    }
    let within = args
        .timeout
        .as_deref()
        .map(|t| humantime::parse_duration(t).with_context(|| format!("--timeout {t:?}")))
        .transpose()?;
    let http = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(30))
        // A body that stops moving; the whole download is bounded by `Downloads`.
        .read_timeout(std::time::Duration::from_secs(120))
        .danger_accept_invalid_certs(!args.tls_verify)
        .build()?;
    let http = super::bounded::Downloads::new(http, within);

    // (how sources name it, where it was cloned, its kind)
    let mut repos: Vec<(String, Option<PathBuf>, charts::Kind)> = Vec::new();
    let mut kdm = args.kdm.clone();
    let _clones = if args.kdm.is_none() && args.charts.is_empty() && args.system_charts.is_empty() {
        let sources =
            rancher_sources::for_version(&rancher, gc, args.dev, &args.git_base, &args.kdm_base)?;
        let dir = tempfile::Builder::new()
            .prefix("hangar-charts-")
            .tempdir()
            .context("a directory to clone chart repositories into")?;
        let all = sources
            .charts
            .iter()
            .map(|r| (r, charts::Kind::Default))
            .chain(
                sources
                    .system_charts
                    .iter()
                    .map(|r| (r, charts::Kind::System)),
            );
        for (n, ((url, branch), kind)) in all.enumerate() {
            console.info(
                None,
                format!("Cloning {} (branch {branch})", redact_location(url)),
            );
            let into = dir.path().join(n.to_string());
            rancher_sources::clone(url, branch, &into, within).await?;
            repos.push((url.clone(), Some(into), kind));
        }
        console.info(
            None,
            format!("Reading KDM data from {}", redact_location(&sources.kdm)),
        );
        kdm = Some(sources.kdm);
        Some(dir)
    } else {
        for (given, kind) in [
            (&args.charts, charts::Kind::Default),
            (&args.system_charts, charts::Kind::System),
        ] {
            for repo in given
                .iter()
                .flat_map(|r| r.split(','))
                .filter(|r| !r.is_empty())
            {
                repos.push((repo.to_owned(), None, kind));
            }
        }
        None
    };

    let mut found = Found::default();
    for (repo, cloned, kind) in &repos {
        // Named without a URL's credentials in messages and in the sources it records.
        let shown = redact_location(repo);
        let source = match cloned {
            Some(dir) => charts::Repo::Dir(dir),
            None if repo.starts_with("http://") || repo.starts_with("https://") => {
                charts::Repo::Http {
                    url: repo,
                    http: &http,
                }
            }
            None if repo.contains("://") => {
                bail!("chart repository {shown}: only paths and http(s) URLs are read")
            }
            None => charts::Repo::Dir(Path::new(repo)),
        };
        charts::collect(source, &shown, *kind, &rancher, &mut found, console)
            .await
            .with_context(|| format!("chart repository {shown}"))?;
    }
    if let Some(location) = &kdm {
        let bytes = read_source(&http, location, MAX_KDM).await?;
        let data = Kdm::parse(&bytes, &redact_location(location))?;
        for distro in [Distro::K3s, Distro::Rke2] {
            let versions = data.releases(distro, &rancher, args.kdm_remove_deprecated)?;
            if versions.is_empty() {
                console.info(
                    None,
                    format!(
                        "skipping {} image generation since no compatible releases were found for version: {stripped}",
                        distro.name()
                    ),
                );
            }
            release_images(&http, args, distro, &versions, &mut found).await?;
            match distro {
                Distro::K3s => found.k3s_versions = versions,
                Distro::Rke2 => found.rke2_versions = versions,
            }
        }
        if version::cmp(&rancher, &semver::Version::parse("2.12.0-0")?).is_lt() {
            data.rke1(&rancher, &mut found);
        }
    }
    if gc && version::cmp(&rancher, &semver::Version::new(2, 7, 2)).is_gt() {
        rename_webhook(&mut found, console);
    }
    write_outputs(args, &named, &stripped, found, console)
}

/// A K3s or RKE2 release's images: its upgrade and installer images, and its image lists.
async fn release_images(
    http: &Downloads,
    args: &GenerateListArgs,
    distro: Distro,
    versions: &[String],
    found: &mut Found,
) -> Result<()> {
    let name = distro.name();
    for ver in versions {
        let tag = ver.replace('+', "-");
        let (upgrade, release) = (
            format!("[{name}-upgrade(rancher)]"),
            format!("[{name}-release(rancher)]"),
        );
        let mut linux = vec![
            (format!("rancher/{name}-upgrade:{tag}"), upgrade),
            (
                format!("rancher/system-agent-installer-{name}:{tag}"),
                release.clone(),
            ),
        ];
        let (linux_list, windows_list) = distro.image_lists(&args.release_base, ver);
        let text = fetch_text(http, &linux_list).await?;
        linux.extend(
            kdm::list_lines(&text)
                .into_iter()
                .map(|i| (i, release.clone())),
        );
        for (image, source) in linux {
            found.add(Lists::Linux, &image, &source);
            match distro {
                Distro::K3s => found.k3s_linux.insert(image),
                Distro::Rke2 => found.rke2_linux.insert(image),
            };
        }
        if let Some(url) = windows_list {
            for image in kdm::list_lines(&fetch_text(http, &url).await?) {
                found.add(Lists::Windows, &image, &release);
                found.rke2_windows.insert(image);
            }
        }
    }
    Ok(())
}

/// A local file, or an http(s) URL, read whole up to `cap` bytes.
async fn read_source(http: &Downloads, location: &str, cap: u64) -> Result<Vec<u8>> {
    if location.starts_with("http://") || location.starts_with("https://") {
        return http.get(location, None, cap).await;
    }
    super::bounded::read_file(Path::new(location), cap)
}

async fn fetch_text(http: &Downloads, url: &str) -> Result<String> {
    String::from_utf8(http.get(url, None, MAX_IMAGE_LIST).await?)
        .with_context(|| format!("{} is not text", redact_location(url)))
}

/// A Rancher GC build runs its own webhook: `rancher/rancher-webhook` becomes
/// `cnrancher/rancher-webhook` in the Linux list.
fn rename_webhook(found: &mut Found, console: &Console) {
    let renames: Vec<String> = found
        .linux
        .keys()
        .filter(|i| {
            let parts: Vec<&str> = i.split('/').collect();
            parts.len() >= 2
                && parts[parts.len() - 2] == "rancher"
                && parts[parts.len() - 1].split(':').next() == Some("rancher-webhook")
        })
        .cloned()
        .collect();
    for old in renames {
        let new = old.replacen("rancher/rancher-webhook", "cnrancher/rancher-webhook", 1);
        if let Some(sources) = found.linux.remove(&old) {
            console.info(None, format!("Replaced {old:?} to {new:?}"));
            found.linux.entry(new).or_default().extend(sources);
        }
    }
}

/// `--registry`: a first segment naming a registry is replaced, otherwise the registry is
/// put in front.
fn with_registry(image: &str, registry: &str) -> String {
    if registry.is_empty() {
        return image.to_owned();
    }
    let parts: Vec<&str> = image.split('/').filter(|p| !p.is_empty()).collect();
    match parts.as_slice() {
        [first, rest @ ..]
            if !rest.is_empty() && (first.contains(['.', ':']) || *first == "localhost") =>
        {
            format!("{registry}/{}", rest.join("/"))
        }
        _ => format!("{registry}/{}", parts.join("/")),
    }
}

fn write_outputs(
    args: &GenerateListArgs,
    named: &str,
    stripped: &str,
    found: Found,
    console: &Console,
) -> Result<()> {
    let reg = |i: &String| with_registry(i, &args.registry);
    let sorted = |set: &mut dyn Iterator<Item = String>| {
        let mut v: Vec<String> = set.collect();
        v.sort();
        v
    };
    let linux = sorted(&mut found.linux.keys().map(reg));
    let windows = sorted(&mut found.windows.keys().map(reg));
    let mut sources: Vec<String> = found
        .linux
        .iter()
        .chain(found.windows.iter())
        .map(|(image, from)| {
            format!(
                "{} {}",
                reg(image),
                from.iter().cloned().collect::<Vec<_>>().join(",")
            )
        })
        .collect();
    sources.sort();
    let mut versions = vec![
        match found.rke1_versions.is_empty() {
            true => format!("K3s, RKE2 versions for Rancher {stripped}:"),
            false => format!("K3s, RKE2, RKE versions for Rancher {stripped}:"),
        },
        String::new(),
        "K3s Versions:".into(),
    ];
    versions.extend(found.k3s_versions.iter().cloned());
    versions.extend([String::new(), "RKE2 Versions:".into()]);
    versions.extend(found.rke2_versions.iter().cloned());
    if !found.rke1_versions.is_empty() {
        let mut rke: Vec<&String> = found.rke1_versions.iter().collect();
        rke.sort_by(|a, b| match (version::parse(a), version::parse(b)) {
            (Some(x), Some(y)) => version::cmp(&y, &x),
            _ => b.cmp(a),
        });
        versions.extend([String::new(), "RKE Versions:".into()]);
        versions.extend(rke.into_iter().cloned());
    }
    let default = |given: &Option<PathBuf>, suffix: &str| {
        given
            .clone()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from(format!("{named}-{suffix}")))
    };
    let optional = |given: &Option<PathBuf>| given.clone().filter(|p| !p.as_os_str().is_empty());
    let outputs: Vec<(Option<PathBuf>, Vec<String>, &str)> = vec![
        (
            Some(default(&args.output, "images.txt")),
            linux,
            "Rancher linux images",
        ),
        (
            optional(&args.output_windows),
            windows,
            "Rancher windows images",
        ),
        (
            optional(&args.output_source),
            sources,
            "Rancher images sources",
        ),
        (
            Some(default(&args.output_versions, "versions.txt")),
            versions,
            "Rancher supported versions",
        ),
        (
            optional(&args.rke_images),
            sorted(&mut found.rke1_linux.iter().map(reg)),
            "RKE1 Linux images",
        ),
        (
            optional(&args.k3s_images),
            sorted(&mut found.k3s_linux.iter().map(reg)),
            "K3s Linux images",
        ),
        (
            optional(&args.rke2_images),
            sorted(&mut found.rke2_linux.iter().map(reg)),
            "RKE2 Linux images",
        ),
        (
            optional(&args.rke2_windows_images),
            sorted(&mut found.rke2_windows.iter().map(reg)),
            "RKE2 Windows images",
        ),
    ];
    for (path, lines, what) in outputs {
        let Some(path) = path else { continue };
        let shown = path.display().to_string();
        super::may_overwrite(&shown, args.yes)
            .map_err(|e| anyhow::anyhow!("failed to write file {shown:?}: {e}"))?;
        hangar_shared::atomic::write(&path, lines.join("\n").as_bytes(), Some(0o644))
            .with_context(|| format!("failed to write file {shown:?}"))?;
        console.info(None, format!("Exported {what} into {shown}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::with_registry;

    #[test]
    fn a_registry_replaces_a_registry_and_prefixes_a_project() {
        assert_eq!(
            with_registry("rancher/foo:v1", "r:5000"),
            "r:5000/rancher/foo:v1"
        );
        assert_eq!(
            with_registry("docker.io/rancher/foo:v1", "r"),
            "r/rancher/foo:v1"
        );
        assert_eq!(with_registry("quay.io/a/b:1", "r"), "r/a/b:1");
        assert_eq!(with_registry("nginx:1.0", "r"), "r/nginx:1.0");
        assert_eq!(with_registry("nginx", ""), "nginx");
    }
}
