//! Image references, normalised exactly as Hangar does (it never uses a reference parser:
//! it splits on `/`), plus digest pinning, which Hangar cannot do.
//!
//! | input | registry | project | name |
//! |---|---|---|---|
//! | `nginx` | docker.io | library | nginx |
//! | `user/nginx` | docker.io | user | nginx |
//! | `reg.io/nginx` | reg.io | library | nginx |
//! | `reg.io/a/b/c/img` | reg.io | a | b/c/img |
//! | `a/b/c/img` | docker.io | a | b/c/img |
//!
//! The single-image commands (`inspect`, `list-tags`, `delete`, `merge-manifest`, `view`)
//! take containers/image references instead ([`ImageRef::parse_docker`]): `library/` only
//! on docker.io, so `reg.io/nginx` is the repository `nginx`.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{Error, Result};

pub const DEFAULT_REGISTRY: &str = "docker.io";
pub const DEFAULT_PROJECT: &str = "library";
pub const DEFAULT_TAG: &str = "latest";

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ImageRef {
    pub registry: String,
    pub project: String,
    pub name: String,
    /// `None` only for a digest-pinned reference written without a tag.
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

/// "Looks like a registry", Hangar's test for the first path segment.
pub fn is_registry_segment(segment: &str) -> bool {
    segment.contains('.') || segment.contains(':') || segment == "localhost"
}

/// Whether a name's first segment names a registry (rather than defaulting to docker.io).
pub fn has_explicit_registry(name: &str) -> bool {
    let first = name.split('/').find(|s| !s.is_empty());
    let segments = name.split('/').filter(|s| !s.is_empty()).count();
    segments > 1 && first.is_some_and(is_registry_segment)
}

impl ImageRef {
    /// Parses one image name with Hangar's rules, accepting `@sha256:…` pins.
    pub fn parse(input: &str) -> Result<Self> {
        Self::parse_with(input, split_segments)
    }

    /// Parses a reference as containers/image does (what Hangar's single-image commands
    /// use): a registry given keeps its path as it is; only a docker.io one-segment
    /// name gains `library/`. The project is empty for a one-segment repository.
    pub fn parse_docker(input: &str) -> Result<Self> {
        Self::parse_with(input, split_docker)
    }

    fn parse_with(input: &str, split: fn(&[&str]) -> (String, String, String)) -> Result<Self> {
        let input = input.trim();
        if input.is_empty() {
            return Err(Error::invalid("empty image reference"));
        }
        // What errors quote: a list line may be megabytes.
        let input_shown = shorten(input, 200);
        if input.chars().any(char::is_whitespace) {
            return Err(Error::invalid(format!(
                "image reference {input_shown:?} contains whitespace"
            )));
        }
        let (named, digest) = match input.split_once('@') {
            Some((named, digest)) => (named, Some(digest.parse::<Digest>()?)),
            None => (input, None),
        };
        let mut segments: Vec<&str> = named.split('/').filter(|s| !s.is_empty()).collect();
        let Some(last) = segments.pop() else {
            return Err(Error::invalid(format!(
                "image reference {input_shown:?} has no name"
            )));
        };
        let (last, tag) = match last.rsplit_once(':') {
            Some((name, tag)) => (name, Some(tag)),
            None => (last, None),
        };
        if let Some(tag) = tag {
            validate_tag(tag).map_err(|e| e.context(format!("image reference {input_shown:?}")))?;
        }
        if last.is_empty() {
            return Err(Error::invalid(format!(
                "image reference {input_shown:?} has an empty name"
            )));
        }
        segments.push(last);
        let (registry, project, name) = split(&segments);
        validate_registry(&registry)
            .map_err(|e| e.context(format!("image reference {input_shown:?}")))?;
        let project_parts = project.split('/').filter(|_| !project.is_empty());
        for part in project_parts.chain(name.split('/')) {
            validate_component(part)
                .map_err(|e| e.context(format!("image reference {input_shown:?}")))?;
        }
        let full = registry.len() + 1 + project.len() + 1 + name.len();
        if full > MAX_NAME_LEN {
            return Err(Error::invalid(format!(
                "image reference {:?}: the name is {full} characters long; at most {MAX_NAME_LEN} are allowed",
                shorten(input, 80)
            )));
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_owned()),
            (None, Some(_)) => None,
            (None, None) => Some(DEFAULT_TAG.to_owned()),
        };
        Ok(Self {
            registry,
            project,
            name,
            tag,
            digest,
        })
    }

    /// `project/name`, the repository path inside the registry (`name` alone when there
    /// is no project, a [`Self::parse_docker`] reference).
    pub fn repository(&self) -> String {
        match self.project.is_empty() {
            true => self.name.clone(),
            false => format!("{}/{}", self.project, self.name),
        }
    }

    /// What to ask the registry for: the digest when pinned, else the tag.
    pub fn manifest_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => DEFAULT_TAG.to_owned(),
        }
    }

    /// `registry/project/name:tag` without the digest, as Hangar prints it.
    pub fn name_and_tag(&self) -> String {
        match &self.tag {
            Some(t) => format!("{}/{}:{}", self.registry, self.repository(), t),
            None => format!("{}/{}", self.registry, self.repository()),
        }
    }

    pub fn with_registry(mut self, registry: Option<&str>) -> Self {
        if let Some(r) = registry.filter(|r| !r.is_empty()) {
            self.registry = r.trim_end_matches('/').to_owned();
        }
        self
    }

    /// Replaces the project (`-p/--project`, `--destination-project`, a job's `project`):
    /// refused unless the repository it makes is in distribution's grammar, so that no
    /// `..` segment can resolve it to another repository than the one a policy checked.
    pub fn with_project(mut self, project: Option<&str>) -> Result<Self> {
        if let Some(p) = project.filter(|p| !p.is_empty()) {
            let p = p.trim_matches('/');
            validate_repository(p).map_err(|e| e.context("project"))?;
            self.project = p.to_owned();
            validate_repository(&self.repository())?;
        }
        Ok(self)
    }

    /// A cosign signature tag (`sha256-<hex>.sig`): Hangar refuses to copy these directly.
    pub fn is_signature_tag(&self) -> bool {
        self.tag.as_deref().is_some_and(|t| {
            t.strip_prefix("sha256-")
                .and_then(|rest| rest.strip_suffix(".sig"))
                .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        })
    }
}

fn split_segments(segments: &[&str]) -> (String, String, String) {
    let first_is_registry = is_registry_segment(segments[0]);
    match segments.len() {
        1 => (
            DEFAULT_REGISTRY.into(),
            DEFAULT_PROJECT.into(),
            segments[0].into(),
        ),
        2 if first_is_registry => (
            segments[0].into(),
            DEFAULT_PROJECT.into(),
            segments[1].into(),
        ),
        2 => (
            DEFAULT_REGISTRY.into(),
            segments[0].into(),
            segments[1].into(),
        ),
        _ if first_is_registry => (
            segments[0].into(),
            segments[1].into(),
            segments[2..].join("/"),
        ),
        _ => (
            DEFAULT_REGISTRY.into(),
            segments[0].into(),
            segments[1..].join("/"),
        ),
    }
}

/// containers/image's split: the first segment is a registry when it has a `.` or `:`, is
/// `localhost` or is not lowercase, and more follow; `index.docker.io` is docker.io.
fn split_docker(segments: &[&str]) -> (String, String, String) {
    let first = segments[0];
    let (registry, path) = match segments.len() > 1
        && (first.contains(['.', ':']) || first == "localhost" || first.to_lowercase() != first)
    {
        true if first == "index.docker.io" => (DEFAULT_REGISTRY, &segments[1..]),
        true => (first, &segments[1..]),
        false => (DEFAULT_REGISTRY, segments),
    };
    match path {
        [name] if registry == DEFAULT_REGISTRY => {
            (registry.into(), DEFAULT_PROJECT.into(), (*name).into())
        }
        [name] => (registry.into(), String::new(), (*name).into()),
        [project, rest @ ..] => (registry.into(), (*project).into(), rest.join("/")),
        [] => (registry.into(), String::new(), String::new()),
    }
}

/// `text` cut to its first `n` characters (`…` marks the cut): what a message quotes of an
/// outside string.
pub fn shorten(text: &str, n: usize) -> String {
    match text.char_indices().nth(n) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// The longest `registry/repository` name distribution accepts.
pub const MAX_NAME_LEN: usize = 255;

/// A registry as a reference names it: a host name (labels of letters, digits and inner
/// hyphens), an IPv4 address or a bracketed IPv6 address, and an optional port. Nothing
/// else can reach a URL's authority (`host#frag`, `..`, `user@host`).
pub fn validate_registry(registry: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(Error::invalid(format!(
            "invalid registry {:?}: {why}",
            shorten(registry, 80)
        )))
    };
    let (host, port) = if let Some(rest) = registry.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return bad("unclosed '['");
        };
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return bad("not an IPv6 address in brackets");
        }
        match after {
            "" => (v6, None),
            p => match p.strip_prefix(':') {
                Some(port) => (v6, Some(port)),
                None => return bad("unexpected text after ']'"),
            },
        }
    } else {
        match registry.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (registry, None),
        }
    };
    if let Some(port) = port
        && !(port.len() <= 5
            && port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u32>().is_ok_and(|n| (1..=65535).contains(&n)))
    {
        return bad("the port must be a number from 1 to 65535");
    }
    if registry.starts_with('[') {
        return Ok(());
    }
    if host.is_empty() || host.len() > 253 {
        return bad("the host name must have 1 to 253 characters");
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if !host.split('.').all(label_ok) {
        return bad("a host name is letters, digits and inner hyphens, in dot-separated labels");
    }
    Ok(())
}

/// Distribution's tag grammar: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub fn validate_tag(tag: &str) -> Result<()> {
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && tag
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "invalid tag {:?}",
            shorten(tag, 80)
        )))
    }
}

/// A repository inside a registry: path components in distribution's grammar joined by
/// `/`, at most [`MAX_NAME_LEN`] characters. What the registry client puts in a URL: a `.`
/// or `..` segment would be resolved away, reaching another repository than the one named.
pub fn validate_repository(repo: &str) -> Result<()> {
    if repo.len() > MAX_NAME_LEN {
        return Err(Error::invalid(format!(
            "repository {:?} is {} characters long; at most {MAX_NAME_LEN} are allowed",
            shorten(repo, 80),
            repo.len()
        )));
    }
    for part in repo.split('/') {
        validate_component(part)
            .map_err(|e| e.context(format!("repository {:?}", shorten(repo, 80))))?;
    }
    Ok(())
}

/// Distribution's path-component grammar: runs of lowercase alphanumerics joined by one
/// separator each, `.`, `_`, `__` or any number of `-` (so `img..0` is not a name).
fn validate_component(part: &str) -> Result<()> {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let separators_ok = part
        .split(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        .filter(|sep| !sep.is_empty())
        .all(|sep| sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-'));
    let ok = !part.is_empty()
        && part
            .bytes()
            .all(|b| alnum(b) || matches!(b, b'.' | b'_' | b'-'))
        && separators_ok
        && part.bytes().next().is_some_and(alnum)
        && part.bytes().last().is_some_and(alnum);
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "invalid repository name component {:?}",
            shorten(part, 80)
        )))
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name_and_tag())?;
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_are_refused() {
        for bad in [
            "img..0",
            "a/img._x",
            "a/x-.y",
            "host#frag/x/y",
            "reg.io:0/x/y",
            "reg.io:99999/x/y",
            "reg.io:80a/x/y",
            "-reg.io/x/y",
            "reg..io/x/y",
            "user@reg.io/x/y",
            "[::1/x/y",
            "[nonsense]/x/y",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad} accepted");
        }
        let long = format!("reg.io/p/{}", "a".repeat(250));
        let e = ImageRef::parse(&long).unwrap_err();
        assert!(e.message.contains("at most 255"), "{}", e.message);
        for good in [
            "reg.io:5000/a__b/c-d",
            "a/b---c",
            "[::1]:5000/x/y",
            "127.0.0.1:5000/x/y",
            "localhost/x",
            "a.b-c.io/x/y.z_1",
        ] {
            assert!(ImageRef::parse(good).is_ok(), "{good} refused");
        }
    }

    fn parts(s: &str) -> (String, String, String, String) {
        let r = ImageRef::parse(s).unwrap();
        (r.registry, r.project, r.name, r.tag.unwrap_or_default())
    }

    fn t(a: &str, b: &str, c: &str, d: &str) -> (String, String, String, String) {
        (a.into(), b.into(), c.into(), d.into())
    }

    #[test]
    fn single_image_references_normalise_like_containers_image() {
        let docker = |s: &str| {
            let r = ImageRef::parse_docker(s).unwrap();
            (r.registry.clone(), r.repository(), r.to_string())
        };
        let want = |a: &str, b: &str, c: &str| (a.to_owned(), b.to_owned(), c.to_owned());
        assert_eq!(
            docker("127.0.0.1:5999/pause:3.9"),
            want("127.0.0.1:5999", "pause", "127.0.0.1:5999/pause:3.9")
        );
        assert_eq!(
            docker("registry.k8s.io/pause"),
            want("registry.k8s.io", "pause", "registry.k8s.io/pause:latest")
        );
        assert_eq!(
            docker("localhost/a/b/c"),
            want("localhost", "a/b/c", "localhost/a/b/c:latest")
        );
        assert_eq!(
            docker("nginx"),
            want(
                "docker.io",
                "library/nginx",
                "docker.io/library/nginx:latest"
            )
        );
        assert_eq!(
            docker("docker.io/nginx"),
            want(
                "docker.io",
                "library/nginx",
                "docker.io/library/nginx:latest"
            )
        );
        assert_eq!(
            docker("index.docker.io/user/x:1"),
            want("docker.io", "user/x", "docker.io/user/x:1")
        );
        assert_eq!(
            docker("user/x"),
            want("docker.io", "user/x", "docker.io/user/x:latest")
        );
        // Hangar's list rule is unchanged.
        assert_eq!(parts("reg.io/nginx").1, "library");
        for bad in ["reg.io/../x", "reg.io/UP", "", "reg.io/a/../b"] {
            assert!(ImageRef::parse_docker(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn normalises_like_hangar() {
        assert_eq!(parts("nginx"), t("docker.io", "library", "nginx", "latest"));
        assert_eq!(
            parts("nginx:1.22"),
            t("docker.io", "library", "nginx", "1.22")
        );
        assert_eq!(
            parts("user/nginx"),
            t("docker.io", "user", "nginx", "latest")
        );
        assert_eq!(
            parts("reg.io/nginx"),
            t("reg.io", "library", "nginx", "latest")
        );
        assert_eq!(
            parts("reg.io/user/nginx:1"),
            t("reg.io", "user", "nginx", "1")
        );
        assert_eq!(
            parts("127.0.0.1:5000/library/name"),
            t("127.0.0.1:5000", "library", "name", "latest")
        );
        assert_eq!(
            parts("reg.io/a/b/c/img:t"),
            t("reg.io", "a", "b/c/img", "t")
        );
        assert_eq!(parts("a/b/c/img:t"), t("docker.io", "a", "b/c/img", "t"));
        assert_eq!(
            parts("localhost/nginx"),
            t("localhost", "library", "nginx", "latest")
        );
        assert_eq!(
            parts("localhost:5000/nginx"),
            t("localhost:5000", "library", "nginx", "latest")
        );
        assert_eq!(
            parts("//reg.io//user/nginx"),
            t("reg.io", "user", "nginx", "latest")
        );
    }

    #[test]
    fn parses_digest_pins() {
        let hex = "a".repeat(64);
        let r = ImageRef::parse(&format!("reg.io/app@sha256:{hex}")).unwrap();
        assert_eq!(r.tag, None);
        assert_eq!(r.manifest_reference(), format!("sha256:{hex}"));
        assert_eq!(r.to_string(), format!("reg.io/library/app@sha256:{hex}"));
        let r = ImageRef::parse(&format!("app:v1@sha256:{hex}")).unwrap();
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert_eq!(r.manifest_reference(), format!("sha256:{hex}"));
        assert!(ImageRef::parse("app@sha256:abc").is_err());
    }

    #[test]
    fn rejects_bad_names() {
        assert!(ImageRef::parse("").is_err());
        assert!(ImageRef::parse("Nginx").is_err());
        assert!(ImageRef::parse("nginx:").is_err());
        assert!(ImageRef::parse("nginx:ba$d").is_err());
        assert!(ImageRef::parse("a b").is_err());
    }

    #[test]
    fn overrides_replace_wholesale() {
        let r = ImageRef::parse("reg.io/user/nginx:1")
            .unwrap()
            .with_registry(Some("dst:5000"))
            .with_project(Some("mirror"))
            .unwrap();
        assert_eq!(r.to_string(), "dst:5000/mirror/nginx:1");
    }

    /// A project is a repository path: a `..` or `.` segment (which a URL resolves away,
    /// reaching another repository than a policy checked), an empty segment or a name
    /// past the length distribution takes is refused, naming the project.
    #[test]
    fn projects_are_repository_paths() {
        let r = || ImageRef::parse("reg.io/user/nginx:1").unwrap();
        let ok = r().with_project(Some("/team/sub/")).unwrap();
        assert_eq!(ok.repository(), "team/sub/nginx");
        for bad in [
            "mirror/../prod",
            "..",
            "a/./b",
            "a//b",
            "UP",
            "a b",
            "%2e%2e",
        ] {
            let e = r().with_project(Some(bad)).unwrap_err();
            assert!(e.message.starts_with("project: "), "{bad}: {}", e.message);
        }
        let long = "a".repeat(250);
        let e = r().with_project(Some(&long)).unwrap_err();
        assert!(e.message.contains("at most 255"), "{}", e.message);
        assert!(validate_repository("prod/../dev/app").is_err());
        assert!(validate_repository("library/nginx").is_ok());
    }

    #[test]
    fn spots_signature_tags() {
        let sig = format!("nginx:sha256-{}.sig", "b".repeat(64));
        assert!(ImageRef::parse(&sig).unwrap().is_signature_tag());
        assert!(!ImageRef::parse("nginx:1.sig").unwrap().is_signature_tag());
    }
}
