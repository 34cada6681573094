//! The floors: the fewest requests a complete job over a list makes, with no
//! verification and no look at the destination, against which the benches measure
//! hangar's own cost apart from the cost of what any such job must ask.
//!
//! The copy floor: every unique blob GET→PUT once (the raw bound), then for each image a
//! mount of each blob its repository lacks, its platform manifests by digest and its tag.
//! The raw bound leaves the destination without a manifest; this does not, so hangar's
//! ratio to it is hangar's own cost, and its ratio to the raw bound that cost plus the
//! destination's answers to what a copy must ask. Hangar's semantics ask two things more
//! of each image, which the floor leaves out: its tag read before it is written (the
//! merge), and for a single-platform image an index of its own at the tag.
//!
//! The save floor: every line's manifests read (the raw save bound reads them before its
//! clock starts), then the raw bound's GET of every unique blob into a file.

use std::collections::{BTreeMap, HashSet};

use anyhow::{Context as _, Result, bail};
use futures_util::StreamExt;
use hangar_shared::digest::Digest;
use hangar_shared::manifest::{ACCEPTED, Descriptor, ImageManifest, Manifest, RawManifest};
use hangar_shared::reference::ImageRef;
use hangar_shared::registry::{Registry, Side};

use crate::bench::raw_copy;

/// One line of the list as the floor copies it.
pub struct ImageCopy {
    pub repo: String,
    tag: String,
    top: RawManifest,
    /// An index's platform manifests, in its order; empty for a single manifest.
    children: Vec<RawManifest>,
}

impl ImageCopy {
    pub fn is_index(&self) -> bool {
        !self.children.is_empty()
    }

    /// The image manifests of its platforms (the top one for a single manifest).
    pub fn platforms(&self) -> Result<Vec<ImageManifest>> {
        let mut out = Vec::new();
        for m in self
            .children
            .iter()
            .chain((!self.is_index()).then_some(&self.top))
        {
            if let Manifest::Image(img) = m.parse()? {
                out.push(img);
            }
        }
        Ok(out)
    }
}

/// Every line's manifests, read from the source (before any clock starts).
pub async fn read_images(reg: &Registry, lines: &[String]) -> Result<Vec<ImageCopy>> {
    let mut out = Vec::new();
    for line in lines {
        let r = ImageRef::parse(line)?;
        let repo = r.repository();
        let tag = r.manifest_reference();
        let top = reg.manifest(&repo, &tag, Side::Source).await?;
        let mut children = Vec::new();
        if let Manifest::Index(index) = top.parse()? {
            for m in index.manifests {
                let child = reg
                    .manifest(&repo, &m.digest.to_string(), Side::Source)
                    .await?;
                children.push(child);
            }
        }
        out.push(ImageCopy {
            repo,
            tag,
            top,
            children,
        });
    }
    Ok(out)
}

/// The floor's copy into `dst`, `parallel` requests at once: the raw bound's blobs, then
/// each image's mounts and manifests. How many mounts and manifests it made.
pub async fn floor_copy(
    src: &str,
    dst: &str,
    blobs: &BTreeMap<String, (String, Descriptor)>,
    images: &[ImageCopy],
    parallel: usize,
) -> Result<(usize, usize)> {
    raw_copy(src, dst, blobs, parallel).await?;
    let http = reqwest::Client::new();
    // Each blob into each repository once, however many of its lines name it.
    let mut mounted = HashSet::new();
    let mut mounts = Vec::new();
    for image in images {
        for digest in image.platforms()?.iter().flat_map(|p| p.blobs()) {
            let key = digest.digest.to_string();
            let Some((from, _)) = blobs.get(&key) else {
                bail!("{}: blob {key} was not copied", image.repo);
            };
            if from != &image.repo && mounted.insert((image.repo.clone(), key.clone())) {
                mounts.push((image.repo.clone(), from.as_str(), key));
            }
        }
    }
    let mounting = futures_util::stream::iter(mounts).map(|(repo, from, digest)| {
        let http = http.clone();
        async move {
            let url = format!("http://{dst}/v2/{repo}/blobs/uploads/?mount={digest}&from={from}");
            let answer = http.post(url).send().await?;
            if answer.status() != reqwest::StatusCode::CREATED {
                bail!("{repo}: mount of {digest} from {from}: {}", answer.status());
            }
            Ok(())
        }
    });
    let mounted = mounted.len();
    let results: Vec<Result<()>> = mounting.buffer_unordered(parallel).collect().await;
    results.into_iter().collect::<Result<Vec<()>>>()?;
    let manifests = images.iter().map(|i| i.children.len() + 1).sum();
    let pushing = futures_util::stream::iter(images).map(|image| {
        let http = http.clone();
        async move {
            for (m, reference) in image
                .children
                .iter()
                .map(|c| (c, c.digest.to_string()))
                .chain([(&image.top, image.tag.clone())])
            {
                http.put(format!(
                    "http://{dst}/v2/{}/manifests/{reference}",
                    image.repo
                ))
                .header("content-type", &m.media_type)
                .body(m.bytes.clone())
                .send()
                .await?
                .error_for_status()
                .with_context(|| format!("{}: manifest {reference}", image.repo))?;
            }
            Ok(())
        }
    });
    let results: Vec<Result<()>> = pushing.buffer_unordered(parallel).collect().await;
    results.into_iter().collect::<Result<Vec<()>>>()?;
    Ok((mounted, manifests))
}

/// Whether `dst` holds every image's tag as the source does (checked after the floor's
/// clock stops). The rest of the copy is the registry's own check: it refuses a manifest
/// whose blobs or platform manifests its repository does not hold.
pub async fn check_copied(dst: &Registry, images: &[ImageCopy]) -> Result<()> {
    for image in images {
        let found = dst
            .manifest(&image.repo, &image.tag, Side::Destination)
            .await?;
        if found.digest != image.top.digest {
            bail!(
                "{}:{} is {} at the destination, {} at the source",
                image.repo,
                image.tag,
                found.digest,
                image.top.digest
            );
        }
    }
    Ok(())
}

/// Every line's manifests as a save must read them before its blobs — each tag, then each
/// index's platform manifests — `parallel` requests at once, unverified: how many.
pub async fn read_manifests(src: &str, lines: &[String], parallel: usize) -> Result<usize> {
    let http = reqwest::Client::new();
    let accept = ACCEPTED.join(", ");
    let get = |repo: String, reference: String| {
        let (http, accept) = (http.clone(), accept.clone());
        async move {
            let answer = http
                .get(format!("http://{src}/v2/{repo}/manifests/{reference}"))
                .header("accept", accept)
                .send()
                .await?
                .error_for_status()
                .with_context(|| format!("{repo}: manifest {reference}"))?;
            let media_type = answer
                .headers()
                .get("content-type")
                .and_then(|t| t.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let bytes = answer.bytes().await?;
            let digest = Digest::of(&bytes);
            anyhow::Ok((
                repo,
                RawManifest {
                    media_type,
                    bytes,
                    digest,
                },
            ))
        }
    };
    let mut tops = Vec::new();
    for line in lines {
        let r = ImageRef::parse(line)?;
        tops.push((r.repository(), r.manifest_reference()));
    }
    let read = tops.len();
    let tops: Vec<Result<(String, RawManifest)>> = futures_util::stream::iter(tops)
        .map(|(repo, reference)| get(repo, reference))
        .buffer_unordered(parallel)
        .collect()
        .await;
    let mut children = Vec::new();
    for top in tops {
        let (repo, top) = top?;
        if let Manifest::Index(index) = top.parse()? {
            children.extend(
                index
                    .manifests
                    .iter()
                    .map(|m| (repo.clone(), m.digest.to_string())),
            );
        }
    }
    let count = read + children.len();
    let children: Vec<Result<(String, RawManifest)>> = futures_util::stream::iter(children)
        .map(|(repo, reference)| get(repo, reference))
        .buffer_unordered(parallel)
        .collect()
        .await;
    children.into_iter().collect::<Result<Vec<_>>>()?;
    Ok(count)
}
