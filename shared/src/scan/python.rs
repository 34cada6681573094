//! Python distributions: `*.dist-info/METADATA` (and `*.egg-info/PKG-INFO`).

use super::{Package, PkgKind};

pub fn is_metadata(path: &str) -> bool {
    path.ends_with(".dist-info/METADATA") || path.ends_with(".egg-info/PKG-INFO")
}

pub fn parse(path: &str, body: &[u8]) -> (Vec<Package>, Vec<String>) {
    let text = String::from_utf8_lossy(body);
    let header = text.split("\n\n").next().unwrap_or_default();
    let get = |k: &str| {
        header.lines().find_map(|l| {
            let (key, v) = l.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(k)
                .then(|| v.trim().to_owned())
        })
    };
    match (get("Name"), get("Version")) {
        (Some(name), Some(version)) => (
            vec![Package {
                kind: PkgKind::Python,
                name,
                version,
                source: None,
                source_version: None,
                license: get("License").filter(|l| !l.is_empty() && l != "UNKNOWN"),
                path: path.to_owned(),
            }],
            Vec::new(),
        ),
        _ => (
            Vec::new(),
            vec![format!("{path}: no Name or Version; skipped")],
        ),
    }
}
