//! An archive's central directory, read and checked before anything else: parsed by the
//! zip crate through byte ranges of the object (at most [`DIRECTORY_LIMIT`] of it), names
//! checked, compressed and repeated entries refused, and each entry given the offset its
//! data must end before, so no two share bytes.

use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

use super::check_entry_name;
use crate::error::{Error, Result};

const WINDOW: u64 = 64 << 10;
/// The most of the file read while the central directory is parsed: some 400,000 entries
/// of this format's names, what the largest index (`reader::JSON_LIMIT`) allows needs (10,000
/// two-platform images of a dozen layers; a full Rancher archive has a few thousand), and
/// what bounds the memory a directory of millions of tiny entries would cost (the zip
/// crate keeps a few hundred bytes for each).
const DIRECTORY_LIMIT: u64 = 48 << 20;

#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    pub(super) header_start: u64,
    /// Stored size (entries are uncompressed, so also the data size).
    pub size: u64,
    pub crc32: u32,
    /// Where the next entry's local header begins (the file's end for the last): its data
    /// must end before, or two entries would share bytes.
    pub(super) limit: u64,
}

/// The entries of the archive `label` (`file_size` bytes at `path`), in directory order.
pub(super) async fn read(
    store: &Arc<dyn ObjectStore>,
    path: &Path,
    file_size: u64,
    label: &str,
) -> Result<Vec<Entry>> {
    let handle = tokio::runtime::Handle::current();
    let (s, p, l) = (store.clone(), path.clone(), label.to_owned());
    let exhausted = Arc::new(std::sync::atomic::AtomicBool::new(false));
    tokio::task::spawn_blocking(move || -> Result<Vec<Entry>> {
        let reader = RangeReader {
            store: s,
            path: p,
            size: file_size,
            pos: 0,
            window: Bytes::new(),
            window_start: 0,
            handle,
            fetch_left: DIRECTORY_LIMIT,
            exhausted: exhausted.clone(),
        };
        let zip = zip::ZipArchive::new(reader).map_err(|e| {
            if exhausted.load(std::sync::atomic::Ordering::Relaxed) {
                Error::invalid(format!(
                    "archive {l}: its central directory is larger than {} MiB, more \
                     entries than an archive this tool reads",
                    DIRECTORY_LIMIT >> 20
                ))
            } else {
                Error::invalid(format!(
                    "archive {l} is not a valid zip file (truncated or damaged?): {e}"
                ))
            }
        })?;
        // Which of two same-named entries a reader takes differs between zip libraries
        // (Go's, Hangar's, the first; this one the last): such an archive means two
        // things, and is refused.
        if zip.has_duplicate_names() {
            return Err(Error::invalid(format!(
                "archive {l}: more than one entry named the same; an archive names each entry once"
            )));
        }
        let meta = zip.metadata();
        let mut out = Vec::with_capacity(meta.len());
        for i in 0..meta.len() {
            let entry = meta
                .entry(i)
                .map_err(|e| Error::invalid(format!("archive {l}: entry {i}: {e}")))?;
            let name = entry
                .name()
                .map_err(|e| Error::invalid(format!("archive {l}: entry {i}: {e}")))?
                .into_owned();
            check_entry_name(&name).map_err(|e| e.context(format!("archive {l}")))?;
            if name.ends_with('/') {
                continue;
            }
            if entry.compression() != zip::CompressionMethod::Stored {
                return Err(Error::invalid(format!(
                    "archive {l}: entry {name:?} is compressed ({}); Hangar archives store \
                     every entry uncompressed",
                    entry.compression()
                )));
            }
            out.push(Entry {
                name,
                header_start: entry.header_start(),
                size: entry.compressed_size(),
                crc32: entry.crc32(),
                limit: file_size,
            });
        }
        bound_by_neighbours(&mut out, &l)?;
        Ok(out)
    })
    .await
    .map_err(|e| Error::internal(format!("reading the zip directory: {e}")))?
}

/// Gives each entry the offset its data must end before (the next local header's), and
/// refuses an archive whose entries cannot fit between their neighbours: entries sharing
/// bytes would let a small archive name terabytes (every prefix of one blob, each a valid
/// digest of its own).
fn bound_by_neighbours(entries: &mut [Entry], label: &str) -> Result<()> {
    let mut by_offset: Vec<usize> = (0..entries.len()).collect();
    by_offset.sort_by_key(|i| entries[*i].header_start);
    for pair in by_offset.windows(2) {
        let (this, next) = (pair[0], pair[1]);
        let limit = entries[next].header_start;
        let least_end = entries[this]
            .header_start
            .checked_add(30 + entries[this].name.len() as u64)
            .and_then(|s| s.checked_add(entries[this].size));
        if least_end.is_none_or(|end| end > limit) {
            return Err(Error::invalid(format!(
                "archive {label}: entries {:?} and {:?} overlap; each entry's bytes are its own",
                entries[this].name, entries[next].name
            )));
        }
        entries[this].limit = limit;
    }
    Ok(())
}

/// `Read + Seek` over byte ranges of an object, for the zip crate's directory parser; runs
/// on a blocking thread and fetches 64 KiB windows.
struct RangeReader {
    store: Arc<dyn ObjectStore>,
    path: Path,
    size: u64,
    pos: u64,
    window: Bytes,
    window_start: u64,
    handle: tokio::runtime::Handle,
    /// Bytes it may still fetch ([`DIRECTORY_LIMIT`]), and whether it ran out.
    fetch_left: u64,
    exhausted: Arc<std::sync::atomic::AtomicBool>,
}

impl Read for RangeReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.size || buf.is_empty() {
            return Ok(0);
        }
        let in_window = self.pos >= self.window_start
            && self.pos < self.window_start + self.window.len() as u64;
        if !in_window {
            let end = (self.pos + WINDOW.max(buf.len() as u64)).min(self.size);
            self.fetch_left = self.fetch_left.checked_sub(end - self.pos).ok_or_else(|| {
                self.exhausted
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                std::io::Error::other("the central directory's read budget ran out")
            })?;
            let range = self.pos..end;
            self.window = self
                .handle
                .block_on(self.store.get_range(&self.path, range))
                .map_err(std::io::Error::other)?;
            self.window_start = self.pos;
        }
        let offset = (self.pos - self.window_start) as usize;
        let n = buf.len().min(self.window.len() - offset);
        buf[..n].copy_from_slice(&self.window[offset..offset + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for RangeReader {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let next = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.size.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = next.ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "seek before the start")
        })?;
        Ok(self.pos)
    }
}
