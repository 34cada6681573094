//! Volumes: how `save --part-size` splits images among several archives, and what the
//! volumes are called. Pure planning over image lists and blob sizes, apart from the writer
//! that then writes each volume, so the packing rule can be read and tested alone.

use std::collections::HashSet;

use super::index::ArchiveImage;
use crate::digest::Digest;

/// Packs images, in order, into volumes of at most `part_size` bytes of blobs. An image is
/// never split; one bigger than a volume gets a volume of its own, and is reported.
/// `size` gives each blob's size; blobs shared by images in one volume count once.
pub fn plan_volumes(
    images: &[ArchiveImage],
    size: impl Fn(&Digest) -> u64,
    part_size: u64,
) -> (Vec<Vec<ArchiveImage>>, Vec<String>) {
    let mut volumes: Vec<Vec<ArchiveImage>> = Vec::new();
    let mut oversized = Vec::new();
    let mut current: Vec<ArchiveImage> = Vec::new();
    let mut in_volume: HashSet<Digest> = HashSet::new();
    let mut used = 0u64;
    for image in images {
        let own: HashSet<&Digest> = image.images.iter().flat_map(|s| s.blobs()).collect();
        // Sizes are registries' and archives' words: summed without overflow.
        let alone = own.iter().fold(0u64, |sum, d| sum.saturating_add(size(d)));
        let added = own
            .iter()
            .filter(|d| !in_volume.contains(**d))
            .fold(0u64, |sum, d| sum.saturating_add(size(d)));
        if !current.is_empty() && used.saturating_add(added) > part_size {
            volumes.push(std::mem::take(&mut current));
            in_volume.clear();
            used = 0;
        }
        if alone > part_size {
            oversized.push(format!(
                "image {} ({alone} bytes) is bigger than the volume size ({part_size} bytes): \
                 its volume holds it alone and exceeds the size",
                image.name()
            ));
        }
        used = own
            .iter()
            .filter(|d| in_volume.insert((**d).clone()))
            .fold(used, |sum, d| sum.saturating_add(size(d)));
        current.push(image.clone());
    }
    if !current.is_empty() {
        volumes.push(current);
    }
    (volumes, oversized)
}

/// `out.zip` → `out.part1.zip`, … for volume `n` (1-based); an S3 location keeps its query.
pub fn volume_path(location: &str, n: usize) -> String {
    let (path, query) = match location.split_once('?') {
        Some((p, q)) => (p, format!("?{q}")),
        None => (location, String::new()),
    };
    let slash = path.rfind('/').map_or(0, |i| i + 1);
    let (dir, name) = path.split_at(slash);
    let (stem, ext) = match name.rfind('.') {
        Some(i) if i > 0 => name.split_at(i),
        _ => (name, ""),
    };
    format!("{dir}{stem}.part{n}{ext}{query}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::ImageSpec;

    fn d(n: u8) -> Digest {
        Digest::of(&[n])
    }

    fn image(name: &str, blobs: &[u8]) -> ArchiveImage {
        ArchiveImage::new(
            format!("docker.io/library/{name}"),
            "1".into(),
            vec![ImageSpec {
                arch: "amd64".into(),
                os: "linux".into(),
                layers: blobs[1..].iter().map(|b| d(*b)).collect(),
                ..ImageSpec::bare(d(blobs[0]))
            }],
        )
    }

    #[test]
    fn volumes_keep_images_whole_and_count_shared_blobs_once() {
        let images = vec![
            image("a", &[1, 10]),
            image("b", &[2, 10]),
            image("c", &[3, 11]),
            image("d", &[4, 12]),
        ];
        // Manifests weigh 1, layers 10 and 11 weigh 40, 12 weighs 200.
        let size = |x: &Digest| match x {
            x if *x == d(10) || *x == d(11) => 40,
            x if *x == d(12) => 200,
            _ => 1,
        };
        let (volumes, oversized) = plan_volumes(&images, size, 50);
        let names: Vec<Vec<&str>> = volumes
            .iter()
            .map(|v| {
                v.iter()
                    .map(|i| i.source.rsplit('/').next().unwrap())
                    .collect()
            })
            .collect();
        assert_eq!(names, vec![vec!["a", "b"], vec!["c"], vec!["d"]]);
        assert_eq!(oversized.len(), 1);
        assert!(
            oversized[0].contains("docker.io/library/d:1"),
            "{oversized:?}"
        );
    }

    #[test]
    fn volume_names() {
        assert_eq!(volume_path("/x/saved.zip", 2), "/x/saved.part2.zip");
        assert_eq!(volume_path("saved", 1), "saved.part1");
        assert_eq!(
            volume_path("s3://b/dir/a.zip?endpoint=http://h:1", 3),
            "s3://b/dir/a.part3.zip?endpoint=http://h:1"
        );
    }
}
