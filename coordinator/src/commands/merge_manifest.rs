//! `merge-manifest TARGET SRC1 SRC2…`: one index from images of one repository (a single
//! manifest contributes itself with its config's platform, an index its entries), built
//! with the mirror's index builder, pushed at TARGET or printed with `--dry-run`.

use anyhow::{Result, bail};
use hangar_shared::digest::Digest;
use hangar_shared::index_builder;
use hangar_shared::manifest::{Manifest, OCI_INDEX, OCI_MANIFEST, RawManifest};
use hangar_shared::registry::Side;

use crate::cli::MergeManifestArgs;
use crate::console::Console;
use crate::engine::planner::read_config;

pub async fn run(args: &MergeManifestArgs, console: &Console) -> Result<()> {
    let refs = args
        .refs
        .iter()
        .map(|r| super::docker_reference(r, None))
        .collect::<Result<Vec<_>>>()?;
    let (target, sources) = refs
        .split_first()
        .ok_or_else(|| anyhow::anyhow!("TARGET and at least two sources are required"))?;
    for s in sources {
        if s.registry != target.registry || s.repository() != target.repository() {
            bail!(
                "source {s} is not in the target repository {}/{}: merge-manifest copies no blobs",
                target.registry,
                target.repository()
            );
        }
    }
    let pool = super::pool(args.access.tls_verify, None);
    let reg = pool.registry(&target.registry).await?;
    let repo = target.repository();
    let mut added = Vec::new();
    for (s, given) in sources.iter().zip(&args.refs[1..]) {
        let m = reg
            .manifest_opt(&repo, &s.manifest_reference(), Side::Source)
            .await?
            .ok_or_else(|| anyhow::anyhow!("manifest unknown: {s}"))?;
        console.info(
            None,
            format!("Image {:?} is {:?}", with_transport(given), m.media_type),
        );
        match m.parse()? {
            // Docker's list carries no annotations; OCI's index keeps its entries'.
            Manifest::Index(idx) => added.extend(idx.manifests),
            Manifest::Image(img) => {
                let (cfg, _) = read_config(reg.as_ref(), None, &repo, &img.config).await?;
                let mut d = m.descriptor();
                d.platform = Some(cfg.platform());
                // An OCI manifest's own annotations go on its entry, as in Hangar.
                if m.media_type == OCI_MANIFEST {
                    d.annotations = serde_json::from_slice::<Annotated>(&m.bytes)?.annotations;
                }
                added.push(d);
            }
            Manifest::Schema1 => bail!("{s}: Docker schema1 manifests are not supported"),
        }
    }
    let built = index_builder::build(None, &added, true);
    let bytes = index_builder::serialize(&built.index);
    if args.dry_run {
        crate::stdout::write(&bytes)?;
        crate::stdout::write(b"\n")?;
        return Ok(());
    }
    let raw = RawManifest {
        media_type: OCI_INDEX.into(),
        digest: Digest::of(&bytes),
        bytes,
    };
    let tag = target
        .tag
        .clone()
        .ok_or_else(|| anyhow::anyhow!("TARGET needs a tag"))?;
    console.info(
        None,
        format!(
            "Pushing image manifest index {} with {} contents",
            with_transport(&args.refs[0]),
            built.index.manifests.len()
        ),
    );
    reg.put_manifest(&repo, &tag, &raw).await?;
    console.info(None, format!("Pushed index {} to {target}", raw.digest));
    Ok(())
}

/// A reference as Hangar names it in its log: with `docker://`.
fn with_transport(given: &str) -> String {
    match given.starts_with("docker://") {
        true => given.to_owned(),
        false => format!("docker://{given}"),
    }
}

/// A manifest's own annotations.
#[derive(serde::Deserialize)]
struct Annotated {
    #[serde(default)]
    annotations: Option<std::collections::BTreeMap<String, String>>,
}
