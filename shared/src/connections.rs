//! An HTTP server's connections (the coordinator's API, a worker's metrics and probes),
//! bounded before any handler sees them: at most a given number at once (one past them is
//! closed as it arrives), a TLS handshake within 10 s, and each request's head within
//! [`HEAD_TIMEOUT`] — a client trickling its headers, or opening connections and saying
//! nothing, holds a connection that long and no longer. A connection past the limit is
//! answered `503` with `Retry-After` and closed. HTTP/1 only (see [`bound`]).

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

/// What a connection past the limit is told before it is closed: plain HTTP, so that a
/// client (the project's own `submit` among them) knows nothing was sent and may retry.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";

impl<A, I, S> Accept<I, S> for Limited<A>
where
    A: Accept<I, S> + Clone + Send + Sync + 'static,
    A::Future: Send,
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Send + 'static,
{
    type Stream = Counted<A::Stream>;
    type Service = A::Service;
    type Future = BoxFuture<'static, io::Result<(Self::Stream, Self::Service)>>;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        let slot = self.slots.clone().try_acquire_owned();
        let inner = self.inner.clone();
        Box::pin(async move {
            let Ok(slot) = slot else {
                // A TLS client reads the answer as a failed handshake.
                let mut stream = stream;
                busy(&mut stream).await;
                return Err(io::Error::other("too many connections"));
            };
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

/// Tells a connection past the limit [`BUSY`] once its request's head is in (an answer
/// before the request reads, to an HTTP client, as a broken connection), each step within
/// a second whatever the client does, then reads what it still sends (a body) and drops
/// it: closing with it unread would reset the connection, and the answer with it.
async fn busy(stream: &mut (impl AsyncRead + AsyncWrite + Unpin)) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let step = Duration::from_secs(1);
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let _ = tokio::time::timeout(step, async {
        while head.len() < 16 << 10 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let _ = tokio::time::timeout(step, async {
        let _ = stream.write_all(BUSY).await;
        let _ = stream.shutdown().await;
    })
    .await;
    let _ = tokio::time::timeout(step, async {
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
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
    // HTTP/1 only: its head timeout ends idle connections; HTTP/2's would stay open idle
    // for ever, each holding a place under the limit.
    let mut server = server
        .http1_only()
        .first_request_timeout(HEAD_TIMEOUT)
        .map(|inner| Limited::new(inner, max));
    server
        .http_builder()
        .http1()
        .header_read_timeout(HEAD_TIMEOUT);
    server
}
