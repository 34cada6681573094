//! Python distributions: `*.dist-info/METADATA` (and `*.egg-info/PKG-INFO`).

use super::{Limits, Package, PkgKind, Sink};

pub fn is_metadata(path: &str) -> bool {
    path.ends_with(".dist-info/METADATA") || path.ends_with(".egg-info/PKG-INFO")
}

pub fn parse(path: &str, body: &[u8]) -> (Vec<Package>, Vec<String>) {
    let mut sink = Sink::new(&Limits::default());
    read(path, body, &mut sink);
    sink.into_lists()
}

pub(crate) fn read(path: &str, body: &[u8], sink: &mut Sink) {
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
        (Some(name), Some(version)) => sink.package(Package {
            kind: PkgKind::Python,
            name,
            version,
            source: None,
            source_version: None,
            license: get("License").filter(|l| !l.is_empty() && l != "UNKNOWN"),
            path: path.to_owned(),
        }),
        _ => sink.warn(format!("{path}: no Name or Version; skipped")),
    }
}
