//! A TCP proxy in front of a real service. It adds a one-way delay in each direction
//! without capping bandwidth, as a WAN link does: each chunk is stamped when it arrives and
//! forwarded once its delay has passed, so many chunks are in flight at once.
//!
//! It also injects faults, to prove the client copes: it corrupts the upstream's bytes
//! (one byte value replaced by another), resets the connection on the first blob GETs, and
//! plays a rate limiter that answers blob requests `429` with `Retry-After` for a while.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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
}

pub struct Proxy {
    pub addr: String,
    pub connections: Arc<AtomicU64>,
    /// How many requests were answered 429.
    pub throttled: Arc<AtomicU64>,
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

struct Faults {
    opts: ProxyOptions,
    resets_left: AtomicU64,
    throttle_until: Mutex<Option<Instant>>,
    throttled: Arc<AtomicU64>,
    /// The current one-second window and the requests seen in it.
    burst: Mutex<(Instant, u32)>,
    peak: Arc<AtomicU64>,
    requests: AtomicU64,
}

/// Whether a client chunk starts a request (the proxy sees request heads whole: clients
/// write them in one piece).
fn is_request(chunk: &[u8]) -> bool {
    [
        &b"GET "[..],
        b"HEAD ",
        b"PUT ",
        b"POST ",
        b"PATCH ",
        b"DELETE ",
    ]
    .iter()
    .any(|m| chunk.starts_with(m))
}

enum Verdict {
    Forward,
    Reset,
    Answer(Vec<u8>),
}

impl Faults {
    fn judge(&self, chunk: &[u8]) -> Verdict {
        if is_request(chunk) {
            self.requests.fetch_add(1, Ordering::Relaxed);
        }
        if let (Some(limit), true) = (self.opts.burst_limit, is_request(chunk))
            && let Ok(mut burst) = self.burst.lock()
        {
            let now = Instant::now();
            if now.duration_since(burst.0) >= Duration::from_secs(1) {
                *burst = (now, 0);
            }
            burst.1 += 1;
            self.peak.fetch_max(u64::from(burst.1), Ordering::Relaxed);
            if burst.1 > limit {
                self.throttled.fetch_add(1, Ordering::Relaxed);
                return Verdict::Answer(
                    b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}".to_vec(),
                );
            }
        }
        let is_blob = chunk.windows(14).any(|w| w == b"/blobs/sha256:");
        let is_get = chunk.starts_with(b"GET ");
        if is_blob
            && is_get
            && self
                .resets_left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            return Verdict::Reset;
        }
        let (Some(window), true) = (
            self.opts.throttle_blobs,
            is_blob && (is_get || chunk.starts_with(b"HEAD ")),
        ) else {
            return Verdict::Forward;
        };
        let now = Instant::now();
        let Ok(mut until) = self.throttle_until.lock() else {
            return Verdict::Forward;
        };
        let end = match *until {
            Some(end) => end,
            None if is_get => *until.insert(now + window),
            None => return Verdict::Forward,
        };
        if now >= end {
            return Verdict::Forward;
        }
        self.throttled.fetch_add(1, Ordering::Relaxed);
        let secs = (end - now).as_secs_f64().ceil() as u64;
        Verdict::Answer(
            format!("HTTP/1.1 429 Too Many Requests\r\nRetry-After: {secs}\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}")
                .into_bytes(),
        )
    }
}

pub async fn start(listen: &str, upstream: &str, opts: ProxyOptions) -> io::Result<Proxy> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?.to_string();
    let upstream = upstream.to_owned();
    let connections = Arc::new(AtomicU64::new(0));
    let throttled = Arc::new(AtomicU64::new(0));
    let peak = Arc::new(AtomicU64::new(0));
    let faults = Arc::new(Faults {
        opts,
        resets_left: AtomicU64::new(opts.reset_blob_gets),
        throttle_until: Mutex::new(None),
        throttled: throttled.clone(),
        burst: Mutex::new((Instant::now(), 0)),
        peak: peak.clone(),
        requests: AtomicU64::new(0),
    });
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

struct Exchanges {
    in_flight: Arc<InFlight>,
    /// Per waiting request: whether it was a HEAD (its answer has no body).
    waiting: std::collections::VecDeque<bool>,
    reading: Reading,
}

impl Exchanges {
    fn new(in_flight: Arc<InFlight>) -> Self {
        Self {
            in_flight,
            waiting: Default::default(),
            reading: Reading::Head(Vec::new()),
        }
    }

    fn asked(&mut self, head: bool) {
        self.waiting.push_back(head);
        self.in_flight.start();
    }

    /// An exchange is over once its answer's body is through.
    fn finish(&mut self) {
        if self.waiting.pop_front().is_some() {
            self.in_flight.end();
        }
        self.reading = Reading::Head(Vec::new());
    }

    fn closed(&mut self) {
        for _ in self.waiting.drain(..) {
            self.in_flight.end();
        }
    }

    /// Follows the upstream's bytes.
    fn answered(&mut self, bytes: &[u8]) {
        let mut pending = bytes.to_vec();
        loop {
            match &mut self.reading {
                Reading::Head(buf) => {
                    buf.append(&mut pending);
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        return;
                    };
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
                    let was_head = self.waiting.front().copied().unwrap_or(false);
                    self.reading = if was_head || status == 204 || status == 304 {
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
                    if matches!(self.reading, Reading::Body(0)) {
                        self.finish();
                    }
                }
                Reading::Body(left) => {
                    let take = (*left).min(pending.len() as u64);
                    *left -= take;
                    pending.drain(..take as usize);
                    if *left > 0 {
                        return;
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
                return;
            }
        }
    }
}

type Chunks = mpsc::Sender<(Instant, Vec<u8>)>;

/// Writes chunks once they are due; ends (and shuts the socket down) when all senders are gone.
fn writer(mut to: OwnedWriteHalf, rate: Option<u64>) -> (Chunks, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(1024);
    let task = tokio::spawn(async move {
        while let Some((due, chunk)) = rx.recv().await {
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
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        let mut chunk = buf[..n].to_vec();
        let mut delay = delay;
        match &side {
            Side::Asks(faults, back, exchanges) => match faults.judge(&chunk) {
                Verdict::Forward => {
                    if is_request(&chunk)
                        && let Ok(mut x) = exchanges.lock()
                    {
                        x.asked(chunk.starts_with(b"HEAD "));
                    }
                }
                Verdict::Reset => return true,
                Verdict::Answer(response) => {
                    if back.send((Instant::now() + delay, response)).await.is_err() {
                        return false;
                    }
                    continue;
                }
            },
            Side::Answers(exchanges, faults) => {
                if let Ok(mut x) = exchanges.lock() {
                    x.answered(&chunk);
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
        if to.send((Instant::now() + delay, chunk)).await.is_err() {
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
    fn an_exchange_ends_when_its_answer_body_is_through() {
        let mut x = Exchanges::new(Arc::new(InFlight::default()));
        x.asked(false);
        x.asked(true);
        assert_eq!(now(&x), 2);
        // A GET's answer, split mid-head and mid-body.
        x.answered(b"HTTP/1.1 200 OK\r\nContent-Le");
        x.answered(b"ngth: 10\r\n\r\n01234");
        assert_eq!(now(&x), 2, "body not through yet");
        // The rest of the body and the HEAD's answer (a length, but no body) in one read.
        x.answered(b"56789HTTP/1.1 200 OK\r\nContent-Length: 999\r\n\r\n");
        assert_eq!(now(&x), 0);
        x.asked(false);
        x.answered(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n");
        assert_eq!(now(&x), 1);
        x.answered(b"0\r\n\r\n");
        assert_eq!(now(&x), 0);
        x.asked(false);
        x.closed();
        assert_eq!(now(&x), 0);
        assert_eq!(x.in_flight.peak.load(Ordering::SeqCst), 2);
    }
}
