//! dpkg's database: `var/lib/dpkg/status` (paragraphs; installed when `Status` says so)
//! and distroless `var/lib/dpkg/status.d/*` (one paragraph per file, no `Status`).

use super::{Package, PkgKind};

pub const STATUS: &str = "var/lib/dpkg/status";
pub const STATUS_D: &str = "var/lib/dpkg/status.d/";

/// Paragraphs of `Key: value` fields (continuation lines folded), with their first line.
pub(crate) fn paragraphs(text: &str) -> Vec<(usize, Vec<(String, String)>)> {
    let mut out = Vec::new();
    let mut current: Vec<(String, String)> = Vec::new();
    let mut start = 1;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            if !current.is_empty() {
                out.push((start, std::mem::take(&mut current)));
            }
            start = i + 2;
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = current.last_mut() {
                v.push('\n');
                v.push_str(line.trim());
            }
            continue;
        }
        match line.split_once(':') {
            Some((k, v)) => current.push((k.trim().to_owned(), v.trim().to_owned())),
            None => current.push((line.trim().to_owned(), String::new())),
        }
    }
    if !current.is_empty() {
        out.push((start, current));
    }
    out
}

pub fn parse(path: &str, body: &[u8]) -> (Vec<Package>, Vec<String>) {
    let text = String::from_utf8_lossy(body);
    let mut packages = Vec::new();
    let mut warnings = Vec::new();
    for (line, fields) in paragraphs(&text) {
        let get = |k: &str| {
            fields
                .iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.clone())
        };
        if let Some(status) = get("Status")
            && !status.split_whitespace().any(|w| w == "installed")
        {
            continue;
        }
        let (Some(name), Some(version)) = (get("Package"), get("Version")) else {
            warnings.push(format!(
                "{path}:{line}: a package entry without Package or Version; skipped"
            ));
            continue;
        };
        // `Source: name (version)` when the source version differs from the binary's.
        let (source, source_version) = match get("Source") {
            Some(s) => match s.split_once('(') {
                Some((n, v)) => (
                    Some(n.trim().to_owned()),
                    Some(v.trim_end_matches(')').trim().to_owned()),
                ),
                None => (Some(s.trim().to_owned()), None),
            },
            None => (None, None),
        };
        packages.push(Package {
            kind: PkgKind::Dpkg,
            source_version: source_version.or_else(|| source.as_ref().map(|_| version.clone())),
            source,
            name,
            version,
            license: None,
            path: path.to_owned(),
        });
    }
    (packages, warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_installed_packages_with_their_source() {
        let text = "Package: libssl3\nStatus: install ok installed\nVersion: 3.0.11-1~deb12u2\nSource: openssl\nDescription: x\n continued\n\nPackage: gone\nStatus: deinstall ok config-files\nVersion: 1\n\nPackage: bash\nStatus: install ok installed\nVersion: 5.2.15-2+b2\nSource: bash (5.2.15-2)\n\nStatus: install ok installed\nVersion: 1\n";
        let (p, w) = parse(STATUS, text.as_bytes());
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].name, "libssl3");
        assert_eq!(p[0].source.as_deref(), Some("openssl"));
        assert_eq!(p[0].source_version.as_deref(), Some("3.0.11-1~deb12u2"));
        assert_eq!(p[1].source_version.as_deref(), Some("5.2.15-2"));
        assert_eq!(w.len(), 1);
        assert!(w[0].starts_with("var/lib/dpkg/status:17:"), "{w:?}");
    }
}
