//! Synthetic images, made offline and pushed over the distribution API: gzip'd tar layers
//! of seeded random bytes (streamed through temp files, so any size fits in bounded memory),
//! configs, Docker v2 or OCI manifests, and multi-arch indexes. The same seed gives the
//! same bytes and so the same digests.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use flate2::Compression;
use flate2::write::GzEncoder;
use futures_util::StreamExt;
use hangar_shared::digest::Digest;
use hangar_shared::error::Result;
use hangar_shared::manifest::{
    DOCKER_LIST, DOCKER_MANIFEST, Descriptor, OCI_INDEX, OCI_MANIFEST, Platform, RawManifest,
};
use hangar_shared::registry::Registry;
use hangar_shared::verify::ByteStream;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use serde_json::json;
use sha2::{Digest as _, Sha256};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Docker,
    Oci,
}

impl Format {
    pub fn manifest_type(self) -> &'static str {
        match self {
            Self::Docker => DOCKER_MANIFEST,
            Self::Oci => OCI_MANIFEST,
        }
    }
    pub fn index_type(self) -> &'static str {
        match self {
            Self::Docker => DOCKER_LIST,
            Self::Oci => OCI_INDEX,
        }
    }
    pub fn layer_type(self) -> &'static str {
        match self {
            Self::Docker => "application/vnd.docker.image.rootfs.diff.tar.gzip",
            Self::Oci => "application/vnd.oci.image.layer.v1.tar+gzip",
        }
    }
    pub fn config_type(self) -> &'static str {
        match self {
            Self::Docker => "application/vnd.docker.container.image.v1+json",
            Self::Oci => "application/vnd.oci.image.config.v1+json",
        }
    }
}

/// A layer written to disk: its compressed digest and size, and its diff_id.
#[derive(Debug, Clone)]
pub struct LayerFile {
    pub path: PathBuf,
    pub digest: Digest,
    pub size: u64,
    pub diff_id: Digest,
}

struct HashWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

struct RandomReader {
    rng: StdRng,
    left: u64,
}

impl Read for RandomReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.left) as usize;
        self.rng.fill_bytes(&mut buf[..n]);
        self.left -= n as u64;
        Ok(n)
    }
}

/// Writes a gzip'd (stored, since random bytes do not compress) tar holding `size` seeded
/// random bytes.
pub fn write_layer(dir: &Path, seed: u64, size: u64) -> io::Result<LayerFile> {
    let path = dir.join(format!("layer-{seed:016x}-{size}.tar.gz"));
    let file = std::fs::File::create(&path)?;
    let outer = HashWriter {
        inner: io::BufWriter::with_capacity(1 << 20, file),
        hasher: Sha256::new(),
        count: 0,
    };
    let gz = GzEncoder::new(outer, Compression::none());
    let inner = HashWriter {
        inner: gz,
        hasher: Sha256::new(),
        count: 0,
    };
    let mut tar = tar::Builder::new(inner);
    let mut header = tar::Header::new_gnu();
    header.set_size(size);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_cksum();
    tar.append_data(
        &mut header,
        format!("data/{seed:016x}.bin"),
        RandomReader {
            rng: StdRng::seed_from_u64(seed),
            left: size,
        },
    )?;
    let inner = tar.into_inner()?;
    let diff_id = Digest::from_sha256(inner.hasher.finalize().as_slice());
    let mut outer = inner.inner.finish()?;
    outer.flush()?;
    let digest = Digest::from_sha256(outer.hasher.finalize().as_slice());
    Ok(LayerFile {
        path,
        digest,
        size: outer.count,
        diff_id,
    })
}

/// Streams a file in 256 KiB chunks.
pub fn file_stream(path: PathBuf) -> ByteStream {
    futures_util::stream::unfold(Some((path, None::<tokio::fs::File>)), |state| async move {
        use tokio::io::AsyncReadExt;
        let (path, file) = state?;
        let mut file = match file {
            Some(f) => f,
            None => match tokio::fs::File::open(&path).await {
                Ok(f) => f,
                Err(e) => return Some((Err(e.into()), None)),
            },
        };
        let mut buf = vec![0u8; 256 << 10];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Bytes::from(buf)), Some((path, Some(file)))))
            }
            Err(e) => Some((Err(e.into()), None)),
        }
    })
    .boxed()
}

/// A client for the loopback registries this tooling starts (plain HTTP or unverified TLS).
pub async fn connect(addr: &str) -> Result<Registry> {
    let opts = hangar_shared::registry::RegistryOptions {
        tls_verify: Some(false),
        ..Default::default()
    };
    Registry::connect(addr, &opts, None).await
}

pub fn descriptor(media_type: &str, digest: Digest, size: u64) -> Descriptor {
    Descriptor {
        media_type: media_type.to_owned(),
        digest,
        size,
        urls: None,
        annotations: None,
        platform: None,
    }
}

pub async fn push_bytes(
    reg: &Registry,
    repo: &str,
    media_type: &str,
    bytes: Bytes,
) -> Result<Descriptor> {
    let desc = descriptor(media_type, Digest::of(&bytes), bytes.len() as u64);
    if !reg
        .blob_exists(
            repo,
            &desc.digest,
            hangar_shared::registry::Side::Destination,
        )
        .await?
    {
        let stream = futures_util::stream::once(async move { Ok(bytes) }).boxed();
        reg.push_blob(repo, &desc, stream, None).await?;
    }
    Ok(desc)
}

pub async fn push_layer_file(
    reg: &Registry,
    repo: &str,
    format: Format,
    layer: &LayerFile,
    mount_from: Option<&str>,
) -> Result<Descriptor> {
    let desc = descriptor(format.layer_type(), layer.digest.clone(), layer.size);
    if reg
        .blob_exists(
            repo,
            &desc.digest,
            hangar_shared::registry::Side::Destination,
        )
        .await?
    {
        return Ok(desc);
    }
    if let Some(from) = mount_from
        && reg.mount_blob(repo, from, &desc.digest).await?
    {
        return Ok(desc);
    }
    // An upload is one attempt in the registry client (a stream cannot be replayed); the
    // file can, so a connection the registry dropped under a loaded machine is tried again.
    let mut attempt = 0;
    loop {
        match reg
            .push_blob(repo, &desc, file_stream(layer.path.clone()), None)
            .await
        {
            Err(e) if e.class.is_retryable() && attempt < 2 => attempt += 1,
            done => return done.map(|()| desc),
        }
    }
}

pub fn config_json(platform: &Platform, diff_ids: &[Digest]) -> Bytes {
    let mut cfg = json!({
        "architecture": platform.architecture,
        "os": platform.os,
        "config": {"Env": ["PATH=/usr/bin"], "Labels": {"made-by": "hangar-loadtest"}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids.iter().map(|d| d.to_string()).collect::<Vec<_>>()},
    });
    if let Some(v) = &platform.variant {
        cfg["variant"] = json!(v);
    }
    Bytes::from(cfg.to_string())
}

pub fn manifest_json(format: Format, config: &Descriptor, layers: &[Descriptor]) -> Bytes {
    let d = |x: &Descriptor| json!({"mediaType": x.media_type, "digest": x.digest.to_string(), "size": x.size});
    Bytes::from(
        json!({
            "schemaVersion": 2,
            "mediaType": format.manifest_type(),
            "config": d(config),
            "layers": layers.iter().map(d).collect::<Vec<_>>(),
        })
        .to_string(),
    )
}

pub async fn push_manifest(
    reg: &Registry,
    repo: &str,
    reference: &str,
    media_type: &str,
    bytes: Bytes,
) -> Result<RawManifest> {
    let raw = RawManifest {
        media_type: media_type.to_owned(),
        digest: Digest::of(&bytes),
        bytes,
    };
    reg.put_manifest(repo, reference, &raw).await?;
    Ok(raw)
}

/// An index over pushed manifests, each with its platform (and optional annotations).
pub fn index_json(
    format: Format,
    entries: &[(RawManifest, Platform, Option<serde_json::Value>)],
) -> Bytes {
    let list: Vec<serde_json::Value> = entries
        .iter()
        .map(|(m, p, ann)| {
            let mut e = json!({"mediaType": m.media_type, "digest": m.digest.to_string(), "size": m.bytes.len(), "platform": p});
            if let Some(a) = ann {
                e["annotations"] = a.clone();
            }
            e
        })
        .collect();
    Bytes::from(
        json!({"schemaVersion": 2, "mediaType": format.index_type(), "manifests": list})
            .to_string(),
    )
}

pub fn platform(arch: &str) -> Platform {
    Platform {
        architecture: arch.to_owned(),
        os: "linux".to_owned(),
        variant: (arch == "arm64").then(|| "v8".to_owned()),
        ..Default::default()
    }
}

/// What to seed.
#[derive(Debug, Clone)]
pub struct SeedSpec {
    pub registry: String,
    pub project: String,
    pub images: usize,
    pub layers_per_image: usize,
    pub layer_size: u64,
    pub shared_layers: usize,
    pub shared_layer_size: u64,
    /// Share of images that are two-platform indexes (amd64 + arm64).
    pub multiarch_share: f64,
    pub seed: u64,
}

/// Pushes the images of `spec` and returns the list lines (`registry/project/name:tag`).
pub async fn seed(reg: &Registry, spec: &SeedSpec, workdir: &Path) -> Result<Vec<String>> {
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let shared: Vec<LayerFile> = (0..spec.shared_layers)
        .map(|k| {
            write_layer(
                workdir,
                spec.seed ^ (0xBA5E_0000 + k as u64),
                spec.shared_layer_size,
            )
        })
        .collect::<io::Result<_>>()?;
    let mut first_repo: Option<String> = None;
    let mut lines = Vec::new();
    for i in 0..spec.images {
        let repo = format!("{}/img-{i:03}", spec.project);
        let format = if i % 2 == 0 {
            Format::Docker
        } else {
            Format::Oci
        };
        let multi = rng.random_bool(spec.multiarch_share.clamp(0.0, 1.0));
        let arches: &[&str] = if multi {
            &["amd64", "arm64"]
        } else {
            &["amd64"]
        };
        let mut entries = Vec::new();
        for (a, arch) in arches.iter().enumerate() {
            let mut layers = Vec::new();
            let mut diff_ids = Vec::new();
            for l in &shared {
                layers.push(push_layer_file(reg, &repo, format, l, first_repo.as_deref()).await?);
                diff_ids.push(l.diff_id.clone());
            }
            for k in 0..spec.layers_per_image {
                let seed = spec.seed.wrapping_mul(1_000_003)
                    ^ ((i as u64) << 20)
                    ^ ((a as u64) << 12)
                    ^ k as u64;
                let file = write_layer(workdir, seed, spec.layer_size)?;
                layers.push(push_layer_file(reg, &repo, format, &file, None).await?);
                diff_ids.push(file.diff_id.clone());
                let _ = std::fs::remove_file(&file.path);
            }
            let p = platform(arch);
            let config =
                push_bytes(reg, &repo, format.config_type(), config_json(&p, &diff_ids)).await?;
            let body = manifest_json(format, &config, &layers);
            let reference = if multi {
                Digest::of(&body).to_string()
            } else {
                "v1".to_owned()
            };
            let m = push_manifest(reg, &repo, &reference, format.manifest_type(), body).await?;
            entries.push((m, p, None));
        }
        if multi {
            push_manifest(
                reg,
                &repo,
                "v1",
                format.index_type(),
                index_json(format, &entries),
            )
            .await?;
        }
        if first_repo.is_none() {
            first_repo = Some(repo.clone());
        }
        lines.push(format!("{}/{repo}:v1", spec.registry));
    }
    for l in shared {
        let _ = std::fs::remove_file(l.path);
    }
    Ok(lines)
}
