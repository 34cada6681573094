//! Sign one digest with one of this worker's keys, cosign-style; nothing is added when the
//! key's signature is already there, so a redelivered task is harmless. A key given a
//! `--sign-scope` signs only inside it, and on the fleet an index another worker reported
//! only when it lists what its job planned ([`vouch`]).

use hangar_shared::error::{Error, Result};
use hangar_shared::sign::cosign::{self, Signed};
use hangar_shared::sign::vouch;
use hangar_shared::task::{Outcome, SignTask};

use crate::Context;

pub async fn sign(ctx: &Context, task: &SignTask) -> Result<Outcome> {
    let key = ctx.sign_keys.get(&task.key).ok_or_else(|| {
        Error::invalid(format!(
            "this worker has no signing key named {:?} (--sign-key NAME=PATH)",
            task.key
        ))
    })?;
    if let Some(policy) = &ctx.policy {
        policy
            .signing
            .check(&task.key, &task.dest, &task.identity)?;
    }
    let store = ctx.stores.resolve(&task.dest.store).await?;
    let what = format!("sign {}@{}", task.dest, task.digest);
    let signed = ctx
        .retry
        .run(&what, || async {
            // The check stands against another worker's word: embedded, the index was
            // written by this process.
            if let (Some(planned), Some(_)) = (&task.index_of, &ctx.policy) {
                vouch::check_index(
                    store.as_ref(),
                    &task.dest.repo,
                    &task.digest,
                    planned,
                    &key.public(),
                )
                .await?;
            }
            cosign::sign(
                store.as_ref(),
                &task.dest.repo,
                &task.digest,
                &task.identity,
                key,
            )
            .await
        })
        .await?;
    Ok(Outcome::Signed {
        added: signed == Signed::Added,
    })
}
