//! `registries.conf`, as containers/image (and so Hangar, skopeo, podman) reads it: the
//! first of `$CONTAINERS_REGISTRIES_CONF`, `$HOME/.config/containers/registries.conf`,
//! `/etc/containers/registries.conf`, then the drop-ins `*.conf` of
//! `/etc/containers/registries.conf.d/` and `$HOME/.config/containers/registries.conf.d/`
//! in name order, a later `[[registry]]` replacing an earlier one of the same prefix.
//!
//! What is honoured: `insecure` (plain HTTP and unverified TLS for a registry, when the
//! command's `--tls-verify` was left out) and `blocked` (its images are not read), in the
//! v2 `[[registry]]` form and the v1 `[registries.insecure]`/`[registries.block]` lists.
//! Mirrors and a `location` other than the prefix are not followed: each says so once, and
//! the registry named in the list is used. Other keys (search registries, short names,
//! aliases) concern short names, which lists never hold.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::Deserialize;

use crate::error::{Error, Result};

/// A configuration file larger than this is refused: real ones are a few KiB.
const MAX_FILE: u64 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    prefix: String,
    insecure: bool,
    blocked: bool,
    /// The file that said it, for messages.
    file: PathBuf,
}

/// The registries the configuration says something about.
#[derive(Debug, Default)]
pub struct RegistriesConf {
    entries: Vec<Entry>,
    /// Things configured and not followed, each said once when the configuration is read.
    pub ignored: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
struct FileV2 {
    #[serde(default)]
    registry: Vec<RegistryTable>,
    #[serde(default)]
    registries: Option<V1>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct RegistryTable {
    #[serde(default)]
    prefix: String,
    #[serde(default)]
    location: String,
    #[serde(default)]
    insecure: bool,
    #[serde(default)]
    blocked: bool,
    #[serde(default)]
    mirror: Vec<toml::Value>,
}

#[derive(Deserialize, Default)]
struct V1 {
    #[serde(default)]
    insecure: Option<V1List>,
    #[serde(default)]
    block: Option<V1List>,
}

#[derive(Deserialize, Default)]
struct V1List {
    #[serde(default)]
    registries: Vec<String>,
}

impl RegistriesConf {
    /// This process's configuration, read once; a broken file is an error every time it is
    /// asked for, naming the file and line.
    pub fn global() -> Result<&'static RegistriesConf> {
        static CONF: OnceLock<std::result::Result<RegistriesConf, String>> = OnceLock::new();
        CONF.get_or_init(|| {
            let conf = Self::load(&files()).map_err(|e| e.message)?;
            for line in &conf.ignored {
                tracing::warn!("{line}");
            }
            Ok(conf)
        })
        .as_ref()
        .map_err(|m| Error::invalid(m.clone()))
    }

    /// Reads `paths` in order, later entries replacing earlier ones of the same prefix.
    pub fn load(paths: &[PathBuf]) -> Result<Self> {
        let mut conf = Self::default();
        for path in paths {
            let text = read(path)?;
            conf.merge(path, &text)?;
        }
        Ok(conf)
    }

    fn merge(&mut self, path: &Path, text: &str) -> Result<()> {
        let file: FileV2 =
            toml::from_str(text).map_err(|e| Error::invalid(format!("{}: {e}", path.display())))?;
        let v1 = file.registries.unwrap_or_default();
        let v1_lists = [(v1.insecure, true), (v1.block, false)];
        if !file.registry.is_empty() && v1_lists.iter().any(|(l, _)| l.is_some()) {
            return Err(Error::invalid(format!(
                "{}: mixes the v1 [registries.*] lists and v2 [[registry]] tables; use one",
                path.display()
            )));
        }
        let mut found = Vec::new();
        for (list, insecure) in v1_lists {
            for host in list.unwrap_or_default().registries {
                check_prefix(path, &host)?;
                found.push(Entry {
                    prefix: host,
                    insecure,
                    blocked: !insecure,
                    file: path.to_owned(),
                });
            }
        }
        for table in file.registry {
            let prefix = if table.prefix.is_empty() {
                table.location.clone()
            } else {
                table.prefix.clone()
            };
            if prefix.is_empty() {
                return Err(Error::invalid(format!(
                    "{}: a [[registry]] with neither prefix nor location",
                    path.display()
                )));
            }
            check_prefix(path, &prefix)?;
            let shown = path.display();
            if !table.location.is_empty() && table.location != prefix {
                self.ignored.push(format!(
                    "{shown}: {prefix} is redirected to {} there; redirection is not supported yet, {prefix} itself is used",
                    table.location
                ));
            }
            if !table.mirror.is_empty() {
                self.ignored.push(format!(
                    "{shown}: the mirrors of {prefix} are not used (not supported yet); {prefix} itself is read"
                ));
            }
            let insecure = if table.insecure && prefix.contains('/') {
                self.ignored.push(format!(
                    "{shown}: insecure = true on {prefix} is ignored: connections are per registry here; set it on the registry's own entry"
                ));
                false
            } else {
                table.insecure
            };
            found.push(Entry {
                prefix,
                insecure,
                blocked: table.blocked,
                file: path.to_owned(),
            });
        }
        for entry in found {
            self.entries.retain(|e| e.prefix != entry.prefix);
            self.entries.push(entry);
        }
        Ok(())
    }

    /// The most specific entry for `name` (`host` or `host/repository`).
    fn find(&self, name: &str) -> Option<&Entry> {
        let host = name.split('/').next().unwrap_or(name);
        self.entries
            .iter()
            .filter(|e| match e.prefix.strip_prefix("*.") {
                Some(domain) => host.ends_with(&format!(".{domain}")),
                None => {
                    name == e.prefix
                        || name
                            .strip_prefix(e.prefix.as_str())
                            .is_some_and(|rest| rest.starts_with('/'))
                }
            })
            .max_by_key(|e| e.prefix.len())
    }

    /// Whether connections to `host` may use plain HTTP and skip certificate checks.
    pub fn insecure(&self, host: &str) -> bool {
        self.find(host).is_some_and(|e| e.insecure)
    }

    /// Refuses reading `host/repo` when the configuration blocks it.
    pub fn check_not_blocked(&self, host: &str, repo: &str) -> Result<()> {
        match self.find(&format!("{host}/{repo}")) {
            Some(e) if e.blocked => Err(Error::invalid(format!(
                "{host}/{repo}: registry {} is blocked in {}",
                e.prefix,
                e.file.display()
            ))),
            _ => Ok(()),
        }
    }
}

/// Prefixes are `host[:port][/path]` or `*.domain`; anything else would silently match
/// nothing, so it is refused.
fn check_prefix(path: &Path, prefix: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(Error::invalid(format!(
            "{}: registry prefix {prefix:?} {why}",
            path.display()
        )))
    };
    if let Some(domain) = prefix.strip_prefix("*.") {
        if domain.is_empty() || domain.contains(['/', '*']) {
            return bad("has a wildcard only a host may have (`*.example.com`)");
        }
        return Ok(());
    }
    if prefix.contains(['*', '@', ' ']) || prefix.starts_with('/') || prefix.ends_with('/') {
        return bad("is not `host[:port][/path]` or `*.domain`");
    }
    Ok(())
}

fn read(path: &Path) -> Result<String> {
    let unreadable = |e: std::io::Error| Error::invalid(format!("{}: {e}", path.display()));
    let file = std::fs::File::open(path).map_err(unreadable)?;
    let mut text = String::new();
    file.take(MAX_FILE + 1)
        .read_to_string(&mut text)
        .map_err(unreadable)?;
    if text.len() as u64 > MAX_FILE {
        return Err(Error::invalid(format!(
            "{}: larger than {} KiB",
            path.display(),
            MAX_FILE >> 10
        )));
    }
    Ok(text)
}

/// The files containers/image would read, in order.
fn files() -> Vec<PathBuf> {
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".config/containers"));
    let main = match std::env::var_os("CONTAINERS_REGISTRIES_CONF").filter(|p| !p.is_empty()) {
        // Named explicitly: it must be there.
        Some(p) => Some(PathBuf::from(p)),
        None => home
            .iter()
            .map(|h| h.join("registries.conf"))
            .chain([PathBuf::from("/etc/containers/registries.conf")])
            .find(|p| p.is_file()),
    };
    let mut out: Vec<PathBuf> = main.into_iter().collect();
    let dirs = [PathBuf::from("/etc/containers/registries.conf.d")]
        .into_iter()
        .chain(home.map(|h| h.join("registries.conf.d")));
    for dir in dirs {
        let Ok(read) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut names: Vec<PathBuf> = read
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "conf"))
            .collect();
        names.sort();
        out.extend(names);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(text: &str) -> Result<RegistriesConf> {
        let mut c = RegistriesConf::default();
        c.merge(Path::new("/etc/containers/registries.conf"), text)?;
        Ok(c)
    }

    #[test]
    fn v2_insecure_and_blocked_by_most_specific_prefix() {
        let c = conf(
            r#"
unqualified-search-registries = ["docker.io"]
short-name-mode = "enforcing"

[[registry]]
location = "127.0.0.1:5000"
insecure = true

[[registry]]
prefix = "docker.io/evil"
location = "docker.io/evil"
blocked = true

[[registry]]
prefix = "*.corp.example"
insecure = true
"#,
        )
        .unwrap();
        assert!(c.insecure("127.0.0.1:5000"));
        assert!(!c.insecure("127.0.0.1:5001"));
        assert!(c.insecure("harbor.corp.example"));
        assert!(!c.insecure("corp.example"));
        assert!(!c.insecure("docker.io"));
        let e = c.check_not_blocked("docker.io", "evil/x").unwrap_err();
        assert!(
            e.message.contains("docker.io/evil/x")
                && e.message.contains("/etc/containers/registries.conf"),
            "{e}"
        );
        assert!(c.check_not_blocked("docker.io", "evil").is_err());
        assert!(c.check_not_blocked("docker.io", "evilcorp/x").is_ok());
        assert!(c.check_not_blocked("docker.io", "library/alpine").is_ok());
        assert!(c.ignored.is_empty(), "{:?}", c.ignored);
    }

    #[test]
    fn v1_lists() {
        let c = conf(
            "[registries.insecure]\nregistries = ['localhost:5000']\n[registries.block]\nregistries = ['bad.example']\n",
        )
        .unwrap();
        assert!(c.insecure("localhost:5000"));
        assert!(c.check_not_blocked("bad.example", "a/b").is_err());
        assert!(!c.insecure("bad.example"));
    }

    #[test]
    fn mirrors_and_redirects_are_said_not_followed() {
        let c = conf(
            r#"
[[registry]]
prefix = "docker.io"
location = "mirror.local:5000"
[[registry.mirror]]
location = "other.local"
"#,
        )
        .unwrap();
        assert_eq!(c.ignored.len(), 2, "{:?}", c.ignored);
        assert!(c.ignored[0].contains("mirror.local:5000"));
        assert!(c.ignored[1].contains("mirrors of docker.io"));
    }

    #[test]
    fn broken_files_name_file_and_line() {
        let e = conf("[[registry]]\nlocation = \"a\"\ninsecure = maybe\n").unwrap_err();
        assert!(
            e.message.contains("/etc/containers/registries.conf") && e.message.contains("line 3"),
            "{e}"
        );
        let e = conf("[[registry]]\ninsecure = true\n").unwrap_err();
        assert!(e.message.contains("neither prefix nor location"), "{e}");
        let e = conf("[[registry]]\nprefix = \"a/*/b\"\n").unwrap_err();
        assert!(e.message.contains("a/*/b"), "{e}");
        let e = conf("[registries.block]\nregistries = ['x']\n[[registry]]\nlocation = \"y\"\n")
            .unwrap_err();
        assert!(e.message.contains("mixes"), "{e}");
    }

    #[test]
    fn later_files_replace_the_same_prefix() {
        let mut c = RegistriesConf::default();
        c.merge(
            Path::new("a.conf"),
            "[[registry]]\nlocation = \"r:1\"\ninsecure = true\n",
        )
        .unwrap();
        c.merge(
            Path::new("b.conf"),
            "[[registry]]\nlocation = \"r:1\"\nblocked = true\n",
        )
        .unwrap();
        assert!(!c.insecure("r:1"));
        assert!(c.check_not_blocked("r:1", "x").is_err());
    }

    #[test]
    fn oversized_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("registries.conf");
        std::fs::write(&p, "#".repeat((MAX_FILE + 1) as usize)).unwrap();
        let e = RegistriesConf::load(&[p]).unwrap_err();
        assert!(e.message.contains("larger than"), "{e}");
    }
}
