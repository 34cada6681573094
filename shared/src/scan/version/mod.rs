//! Version order per ecosystem, following each one's reference: dpkg (Debian Policy
//! §5.6.12: epochs, `~`, letters before other characters), rpm (rpmvercmp: epochs, `~`,
//! `^`), apk (apk-tools' tokens: a leading-zero component compares as a string, letter,
//! `_alpha`…`_p` suffixes, `~hash`, `-r` revision), PEP 440 (with pre-PEP 440 "legacy"
//! versions sorting below every PEP 440 one, as osv.dev orders PyPI) and SemVer 2.0 (build
//! metadata does not order). `None` when a version does not parse in its scheme, so a
//! malformed version never matches by accident; [`parses`] says which.

use std::cmp::Ordering;
use std::str::FromStr;

mod apk;

use apk::{apk_cmp, apk_tokens};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Dpkg,
    Rpm,
    Apk,
    Pep440,
    Semver,
}

impl Scheme {
    /// The scheme's name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Scheme::Dpkg => "dpkg",
            Scheme::Rpm => "rpm",
            Scheme::Apk => "apk",
            Scheme::Pep440 => "PEP 440",
            Scheme::Semver => "SemVer",
        }
    }
}

pub fn compare(scheme: Scheme, a: &str, b: &str) -> Option<Ordering> {
    match scheme {
        Scheme::Dpkg => Some(dpkg(a)?.cmp(&dpkg(b)?)),
        Scheme::Rpm => Some(rpm(a)?.cmp(&rpm(b)?)),
        Scheme::Apk => Some(apk_cmp(&apk_tokens(a)?, &apk_tokens(b)?)),
        Scheme::Pep440 => Some(pep440(a)?.cmp(&pep440(b)?)),
        Scheme::Semver => Some(semver(a)?.cmp_precedence(&semver(b)?)),
    }
}

/// Whether `v` is a version of `scheme` (one [`compare`] can order).
pub fn parses(scheme: Scheme, v: &str) -> bool {
    match scheme {
        Scheme::Dpkg => dpkg(v).is_some(),
        Scheme::Rpm => rpm(v).is_some(),
        Scheme::Apk => apk_tokens(v).is_some(),
        Scheme::Pep440 => pep440(v).is_some(),
        Scheme::Semver => semver(v).is_some(),
    }
}

/// Debian Policy's syntax, or dpkg's more lenient reading of what is installed: dpkg
/// refuses an empty version, a non-numeric or dangling epoch and an empty upstream version
/// or revision, and only warns about, say, an underscore.
fn dpkg(v: &str) -> Option<debversion::Version> {
    let rest = match v.split_once(':') {
        Some((epoch, rest)) if !epoch.is_empty() && epoch.bytes().all(|b| b.is_ascii_digit()) => {
            rest
        }
        Some(_) => return None,
        None => v,
    };
    if rest.is_empty() || rest.starts_with('-') || rest.ends_with('-') {
        return None;
    }
    debversion::Version::from_str(v)
        .or_else(|_| debversion::Version::parse_lenient(v))
        .ok()
}

/// rpmvercmp orders any string; an empty one is no version.
fn rpm(v: &str) -> Option<rpm_version::Evr<'_>> {
    (!v.trim().is_empty()).then(|| rpm_version::Evr::parse(v))
}

/// A PyPI version as osv.dev orders them (packaging's `parse` with legacy versions): a
/// PEP 440 version, or else a legacy one, all of which sort below every PEP 440 version.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum PyVersion {
    Legacy(Vec<String>),
    Pep440(pep440_rs::Version),
}

fn pep440(v: &str) -> Option<PyVersion> {
    if v.trim().is_empty() {
        return None;
    }
    Some(match pep440_rs::Version::from_str(v) {
        Ok(p) => PyVersion::Pep440(p),
        Err(_) => PyVersion::Legacy(legacy_key(v)),
    })
}

/// setuptools' pre-PEP 440 order: runs of digits (zero-padded to 8, so they compare as
/// numbers), runs of letters and runs of anything else, as strings; `pre`, `preview` and
/// `rc` read as `c`, `dev` as `@` (before everything), `-` as `final-`; trailing zeros of a
/// numeric series dropped and a `-` before a pre-release tag too; `*final` ends it.
fn legacy_key(v: &str) -> Vec<String> {
    #[derive(PartialEq)]
    enum Class {
        Digit,
        Letter,
        Dot,
        Dash,
        Other,
    }
    let class = |c: char| match c {
        '0'..='9' => Class::Digit,
        'a'..='z' => Class::Letter,
        '.' => Class::Dot,
        '-' => Class::Dash,
        _ => Class::Other,
    };
    let lower = v.to_lowercase();
    let mut pieces: Vec<&str> = Vec::new();
    let mut chars = lower.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let k = class(c);
        if !matches!(k, Class::Dot | Class::Dash) {
            while chars.next_if(|&(_, n)| class(n) == k).is_some() {}
        }
        let end = chars.peek().map_or(lower.len(), |&(j, _)| j);
        pieces.push(&lower[i..end]);
    }
    let mut parts: Vec<String> = Vec::new();
    let mapped = pieces
        .into_iter()
        .filter(|p| *p != ".")
        .map(|p| match p {
            "pre" | "preview" | "rc" => "*c".to_owned(),
            "-" => "*final-".to_owned(),
            "dev" => "*@".to_owned(),
            p if p.starts_with(|c: char| c.is_ascii_digit()) => format!("{p:0>8}"),
            p => format!("*{p}"),
        })
        .chain(std::iter::once("*final".to_owned()));
    for part in mapped {
        if part.starts_with('*') {
            if part.as_str() < "*final" {
                while parts.last().is_some_and(|p| p == "*final-") {
                    parts.pop();
                }
            }
            while parts.last().is_some_and(|p| p == "00000000") {
                parts.pop();
            }
        }
        parts.push(part);
    }
    parts
}

/// SemVer 2.0, leniently: a leading `v`, and "1.2" or "1" as 1.2.0 and 1.0.0, as OSV's
/// SEMVER ranges sometimes write them. Ordered by precedence: build metadata is ignored.
fn semver(v: &str) -> Option<semver::Version> {
    let v = v.trim().trim_start_matches('v');
    if let Ok(s) = semver::Version::parse(v) {
        return Some(s);
    }
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

    /// Each version below the next.
    fn ascending(scheme: Scheme, versions: &[&str]) {
        for w in versions.windows(2) {
            check(scheme, &[(w[0], Less, w[1])]);
        }
    }

    fn invalid(scheme: Scheme, versions: &[&str]) {
        for v in versions {
            assert!(!parses(scheme, v), "{scheme:?}: {v:?} parses");
            assert_eq!(compare(scheme, v, "1.0"), None, "{scheme:?}: {v:?}");
            assert_eq!(compare(scheme, "1.0", v), None, "{scheme:?}: {v:?}");
        }
    }

    /// Debian Policy §5.6.12 and dpkg's verrevcmp: epochs first, then upstream and revision
    /// compared as alternating non-digit and digit runs; `~` before anything (even the end),
    /// letters before non-letters, digits numerically; no revision is revision "0".
    #[test]
    fn dpkg_order() {
        // Policy's own example: ~~ < ~~a < ~ < (nothing) < a.
        ascending(Scheme::Dpkg, &["1.0~~", "1.0~~a", "1.0~", "1.0", "1.0a"]);
        check(
            Scheme::Dpkg,
            &[
                ("1.0", Less, "1.1"),
                ("1:0.9", Greater, "2.0"),
                ("1.0-1", Equal, "0:1.0-1"),
                ("1.0~rc1-1", Less, "1.0-1"),
                ("3.0.11-1~deb12u2", Less, "3.0.11-1~deb12u3"),
                ("3.0.11-1~deb12u2", Less, "3.0.11-1"),
                ("1.0+b1", Greater, "1.0"),
                ("2.10", Greater, "2.9"),
                // Letters sort before other characters, which sort by ASCII.
                ("1.0a", Less, "1.0+"),
                ("1.0+", Less, "1.0."),
                // Digits compare as numbers.
                ("1.0", Equal, "1.00"),
                ("1.010", Equal, "1.10"),
                ("1.0", Equal, "1.0-0"),
                // The revision is after the last hyphen; upstream may hold hyphens.
                ("1.0-beta-1", Greater, "1.0-1"),
                ("2:1.0-1", Greater, "1:9.9-9"),
                // dpkg orders what it installed even against Policy (an underscore).
                ("1.0_1", Greater, "1.0.1"),
            ],
        );
        invalid(
            Scheme::Dpkg,
            &["", "1:", ":1.0", "a:1.0", "1.0-", "-1", "1.0 beta", "1.0\n"],
        );
    }

    /// rpm's rpmvercmp (its tests/rpmvercmp.at): alphanumeric runs, numbers beat letters,
    /// leading zeros ignored, separators all alike, `~` before everything, `^` after the
    /// base but before any further component; then epoch:version-release.
    #[test]
    fn rpm_order() {
        check(
            Scheme::Rpm,
            &[
                ("1.0", Equal, "1.0"),
                ("2.0", Less, "2.0.1"),
                ("2.0.1a", Greater, "2.0.1"),
                ("5.5p1", Less, "5.5p2"),
                ("5.5p10", Greater, "5.5p1"),
                ("10xyz", Less, "10.1xyz"),
                ("xyz10", Less, "xyz10.1"),
                ("xyz.4", Less, "8"),
                ("xyz.4", Less, "2"),
                ("5.5p2", Less, "5.6p1"),
                ("6.0.rc1", Greater, "6.0"),
                ("10b2", Greater, "10a1"),
                ("1.0a", Less, "1.0aa"),
                ("10.0001", Equal, "10.1"),
                ("10.0001", Less, "10.0039"),
                ("4.999.9", Less, "5.0"),
                ("20101121", Less, "20101122"),
                ("2.0", Equal, "2_0"),
                ("a+", Equal, "a_"),
                ("+a", Equal, "_a"),
                ("+", Equal, "_"),
                ("1.0~rc1", Less, "1.0"),
                ("1.0~rc1", Less, "1.0~rc2"),
                ("1.0~rc1~git123", Less, "1.0~rc1"),
                ("1.0^", Greater, "1.0"),
                ("1.0^git1", Greater, "1.0"),
                ("1.0^git1", Less, "1.0^git2"),
                ("1.0^git1", Less, "1.01"),
                ("1.0^20160101", Less, "1.0.1"),
                ("1.0^20160102", Greater, "1.0^20160101^git1"),
                ("1.0~rc1^git1", Greater, "1.0~rc1"),
                ("1.0^git1~pre", Less, "1.0^git1"),
                // Epoch, version, release.
                ("1.0-1", Less, "1.0-2"),
                ("1:1.0-1", Greater, "2.0-1"),
                ("0:1.0-1", Equal, "1.0-1"),
                ("1.0~rc1-1", Less, "1.0-1"),
                ("1.10-1", Greater, "1.9-1"),
                ("3.0.7-27.el9", Less, "3.0.7-28.el9"),
                ("3.0.7-27.el9", Less, "3.0.7-27.el9_1"),
            ],
        );
        invalid(Scheme::Rpm, &["", " "]);
    }

    /// apk-tools' order (src/version.c, test/unit/version.data): initial number, `.`
    /// numbers (one with a leading zero compares as a string), one letter, suffixes
    /// (`_alpha` < `_beta` < `_pre` < `_rc` < none < `_cvs` < `_svn` < `_git` < `_hg` <
    /// `_p`), `~hash`, `-r` revision; a version that goes on is greater unless what follows
    /// is a pre-release suffix.
    #[test]
    fn apk_order() {
        check(
            Scheme::Apk,
            &[
                ("1.0", Less, "1.0.1"),
                ("1.0_alpha", Less, "1.0"),
                ("1.0_alpha", Less, "1.0_beta"),
                ("1.0_beta2", Less, "1.0_rc1"),
                ("1.0_rc1", Less, "1.0"),
                ("1.0", Less, "1.0_cvs"),
                ("1.0_cvs", Less, "1.0_svn"),
                ("1.0_svn", Less, "1.0_git"),
                ("1.0_git", Less, "1.0_hg"),
                ("1.0_hg", Less, "1.0_p"),
                ("1.0_p1", Less, "1.0_p2"),
                ("1.0_p10-r0", Greater, "1.0_p9-r0"),
                ("0.1.0_alpha_pre2", Less, "0.1.0_alpha"),
                ("0.1.0_alpha", Less, "0.1.0_alpha2"),
                ("1.3_pre1-r1", Less, "1.3.2"),
                ("1.0a", Less, "1.0b"),
                ("1.0", Less, "1.0a"),
                ("1.0a", Less, "1.0.1"),
                ("2.5.1-r8", Less, "2.5.1a-r1"),
                ("1.0-r1", Less, "1.0-r2"),
                ("1.0-r9", Less, "1.0-r10"),
                ("1.2.2", Less, "1.2.2-r1"),
                ("2.0", Less, "2.0-r0"),
                ("22.7-r1", Less, "22.7.3-r1"),
                ("3.3.1-r0", Less, "3.3.2-r0"),
                // The initial number is a number; later ones with a leading zero are strings.
                ("006", Greater, "1.0.0"),
                ("1.06-r6", Less, "006"),
                ("1.02", Less, "1.1"),
                ("1.0", Less, "1.00"),
                ("1.2.07.8", Less, "1.2.12.04"),
                ("0.01", Less, "0.06"),
                // Commit hashes, then revisions.
                ("1.0~1234", Less, "1.0~2345"),
                ("1.0~1234-r1", Less, "1.0~2345-r0"),
                ("1.0~1234-r1", Greater, "1.0~1234-r0"),
                (
                    "1.0.0_pre20191002222144-r0",
                    Less,
                    "1.0.0_pre20210530193627-r0",
                ),
                ("20050718-r1", Less, "20050718-r2"),
            ],
        );
        invalid(
            Scheme::Apk,
            &[
                "",
                ".1",
                "a",
                "_pre1",
                "-r1",
                "0.1bc",
                "0.1a1",
                "0.1a.1",
                "0.1_foobar",
                "0.1_",
                "0.1__alpha",
                "0.1-r",
                "0.1-r2-r3",
                "0.1-r2.1",
                "0.1-r2_pre1",
                "0.1_pre2~",
                "0.1-pre1.1",
                "1.0-1",
                "garbage",
            ],
        );
        assert!(parses(Scheme::Apk, "0.1_pre2~1234abcd"));
    }

    /// PEP 440's own example of the order of every kind of release, its normalisations, and
    /// legacy (non-PEP 440) versions below all of them, ordered as setuptools did.
    #[test]
    fn pep440_order() {
        ascending(
            Scheme::Pep440,
            &[
                "1.dev0",
                "1.0.dev456",
                "1.0a1",
                "1.0a2.dev456",
                "1.0a12.dev456",
                "1.0a12",
                "1.0b1.dev456",
                "1.0b2",
                "1.0b2.post345.dev456",
                "1.0b2.post345",
                "1.0rc1.dev456",
                "1.0rc1",
                "1.0",
                "1.0+abc.5",
                "1.0+abc.7",
                "1.0+5",
                "1.0.post456.dev34",
                "1.0.post456",
                "1.0.15",
                "1.1.dev1",
            ],
        );
        check(
            Scheme::Pep440,
            &[
                ("1!0.5", Greater, "2.0"),
                ("1.0", Equal, "1.0.0"),
                ("2.31.0", Greater, "2.4.0"),
                ("1.0RC1", Equal, "1.0rc1"),
                ("1.0c1", Equal, "1.0rc1"),
                ("1.0alpha1", Equal, "1.0a1"),
                ("1.0-1", Equal, "1.0.post1"),
                ("v1.0", Equal, "1.0"),
                // Legacy versions: below every PEP 440 one, numbers padded, trailing zeros
                // dropped, `dev` before everything.
                ("1.0-SNAPSHOT", Less, "0.0.1"),
                ("foobar", Less, "0"),
                ("1.0-SNAPSHOT", Less, "1.0.1-SNAPSHOT"),
                ("1.9-foo", Less, "1.10-foo"),
                ("1.0.0-foo", Equal, "1-foo"),
                ("1.0.dev-foo", Less, "1.0-foo"),
            ],
        );
        assert!(parses(Scheme::Pep440, "1.0-SNAPSHOT"), "legacy");
        invalid(Scheme::Pep440, &["", "  "]);
    }

    /// SemVer 2.0 §11: the spec's precedence chain; build metadata does not order.
    #[test]
    fn semver_order() {
        ascending(
            Scheme::Semver,
            &[
                "1.0.0-alpha",
                "1.0.0-alpha.1",
                "1.0.0-alpha.beta",
                "1.0.0-beta",
                "1.0.0-beta.2",
                "1.0.0-beta.11",
                "1.0.0-rc.1",
                "1.0.0",
                "2.0.0",
                "2.1.0",
                "2.1.1",
            ],
        );
        check(
            Scheme::Semver,
            &[
                ("1.0.0+build.1", Equal, "1.0.0+build.2"),
                ("1.0.0-alpha+001", Equal, "1.0.0-alpha"),
                ("1.0.0+20130313144700", Equal, "1.0.0"),
                ("1.2", Equal, "1.2.0"),
                ("v2.0.0", Greater, "1.9.9"),
            ],
        );
        invalid(Scheme::Semver, &["", "01.0.0", "1.0.0-01", "1.2.3.4", "x"]);
    }
}
