//! `inspect REF`: `--raw` prints the manifest exactly as served, `--config` the config
//! blob, and by default Hangar's summary (containers/image's `ImageInspectInfo`). Where
//! Hangar refuses an index, the platform `--override-*` (or this machine's) names is shown.

use anyhow::{Result, bail};
use bytes::Bytes;
use chrono::DateTime;
use futures_util::TryStreamExt;
use hangar_shared::archive::index::{go_escape, go_time};
use hangar_shared::manifest::{Manifest, Platform, PlatformFilter};
use hangar_shared::registry::{Registry, Side};
use hangar_shared::schema1::DOCKER_CONFIG;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::cli::InspectArgs;
use crate::console::Console;

fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

pub async fn run(args: &InspectArgs, console: &Console) -> Result<()> {
    let r = super::docker_reference(&args.reference, Some(console))?;
    let pool = super::pool(args.access.tls_verify, args.access.authfile.as_deref());
    // Read where registries.conf says to pull it from (its mirrors first), named as asked.
    let (reg, read_at, top) = crate::engine::pull_source::manifest_at(&pool, &r).await?;
    let repo = read_at.repository();
    if args.raw {
        crate::stdout::write(&top.bytes)?;
        return Ok(());
    }
    let want = Platform {
        architecture: if args.override_arch.is_empty() {
            host_arch().into()
        } else {
            args.override_arch.clone()
        },
        os: if args.override_os.is_empty() {
            "linux".into()
        } else {
            args.override_os.clone()
        },
        variant: (!args.override_variant.is_empty()).then(|| args.override_variant.clone()),
        ..Default::default()
    };
    let image_manifest = match top.parse()? {
        Manifest::Index(idx) => {
            let filter = PlatformFilter {
                arch: vec![want.architecture.clone()],
                os: vec![want.os.clone()],
            };
            let chosen = idx
                .manifests
                .iter()
                .filter(|m| !m.is_attestation())
                .filter(|m| {
                    m.platform
                        .as_ref()
                        .is_some_and(|p| filter.matches(p) && !p.architecture.is_empty())
                })
                .find(|m| {
                    want.variant.is_none()
                        || m.platform.as_ref().and_then(|p| p.variant.clone()) == want.variant
                });
            let Some(chosen) = chosen else {
                bail!(
                    "no image found in manifest list for architecture {}, OS {}",
                    want.architecture,
                    want.os
                );
            };
            let m = reg
                .manifest(&repo, &chosen.digest.to_string(), Side::Source)
                .await?;
            match m.parse()? {
                Manifest::Image(i) => i,
                _ => bail!(
                    "{r}: platform entry {} is not an image manifest",
                    chosen.digest
                ),
            }
        }
        Manifest::Image(i) => i,
        Manifest::Schema1 => bail!("{r}: Docker schema1 manifests are not supported"),
    };
    let config = read_blob(&reg, &repo, &image_manifest.config).await?;
    if args.config {
        // The registry chose these bytes and the digest they are checked against. JSON
        // cannot hold a raw control character; anything else is shown with them escaped,
        // so a config cannot drive the terminal it is printed on.
        if serde_json::from_slice::<serde::de::IgnoredAny>(&config).is_ok() {
            crate::stdout::write(&config)?;
        } else {
            console.warn(
                None,
                format!(
                    "{r}: its config ({}) is not JSON: shown with its control characters escaped",
                    image_manifest.config.media_type
                ),
            );
            let shown = crate::console::escape_controls(&String::from_utf8_lossy(&config));
            crate::stdout::write(shown.as_bytes())?;
        }
        return Ok(());
    }
    let cfg: ImageConfig = serde_json::from_slice(&config)
        .map_err(|e| anyhow::anyhow!("{r}: parsing the image's config: {e}"))?;
    let run = cfg.config.unwrap_or_default();
    // Go reads the time as it reads the config: one that does not parse fails the inspect.
    let created = match &cfg.created {
        Some(c) => Some(go_time(&DateTime::parse_from_rfc3339(c).map_err(|e| {
            anyhow::anyhow!("{r}: parsing the image's config: created {c:?}: {e}")
        })?)),
        // Docker's config has a plain time (its zero when absent), OCI's an optional one.
        None if image_manifest.config.media_type == DOCKER_CONFIG => {
            Some("0001-01-01T00:00:00Z".to_owned())
        }
        None => None,
    };
    let info = InspectInfo {
        tag: String::new(),
        created,
        docker_version: cfg.docker_version.unwrap_or_default(),
        labels: run.labels,
        architecture: cfg.architecture.unwrap_or_default(),
        variant: cfg.variant.unwrap_or_default(),
        os: cfg.os.unwrap_or_default(),
        layers: image_manifest
            .layers
            .iter()
            .map(|l| l.digest.to_string())
            .collect(),
        layers_data: image_manifest
            .layers
            .iter()
            .map(|l| LayerData {
                mime_type: l.media_type.clone(),
                digest: l.digest.to_string(),
                size: l.size,
                annotations: l.annotations.clone(),
            })
            .collect(),
        env: run.env,
        author: cfg.author.unwrap_or_default(),
    };
    let json = serde_json::to_string_pretty(&info)?;
    crate::stdout::outln!("{}", go_escape(&json))?;
    Ok(())
}

/// containers/image's `ImageInspectInfo` as Hangar prints it (`json.MarshalIndent`): Go's
/// field order, every field (none is `omitempty`), `Tag` empty but for schema 1.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct InspectInfo {
    tag: String,
    created: Option<String>,
    docker_version: String,
    labels: Option<BTreeMap<String, String>>,
    architecture: String,
    variant: String,
    os: String,
    layers: Vec<String>,
    layers_data: Vec<LayerData>,
    env: Option<Vec<String>>,
    author: String,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct LayerData {
    #[serde(rename = "MIMEType")]
    mime_type: String,
    digest: String,
    size: u64,
    annotations: Option<BTreeMap<String, String>>,
}

/// The parts of an image's config (Docker's or OCI's) the summary shows.
#[derive(Deserialize, Default)]
#[serde(default)]
struct ImageConfig {
    // Options throughout: Go reads a `null` as the field's zero value.
    created: Option<String>,
    docker_version: Option<String>,
    architecture: Option<String>,
    variant: Option<String>,
    os: Option<String>,
    author: Option<String>,
    config: Option<RunConfig>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "PascalCase")]
struct RunConfig {
    labels: Option<BTreeMap<String, String>>,
    env: Option<Vec<String>>,
}

async fn read_blob(
    reg: &Registry,
    repo: &str,
    desc: &hangar_shared::manifest::Descriptor,
) -> Result<Bytes> {
    if desc.size > 64 << 20 {
        bail!(
            "config blob {} is too large ({} bytes)",
            desc.digest,
            desc.size
        );
    }
    let chunks: Vec<Bytes> = reg
        .blob_stream(repo, desc, None)
        .await?
        .try_collect()
        .await?;
    Ok(Bytes::from(chunks.concat()))
}
