//! Reads a Hangar archive where it lies. The zip crate parses the central directory (through
//! a small read-ahead window over byte ranges, so the same code reads a local file or an S3
//! object); after that every blob is one range request, streamed and verified, and nothing
//! is extracted to disk.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt};

pub use super::directory::Entry;
use super::index::ArchiveIndex;
use super::{BlobSource, INDEX_NAME, blob_entry};
use crate::digest::Digest;
use crate::error::{Error, FailureClass, Result};
use crate::manifest::{Descriptor, RawManifest};
use crate::registry::Side;
use crate::store::ImageStore;
use crate::verify::{ByteStream, verified};

/// The largest JSON document (an index) read whole, and written (`writer`): some 10,000
/// multi-platform images of a dozen layers (about 5 KiB of index each), while a hostile
/// one's parse stays within some hundreds of MB (its lists are bounded too,
/// `index::MAX_INDEX_IMAGES`).
pub(super) const JSON_LIMIT: u64 = 64 << 20;
/// The largest manifest: what a registry's is read up to, so no archive this writes holds a
/// larger one, and one that does is not a thing a registry would take.
const MANIFEST_LIMIT: u64 = crate::registry::MAX_MANIFEST_BYTES as u64;
/// Manifests kept once read: an index may name one manifest for many images, each of which
/// would otherwise read and hash it again (100,000 images of one 4 MiB manifest, 400 GB).
/// Thousands of real ones fit; a worker keeps several archives open.
const MANIFESTS_KEPT: u64 = 8 << 20;

pub struct ArchiveReader {
    label: String,
    store: Arc<dyn ObjectStore>,
    path: Path,
    file_size: u64,
    /// Central-directory order; names are unique (an archive repeating one is refused).
    entries: Vec<Entry>,
    by_name: HashMap<String, usize>,
    data_starts: Mutex<HashMap<usize, u64>>,
    /// What the store said of the object when it was opened: a process that keeps the
    /// reader asks again before trusting its directory for an object replaced since.
    version: Version,
    /// Manifests read so far, and their bytes, up to [`MANIFESTS_KEPT`].
    manifests: Mutex<(HashMap<Digest, RawManifest>, u64)>,
    pub index: ArchiveIndex,
    media_types: HashMap<Digest, String>,
}

impl std::fmt::Debug for ArchiveReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArchiveReader")
            .field("archive", &self.label)
            .finish()
    }
}

/// An object as its store describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Version {
    size: u64,
    e_tag: Option<String>,
    modified: Option<i64>,
}

impl Version {
    fn of(meta: &object_store::ObjectMeta) -> Self {
        Self {
            size: meta.size,
            e_tag: meta.e_tag.clone(),
            modified: meta.last_modified.timestamp_nanos_opt(),
        }
    }
}

fn read_err(label: &str, e: impl std::fmt::Display) -> Error {
    Error::new(FailureClass::Network, format!("{label}: {e}"))
}

impl ArchiveReader {
    /// Opens `location` (a path or `s3://bucket/key?…`), reads its central directory and
    /// its `index.json`, and refuses unsafe entry names, compressed entries and indexes of
    /// versions older than `v1.2.0`.
    pub async fn open(location: &str) -> Result<Self> {
        let (store, path) = super::locate(location)?;
        let label = location.to_owned();
        let version = match store.head(&path).await {
            Ok(m) => Version::of(&m),
            Err(object_store::Error::NotFound { .. }) => {
                return Err(Error::not_found(format!("archive {label} does not exist")));
            }
            Err(e) => return Err(read_err(&label, e)),
        };
        let file_size = version.size;
        let entries = super::directory::read(&store, &path, file_size, &label).await?;
        let mut by_name = HashMap::with_capacity(entries.len());
        for (i, e) in entries.iter().enumerate() {
            by_name.entry(e.name.clone()).or_insert(i);
        }
        let mut reader = Self {
            label,
            store,
            path,
            file_size,
            entries,
            by_name,
            data_starts: Mutex::new(HashMap::new()),
            version,
            manifests: Mutex::new((HashMap::new(), 0)),
            index: ArchiveIndex::default(),
            media_types: HashMap::new(),
        };
        let raw = reader.read_entry(INDEX_NAME).await.map_err(|e| {
            if e.class == FailureClass::NotFound {
                Error::invalid(format!("archive {} has no index.json", reader.label))
            } else {
                e
            }
        })?;
        reader.index = ArchiveIndex::parse(&raw, &format!("archive {}", reader.label))?;
        for image in &reader.index.list {
            for spec in &image.images {
                if !spec.media_type.is_empty() {
                    reader
                        .media_types
                        .insert(spec.digest.clone(), spec.media_type.clone());
                }
            }
        }
        Ok(reader)
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn entry(&self, name: &str) -> Option<&Entry> {
        self.by_name.get(name).map(|i| &self.entries[*i])
    }

    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.by_name.contains_key(&blob_entry(digest))
    }

    pub fn blob_size(&self, digest: &Digest) -> Option<u64> {
        self.entry(&blob_entry(digest)).map(|e| e.size)
    }

    /// Where an entry's bytes begin: after its local header, read once.
    async fn data_start(&self, name: &str) -> Result<(u64, u64)> {
        let i = *self.by_name.get(name).ok_or_else(|| {
            Error::not_found(format!("archive {}: no entry {name:?}", self.label))
        })?;
        let entry = &self.entries[i];
        let known = self
            .data_starts
            .lock()
            .ok()
            .and_then(|m| m.get(&i).copied());
        let start = match known {
            Some(s) => s,
            None => {
                // Offsets and sizes are the archive's own (zip64 fields the zip crate does
                // not bound): every sum is checked.
                let h = entry.header_start;
                if h.checked_add(30).is_none_or(|end| end > self.file_size) {
                    return Err(self.damaged(name, "its local header lies past the end"));
                }
                let header = self
                    .store
                    .get_range(&self.path, h..h + 30)
                    .await
                    .map_err(|e| read_err(&self.label, e))?;
                if header[..4] != [0x50, 0x4b, 0x03, 0x04] {
                    return Err(self.damaged(name, "no local file header at its offset"));
                }
                let name_len = u16::from_le_bytes([header[26], header[27]]) as u64;
                let extra_len = u16::from_le_bytes([header[28], header[29]]) as u64;
                let start = h + 30 + name_len + extra_len;
                if let Ok(mut m) = self.data_starts.lock() {
                    m.insert(i, start);
                }
                start
            }
        };
        match start.checked_add(entry.size) {
            Some(end) if end <= entry.limit => {}
            Some(end) if end <= self.file_size => {
                return Err(self.damaged(
                    name,
                    "its data runs into the next entry's (entries overlap)",
                ));
            }
            _ => {
                return Err(self.damaged(name, "its data runs past the end (truncated archive?)"));
            }
        }
        Ok((start, entry.size))
    }

    fn damaged(&self, name: &str, why: &str) -> Error {
        Error::invalid(format!(
            "archive {}: entry {name:?} is damaged: {why}",
            self.label
        ))
    }

    /// The raw bytes of one entry as a stream (unverified; blobs go through [`Self::blob`]).
    pub async fn entry_stream(&self, name: &str) -> Result<ByteStream> {
        let (start, size) = self.data_start(name).await?;
        if size == 0 {
            return Ok(futures_util::stream::empty().boxed());
        }
        let opts = GetOptions {
            range: Some(GetRange::Bounded(start..start + size)),
            ..Default::default()
        };
        let label = self.label.clone();
        let got = self
            .store
            .get_opts(&self.path, opts)
            .await
            .map_err(|e| read_err(&label, e))?;
        Ok(crate::cache::body_stream(got, move |e| read_err(&label, e)))
    }

    /// Whether the object is still the one this reader opened (same size, tag and time):
    /// an archive rewritten in place (a later `save` or `sync` to the same location) is
    /// opened again rather than read through a directory that no longer describes it.
    pub async fn unchanged(&self) -> Result<bool> {
        match self.store.head(&self.path).await {
            Ok(m) => Ok(Version::of(&m) == self.version),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(read_err(&self.label, e)),
        }
    }

    /// An entry's bytes, failing at their end unless they match its CRC-32 record: what
    /// `sync` carries over from the archive it extends (re-hashing every blob would cost
    /// SHA-256 of the whole archive; the CRC finds what storage damaged, which the zip
    /// writer would otherwise record under a fresh CRC of its own).
    pub async fn crc_checked_stream(&self, name: &str) -> Result<ByteStream> {
        let entry = self.entry(name).ok_or_else(|| {
            Error::not_found(format!("archive {}: no entry {name:?}", self.label))
        })?;
        let (size, crc) = (entry.size, entry.crc32);
        let damaged = format!(
            "archive {}: entry {name:?} does not match its CRC-32 (damaged)",
            self.label
        );
        let inner = self.entry_stream(name).await?;
        Ok(crate::verify::crc_checked(
            inner,
            size,
            crc,
            move || async move { Error::new(FailureClass::DigestMismatch, damaged) },
        ))
    }

    /// A small entry read whole, CRC-checked.
    pub async fn read_entry(&self, name: &str) -> Result<Bytes> {
        let size = self
            .entry(name)
            .ok_or_else(|| Error::not_found(format!("archive {}: no entry {name:?}", self.label)))?
            .size;
        if size > JSON_LIMIT {
            return Err(self.damaged(name, "too large for a JSON document"));
        }
        let chunks: Vec<Bytes> = self.entry_stream(name).await?.try_collect().await?;
        let bytes = Bytes::from(chunks.concat());
        let expected = self.entry(name).map(|e| e.crc32).unwrap_or_default();
        if crc32fast::hash(&bytes) != expected {
            return Err(Error::new(
                FailureClass::DigestMismatch,
                format!(
                    "archive {}: entry {name:?} does not match its CRC-32",
                    self.label
                ),
            ));
        }
        Ok(bytes)
    }

    /// A blob, verified against its digest and its entry's size.
    pub async fn blob(
        &self,
        digest: &Digest,
        progress: Option<Arc<AtomicU64>>,
    ) -> Result<ByteStream> {
        let name = blob_entry(digest);
        let size = self.entry(&name).map(|e| e.size).ok_or_else(|| {
            Error::not_found(format!(
                "archive {}: entry {name:?} (blob {digest}) is missing",
                self.label
            ))
        })?;
        let raw = self.entry_stream(&name).await?;
        let label = self.label.clone();
        Ok(verified(raw, digest.clone(), size, progress)
            .map_err(move |e| {
                if e.class == FailureClass::DigestMismatch {
                    Error::new(
                        FailureClass::DigestMismatch,
                        format!("archive {label}: entry {name:?}: {}", e.message),
                    )
                } else {
                    e
                }
            })
            .boxed())
    }

    /// A manifest blob, with the media type the index records for it.
    pub async fn manifest(&self, digest: &Digest) -> Result<RawManifest> {
        let kept = self
            .manifests
            .lock()
            .ok()
            .and_then(|m| m.0.get(digest).cloned());
        if let Some(raw) = kept {
            return Ok(raw);
        }
        let name = blob_entry(digest);
        let size = self.blob_size(digest).ok_or_else(|| {
            Error::not_found(format!(
                "archive {}: entry {name:?} (manifest {digest}) is missing",
                self.label
            ))
        })?;
        if size > MANIFEST_LIMIT {
            return Err(self.damaged(
                &name,
                &format!(
                    "too large for a manifest (over {} KiB)",
                    MANIFEST_LIMIT >> 10
                ),
            ));
        }
        let chunks: Vec<Bytes> = self.blob(digest, None).await?.try_collect().await?;
        let mut raw = RawManifest::from_bytes(Bytes::from(chunks.concat()), Some(digest))?;
        if let Some(t) = self.media_types.get(digest) {
            raw.media_type = t.clone();
        }
        if let Ok(mut kept) = self.manifests.lock() {
            let size = raw.bytes.len() as u64;
            if kept.1 + size <= MANIFESTS_KEPT {
                kept.1 += size;
                kept.0.insert(digest.clone(), raw.clone());
            }
        }
        Ok(raw)
    }
}

#[async_trait]
impl BlobSource for ArchiveReader {
    async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        Ok(ArchiveReader::blob_size(self, digest))
    }
    async fn blob_stream(&self, digest: &Digest, _size: u64) -> Result<ByteStream> {
        self.blob(digest, None).await
    }
}

fn read_only() -> Error {
    Error::invalid("an archive is read-only here; archives are written by the assembler")
}

/// An archive as the source of a copy (`load`): blobs and manifests by digest.
#[async_trait]
impl ImageStore for ArchiveReader {
    async fn blob_exists(&self, _repo: &str, digest: &Digest, _side: Side) -> Result<bool> {
        Ok(self.has_blob(digest))
    }
    async fn get_blob(
        &self,
        _repo: &str,
        desc: &Descriptor,
        progress: Option<Arc<AtomicU64>>,
    ) -> Result<ByteStream> {
        if let Some(size) = self.blob_size(&desc.digest)
            && size != desc.size
        {
            return Err(Error::new(
                FailureClass::DigestMismatch,
                format!(
                    "archive {}: entry {:?} holds {size} bytes, the manifest says {}",
                    self.label,
                    blob_entry(&desc.digest),
                    desc.size
                ),
            ));
        }
        self.blob(&desc.digest, progress).await
    }
    async fn put_blob(&self, _repo: &str, _desc: &Descriptor, _stream: ByteStream) -> Result<()> {
        Err(read_only())
    }
    async fn mount_blob(&self, _repo: &str, _from: &str, _digest: &Digest) -> Result<bool> {
        Ok(false)
    }
    async fn get_manifest(
        &self,
        _repo: &str,
        reference: &str,
        _side: Side,
    ) -> Result<Option<RawManifest>> {
        let Ok(digest) = reference.parse::<Digest>() else {
            return Ok(None);
        };
        if !self.has_blob(&digest) {
            return Ok(None);
        }
        self.manifest(&digest).await.map(Some)
    }
    async fn put_manifest(&self, _repo: &str, _r: &str, _m: &RawManifest) -> Result<()> {
        Err(read_only())
    }
    async fn list_tags(&self, repo: &str) -> Result<Vec<String>> {
        Ok(self
            .index
            .list
            .iter()
            .filter(|i| i.source.split_once('/').is_some_and(|(_, r)| r == repo))
            .map(|i| i.tag.clone())
            .collect())
    }
    async fn delete_manifest(&self, _repo: &str, _digest: &Digest) -> Result<()> {
        Err(read_only())
    }
}
