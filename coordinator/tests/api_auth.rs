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
    // A job's snapshot once it has ended, read by its submitter `other`.
    let ended = |id: String| {
        let http = http.clone();
        let url = format!("{base}/jobs/{id}");
        async move {
            let started = std::time::Instant::now();
            loop {
                let state = http
                    .get(&url)
                    .bearer_auth("other-secret-token")
                    .send()
                    .await
                    .unwrap()
                    .json::<serde_json::Value>()
                    .await
                    .unwrap();
                if state["state"] != "running" && state["state"] != "queued" {
                    return state;
                }
                assert!(
                    started.elapsed() < std::time::Duration::from_secs(60),
                    "{state}"
                );
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
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
    // A project with a `..` segment would pass the policy's glob as `dst/mirror/../prod`
    // and reach `prod` once the URL resolves it: refused before anything runs.
    for project in ["mirror/../prod", "mirror/%2e%2e/prod", "mirror/./x"] {
        let body = request(
            &format!("{}/{project}", env.dst.addr),
            serde_json::json!({}),
        );
        let (status, answer) = post("ci-secret-token", body).await;
        assert_eq!(status, 400, "{project}: {answer}");
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("--destination-project") && error.contains("invalid repository"),
            "{project}: {error}"
        );
    }
    let catalog: serde_json::Value = reqwest::get(format!("http://{}/v2/_catalog", env.dst.addr))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(catalog["repositories"], serde_json::json!([]), "{catalog}");
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
    // A project that makes an archived image's name longer than a repository name may be
    // fails that image when the load runs, as on the command line, not the job at the door.
    let mut long = load(serde_json::json!({}));
    let project = format!("{}project12", "deep1234/".repeat(27));
    long["destination"]["project"] = serde_json::json!(project);
    let (status, answer) = post("other-secret-token", long).await;
    assert_eq!(status, 201, "{answer}");
    let id = answer["id"].as_str().unwrap().to_owned();
    let state = ended(id).await;
    assert_eq!(
        (&state["state"], &state["failed"], &state["total"]),
        (
            &serde_json::json!("failed"),
            &serde_json::json!(1),
            &serde_json::json!(1)
        ),
        "{state}"
    );
    // A project that is no repository path is refused at the door.
    let mut dotdot = load(serde_json::json!({}));
    dotdot["destination"]["project"] = serde_json::json!("mirror/../prod");
    let (status, answer) = post("other-secret-token", dotdot).await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap_or_default()
            .starts_with("project: "),
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
    let state = ended(id.clone()).await;
    assert_eq!(state["state"], "succeeded", "{state}");
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
