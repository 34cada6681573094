//! deploy/'s files as the deploy tests read them.

use std::path::{Path, PathBuf};

use serde_yaml_ng::Value;

pub fn deploy() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy"))
}

pub fn docs(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).expect("read");
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| {
            serde::Deserialize::deserialize(d).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        })
        .filter(|v: &Value| !v.is_null())
        .collect()
}

/// The volume mount of container `c` that `path` lies under.
pub fn mounted_under(c: &Value, path: &str) -> Option<String> {
    c["volumeMounts"]
        .as_sequence()?
        .iter()
        .filter_map(|m| m["mountPath"].as_str())
        .find(|m| path.starts_with(&format!("{}/", m.trim_end_matches('/'))))
        .map(str::to_owned)
}

pub fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}
