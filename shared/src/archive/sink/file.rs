//! The local sink: a zip written beside its destination under a temporary name
//! (`crate::atomic`: `.<name>.partial-<pid>-…`), flushed to disk, and renamed into place
//! only once complete ([`put_in_place`]), so a crash leaves the old archive (or none),
//! never a half-written one; what killed runs left behind is swept by [`remove_stale`]
//! when the next write starts.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::writeback::WritingBack;
use super::{Task, write_items};
use crate::archive::BlobSource;
use crate::archive::reader::ArchiveReader;
use crate::archive::writer::Item;
use crate::error::{Error, Result};

/// Starts writing `location` under a temporary name; returns the thread, and the temporary
/// file with the final path. The thread removes the temporary file when it fails.
pub(super) fn start(
    location: &str,
    items: tokio::sync::mpsc::Receiver<Item>,
    base: Option<Arc<ArchiveReader>>,
    source: Arc<dyn BlobSource>,
    handle: tokio::runtime::Handle,
) -> Result<(Task, (PathBuf, PathBuf))> {
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
            let file = WritingBack::new(file).map_err(|e| io_err(&t, e))?;
            // Smaller than a streamed piece (128 KiB), which then goes to the file as it is
            // instead of being copied into the buffer first; entry headers are gathered.
            let out = std::io::BufWriter::with_capacity(64 << 10, file);
            let out = write_items(
                out,
                &label,
                items,
                base.as_deref(),
                source.as_ref(),
                &handle,
            )?;
            let file = out
                .into_inner()
                .map_err(|e| io_err(&t, e.error()))?
                .finish();
            file.sync_all().map_err(|e| io_err(&t, e))?;
            Ok(file.metadata().map_err(|e| io_err(&t, e))?.len())
        })();
        // Abandoned before this thread even started, the writer could not remove it.
        if written.is_err() {
            let _ = std::fs::remove_file(&t);
        }
        written
    });
    Ok((task, (temp, path.to_owned())))
}

/// Renames the complete temporary file `temp` to `path` (removing it when that fails) and
/// makes the rename durable.
pub(in crate::archive) fn put_in_place(temp: PathBuf, path: PathBuf) -> Result<PathBuf> {
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
    Ok(path)
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

fn io_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::invalid(format!("{}: {e}", path.display()))
}
