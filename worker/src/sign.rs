//! Sign one digest with one of this worker's keys, cosign-style; nothing is added when the
//! key's signature is already there, so a redelivered task is harmless. A key given a
//! `--sign-scope` signs only inside it, and an index a worker reported only when it lists
//! what its job planned ([`vouch`]).

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
            if let Some(planned) = &task.index_of {
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
