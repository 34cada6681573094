//! Packages against OSV records: the ecosystem of each package (release-scoped for
//! distributions: `Debian:12`, `Alpine:v3.20`, `Ubuntu:22.04:LTS`), the source package for
//! distro records, the ecosystem's version order, and the first fixed version.

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use serde::{Deserialize, Serialize};

use super::os::Os;
use super::osv::{Affected, Database, Event, Record};
use super::version::{Scheme, compare, parses};
use super::{Inventory, Package, PkgKind};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub id: String,
    pub title: String,
    pub severity: String,
    pub package: String,
    pub installed: String,
    /// Empty when no fixed version is known.
    pub fixed: String,
    pub url: String,
}

/// The OSV ecosystems (most specific first) and version scheme for a package.
pub fn ecosystems(os: Option<&Os>, p: &Package) -> (Vec<String>, Scheme) {
    let major = |v: &str| v.split('.').next().unwrap_or_default().to_owned();
    let minor = |v: &str| v.split('.').take(2).collect::<Vec<_>>().join(".");
    match (p.kind, os) {
        (PkgKind::Python, _) => (vec!["PyPI".into()], Scheme::Pep440),
        (PkgKind::Dpkg, Some(os)) if os.id == "ubuntu" => (
            vec![
                format!("Ubuntu:{}:LTS", os.version),
                format!("Ubuntu:{}", os.version),
            ],
            Scheme::Dpkg,
        ),
        (PkgKind::Dpkg, Some(os)) => (vec![format!("Debian:{}", major(&os.version))], Scheme::Dpkg),
        (PkgKind::Dpkg, None) => (vec!["Debian".into()], Scheme::Dpkg),
        (PkgKind::Apk, Some(os)) => (vec![format!("Alpine:v{}", minor(&os.version))], Scheme::Apk),
        (PkgKind::Apk, None) => (vec!["Alpine".into()], Scheme::Apk),
        (PkgKind::Rpm, Some(os)) => {
            let name = match os.id.as_str() {
                "rocky" => "Rocky Linux",
                "almalinux" => "AlmaLinux",
                "rhel" => "Red Hat",
                "opensuse-leap" | "opensuse-tumbleweed" | "opensuse" => "openSUSE",
                "sles" => "SUSE",
                "mariner" | "azurelinux" => "Mariner",
                other => other,
            };
            (
                vec![format!("{name}:{}", major(&os.version)), name.to_owned()],
                Scheme::Rpm,
            )
        }
        (PkgKind::Rpm, None) => (Vec::new(), Scheme::Rpm),
    }
}

/// OSV's evaluation: events in version order; `introduced` opens, `fixed` (at or below the
/// version) and `last_affected` (below it) close. Returns (affected, first fixed above).
fn in_ranges(a: &Affected, version: &str, scheme: Scheme) -> (bool, Option<String>) {
    if a.versions.iter().any(|v| v == version) {
        return (true, first_fixed(a, version, scheme));
    }
    // Ranges cannot place a version that does not parse: undecided, which the caller
    // reports (`introduced: 0` alone would otherwise call every such version affected).
    if !parses(scheme, version) {
        return (false, None);
    }
    let mut hit = false;
    for range in a
        .ranges
        .iter()
        .filter(|r| r.kind == "ECOSYSTEM" || r.kind == "SEMVER")
    {
        let key = |e: &Event| -> Option<String> {
            e.introduced
                .clone()
                .or_else(|| e.fixed.clone())
                .or_else(|| e.last_affected.clone())
                .or_else(|| e.limit.clone())
        };
        let mut events: Vec<&Event> = range.events.iter().collect();
        events.sort_by(|x, y| match (key(x), key(y)) {
            (Some(a), Some(b)) if a == "0" => {
                if b == "0" {
                    Ordering::Equal
                } else {
                    Ordering::Less
                }
            }
            (Some(_), Some(b)) if b == "0" => Ordering::Greater,
            (Some(a), Some(b)) => compare(scheme, &a, &b).unwrap_or(Ordering::Equal),
            _ => Ordering::Equal,
        });
        let at_or_below = |v: &str| {
            v == "0" || compare(scheme, v, version).is_some_and(|o| o != Ordering::Greater)
        };
        let mut affected = false;
        for e in events {
            if let Some(i) = &e.introduced
                && at_or_below(i)
            {
                affected = true;
            } else if let Some(f) = &e.fixed
                && at_or_below(f)
            {
                affected = false;
            } else if let Some(l) = &e.last_affected
                && compare(scheme, l, version) == Some(Ordering::Less)
            {
                affected = false;
            }
        }
        hit |= affected;
    }
    (
        hit,
        if hit {
            first_fixed(a, version, scheme)
        } else {
            None
        },
    )
}

fn first_fixed(a: &Affected, version: &str, scheme: Scheme) -> Option<String> {
    a.ranges
        .iter()
        .flat_map(|r| r.events.iter().filter_map(|e| e.fixed.clone()))
        .filter(|f| compare(scheme, f, version) == Some(Ordering::Greater))
        .min_by(|x, y| compare(scheme, x, y).unwrap_or(Ordering::Equal))
}

/// What matching found in one inventory, and what it could not decide.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Matched {
    pub findings: Vec<Finding>,
    /// One line per package whose installed version does not parse in its ecosystem while
    /// records with version ranges name it: those ranges could not be evaluated, so the
    /// package is not known to be unaffected. Naming the package and version; the caller
    /// adds the image.
    pub unparsed: Vec<String>,
}

/// What matching one inventory may cost. Both come from outside — the packages from the
/// image's layers, the records from the database — and their product is the work: 100,000
/// binary packages all built from Debian's `linux` source would meet its thousands of
/// records a hundred million times, and each hit is a finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatchLimits {
    /// Findings for one inventory: 200,000 (a large, old distribution install has a few
    /// thousand).
    pub findings: usize,
    /// Records evaluated against an installed version, for one inventory: 1,000,000, a few
    /// seconds of one core (a large install meets about 100,000 — Debian's `linux` alone
    /// has some 10,000 records; packages built from the same source at the same version
    /// are evaluated once).
    pub checks: usize,
}

impl Default for MatchLimits {
    fn default() -> Self {
        MatchLimits {
            findings: 200_000,
            checks: 1_000_000,
        }
    }
}

/// Matching stopped at a [`MatchLimits`] bound: the image's scan fails with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TooMuch {
    #[error(
        "more than {0} vulnerability findings in one image: matching stopped (its package list is hostile or broken)"
    )]
    Findings(usize),
    #[error(
        "more than {0} vulnerability records to check in one image: matching stopped (its package list is hostile or broken)"
    )]
    Checks(usize),
    #[error(
        "more than {0} vulnerability findings in this run's images together: matching stopped (split the list)"
    )]
    RunFindings(usize),
}

/// The findings one run keeps across its images, each about 400 bytes until the report is
/// written: so many hostile images, each just under [`MatchLimits::findings`], cannot add up
/// to gigabytes.
#[derive(Debug)]
pub struct RunBudget {
    used: usize,
    findings: usize,
}

impl Default for RunBudget {
    fn default() -> Self {
        RunBudget::new(Self::FINDINGS)
    }
}

impl RunBudget {
    /// 1,000,000 findings: a thousand old images of a thousand each.
    pub const FINDINGS: usize = 1_000_000;

    pub fn new(findings: usize) -> Self {
        RunBudget { used: 0, findings }
    }

    /// [`matched_within`] one image, within what the run has left.
    pub fn matched(&mut self, inv: &Inventory, db: &Database) -> Result<Matched, TooMuch> {
        let per_image = MatchLimits::default();
        let left = self.findings.saturating_sub(self.used);
        let limits = MatchLimits {
            findings: per_image.findings.min(left),
            ..per_image
        };
        let m = matched_within(inv, db, limits).map_err(|e| match e {
            TooMuch::Findings(_) if left < per_image.findings => {
                TooMuch::RunFindings(self.findings)
            }
            e => e,
        })?;
        self.used += m.findings.len();
        Ok(m)
    }
}

/// Every vulnerability of every package of `inv`: [`matched`]'s findings. Prefer
/// [`matched`], which also says which versions could not be matched.
pub fn scan(inv: &Inventory, db: &Database) -> Result<Vec<Finding>, TooMuch> {
    Ok(matched(inv, db)?.findings)
}

/// Whether an affected entry has version ranges to evaluate.
fn has_ranges(a: &Affected) -> bool {
    a.ranges
        .iter()
        .any(|r| (r.kind == "ECOSYSTEM" || r.kind == "SEMVER") && !r.events.is_empty())
}

/// The vulnerabilities of one (package kind, name, version) as matching names them, shared by
/// every package built from the same source at the same version.
struct Verdict<'db> {
    hits: Vec<(&'db Record, &'db Affected, Option<String>)>,
    /// Records whose ranges could not place a version that does not parse.
    undecided: usize,
}

/// [`matched_within`] the default [`MatchLimits`].
pub fn matched(inv: &Inventory, db: &Database) -> Result<Matched, TooMuch> {
    matched_within(inv, db, MatchLimits::default())
}

/// Every vulnerability of every package of `inv`, one finding per (record, package); a
/// record reached twice through its aliases (Debian's `DEBIAN-CVE-…` and `CVE-…`) counts
/// once. An installed version that does not parse in its ecosystem matches only records
/// listing it exactly, and is reported in [`Matched::unparsed`] when ranges went unread.
pub fn matched_within(
    inv: &Inventory,
    db: &Database,
    limits: MatchLimits,
) -> Result<Matched, TooMuch> {
    let mut out = Vec::new();
    let mut unparsed = Vec::new();
    let mut checks = 0usize;
    let mut verdicts: HashMap<(PkgKind, String, String), Rc<Verdict<'_>>> = HashMap::new();
    for p in &inv.packages {
        let (ecos, scheme) = ecosystems(inv.os.as_ref(), p);
        let name = p.source.clone().unwrap_or_else(|| p.name.clone());
        let version = p
            .source_version
            .clone()
            .unwrap_or_else(|| p.version.clone());
        let key = (p.kind, name, version);
        let verdict = match verdicts.get(&key) {
            Some(v) => v.clone(),
            None => {
                let v = Rc::new(verdict(db, &ecos, scheme, &key.1, &key.2, &mut checks));
                if checks > limits.checks {
                    return Err(TooMuch::Checks(limits.checks));
                }
                verdicts.insert(key.clone(), v.clone());
                v
            }
        };
        let (_, name, version) = &key;
        if out.len() + verdict.hits.len() > limits.findings {
            return Err(TooMuch::Findings(limits.findings));
        }
        out.extend(
            verdict
                .hits
                .iter()
                .map(|(record, affected, fixed)| Finding {
                    id: record.id.clone(),
                    title: record.title(),
                    severity: record.severity(affected),
                    package: p.name.clone(),
                    installed: p.version.clone(),
                    fixed: fixed.clone().unwrap_or_default(),
                    url: format!("https://osv.dev/vulnerability/{}", record.id),
                }),
        );
        if verdict.undecided > 0 {
            let of = if *version == p.version && *name == p.name {
                String::new()
            } else {
                format!(" (source {name} {version})")
            };
            unparsed.push(format!(
                "package {} version {:?}{of} does not parse in {} order: {} vulnerability \
                 records for it could not be checked, so it is not known to be unaffected",
                p.name,
                p.version,
                scheme.name(),
                verdict.undecided
            ));
        }
    }
    out.sort_by(|a, b| (&a.package, &a.id).cmp(&(&b.package, &b.id)));
    Ok(Matched {
        findings: out,
        unparsed,
    })
}

/// The records of `name` at `version` in `ecos` (most specific first), each vulnerability
/// once; `checks` counts the records evaluated.
fn verdict<'db>(
    db: &'db Database,
    ecos: &[String],
    scheme: Scheme,
    name: &str,
    version: &str,
    checks: &mut usize,
) -> Verdict<'db> {
    let parsed = parses(scheme, version);
    let mut undecided: HashSet<&str> = HashSet::new();
    // Each record once, from the most specific ecosystem that names the package.
    let mut reached: HashSet<&str> = HashSet::new();
    let mut hits = Vec::new();
    for eco in ecos {
        for (record, affected) in db.candidates(eco, name) {
            if !reached.insert(&record.id) {
                continue;
            }
            *checks += 1;
            let (hit, fixed) = in_ranges(affected, version, scheme);
            if hit {
                hits.push((record, affected, fixed));
            } else if !parsed && has_ranges(affected) {
                undecided.insert(&record.id);
            }
        }
    }
    // One finding per vulnerability: a record that another names among its aliases
    // (`CVE-…` beside Debian's `DEBIAN-CVE-…`, which aliases it) defers to that one;
    // records naming each other, the first by id. Not the order the records were read.
    let hit_ids: HashSet<&str> = hits.iter().map(|(r, _, _)| r.id.as_str()).collect();
    let names_another = |r: &Record| r.aliases.iter().any(|a| hit_ids.contains(a.as_str()));
    hits.sort_by(|(x, _, _), (y, _, _)| {
        (!names_another(x), &x.id).cmp(&(!names_another(y), &y.id))
    });
    let mut seen: HashSet<&str> = HashSet::new();
    let mut kept = Vec::with_capacity(hits.len());
    for (record, affected, fixed) in hits {
        if seen.contains(record.id.as_str())
            || record.aliases.iter().any(|a| seen.contains(a.as_str()))
        {
            continue;
        }
        seen.insert(&record.id);
        seen.extend(record.aliases.iter().map(String::as_str));
        kept.push((record, affected, fixed));
    }
    undecided.retain(|id| !seen.contains(id));
    Verdict {
        hits: kept,
        undecided: undecided.len(),
    }
}

pub const SEVERITIES: [&str; 5] = ["UNKNOWN", "LOW", "MEDIUM", "HIGH", "CRITICAL"];

pub fn severity_rank(s: &str) -> usize {
    SEVERITIES.iter().position(|x| *x == s).unwrap_or(0)
}

#[cfg(test)]
mod tests;
