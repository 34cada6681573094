//! Follow-ups: tasks that run on what an image already wrote, a `SignTask` for each platform
//! manifest and index digest (with `--sign-key`) and a `ScanTask` for each platform manifest
//! (with `--scan-db`). They do not gate the image's writes, only its report: the image's
//! result waits in `held` until the last of them is done. A failed signature fails the
//! image; a failed scan is reported with the scan and leaves the copy standing.

use std::collections::HashMap;

use hangar_shared::digest::Digest;
use hangar_shared::error::{Error, Result};
use hangar_shared::manifest::Descriptor;
use hangar_shared::store::RepoRef;
use hangar_shared::task::{ManifestBody, Outcome, ScanTask, SignTask, Task};

use super::{ImageResult, ImageState, Observer, TaskRef, Tracker};

/// Images of a job that write one destination tag, where more than one does: keyed by
/// repository and tag alone, so that one registry written two ways (`Reg.io`, `reg.io:443`)
/// cannot hide two writers of a tag from each other. Images of other registries that share
/// a repository and tag count as peers too: a read too many, never a merge lost.
pub(super) type TagPeers = HashMap<(String, String), Vec<usize>>;

pub(super) fn tag_key(dest: &RepoRef, tag: &str) -> (String, String) {
    (dest.repo.clone(), tag.to_owned())
}

pub(super) fn tag_peers(images: &[ImageState]) -> TagPeers {
    let mut by_tag = TagPeers::new();
    for (i, s) in images.iter().enumerate() {
        if let Some(tag) = &s.job.name.dest.tag {
            let key = tag_key(&s.job.dest, tag);
            by_tag.entry(key).or_default().push(i);
        }
    }
    by_tag.retain(|_, writers| writers.len() > 1);
    by_tag
}

impl Tracker {
    /// Follow-ups of platform `platform` just written: attachments and attestations are
    /// neither signed nor scanned.
    pub(super) async fn manifest_landed(&mut self, image: usize, platform: usize) -> Result<()> {
        // An image already failed (another platform, a signature) is reported as it is:
        // what lands of it afterwards is neither signed nor scanned.
        if self.images[image].result.is_some() {
            return Ok(());
        }
        let signable = self.images[image].plan.as_ref().and_then(|p| {
            let p = &p.platforms[platform];
            (!p.is_attachment() && !p.entry.is_attestation()).then(|| p.manifest.digest.clone())
        });
        if let Some(digest) = signable {
            self.publish_sign(image, digest, None).await?;
            if self.extras.scan {
                self.publish_scan(image, platform).await?;
            }
        }
        Ok(())
    }

    /// Signs `digest` in the image's destination with the job's key, if it has one;
    /// `index_of`: the entries planned for an index whose digest a worker reported.
    pub(super) async fn publish_sign(
        &mut self,
        image: usize,
        digest: Digest,
        index_of: Option<Vec<Descriptor>>,
    ) -> Result<()> {
        let Some(key) = self.extras.sign_key.clone() else {
            return Ok(());
        };
        if self.images[image].result.is_some() {
            return Ok(());
        }
        let dest = self.dest_repo(image);
        let job = &self.images[image].job;
        let identity = hangar_shared::sign::cosign::docker_reference(
            &job.name.dest.registry,
            &job.name.dest.repository(),
        );
        self.images[image].pending_follow_ups += 1;
        let name = format!("sign/{dest}@{digest}");
        let task = Task::Sign(SignTask {
            dest,
            digest,
            identity,
            key,
            index_of,
        });
        self.publish(name, task, TaskRef::Sign { image }).await
    }

    /// The entries the job planned for the image's index: its own plan's, and those of the
    /// other images writing the same tag, whose platforms the index merges (their own
    /// signatures may still be on their way). Attachments live at tags of their own.
    pub(super) fn planned_children(&self, image: usize) -> Vec<Descriptor> {
        let job = &self.images[image].job;
        let peers = job
            .name
            .dest
            .tag
            .as_ref()
            .and_then(|tag| self.tag_peers.get(&tag_key(&job.dest, tag)));
        let writers = peers.map_or(std::slice::from_ref(&image), Vec::as_slice);
        writers
            .iter()
            .filter_map(|i| self.images[*i].plan.as_ref())
            .flat_map(|p| p.platforms.iter().filter(|p| !p.is_attachment()))
            .map(|p| p.entry.clone())
            .collect()
    }

    /// Reads the package inventory of a platform manifest just written.
    async fn publish_scan(&mut self, image: usize, platform: usize) -> Result<()> {
        let Some(plan) = &self.images[image].plan else {
            return Ok(());
        };
        let manifest = ManifestBody::from(&plan.platforms[platform].manifest);
        let store = self.dest_repo(image);
        self.images[image].pending_follow_ups += 1;
        let name = format!("scan/{store}@{}", manifest.digest);
        let task = Task::Scan(ScanTask { store, manifest });
        self.publish(name, task, TaskRef::Scan { image, platform })
            .await
    }

    pub(super) fn sign_done(
        &mut self,
        image: usize,
        outcome: Option<Outcome>,
        obs: &mut dyn Observer,
    ) {
        match outcome {
            Some(Outcome::Signed { added }) => {
                if added {
                    self.stats.signatures_added += 1;
                }
                self.follow_up_done(image, obs);
            }
            // Only a signature answers a sign task.
            other => {
                let e = Error::internal(format!(
                    "a sign task was answered with {:?}",
                    other.as_ref().map(Outcome::name)
                ));
                self.sign_failed(image, e, obs);
            }
        }
    }

    /// A signature that could not be written fails the image, whatever else is pending.
    pub(super) fn sign_failed(&mut self, image: usize, e: Error, obs: &mut dyn Observer) {
        self.images[image].pending_follow_ups = 0;
        self.images[image].held = None;
        self.finish(image, ImageResult::Failed(e.context("signing")), obs);
    }

    pub(super) fn scan_done(
        &mut self,
        image: usize,
        platform: usize,
        outcome: Option<Outcome>,
        result: Option<Error>,
        obs: &mut dyn Observer,
    ) {
        match (outcome, result) {
            (Some(Outcome::Scanned { inventory, .. }), None) => {
                self.inventories.push((image, platform, *inventory));
            }
            (_, Some(e)) => {
                // A scan failure does not undo the copy: it is reported with the scan.
                self.scan_failures.push((image, e));
            }
            _ => {}
        }
        self.follow_up_done(image, obs);
    }

    /// A signature or scan of `image` is done: the image finishes when it was the last.
    fn follow_up_done(&mut self, image: usize, obs: &mut dyn Observer) {
        let state = &mut self.images[image];
        state.pending_follow_ups = state.pending_follow_ups.saturating_sub(1);
        if state.pending_follow_ups == 0
            && let Some(result) = state.held.take()
        {
            self.finish(image, result, obs);
        }
    }

    /// Finishes an image once its signatures are written; until then its result waits.
    pub(super) fn complete(&mut self, image: usize, result: ImageResult, obs: &mut dyn Observer) {
        if self.images[image].pending_follow_ups > 0 {
            self.images[image].held = Some(result);
        } else {
            self.finish(image, result, obs);
        }
    }
}

#[cfg(test)]
mod tests {
    use hangar_shared::digest::Digest;
    use hangar_shared::error::{Error, FailureClass};
    use hangar_shared::manifest::{ANNOTATION_REFERENCE_TYPE, ATTESTATION_MANIFEST};
    use hangar_shared::task::{Event, Outcome, Task, TaskEnvelope};

    use super::super::testkit::{Harness, blob, job, kinds, platform, tagged};
    use super::super::{Extras, ImageResult};

    fn signing() -> Extras {
        Extras {
            sign_key: Some("release".into()),
            ..Extras::default()
        }
    }

    fn signed_digest(t: &TaskEnvelope) -> &Digest {
        match &t.task {
            Task::Sign(s) => &s.digest,
            other => panic!("a sign task: {other:?}"),
        }
    }

    /// Runs one single-platform image up to its index write, answering the platform's
    /// signature or not; returns the platform's sign task and the index task.
    async fn up_to_the_index(h: &mut Harness) -> (TaskEnvelope, TaskEnvelope) {
        h.add(0, tagged("1", vec![platform("amd64", &[blob("config")])]))
            .await;
        for t in &h.take() {
            h.ok(t).await;
        }
        let push = h.take();
        h.ok(&push[0]).await;
        let step = h.take();
        assert_eq!(
            kinds(&step),
            ["sign", "index"],
            "signed as soon as it is pushed"
        );
        (step[0].clone(), step[1].clone())
    }

    #[tokio::test]
    async fn signatures_hold_the_image_result_until_they_are_done() {
        let mut h = Harness::new(vec![job("src.io/lib/a:1", "dst.io/proj/a:1")], signing());
        let (sign_platform, index) = up_to_the_index(&mut h).await;
        let index_digest = Digest::of(b"index");
        h.ok(&index).await;
        let step = h.take();
        assert_eq!(kinds(&step), ["sign"]);
        assert_eq!(
            *signed_digest(&step[0]),
            index_digest,
            "the index is signed too"
        );
        // The index's digest is the worker's word: the signer checks it lists only the
        // planned platform. The platform's digest is the plan's own.
        let (Task::Sign(for_index), Task::Sign(for_platform)) =
            (&step[0].task, &sign_platform.task)
        else {
            panic!("sign tasks: {step:?}");
        };
        let planned = h.tracker.planned_children(0);
        let digests: Vec<&Digest> = planned.iter().map(|d| &d.digest).collect();
        assert_eq!(digests, [&for_platform.digest]);
        assert!(planned[0].platform.is_some(), "planned with its platform");
        let index_of = for_index.index_of.as_ref().expect("the planned entries");
        assert_eq!(
            serde_json::to_value(index_of).unwrap(),
            serde_json::to_value(&planned).unwrap()
        );
        assert_eq!(for_platform.index_of, None);
        assert!(h.finished.0.is_empty(), "held for the signatures");
        h.ok(&sign_platform).await;
        assert!(
            h.finished.0.is_empty(),
            "the index's signature is still out"
        );
        h.done(&step[0], Outcome::Signed { added: false }).await;
        assert!(matches!(
            &h.finished.0[0].1,
            ImageResult::Copied { digest: Some(d), .. } if *d == index_digest
        ));
        assert_eq!(h.tracker.stats.signatures_added, 1, "one was there already");
    }

    /// The worker given the index write answers "manifest pushed": had that counted, the
    /// image would be reported copied with no index signature asked for. Any answer that
    /// is not one to its task fails it.
    #[tokio::test]
    async fn an_index_write_answered_otherwise_fails_and_is_not_signed_unasked() {
        let mut h = Harness::new(vec![job("src.io/lib/a:1", "dst.io/proj/a:1")], signing());
        let (sign_platform, index) = up_to_the_index(&mut h).await;
        h.done(&index, Outcome::ManifestPushed).await;
        assert!(
            h.take().is_empty(),
            "no index signature for an index not written"
        );
        h.ok(&sign_platform).await;
        let [(_, ImageResult::Failed(e))] = h.finished.0.as_slice() else {
            panic!("the image fails: {:?}", h.finished.0);
        };
        assert!(
            e.message
                .contains("index task was answered \"manifest-pushed\""),
            "{e}"
        );
    }

    /// Two lines of a job writing one tag: the second index merges the first line's
    /// platform, whose own signature may still be on its way; the signer must find it among
    /// the planned entries, or it refuses the second image's index as "not signed".
    #[tokio::test]
    async fn an_index_merging_another_lines_platform_is_planned_with_it() {
        let mut h = Harness::new(
            vec![
                job("src.io/lib/a:1", "dst.io/proj/app:1"),
                job("src.io/lib/b:1", "dst.io/proj/app:1"),
                job("src.io/lib/c:1", "dst.io/proj/other:1"),
            ],
            signing(),
        );
        h.add(0, tagged("1", vec![platform("amd64", &[blob("a-config")])]))
            .await;
        h.add(1, tagged("1", vec![platform("arm64", &[blob("b-config")])]))
            .await;
        h.add(2, tagged("1", vec![platform("s390x", &[blob("c-config")])]))
            .await;
        let arches = |planned: Vec<hangar_shared::manifest::Descriptor>| -> Vec<String> {
            let mut a: Vec<String> = planned
                .into_iter()
                .filter_map(|d| d.platform.map(|p| p.architecture))
                .collect();
            a.sort();
            a
        };
        assert_eq!(arches(h.tracker.planned_children(1)), ["amd64", "arm64"]);
        assert_eq!(arches(h.tracker.planned_children(0)), ["amd64", "arm64"]);
        assert_eq!(
            arches(h.tracker.planned_children(2)),
            ["s390x"],
            "another tag's index lists its own"
        );
    }

    /// Only an event with its task's nonce is about it: a worker that was not given the
    /// task cannot settle it, whatever it says.
    #[tokio::test]
    async fn an_event_without_its_tasks_nonce_is_ignored() {
        let mut h = Harness::new(vec![job("src.io/lib/a:1", "dst.io/proj/a:1")], signing());
        let (sign_platform, index) = up_to_the_index(&mut h).await;
        let mut forged = Event::done(&sign_platform, Outcome::Signed { added: true });
        forged.nonce ^= 1;
        h.event(forged).await;
        assert!(
            h.tracker.describe(sign_platform.id).is_some(),
            "still outstanding"
        );
        let mut forged = Event::failed(&index, &Error::new(FailureClass::Auth, "forged"), 1, true);
        forged.nonce = forged.nonce.wrapping_add(1);
        h.event(forged).await;
        assert!(h.finished.0.is_empty(), "a forged failure fails nothing");
        assert!(h.tracker.describe(index.id).is_some());
    }

    /// A sign task is answered by a signature: any other outcome (a worker's mistake or
    /// its lie) fails the image instead of counting as signed.
    #[tokio::test]
    async fn a_sign_task_answered_otherwise_fails_the_image() {
        let mut h = Harness::new(vec![job("src.io/lib/a:1", "dst.io/proj/a:1")], signing());
        let (sign_platform, _index) = up_to_the_index(&mut h).await;
        h.done(&sign_platform, Outcome::BlobPresent).await;
        let ImageResult::Failed(e) = &h.finished.0[0].1 else {
            panic!("failed: {:?}", h.finished.0);
        };
        assert!(
            e.message
                .contains("a sign task was answered \"blob-present\""),
            "{e}"
        );
        assert_eq!(h.tracker.stats.signatures_added, 0);
    }

    #[tokio::test]
    async fn a_failed_signature_fails_the_image_even_after_its_index_is_written() {
        let mut h = Harness::new(vec![job("src.io/lib/a:1", "dst.io/proj/a:1")], signing());
        let (sign_platform, index) = up_to_the_index(&mut h).await;
        h.ok(&index).await;
        let sign_index = h.take();
        h.fail(&sign_platform, FailureClass::Auth, true).await;
        assert_eq!(h.finished.class(0), Some(FailureClass::Auth));
        let ImageResult::Failed(e) = &h.finished.0[0].1 else {
            unreachable!()
        };
        assert!(e.message.starts_with("signing: "), "{e}");
        h.ok(&sign_index[0]).await;
        assert_eq!(h.finished.0.len(), 1, "reported once");
        assert_eq!(h.tracker.completed_count(), 0);
    }

    #[tokio::test]
    async fn attachments_and_attestations_are_neither_signed_nor_scanned() {
        let extras = Extras {
            scan: true,
            ..signing()
        };
        let mut h = Harness::new(vec![job("src.io/lib/a:1", "dst.io/proj/a:1")], extras);
        let image = platform("amd64", &[blob("config")]);
        let mut attestation = platform("unknown", &[blob("att-config")]);
        attestation.entry.annotations = Some(
            [(
                ANNOTATION_REFERENCE_TYPE.to_owned(),
                ATTESTATION_MANIFEST.to_owned(),
            )]
            .into(),
        );
        let mut sig = platform("unknown", &[blob("sig-config")]);
        sig.push_tag = Some("sha256-abc.sig".into());
        let digest = image.manifest.digest.clone();
        h.add(0, tagged("1", vec![image, attestation, sig])).await;
        for t in &h.take() {
            h.ok(t).await;
        }
        let pushes = h.take();
        assert_eq!(kinds(&pushes), ["manifest", "manifest", "manifest"]);
        let Task::Manifest(m) = &pushes[2].task else {
            unreachable!()
        };
        assert_eq!(
            m.reference, "sha256-abc.sig",
            "an attachment goes at its tag"
        );
        for t in &pushes {
            h.ok(t).await;
        }
        let step = h.take();
        assert_eq!(kinds(&step), ["sign", "scan", "index"]);
        assert_eq!(*signed_digest(&step[0]), digest);
        let Task::Index(index) = &step[2].task else {
            unreachable!()
        };
        assert_eq!(
            index.added.len(),
            2,
            "the attestation is listed, the attachment is not"
        );
    }

    #[tokio::test]
    async fn a_failed_scan_is_reported_with_the_scan_and_the_copy_stands() {
        let extras = Extras {
            scan: true,
            ..Extras::default()
        };
        let mut h = Harness::new(vec![job("src.io/lib/a:1", "dst.io/proj/a:1")], extras);
        h.add(0, tagged("1", vec![platform("amd64", &[blob("config")])]))
            .await;
        for t in &h.take() {
            h.ok(t).await;
        }
        let push = h.take();
        h.ok(&push[0]).await;
        let step = h.take();
        assert_eq!(kinds(&step), ["scan", "index"]);
        h.ok(&step[1]).await;
        assert!(h.finished.0.is_empty(), "held for the scan");
        h.fail(&step[0], FailureClass::Internal, true).await;
        assert!(matches!(h.finished.0[0].1, ImageResult::Copied { .. }));
        assert_eq!(h.tracker.scan_failures().count(), 1);
        assert_eq!(h.tracker.inventories().count(), 0);
    }

    #[tokio::test]
    async fn a_failed_image_gets_no_follow_ups_for_platforms_landing_afterwards() {
        let extras = Extras {
            scan: true,
            ..signing()
        };
        let mut h = Harness::new(vec![job("src.io/lib/a:1", "dst.io/proj/a:1")], extras);
        h.add(
            0,
            tagged(
                "1",
                vec![
                    platform("amd64", &[blob("config-amd64")]),
                    platform("arm64", &[blob("config-arm64")]),
                ],
            ),
        )
        .await;
        for t in &h.take() {
            h.ok(t).await;
        }
        let pushes = h.take();
        assert_eq!(kinds(&pushes), ["manifest", "manifest"]);
        h.fail(&pushes[0], FailureClass::Auth, true).await;
        assert_eq!(h.finished.class(0), Some(FailureClass::Auth));
        h.ok(&pushes[1]).await;
        let after = h.take();
        assert!(
            !kinds(&after).iter().any(|k| *k == "sign" || *k == "scan"),
            "{:?}",
            kinds(&after)
        );
        assert_eq!(h.finished.0.len(), 1, "reported once");
    }

    #[tokio::test]
    async fn abandoned_follow_ups_fail_a_signed_image_and_leave_a_scanned_copy_standing() {
        // Waiting on a signature only: failed for the signature, not as a lost copy.
        let mut h = Harness::new(vec![job("src.io/lib/a:1", "dst.io/proj/a:1")], signing());
        let (_sign, index) = up_to_the_index(&mut h).await;
        h.ok(&index).await;
        assert!(h.finished.0.is_empty(), "held for the signatures");
        h.tracker.abandon("interrupted", &mut h.finished);
        let ImageResult::Failed(e) = &h.finished.0[0].1 else {
            panic!("{:?}", h.finished.0[0].1)
        };
        assert_eq!(e.class, FailureClass::Cancelled);
        assert!(e.message.contains("signatures were not confirmed"), "{e}");
        assert!(h.tracker.is_finished());

        // Waiting on a scan only: the copy stands, the scan is reported cancelled.
        let extras = Extras {
            scan: true,
            ..Extras::default()
        };
        let mut h = Harness::new(vec![job("src.io/lib/a:1", "dst.io/proj/a:1")], extras);
        h.add(0, tagged("1", vec![platform("amd64", &[blob("config")])]))
            .await;
        for t in &h.take() {
            h.ok(t).await;
        }
        let push = h.take();
        h.ok(&push[0]).await;
        let step = h.take();
        assert_eq!(kinds(&step), ["scan", "index"]);
        h.ok(&step[1]).await;
        h.tracker.abandon("interrupted", &mut h.finished);
        assert!(matches!(h.finished.0[0].1, ImageResult::Copied { .. }));
        let (_, scan) = h.tracker.scan_failures().next().expect("the scan reported");
        assert_eq!(scan.class, FailureClass::Cancelled);
    }
}
