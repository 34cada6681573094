//! apk's database: `lib/apk/db/installed`, paragraphs of one-letter fields (`P:` name,
//! `V:` version, `o:` origin, `L:` license).

use super::{Package, PkgKind};

pub const INSTALLED: &str = "lib/apk/db/installed";

pub fn parse(path: &str, body: &[u8]) -> (Vec<Package>, Vec<String>) {
    let text = String::from_utf8_lossy(body);
    let mut packages = Vec::new();
    let mut warnings = Vec::new();
    let mut fields: Vec<(char, String)> = Vec::new();
    let mut start = 1;
    let mut flush = |fields: &mut Vec<(char, String)>, start: usize| {
        if fields.is_empty() {
            return;
        }
        let get = |c: char| fields.iter().find(|(k, _)| *k == c).map(|(_, v)| v.clone());
        match (get('P'), get('V')) {
            (Some(name), Some(version)) => packages.push(Package {
                kind: PkgKind::Apk,
                source: get('o'),
                source_version: get('o').map(|_| version.clone()),
                license: get('L'),
                name,
                version,
                path: path.to_owned(),
            }),
            _ => warnings.push(format!(
                "{path}:{start}: a package entry without P: or V:; skipped"
            )),
        }
        fields.clear();
    };
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            flush(&mut fields, start);
            start = i + 2;
            continue;
        }
        let mut chars = line.chars();
        if let (Some(k), Some(':')) = (chars.next(), chars.next()) {
            fields.push((k, chars.as_str().to_owned()));
        }
    }
    flush(&mut fields, start);
    (packages, warnings)
}
