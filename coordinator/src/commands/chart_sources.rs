//! Where `archive store chart` finds a chart besides a packaged `.tgz` or a chart
//! directory: a Helm repository (its `index.yaml`, on disk or over http(s)) by name and
//! version, and an OCI registry (`oci://`), whose chart is copied as it is, digests kept.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use futures_util::StreamExt;
use hangar_shared::archive::custom::{HELM_CONFIG, StagedBlobs, StoredFile};
use hangar_shared::archive::{ArchiveImage, ImageSpec};
use hangar_shared::manifest::Manifest;
use hangar_shared::redact::redact_url;
use hangar_shared::registry::Side;
use hangar_shared::store::RegistryPool;
use serde_yaml_ng::Value;
use tokio::io::AsyncWriteExt as _;

/// The largest repository index and packaged chart read: Helm's own limit on a chart is
/// far below the second, and an index of every chart of a large repository is a few MiB.
const MAX_INDEX: u64 = 32 << 20;
pub const MAX_CHART: u64 = 256 << 20;
/// A chart's config is its Chart.yaml as JSON.
const MAX_CONFIG: u64 = 1 << 20;

/// One chart of a repository's index: its version, where its package is, and the
/// package's SHA-256 when the index gives it.
struct Entry {
    version: String,
    url: String,
    digest: Option<String>,
}

/// Where a package a repository's index names really is. A relative name stays under the
/// repository (`..`, `\\` and their encodings resolved first, as a URL parser reads them);
/// an absolute one may point elsewhere, as Helm allows, but never from https down to http.
pub fn package_url(base: &reqwest::Url, written: &str) -> Result<reqwest::Url> {
    let url = base
        .join(written)
        .with_context(|| format!("package URL {written:?}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        bail!("package URL {written:?}: only http(s) is read");
    }
    if base.scheme() == "https" && url.scheme() != "https" {
        bail!(
            "package URL {written:?}: an https repository's package over {}",
            url.scheme()
        );
    }
    let relative = reqwest::Url::parse(written).is_err();
    if relative && (url.origin() != base.origin() || !url.path().starts_with(base.path())) {
        bail!(
            "package URL {written:?} lies outside the repository {} (it resolves to {})",
            redact_url(base.as_str()),
            redact_url(url.as_str())
        );
    }
    Ok(url)
}

/// Checks a package against the digest its index gives (Helm's `digest`, hex SHA-256).
pub fn check_digest(
    expected: Option<&str>,
    got: &hangar_shared::digest::Digest,
    what: &str,
) -> Result<()> {
    if let Some(hex) = expected
        && !hex.is_empty()
        && !got
            .hex()
            .eq_ignore_ascii_case(hex.trim_start_matches("sha256:"))
    {
        bail!(
            "{what}: the package's SHA-256 is {}, the index says {hex}",
            got.hex()
        );
    }
    Ok(())
}

/// Chooses `name` (at `version`, else its newest release) in a repository's index.
fn choose(index: &[u8], name: &str, version: Option<&str>, repo: &str) -> Result<Entry> {
    let doc: Value = serde_yaml_ng::from_slice(index)
        .with_context(|| format!("{repo}: index.yaml is not a Helm repository index"))?;
    let Some(versions) = doc
        .get("entries")
        .and_then(|e| e.get(name))
        .and_then(Value::as_sequence)
    else {
        bail!("{repo}: the repository has no chart {name:?}");
    };
    let mut found: Vec<(semver::Version, Entry)> = versions
        .iter()
        .filter_map(|v| {
            let text = v.get("version").and_then(Value::as_str)?;
            let url = v
                .get("urls")
                .and_then(Value::as_sequence)
                .and_then(|u| u.first())
                .and_then(Value::as_str)?;
            let parsed = semver::Version::parse(text.trim_start_matches('v')).ok()?;
            let digest = v.get("digest").and_then(Value::as_str).map(str::to_owned);
            Some((
                parsed,
                Entry {
                    version: text.to_owned(),
                    url: url.to_owned(),
                    digest,
                },
            ))
        })
        .collect();
    if let Some(wanted) = version {
        return found
            .into_iter()
            .map(|(_, e)| e)
            .find(|e| {
                e.version == wanted
                    || e.version.trim_start_matches('v') == wanted.trim_start_matches('v')
            })
            .with_context(|| format!("{repo}: chart {name:?} has no version {wanted:?}"));
    }
    // As Helm: the newest release; a prerelease only when there is nothing else.
    found.sort_by(|a, b| (a.0.pre.is_empty(), &a.0).cmp(&(b.0.pre.is_empty(), &b.0)));
    found
        .pop()
        .map(|(_, e)| e)
        .with_context(|| format!("{repo}: chart {name:?} has no version with a package"))
}

/// A chart from the Helm repository in the local directory `repo`: its package, inside it
/// (symbolic links resolved: one leading out of the repository is refused), and the
/// SHA-256 the index gives it, for [`check_digest`] once the package is hashed.
pub fn from_local_repository(
    repo: &Path,
    name: &str,
    version: Option<&str>,
) -> Result<(PathBuf, Option<String>)> {
    let root = std::fs::canonicalize(repo).with_context(|| repo.display().to_string())?;
    let inside = |p: &Path, what: &str| -> Result<PathBuf> {
        let real = std::fs::canonicalize(p).with_context(|| format!("{what} {}", p.display()))?;
        if !real.starts_with(&root) {
            bail!(
                "{}: {what} {} lies outside the repository",
                repo.display(),
                p.display()
            );
        }
        Ok(real)
    };
    let index = inside(&repo.join("index.yaml"), "index")?;
    let bytes = super::bounded::read_file(&index, MAX_INDEX)?;
    let entry = choose(&bytes, name, version, &repo.display().to_string())?;
    let rel = Path::new(&entry.url);
    if entry.url.contains("://")
        || rel.is_absolute()
        || rel
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        bail!(
            "{}: chart {name:?} {} lies outside the repository ({})",
            repo.display(),
            entry.version,
            entry.url
        );
    }
    Ok((inside(&repo.join(rel), "package")?, entry.digest))
}

/// A chart from the Helm repository at `url` (`index.yaml` under it), downloaded to `to`;
/// the SHA-256 the index gives it, for [`check_digest`] once the package is hashed.
pub async fn from_http_repository(
    http: &reqwest::Client,
    url: &str,
    name: &str,
    version: Option<&str>,
    to: &Path,
) -> Result<Option<String>> {
    let shown = redact_url(url);
    let base = reqwest::Url::parse(&format!("{}/", url.trim_end_matches('/')))
        .with_context(|| format!("{shown} is not a URL"))?;
    let index_url = base.join("index.yaml")?;
    let index = super::bounded::get(http, index_url.as_str(), None, MAX_INDEX).await?;
    let entry = choose(&index, name, version, &shown)?;
    let chart = package_url(&base, &entry.url).with_context(|| shown.clone())?;
    super::bounded::get(http, chart.as_str(), Some(to), MAX_CHART).await?;
    Ok(entry.digest)
}

/// A packaged chart at `url`, into `to`, up to [`MAX_CHART`] bytes.
pub async fn download_chart(http: &reqwest::Client, url: &str, to: &Path) -> Result<()> {
    super::bounded::get(http, url, Some(to), MAX_CHART)
        .await
        .map(drop)
}

/// The chart at `oci://HOST/PATH` (`/NAME` added when `name` is given and the path does
/// not end in it), at `version` (Helm writes `+` as `_` in tags) or its newest version,
/// copied as it is: manifest, config and layers, digests kept. Its blobs are staged in
/// `work`.
pub async fn from_oci(
    pool: &RegistryPool,
    url: &str,
    name: Option<&str>,
    version: Option<&str>,
    work: &Path,
) -> Result<StoredFile> {
    let rest = url.trim_start_matches("oci://").trim_end_matches('/');
    let Some((host, path)) = rest.split_once('/') else {
        bail!("{url}: an OCI chart is oci://REGISTRY/REPOSITORY[/NAME]");
    };
    let repo = match name {
        Some(n) if path.rsplit('/').next() != Some(n) => format!("{path}/{n}"),
        _ => path.to_owned(),
    };
    let registry = pool.registry(host).await?;
    let tag = match version {
        Some(v) => v.replace('+', "_"),
        None => {
            let Some(tags) = registry.tags_upto(&repo, 1000).await? else {
                bail!("{url}: {host}/{repo} has more tags than one page: give the version (-v)");
            };
            let newest = tags
                .iter()
                .filter_map(|t| {
                    semver::Version::parse(&t.replace('_', "+"))
                        .ok()
                        .map(|v| (v, t))
                })
                .max_by(|a, b| (a.0.pre.is_empty(), &a.0).cmp(&(b.0.pre.is_empty(), &b.0)));
            match newest {
                Some((_, t)) => t.clone(),
                None => {
                    bail!("{url}: {host}/{repo} has no chart version (no semantic-version tag)")
                }
            }
        }
    };
    let Some(manifest) = registry.manifest_opt(&repo, &tag, Side::Source).await? else {
        bail!("{url}: {host}/{repo}:{tag} not found");
    };
    let Manifest::Image(parsed) = manifest.parse()? else {
        bail!("{url}: {host}/{repo}:{tag} is not a Helm chart (not an image manifest)");
    };
    if parsed.config.media_type != HELM_CONFIG {
        bail!(
            "{url}: {host}/{repo}:{tag} is not a Helm chart (its config is {})",
            parsed.config.media_type
        );
    }
    if parsed.config.size > MAX_CONFIG {
        bail!(
            "{url}: the chart's config claims {} bytes",
            parsed.config.size
        );
    }
    // A chart is its package and, at most, its provenance file.
    // Sizes are the registry's word: summed without overflow.
    let total = parsed
        .layers
        .iter()
        .fold(0u64, |sum, l| sum.saturating_add(l.size));
    if parsed.layers.len() > 2 || total > MAX_CHART {
        bail!(
            "{url}: {} layers of {total} bytes is not a Helm chart's (its package and provenance)",
            parsed.layers.len()
        );
    }
    let mut blobs = StagedBlobs::default();
    blobs.memory(manifest.digest.clone(), manifest.bytes.clone());
    for (n, desc) in parsed.blobs().enumerate() {
        if desc.size > MAX_CHART {
            bail!("{url}: blob {} claims {} bytes", desc.digest, desc.size);
        }
        // Verified against its digest and size as it streams.
        let mut stream = registry.blob_stream(&repo, desc, None).await?;
        let path = work.join(format!("oci-{n}-{}", desc.digest.hex()));
        let mut file = tokio::fs::File::create(&path).await?;
        while let Some(chunk) = stream.next().await {
            file.write_all(&chunk?).await?;
        }
        file.flush().await?;
        blobs.file(desc.digest.clone(), path, desc.size);
    }
    let annotations = serde_json::from_slice::<serde_json::Value>(&manifest.bytes)
        .ok()
        .and_then(|m| serde_json::from_value(m["annotations"].clone()).ok())
        .unwrap_or_default();
    let spec = ImageSpec {
        media_type: manifest.media_type.clone(),
        layers: parsed.layers.iter().map(|l| l.digest.clone()).collect(),
        config: Some(parsed.config.digest.clone()),
        annotations,
        ..ImageSpec::bare(manifest.digest.clone())
    };
    Ok(StoredFile {
        // No arch and no OS: a custom entry, which `load` pushes at its tag.
        image: ArchiveImage {
            source: format!("{host}/{repo}"),
            tag,
            arch_list: Vec::new(),
            os_list: Vec::new(),
            images: vec![spec],
        },
        blobs,
    })
}

#[cfg(test)]
mod tests {
    use super::package_url;

    #[test]
    fn a_package_named_relative_to_its_repository_stays_under_it() {
        let base = reqwest::Url::parse("https://charts.example/stable/").expect("url");
        let ok = package_url(&base, "assets/a/a-1.0.0.tgz").expect("inside");
        assert_eq!(
            ok.as_str(),
            "https://charts.example/stable/assets/a/a-1.0.0.tgz"
        );
        for escape in [
            "../other/a.tgz",
            "..\\..\\x.tgz",
            "%2e%2e/x.tgz",
            "\\\\evil.example\\x.tgz",
            "//evil.example/x.tgz",
            "http:\\\\evil.example\\x.tgz",
        ] {
            assert!(package_url(&base, escape).is_err(), "{escape}");
        }
        // Named in full, a package may live elsewhere (as Helm allows), but not over a
        // weaker scheme than its index.
        assert!(package_url(&base, "https://github.example/r/a-1.0.0.tgz").is_ok());
        assert!(package_url(&base, "http://github.example/r/a-1.0.0.tgz").is_err());
        assert!(package_url(&base, "file:///etc/passwd").is_err());
    }
}
