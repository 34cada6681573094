//! What a fleet worker will do for a task, whoever managed to publish it: archives are
//! written (and `sync` bases read) only under the worker's `--archive-root`s, and a key
//! signs only inside its `--sign-scope`. The bus carries requests, not authority; these
//! limits hold even for a task that reached the queue without the coordinator.
//!
//! Only the `hangar-worker` daemon sets one (`Context::policy`). The coordinator's
//! embedded mode runs these handlers on tasks it planned itself from its own user's flags,
//! so it has nothing to confine.

use std::collections::HashMap;
use std::path::{Component, PathBuf};

use hangar_shared::error::{Error, Result};
use hangar_shared::glob::{Glob, any_matches};
use hangar_shared::store::{RepoRef, StoreRef, StoreResolver};

#[derive(Debug, Default)]
pub struct Policy {
    pub archives: ArchiveRoots,
    pub signing: SignScopes,
}

/// Where archives may go.
#[derive(Debug, Default)]
pub struct ArchiveRoots {
    roots: Vec<Root>,
    /// Whose roots these are, for a refusal: the coordinator's (`serve`), or by default
    /// this worker's.
    coordinator: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Root {
    Local {
        dir: PathBuf,
        /// Sub-directories kept for the cache's own entries (implicit cache root only).
        reserved: Vec<String>,
    },
    S3 {
        bucket: String,
        prefix: Vec<String>,
        /// The service the bucket lives on; an archive on another endpoint is refused,
        /// or a task could have the worker upload the cache's contents anywhere.
        endpoint: Option<String>,
        reserved: Vec<String>,
    },
}

/// The blob cache's own top-level folders: an archive written over them would vandalise
/// the cache (reads are verified, so it would cost refetches, not wrong bytes).
const CACHE_FOLDERS: [&str; 3] = ["blobs", "archives", "inventory"];

impl std::fmt::Display for Root {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Root::Local { dir, .. } => write!(f, "{}", dir.display()),
            Root::S3 {
                bucket,
                prefix,
                endpoint,
                ..
            } => {
                write!(f, "s3://{bucket}")?;
                if !prefix.is_empty() {
                    write!(f, "/{}", prefix.join("/"))?;
                }
                if let Some(e) = endpoint {
                    write!(f, " on {e}")?;
                }
                Ok(())
            }
        }
    }
}

/// An S3 location split up: bucket, key segments (normalised), endpoint, the raw query.
struct S3Location {
    bucket: String,
    key: Vec<String>,
    endpoint: Option<String>,
    query: String,
}

fn parse_s3(location: &str, default_endpoint: Option<&str>) -> Result<S3Location> {
    let rest = location
        .strip_prefix("s3://")
        .ok_or_else(|| Error::invalid(format!("{location}: not an s3:// location")))?;
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (bucket, key) = path.split_once('/').unwrap_or((path, ""));
    if bucket.is_empty() {
        return Err(Error::invalid(format!("{location}: no bucket")));
    }
    let key = normalise_key(key)
        .ok_or_else(|| Error::invalid(format!("{location}: the key climbs out with \"..\"")))?;
    let mut endpoint = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        if let Some(("endpoint", v)) = pair.split_once('=') {
            endpoint = Some(normalise_endpoint(v));
        }
    }
    Ok(S3Location {
        bucket: bucket.to_owned(),
        key,
        endpoint: endpoint.or_else(|| default_endpoint.map(normalise_endpoint)),
        query: query.to_owned(),
    })
}

/// `a//b/./c/../d` → `[a, b, d]`; `None` when `..` would climb above the bucket.
fn normalise_key(key: &str) -> Option<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for seg in key.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop()?;
            }
            s => out.push(s.to_owned()),
        }
    }
    Some(out)
}

fn normalise_endpoint(e: &str) -> String {
    e.trim_end_matches('/').to_ascii_lowercase()
}

/// The endpoint object_store falls back to when a location names none.
fn env_endpoint() -> Option<String> {
    ["AWS_ENDPOINT", "AWS_ENDPOINT_URL"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
}

/// Absolute, `.` and `..` resolved lexically (never above `/`), then the longest existing
/// ancestor's symlinks resolved: a link inside a root pointing out of it does not count
/// as inside.
pub fn resolve_local(path: &str) -> Result<PathBuf> {
    let abs = std::path::absolute(path).map_err(|e| Error::invalid(format!("{path}: {e}")))?;
    let mut lexical = PathBuf::new();
    for c in abs.components() {
        match c {
            Component::ParentDir => {
                lexical.pop();
            }
            Component::CurDir => {}
            other => lexical.push(other),
        }
    }
    let mut existing = lexical.as_path();
    let mut rest = Vec::new();
    loop {
        match existing.canonicalize() {
            Ok(real) => {
                let mut out = real;
                for part in rest.iter().rev() {
                    out.push(part);
                }
                return Ok(out);
            }
            Err(_) => match (existing.parent(), existing.file_name()) {
                (Some(parent), Some(name)) => {
                    rest.push(name.to_owned());
                    existing = parent;
                }
                // `/` itself always exists; reaching here means it could not be read.
                _ => return Ok(lexical),
            },
        }
    }
}

impl ArchiveRoots {
    /// From `--archive-root` values; with none, the inside of the cache (`cache`, the
    /// worker's `--cache`) minus the cache's own folders; with no cache either, nowhere.
    pub fn new(specs: &[String], cache: Option<&str>) -> Result<Self> {
        let cache_endpoint = cache
            .filter(|c| c.starts_with("s3://"))
            .and_then(|c| parse_s3(c, None).ok())
            .and_then(|l| l.endpoint);
        let default_endpoint = cache_endpoint.or_else(env_endpoint);
        let mut roots = Vec::new();
        for spec in specs {
            roots.push(Self::root(spec, default_endpoint.as_deref(), Vec::new())?);
        }
        if specs.is_empty()
            && let Some(cache) = cache
        {
            let reserved = CACHE_FOLDERS.iter().map(|s| s.to_string()).collect();
            let root = if cache.starts_with("s3://") {
                Self::root(cache, env_endpoint().as_deref(), reserved)?
            } else {
                Self::root(
                    cache.strip_prefix("file://").unwrap_or(cache),
                    None,
                    reserved,
                )?
            };
            roots.push(root);
        }
        Ok(Self {
            roots,
            coordinator: false,
        })
    }

    fn root(spec: &str, default_endpoint: Option<&str>, reserved: Vec<String>) -> Result<Root> {
        if spec.starts_with("s3://") {
            let l = parse_s3(spec, default_endpoint)
                .map_err(|e| Error::invalid(format!("--archive-root {e}")))?;
            Ok(Root::S3 {
                bucket: l.bucket,
                prefix: l.key,
                endpoint: l.endpoint,
                reserved,
            })
        } else if spec.contains("://") {
            Err(Error::invalid(format!(
                "--archive-root {spec}: expected a directory or s3://bucket/prefix"
            )))
        } else {
            Ok(Root::Local {
                dir: resolve_local(spec)?,
                reserved,
            })
        }
    }

    /// The same roots, as the coordinator's (`serve --archive-root`) in refusals.
    pub fn of_the_coordinator(mut self) -> Self {
        self.coordinator = true;
        self
    }

    /// The roots, for a log line or an error.
    pub fn describe(&self) -> String {
        if self.roots.is_empty() {
            return "none (no --archive-root and no --cache)".into();
        }
        self.roots
            .iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The location to use for `location` (normalised: what was checked is what gets
    /// written), or an error naming it and the roots.
    pub fn check(&self, what: &str, location: &str) -> Result<String> {
        let refuse = |why: &str| {
            Error::invalid(format!(
                "refused: the {what} {location} is {why} {} archive roots ({}; {} --archive-root)",
                if self.coordinator {
                    "the coordinator's"
                } else {
                    "this worker's"
                },
                self.describe(),
                if self.coordinator {
                    "hangar-coord serve"
                } else {
                    "hangar-worker"
                },
            ))
        };
        if location.starts_with("s3://") {
            let l = parse_s3(location, env_endpoint().as_deref())
                .map_err(|_| refuse("not a valid location inside"))?;
            let inside = self.roots.iter().any(|r| match r {
                Root::S3 {
                    bucket,
                    prefix,
                    endpoint,
                    reserved,
                } => {
                    *bucket == l.bucket
                        && *endpoint == l.endpoint
                        && l.key.len() > prefix.len()
                        && l.key.starts_with(prefix)
                        && !reserved.contains(&l.key[prefix.len()])
                }
                Root::Local { .. } => false,
            });
            if !inside {
                return Err(refuse("outside"));
            }
            let mut out = format!("s3://{}/{}", l.bucket, l.key.join("/"));
            if !l.query.is_empty() {
                out.push('?');
                out.push_str(&l.query);
            }
            Ok(out)
        } else {
            let path = resolve_local(location)?;
            let inside = self.roots.iter().any(|r| match r {
                Root::Local { dir, reserved } => match path.strip_prefix(dir) {
                    Ok(rel) => match rel.components().next() {
                        Some(Component::Normal(first)) => {
                            !reserved.iter().any(|r| first == r.as_str())
                        }
                        _ => false,
                    },
                    Err(_) => false,
                },
                Root::S3 { .. } => false,
            });
            if !inside {
                return Err(refuse(&format!("(as {}) outside", path.display())));
            }
            Ok(path.to_string_lossy().into_owned())
        }
    }
}

/// Which repositories each signing key may sign in (`--sign-scope NAME=GLOB`; the globs
/// are `hangar_shared::glob`'s, as in the API's token scopes).
#[derive(Debug, Default)]
pub struct SignScopes {
    scopes: HashMap<String, Vec<Glob>>,
}

impl SignScopes {
    /// From `NAME=GLOB` values; every name must be a key the worker holds.
    pub fn new<'a>(specs: &[String], keys: impl IntoIterator<Item = &'a str>) -> Result<Self> {
        let keys: Vec<&str> = keys.into_iter().collect();
        let mut scopes: HashMap<String, Vec<Glob>> = HashMap::new();
        for spec in specs {
            let Some((name, glob)) = spec.split_once('=') else {
                return Err(Error::invalid(format!(
                    "--sign-scope {spec:?}: expected NAME=GLOB"
                )));
            };
            if !keys.contains(&name) {
                return Err(Error::invalid(format!(
                    "--sign-scope {spec:?}: no --sign-key named {name:?}"
                )));
            }
            if glob.is_empty() {
                return Err(Error::invalid(format!(
                    "--sign-scope {spec:?}: empty pattern"
                )));
            }
            scopes
                .entry(name.to_owned())
                .or_default()
                .push(Glob::new(&glob.to_ascii_lowercase()));
        }
        Ok(Self { scopes })
    }

    pub fn is_scoped(&self, key: &str) -> bool {
        self.scopes.contains_key(key)
    }

    /// A scoped key signs only when both where the signature goes (`dest`) and the
    /// repository it names (`identity`) match one of its patterns: a signature naming
    /// another repository could be copied there and pass an identity check.
    pub fn check(&self, key: &str, dest: &RepoRef, identity: &str) -> Result<()> {
        let Some(globs) = self.scopes.get(key) else {
            return Ok(());
        };
        let refuse = |what: &str, name: &str| {
            Error::invalid(format!(
                "refused: key {key:?} may not sign {what} {name}; its scope is {} \
                 (hangar-worker --sign-scope)",
                globs
                    .iter()
                    .map(Glob::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        };
        let StoreRef::Registry { host } = &dest.store else {
            return Err(refuse("in", &dest.to_string()));
        };
        // A `..` or `.` segment (or one percent-encoded) matches a pattern as text, and a
        // URL resolves it to another repository: only names in distribution's grammar are
        // matched at all.
        let path = identity.split_once('/').map_or("", |(_, path)| path);
        for name in [dest.repo.as_str(), path] {
            hangar_shared::reference::validate_repository(name).map_err(|e| {
                e.context(format!(
                    "refused: key {key:?} signs named repositories only"
                ))
            })?;
        }
        let target = canonical_repo(&format!("{host}/{}", dest.repo));
        if !any_matches(globs, &target) {
            return Err(refuse("in", &target));
        }
        let named = canonical_repo(identity);
        if !any_matches(globs, &named) {
            return Err(refuse("for the identity", &named));
        }
        Ok(())
    }
}

/// Stores as a fleet worker resolves them for any task: an archive only inside its archive
/// roots, at the normalised location that was checked, whatever the task's kind. (The
/// assembler checks the archive it writes, and its base, itself: it opens no store for
/// them.)
pub struct Confined {
    pub inner: std::sync::Arc<dyn StoreResolver>,
    pub roots: std::sync::Arc<Policy>,
}

#[async_trait::async_trait]
impl StoreResolver for Confined {
    async fn resolve(
        &self,
        store: &StoreRef,
    ) -> Result<std::sync::Arc<dyn hangar_shared::store::ImageStore>> {
        match store {
            StoreRef::Archive { location } => {
                let location = self.roots.archives.check("archive", location)?;
                self.inner.resolve(&StoreRef::Archive { location }).await
            }
            other => self.inner.resolve(other).await,
        }
    }
}

/// `registry/repository` lowercased, Docker Hub's aliases folded into `docker.io` (cosign
/// names it `index.docker.io`; the fleet names it `docker.io`).
fn canonical_repo(name: &str) -> String {
    let lower = name.to_ascii_lowercase();
    for alias in ["index.docker.io/", "registry-1.docker.io/"] {
        if let Some(rest) = lower.strip_prefix(alias) {
            return format!("docker.io/{rest}");
        }
    }
    lower
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_check_destination_and_identity() {
        let s = SignScopes::new(
            &[
                "release=reg.io/prod/**".into(),
                "release=docker.io/acme/*".into(),
            ],
            ["release", "dev"],
        )
        .unwrap();
        let ok = RepoRef::registry("reg.io", "prod/app");
        assert!(s.check("release", &ok, "reg.io/prod/app").is_ok());
        // Cosign's name for Docker Hub is folded into docker.io.
        let hub = RepoRef::registry("docker.io", "acme/tool");
        assert!(
            s.check("release", &hub, "index.docker.io/acme/tool")
                .is_ok()
        );
        let out = RepoRef::registry("reg.io", "dev/app");
        let e = s.check("release", &out, "reg.io/dev/app").unwrap_err();
        assert!(e.message.contains("reg.io/dev/app"), "{e}");
        assert!(e.message.contains("reg.io/prod/**"), "{e}");
        // In scope where it lands, but naming a repository outside it.
        assert!(s.check("release", &ok, "reg.io/dev/app").is_err());
        // An unscoped key signs anything, as before scopes existed.
        assert!(!s.is_scoped("dev"));
        assert!(s.check("dev", &out, "reg.io/dev/app").is_ok());
        // Not a registry: nothing a scope can name.
        let cache = RepoRef {
            store: StoreRef::Cache,
            repo: "prod/app".into(),
        };
        assert!(s.check("release", &cache, "reg.io/prod/app").is_err());
        // `*` stays within its segment, `**` crosses them; names compare lowercased.
        let t = SignScopes::new(
            &["team=127.0.0.1:5000/team/*".into(), "all=Reg.IO/**".into()],
            ["team", "all"],
        )
        .unwrap();
        let check = |key: &str, host: &str, repo: &str| {
            t.check(
                key,
                &RepoRef::registry(host, repo),
                &format!("{host}/{repo}"),
            )
            .is_ok()
        };
        assert!(check("team", "127.0.0.1:5000", "team/app"));
        assert!(!check("team", "127.0.0.1:5000", "team/sub/app"));
        assert!(!check("team", "127.0.0.1:5001", "team/app"));
        assert!(!check("team", "127.0.0.1:5000", "team-b/app"));
        assert!(check("all", "reg.io", "a/b/c"));
        assert!(check("all", "REG.io", "a"));
        assert!(!check("all", "evil.io", "reg.io/a"));
        assert!(SignScopes::new(&["nokey=x/*".into()], ["release"]).is_err());
        assert!(SignScopes::new(&["release".into()], ["release"]).is_err());
    }

    #[test]
    fn local_roots_normalise_and_resolve_links() {
        let dir = std::env::temp_dir().join(format!("hangar-policy-{}", std::process::id()));
        let root = dir.join("root");
        let outside = dir.join("outside");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        let _ = std::fs::remove_file(root.join("link"));
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        let roots = ArchiveRoots::new(&[root.display().to_string()], None).unwrap();
        let r = root.display();
        let real_root = root.canonicalize().unwrap();
        assert_eq!(
            roots.check("output", &format!("{r}/sub/a.zip")).unwrap(),
            real_root.join("sub/a.zip").display().to_string()
        );
        // Not yet existing folders under the root are fine.
        assert!(roots.check("output", &format!("{r}/new/dir/a.zip")).is_ok());
        assert!(roots.check("output", &format!("{r}/sub/../b.zip")).is_ok());
        for bad in [
            format!("{r}/../outside/a.zip"),
            format!("{r}/sub/../../outside/a.zip"),
            format!("{r}/link/a.zip"),
            format!("{r}/link/new/a.zip"),
            r.to_string(),
            format!("{r}-sibling/a.zip"),
            "/etc/passwd".to_owned(),
            "s3://bucket/a.zip".to_owned(),
        ] {
            let e = roots.check("output", &bad).unwrap_err();
            assert!(e.message.contains(&bad), "{e}");
            assert!(e.message.contains(&real_root.display().to_string()), "{e}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn s3_roots_match_bucket_prefix_and_endpoint() {
        let cache = "s3://hangar-cache?endpoint=http://garage:3900&region=garage";
        let roots = ArchiveRoots::new(&["s3://archives/hangar".into()], Some(cache)).unwrap();
        let q = "?endpoint=http://garage:3900/&region=garage";
        assert_eq!(
            roots
                .check("output", &format!("s3://archives/hangar/x/../a.zip{q}"))
                .unwrap(),
            format!("s3://archives/hangar/a.zip{q}")
        );
        for bad in [
            // Another service, same names: the worker's uploads must not go there.
            "s3://archives/hangar/a.zip?endpoint=http://evil:9000".to_owned(),
            format!("s3://archives/hangar-evil/a.zip{q}"),
            format!("s3://archives/hangar/../a.zip{q}"),
            format!("s3://archives/../../a.zip{q}"),
            format!("s3://other/hangar/a.zip{q}"),
            format!("s3://archives/hangar{q}"),
            "/tmp/a.zip".to_owned(),
        ] {
            assert!(roots.check("output", &bad).is_err(), "{bad}");
        }
        // No root given: inside the cache bucket, but not over its own folders.
        let implicit = ArchiveRoots::new(&[], Some(cache)).unwrap();
        assert!(
            implicit
                .check("output", &format!("s3://hangar-cache/out/a.zip{q}"))
                .is_ok()
        );
        for bad in [
            format!("s3://hangar-cache/blobs/sha256/ab{q}"),
            format!("s3://hangar-cache/archives/job/1.json{q}"),
            format!("s3://archives/hangar/a.zip{q}"),
        ] {
            assert!(implicit.check("output", &bad).is_err(), "{bad}");
        }
        // No root and no cache: nowhere.
        assert!(
            ArchiveRoots::new(&[], None)
                .unwrap()
                .check("output", "/tmp/a.zip")
                .is_err()
        );
        assert!(ArchiveRoots::new(&["http://x/y".into()], None).is_err());
    }
}
