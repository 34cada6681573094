//! A registry peer written here: it speaks just enough of the distribution API to be asked
//! for manifests, then answers, by repository, with endless, huge, slow or absurd ones — or
//! waits for another request first, to show which requests a client sends at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{Env, Measured, run_measured, sha};

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MB: u64 = 1024 * 1024;

/// The platform image the "duplicates" index points at: a config and no layers.
pub struct Small {
    config: Vec<u8>,
    manifest: Vec<u8>,
    /// The "heavy" index's platform manifests (digest, bytes), made when first asked for.
    heavy: std::sync::OnceLock<Vec<(String, Vec<u8>)>>,
}

impl Small {
    pub fn new() -> Self {
        let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"config":{}}"#.to_vec();
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[]}}"#,
            sha(&config),
            config.len()
        )
        .into_bytes();
        Self {
            config,
            manifest,
            heavy: std::sync::OnceLock::new(),
        }
    }

    /// 20 platform manifests of 1 MiB each (an annotation pads them), each distinct.
    fn heavy(&self) -> &[(String, Vec<u8>)] {
        self.heavy.get_or_init(|| {
            (0..20)
                .map(|i| {
                    let m = format!(
                        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[],"annotations":{{"n":"{i}","pad":"{}"}}}}"#,
                        sha(&self.config),
                        self.config.len(),
                        "x".repeat(MB as usize)
                    )
                    .into_bytes();
                    (sha(&m), m)
                })
                .collect()
        })
    }

    /// An index of the [`Small::heavy`] manifests, each under a platform of its own.
    fn heavy_index(&self) -> Vec<u8> {
        let entries: Vec<String> = self
            .heavy()
            .iter()
            .enumerate()
            .map(|(i, (digest, m))| {
                format!(
                    r#"{{"mediaType":"{OCI_MANIFEST}","digest":"{digest}","size":{},"platform":{{"architecture":"amd64","os":"linux","variant":"v{i}"}}}}"#,
                    m.len()
                )
            })
            .collect();
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{}]}}"#,
            entries.join(",")
        )
        .into_bytes()
    }

    /// A manifest whose one layer (10 MB, never sent whole) stalls after its first KiB.
    pub fn stalling_manifest(&self) -> Vec<u8> {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{}","size":10000000}}]}}"#,
            sha(&self.config),
            self.config.len(),
            sha(b"a layer that never arrives")
        )
        .into_bytes()
    }

    pub fn index(&self, copies: usize) -> Vec<u8> {
        let entry = format!(
            r#"{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":{},"platform":{{"architecture":"amd64","os":"linux"}}}}"#,
            sha(&self.manifest),
            self.manifest.len()
        );
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{}]}}"#,
            vec![entry; copies].join(",")
        )
        .into_bytes()
    }
}

pub struct Hostile {
    pub addr: String,
    pub seen: Arc<Seen>,
}

/// What the peer was asked, as it was asked.
#[derive(Default)]
pub struct Seen {
    /// GETs of the small platform manifest (by digest).
    pub platform_gets: AtomicUsize,
    /// `waits/app`'s tags have been listed.
    pub waits_listed: AtomicBool,
    /// ... before its tag's manifest was first answered.
    pub waits_listed_before_tag: AtomicBool,
    pub waits_tag_reads: AtomicUsize,
    /// Peers sharing this hold each `/v2/` (5 s at most) until another peer's arrives.
    pub hold_v2: bool,
    pub v2_held: AtomicUsize,
    /// A `/v2/` arrived while another peer's was held.
    pub v2_overlapped: AtomicBool,
    /// `paged/app`'s second page of tags was asked for.
    pub second_page: AtomicBool,
}

pub async fn start_hostile() -> Hostile {
    start_hostile_with(false).await
}

/// `token`: `/v2/` challenges for a bearer token whose realm answers without end.
pub async fn start_hostile_with(token: bool) -> Hostile {
    start_hostile_seeing(token, Arc::new(Seen::default())).await
}

pub async fn start_hostile_seeing(token: bool, seen: Arc<Seen>) -> Hostile {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let small = Arc::new(Small::new());
    let counter = seen.clone();
    let addr_in = addr.clone();
    tokio::spawn(async move {
        let addr = addr_in;
        while let Ok((conn, _)) = listener.accept().await {
            let realm = token.then(|| format!("http://{addr}/token"));
            tokio::spawn(serve(conn, small.clone(), counter.clone(), realm));
        }
    });
    Hostile { addr, seen }
}

/// One connection: requests read one after another (keep-alive), each answered by path.
async fn serve(mut conn: TcpStream, small: Arc<Small>, seen: Arc<Seen>, realm: Option<String>) {
    let mut buf = Vec::new();
    loop {
        let head = loop {
            // A TLS handshake (the client tries https first): not spoken here.
            if buf.first() == Some(&0x16) {
                return;
            }
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                buf.drain(..end + 4);
                break head;
            }
            let mut chunk = [0u8; 4096];
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let mut words = head.split_whitespace();
        let method = words.next().unwrap_or_default().to_owned();
        let path = words.next().unwrap_or_default().to_owned();
        let platform = format!("/manifests/{}", sha(&small.manifest));
        let config = format!("/blobs/{}", sha(&small.config));
        let answer = if path == "/v2/"
            && let Some(realm) = &realm
        {
            format!(
                "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"{realm}\",service=\"hostile\"\r\nContent-Length: 0\r\n\r\n"
            )
            .into_bytes()
        } else if path == "/v2/" {
            if seen.hold_v2 {
                hold_v2(&seen).await;
            }
            plain(200, "application/json", b"{}")
        } else if path.starts_with("/token")
            || (path.starts_with("/v2/endless/") && path.contains("/manifests/"))
        {
            endless(&mut conn, OCI_MANIFEST).await;
            return;
        } else if path.starts_with("/v2/declared/") && path.contains("/manifests/") {
            // Says 1 GiB up front, then sends it.
            let header = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {OCI_MANIFEST}\r\nContent-Length: {}\r\n\r\n",
                1024 * MB
            );
            if conn.write_all(header.as_bytes()).await.is_err() {
                return;
            }
            let chunk = vec![b' '; MB as usize];
            for _ in 0..1024 {
                if conn.write_all(&chunk).await.is_err() {
                    return;
                }
            }
            return;
        } else if path.starts_with("/v2/slow/") && path.contains("/manifests/") {
            // A valid manifest, one byte every five seconds.
            let body = small.manifest.clone();
            let header = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {OCI_MANIFEST}\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            if conn.write_all(header.as_bytes()).await.is_err() {
                return;
            }
            for b in body {
                if conn.write_all(&[b]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            return;
        } else if path.starts_with("/v2/gone/") && path.contains("/manifests/") {
            // Its layer is not there: the GET falls through to a 404.
            plain(200, OCI_MANIFEST, &small.stalling_manifest())
        } else if path.starts_with("/v2/gone/") && path.ends_with(&config) {
            plain(200, "application/octet-stream", &small.config)
        } else if path.starts_with("/v2/longer/") && path.contains("/manifests/") {
            plain(200, OCI_MANIFEST, &small.stalling_manifest())
        } else if path.starts_with("/v2/longer/") && path.ends_with(&config) {
            plain(200, "application/octet-stream", &small.config)
        } else if path.starts_with("/v2/longer/") && path.contains("/blobs/") {
            // The 10 MB layer, chunked (no length said up front) and without end.
            endless(&mut conn, "application/octet-stream").await;
            return;
        } else if path.starts_with("/v2/stall/") && path.contains("/manifests/") {
            plain(200, OCI_MANIFEST, &small.stalling_manifest())
        } else if path.starts_with("/v2/stall/") && path.ends_with(&config) {
            plain(200, "application/octet-stream", &small.config)
        } else if path.starts_with("/v2/stall/") && path.contains("/blobs/") {
            // The layer's first KiB, then nothing, for as long as anyone listens.
            let header = "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 10000000\r\n\r\n";
            if conn.write_all(header.as_bytes()).await.is_err()
                || conn.write_all(&[0u8; 1024]).await.is_err()
            {
                return;
            }
            tokio::time::sleep(Duration::from_secs(3600)).await;
            return;
        } else if path.starts_with("/v2/waits/app/tags/list") {
            seen.waits_listed.store(true, Ordering::SeqCst);
            plain(
                200,
                "application/json",
                br#"{"name":"waits/app","tags":["1"]}"#,
            )
        } else if path == "/v2/waits/app/manifests/1" {
            // The tag is answered once the tags are listed (or after 5 s): a planner that
            // lists only after the tag is read waits here.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while !seen.waits_listed.load(Ordering::SeqCst)
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            // Only the first read of the tag tells: a later one may come after any listing.
            if seen.waits_tag_reads.fetch_add(1, Ordering::SeqCst) == 0
                && seen.waits_listed.load(Ordering::SeqCst)
            {
                seen.waits_listed_before_tag.store(true, Ordering::SeqCst);
            }
            plain(200, OCI_MANIFEST, &small.manifest)
        } else if path.starts_with("/v2/waits/") && path.ends_with(&config) {
            plain(200, "application/octet-stream", &small.config)
        } else if let Some(rest) = path.strip_prefix("/v2/redirect/")
            && let Some((port, tail)) = rest.split_once('/')
        {
            // Any request of `redirect/PORT/<repo>` sent on to `<repo>` at another peer.
            let to = format!("http://127.0.0.1:{port}/v2/paged/{tail}");
            format!(
                "HTTP/1.1 307 Temporary Redirect\r\nLocation: {to}\r\nContent-Length: 0\r\n\r\n"
            )
            .into_bytes()
        } else if path.starts_with("/v2/paged/app/tags/list?") {
            seen.second_page.store(true, Ordering::SeqCst);
            plain(
                200,
                "application/json",
                br#"{"name":"paged/app","tags":["2"]}"#,
            )
        } else if path.starts_with("/v2/paged/app/tags/list") {
            // A page that names its next on this peer.
            let body = br#"{"name":"paged/app","tags":["1"]}"#;
            let mut head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nLink: </v2/paged/app/tags/list?last=1&n=1>; rel=\"next\"\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .into_bytes();
            head.extend_from_slice(body);
            head
        } else if path.starts_with("/v2/heavy/") && path.ends_with("/manifests/1") {
            plain(200, OCI_INDEX, &small.heavy_index())
        } else if path.starts_with("/v2/heavy/")
            && let Some((_, m)) = small
                .heavy()
                .iter()
                .find(|(d, _)| path.ends_with(&format!("/manifests/{d}")))
        {
            plain(200, OCI_MANIFEST, m)
        } else if path.starts_with("/v2/many/") && path.ends_with("/manifests/1") {
            plain(200, OCI_INDEX, &small.index(5000))
        } else if path.starts_with("/v2/dup/") && path.ends_with("/manifests/1") {
            plain(200, OCI_INDEX, &small.index(500))
        } else if path.starts_with("/v2/dup/") && path.ends_with(&platform) {
            seen.platform_gets.fetch_add(1, Ordering::SeqCst);
            plain(200, OCI_MANIFEST, &small.manifest)
        } else if path.starts_with("/v2/dup/") && path.ends_with(&config) {
            plain(200, "application/octet-stream", &small.config)
        } else {
            plain(
                404,
                "application/json",
                br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#,
            )
        };
        let answer = if method == "HEAD" {
            // Headers only.
            let end = answer
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map_or(answer.len(), |e| e + 4);
            answer[..end].to_vec()
        } else {
            answer
        };
        if conn.write_all(&answer).await.is_err() {
            return;
        }
    }
}

/// Chunked, for ever: one MiB after another until the client hangs up.
async fn endless(conn: &mut TcpStream, content_type: &str) {
    let header = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    if conn.write_all(header.as_bytes()).await.is_err() {
        return;
    }
    let chunk = vec![b' '; MB as usize];
    let framed = [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
    while conn.write_all(&framed).await.is_ok() {}
}

/// Holds a `/v2/` until another peer's arrives (5 s at most), or releases the one held.
async fn hold_v2(seen: &Seen) {
    // Counted before it looks: of two arriving together, one holds and one releases.
    if seen.v2_held.fetch_add(1, Ordering::SeqCst) > 0 {
        seen.v2_overlapped.store(true, Ordering::SeqCst);
        seen.v2_held.fetch_sub(1, Ordering::SeqCst);
        return;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !seen.v2_overlapped.load(Ordering::SeqCst) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    seen.v2_held.fetch_sub(1, Ordering::SeqCst);
}

pub fn plain(status: u16, content_type: &str, body: &[u8]) -> Vec<u8> {
    let reason = if status == 200 { "OK" } else { "Not Found" };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nDocker-Distribution-API-Version: registry/2.0\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// Mirrors `{src}/{name}/app:1` into the environment's destination.
pub fn mirror_one(env: &Env, src: &str, name: &str, timeout: &str, limit: Duration) -> Measured {
    let list = env.write_list(&format!("{name}.txt"), &[format!("{src}/{name}/app:1")]);
    let failed = env.path(&format!("{name}-failed.txt"));
    run_measured(
        &[
            "mirror",
            "--tls-verify=false",
            "--timeout",
            timeout,
            "-f",
            list.to_str().expect("utf-8"),
            "-d",
            &env.dst.addr,
            "-o",
            failed.to_str().expect("utf-8"),
        ],
        limit,
    )
}
