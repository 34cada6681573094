//! A TCP proxy in front of a real service. It adds a one-way delay in each direction
//! without capping bandwidth, as a WAN link does: each chunk is stamped when it arrives and
//! forwarded once its delay has passed, so many chunks are in flight at once.
//!
//! It also injects faults, to prove the client copes: it corrupts the upstream's bytes
//! (one byte value replaced by another), resets the connection on the first blob GETs, and
//! plays a rate limiter that answers blob requests `429` with `Retry-After` for a while.
//!
//! A seeded fault mode plays a flaky distribution registry: it answers a fraction of all
//! requests itself with the errors such a registry gives when its storage or its limits
//! fail (500 `UNKNOWN`, 503 `UNAVAILABLE`, 429 `TOOMANYREQUESTS` with and without
//! `Retry-After`, and a 503 whose body carries a not-found code: the status is what counts),
//! and cuts a fraction of blob bodies halfway. The decisions come from the seed and the
//! request's ordinal, so a run's sequence of faults repeats; which request gets one depends
//! on the order the requests arrive in.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

mod faults;

pub use faults::Injected;
use faults::{Faults, RequestBody, Verdict, is_request, without_mount};

#[derive(Debug, Clone, Copy, Default)]
pub struct ProxyOptions {
    /// One-way delay added in each direction.
    pub delay: Duration,
    /// Replace this byte value with that one in upstream → client traffic.
    pub corrupt: Option<(u8, u8)>,
    /// Reset the connection instead of forwarding the first N blob GETs.
    pub reset_blob_gets: u64,
    /// From the first blob GET on, answer every blob request `429 Too Many Requests` with
    /// `Retry-After` (whole seconds left) for this long.
    pub throttle_blobs: Option<Duration>,
    /// Cap each connection's upstream → client bandwidth (bytes per second), to make
    /// transfers long enough to interrupt.
    pub rate_limit: Option<u64>,
    /// Answer `429` with `Retry-After: 1` to requests beyond this many per second (fixed
    /// one-second windows, all connections together): a registry that throttles bursts.
    pub burst_limit: Option<u32>,
    /// From the Nth request on, delay every answer by this much more: a registry that
    /// slows down under load.
    pub slow_from: Option<(u64, Duration)>,
    /// `(ratio, seed)`: answer this fraction of requests (any method, any path) with an
    /// error of the proxy's own, the kinds in rotation (see [`Injected`]). A request with a
    /// body is read to its end before the answer, so the connection stays usable.
    pub fail_ratio: Option<(f64, u64)>,
    /// `(ratio, seed)`: of the blob GETs forwarded, cut this fraction of answers (200 or 206
    /// with a `Content-Length`) after half their body: the connection is closed there.
    pub cut_blob_bodies: Option<(f64, u64)>,
    /// Forward every mount (`POST …/blobs/uploads/?mount=…`) without its query: the registry
    /// opens a plain upload (202), as one that does not mount across repositories does.
    pub decline_mounts: bool,
    /// With `fail_ratio` or `cut_blob_bodies`: at most this many faults in a row to one
    /// request line (method and path, the query left out); the next such request goes
    /// through whole. A flaky registry's faults are transient, and a test that its client
    /// gets through them must not depend on which retry the seed's next fault lands on.
    pub faults_in_a_row: Option<u32>,
    /// Answer `404 NAME_UNKNOWN` to every upload (`POST …/blobs/uploads/`) into a
    /// repository whose path starts with this: a registry without that project, as
    /// Harbor answers.
    pub refuse_uploads_to: Option<&'static str>,
}

pub struct Proxy {
    pub addr: String,
    pub connections: Arc<AtomicU64>,
    /// How many requests were answered 429 (by any feature).
    pub throttled: Arc<AtomicU64>,
    /// What the seeded fault mode injected.
    pub injected: Arc<Injected>,
    /// The most requests seen in one `burst_limit` window.
    pub peak: Arc<AtomicU64>,
    /// The most requests forwarded and not yet fully answered at one moment, all
    /// connections together.
    pub in_flight_peak: Arc<AtomicU64>,
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
    let throttled = Arc::new(AtomicU64::new(0));
    let peak = Arc::new(AtomicU64::new(0));
    let injected = Arc::new(Injected::default());
    let faults = Arc::new(Faults::new(
        opts,
        throttled.clone(),
        peak.clone(),
        injected.clone(),
    ));
    let counter = connections.clone();
    let in_flight = Arc::new(InFlight::default());
    let in_flight_peak = in_flight.peak.clone();
    let task = tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::Relaxed);
            let (upstream, faults) = (upstream.clone(), faults.clone());
            let exchanges = Arc::new(Mutex::new(Exchanges::new(in_flight.clone())));
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
                let (to_client, client_writer) = writer(cw, opts.rate_limit);
                let (to_server, server_writer) = writer(sw, None);
                let answers = Side::Answers(exchanges.clone(), faults.clone());
                let down = tokio::spawn(read(
                    sr,
                    to_client.clone(),
                    opts.delay,
                    opts.corrupt,
                    answers,
                ));
                let asks = Side::Asks(&faults, to_client, exchanges.clone());
                let reset = read(cr, to_server, opts.delay, None, asks).await;
                if reset {
                    down.abort();
                    client_writer.abort();
                    server_writer.abort();
                } else {
                    let _ = down.await;
                    let _ = tokio::join!(client_writer, server_writer);
                }
                if let Ok(mut x) = exchanges.lock() {
                    x.closed();
                }
            });
        }
    });
    Ok(Proxy {
        addr,
        connections,
        throttled,
        injected,
        peak,
        in_flight_peak,
        task,
    })
}

/// Requests forwarded and not yet answered in full, over all connections.
#[derive(Default)]
struct InFlight {
    now: AtomicU64,
    peak: Arc<AtomicU64>,
}

impl InFlight {
    fn start(&self) {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(n, Ordering::SeqCst);
    }

    fn end(&self) {
        let _ = self
            .now
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
    }
}

/// Where one connection's answer stream is: HTTP/1.1 without pipelining, so each answer
/// belongs to the oldest request still waiting.
enum Reading {
    Head(Vec<u8>),
    Body(u64),
    /// A chunked body: its last bytes, to find its end across reads.
    Chunked(Vec<u8>),
}

/// A request forwarded and not yet answered in full.
#[derive(Clone, Copy, Default)]
struct Asked {
    /// A HEAD: its answer has no body.
    head: bool,
    /// Its answer is to be cut after half its body.
    cut: bool,
}

struct Exchanges {
    in_flight: Arc<InFlight>,
    waiting: std::collections::VecDeque<Asked>,
    reading: Reading,
    /// Body bytes still to pass before the answer being read is cut.
    cut_after: Option<u64>,
}

impl Exchanges {
    fn new(in_flight: Arc<InFlight>) -> Self {
        Self {
            in_flight,
            waiting: Default::default(),
            reading: Reading::Head(Vec::new()),
            cut_after: None,
        }
    }

    fn asked(&mut self, head: bool, cut: bool) {
        self.waiting.push_back(Asked { head, cut });
        self.in_flight.start();
    }

    /// An exchange is over once its answer's body is through.
    fn finish(&mut self) {
        if self.waiting.pop_front().is_some() {
            self.in_flight.end();
        }
        self.reading = Reading::Head(Vec::new());
        self.cut_after = None;
    }

    fn closed(&mut self) {
        for _ in self.waiting.drain(..) {
            self.in_flight.end();
        }
    }

    /// Follows the upstream's bytes. `Some(n)`: an answer is to be cut after the first `n`
    /// of them.
    fn answered(&mut self, bytes: &[u8]) -> Option<usize> {
        let mut pending = bytes.to_vec();
        loop {
            match &mut self.reading {
                Reading::Head(buf) => {
                    buf.append(&mut pending);
                    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    pending = buf[end + 4..].to_vec();
                    let status: u16 = head
                        .split_whitespace()
                        .nth(1)
                        .and_then(|c| c.parse().ok())
                        .unwrap_or(200);
                    let header = |name: &str| {
                        head.lines().find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            (k.trim() == name).then(|| v.trim().to_owned())
                        })
                    };
                    if status < 200 {
                        self.reading = Reading::Head(Vec::new());
                        continue;
                    }
                    let asked = self.waiting.front().copied().unwrap_or_default();
                    self.reading = if asked.head || status == 204 || status == 304 {
                        Reading::Body(0)
                    } else if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
                        Reading::Chunked(Vec::new())
                    } else {
                        Reading::Body(
                            header("content-length")
                                .and_then(|v| v.parse().ok())
                                .unwrap_or(0),
                        )
                    };
                    if let (true, 200 | 206, Reading::Body(len @ 2..)) =
                        (asked.cut, status, &self.reading)
                    {
                        self.cut_after = Some(len / 2);
                    }
                    if matches!(self.reading, Reading::Body(0)) {
                        self.finish();
                    }
                }
                Reading::Body(left) => {
                    if let Some(pass) = self.cut_after
                        && pass <= pending.len() as u64
                    {
                        // `pending` is always what is left of `bytes`.
                        return Some(bytes.len() - pending.len() + pass as usize);
                    }
                    let take = (*left).min(pending.len() as u64);
                    *left -= take;
                    pending.drain(..take as usize);
                    if let Some(pass) = &mut self.cut_after {
                        *pass -= take;
                    }
                    if *left > 0 {
                        return None;
                    }
                    self.finish();
                }
                Reading::Chunked(tail) => {
                    tail.append(&mut pending);
                    if tail.starts_with(b"0\r\n\r\n") || tail.ends_with(b"\r\n0\r\n\r\n") {
                        self.finish();
                    } else {
                        let keep = tail.len().saturating_sub(16);
                        tail.drain(..keep);
                    }
                }
            }
            if pending.is_empty() {
                return None;
            }
        }
    }
}

type Chunks = mpsc::Sender<(Instant, Vec<u8>)>;

/// Writes chunks once they are due; ends (and shuts the socket down) when all senders are
/// gone, or at an empty chunk (a cut: what was queued before it is written first).
fn writer(mut to: OwnedWriteHalf, rate: Option<u64>) -> (Chunks, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(1024);
    let task = tokio::spawn(async move {
        while let Some((due, chunk)) = rx.recv().await {
            if chunk.is_empty() {
                break;
            }
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                break;
            }
            if let Some(bps) = rate.filter(|b| *b > 0) {
                tokio::time::sleep(Duration::from_secs_f64(chunk.len() as f64 / bps as f64)).await;
            }
        }
        let _ = to.shutdown().await;
    });
    (tx, task)
}

/// Which way a `read` goes: the client's requests (where faults are judged) or the
/// upstream's answers.
enum Side<'a> {
    Asks(&'a Faults, Chunks, Arc<Mutex<Exchanges>>),
    Answers(Arc<Mutex<Exchanges>>, Arc<Faults>),
}

/// Reads `from` and queues its chunks on `to` with the delay. On the client side, the faults
/// may answer a request themselves or reset the connection; returns whether it reset.
async fn read(
    mut from: OwnedReadHalf,
    to: Chunks,
    delay: Duration,
    corrupt: Option<(u8, u8)>,
    side: Side<'_>,
) -> bool {
    let mut buf = vec![0u8; 64 << 10];
    // A request the proxy answers itself once its body is through: the body left, the answer.
    let mut swallowing: Option<(RequestBody, Vec<u8>)> = None;
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        let mut chunk = buf[..n].to_vec();
        let mut delay = delay;
        let mut cut = false;
        match &side {
            Side::Asks(faults, back, exchanges) => {
                if let Some((body, _)) = &mut swallowing {
                    let Some(used) = body.eat(&chunk) else {
                        continue;
                    };
                    if let Some((_, answer)) = swallowing.take()
                        && back.send((Instant::now() + delay, answer)).await.is_err()
                    {
                        return false;
                    }
                    chunk.drain(..used);
                    if chunk.is_empty() {
                        continue;
                    }
                }
                if faults.opts.decline_mounts
                    && let Some((plain, cross_repo)) = without_mount(&chunk)
                {
                    chunk = plain;
                    let injected = &faults.injected;
                    injected.declined_mounts.fetch_add(1, Ordering::Relaxed);
                    if cross_repo {
                        injected.declined_cross_repo.fetch_add(1, Ordering::Relaxed);
                    }
                }
                match faults.judge(&chunk) {
                    Verdict::Forward => {
                        if is_request(&chunk)
                            && let Ok(mut x) = exchanges.lock()
                        {
                            x.asked(chunk.starts_with(b"HEAD "), faults.cut(&chunk));
                        }
                    }
                    Verdict::Reset => return true,
                    Verdict::Answer(response) => {
                        if back.send((Instant::now() + delay, response)).await.is_err() {
                            return false;
                        }
                        continue;
                    }
                    Verdict::AnswerAfter(body, response) => {
                        if !body.done() {
                            swallowing = Some((body, response));
                        } else if back.send((Instant::now() + delay, response)).await.is_err() {
                            return false;
                        }
                        continue;
                    }
                }
            }
            Side::Answers(exchanges, faults) => {
                if let Ok(mut x) = exchanges.lock()
                    && let Some(keep) = x.answered(&chunk)
                {
                    chunk.truncate(keep);
                    cut = true;
                    faults.injected.cut_bodies.fetch_add(1, Ordering::Relaxed);
                }
                if let Some((from, extra)) = faults.opts.slow_from
                    && faults.requests.load(Ordering::Relaxed) >= from
                {
                    delay += extra;
                }
            }
        }
        if let Some((a, b)) = corrupt {
            chunk.iter_mut().filter(|x| **x == a).for_each(|x| *x = b);
        }
        let due = Instant::now() + delay;
        if !chunk.is_empty() && to.send((due, chunk)).await.is_err() {
            return false;
        }
        if cut {
            // The client's side is shut once the half body is out; the client then closes.
            let _ = to.send((due, Vec::new())).await;
            return false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now(x: &Exchanges) -> u64 {
        x.in_flight.now.load(Ordering::SeqCst)
    }

    #[test]
    fn a_mount_is_forwarded_as_a_plain_upload() {
        let mount =
            b"POST /v2/a/b/blobs/uploads/?mount=sha256:ab&from=c/d HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(
            without_mount(mount),
            Some((
                b"POST /v2/a/b/blobs/uploads/ HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
                true
            ))
        );
        let look = b"POST /v2/a/b/blobs/uploads/?mount=sha256:ab&from=a/b HTTP/1.1\r\n\r\n";
        assert_eq!(without_mount(look).map(|(_, cross)| cross), Some(false));
        for other in [
            &b"POST /v2/a/b/blobs/uploads/ HTTP/1.1\r\n\r\n"[..],
            b"GET /v2/a/b/blobs/uploads/?mount=sha256:ab HTTP/1.1\r\n\r\n",
            b"POST /v2/a/b/blobs/uploads/?digest=sha256:ab HTTP/1.1\r\n\r\n",
            b"POST /v2/a/b/blobs/uploads/?mount=sha256:ab",
        ] {
            assert_eq!(
                without_mount(other),
                None,
                "{}",
                String::from_utf8_lossy(other)
            );
        }
    }

    #[test]
    fn an_exchange_ends_when_its_answer_body_is_through() {
        let mut x = Exchanges::new(Arc::new(InFlight::default()));
        x.asked(false, false);
        x.asked(true, false);
        assert_eq!(now(&x), 2);
        // A GET's answer, split mid-head and mid-body.
        x.answered(b"HTTP/1.1 200 OK\r\nContent-Le");
        x.answered(b"ngth: 10\r\n\r\n01234");
        assert_eq!(now(&x), 2, "body not through yet");
        // The rest of the body and the HEAD's answer (a length, but no body) in one read.
        x.answered(b"56789HTTP/1.1 200 OK\r\nContent-Length: 999\r\n\r\n");
        assert_eq!(now(&x), 0);
        x.asked(false, false);
        x.answered(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n");
        assert_eq!(now(&x), 1);
        x.answered(b"0\r\n\r\n");
        assert_eq!(now(&x), 0);
        x.asked(false, false);
        x.closed();
        assert_eq!(now(&x), 0);
        assert_eq!(x.in_flight.peak.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_cut_answer_stops_after_half_its_body() {
        let mut x = Exchanges::new(Arc::new(InFlight::default()));
        x.asked(false, true);
        assert_eq!(
            x.answered(b"HTTP/1.1 206 Partial Content\r\nContent-Length: 10\r\n\r\n01"),
            None
        );
        // Three more body bytes pass, then the cut: 6 bytes of this read.
        assert_eq!(x.answered(b"23456789"), Some(3));
        // An error answer is never cut.
        let mut x = Exchanges::new(Arc::new(InFlight::default()));
        x.asked(false, true);
        assert_eq!(
            x.answered(b"HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\n{..}"),
            None
        );
        assert_eq!(now(&x), 0);
        // Cut within the read that carries the head.
        x.asked(false, true);
        let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nabcd";
        assert_eq!(x.answered(answer), Some(answer.len() - 2));
    }

    #[test]
    fn a_request_body_is_followed_to_its_end() {
        let req = b"PUT /v2/a/blobs/uploads/x?digest=d HTTP/1.1\r\ncontent-length: 6\r\n\r\nab";
        let end = req.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let mut body = RequestBody::after_head(req, end);
        assert!(!body.done());
        assert_eq!(body.eat(b"cd"), None);
        assert_eq!(body.eat(b"ef"), Some(2));
        assert!(body.done());
        let get = b"GET /v2/ HTTP/1.1\r\nhost: x\r\n\r\n";
        assert!(RequestBody::after_head(get, get.len()).done());
        let chunked = b"PATCH /u HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n";
        let end = chunked.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let mut body = RequestBody::after_head(chunked, end);
        assert!(!body.done());
        assert_eq!(body.eat(b"0\r\n\r\n"), Some(5));
    }
}
