//! Packages against OSV records: the ecosystem of each package (release-scoped for
//! distributions: `Debian:12`, `Alpine:v3.20`, `Ubuntu:22.04:LTS`), the source package for
//! distro records, the ecosystem's version order, and the first fixed version.

use std::cmp::Ordering;
use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use super::os::Os;
use super::osv::{Affected, Database, Event};
use super::version::{Scheme, compare};
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

/// Every vulnerability of every package of `inv`, one finding per (record, package); a
/// record reached twice through its aliases (Debian's `DEBIAN-CVE-…` and `CVE-…`) counts once.
pub fn scan(inv: &Inventory, db: &Database) -> Vec<Finding> {
    let mut out = Vec::new();
    for p in &inv.packages {
        let (ecos, scheme) = ecosystems(inv.os.as_ref(), p);
        let name = p.source.clone().unwrap_or_else(|| p.name.clone());
        let version = p
            .source_version
            .clone()
            .unwrap_or_else(|| p.version.clone());
        let mut seen: HashSet<String> = HashSet::new();
        for eco in &ecos {
            for (record, affected) in db.candidates(eco, &name) {
                if seen.contains(&record.id) || record.aliases.iter().any(|a| seen.contains(a)) {
                    continue;
                }
                let (hit, fixed) = in_ranges(affected, &version, scheme);
                if !hit {
                    continue;
                }
                seen.insert(record.id.clone());
                seen.extend(record.aliases.iter().cloned());
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
        }
    }
    out.sort_by(|a, b| (&a.package, &a.id).cmp(&(&b.package, &b.id)));
    out
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
}
