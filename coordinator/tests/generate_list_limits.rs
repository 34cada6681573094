//! `generate-list` against sources that never finish: a KDM server sending a byte at a
//! time, and a git server that accepts and never answers. `--timeout` bounds each download
//! and each clone; the command fails naming the source, writes no list, and leaves no git
//! behind.

mod common;

use std::time::Duration;

use common::run_measured_async;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A server on a free port: each connection's request is read, then `answer` runs on it.
async fn server<F, Fut>(answer: F) -> u16
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let answer = std::sync::Arc::new(answer);
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf).await;
                answer(conn).await;
            });
        }
    });
    port
}

/// A KDM download that trickles (a byte every 100 ms of a promised megabyte) is cut at
/// `--timeout`, naming the URL; nothing is written.
#[tokio::test(flavor = "multi_thread")]
async fn a_trickling_download_ends_at_the_timeout() {
    let port = server(|mut conn| async move {
        let head =
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n{";
        if conn.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if conn.write_all(b" ").await.is_err() {
                return;
            }
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let charts = dir.path().join("charts");
    std::fs::create_dir_all(&charts).unwrap();
    let out = dir.path().join("list.txt");
    let kdm = format!("http://127.0.0.1:{port}/data.json");
    let args = [
        "generate-list",
        "--rancher",
        "v2.9.1",
        "--kdm",
        &kdm,
        "--chart",
        charts.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--timeout",
        "2s",
        "-y",
    ];
    let run = run_measured_async(args.map(String::from).to_vec(), Duration::from_secs(60)).await;
    assert!(!run.success, "{}", run.output);
    assert!(
        run.output.contains("data.json") && run.output.contains("not downloaded within 2s"),
        "{}",
        run.output
    );
    assert!(run.elapsed < Duration::from_secs(20), "{:?}", run.elapsed);
    assert!(run.peak_rss < 100 << 20, "{} bytes", run.peak_rss);
    assert!(!out.exists());
}

/// A clone from a git server that accepts and never answers is given up at `--timeout`,
/// naming the repository; git and its helpers are gone when the command is.
#[tokio::test(flavor = "multi_thread")]
async fn a_clone_that_never_ends_is_given_up_and_git_is_gone() {
    let port = server(|conn| async move {
        // Held open, never answered.
        tokio::time::sleep(Duration::from_secs(600)).await;
        drop(conn);
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("list.txt");
    let git_base = format!("http://127.0.0.1:{port}");
    let kdm_base = dir.path().display().to_string();
    let args = [
        "generate-list",
        "--rancher",
        "v2.9.1",
        "--git-base",
        &git_base,
        "--kdm-base",
        &kdm_base,
        "-o",
        out.to_str().unwrap(),
        "--timeout",
        "2s",
        "-y",
    ];
    let run = run_measured_async(args.map(String::from).to_vec(), Duration::from_secs(60)).await;
    assert!(!run.success, "{}", run.output);
    assert!(
        run.output.contains(&format!("{git_base}/rancher/charts"))
            && run.output.contains("not done within 2s"),
        "{}",
        run.output
    );
    assert!(run.elapsed < Duration::from_secs(20), "{:?}", run.elapsed);
    assert!(!out.exists());
    // Nothing still talks to the server: no git, no git-remote-http.
    let talking = || {
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok())
            .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
            .filter(|c| String::from_utf8_lossy(c).contains(&format!("127.0.0.1:{port}")))
            .count()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while talking() > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(talking(), 0, "a git process outlived the command");
}
