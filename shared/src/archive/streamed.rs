//! Blobs read from their source registry as the archive writer reaches them, so that `save`
//! and `sync` without a cache write a byte to disk once (into the zip) when it arrives in
//! its turn, and twice only when it arrives long before (staged, then copied into the zip).
//!
//! The writer announces each blob in the order it will read it ([`BlobSource::will_read`]);
//! up to `transfers` (at most [`MAX_FETCHES`]) announced blobs are fetched at once. Each
//! fetch hands the writer a little ahead in memory ([`AHEAD`] pieces), then stops reading
//! for up to [`WAIT_BEFORE_STAGING`] (what the source sends meanwhile waits in the socket's
//! buffer, and the source waits on the connection); if the writer has not taken a piece
//! by then (its turn has not come), what arrives before it is staged in a file of the run's staging directory, which
//! the writer reads when its turn comes, and the rest follows from the network. A fetch
//! cut short is taken up again (a fresh read whose first bytes are compared with those
//! already taken, by their SHA-256, and not taken again). What the pipeline wrote into the
//! cache (manifests, configs the planner held) is read from there; everything else is
//! announced with where it is read (`StreamedSource::expect`). A fetch holds its permit
//! until the writer's turn comes, so what is fetched or staged ahead is at most
//! `transfers` blobs.
//!
//! The price: a blob that cannot be read for good once its image is being written fails
//! the whole archive, where a cache would have failed that image alone.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use sha2::{Digest as _, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use super::BlobSource;
use crate::cache::BlobCache;
use crate::digest::Digest;
use crate::error::{Error, FailureClass, Result};
use crate::manifest::Descriptor;
use crate::retry::RetryPolicy;
use crate::store::{RegistryPool, RepoRef, StoreRef};
use crate::verify::ByteStream;

/// Bytes gathered into one piece: the writer's thread takes each with a wakeup, and the
/// network's chunks come in a few KiB.
const PIECE: usize = 128 << 10;
/// A piece once the writer's turn has come. One blob is in its turn at a time, so larger
/// pieces cost memory once, and each saves the writer three wakeups (thread wakeups were a
/// tenth of a save's CPU, one per piece).
const IN_TURN_PIECE: usize = 512 << 10;
/// How long a fetch whose pieces the writer has not taken yet stops reading before it
/// stages what follows on disk: the writer usually reaches it sooner, and a byte read only
/// then is written once (into the zip) instead of staged, read back and written again.
/// Measured on the archive bench's list: 1.0 byte written per byte saved instead of 1.6,
/// a fifth less CPU, no slower through a 25 ms link.
const WAIT_BEFORE_STAGING: std::time::Duration = std::time::Duration::from_millis(500);
/// Pieces one fetch holds in memory ahead of the writer; more is staged on disk.
const AHEAD: usize = 2;
/// Blobs fetched or staged ahead of the writer at most, whatever the transfers: each costs
/// its connection's buffers too (about 1.5 MB measured on loopback at `-j 20`), and a
/// fetch waits for the writer's turn before the next may start. Measured (BENCHMARKS.md):
/// 20 keep a save through a 25 ms link fastest (2.3 s) but reach 65 MB; 12 stay at 50 MB
/// and take 2.6 s; 16 are the middle.
const MAX_FETCHES: usize = 16;

/// What the writer takes from a fetch, in order.
enum Piece {
    Bytes(Bytes),
    /// Everything staged before the writer's turn came, this long, read before what follows.
    Staged(PathBuf, u64),
}

/// A fetch as the writer takes it: its pieces, and how it is told the writer's turn came.
type Started = (mpsc::Receiver<Result<Piece>>, oneshot::Sender<()>);

pub struct StreamedSource {
    cache: Arc<BlobCache>,
    registries: Arc<RegistryPool>,
    retry: RetryPolicy,
    /// Where each streamed blob is read.
    known: Mutex<HashMap<Digest, (RepoRef, Descriptor)>>,
    /// Fetches started ahead of the writer, by digest: their pieces, and how each is told
    /// that the writer has reached its blob.
    ahead: Mutex<HashMap<Digest, Started>>,
    /// Fetches still downloading, each holding one.
    fetches: Arc<Semaphore>,
    /// Where blobs arriving before their turn are staged.
    staging: PathBuf,
}

impl StreamedSource {
    /// `staging`: a directory of this run's own (removed with it).
    pub fn new(
        cache: Arc<BlobCache>,
        registries: Arc<RegistryPool>,
        transfers: usize,
        retry: RetryPolicy,
        staging: PathBuf,
    ) -> Self {
        Self {
            cache,
            registries,
            retry,
            known: Mutex::new(HashMap::new()),
            ahead: Mutex::new(HashMap::new()),
            fetches: Arc::new(Semaphore::new(transfers.clamp(1, MAX_FETCHES))),
            staging,
        }
    }

    /// `desc` is read from `from` (a registry repository) when the writer wants it.
    pub fn expect(&self, from: &RepoRef, desc: &Descriptor) {
        if let Ok(mut known) = self.known.lock() {
            known
                .entry(desc.digest.clone())
                .or_insert_with(|| (from.clone(), desc.clone()));
        }
    }

    fn location(&self, digest: &Digest) -> Option<(RepoRef, Descriptor)> {
        self.known.lock().ok()?.get(digest).cloned()
    }

    async fn permit(&self) -> Result<OwnedSemaphorePermit> {
        self.fetches
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::internal("streamed source closed"))
    }

    /// Starts fetching `digest` (under a permit already held, when announced ahead): its
    /// pieces, and the sender that tells it the writer's turn has come.
    fn start(&self, digest: &Digest, permit: Option<OwnedSemaphorePermit>) -> Result<Started> {
        let (from, desc) = self.location(digest).ok_or_else(|| {
            Error::internal(format!("{digest}: neither in the cache nor announced"))
        })?;
        let StoreRef::Registry { host } = &from.store else {
            return Err(Error::internal(format!(
                "{digest}: streamed from {from}, which is not a registry"
            )));
        };
        let (tx, rx) = mpsc::channel(AHEAD);
        let (told, turn_rx) = oneshot::channel();
        let fetch = Fetch {
            registries: self.registries.clone(),
            host: host.clone(),
            repo: from.repo.clone(),
            staged_at: self.staging.join(format!("staged-{}", desc.digest.hex())),
            desc,
            retry: self.retry.clone(),
            tx,
        };
        tokio::spawn(fetch.run(permit, turn_rx));
        Ok((rx, told))
    }
}

#[async_trait]
impl BlobSource for StreamedSource {
    async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        if let Some((_, desc)) = self.location(digest) {
            return Ok(Some(desc.size));
        }
        self.cache.blob_size(digest).await
    }

    async fn will_read(&self, digest: &Digest) -> Result<()> {
        if self.location(digest).is_none() || self.cache.meta(digest).await?.is_some() {
            return Ok(());
        }
        // Taken in the writer's order (the semaphore is fair): the blobs it reads first
        // start first.
        let permit = self.permit().await?;
        let started = self.start(digest, Some(permit))?;
        if let Ok(mut ahead) = self.ahead.lock() {
            ahead.insert(digest.clone(), started);
        }
        Ok(())
    }

    async fn blob_stream(&self, digest: &Digest, size: u64) -> Result<ByteStream> {
        let ahead = self.ahead.lock().ok().and_then(|mut a| a.remove(digest));
        let (rx, told) = match ahead {
            Some(started) => started,
            None => match self.cache.blob_stream(digest, size).await {
                // Not announced, and not in the cache: read now, without a permit (those
                // are held by the fetches ahead, which wait for the writer).
                Err(e) if e.class == FailureClass::NotFound && self.location(digest).is_some() => {
                    self.start(digest, None)?
                }
                cached => return cached,
            },
        };
        let _ = told.send(());
        Ok(pieces(rx))
    }
}

/// A staged file being read: the file, its path, the bytes left.
type Reading = Option<(tokio::fs::File, PathBuf, u64)>;

/// The bytes of a fetch's pieces; a staged file is read in 1 MiB blocks and removed once read.
fn pieces(rx: mpsc::Receiver<Result<Piece>>) -> ByteStream {
    let state: (mpsc::Receiver<Result<Piece>>, Reading) = (rx, None);
    futures_util::stream::unfold(state, |(mut rx, mut reading)| async move {
        loop {
            if let Some((file, path, left)) = &mut reading {
                if *left == 0 {
                    let _ = tokio::fs::remove_file(&*path).await;
                    reading = None;
                    continue;
                }
                use tokio::io::AsyncReadExt as _;
                let mut block = vec![0u8; (*left).min(1 << 20) as usize];
                let read = file.read_exact(&mut block).await.map_err(|e| {
                    Error::internal(format!("reading staged {}: {e}", path.display()))
                });
                *left -= block.len() as u64;
                return Some((read.map(|_| Bytes::from(block)), (rx, reading)));
            }
            match rx.recv().await? {
                Ok(Piece::Bytes(b)) => return Some((Ok(b), (rx, reading))),
                Ok(Piece::Staged(path, len)) => match tokio::fs::File::open(&path).await {
                    Ok(file) => reading = Some((file, path, len)),
                    Err(e) => {
                        let e = Error::internal(format!("opening staged {}: {e}", path.display()));
                        return Some((Err(e), (rx, None)));
                    }
                },
                Err(e) => return Some((Err(e), (rx, reading))),
            }
        }
    })
    .boxed()
}

/// A blob's bytes cut into pieces of exactly [`PIECE`] bytes as they arrive ([`IN_TURN_PIECE`]
/// once the writer's turn has come; a chunk across two is split), each allocated only when
/// its first bytes come — after the last was taken — so that what a fetch holds is bounded
/// by its pieces: a buffer a chunk overfilled would grow to twice its size.
struct Gathering {
    buf: bytes::BytesMut,
    /// The size of the piece being gathered.
    target: usize,
    /// The size of the next.
    next: usize,
}

impl Default for Gathering {
    fn default() -> Self {
        Self {
            buf: bytes::BytesMut::new(),
            target: PIECE,
            next: PIECE,
        }
    }
}

impl Gathering {
    /// Pieces from the next on are [`IN_TURN_PIECE`] bytes.
    fn in_turn(&mut self) {
        self.next = IN_TURN_PIECE;
    }

    /// Takes bytes of `chunk` (leaving the rest in it) until a piece is full; the full
    /// piece, unless it holds the blob's last bytes (`after`: bytes still to come after
    /// `chunk`), which wait for the digest ([`Gathering::last`]).
    fn fill(&mut self, chunk: &mut Bytes, after: u64) -> Option<Bytes> {
        if self.buf.capacity() == 0 {
            self.target = self.next;
            // No more than the blob has left: its last piece is held until the digest is
            // checked, and a small one should not hold a whole piece's room.
            let left = (chunk.len() as u64).saturating_add(after);
            self.buf.reserve(left.min(self.target as u64) as usize);
        }
        let n = (self.target - self.buf.len()).min(chunk.len());
        self.buf.extend_from_slice(&chunk[..n]);
        *chunk = chunk.slice(n..);
        let more = !chunk.is_empty() || after > 0;
        (self.buf.len() == self.target && more).then(|| std::mem::take(&mut self.buf).freeze())
    }

    /// What is left once every chunk came: the blob's last bytes.
    fn last(self) -> Bytes {
        self.buf.freeze()
    }
}

/// One blob's fetch, resumed after a transient failure.
struct Fetch {
    registries: Arc<RegistryPool>,
    host: String,
    repo: String,
    desc: Descriptor,
    retry: RetryPolicy,
    tx: mpsc::Sender<Result<Piece>>,
    staged_at: PathBuf,
}

/// What a fetch has taken: its SHA-256 and count (to resume after), the staging file once
/// started, and whether the writer's turn has come.
struct Taken {
    hashed: Sha256,
    count: u64,
    staged: Option<(std::fs::File, u64)>,
    turn: oneshot::Receiver<()>,
    turn_came: bool,
    /// Held until the writer's turn comes (or the fetch ends with nothing staged), so that
    /// at most `transfers` blobs are fetched or staged ahead of the writer, whatever their
    /// size and however slow the writer.
    permit: Option<OwnedSemaphorePermit>,
}

impl Taken {
    fn turn_has_come(&mut self) {
        self.turn_came = true;
        self.permit = None;
    }
}

impl Fetch {
    async fn run(self, permit: Option<OwnedSemaphorePermit>, turn: oneshot::Receiver<()>) {
        let mut taken = Taken {
            hashed: Sha256::new(),
            count: 0,
            staged: None,
            turn,
            turn_came: false,
            permit,
        };
        let mut attempt = 0u32;
        let failure = loop {
            let failure = match self.attempt(&mut taken).await {
                Ok(()) => break None,
                Err(e) => e,
            };
            attempt += 1;
            if !failure.class.is_retryable() || attempt >= self.retry.attempts {
                break Some(failure);
            }
            tracing::debug!(digest = %self.desc.digest, taken = taken.count, "blob read cut short, taken up again: {failure}");
            tokio::time::sleep(self.retry.delay(attempt - 1, failure.retry_after)).await;
        };
        // Nothing on disk: the next fetch may start while this one's pieces wait.
        if taken.staged.is_none() {
            taken.permit = None;
        }
        let handed = self.hand_staged(&mut taken).await;
        if let Some(e) = failure.or(handed.err()) {
            let _ = self.tx.send(Err(e)).await;
        }
    }

    /// Once the writer's turn comes, tells it of what was staged (before what follows).
    async fn hand_staged(&self, taken: &mut Taken) -> Result<()> {
        let Some((file, len)) = taken.staged.take() else {
            return Ok(());
        };
        drop(file);
        if !taken.turn_came {
            if (&mut taken.turn).await.is_err() {
                // The writer went away (its archive failed): nothing to hand.
                let _ = std::fs::remove_file(&self.staged_at);
                return Ok(());
            }
            taken.turn_has_come();
        }
        let marker = Piece::Staged(self.staged_at.clone(), len);
        if self.tx.send(Ok(marker)).await.is_err() {
            let _ = std::fs::remove_file(&self.staged_at);
        }
        Ok(())
    }

    /// Reads the blob once more from its start: the bytes already taken are compared with
    /// it, the rest taken. `Ok` once all of it is (or the writer left). The fetch hashes
    /// what it takes itself (one SHA-256 of every byte, which also serves to take a cut read
    /// up again) and holds back its last piece until the whole blob's size and digest are
    /// right, so the writer never reads a complete blob whose bytes are wrong.
    async fn attempt(&self, taken: &mut Taken) -> Result<()> {
        let registry = self.registries.registry(&self.host).await?;
        let mut stream = registry
            .unverified_blob_stream(&self.repo, &self.desc)
            .await?;
        let mut again = Sha256::new();
        let mut skip = taken.count;
        let mut read = 0u64;
        let mut gathering = Gathering::default();
        while let Some(chunk) = stream.next().await {
            let mut chunk = chunk?;
            read += chunk.len() as u64;
            if read > self.desc.size {
                return Err(
                    self.mismatch(format!("more than the expected {} bytes", self.desc.size))
                );
            }
            if skip > 0 {
                let n = (skip as usize).min(chunk.len());
                again.update(&chunk[..n]);
                chunk = chunk.slice(n..);
                skip -= n as u64;
                if skip == 0 && again.clone().finalize() != taken.hashed.clone().finalize() {
                    return Err(self.mismatch(format!(
                        "read again, its first {} bytes differ",
                        taken.count
                    )));
                }
            }
            if taken.turn_came {
                gathering.in_turn();
            }
            while !chunk.is_empty() {
                let Some(piece) = gathering.fill(&mut chunk, self.desc.size - read) else {
                    continue;
                };
                taken.hashed.update(&piece);
                taken.count += piece.len() as u64;
                if !self.take(piece, taken).await? {
                    return Ok(());
                }
            }
        }
        if read != self.desc.size {
            return Err(self.mismatch(format!("{read} bytes, expected {}", self.desc.size)));
        }
        // Taken (hashed and counted) only once the whole blob is known to be right: what
        // was taken is what a retry compares and skips.
        let gathered = gathering.last();
        let mut whole = taken.hashed.clone();
        whole.update(&gathered);
        let got = Digest::from_sha256(whole.clone().finalize().as_slice());
        if got != self.desc.digest {
            return Err(self.mismatch(format!("bytes hash to {got}")));
        }
        taken.hashed = whole;
        taken.count += gathered.len() as u64;
        if !gathered.is_empty() {
            self.take(gathered, taken).await?;
        }
        Ok(())
    }

    fn mismatch(&self, what: String) -> Error {
        Error::new(
            FailureClass::DigestMismatch,
            format!("{}/{}@{}: {what}", self.host, self.repo, self.desc.digest),
        )
    }

    /// Takes `piece` (already hashed and counted): to the writer once its turn came or
    /// while its channel has room, else — after waiting up to [`WAIT_BEFORE_STAGING`] for
    /// room — to the staging file. `false` when the writer is gone. Bytes gathered and not
    /// taken are read again after a failure.
    async fn take(&self, piece: Bytes, taken: &mut Taken) -> Result<bool> {
        if !taken.turn_came && taken.turn.try_recv().is_ok() {
            taken.turn_has_come();
        }
        // The writer gave up (its archive failed): fetch no more.
        if self.tx.is_closed() {
            return Ok(false);
        }
        if taken.turn_came {
            // What was staged goes first.
            self.hand_staged(taken).await?;
            return Ok(self.tx.send(Ok(Piece::Bytes(piece))).await.is_ok());
        }
        if taken.staged.is_none() {
            let piece = match self.tx.try_send(Ok(Piece::Bytes(piece))) {
                Ok(()) => return Ok(true),
                Err(mpsc::error::TrySendError::Closed(_)) => return Ok(false),
                Err(mpsc::error::TrySendError::Full(Ok(Piece::Bytes(piece)))) => piece,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    return Err(Error::internal("a fetch's own piece came back changed"));
                }
            };
            // The writer is behind: the connection waits a moment, unread (what arrives
            // meanwhile waits in the socket's buffer), before the rest is staged on disk.
            match tokio::time::timeout(WAIT_BEFORE_STAGING, self.tx.reserve()).await {
                Ok(Ok(room)) => {
                    room.send(Ok(Piece::Bytes(piece)));
                    return Ok(true);
                }
                Ok(Err(_)) => return Ok(false),
                Err(_) => {}
            }
            let file =
                std::fs::File::create(&self.staged_at).map_err(|e| self.staging_failed(e))?;
            taken.staged = Some((file, 0));
            self.stage(&piece, taken)?;
            return Ok(true);
        }
        self.stage(&piece, taken)?;
        Ok(true)
    }

    /// Appends `piece` to the staging file: a blocking write the page cache takes at
    /// memory speed.
    fn stage(&self, piece: &[u8], taken: &mut Taken) -> Result<()> {
        use std::io::Write as _;
        if let Some((file, len)) = &mut taken.staged {
            file.write_all(piece).map_err(|e| self.staging_failed(e))?;
            *len += piece.len() as u64;
        }
        Ok(())
    }

    fn staging_failed(&self, e: std::io::Error) -> Error {
        Error::internal(format!("staging {}: {e}", self.staged_at.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever the chunks, every piece handed on is exactly PIECE bytes until the turn
    /// comes and IN_TURN_PIECE bytes after, the last bytes are held back (never empty for a
    /// blob that has bytes), and together they are the blob.
    #[test]
    fn pieces_are_whole_and_the_last_bytes_wait() {
        let sizes = [0, 1, PIECE - 1, PIECE, PIECE + 1, 3 * PIECE, 3 * PIECE + 17];
        let sizes = sizes.into_iter().chain([IN_TURN_PIECE * 2 + PIECE * 2 + 5]);
        for size in sizes {
            let blob: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
            for chunk_len in [1000, PIECE - 3, PIECE, PIECE + 5, 2 * PIECE + 1] {
                let mut gathering = Gathering::default();
                let mut out = Vec::new();
                let mut read = 0;
                let mut expected = PIECE;
                for chunk in blob.chunks(chunk_len) {
                    read += chunk.len();
                    let mut chunk = Bytes::copy_from_slice(chunk);
                    while !chunk.is_empty() {
                        if let Some(piece) = gathering.fill(&mut chunk, (size - read) as u64) {
                            let what = format!("size {size}, chunks of {chunk_len}");
                            assert_eq!(piece.len(), expected, "{what}");
                            out.extend_from_slice(&piece);
                            // The turn comes after the second piece (the one being
                            // gathered stays as it began).
                            if out.len() == 2 * PIECE {
                                gathering.in_turn();
                                expected = IN_TURN_PIECE;
                            }
                        }
                    }
                }
                let last = gathering.last();
                assert_eq!(
                    last.is_empty(),
                    size == 0,
                    "size {size}, chunks of {chunk_len}"
                );
                assert!(last.len() <= IN_TURN_PIECE);
                out.extend_from_slice(&last);
                assert!(
                    out == blob,
                    "size {size}, chunks of {chunk_len}: bytes differ"
                );
            }
        }
    }
}
