//! dpkg's database: `var/lib/dpkg/status` (paragraphs; installed when `Status` says so)
//! and distroless `var/lib/dpkg/status.d/*` (one paragraph per file, no `Status`).

use super::{Limits, Package, PkgKind, Sink};

pub const STATUS: &str = "var/lib/dpkg/status";
pub const STATUS_D: &str = "var/lib/dpkg/status.d/";

/// The fields read; the rest (descriptions, conffiles, dependencies) are passed over
/// without being copied, so a paragraph costs what these four cost.
const FIELDS: [&str; 4] = ["Package", "Status", "Version", "Source"];

/// Calls `each` with every paragraph (its first line and its wanted fields, continuation
/// lines folded), one at a time; stops when it returns false.
fn paragraphs(text: &str, mut each: impl FnMut(usize, &[(&'static str, String)]) -> bool) {
    let mut current: Vec<(&'static str, String)> = Vec::new();
    // Whether the last field line was one of the wanted ones (its continuation lines
    // belong to it).
    let mut continuing = false;
    let mut seen = false;
    let mut start = 1;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            if seen && !each(start, &current) {
                return;
            }
            current.clear();
            seen = false;
            continuing = false;
            start = i + 2;
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if continuing && let Some((_, v)) = current.last_mut() {
                v.push('\n');
                v.push_str(line.trim());
            }
            continue;
        }
        seen = true;
        let key = line.split_once(':').map_or(line, |(k, _)| k).trim();
        continuing = false;
        if let Some(k) = FIELDS.iter().find(|f| f.eq_ignore_ascii_case(key)) {
            let value = line.split_once(':').map_or("", |(_, v)| v).trim();
            current.push((k, value.to_owned()));
            continuing = true;
        }
    }
    if seen {
        each(start, &current);
    }
}

pub fn parse(path: &str, body: &[u8]) -> (Vec<Package>, Vec<String>) {
    let mut sink = Sink::new(&Limits::default());
    read(path, body, &mut sink);
    sink.into_lists()
}

pub(crate) fn read(path: &str, body: &[u8], sink: &mut Sink) {
    let text = String::from_utf8_lossy(body);
    paragraphs(&text, |line, fields| {
        let get = |k: &str| {
            fields
                .iter()
                .find(|(key, _)| *key == k)
                .map(|(_, v)| v.clone())
        };
        if let Some(status) = get("Status")
            && !status.split_whitespace().any(|w| w == "installed")
        {
            return true;
        }
        let (Some(name), Some(version)) = (get("Package"), get("Version")) else {
            sink.warn(format!(
                "{path}:{line}: a package entry without Package or Version; skipped"
            ));
            return true;
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
        sink.package(Package {
            kind: PkgKind::Dpkg,
            source_version: source_version.or_else(|| source.as_ref().map(|_| version.clone())),
            source,
            name,
            version,
            license: None,
            path: path.to_owned(),
        });
        !sink.full()
    });
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

    #[test]
    fn continuation_lines_of_unread_fields_are_not_kept() {
        let text = "Package: a\nDescription: d\n Version: 9\nVersion: 1\n";
        let (p, w) = parse(STATUS, text.as_bytes());
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(p[0].version, "1");
    }

    #[test]
    fn a_paragraph_of_unread_fields_only_is_named() {
        let (p, w) = parse(STATUS, b"Description: only\n");
        assert!(p.is_empty());
        assert_eq!(
            w,
            vec!["var/lib/dpkg/status:1: a package entry without Package or Version; skipped"]
        );
    }
}
