//! `view provenance IMAGE` and `view sbom IMAGE`: finds the attestation of the platform
//! image (a buildx attestation manifest in the index, else the cosign-style
//! `sha256-<hex>.att` tag), picks its in-toto statement of the wanted kind and prints the
//! whole statement as Hangar prints it: JSON indented by two spaces, keys in order (Go
//! prints a map so). A cosign DSSE envelope is opened and its statement printed (Hangar
//! prints the envelope, its statement in base64).

use anyhow::{Context as _, Result, bail};
use base64::Engine as _;
use bytes::Bytes;
use futures_util::TryStreamExt;
use hangar_shared::archive::index::go_escape;
use hangar_shared::digest::Digest;
use hangar_shared::manifest::{Descriptor, Manifest, PlatformFilter, RawManifest};
use hangar_shared::registry::{Registry, Side};
use serde_json::Value;

use crate::cli::ViewArgs;
use crate::console::Console;

/// The annotation naming an in-toto layer's predicate type.
const PREDICATE_TYPE: &str = "in-toto.io/predicate-type";
/// The largest statement read into memory.
const STATEMENT_LIMIT: u64 = 256 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Provenance,
    Sbom,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Provenance => "provenance",
            Kind::Sbom => "SBOM",
        }
    }

    /// Hangar's test: `slsa` for provenance, `spdx` or `bom` (CycloneDX) for an SBOM.
    fn matches(self, predicate_type: &str) -> bool {
        let t = predicate_type.to_ascii_lowercase();
        match self {
            Kind::Provenance => t.contains("slsa"),
            Kind::Sbom => t.contains("spdx") || t.contains("bom"),
        }
    }
}

fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

pub async fn run(args: &ViewArgs, kind: Kind, console: &Console) -> Result<()> {
    let r = super::docker_reference(&args.reference, None)?;
    let arch = if args.override_arch.is_empty() {
        host_arch().to_owned()
    } else {
        args.override_arch.clone()
    };
    let os = if args.override_os.is_empty() {
        "linux".to_owned()
    } else {
        args.override_os.clone()
    };
    if let Some(out) = &args.output {
        super::may_overwrite(&out.display().to_string(), args.yes)?;
    }
    let pool = super::pool(args.access.tls_verify, args.access.authfile.as_deref());
    let reg = pool.registry(&r.registry).await?;
    let repo = r.repository();
    let Some(top) = reg
        .manifest_opt(&repo, &r.manifest_reference(), Side::Source)
        .await?
    else {
        bail!("manifest unknown: {r}");
    };

    // The platform image, and the buildx attestation manifest the index holds for it.
    let (image, in_index) = match top.parse()? {
        Manifest::Index(idx) => {
            let filter = PlatformFilter {
                arch: vec![arch.clone()],
                os: vec![os.clone()],
            };
            let Some(chosen) = idx.manifests.iter().find(|m| {
                !m.is_attestation()
                    && m.platform
                        .as_ref()
                        .is_some_and(|p| !p.architecture.is_empty() && filter.matches(p))
            }) else {
                bail!("{r}: no image for {os}/{arch} in its index");
            };
            let att = idx
                .manifests
                .iter()
                .find(|m| m.is_attestation() && m.attests().as_ref() == Some(&chosen.digest))
                .cloned();
            (chosen.digest.clone(), att)
        }
        Manifest::Image(_) => (top.digest.clone(), None),
        Manifest::Schema1 => bail!("{r}: Docker schema1 manifests are not supported"),
    };

    let mut attestations: Vec<RawManifest> = Vec::new();
    if let Some(desc) = in_index {
        attestations.push(
            reg.manifest(&repo, &desc.digest.to_string(), Side::Source)
                .await?,
        );
    }
    let att_tag = format!("{}.att", image.tag_form());
    if let Some(m) = reg.manifest_opt(&repo, &att_tag, Side::Source).await? {
        attestations.push(m);
    }

    for raw in &attestations {
        if let Some(statement) = find_statement(&reg, &repo, raw, kind).await? {
            // serde_json's map is ordered by key, as Go's encoder orders a map.
            let mut text = go_escape(&serde_json::to_string_pretty(&statement)?);
            text.push('\n');
            match &args.output {
                Some(path) => {
                    super::write_atomically(path, &text)?;
                    console.info(
                        None,
                        format!("{} of {r} written to {}", kind.name(), path.display()),
                    );
                }
                None => {
                    crate::stdout::write(text.as_bytes())?;
                }
            }
            return Ok(());
        }
    }
    bail!(
        "{r}: no {} attestation found for {os}/{arch} (image {image}; looked in its index and at tag {att_tag})",
        kind.name()
    )
}

/// The first statement of `kind` in an attestation manifest (a buildx attestation or a
/// cosign `.att` image).
async fn find_statement(
    reg: &Registry,
    repo: &str,
    raw: &RawManifest,
    kind: Kind,
) -> Result<Option<Value>> {
    let layers = match raw.parse()? {
        Manifest::Image(m) => m.layers,
        // A `.att` tag that is itself an index is not an attestation this reads.
        _ => return Ok(None),
    };
    for layer in &layers {
        let annotated = layer.annotation(PREDICATE_TYPE);
        if annotated.is_some_and(|t| !kind.matches(t)) {
            continue;
        }
        let in_toto = layer.media_type.contains("in-toto");
        let dsse = layer.media_type.contains("dsse");
        if !(in_toto || dsse) {
            continue;
        }
        let body = read_blob(reg, repo, layer).await?;
        let mut statement: Value = serde_json::from_slice(&body)
            .with_context(|| format!("attestation layer {} is not JSON", layer.digest))?;
        if dsse {
            statement = dsse_payload(&statement)
                .with_context(|| format!("attestation layer {}", layer.digest))?;
        }
        let predicate_type = statement
            .get("predicateType")
            .and_then(Value::as_str)
            .or(annotated)
            .unwrap_or_default()
            .to_owned();
        if !kind.matches(&predicate_type) {
            continue;
        }
        return Ok(Some(statement));
    }
    Ok(None)
}

/// The in-toto statement inside a DSSE envelope (cosign's `.att` layers).
fn dsse_payload(envelope: &Value) -> Result<Value> {
    let Some(payload) = envelope.get("payload").and_then(Value::as_str) else {
        bail!("DSSE envelope without a payload");
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(payload)
        .context("DSSE payload is not base64")?;
    serde_json::from_slice(&bytes).context("DSSE payload is not JSON")
}

/// A statement blob, verified against its descriptor's size and digest.
async fn read_blob(reg: &Registry, repo: &str, desc: &Descriptor) -> Result<Bytes> {
    if desc.size > STATEMENT_LIMIT {
        bail!(
            "attestation layer {} is too large ({} bytes)",
            desc.digest,
            desc.size
        );
    }
    let chunks: Vec<Bytes> = reg
        .blob_stream(repo, desc, None)
        .await?
        .try_collect()
        .await?;
    let body = Bytes::from(chunks.concat());
    if Digest::of(&body) != desc.digest {
        bail!("attestation layer {}: digest mismatch", desc.digest);
    }
    Ok(body)
}
