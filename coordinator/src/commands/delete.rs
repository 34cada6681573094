//! `delete REF`: fetch the manifest (it must exist), confirm, delete it by digest.

use anyhow::{Result, bail};
use hangar_shared::registry::Side;

use crate::cli::DeleteArgs;
use crate::console::Console;

pub async fn run(args: &DeleteArgs, console: &Console) -> Result<()> {
    let r = super::docker_reference(&args.reference, None)?;
    let pool = super::pool(args.access.tls_verify, args.access.authfile.as_deref());
    let reg = pool.registry(&r.registry).await?;
    let Some(m) = reg
        .manifest_opt(&r.repository(), &r.manifest_reference(), Side::Destination)
        .await?
    else {
        bail!("image \"docker://{r}\" not found");
    };
    if !args.yes && !super::confirm(&format!("Image \"docker://{r}\" will be deleted! proceed?")) {
        bail!("abort by user");
    }
    reg.delete_manifest(&r.repository(), &m.digest).await?;
    console.info(
        None,
        format!("Deleted image \"docker://{r}\" ({})", m.digest),
    );
    Ok(())
}
