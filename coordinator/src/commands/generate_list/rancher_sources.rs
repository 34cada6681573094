//! Rancher's own sources, when `generate-list` is given only `--rancher` (as Hangar does):
//! its chart repositories cloned with git (one commit of the version's branch) and its KDM
//! data downloaded. `--git-base` and `--kdm-base` name mirrors of GitHub and of Rancher's
//! release site, for sites that reach neither.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use hangar_shared::process_group::ProcessGroup;

/// How long one clone may take: Rancher's chart repository is a few hundred MB at depth 1.
const CLONE_TIME: Duration = Duration::from_secs(30 * 60);

/// Where a Rancher version's charts and KDM data are read.
#[derive(Debug, PartialEq, Eq)]
pub struct Sources {
    /// (repository URL, branch) of the chart repositories.
    pub charts: Vec<(String, String)>,
    pub system_charts: Vec<(String, String)>,
    /// KDM `data.json`: a URL, or a path under a local mirror.
    pub kdm: String,
}

/// The sources of `rancher` (a community build; Rancher Prime GC builds read other
/// repositories whose branches are not documented, and are refused).
pub fn for_version(
    rancher: &semver::Version,
    gc: bool,
    dev: bool,
    git_base: &str,
    kdm_base: &str,
) -> Result<Sources> {
    if gc {
        bail!(
            "Rancher Prime GC builds (-ent) read cnrancher's repositories: give their sources \
             with --kdm, --chart and --system-chart"
        );
    }
    let branch = format!(
        "{}-v{}.{}",
        if dev { "dev" } else { "release" },
        rancher.major,
        rancher.minor
    );
    let git = git_base.trim_end_matches('/');
    // System charts ended with Rancher 2.11.
    let system_charts = match super::version::cmp(rancher, &semver::Version::parse("2.11.0-0")?) {
        std::cmp::Ordering::Less => vec![(format!("{git}/rancher/system-charts"), branch.clone())],
        _ => Vec::new(),
    };
    Ok(Sources {
        charts: vec![(format!("{git}/rancher/charts"), branch.clone())],
        system_charts,
        kdm: format!("{}/{branch}/data.json", kdm_base.trim_end_matches('/')),
    })
}

/// Clones one commit of `branch` of `url` into `into` with git, `within` the given time
/// or [`CLONE_TIME`]; git and its helpers are killed when the time is up or on Ctrl-C.
pub async fn clone(url: &str, branch: &str, into: &Path, within: Option<Duration>) -> Result<()> {
    let within = within.unwrap_or(CLONE_TIME);
    let mut git = tokio::process::Command::new("git");
    git.args([
        "clone",
        "--quiet",
        "--depth",
        "1",
        "--single-branch",
        "--branch",
    ])
    .arg(branch)
    // No template hooks, no prompts for credentials: a clone either works or says why.
    .args(["--template=", "--", url])
    .arg(into)
    .env("GIT_TERMINAL_PROMPT", "0")
    // In its own process group git has no terminal: ssh must not ask one either.
    .env(
        "GIT_SSH_COMMAND",
        std::env::var("GIT_SSH_COMMAND").unwrap_or_else(|_| "ssh -o BatchMode=yes".into()),
    )
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    // Its own process group: git runs helpers (`git-remote-https`) that must go with it.
    .process_group(0)
    .kill_on_drop(true);
    let child = match git.spawn() {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "cloning {url}: git is not installed (install it, or clone the repository and give \
             it with --chart/--system-chart)"
        ),
        Err(e) => {
            return Err(e).with_context(|| {
                format!(
                    "running git clone {}",
                    hangar_shared::redact::redact_location(url)
                )
            });
        }
    };
    // Whatever ends the wait (the time, Ctrl-C dropping the run, an error) ends git and
    // its helpers too.
    let group = child
        .id()
        .and_then(ProcessGroup::led_by)
        .map(ProcessGroup::killed_on_drop);
    let mut child = child;
    // What git says is the server's to fill (its sideband messages): kept up to 64 KiB,
    // the rest read and dropped so that git never waits on a full pipe.
    let said = child.stderr.take().map(|e| tokio::spawn(keep_head(e)));
    let out = child.stdout.take().map(|o| tokio::spawn(keep_head(o)));
    let status = match tokio::time::timeout(within, child.wait()).await {
        Err(_) => bail!(
            "cloning {url} ({branch}): not done within {}",
            humantime::format_duration(within)
        ),
        Ok(status) => status.with_context(|| {
            format!(
                "running git clone {}",
                hangar_shared::redact::redact_location(url)
            )
        })?,
    };
    drop(out);
    // Git is done: what it started (a credential helper holding its stderr) goes too, so
    // that its words can be read to their end.
    drop(group);
    if !status.success() {
        let said = match said {
            Some(task) => tokio::time::timeout(std::time::Duration::from_secs(5), task)
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default(),
            None => Vec::new(),
        };
        let said = String::from_utf8_lossy(&said);
        let said: String = said.trim().chars().take(2000).collect();
        bail!(
            "cloning {} (branch {branch}) failed: {said}",
            hangar_shared::redact::redact_location(url)
        );
    }
    Ok(())
}

/// The first 64 KiB of `from`, reading the rest to its end and dropping it.
async fn keep_head(mut from: impl tokio::io::AsyncRead + Unpin) -> Vec<u8> {
    use tokio::io::AsyncReadExt as _;
    const KEPT: usize = 64 << 10;
    let mut kept = Vec::new();
    let mut buf = vec![0u8; 16 << 10];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                let room = KEPT.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branches_and_repositories_follow_the_version() {
        let v = |s: &str| semver::Version::parse(s).unwrap();
        let s = for_version(
            &v("2.9.3"),
            false,
            false,
            "https://github.com/",
            "https://k",
        )
        .unwrap();
        assert_eq!(
            s,
            Sources {
                charts: vec![(
                    "https://github.com/rancher/charts".into(),
                    "release-v2.9".into()
                )],
                system_charts: vec![(
                    "https://github.com/rancher/system-charts".into(),
                    "release-v2.9".into()
                )],
                kdm: "https://k/release-v2.9/data.json".into(),
            }
        );
        let s = for_version(&v("2.11.0"), false, true, "https://g", "https://k").unwrap();
        assert!(s.system_charts.is_empty());
        assert_eq!(s.charts[0].1, "dev-v2.11");
        assert!(for_version(&v("2.9.0"), true, false, "g", "k").is_err());
    }
}
