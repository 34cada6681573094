//! A TCP proxy in front of a real service. It adds a one-way delay in each direction
//! without capping bandwidth, as a WAN link does: each chunk is stamped when it arrives and
//! forwarded once its delay has passed, so many chunks are in flight at once. It can also
//! inject faults: corrupt the upstream's bytes (replace one byte value with another) to
//! prove that corrupted blobs are caught, and reset the first connections to prove that
//! transient failures are retried.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, Default)]
pub struct ProxyOptions {
    /// One-way delay added in each direction.
    pub delay: Duration,
    /// Replace this byte value with that one in upstream → client traffic.
    pub corrupt: Option<(u8, u8)>,
    /// Reset the connection instead of forwarding the first N blob GETs.
    pub reset_blob_gets: u64,
}

pub struct Proxy {
    pub addr: String,
    pub connections: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn start(listen: &str, upstream: &str, opts: ProxyOptions) -> io::Result<Proxy> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?.to_string();
    let upstream = upstream.to_owned();
    let connections = Arc::new(AtomicU64::new(0));
    let counter = connections.clone();
    let resets = Arc::new(AtomicU64::new(opts.reset_blob_gets));
    let task = tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::Relaxed);
            let (upstream, resets) = (upstream.clone(), resets.clone());
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    return;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                // A reset is a close with linger 0: the peer sees RST, not an orderly end.
                let _ = client.set_zero_linger();
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                let down = tokio::spawn(pipe(sr, cw, opts.delay, opts.corrupt, None));
                if pipe(cr, sw, opts.delay, None, Some(resets)).await {
                    down.abort();
                } else {
                    let _ = down.await;
                }
            });
        }
    });
    Ok(Proxy {
        addr,
        connections,
        task,
    })
}

/// Copies `from` to `to` with the delay. With a reset budget, a chunk that starts a blob
/// GET while budget remains ends the connection instead; returns whether it did.
async fn pipe(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    delay: Duration,
    corrupt: Option<(u8, u8)>,
    resets: Option<Arc<AtomicU64>>,
) -> bool {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(1024);
    let reader = async move {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => n,
            };
            let mut chunk = buf[..n].to_vec();
            if let Some(budget) = &resets
                && chunk.starts_with(b"GET ")
                && chunk.windows(14).any(|w| w == b"/blobs/sha256:")
                && budget
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| b.checked_sub(1))
                    .is_ok()
            {
                return true;
            }
            if let Some((a, b)) = corrupt {
                chunk.iter_mut().filter(|x| **x == a).for_each(|x| *x = b);
            }
            if tx.send((Instant::now() + delay, chunk)).await.is_err() {
                return false;
            }
        }
    };
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    };
    let (reset, ()) = tokio::join!(reader, writer);
    reset
}
