//! Scheduled bulk runs for `hangar-coord serve --schedule FILE`: each entry names a cron
//! expression (5 fields, or 6 with seconds), a list file read afresh at each run, and the
//! job as a [`JobSpec`] says it (`kind`, `source`, `destination`, `options`; unknown fields
//! are refused). A run due while the schedule's previous run is still queued or running is
//! skipped, not stacked. Runs missed while the coordinator was down are not replayed: the
//! next run is the next time the expression matches after it starts (a resumed run still
//! counts as busy).
//!
//! ```yaml
//! - name: nightly
//!   cron: "0 2 * * *"
//!   list: /lists/nightly.txt
//!   destination: {registry: registry.local:5000}
//!   options: {jobs: 10}
//! ```

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, Result, bail};
use serde::Deserialize;

use crate::console::Console;
use crate::serve::JobRequest;
use crate::spec::{Endpoint, JobKind, JobSpec, Options, VERSION};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    pub name: String,
    pub cron: String,
    pub list: PathBuf,
    #[serde(default = "mirror")]
    pub kind: JobKind,
    #[serde(default)]
    pub source: Endpoint,
    #[serde(default)]
    pub destination: Endpoint,
    #[serde(default)]
    pub options: Options,
}

fn mirror() -> JobKind {
    JobKind::Mirror
}

impl Schedule {
    /// The job this schedule runs, with the list's text as it is now.
    fn spec(&self, list: String) -> JobSpec {
        JobSpec {
            version: VERSION,
            kind: self.kind,
            list,
            source: self.source.clone(),
            destination: self.destination.clone(),
            options: self.options.clone(),
        }
    }
}

/// Reads and checks a schedule file: names unique, expressions valid, lists readable.
pub fn load(path: &Path) -> Result<Vec<Schedule>> {
    let text = hangar_shared::local_file::read_text(path, hangar_shared::local_file::CONFIG)
        .with_context(|| format!("reading schedule file {}", path.display()))?;
    let entries: Vec<Schedule> = serde_yaml_ng::from_str(&text)
        .with_context(|| format!("{}: not a list of schedules", path.display()))?;
    let mut names = std::collections::HashSet::new();
    for (i, s) in entries.iter().enumerate() {
        let at = format!("{} entry {} ({:?})", path.display(), i + 1, s.name);
        if s.name.is_empty() || !names.insert(s.name.clone()) {
            bail!("{at}: every schedule needs a unique name");
        }
        croner::parser::CronParser::new()
            .parse(&s.cron)
            .with_context(|| format!("{at}: invalid cron expression {:?}", s.cron))?;
        if !s.list.is_file() {
            bail!("{at}: list {} does not exist", s.list.display());
        }
        if let Err(e) = s.spec(String::new()).check() {
            bail!("{at}: {e}");
        }
    }
    Ok(entries)
}

/// Fires the schedules for ever. `busy(name)` gives the id of the schedule's run still in
/// progress; `start(request)` starts a job and gives its id.
pub async fn run<B, BF, S, SF>(schedules: Vec<Schedule>, console: Arc<Console>, busy: B, start: S)
where
    B: Fn(String) -> BF,
    BF: Future<Output = Option<String>>,
    S: Fn(JobRequest) -> SF,
    SF: Future<Output = Result<String, String>>,
{
    let parser = croner::parser::CronParser::new();
    let crons: Vec<_> = schedules
        .iter()
        .filter_map(|s| parser.parse(&s.cron).ok().map(|c| (s, c)))
        .collect();
    loop {
        let now = chrono::Utc::now();
        let next = crons
            .iter()
            .filter_map(|(s, c)| c.find_next_occurrence(&now, false).ok().map(|t| (t, *s)))
            .min_by_key(|(t, _)| *t);
        let Some((when, _)) = next else {
            console.warn(None, "No schedule will ever fire again");
            return;
        };
        let wait = (when - now).to_std().unwrap_or_default();
        tokio::time::sleep(wait).await;
        for (s, c) in &crons {
            if !c.is_time_matching(&when).unwrap_or(false) {
                continue;
            }
            if let Some(id) = busy(s.name.clone()).await {
                console.warn(
                    None,
                    format!(
                        "Skipped scheduled run of {:?}: its previous run {id} is still going",
                        s.name
                    ),
                );
                continue;
            }
            let list = match hangar_shared::local_file::read_text(
                &s.list,
                hangar_shared::local_file::LIST,
            ) {
                Ok(l) => l,
                Err(e) => {
                    console.error(
                        None,
                        format!(
                            "Scheduled run of {:?}: reading {}: {e}",
                            s.name,
                            s.list.display()
                        ),
                    );
                    continue;
                }
            };
            let request = JobRequest {
                spec: s.spec(list),
                schedule: Some(s.name.clone()),
                owner: None,
                trace: None,
            };
            match start(request).await {
                Ok(id) => console.info(
                    None,
                    format!("Scheduled run of {:?} started as job {id}", s.name),
                ),
                Err(e) => {
                    console.error(None, format!("Scheduled run of {:?} refused: {e}", s.name))
                }
            }
        }
    }
}
