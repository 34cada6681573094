//! A stream adaptor that checks size and SHA-256 while bytes flow, so nothing unverified is
//! ever committed. It holds back the last chunk until the digest is known: a consumer (an
//! upload body) therefore never sees a complete blob whose bytes are wrong, and the upload
//! is aborted instead of finished.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures_util::stream::{BoxStream, StreamExt};
use sha2::{Digest as _, Sha256};

use crate::digest::Digest;
use crate::error::{Error, FailureClass, Result};

pub type ByteStream = BoxStream<'static, Result<Bytes>>;

struct State {
    inner: ByteStream,
    hasher: Sha256,
    expected: Digest,
    size: u64,
    seen: u64,
    pending: Option<Bytes>,
    done: bool,
    progress: Option<Arc<AtomicU64>>,
}

/// `inner`, failing at its end unless its bytes come to `size` with CRC-32 `crc`: a check
/// of stored bytes against their record (a zip entry's, a cache sidecar's), a fraction of
/// SHA-256's cost. The error is the one `damaged` makes, which may first evict what held
/// the bytes.
pub fn crc_checked<F, Fut>(inner: ByteStream, size: u64, crc: u32, damaged: F) -> ByteStream
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Error> + Send,
{
    let state = (Some(inner), crc32fast::Hasher::new(), 0u64, Some(damaged));
    futures_util::stream::try_unfold(
        state,
        move |(inner, mut hasher, seen, damaged)| async move {
            let Some(mut inner) = inner else {
                return Ok(None);
            };
            match inner.next().await {
                Some(chunk) => {
                    let chunk = chunk?;
                    hasher.update(&chunk);
                    let seen = seen + chunk.len() as u64;
                    Ok(Some((chunk, (Some(inner), hasher, seen, damaged))))
                }
                None if seen == size && hasher.finalize() == crc => Ok(None),
                None => Err(match damaged {
                    Some(damaged) => damaged().await,
                    None => Error::internal("a damaged stream ended twice"),
                }),
            }
        },
    )
    .boxed()
}

/// Wraps `inner`, failing with [`FailureClass::DigestMismatch`] if its bytes are not
/// exactly `size` bytes hashing to `expected`. `progress` counts bytes passed on.
pub fn verified(
    inner: ByteStream,
    expected: Digest,
    size: u64,
    progress: Option<Arc<AtomicU64>>,
) -> ByteStream {
    let state = State {
        inner,
        hasher: Sha256::new(),
        expected,
        size,
        seen: 0,
        pending: None,
        done: false,
        progress,
    };
    futures_util::stream::unfold(state, |mut st| async move {
        let item = st.step().await?;
        if let (Ok(chunk), Some(p)) = (&item, &st.progress) {
            p.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
        Some((item, st))
    })
    .boxed()
}

impl State {
    async fn step(&mut self) -> Option<Result<Bytes>> {
        loop {
            if self.done {
                return None;
            }
            match self.inner.next().await {
                Some(Ok(chunk)) => {
                    if chunk.is_empty() {
                        continue;
                    }
                    self.seen += chunk.len() as u64;
                    if self.seen > self.size {
                        self.done = true;
                        return Some(Err(
                            self.mismatch(format!("more than the expected {} bytes", self.size))
                        ));
                    }
                    self.hasher.update(&chunk);
                    if let Some(prev) = self.pending.replace(chunk) {
                        return Some(Ok(prev));
                    }
                }
                Some(Err(e)) => {
                    self.done = true;
                    return Some(Err(e));
                }
                None => {
                    self.done = true;
                    if self.seen != self.size {
                        return Some(Err(
                            self.mismatch(format!("{} bytes, expected {}", self.seen, self.size))
                        ));
                    }
                    let got = Digest::from_sha256(self.hasher.clone().finalize().as_slice());
                    if got != self.expected {
                        return Some(Err(self.mismatch(format!("bytes hash to {got}"))));
                    }
                    return self.pending.take().map(Ok);
                }
            }
        }
    }

    fn mismatch(&self, what: String) -> Error {
        Error::new(
            FailureClass::DigestMismatch,
            format!("blob {}: {what}", self.expected),
        )
    }
}

#[cfg(test)]
mod tests {
    use futures_util::TryStreamExt;

    use super::*;

    fn source(chunks: &[&'static [u8]]) -> ByteStream {
        futures_util::stream::iter(
            chunks
                .iter()
                .map(|c| Ok(Bytes::from_static(c)))
                .collect::<Vec<_>>(),
        )
        .boxed()
    }

    #[tokio::test]
    async fn passes_good_bytes_and_counts_them() {
        let counter = Arc::new(AtomicU64::new(0));
        let s = verified(
            source(&[b"hello ", b"world"]),
            Digest::of(b"hello world"),
            11,
            Some(counter.clone()),
        );
        let out: Vec<Bytes> = s.try_collect().await.unwrap();
        assert_eq!(out.concat(), b"hello world");
        assert_eq!(counter.load(Ordering::Relaxed), 11);
    }

    #[tokio::test]
    async fn withholds_last_chunk_when_digest_is_wrong() {
        let mut s = verified(
            source(&[b"hello ", b"w0rld"]),
            Digest::of(b"hello world"),
            11,
            None,
        );
        assert_eq!(
            s.next().await.unwrap().unwrap(),
            Bytes::from_static(b"hello ")
        );
        let err = s.next().await.unwrap().unwrap_err();
        assert_eq!(err.class, FailureClass::DigestMismatch);
        assert!(s.next().await.is_none());
    }

    #[tokio::test]
    async fn rejects_wrong_sizes() {
        let s = verified(
            source(&[b"hello world!"]),
            Digest::of(b"hello world"),
            11,
            None,
        );
        assert!(s.try_collect::<Vec<_>>().await.is_err());
        let s = verified(source(&[b"hello"]), Digest::of(b"hello world"), 11, None);
        assert!(s.try_collect::<Vec<_>>().await.is_err());
    }
}
