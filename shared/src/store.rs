//! Where images live. Every command moves blobs and manifests from one store to another;
//! the copy engine, the planner and the handlers only see this trait. A registry is the
//! first implementation; the zip archive and the blob cache plug in beside it.
//!
//! Tasks name stores by a serialisable [`StoreRef`]; a worker turns it into a live store
//! with its own credentials through a [`StoreResolver`], so no secret travels in a task.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, OnceCell};

use crate::archive::ArchiveReader;
use crate::cache::BlobCache;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::manifest::{Descriptor, RawManifest};
use crate::registry::{Registry, RegistryOptions, Side};
use crate::verify::ByteStream;

/// A store, by name only.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum StoreRef {
    Registry {
        host: String,
    },
    /// The worker's own blob cache (its `--cache`): where `save` gathers blobs for the
    /// assembler. Content-addressed, so repositories do not matter in it.
    Cache,
    /// A Hangar zip archive, read in place: a local path, or `s3://bucket/key?…`.
    Archive {
        location: String,
    },
}

impl StoreRef {
    /// Images are named in it by tag (a registry). The blob cache and archives hold content
    /// by digest; an archive's names are written by its assembler.
    pub fn holds_tags(&self) -> bool {
        matches!(self, StoreRef::Registry { .. })
    }

    /// What the store can do, known without reaching it (a handler decides its path before
    /// connecting anywhere: a cached blob is not held up by a source that is down).
    pub fn abilities(&self) -> Abilities {
        match self {
            StoreRef::Registry { .. } => Abilities {
                mounts: true,
                ..Abilities::default()
            },
            StoreRef::Cache => Abilities {
                mounts: false,
                local_reads: true,
                leased_fills: true,
            },
            StoreRef::Archive { .. } => Abilities {
                local_reads: true,
                ..Abilities::default()
            },
        }
    }
}

/// A repository inside a store.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RepoRef {
    pub store: StoreRef,
    pub repo: String,
}

impl RepoRef {
    pub fn registry(host: &str, repo: &str) -> Self {
        Self {
            store: StoreRef::Registry {
                host: host.to_owned(),
            },
            repo: repo.to_owned(),
        }
    }
}

impl fmt::Display for StoreRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreRef::Registry { host } => write!(f, "{host}"),
            StoreRef::Cache => write!(f, "cache"),
            StoreRef::Archive { location } => write!(f, "{location}"),
        }
    }
}

impl fmt::Display for RepoRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.store {
            StoreRef::Registry { host } => write!(f, "{host}/{}", self.repo),
            store => write!(f, "{store}"),
        }
    }
}

/// What a store can do beyond the common calls ([`StoreRef::abilities`]). Task handlers
/// ask this instead of branching on what kind of store it is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Abilities {
    /// Blobs move between its repositories without a copy (a registry's cross-repository mount).
    pub mounts: bool,
    /// Its reads are local and verified already: staging them in the blob cache would add
    /// a hop, not safety.
    pub local_reads: bool,
    /// Shared by the fleet, and filled under the fleet's blob leases so that one worker
    /// fetches a digest while the others wait for it (the blob cache).
    pub leased_fills: bool,
}

/// What a store said of a blob before it is put there.
#[derive(Debug)]
pub enum BlobLook {
    Present,
    /// Not there; the upload the store opened on the way, if it did.
    Absent(Option<OpenedUpload>),
}

/// An upload a registry opened for one blob of one repository: where its `PUT` goes, and
/// the request that ends it if it is dropped unused.
#[derive(Debug)]
pub struct OpenedUpload {
    pub(crate) at: reqwest::Url,
    pub(crate) end: crate::registry::UploadEnd,
}

/// Blobs and manifests by digest, in repositories.
#[async_trait]
pub trait ImageStore: Send + Sync + fmt::Debug {
    async fn blob_exists(&self, repo: &str, digest: &Digest, side: Side) -> Result<bool>;
    /// A stream verified against `desc`: it fails rather than yield wrong bytes.
    async fn get_blob(
        &self,
        repo: &str,
        desc: &Descriptor,
        progress: Option<Arc<AtomicU64>>,
    ) -> Result<ByteStream>;
    async fn put_blob(&self, repo: &str, desc: &Descriptor, stream: ByteStream) -> Result<()>;
    /// Whether `repo` holds the blob, asked before it is put there; with its upload already
    /// opened when the store answers both in one request.
    async fn look_before_put(&self, repo: &str, digest: &Digest) -> Result<BlobLook> {
        Ok(
            match self.blob_exists(repo, digest, Side::Destination).await? {
                true => BlobLook::Present,
                false => BlobLook::Absent(None),
            },
        )
    }
    /// Ends an upload [`ImageStore::look_before_put`] opened that no copy will finish.
    async fn drop_upload(&self, _repo: &str, _opened: OpenedUpload) {}
    /// [`ImageStore::put_blob`] into the upload [`ImageStore::look_before_put`] opened.
    async fn put_blob_opened(
        &self,
        repo: &str,
        desc: &Descriptor,
        stream: ByteStream,
        _opened: OpenedUpload,
    ) -> Result<()> {
        self.put_blob(repo, desc, stream).await
    }
    /// `Ok(false)` when the store cannot mount and the blob must be copied.
    async fn mount_blob(&self, repo: &str, from_repo: &str, digest: &Digest) -> Result<bool>;
    async fn get_manifest(
        &self,
        repo: &str,
        reference: &str,
        side: Side,
    ) -> Result<Option<RawManifest>>;
    async fn put_manifest(&self, repo: &str, reference: &str, manifest: &RawManifest)
    -> Result<()>;
    async fn list_tags(&self, repo: &str) -> Result<Vec<String>>;
    /// Every tag of `repo` when they fit in one page of `n` (one request); `None` when
    /// there may be more, or the store cannot say in one request.
    async fn tags_upto(&self, _repo: &str, _n: usize) -> Result<Option<Vec<String>>> {
        Ok(None)
    }
    async fn delete_manifest(&self, repo: &str, digest: &Digest) -> Result<()>;
    /// A blob's size when only its digest is known (a schema 1 manifest's layers); `None`
    /// when the store does not hold it.
    async fn blob_size(&self, _repo: &str, digest: &Digest) -> Result<Option<u64>> {
        Err(Error::internal(format!(
            "blob {digest}: this store cannot say a blob's size by its digest alone"
        )))
    }
}

#[async_trait]
impl ImageStore for Registry {
    async fn blob_exists(&self, repo: &str, digest: &Digest, side: Side) -> Result<bool> {
        Registry::blob_exists(self, repo, digest, side).await
    }
    async fn get_blob(
        &self,
        repo: &str,
        desc: &Descriptor,
        progress: Option<Arc<AtomicU64>>,
    ) -> Result<ByteStream> {
        self.blob_stream(repo, desc, progress).await
    }
    async fn put_blob(&self, repo: &str, desc: &Descriptor, stream: ByteStream) -> Result<()> {
        self.push_blob(repo, desc, stream, None).await
    }
    async fn look_before_put(&self, repo: &str, digest: &Digest) -> Result<BlobLook> {
        self.look_or_open(repo, digest).await
    }
    async fn put_blob_opened(
        &self,
        repo: &str,
        desc: &Descriptor,
        stream: ByteStream,
        opened: OpenedUpload,
    ) -> Result<()> {
        self.push_blob(repo, desc, stream, Some(opened)).await
    }
    async fn drop_upload(&self, repo: &str, opened: OpenedUpload) {
        self.abandon_opened(repo, opened).await
    }
    async fn mount_blob(&self, repo: &str, from_repo: &str, digest: &Digest) -> Result<bool> {
        Registry::mount_blob(self, repo, from_repo, digest).await
    }
    async fn get_manifest(
        &self,
        repo: &str,
        reference: &str,
        side: Side,
    ) -> Result<Option<RawManifest>> {
        self.manifest_opt(repo, reference, side).await
    }
    async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        manifest: &RawManifest,
    ) -> Result<()> {
        Registry::put_manifest(self, repo, reference, manifest).await
    }
    async fn list_tags(&self, repo: &str) -> Result<Vec<String>> {
        self.tags(repo).await
    }
    async fn tags_upto(&self, repo: &str, n: usize) -> Result<Option<Vec<String>>> {
        Registry::tags_upto(self, repo, n).await
    }
    async fn delete_manifest(&self, repo: &str, digest: &Digest) -> Result<()> {
        Registry::delete_manifest(self, repo, digest).await
    }
    async fn blob_size(&self, repo: &str, digest: &Digest) -> Result<Option<u64>> {
        Registry::blob_size(self, repo, digest).await
    }
}

/// Turns a [`StoreRef`] into a live store with this process's own credentials.
#[async_trait]
pub trait StoreResolver: Send + Sync {
    async fn resolve(&self, store: &StoreRef) -> Result<Arc<dyn ImageStore>>;
}

/// Registries reached with credentials from the local auth files, one client per host.
pub struct RegistryPool {
    options: RegistryOptions,
    authfile: Option<PathBuf>,
    clients: Mutex<HashMap<String, Arc<OnceCell<Arc<Registry>>>>>,
}

impl RegistryPool {
    pub fn new(options: RegistryOptions, authfile: Option<PathBuf>) -> Self {
        Self {
            options,
            authfile,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// The client for `host`, connected once. Connecting (a probe or two) happens outside
    /// the map's lock, so hosts already connected are never held up by a new one.
    pub async fn registry(&self, host: &str) -> Result<Arc<Registry>> {
        let cell = self
            .clients
            .lock()
            .await
            .entry(host.to_owned())
            .or_default()
            .clone();
        cell.get_or_try_init(|| async {
            // A credential helper is another program (up to 30 s): not on a runtime thread.
            let (authfile, name) = (self.authfile.clone(), host.to_owned());
            let creds = tokio::task::spawn_blocking(move || {
                crate::auth::lookup(authfile.as_deref(), &name, None)
            })
            .await
            .map_err(|e| crate::error::Error::internal(format!("credentials lookup: {e}")))??;
            Ok::<_, crate::error::Error>(Arc::new(
                Registry::connect(host, &self.options, creds).await?,
            ))
        })
        .await
        .cloned()
    }
}

/// How long an opened archive is read before the store is asked whether the object is
/// still the one opened (a worker lives for days; archives are rewritten in place).
const ARCHIVE_RECHECK: Duration = Duration::from_secs(30);
/// Archives kept open at once; beyond, those no task is reading are closed.
const OPEN_ARCHIVES: usize = 16;

/// Every kind of store a process can reach: registries with its own credentials, its
/// blob cache, and archives (each opened once while it stays the same object).
pub struct Stores {
    pub registries: Arc<RegistryPool>,
    pub cache: Option<Arc<BlobCache>>,
    archives: Mutex<HashMap<String, OpenArchive>>,
    recheck: Duration,
}

/// An archive opened (or being opened), and when its object was last found unchanged.
struct OpenArchive {
    cell: Arc<OnceCell<Arc<ArchiveReader>>>,
    checked: Instant,
}

impl OpenArchive {
    fn new(cell: Arc<OnceCell<Arc<ArchiveReader>>>) -> Self {
        Self {
            cell,
            checked: Instant::now(),
        }
    }
}

impl Stores {
    pub fn new(registries: Arc<RegistryPool>, cache: Option<Arc<BlobCache>>) -> Self {
        Self {
            registries,
            cache,
            archives: Mutex::new(HashMap::new()),
            recheck: ARCHIVE_RECHECK,
        }
    }

    /// The archive at `location`, opened (directory and index read) once, and again when
    /// the object was replaced since.
    pub async fn archive(&self, location: &str) -> Result<Arc<ArchiveReader>> {
        let (cell, due) = {
            let mut open = self.archives.lock().await;
            if !open.contains_key(location) && open.len() >= OPEN_ARCHIVES {
                // Closed unless it is being opened or a task holds its reader (the map's
                // is then not the only reference).
                open.retain(|_, a| a.cell.get().is_none_or(|r| Arc::strong_count(r) > 1));
            }
            let slot = open
                .entry(location.to_owned())
                .or_insert_with(|| OpenArchive::new(Arc::default()));
            (slot.cell.clone(), slot.checked.elapsed() >= self.recheck)
        };
        // A store that cannot say keeps the reader: its reads fail on their own.
        let cell = if due
            && let Some(reader) = cell.get()
            && let Ok(unchanged) = reader.unchanged().await
        {
            let fresh = match unchanged {
                true => OpenArchive::new(cell.clone()),
                false => OpenArchive::new(Arc::default()),
            };
            let mut open = self.archives.lock().await;
            match open.get(location) {
                // Another caller found it replaced meanwhile: its reader is the newer.
                Some(slot) if !Arc::ptr_eq(&slot.cell, &cell) => slot.cell.clone(),
                _ => {
                    let cell = fresh.cell.clone();
                    open.insert(location.to_owned(), fresh);
                    cell
                }
            }
        } else {
            cell
        };
        cell.get_or_try_init(|| async { Ok(Arc::new(ArchiveReader::open(location).await?)) })
            .await
            .cloned()
    }

    /// Asks after an opened archive's object this often instead ([`ARCHIVE_RECHECK`]).
    #[cfg(test)]
    pub(crate) fn rechecking_every(mut self, every: Duration) -> Self {
        self.recheck = every;
        self
    }

    /// Registers an archive already opened, so its directory is not read again.
    pub async fn add_archive(&self, location: &str, archive: Arc<ArchiveReader>) {
        let cell = Arc::new(OnceCell::new_with(Some(archive)));
        let mut open = self.archives.lock().await;
        open.insert(location.to_owned(), OpenArchive::new(cell));
    }
}

#[async_trait]
impl StoreResolver for Stores {
    async fn resolve(&self, store: &StoreRef) -> Result<Arc<dyn ImageStore>> {
        match store {
            StoreRef::Registry { host } => Ok(self.registries.registry(host).await?),
            StoreRef::Cache => match &self.cache {
                Some(c) => Ok(c.clone()),
                None => Err(Error::invalid(
                    "this task needs a blob cache and none is configured (--cache)",
                )),
            },
            StoreRef::Archive { location } => Ok(self.archive(location).await?),
        }
    }
}
