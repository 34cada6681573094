//! A source's cosign signatures checked as `sigstoreSigned` requires: by one of the keys,
//! with the identity the policy asks for.

use serde_json::Value;

use super::name::DockerName;
use super::{Identity, KeySource};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::reference::ImageRef;
use crate::registry::Side;
use crate::sign::cosign::{self, Verdict};
use crate::store::ImageStore;

/// The digest of the source's top manifest, the one containers/image verifies.
pub(super) async fn top_digest(store: &dyn ImageStore, image: &ImageRef) -> Result<Digest> {
    store
        .get_manifest(
            &image.repository(),
            &image.manifest_reference(),
            Side::Source,
        )
        .await?
        .map(|m| m.digest)
        .ok_or_else(|| Error::not_found(format!("{image}: manifest unknown")))
}

/// `Ok(Err(reason))` when no signature of `digest` is accepted by one of `keys` with
/// `identity`, in containers/image's words.
pub(super) async fn signed(
    store: &dyn ImageStore,
    repo: &str,
    image: &ImageRef,
    digest: &Digest,
    keys: &[KeySource],
    identity: &Identity,
) -> Result<std::result::Result<(), String>> {
    let Some(intended) = DockerName::parse(&image.to_string()) else {
        return Ok(Err(format!("{image} is not a valid Docker reference")));
    };
    let hint = identity.hint(image, &intended);
    let mut reasons: Vec<String> = Vec::new();
    let mut found = false;
    for source in keys {
        let key = match source.load() {
            Ok(k) => k,
            Err(e) => {
                reasons.push(e);
                continue;
            }
        };
        // With the likely identity first, so that of several signatures by this key the
        // one for this repository is found; then any, for the exact reason of a refusal.
        let passes = [hint.as_deref(), None];
        for exact in passes.iter().take(if hint.is_some() { 2 } else { 1 }) {
            let last = exact.is_none();
            match cosign::verify(store, repo, digest, &key, *exact).await? {
                Verdict::NoSignature => break,
                Verdict::Invalid(why) => {
                    found = true;
                    if last {
                        reasons.push(why);
                    }
                }
                Verdict::Verified { payload } => {
                    found = true;
                    let claimed = signed_identity(&payload);
                    if identity.matches(&intended, &claimed) {
                        return Ok(Ok(()));
                    }
                    if last {
                        reasons.push(format!(
                            "Signature for identity {claimed:?} is not accepted"
                        ));
                    }
                }
            }
        }
    }
    if !found && reasons.is_empty() {
        return Ok(Err(
            "A signature was required, but no signature exists".into()
        ));
    }
    reasons.dedup();
    Ok(Err(match reasons.as_slice() {
        [one] => one.clone(),
        _ => format!(
            "None of the signatures were accepted, reasons: {}",
            reasons.join("; ")
        ),
    }))
}

fn signed_identity(payload: &str) -> String {
    serde_json::from_str::<Value>(payload)
        .ok()
        .and_then(|v| {
            v["critical"]["identity"]["docker-reference"]
                .as_str()
                .map(str::to_owned)
        })
        .unwrap_or_default()
}
