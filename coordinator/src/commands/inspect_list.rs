//! `inspect list -f LIST`: every image of a list, where it is (after `--registry` /
//! `--project`), with the platform manifests its index lists (or the one platform of a
//! single manifest), written as a report: txt, json, yaml or csv (reference §1.6).
//!
//! The json and yaml reports are Hangar's archive index structure (`list` / `version` /
//! `time`; each image's `source`, `tag` and `images` with platform fields, `mediaType`
//! (`mime` in YAML, Hangar's tag), `digest` and the index entry's `annotations`), without
//! `archList`/`osList`, as Hangar clears them. Attestation manifests are listed (Hangar
//! reads every entry); the txt report and the log name no `unknown/unknown` platform.
//! Images are reported in list order (Hangar's is the order they finished in).

use anyhow::Result;
use futures_util::StreamExt;
use hangar_shared::archive::index::{ArchiveImage, ArchiveIndex, ImageSpec};
use hangar_shared::manifest::{Descriptor, PlatformFilter};

use crate::cli::{InspectListArgs, ListArgs, PlatformArgs, RateArgs, RegistryArgs};
use crate::console::Console;
use crate::engine::planner;

/// The report formats Hangar writes; anything else is txt.
fn format_of(given: &str) -> &'static str {
    match given {
        "json" => "json",
        "yaml" => "yaml",
        "csv" => "csv",
        _ => "txt",
    }
}

pub async fn run(args: &InspectListArgs, debug: bool, console: &Console) -> Result<()> {
    let format = format_of(&args.format);
    if format != args.format {
        console.warn(
            None,
            format!(
                "Unknown report format {:?}: writing txt (json, yaml and csv are the others)",
                args.format
            ),
        );
    }
    let report = args
        .report
        .clone()
        .unwrap_or_else(|| format!("inspect-report.{format}").into());
    // Asked before the work rather than after it (Hangar asks when it writes).
    super::may_overwrite(&report.display().to_string(), args.yes)?;
    let list = ListArgs {
        file: args.file.clone(),
        // No platform selection: every platform an image has is reported.
        platforms: PlatformArgs {
            arch: Vec::new(),
            os: Vec::new(),
        },
        registry: args.registry.clone(),
        project: args.project.clone(),
        failed: Some(args.failed.clone()),
        jobs: args.jobs,
        timeout: args.timeout.clone(),
        access: RegistryArgs {
            tls_verify: args.access.tls_verify,
            authfile: args.access.authfile.clone(),
        },
        skip_login: false,
        yes: args.yes,
        rate: RateArgs::default(),
        bus: Default::default(),
    };
    let t = super::targets::targets(&list, debug, console)?;
    let pool = super::pool(args.access.tls_verify, args.access.authfile.as_deref());
    let pool = &pool;
    let (timeout, every) = (t.timeout, PlatformFilter::default());
    let every = &every;
    let mut results = futures_util::stream::iter(t.items.iter())
        .map(|target| async move {
            let work = async {
                let store = pool.registry(&target.image.registry).await?;
                planner::select(
                    store.as_ref(),
                    None,
                    &target.image,
                    every,
                    false,
                    planner::Schema1Use::Refuse,
                )
                .await
            };
            (target, super::targets::with_timeout(timeout, work).await)
        })
        .buffer_unordered(t.jobs);
    let mut failed = t.failed_lines();
    let mut inspected: Vec<(usize, ArchiveImage)> = Vec::new();
    while let Some((target, result)) = results.next().await {
        let n = Some(target.entry.index);
        let image = &target.image;
        let name = image.to_string();
        match result {
            Err(e) => {
                console.error(
                    n,
                    format!(
                        "Failed to inspect image [{name}]: {}: {}",
                        e.class, e.message
                    ),
                );
                failed.push(target.entry.original.clone());
            }
            Ok(sel) => {
                // Every entry, attestations too (Hangar's `ImageBySet(nil, …)`); the txt
                // report and the log leave `unknown/unknown` out.
                let specs: Vec<ImageSpec> = sel.entries.iter().map(spec).collect();
                if specs.is_empty() {
                    console.warn(n, format!("Skip [{name}]: no images found"));
                    continue;
                }
                let tag = image
                    .tag
                    .clone()
                    .or_else(|| image.digest.as_ref().map(ToString::to_string))
                    .unwrap_or_else(|| "latest".into());
                let entry = ArchiveImage {
                    source: format!("{}/{}", image.registry, image.repository()),
                    tag,
                    arch_list: Vec::new(),
                    os_list: Vec::new(),
                    images: specs,
                };
                console.info(
                    n,
                    format!("Image [{name}]: {:?}", platforms(&entry).join(",")),
                );
                inspected.push((target.entry.index, entry));
            }
        }
    }
    inspected.sort_by_key(|(n, _)| *n);
    let mut index = ArchiveIndex::new();
    index.list = inspected.into_iter().map(|(_, i)| i).collect();
    super::write_atomically(&report, &render(&index, format)?)?;
    console.info(
        None,
        format!("Report saved to {:?}", report.display().to_string()),
    );
    super::finish(console, &args.failed, &failed, super::ListRun::Inspect)
}

/// One platform manifest as the report lists it: platform, media type, digest and the
/// index entry's annotations (no layers or config: per-platform manifests are not read).
fn spec(entry: &Descriptor) -> ImageSpec {
    let p = entry.platform.clone().unwrap_or_default();
    let mut s = ImageSpec::bare(entry.digest.clone());
    s.arch = p.architecture;
    s.os = p.os;
    s.os_version = p.os_version.unwrap_or_default();
    s.os_features = p.os_features.unwrap_or_default();
    s.variant = p.variant.unwrap_or_default();
    s.media_type = entry.media_type.clone();
    s.annotations = entry.annotations.clone().unwrap_or_default();
    s
}

/// Hangar's platform words: `os/arch` with the variant run on (`linux/armv7`).
fn platform(s: &ImageSpec) -> String {
    format!("{}/{}{}", s.os, s.arch, s.variant)
}

/// The platforms an image names, attestations' `unknown/unknown` left out, each once.
fn platforms(image: &ArchiveImage) -> Vec<String> {
    let mut seen = Vec::new();
    for s in &image.images {
        let attestation = s.arch == "unknown" && s.os == "unknown";
        let p = platform(s);
        if !attestation && !seen.contains(&p) {
            seen.push(p);
        }
    }
    seen
}

/// The index as Hangar's YAML has it: its YAML tags name the media type `mime`.
fn yaml(index: &ArchiveIndex) -> Result<String> {
    use serde_yaml_ng::Value;
    let mut doc = serde_yaml_ng::to_value(index)?;
    let images = doc
        .get_mut("list")
        .and_then(Value::as_sequence_mut)
        .into_iter()
        .flatten()
        .filter_map(|i| i.get_mut("images").and_then(Value::as_sequence_mut))
        .flatten();
    for spec in images {
        if let Value::Mapping(m) = spec {
            // Rebuilt, so the key keeps its place.
            *m = std::mem::take(m)
                .into_iter()
                .map(|(k, v)| match k.as_str() {
                    Some("mediaType") => (Value::from("mime"), v),
                    _ => (k, v),
                })
                .collect();
        }
    }
    Ok(serde_yaml_ng::to_string(&doc)?)
}

/// The report text and a newline after it, as Hangar writes it (txt, csv and yaml end
/// in a blank line).
fn render(index: &ArchiveIndex, format: &str) -> Result<String> {
    let mut out = match format {
        "json" => index.to_go_json_pretty()?,
        "yaml" => yaml(index)?,
        "csv" => {
            let mut out = super::csv_line([
                "image",
                "digest",
                "platform",
                "osVersion",
                "osFeature",
                "mediaType",
            ]);
            for image in &index.list {
                for s in &image.images {
                    out.push_str(&super::csv_line([
                        image.name(),
                        s.digest.to_string(),
                        platform(s),
                        s.os_version.clone(),
                        s.os_features.join(","),
                        s.media_type.clone(),
                    ]));
                }
            }
            out
        }
        _ => index
            .list
            .iter()
            .enumerate()
            .map(|(i, image)| {
                format!(
                    "{:4} | {} | {}\n",
                    i + 1,
                    image.name(),
                    platforms(image).join(",")
                )
            })
            .collect(),
    };
    out.push('\n');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index() -> ArchiveIndex {
        let d = |c: char| -> hangar_shared::digest::Digest {
            format!("sha256:{}", c.to_string().repeat(64))
                .parse()
                .unwrap()
        };
        let mut amd = ImageSpec::bare(d('a'));
        (amd.arch, amd.os) = ("amd64".into(), "linux".into());
        amd.media_type = "application/vnd.oci.image.manifest.v1+json".into();
        let mut arm = amd.clone();
        (arm.digest, arm.arch, arm.variant) = (d('b'), "arm".into(), "v7".into());
        let mut win = amd.clone();
        (win.digest, win.os, win.os_version) = (d('c'), "windows".into(), "10.0.1".into());
        win.os_features = vec!["win32k".into(), "x".into()];
        let mut index = ArchiveIndex::new();
        index.list = vec![
            ArchiveImage {
                source: "r.io/library/multi".into(),
                tag: "v1".into(),
                images: vec![amd, arm],
                ..Default::default()
            },
            ArchiveImage {
                source: "r.io/library/win".into(),
                tag: "v2".into(),
                images: vec![win],
                ..Default::default()
            },
        ];
        index
    }

    #[test]
    fn formats_fall_back_to_txt() {
        assert_eq!(format_of("json"), "json");
        assert_eq!(format_of("csv"), "csv");
        assert_eq!(format_of("JSON"), "txt");
        assert_eq!(format_of("xml"), "txt");
    }

    #[test]
    fn txt_rows_name_platforms() {
        assert_eq!(
            render(&index(), "txt").unwrap(),
            "   1 | r.io/library/multi:v1 | linux/amd64,linux/armv7\n   2 | r.io/library/win:v2 | windows/amd64\n\n"
        );
    }

    #[test]
    fn an_attestation_is_listed_but_not_named_a_platform() {
        let mut index = index();
        let mut att = ImageSpec::bare(format!("sha256:{}", "d".repeat(64)).parse().unwrap());
        (att.arch, att.os) = ("unknown".into(), "unknown".into());
        index.list[1].images.push(att);
        assert_eq!(
            render(&index, "txt").unwrap(),
            "   1 | r.io/library/multi:v1 | linux/amd64,linux/armv7\n   2 | r.io/library/win:v2 | windows/amd64\n\n"
        );
        let csv = render(&index, "csv").unwrap();
        assert!(csv.contains(",unknown/unknown,"), "{csv}");
    }

    #[test]
    fn csv_has_one_row_per_platform() {
        let csv = render(&index(), "csv").unwrap();
        let lines: Vec<&str> = csv.lines().filter(|l| !l.is_empty()).collect();
        assert_eq!(
            lines[0],
            "image,digest,platform,osVersion,osFeature,mediaType"
        );
        assert_eq!(lines.len(), 4);
        assert!(lines[2].starts_with("r.io/library/multi:v1,sha256:bbbb"));
        assert!(lines[2].contains(",linux/armv7,,,"));
        assert!(lines[3].contains(",windows/amd64,10.0.1,\"win32k,x\","));
    }

    #[test]
    fn json_and_yaml_are_the_index_structure() {
        for format in ["json", "yaml"] {
            let text = render(&index(), format).unwrap();
            let v: serde_json::Value = if format == "json" {
                serde_json::from_str(&text).unwrap()
            } else {
                serde_yaml_ng::from_str(&text).unwrap()
            };
            assert_eq!(v["version"], "v1.2.0", "{format}");
            assert!(v["time"].is_string(), "{format}");
            assert_eq!(v["list"][0]["source"], "r.io/library/multi", "{format}");
            assert_eq!(v["list"][0]["images"][1]["variant"], "v7", "{format}");
            assert!(v["list"][0].get("archList").is_none(), "{format}");
            // Hangar's YAML tag for the media type is `mime`.
            let key = if format == "yaml" {
                "mime"
            } else {
                "mediaType"
            };
            assert_eq!(
                v["list"][0]["images"][0][key], "application/vnd.oci.image.manifest.v1+json",
                "{format}: {text}"
            );
        }
    }
}
