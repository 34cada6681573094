//! An offline vulnerability scanner: the package inventory of an image read from its
//! layers (applied in order, whiteouts honoured), matched against OSV records for each
//! package's ecosystem with that ecosystem's own version order.
//!
//! Layers and OSV databases come from outside, so everything read from them is bounded
//! ([`Limits`], [`osv::DbLimits`]): a small, highly compressed input must not become
//! gigabytes of memory or an endless query. The parsers run on blocking threads, which
//! cannot be cancelled from outside; they stop on their own when a budget runs out or
//! when the image's scan is abandoned ([`Cancel`]).

pub mod apk;
pub mod dpkg;
pub mod image;
pub mod layers;
pub mod matcher;
pub mod os;
pub mod osv;
pub mod python;
pub mod report;
pub mod rpm;
pub mod tar_guard;
pub mod version;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

const MIB: u64 = 1 << 20;

/// What one image's scan may read out of its layers and keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest text metadata file read (dpkg status and status.d entries, apk
    /// installed, os-release, `*.dist-info/METADATA`, `PKG-INFO`): 8 MiB. A 3,000-package
    /// dpkg status is about 4 MiB; Python metadata is tens of KiB.
    pub file: u64,
    /// The largest `rpmdb.sqlite` read: 64 MiB. It holds every package's whole header
    /// (file lists, scriptlets, changelog) plus the index tables, so it runs to 5–30 MiB in
    /// UBI, Rocky or SUSE images and about 60 MiB for a full ~2,500-package install; it
    /// is queried from a temporary file, held in memory once.
    pub rpmdb: u64,
    /// The files kept for one image together: 256 MiB.
    pub total: u64,
    /// How many files one image may keep (each costs a path and a map node beyond its
    /// bytes, so many empty ones count too): 100,000.
    pub files: usize,
    /// Packages listed for one image: 100,000 (large distribution installs have a few
    /// thousand).
    pub packages: usize,
    /// Warnings kept for one image; beyond them one line counts the rest: 100.
    pub warnings: usize,
    /// Rows read from an rpm database's `Packages` table: 100,000.
    pub rpm_rows: usize,
    /// Wall-clock budget for querying one rpm database: 30 s (a real one reads in well
    /// under a second).
    pub rpm_time: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            file: 8 * MIB,
            rpmdb: 64 * MIB,
            total: 256 * MIB,
            files: 100_000,
            packages: 100_000,
            warnings: 100,
            rpm_rows: 100_000,
            rpm_time: Duration::from_secs(30),
        }
    }
}

/// `n` bytes as a short human size for messages (`8 MiB`, `262144000 bytes`).
pub(crate) fn size(n: u64) -> String {
    if n >= MIB && n.is_multiple_of(MIB) {
        if n >= 1 << 30 && n.is_multiple_of(1 << 30) {
            return format!("{} GiB", n >> 30);
        }
        return format!("{} MiB", n >> 20);
    }
    format!("{n} bytes")
}

/// Set when the work a blocking thread does is no longer wanted (the image's scan timed
/// out or was dropped); the thread looks at it between steps and stops.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Warnings, at most `cap` of them; the rest are only counted, so a file with a million
/// malformed entries costs a counter, not a million strings.
#[derive(Debug, Clone)]
pub struct Warnings {
    kept: Vec<String>,
    more: usize,
    cap: usize,
}

impl Default for Warnings {
    fn default() -> Self {
        Warnings::new(Limits::default().warnings)
    }
}

impl Warnings {
    pub fn new(cap: usize) -> Self {
        Warnings {
            kept: Vec::new(),
            more: 0,
            cap,
        }
    }

    pub fn push(&mut self, warning: impl Into<String>) {
        if self.kept.len() < self.cap {
            self.kept.push(warning.into());
        } else {
            self.more += 1;
        }
    }

    /// All warnings counted, kept or not.
    pub fn len(&self) -> usize {
        self.kept.len() + self.more
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = &String> {
        self.kept.iter()
    }

    /// The kept warnings, then one line saying how many more there were.
    pub fn into_vec(self) -> Vec<String> {
        let mut out = self.kept;
        if self.more > 0 {
            out.push(format!(
                "{} more warnings (only the first {} are shown)",
                self.more, self.cap
            ));
        }
        out
    }
}

/// Where the parsers put what they find: packages up to the image's cap, warnings up to
/// theirs.
#[derive(Debug)]
pub(crate) struct Sink {
    pub packages: Vec<Package>,
    pub warnings: Warnings,
    max_packages: usize,
    overflowed: bool,
}

impl Sink {
    pub fn new(limits: &Limits) -> Self {
        Sink {
            packages: Vec::new(),
            warnings: Warnings::new(limits.warnings),
            max_packages: limits.packages,
            overflowed: false,
        }
    }

    /// Adds a package unless the image already has its cap of them.
    pub fn package(&mut self, p: Package) {
        if self.packages.len() < self.max_packages {
            self.packages.push(p);
        } else {
            self.overflowed = true;
        }
    }

    /// True once a package was refused for the cap: parsers stop reading.
    pub fn full(&self) -> bool {
        self.overflowed
    }

    pub fn warn(&mut self, w: impl Into<String>) {
        self.warnings.push(w);
    }

    /// Packages and warnings, the package cap reported if it was reached.
    pub fn finish(mut self) -> (Vec<Package>, Warnings) {
        if self.full() {
            self.warnings.push(format!(
                "more than {} packages; only the first {} are listed",
                self.max_packages, self.max_packages
            ));
        }
        (self.packages, self.warnings)
    }

    /// For the public `parse` functions: packages and warnings as plain lists.
    pub fn into_lists(self) -> (Vec<Package>, Vec<String>) {
        let (p, w) = self.finish();
        (p, w.into_vec())
    }
}

/// Which package database a package came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PkgKind {
    Dpkg,
    Apk,
    Rpm,
    Python,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Package {
    pub kind: PkgKind,
    pub name: String,
    pub version: String,
    /// The source package the distribution records (dpkg `Source:`, apk origin, rpm
    /// SOURCERPM's name); distro advisories are keyed by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub license: Option<String>,
    /// The file it was read from.
    pub path: String,
}

/// Everything the scanner learned from one platform image's layers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<os::Os>,
    pub packages: Vec<Package>,
    /// Problems that did not stop the scan (a damaged layer, a malformed database, a file
    /// over its limit), at most [`Limits::warnings`] plus one line counting the rest.
    #[serde(default)]
    pub warnings: Vec<String>,
}

impl Inventory {
    /// Reads the package databases out of the files gathered from the layers, within the
    /// files' limits; stops early when `files.cancel` is set. CPU-bound and, for rpm,
    /// blocking: call it on a blocking thread.
    pub fn from_files(files: &layers::Files) -> Self {
        let mut sink = Sink::new(&files.limits);
        sink.warnings = files.warnings.clone();
        for (path, body) in &files.files {
            if sink.full() {
                break;
            }
            if files.cancel.is_cancelled() {
                sink.warn("scan abandoned (timed out); the inventory is incomplete");
                break;
            }
            if path == dpkg::STATUS
                || (path.starts_with(dpkg::STATUS_D) && !path.ends_with(".md5sums"))
            {
                dpkg::read(path, body, &mut sink);
            } else if path == apk::INSTALLED {
                apk::read(path, body, &mut sink);
            } else if rpm::DATABASES.contains(&path.as_str()) {
                let layer = files.origin.get(path).map_or("?", |l| l.as_ref());
                rpm::read(path, layer, body, &files.limits, &files.cancel, &mut sink);
            } else if python::is_metadata(path) {
                python::read(path, body, &mut sink);
            }
        }
        let (mut packages, warnings) = sink.finish();
        packages.sort_by(|a, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
        packages.dedup();
        Inventory {
            os: os::detect(files),
            packages,
            warnings: warnings.into_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_past_the_cap_are_counted_in_one_line() {
        let mut w = Warnings::new(3);
        for i in 0..10 {
            w.push(format!("w{i}"));
        }
        assert_eq!(w.len(), 10);
        let v = w.into_vec();
        assert_eq!(v.len(), 4);
        assert_eq!(v[2], "w2");
        assert_eq!(v[3], "7 more warnings (only the first 3 are shown)");
        assert_eq!(Warnings::new(3).into_vec(), Vec::<String>::new());
    }

    #[test]
    fn packages_past_the_cap_stop_the_parsers() {
        let limits = Limits {
            packages: 2,
            ..Limits::default()
        };
        let mut files = layers::Files::new(limits, Cancel::default());
        let status: String = (0..50)
            .map(|i| format!("Package: p{i}\nStatus: install ok installed\nVersion: 1\n\n"))
            .collect();
        files.files.insert(dpkg::STATUS.into(), status.into_bytes());
        files
            .files
            .insert(apk::INSTALLED.into(), b"P:a\nV:1\n\nP:b\nV:1\n".to_vec());
        let inv = Inventory::from_files(&files);
        assert_eq!(inv.packages.len(), 2);
        assert!(
            inv.warnings
                .iter()
                .any(|w| w.contains("more than 2 packages")),
            "{:?}",
            inv.warnings
        );
    }

    #[test]
    fn a_cancelled_scan_stops_and_says_so() {
        let cancel = Cancel::default();
        let mut files = layers::Files::new(Limits::default(), cancel.clone());
        files
            .files
            .insert(apk::INSTALLED.into(), b"P:a\nV:1\n".to_vec());
        cancel.cancel();
        let inv = Inventory::from_files(&files);
        assert!(inv.packages.is_empty());
        assert!(inv.warnings[0].contains("abandoned"), "{:?}", inv.warnings);
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(size(8 << 20), "8 MiB");
        assert_eq!(size(4 << 30), "4 GiB");
        assert_eq!(size(1000), "1000 bytes");
    }
}
