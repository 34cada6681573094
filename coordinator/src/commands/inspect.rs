//! `inspect REF`: `--raw` prints the manifest exactly as served, `--config` the config
//! blob, and by default a summary like skopeo's (`ImageInspectInfo`).

use anyhow::{Result, bail};
use bytes::Bytes;
use futures_util::TryStreamExt;
use hangar_shared::manifest::{Manifest, Platform, PlatformFilter};
use hangar_shared::registry::{Registry, Side};
use serde_json::{Value, json};

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
    let r = super::docker_reference(&args.reference, console)?;
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
        crate::stdout::write(&config)?;
        return Ok(());
    }
    let cfg: Value = serde_json::from_slice(&config).unwrap_or(Value::Null);
    let info = json!({
        "Name": format!("{}/{}", r.registry, r.repository()),
        "Digest": top.digest.to_string(),
        "Tag": r.tag.clone().unwrap_or_default(),
        "Created": cfg.get("created").cloned().unwrap_or(Value::Null),
        "DockerVersion": cfg.get("docker_version").cloned().unwrap_or(Value::String(String::new())),
        "Labels": cfg.pointer("/config/Labels").cloned().unwrap_or(Value::Null),
        "Architecture": cfg.get("architecture").cloned().unwrap_or(Value::Null),
        "Variant": cfg.get("variant").cloned().unwrap_or(Value::String(String::new())),
        "Os": cfg.get("os").cloned().unwrap_or(Value::Null),
        "Layers": image_manifest.layers.iter().map(|l| l.digest.to_string()).collect::<Vec<_>>(),
        "LayersData": image_manifest.layers.iter().map(|l| json!({
            "MIMEType": l.media_type, "Digest": l.digest.to_string(), "Size": l.size,
            "Annotations": l.annotations.clone(),
        })).collect::<Vec<_>>(),
        "Env": cfg.pointer("/config/Env").cloned().unwrap_or(Value::Null),
    });
    crate::stdout::outln!("{}", serde_json::to_string_pretty(&info)?)?;
    Ok(())
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
