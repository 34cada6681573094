//! Applies an image's layers in order and keeps only the files the scanner reads (package
//! databases, os-release, Python metadata), honouring whiteouts (`.wh.NAME` removes NAME,
//! `.wh..wh..opq` hides what lower layers put in its directory). A damaged layer is a
//! warning naming it; the layers after it still count.
//!
//! What is kept is bounded by [`Limits`]: a file over its cap is a warning naming the layer
//! and path and is skipped unread (its header gives its size; the read is capped as well),
//! and so is a file that would take the image past its total or its file count.

use std::collections::BTreeMap;
use std::io::Read;
use std::ops::Bound;
use std::sync::Arc;

use super::{Cancel, Limits, Warnings, size};

/// The wanted files of the merged filesystem, by path (no leading `/`).
#[derive(Debug, Clone)]
pub struct Files {
    pub files: BTreeMap<String, Vec<u8>>,
    /// The layer each kept file came from, for warnings.
    pub origin: BTreeMap<String, Arc<str>>,
    pub warnings: Warnings,
    pub limits: Limits,
    /// Set when the scan is abandoned: the layer walk and the parsers stop.
    pub cancel: Cancel,
    /// Bytes held in `files` (and in the layer being applied).
    held: u64,
}

impl Default for Files {
    fn default() -> Self {
        Files::new(Limits::default(), Cancel::default())
    }
}

/// rpm's Berkeley DB: never parsed (only reported as unsupported), so never read.
const BERKELEY_RPMDB: &str = "var/lib/rpm/Packages";

pub fn wanted(path: &str) -> bool {
    matches!(
        path,
        "etc/os-release"
            | "usr/lib/os-release"
            | "etc/alpine-release"
            | "etc/debian_version"
            | "var/lib/dpkg/status"
            | "lib/apk/db/installed"
            | "var/lib/rpm/rpmdb.sqlite"
            | "usr/lib/sysimage/rpm/rpmdb.sqlite"
            | BERKELEY_RPMDB
    ) || (path.starts_with("var/lib/dpkg/status.d/") && path.len() > "var/lib/dpkg/status.d/".len())
        || super::python::is_metadata(path)
}

/// The most of `path` that is read: an rpm sqlite database may be larger than the text
/// databases.
pub fn cap_for(limits: &Limits, path: &str) -> u64 {
    if path.ends_with("rpmdb.sqlite") {
        limits.rpmdb
    } else {
        limits.file
    }
}

fn clean(path: &str) -> String {
    path.trim_start_matches("./")
        .trim_start_matches('/')
        .trim_end_matches('/')
        .to_owned()
}

impl Files {
    pub fn new(limits: Limits, cancel: Cancel) -> Self {
        Files {
            files: BTreeMap::new(),
            origin: BTreeMap::new(),
            warnings: Warnings::new(limits.warnings),
            limits,
            cancel,
            held: 0,
        }
    }

    /// Applies one layer (a tar, gzip-compressed or not); `name` identifies it in warnings.
    pub fn apply<R: Read>(&mut self, name: &str, reader: R) {
        let mut buffered = std::io::BufReader::new(reader);
        let gz = match std::io::BufRead::fill_buf(&mut buffered) {
            Ok(head) => head.starts_with(&[0x1f, 0x8b]),
            Err(e) => {
                self.warnings
                    .push(format!("layer {name}: cannot be read: {e}"));
                return;
            }
        };
        let result = if gz {
            self.apply_tar(
                name,
                tar::Archive::new(super::tar_guard::TarGuard::new(
                    flate2::read::GzDecoder::new(buffered),
                )),
            )
        } else {
            self.apply_tar(
                name,
                tar::Archive::new(super::tar_guard::TarGuard::new(buffered)),
            )
        };
        if let Err(e) = result {
            self.warnings
                .push(format!("layer {name}: damaged, read only in part: {e}"));
        }
    }

    fn apply_tar<R: Read>(
        &mut self,
        name: &str,
        mut archive: tar::Archive<R>,
    ) -> std::io::Result<()> {
        let layer: Arc<str> = Arc::from(name);
        // This layer's files; whiteouts hide lower layers only, so they act on `files` at
        // once and these join it at the end.
        let mut added: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        for entry in archive.entries()? {
            if self.cancel.is_cancelled() {
                return Err(std::io::Error::other("scan abandoned (timed out)"));
            }
            let mut entry = entry?;
            let path = clean(&entry.path()?.to_string_lossy());
            let (dir, base) = match path.rsplit_once('/') {
                Some((d, b)) => (d, b),
                None => ("", path.as_str()),
            };
            if base == ".wh..wh..opq" {
                let dir = dir.to_owned();
                self.remove_under(&dir);
                continue;
            }
            if let Some(hidden) = base.strip_prefix(".wh.") {
                if !hidden.is_empty() {
                    let gone = if dir.is_empty() {
                        hidden.to_owned()
                    } else {
                        format!("{dir}/{hidden}")
                    };
                    self.remove_tree(&gone);
                }
                continue;
            }
            if !entry.header().entry_type().is_file() || !wanted(&path) {
                continue;
            }
            if path == BERKELEY_RPMDB {
                self.hold(&mut added, path, Vec::new());
                continue;
            }
            let cap = cap_for(&self.limits, &path);
            let declared = entry.size();
            if declared > cap {
                self.skip(
                    &mut added,
                    &path,
                    format!(
                        "layer {name}: {path}: {declared} bytes, over the {} limit for this file; skipped",
                        size(cap)
                    ),
                );
                continue;
            }
            if self.held.saturating_add(declared) > self.limits.total {
                self.skip(
                    &mut added,
                    &path,
                    format!(
                        "layer {name}: {path}: {declared} bytes would take the files read from this image past {}; skipped",
                        size(self.limits.total)
                    ),
                );
                continue;
            }
            let new = !added.contains_key(&path) && !self.files.contains_key(&path);
            if new && self.files.len() + added.len() >= self.limits.files {
                self.warnings.push(format!(
                    "layer {name}: {path}: this image already has {} package files; skipped",
                    self.limits.files
                ));
                continue;
            }
            // `declared` is at most `cap`, so the allocation is bounded; the read is capped
            // too, in case the entry yields more than its header said.
            let mut body = Vec::with_capacity(usize::try_from(declared).unwrap_or(0));
            (&mut entry).take(cap + 1).read_to_end(&mut body)?;
            if body.len() as u64 > cap {
                self.skip(
                    &mut added,
                    &path,
                    format!(
                        "layer {name}: {path}: more than the {} limit for this file; skipped",
                        size(cap)
                    ),
                );
                continue;
            }
            if super::python::is_metadata(&path) {
                // Only the header (up to the first blank line) is parsed; the description
                // after it can be most of the file.
                if let Some(end) = body.windows(2).position(|w| w == b"\n\n") {
                    body.truncate(end);
                    body.shrink_to_fit();
                }
            }
            self.hold(&mut added, path, body);
        }
        for (path, body) in added {
            if let Some(old) = self.files.insert(path.clone(), body) {
                self.held = self.held.saturating_sub(old.len() as u64);
            }
            self.origin.insert(path, layer.clone());
        }
        Ok(())
    }

    /// Keeps `body` as this layer's `path`.
    fn hold(&mut self, added: &mut BTreeMap<String, Vec<u8>>, path: String, body: Vec<u8>) {
        self.held += body.len() as u64;
        if let Some(old) = added.insert(path, body) {
            self.held = self.held.saturating_sub(old.len() as u64);
        }
    }

    /// A file this layer has but that is not read: warned about, and any copy from a lower
    /// layer (or earlier in this one) forgotten, since it was replaced by what was skipped.
    fn skip(&mut self, added: &mut BTreeMap<String, Vec<u8>>, path: &str, warning: String) {
        self.warnings.push(warning);
        if let Some(old) = added.remove(path) {
            self.held = self.held.saturating_sub(old.len() as u64);
        }
        self.remove(path);
    }

    fn remove(&mut self, path: &str) {
        if let Some(old) = self.files.remove(path) {
            self.held = self.held.saturating_sub(old.len() as u64);
        }
        self.origin.remove(path);
    }

    /// A whiteout: `path` and everything under it, from lower layers.
    fn remove_tree(&mut self, path: &str) {
        self.remove(path);
        self.remove_under(path);
    }

    /// An opaque directory: everything lower layers put under `dir` (`""`: the root).
    fn remove_under(&mut self, dir: &str) {
        // A range lookup, not a scan of every kept file: a layer may hold millions of
        // whiteouts.
        let doomed: Vec<String> = if dir.is_empty() {
            self.files.keys().cloned().collect()
        } else {
            let prefix = format!("{dir}/");
            self.files
                .range::<str, _>((Bound::Included(prefix.as_str()), Bound::Unbounded))
                .take_while(|(k, _)| k.starts_with(&prefix))
                .map(|(k, _)| k.clone())
                .collect()
        };
        for p in doomed {
            self.remove(&p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(files: &[(&str, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (p, body) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(body.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, p, body.as_bytes()).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn small(file: u64, total: u64, files: usize) -> Files {
        Files::new(
            Limits {
                file,
                rpmdb: file * 2,
                total,
                files,
                ..Limits::default()
            },
            Cancel::default(),
        )
    }

    #[test]
    fn whiteouts_and_opaque_dirs_hide_lower_layers() {
        let mut f = Files::default();
        f.apply(
            "l1",
            layer(&[
                ("var/lib/dpkg/status", "one"),
                ("var/lib/dpkg/status.d/a", "a"),
                ("var/lib/dpkg/status.d/b", "b"),
                ("etc/os-release", "ID=debian"),
                ("etc/passwd", "not wanted"),
            ])
            .as_slice(),
        );
        f.apply(
            "l2",
            layer(&[
                ("var/lib/dpkg/.wh.status", ""),
                ("var/lib/dpkg/status.d/.wh..wh..opq", ""),
                ("var/lib/dpkg/status.d/c", "c"),
            ])
            .as_slice(),
        );
        let paths: Vec<&str> = f.files.keys().map(String::as_str).collect();
        assert_eq!(paths, vec!["etc/os-release", "var/lib/dpkg/status.d/c"]);
        assert_eq!(f.origin["var/lib/dpkg/status.d/c"].as_ref(), "l2");
        assert_eq!(f.origin["etc/os-release"].as_ref(), "l1");
        assert!(f.warnings.is_empty());
        assert_eq!(f.held, "ID=debian".len() as u64 + 1);
    }

    #[test]
    fn a_damaged_layer_is_a_warning_and_later_layers_count() {
        let mut f = Files::default();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &layer(&[("etc/os-release", "ID=alpine")])).unwrap();
        let mut bytes = gz.finish().unwrap();
        bytes.truncate(bytes.len() / 2);
        f.apply("sha256:bad", bytes.as_slice());
        f.apply("l2", layer(&[("lib/apk/db/installed", "P:x")]).as_slice());
        let w = f.warnings.clone().into_vec();
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("layer sha256:bad"), "{w:?}");
        assert!(f.files.contains_key("lib/apk/db/installed"));
    }

    #[test]
    fn a_file_over_its_cap_is_skipped_by_name_and_hides_the_lower_copy() {
        let mut f = small(10, 1 << 20, 100);
        f.apply(
            "l1",
            layer(&[("var/lib/dpkg/status", "old"), ("etc/os-release", "ID=x")]).as_slice(),
        );
        f.apply(
            "sha256:big",
            layer(&[("var/lib/dpkg/status", "twelve bytes")]).as_slice(),
        );
        let w = f.warnings.clone().into_vec();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with(
                "layer sha256:big: var/lib/dpkg/status: 12 bytes, over the 10 bytes limit"
            ),
            "{w:?}"
        );
        // The lower, replaced status would be stale: it is gone too.
        assert!(!f.files.contains_key("var/lib/dpkg/status"));
        assert_eq!(f.held, 4);
    }

    #[test]
    fn the_rpm_database_has_its_own_larger_cap() {
        let mut f = small(10, 1 << 20, 100);
        f.apply(
            "l1",
            layer(&[("var/lib/rpm/rpmdb.sqlite", "fifteen bytes!!")]).as_slice(),
        );
        assert!(f.warnings.is_empty());
        assert!(f.files.contains_key("var/lib/rpm/rpmdb.sqlite"));
    }

    #[test]
    fn the_image_total_and_file_count_are_capped() {
        let mut f = small(10, 25, 100);
        f.apply(
            "l1",
            layer(&[
                ("a.dist-info/METADATA", "Name: a\n"),
                ("b.dist-info/METADATA", "Name: b\n"),
                ("c.dist-info/METADATA", "Name: c\n"),
                ("d.dist-info/METADATA", "Name: d\n"),
            ])
            .as_slice(),
        );
        assert_eq!(f.files.len(), 3);
        let w = f.warnings.clone().into_vec();
        assert!(
            w[0].contains("d.dist-info/METADATA: 8 bytes would take the files read from this image past 25 bytes"),
            "{w:?}"
        );
        let mut f = small(10, 1 << 20, 2);
        f.apply(
            "l1",
            layer(&[
                ("a.dist-info/METADATA", "x"),
                ("b.dist-info/METADATA", "x"),
                ("c.dist-info/METADATA", "x"),
            ])
            .as_slice(),
        );
        assert_eq!(f.files.len(), 2);
        assert!(
            f.warnings
                .iter()
                .any(|w| w.contains("already has 2 package files")),
            "{:?}",
            f.warnings
        );
    }

    #[test]
    fn python_metadata_keeps_only_its_header() {
        let mut f = Files::default();
        f.apply(
            "l1",
            layer(&[(
                "x.dist-info/METADATA",
                "Name: x\nVersion: 1\n\nA long description.\n",
            )])
            .as_slice(),
        );
        assert_eq!(f.files["x.dist-info/METADATA"], b"Name: x\nVersion: 1");
    }

    #[test]
    fn warnings_are_capped_per_image() {
        let mut f = Files::new(
            Limits {
                file: 0,
                warnings: 5,
                ..Limits::default()
            },
            Cancel::default(),
        );
        let names: Vec<String> = (0..20)
            .map(|i| format!("p{i}.dist-info/METADATA"))
            .collect();
        let files: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "x")).collect();
        f.apply("l1", layer(&files).as_slice());
        let w = f.warnings.clone().into_vec();
        assert_eq!(w.len(), 6);
        assert_eq!(w[5], "15 more warnings (only the first 5 are shown)");
    }

    #[test]
    fn a_cancelled_walk_stops() {
        let cancel = Cancel::default();
        let mut f = Files::new(Limits::default(), cancel.clone());
        cancel.cancel();
        f.apply("l1", layer(&[("etc/os-release", "ID=x")]).as_slice());
        assert!(f.files.is_empty());
        assert!(
            f.warnings.iter().any(|w| w.contains("abandoned")),
            "{:?}",
            f.warnings
        );
    }
}
