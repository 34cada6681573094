//! `list-tags REPO`: sorted tags as a 2-space-indented JSON array (`[]` when empty).

use anyhow::Result;

use crate::cli::RepoArgs;

pub async fn run(args: &RepoArgs) -> Result<()> {
    let r = super::docker_reference(&args.repository, None)?;
    let pool = super::pool(args.access.tls_verify, args.access.authfile.as_deref());
    let reg = pool.registry(&r.registry).await?;
    let tags = reg.tags(&r.repository()).await?;
    crate::stdout::outln!("{}", serde_json::to_string_pretty(&tags)?)?;
    Ok(())
}
