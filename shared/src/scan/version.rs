//! Version order per ecosystem: dpkg (epochs, `~`), rpm (epochs, `~`, `^`), apk (letters,
//! `_alpha`…`_p` suffixes, `-r` revisions), PEP 440 and semver. `None` when a version does
//! not parse in its scheme, so a malformed record never matches by accident.

use std::cmp::Ordering;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Dpkg,
    Rpm,
    Apk,
    Pep440,
    Semver,
}

pub fn compare(scheme: Scheme, a: &str, b: &str) -> Option<Ordering> {
    match scheme {
        Scheme::Dpkg => Some(
            debversion::Version::from_str(a)
                .ok()?
                .cmp(&debversion::Version::from_str(b).ok()?),
        ),
        Scheme::Rpm => Some(rpm_version::Evr::parse(a).cmp(&rpm_version::Evr::parse(b))),
        Scheme::Apk => Some(apk_key(a)?.cmp(&apk_key(b)?)),
        Scheme::Pep440 => Some(
            pep440_rs::Version::from_str(a)
                .ok()?
                .cmp(&pep440_rs::Version::from_str(b).ok()?),
        ),
        Scheme::Semver => Some(semver(a)?.cmp(&semver(b)?)),
    }
}

fn semver(v: &str) -> Option<semver::Version> {
    let v = v.trim().trim_start_matches('v');
    if let Ok(s) = semver::Version::parse(v) {
        return Some(s);
    }
    // "1.2" and "1" as 1.2.0 and 1.0.0, as OSV's SEMVER ranges sometimes write them.
    let (core, rest) = match v.find(['-', '+']) {
        Some(i) => v.split_at(i),
        None => (v, ""),
    };
    let parts = core.split('.').count();
    let padded = match parts {
        1 => format!("{core}.0.0{rest}"),
        2 => format!("{core}.0{rest}"),
        _ => return None,
    };
    semver::Version::parse(&padded).ok()
}

/// apk-tools' order, as a sortable key: numbers, then a letter, then suffixes (pre-release
/// ones sort below none, post-release ones above), then the `-r` revision.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct ApkKey {
    numbers: Vec<u64>,
    letter: Option<char>,
    suffixes: Vec<(i8, u64)>,
    /// A version without suffixes compares as one `(0, 0)` suffix.
    revision: u64,
}

fn apk_key(v: &str) -> Option<ApkKey> {
    let (main, revision) = match v.rsplit_once("-r") {
        Some((m, r)) if !r.is_empty() && r.bytes().all(|b| b.is_ascii_digit()) => {
            (m, r.parse().ok()?)
        }
        _ => (v, 0),
    };
    let mut parts = main.split('_');
    let head = parts.next()?;
    let mut numbers = Vec::new();
    let mut letter = None;
    for (i, seg) in head.split('.').enumerate() {
        let digits: String = seg.chars().take_while(|c| c.is_ascii_digit()).collect();
        if digits.is_empty() {
            return None;
        }
        numbers.push(digits.parse().ok()?);
        let rest = &seg[digits.len()..];
        if !rest.is_empty() {
            let mut chars = rest.chars();
            let c = chars.next()?;
            if !c.is_ascii_lowercase() || chars.next().is_some() || i + 1 != head.split('.').count()
            {
                return None;
            }
            letter = Some(c);
        }
    }
    let mut suffixes = Vec::new();
    for s in parts {
        let name: String = s.chars().take_while(|c| c.is_ascii_alphabetic()).collect();
        let num = &s[name.len()..];
        let rank = match name.as_str() {
            "alpha" => -4,
            "beta" => -3,
            "pre" => -2,
            "rc" => -1,
            "cvs" => 1,
            "svn" => 2,
            "git" => 3,
            "hg" => 4,
            "p" => 5,
            _ => return None,
        };
        let n = if num.is_empty() { 0 } else { num.parse().ok()? };
        suffixes.push((rank, n));
    }
    if suffixes.is_empty() {
        suffixes.push((0, 0));
    }
    Some(ApkKey {
        numbers,
        letter,
        suffixes,
        revision,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use Ordering::*;

    fn check(scheme: Scheme, cases: &[(&str, Ordering, &str)]) {
        for (a, o, b) in cases {
            assert_eq!(compare(scheme, a, b), Some(*o), "{scheme:?}: {a} {o:?} {b}");
            assert_eq!(
                compare(scheme, b, a),
                Some(o.reverse()),
                "{scheme:?}: {b} vs {a}"
            );
        }
    }

    /// Debian Policy §5.6.12: epochs first, `~` before anything (even the end), letters
    /// before non-letters, numbers numerically.
    #[test]
    fn dpkg_order() {
        check(
            Scheme::Dpkg,
            &[
                ("1.0", Less, "1.1"),
                ("1:0.9", Greater, "2.0"),
                ("1.0~rc1", Less, "1.0"),
                ("1.0~~", Less, "1.0~"),
                ("1.0~rc1-1", Less, "1.0-1"),
                ("3.0.11-1~deb12u2", Less, "3.0.11-1~deb12u3"),
                ("3.0.11-1~deb12u2", Less, "3.0.11-1"),
                ("1.0a", Greater, "1.0"),
                ("1.0+b1", Greater, "1.0"),
                ("2.10", Greater, "2.9"),
                ("1.0-1", Equal, "0:1.0-1"),
            ],
        );
    }

    /// rpm's rpmvercmp: epochs, `~` sorts before everything, `^` after the base but before
    /// the next component, numbers beat letters.
    #[test]
    fn rpm_order() {
        check(
            Scheme::Rpm,
            &[
                ("1.0-1", Less, "1.0-2"),
                ("1:1.0-1", Greater, "2.0-1"),
                ("1.0~rc1-1", Less, "1.0-1"),
                ("1.0^git1-1", Greater, "1.0-1"),
                ("1.0^git1-1", Less, "1.0.1-1"),
                ("1.10-1", Greater, "1.9-1"),
                ("1.0a-1", Less, "1.0.1-1"),
                ("3.0.7-27.el9", Less, "3.0.7-28.el9"),
            ],
        );
    }

    /// apk-tools' rules (its test/version.data): letters, pre- and post-release suffixes,
    /// revisions.
    #[test]
    fn apk_order() {
        check(
            Scheme::Apk,
            &[
                ("1.0", Less, "1.0.1"),
                ("1.0_alpha", Less, "1.0"),
                ("1.0_alpha", Less, "1.0_beta"),
                ("1.0_beta2", Less, "1.0_rc1"),
                ("1.0_rc1", Less, "1.0_rc2"),
                ("1.0_rc1", Less, "1.0"),
                ("1.0", Less, "1.0_p1"),
                ("1.0_p1", Less, "1.0_p2"),
                ("1.0a", Less, "1.0b"),
                ("1.0", Less, "1.0a"),
                ("1.0-r1", Less, "1.0-r2"),
                ("1.0-r9", Less, "1.0-r10"),
                ("3.3.1-r0", Less, "3.3.2-r0"),
                ("1.2.3-r5", Less, "1.2.4-r0"),
                ("2.0", Equal, "2.0-r0"),
            ],
        );
        assert_eq!(compare(Scheme::Apk, "garbage", "1.0"), None);
    }

    /// PEP 440: pre-releases, post-releases, dev releases, epochs, normalisation.
    #[test]
    fn pep440_order() {
        check(
            Scheme::Pep440,
            &[
                ("1.0.dev1", Less, "1.0a1"),
                ("1.0a1", Less, "1.0b1"),
                ("1.0b1", Less, "1.0rc1"),
                ("1.0rc1", Less, "1.0"),
                ("1.0", Less, "1.0.post1"),
                ("1!0.5", Greater, "2.0"),
                ("1.0", Equal, "1.0.0"),
                ("2.31.0", Greater, "2.4.0"),
                ("1.0RC1", Equal, "1.0rc1"),
            ],
        );
    }

    #[test]
    fn semver_order() {
        check(
            Scheme::Semver,
            &[
                ("1.0.0-alpha", Less, "1.0.0"),
                ("1.0.0-alpha.1", Less, "1.0.0-alpha.beta"),
                ("1.2", Equal, "1.2.0"),
                ("v2.0.0", Greater, "1.9.9"),
            ],
        );
    }
}
