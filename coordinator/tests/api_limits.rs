//! The coordinator's API under load a caller controls: connections (how many, how slow,
//! which protocol), request bodies, jobs per caller, the planning bound a client may ask
//! for, and how many finished jobs the service remembers. A real `serve` and nats-server.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::fleet::Killed;
use common::{Env, seed_shared_repos, sha, text};
use hangar_loadtest::services::{NatsProcess, free_port, wait_for_port};

fn token_hash(token: &str) -> String {
    sha(token.as_bytes())
        .trim_start_matches("sha256:")
        .to_owned()
}

/// `hangar-coord serve --listen <free port> --nats <nats> ARGS`, its output under `dir`,
/// answering when this returns; its address.
fn serve(nats: &NatsProcess, dir: &Path, args: &[&str]) -> (Killed, String) {
    let listen = format!("127.0.0.1:{}", free_port().unwrap());
    let coord = Killed(
        Command::new(env!("CARGO_BIN_EXE_hangar-coord"))
            .args(["serve", "--listen", &listen, "--nats", &nats.url()])
            .args(args)
            .env("REGISTRY_AUTH_FILE", "/nonexistent/auth.json")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join("coord.log")).unwrap())
            .stderr(std::fs::File::create(dir.join("coord.err")).unwrap())
            .spawn()
            .expect("hangar-coord serve"),
    );
    wait_for_port(&listen, std::time::Duration::from_secs(30)).unwrap();
    (coord, listen)
}

/// The API's connections are bounded before any handler or token check: a client that
/// trickles its request head is cut off at 10 s, not served for ever; past
/// `--max-connections` a connection is answered 503 and closed as it arrives, and a place
/// frees when one closes; a request body that trickles is answered 408 at 20 s, and one
/// past 2 MiB is refused with 413.
#[tokio::test(flavor = "multi_thread")]
async fn slow_heads_too_many_connections_and_huge_bodies_are_refused() {
    use std::io::{Read as _, Write as _};
    use std::net::TcpStream;
    use std::time::{Duration, Instant};

    let nats = NatsProcess::start().expect("nats-server");
    let dir = tempfile::tempdir().unwrap();
    let (_coord, listen) = serve(&nats, dir.path(), &["--max-connections", "3"]);
    // wait_for_port's own connection must be gone before places are counted.
    std::thread::sleep(Duration::from_millis(300));
    let closed_within = |sock: &mut TcpStream, limit: Duration| -> bool {
        sock.set_read_timeout(Some(limit)).unwrap();
        let mut buf = [0u8; 256];
        loop {
            match sock.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) => {
                    return !matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    );
                }
            }
        }
    };

    // Connections that say nothing take every place; one more is told 503 (with
    // Retry-After) and closed at once — and the project's own client retries that. Filled
    // until a probe is told so: a closed connection frees its place only once the server
    // has seen it close.
    let full = |idle: &mut Vec<TcpStream>| {
        for _ in 0..20 {
            idle.push(TcpStream::connect(&listen).unwrap());
            std::thread::sleep(Duration::from_millis(300));
            let mut probe = TcpStream::connect(&listen).unwrap();
            probe
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap();
            probe
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut answer = String::new();
            let _ = probe.read_to_string(&mut answer);
            if answer.starts_with("HTTP/1.1 503") && answer.contains("Retry-After") {
                return true;
            }
        }
        false
    };
    let mut idle = Vec::new();
    assert!(
        full(&mut idle),
        "a connection past --max-connections is told 503 and closed"
    );
    assert!(idle.len() <= 4, "{} connections held", idle.len());
    idle.clear();
    std::thread::sleep(Duration::from_millis(300));
    let health = reqwest::get(format!("http://{listen}/healthz"))
        .await
        .unwrap();
    assert_eq!(health.status(), 200, "places freed by closed connections");

    // `submit` meets the full server, is told 503, and retries until a place frees.
    assert!(full(&mut idle), "the server fills again");
    let list = dir.path().join("list.txt");
    std::fs::write(&list, "127.0.0.1:9/a/b:c\n").unwrap();
    let freer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        drop(idle);
    });
    let submitted = Command::new(env!("CARGO_BIN_EXE_hangar-coord"))
        .args(["submit", list.to_str().unwrap(), "-d", "127.0.0.1:9"])
        .arg("-o")
        .arg(dir.path().join("submit-failed.txt"))
        .args(["--server", &format!("http://{listen}")])
        .output()
        .expect("submit");
    freer.join().unwrap();
    let said = text(&submitted);
    assert!(
        said.contains("busy (503); retrying") && said.contains("submitted"),
        "{said}"
    );

    // A head trickled a byte every 500 ms is cut off at 10 s.
    std::thread::sleep(Duration::from_millis(300));
    let mut slow = TcpStream::connect(&listen).unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let started = Instant::now();
    let mut cut = false;
    while started.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(500));
        if slow.write_all(b"X").is_err() || closed_within(&mut slow, Duration::from_millis(1)) {
            cut = true;
            break;
        }
    }
    let took = started.elapsed();
    assert!(cut, "a trickled head is cut off");
    assert!(
        took >= Duration::from_secs(9) && took < Duration::from_secs(14),
        "cut off at the head timeout: {took:?}"
    );

    // A body trickled a byte every 500 ms is answered 408 and the place freed at 20 s.
    let mut slow = TcpStream::connect(&listen).unwrap();
    slow.write_all(
        b"POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2000000\r\n\r\n{",
    )
    .unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    while started.elapsed() < Duration::from_secs(40) {
        std::thread::sleep(Duration::from_millis(500));
        let _ = slow.write_all(b" ");
        slow.set_read_timeout(Some(Duration::from_millis(1)))
            .unwrap();
        let mut buf = [0u8; 1024];
        match slow.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
        if !answer.is_empty() && closed_within(&mut slow, Duration::from_millis(200)) {
            break;
        }
    }
    let took = started.elapsed();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("did not arrive within 20 s"), "{answer}");
    assert!(
        took >= Duration::from_secs(19) && took < Duration::from_secs(26),
        "cut off at the body's time: {took:?}"
    );

    // HTTP/2 (whose idle connections no head timeout would end) is not spoken.
    let h2 = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version}",
            "--max-time",
            "5",
        ])
        .arg("--http2-prior-knowledge")
        .arg(format!("http://{listen}/healthz"))
        .output()
        .expect("curl");
    assert_ne!(String::from_utf8_lossy(&h2.stdout), "2", "no HTTP/2");

    // A body past 2 MiB.
    let big = vec![b' '; 3 << 20];
    let answer = reqwest::Client::new()
        .post(format!("http://{listen}/jobs"))
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 413);
}

/// One caller cannot fill the service: its 17th job while 16 run is refused with 429 (and
/// another caller's is not), a job that would not bound its planning (`timeout` 0 or over
/// a day) is refused with 400, and a place frees when one of its jobs is cancelled.
#[tokio::test(flavor = "multi_thread")]
async fn one_caller_runs_at_most_sixteen_jobs_and_bounds_their_planning() {
    let env = Env::new();
    let nats = NatsProcess::start().expect("nats-server");
    let tokens = env.path("tokens.yaml");
    std::fs::write(
        &tokens,
        format!(
            "tokens:\n  - name: busy\n    sha256: {}\n    role: submit\n    policy:\n      sources: [\"**\"]\n      destinations: [\"**\"]\n  - name: other\n    sha256: {}\n    role: submit\n    policy:\n      sources: [\"**\"]\n      destinations: [\"**\"]\n",
            token_hash("busy-secret-token"),
            token_hash("other-secret-token"),
        ),
    )
    .unwrap();
    // No worker: every job stays running, waiting for one.
    let tokens = tokens.to_str().unwrap();
    let (_coord, listen) = serve(
        &nats,
        env.dir.path(),
        &["--tls-verify=false", "--api-tokens", tokens],
    );
    let lines = seed_shared_repos(&env, 1).await;
    let http = reqwest::Client::new();
    let submit = |token: &'static str, options: serde_json::Value| {
        let spec = serde_json::json!({
            "version": 1, "kind": "mirror", "list": lines.join("\n"),
            "destination": {"registry": env.dst.addr},
            "options": options,
        });
        let req = http
            .post(format!("http://{listen}/jobs"))
            .bearer_auth(token)
            .json(&spec);
        async move {
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            (
                status,
                resp.json::<serde_json::Value>().await.unwrap_or_default(),
            )
        }
    };
    for bad in ["0", "25h"] {
        let (status, body) = submit("busy-secret-token", serde_json::json!({"timeout": bad})).await;
        assert_eq!(status, 400, "timeout {bad}: {body}");
        assert!(
            body["error"]
                .as_str()
                .unwrap_or("")
                .contains("options.timeout"),
            "{body}"
        );
    }
    // Twenty at once: the check and the taking of a place are one step.
    let answers = futures_util::future::join_all(
        (0..20).map(|_| submit("busy-secret-token", serde_json::json!({}))),
    )
    .await;
    let ids: Vec<String> = answers
        .iter()
        .filter(|(status, _)| *status == 201)
        .map(|(_, body)| body["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 16, "{answers:?}");
    for (status, body) in answers.iter().filter(|(status, _)| *status != 201) {
        assert_eq!(*status, 429, "{body}");
        assert!(
            body["error"].as_str().unwrap_or("").contains("jobs of"),
            "{body}"
        );
    }
    let (status, body) = submit("other-secret-token", serde_json::json!({})).await;
    assert_eq!(
        status, 201,
        "another caller is not held by the first: {body}"
    );
    let cancel = http
        .delete(format!("http://{listen}/jobs/{}", ids[0]))
        .bearer_auth("busy-secret-token")
        .send()
        .await
        .unwrap();
    assert!(cancel.status().is_success(), "{}", cancel.status());
    let mut admitted = false;
    for _ in 0..50 {
        let (status, _) = submit("busy-secret-token", serde_json::json!({})).await;
        if status == 201 {
            admitted = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(admitted, "a cancelled job frees its place");
}

/// The service remembers the newest `--keep-jobs` finished jobs and forgets the rest, in
/// memory and in its bucket — the key purged from the stream, not left as a marker.
#[tokio::test(flavor = "multi_thread")]
async fn only_the_newest_finished_jobs_are_remembered() {
    let nats = NatsProcess::start().expect("nats-server");
    let dir = tempfile::tempdir().unwrap();
    let (_coord, listen) = serve(&nats, dir.path(), &["--keep-jobs", "2"]);
    let http = reqwest::Client::new();
    let mut ids = Vec::new();
    for n in 0..4 {
        // A source nobody answers: the job fails at once, and is finished.
        let spec = serde_json::json!({
            "version": 1, "kind": "mirror", "list": format!("127.0.0.1:9/a/b:{n}"),
            "destination": {"registry": "127.0.0.1:9"},
        });
        let resp = http
            .post(format!("http://{listen}/jobs"))
            .json(&spec)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
        let id = resp.json::<serde_json::Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let mut finished = false;
        for _ in 0..100 {
            let s: serde_json::Value = http
                .get(format!("http://{listen}/jobs/{id}"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if s["state"] != "running" && s["state"] != "queued" {
                finished = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert!(finished, "job {id} ends");
        ids.push(id);
        // Distinct end times, so that "newest" is well defined.
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let listed: serde_json::Value = http
        .get(format!("http://{listen}/jobs"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let text = listed.to_string();
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(text.contains(id.as_str()), i >= 2, "job {i} listed: {text}");
    }
    let gone = http
        .get(format!("http://{listen}/jobs/{}", ids[0]))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 404);
    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut stream = async_nats::jetstream::new(client)
        .get_stream("KV_hangar-jobs")
        .await
        .unwrap();
    let info = stream.info().await.unwrap();
    assert_eq!(info.state.messages, 2, "two jobs in the bucket, no markers");
}
