//! Hangar's two image-list formats.
//!
//! - default: one image per line (`nginx:1.22`, `reg.io/user/app`, and, beyond Hangar,
//!   `app@sha256:…` or `app:tag@sha256:…`);
//! - mirror: `SOURCE DEST TAG`, three fields separated by runs of spaces (tabs are not
//!   separators, as in Hangar).
//!
//! Blank lines and whole-line comments (`#`, `//`) are dropped; lines that fit neither format
//! are skipped with a warning naming the line, never silently.

use std::path::Path;

use crate::error::{Error, Result};
use crate::reference::{ImageRef, has_explicit_registry};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineKind {
    Default(ImageRef),
    /// `dest` carries the destination project and name; `dest_registry_explicit` says
    /// whether DEST named a registry (used when `-d` is not given).
    Mirror {
        source: ImageRef,
        dest: ImageRef,
        dest_registry_explicit: bool,
    },
    /// The line has a list format's shape but not a valid image in it. It keeps its place
    /// (and `[IMG:N]` number) and is reported failed, as Hangar's copy of it would be.
    Invalid(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListEntry {
    /// 1-based index among kept lines, Hangar's `[IMG:N]`.
    pub index: usize,
    /// 1-based line number in the file.
    pub line_no: usize,
    /// The line as written (trimmed), which is what the failed list gets back.
    pub original: String,
    pub kind: LineKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListWarning {
    pub line_no: usize,
    pub line: String,
    pub message: String,
}

#[derive(Debug, Clone, Default)]
pub struct ImageList {
    pub entries: Vec<ListEntry>,
    pub warnings: Vec<ListWarning>,
}

impl ImageList {
    pub fn read(path: &Path) -> Result<Self> {
        let text = crate::local_file::read_text(path, crate::local_file::LIST).map_err(|e| {
            Error::invalid(format!("cannot read image list {}: {e}", path.display()))
        })?;
        Ok(Self::parse(&text))
    }

    pub fn parse(text: &str) -> Self {
        // Editors on Windows start files with a byte-order mark; it is not part of a name.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut list = Self::default();
        for (i, raw) in text.lines().enumerate() {
            let line_no = i + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with("//") {
                continue;
            }
            let fields = line.split(' ').filter(|f| !f.is_empty()).count();
            let kind = match parse_line(line) {
                Ok(kind) => kind,
                Err(e) if fields == 1 || fields == 3 => LineKind::Invalid(e.message),
                Err(e) => {
                    list.warnings.push(ListWarning {
                        line_no,
                        line: line.to_owned(),
                        message: e.message,
                    });
                    continue;
                }
            };
            list.entries.push(ListEntry {
                index: list.entries.len() + 1,
                line_no,
                original: line.to_owned(),
                kind,
            });
        }
        list
    }
}

fn parse_line(line: &str) -> Result<LineKind> {
    let fields: Vec<&str> = line.split(' ').filter(|f| !f.is_empty()).collect();
    match fields.as_slice() {
        [image] => Ok(LineKind::Default(ImageRef::parse(image)?)),
        [source, dest, tag] => {
            // Hangar ignores a tag in SOURCE: TAG is the one copied.
            let source = ImageRef::parse(source)?;
            if source.digest.is_some() {
                return Err(Error::invalid(
                    "the SOURCE column of a mirror line must not carry a digest",
                ));
            }
            let dest_ref = ImageRef::parse(dest)?;
            if dest.contains('@') || dest.rsplit('/').next().is_some_and(|n| n.contains(':')) {
                return Err(Error::invalid(
                    "invalid format: the DEST column of a mirror line must not carry a tag",
                ));
            }
            crate::reference::validate_tag(tag)?;
            let with_tag = |mut r: ImageRef| {
                r.tag = Some((*tag).to_owned());
                r
            };
            Ok(LineKind::Mirror {
                source: with_tag(source),
                dest: with_tag(dest_ref),
                dest_registry_explicit: has_explicit_registry(dest),
            })
        }
        _ => Err(Error::invalid("invalid format")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_byte_order_mark_is_not_part_of_the_first_name() {
        let list = ImageList::parse("\u{feff}reg.io/app/web:1\nnginx:1\n");
        assert_eq!(list.entries.len(), 2);
        match &list.entries[0].kind {
            LineKind::Default(r) => assert_eq!(r.registry, "reg.io"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parses_both_formats_comments_and_warnings() {
        let text = "# comment\n\n// also comment\nnginx:1.22\n  reg.io/user/app  \n\
                    src.io/lib/app   dst.io/mirror/app v1\nTEST INVALID IMAGE LIST LINE\n\
                    a\tb c\nbad@sha256:123\n";
        let list = ImageList::parse(text);
        assert_eq!(list.entries.len(), 4);
        assert_eq!(list.entries[0].index, 1);
        assert_eq!(list.entries[0].line_no, 4);
        assert_eq!(list.entries[1].original, "reg.io/user/app");
        let LineKind::Mirror {
            source,
            dest,
            dest_registry_explicit,
        } = &list.entries[2].kind
        else {
            panic!("expected a mirror line");
        };
        assert_eq!(source.to_string(), "src.io/lib/app:v1");
        assert_eq!(dest.to_string(), "dst.io/mirror/app:v1");
        assert!(dest_registry_explicit);
        let warned: Vec<usize> = list.warnings.iter().map(|w| w.line_no).collect();
        assert_eq!(warned, vec![7, 8]);
        // A one-field line with a bad digest is an entry that will fail, not a skipped line.
        let LineKind::Invalid(why) = &list.entries[3].kind else {
            panic!("expected an invalid entry");
        };
        assert_eq!((list.entries[3].index, list.entries[3].line_no), (4, 9));
        assert!(why.contains("digest"), "{why}");
    }

    #[test]
    fn mirror_line_without_registry_in_dest() {
        let list = ImageList::parse("nginx mirror/nginx 1.0");
        let LineKind::Mirror {
            dest,
            dest_registry_explicit,
            ..
        } = &list.entries[0].kind
        else {
            panic!("expected a mirror line");
        };
        assert!(!dest_registry_explicit);
        assert_eq!(dest.repository(), "mirror/nginx");
    }

    #[test]
    fn mirror_line_rejects_tagged_dest() {
        let list = ImageList::parse("nginx mirror/nginx:2 1.0\nsrc.io/app:ignored dst/app 2.0");
        assert!(matches!(&list.entries[0].kind, LineKind::Invalid(why) if why.contains("tag")));
        let LineKind::Mirror { source, .. } = &list.entries[1].kind else {
            panic!("a SOURCE tag is ignored, as in Hangar");
        };
        assert_eq!(source.tag.as_deref(), Some("2.0"));
        assert!(list.warnings.is_empty());
    }

    #[test]
    fn digest_pinned_lines_are_entries() {
        let hex = "c".repeat(64);
        let list = ImageList::parse(&format!("app@sha256:{hex}\napp:v2@sha256:{hex}\n"));
        assert_eq!(list.entries.len(), 2);
        assert!(
            list.entries
                .iter()
                .all(|e| !matches!(e.kind, LineKind::Invalid(_)))
        );
        assert!(list.warnings.is_empty());
    }
}
