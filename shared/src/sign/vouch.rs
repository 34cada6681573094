//! What a signature on an index vouches for. The digest of an index a job wrote comes back
//! from the worker that wrote it, so a worker could report an index of its own making and
//! have the fleet's key sign it. A key signs such an index only when every manifest it
//! lists is one the job planned (under the platform planned), one the key has already
//! signed, or an attestation (no platform of its own) of one of those.

use super::cosign::{self, Verdict};
use super::keys::PublicKey;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::index_builder::same_platform;
use crate::manifest::{Descriptor, Manifest};
use crate::registry::Side;
use crate::store::ImageStore;

/// Children looked up beyond the plan: each costs a signature lookup, and the index is the
/// destination's to write.
pub const MAX_UNPLANNED: usize = 64;

/// Whether the key may sign the index `digest` in `repo`, given the entries its job
/// planned for it (attachments aside).
pub async fn check_index(
    store: &dyn ImageStore,
    repo: &str,
    digest: &Digest,
    planned: &[Descriptor],
    key: &PublicKey,
) -> Result<()> {
    let refuse = |why: String| Error::invalid(format!("{repo}@{digest}: not signed: {why}"));
    let raw = store
        .get_manifest(repo, &digest.to_string(), Side::Destination)
        .await?
        .ok_or_else(|| refuse("no manifest has this digest".into()))?;
    let served = Digest::of(&raw.bytes);
    if served != *digest {
        return Err(refuse(format!("the manifest served has digest {served}")));
    }
    let Ok(Manifest::Index(index)) = raw.parse() else {
        return Err(refuse(format!(
            "the job wrote an index here and this is a {}",
            raw.media_type
        )));
    };
    // A planned entry is vouched for under the platform it was planned for: listed under
    // another, a client choosing by platform would run it there.
    let as_planned = |c: &Descriptor| {
        planned
            .iter()
            .any(|p| p.digest == c.digest && same_platform(p, c) && p.attests() == c.attests())
    };
    // Manifests vouched for, as attestations' subjects; `signed`: those the key had signed
    // (whatever platform they are listed under: the key vouched for their content).
    let mut vouched: Vec<&Digest> = Vec::new();
    let mut signed: Vec<&Digest> = Vec::new();
    let mut looked_up = 0;
    for child in index.manifests.iter().filter(|c| !c.is_attestation()) {
        if as_planned(child) || signed.contains(&&child.digest) {
            vouched.push(&child.digest);
            continue;
        }
        looked_up += 1;
        if looked_up > MAX_UNPLANNED {
            return Err(refuse(format!(
                "it lists more than {MAX_UNPLANNED} manifests this job did not copy"
            )));
        }
        match cosign::verify(store, repo, &child.digest, key, None).await? {
            Verdict::Verified { .. } => {
                signed.push(&child.digest);
                vouched.push(&child.digest);
            }
            _ => {
                return Err(refuse(format!(
                    "it lists {} ({}), which this job did not copy there and this key has \
                     not signed (sign it first, or mirror every platform of the tag)",
                    child.digest,
                    platform_of(child)
                )));
            }
        }
    }
    // An attestation is a platform no client runs: one listed under a platform of its own
    // is no attestation, whatever its annotations say.
    for attestation in index.manifests.iter().filter(|c| c.is_attestation()) {
        let unplatformed = attestation
            .platform
            .as_ref()
            .is_none_or(|p| p.os == "unknown" && p.architecture == "unknown");
        let of_vouched = attestation
            .attests()
            .is_some_and(|subject| vouched.contains(&&subject));
        if !unplatformed || !(of_vouched || as_planned(attestation)) {
            return Err(refuse(format!(
                "it lists the attestation {} ({}), which is of no manifest this key vouches for",
                attestation.digest,
                platform_of(attestation)
            )));
        }
    }
    Ok(())
}

fn platform_of(d: &Descriptor) -> String {
    match &d.platform {
        Some(p) if p.variant.as_deref().is_some_and(|v| !v.is_empty()) => format!(
            "{}/{}/{}",
            p.os,
            p.architecture,
            p.variant.as_deref().unwrap_or_default()
        ),
        Some(p) => format!("{}/{}", p.os, p.architecture),
        None => "no platform".into(),
    }
}
