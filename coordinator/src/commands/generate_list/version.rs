//! Versions as Rancher's tools compare them (Go's `x/mod/semver`): a leading `v`, the
//! shorthands `v2` and `v2.9`, prereleases ordered, build metadata ignored.

use std::cmp::Ordering;

/// Parses `v1.28.15-rancher1-1`, `1.30.4+k3s1`, `v2.9`; `None` when it is not a version.
pub fn parse(text: &str) -> Option<semver::Version> {
    let t = text.trim();
    let t = t.strip_prefix('v').unwrap_or(t);
    let (rest, build) = match t.split_once('+') {
        Some((r, b)) => (r, Some(b)),
        None => (t, None),
    };
    let (core, pre) = match rest.split_once('-') {
        Some((c, p)) => (c, Some(p)),
        None => (rest, None),
    };
    let mut parts: Vec<&str> = core.split('.').collect();
    if parts.len() > 3 || (parts.len() < 3 && (pre.is_some() || build.is_some())) {
        return None;
    }
    while parts.len() < 3 {
        parts.push("0");
    }
    let mut full = parts.join(".");
    if let Some(p) = pre {
        full.push('-');
        full.push_str(p);
    }
    if let Some(b) = build {
        full.push('+');
        full.push_str(b);
    }
    semver::Version::parse(&full).ok()
}

/// Orders by version and prerelease; build metadata does not count.
pub fn cmp(a: &semver::Version, b: &semver::Version) -> Ordering {
    (a.major, a.minor, a.patch)
        .cmp(&(b.major, b.minor, b.patch))
        .then_with(|| a.pre.cmp(&b.pre))
}

/// `vMAJOR.MINOR` of a version.
pub fn major_minor(v: &semver::Version) -> String {
    format!("v{}.{}", v.major, v.minor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rancher_versions_compare_as_go_does() {
        let v = |s| parse(s).unwrap_or_else(|| panic!("{s}"));
        assert_eq!(cmp(&v("v2.9"), &v("2.9.0")), Ordering::Equal);
        assert_eq!(
            cmp(&v("v1.28.15-rancher1-1"), &v("v1.28.14-rancher1-1")),
            Ordering::Greater
        );
        assert_eq!(cmp(&v("v2.9.0-alpha1"), &v("v2.9.0")), Ordering::Less);
        assert_eq!(cmp(&v("v1.30.4+k3s1"), &v("v1.30.4+k3s2")), Ordering::Equal);
        assert!(parse("v2.9-rc1").is_none());
        assert!(parse("latest").is_none());
        assert_eq!(major_minor(&v("v1.30.4+k3s1")), "v1.30");
    }
}
