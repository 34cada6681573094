//! apk-tools' version order, token by token.

use std::cmp::Ordering;

/// apk-tools' token kinds, in the order that decides between versions of different shapes
/// (`digit{.digit}...{letter}{_suf{#}}...{~hash}{-r#}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum ApkKind {
    InitialDigit,
    Digit,
    Letter,
    Suffix,
    SuffixNo,
    CommitHash,
    Revision,
    End,
}

#[derive(Debug)]
pub(super) struct ApkToken<'a> {
    kind: ApkKind,
    text: &'a str,
    /// A suffix's rank: `alpha` < `beta` < `pre` < `rc` < (none, 4) < `cvs` < `svn` <
    /// `git` < `hg` < `p`.
    rank: u8,
}

const APK_NO_SUFFIX: u8 = 4;

fn apk_suffix(name: &str) -> Option<u8> {
    Some(match name {
        "alpha" => 0,
        "beta" => 1,
        "pre" => 2,
        "rc" => 3,
        "cvs" => 5,
        "svn" => 6,
        "git" => 7,
        "hg" => 8,
        "p" => 9,
        _ => return None,
    })
}

/// The tokens of an apk version; `None` when apk-tools would not take it as valid.
pub(super) fn apk_tokens(v: &str) -> Option<Vec<ApkToken<'_>>> {
    use ApkKind::*;
    let b = v.as_bytes();
    let run = |from: usize, f: fn(u8) -> bool| {
        b[from..]
            .iter()
            .position(|c| !f(*c))
            .unwrap_or(b.len() - from)
    };
    let n = run(0, |c| c.is_ascii_digit());
    if n == 0 {
        return None;
    }
    let mut out = vec![ApkToken {
        kind: InitialDigit,
        text: &v[..n],
        rank: 0,
    }];
    let mut i = n;
    let mut last = InitialDigit;
    while i < b.len() {
        let (kind, from, len, rank) = match b[i] {
            b'a'..=b'z' => {
                if last > Digit {
                    return None;
                }
                (Letter, i, 1, 0)
            }
            c @ (b'.' | b'0'..=b'9') => {
                let kind = match last {
                    InitialDigit | Digit => Digit,
                    Suffix if c != b'.' => SuffixNo,
                    _ => return None,
                };
                let from = if c == b'.' { i + 1 } else { i };
                let len = run(from, |c| c.is_ascii_digit());
                if len == 0 {
                    return None;
                }
                (kind, from, len, 0)
            }
            b'_' => {
                if last > SuffixNo {
                    return None;
                }
                let len = run(i + 1, |c| c.is_ascii_lowercase());
                let rank = apk_suffix(&v[i + 1..i + 1 + len])?;
                (Suffix, i + 1, len, rank)
            }
            b'~' => {
                if last >= CommitHash {
                    return None;
                }
                let len = run(i + 1, |c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
                if len == 0 {
                    return None;
                }
                (CommitHash, i + 1, len, 0)
            }
            b'-' => {
                if last >= Revision || b.get(i + 1) != Some(&b'r') {
                    return None;
                }
                let len = run(i + 2, |c| c.is_ascii_digit());
                if len == 0 {
                    return None;
                }
                (Revision, i + 2, len, 0)
            }
            _ => return None,
        };
        out.push(ApkToken {
            kind,
            text: &v[from..from + len],
            rank,
        });
        last = kind;
        i = from + len;
    }
    Some(out)
}

/// Digits as a number, however long.
fn numeric(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.trim_start_matches('0'), b.trim_start_matches('0'));
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// apk-tools' comparison: token by token while the kinds agree; a component after a dot
/// with a leading zero (on either side) compares as a string. When one version goes on
/// where the other stops or changes kind, a pre-release suffix makes it the smaller one,
/// else the kind further along the shape (`-r` after `.digit`, the end after all) is smaller.
pub(super) fn apk_cmp(a: &[ApkToken], b: &[ApkToken]) -> Ordering {
    use ApkKind::*;
    for i in 0.. {
        let (x, y) = (a.get(i), b.get(i));
        let (kx, ky) = (x.map_or(End, |t| t.kind), y.map_or(End, |t| t.kind));
        if kx != ky {
            if x.is_some_and(|t| t.kind == Suffix && t.rank < APK_NO_SUFFIX) {
                return Ordering::Less;
            }
            if y.is_some_and(|t| t.kind == Suffix && t.rank < APK_NO_SUFFIX) {
                return Ordering::Greater;
            }
            return ky.cmp(&kx);
        }
        let (Some(x), Some(y)) = (x, y) else {
            return Ordering::Equal;
        };
        let o = match kx {
            Digit if x.text.starts_with('0') || y.text.starts_with('0') => x.text.cmp(y.text),
            InitialDigit | Digit | SuffixNo | Revision => numeric(x.text, y.text),
            Suffix => x.rank.cmp(&y.rank),
            Letter | CommitHash | End => x.text.cmp(y.text),
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    Ordering::Equal
}
