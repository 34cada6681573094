//! A worker that writes an index reports its digest, and another signs that digest with
//! the fleet's key. A compromised writer could report an index of its own making: here the
//! test plays that writer, publishing sign tasks on the locked-down bus for indexes it
//! pushed, and the real worker signs only an index listing what the job planned, manifests
//! its key already signed, and attestations of those.

mod common;
mod secure_bus;

use common::signing::generate;
use common::*;
use hangar_loadtest::seed::{Format, platform};
use hangar_shared::digest::Digest;
use hangar_shared::manifest::{Descriptor, Platform, RawManifest};
use hangar_shared::queue::TaskQueue;
use hangar_shared::queue::jetstream::{self, JetStreamQueue};
use hangar_shared::store::RepoRef;
use hangar_shared::task::{EventKind, SignTask, Task};
use secure_bus::*;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread")]
async fn an_index_is_signed_only_when_it_lists_what_was_planned_or_signed() {
    let env = Env::new();
    let nats = SecureNats::start(env.dir.path());
    let coordinator = nats.coordinator_with_streams().await;
    let (key, _) = generate(env.dir.path(), "k");
    let worker = Worker::start(
        &nats,
        env.path("worker.log"),
        &[
            "--sign-key",
            &format!("release={}", key.display()),
            "--sign-passphrase-file",
            env.path("pass.txt").to_str().unwrap(),
        ],
    );
    worker.wait_ready().await;

    let dst = env.dst.addr.clone();
    let reg = registry(&dst).await;
    let repo = "proj/app";
    let image = |arch: &'static str, seed: u64| {
        let (reg, dir) = (&reg, env.dir.path());
        async move {
            let m = push_image(reg, dir, repo, None, Format::Oci, arch, (&[seed], 4_000)).await;
            (m, platform(arch))
        }
    };
    let (planned, planned_at) = image("amd64", 1).await;
    let (other, other_at) = image("arm64", 2).await;
    let attestation_of = |subject: &RawManifest| {
        Some(json!({
            "vnd.docker.reference.type": "attestation-manifest",
            "vnd.docker.reference.digest": subject.digest.to_string(),
        }))
    };
    let mut unknown = platform("unknown");
    unknown.os = "unknown".into();
    let (att, _) = image("amd64", 3).await;
    let index = |tag: &'static str, entries: Vec<(RawManifest, Platform, Option<Value>)>| {
        let reg = &reg;
        async move {
            push_index(reg, repo, tag, Format::Oci, &entries)
                .await
                .digest
        }
    };
    let only_planned = index("planned", vec![(planned.clone(), planned_at.clone(), None)]).await;
    let with_other = index(
        "other",
        vec![
            (other.clone(), other_at.clone(), None),
            (planned.clone(), planned_at.clone(), None),
        ],
    )
    .await;
    let with_its_attestation = index(
        "attested",
        vec![
            (planned.clone(), planned_at.clone(), None),
            (other.clone(), other_at.clone(), None),
            (att.clone(), unknown.clone(), attestation_of(&other)),
        ],
    )
    .await;

    let job = "vouch.r1";
    let mut events = jetstream::follow_events(coordinator.clone(), job)
        .await
        .unwrap();
    let queue = JetStreamQueue::publisher(coordinator.clone())
        .await
        .unwrap();
    let mut id = 0;
    let mut sign = async |digest: &Digest, index_of: Option<Vec<Descriptor>>| {
        id += 1;
        let task = Task::Sign(SignTask {
            dest: RepoRef::registry(&dst, repo),
            digest: digest.clone(),
            identity: format!("{dst}/{repo}"),
            key: "release".into(),
            index_of,
        });
        queue.publish(envelope(job, id, task)).await.unwrap();
        final_event(&mut events).await.kind
    };
    let signed = |d: &Digest| skopeo_raw(&format!("{dst}/{repo}:sha256-{}.sig", d.hex())).is_some();
    let refused = |kind: EventKind, needle: &str| match kind {
        EventKind::Failed {
            message,
            last: true,
            attempt: 1,
            ..
        } => assert!(message.contains(needle), "{needle}: {message}"),
        other => panic!("refused for {needle}: {other:?}"),
    };
    // The entry the job planned: the amd64 manifest, under its platform.
    let mut entry = planned.descriptor();
    entry.platform = Some(planned_at.clone());
    let planned_only = Some(vec![entry]);

    // The index the job planned is signed.
    let e = sign(&only_planned, planned_only.clone()).await;
    assert!(matches!(e, EventKind::Done { .. }), "{e:?}");
    assert!(signed(&only_planned));
    // One that lists a manifest the job did not copy, unsigned by this key, is not; nor is
    // a plain manifest reported as the index, nor a digest the registry does not hold.
    refused(
        sign(&with_other, planned_only.clone()).await,
        &format!(
            "it lists {} (linux/arm64/v8), which this job did not copy there",
            other.digest
        ),
    );
    refused(
        sign(&other.digest, planned_only.clone()).await,
        "the job wrote an index here and this is a application/vnd.oci.image.manifest.v1+json",
    );
    let absent = Digest::of(b"no such index");
    refused(
        sign(&absent, planned_only.clone()).await,
        "no manifest has this digest",
    );
    for d in [&with_other, &other.digest, &absent, &with_its_attestation] {
        assert!(!signed(d), "{d} was signed");
    }
    // The unsigned platform fails the index whatever else it lists (its attestation too).
    refused(
        sign(&with_its_attestation, planned_only.clone()).await,
        &format!("it lists {} (linux/arm64/v8)", other.digest),
    );
    // The planned manifest under another platform is not what was planned: a client
    // choosing by platform would run it there.
    let elsewhere = index(
        "elsewhere",
        vec![
            (planned.clone(), planned_at.clone(), None),
            (planned.clone(), other_at.clone(), None),
        ],
    )
    .await;
    refused(
        sign(&elsewhere, planned_only.clone()).await,
        &format!("it lists {} (linux/arm64/v8)", planned.digest),
    );
    // Nor is a manifest of the writer's own, annotated as an attestation of the planned one
    // but listed under a platform clients run.
    let disguised = index(
        "disguised",
        vec![
            (att.clone(), planned_at.clone(), attestation_of(&planned)),
            (planned.clone(), planned_at.clone(), None),
        ],
    )
    .await;
    refused(
        sign(&disguised, planned_only.clone()).await,
        &format!("it lists the attestation {} (linux/amd64)", att.digest),
    );
    for d in [&elsewhere, &disguised] {
        assert!(!signed(d), "{d} was signed");
    }

    // Once the key has signed the other platform (an earlier run's copy, merged into the
    // tag), the merged index and the attestation of that platform are vouched for.
    let e = sign(&other.digest, None).await;
    assert!(matches!(e, EventKind::Done { .. }), "{e:?}");
    for d in [&with_other, &with_its_attestation] {
        let e = sign(d, planned_only.clone()).await;
        assert!(matches!(e, EventKind::Done { .. }), "{d}: {e:?}");
        assert!(signed(d));
    }
    // An attestation whose subject nobody vouches for is refused by itself.
    let (stray, _) = image("amd64", 4).await;
    let orphan = index(
        "orphan",
        vec![
            (planned.clone(), planned_at.clone(), None),
            (att.clone(), unknown, attestation_of(&stray)),
        ],
    )
    .await;
    refused(
        sign(&orphan, planned_only).await,
        &format!("it lists the attestation {}", att.digest),
    );
    assert!(!signed(&orphan));
}
