//! `archive store file`, `archive store chart` and `archive export file` (Hangar v1.9.2):
//! custom files and Helm charts kept in an archive as single-layer OCI images. Storing writes a new archive (the old entries, then
//! the files) renamed over the old one, like `sync`: an interrupted store leaves the archive
//! as it was, where Hangar's in-place update could leave it broken.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context as _, Result, bail};
use futures_util::StreamExt;
use hangar_shared::archive::ArchiveReader;
use hangar_shared::archive::custom::{
    self, FILE_LAYER, FileManifest, HELM_CHART_LAYER, HELM_PROV_LAYER, StagedBlobs,
};
use hangar_shared::archive::writer::ArchiveWriter;
use hangar_shared::manifest::OCI_MANIFEST;
use tokio::io::AsyncWriteExt;

use crate::cli::{ExportFileArgs, StoreChartArgs, StoreFileArgs};
use crate::console::Console;

pub async fn store_files(args: &StoreFileArgs, console: &Console) -> Result<()> {
    let archive = args.file.as_str();
    let base = open_existing(archive).await?;
    let staging = tempfile::tempdir().context("a directory for downloads")?;
    let max_size = super::parse_size(&args.max_size).context("--max-size")?;
    let within = humantime::parse_duration(&args.timeout)
        .with_context(|| format!("--timeout {:?}", args.timeout))?;
    let downloads = super::bounded::Downloads::new(http_client(args.tls_verify)?, Some(within));
    let created = chrono::Local::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut blobs = StagedBlobs::default();
    let mut images = Vec::new();
    for (n, url) in args.urls.iter().enumerate() {
        // What is shown and recorded: a URL's credentials stay out of both.
        let shown = hangar_shared::redact::redact_location(url);
        let name = Path::new(shown.trim_end_matches('/'))
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .filter(|n| !n.is_empty())
            .with_context(|| format!("failed to add {shown:?}: it names no file"))?;
        let (path, (digest, size)) = if url.starts_with("oci://") {
            bail!("failed to add {shown:?}: file protocol does not support Helm OCI image");
        } else if url.starts_with("http://") || url.starts_with("https://") {
            let to = staging.path().join(n.to_string());
            downloads
                .get(url, Some(&to), max_size)
                .await
                .with_context(|| {
                    format!(
                        "failed to add {shown:?} (--max-size {}, --timeout {})",
                        args.max_size, args.timeout
                    )
                })?;
            let got = custom::hash_file(&to)
                .await
                .with_context(|| format!("failed to add {shown:?}"))?;
            (to, got)
        } else {
            let path = Path::new(url);
            match std::fs::metadata(path) {
                Ok(m) if m.is_dir() => bail!("failed to add {shown:?}: {shown} is a directory"),
                Ok(_) => {}
                Err(e) => bail!("failed to add {shown:?}: invalid URL {shown:?}: {e}"),
            }
            let got = custom::hash_file(path)
                .await
                .with_context(|| format!("failed to add {shown:?}"))?;
            (path.to_owned(), got)
        };
        let stored = custom::store_file(&name, &shown, (digest, size, path), &created)?;
        blobs.extend(stored.blobs);
        images.push(stored.image);
    }
    write_stored(archive, base, blobs, &images, console).await?;
    for image in &images {
        console.info(None, format!("Add OCI File [{}]", image.source));
    }
    Ok(())
}

/// A new archive: `base`'s entries (less those `images` replace), then `images`.
async fn write_stored(
    archive: &str,
    base: Arc<ArchiveReader>,
    blobs: StagedBlobs,
    images: &[hangar_shared::archive::ArchiveImage],
    console: &Console,
) -> Result<()> {
    let mut writer = ArchiveWriter::create(archive, Some(base), Arc::new(blobs)).await?;
    for image in images {
        if writer.forget(&image.source, &image.tag) {
            console.warn(None, format!("Replacing [{}] stored earlier", image.name()));
        }
        writer.add(image).await?;
    }
    writer.finish().await?;
    Ok(())
}

/// An archive that exists, open (`archive init` makes an empty one).
async fn open_existing(archive: &str) -> Result<Arc<ArchiveReader>> {
    if !archive.starts_with("s3://") && !Path::new(archive).exists() {
        bail!("archive {archive} does not exist (`archive init` makes an empty one)");
    }
    Ok(Arc::new(ArchiveReader::open(archive).await?))
}

fn http_client(tls_verify: bool) -> Result<reqwest::Client> {
    // Bounds on connecting and on each read; the download as a whole is the caller's to
    // bound (`archive store file --timeout`, charts' ten minutes).
    Ok(reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(30))
        .read_timeout(std::time::Duration::from_secs(30))
        .danger_accept_invalid_certs(!tls_verify)
        .build()?)
}

/// Helm's `chart.Metadata`, in its JSON field order with its `omitempty`s: the config of a
/// stored chart.
#[derive(serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct ChartMetadata {
    name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    home: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    sources: Vec<String>,
    #[serde(default)]
    version: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    description: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    keywords: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    maintainers: Vec<serde_json::Value>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    icon: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    api_version: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    condition: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    tags: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    app_version: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    deprecated: bool,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    annotations: std::collections::BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    kube_version: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    dependencies: Vec<serde_json::Value>,
    #[serde(default, rename = "type", skip_serializing_if = "String::is_empty")]
    kind: String,
}

fn chart_metadata(yaml: &[u8]) -> Result<ChartMetadata> {
    let meta: ChartMetadata = serde_yaml_ng::from_slice(yaml).context("reading Chart.yaml")?;
    if meta.name.is_empty() {
        bail!("Chart.yaml has no name");
    }
    if meta.version.is_empty() {
        bail!("Chart.yaml has no version");
    }
    Ok(meta)
}

pub async fn store_charts(args: &StoreChartArgs, console: &Console) -> Result<()> {
    let archive = args.file.as_str();
    let base = open_existing(archive).await?;
    let work = tempfile::tempdir().context("a directory for charts")?;
    let http = http_client(args.tls_verify)?;
    let pool = super::pool(Some(args.tls_verify), None);
    let created = chrono::Local::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut blobs = StagedBlobs::default();
    let mut images = Vec::new();
    for (n, url) in args.urls.iter().enumerate() {
        let shown = hangar_shared::redact::redact_location(url);
        let failed = || format!("failed to add chart {shown:?}");
        let is_http = url.starts_with("http://") || url.starts_with("https://");
        // The package's SHA-256 as a repository's index gives it, checked once it is hashed.
        let mut expected = None;
        // -n/-v chose the chart from a repository: what came must be it. A chart named
        // directly (a .tgz, a chart directory) is taken as it is, as Hangar does.
        let mut chosen_by_name = false;
        let path = if url.starts_with("oci://") {
            // Copied as it is, digests kept (as containers/image copies it for Hangar).
            let stored = super::chart_sources::from_oci(
                &pool,
                url,
                args.name.as_deref(),
                args.version.as_deref(),
                work.path(),
            )
            .await
            .with_context(failed)?;
            blobs.extend(stored.blobs);
            images.push(stored.image);
            continue;
        } else if is_http {
            let lower = url.to_ascii_lowercase();
            let to = work.path().join(format!("{n}.tgz"));
            if lower.ends_with(".tgz") || lower.ends_with(".tar.gz") {
                super::chart_sources::download_chart(&http, url, &to)
                    .await
                    .with_context(failed)?;
            } else {
                let Some(name) = args.name.as_deref() else {
                    bail!(
                        "failed to add chart {shown:?}: a Helm repository needs the chart's name (-n NAME)"
                    );
                };
                chosen_by_name = true;
                expected = super::chart_sources::from_http_repository(
                    &http,
                    url,
                    name,
                    args.version.as_deref(),
                    &to,
                )
                .await
                .with_context(failed)?;
            }
            to
        } else {
            let path = Path::new(url);
            let meta = std::fs::metadata(path)
                .with_context(|| format!("failed to add chart {shown:?}: invalid path"))?;
            if meta.is_dir() && !path.join("Chart.yaml").is_file() {
                if !path.join("index.yaml").is_file() {
                    bail!(
                        "failed to add chart {shown:?}: neither a chart (Chart.yaml) nor a Helm repository (index.yaml)"
                    );
                }
                let Some(name) = args.name.as_deref() else {
                    bail!(
                        "failed to add chart {shown:?}: a Helm repository needs the chart's name (-n NAME)"
                    );
                };
                let (package, digest) = super::chart_sources::from_local_repository(
                    path,
                    name,
                    args.version.as_deref(),
                )
                .with_context(failed)?;
                chosen_by_name = true;
                expected = digest;
                package
            } else if meta.is_dir() {
                let yaml = std::fs::read(path.join("Chart.yaml")).with_context(failed)?;
                let name = chart_metadata(&yaml).with_context(failed)?.name;
                let to = work.path().join(format!("{n}.tgz"));
                let (dir, tgz) = (path.to_owned(), to.clone());
                tokio::task::spawn_blocking(move || custom::package_chart_dir(&dir, &name, &tgz))
                    .await?
                    .with_context(failed)?;
                to
            } else {
                path.to_owned()
            }
        };
        let yaml = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || custom::chart_yaml_in_tgz(&path))
                .await?
                .with_context(failed)?
        };
        let meta = chart_metadata(&yaml).with_context(failed)?;
        if let Some(name) = args
            .name
            .as_deref()
            .filter(|n| chosen_by_name && *n != meta.name)
        {
            bail!(
                "failed to add chart {shown:?}: it is chart {:?}, not {name:?}",
                meta.name
            );
        }
        if let Some(version) = args
            .version
            .as_deref()
            .filter(|v| chosen_by_name && *v != meta.version)
        {
            bail!(
                "failed to add chart {shown:?}: it is version {:?}, not {version:?}",
                meta.version
            );
        }
        let (digest, size) = custom::hash_file(&path).await.with_context(failed)?;
        super::chart_sources::check_digest(expected.as_deref(), &digest, &shown)
            .with_context(failed)?;
        let info = custom::ChartInfo {
            name: &meta.name,
            version: &meta.version,
            description: &meta.description,
            home: &meta.home,
        };
        let stored = custom::store_chart(&meta, &info, (digest, size, path), &created)?;
        blobs.extend(stored.blobs);
        images.push(stored.image);
    }
    write_stored(archive, base, blobs, &images, console).await?;
    for image in &images {
        console.info(None, format!("Add OCI Helm Chart [{}]", image.source));
    }
    Ok(())
}

pub async fn export_file(args: &ExportFileArgs, console: &Console) -> Result<()> {
    let name = args.name.as_str();
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        bail!("file name {name:?}: give the stored file's base name");
    }
    super::may_overwrite(name, args.yes)?;
    let reader = ArchiveReader::open(&args.file).await?;
    let source = custom::file_source(name);
    let image = reader
        .index
        .list
        .iter()
        .find(|i| i.source == source && i.tag == "latest" && i.is_custom())
        .with_context(|| {
            format!(
                "failed to find custom file {name:?} in archive {}: no such file",
                args.file
            )
        })?;
    let Some(spec) = image.images.first() else {
        bail!("{source}: no OCI image in the entry");
    };
    if spec.media_type != OCI_MANIFEST {
        bail!(
            "{source}: unexpected image mediaType {:?}, should be {OCI_MANIFEST:?}",
            spec.media_type
        );
    }
    let raw = reader.manifest(&spec.digest).await?;
    let manifest: FileManifest = serde_json::from_slice(&raw.bytes)
        .with_context(|| format!("{source}: decoding its manifest"))?;
    let Some(layer) = manifest.layers.first() else {
        bail!("{source}: the image has no layers");
    };
    if layer.media_type != FILE_LAYER {
        if layer.media_type == HELM_CHART_LAYER || layer.media_type == HELM_PROV_LAYER {
            console.warn(None, format!("{source} is a Helm chart, not a custom file"));
        }
        bail!(
            "{source}: unexpected layer mediaType {:?}, should be {FILE_LAYER:?}",
            layer.media_type
        );
    }
    // Whole or not at all: a temporary file, renamed once every byte is verified.
    let temp = hangar_shared::atomic::temp_path(std::path::Path::new(name));
    let written = async {
        let mut out = tokio::fs::File::from_std(hangar_shared::atomic::create_new(&temp, None)?);
        let mut stream = reader.blob(&layer.digest, None).await?;
        while let Some(chunk) = stream.next().await {
            out.write_all(&chunk?).await?;
        }
        out.flush().await?;
        out.sync_all().await?;
        std::fs::rename(&temp, name)?;
        Ok::<_, anyhow::Error>(())
    }
    .await;
    if let Err(e) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(e.context(format!("writing {name}")));
    }
    console.info(None, format!("Load [{name}]"));
    Ok(())
}
