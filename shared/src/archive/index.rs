//! Hangar's archive `index.json` (reference §3.3): the types in Go's field order, with
//! Go's `omitempty` and `json.Marshal` output (compact, map keys sorted, `<`, `>`, `&`
//! escaped), and the version check Hangar's readers apply.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::manifest::{
    ANNOTATION_REFERENCE_DIGEST, ANNOTATION_REFERENCE_TYPE, ATTESTATION_MANIFEST, Descriptor,
    Platform, PlatformFilter,
};

/// The index version this project writes; readers refuse anything lower.
pub const INDEX_VERSION: &str = "v1.2.0";

/// The most images an index lists: far past any real archive's (a full Rancher list is a
/// few thousand), and what bounds the memory a hostile `index.json` costs, since every
/// entry, however short its JSON, is a struct of its own.
pub const MAX_INDEX_IMAGES: usize = 100_000;
/// The most entries of one image's lists (platforms, layers, architectures, …): more than
/// a manifest within the 4 MiB a registry's is read up to can list (each entry is 70 bytes
/// of its JSON at least).
pub const MAX_IMAGE_LIST: usize = 100_000;

/// The most platform entries of one image: what a registry's index is accepted with
/// (the planner's `MAX_INDEX_ENTRIES`); a real image lists a few dozen.
pub const MAX_IMAGE_PLATFORMS: usize = 1000;

/// The most names in an image's architecture, OS and OS-feature lists.
pub const MAX_PLATFORM_NAMES: usize = 256;

/// A JSON list of at most `N` elements; more fails the parse where the list is.
fn at_most<'de, D, T, const N: usize>(d: D) -> std::result::Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct Bounded<T, const N: usize>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>, const N: usize> serde::de::Visitor<'de> for Bounded<T, N> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            write!(f, "a list of at most {N} entries")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> std::result::Result<Vec<T>, A::Error> {
            let mut list = Vec::new();
            while let Some(item) = seq.next_element()? {
                if list.len() == N {
                    return Err(serde::de::Error::custom(format!(
                        "more than {N} entries in one list"
                    )));
                }
                list.push(item);
            }
            Ok(list)
        }
    }
    d.deserialize_seq(Bounded::<T, N>(std::marker::PhantomData))
}

/// The most annotations one platform entry carries (an index descriptor's: a few).
pub const MAX_ANNOTATIONS: usize = 256;

/// A JSON object of at most `N` string members, as [`at_most`] bounds a list: a map of
/// short members costs many times its JSON.
fn at_most_members<'de, D, const N: usize>(
    d: D,
) -> std::result::Result<BTreeMap<String, String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct Bounded<const N: usize>;
    impl<'de, const N: usize> serde::de::Visitor<'de> for Bounded<N> {
        type Value = BTreeMap<String, String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            write!(f, "an object of at most {N} string members")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> std::result::Result<Self::Value, A::Error> {
            let mut members = BTreeMap::new();
            while let Some((k, v)) = map.next_entry::<String, String>()? {
                if members.len() == N {
                    return Err(serde::de::Error::custom(format!(
                        "more than {N} members in one object"
                    )));
                }
                members.insert(k, v);
            }
            Ok(members)
        }
    }
    d.deserialize_map(Bounded::<N>)
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ArchiveIndex {
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "at_most::<_, _, MAX_INDEX_IMAGES>"
    )]
    pub list: Vec<ArchiveImage>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    /// RFC 3339 with nanoseconds, as Go's `time.Time` marshals; never omitted.
    #[serde(default)]
    pub time: String,
}

/// One saved image (`source:tag`) and the platform manifests saved for it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ArchiveImage {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tag: String,
    #[serde(
        rename = "archList",
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "at_most::<_, _, MAX_PLATFORM_NAMES>"
    )]
    pub arch_list: Vec<String>,
    #[serde(
        rename = "osList",
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "at_most::<_, _, MAX_PLATFORM_NAMES>"
    )]
    pub os_list: Vec<String>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "at_most::<_, _, MAX_IMAGE_PLATFORMS>"
    )]
    pub images: Vec<ImageSpec>,
}

/// One platform manifest: `<hex>/` in the zip.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageSpec {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub arch: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub os: String,
    #[serde(
        rename = "osVersion",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub os_version: String,
    #[serde(
        rename = "osFeatures",
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "at_most::<_, _, MAX_PLATFORM_NAMES>"
    )]
    pub os_features: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub variant: String,
    #[serde(
        rename = "mediaType",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub media_type: String,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "at_most::<_, _, MAX_IMAGE_LIST>"
    )]
    pub layers: Vec<Digest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<Digest>,
    pub digest: Digest,
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "at_most_members::<_, MAX_ANNOTATIONS>"
    )]
    pub annotations: BTreeMap<String, String>,
}

impl ImageSpec {
    /// A manifest with no platform, config or layers yet.
    pub fn bare(digest: Digest) -> Self {
        Self {
            arch: String::new(),
            os: String::new(),
            os_version: String::new(),
            os_features: Vec::new(),
            variant: String::new(),
            media_type: String::new(),
            layers: Vec::new(),
            config: None,
            digest,
            annotations: BTreeMap::new(),
        }
    }

    /// Every blob of this platform image in the archive: manifest, config, layers.
    pub fn blobs(&self) -> impl Iterator<Item = &Digest> {
        std::iter::once(&self.digest)
            .chain(self.config.iter())
            .chain(self.layers.iter())
    }

    pub fn is_attestation(&self) -> bool {
        self.annotations
            .get(ANNOTATION_REFERENCE_TYPE)
            .map(String::as_str)
            == Some(ATTESTATION_MANIFEST)
    }

    pub fn platform(&self) -> Platform {
        let some = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        Platform {
            architecture: self.arch.clone(),
            os: self.os.clone(),
            os_version: some(&self.os_version),
            os_features: (!self.os_features.is_empty()).then(|| self.os_features.clone()),
            variant: some(&self.variant),
        }
    }

    /// The descriptor a destination index lists for this manifest.
    pub fn descriptor(&self, size: u64) -> Descriptor {
        Descriptor {
            media_type: self.media_type.clone(),
            digest: self.digest.clone(),
            size,
            urls: None,
            annotations: (!self.annotations.is_empty()).then(|| self.annotations.clone()),
            platform: Some(self.platform()),
        }
    }

    /// The entry for a platform manifest described by a source index descriptor.
    pub fn from_descriptor(entry: &Descriptor, config: &Digest, layers: Vec<Digest>) -> Self {
        let p = entry.platform.clone().unwrap_or_default();
        Self {
            arch: p.architecture,
            os: p.os,
            os_version: p.os_version.unwrap_or_default(),
            os_features: p.os_features.unwrap_or_default(),
            variant: p.variant.unwrap_or_default(),
            media_type: entry.media_type.clone(),
            layers,
            config: Some(config.clone()),
            digest: entry.digest.clone(),
            annotations: entry.annotations.clone().unwrap_or_default(),
        }
    }
}

impl ArchiveImage {
    /// `registry/project/name:tag`, as `archive ls` and the logs show it.
    pub fn name(&self) -> String {
        format!("{}:{}", self.source, self.tag)
    }

    /// The image as a reference (its tag may be a digest, for a tagless pinned line). A
    /// name the reference grammar refuses (`../../x`) is an error naming it: `load` and
    /// `archive verify` both refuse it.
    pub fn reference(&self) -> Result<crate::reference::ImageRef> {
        let r = if self.tag.parse::<Digest>().is_ok() {
            crate::reference::ImageRef::parse(&format!("{}@{}", self.source, self.tag))
        } else {
            crate::reference::ImageRef::parse(&self.name())
        };
        r.map_err(|e| e.context(format!("archived image {:?}", self.name())))
    }

    /// Builds the entry for `source:tag` from its platform images, with the arch and OS
    /// lists Hangar derives from them (first-seen order; Go's map order is random).
    pub fn new(source: String, tag: String, images: Vec<ImageSpec>) -> Self {
        let mut arch_list: Vec<String> = Vec::new();
        let mut os_list: Vec<String> = Vec::new();
        for i in &images {
            if !i.arch.is_empty() && !arch_list.contains(&i.arch) {
                arch_list.push(i.arch.clone());
            }
            if !i.os.is_empty() && !os_list.contains(&i.os) {
                os_list.push(i.os.clone());
            }
        }
        Self {
            source,
            tag,
            arch_list,
            os_list,
            images,
        }
    }

    /// The platform images `--arch/--os` select, then (with `provenance`) the attestations
    /// of those: what load copies and load validate checks.
    pub fn selected(&self, filter: &PlatformFilter, provenance: bool) -> Vec<&ImageSpec> {
        // A manifest listed twice under one platform is one entry: read, copied and indexed
        // once (under two platforms, it is two entries of the index, as Hangar builds it).
        let mut seen = std::collections::HashSet::new();
        let mut once = |s: &&ImageSpec| {
            seen.insert((
                s.digest.clone(),
                [&s.arch, &s.os, &s.variant, &s.os_version].map(String::clone),
            ))
        };
        let mut out: Vec<&ImageSpec> = self
            .images
            .iter()
            .filter(|s| !s.is_attestation() && filter.matches(&s.platform()))
            .filter(&mut once)
            .collect();
        if provenance {
            let kept: Vec<&Digest> = out.iter().map(|s| &s.digest).collect();
            let attestations: Vec<&ImageSpec> = self
                .images
                .iter()
                .filter(|s| s.is_attestation())
                .filter(|s| {
                    s.annotations
                        .get(ANNOTATION_REFERENCE_DIGEST)
                        .and_then(|d| d.parse::<Digest>().ok())
                        .is_some_and(|d| kept.contains(&&d))
                })
                .filter(&mut once)
                .collect();
            out.extend(attestations);
        }
        out
    }

    /// Hangar's "custom entry" (a stored file or chart): no arch and no OS.
    pub fn is_custom(&self) -> bool {
        self.arch_list.is_empty() && self.os_list.is_empty()
    }

    /// Hangar's sigstore-signature entry, which `load` refuses.
    pub fn is_signature(&self) -> bool {
        self.tag.ends_with(".sig")
            && self.images.len() == 1
            && self.arch_list.len() == 1
            && self.os_list.len() == 1
            && self.images[0].arch.is_empty()
            && self.images[0].os.is_empty()
    }
}

impl ArchiveIndex {
    /// An empty index stamped now.
    pub fn new() -> Self {
        Self {
            list: Vec::new(),
            version: INDEX_VERSION.to_owned(),
            time: go_time_now(),
        }
    }

    /// Parses and checks an archive's `index.json`. `what` names the archive in errors.
    pub fn parse(bytes: &[u8], what: &str) -> Result<Self> {
        let index: Self = serde_json::from_slice(bytes).map_err(|e| {
            Error::invalid(format!("{what}: index.json is not a Hangar index: {e}"))
        })?;
        check_version(&index.version).map_err(|e| e.context(what))?;
        for (n, image) in index.list.iter().enumerate() {
            if image.source.is_empty() {
                return Err(Error::invalid(format!(
                    "{what}: index.json entry {} has no source",
                    n + 1
                )));
            }
        }
        Ok(index)
    }

    /// Go's `json.MarshalIndent(…, "", "  ")` output (`archive ls --json`).
    pub fn to_go_json_pretty(&self) -> Result<String> {
        let json = serde_json::to_string_pretty(self)
            .map_err(|e| Error::internal(format!("serialising index.json: {e}")))?;
        Ok(go_escape(&json))
    }

    /// Go's `json.Marshal` output, byte for byte.
    pub fn to_go_json(&self) -> Result<Vec<u8>> {
        let json = serde_json::to_string(self)
            .map_err(|e| Error::internal(format!("serialising index.json: {e}")))?;
        Ok(go_escape(&json).into_bytes())
    }
}

/// Hangar compares versions as semver and refuses those lower than its own.
pub fn check_version(version: &str) -> Result<()> {
    let parse = |v: &str| -> Option<(u64, u64, u64)> {
        let core = v.strip_prefix('v').unwrap_or(v);
        let core = core.split(['-', '+']).next()?;
        let mut parts = core.split('.').map(|p| p.parse::<u64>().ok());
        Some((
            parts.next()??,
            parts.next()??,
            parts.next().unwrap_or(Some(0))?,
        ))
    };
    let ours = parse(INDEX_VERSION);
    match parse(version) {
        Some(v) if Some(v) >= ours => Ok(()),
        _ => Err(Error::invalid(format!(
            "this tool does not support index version {version}"
        ))),
    }
}

/// Go's `json.Marshal` (or with `indent`, `json.MarshalIndent(…, "", "  ")`) of `value`,
/// whose serde field order must be the Go type's.
pub(crate) fn go_json<T: Serialize>(value: &T, indent: bool) -> Result<Vec<u8>> {
    let json = if indent {
        serde_json::to_string_pretty(value)
    } else {
        serde_json::to_string(value)
    }
    .map_err(|e| Error::internal(format!("serialising JSON: {e}")))?;
    Ok(go_escape(&json).into_bytes())
}

/// Go escapes these inside strings; they never occur outside one in JSON.
pub fn go_escape(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

/// `time.Now()` marshalled by Go: RFC 3339, nanoseconds without trailing zeros, local offset.
pub fn go_time_now() -> String {
    go_time(&chrono::Local::now().fixed_offset())
}

/// A time as Go marshals it (`time.RFC3339Nano`): nanoseconds without trailing zeros, `Z`
/// for a zero offset.
pub fn go_time(t: &chrono::DateTime<chrono::FixedOffset>) -> String {
    let base = t.format("%Y-%m-%dT%H:%M:%S").to_string();
    let nanos = format!("{:09}", t.timestamp_subsec_nanos());
    let nanos = nanos.trim_end_matches('0');
    let offset = match t.offset().local_minus_utc() {
        0 => "Z".to_owned(),
        _ => t.format("%:z").to_string(),
    };
    if nanos.is_empty() {
        format!("{base}{offset}")
    } else {
        format!("{base}.{nanos}{offset}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_order_and_omitempty_follow_go() {
        let d: Digest = format!("sha256:{}", "a".repeat(64)).parse().unwrap();
        let mut spec = ImageSpec {
            arch: "amd64".into(),
            os: "linux".into(),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            layers: vec![d.clone()],
            config: Some(d.clone()),
            ..ImageSpec::bare(d.clone())
        };
        spec.annotations.insert("z".into(), "<&>".into());
        spec.annotations.insert("a".into(), "1".into());
        let index = ArchiveIndex {
            list: vec![ArchiveImage::new(
                "docker.io/library/nginx".into(),
                "1".into(),
                vec![spec],
            )],
            version: INDEX_VERSION.into(),
            time: "2025-02-13T18:56:27.1+08:00".into(),
        };
        let json = String::from_utf8(index.to_go_json().unwrap()).unwrap();
        let h = "a".repeat(64);
        assert_eq!(
            json,
            format!(
                r#"{{"list":[{{"source":"docker.io/library/nginx","tag":"1","archList":["amd64"],"osList":["linux"],"images":[{{"arch":"amd64","os":"linux","mediaType":"application/vnd.oci.image.manifest.v1+json","layers":["sha256:{h}"],"config":"sha256:{h}","digest":"sha256:{h}","annotations":{{"a":"1","z":"\u003c\u0026\u003e"}}}}]}}],"version":"v1.2.0","time":"2025-02-13T18:56:27.1+08:00"}}"#
            )
        );
        let back = ArchiveIndex::parse(json.as_bytes(), "t.zip").unwrap();
        assert_eq!(back, index);
    }

    #[test]
    fn empty_index_keeps_time_only() {
        let index = ArchiveIndex {
            list: vec![],
            version: INDEX_VERSION.into(),
            time: "2025-01-01T00:00:00Z".into(),
        };
        assert_eq!(
            String::from_utf8(index.to_go_json().unwrap()).unwrap(),
            r#"{"version":"v1.2.0","time":"2025-01-01T00:00:00Z"}"#
        );
    }

    #[test]
    fn lower_versions_are_refused_with_hangars_message() {
        assert!(check_version("v1.2.0").is_ok());
        assert!(check_version("v1.3.1").is_ok());
        for v in ["v1.1.0", "v1.0.9", "", "garbage"] {
            let e = check_version(v).unwrap_err();
            assert_eq!(
                e.message,
                format!("this tool does not support index version {v}")
            );
        }
    }

    /// Every list and object of an entry is bounded where it is parsed; within the bounds
    /// an index reads as it did.
    #[test]
    fn an_entrys_lists_and_annotations_are_bounded() {
        let digest = format!("sha256:{}", "a".repeat(64));
        let spec = |annotations: usize, features: usize| {
            let a: Vec<String> = (0..annotations).map(|i| format!("\"k{i}\":\"\"")).collect();
            let f = vec!["\"f\""; features].join(",");
            format!(
                r#"{{"version":"v1.2.0","list":[{{"source":"docker.io/library/a","tag":"1","images":[{{"digest":"{digest}","osFeatures":[{f}],"annotations":{{{}}}}}]}}]}}"#,
                a.join(",")
            )
        };
        let ok = ArchiveIndex::parse(
            spec(MAX_ANNOTATIONS, MAX_PLATFORM_NAMES).as_bytes(),
            "a.zip",
        )
        .unwrap();
        assert_eq!(ok.list[0].images[0].annotations.len(), MAX_ANNOTATIONS);
        for (json, what) in [
            (spec(MAX_ANNOTATIONS + 1, 1), "members in one object"),
            (spec(1, MAX_PLATFORM_NAMES + 1), "entries in one list"),
        ] {
            let e = ArchiveIndex::parse(json.as_bytes(), "a.zip").unwrap_err();
            assert!(
                e.message.starts_with("a.zip: ") && e.message.contains(what),
                "{}",
                e.message
            );
        }
    }

    #[test]
    fn go_time_is_rfc3339_nano() {
        for (given, go) in [
            ("2024-01-02T03:04:05.120000000Z", "2024-01-02T03:04:05.12Z"),
            ("2024-01-02T03:04:05+00:00", "2024-01-02T03:04:05Z"),
            (
                "2024-01-02T03:04:05.000000001+08:00",
                "2024-01-02T03:04:05.000000001+08:00",
            ),
            ("2024-01-02T03:04:05.5-05:30", "2024-01-02T03:04:05.5-05:30"),
        ] {
            let t = chrono::DateTime::parse_from_rfc3339(given).unwrap();
            assert_eq!(go_time(&t), go, "{given}");
        }
    }

    #[test]
    fn go_time_has_no_trailing_zeros() {
        let t = go_time_now();
        assert!(t.len() >= 20, "{t}");
        if let Some((_, frac)) = t.split_once('.') {
            let digits: String = frac.chars().take_while(char::is_ascii_digit).collect();
            assert!(!digits.ends_with('0'), "{t}");
        }
    }
}
