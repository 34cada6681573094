//! Packages against OSV records: the ecosystem of each package (release-scoped for
//! distributions: `Debian:12`, `Alpine:v3.20`, `Ubuntu:22.04:LTS`), the source package for
//! distro records, the ecosystem's version order, and the first fixed version.

use std::cmp::Ordering;
use std::collections::HashSet;

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

/// Every vulnerability of every package of `inv`: [`matched`]'s findings. Prefer
/// [`matched`], which also says which versions could not be matched.
pub fn scan(inv: &Inventory, db: &Database) -> Vec<Finding> {
    matched(inv, db).findings
}

/// Whether an affected entry has version ranges to evaluate.
fn has_ranges(a: &Affected) -> bool {
    a.ranges
        .iter()
        .any(|r| (r.kind == "ECOSYSTEM" || r.kind == "SEMVER") && !r.events.is_empty())
}

/// Every vulnerability of every package of `inv`, one finding per (record, package); a
/// record reached twice through its aliases (Debian's `DEBIAN-CVE-…` and `CVE-…`) counts
/// once. An installed version that does not parse in its ecosystem matches only records
/// listing it exactly, and is reported in [`Matched::unparsed`] when ranges went unread.
pub fn matched(inv: &Inventory, db: &Database) -> Matched {
    let mut out = Vec::new();
    let mut unparsed = Vec::new();
    for p in &inv.packages {
        let (ecos, scheme) = ecosystems(inv.os.as_ref(), p);
        let name = p.source.clone().unwrap_or_else(|| p.name.clone());
        let version = p
            .source_version
            .clone()
            .unwrap_or_else(|| p.version.clone());
        let parsed = parses(scheme, &version);
        let mut undecided: HashSet<String> = HashSet::new();
        // Each record once, from the most specific ecosystem that names the package.
        let mut reached: HashSet<&str> = HashSet::new();
        let mut hits = Vec::new();
        for eco in &ecos {
            for (record, affected) in db.candidates(eco, &name) {
                if !reached.insert(&record.id) {
                    continue;
                }
                let (hit, fixed) = in_ranges(affected, &version, scheme);
                if hit {
                    hits.push((record, affected, fixed));
                } else if !parsed && has_ranges(affected) {
                    undecided.insert(record.id.clone());
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
        for (record, affected, fixed) in hits {
            if seen.contains(record.id.as_str())
                || record.aliases.iter().any(|a| seen.contains(a.as_str()))
            {
                continue;
            }
            seen.insert(&record.id);
            seen.extend(record.aliases.iter().map(String::as_str));
            out.push(Finding {
                id: record.id.clone(),
                title: record.title(),
                severity: record.severity(affected),
                package: p.name.clone(),
                installed: p.version.clone(),
                fixed: fixed.unwrap_or_default(),
                url: format!("https://osv.dev/vulnerability/{}", record.id),
            });
        }
        undecided.retain(|id| !seen.contains(id.as_str()));
        if !undecided.is_empty() {
            let of = if version == p.version && name == p.name {
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
                undecided.len()
            ));
        }
    }
    out.sort_by(|a, b| (&a.package, &a.id).cmp(&(&b.package, &b.id)));
    Matched {
        findings: out,
        unparsed,
    }
}

pub const SEVERITIES: [&str; 5] = ["UNKNOWN", "LOW", "MEDIUM", "HIGH", "CRITICAL"];

pub fn severity_rank(s: &str) -> usize {
    SEVERITIES.iter().position(|x| *x == s).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::osv::Database;

    fn db(records: &str) -> Database {
        Database::from_bytes(records.as_bytes(), "test").unwrap()
    }

    fn pkg(kind: PkgKind, name: &str, version: &str, source: Option<&str>) -> Package {
        Package {
            kind,
            name: name.into(),
            version: version.into(),
            source: source.map(str::to_owned),
            source_version: source.map(|_| version.to_owned()),
            license: None,
            path: "x".into(),
        }
    }

    #[test]
    fn release_scoped_source_package_matching_with_first_fix_and_dedup() {
        let d = db(r#"[
          {"id":"DEBIAN-CVE-2024-1","aliases":["CVE-2024-1"],"modified":"2025-01-01T00:00:00Z","summary":"openssl bug",
           "affected":[{"package":{"ecosystem":"Debian:12","name":"openssl"},
             "ranges":[{"type":"ECOSYSTEM","events":[{"introduced":"0"},{"fixed":"3.0.11-1~deb12u3"}]}],
             "ecosystem_specific":{"urgency":"high"}}]},
          {"id":"CVE-2024-1","modified":"2025-01-01T00:00:00Z",
           "affected":[{"package":{"ecosystem":"Debian:12","name":"openssl"},
             "ranges":[{"type":"ECOSYSTEM","events":[{"introduced":"0"},{"fixed":"3.0.11-1~deb12u3"}]}]}]},
          {"id":"DEBIAN-CVE-2024-2","modified":"2025-01-01T00:00:00Z",
           "affected":[{"package":{"ecosystem":"Debian:11","name":"openssl"},
             "ranges":[{"type":"ECOSYSTEM","events":[{"introduced":"0"},{"fixed":"9"}]}]}]}
        ]"#);
        let inv = Inventory {
            os: Some(Os {
                id: "debian".into(),
                version: "12".into(),
                pretty: String::new(),
            }),
            packages: vec![pkg(
                PkgKind::Dpkg,
                "libssl3",
                "3.0.11-1~deb12u2",
                Some("openssl"),
            )],
            warnings: vec![],
        };
        let f = scan(&inv, &d);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].id, "DEBIAN-CVE-2024-1");
        assert_eq!(f[0].package, "libssl3");
        assert_eq!(f[0].fixed, "3.0.11-1~deb12u3");
        assert_eq!(f[0].severity, "HIGH");
        let mut fixed = inv.clone();
        fixed.packages[0].version = "3.0.11-1~deb12u3".into();
        fixed.packages[0].source_version = Some("3.0.11-1~deb12u3".into());
        assert!(
            scan(&fixed, &d).is_empty(),
            "the fixed version is not affected"
        );
    }

    #[test]
    fn last_affected_and_explicit_versions() {
        let d = db(
            r#"[{"id":"GHSA-x","modified":"2025-01-01T00:00:00Z","database_specific":{"severity":"MODERATE"},
          "affected":[{"package":{"ecosystem":"PyPI","name":"requests"},
            "ranges":[{"type":"ECOSYSTEM","events":[{"introduced":"2.0"},{"last_affected":"2.31.0"}]}],
            "versions":["1.0.0"]}]}]"#,
        );
        let hit = |v: &str| {
            let inv = Inventory {
                os: None,
                packages: vec![pkg(PkgKind::Python, "requests", v, None)],
                warnings: vec![],
            };
            scan(&inv, &d).len()
        };
        assert_eq!(hit("2.31.0"), 1);
        assert_eq!(hit("2.31.1"), 0);
        assert_eq!(hit("1.9"), 0);
        assert_eq!(hit("1.0.0"), 1, "listed explicitly");
        let inv = Inventory {
            os: None,
            packages: vec![pkg(PkgKind::Python, "requests", "2.5", None)],
            warnings: vec![],
        };
        assert_eq!(scan(&inv, &d)[0].severity, "MEDIUM");
    }

    #[test]
    fn an_installed_version_that_does_not_parse_is_reported_not_passed() {
        let d = db(r#"[
          {"id":"ALPINE-1","modified":"2025-01-01T00:00:00Z",
           "affected":[{"package":{"ecosystem":"Alpine:v3.20","name":"busybox"},
             "ranges":[{"type":"ECOSYSTEM","events":[{"introduced":"0"},{"fixed":"1.36.1-r29"}]}]}]},
          {"id":"ALPINE-2","modified":"2025-01-01T00:00:00Z",
           "affected":[{"package":{"ecosystem":"Alpine:v3.20","name":"busybox"},
             "versions":["1.36.1-bogus"]}]}
        ]"#);
        let inv = |v: &str| Inventory {
            os: Some(Os {
                id: "alpine".into(),
                version: "3.20.3".into(),
                pretty: String::new(),
            }),
            packages: vec![pkg(PkgKind::Apk, "busybox", v, None)],
            warnings: vec![],
        };
        let m = matched(&inv("1.36.1-r28"), &d);
        assert_eq!(m.findings.len(), 1);
        assert!(m.unparsed.is_empty());
        let m = matched(&inv("1.36.1-bogus"), &d);
        assert_eq!(m.findings.len(), 1, "listed exactly: {m:?}");
        assert_eq!(m.findings[0].id, "ALPINE-2");
        assert_eq!(
            m.unparsed,
            vec![
                "package busybox version \"1.36.1-bogus\" does not parse in apk order: 1 \
                 vulnerability records for it could not be checked, so it is not known to be \
                 unaffected"
            ]
        );
        // No record names the package: nothing went unchecked.
        let mut other = inv("what?");
        other.packages[0].name = "musl".into();
        assert!(matched(&other, &d).unparsed.is_empty());
    }

    #[test]
    fn the_record_naming_the_other_as_an_alias_wins_whatever_the_order() {
        let cve = r#"{"id":"CVE-2024-1","modified":"2025-01-01T00:00:00Z",
           "affected":[{"package":{"ecosystem":"Debian:12","name":"openssl"},
             "ranges":[{"type":"ECOSYSTEM","events":[{"introduced":"0"}]}]}]}"#;
        let deb = r#"{"id":"DEBIAN-CVE-2024-1","aliases":["CVE-2024-1"],"modified":"2025-01-01T00:00:00Z",
           "affected":[{"package":{"ecosystem":"Debian:12","name":"openssl"},
             "ranges":[{"type":"ECOSYSTEM","events":[{"introduced":"0"}]}]}]}"#;
        let inv = Inventory {
            os: Some(Os {
                id: "debian".into(),
                version: "12".into(),
                pretty: String::new(),
            }),
            packages: vec![pkg(PkgKind::Dpkg, "openssl", "3.0.0-1", None)],
            warnings: vec![],
        };
        for records in [format!("[{cve},{deb}]"), format!("[{deb},{cve}]")] {
            let f = scan(&inv, &db(&records));
            assert_eq!(f.len(), 1, "{f:?}");
            assert_eq!(f[0].id, "DEBIAN-CVE-2024-1");
        }
    }
}
