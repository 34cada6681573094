//! Chart version constraints as Helm and Rancher write them (Masterminds' semver): `>=
//! 2.9.0-0 < 2.10.0-0`, `2.9.0 - 2.9.99`, `~2.9`, `^1.2`, `2.9.x`, OR'd with `||`. The
//! `semver` crate's requirements are Cargo's, a different language, hence this.

use semver::Version;

use super::version;

/// Whether `rancher` satisfies `constraint`. Rancher checks its own version without its
/// prerelease and build, and reads a patch of 99 as 98 (its "any patch" idiom).
pub fn satisfied(constraint: &str, rancher: &Version) -> Result<bool, String> {
    let mut v = Version::new(rancher.major, rancher.minor, rancher.patch);
    if v.patch == 99 {
        v.patch = 98;
    }
    let mut any = false;
    for alternative in constraint.split("||") {
        let terms = terms(alternative)?;
        if terms.is_empty() {
            return Err(format!("improper constraint: {constraint}"));
        }
        if terms.iter().all(|t| t.admits(&v)) {
            any = true;
        }
    }
    Ok(any)
}

/// `[lower, upper)` bounds of one term; `None` is open.
struct Term {
    lower: Option<(Version, bool)>,
    upper: Option<(Version, bool)>,
    negated: bool,
}

impl Term {
    fn admits(&self, v: &Version) -> bool {
        let above = self.lower.as_ref().is_none_or(|(l, inclusive)| {
            let o = version::cmp(v, l);
            o.is_gt() || (*inclusive && o.is_eq())
        });
        let below = self.upper.as_ref().is_none_or(|(u, inclusive)| {
            let o = version::cmp(v, u);
            o.is_lt() || (*inclusive && o.is_eq())
        });
        (above && below) != self.negated
    }
}

/// A version as written in a constraint: its known parts, wildcards cut it short.
struct Partial {
    parts: Vec<u64>,
    pre: semver::Prerelease,
}

impl Partial {
    fn parse(text: &str) -> Result<Option<Self>, String> {
        let t = text.trim().trim_start_matches(['v', 'V']);
        if matches!(t, "*" | "x" | "X" | "") {
            return Ok(None);
        }
        let t = t.split_once('+').map_or(t, |(a, _)| a);
        let (core, pre) = t.split_once('-').unwrap_or((t, ""));
        let mut parts = Vec::new();
        for p in core.split('.') {
            if matches!(p, "*" | "x" | "X") {
                break;
            }
            parts.push(
                p.parse::<u64>()
                    .map_err(|_| format!("invalid version in constraint: {text}"))?,
            );
        }
        if parts.is_empty() || parts.len() > 3 {
            return Err(format!("invalid version in constraint: {text}"));
        }
        let pre = semver::Prerelease::new(pre).map_err(|e| format!("{text}: {e}"))?;
        Ok(Some(Self { parts, pre }))
    }

    fn lowest(&self) -> Version {
        let mut v = Version::new(
            self.parts[0],
            *self.parts.get(1).unwrap_or(&0),
            *self.parts.get(2).unwrap_or(&0),
        );
        v.pre = self.pre.clone();
        v
    }

    /// The first version past every one this names (`2.9` → `2.10.0`). Saturating: the
    /// numbers are a chart's own (`>= 18446744073709551615` must not overflow).
    fn past(&self) -> Version {
        match self.parts.len() {
            1 => Version::new(self.parts[0].saturating_add(1), 0, 0),
            2 => Version::new(self.parts[0], self.parts[1].saturating_add(1), 0),
            _ => Version::new(
                self.parts[0],
                self.parts[1],
                self.parts[2].saturating_add(1),
            ),
        }
    }

    fn exact(&self) -> bool {
        self.parts.len() == 3
    }
}

fn terms(text: &str) -> Result<Vec<Term>, String> {
    let spaced = text.replace(',', " ");
    let mut tokens: Vec<String> = Vec::new();
    for raw in spaced.split_whitespace() {
        // An operator alone (`>= 2.9.0`) joins the version after it.
        if let Some(last) = tokens.last_mut()
            && !last.is_empty()
            && last.chars().all(|c| "<>=!~^".contains(c))
        {
            last.push_str(raw);
            continue;
        }
        tokens.push(raw.to_owned());
    }
    let mut out = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        if tokens.get(i + 1).map(String::as_str) == Some("-") {
            let (Some(low), Some(high)) = (Partial::parse(&tokens[i])?, tokens.get(i + 2)) else {
                return Err(format!("improper range: {text}"));
            };
            let high = Partial::parse(high)?;
            out.push(Term {
                lower: Some((low.lowest(), true)),
                upper: high.map(|h| match h.exact() {
                    true => (h.lowest(), true),
                    false => (h.past(), false),
                }),
                negated: false,
            });
            i += 3;
            continue;
        }
        out.push(term(&tokens[i])?);
        i += 1;
    }
    Ok(out)
}

fn term(token: &str) -> Result<Term, String> {
    let op_len = token
        .find(|c: char| !"<>=!~^".contains(c))
        .unwrap_or(token.len());
    let (op, rest) = token.split_at(op_len);
    let Some(p) = Partial::parse(rest)? else {
        // `*`, `>= *`: anything.
        return Ok(Term {
            lower: None,
            upper: None,
            negated: op == "!=",
        });
    };
    let (low, past) = (p.lowest(), p.past());
    let range = |lower, upper| Term {
        lower,
        upper,
        negated: false,
    };
    Ok(match op {
        "" | "=" | "!=" => Term {
            negated: op == "!=",
            ..match p.exact() {
                true => range(Some((low.clone(), true)), Some((low, true))),
                false => range(Some((low, true)), Some((past, false))),
            }
        },
        ">" => match p.exact() {
            true => range(Some((low, false)), None),
            false => range(Some((past, true)), None),
        },
        ">=" | "=>" => range(Some((low, true)), None),
        "<" => range(None, Some((low, false))),
        "<=" | "=<" => match p.exact() {
            true => range(None, Some((low, true))),
            false => range(None, Some((past, false))),
        },
        "~" | "~>" => {
            let upper = match p.parts.len() {
                1 => Version::new(p.parts[0].saturating_add(1), 0, 0),
                _ => Version::new(p.parts[0], p.parts[1].saturating_add(1), 0),
            };
            range(Some((low, true)), Some((upper, false)))
        }
        "^" => {
            let upper = match (p.parts[0], p.parts.get(1), p.parts.get(2)) {
                (0, Some(0), Some(z)) => Version::new(0, 0, z.saturating_add(1)),
                (0, Some(y), _) => Version::new(0, y.saturating_add(1), 0),
                (x, _, _) => Version::new(x.saturating_add(1), 0, 0),
            };
            range(Some((low, true)), Some((upper, false)))
        }
        other => return Err(format!("unknown operator {other:?} in {token:?}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(c: &str, v: &str) -> bool {
        satisfied(c, &version::parse(v).expect("version")).expect(c)
    }

    #[test]
    fn rancher_annotations_and_questions_ranges() {
        assert!(ok(">= 2.9.0-0 < 2.10.0-0", "v2.9.1"));
        assert!(ok(">=2.9.0-0 <2.10.0-0", "v2.9.0-rc1"));
        assert!(!ok(">= 2.9.0-0 < 2.10.0-0", "v2.10.0"));
        assert!(ok("2.9.0 - 2.9.99", "v2.9.1"));
        assert!(ok("2.9.0 - 2.9.99", "v2.9.99"));
        assert!(!ok("2.9.0 - 2.9.99", "v2.10.0"));
        assert!(ok("<= 2.9", "v2.9.5"));
        assert!(ok("~2.9", "v2.9.5") && !ok("~2.9", "v2.10.0"));
        assert!(ok("^2.7", "v2.9.0") && !ok("^2.7", "v3.0.0"));
        assert!(ok("2.9.x", "v2.9.7") && !ok("2.9.x", "v2.8.7"));
        assert!(ok("< 2.8 || >= 2.9", "v2.9.0") && !ok("< 2.8 || >= 2.9", "v2.8.3"));
        assert!(ok("*", "v2.12.0"));
        assert!(satisfied(">= two", &version::parse("2.9.0").unwrap()).is_err());
    }

    /// A chart's numbers at the top of their range neither panic nor wrap to zero.
    #[test]
    fn the_largest_numbers_do_not_overflow() {
        let max = u64::MAX;
        for c in [
            format!(">= {max}"),
            format!("<= {max}"),
            format!("~{max}"),
            format!("^{max}"),
            format!("^0.{max}"),
            format!("^0.0.{max}"),
            format!("{max}.{max}.x"),
        ] {
            let _ = satisfied(&c, &version::parse("2.9.0").unwrap());
        }
        assert!(!ok(&format!(">= {max}"), "v2.9.0"));
        assert!(!ok(&format!("^{max}"), "v2.9.0"));
    }
}
