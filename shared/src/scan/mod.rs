//! An offline vulnerability scanner: the package inventory of an image read from its
//! layers (applied in order, whiteouts honoured), matched against OSV records for each
//! package's ecosystem with that ecosystem's own version order.

pub mod apk;
pub mod dpkg;
pub mod image;
pub mod layers;
pub mod matcher;
pub mod os;
pub mod osv;
pub mod python;
pub mod rpm;
pub mod version;

use serde::{Deserialize, Serialize};

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
    /// Problems that did not stop the scan (a damaged layer, a malformed database).
    #[serde(default)]
    pub warnings: Vec<String>,
}

impl Inventory {
    /// Reads the package databases out of the files gathered from the layers.
    pub fn from_files(files: &layers::Files) -> Self {
        let mut inv = Inventory {
            os: os::detect(files),
            packages: Vec::new(),
            warnings: files.warnings.clone(),
        };
        let mut take = |r: (Vec<Package>, Vec<String>)| {
            inv.packages.extend(r.0);
            inv.warnings.extend(r.1);
        };
        for (path, body) in &files.files {
            if path == dpkg::STATUS
                || (path.starts_with(dpkg::STATUS_D) && !path.ends_with(".md5sums"))
            {
                take(dpkg::parse(path, body));
            } else if path == apk::INSTALLED {
                take(apk::parse(path, body));
            } else if rpm::DATABASES.contains(&path.as_str()) {
                take(rpm::parse(path, body));
            } else if python::is_metadata(path) {
                take(python::parse(path, body));
            }
        }
        inv.packages
            .sort_by(|a, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
        inv.packages.dedup();
        inv
    }
}
