//! The assembler: writes a Hangar archive from blobs held by a [`BlobSource`] (the blob
//! cache for save and sync, other archives for merge and export). Blobs stream through in
//! chunks, so memory stays flat whatever their size; zip64 records appear when a size or
//! offset needs them. The zip is written beside its destination under a temporary name,
//! flushed to disk and renamed into place, so a crash leaves the old archive (or none),
//! never a half-written one. `sync` is the same write with the old archive's entries copied
//! first.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::StreamExt;
use object_store::{ObjectStoreExt, WriteMultipart};

use super::index::{ArchiveImage, ArchiveIndex, INDEX_VERSION, go_time_now};
use super::reader::ArchiveReader;
use super::{BlobSource, INDEX_NAME, OCI_LAYOUT, blob_entry};
use crate::digest::Digest;
use crate::error::{Error, FailureClass, Result};

/// What one written archive (or volume) holds.
#[derive(Debug, Clone)]
pub struct Written {
    pub path: PathBuf,
    pub images: usize,
    pub entries: usize,
    pub bytes: u64,
}

enum Item {
    /// An entry of the archive being extended, copied as it is.
    Base(String, u64),
    Inline(String, Vec<u8>),
    Blob(String, Digest, u64),
    /// Everything is queued: complete the zip. A queue that closes without it is abandoned.
    End,
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
    task: Option<tokio::task::JoinHandle<Result<u64>>>,
    /// A local archive's temporary file and final path; `None` for S3.
    local: Option<(PathBuf, PathBuf)>,
}

impl ArchiveWriter {
    /// Starts writing `location`; `base`'s entries (all but its index) go first.
    pub async fn create(
        location: &str,
        base: Option<Arc<ArchiveReader>>,
        source: Arc<dyn BlobSource>,
    ) -> Result<Self> {
        let handle = tokio::runtime::Handle::current();
        let (tx, rx) = tokio::sync::mpsc::channel(QUEUED_ENTRIES);
        let label = location.to_owned();
        let writer_source = source.clone();
        let writer_base = base.clone();
        let (task, local) = if location.starts_with("s3://") {
            let (store, key) = super::locate(location)?;
            let upload = store
                .put_multipart(&key)
                .await
                .map_err(|e| Error::new(FailureClass::Network, format!("{location}: {e}")))?;
            let out = ObjectWriter {
                upload: Some(WriteMultipart::new(upload)),
                handle: handle.clone(),
                written: 0,
            };
            let task = tokio::task::spawn_blocking(move || {
                let _guard = handle.enter();
                let mut out = write_items(
                    out,
                    &label,
                    rx,
                    writer_base.as_deref(),
                    writer_source.as_ref(),
                    &handle,
                )?;
                let upload = out
                    .upload
                    .take()
                    .ok_or_else(|| Error::internal("upload already finished"))?;
                handle
                    .block_on(upload.finish())
                    .map_err(|e| Error::new(FailureClass::Network, format!("{label}: {e}")))?;
                Ok(out.written)
            });
            (task, None)
        } else {
            let path = Path::new(location);
            let dir = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .to_owned();
            let file_name = path
                .file_name()
                .ok_or_else(|| Error::invalid(format!("{location}: not a file name")))?
                .to_string_lossy()
                .into_owned();
            remove_stale(&dir, &format!(".{file_name}.partial-"));
            let temp = crate::atomic::temp_path(path);
            let t = temp.clone();
            let task = tokio::task::spawn_blocking(move || -> Result<u64> {
                let written = (|| {
                    let file = crate::atomic::create_new(&t, None).map_err(|e| io_err(&t, e))?;
                    let label = t.display().to_string();
                    let out = std::io::BufWriter::with_capacity(1 << 20, file);
                    let out = write_items(
                        out,
                        &label,
                        rx,
                        writer_base.as_deref(),
                        writer_source.as_ref(),
                        &handle,
                    )?;
                    let file = out.into_inner().map_err(|e| io_err(&t, e.error()))?;
                    file.sync_all().map_err(|e| io_err(&t, e))?;
                    Ok(file.metadata().map_err(|e| io_err(&t, e))?.len())
                })();
                // Abandoned before this thread even started, the writer could not remove it.
                if written.is_err() {
                    let _ = std::fs::remove_file(&t);
                }
                written
            });
            (task, Some((temp, path.to_owned())))
        };
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
                self.send(Item::Blob(name, d.clone(), size)).await?;
            }
        }
        self.index.list.push(image.clone());
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

    /// Writes the index, completes the zip and puts it in place.
    pub async fn finish(mut self) -> Result<Written> {
        let index = self.index.to_go_json()?;
        self.send(Item::Inline(INDEX_NAME.to_owned(), index))
            .await?;
        let entries = self.entries;
        self.send(Item::End).await?;
        self.tx = None;
        let bytes = self.join().await?;
        let path = match self.local.take() {
            None => PathBuf::from(&self.location),
            Some((temp, path)) => {
                std::fs::rename(&temp, &path).map_err(|e| {
                    let _ = std::fs::remove_file(&temp);
                    io_err(&path, e)
                })?;
                // The rename is durable only once the directory is.
                let dir = path
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(Path::new("."));
                if let Ok(d) = std::fs::File::open(dir) {
                    let _ = d.sync_all();
                }
                path
            }
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
        // The writer stopped: its error says why.
        self.tx = None;
        match self.join().await {
            Err(e) => Err(e),
            Ok(_) => Err(Error::internal("the archive writer ended early")),
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

/// An S3 multipart upload as a `Write`, for the zip writer on a blocking thread. Parts go
/// up as they fill, at most two in flight, so memory stays bounded.
struct ObjectWriter {
    upload: Option<WriteMultipart>,
    handle: tokio::runtime::Handle,
    written: u64,
}

impl Write for ObjectWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let upload = self
            .upload
            .as_mut()
            .ok_or_else(|| std::io::Error::other("upload already finished"))?;
        upload.write(buf);
        self.written += buf.len() as u64;
        self.handle
            .block_on(upload.wait_for_capacity(2))
            .map_err(std::io::Error::other)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for ObjectWriter {
    /// An upload not finished is aborted: nothing half-written becomes visible.
    fn drop(&mut self) {
        if let Some(upload) = self.upload.take() {
            self.handle.spawn(async move {
                let _ = upload.abort().await;
            });
        }
    }
}

/// Removes what killed runs left in `dir`: entries named `<prefix><pid>` whose process is
/// gone (a temporary archive, a temporary cache).
pub fn remove_stale(dir: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(prefix)
            .and_then(|p| p.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let path = e.path();
            let _ = std::fs::remove_file(&path).or_else(|_| std::fs::remove_dir_all(&path));
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

fn io_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::invalid(format!("{}: {e}", path.display()))
}

/// Streams every item into a zip on `out`. The zip crate's streaming mode writes each
/// entry's sizes and CRC in a data descriptor after its bytes, as Go's writer (Hangar's)
/// does, so nothing is sought back and the same code feeds a file or an upload.
fn write_items<W: Write>(
    out: W,
    label: &str,
    mut items: tokio::sync::mpsc::Receiver<Item>,
    base: Option<&ArchiveReader>,
    source: &dyn BlobSource,
    handle: &tokio::runtime::Handle,
) -> Result<W> {
    let mut zip = zip::ZipWriter::new_stream(out);
    let werr = |e: &dyn std::fmt::Display| Error::invalid(format!("{label}: {e}"));
    loop {
        let Some(item) = items.blocking_recv() else {
            return Err(Error::new(
                FailureClass::Cancelled,
                format!("{label}: abandoned before it was complete"),
            ));
        };
        let (name, size) = match &item {
            Item::End => break,
            Item::Base(n, size) => (n, *size),
            Item::Inline(n, data) => (n, data.len() as u64),
            Item::Blob(n, _, size) => (n, *size),
        };
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .system(zip::System::Dos)
            .last_modified_time(zip::DateTime::default())
            .large_file(size >= zip::ZIP64_BYTES_THR);
        zip.start_file(name.as_str(), options)
            .map_err(|e| werr(&e))?;
        let mut stream = match &item {
            Item::Inline(_, data) => {
                zip.write_all(data).map_err(|e| werr(&e))?;
                continue;
            }
            Item::Base(n, _) => {
                let base = base.ok_or_else(|| Error::internal("base entry without a base"))?;
                handle.block_on(base.entry_stream(n))?
            }
            Item::Blob(_, d, size) => handle.block_on(source.blob_stream(d, *size))?,
            Item::End => break,
        };
        let mut copied = 0u64;
        while let Some(chunk) = handle.block_on(stream.next()) {
            let chunk = chunk?;
            copied += chunk.len() as u64;
            zip.write_all(&chunk).map_err(|e| werr(&e))?;
        }
        if copied != size {
            return Err(Error::invalid(format!(
                "entry {name:?}: {copied} bytes written, {size} expected"
            )));
        }
    }
    let mut out = zip.finish().map_err(|e| werr(&e))?.into_inner();
    out.flush().map_err(|e| werr(&e))?;
    Ok(out)
}

/// Packs images, in order, into volumes of at most `part_size` bytes of blobs. An image is
/// never split; one bigger than a volume gets a volume of its own, and is reported.
/// `size` gives each blob's size; blobs shared by images in one volume count once.
pub fn plan_volumes(
    images: &[ArchiveImage],
    size: impl Fn(&Digest) -> u64,
    part_size: u64,
) -> (Vec<Vec<ArchiveImage>>, Vec<String>) {
    let mut volumes: Vec<Vec<ArchiveImage>> = Vec::new();
    let mut oversized = Vec::new();
    let mut current: Vec<ArchiveImage> = Vec::new();
    let mut in_volume: HashSet<Digest> = HashSet::new();
    let mut used = 0u64;
    for image in images {
        let own: HashSet<&Digest> = image.images.iter().flat_map(|s| s.blobs()).collect();
        let alone: u64 = own.iter().map(|d| size(d)).sum();
        let added: u64 = own
            .iter()
            .filter(|d| !in_volume.contains(**d))
            .map(|d| size(d))
            .sum();
        if !current.is_empty() && used + added > part_size {
            volumes.push(std::mem::take(&mut current));
            in_volume.clear();
            used = 0;
        }
        if alone > part_size {
            oversized.push(format!(
                "image {} ({alone} bytes) is bigger than the volume size ({part_size} bytes): \
                 its volume holds it alone and exceeds the size",
                image.name()
            ));
        }
        used += own
            .iter()
            .filter(|d| in_volume.insert((**d).clone()))
            .map(|d| size(d))
            .sum::<u64>();
        current.push(image.clone());
    }
    if !current.is_empty() {
        volumes.push(current);
    }
    (volumes, oversized)
}

/// `out.zip` → `out.part1.zip`, … for volume `n` (1-based); an S3 location keeps its query.
pub fn volume_path(location: &str, n: usize) -> String {
    let (path, query) = match location.split_once('?') {
        Some((p, q)) => (p, format!("?{q}")),
        None => (location, String::new()),
    };
    let slash = path.rfind('/').map_or(0, |i| i + 1);
    let (dir, name) = path.split_at(slash);
    let (stem, ext) = match name.rfind('.') {
        Some(i) if i > 0 => name.split_at(i),
        _ => (name, ""),
    };
    format!("{dir}{stem}.part{n}{ext}{query}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::ImageSpec;

    fn d(n: u8) -> Digest {
        Digest::of(&[n])
    }

    fn image(name: &str, blobs: &[u8]) -> ArchiveImage {
        ArchiveImage::new(
            format!("docker.io/library/{name}"),
            "1".into(),
            vec![ImageSpec {
                arch: "amd64".into(),
                os: "linux".into(),
                layers: blobs[1..].iter().map(|b| d(*b)).collect(),
                ..ImageSpec::bare(d(blobs[0]))
            }],
        )
    }

    #[test]
    fn volumes_keep_images_whole_and_count_shared_blobs_once() {
        let images = vec![
            image("a", &[1, 10]),
            image("b", &[2, 10]),
            image("c", &[3, 11]),
            image("d", &[4, 12]),
        ];
        // Manifests weigh 1, layers 10 and 11 weigh 40, 12 weighs 200.
        let size = |x: &Digest| match x {
            x if *x == d(10) || *x == d(11) => 40,
            x if *x == d(12) => 200,
            _ => 1,
        };
        let (volumes, oversized) = plan_volumes(&images, size, 50);
        let names: Vec<Vec<&str>> = volumes
            .iter()
            .map(|v| {
                v.iter()
                    .map(|i| i.source.rsplit('/').next().unwrap())
                    .collect()
            })
            .collect();
        assert_eq!(names, vec![vec!["a", "b"], vec!["c"], vec!["d"]]);
        assert_eq!(oversized.len(), 1);
        assert!(
            oversized[0].contains("docker.io/library/d:1"),
            "{oversized:?}"
        );
    }

    #[test]
    fn volume_names() {
        assert_eq!(volume_path("/x/saved.zip", 2), "/x/saved.part2.zip");
        assert_eq!(volume_path("saved", 1), "saved.part1");
        assert_eq!(
            volume_path("s3://b/dir/a.zip?endpoint=http://h:1", 3),
            "s3://b/dir/a.part3.zip?endpoint=http://h:1"
        );
    }

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
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Serves blobs of zeros (the writer trusts its source; verification is the source's).
    struct Zeros(std::collections::HashMap<Digest, u64>);

    #[async_trait::async_trait]
    impl BlobSource for Zeros {
        async fn blob_size(&self, d: &Digest) -> Result<Option<u64>> {
            Ok(self.0.get(d).copied())
        }
        async fn blob_stream(&self, _d: &Digest, size: u64) -> Result<crate::verify::ByteStream> {
            let chunk = bytes::Bytes::from(vec![0u8; 1 << 20]);
            let full = size / chunk.len() as u64;
            let rest = (size % chunk.len() as u64) as usize;
            let mut chunks: Vec<Result<bytes::Bytes>> =
                (0..full).map(|_| Ok(chunk.clone())).collect();
            if rest > 0 {
                chunks.push(Ok(chunk.slice(..rest)));
            }
            Ok(futures_util::stream::iter(chunks).boxed())
        }
    }

    fn python_count_and_max(path: &Path) -> (usize, u64) {
        let out = std::process::Command::new("python3")
            .args([
                "-c",
                "import sys,zipfile; l=zipfile.ZipFile(sys.argv[1]).infolist(); print(len(l), max(i.file_size for i in l))",
            ])
            .arg(path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut it = text.split_whitespace();
        (
            it.next().unwrap().parse().unwrap(),
            it.next().unwrap().parse().unwrap(),
        )
    }

    fn temp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!(
            "hangar-zip64-{name}-{}-{:?}.zip",
            std::process::id(),
            std::time::SystemTime::now()
        ))
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn zip64_when_an_entry_passes_4_gib() {
        let (manifest, layer) = (Digest::of(b"manifest"), Digest::of(b"layer"));
        let big = (4u64 << 30) + 12345;
        let source = Arc::new(Zeros(
            [(manifest.clone(), 100), (layer.clone(), big)].into(),
        ));
        let spec = ImageSpec {
            layers: vec![layer.clone()],
            arch: "amd64".into(),
            os: "linux".into(),
            ..ImageSpec::bare(manifest.clone())
        };
        let images = vec![ArchiveImage::new(
            "docker.io/library/big".into(),
            "1".into(),
            vec![spec],
        )];
        let out = temp("big");
        let written = write_archive(out.to_str().unwrap(), None, &images, source)
            .await
            .unwrap();
        assert!(written.bytes > big);
        let reader = ArchiveReader::open(out.to_str().unwrap()).await.unwrap();
        assert_eq!(reader.blob_size(&layer), Some(big));
        assert_eq!(
            reader.index.list, images,
            "index.json after the 4 GiB entry reads back"
        );
        assert_eq!(python_count_and_max(&out), (5, big));
        let _ = std::fs::remove_file(out);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn zip64_when_entries_pass_65535() {
        let manifest = Digest::of(b"manifest");
        let layers: Vec<Digest> = (0..70_000u32)
            .map(|i| Digest::of(&i.to_le_bytes()))
            .collect();
        let mut sizes: std::collections::HashMap<Digest, u64> =
            layers.iter().map(|d| (d.clone(), 3)).collect();
        sizes.insert(manifest.clone(), 10);
        let spec = ImageSpec {
            layers: layers.clone(),
            arch: "amd64".into(),
            os: "linux".into(),
            ..ImageSpec::bare(manifest.clone())
        };
        let images = vec![ArchiveImage::new(
            "docker.io/library/many".into(),
            "1".into(),
            vec![spec],
        )];
        let out = temp("many");
        write_archive(out.to_str().unwrap(), None, &images, Arc::new(Zeros(sizes)))
            .await
            .unwrap();
        let reader = ArchiveReader::open(out.to_str().unwrap()).await.unwrap();
        assert_eq!(reader.entries().len(), 70_004);
        assert!(reader.has_blob(&layers[69_999]));
        assert_eq!(python_count_and_max(&out).0, 70_004);
        let _ = std::fs::remove_file(out);
    }
}
