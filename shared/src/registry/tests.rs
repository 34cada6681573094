//! The registry client against peers written here: each answers by a function of the
//! request's path and headers, so a test can page without end, point elsewhere, or look
//! at what credentials arrive.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Registry, RegistryOptions};
use crate::auth::Credentials;

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
    let reg = Registry::connect(&addr, &plain_http(), None)
        .await
        .expect("connect");
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
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
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
    let reg = Registry::connect(&addr, &plain_http(), None)
        .await
        .expect("connect");
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
    // A page naming itself as the next is not asked again.
    let e = reg.tags("loop").await.unwrap_err();
    assert!(e.message.contains("gave already"), "{e}");
}

/// Credentials go to the registry's own origin only: a tag page named on another host (as
/// a hostile or misconfigured registry may name it) is asked for without them.
#[tokio::test]
async fn credentials_are_not_sent_to_a_page_on_another_host() {
    let (elsewhere, elsewhere_seen) = peer(Arc::new(|_: &str, _| {
        (200, String::new(), r#"{"tags":["stolen"]}"#.to_owned())
    }))
    .await;
    let (addr, seen) = peer(Arc::new(move |path: &str, _| {
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
    let creds = Credentials {
        username: "user".into(),
        password: "secret".into(),
    };
    let reg = Registry::connect(&addr, &plain_http(), Some(creds))
        .await
        .expect("connect");
    assert_eq!(reg.tags("app").await.expect("tags"), ["a", "stolen"]);
    let own = seen.lock().expect("seen").clone();
    let page = own
        .iter()
        .find(|s| s.path.starts_with("/v2/app/"))
        .expect("asked");
    assert!(
        page.authorization
            .as_deref()
            .is_some_and(|a| a.starts_with("Basic ")),
        "{own:?}"
    );
    let other = elsewhere_seen.lock().expect("seen").clone();
    assert_eq!(other.len(), 1, "{other:?}");
    assert_eq!(other[0].authorization, None, "{other:?}");
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
    let creds = Credentials {
        username: "user".into(),
        password: "secret".into(),
    };
    let reg = Registry::connect(&addr, &plain_http(), Some(creds))
        .await
        .expect("connect");
    let body = bytes::Bytes::from_static(b"layer bytes");
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
    let reg = Registry::connect(&addr, &plain_http(), None)
        .await
        .expect("connect");
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

/// A mount the registry declines by opening an upload (202) ends that upload, so that the
/// registry does not keep it; the caller then uploads as usual.
#[tokio::test]
async fn a_declined_mount_ends_the_upload_it_opened() {
    let (addr, seen) = peer(Arc::new(|path: &str, _| {
        if path.starts_with("/v2/app/blobs/uploads/?mount=") {
            let at = "Location: /v2/app/blobs/uploads/u1?_state=s\r\n".to_owned();
            return (202, at, String::new());
        }
        (204, String::new(), String::new())
    }))
    .await;
    let reg = Registry::connect(&addr, &plain_http(), None)
        .await
        .expect("connect");
    let digest = crate::digest::Digest::of(b"x");
    assert!(
        !reg.mount_blob("app", "other", &digest)
            .await
            .expect("declined")
    );
    let seen = seen.lock().expect("seen").clone();
    assert!(
        seen.iter()
            .any(|s| s.method == "DELETE" && s.path == "/v2/app/blobs/uploads/u1?_state=s"),
        "{seen:?}"
    );
}

/// A blob is looked for as a mount from its own repository: a 201 says it is there (no
/// HEAD, no upload), a 202 opens the upload its PUT then uses (one POST in all). Once the
/// registry has declined a real mount, its 202 says nothing and a HEAD decides instead.
#[tokio::test]
async fn a_blob_is_looked_for_by_a_mount_from_its_own_repository() {
    let (addr, seen) = peer(Arc::new(|path: &str, _| {
        let opened = "Location: /v2/app/blobs/uploads/u1?_state=s\r\n".to_owned();
        match path {
            p if p.contains("mount=sha256%3A") && p.contains("from=app") => {
                // Holds what it is asked for from `app` itself; mounts from nowhere else.
                match p.contains(crate::digest::Digest::of(b"held").hex()) {
                    true => (201, String::new(), String::new()),
                    false => (202, opened, String::new()),
                }
            }
            p if p.contains("mount=") => (202, opened, String::new()),
            p if p.starts_with("/v2/app/blobs/sha256:") => (404, String::new(), String::new()),
            p if p.starts_with("/v2/app/blobs/uploads/u1") => (201, String::new(), String::new()),
            _ => (200, String::new(), "{}".to_owned()),
        }
    }))
    .await;
    let reg = Registry::connect(&addr, &plain_http(), None)
        .await
        .expect("connect");
    let held = crate::digest::Digest::of(b"held");
    assert!(matches!(
        reg.look_or_open("app", &held).await.expect("look"),
        crate::store::BlobLook::Present
    ));
    let body = bytes::Bytes::from_static(b"new");
    let desc = crate::manifest::Descriptor {
        media_type: "application/octet-stream".into(),
        digest: crate::digest::Digest::of(&body),
        size: body.len() as u64,
        urls: None,
        annotations: None,
        platform: None,
    };
    let crate::store::BlobLook::Absent(Some(opened)) =
        reg.look_or_open("app", &desc.digest).await.expect("look")
    else {
        panic!("the upload the look opened is kept");
    };
    let stream = crate::verify::verified(
        futures_util::StreamExt::boxed(futures_util::stream::iter([Ok(body)])),
        desc.digest.clone(),
        desc.size,
        None,
    );
    reg.push_blob("app", &desc, stream, Some(opened))
        .await
        .expect("upload");
    let log = seen.lock().expect("seen").clone();
    let posts = log.iter().filter(|s| s.method == "POST").count();
    assert_eq!(
        posts, 2,
        "one look each, no second POST for the upload: {log:?}"
    );
    assert!(!log.iter().any(|s| s.method == "HEAD"), "{log:?}");
    assert!(
        log.iter().any(|s| s.method == "PUT"
            && s.path
                .starts_with("/v2/app/blobs/uploads/u1?_state=s&digest=")),
        "{log:?}"
    );

    // A declined mount from another repository: the registry does not mount.
    assert!(
        !reg.mount_blob("app", "other", &held)
            .await
            .expect("declined")
    );
    let before = seen.lock().expect("seen").len();
    let look = reg.look_or_open("app", &held).await.expect("look");
    assert!(
        matches!(look, crate::store::BlobLook::Absent(None)),
        "{look:?}"
    );
    let after = seen.lock().expect("seen")[before..].to_vec();
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(after[0].method, "HEAD", "{after:?}");
}
