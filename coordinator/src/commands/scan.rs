//! `scan`: each selected platform image's package inventory (from its layers, or from the
//! cache by digest) matched against an OSV database the user carries in; Hangar's report
//! formats plus CycloneDX, a severity filter and an exit code for CI gates.

use std::sync::Arc;

use anyhow::{Context as _, Result, bail};
use hangar_shared::cache::BlobCache;
use hangar_shared::manifest::Descriptor;
use hangar_shared::scan::Inventory;
use hangar_shared::scan::matcher;
use hangar_shared::scan::osv::Database;
use hangar_shared::scan::report::{self, Format, Scanned};
use hangar_shared::task::Outcome;

use crate::cli::ScanArgs;
use crate::console::Console;
use crate::engine::planner;
use crate::engine::work::{self, ImageOutcomes, Work};
use crate::spec::{JobKind, JobSpec};

/// One platform image's inventory as its task read it: the entry, and whether it came
/// from the cache.
type ReadInventory = (Descriptor, Inventory, bool);

/// Exit with a chosen status (the `--exit-code` gate), after the report is written.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ExitWith {
    pub code: u8,
    pub message: String,
}

/// The scan report of a job's scan tasks (`--scan-db`): the workers' inventories matched
/// here, written as the json report; images named by their source (`save`) or destination.
pub fn report_job(
    report: &crate::engine::job::JobReport,
    db: &Database,
    path: &std::path::Path,
    by_source: bool,
    console: &Console,
) -> Result<()> {
    for (job, e) in &report.scan_failures {
        console.warn(
            None,
            format!(
                "Failed to scan [{}]: {}: {}",
                job.name.dest, e.class, e.message
            ),
        );
    }
    let mut budget = matcher::RunBudget::default();
    let mut scanned: Vec<Scanned> = Vec::with_capacity(report.scans.len());
    for (job, entry, inv) in &report.scans {
        let reference = if by_source {
            &job.name.source
        } else {
            &job.name.dest
        }
        .to_string();
        let matched = match budget.matched(inv, db) {
            Ok(m) => m,
            Err(e) => {
                console.warn(
                    None,
                    format!("Failed to scan [{reference}@{}]: {e}", entry.digest),
                );
                continue;
            }
        };
        for w in &matched.unparsed {
            console.warn(None, format!("[{reference}@{}] {w}", entry.digest));
        }
        scanned.push(Scanned {
            reference,
            digest: entry.digest.to_string(),
            platform: entry.platform.clone().unwrap_or_default(),
            findings: matched.findings,
            inventory: inv.clone(),
        });
    }
    scanned.sort_by(|a, b| (&a.reference, &a.digest).cmp(&(&b.reference, &b.digest)));
    let found: usize = scanned.iter().map(|s| s.findings.len()).sum();
    super::write_atomically(path, &render(&scanned, Format::Json)?)?;
    console.info(
        None,
        format!(
            "Scanned {} platform images: {found} vulnerabilities; report output to {:?}",
            scanned.len(),
            path.display().to_string()
        ),
    );
    Ok(())
}

pub async fn run(args: &ScanArgs, debug: bool, console: Arc<Console>) -> Result<()> {
    let ignored = args.trivy.check().map_err(|e| anyhow::anyhow!(e))?;
    if !ignored.is_empty() {
        console.warn(
            None,
            format!(
                "Ignored (this scanner is offline; its database is --db, never updated online): {}",
                ignored.join(", ")
            ),
        );
    }
    let Some(format) = Format::parse(&args.format.to_ascii_lowercase()) else {
        bail!(
            "unknown report format {:?}: use one of {}",
            args.format,
            Format::NAMES.join(", ")
        );
    };
    let severities: Vec<String> = args
        .severity
        .iter()
        .map(|s| s.trim().to_ascii_uppercase())
        .filter(|s| !s.is_empty())
        .collect();
    for s in &severities {
        if !matcher::SEVERITIES.contains(&s.as_str()) {
            bail!(
                "unknown severity {s:?}: use {}",
                matcher::SEVERITIES.join(", ")
            );
        }
    }
    if args.db.is_empty() {
        bail!(
            "no vulnerability database: use --db (a directory or zip of OSV records, a URL, s3:// or oci://; more than one are merged)"
        );
    }
    let max_age = (!args.skip_db_age_check).then_some(args.db_max_age.as_str());
    let db = super::scan_db::open_dbs(
        &args.db,
        args.list.access.tls_verify,
        args.list.access.authfile.as_deref(),
        max_age,
        &console,
    )
    .await?;
    let cache = match &args.cache {
        Some(url) => Some(Arc::new(BlobCache::open(url)?)),
        None => None,
    };
    let list = &args.list;
    let t = super::targets::targets(list, debug, &console)?;
    list.platforms.log(&console);
    console.info(None, format!("Scanners: [{}]", args.scanner));
    console.info(None, format!("Output Format: [{}]", args.format));
    // The inventories are read where the tasks run (this process, with `--cache`, or the
    // fleet's workers with theirs) and matched here, where the database is.
    let work = Work::Scan {
        cache: cache.clone(),
    };
    let mut failed = t.failed_lines();
    let items = &t.items;
    // Each image's inventories, in the order the images finished.
    let mut read: Vec<(usize, Vec<ReadInventory>)> = Vec::new();
    let finished = |i: usize, result: ImageOutcomes| match result {
        Ok(outcomes) => read.push((
            i,
            outcomes
                .into_iter()
                .filter_map(|(entry, outcome)| match outcome {
                    Outcome::Scanned { inventory, cached } => Some((entry, *inventory, cached)),
                    _ => None,
                })
                .collect(),
        )),
        Err(e) => {
            let target = &items[i];
            console.error(
                Some(target.entry.index),
                format!(
                    "Failed to scan [{}]: {}: {}",
                    target.image, e.class, e.message
                ),
            );
            failed.push(target.entry.original.clone());
        }
    };
    match &args.coordinator {
        // The coordinator's fleet reads the inventories; the database stays here.
        Some(server) => {
            let remote = super::remote::Remote {
                server,
                api: &args.api,
                spec: JobSpec::images(JobKind::Scan, super::targets::list_text(list)?, list),
                outage: super::targets::outage(list)?,
            };
            super::remote::replay(remote, t.items.len(), &console, finished).await?;
        }
        None => {
            let run = super::targets::open(list, &t, &console, |here, _| {
                here.cache = cache.clone();
                Ok(())
            })
            .await?;
            work::run(
                &work,
                &t.work(),
                &t.filter,
                &run.pool,
                run.bus,
                t.per_image(&run.job),
                finished,
            )
            .await?;
        }
    }
    let db = Arc::new(db);
    // Matching large inventories against a large database is CPU work: off the executor.
    let matched = {
        let db = db.clone();
        tokio::task::spawn_blocking(move || {
            let mut budget = matcher::RunBudget::default();
            read.into_iter()
                .map(|(i, images)| {
                    let images: Vec<_> = images
                        .into_iter()
                        .map(|(entry, inventory, cached)| {
                            let m = budget.matched(&inventory, &db);
                            (entry, inventory, cached, m)
                        })
                        .collect();
                    (i, images)
                })
                .collect::<Vec<_>>()
        })
        .await
        .context("matching packages")?
    };
    let mut scanned: Vec<Scanned> = Vec::new();
    for (i, images) in matched {
        let target = &items[i];
        let n = Some(target.entry.index);
        if images.is_empty() {
            console.warn(
                n,
                format!(
                    "Skip scan image [{}]: {}",
                    target.image,
                    planner::NO_PLATFORM
                ),
            );
        }
        let mut image_failed = false;
        for (entry, inventory, cached, matched) in images {
            let matched = match matched {
                Ok(m) => m,
                Err(e) => {
                    console.error(
                        n,
                        format!("Failed to scan [{}@{}]: {e}", target.image, entry.digest),
                    );
                    if !std::mem::replace(&mut image_failed, true) {
                        failed.push(target.entry.original.clone());
                    }
                    continue;
                }
            };
            let mut s = Scanned {
                reference: target.image.to_string(),
                digest: entry.digest.to_string(),
                platform: entry.platform.clone().unwrap_or_default(),
                inventory,
                findings: matched.findings,
            };
            let unparsed = matched.unparsed;
            for w in s.inventory.warnings.iter().chain(&unparsed) {
                console.warn(n, format!("[{}@{}] {w}", target.image, s.digest));
            }
            s.findings
                .retain(|f| severities.is_empty() || severities.contains(&f.severity));
            let os = s
                .inventory
                .os
                .as_ref()
                .map(|o| format!("{} {}", o.id, o.version))
                .unwrap_or_else(|| "unknown OS".into());
            console.info(
                n,
                format!(
                    "Scanned [{}@{}] ({}): {os}, {} packages, {} vulnerabilities{}{}",
                    target.image,
                    s.digest,
                    s.platform.display(),
                    s.inventory.packages.len(),
                    s.findings.len(),
                    match unparsed.len() {
                        0 => String::new(),
                        k => format!(", {k} installed versions not parsed (not checked)"),
                    },
                    if cached {
                        " (inventory from the cache)"
                    } else {
                        ""
                    }
                ),
            );
            scanned.push(s);
        }
    }
    scanned.sort_by(|a, b| (&a.reference, &a.digest).cmp(&(&b.reference, &b.digest)));
    let report = super::report_path(
        args.report.as_deref(),
        "scan-report.[FORMAT]",
        format.extension(),
    );
    super::write_atomically(&report, &render(&scanned, format)?)?;
    console.info(
        None,
        format!("Scan report output to {:?}", report.display().to_string()),
    );
    let failed_file = args
        .list
        .failed
        .clone()
        .unwrap_or_else(|| "scan-failed.txt".into());
    super::finish(&console, &failed_file, &failed, super::ListRun::Scan)?;
    let found: usize = scanned.iter().map(|s| s.findings.len()).sum();
    if found > 0 && args.exit_code != 0 {
        return Err(ExitWith {
            code: args.exit_code,
            message: format!("{found} vulnerabilities found"),
        }
        .into());
    }
    Ok(())
}

/// The report of `scanned` in `format`, dated now.
fn render(scanned: &[Scanned], format: Format) -> Result<String> {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut out = Vec::new();
    match format {
        // Built by the shared renderer, encoded here: hangar-shared has no YAML encoder.
        Format::Yaml => {
            serde_yaml_ng::to_writer(&mut out, &report::document(scanned, format, &now))?
        }
        _ => report::write(&mut out, scanned, format, &now)?,
    }
    Ok(String::from_utf8(out)?)
}
