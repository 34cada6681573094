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
    let f = scan(&inv, &d).unwrap();
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0].id, "DEBIAN-CVE-2024-1");
    assert_eq!(f[0].package, "libssl3");
    assert_eq!(f[0].fixed, "3.0.11-1~deb12u3");
    assert_eq!(f[0].severity, "HIGH");
    let mut fixed = inv.clone();
    fixed.packages[0].version = "3.0.11-1~deb12u3".into();
    fixed.packages[0].source_version = Some("3.0.11-1~deb12u3".into());
    assert!(
        scan(&fixed, &d).unwrap().is_empty(),
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
        scan(&inv, &d).unwrap().len()
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
    assert_eq!(scan(&inv, &d).unwrap()[0].severity, "MEDIUM");
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
    let m = matched(&inv("1.36.1-r28"), &d).unwrap();
    assert_eq!(m.findings.len(), 1);
    assert!(m.unparsed.is_empty());
    let m = matched(&inv("1.36.1-bogus"), &d).unwrap();
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
    assert!(matched(&other, &d).unwrap().unparsed.is_empty());
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
        let f = scan(&inv, &db(&records)).unwrap();
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].id, "DEBIAN-CVE-2024-1");
    }
}

/// `n` records of Debian 12's `linux`, every version affected unless `fixed_at` says.
fn linux_records(n: usize, fixed_at: &str) -> Database {
    let records: Vec<String> = (0..n)
        .map(|i| {
            format!(
                r#"{{"id":"DEBIAN-CVE-{i}","modified":"2025-01-01T00:00:00Z",
                "affected":[{{"package":{{"ecosystem":"Debian:12","name":"linux"}},
                "ranges":[{{"type":"ECOSYSTEM","events":[{{"introduced":"0"}},{{"fixed":"{fixed_at}"}}]}}]}}]}}"#
            )
        })
        .collect();
    db(&format!("[{}]", records.join(",")))
}

fn debian(packages: Vec<Package>) -> Inventory {
    Inventory {
        os: Some(Os {
            id: "debian".into(),
            version: "12".into(),
            pretty: String::new(),
        }),
        packages,
        warnings: vec![],
    }
}

#[test]
fn packages_of_one_source_and_version_are_evaluated_once_and_findings_are_bounded() {
    let d = linux_records(10, "99");
    let built = |n: usize| {
        debian(
            (0..n)
                .map(|i| pkg(PkgKind::Dpkg, &format!("linux-{i}"), "6.1", Some("linux")))
                .collect(),
        )
    };
    // 1,000 packages of one source at one version: 10 records checked, not 10,000.
    let limits = MatchLimits {
        findings: 10_000,
        checks: 10,
    };
    let m = matched_within(&built(1000), &d, limits).unwrap();
    assert_eq!(m.findings.len(), 10_000);
    assert!(m.findings.iter().any(|f| f.package == "linux-999"));
    // One more package and its ten findings are over the bound.
    assert_eq!(
        matched_within(&built(1001), &d, limits),
        Err(TooMuch::Findings(10_000))
    );
}

#[test]
fn records_checked_are_bounded_when_every_package_has_its_own_version() {
    // Nothing matches (every record fixed at 0.1): only the checks grow.
    let d = linux_records(10, "0.1");
    let inv = debian(
        (0..100)
            .map(|i| {
                pkg(
                    PkgKind::Dpkg,
                    "linux-image",
                    &format!("6.{i}"),
                    Some("linux"),
                )
            })
            .collect(),
    );
    let at = |checks| {
        matched_within(
            &inv,
            &d,
            MatchLimits {
                findings: 1,
                checks,
            },
        )
    };
    assert_eq!(at(1000).unwrap().findings.len(), 0);
    assert_eq!(at(999), Err(TooMuch::Checks(999)));
}

#[test]
fn a_run_keeps_at_most_its_budget_of_findings_across_images() {
    let d = linux_records(1, "99");
    let inv = |n: usize| {
        debian(
            (0..n)
                .map(|i| pkg(PkgKind::Dpkg, &format!("p{i}"), "1", Some("linux")))
                .collect(),
        )
    };
    let mut budget = RunBudget::new(25);
    for _ in 0..2 {
        assert_eq!(budget.matched(&inv(10), &d).unwrap().findings.len(), 10);
    }
    assert_eq!(budget.matched(&inv(10), &d), Err(TooMuch::RunFindings(25)));
    assert_eq!(budget.matched(&inv(5), &d).unwrap().findings.len(), 5);
    assert_eq!(budget.matched(&inv(1), &d), Err(TooMuch::RunFindings(25)));
    assert!(
        budget.matched(&inv(0), &d).is_ok(),
        "an image without findings still is"
    );
}
