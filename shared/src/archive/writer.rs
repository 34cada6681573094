//! The assembler: writes a Hangar archive from blobs held by a [`BlobSource`] (the blob
//! cache for save and sync, other archives for merge and export). This file is the
//! planning: which entries go into the zip and in which order (each image's layouts, then
//! its blobs not written yet, sorted; the index last), queued as `Item`s while later
//! images are still being fetched. Where the bytes go is the sinks' business (`sink/`: a
//! temporary file renamed into place, or an S3 multipart upload, fed by a blocking writer
//! thread), and how images are split among volumes is `volumes.rs`'s; both are re-exported
//! here so callers keep one path. `sync` is the same write with the old archive's entries
//! copied first.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use super::index::{ArchiveImage, ArchiveIndex, INDEX_VERSION, go_time_now};
use super::reader::ArchiveReader;
use super::sink::{self, Task};
use super::{BlobSource, INDEX_NAME, OCI_LAYOUT, blob_entry};
use crate::digest::Digest;
use crate::error::{Error, Result};

pub use super::sink::remove_stale;
pub use super::volumes::{plan_volumes, volume_path};

/// What one written archive (or volume) holds.
#[derive(Debug, Clone)]
pub struct Written {
    pub path: PathBuf,
    pub images: usize,
    pub entries: usize,
    pub bytes: u64,
}

/// One planned entry, as the writer thread takes it off the queue.
pub(super) enum Item {
    /// An entry of the archive being extended, copied as it is.
    Base(String, u64),
    Inline(String, Vec<u8>),
    Blob(String, Digest, u64),
    /// Everything is queued: complete the zip. A queue that closes without it is abandoned.
    End,
    /// Not entries. From here on a blob that cannot be read at all fails the images that
    /// name it, not the archive.
    Isolate,
    /// Answered once every item before it is written: why one of these blobs could not be
    /// read, if one could not.
    Written(Vec<Digest>, tokio::sync::oneshot::Sender<Option<Error>>),
    /// Answered with the blobs that could not be read and why, once every item before it is
    /// done.
    Unread(tokio::sync::oneshot::Sender<HashMap<Digest, Error>>),
}

/// `<hex>/index.json` as containers/image's OCI layout writes it: one untagged descriptor.
fn layout_index(media_type: &str, digest: &Digest, size: u64) -> Vec<u8> {
    format!(
        r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{media_type}","digest":"{digest}","size":{size}}}]}}"#
    )
    .into_bytes()
}

/// Writes `images` (blobs from `source`) to `location` (a path, or `s3://bucket/key?…`),
/// after every entry of `base` but its index; the new `index.json` lists `base`'s images
/// and then these. A file appears under its name only once complete (temporary name, then
/// rename); an S3 object only once its multipart upload completes.
pub async fn write_archive(
    location: &str,
    base: Option<Arc<ArchiveReader>>,
    images: &[ArchiveImage],
    source: Arc<dyn BlobSource>,
) -> Result<Written> {
    let mut writer = ArchiveWriter::create(location, base, source).await?;
    for image in images {
        writer.add(image).await?;
    }
    writer.finish().await
}

/// How many planned entries may wait for the zip writer.
const QUEUED_ENTRIES: usize = 256;

/// An archive being written: images are added as they become ready (their blobs already in
/// the source) and stream into the zip while later ones are still being fetched. Nothing
/// appears at the location until [`ArchiveWriter::finish`]; dropped unfinished, the
/// temporary file is removed and an upload aborted.
pub struct ArchiveWriter {
    location: String,
    source: Arc<dyn BlobSource>,
    /// Entry names planned so far: shared blobs and layouts are written once.
    written: HashSet<String>,
    index: ArchiveIndex,
    entries: usize,
    tx: Option<tokio::sync::mpsc::Sender<Item>>,
    task: Option<Task>,
    /// A local archive's temporary file and final path; `None` for S3.
    local: Option<(PathBuf, PathBuf)>,
    /// A blob that cannot be read fails only the images naming it ([`Self::isolate_images`]).
    isolated: bool,
}

impl ArchiveWriter {
    /// Starts writing `location`; `base`'s entries (all but its index) go first.
    pub async fn create(
        location: &str,
        base: Option<Arc<ArchiveReader>>,
        source: Arc<dyn BlobSource>,
    ) -> Result<Self> {
        let (tx, rx) = tokio::sync::mpsc::channel(QUEUED_ENTRIES);
        let (task, local) = sink::start(location, rx, base.clone(), source.clone()).await?;
        let mut writer = Self {
            location: location.to_owned(),
            source,
            written: HashSet::new(),
            index: ArchiveIndex {
                list: Vec::new(),
                version: INDEX_VERSION.to_owned(),
                time: go_time_now(),
            },
            entries: 0,
            tx: Some(tx),
            task: Some(task),
            local,
            isolated: false,
        };
        if let Some(base) = &base {
            for e in base.entries() {
                if e.name != INDEX_NAME && writer.written.insert(e.name.clone()) {
                    writer.send(Item::Base(e.name.clone(), e.size)).await?;
                }
            }
            writer.index.list.extend(base.index.list.iter().cloned());
        }
        Ok(writer)
    }

    /// Queues one image: its layouts and the blobs not written yet, in Hangar's order.
    pub async fn add(&mut self, image: &ArchiveImage) -> Result<()> {
        let mut specs: Vec<_> = image.images.iter().collect();
        specs.sort_by(|a, b| a.digest.hex().cmp(b.digest.hex()));
        for spec in &specs {
            let dir = spec.digest.hex().to_owned();
            if self.written.insert(format!("{dir}/index.json")) {
                let size = size_of(self.source.as_ref(), &spec.digest, image).await?;
                self.send(Item::Inline(
                    format!("{dir}/index.json"),
                    layout_index(&spec.media_type, &spec.digest, size),
                ))
                .await?;
                self.written.insert(format!("{dir}/oci-layout"));
                self.send(Item::Inline(
                    format!("{dir}/oci-layout"),
                    OCI_LAYOUT.as_bytes().to_vec(),
                ))
                .await?;
            }
        }
        let mut blobs: Vec<&Digest> = specs.iter().flat_map(|s| s.blobs()).collect();
        blobs.sort_by(|a, b| a.hex().cmp(b.hex()));
        blobs.dedup();
        for d in blobs {
            let name = blob_entry(d);
            if self.written.insert(name.clone()) {
                let size = size_of(self.source.as_ref(), d, image).await?;
                self.will_read(d).await?;
                self.send(Item::Blob(name, d.clone(), size)).await?;
            }
        }
        self.index.list.push(image.clone());
        Ok(())
    }

    /// From now on a blob that cannot be read at all (its source has lost it, refuses it)
    /// fails the images that name it, which [`Self::written`] then says and the index leaves
    /// out, instead of the archive. Bytes already in an entry when a blob fails still fail
    /// the archive: the zip is written straight through.
    pub async fn isolate_images(&mut self) -> Result<()> {
        self.isolated = true;
        self.send_mark(Item::Isolate).await
    }

    /// Answers once every entry queued so far is written into the zip (dropped unanswered
    /// if the writing fails first; what `add` queued is only queued): `None` when `image` is
    /// whole, or why one of its blobs could not be read.
    pub async fn written(
        &mut self,
        image: &ArchiveImage,
    ) -> Result<tokio::sync::oneshot::Receiver<Option<Error>>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let blobs = image
            .images
            .iter()
            .flat_map(|s| s.blobs())
            .cloned()
            .collect();
        self.send_mark(Item::Written(blobs, tx)).await?;
        Ok(rx)
    }

    /// Tells the source `d` is next but one, or fails with the writer thread's error if it
    /// stops meanwhile: a source waiting for room (its fetches ahead waiting for a turn
    /// that a dead writer will never give) would wait for ever.
    async fn will_read(&mut self, d: &Digest) -> Result<()> {
        let Some(tx) = self.tx.clone() else {
            return Err(self.stopped().await);
        };
        let source = self.source.clone();
        let told = tokio::select! {
            told = source.will_read(d) => Some(told),
            () = tx.closed() => None,
        };
        match told {
            Some(told) => told,
            None => Err(self.stopped().await),
        }
    }

    /// Queues what is not an entry.
    async fn send_mark(&mut self, item: Item) -> Result<()> {
        self.send(item).await?;
        self.entries -= 1;
        Ok(())
    }

    /// Drops `source:tag` from the index being written (its entries stay, unreferenced):
    /// an image added under the same name replaces it. Whether it was there.
    pub fn forget(&mut self, source: &str, tag: &str) -> bool {
        let before = self.index.list.len();
        self.index
            .list
            .retain(|i| !(i.source == source && i.tag == tag));
        self.index.list.len() != before
    }

    /// Writes the index, completes the zip and puts it in place. Isolated, the images
    /// naming a blob that could not be read are left out of the index.
    pub async fn finish(mut self) -> Result<Written> {
        if self.isolated {
            let (tx, rx) = tokio::sync::oneshot::channel();
            self.send_mark(Item::Unread(tx)).await?;
            let unread = match rx.await {
                Ok(unread) => unread,
                Err(_) => return Err(self.stopped().await),
            };
            // A blob not read is no entry.
            self.entries -= unread.len();
            let whole = |i: &ArchiveImage| {
                !i.images
                    .iter()
                    .flat_map(|s| s.blobs())
                    .any(|d| unread.contains_key(d))
            };
            self.index.list.retain(whole);
            // Nothing left to carry: no archive (dropped, its temporary file goes).
            if self.index.list.is_empty()
                && let Some(e) = unread.into_values().next()
            {
                return Err(Error::new(
                    e.class,
                    format!(
                        "{}: no image could be written into it; {}",
                        self.location, e.message
                    ),
                ));
            }
        }
        let index = self.index.to_go_json()?;
        // What a reader takes (`reader::JSON_LIMIT`): an archive this writes must read back.
        // Failing here leaves no archive (its temporary file goes), not one no load reads.
        if index.len() as u64 > super::reader::JSON_LIMIT {
            return Err(Error::invalid(format!(
                "{}: its index.json would be {} MiB, past the {} MiB an archive's index may be; \
                 save the images into more than one archive",
                self.location,
                index.len() >> 20,
                super::reader::JSON_LIMIT >> 20
            )));
        }
        self.send(Item::Inline(INDEX_NAME.to_owned(), index))
            .await?;
        let entries = self.entries;
        self.send(Item::End).await?;
        self.tx = None;
        let bytes = self.join().await?;
        let path = match self.local.take() {
            None => PathBuf::from(&self.location),
            Some((temp, path)) => sink::put_in_place(temp, path)?,
        };
        Ok(Written {
            path,
            images: self.index.list.len(),
            entries,
            bytes,
        })
    }

    async fn send(&mut self, item: Item) -> Result<()> {
        let sent = match &self.tx {
            Some(tx) => tx.send(item).await.is_ok(),
            None => false,
        };
        if sent {
            self.entries += 1;
            return Ok(());
        }
        Err(self.stopped().await)
    }

    /// Why the writer thread stopped: its error says.
    async fn stopped(&mut self) -> Error {
        self.tx = None;
        match self.join().await {
            Err(e) => e,
            Ok(_) => Error::internal("the archive writer ended early"),
        }
    }

    async fn join(&mut self) -> Result<u64> {
        let task = self
            .task
            .take()
            .ok_or_else(|| Error::internal("the archive writer already ended"))?;
        let result = task
            .await
            .map_err(|e| Error::internal(format!("archive writer: {e}")))
            .and_then(|r| r);
        if result.is_err()
            && let Some((temp, _)) = self.local.take()
        {
            let _ = std::fs::remove_file(&temp);
        }
        result
    }
}

impl Drop for ArchiveWriter {
    /// Unfinished: the writer thread sees the queue close without an end and gives up (an
    /// upload is aborted); the temporary file goes.
    fn drop(&mut self) {
        self.tx = None;
        if let Some((temp, _)) = self.local.take() {
            let _ = std::fs::remove_file(&temp);
        }
    }
}

async fn size_of(source: &dyn BlobSource, d: &Digest, image: &ArchiveImage) -> Result<u64> {
    source.blob_size(d).await?.ok_or_else(|| {
        Error::not_found(format!(
            "blob {d} of image {} is not available to write into the archive",
            image.name()
        ))
    })
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;
    use crate::archive::ImageSpec;

    #[tokio::test]
    async fn writes_hangars_layout_and_reads_it_back_by_range() {
        use crate::cache::BlobCache;
        use crate::verify::verified;
        use futures_util::TryStreamExt;

        let dir = std::env::temp_dir().join(format!(
            "hangar-archive-test-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        ));
        let cache = Arc::new(BlobCache::open(dir.join("cache").to_str().unwrap()).unwrap());
        let put = |bytes: &'static [u8]| {
            let cache = cache.clone();
            async move {
                let d = Digest::of(bytes);
                let desc = crate::manifest::Descriptor {
                    media_type: String::new(),
                    digest: d.clone(),
                    size: bytes.len() as u64,
                    urls: None,
                    annotations: None,
                    platform: None,
                };
                let once = futures_util::stream::once(std::future::ready(Ok(
                    bytes::Bytes::from_static(bytes),
                )))
                .boxed();
                cache
                    .fill(&desc, verified(once, d.clone(), desc.size, None))
                    .await
                    .unwrap();
                d
            }
        };
        let layer = put(b"layer bytes").await;
        let config = put(br#"{"architecture":"amd64","os":"linux"}"#).await;
        const MANIFEST: &[u8] =
            br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#;
        let manifest = put(MANIFEST).await;
        let spec = ImageSpec {
            arch: "amd64".into(),
            os: "linux".into(),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            layers: vec![layer.clone()],
            config: Some(config.clone()),
            ..ImageSpec::bare(manifest.clone())
        };
        let images = vec![
            ArchiveImage::new("docker.io/library/a".into(), "1".into(), vec![spec.clone()]),
            ArchiveImage::new("docker.io/library/b".into(), "1".into(), vec![spec.clone()]),
        ];
        let out = dir.join("out.zip");
        let written = write_archive(out.to_str().unwrap(), None, &images, cache.clone())
            .await
            .unwrap();
        assert_eq!(written.images, 2);
        let reader = ArchiveReader::open(out.to_str().unwrap()).await.unwrap();
        let names: Vec<&str> = reader.entries().iter().map(|e| e.name.as_str()).collect();
        let mut share = vec![
            blob_entry(&layer),
            blob_entry(&config),
            blob_entry(&manifest),
        ];
        share.sort();
        let h = manifest.hex();
        let mut expected = vec![format!("{h}/index.json"), format!("{h}/oci-layout")];
        expected.extend(share);
        expected.push("index.json".into());
        assert_eq!(names, expected, "each blob once, index last");
        assert_eq!(reader.index.list, images);
        let back: Vec<bytes::Bytes> = reader
            .blob(&layer, None)
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        assert_eq!(back.concat(), b"layer bytes");
        let layout = reader.read_entry(&format!("{h}/index.json")).await.unwrap();
        assert_eq!(
            std::str::from_utf8(&layout).unwrap(),
            format!(
                r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{manifest}","size":{}}}]}}"#,
                MANIFEST.len()
            )
        );
        assert!(
            std::fs::read_dir(&dir).unwrap().all(|e| !e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains("partial")),
            "no temporary file left"
        );

        // A process that keeps archives open (a worker) reads one rewritten in place (a
        // later save to the same location) through its new directory, not the old one.
        let pool = Arc::new(crate::store::RegistryPool::new(Default::default(), None));
        let stores =
            crate::store::Stores::new(pool, None).rechecking_every(std::time::Duration::ZERO);
        let location = out.to_str().unwrap();
        assert_eq!(stores.archive(location).await.unwrap().index.list.len(), 2);
        let again = dir.join("again.zip");
        write_archive(again.to_str().unwrap(), None, &images[..1], cache.clone())
            .await
            .unwrap();
        std::fs::rename(&again, &out).unwrap();
        let reopened = stores.archive(location).await.unwrap();
        assert_eq!(
            reopened.index.list,
            images[..1],
            "read through its new directory"
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
