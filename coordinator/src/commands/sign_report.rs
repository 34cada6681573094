//! `sign validate`'s report, as Hangar writes it (its `signv2.Report`): JSON and YAML
//! with Go's field order and `omitempty`s (YAML names the list `result`), or CSV with its
//! header. Signatures here are key-based: no transparency log, no certificate fields.

use anyhow::Result;
use hangar_shared::archive::index::{go_escape, go_time_now};
use hangar_shared::manifest::Descriptor;
use serde::Serialize;

/// What cosign says of a digest without signatures, and Hangar records as its payload.
pub const NO_SIGNATURES: &str = "no signatures found";

/// A report row: one digest of one image.
pub struct Row {
    pub reference: String,
    pub subject: Descriptor,
    pub payload: String,
}

#[derive(Serialize)]
struct Report<'a> {
    time: String,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    results: &'a [ByReference<'a>],
}

#[derive(Serialize)]
struct YamlReport<'a> {
    time: String,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    result: &'a [ByReference<'a>],
}

#[derive(Serialize)]
struct ByReference<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    reference: &'a str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    images: Vec<Image<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Image<'a> {
    digest: String,
    media_type: &'a str,
    platform: Platform<'a>,
    tlog_verified: bool,
    payload: &'a str,
}

/// Hangar's platform: short names, every field `omitempty` (an index's entry is `{}`).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Platform<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    arch: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    os: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    os_version: &'a str,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    os_features: &'a [String],
    #[serde(skip_serializing_if = "str::is_empty")]
    variant: &'a str,
}

fn platform(d: &Descriptor) -> Platform<'_> {
    match &d.platform {
        Some(p) => Platform {
            arch: &p.architecture,
            os: &p.os,
            os_version: p.os_version.as_deref().unwrap_or_default(),
            os_features: p.os_features.as_deref().unwrap_or_default(),
            variant: p.variant.as_deref().unwrap_or_default(),
        },
        None => Platform {
            arch: "",
            os: "",
            os_version: "",
            os_features: &[],
            variant: "",
        },
    }
}

/// The rows grouped by reference, in the order references first appear.
fn by_reference(rows: &[Row]) -> Vec<ByReference<'_>> {
    let mut groups: Vec<ByReference<'_>> = Vec::new();
    for r in rows {
        let image = Image {
            digest: r.subject.digest.to_string(),
            media_type: &r.subject.media_type,
            platform: platform(&r.subject),
            tlog_verified: false,
            payload: &r.payload,
        };
        match groups.iter_mut().find(|g| g.reference == r.reference) {
            Some(g) => g.images.push(image),
            None => groups.push(ByReference {
                reference: &r.reference,
                images: vec![image],
            }),
        }
    }
    groups
}

/// The report in `format` (`json`, `yaml` or `csv`).
pub fn render(rows: &[Row], format: &str) -> Result<String> {
    if format == "csv" {
        let mut out = String::from(
            "image,arch,os,payload,digest,tlogVerify,mediaType,certificateIssuer,certificateSubject,\
             githubWorkflowName,githubWorkflowRef,githubWorkflowRepository,githubWorkflowSha,\
             githubWorkflowTrigger\n",
        );
        for r in rows {
            let p = platform(&r.subject);
            let cells = [
                r.reference.as_str(),
                p.arch,
                p.os,
                &r.payload,
                &r.subject.digest.to_string(),
                "false",
                &r.subject.media_type,
            ];
            out.push_str(&super::csv_line(
                cells.into_iter().chain(std::iter::repeat_n("", 7)),
            ));
        }
        return Ok(out);
    }
    let groups = by_reference(rows);
    let time = go_time_now();
    Ok(match format {
        "yaml" => serde_yaml_ng::to_string(&YamlReport {
            time,
            result: &groups,
        })?,
        _ => go_escape(&serde_json::to_string_pretty(&Report {
            time,
            results: &groups,
        })?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(reference: &str, platform: Option<hangar_shared::manifest::Platform>) -> Row {
        Row {
            reference: reference.into(),
            subject: Descriptor {
                media_type: "application/vnd.oci.image.index.v1+json".into(),
                digest: hangar_shared::digest::Digest::of(reference.as_bytes()),
                size: 1,
                urls: None,
                annotations: None,
                platform,
            },
            payload: NO_SIGNATURES.into(),
        }
    }

    #[test]
    fn json_and_yaml_follow_hangars_report() {
        let amd = hangar_shared::manifest::Platform {
            architecture: "amd64".into(),
            os: "linux".into(),
            ..Default::default()
        };
        let rows = [
            row("r/a:1", None),
            row("r/a:1", Some(amd)),
            row("r/b:<&>", None),
        ];
        let json = render(&rows, "json").unwrap();
        let keys: Vec<&str> = json
            .lines()
            .filter_map(|l| l.trim_start().strip_prefix('"'))
            .filter_map(|l| l.split_once("\":").map(|(k, _)| k))
            .collect();
        assert_eq!(
            &keys[..10],
            [
                "time",
                "results",
                "reference",
                "images",
                "digest",
                "mediaType",
                "platform",
                "tlogVerified",
                "payload",
                "digest"
            ],
            "{json}"
        );
        assert!(json.contains("\"platform\": {},"), "{json}");
        assert!(json.contains("\"arch\": \"amd64\""), "{json}");
        assert!(json.contains("r/b:\\u003c\\u0026\\u003e"), "{json}");
        let yaml = render(&rows, "yaml").unwrap();
        assert!(yaml.contains("\nresult:\n"), "{yaml}");
        assert!(!yaml.contains("results"), "{yaml}");
    }
}
