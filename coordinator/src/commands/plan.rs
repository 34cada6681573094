//! `--dry-run`: the pre-flight plan of a mirror, submit or save. Resolves every image as the
//! job would, copies nothing, and prints images and platforms, unique blobs and bytes
//! against what an image-by-image copy would move, what the destination already holds, an
//! estimate of the time at a bandwidth measured against the source, and for a save the
//! archive's size and volume count.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use futures_util::StreamExt;
use hangar_shared::archive::writer::plan_volumes;
use hangar_shared::digest::Digest;
use hangar_shared::manifest::Descriptor;
use hangar_shared::registry::Side;
use hangar_shared::store::{RegistryPool, RepoRef, StoreRef};
use indicatif::HumanBytes;

use crate::console::Console;
use crate::engine::planner::{self, ImageJob, ImagePlan, Planned};

/// What the plan is for.
pub enum Target {
    /// A registry; `look_first` as the copy would look at each destination tag first.
    Registry {
        look_first: bool,
    },
    Archive {
        part_size: Option<u64>,
    },
}

/// How long the bandwidth probe reads at most: an estimate needs no more, and a source
/// that sends a trickle (which the stream's own pace bound allows for hours) cannot hold
/// the plan.
const PROBE_TIME: Duration = Duration::from_secs(5);

/// Bytes per second reading up to 16 MiB of the largest blob from its source, for at most
/// [`PROBE_TIME`].
async fn measure(pool: &RegistryPool, blob: &(String, String, Descriptor)) -> Option<f64> {
    let (host, repo, desc) = blob;
    let start = Instant::now();
    let until = tokio::time::Instant::from_std(start + PROBE_TIME);
    let reg = tokio::time::timeout_at(until, pool.registry(host))
        .await
        .ok()?
        .ok()?;
    let mut stream = tokio::time::timeout_at(until, reg.blob_stream(repo, desc, None))
        .await
        .ok()?
        .ok()?;
    let mut seen = 0u64;
    while let Ok(Some(Ok(chunk))) = tokio::time::timeout_at(until, stream.next()).await {
        seen += chunk.len() as u64;
        if seen >= 16 << 20 {
            break;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    (seen > 0 && secs > 0.0).then(|| seen as f64 / secs)
}

pub async fn run(
    images: &[ImageJob],
    filter: &hangar_shared::manifest::PlatformFilter,
    provenance: bool,
    jobs: usize,
    pool: Arc<RegistryPool>,
    target: Target,
    console: &Console,
) -> Result<()> {
    // A plan of a copy nothing can land in is no plan: the destinations are asked first.
    let mut unreachable = Vec::new();
    if let Target::Registry { .. } = target {
        let hosts: std::collections::BTreeSet<&str> = images
            .iter()
            .map(|j| j.name.dest.registry.as_str())
            .collect();
        for host in hosts {
            if let Err(e) = pool.registry(host).await.and_then(|r| r.reachable()) {
                console.error(None, &e.message);
                unreachable.push(host.to_owned());
            }
        }
    }
    let mut planned: Vec<(ImageJob, ImagePlan)> = Vec::new();
    // The job's own planning stream: registries.conf's mirrors, the signature policy.
    let mut results = crate::engine::job::planning(
        images.to_vec(),
        crate::engine::job::Planning {
            pool: pool.clone(),
            cache: None,
            archive: None,
            filter: filter.clone(),
            provenance,
            signatures: false,
            // As the copy would: a re-run's images are found at their tags (not when the
            // copy would act on images already there: --overwrite, signing, scanning).
            look_first: matches!(target, Target::Registry { look_first: true }),
            planners: jobs,
            bound: None,
            places: None,
        },
    )
    .map(|(i, r, _)| (images[i].clone(), r));
    let (mut skipped, mut failed, mut present) = (0usize, 0usize, 0usize);
    while let Some((job, r)) = results.next().await {
        let n = Some(job.entry.index);
        match r {
            Ok(Planned::Plan(p)) => {
                let platforms: Vec<String> = p
                    .platforms
                    .iter()
                    .map(|x| {
                        x.entry
                            .platform
                            .as_ref()
                            .map(|p| p.display())
                            .unwrap_or_else(|| "unknown".into())
                    })
                    .collect();
                let bytes = p
                    .platforms
                    .iter()
                    .flat_map(|x| x.blobs.iter())
                    .fold(0u64, |sum, b| sum.saturating_add(b.size));
                let to = match target {
                    Target::Registry { .. } => job.name.dest.to_string(),
                    Target::Archive { .. } => "the archive".to_owned(),
                };
                console.info(
                    n,
                    format!(
                        "Plan [{}] => [{to}]: {} ({})",
                        job.name.source,
                        platforms.join(", "),
                        HumanBytes(bytes)
                    ),
                );
                planned.push((job, p));
            }
            Ok(Planned::Skip(why)) => {
                skipped += 1;
                console.warn(n, format!("Plan [{}]: skipped: {why}", job.name.source));
            }
            Ok(Planned::Present(digest)) => {
                present += 1;
                console.info(
                    n,
                    format!(
                        "Plan [{}] => [{}]: already present ({digest}), nothing to copy",
                        job.name.source, job.name.dest
                    ),
                );
            }
            Err(e) => {
                failed += 1;
                console.error(
                    n,
                    format!("Plan [{}]: {}: {}", job.name.source, e.class, e.message),
                );
            }
        }
    }
    // Unique blobs per destination registry (the job copies each once per registry and
    // mounts it into the other repositories).
    let mut naive = 0u64;
    let mut unique: HashMap<(String, Digest), (String, Descriptor, String, String)> =
        HashMap::new();
    let mut platforms = 0usize;
    for (job, p) in &planned {
        platforms += p.platforms.len();
        for b in p.platforms.iter().flat_map(|x| x.blobs.iter()) {
            naive += b.size;
            let key = match target {
                Target::Registry { .. } => (job.name.dest.registry.clone(), b.digest.clone()),
                Target::Archive { .. } => (String::new(), b.digest.clone()),
            };
            unique.entry(key).or_insert_with(|| {
                let (host, repo) = match &p.source {
                    Some(RepoRef {
                        store: StoreRef::Registry { host },
                        repo,
                    }) => (host.clone(), repo.clone()),
                    _ => (
                        job.name.source.registry.clone(),
                        job.name.source.repository(),
                    ),
                };
                (job.name.dest.repository(), b.clone(), host, repo)
            });
        }
    }
    // Sizes are the registries' words: summed without overflow.
    let unique_bytes = unique
        .values()
        .fold(0u64, |sum, (_, d, _, _)| sum.saturating_add(d.size));
    let mut held = 0u64;
    let mut held_count = 0usize;
    if let Target::Registry { .. } = target {
        let checks = futures_util::stream::iter(unique.iter())
            .map(|((host, digest), (repo, desc, _, _))| {
                let pool = pool.clone();
                async move {
                    let there = match pool.registry(host).await {
                        Ok(r) => r
                            .blob_exists(repo, digest, Side::Destination)
                            .await
                            .unwrap_or(false),
                        Err(_) => false,
                    };
                    (there, desc.size)
                }
            })
            .buffer_unordered(16);
        let found: Vec<(bool, u64)> = checks.collect().await;
        for (there, size) in found {
            if there {
                held += size;
                held_count += 1;
            }
        }
    }
    let to_copy = unique_bytes.saturating_sub(held);
    console.info(
        None,
        format!(
            "Plan: {} images ({} to copy, {present} already present, {} skipped, {} failed), {platforms} platform manifests; {} unique blobs, {} (an image-by-image copy would move {}); the destination already holds {held_count} of them ({}); {} to copy",
            planned.len() + present + skipped + failed,
            planned.len(),
            skipped,
            failed,
            unique.len(),
            HumanBytes(unique_bytes),
            HumanBytes(naive),
            HumanBytes(held),
            HumanBytes(to_copy),
        ),
    );
    let largest = unique
        .values()
        .max_by_key(|(_, d, _, _)| d.size)
        .map(|(_, d, host, repo)| (host.clone(), repo.clone(), d.clone()));
    if let Some(blob) = largest {
        match measure(&pool, &blob).await {
            Some(bps) => {
                let secs = to_copy as f64 / bps;
                console.info(
                    None,
                    format!(
                        "Plan: measured {}/s from {} on one stream; about {} at that rate (parallel transfers are usually faster)",
                        HumanBytes(bps as u64),
                        blob.0,
                        humantime::format_duration(Duration::from_secs(secs.ceil() as u64))
                    ),
                );
            }
            None => console.warn(None, "Plan: could not measure the bandwidth to the source"),
        }
    }
    if let Target::Archive { part_size } = target {
        let images: Vec<_> = planned
            .iter()
            .filter_map(|(j, p)| planner::archive_image(j, p).ok())
            .collect();
        let sizes: HashMap<Digest, u64> = unique
            .iter()
            .map(|((_, d), (_, desc, _, _))| (d.clone(), desc.size))
            .collect();
        // Per entry: local header, data descriptor and central directory record, with names.
        let mut entries: HashSet<String> = HashSet::new();
        for i in &images {
            for s in &i.images {
                entries.insert(format!("{}/index.json", s.digest.hex()));
                entries.insert(format!("{}/oci-layout", s.digest.hex()));
                for d in s.blobs() {
                    entries.insert(hangar_shared::archive::blob_entry(d));
                }
            }
        }
        let overhead: u64 = entries
            .iter()
            .map(|n| 30 + 24 + 46 + 2 * n.len() as u64 + 200)
            .sum();
        let volumes = match part_size {
            Some(part) => plan_volumes(&images, |d| sizes.get(d).copied().unwrap_or(0), part)
                .0
                .len(),
            None => 1,
        };
        console.info(
            None,
            format!(
                "Plan: the archive will be about {} in {volumes} volume(s), {} entries",
                HumanBytes(unique_bytes.saturating_add(overhead)),
                entries.len() + volumes
            ),
        );
    }
    if !unreachable.is_empty() || failed > 0 {
        let reach = if unreachable.is_empty() {
            String::new()
        } else {
            format!("{} cannot be reached; ", unreachable.join(", "))
        };
        anyhow::bail!("the plan is incomplete: {reach}{failed} images could not be planned");
    }
    Ok(())
}
