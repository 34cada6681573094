//! The faults the proxy injects: byte corruption, resets, 429 throttling and bursts,
//! slowdowns, and the seeded flaky-registry mode (its own error answers, cut bodies).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::ProxyOptions;

/// What the fault mode injected, by kind.
#[derive(Debug, Default)]
pub struct Injected {
    /// `500` with `UNKNOWN`.
    pub unknown_500: AtomicU64,
    /// `503` with `UNAVAILABLE`.
    pub unavailable_503: AtomicU64,
    /// `429` with `TOOMANYREQUESTS` and `Retry-After: 1`.
    pub too_many_429: AtomicU64,
    /// `429` with `TOOMANYREQUESTS` and no `Retry-After`.
    pub too_many_bare_429: AtomicU64,
    /// `503` carrying a 4xx-style code (`MANIFEST_UNKNOWN`, `BLOB_UNKNOWN`, ...).
    pub misleading_503: AtomicU64,
    /// Blob answers closed halfway through their body.
    pub cut_bodies: AtomicU64,
    /// Of the errors answered, those to writes (PUT, POST, PATCH, DELETE).
    pub on_writes: AtomicU64,
    /// Mounts forwarded as plain uploads (`decline_mounts`).
    pub declined_mounts: AtomicU64,
    /// ... of them, mounts from another repository (not a look in the blob's own).
    pub declined_cross_repo: AtomicU64,
}

impl Injected {
    /// Errors answered (cut bodies not included).
    pub fn answered(&self) -> u64 {
        [
            &self.unknown_500,
            &self.unavailable_503,
            &self.too_many_429,
            &self.too_many_bare_429,
            &self.misleading_503,
        ]
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum()
    }
}

impl std::fmt::Display for Injected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        write!(
            f,
            "500 UNKNOWN {}, 503 UNAVAILABLE {}, 429 with Retry-After {}, 429 without {}, \
             503 with a 4xx code {}, cut bodies {} (to writes {}), declined mounts {}",
            n(&self.unknown_500),
            n(&self.unavailable_503),
            n(&self.too_many_429),
            n(&self.too_many_bare_429),
            n(&self.misleading_503),
            n(&self.cut_bodies),
            n(&self.on_writes),
            n(&self.declined_mounts)
        )
    }
}
pub(super) struct Faults {
    pub(super) opts: ProxyOptions,
    pub(super) resets_left: AtomicU64,
    pub(super) throttle_until: Mutex<Option<Instant>>,
    pub(super) throttled: Arc<AtomicU64>,
    /// The current one-second window and the requests seen in it.
    pub(super) burst: Mutex<(Instant, u32)>,
    pub(super) peak: Arc<AtomicU64>,
    pub(super) requests: AtomicU64,
    pub(super) injected: Arc<Injected>,
    /// Requests judged by `fail_ratio`, faults injected (for the rotation), blob GETs judged
    /// by `cut_blob_bodies`.
    pub(super) judged: AtomicU64,
    pub(super) rotation: AtomicU64,
    pub(super) blob_gets: AtomicU64,
    /// Faults in a row by request line (`faults_in_a_row`).
    pub(super) streaks: Mutex<HashMap<String, u32>>,
}

/// A request's method and path, its query left out: what a client's retry asks again.
fn request_line(chunk: &[u8]) -> String {
    let line = chunk.split(|b| *b == b'\r').next().unwrap_or_default();
    let mut words = line.split(|b| *b == b' ');
    let method = String::from_utf8_lossy(words.next().unwrap_or_default());
    let target = words.next().unwrap_or_default();
    let path = target.split(|b| *b == b'?').next().unwrap_or_default();
    format!("{method} {}", String::from_utf8_lossy(path))
}

fn is_blob_get(chunk: &[u8]) -> bool {
    chunk.starts_with(b"GET ") && chunk.windows(14).any(|w| w == b"/blobs/sha256:")
}

/// A uniform number in [0, 1) from a seed and an ordinal (splitmix64).
pub(super) fn unit(seed: u64, n: u64) -> f64 {
    let mut z = seed.wrapping_add(n.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D1_049B_B133_111B);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// A request's body still to come after its head, as far as the head tells.
#[derive(Debug)]
pub(super) enum RequestBody {
    Length(u64),
    /// Chunked: the last bytes seen, to find its end across reads.
    Chunked(Vec<u8>),
}

impl RequestBody {
    /// What follows the head that ends at `head_end` (just past its blank line) in `chunk`.
    pub(super) fn after_head(chunk: &[u8], head_end: usize) -> Self {
        let head = String::from_utf8_lossy(&chunk[..head_end]).to_ascii_lowercase();
        let header = |name: &str| {
            head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == name).then(|| v.trim().to_owned())
            })
        };
        let mut body = if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            Self::Chunked(Vec::new())
        } else {
            Self::Length(
                header("content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
            )
        };
        body.eat(&chunk[head_end..]);
        body
    }

    /// Consumes body bytes; returns how many of `bytes` were body once the body is through,
    /// `None` while more is to come.
    pub(super) fn eat(&mut self, bytes: &[u8]) -> Option<usize> {
        match self {
            Self::Length(left) => {
                let take = (*left).min(bytes.len() as u64);
                *left -= take;
                (*left == 0).then_some(take as usize)
            }
            Self::Chunked(tail) => {
                tail.extend_from_slice(bytes);
                if tail.starts_with(b"0\r\n\r\n") || tail.ends_with(b"\r\n0\r\n\r\n") {
                    // No pipelining: a chunked body's end is the end of what was sent.
                    *self = Self::Length(0);
                    Some(bytes.len())
                } else {
                    let keep = tail.len().saturating_sub(16);
                    tail.drain(..keep);
                    None
                }
            }
        }
    }

    pub(super) fn done(&self) -> bool {
        matches!(self, Self::Length(0))
    }
}

/// A distribution-style error answer; no body for a HEAD.
pub(super) fn error_answer(
    status: &str,
    retry_after: bool,
    code: &str,
    message: &str,
    head: bool,
) -> Vec<u8> {
    let body = format!(r#"{{"errors":[{{"code":"{code}","message":"{message}","detail":null}}]}}"#);
    let retry = if retry_after {
        "Retry-After: 1\r\n"
    } else {
        ""
    };
    let mut answer = format!(
        "HTTP/1.1 {status}\r\n{retry}Content-Type: application/json; charset=utf-8\r\n\
         Docker-Distribution-Api-Version: registry/2.0\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    if !head {
        answer.push_str(&body);
    }
    answer.into_bytes()
}

/// A mount request (`POST …/blobs/uploads/?mount=…`) with its query removed from the request
/// line, the rest of the chunk as it was, and whether it mounts from another repository;
/// `None` for anything else.
pub(super) fn without_mount(chunk: &[u8]) -> Option<(Vec<u8>, bool)> {
    let line_end = chunk.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&chunk[..line_end]).ok()?;
    let mut words = line.split(' ');
    let (method, target, version) = (words.next()?, words.next()?, words.next()?);
    let (path, query) = target.split_once('?')?;
    let mounts = query.split('&').any(|p| p.starts_with("mount="));
    if method != "POST" || !path.ends_with("/blobs/uploads/") || !mounts {
        return None;
    }
    let repo = path.strip_prefix("/v2/")?.strip_suffix("/blobs/uploads/")?;
    let cross_repo = query
        .split('&')
        .filter_map(|p| p.strip_prefix("from="))
        .any(|from| from.replace("%2F", "/") != repo);
    let mut out = format!("{method} {path} {version}").into_bytes();
    out.extend_from_slice(&chunk[line_end..]);
    Some((out, cross_repo))
}

/// Whether a client chunk starts a request (the proxy sees request heads whole: clients
/// write them in one piece).
pub(super) fn is_request(chunk: &[u8]) -> bool {
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

pub(super) enum Verdict {
    Forward,
    Reset,
    Answer(Vec<u8>),
    /// Answer once the request's body is through (read and dropped).
    AnswerAfter(RequestBody, Vec<u8>),
}

impl Faults {
    pub(super) fn new(
        opts: ProxyOptions,
        throttled: Arc<AtomicU64>,
        peak: Arc<AtomicU64>,
        injected: Arc<Injected>,
    ) -> Self {
        Self {
            opts,
            resets_left: AtomicU64::new(opts.reset_blob_gets),
            throttle_until: Mutex::new(None),
            throttled,
            burst: Mutex::new((Instant::now(), 0)),
            peak,
            requests: AtomicU64::new(0),
            injected,
            judged: AtomicU64::new(0),
            rotation: AtomicU64::new(0),
            blob_gets: AtomicU64::new(0),
            streaks: Mutex::new(HashMap::new()),
        }
    }

    /// The request line `chunk`'s faults in a row are counted under; `None` when they are
    /// not counted (no `faults_in_a_row`), so a proxy without the cap reads no more of it.
    fn streak_of(&self, chunk: &[u8]) -> Option<String> {
        self.opts.faults_in_a_row.map(|_| request_line(chunk))
    }

    /// Whether `line` has had as many faults in a row as `faults_in_a_row` allows.
    fn at_limit(&self, line: Option<&String>) -> bool {
        let (Some(limit), Some(line)) = (self.opts.faults_in_a_row, line) else {
            return false;
        };
        let streaks = self.streaks.lock().unwrap_or_else(|e| e.into_inner());
        streaks.get(line).is_some_and(|n| *n >= limit)
    }

    /// One more fault in a row for `line`, or the end of its run.
    fn note(&self, line: Option<String>, faulted: bool) {
        let Some(line) = line else {
            return;
        };
        let mut streaks = self.streaks.lock().unwrap_or_else(|e| e.into_inner());
        match faulted {
            true => *streaks.entry(line).or_default() += 1,
            false => drop(streaks.remove(&line)),
        }
    }

    pub(super) fn judge(&self, chunk: &[u8]) -> Verdict {
        if let Some(refused) = self.refused_upload(chunk) {
            return refused;
        }
        match self.judge_limits(chunk) {
            Verdict::Forward if is_request(chunk) => self.fail(chunk),
            v => v,
        }
    }

    /// `refuse_uploads_to`: an upload into a repository the registry does not have.
    fn refused_upload(&self, chunk: &[u8]) -> Option<Verdict> {
        let prefix = self.opts.refuse_uploads_to?;
        let head_end = chunk.windows(4).position(|w| w == b"\r\n\r\n")?;
        let line = String::from_utf8_lossy(&chunk[..head_end]);
        let path = line.split_whitespace().nth(1)?;
        let refused = chunk.starts_with(b"POST ")
            && path.contains("/blobs/uploads/")
            && path.starts_with(&format!("/v2/{prefix}"));
        refused.then(|| {
            let answer = error_answer(
                "404 Not Found",
                false,
                "NAME_UNKNOWN",
                "repository name not known to registry",
                false,
            );
            Verdict::AnswerAfter(RequestBody::after_head(chunk, head_end + 4), answer)
        })
    }

    /// `fail_ratio`: whether this request is answered with an error of the proxy's own.
    pub(super) fn fail(&self, chunk: &[u8]) -> Verdict {
        let Some((ratio, seed)) = self.opts.fail_ratio else {
            return Verdict::Forward;
        };
        // Only a request whose head is whole here: its body is then known.
        let Some(head_end) = chunk.windows(4).position(|w| w == b"\r\n\r\n") else {
            return Verdict::Forward;
        };
        let n = self.judged.fetch_add(1, Ordering::Relaxed);
        let request = self.streak_of(chunk);
        if self.at_limit(request.as_ref()) || unit(seed, n) >= ratio {
            // A blob GET's run ends, or goes on, with `cut`.
            if !is_blob_get(chunk) {
                self.note(request, false);
            }
            return Verdict::Forward;
        }
        self.note(request, true);
        let line = String::from_utf8_lossy(&chunk[..head_end]);
        let path = line.split_whitespace().nth(1).unwrap_or("");
        let head = chunk.starts_with(b"HEAD ");
        let i = &self.injected;
        if !head && !chunk.starts_with(b"GET ") {
            i.on_writes.fetch_add(1, Ordering::Relaxed);
        }
        let answer = match self.rotation.fetch_add(1, Ordering::Relaxed) % 5 {
            0 => {
                i.unknown_500.fetch_add(1, Ordering::Relaxed);
                error_answer(
                    "500 Internal Server Error",
                    false,
                    "UNKNOWN",
                    "unknown error",
                    head,
                )
            }
            1 => {
                i.unavailable_503.fetch_add(1, Ordering::Relaxed);
                error_answer(
                    "503 Service Unavailable",
                    false,
                    "UNAVAILABLE",
                    "service unavailable",
                    head,
                )
            }
            2 => {
                i.too_many_429.fetch_add(1, Ordering::Relaxed);
                self.throttled.fetch_add(1, Ordering::Relaxed);
                error_answer(
                    "429 Too Many Requests",
                    true,
                    "TOOMANYREQUESTS",
                    "slow down",
                    head,
                )
            }
            3 => {
                i.too_many_bare_429.fetch_add(1, Ordering::Relaxed);
                self.throttled.fetch_add(1, Ordering::Relaxed);
                error_answer(
                    "429 Too Many Requests",
                    false,
                    "TOOMANYREQUESTS",
                    "slow down",
                    head,
                )
            }
            _ => {
                i.misleading_503.fetch_add(1, Ordering::Relaxed);
                let code = if path.contains("/manifests/") {
                    "MANIFEST_UNKNOWN"
                } else if path.contains("/blobs/uploads") {
                    "BLOB_UPLOAD_UNKNOWN"
                } else if path.contains("/blobs/") {
                    "BLOB_UNKNOWN"
                } else {
                    "NAME_UNKNOWN"
                };
                error_answer(
                    "503 Service Unavailable",
                    false,
                    code,
                    "unknown to storage",
                    head,
                )
            }
        };
        Verdict::AnswerAfter(RequestBody::after_head(chunk, head_end + 4), answer)
    }

    /// `cut_blob_bodies`: whether this forwarded request's answer is cut halfway.
    pub(super) fn cut(&self, chunk: &[u8]) -> bool {
        if !is_blob_get(chunk) {
            return false;
        }
        let request = self.streak_of(chunk);
        let cut = match self.opts.cut_blob_bodies {
            Some((ratio, seed)) => {
                let n = self.blob_gets.fetch_add(1, Ordering::Relaxed);
                !self.at_limit(request.as_ref()) && unit(seed ^ 0x5EED_CB0D, n) < ratio
            }
            None => false,
        };
        self.note(request, cut);
        cut
    }

    /// `burst_limit`, `reset_blob_gets` and `throttle_blobs`.
    pub(super) fn judge_limits(&self, chunk: &[u8]) -> Verdict {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_request_line_gets_more_faults_in_a_row_than_allowed() {
        let opts = ProxyOptions {
            fail_ratio: Some((1.0, 1)),
            cut_blob_bodies: Some((1.0, 1)),
            faults_in_a_row: Some(2),
            ..Default::default()
        };
        let faults = Faults::new(
            opts,
            Default::default(),
            Default::default(),
            Default::default(),
        );
        let failed = |req: &[u8]| !matches!(faults.judge(req), Verdict::Forward);
        let manifest = b"GET /v2/a/manifests/v1 HTTP/1.1\r\nhost: x\r\n\r\n";
        let other = b"GET /v2/b/manifests/v1 HTTP/1.1\r\nhost: x\r\n\r\n";
        // Every request would fail: two do, the third goes through, then two again.
        let seen: Vec<bool> = (0..6).map(|_| failed(manifest)).collect();
        assert_eq!(seen, [true, true, false, true, true, false]);
        assert!(failed(other), "another path keeps its own count");
        // A blob GET forwarded by `fail` at its limit is not cut either (the query does
        // not make it another line); after it, the count starts again.
        let blob = |q: &str| format!("GET /v2/a/blobs/sha256:00?{q} HTTP/1.1\r\nhost: x\r\n\r\n");
        assert!(failed(blob("a").as_bytes()) && failed(blob("b").as_bytes()));
        assert!(!failed(blob("c").as_bytes()) && !faults.cut(blob("c").as_bytes()));
        assert!(failed(blob("d").as_bytes()));
        // Cuts count as faults in a row too.
        let cutting = Faults::new(
            ProxyOptions {
                fail_ratio: None,
                ..opts
            },
            Default::default(),
            Default::default(),
            Default::default(),
        );
        let cuts: Vec<bool> = (0..4).map(|_| cutting.cut(blob("").as_bytes())).collect();
        assert_eq!(cuts, [true, true, false, true]);
        let unlimited = Faults::new(
            ProxyOptions {
                faults_in_a_row: None,
                ..opts
            },
            Default::default(),
            Default::default(),
            Default::default(),
        );
        assert!((0..6).all(|_| !matches!(unlimited.judge(manifest), Verdict::Forward)));
    }

    #[test]
    fn faults_come_from_the_seed_at_the_ratio_asked() {
        let hits = |seed| (0..10_000).filter(|n| unit(seed, *n) < 0.08).count();
        let a = hits(7);
        assert_eq!(a, hits(7), "same seed, same faults");
        assert!((650..950).contains(&a), "{a} of 10000 at 8 %");
        let same: Vec<bool> = (0..64).map(|n| unit(7, n) < 0.5).collect();
        let other: Vec<bool> = (0..64).map(|n| unit(8, n) < 0.5).collect();
        assert_ne!(same, other);
    }
}
