//! apk's database: `lib/apk/db/installed`, paragraphs of one-letter fields (`P:` name,
//! `V:` version, `o:` origin, `L:` license).

use super::{Limits, Package, PkgKind, Sink};

pub const INSTALLED: &str = "lib/apk/db/installed";

/// The fields read; the per-file lines (`F:`, `R:`, `Z:`…) that make up most of the
/// database are passed over without being copied.
const FIELDS: [char; 4] = ['P', 'V', 'o', 'L'];

pub fn parse(path: &str, body: &[u8]) -> (Vec<Package>, Vec<String>) {
    let mut sink = Sink::new(&Limits::default());
    read(path, body, &mut sink);
    sink.into_lists()
}

pub(crate) fn read(path: &str, body: &[u8], sink: &mut Sink) {
    let text = String::from_utf8_lossy(body);
    let mut fields: Vec<(char, String)> = Vec::new();
    let mut seen = false;
    let mut start = 1;
    let flush = |fields: &mut Vec<(char, String)>, start: usize, sink: &mut Sink| {
        let get = |c: char| fields.iter().find(|(k, _)| *k == c).map(|(_, v)| v.clone());
        match (get('P'), get('V')) {
            (Some(name), Some(version)) => sink.package(Package {
                kind: PkgKind::Apk,
                source: get('o'),
                source_version: get('o').map(|_| version.clone()),
                license: get('L'),
                name,
                version,
                path: path.to_owned(),
            }),
            _ => sink.warn(format!(
                "{path}:{start}: a package entry without P: or V:; skipped"
            )),
        }
        fields.clear();
    };
    for (i, line) in text.lines().enumerate() {
        if sink.full() {
            return;
        }
        if line.trim().is_empty() {
            if seen {
                flush(&mut fields, start, sink);
            }
            seen = false;
            start = i + 2;
            continue;
        }
        let mut chars = line.chars();
        if let (Some(k), Some(':')) = (chars.next(), chars.next()) {
            seen = true;
            if FIELDS.contains(&k) {
                fields.push((k, chars.as_str().to_owned()));
            }
        }
    }
    if seen {
        flush(&mut fields, start, sink);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_packages_and_names_broken_entries() {
        let text =
            "P:musl\nV:1.2.5-r0\no:musl\nL:MIT\nF:lib\nR:libc.so\n\nF:only files\n\nP:x\nV:1\n";
        let (p, w) = parse(INSTALLED, text.as_bytes());
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].license.as_deref(), Some("MIT"));
        assert_eq!(
            w,
            vec!["lib/apk/db/installed:8: a package entry without P: or V:; skipped"]
        );
    }
}
