//! Read-only checks of one image where it is (`mirror`, `save`, `load` and `sign
//! validate`): the verdict is the outcome. Nothing is written, so any delivery may run them again.

use hangar_shared::digest::Digest;
use hangar_shared::error::Result;
use hangar_shared::manifest::{Descriptor, Manifest};
use hangar_shared::registry::Side;
use hangar_shared::sign::PublicKey;
use hangar_shared::sign::cosign;
use hangar_shared::task::{CheckTask, Outcome, Verdict};

use crate::Context;

/// `expect`'s entries not in `present`, named with their platforms.
fn missing(expect: &[Descriptor], present: impl Fn(&Digest) -> bool) -> Verdict {
    let missing: Vec<String> = expect
        .iter()
        .filter(|e| !present(&e.digest))
        .map(|e| {
            let platform = e.platform.as_ref().map(|p| p.display());
            format!("{} ({})", e.digest, platform.unwrap_or_default())
        })
        .collect();
    if missing.is_empty() {
        Verdict::Pass { payload: None }
    } else {
        Verdict::Fail {
            why: format!("missing {}", missing.join(", ")),
        }
    }
}

pub async fn check(ctx: &Context, task: &CheckTask) -> Result<Outcome> {
    let store = match task {
        CheckTask::Contains { store, .. }
        | CheckTask::Present { store, .. }
        | CheckTask::Signature { store, .. } => store,
    };
    // On a fleet worker an archive is opened only inside the archive roots, at the
    // location checked (`policy::Confined`, its store resolver).
    let resolved = ctx.stores.resolve(&store.store).await?;
    let verdict = match task {
        CheckTask::Contains {
            store,
            reference,
            expect,
            whole,
        } => {
            let what = format!("read {store}:{reference}");
            let found = ctx
                .retry
                .run(&what, || {
                    resolved.get_manifest(&store.repo, reference, Side::Destination)
                })
                .await?;
            match found {
                None => Verdict::Fail {
                    why: "destination image does not exist".into(),
                },
                Some(found) if whole.as_ref() == Some(&found.digest) => {
                    Verdict::Pass { payload: None }
                }
                Some(found) => {
                    let mut present = vec![found.digest.clone()];
                    if let Manifest::Index(index) = found.parse()? {
                        present.extend(index.manifests.into_iter().map(|m| m.digest));
                    }
                    missing(expect, |d| present.contains(d))
                }
            }
        }
        CheckTask::Present { store, expect } => {
            let mut found = Vec::new();
            for e in expect {
                let what = format!("read {store}@{}", e.digest);
                let reference = e.digest.to_string();
                let got = ctx
                    .retry
                    .run(&what, || {
                        resolved.get_manifest(&store.repo, &reference, Side::Destination)
                    })
                    .await?;
                if got.is_some() {
                    found.push(e.digest.clone());
                }
            }
            missing(expect, |d| found.contains(d))
        }
        CheckTask::Signature {
            store,
            digest,
            public_key,
            identity,
        } => {
            let key = PublicKey::from_pem(public_key, "the check's public key")?;
            let what = format!("verify {store}@{digest}");
            let verdict = ctx
                .retry
                .run(&what, || {
                    cosign::verify(
                        resolved.as_ref(),
                        &store.repo,
                        digest,
                        &key,
                        identity.as_deref(),
                    )
                })
                .await?;
            match verdict {
                cosign::Verdict::Verified { payload } => Verdict::Pass {
                    payload: Some(payload),
                },
                cosign::Verdict::NoSignature => Verdict::Absent,
                cosign::Verdict::Invalid(why) => Verdict::Fail { why },
            }
        }
    };
    Ok(Outcome::Checked { verdict })
}
