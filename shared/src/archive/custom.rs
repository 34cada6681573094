//! Custom files kept in an archive (`archive store file`, `archive export file`, Hangar
//! v1.9.2, reference §3.6): each file is a single-manifest OCI image named
//! `docker.io/hangar-file/<basename>:latest` with the file's bytes as its one layer. The
//! manifest and config are Go's `json.MarshalIndent(…, "", "  ")` output in the OCI types'
//! field order, as Hangar writes them; the config carries Helm's config media type, as
//! Hangar's does. Helm charts (`archive store chart`) are the same shape:
//! `docker.io/hangar-helm/<chart>:<version>`, Chart.yaml as the config, the `.tgz` as the layer.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::BlobSource;
use super::index::{ArchiveImage, ImageSpec, go_json};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::manifest::OCI_MANIFEST;
use crate::verify::{ByteStream, verified};

pub const FILE_PROJECT: &str = "hangar-file";
pub const CHART_PROJECT: &str = "hangar-helm";
pub const FILE_LAYER: &str = "application/vnd.content.hangar.file.layer.v1";
pub const HELM_CONFIG: &str = "application/vnd.cncf.helm.config.v1+json";
pub const HELM_CHART_LAYER: &str = "application/vnd.cncf.helm.chart.content.v1.tar+gzip";
pub const HELM_PROV_LAYER: &str = "application/vnd.cncf.helm.chart.provenance.v1.prov";

/// The index `source` of a stored file.
pub fn file_source(name: &str) -> String {
    format!("docker.io/{FILE_PROJECT}/{name}")
}

#[derive(Serialize)]
struct Config<'a> {
    #[serde(rename = "Name")]
    name: &'a str,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct FileDescriptor {
    #[serde(rename = "mediaType")]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
}

/// The OCI manifest of a stored file, in the Go type's field order.
#[derive(Debug, Serialize, Deserialize)]
pub struct FileManifest {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub config: FileDescriptor,
    #[serde(default)]
    pub layers: Vec<FileDescriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// A file made into an image: its index entry and the blobs to write.
pub struct StoredFile {
    pub image: ArchiveImage,
    pub blobs: StagedBlobs,
}

/// `name`'s bytes (`layer`: digest and size, read from `path`) as Hangar's custom-file
/// image; `description` is where it came from, `created` RFC 3339 in seconds.
pub fn store_file(
    name: &str,
    description: &str,
    layer: (Digest, u64, PathBuf),
    created: &str,
) -> Result<StoredFile> {
    let config = go_json(&Config { name }, true)?;
    let annotations = BTreeMap::from([
        (
            "org.opencontainers.image.created".to_owned(),
            created.to_owned(),
        ),
        (
            "org.opencontainers.image.description".to_owned(),
            description.to_owned(),
        ),
        ("org.opencontainers.image.title".to_owned(), name.to_owned()),
        (
            "org.opencontainers.image.vendor".to_owned(),
            "Hangar".to_owned(),
        ),
    ]);
    synthetic_image(
        (file_source(name), "latest".to_owned()),
        config,
        FILE_LAYER,
        layer,
        annotations,
    )
}

/// The index `source` of a stored Helm chart.
pub fn chart_source(name: &str) -> String {
    format!("docker.io/{CHART_PROJECT}/{name}")
}

/// The tag of a stored chart: its version with `+` (invalid in tags) as `-`.
pub fn chart_tag(version: &str) -> String {
    if version.is_empty() {
        "latest".to_owned()
    } else {
        version.replace('+', "-")
    }
}

/// What a stored chart's manifest annotations are made of (from its Chart.yaml).
pub struct ChartInfo<'a> {
    pub name: &'a str,
    pub version: &'a str,
    pub description: &'a str,
    pub home: &'a str,
}

/// A packaged chart (`layer`: the `.tgz`'s digest, size and path) as Hangar's chart image
/// `docker.io/hangar-helm/<name>:<version, + as ->`; `metadata` is its Chart.yaml, which
/// becomes the config (serde field order must be Helm's `chart.Metadata`).
pub fn store_chart<T: Serialize>(
    metadata: &T,
    info: &ChartInfo<'_>,
    layer: (Digest, u64, PathBuf),
    created: &str,
) -> Result<StoredFile> {
    let config = go_json(metadata, true)?;
    let mut annotations = BTreeMap::from([
        (
            "org.opencontainers.image.created".to_owned(),
            created.to_owned(),
        ),
        (
            "org.opencontainers.image.title".to_owned(),
            info.name.to_owned(),
        ),
        (
            "org.opencontainers.image.vendor".to_owned(),
            "hangar".to_owned(),
        ),
        (
            "org.opencontainers.image.version".to_owned(),
            info.version.to_owned(),
        ),
    ]);
    if !info.description.is_empty() {
        annotations.insert(
            "org.opencontainers.image.description".to_owned(),
            info.description.to_owned(),
        );
    }
    if !info.home.is_empty() {
        annotations.insert(
            "org.opencontainers.image.url".to_owned(),
            info.home.to_owned(),
        );
    }
    synthetic_image(
        (chart_source(info.name), chart_tag(info.version)),
        config,
        HELM_CHART_LAYER,
        layer,
        annotations,
    )
}

/// One config (Helm's config media type, as Hangar uses for both) and one layer as a
/// single-manifest OCI image with no arch and no OS: a custom entry.
fn synthetic_image(
    (source, tag): (String, String),
    config: Vec<u8>,
    layer_media_type: &str,
    layer: (Digest, u64, PathBuf),
    annotations: BTreeMap<String, String>,
) -> Result<StoredFile> {
    let config_digest = Digest::of(&config);
    let (layer_digest, layer_size, layer_path) = layer;
    let manifest = go_json(
        &FileManifest {
            schema_version: 2,
            media_type: OCI_MANIFEST.to_owned(),
            config: FileDescriptor {
                media_type: HELM_CONFIG.to_owned(),
                digest: config_digest.clone(),
                size: config.len() as u64,
            },
            layers: vec![FileDescriptor {
                media_type: layer_media_type.to_owned(),
                digest: layer_digest.clone(),
                size: layer_size,
            }],
            annotations: annotations.clone(),
        },
        true,
    )?;
    let manifest_digest = Digest::of(&manifest);
    let spec = ImageSpec {
        media_type: OCI_MANIFEST.to_owned(),
        layers: vec![layer_digest.clone()],
        config: Some(config_digest.clone()),
        annotations,
        ..ImageSpec::bare(manifest_digest.clone())
    };
    let mut blobs = StagedBlobs::default();
    blobs.put(config_digest, Staged::Memory(Bytes::from(config)));
    blobs.put(manifest_digest, Staged::Memory(Bytes::from(manifest)));
    blobs.put(layer_digest, Staged::File(layer_path, layer_size));
    Ok(StoredFile {
        // Custom entries have no arch and no OS lists (that is how readers tell them).
        image: ArchiveImage {
            source,
            tag,
            arch_list: Vec::new(),
            os_list: Vec::new(),
            images: vec![spec],
        },
        blobs,
    })
}

/// The largest Chart.yaml accepted: real ones are a few KiB.
pub const MAX_CHART_YAML: u64 = 1 << 20;

/// The `Chart.yaml` of a packaged chart (`<name>/Chart.yaml`, the top-level one, not a
/// dependency's under `<name>/charts/`).
/// A chart's archive is outside input: its extension headers are bounded as the scanner's
/// are ([`crate::scan::tar_guard`]), and its Chart.yaml to [`MAX_CHART_YAML`].
pub fn chart_yaml_in_tgz(path: &std::path::Path) -> Result<Vec<u8>> {
    chart_yaml_within(path, MAX_CHART_INFLATED)
}

/// How far a chart archive is inflated while its Chart.yaml is looked for (Helm refuses
/// charts past 100 MiB decompressed): a small gzip bomb must not cost hours of CPU.
pub const MAX_CHART_INFLATED: u64 = 100 << 20;

fn chart_yaml_within(path: &std::path::Path, inflated: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    let fail = |e: std::io::Error| Error::invalid(format!("{}: {e}", path.display()));
    let file = std::fs::File::open(path).map_err(fail)?;
    let mut tar = tar::Archive::new(crate::scan::tar_guard::TarGuard::new(Inflated::new(
        flate2::read::GzDecoder::new(file),
        inflated,
    )));
    for entry in tar.entries().map_err(fail)? {
        let entry = entry.map_err(fail)?;
        let name = entry.path().map_err(fail)?.into_owned();
        let parts: Vec<_> = name.components().collect();
        if parts.len() == 2 && parts[1].as_os_str() == "Chart.yaml" {
            let mut out = Vec::new();
            entry
                .take(MAX_CHART_YAML + 1)
                .read_to_end(&mut out)
                .map_err(fail)?;
            if out.len() as u64 > MAX_CHART_YAML {
                return Err(Error::invalid(format!(
                    "{}: Chart.yaml is larger than {} KiB",
                    path.display(),
                    MAX_CHART_YAML >> 10
                )));
            }
            return Ok(out);
        }
    }
    Err(Error::invalid(format!(
        "{}: no Chart.yaml in the chart archive",
        path.display()
    )))
}

/// A decompressing reader that fails once it has given `cap` bytes — where `take` would
/// end it quietly, and a tar reader would take the cut for the archive's end.
pub struct Inflated<R> {
    inner: R,
    left: u64,
    cap: u64,
}

impl<R> Inflated<R> {
    pub fn new(inner: R, cap: u64) -> Self {
        Self {
            inner,
            left: cap,
            cap,
        }
    }
}

impl<R: std::io::Read> std::io::Read for Inflated<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.left = self.left.checked_sub(n as u64).ok_or_else(|| {
            std::io::Error::other(format!("the chart inflates past {} MiB", self.cap >> 20))
        })?;
        Ok(n)
    }
}

/// Packages the chart directory `dir` into the `.tgz` `to` with every entry under `<name>/`,
/// as `helm package` lays it out (without its `.helmignore` handling).
pub fn package_chart_dir(dir: &std::path::Path, name: &str, to: &std::path::Path) -> Result<()> {
    let fail = |e: std::io::Error| Error::invalid(format!("packaging {}: {e}", dir.display()));
    let out = std::fs::File::create(to).map_err(fail)?;
    let gz = flate2::write::GzEncoder::new(out, flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    tar.follow_symlinks(true);
    tar.mode(tar::HeaderMode::Deterministic);
    tar.append_dir_all(name, dir).map_err(fail)?;
    tar.into_inner()
        .and_then(|gz| gz.finish())
        .and_then(|f| f.sync_all())
        .map_err(fail)?;
    Ok(())
}

enum Staged {
    Memory(Bytes),
    File(PathBuf, u64),
}

/// Blobs made here, for the assembler: small ones in memory, file layers on disk.
#[derive(Default)]
pub struct StagedBlobs(HashMap<Digest, Staged>);

impl StagedBlobs {
    fn put(&mut self, digest: Digest, blob: Staged) {
        self.0.insert(digest, blob);
    }

    /// Bytes held here (a manifest, a config).
    pub fn memory(&mut self, digest: Digest, bytes: Bytes) {
        self.put(digest, Staged::Memory(bytes));
    }

    /// A file of `size` bytes, checked against `digest` when it is written out.
    pub fn file(&mut self, digest: Digest, path: PathBuf, size: u64) {
        self.put(digest, Staged::File(path, size));
    }

    pub fn extend(&mut self, other: StagedBlobs) {
        self.0.extend(other.0);
    }
}

#[async_trait]
impl BlobSource for StagedBlobs {
    async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        Ok(self.0.get(digest).map(|b| match b {
            Staged::Memory(bytes) => bytes.len() as u64,
            Staged::File(_, size) => *size,
        }))
    }

    async fn blob_stream(&self, digest: &Digest, size: u64) -> Result<ByteStream> {
        let raw: ByteStream = match self.0.get(digest) {
            Some(Staged::Memory(bytes)) => futures_util::stream::iter([Ok(bytes.clone())]).boxed(),
            Some(Staged::File(path, len)) => {
                let file = std::fs::File::open(path)
                    .map_err(|e| Error::invalid(format!("{}: {e}", path.display())))?;
                crate::cache::file_stream(file, 0, *len)
            }
            None => return Err(Error::not_found(format!("blob {digest} was not staged"))),
        };
        // The file may have changed since it was hashed: what goes in must match.
        Ok(verified(raw, digest.clone(), size, None))
    }
}

/// A local file's digest and size, read in blocks off the async threads.
pub async fn hash_file(path: &std::path::Path) -> Result<(Digest, u64)> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        use sha2::Digest as _;
        use std::io::Read;
        let fail = |e: std::io::Error| Error::invalid(format!("{}: {e}", path.display()));
        let mut file = std::fs::File::open(&path).map_err(fail)?;
        let mut hasher = sha2::Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut size = 0u64;
        loop {
            let n = file.read(&mut buf).map_err(fail)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            size += n as u64;
        }
        Ok((Digest::from_sha256(&hasher.finalize()), size))
    })
    .await
    .map_err(|e| Error::internal(format!("hashing a file: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tgz(dir: &std::path::Path, chart_yaml: &[u8]) -> std::path::PathBuf {
        let to = dir.join("c.tgz");
        let gz = flate2::write::GzEncoder::new(
            std::fs::File::create(&to).expect("create"),
            flate2::Compression::fast(),
        );
        let mut tar = tar::Builder::new(gz);
        let mut h = tar::Header::new_gnu();
        h.set_size(chart_yaml.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, "c/Chart.yaml", chart_yaml)
            .expect("append");
        tar.into_inner().expect("tar").finish().expect("gz");
        to
    }

    #[test]
    fn a_chart_yaml_is_read_and_an_oversized_one_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let ok = tgz(dir.path(), b"name: c\nversion: 1.0.0\n");
        assert_eq!(
            chart_yaml_in_tgz(&ok).expect("read"),
            b"name: c\nversion: 1.0.0\n"
        );
        // 2 MiB of spaces: a few KiB compressed.
        let big = tgz(dir.path(), &vec![b' '; 2 << 20]);
        let e = chart_yaml_in_tgz(&big).expect_err("refused");
        assert!(e.message.contains("larger than 1024 KiB"), "{e}");
    }

    /// A gzip bomb before the Chart.yaml (8 MiB of zeros in a few KiB; the cap lowered to
    /// 2 MiB here) is refused once the cap is inflated, naming the archive.
    #[test]
    fn a_chart_that_inflates_past_the_cap_is_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let to = dir.path().join("bomb.tgz");
        let gz = flate2::write::GzEncoder::new(
            std::fs::File::create(&to).expect("create"),
            flate2::Compression::best(),
        );
        let mut tar = tar::Builder::new(gz);
        for (name, body) in [
            ("c/zeros", vec![0u8; 8 << 20]),
            ("c/Chart.yaml", b"name: c\n".to_vec()),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_size(body.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            tar.append_data(&mut h, name, body.as_slice())
                .expect("append");
        }
        tar.into_inner().expect("tar").finish().expect("gz");
        assert!(std::fs::metadata(&to).expect("size").len() < 64 << 10);
        let e = chart_yaml_within(&to, 2 << 20).expect_err("refused");
        assert!(e.message.contains("inflates past 2 MiB"), "{e}");
        assert!(e.message.contains("bomb.tgz"), "{e}");
        assert_eq!(
            chart_yaml_within(&to, 16 << 20).expect("read"),
            b"name: c\n"
        );
    }
}
