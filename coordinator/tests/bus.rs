//! The locked-down bus: nats-server 2.15 with TLS (certificates made here: a CA, the
//! server's for 127.0.0.1, one per client), client certificates required, and the users
//! and permissions of deploy/k8s/nats/permissions.conf — the very file the deployments
//! include. A coordinator and a worker with the right identities run a mirror job; a task
//! from an identity without the right to publish tasks never runs; and a task that did
//! reach a worker but asks for an archive outside its roots, or a signature outside its
//! key's scope, is refused with the reason in its event.

mod common;
mod secure_bus;

use std::time::Duration;

use common::*;
use hangar_loadtest::services::free_port;
use hangar_shared::digest::Digest;
use hangar_shared::queue::TaskQueue;
use hangar_shared::queue::jetstream::{self, JetStreamQueue};
use hangar_shared::store::{RepoRef, StoreRef};
use hangar_shared::task::{AssembleTask, Event, EventKind, IndexTask, SignTask, Task, TaskKind};
use secure_bus::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_coordinator_and_a_worker_with_their_identities_mirror_over_tls() {
    let env = Env::new();
    let nats = SecureNats::start(env.dir.path());
    // The worker starts first: it may not create the streams, so it waits for the
    // coordinator to. Its cache and limits put blob leases and the rate ledger (KV) to use.
    let cache = env.path("cache");
    let budget = format!("{}=500", env.src.addr);
    let slots = format!("{}=8", env.src.addr);
    let worker = Worker::start(
        &nats,
        env.path("worker.log"),
        &[
            "--blob-concurrency",
            "4",
            "--cache",
            cache.to_str().unwrap(),
            "--rate-limit",
            &budget,
            "--max-in-flight",
            &slots,
        ],
    );
    let lines = seed_shared_repos(&env, 3).await;
    let list = env.write_list("list.txt", &lines);
    let mut args: Vec<String> = vec![
        "submit".into(),
        list.display().to_string(),
        "--tls-verify=false".into(),
        "-d".into(),
        env.dst.addr.clone(),
        "-j".into(),
        "3".into(),
        "-o".into(),
        env.path("failed.txt").display().to_string(),
        "--rate-limit".into(),
        budget.clone(),
    ];
    args.extend(nats.flags("coordinator", COORDINATOR_PW));
    let out = hangar(&args);
    let log = text(&out);
    assert!(out.status.success(), "{log}\nworker: {}", worker.log_text());
    assert!(log.contains("runs on the fleet"), "{log}");
    assert!(
        worker.log_text().contains("worker ready"),
        "{}",
        worker.log_text()
    );
    for line in &lines {
        let dst = line.replace(&env.src.addr, &env.dst.addr);
        assert_copied(line, &dst, &env.dst.addr).await;
    }
    // Neither identity stepped outside its permissions on the way, but for the worker's
    // attempts to create the streams (and the buckets made before them) before the
    // coordinator had.
    let server_log = nats.log_text();
    let early = |l: &str| {
        l.contains("user:worker")
            && (l.contains("$JS.API.STREAM.CREATE.HANGAR_")
                || l.contains("$JS.API.STREAM.CREATE.KV_hangar-"))
    };
    let stray: Vec<&str> = server_log
        .lines()
        .filter(|l| l.contains("Violation") && !early(l))
        .collect();
    assert!(stray.is_empty(), "{stray:#?}");
    // A client without a certificate is turned away even with the right password, and so
    // is one with a certificate and a wrong password, or none at all.
    for (what, password, cert) in [
        ("no client certificate", COORDINATOR_PW, false),
        ("a wrong password", "guessed", true),
        ("no password", "", true),
    ] {
        let mut o = async_nats::ConnectOptions::new()
            .add_root_certificates(nats.pki.ca.clone())
            .require_tls(true);
        if !password.is_empty() {
            o = o.user_and_password("coordinator".into(), password.into());
        }
        if cert {
            let (c, k) = nats.pki.client("coordinator");
            o = o.add_client_certificate(c, k);
        }
        let r = tokio::time::timeout(Duration::from_secs(20), o.connect(nats.url())).await;
        assert!(
            matches!(r, Ok(Err(_))),
            "{what}: the connection was not refused"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_from_an_identity_without_publish_rights_never_runs() {
    let env = Env::new();
    let nats = SecureNats::start(env.dir.path());
    let coordinator = nats.coordinator_with_streams().await;
    let worker = Worker::start(&nats, env.path("worker.log"), &[]);
    worker.wait_ready().await;
    let lines = seed_shared_repos(&env, 1).await;
    let (desc, task) = blob_task(&env, &lines[0], "stolen/by-intruder").await;
    let payload = serde_json::to_vec(&envelope("evil.r1", 1, task.clone())).unwrap();
    let subject = jetstream::task_subject(TaskKind::Blob.into(), "evil.r1");

    // Two identities that hold a valid login but not the right to publish tasks: an
    // outsider allowed only its own subjects, and a worker (as if one were compromised).
    for (who, pw) in [("intruder", INTRUDER_PW), ("worker", WORKER_PW)] {
        let (cert, key) = nats.pki.client(who);
        let (tx, mut errors) = tokio::sync::mpsc::unbounded_channel();
        let client = async_nats::ConnectOptions::new()
            .user_and_password(who.into(), pw.into())
            .custom_inbox_prefix(format!("_INBOX.{who}"))
            .add_root_certificates(nats.pki.ca.clone())
            .add_client_certificate(cert, key)
            .require_tls(true)
            .event_callback(move |e| {
                let tx = tx.clone();
                async move {
                    if let async_nats::Event::ServerError(e) = e {
                        let _ = tx.send(e.to_string());
                    }
                }
            })
            .connect(nats.url())
            .await
            .unwrap_or_else(|e| panic!("{who} connects: {e}"));
        // Straight onto the stream's subject (no JetStream API needed to fill a stream)...
        client
            .publish(subject.clone(), payload.clone().into())
            .await
            .unwrap();
        client.flush().await.unwrap();
        let refused = tokio::time::timeout(Duration::from_secs(10), errors.recv())
            .await
            .unwrap_or_else(|_| panic!("{who}: no refusal from the server"))
            .unwrap();
        assert!(
            refused.contains("Permissions Violation") && refused.contains(&subject),
            "{who}: {refused}"
        );
        // ...and through JetStream, which never acknowledges it.
        let mut js = async_nats::jetstream::new(client.clone());
        js.set_timeout(Duration::from_secs(3));
        let acked = match js.publish(subject.clone(), payload.clone().into()).await {
            Ok(ack) => ack.await.is_ok(),
            Err(_) => false,
        };
        assert!(!acked, "{who}: JetStream stored the task");
    }
    // Nothing reached the stream, no worker saw it, nothing landed at the destination.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let js = async_nats::jetstream::new(coordinator.clone());
    let mut stream = js.get_stream(jetstream::TASK_STREAM).await.unwrap();
    let info = stream.info().await.unwrap();
    assert_eq!(info.state.last_sequence, 0, "a task reached the stream");
    assert_eq!(
        blob_status(&env.dst.addr, "stolen/by-intruder", &desc.digest).await,
        404
    );
    assert!(
        !worker.log_text().contains("evil.r1"),
        "{}",
        worker.log_text()
    );

    // The same task from the coordinator runs: the payload was valid, only the sender
    // lacked the right.
    let mut events = jetstream::follow_events(coordinator.clone(), "legit.r1")
        .await
        .unwrap();
    let queue = JetStreamQueue::publisher(coordinator.clone())
        .await
        .unwrap();
    queue.publish(envelope("legit.r1", 1, task)).await.unwrap();
    let done = final_event(&mut events).await;
    assert!(
        matches!(done.kind, EventKind::Done { .. }),
        "{done:?}\n{}",
        worker.log_text()
    );
    assert_eq!(
        blob_status(&env.dst.addr, "stolen/by-intruder", &desc.digest).await,
        200
    );

    // What a quiet run asks the streams about its unanswered tasks, the coordinator may
    // ask: the task is gone from the queue, and its answer is read.
    let started = std::time::Instant::now();
    let missing = loop {
        let missing = queue.missing("legit.r1").await.expect("allowed");
        if !missing.gone.is_empty() || started.elapsed() > Duration::from_secs(30) {
            break missing;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(missing.gone.len(), 1, "acknowledged once answered");
    assert!(events.read_through() >= missing.through);
}

#[tokio::test(flavor = "multi_thread")]
async fn workers_refuse_archives_outside_their_roots_and_signatures_outside_scope() {
    let env = Env::new();
    let nats = SecureNats::start(env.dir.path());
    let coordinator = nats.coordinator_with_streams().await;
    let pass = env.path("pass.txt");
    std::fs::write(&pass, "bus-key-passphrase\n").unwrap();
    let prefix = env.path("bus-key");
    let out = hangar(&[
        "generate-sigstore-key",
        "-p",
        prefix.to_str().unwrap(),
        "--passphrase-file",
        pass.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let key = format!("{}.key", prefix.display());
    let cache = env.path("cache");
    let root = env.path("archives");
    let outside = env.path("elsewhere");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    // A link inside the root that leads out of it.
    std::os::unix::fs::symlink(&outside, root.join("escape")).unwrap();
    let dst = env.dst.addr.clone();
    let scope = format!("release={dst}/signed/**");
    let worker = Worker::start(
        &nats,
        env.path("worker.log"),
        &[
            "--cache",
            cache.to_str().unwrap(),
            "--archive-root",
            root.to_str().unwrap(),
            "--sign-key",
            &format!("release={key}"),
            "--sign-key",
            &format!("dev={key}"),
            "--sign-scope",
            &scope,
            "--sign-passphrase-file",
            pass.to_str().unwrap(),
        ],
    );
    worker.wait_ready().await;
    let log = worker.log_text();
    assert!(
        log.contains("\"dev\" is unscoped") && !log.contains("\"release\" is unscoped"),
        "{log}"
    );

    // Archives: an empty plan in the cache, as the coordinator leaves one.
    hangar_shared::cache::BlobCache::open(cache.to_str().unwrap())
        .unwrap()
        .put_doc("bus/plan.json", b"[]".to_vec())
        .await
        .unwrap();
    let job = "guard.r1";
    let mut events = jetstream::follow_events(coordinator.clone(), job)
        .await
        .unwrap();
    let queue = JetStreamQueue::publisher(coordinator.clone())
        .await
        .unwrap();
    let assemble = |output: String| {
        Task::Assemble(AssembleTask {
            output,
            base: None,
            images: "bus/plan.json".into(),
            images_digest: Digest::of(b"[]"),
        })
    };
    let real_root = root.canonicalize().unwrap();
    let refused_outputs = [
        outside.join("stolen.zip").display().to_string(),
        format!("{}/../elsewhere/dotdot.zip", root.display()),
        root.join("escape/linked.zip").display().to_string(),
        format!("{}/x.zip", cache.display()),
    ];
    let mut id = 0;
    for output in &refused_outputs {
        id += 1;
        queue
            .publish(envelope(job, id, assemble(output.clone())))
            .await
            .unwrap();
        let e = final_event(&mut events).await;
        match &e.kind {
            EventKind::Failed {
                message,
                last: true,
                attempt: 1,
                ..
            } => {
                assert!(message.contains(output.as_str()), "{message}");
                assert!(
                    message.contains(&real_root.display().to_string()),
                    "{message}"
                );
            }
            other => panic!("{output}: {other:?}"),
        }
    }
    // Any task naming an archive meets the same roots (an index task writing into one
    // outside them here), not only those that write or copy archives.
    let stray = std::fs::File::create(outside.join("stray.zip")).unwrap();
    drop(stray);
    id += 1;
    let stray_at = outside.join("stray.zip").display().to_string();
    let index = Task::Index(IndexTask {
        dest: RepoRef {
            store: StoreRef::Archive {
                location: stray_at.clone(),
            },
            repo: "library/app".into(),
        },
        tag: "v1".into(),
        added: Vec::new(),
        source_index: None,
        overwrite: false,
        absent: false,
    });
    queue.publish(envelope(job, id, index)).await.unwrap();
    match &final_event(&mut events).await.kind {
        EventKind::Failed {
            message,
            last: true,
            ..
        } => assert!(
            message.contains("refused: the archive") && message.contains(&stray_at),
            "{message}"
        ),
        other => panic!("an index task into {stray_at}: {other:?}"),
    }
    assert_eq!(std::fs::metadata(&stray_at).unwrap().len(), 0);
    std::fs::remove_file(&stray_at).unwrap();
    let left_outside: Vec<_> = std::fs::read_dir(&outside).unwrap().flatten().collect();
    assert!(left_outside.is_empty(), "{left_outside:?}");
    assert!(!cache.join("x.zip").exists());
    // Inside the root the same task is done.
    id += 1;
    let inside = root.join("jobs/ok.zip");
    std::fs::create_dir_all(inside.parent().unwrap()).unwrap();
    queue
        .publish(envelope(job, id, assemble(inside.display().to_string())))
        .await
        .unwrap();
    let e = final_event(&mut events).await;
    assert!(matches!(e.kind, EventKind::Done { .. }), "{e:?}");
    assert!(inside.exists());

    // Signatures: one image at the destination in scope, one outside it.
    let dst_reg = registry(&dst).await;
    let mut digests = Vec::new();
    for repo in ["signed/app", "unsigned/app"] {
        let m = push_image(
            &dst_reg,
            env.dir.path(),
            repo,
            Some("v1"),
            hangar_loadtest::seed::Format::Docker,
            "amd64",
            (&[300], 10_000),
        )
        .await;
        digests.push(m.digest.clone());
    }
    let sign = |repo: &str, identity: &str, digest: &Digest| {
        Task::Sign(SignTask {
            dest: RepoRef::registry(&dst, repo),
            digest: digest.clone(),
            identity: identity.into(),
            key: "release".into(),
            index_of: None,
        })
    };
    let sig_tag = |repo: &str, d: &Digest| {
        skopeo_raw(&format!("{dst}/{repo}:sha256-{}.sig", d.hex())).is_some()
    };
    for (repo, identity, digest) in [
        // Outside the scope where it lands.
        ("unsigned/app", format!("{dst}/unsigned/app"), &digests[1]),
        // In scope where it lands, but naming a repository outside it.
        ("signed/app", format!("{dst}/unsigned/app"), &digests[0]),
    ] {
        id += 1;
        queue
            .publish(envelope(job, id, sign(repo, &identity, digest)))
            .await
            .unwrap();
        let e = final_event(&mut events).await;
        match &e.kind {
            EventKind::Failed {
                message,
                last: true,
                ..
            } => {
                assert!(message.contains(&scope["release=".len()..]), "{message}");
                assert!(message.contains("unsigned/app"), "{message}");
            }
            other => panic!("{repo} as {identity}: {other:?}"),
        }
        assert!(!sig_tag(repo, digest), "{repo}: a signature appeared");
    }
    // A `..` segment matches `signed/**` as text and resolves to `unsigned/app` in a URL.
    // The unscoped key meets the registry client's own refusal.
    let up = format!("{dst}/signed/../unsigned/app");
    for (repo, identity, key) in [
        ("signed/../unsigned/app", up.clone(), "release"),
        (
            "signed/%2e%2e/unsigned/app",
            format!("{dst}/signed/app"),
            "release",
        ),
        ("signed/app", up.clone(), "release"),
        (
            "signed/../unsigned/app",
            format!("{dst}/unsigned/app"),
            "dev",
        ),
    ] {
        id += 1;
        let mut task = sign(repo, &identity, &digests[1]);
        if let Task::Sign(s) = &mut task {
            s.key = key.into();
        }
        queue.publish(envelope(job, id, task)).await.unwrap();
        let e = final_event(&mut events).await;
        match &e.kind {
            EventKind::Failed {
                message,
                last: true,
                ..
            } => {
                // The worker's scope refuses first; the registry client refuses whatever
                // an unscoped key would send.
                let by = match key {
                    "release" => "signs named repositories only",
                    _ => ": refused: repository",
                };
                assert!(
                    message.contains(by) && message.contains("invalid repository name"),
                    "{repo} as {identity}: {message}"
                )
            }
            other => panic!("{repo} as {identity}: {other:?}"),
        }
        assert!(!sig_tag("unsigned/app", &digests[1]), "{repo}: signed");
    }
    id += 1;
    queue
        .publish(envelope(
            job,
            id,
            sign("signed/app", &format!("{dst}/signed/app"), &digests[0]),
        ))
        .await
        .unwrap();
    let e = final_event(&mut events).await;
    assert!(
        matches!(e.kind, EventKind::Done { .. }),
        "{e:?}\n{}",
        worker.log_text()
    );
    assert!(sig_tag("signed/app", &digests[0]));
    assert!(!sig_tag("unsigned/app", &digests[1]));
    let server_log = nats.log_text();
    assert!(!server_log.contains("Violation"), "{server_log}");
}

/// `serve` keeps its jobs in KV, lists them again after a restart, and cancels (purges)
/// within the coordinator's permissions.
#[tokio::test(flavor = "multi_thread")]
async fn serve_keeps_lists_and_cancels_jobs_within_its_permissions() {
    let env = Env::new();
    let nats = SecureNats::start(env.dir.path());
    let listen = format!("127.0.0.1:{}", free_port().unwrap());
    let server = format!("http://{listen}");
    let serve = Serve::start(&nats, &listen, env.path("serve.log"));
    let worker = Worker::start(&nats, env.path("worker.log"), &[]);
    let lines = seed_shared_repos(&env, 2).await;
    let list = env.write_list("list.txt", &lines);
    let out = hangar(&[
        "submit",
        list.to_str().unwrap(),
        "--server",
        &server,
        "-d",
        &env.dst.addr,
        "-o",
        env.path("failed.txt").to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}\nserve: {}\nworker: {}",
        text(&out),
        std::fs::read_to_string(env.path("serve.log")).unwrap_or_default(),
        worker.log_text()
    );
    for line in &lines {
        let dst = line.replace(&env.src.addr, &env.dst.addr);
        assert_copied(line, &dst, &env.dst.addr).await;
    }
    // A restarted coordinator finds the job again in KV.
    drop(serve);
    let _serve = Serve::start(&nats, &listen, env.path("serve.log"));
    let status = hangar(&["status", "--json", "--server", &server]);
    assert!(status.status.success(), "{}", text(&status));
    let jobs: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(jobs[0]["state"], "succeeded", "{jobs}");
    let id = jobs[0]["id"].as_str().unwrap().to_owned();
    let cancel = hangar(&["cancel", &id, "--server", &server]);
    assert!(cancel.status.success(), "{}", text(&cancel));
    let server_log = nats.log_text();
    let stray: Vec<&str> = server_log
        .lines()
        .filter(|l| l.contains("Violation"))
        .filter(|l| !(l.contains("user:worker") && l.contains("$JS.API.STREAM.CREATE.HANGAR_")))
        .collect();
    assert!(stray.is_empty(), "{stray:#?}");
}

/// A run's events are read from the stream no faster than the run takes them in: 3,000
/// events waiting while the run is busy all arrive, in order, once it reads (the reader
/// holds at most its bounded channel's worth, the stream keeps the rest).
#[tokio::test(flavor = "multi_thread")]
async fn events_waiting_on_a_busy_run_all_arrive_in_order() {
    use hangar_shared::queue::EventSink as _;
    let nats = hangar_loadtest::services::NatsProcess::start().expect("nats-server");
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let mut events = jetstream::follow_events(client.clone(), "busy.r1")
        .await
        .expect("follow");
    let sink = jetstream::JetStreamSink::new(client.clone());
    for id in 1..=3000u64 {
        let env = envelope(
            "busy.r1",
            id,
            Task::Index(hangar_shared::task::IndexTask {
                dest: RepoRef::registry("r.example", "p/n"),
                tag: "t".into(),
                added: Vec::new(),
                source_index: None,
                overwrite: false,
                absent: false,
            }),
        );
        sink.emit(Event::started(&env, "w", 1)).await.expect("emit");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for id in 1..=3000u64 {
        let e = tokio::time::timeout(Duration::from_secs(30), events.recv())
            .await
            .expect("an event within 30 s")
            .expect("stream open");
        assert_eq!(e.task, id);
    }
}
