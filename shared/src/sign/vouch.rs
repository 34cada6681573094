//! What a signature on an index vouches for. The digest of an index a job wrote comes back
//! from the worker that wrote it, so a worker could report an index of its own making and
//! have the fleet's key sign it. A key signs such an index only when every manifest it
//! lists is one the job planned, one the key has already signed, or an attestation of one
//! of those.

use super::cosign::{self, Verdict};
use super::keys::PublicKey;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::manifest::Manifest;
use crate::registry::Side;
use crate::store::ImageStore;

/// Children looked up beyond the plan: each costs a signature lookup, and the index is the
/// destination's to write.
pub const MAX_UNPLANNED: usize = 64;

/// Whether the key may sign the index `digest` in `repo`, given the child manifests its job
/// planned.
pub async fn check_index(
    store: &dyn ImageStore,
    repo: &str,
    digest: &Digest,
    planned: &[Digest],
    key: &PublicKey,
) -> Result<()> {
    let refuse = |why: String| Error::invalid(format!("{repo}@{digest}: not signed: {why}"));
    let raw = store
        .get_manifest(repo, &digest.to_string(), Side::Destination)
        .await?
        .ok_or_else(|| refuse("no manifest has this digest".into()))?;
    if Digest::of(&raw.bytes) != *digest {
        return Err(refuse(format!(
            "the manifest served has digest {}",
            Digest::of(&raw.bytes)
        )));
    }
    let Ok(Manifest::Index(index)) = raw.parse() else {
        return Err(refuse(format!(
            "the job wrote an index here and this is a {}",
            raw.media_type
        )));
    };
    let mut vouched: Vec<&Digest> = planned.iter().collect();
    let mut looked_up = 0;
    for child in index.manifests.iter().filter(|c| !c.is_attestation()) {
        if vouched.contains(&&child.digest) {
            continue;
        }
        looked_up += 1;
        if looked_up > MAX_UNPLANNED {
            return Err(refuse(format!(
                "it lists more than {MAX_UNPLANNED} manifests this job did not copy"
            )));
        }
        match cosign::verify(store, repo, &child.digest, key, None).await? {
            Verdict::Verified { .. } => vouched.push(&child.digest),
            _ => {
                return Err(refuse(format!(
                    "it lists {}, which this job did not copy and this key has not signed \
                     (sign it first, or mirror every platform of the tag)",
                    child.digest
                )));
            }
        }
    }
    for attestation in index.manifests.iter().filter(|c| c.is_attestation()) {
        let of_vouched = attestation
            .attests()
            .is_some_and(|subject| vouched.contains(&&subject));
        if !of_vouched && !planned.contains(&attestation.digest) {
            return Err(refuse(format!(
                "it lists the attestation {}, which is of no manifest this key vouches for",
                attestation.digest
            )));
        }
    }
    Ok(())
}
