//! Docker references as the distribution library normalises them.

/// A Docker reference normalised as the distribution library's `ParseNormalizedNamed`:
/// Docker Hub as `docker.io` (`index.docker.io` too), its one-component names under
/// `library/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct DockerName {
    /// `host[:port]/path`.
    pub(super) name: String,
    pub(super) tag: Option<String>,
    pub(super) digest: Option<String>,
}

impl DockerName {
    pub(super) fn parse(input: &str) -> Option<Self> {
        let (named, digest) = match input.split_once('@') {
            Some((n, d)) => {
                let (algo, hex) = d.split_once(':')?;
                if algo.is_empty() || hex.is_empty() {
                    return None;
                }
                (n, Some(d.to_owned()))
            }
            None => (input, None),
        };
        let slash = named.rfind('/').map_or(0, |i| i + 1);
        let (named, tag) = match named[slash..].rfind(':') {
            Some(i) => (&named[..slash + i], Some(named[slash + i + 1..].to_owned())),
            None => (named, None),
        };
        if tag.as_deref().is_some_and(str::is_empty) {
            return None;
        }
        let parts: Vec<&str> = named.split('/').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return None;
        }
        let first = parts[0];
        let (host, path) = if parts.len() > 1
            && (first.contains(['.', ':']) || first == "localhost" || first != first.to_lowercase())
        {
            (first, parts[1..].to_vec())
        } else {
            ("docker.io", parts)
        };
        let host = if host == "index.docker.io" {
            "docker.io"
        } else {
            host
        };
        if path.iter().any(|p| *p != p.to_lowercase()) {
            return None;
        }
        let mut path = path.join("/");
        if host == "docker.io" && !path.contains('/') {
            path = format!("library/{path}");
        }
        Some(Self {
            name: format!("{host}/{path}"),
            tag,
            digest,
        })
    }

    pub(super) fn is_name_only(&self) -> bool {
        self.tag.is_none() && self.digest.is_none()
    }

    /// The docker transport's scopes for this image, most specific first (without `""`).
    pub(super) fn scopes(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(d) = &self.digest {
            out.push(format!("{}@{d}", self.name));
        }
        if let Some(t) = &self.tag {
            out.push(format!("{}:{t}", self.name));
        }
        let mut name = self.name.as_str();
        out.push(name.to_owned());
        while let Some((parent, _)) = name.rsplit_once('/') {
            out.push(parent.to_owned());
            name = parent;
        }
        let host = name.split(':').next().unwrap_or(name);
        let mut rest = host;
        while let Some((_, tail)) = rest.split_once('.') {
            out.push(format!("*.{tail}"));
            rest = tail;
        }
        out
    }
}

impl std::fmt::Display for DockerName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}
