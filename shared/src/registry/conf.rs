//! `registries.conf`, as containers/image (and so Hangar, skopeo, podman) reads it: the
//! first of `$CONTAINERS_REGISTRIES_CONF`, `$HOME/.config/containers/registries.conf`,
//! `/etc/containers/registries.conf`, then the drop-ins `*.conf` of
//! `/etc/containers/registries.conf.d/` and `$HOME/.config/containers/registries.conf.d/`
//! in name order, a later `[[registry]]` replacing an earlier one of the same prefix.
//!
//! What is honoured: `insecure` (plain HTTP and unverified TLS for a registry or a
//! repository prefix, when the command's `--tls-verify` was left out), `blocked` (its
//! images are not read), `location` (where a prefix is really read from) and
//! `[[registry.mirror]]` (`location`, `insecure`, `pull-from-mirror`;
//! `mirror-by-digest-only`), tried in order before the registry, in the v2 `[[registry]]`
//! form and the v1 `[registries.insecure]`/`[registries.block]` lists. An `insecure`
//! mirror or `location` makes its whole host insecure (the endpoint is reached by host).
//! Other keys (search registries, short names, aliases) concern short names, which lists
//! never hold.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::Deserialize;

use crate::error::{Error, Result};

/// A configuration file larger than this is refused: real ones are a few KiB.
const MAX_FILE: u64 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Mirror {
    location: String,
    insecure: bool,
    /// Used only for images pinned by digest (`pull-from-mirror = "digest-only"`,
    /// `mirror-by-digest-only`), or only for tags (`"tag-only"`).
    digest_only: bool,
    tag_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    prefix: String,
    /// Where the prefix is read from, when not itself.
    location: Option<String>,
    mirrors: Vec<Mirror>,
    insecure: bool,
    blocked: bool,
    /// The file that said it, for messages.
    file: PathBuf,
}

/// The registries the configuration says something about.
#[derive(Debug, Default)]
pub struct RegistriesConf {
    entries: Vec<Entry>,
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
    mirror: Vec<MirrorTable>,
    #[serde(default)]
    mirror_by_digest_only: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct MirrorTable {
    #[serde(default)]
    location: String,
    #[serde(default)]
    insecure: bool,
    #[serde(default)]
    pull_from_mirror: Option<String>,
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
        CONF.get_or_init(|| Self::load(&files()).map_err(|e| e.message))
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
                    location: None,
                    mirrors: Vec::new(),
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
            let wildcard = prefix.starts_with("*.");
            let location = (!table.location.is_empty() && table.location != prefix)
                .then(|| table.location.clone());
            if wildcard && (location.is_some() || !table.mirror.is_empty()) {
                return Err(Error::invalid(format!(
                    "{shown}: {prefix}: a wildcard prefix cannot have a location or mirrors"
                )));
            }
            if let Some(l) = &location {
                check_prefix(path, l)?;
            }
            let mut mirrors = Vec::new();
            for m in table.mirror {
                if m.location.is_empty() {
                    return Err(Error::invalid(format!(
                        "{shown}: a mirror of {prefix} without a location"
                    )));
                }
                check_prefix(path, &m.location)?;
                let (digest_only, tag_only) = match m.pull_from_mirror.as_deref() {
                    None | Some("all") => (table.mirror_by_digest_only, false),
                    Some("digest-only") => (true, false),
                    Some("tag-only") => (false, true),
                    Some(other) => {
                        return Err(Error::invalid(format!(
                            "{shown}: mirror {} of {prefix}: pull-from-mirror {other:?} is not all, digest-only or tag-only",
                            m.location
                        )));
                    }
                };
                mirrors.push(Mirror {
                    location: m.location,
                    insecure: m.insecure,
                    digest_only,
                    tag_only,
                });
            }
            let insecure = table.insecure;
            found.push(Entry {
                prefix,
                location,
                mirrors,
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

    /// Whether connections to `host` may use plain HTTP and skip certificate checks: the
    /// registry's own entry, or a mirror or redirect to it marked insecure.
    pub fn insecure(&self, host: &str) -> bool {
        let on = |location: &str| location.split('/').next() == Some(host);
        self.find(host).is_some_and(|e| e.insecure)
            || self.entries.iter().any(|e| {
                (e.insecure && e.location.as_deref().is_some_and(on))
                    || e.mirrors.iter().any(|m| m.insecure && on(&m.location))
            })
    }

    /// Whether `repo` on `host` may skip certificate checks (and use plain HTTP, where the
    /// registry speaks only that): the most specific entry for it without a `location`,
    /// else the host's own answer ([`Self::insecure`]). A repository prefix may say
    /// otherwise than its registry, either way.
    pub fn insecure_repo(&self, host: &str, repo: &str) -> bool {
        match self.find(&format!("{host}/{repo}")) {
            Some(e) if e.prefix.contains('/') && e.location.is_none() => e.insecure,
            _ => self.insecure(host),
        }
    }

    /// Whether some repository prefix on `host` says otherwise than the host about
    /// `insecure`: its connections then need a client of each kind.
    pub fn insecure_varies(&self, host: &str) -> bool {
        let whole = self.insecure(host);
        self.entries.iter().any(|e| {
            e.location.is_none()
                && e.insecure != whole
                && e.prefix
                    .strip_prefix(host)
                    .is_some_and(|rest| rest.starts_with('/'))
        })
    }

    /// Where to read `name` (`host/repository`) from, in order: the mirrors that serve it
    /// (by digest or by tag), then the registry of record — itself, or where `location`
    /// sends it. Just `name` when the configuration says nothing of it.
    pub fn pull_sources(&self, name: &str, by_digest: bool) -> Vec<String> {
        let Some(e) = self.find(name).filter(|e| !e.prefix.starts_with("*.")) else {
            return vec![name.to_owned()];
        };
        let rest = &name[e.prefix.len()..];
        let mut out: Vec<String> = e
            .mirrors
            .iter()
            .filter(|m| {
                if by_digest {
                    !m.tag_only
                } else {
                    !m.digest_only
                }
            })
            .map(|m| format!("{}{rest}", m.location))
            .collect();
        out.push(format!(
            "{}{rest}",
            e.location.as_deref().unwrap_or(&e.prefix)
        ));
        out
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
    crate::local_file::read_text(path, MAX_FILE)
        .map_err(|e| Error::invalid(format!("{}: {e}", path.display())))
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
    }

    #[test]
    fn insecure_on_a_repository_prefix_either_way() {
        let c = conf(
            r#"
[[registry]]
location = "harbor:5000/lab"
insecure = true

[[registry]]
location = "plain:5000"
insecure = true

[[registry]]
location = "plain:5000/prod"
insecure = false
"#,
        )
        .unwrap();
        assert!(!c.insecure("harbor:5000"));
        assert!(c.insecure_varies("harbor:5000"));
        assert!(c.insecure_repo("harbor:5000", "lab/app"));
        assert!(c.insecure_repo("harbor:5000", "lab"));
        assert!(!c.insecure_repo("harbor:5000", "laboratory/app"));
        assert!(!c.insecure_repo("harbor:5000", "prod/app"));
        assert!(c.insecure("plain:5000") && c.insecure_varies("plain:5000"));
        assert!(!c.insecure_repo("plain:5000", "prod/app"));
        assert!(c.insecure_repo("plain:5000", "dev/app"));
        assert!(!c.insecure_varies("other:5000"));
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
    fn mirrors_in_order_then_the_registry_of_record() {
        let c = conf(
            r#"
[[registry]]
prefix = "docker.io"
location = "hub.local:5000"
[[registry.mirror]]
location = "m1.local:5000/hub"
insecure = true
[[registry.mirror]]
location = "m2.local"
pull-from-mirror = "digest-only"

[[registry]]
prefix = "quay.io/team"
mirror-by-digest-only = true
[[registry.mirror]]
location = "cache.local/quay-team"
"#,
        )
        .unwrap();
        assert_eq!(
            c.pull_sources("docker.io/library/alpine", false),
            [
                "m1.local:5000/hub/library/alpine",
                "hub.local:5000/library/alpine"
            ]
        );
        assert_eq!(
            c.pull_sources("docker.io/library/alpine", true),
            [
                "m1.local:5000/hub/library/alpine",
                "m2.local/library/alpine",
                "hub.local:5000/library/alpine"
            ]
        );
        assert_eq!(
            c.pull_sources("quay.io/team/app", false),
            ["quay.io/team/app"]
        );
        assert_eq!(
            c.pull_sources("quay.io/team/app", true),
            ["cache.local/quay-team/app", "quay.io/team/app"]
        );
        assert_eq!(
            c.pull_sources("quay.io/other/app", true),
            ["quay.io/other/app"]
        );
        assert!(c.insecure("m1.local:5000"));
        assert!(!c.insecure("m2.local"));
        let e = conf("[[registry]]\nprefix = \"*.x.io\"\n[[registry.mirror]]\nlocation = \"m\"\n")
            .unwrap_err();
        assert!(e.message.contains("wildcard"), "{e}");
        let e = conf(
            "[[registry]]\nlocation = \"a.io\"\n[[registry.mirror]]\nlocation = \"m.io\"\npull-from-mirror = \"sometimes\"\n",
        )
        .unwrap_err();
        assert!(e.message.contains("sometimes"), "{e}");
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
