//! The coordinator's API as an attacker on the same network meets it: a real `serve` over
//! TLS (certificates made here) with a token file, a real nats-server and worker, real
//! registries. Every route but `/healthz` and `/metrics` wants a token; a job outside its
//! token's policy is refused naming the rule; only a job's owner or an admin cancels it.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{Env, hangar, index_digests, seed_shared_repos, sha, skopeo_raw, text};
use hangar_loadtest::services::{NatsProcess, free_port, wait_for_port};

use common::fleet::Killed;

/// A CA and a server certificate for 127.0.0.1, as PEM files: (ca, cert, key).
fn server_pki(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let paths = (dir.join("ca.pem"), dir.join("api.pem"), dir.join("api.key"));
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

fn token_hash(token: &str) -> String {
    sha(token.as_bytes())
        .trim_start_matches("sha256:")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_authenticates_and_authorises_every_request() {
    let env = Env::new();
    let nats = NatsProcess::start().expect("nats-server");
    let (ca, cert, key) = server_pki(env.dir.path());
    let tokens = env.path("tokens.yaml");
    std::fs::write(
        &tokens,
        format!(
            r#"tokens:
  - name: ci
    sha256: {}
    role: submit
    policy:
      sources: ["{src}/**"]
      destinations: ["{dst}/mirror/**"]
      sign_keys: [release]
  - name: other
    sha256: {}
    role: submit
    policy:
      sources: ["**"]
      destinations: ["**"]
  - name: reader
    sha256: {}
    role: read
  - name: ops
    sha256: {}
    role: admin
"#,
            token_hash("ci-secret-token"),
            token_hash("other-secret-token"),
            token_hash("reader-secret-token"),
            token_hash("ops-secret-token"),
            src = env.src.addr,
            dst = env.dst.addr,
        ),
    )
    .unwrap();
    let listen = format!("127.0.0.1:{}", free_port().unwrap());
    let log = env.path("coord.log");
    let _coord = Killed(
        Command::new(env!("CARGO_BIN_EXE_hangar-coord"))
            .args(["serve", "--tls-verify=false", "--listen", &listen])
            .args(["--nats", &nats.url()])
            .arg("--api-tokens")
            .arg(&tokens)
            .arg("--tls-cert")
            .arg(&cert)
            .arg("--tls-key")
            .arg(&key)
            .arg("--archive-root")
            .arg(env.path("archives"))
            .env("REGISTRY_AUTH_FILE", "/nonexistent/auth.json")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(env.path("coord.err")).unwrap())
            .spawn()
            .expect("hangar-coord serve"),
    );
    let worker_bin =
        PathBuf::from(env!("CARGO_BIN_EXE_hangar-coord")).with_file_name("hangar-worker");
    let _worker = Killed(
        Command::new(worker_bin)
            .args([
                "--nats",
                &nats.url(),
                "--tls-verify=false",
                "--listen",
                "127.0.0.1:0",
            ])
            .env("REGISTRY_AUTH_FILE", "/nonexistent/auth.json")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(env.path("worker.log")).unwrap())
            .spawn()
            .expect("hangar-worker"),
    );
    wait_for_port(&listen, std::time::Duration::from_secs(30)).unwrap();
    let base = format!("https://{listen}");
    let pem = std::fs::read(&ca).unwrap();
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .build()
        .unwrap();

    // No token, a wrong one, or the hash instead of the token: 401 on every job route.
    let lines = seed_shared_repos(&env, 1).await;
    // A job specification (docs/API.md); `extra` adds to its options, or (`source`)
    // names the source registry.
    let request = |dest: &str, extra: serde_json::Value| {
        let (registry, project) = dest.split_once('/').unwrap_or((dest, ""));
        let mut spec = serde_json::json!({
            "version": 1, "kind": "mirror", "list": lines.join("\n"),
            "destination": {"registry": registry, "project": project},
            "options": {"jobs": 2},
        });
        if let Some(e) = extra.as_object() {
            for (k, v) in e {
                if k == "source" {
                    spec["source"] = serde_json::json!({ "registry": v });
                } else {
                    spec["options"][k] = v.clone();
                }
            }
        }
        spec
    };
    let good = request(&format!("{}/mirror", env.dst.addr), serde_json::json!({}));
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("Basic Y2k6Y2k="),
        Some(token_hash("ci-secret-token").as_str()),
    ] {
        for (method, path) in [
            ("GET", "/jobs"),
            ("POST", "/jobs"),
            ("GET", "/jobs/j1"),
            ("GET", "/jobs/j1/results"),
            ("DELETE", "/jobs/j1"),
        ] {
            let mut req = http.request(method.parse().unwrap(), format!("{base}{path}"));
            if let Some(a) = auth {
                req = req.header("Authorization", a);
            }
            if method == "POST" {
                req = req.json(&good);
            }
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), 401, "{method} {path} with {auth:?}");
            assert!(resp.headers().contains_key("www-authenticate"));
        }
    }
    for open in ["/healthz", "/metrics"] {
        let resp = http.get(format!("{base}{open}")).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{open}");
    }

    let post = |token: &'static str, body: serde_json::Value| {
        let http = http.clone();
        let url = format!("{base}/jobs");
        async move {
            let resp = http
                .post(url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            (
                status,
                resp.json::<serde_json::Value>().await.unwrap_or_default(),
            )
        }
    };
    // Outside the policy: 403, naming the rule.
    for (body, rule) in [
        (
            request("evil.example:5000/loot", serde_json::json!({})),
            "policy.destinations",
        ),
        (
            request(&format!("{}/other", env.dst.addr), serde_json::json!({})),
            "policy.destinations",
        ),
        (
            request(
                &format!("{}/mirror", env.dst.addr),
                serde_json::json!({"overwrite": true}),
            ),
            "policy.overwrite",
        ),
        (
            request(
                &format!("{}/mirror", env.dst.addr),
                serde_json::json!({"sign_key": "fleet-root"}),
            ),
            "policy.sign_keys",
        ),
        (
            request(
                &format!("{}/mirror", env.dst.addr),
                serde_json::json!({"source": "private.example"}),
            ),
            "policy.sources",
        ),
    ] {
        let (status, answer) = post("ci-secret-token", body).await;
        assert_eq!(status, 403, "{answer}");
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(error.contains(rule) && error.contains("\"ci\""), "{error}");
    }
    let (status, answer) = post("reader-secret-token", good.clone()).await;
    assert_eq!(status, 403);
    assert!(
        answer["error"]
            .as_str()
            .unwrap_or_default()
            .contains("needs role submit")
    );
    // Nothing refused reached the destination.
    assert!(skopeo_raw(&format!("{}/other/app-0:v1", env.dst.addr)).is_none());

    // Within the policy, through the CLI: the token from a file, TLS checked against the CA.
    let token_file = env.path("ci.token");
    std::fs::write(&token_file, "ci-secret-token\n").unwrap();
    let list = env.write_list("list.txt", &lines);
    let out = hangar(&[
        "submit",
        list.to_str().unwrap(),
        "--server",
        &base,
        "--server-ca",
        ca.to_str().unwrap(),
        "--token-file",
        token_file.to_str().unwrap(),
        "-d",
        &env.dst.addr,
        "--destination-project",
        "mirror",
        "--tls-verify=false",
        "-o",
        env.path("failed.txt").to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    for line in &lines {
        let source = skopeo_raw(line).expect("source");
        let name = line.rsplit('/').next().unwrap();
        let copied = skopeo_raw(&format!("{}/mirror/{name}", env.dst.addr)).expect("copied");
        assert_eq!(index_digests(&copied), vec![sha(&source)], "{line}");
    }
    // A load is authorised for what the archive holds: images saved from the destination
    // (which `ci` may write to but not read from) are refused, and so is `--overwrite`.
    std::fs::create_dir_all(env.path("archives")).unwrap();
    let archive = env.path("archives").join("from-dst.zip");
    let saved: Vec<String> = lines
        .iter()
        .map(|l| format!("{}/mirror/{}", env.dst.addr, l.rsplit('/').next().unwrap()))
        .collect();
    let saved_list = env.write_list("saved.txt", &saved);
    let out = hangar(&[
        "save",
        "--tls-verify=false",
        "-f",
        saved_list.to_str().unwrap(),
        "-d",
        archive.to_str().unwrap(),
        "-o",
        env.path("sf.txt").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let load = |options: serde_json::Value| {
        serde_json::json!({
            "version": 1, "kind": "load", "list": "",
            "source": {"archive": archive.to_str().unwrap()},
            "destination": {"registry": env.dst.addr, "project": "mirror"},
            "options": options,
        })
    };
    let (status, answer) = post("ci-secret-token", load(serde_json::json!({}))).await;
    assert_eq!(status, 403, "{answer}");
    let error = answer["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("policy.sources") && error.contains("read from"),
        "{error}"
    );
    let (status, answer) = post(
        "other-secret-token",
        load(serde_json::json!({"overwrite": true})),
    )
    .await;
    assert_eq!(status, 403, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap_or_default()
            .contains("policy.overwrite"),
        "{answer}"
    );
    // A save is authorised for what its list reads, `-s` applied as its run applies it.
    let (status, answer) = post(
        "ci-secret-token",
        serde_json::json!({
            "version": 1, "kind": "save", "list": "team/app:1\n",
            "source": {"registry": "private.example"},
            "destination": {"archive": env.path("archives").join("x.zip").to_str().unwrap()},
        }),
    )
    .await;
    assert_eq!(status, 403, "{answer}");
    let error = answer["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("policy.sources") && error.contains("private.example/team/app"),
        "{error}"
    );

    // Outside the coordinator's archive root: refused naming it.
    let (status, answer) = post(
        "other-secret-token",
        serde_json::json!({
            "version": 1, "kind": "load", "list": "",
            "source": {"archive": "/etc/passwd"},
            "destination": {"registry": env.dst.addr},
        }),
    )
    .await;
    assert_eq!(status, 403, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap_or_default()
            .contains("hangar-coord serve --archive-root"),
        "{answer}"
    );

    // The same command without a token is refused with the coordinator's answer.
    let out = hangar(&[
        "status",
        "--server",
        &base,
        "--server-ca",
        ca.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(text(&out).contains("401"), "{}", text(&out));

    // A client cannot name a schedule (it would make the real cron run skip itself). Cancel:
    // not the reader, not another submitter; the owner or an admin.
    let mut scheduled = good.clone();
    scheduled["schedule"] = serde_json::json!("nightly");
    let (status, answer) = post("ci-secret-token", scheduled).await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .is_some_and(|e| e.contains("unknown field `schedule`")),
        "{answer}"
    );
    let (status, answer) = post("ci-secret-token", good.clone()).await;
    assert_eq!(status, 201, "{answer}");
    let id = answer["id"].as_str().unwrap().to_owned();
    let cancel = |token: &'static str| {
        let http = http.clone();
        let url = format!("{base}/jobs/{id}");
        async move {
            let resp = http.delete(url).bearer_auth(token).send().await.unwrap();
            (
                resp.status().as_u16(),
                resp.text().await.unwrap_or_default(),
            )
        }
    };
    let (status, body) = cancel("reader-secret-token").await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = cancel("other-secret-token").await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("only its own jobs"), "{body}");
    let (status, body) = cancel("ops-secret-token").await;
    assert_eq!(status, 200, "{body}");
    // A job's per-image outcomes are its submitter's (and an admin's) to read, not every
    // reader's: they say what images hold.
    let mut validate = good.clone();
    validate["kind"] = serde_json::json!("mirror-validate");
    let (status, answer) = post("other-secret-token", validate).await;
    assert_eq!(status, 201, "{answer}");
    let id = answer["id"].as_str().unwrap().to_owned();
    let started = std::time::Instant::now();
    loop {
        let state = http
            .get(format!("{base}/jobs/{id}"))
            .bearer_auth("other-secret-token")
            .send()
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap();
        if state["state"] != "running" && state["state"] != "queued" {
            assert_eq!(state["state"], "succeeded", "{state}");
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "{state}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let results = |token: &'static str| {
        let http = http.clone();
        let url = format!("{base}/jobs/{id}/results");
        async move {
            let resp = http.get(url).bearer_auth(token).send().await.unwrap();
            (
                resp.status().as_u16(),
                resp.text().await.unwrap_or_default(),
            )
        }
    };
    for token in ["reader-secret-token", "ci-secret-token"] {
        let (status, body) = results(token).await;
        assert_eq!(status, 403, "{token}: {body}");
        assert!(body.contains("only of its own jobs"), "{body}");
    }
    for token in ["other-secret-token", "ops-secret-token"] {
        let (status, body) = results(token).await;
        assert_eq!(status, 200, "{token}: {body}");
        let outcomes: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            outcomes.as_array().map(Vec::len),
            Some(lines.len()),
            "{body}"
        );
    }
    // The reader reads.
    let resp = http
        .get(format!("{base}/jobs"))
        .bearer_auth("reader-secret-token")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // No token ever reached the coordinator's logs.
    let logs = std::fs::read_to_string(&log).unwrap_or_default()
        + &std::fs::read_to_string(env.path("coord.err")).unwrap_or_default();
    for secret in [
        "ci-secret-token",
        "other-secret-token",
        "reader-secret-token",
        "ops-secret-token",
    ] {
        assert!(!logs.contains(secret), "{secret} in the coordinator's log");
    }
}

#[test]
fn without_a_token_file_the_api_stays_on_loopback() {
    let listen = format!("0.0.0.0:{}", free_port().unwrap());
    let started = std::time::Instant::now();
    let out = hangar(&["serve", "--listen", &listen, "--nats", "nats://127.0.0.1:1"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("without authentication") && text(&out).contains("--api-tokens"),
        "{}",
        text(&out)
    );
    // Refused before anything is reached.
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

/// The API's connections are bounded before any handler or token check: a client that
/// trickles its request head is cut off at 10 s, not served for ever; past
/// `--max-connections` a connection is answered 503 and closed as it arrives, and a place
/// frees when one closes; a request body past 2 MiB is refused with 413.
#[tokio::test(flavor = "multi_thread")]
async fn slow_heads_too_many_connections_and_huge_bodies_are_refused() {
    use std::io::{Read as _, Write as _};
    use std::net::TcpStream;
    use std::time::{Duration, Instant};

    let nats = NatsProcess::start().expect("nats-server");
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port().unwrap());
    let _coord = Killed(
        Command::new(env!("CARGO_BIN_EXE_hangar-coord"))
            .args(["serve", "--listen", &listen, "--max-connections", "3"])
            .args(["--nats", &nats.url()])
            .env("REGISTRY_AUTH_FILE", "/nonexistent/auth.json")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.path().join("coord.log")).unwrap())
            .stderr(std::fs::File::create(dir.path().join("coord.err")).unwrap())
            .spawn()
            .expect("hangar-coord serve"),
    );
    wait_for_port(&listen, Duration::from_secs(30)).unwrap();
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
    let listen = format!("127.0.0.1:{}", free_port().unwrap());
    // No worker: every job stays running, waiting for one.
    let _coord = Killed(
        Command::new(env!("CARGO_BIN_EXE_hangar-coord"))
            .args(["serve", "--tls-verify=false", "--listen", &listen])
            .args(["--nats", &nats.url()])
            .arg("--api-tokens")
            .arg(&tokens)
            .env("REGISTRY_AUTH_FILE", "/nonexistent/auth.json")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(env.path("coord.log")).unwrap())
            .stderr(std::fs::File::create(env.path("coord.err")).unwrap())
            .spawn()
            .expect("hangar-coord serve"),
    );
    wait_for_port(&listen, std::time::Duration::from_secs(30)).unwrap();
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
    let listen = format!("127.0.0.1:{}", free_port().unwrap());
    let _coord = Killed(
        Command::new(env!("CARGO_BIN_EXE_hangar-coord"))
            .args(["serve", "--listen", &listen, "--keep-jobs", "2"])
            .args(["--nats", &nats.url()])
            .env("REGISTRY_AUTH_FILE", "/nonexistent/auth.json")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.path().join("coord.log")).unwrap())
            .stderr(std::fs::File::create(dir.path().join("coord.err")).unwrap())
            .spawn()
            .expect("hangar-coord serve"),
    );
    wait_for_port(&listen, std::time::Duration::from_secs(30)).unwrap();
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
