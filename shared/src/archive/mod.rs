//! Hangar's zip archive (reference §3): `index.json`, `<hex>/index.json`, `<hex>/oci-layout`
//! and `share/sha256/<hex>`, every entry stored uncompressed. The reader serves blobs as byte
//! ranges of the zip, locally or from S3, without extracting anything; the writer (the
//! assembler) streams blobs from a [`BlobSource`] into a new zip and renames it into place
//! only when it is complete, so an interrupted save or sync never leaves a broken archive.

pub mod custom;
mod directory;
pub mod index;
pub mod reader;
mod sink;
pub mod streamed;
mod volumes;
pub mod writer;

use std::sync::Arc;

use async_trait::async_trait;
use object_store::ObjectStore;
use object_store::path::Path;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::verify::ByteStream;

pub use index::{ArchiveImage, ArchiveIndex, INDEX_VERSION, ImageSpec};
pub use reader::ArchiveReader;

pub const INDEX_NAME: &str = "index.json";
pub const OCI_LAYOUT: &str = r#"{"imageLayoutVersion":"1.0.0"}"#;

pub fn blob_entry(digest: &Digest) -> String {
    format!("share/sha256/{}", digest.hex())
}

/// Where blob bytes for an archive come from: the blob cache, or other archives.
#[async_trait]
pub trait BlobSource: Send + Sync {
    /// The blob's size, if this source holds it.
    async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>>;
    /// The blob's bytes, verified against its digest.
    async fn blob_stream(&self, digest: &Digest, size: u64) -> Result<ByteStream>;
    /// The writer will read `digest` after every blob announced before it: a source that
    /// fetches from afar may start now. May wait for earlier blobs to be read.
    async fn will_read(&self, _digest: &Digest) -> Result<()> {
        Ok(())
    }
}

/// Entry names a reader must refuse: they would escape a directory when extracted, and
/// Hangar's layout never has them.
pub fn check_entry_name(name: &str) -> Result<()> {
    let bad = name.is_empty()
        || name.starts_with('/')
        || name.starts_with('\\')
        || name.contains('\0')
        || name.contains('\\')
        || (name.len() > 1 && name.as_bytes()[1] == b':')
        || name.split('/').any(|seg| seg == "..");
    if bad {
        return Err(Error::invalid(format!(
            "entry {name:?}: unsafe entry name (absolute, or with \"..\")"
        )));
    }
    Ok(())
}

/// A local path as object_store takes it: absolute, with no `.` or `..` segment (it refuses
/// those). The directory is resolved by the file system (symlinks and `..` as the kernel
/// follows them), the file name kept as given; a path whose directory does not exist is
/// made absolute as it stands (opening it then fails as a missing file).
fn resolve_local(location: &str) -> Result<std::path::PathBuf> {
    let given = std::path::Path::new(location);
    let absolute =
        std::path::absolute(given).map_err(|e| Error::invalid(format!("{location}: {e}")))?;
    let (Some(dir), Some(name)) = (absolute.parent(), absolute.file_name()) else {
        return Ok(absolute);
    };
    match std::fs::canonicalize(dir) {
        Ok(dir) => Ok(dir.join(name)),
        Err(_) => Ok(absolute),
    }
}

/// An archive's place: a local path, or `s3://bucket/key.zip?endpoint=…&region=…`.
pub fn locate(location: &str) -> Result<(Arc<dyn ObjectStore>, Path)> {
    if let Some(rest) = location.strip_prefix("s3://") {
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (bucket, key) = path
            .split_once('/')
            .ok_or_else(|| Error::invalid(format!("{location}: expected s3://bucket/key.zip")))?;
        let store = crate::cache::s3_store(bucket, query, location)?;
        return Ok((store, Path::from(key)));
    }
    let path = resolve_local(location)?;
    let store = object_store::local::LocalFileSystem::new();
    let path =
        Path::from_absolute_path(&path).map_err(|e| Error::invalid(format!("{location}: {e}")))?;
    Ok((Arc::new(store), path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_with_dot_dot_spaces_and_symlinks_are_located() {
        let dir = tempfile::tempdir().expect("tempdir");
        let real = dir.path().join("real dir ü");
        std::fs::create_dir_all(real.join("sub")).expect("dirs");
        std::fs::write(real.join("saved images.zip"), b"x").expect("file");
        std::os::unix::fs::symlink(&real, dir.path().join("link")).expect("symlink");
        for given in [
            real.join("sub/../saved images.zip"),
            dir.path().join("link/sub/../saved images.zip"),
            dir.path().join("link/./saved images.zip"),
        ] {
            let (_, path) = locate(given.to_str().expect("utf-8")).expect("located");
            assert!(path.as_ref().ends_with("saved images.zip"), "{path}");
            assert!(!path.as_ref().contains(".."), "{path}");
        }
    }

    #[test]
    fn unsafe_names_are_refused() {
        for n in [
            "../x",
            "a/../../b",
            "/etc/passwd",
            "share/../x",
            "C:/x",
            "a\\b",
            "",
        ] {
            assert!(check_entry_name(n).is_err(), "{n}");
        }
        for n in ["index.json", "share/sha256/ab", "abc/oci-layout"] {
            assert!(check_entry_name(n).is_ok(), "{n}");
        }
    }
}
