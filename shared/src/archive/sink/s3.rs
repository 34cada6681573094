//! The S3 sink: the zip streams into a multipart upload ([`ObjectWriter`], a `Write` on the
//! writer thread), parts going up as they fill, and the object appears only when the
//! upload completes at the end; an upload not completed is aborted, so nothing
//! half-written becomes visible there either.

use std::io::Write;
use std::sync::Arc;

use object_store::{ObjectStoreExt, WriteMultipart};

use super::{Task, write_items};
use crate::archive::BlobSource;
use crate::archive::reader::ArchiveReader;
use crate::archive::writer::Item;
use crate::error::{Error, FailureClass, Result};

/// Opens the multipart upload for `location` and starts the thread that fills and
/// completes it.
pub(super) async fn start(
    location: &str,
    items: tokio::sync::mpsc::Receiver<Item>,
    base: Option<Arc<ArchiveReader>>,
    source: Arc<dyn BlobSource>,
    handle: tokio::runtime::Handle,
) -> Result<Task> {
    let label = location.to_owned();
    let (store, key) = crate::archive::locate(location)?;
    let upload = store
        .put_multipart(&key)
        .await
        .map_err(|e| Error::new(FailureClass::Network, format!("{location}: {e}")))?;
    let out = ObjectWriter {
        upload: Some(WriteMultipart::new(upload)),
        handle: handle.clone(),
        written: 0,
    };
    Ok(tokio::task::spawn_blocking(move || {
        let _guard = handle.enter();
        let mut out = write_items(
            out,
            &label,
            items,
            base.as_deref(),
            source.as_ref(),
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
    }))
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
