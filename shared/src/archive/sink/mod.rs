//! The writer's sinks: where the zip's bytes go, on a blocking thread of their own. The
//! writer (`writer.rs`) decides which entries go in and in which order, and queues them;
//! the thread started here takes them off the queue and streams each into a zip
//! ([`write_items`]), the same code whatever is under it: a temporary file renamed into
//! place when complete (`file.rs`), or an S3 multipart upload completed at the end
//! (`s3.rs`). Blobs stream through in chunks, so memory stays flat whatever their size;
//! zip64 records appear when a size or offset needs them. Kept apart from the planning so
//! each sink's all-or-nothing rule (nothing half-written ever visible) reads in one place.

mod file;
mod s3;
mod writeback;

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use futures_util::StreamExt;

use super::BlobSource;
use super::reader::ArchiveReader;
use super::writer::Item;
use crate::digest::Digest;
use crate::error::{Error, FailureClass, Result};

pub(super) use file::put_in_place;
pub use file::remove_stale;

/// The writer thread; it ends with the archive's size in bytes.
pub(super) type Task = tokio::task::JoinHandle<Result<u64>>;

/// Starts the thread that writes `location` from `items`: `base`'s entries read from
/// `base`, blobs from `source`. A local archive comes back with its temporary file and
/// final path (see [`put_in_place`]); `None` for S3.
pub(super) async fn start(
    location: &str,
    items: tokio::sync::mpsc::Receiver<Item>,
    base: Option<Arc<ArchiveReader>>,
    source: Arc<dyn BlobSource>,
) -> Result<(Task, Option<(PathBuf, PathBuf)>)> {
    let handle = tokio::runtime::Handle::current();
    if location.starts_with("s3://") {
        let task = s3::start(location, items, base, source, handle).await?;
        Ok((task, None))
    } else {
        let (task, local) = file::start(location, items, base, source, handle)?;
        Ok((task, Some(local)))
    }
}

/// A stored entry's options: no compression, DOS attributes, a fixed time (as Hangar's Go
/// writer leaves them), zip64 when its size needs it.
fn entry_options(size: u64) -> zip::write::SimpleFileOptions {
    zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .system(zip::System::Dos)
        .last_modified_time(zip::DateTime::default())
        .large_file(size >= zip::ZIP64_BYTES_THR)
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
    // Images isolated (a blob that cannot be read fails its images, not the archive), and
    // the blobs that could not be read.
    let mut isolated = false;
    let mut unread: HashMap<Digest, Error> = HashMap::new();
    loop {
        let Some(item) = items.blocking_recv() else {
            return Err(Error::new(
                FailureClass::Cancelled,
                format!("{label}: abandoned before it was complete"),
            ));
        };
        let (name, size, mut stream) = match item {
            Item::End => break,
            Item::Isolate => {
                isolated = true;
                continue;
            }
            Item::Written(blobs, tx) => {
                let _ = tx.send(blobs.iter().find_map(|d| unread.get(d).cloned()));
                continue;
            }
            Item::Unread(tx) => {
                let _ = tx.send(unread.clone());
                continue;
            }
            Item::Inline(name, data) => {
                zip.start_file(name.as_str(), entry_options(data.len() as u64))
                    .map_err(|e| werr(&e))?;
                zip.write_all(&data).map_err(|e| werr(&e))?;
                continue;
            }
            Item::Base(name, size) => {
                let base = base.ok_or_else(|| Error::internal("base entry without a base"))?;
                let stream = handle.block_on(base.crc_checked_stream(&name))?;
                (name, size, stream)
            }
            Item::Blob(name, d, size) => {
                // Its first bytes before its entry: a blob that cannot be read at all
                // leaves no entry behind, and, isolated, only fails the images naming it.
                let opened = handle.block_on(async {
                    let mut stream = source.blob_stream(&d, size).await?;
                    let first = stream.next().await.transpose()?;
                    Ok::<_, Error>((stream, first))
                });
                let (rest, first) = match opened {
                    Ok(opened) => opened,
                    Err(e) if isolated => {
                        unread.insert(d, e);
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                // An empty blob's stream has ended: it is not asked again (unfold-built
                // streams panic when polled past their end).
                let stream = match first {
                    Some(first) => futures_util::stream::iter([Ok(first)]).chain(rest).boxed(),
                    None => futures_util::stream::empty().boxed(),
                };
                (name, size, stream)
            }
        };
        zip.start_file(name.as_str(), entry_options(size))
            .map_err(|e| werr(&e))?;
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::archive::writer::write_archive;
    use crate::archive::{ArchiveImage, ImageSpec};
    use crate::digest::Digest;

    /// Serves blobs of zeros (the writer trusts its source; verification is the source's),
    /// built as the real sources build theirs: `unfold`, which panics when polled past its
    /// end.
    struct Zeros(std::collections::HashMap<Digest, u64>);

    #[async_trait::async_trait]
    impl BlobSource for Zeros {
        async fn blob_size(&self, d: &Digest) -> Result<Option<u64>> {
            Ok(self.0.get(d).copied())
        }
        async fn blob_stream(&self, _d: &Digest, size: u64) -> Result<crate::verify::ByteStream> {
            let chunk = bytes::Bytes::from(vec![0u8; 1 << 20]);
            let pieces = futures_util::stream::unfold(size, move |left| {
                let chunk = chunk.clone();
                async move {
                    let n = left.min(chunk.len() as u64);
                    (n > 0).then(|| (Ok(chunk.slice(..n as usize)), left - n))
                }
            });
            Ok(pieces.boxed())
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

    /// `docker.io/library/<name>:1`, one linux/amd64 platform of `manifest` and `layers`.
    fn one_image(name: &str, manifest: &Digest, layers: Vec<Digest>) -> Vec<ArchiveImage> {
        let spec = ImageSpec {
            layers,
            arch: "amd64".into(),
            os: "linux".into(),
            ..ImageSpec::bare(manifest.clone())
        };
        vec![ArchiveImage::new(
            format!("docker.io/library/{name}"),
            "1".into(),
            vec![spec],
        )]
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_empty_blob_is_an_empty_entry() {
        let (manifest, layer) = (Digest::of(b"manifest"), Digest::of(b""));
        let source = Arc::new(Zeros([(manifest.clone(), 100), (layer.clone(), 0)].into()));
        let images = one_image("empty", &manifest, vec![layer.clone()]);
        let out = temp("empty");
        write_archive(out.to_str().unwrap(), None, &images, source)
            .await
            .expect("written");
        let reader = ArchiveReader::open(out.to_str().unwrap()).await.unwrap();
        assert_eq!(reader.blob_size(&layer), Some(0));
        assert_eq!(reader.index.list, images);
        let _ = std::fs::remove_file(out);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn zip64_when_an_entry_passes_4_gib() {
        let (manifest, layer) = (Digest::of(b"manifest"), Digest::of(b"layer"));
        let big = (4u64 << 30) + 12345;
        let source = Arc::new(Zeros(
            [(manifest.clone(), 100), (layer.clone(), big)].into(),
        ));
        let images = one_image("big", &manifest, vec![layer.clone()]);
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

    /// An archive whose index a reader would refuse (past 64 MiB) is not written: the
    /// write fails naming the size, and nothing is left at the destination.
    #[tokio::test(flavor = "multi_thread")]
    async fn an_index_past_what_readers_take_is_not_written() {
        let (manifest, layer) = (Digest::of(b"manifest"), Digest::of(b"layer"));
        let source = Arc::new(Zeros([(manifest.clone(), 10), (layer.clone(), 10)].into()));
        let mut images = one_image("huge", &manifest, vec![layer]);
        images[0].images[0]
            .annotations
            .insert("note".into(), "a".repeat(65 << 20));
        let out = temp("huge-index");
        let e = write_archive(out.to_str().unwrap(), None, &images, source)
            .await
            .unwrap_err();
        assert!(
            e.message.contains("index.json would be 65 MiB"),
            "{}",
            e.message
        );
        assert!(!out.exists());
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
        let images = one_image("many", &manifest, layers.clone());
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
