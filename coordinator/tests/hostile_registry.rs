//! A hostile registry, written here: it speaks just enough of the distribution API to be
//! asked for manifests, then answers with endless, huge, slow or absurd ones. Each case runs
//! the real `hangar-coord` and asserts the error naming the input, the time it took and the
//! process's peak memory.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Env, Measured, run_measured, sha};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MB: u64 = 1024 * 1024;

/// The platform image the "duplicates" index points at: a config and no layers.
struct Small {
    config: Vec<u8>,
    manifest: Vec<u8>,
}

impl Small {
    fn new() -> Self {
        let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"config":{}}"#.to_vec();
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[]}}"#,
            sha(&config),
            config.len()
        )
        .into_bytes();
        Self { config, manifest }
    }

    /// A manifest whose one layer (10 MB, never sent whole) stalls after its first KiB.
    fn stalling_manifest(&self) -> Vec<u8> {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{}","size":10000000}}]}}"#,
            sha(&self.config),
            self.config.len(),
            sha(b"a layer that never arrives")
        )
        .into_bytes()
    }

    fn index(&self, copies: usize) -> Vec<u8> {
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

struct Hostile {
    addr: String,
    /// GETs of the small platform manifest (by digest).
    platform_gets: Arc<AtomicUsize>,
}

async fn start_hostile() -> Hostile {
    start_hostile_with(false).await
}

/// `token`: `/v2/` challenges for a bearer token whose realm answers without end.
async fn start_hostile_with(token: bool) -> Hostile {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let platform_gets = Arc::new(AtomicUsize::new(0));
    let small = Arc::new(Small::new());
    let counter = platform_gets.clone();
    let addr_in = addr.clone();
    tokio::spawn(async move {
        let addr = addr_in;
        while let Ok((conn, _)) = listener.accept().await {
            let realm = token.then(|| format!("http://{addr}/token"));
            tokio::spawn(serve(conn, small.clone(), counter.clone(), realm));
        }
    });
    Hostile {
        addr,
        platform_gets,
    }
}

/// One connection: requests read one after another (keep-alive), each answered by path.
async fn serve(
    mut conn: TcpStream,
    small: Arc<Small>,
    platform_gets: Arc<AtomicUsize>,
    realm: Option<String>,
) {
    let mut buf = Vec::new();
    loop {
        let head = loop {
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
            plain(200, "application/json", b"{}")
        } else if path.starts_with("/token")
            || (path.starts_with("/v2/endless/") && path.contains("/manifests/"))
        {
            // Chunked, for ever: one MiB after another until the client hangs up.
            let header = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {OCI_MANIFEST}\r\nTransfer-Encoding: chunked\r\n\r\n"
            );
            if conn.write_all(header.as_bytes()).await.is_err() {
                return;
            }
            let chunk = vec![b' '; MB as usize];
            loop {
                let framed =
                    [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
                if conn.write_all(&framed).await.is_err() {
                    return;
                }
            }
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
        } else if path.starts_with("/v2/many/") && path.ends_with("/manifests/1") {
            plain(200, OCI_INDEX, &small.index(5000))
        } else if path.starts_with("/v2/dup/") && path.ends_with("/manifests/1") {
            plain(200, OCI_INDEX, &small.index(500))
        } else if path.starts_with("/v2/dup/") && path.ends_with(&platform) {
            platform_gets.fetch_add(1, Ordering::SeqCst);
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

fn plain(status: u16, content_type: &str, body: &[u8]) -> Vec<u8> {
    let reason = if status == 200 { "OK" } else { "Not Found" };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nDocker-Distribution-API-Version: registry/2.0\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

fn mirror_one(env: &Env, src: &str, name: &str, timeout: &str, limit: Duration) -> Measured {
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

const COPY_RSS_BOUND: u64 = 128 * MB;

#[tokio::test(flavor = "multi_thread")]
async fn huge_and_endless_manifests_are_refused_at_four_mib() {
    let env = Env::new();
    let hostile = start_hostile().await;
    for name in ["endless", "declared"] {
        let run = mirror_one(&env, &hostile.addr, name, "60s", Duration::from_secs(120));
        assert!(!run.success, "{name}: {}", run.output);
        assert!(
            run.output.contains("larger than 4096 KiB")
                && run.output.contains(&format!("{name}/app:1")),
            "{name}: {}",
            run.output
        );
        // Refused as it streams: well inside the timeout, and memory near a plain run's.
        assert!(
            run.elapsed < Duration::from_secs(30),
            "{name}: {:?}",
            run.elapsed
        );
        assert!(
            run.peak_rss < COPY_RSS_BOUND,
            "{name}: peak RSS {} MB",
            run.peak_rss / MB
        );
        let failed =
            std::fs::read_to_string(env.path(&format!("{name}-failed.txt"))).unwrap_or_default();
        assert!(failed.contains(&format!("{name}/app:1")), "{failed}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_manifest_sent_a_byte_at_a_time_ends_at_the_timeout() {
    let env = Env::new();
    let hostile = start_hostile().await;
    let run = mirror_one(&env, &hostile.addr, "slow", "10s", Duration::from_secs(60));
    assert!(!run.success, "{}", run.output);
    assert!(
        run.output.contains("slow/app:1") && run.output.contains("within 10s"),
        "{}",
        run.output
    );
    assert!(run.elapsed < Duration::from_secs(20), "{:?}", run.elapsed);
    assert!(
        run.peak_rss < COPY_RSS_BOUND,
        "peak RSS {} MB",
        run.peak_rss / MB
    );

    // So does mirror validate, per image.
    let list = env.path("slow.txt");
    let run = run_measured(
        &[
            "mirror",
            "validate",
            "--tls-verify=false",
            "--timeout",
            "5s",
            "-f",
            list.to_str().expect("utf-8"),
            "-d",
            &env.dst.addr,
            "-o",
            env.path("validate-failed.txt").to_str().expect("utf-8"),
        ],
        Duration::from_secs(60),
    );
    assert!(!run.success, "{}", run.output);
    assert!(
        run.output
            .contains("planning did not finish within 5s (--timeout)"),
        "{}",
        run.output
    );
    assert!(run.elapsed < Duration::from_secs(15), "{:?}", run.elapsed);

    // The one-shot commands take --timeout as well.
    let reference = format!("docker://{}/slow/app:1", hostile.addr);
    for args in [
        vec![
            "inspect",
            "--raw",
            "--tls-verify=false",
            "--timeout",
            "5s",
            reference.as_str(),
        ],
        vec![
            "inspect",
            "--tls-verify=false",
            "--timeout",
            "5s",
            reference.as_str(),
        ],
    ] {
        let run = run_measured(&args, Duration::from_secs(60));
        assert!(!run.success, "{args:?}: {}", run.output);
        assert!(run.output.contains("within 5s"), "{args:?}: {}", run.output);
        assert!(
            run.elapsed < Duration::from_secs(15),
            "{args:?}: {:?}",
            run.elapsed
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_index_is_deduplicated_and_capped() {
    let env = Env::new();
    let hostile = start_hostile().await;
    let run = mirror_one(&env, &hostile.addr, "many", "60s", Duration::from_secs(60));
    assert!(!run.success, "{}", run.output);
    assert!(
        run.output.contains("5000 manifests") && run.output.contains("at most 1000"),
        "{}",
        run.output
    );
    assert!(run.elapsed < Duration::from_secs(20), "{:?}", run.elapsed);
    assert!(
        run.peak_rss < COPY_RSS_BOUND,
        "peak RSS {} MB",
        run.peak_rss / MB
    );

    // 500 copies of one entry: one platform manifest fetched, one image copied, and the
    // source index (duplicates and all) kept at the destination with its digest.
    let run = mirror_one(&env, &hostile.addr, "dup", "60s", Duration::from_secs(60));
    assert!(run.success, "{}", run.output);
    assert_eq!(hostile.platform_gets.load(Ordering::SeqCst), 1);
    let copied = common::skopeo_raw(&format!("{}/dup/app:1", env.dst.addr)).expect("copied");
    assert_eq!(sha(&copied), sha(&Small::new().index(500)));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_endless_token_answer_is_refused_at_four_mib() {
    let env = Env::new();
    let hostile = start_hostile_with(true).await;
    let run = mirror_one(&env, &hostile.addr, "dup", "60s", Duration::from_secs(120));
    assert!(!run.success, "{}", run.output);
    assert!(
        run.output.contains("token from 127.0.0.1") && run.output.contains("larger than 4096 KiB"),
        "{}",
        run.output
    );
    assert!(run.elapsed < Duration::from_secs(30), "{:?}", run.elapsed);
    assert!(
        run.peak_rss < COPY_RSS_BOUND,
        "peak RSS {} MB",
        run.peak_rss / MB
    );
}

/// A blob whose body stops after its first KiB holds a fleet worker's delivery only until
/// `--stall-timeout`: the copy is given up (not held for `--timeout`, ten minutes), each
/// delivery in turn, and the job ends with the reason.
#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_blob_copy_is_given_up_for_another_delivery() {
    let env = Env::new();
    let hostile = start_hostile().await;
    let nats = hangar_loadtest::services::NatsProcess::start().expect("nats-server");
    let _worker = common::fleet::worker(
        &nats.url(),
        &env.path("worker.log"),
        &["--stall-timeout", "2s", "--ack-wait", "5s"],
        &[],
    );
    let list = env.write_list("stall.txt", &[format!("{}/stall/app:1", hostile.addr)]);
    let failed = env.path("stall-failed.txt");
    let run = run_measured(
        &[
            "submit",
            list.to_str().expect("utf-8"),
            "--nats",
            &nats.url(),
            "--tls-verify=false",
            "-d",
            &env.dst.addr,
            "-o",
            failed.to_str().expect("utf-8"),
        ],
        Duration::from_secs(120),
    );
    assert!(!run.success, "{}", run.output);
    let log = std::fs::read_to_string(env.path("worker.log")).unwrap_or_default();
    assert!(
        run.output.contains("no byte moved for 2s") || log.contains("no byte moved for 2s"),
        "{}\n{log}",
        run.output
    );
    // Three deliveries of a few seconds each and their back-off, not ten minutes.
    assert!(run.elapsed < Duration::from_secs(60), "{:?}", run.elapsed);
}

/// A registry's index too large for the bus (NATS carries 64 KiB a message here; the index
/// holds a 100 KB annotation) fails that image at once, naming `max_payload`, and not the
/// job: the other image of the list is copied, and nothing waits out the publish patience.
#[tokio::test(flavor = "multi_thread")]
async fn a_manifest_too_large_for_the_bus_fails_its_image_only() {
    let env = Env::new();
    let nats = hangar_loadtest::services::NatsProcess::start_with_config("max_payload: 65536")
        .expect("nats-server");
    let _worker = common::fleet::worker(&nats.url(), &env.path("worker.log"), &[], &[]);
    let reg = common::registry(&env.src.addr).await;
    let seeds: &[u64] = &[71];
    common::push_image(
        &reg,
        env.dir.path(),
        "small/app",
        Some("1"),
        hangar_loadtest::seed::Format::Oci,
        "amd64",
        (seeds, 4096),
    )
    .await;
    let amd64 = common::push_image(
        &reg,
        env.dir.path(),
        "big/app",
        None,
        hangar_loadtest::seed::Format::Oci,
        "amd64",
        (seeds, 4096),
    )
    .await;
    let pad = serde_json::json!({ "pad": "x".repeat(100_000) });
    common::push_index(
        &reg,
        "big/app",
        "1",
        hangar_loadtest::seed::Format::Oci,
        &[(amd64, hangar_loadtest::seed::platform("amd64"), Some(pad))],
    )
    .await;
    let big = format!("{}/big/app:1", env.src.addr);
    let small = format!("{}/small/app:1", env.src.addr);
    let list = env.write_list("list.txt", &[big.clone(), small.clone()]);
    let failed = env.path("failed.txt");
    let run = run_measured(
        &[
            "submit",
            list.to_str().expect("utf-8"),
            "--nats",
            &nats.url(),
            "--tls-verify=false",
            "-d",
            &env.dst.addr,
            "-o",
            failed.to_str().expect("utf-8"),
        ],
        Duration::from_secs(120),
    );
    assert!(!run.success, "{}", run.output);
    assert!(run.output.contains("max_payload 65536"), "{}", run.output);
    let failed = std::fs::read_to_string(&failed).expect("failed list");
    assert_eq!(failed.lines().collect::<Vec<_>>(), vec![big.as_str()]);
    assert!(
        common::skopeo_raw(&small.replace(&env.src.addr, &env.dst.addr)).is_some(),
        "the other image is copied"
    );
    assert!(run.elapsed < Duration::from_secs(45), "{:?}", run.elapsed);
}
