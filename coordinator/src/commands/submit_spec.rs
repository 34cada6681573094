//! `submit --spec FILE`: a job specification of any kind sent to a coordinator as it is.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};

use super::remote::{Remote, copy_job, run_images};
use crate::cli::MirrorArgs;
use crate::console::Console;
use crate::spec::JobKind;
use hangar_shared::task::{Outcome, Verdict};

/// The largest job specification read from a file (a list of a hundred thousand lines
/// is a few MiB).
const MAX_SPEC: u64 = 64 << 20;

/// `submit --spec FILE --server URL`: a job specification of any kind (docs/API.md), sent
/// as it is. A copy reports as `submit` does; a job over images reports each image's end
/// (its outcomes are the job's results, `GET /jobs/{id}/results`), and the lines of the
/// images that failed go to `failed`.
pub async fn submit_spec(
    server: &str,
    file: &std::path::Path,
    args: &MirrorArgs,
    console: Arc<Console>,
) -> Result<()> {
    let bytes = super::bounded::read_file(file, MAX_SPEC)
        .with_context(|| format!("job specification {}", file.display()))?;
    let spec = crate::spec::JobSpec::from_json(&bytes)
        .map_err(|e| anyhow::anyhow!("job specification {}: {e}", file.display()))?;
    spec.check()
        .map_err(|e| anyhow::anyhow!("job specification {}: {e}", file.display()))?;
    let outage = humantime::parse_duration(&args.timeout)
        .with_context(|| format!("invalid --timeout {:?}", args.timeout))?;
    let outage = if outage.is_zero() {
        Duration::from_secs(600)
    } else {
        outage
    };
    let run = super::ListRun::of(spec.kind);
    if matches!(
        spec.kind,
        JobKind::Mirror | JobKind::Save | JobKind::Sync | JobKind::Load
    ) {
        let remote = Remote {
            server,
            api: &args.fleet.remote.api,
            spec,
            outage,
        };
        return copy_job(remote, &args.failed, &console).await;
    }
    let kind = spec.kind;
    let (snap, mut results) =
        run_images((server, &args.fleet.remote.api), &spec, outage, &console).await?;
    results.sort_by_key(|r| r.item);
    let mut failed = Vec::new();
    for report in &results {
        let name = report.image.as_ref().map_or_else(
            || format!("image {}", report.item + 1),
            |i| i.source.clone(),
        );
        let n = report.image.as_ref().map(|i| i.entry);
        // A verdict against the image fails it; nothing to judge is a warning only for
        // signatures (as `sign validate` says), a missing image for the others.
        let against = report.outcomes.iter().find_map(|(_, o)| match o {
            Outcome::Checked {
                verdict: Verdict::Fail { why },
            } => Some(why.clone()),
            Outcome::Checked {
                verdict: Verdict::Absent,
            } if !matches!(kind, JobKind::SignValidate) => Some("absent".to_owned()),
            _ => None,
        });
        let why = match &report.error {
            Some(e) => Some(format!("{:?}: {}", e.class, e.message)),
            None => against,
        };
        match why {
            Some(why) => {
                console.error(n, format!("FAILED: [{name}]: {why}"));
                failed.extend(report.image.as_ref().map(|i| i.line.clone()));
            }
            None => console.info(
                n,
                format!("Done: [{name}]: {} outcomes", report.outcomes.len()),
            ),
        }
    }
    // Lines the coordinator refused before any work have no image of their own.
    let reported: std::collections::HashSet<&str> = results
        .iter()
        .filter_map(|r| r.image.as_ref().map(|i| i.line.as_str()))
        .collect();
    for line in snap
        .failed_lines
        .iter()
        .filter(|l| !reported.contains(l.as_str()))
    {
        let why = snap
            .failure_of(line)
            .unwrap_or("refused by the coordinator");
        console.error(None, format!("FAILED: [{line}]: {why}"));
        failed.push(line.clone());
    }
    console.info(
        None,
        format!(
            "Job {}: {} images; each image's outcomes: GET {server}/jobs/{}/results",
            snap.id, snap.total, snap.id
        ),
    );
    super::finish(&console, &args.failed, &failed, run)
}
