//! Registry credentials from the files Hangar and skopeo read, in containers/image's order:
//! `--authfile`, `REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers/auth.json`,
//! `/run/containers/<uid>/auth.json`, `$XDG_CONFIG_HOME/containers/auth.json`,
//! `$DOCKER_CONFIG/config.json` (or `~/.docker/config.json`), `~/.dockercfg`.
//! The first file with an entry for the registry wins. In a file, a credential helper
//! named for the registry (`credHelpers`) comes first, then the file's own entries, then its
//! default helper (`credsStore`), as Docker reads them ([`helper`]).

mod helper;

use std::collections::BTreeMap;
use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};

#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials({}, <redacted>)", self.username)
    }
}

/// The files to read, in order. `explicit` is `--authfile`.
pub fn read_candidates(explicit: Option<&Path>) -> Vec<PathBuf> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let home = env("HOME");
    let mut out: Vec<PathBuf> = explicit.map(Path::to_path_buf).into_iter().collect();
    out.extend(env("REGISTRY_AUTH_FILE"));
    out.push(default_write_location_from_runtime());
    if let Some(cfg) = env("XDG_CONFIG_HOME").or_else(|| home.as_ref().map(|h| h.join(".config"))) {
        out.push(cfg.join("containers/auth.json"));
    }
    if let Some(d) = env("DOCKER_CONFIG").or_else(|| home.as_ref().map(|h| h.join(".docker"))) {
        out.push(d.join("config.json"));
    }
    if let Some(h) = &home {
        out.push(h.join(".dockercfg"));
    }
    out
}

fn default_write_location_from_runtime() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("containers/auth.json"),
        None => {
            let uid = std::fs::metadata("/proc/self")
                .map(|m| m.uid())
                .unwrap_or(0);
            PathBuf::from(format!("/run/containers/{uid}/auth.json"))
        }
    }
}

/// Where `login` writes: `--authfile` > `REGISTRY_AUTH_FILE` > the runtime auth.json.
pub fn write_location(explicit: Option<&Path>) -> PathBuf {
    explicit
        .map(Path::to_path_buf)
        .or_else(|| {
            std::env::var_os("REGISTRY_AUTH_FILE")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
        .unwrap_or_else(default_write_location_from_runtime)
}

/// Finds credentials for `registry` (and, for scoped entries, `repository`).
pub fn lookup(
    explicit: Option<&Path>,
    registry: &str,
    repository: Option<&str>,
) -> Result<Option<Credentials>> {
    for path in read_candidates(explicit) {
        let text = match crate::local_file::read_text(&path, crate::local_file::CONFIG) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(Error::invalid(format!(
                    "cannot read auth file {}: {e}",
                    path.display()
                )));
            }
        };
        let file = AuthFile::parse(&text)
            .map_err(|e| e.context(format!("auth file {}", path.display())))?;
        if let Some(c) = file.find(registry, repository)? {
            tracing::debug!(file = %path.display(), registry, "using stored credentials");
            return Ok(Some(c));
        }
    }
    Ok(None)
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Entry {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    auth: String,
}

/// A docker-style auth file, keeping unknown top-level keys intact when rewritten.
#[derive(Debug, Default)]
pub struct AuthFile {
    doc: serde_json::Map<String, Value>,
}

fn normalise_key(key: &str) -> String {
    let k = key
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let k = k
        .strip_suffix("/v1/")
        .or_else(|| k.strip_suffix("/v1"))
        .unwrap_or(k);
    let k = k.trim_end_matches('/');
    match k {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".to_owned(),
        other => other.to_owned(),
    }
}

impl AuthFile {
    pub fn parse(text: &str) -> Result<Self> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        let doc: serde_json::Map<String, Value> = serde_json::from_str(text)
            .map_err(|e| Error::invalid(format!("not valid JSON: {e}")))?;
        Ok(Self { doc })
    }

    /// `auths` map; a legacy `.dockercfg` has the entries at the top level.
    fn entries(&self) -> BTreeMap<String, Entry> {
        let src = match self.doc.get("auths") {
            Some(Value::Object(m)) => m.clone(),
            _ if !self.doc.contains_key("auths") => self.doc.clone(),
            _ => serde_json::Map::new(),
        };
        src.into_iter()
            .filter_map(|(k, v)| {
                serde_json::from_value::<Entry>(v)
                    .ok()
                    .map(|e| (normalise_key(&k), e))
            })
            .collect()
    }

    pub fn find(&self, registry: &str, repository: Option<&str>) -> Result<Option<Credentials>> {
        let entries = self.entries();
        let registry = normalise_key(registry);
        if let Some(Value::Object(helpers)) = self.doc.get("credHelpers")
            && let Some(name) = helpers
                .iter()
                .find(|(k, _)| normalise_key(k) == registry)
                .and_then(|(_, v)| v.as_str())
        {
            return helper::get(name, &registry);
        }
        let mut keys = Vec::new();
        if let Some(repo) = repository {
            let parts: Vec<&str> = repo.split('/').collect();
            for n in (1..=parts.len()).rev() {
                keys.push(format!("{registry}/{}", parts[..n].join("/")));
            }
        }
        keys.push(registry.clone());
        for key in keys {
            if let Some(entry) = entries.get(&key).filter(|e| !e.auth.is_empty()) {
                return decode(&entry.auth)
                    .map(Some)
                    .map_err(|e| e.context(format!("entry {key:?}")));
            }
        }
        match self.doc.get("credsStore").and_then(Value::as_str) {
            Some(store) if !store.is_empty() => helper::get(store, &registry),
            _ => Ok(None),
        }
    }

    pub fn set(&mut self, registry: &str, creds: &Credentials) {
        let auths = self
            .doc
            .entry("auths")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Value::Object(m) = auths {
            let encoded = STANDARD.encode(format!("{}:{}", creds.username, creds.password));
            m.insert(registry.to_owned(), serde_json::json!({ "auth": encoded }));
        }
    }

    /// Removes `registry`; returns whether it was there.
    pub fn remove(&mut self, registry: &str) -> bool {
        match self.doc.get_mut("auths") {
            Some(Value::Object(m)) => {
                let key = m
                    .keys()
                    .find(|k| normalise_key(k) == normalise_key(registry))
                    .cloned();
                key.is_some_and(|k| m.remove(&k).is_some())
            }
            _ => false,
        }
    }

    pub fn clear(&mut self) {
        self.doc
            .insert("auths".into(), Value::Object(Default::default()));
    }

    pub fn load(path: &Path) -> Result<Self> {
        match crate::local_file::read_text(path, crate::local_file::CONFIG) {
            Ok(t) => {
                Self::parse(&t).map_err(|e| e.context(format!("auth file {}", path.display())))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(Error::invalid(format!(
                "cannot read auth file {}: {e}",
                path.display()
            ))),
        }
    }

    /// Writes whole or not at all, mode 0600, through a fresh temporary file
    /// ([`crate::atomic`]): a crash never leaves half a file, and nothing planted beside it
    /// is written through.
    pub fn save(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let text = serde_json::to_string_pretty(&Value::Object(self.doc.clone()))
            .map_err(|e| Error::internal(e.to_string()))?;
        crate::atomic::write(path, text.as_bytes(), Some(0o600))
            .map_err(|e| Error::invalid(format!("cannot write auth file {}: {e}", path.display())))
    }
}

fn decode(auth: &str) -> Result<Credentials> {
    let raw = STANDARD
        .decode(auth.trim())
        .map_err(|_| Error::invalid("auth value is not valid base64"))?;
    let text = String::from_utf8(raw).map_err(|_| Error::invalid("auth value is not UTF-8"))?;
    let (user, pass) = text
        .split_once(':')
        .ok_or_else(|| Error::invalid("auth value is not user:password"))?;
    Ok(Credentials {
        username: user.to_owned(),
        password: pass.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_docker_hub_aliases_and_scoped_entries() {
        let file = AuthFile::parse(
            r#"{"auths":{"https://index.docker.io/v1/":{"auth":"dTpw"},
                "reg.io/team":{"auth":"dGVhbTpz"},"reg.io":{"auth":"YWxsOng="}}}"#,
        )
        .unwrap();
        let hub = file
            .find("docker.io", Some("library/nginx"))
            .unwrap()
            .unwrap();
        assert_eq!((hub.username.as_str(), hub.password.as_str()), ("u", "p"));
        let team = file.find("reg.io", Some("team/app")).unwrap().unwrap();
        assert_eq!(team.username, "team");
        let other = file.find("reg.io", Some("other/app")).unwrap().unwrap();
        assert_eq!(other.username, "all");
        assert!(file.find("nope.io", None).unwrap().is_none());
    }

    #[test]
    fn reads_legacy_dockercfg_and_round_trips() {
        let legacy = AuthFile::parse(r#"{"reg.io":{"auth":"dTpw","email":"x"}}"#).unwrap();
        assert_eq!(legacy.find("reg.io", None).unwrap().unwrap().username, "u");
        let mut f = AuthFile::default();
        let c = Credentials {
            username: "a".into(),
            password: "b:c".into(),
        };
        f.set("reg.io:5000", &c);
        let back = AuthFile::parse(&serde_json::to_string(&Value::Object(f.doc.clone())).unwrap())
            .unwrap();
        assert_eq!(back.find("reg.io:5000", None).unwrap(), Some(c));
        let mut back = back;
        assert!(back.remove("reg.io:5000"));
        assert!(back.find("reg.io:5000", None).unwrap().is_none());
    }

    #[test]
    fn debug_never_shows_password() {
        let c = Credentials {
            username: "a".into(),
            password: "secret".into(),
        };
        assert!(!format!("{c:?}").contains("secret"));
    }
}
