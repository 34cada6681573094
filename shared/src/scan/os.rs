//! The distribution and release, from `os-release` (or `alpine-release` /
//! `debian_version` when it is missing).

use serde::{Deserialize, Serialize};

use super::layers::Files;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Os {
    /// `ID` (debian, ubuntu, alpine, rhel, rocky, almalinux, …).
    pub id: String,
    /// `VERSION_ID` (12, 22.04, 3.20.3, 9.4, …).
    pub version: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pretty: String,
}

fn field(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"').trim_matches('\'').to_owned())
    })
}

pub fn detect(files: &Files) -> Option<Os> {
    let release = files
        .files
        .get("etc/os-release")
        .or_else(|| files.files.get("usr/lib/os-release"))
        .map(|b| String::from_utf8_lossy(b).into_owned());
    if let Some(text) = release
        && let Some(id) = field(&text, "ID")
    {
        let mut version = field(&text, "VERSION_ID").unwrap_or_default();
        if version.is_empty() && id == "debian" {
            version = files
                .files
                .get("etc/debian_version")
                .map(|b| String::from_utf8_lossy(b).trim().to_owned())
                .unwrap_or_default();
        }
        return Some(Os {
            id,
            version,
            pretty: field(&text, "PRETTY_NAME").unwrap_or_default(),
        });
    }
    if let Some(v) = files.files.get("etc/alpine-release") {
        return Some(Os {
            id: "alpine".into(),
            version: String::from_utf8_lossy(v).trim().to_owned(),
            pretty: String::new(),
        });
    }
    files.files.get("etc/debian_version").map(|v| Os {
        id: "debian".into(),
        version: String::from_utf8_lossy(v).trim().to_owned(),
        pretty: String::new(),
    })
}
