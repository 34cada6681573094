//! `mirror validate`: every selected source platform digest (and attestation, with
//! `--provenance`) must be in the destination's index at the tag.

use std::sync::Arc;

use anyhow::Result;
use futures_util::StreamExt;
use hangar_shared::error::{Error, FailureClass};
use hangar_shared::manifest::{Manifest, PlatformFilter};
use hangar_shared::registry::Side;
use hangar_shared::store::RegistryPool;

use crate::cli::MirrorArgs;
use crate::console::Console;
use crate::engine::planner::{self, ImageJob, NO_PLATFORM};

enum Verdict {
    Pass,
    Skip,
    Fail(String),
}

async fn check(
    pool: &RegistryPool,
    job: &ImageJob,
    filter: &PlatformFilter,
    provenance: bool,
) -> Result<Verdict, Error> {
    let source = pool.registry(&job.source.registry).await?;
    let selection = planner::select(source.as_ref(), None, &job.source, filter, provenance).await?;
    if !selection.entries.iter().any(|e| !e.is_attestation()) {
        return Ok(Verdict::Skip);
    }
    let dest = pool.registry(&job.dest.registry).await?;
    let Some(found) = dest
        .manifest_opt(
            &job.dest.repository(),
            &job.dest.manifest_reference(),
            Side::Destination,
        )
        .await?
    else {
        return Ok(Verdict::Fail("destination image does not exist".into()));
    };
    let mut present = vec![found.digest.clone()];
    if let Manifest::Index(idx) = found.parse()? {
        present.extend(idx.manifests.into_iter().map(|m| m.digest));
    }
    if selection.complete
        && selection
            .top
            .as_ref()
            .is_some_and(|t| t.digest == found.digest)
    {
        return Ok(Verdict::Pass);
    }
    let missing: Vec<String> = selection
        .entries
        .iter()
        .filter(|e| !present.contains(&e.digest))
        .map(|e| {
            format!(
                "{} ({})",
                e.digest,
                e.platform.as_ref().map(|p| p.display()).unwrap_or_default()
            )
        })
        .collect();
    if missing.is_empty() {
        Ok(Verdict::Pass)
    } else {
        Ok(Verdict::Fail(format!("missing {}", missing.join(", "))))
    }
}

pub async fn run(args: &MirrorArgs, debug: bool, console: Arc<Console>) -> Result<()> {
    let prepared = super::mirror::prepare(args, debug, &console)?;
    let pool = Arc::new(super::pool(args.tls_verify, args.authfile.as_deref()));
    let filter = prepared.filter.clone();
    let mut failed = super::report_rejected(&console, &prepared.rejected, "validate");
    let mut results = futures_util::stream::iter(prepared.images.iter())
        .map(|job| {
            let (pool, filter, timeout) = (pool.clone(), filter.clone(), prepared.timeout);
            async move {
                let verdict = super::targets::with_timeout(
                    timeout,
                    check(&pool, job, &filter, args.provenance),
                )
                .await;
                (job, verdict)
            }
        })
        .buffer_unordered(prepared.jobs.max(4));
    let (mut passed, mut skipped) = (0, 0);
    while let Some((job, verdict)) = results.next().await {
        let n = Some(job.entry.index);
        match verdict {
            Ok(Verdict::Pass) => {
                passed += 1;
                console.info(n, format!("PASS: [{}] == [{}]", job.source, job.dest))
            }
            Ok(Verdict::Skip) => {
                skipped += 1;
                console.warn(
                    n,
                    format!("Skip validate image [{}]: {NO_PLATFORM}", job.source),
                )
            }
            Ok(Verdict::Fail(why)) => {
                console.error(
                    n,
                    format!("FAILED: [{}] != [{}]: {why}", job.source, job.dest),
                );
                failed.push(job.entry.original.clone());
            }
            Err(e) => {
                let class = if e.class == FailureClass::NotFound {
                    "not found"
                } else {
                    e.class.as_str()
                };
                console.error(
                    n,
                    format!(
                        "FAILED: [{}] => [{}]: {class}: {}",
                        job.source, job.dest, e.message
                    ),
                );
                failed.push(job.entry.original.clone());
            }
        }
    }
    super::verdicts(&console, passed, failed.len(), skipped);
    super::finish(&console, &args.failed, &failed, "validate")
}
