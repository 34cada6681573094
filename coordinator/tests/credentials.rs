//! Credentials written into a URL (`https://user:password@host/…`, which reqwest sends as
//! Basic auth) reach neither a message nor an archive: a stored file's description, the
//! download errors, a scan database's label, and the coordinator's `--server`.

mod common;

use base64::Engine as _;
use common::archive::*;
use common::*;

const SECRET: &str = "s3cret-pw";

/// A web server whose `/files/secret.bin` answers only Basic auth `u:SECRET`.
async fn server() -> String {
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("u:{SECRET}"))
    );
    let app = axum::Router::new().route(
        "/files/secret.bin",
        axum::routing::get(move |headers: axum::http::HeaderMap| {
            let ok = headers
                .get("authorization")
                .is_some_and(|v| v.as_bytes() == expected.as_bytes());
            async move {
                if ok {
                    (axum::http::StatusCode::OK, b"behind a password\n".to_vec())
                } else {
                    (axum::http::StatusCode::UNAUTHORIZED, Vec::new())
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_in_urls_are_used_but_never_shown_or_stored() {
    let env = Env::new();
    let addr = server().await;
    let archive = env.path("files.zip");
    let url = format!("http://u:{SECRET}@{addr}/files/secret.bin");
    let shown = format!("http://<redacted>@{addr}/files/secret.bin");

    let out = hangar(&["archive", "init", &s(&archive)]);
    assert!(out.status.success(), "{}", text(&out));
    // Stored: the credentials were used (the server answers only them), and the archive
    // records where the file came from without them.
    let out = hangar(&["archive", "store", "file", "-f", &s(&archive), &url]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(!said.contains(SECRET), "{said}");
    let bytes = std::fs::read(&archive).unwrap();
    assert!(
        !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
        "the archive holds the password"
    );
    // Go's JSON (Hangar's manifest form) writes `<` and `>` escaped.
    let in_json = shown.replace('<', "\\u003c").replace('>', "\\u003e");
    assert!(
        bytes
            .windows(in_json.len())
            .any(|w| w == in_json.as_bytes()),
        "the description names the URL without its credentials"
    );

    // Failures name the URL, never the password.
    for bad in [
        format!("http://u:{SECRET}@{addr}/files/missing.bin"),
        format!("http://u:wrong-{SECRET}@{addr}/files/secret.bin"),
        format!("http://u:{SECRET}@127.0.0.1:9/files/secret.bin"),
    ] {
        let before = std::fs::read(&archive).unwrap();
        let out = hangar(&["archive", "store", "file", "-f", &s(&archive), &bad]);
        let said = text(&out);
        assert!(!out.status.success(), "{bad}: {said}");
        assert!(said.contains("http://<redacted>@"), "{bad}: {said}");
        assert!(!said.contains(SECRET), "{bad}: {said}");
        assert_eq!(std::fs::read(&archive).unwrap(), before, "{bad}");
    }

    // A scan database behind a password that is not there.
    let list = env.write_list("l.txt", &["127.0.0.1:9/team/app:v1".to_owned()]);
    let db = format!("http://u:{SECRET}@{addr}/files/osv.zip");
    let out = hangar(&["scan", "-f", &s(&list), "--db", &db]);
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains(&format!("http://<redacted>@{addr}/files/osv.zip")),
        "{said}"
    );
    assert!(!said.contains(SECRET), "{said}");

    // The coordinator's API takes a bearer token: credentials in --server are refused
    // before anything is sent (nothing listens on port 9), and not shown.
    let out = hangar(&[
        "status",
        "--server",
        &format!("http://u:{SECRET}@127.0.0.1:9"),
    ]);
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("--server http://<redacted>@127.0.0.1:9") && said.contains("bearer token"),
        "{said}"
    );
    assert!(!said.contains(SECRET), "{said}");
}
