//! The blob cache, on object_store: a local directory by default, any S3-compatible bucket
//! for a fleet (`s3://bucket?endpoint=…&region=…`, credentials from the usual `AWS_*`
//! variables). Content-addressed: `blobs/sha256/<hex>`, with a sidecar
//! `blobs/sha256/<hex>.meta` (`{"size":…,"crc32":…}`) so archives can be laid out before any
//! byte is read. A blob is written by multipart upload and completed only once the stream
//! has passed digest verification (the verifier holds the last chunk back); otherwise the
//! upload is aborted and nothing is committed. Writes of one digest are idempotent, so
//! no locks are needed. A run's own cache (`BlobCache::for_run`) holds small blobs in memory
//! instead ([`held`]).

mod held;
mod stores;

pub use stores::{DigestChecked, archive_source};

use std::sync::Arc;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{Error, FailureClass, Result};
use crate::manifest::Descriptor;
use crate::verify::{ByteStream, verified};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobMeta {
    pub size: u64,
    pub crc32: u32,
}

#[derive(Debug, Clone)]
pub struct BlobCache {
    store: Arc<dyn ObjectStore>,
    label: String,
    /// Bytes gathered before a fill writes them: S3's smallest part for a bucket; small
    /// for a directory, where a part is one write and memory is what a fill holds.
    part_size: usize,
    /// Small blobs kept in memory: a run's own cache only, whose entries die with it.
    held: Option<Arc<held::Held>>,
}

/// S3's smallest multipart part (but the last).
const S3_PART: usize = 5 << 20;
/// A directory cache's writes: what a fill holds at most, times the two in flight.
const LOCAL_PART: usize = 256 << 10;
/// What a run's own cache holds in memory at most: the manifests and configs of a few
/// thousand images; the rest goes to its directory.
const RUN_HELD: u64 = 8 << 20;

/// The largest sidecar record read (a size and a CRC-32 in JSON: some 40 bytes).
const META_LIMIT: u64 = 4 << 10;
/// The largest document read whole (a job's archive plan, an image's inventory).
const DOC_LIMIT: u64 = 64 << 20;

/// An object read whole only within `cap`: the bucket is written by every worker, and one
/// object of gigabytes must not take the memory of each process that looks it up.
async fn capped(got: object_store::GetResult, cap: u64, path: &Path) -> Result<Bytes> {
    if got.meta.size > cap {
        return Err(Error::invalid(format!(
            "blob cache: {path} is {} bytes, more than the {cap} it may be",
            got.meta.size
        )));
    }
    got.bytes().await.map_err(cache_err)
}

fn cache_err(e: impl std::fmt::Display) -> Error {
    Error::new(FailureClass::Network, format!("blob cache: {e}"))
}

fn blob_path(digest: &Digest) -> Path {
    Path::from(format!("blobs/sha256/{}", digest.hex()))
}

fn meta_path(digest: &Digest) -> Path {
    Path::from(format!("blobs/sha256/{}.meta", digest.hex()))
}

/// The bytes of a GET. A local file is read in 1 MiB blocks: object_store's own stream
/// reads 8 KiB per blocking task, which costs more CPU than the copy itself.
pub(crate) fn body_stream(
    got: object_store::GetResult,
    err: impl Fn(object_store::Error) -> Error + Send + Sync + 'static,
) -> ByteStream {
    match got.payload {
        object_store::GetResultPayload::File(file, _) => {
            let range = got.range.clone();
            file_stream(file, range.start, range.end - range.start)
        }
        object_store::GetResultPayload::Stream(s) => s.map_err(err).boxed(),
    }
}

/// `len` bytes of `file` from `start`, read in 1 MiB blocks on blocking threads.
pub(crate) fn file_stream(file: std::fs::File, start: u64, len: u64) -> ByteStream {
    const BLOCK: u64 = 1 << 20;
    let state = (Some(file), start, len);
    futures_util::stream::try_unfold(state, |(file, pos, left)| async move {
        let Some(mut file) = file else {
            return Ok(None);
        };
        if left == 0 {
            return Ok(None);
        }
        let n = left.min(BLOCK);
        let (file, buf) = tokio::task::spawn_blocking(move || {
            use std::io::{Read, Seek, SeekFrom};
            let mut buf = vec![0u8; n as usize];
            file.seek(SeekFrom::Start(pos))?;
            file.read_exact(&mut buf)?;
            Ok::<_, std::io::Error>((file, buf))
        })
        .await
        .map_err(|e| Error::internal(format!("reading a file: {e}")))?
        .map_err(|e| Error::new(FailureClass::Network, format!("reading a file: {e}")))?;
        Ok(Some((Bytes::from(buf), (Some(file), pos + n, left - n))))
    })
    .boxed()
}

/// An S3 bucket from `bucket` and `endpoint=…&region=…` (credentials from the usual `AWS_*`
/// variables); `url` names it in errors. Shared by the cache and archives on S3.
pub(crate) fn s3_store(bucket: &str, query: &str, url: &str) -> Result<Arc<dyn ObjectStore>> {
    // Patient enough to ride out an S3 server restart: object_store's jittered backoff
    // never waits less than `init_backoff`, so 15 retries span at least 7.5 s, and
    // usually tens of seconds.
    let retry = object_store::RetryConfig {
        backoff: object_store::BackoffConfig {
            init_backoff: std::time::Duration::from_millis(500),
            max_backoff: std::time::Duration::from_secs(5),
            base: 2.0,
        },
        max_retries: 15,
        retry_timeout: std::time::Duration::from_secs(120),
    };
    let mut b = object_store::aws::AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_retry(retry);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("endpoint", v)) => {
                b = b.with_endpoint(v).with_allow_http(v.starts_with("http://"))
            }
            Some(("region", v)) => b = b.with_region(v),
            _ => {
                return Err(Error::invalid(format!(
                    "{url:?}: unknown parameter {pair:?}"
                )));
            }
        }
    }
    Ok(Arc::new(
        b.build()
            .map_err(|e| Error::invalid(format!("{url:?}: {e}")))?,
    ))
}

impl BlobCache {
    /// `s3://bucket?endpoint=URL&region=R`, `file:///dir`, or a directory path.
    pub fn open(url: &str) -> Result<Self> {
        let mut part_size = LOCAL_PART;
        let store: Arc<dyn ObjectStore> = if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, query) = rest.split_once('?').unwrap_or((rest, ""));
            part_size = S3_PART;
            s3_store(bucket.trim_end_matches('/'), query, url)?
        } else {
            let dir = url.strip_prefix("file://").unwrap_or(url);
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::invalid(format!("cache directory {dir}: {e}")))?;
            Arc::new(
                object_store::local::LocalFileSystem::new_with_prefix(dir)
                    .map_err(|e| Error::invalid(format!("cache directory {dir}: {e}")))?,
            )
        };
        Ok(Self {
            store,
            label: url.to_owned(),
            part_size,
            held: None,
        })
    }

    /// A cache in `dir` that lives only as long as this run: its small blobs are held in
    /// memory (up to a budget), the rest written to `dir`.
    pub fn for_run(dir: &str) -> Result<Self> {
        Ok(Self {
            held: Some(Arc::new(held::Held::new(RUN_HELD))),
            ..Self::open(dir)?
        })
    }

    fn held_blob(&self, digest: &Digest) -> Option<Bytes> {
        self.held.as_ref()?.get(digest)
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// A bucket (`s3://`), which others may write, rather than a directory of this machine.
    pub fn is_shared(&self) -> bool {
        self.label.starts_with("s3://")
    }

    /// The blob's recorded size and CRC-32, if the cache holds it whole.
    pub async fn meta(&self, digest: &Digest) -> Result<Option<BlobMeta>> {
        if let Some(held) = &self.held {
            return Ok(held.meta(digest));
        }
        let bytes = match self.store.get(&meta_path(digest)).await {
            // A record larger than any record is no record: the blob is fetched again,
            // and its fill writes a true one.
            Ok(r) if r.meta.size > META_LIMIT => return Ok(None),
            Ok(r) => capped(r, META_LIMIT, &meta_path(digest)).await?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(cache_err(e)),
        };
        Ok(serde_json::from_slice(&bytes).ok())
    }

    /// A verified stream of the cached blob.
    pub async fn get(
        &self,
        desc: &Descriptor,
        progress: Option<Arc<std::sync::atomic::AtomicU64>>,
    ) -> Result<ByteStream> {
        if let Some(bytes) = self.held_blob(&desc.digest) {
            let once = futures_util::stream::once(std::future::ready(Ok(bytes))).boxed();
            return Ok(verified(once, desc.digest.clone(), desc.size, progress));
        }
        let got = match self.store.get(&blob_path(&desc.digest)).await {
            Ok(g) => g,
            // The sidecar said it was there: a damaged entry, to be evicted and refetched.
            Err(object_store::Error::NotFound { .. }) => {
                return Err(Error::new(
                    FailureClass::NotFound,
                    format!("blob cache: {} is listed but missing", desc.digest),
                ));
            }
            Err(e) => return Err(cache_err(e)),
        };
        let raw = body_stream(got, cache_err);
        Ok(verified(raw, desc.digest.clone(), desc.size, progress))
    }

    /// Writes a blob from `stream` (which should be verified); completes only if the
    /// stream ends without error, and records the sidecar last.
    pub async fn fill(&self, desc: &Descriptor, mut stream: ByteStream) -> Result<BlobMeta> {
        if let Some(room) = self.held.as_ref().and_then(|h| h.reserve(desc.size)) {
            // Its whole size at once: a buffer grown by doubling would keep up to twice the
            // bytes the budget counts.
            let mut bytes = bytes::BytesMut::with_capacity(desc.size as usize);
            while let Some(chunk) = stream.next().await {
                let chunk = chunk?;
                if (bytes.len() + chunk.len()) as u64 > desc.size {
                    return Err(Error::new(
                        FailureClass::DigestMismatch,
                        format!("{}: more than its {} bytes", desc.digest, desc.size),
                    ));
                }
                bytes.extend_from_slice(&chunk);
            }
            if bytes.len() as u64 != desc.size {
                return Err(Error::new(
                    FailureClass::DigestMismatch,
                    format!(
                        "{}: {} bytes, {} expected",
                        desc.digest,
                        bytes.len(),
                        desc.size
                    ),
                ));
            }
            return Ok(room.keep(desc.digest.clone(), bytes.freeze()));
        }
        let upload = self
            .store
            .put_multipart(&blob_path(&desc.digest))
            .await
            .map_err(cache_err)?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, self.part_size);
        let mut crc = crc32fast::Hasher::new();
        let mut size = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk: Bytes = match chunk {
                Ok(c) => c,
                Err(e) => {
                    let _ = writer.abort().await;
                    return Err(e);
                }
            };
            crc.update(&chunk);
            size += chunk.len() as u64;
            writer.put(chunk);
            // Bounded memory: at most two parts in flight.
            if let Err(e) = writer.wait_for_capacity(2).await {
                let _ = writer.abort().await;
                return Err(cache_err(e));
            }
        }
        writer.finish().await.map_err(cache_err)?;
        let meta = BlobMeta {
            size,
            crc32: crc.finalize(),
        };
        let json = serde_json::to_vec(&meta).map_err(|e| Error::internal(e.to_string()))?;
        self.store
            .put(&meta_path(&desc.digest), PutPayload::from(json))
            .await
            .map_err(cache_err)?;
        if let Some(held) = &self.held {
            held.written(&desc.digest, meta);
        }
        Ok(meta)
    }

    /// Keeps a small document (a job's archive plan) under `archives/…`.
    pub async fn put_doc(&self, key: &str, bytes: Vec<u8>) -> Result<()> {
        self.put_named(&format!("archives/{key}"), bytes).await
    }

    pub async fn get_doc(&self, key: &str) -> Result<Bytes> {
        self.get_named(&format!("archives/{key}")).await
    }

    /// A small object at `key` (documents beside the blobs: plans, inventories).
    pub async fn put_named(&self, key: &str, bytes: Vec<u8>) -> Result<()> {
        self.store
            .put(&Path::from(key), PutPayload::from(bytes))
            .await
            .map_err(cache_err)
            .map(drop)
    }

    pub async fn get_named(&self, key: &str) -> Result<Bytes> {
        match self.store.get(&Path::from(key)).await {
            Ok(r) => capped(r, DOC_LIMIT, &Path::from(key)).await,
            Err(object_store::Error::NotFound { .. }) => {
                Err(Error::not_found(format!("blob cache: no {key}")))
            }
            Err(e) => Err(cache_err(e)),
        }
    }

    /// Forgets a blob (one that failed verification on the way out).
    pub async fn evict(&self, digest: &Digest) {
        if let Some(held) = &self.held {
            held.remove(digest);
        }
        let _ = self.store.delete(&meta_path(digest)).await;
        let _ = self.store.delete(&blob_path(digest)).await;
    }
}

#[cfg(test)]
mod tests {
    use futures_util::TryStreamExt;

    use super::stores::octet;
    use super::*;

    /// A descriptor of `bytes`, as the cache's own are.
    pub(super) fn desc(bytes: &[u8]) -> Descriptor {
        octet(&Digest::of(bytes), bytes.len() as u64)
    }

    pub(super) fn stream_of(bytes: &'static [u8]) -> ByteStream {
        futures_util::stream::iter(vec![
            Ok(Bytes::from_static(&bytes[..3])),
            Ok(Bytes::from_static(&bytes[3..])),
        ])
        .boxed()
    }

    /// The bucket is every worker's to write: a sidecar or a document past what one can
    /// be is not read whole (a sidecar so large is no record; a document is refused).
    #[tokio::test]
    async fn objects_past_their_size_are_not_read_whole() {
        let dir = tempfile_dir();
        let cache = BlobCache::open(dir.to_str().unwrap()).unwrap();
        let d = desc(b"hello cache");
        let big = vec![b' '; (META_LIMIT + 1) as usize];
        cache
            .put_named(meta_path(&d.digest).as_ref(), big)
            .await
            .unwrap();
        assert!(cache.meta(&d.digest).await.unwrap().is_none());
        std::fs::create_dir_all(dir.join("archives")).unwrap();
        let file = std::fs::File::create(dir.join("archives/huge.json")).unwrap();
        file.set_len(DOC_LIMIT + 1).unwrap();
        let e = cache.get_doc("huge.json").await.unwrap_err();
        assert!(e.message.contains("more than the"), "{}", e.message);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn fills_verifies_and_serves_with_sidecar() {
        let dir = tempfile_dir();
        let cache = BlobCache::open(dir.to_str().unwrap()).unwrap();
        let d = desc(b"hello cache");
        assert!(cache.meta(&d.digest).await.unwrap().is_none());
        let meta = cache
            .fill(
                &d,
                verified(stream_of(b"hello cache"), d.digest.clone(), d.size, None),
            )
            .await
            .unwrap();
        assert_eq!(
            meta,
            BlobMeta {
                size: 11,
                crc32: crc32fast::hash(b"hello cache")
            }
        );
        assert_eq!(cache.meta(&d.digest).await.unwrap(), Some(meta));
        let back: Vec<Bytes> = cache
            .get(&d, None)
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        assert_eq!(back.concat(), b"hello cache");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn wrong_bytes_are_never_committed() {
        let dir = tempfile_dir();
        let cache = BlobCache::open(dir.to_str().unwrap()).unwrap();
        let d = desc(b"hello cache");
        let err = cache
            .fill(
                &d,
                verified(stream_of(b"hellO cache"), d.digest.clone(), d.size, None),
            )
            .await
            .unwrap_err();
        assert_eq!(err.class, FailureClass::DigestMismatch);
        assert!(cache.meta(&d.digest).await.unwrap().is_none());
        assert!(cache.get(&d, None).await.is_err(), "no blob object either");
        let _ = std::fs::remove_dir_all(dir);
    }

    pub(super) fn tempfile_dir() -> std::path::PathBuf {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        std::env::temp_dir().join(format!("hangar-cache-test-{}-{nanos}", std::process::id()))
    }
}
