//! Applies an image's layers in order and keeps only the files the scanner reads (package
//! databases, os-release, Python metadata), honouring whiteouts (`.wh.NAME` removes NAME,
//! `.wh..wh..opq` hides what lower layers put in its directory). A damaged layer is a
//! warning naming it; the layers after it still count.

use std::collections::BTreeMap;
use std::io::Read;

/// The wanted files of the merged filesystem, by path (no leading `/`).
#[derive(Debug, Default, Clone)]
pub struct Files {
    pub files: BTreeMap<String, Vec<u8>>,
    pub warnings: Vec<String>,
}

const LIMIT: u64 = 256 << 20;

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
            | "var/lib/rpm/Packages"
    ) || (path.starts_with("var/lib/dpkg/status.d/") && path.len() > "var/lib/dpkg/status.d/".len())
        || super::python::is_metadata(path)
}

fn clean(path: &str) -> String {
    path.trim_start_matches("./")
        .trim_start_matches('/')
        .trim_end_matches('/')
        .to_owned()
}

impl Files {
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
            self.apply_tar(tar::Archive::new(flate2::read::GzDecoder::new(buffered)))
        } else {
            self.apply_tar(tar::Archive::new(buffered))
        };
        if let Err(e) = result {
            self.warnings
                .push(format!("layer {name}: damaged, read only in part: {e}"));
        }
    }

    fn apply_tar<R: Read>(&mut self, mut archive: tar::Archive<R>) -> std::io::Result<()> {
        // Whiteouts hide lower layers only: collect this layer's, apply them first.
        let mut added: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut removed: Vec<String> = Vec::new();
        let mut opaque: Vec<String> = Vec::new();
        for entry in archive.entries()? {
            let mut entry = entry?;
            let path = clean(&entry.path()?.to_string_lossy());
            let (dir, base) = match path.rsplit_once('/') {
                Some((d, b)) => (d.to_owned(), b.to_owned()),
                None => (String::new(), path.clone()),
            };
            if base == ".wh..wh..opq" {
                opaque.push(dir);
                continue;
            }
            if let Some(hidden) = base.strip_prefix(".wh.") {
                removed.push(if dir.is_empty() {
                    hidden.to_owned()
                } else {
                    format!("{dir}/{hidden}")
                });
                continue;
            }
            if !entry.header().entry_type().is_file() || !wanted(&path) {
                continue;
            }
            if entry.size() > LIMIT {
                self.warnings
                    .push(format!("{path}: {} bytes, too large to read", entry.size()));
                continue;
            }
            let mut body = Vec::with_capacity(entry.size() as usize);
            entry.read_to_end(&mut body)?;
            added.insert(path, body);
        }
        for dir in &opaque {
            let prefix = format!("{dir}/");
            self.files.retain(|p, _| !p.starts_with(&prefix));
        }
        for gone in &removed {
            let prefix = format!("{gone}/");
            self.files
                .retain(|p, _| p != gone && !p.starts_with(&prefix));
        }
        self.files.extend(added);
        Ok(())
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
        assert!(f.warnings.is_empty());
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
        assert_eq!(f.warnings.len(), 1);
        assert!(
            f.warnings[0].contains("layer sha256:bad"),
            "{:?}",
            f.warnings
        );
        assert!(f.files.contains_key("lib/apk/db/installed"));
    }
}
