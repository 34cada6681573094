//! An HTTP server's connections (the coordinator's API, a worker's metrics and probes),
//! bounded before any handler sees them: at most a given number at once (one past them is
//! closed as it arrives), a TLS handshake within 10 s, and each request's head within
//! [`HEAD_TIMEOUT`] — a client trickling its headers, or opening connections and saying
//! nothing, holds a connection that long and no longer.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum_server::accept::Accept;
use futures_util::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long a client has to send a request's head (its first, or the next on a kept-alive
/// connection).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// An acceptor that admits a connection only while fewer than its limit are open.
#[derive(Clone)]
pub struct Limited<A> {
    inner: A,
    slots: Arc<Semaphore>,
}

impl<A> Limited<A> {
    pub fn new(inner: A, max: usize) -> Self {
        Self {
            inner,
            slots: Arc::new(Semaphore::new(max)),
        }
    }
}

impl<A, I, S> Accept<I, S> for Limited<A>
where
    A: Accept<I, S> + Clone + Send + Sync + 'static,
    A::Future: Send,
    I: Send + 'static,
    S: Send + 'static,
{
    type Stream = Counted<A::Stream>;
    type Service = A::Service;
    type Future = BoxFuture<'static, io::Result<(Self::Stream, Self::Service)>>;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        let slot = self.slots.clone().try_acquire_owned();
        let inner = self.inner.clone();
        Box::pin(async move {
            // Dropping the stream closes it: a client past the limit learns at once.
            let slot = slot.map_err(|_| io::Error::other("too many connections"))?;
            let (stream, service) = inner.accept(stream, service).await?;
            Ok((
                Counted {
                    stream,
                    _slot: slot,
                },
                service,
            ))
        })
    }
}

/// A connection holding its place under the limit until it is closed.
pub struct Counted<T> {
    stream: T,
    _slot: OwnedSemaphorePermit,
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Bounds a server's connections as this module says.
pub fn bound<A: axum_server::Address, Acc>(
    server: axum_server::Server<A, Acc>,
    max: usize,
) -> axum_server::Server<A, Limited<Acc>>
where
    Acc: Clone,
{
    let mut server = server
        .first_request_timeout(HEAD_TIMEOUT)
        .map(|inner| Limited::new(inner, max));
    server
        .http_builder()
        .http1()
        .header_read_timeout(HEAD_TIMEOUT);
    server
}
