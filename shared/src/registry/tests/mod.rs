//! The registry client against peers written here: each answers by a function of the
//! request's path and headers, so a test can page without end, point elsewhere, or look
//! at what credentials arrive.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Registry, RegistryOptions};
use crate::auth::Credentials;

mod uploads;

/// One request as the peer saw it: its path and its `Authorization` header, if any.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    authorization: Option<String>,
}

type Answer = Arc<dyn Fn(&str, u16) -> (u16, String, String) + Send + Sync>;

/// A plain-HTTP peer on a free port: `answer(path, own port)` gives the status, extra
/// header lines and body. Every request is recorded. Connections are kept alive.
async fn peer(answer: Answer) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let answer = answer.clone();
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = conn.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    // A TLS handshake (the client tries https first): not spoken here.
                    if buf.first() == Some(&0x16) {
                        return;
                    }
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        let header = |name: &str| {
                            head.lines().find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
                            })
                        };
                        // A request's body is read whole before it is answered.
                        let length: usize = header("content-length")
                            .and_then(|n| n.parse().ok())
                            .unwrap_or(0);
                        if buf.len() < end + 4 + length {
                            break;
                        }
                        buf.drain(..end + 4 + length);
                        let path = head.split(' ').nth(1).unwrap_or("").to_owned();
                        let authorization = header("authorization");
                        log.lock().expect("log").push(Seen {
                            method: head.split(' ').next().unwrap_or("").to_owned(),
                            path: path.clone(),
                            authorization,
                        });
                        let (status, headers, body) = answer(&path, port);
                        let reply = format!(
                            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n{headers}Content-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if conn.write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (format!("127.0.0.1:{port}"), seen)
}

/// A plain-HTTP client of the peer at `addr`.
async fn connected(addr: &str) -> Registry {
    Registry::connect(addr, &plain_http(), None)
        .await
        .expect("connect")
}

/// A plain-HTTP client of the peer at `addr`, holding the password of `user`.
async fn connected_as_user(addr: &str) -> Registry {
    let creds = Credentials {
        username: "user".into(),
        password: "secret".into(),
    };
    Registry::connect(addr, &plain_http(), Some(creds))
        .await
        .expect("connect")
}

fn plain_http() -> RegistryOptions {
    RegistryOptions {
        tls_verify: Some(false),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_tag_page_the_registry_says_continues_is_not_taken_for_the_whole_list() {
    let (addr, _) = peer(Arc::new(|path: &str, _| {
        let (link, body) = if path.starts_with("/v2/paged/tags/list") {
            (
                "Link: </v2/paged/tags/list?n=1000&last=b>; rel=\"next\"\r\n",
                r#"{"name":"paged","tags":["a","b"]}"#,
            )
        } else if path.starts_with("/v2/whole/tags/list") {
            ("", r#"{"name":"whole","tags":["a","b"]}"#)
        } else {
            ("", "{}")
        };
        (200, link.to_owned(), body.to_owned())
    }))
    .await;
    let reg = connected(&addr).await;
    let ab = Some(vec!["a".to_owned(), "b".to_owned()]);
    assert_eq!(reg.tags_upto("whole", 1000).await.expect("whole"), ab);
    assert_eq!(reg.tags_upto("paged", 1000).await.expect("paged"), None);
    // A full page may be followed by more, whatever the registry says.
    assert_eq!(reg.tags_upto("whole", 2).await.expect("full page"), None);
}

/// A listing follows the registry's pages to the end, and stops at the cap when the pages
/// never end (each page names the next).
#[tokio::test]
async fn tag_pages_are_followed_and_endless_ones_cut_off() {
    let (addr, seen) = peer(Arc::new(|path: &str, _| {
        let page: usize = path
            .split("last=")
            .nth(1)
            .and_then(|n| n.split('&').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        if path.starts_with("/v2/padded/") {
            // No tags, and a next page named by an address of 60 KB (a URI is at most 64 KiB).
            let next = format!(
                "Link: </v2/padded/tags/list?last={}&pad={}>; rel=\"next\"\r\n",
                page + 1,
                "p".repeat(60_000)
            );
            return (200, next, r#"{"tags":[]}"#.to_owned());
        }
        if path.starts_with("/v2/loop/") {
            let again = format!("Link: <{path}>; rel=\"next\"\r\n");
            return (200, again, r#"{"tags":["x"]}"#.to_owned());
        }
        if path.starts_with("/v2/three/tags/list") && page >= 2 {
            return (200, String::new(), format!(r#"{{"tags":["t{page}"]}}"#));
        }
        let next = format!(
            "Link: <{}?last={}>; rel=\"next\"\r\n",
            path.split('?').next().unwrap_or(""),
            page + 1
        );
        (200, next, format!(r#"{{"tags":["t{page}"]}}"#))
    }))
    .await;
    let reg = connected(&addr).await;
    assert_eq!(reg.tags("three").await.expect("three"), ["t0", "t1", "t2"]);
    let started = std::time::Instant::now();
    let e = reg.tags_within("endless", 50).await.unwrap_err();
    assert!(e.message.contains("more than 50 pages"), "{e}");
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    let asked = seen
        .lock()
        .expect("seen")
        .iter()
        .filter(|s| s.path.starts_with("/v2/endless/"))
        .count();
    assert_eq!(asked, 50);
    // Pages of no tags whose addresses are huge: the addresses kept count against the
    // same 64 MiB, well before the page cap.
    let e = reg.tags("padded").await.unwrap_err();
    assert!(e.message.contains("more than 64 MiB of tags"), "{e}");
    let asked = seen
        .lock()
        .expect("seen")
        .iter()
        .filter(|s| s.path.starts_with("/v2/padded/"))
        .count();
    assert!((1000..=1200).contains(&asked), "{asked} pages asked");
    // A page naming itself as the next is not asked again.
    let e = reg.tags("loop").await.unwrap_err();
    assert!(e.message.contains("gave already"), "{e}");
}

/// The next page of tags is the registry's own: one named on another host (as a hostile
/// or misconfigured registry may name it) is refused, never asked for, with or without
/// the credentials.
#[tokio::test]
async fn a_tag_page_on_another_host_is_refused_and_not_asked() {
    let (elsewhere, elsewhere_seen) = peer(Arc::new(|_: &str, _| {
        (200, String::new(), r#"{"tags":["stolen"]}"#.to_owned())
    }))
    .await;
    let (addr, _seen) = peer(Arc::new(move |path: &str, _| {
        if path == "/v2/" {
            return (
                401,
                "WWW-Authenticate: Basic realm=\"test\"\r\n".to_owned(),
                "{}".to_owned(),
            );
        }
        (
            200,
            format!("Link: <http://{elsewhere}/v2/app/tags/list?last=a>; rel=\"next\"\r\n"),
            r#"{"tags":["a"]}"#.to_owned(),
        )
    }))
    .await;
    let reg = connected_as_user(&addr).await;
    let e = reg.tags("app").await.expect_err("refused");
    assert!(
        e.message
            .contains("next page of tags on another host (127.0.0.1)"),
        "{e}"
    );
    let other = elsewhere_seen.lock().expect("seen").clone();
    assert!(other.is_empty(), "{other:?}");
}

#[test]
fn the_next_link_is_read_from_a_link_header() {
    use super::fetch::next_link;
    assert_eq!(
        next_link("</v2/a/tags/list?last=x&n=2>; rel=\"next\"").as_deref(),
        Some("/v2/a/tags/list?last=x&n=2")
    );
    assert_eq!(
        next_link("<https://x/prev>; rel=\"prev\", <https://x/next>; rel=next").as_deref(),
        Some("https://x/next")
    );
    assert_eq!(next_link("<https://x/prev>; rel=\"prev\""), None);
    assert_eq!(next_link("garbage"), None);
}

/// An upload whose location the registry puts on another host gets the blob without the
/// credentials, which only the registry's own POST carried.
#[tokio::test]
async fn an_upload_location_on_another_host_gets_no_credentials() {
    let (elsewhere, elsewhere_seen) =
        peer(Arc::new(|_: &str, _| (201, String::new(), String::new()))).await;
    let (addr, seen) = peer(Arc::new(move |path: &str, _| match path {
        "/v2/" => (
            401,
            "WWW-Authenticate: Basic realm=\"test\"\r\n".to_owned(),
            "{}".to_owned(),
        ),
        _ => (
            202,
            format!("Location: http://{elsewhere}/upload/1?state=abc\r\n"),
            String::new(),
        ),
    }))
    .await;
    let reg = connected_as_user(&addr).await;
    let (desc, stream) = blob(b"layer bytes");
    reg.push_blob("app", &desc, stream, None)
        .await
        .expect("upload");
    let own = seen.lock().expect("seen").clone();
    let post = own
        .iter()
        .find(|s| s.path == "/v2/app/blobs/uploads/")
        .expect("posted");
    assert!(post.authorization.is_some(), "{own:?}");
    let other = elsewhere_seen.lock().expect("seen").clone();
    assert_eq!(other.len(), 1, "{other:?}");
    assert!(
        other[0]
            .path
            .starts_with("/upload/1?state=abc&digest=sha256%3A"),
        "{other:?}"
    );
    assert_eq!(other[0].authorization, None, "{other:?}");
}

/// A blob answered with another length than its descriptor's is refused before a byte is
/// taken.
#[tokio::test]
async fn a_blob_of_the_wrong_length_is_refused() {
    let (addr, _) = peer(Arc::new(|path: &str, _| match path {
        "/v2/" => (200, String::new(), "{}".to_owned()),
        _ => (200, String::new(), "0123456789".to_owned()),
    }))
    .await;
    let reg = connected(&addr).await;
    let desc = crate::manifest::Descriptor {
        media_type: "application/octet-stream".into(),
        digest: crate::digest::Digest::of(b"01234"),
        size: 5,
        urls: None,
        annotations: None,
        platform: None,
    };
    let e = reg
        .blob_stream("app", &desc, None)
        .await
        .err()
        .expect("refused");
    assert_eq!(e.class, crate::error::FailureClass::DigestMismatch);
    assert!(e.message.contains("sends 10 bytes"), "{e}");
}

/// A registry that may be reached insecurely is asked over TLS and plain HTTP at once: the
/// peer holds the TLS attempt open until the plain `/v2/` has arrived (3 s at most), so a
/// client that asks one after the other is seen asking plain HTTP only after the TLS
/// attempt ended.
#[tokio::test]
async fn connecting_asks_tls_and_plain_http_at_once() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let plain = Arc::new(tokio::sync::Notify::new());
    let tls_open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let overlapped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (p, t, o) = (plain.clone(), tls_open.clone(), overlapped.clone());
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let (plain, tls_open, overlapped) = (p.clone(), t.clone(), o.clone());
            tokio::spawn(async move {
                use std::sync::atomic::Ordering;
                let mut first = [0u8; 1];
                if conn.peek(&mut first).await.is_err() {
                    return;
                }
                if first[0] == 0x16 {
                    tls_open.fetch_add(1, Ordering::SeqCst);
                    let _ =
                        tokio::time::timeout(std::time::Duration::from_secs(3), plain.notified())
                            .await;
                    tls_open.fetch_sub(1, Ordering::SeqCst);
                    return;
                }
                let mut buf = [0u8; 4096];
                if conn.read(&mut buf).await.is_err() {
                    return;
                }
                // The TLS attempt may be accepted a moment after this one.
                for _ in 0..300 {
                    if tls_open.load(Ordering::SeqCst) > 0 {
                        overlapped.store(true, Ordering::SeqCst);
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                plain.notify_one();
                let _ = conn
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
                    .await;
            });
        }
    });
    let reg = connected(&addr).await;
    assert_eq!(format!("{reg:?}"), format!("Registry(http://{addr})"));
    reg.reachable().expect("reachable");
    assert!(
        overlapped.load(std::sync::atomic::Ordering::SeqCst),
        "plain HTTP was asked only after the TLS attempt ended"
    );
}

/// Requests for one repository that ask at once share one bearer token fetch: the plan's
/// tag read and tag listing go out together.
#[tokio::test(flavor = "multi_thread")]
async fn requests_asking_at_once_share_one_token() {
    let (addr, seen) = peer(Arc::new(|path: &str, port| {
        if path == "/v2/" {
            let challenge = format!(
                "WWW-Authenticate: Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"peer\"\r\n"
            );
            return (401, challenge, "{}".to_owned());
        }
        if path.starts_with("/token") {
            return (200, String::new(), r#"{"token":"t"}"#.to_owned());
        }
        if path.starts_with("/v2/app/tags/list") {
            return (200, String::new(), r#"{"name":"app","tags":["1"]}"#.to_owned());
        }
        (404, String::new(), r#"{"errors":[{"code":"MANIFEST_UNKNOWN"}]}"#.to_owned())
    }))
    .await;
    let reg = connected(&addr).await;
    let (tags, manifest) = tokio::join!(
        reg.tags_upto("app", 10),
        reg.manifest_opt("app", "1", super::Side::Source)
    );
    assert_eq!(tags.expect("tags"), Some(vec!["1".to_owned()]));
    assert!(manifest.expect("an answer").is_none());
    let seen = seen.lock().expect("seen").clone();
    let tokens = seen.iter().filter(|s| s.path.starts_with("/token")).count();
    assert_eq!(tokens, 1, "{seen:?}");
    assert!(
        seen.iter()
            .filter(|s| s.path.starts_with("/v2/app/"))
            .all(|s| s.authorization.as_deref() == Some("Bearer t")),
        "{seen:?}"
    );
}

fn blob(bytes: &'static [u8]) -> (crate::manifest::Descriptor, crate::verify::ByteStream) {
    let body = bytes::Bytes::from_static(bytes);
    let desc = crate::manifest::Descriptor {
        media_type: "application/octet-stream".into(),
        digest: crate::digest::Digest::of(&body),
        size: body.len() as u64,
        urls: None,
        annotations: None,
        platform: None,
    };
    let stream = crate::verify::verified(
        futures_util::StreamExt::boxed(futures_util::stream::iter([Ok(body)])),
        desc.digest.clone(),
        desc.size,
        None,
    );
    (desc, stream)
}
