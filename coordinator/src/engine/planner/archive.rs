//! Planning from an archive (`load`), and the archive entry of an image `save` copied.

use hangar_shared::archive::{ArchiveImage, blob_entry};
use hangar_shared::digest::Digest;
use hangar_shared::error::{Error, FailureClass, Result};
use hangar_shared::manifest::{Manifest, PlatformFilter, RawManifest};
use hangar_shared::registry::Side;
use hangar_shared::store::ImageStore;

use super::{ImageJob, ImagePlan, NO_PLATFORM, Planned, PlatformPlan, TopPlan};

/// What an archived image's store holds, asked through the store trait (any store that
/// keeps blobs and manifests by digest would do).
struct Held<'a> {
    store: &'a dyn ImageStore,
    repo: &'a str,
}

impl Held<'_> {
    async fn has(&self, digest: &Digest) -> Result<bool> {
        self.store
            .blob_exists(self.repo, digest, Side::Source)
            .await
    }

    async fn manifest(&self, digest: &Digest) -> Result<Option<RawManifest>> {
        self.store
            .get_manifest(self.repo, &digest.to_string(), Side::Source)
            .await
    }
}

/// Plans one archived image for `load`: the platform manifests its index entry lists,
/// filtered by `--arch/--os`, read from the store the job names as its source (the
/// archive). The archive keeps no source index, so the destination index is built from
/// these, as Hangar does.
pub async fn plan_archive(
    store: &dyn ImageStore,
    image: &ArchiveImage,
    job: &ImageJob,
    filter: &PlatformFilter,
    provenance: bool,
) -> Result<Planned> {
    let name = image.name();
    if image.is_signature() {
        return Err(Error::invalid(format!(
            "{name}: image is a sigstore signature; load does not load signatures by themselves"
        )));
    }
    let held = Held {
        store,
        repo: &job.source.repo,
    };
    if image.is_custom() {
        return plan_archived_chart(&held, image, job).await;
    }
    let specs = image.selected(filter, provenance);
    if !specs.iter().any(|s| !s.is_attestation()) {
        return Ok(Planned::Skip(NO_PLATFORM.to_owned()));
    }
    let missing = |d: &Digest, what: &str| {
        Error::invalid(format!(
            "{name}: archive {}: entry {:?} ({what} {d}) is missing",
            job.source,
            blob_entry(d)
        ))
    };
    let mut platforms = Vec::with_capacity(specs.len());
    // Each entry's plan holds its manifest and a copy of its descriptors: bounded as an
    // image read from a registry is, whatever the archive repeats under other platforms.
    let mut manifests_bytes = 0usize;
    for spec in specs {
        if !held.has(&spec.digest).await? {
            return Err(missing(&spec.digest, "manifest"));
        }
        for d in spec.blobs() {
            if !held.has(d).await? {
                return Err(missing(d, "blob"));
            }
        }
        let Some(manifest) = held.manifest(&spec.digest).await? else {
            return Err(missing(&spec.digest, "manifest"));
        };
        manifests_bytes += manifest.bytes.len();
        if manifests_bytes > super::IMAGE_MANIFESTS_LIMIT {
            return Err(Error::invalid(format!(
                "{name}: archive {}: its platform manifests come to more than {} MiB; a real \
                 image's are some tens of KB",
                job.source,
                super::IMAGE_MANIFESTS_LIMIT >> 20
            )));
        }
        let Manifest::Image(parsed) = manifest.parse()? else {
            return Err(Error::new(
                FailureClass::UnsupportedMediaType,
                format!(
                    "{name}: archived manifest {} is not an image manifest",
                    spec.digest
                ),
            ));
        };
        let blobs = parsed.unique_blobs();
        for b in &blobs {
            if !held.has(&b.digest).await? {
                return Err(missing(&b.digest, "blob"));
            }
        }
        platforms.push(PlatformPlan {
            entry: spec.descriptor(manifest.bytes.len() as u64),
            manifest,
            blobs,
            inline: None,
            push_tag: None,
        });
    }
    let top = match &job.name.dest.tag {
        Some(tag) => TopPlan::Index {
            tag: tag.clone(),
            source_index: None,
            absent: false,
        },
        None => TopPlan::Nothing,
    };
    Ok(Planned::Plan(ImagePlan {
        platforms,
        top,
        source: None,
    }))
}

/// A stored Helm chart (`archive store chart`) is pushed as it is, digests preserved, at
/// `dest:<tag>` without an index (as Hangar does); stored custom files are skipped.
async fn plan_archived_chart(
    held: &Held<'_>,
    image: &ArchiveImage,
    job: &ImageJob,
) -> Result<Planned> {
    let skip = || {
        Ok(Planned::Skip(
            "a stored custom file, not an image (not loaded)".to_owned(),
        ))
    };
    let [spec] = image.images.as_slice() else {
        return skip();
    };
    let Some(manifest) = held.manifest(&spec.digest).await? else {
        return skip();
    };
    let Manifest::Image(parsed) = manifest.parse()? else {
        return skip();
    };
    if parsed.layers.first().map(|l| l.media_type.as_str())
        != Some(hangar_shared::archive::custom::HELM_CHART_LAYER)
    {
        return skip();
    }
    let blobs = parsed.unique_blobs();
    for b in &blobs {
        if !held.has(&b.digest).await? {
            return Err(Error::invalid(format!(
                "{}: archive {}: entry {:?} (blob {}) is missing",
                image.name(),
                job.source,
                blob_entry(&b.digest),
                b.digest
            )));
        }
    }
    let tag = job
        .name
        .dest
        .tag
        .clone()
        .unwrap_or_else(|| image.tag.clone());
    Ok(Planned::Plan(ImagePlan {
        platforms: vec![PlatformPlan {
            entry: spec.descriptor(manifest.bytes.len() as u64),
            manifest,
            blobs,
            inline: None,
            push_tag: Some(tag),
        }],
        top: TopPlan::Nothing,
        source: None,
    }))
}

/// The archive index entry for an image `save` copied.
pub fn archive_image(job: &ImageJob, plan: &ImagePlan) -> Result<ArchiveImage> {
    let mut specs = Vec::with_capacity(plan.platforms.len());
    for p in plan.platforms.iter().filter(|p| !p.is_attachment()) {
        let Manifest::Image(image) = p.manifest.parse()? else {
            return Err(Error::internal("a platform plan without an image manifest"));
        };
        let layers = image
            .layers
            .iter()
            .filter(|l| !l.is_foreign())
            .map(|l| l.digest.clone())
            .collect();
        specs.push(hangar_shared::archive::ImageSpec::from_descriptor(
            &p.entry,
            &image.config.digest,
            layers,
        ));
    }
    let source = &job.name.source;
    let tag = source
        .tag
        .clone()
        .or_else(|| source.digest.as_ref().map(|d| d.to_string()))
        .unwrap_or_else(|| hangar_shared::reference::DEFAULT_TAG.to_owned());
    Ok(ArchiveImage::new(
        format!("{}/{}", source.registry, source.repository()),
        tag,
        specs,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::tracker::testkit::{blob, job, platform};
    use bytes::Bytes;
    use hangar_shared::manifest::RawManifest;

    #[test]
    fn an_archive_entry_lists_platform_manifests_without_attachments_or_foreign_layers() {
        let (config, layer) = (blob("config"), blob("layer"));
        let mut foreign = blob("foreign");
        foreign.media_type = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip".into();
        let amd64 = platform("amd64", &[config.clone(), layer.clone(), foreign]);
        let digest = amd64.manifest.digest.clone();
        let mut sig = platform("unknown", &[blob("sig-config")]);
        sig.push_tag = Some("sha256-abc.sig".into());
        assert!(sig.is_attachment() && !amd64.is_attachment());
        let plan = ImagePlan {
            platforms: vec![amd64, sig],
            top: TopPlan::Nothing,
            source: None,
        };
        let entry = archive_image(&job("src.io/lib/a:1", "dst.io/proj/a:1"), &plan).expect("entry");
        assert_eq!(
            (entry.source.as_str(), entry.tag.as_str()),
            ("src.io/lib/a", "1")
        );
        assert_eq!(entry.arch_list, ["amd64"]);
        assert_eq!(entry.images.len(), 1, "the attachment is not archived");
        let spec = &entry.images[0];
        assert_eq!(spec.digest, digest);
        assert_eq!(spec.config.as_ref(), Some(&config.digest));
        assert_eq!(spec.layers, [layer.digest], "foreign layers live elsewhere");
    }

    #[test]
    fn an_archive_entry_of_a_tagless_pinned_line_is_tagged_by_its_digest() {
        let pin = hangar_shared::digest::Digest::of(b"index");
        let plan = ImagePlan {
            platforms: vec![platform("amd64", &[blob("config")])],
            top: TopPlan::Nothing,
            source: None,
        };
        let job = job(&format!("src.io/lib/a@{pin}"), "dst.io/proj/a:1");
        let entry = archive_image(&job, &plan).expect("entry");
        assert_eq!(entry.tag, pin.to_string());
        assert_eq!(entry.reference().expect("reference").digest, Some(pin));
    }

    #[test]
    fn an_archive_entry_needs_image_manifests() {
        let mut odd = platform("amd64", &[blob("config")]);
        odd.manifest = RawManifest::from_bytes(
            Bytes::from_static(br#"{"schemaVersion":2,"manifests":[]}"#),
            None,
        )
        .expect("an index");
        let plan = ImagePlan {
            platforms: vec![odd],
            top: TopPlan::Nothing,
            source: None,
        };
        let err = archive_image(&job("src.io/lib/a:1", "dst.io/proj/a:1"), &plan).unwrap_err();
        assert_eq!(err.class, FailureClass::Internal);
    }
}
