//! Globs over `registry/repository` names, as policies write them: `*` matches within one
//! path segment, `**` matches any number of whole segments (none included), anything else
//! matches itself. No character classes or escapes: a policy is read by people deciding
//! what a caller may touch, and `reg.io/team/*` must mean exactly what it looks like.

/// A compiled glob: its segments, split on `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    text: String,
    segments: Vec<String>,
}

impl Glob {
    pub fn new(text: &str) -> Self {
        Self {
            text: text.to_owned(),
            segments: text.split('/').map(str::to_owned).collect(),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether `name` (`registry/repository`, no tag or digest) matches.
    pub fn matches(&self, name: &str) -> bool {
        let parts: Vec<&str> = name.split('/').collect();
        match_segments(&self.segments, &parts)
    }
}

impl std::fmt::Display for Glob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl serde::Serialize for Glob {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> serde::Deserialize<'de> for Glob {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Ok(Self::new(&text))
    }
}

/// Whether any of `globs` matches `name`.
pub fn any_matches(globs: &[Glob], name: &str) -> bool {
    globs.iter().any(|g| g.matches(name))
}

fn match_segments(globs: &[String], parts: &[&str]) -> bool {
    // Iterative over `**` with one backtrack point, as in shell globbing: the cost stays
    // linear in the name for the patterns a policy holds.
    let (mut g, mut p) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while p < parts.len() {
        if g < globs.len() && globs[g] == "**" {
            star = Some((g, p));
            g += 1;
        } else if g < globs.len() && match_segment(globs[g].as_bytes(), parts[p].as_bytes()) {
            g += 1;
            p += 1;
        } else if let Some((sg, sp)) = star {
            g = sg + 1;
            p = sp + 1;
            star = Some((sg, sp + 1));
        } else {
            return false;
        }
    }
    globs[g..].iter().all(|s| s == "**")
}

/// One segment: `*` matches any run of characters (no `/` exists inside a segment).
fn match_segment(glob: &[u8], text: &[u8]) -> bool {
    let (mut g, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if g < glob.len() && glob[g] == b'*' {
            star = Some((g, t));
            g += 1;
        } else if g < glob.len() && glob[g] == text[t] {
            g += 1;
            t += 1;
        } else if let Some((sg, st)) = star {
            g = sg + 1;
            t = st + 1;
            star = Some((sg, st + 1));
        } else {
            return false;
        }
    }
    glob[g..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::Glob;

    #[test]
    fn star_stays_within_a_segment() {
        let g = Glob::new("reg.io/team/*");
        assert!(g.matches("reg.io/team/app"));
        assert!(!g.matches("reg.io/team/sub/app"));
        assert!(!g.matches("reg.io/other/app"));
        assert!(!g.matches("reg.io/team"));
        assert!(Glob::new("reg.io/team/app-*").matches("reg.io/team/app-1"));
        assert!(!Glob::new("reg.io/team/app-*").matches("reg.io/team/ap"));
    }

    #[test]
    fn double_star_spans_segments() {
        let g = Glob::new("reg.io/**");
        assert!(g.matches("reg.io/a"));
        assert!(g.matches("reg.io/a/b/c"));
        assert!(!g.matches("evil.io/reg.io/a"));
        let mid = Glob::new("reg.io/**/app");
        assert!(mid.matches("reg.io/app"));
        assert!(mid.matches("reg.io/x/y/app"));
        assert!(!mid.matches("reg.io/x/y/app2"));
        assert!(Glob::new("**").matches("anything/at/all"));
    }

    #[test]
    fn a_port_or_dot_is_literal() {
        let g = Glob::new("127.0.0.1:5000/*");
        assert!(g.matches("127.0.0.1:5000/x"));
        assert!(!g.matches("127.0.0.1:50000/x"));
        assert!(!Glob::new("reg.io/a").matches("reg.io/ab"));
    }
}
