//! Manifests as plain values: media types, descriptors, platforms, and parsing of the raw
//! bytes a registry serves. Raw bytes are kept alongside so they can be pushed unchanged.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{Error, FailureClass, Result};

pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
pub const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// Every manifest type we ask registries for.
pub const ACCEPTED: &[&str] = &[
    OCI_INDEX,
    DOCKER_LIST,
    OCI_MANIFEST,
    DOCKER_MANIFEST,
    DOCKER_SCHEMA1_SIGNED,
    DOCKER_SCHEMA1,
];

pub const ANNOTATION_REFERENCE_TYPE: &str = "vnd.docker.reference.type";
pub const ANNOTATION_REFERENCE_DIGEST: &str = "vnd.docker.reference.digest";
pub const ATTESTATION_MANIFEST: &str = "attestation-manifest";

// Go's `omitempty` drops empty maps and slices too, not only absent ones.
fn none_or_empty(v: &Option<Vec<String>>) -> bool {
    v.as_ref().is_none_or(Vec::is_empty)
}

fn no_annotations(v: &Option<BTreeMap<String, String>>) -> bool {
    v.as_ref().is_none_or(BTreeMap::is_empty)
}

/// Go's OCI `Platform`, in its field order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
    #[serde(
        rename = "os.features",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_features: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// `linux/arm64/v8` style, for messages.
    pub fn display(&self) -> String {
        match &self.variant {
            Some(v) => format!("{}/{}/{v}", self.os, self.architecture),
            None => format!("{}/{}", self.os, self.architecture),
        }
    }
}

/// Go's OCI `Descriptor` in Hangar's serialised field order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "none_or_empty")]
    pub urls: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "no_annotations")]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

impl Descriptor {
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.as_ref()?.get(key).map(String::as_str)
    }

    /// A buildx attestation entry (`unknown/unknown` + `vnd.docker.reference.type`).
    pub fn is_attestation(&self) -> bool {
        self.annotation(ANNOTATION_REFERENCE_TYPE) == Some(ATTESTATION_MANIFEST)
    }

    /// The image an attestation describes.
    pub fn attests(&self) -> Option<Digest> {
        self.annotation(ANNOTATION_REFERENCE_DIGEST)?.parse().ok()
    }

    /// Foreign (non-distributable) layers live elsewhere and are not copied, as in
    /// containers/image.
    pub fn is_foreign(&self) -> bool {
        self.media_type.contains("foreign") || self.media_type.contains("nondistributable")
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Index {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ImageManifest {
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

impl ImageManifest {
    /// Config first, then layers: every blob a registry needs before the manifest.
    pub fn blobs(&self) -> impl Iterator<Item = &Descriptor> {
        std::iter::once(&self.config).chain(self.layers.iter().filter(|l| !l.is_foreign()))
    }

    /// [`Self::blobs`], each digest once (a manifest may list a layer twice), in order.
    pub fn unique_blobs(&self) -> Vec<Descriptor> {
        let mut seen = std::collections::HashSet::new();
        self.blobs()
            .filter(|b| seen.insert(&b.digest))
            .cloned()
            .collect()
    }
}

/// The handful of config fields the planner needs (platform of a single-manifest image).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ImageConfig {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
    #[serde(rename = "os.version", default)]
    pub os_version: Option<String>,
}

impl ImageConfig {
    pub fn platform(&self) -> Platform {
        Platform {
            architecture: self.architecture.clone(),
            os: self.os.clone(),
            os_version: self.os_version.clone().filter(|v| !v.is_empty()),
            os_features: None,
            variant: self.variant.clone().filter(|v| !v.is_empty()),
        }
    }
}

#[derive(Debug, Clone)]
pub enum Manifest {
    Index(Index),
    Image(ImageManifest),
    Schema1,
}

/// Manifest bytes exactly as served, with their media type and digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawManifest {
    pub media_type: String,
    pub bytes: Bytes,
    pub digest: Digest,
}

#[derive(Deserialize)]
struct Probe {
    #[serde(rename = "schemaVersion", default)]
    schema_version: u32,
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<serde_json::Value>,
    #[serde(default)]
    config: Option<serde_json::Value>,
}

impl RawManifest {
    /// Wraps served bytes, working out the media type from the document itself (the
    /// registry's Content-Type is not available through every client), and checks the bytes
    /// against `expected` when the manifest was asked for by digest.
    pub fn from_bytes(bytes: Bytes, expected: Option<&Digest>) -> Result<Self> {
        let probe: Option<Probe> = serde_json::from_slice(&bytes).ok();
        // A signed schema 1 manifest is named by its payload, without the signatures.
        let digest = match probe.as_ref().map(|p| p.schema_version) {
            Some(1) => match crate::schema1::signed_payload(&bytes)? {
                Some(payload) => Digest::of(&payload),
                None => Digest::of(&bytes),
            },
            _ => Digest::of(&bytes),
        };
        if let Some(expected) = expected
            && *expected != digest
        {
            return Err(Error::new(
                FailureClass::DigestMismatch,
                format!("manifest {expected} was served with digest {digest}"),
            ));
        }
        let probe: Probe = match probe {
            Some(p) => p,
            None => serde_json::from_slice(&bytes)
                .map_err(|e| Error::invalid(format!("manifest {digest} is not valid JSON: {e}")))?,
        };
        let media_type = match (probe.schema_version, probe.media_type) {
            (1, _) => DOCKER_SCHEMA1_SIGNED.to_owned(),
            (_, Some(m)) if !m.is_empty() => m,
            _ if probe.manifests.is_some() => OCI_INDEX.to_owned(),
            _ if probe.config.is_some() => OCI_MANIFEST.to_owned(),
            _ => {
                return Err(Error::new(
                    FailureClass::UnsupportedMediaType,
                    format!("manifest {digest} has no recognisable media type"),
                ));
            }
        };
        Ok(Self {
            media_type,
            bytes,
            digest,
        })
    }

    pub fn descriptor(&self) -> Descriptor {
        Descriptor {
            media_type: self.media_type.clone(),
            digest: self.digest.clone(),
            size: self.bytes.len() as u64,
            urls: None,
            annotations: None,
            platform: None,
        }
    }

    pub fn parse(&self) -> Result<Manifest> {
        let bad = |e: serde_json::Error| {
            Error::invalid(format!(
                "cannot parse {} manifest {}: {e}",
                self.media_type, self.digest
            ))
        };
        match self.media_type.as_str() {
            OCI_INDEX | DOCKER_LIST => Ok(Manifest::Index(
                serde_json::from_slice(&self.bytes).map_err(bad)?,
            )),
            OCI_MANIFEST | DOCKER_MANIFEST => Ok(Manifest::Image(
                serde_json::from_slice(&self.bytes).map_err(bad)?,
            )),
            DOCKER_SCHEMA1 | DOCKER_SCHEMA1_SIGNED => Ok(Manifest::Schema1),
            other => Err(Error::new(
                FailureClass::UnsupportedMediaType,
                format!(
                    "unsupported MIME type {other:?} for manifest {}",
                    self.digest
                ),
            )),
        }
    }
}

/// Hangar's `--arch/--os` filter: a dimension passes when the filter is empty, the
/// manifest's value is empty, or the filter contains it. Variants are not filtered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlatformFilter {
    pub arch: Vec<String>,
    pub os: Vec<String>,
}

impl PlatformFilter {
    /// From `--arch` / `--os` values (empty entries dropped).
    pub fn from_flags(arch: &[String], os: &[String]) -> Self {
        let keep = |v: &[String]| v.iter().filter(|x| !x.is_empty()).cloned().collect();
        Self {
            arch: keep(arch),
            os: keep(os),
        }
    }

    pub fn matches(&self, p: &Platform) -> bool {
        let pass =
            |set: &[String], v: &str| set.is_empty() || v.is_empty() || set.iter().any(|s| s == v);
        pass(&self.arch, &p.architecture) && pass(&self.os, &p.os)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_media_types_from_bytes() {
        let oci = RawManifest::from_bytes(Bytes::from_static(br#"{"schemaVersion":2,"config":{"digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":0},"layers":[]}"#), None).unwrap();
        assert_eq!(oci.media_type, OCI_MANIFEST);
        let idx = RawManifest::from_bytes(
            Bytes::from_static(br#"{"schemaVersion":2,"manifests":[]}"#),
            None,
        )
        .unwrap();
        assert_eq!(idx.media_type, OCI_INDEX);
        let s1 = RawManifest::from_bytes(
            Bytes::from_static(br#"{"schemaVersion":1,"name":"x"}"#),
            None,
        )
        .unwrap();
        assert!(matches!(s1.parse().unwrap(), Manifest::Schema1));
        let odd = RawManifest::from_bytes(
            Bytes::from_static(br#"{"schemaVersion":2,"mediaType":"application/x-odd"}"#),
            None,
        )
        .unwrap();
        let err = odd.parse().unwrap_err();
        assert_eq!(err.class, FailureClass::UnsupportedMediaType);
        assert!(err.message.contains("application/x-odd"));
    }

    #[test]
    fn verifies_digest_when_expected() {
        let wrong = Digest::of(b"other");
        let err = RawManifest::from_bytes(
            Bytes::from_static(br#"{"schemaVersion":2,"manifests":[]}"#),
            Some(&wrong),
        )
        .unwrap_err();
        assert_eq!(err.class, FailureClass::DigestMismatch);
    }

    #[test]
    fn filter_follows_hangar() {
        let f = PlatformFilter {
            arch: vec!["amd64".into()],
            os: vec!["linux".into()],
        };
        let p = |a: &str, o: &str| Platform {
            architecture: a.into(),
            os: o.into(),
            ..Default::default()
        };
        assert!(f.matches(&p("amd64", "linux")));
        assert!(!f.matches(&p("arm64", "linux")));
        assert!(f.matches(&p("", "")));
        assert!(!f.matches(&p("amd64", "windows")));
    }
}
