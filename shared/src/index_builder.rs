//! The destination index, built and merged by Hangar's rules (reference §4.3), so that
//! mirroring `--arch amd64` and then `--arch arm64` into one tag yields one multi-arch
//! index, and serialised exactly as Hangar's Go code does (2-space indent, no newline).

use bytes::Bytes;

use crate::digest::Digest;
use crate::manifest::{Descriptor, Index, OCI_INDEX, Platform};

/// The result of merging: the index and whether it differs from what is already there.
#[derive(Debug, Clone)]
pub struct BuiltIndex {
    pub index: Index,
    pub changed: bool,
}

/// The same platform as Hangar's builder sees it.
pub fn same_platform(a: &Descriptor, b: &Descriptor) -> bool {
    let empty = Platform::default();
    let pa = a.platform.as_ref().unwrap_or(&empty);
    let pb = b.platform.as_ref().unwrap_or(&empty);
    // arm64 variant differences ("v8" or none) are ignored, as Hangar does.
    pa.os == pb.os
        && pa.architecture == pb.architecture
        && pa.os_version == pb.os_version
        && (pa.architecture == "arm64" || pa.variant == pb.variant)
}

/// Merge `added` into `existing` (ignored with `overwrite`).
pub fn build(existing: Option<&Index>, added: &[Descriptor], overwrite: bool) -> BuiltIndex {
    let before: Vec<Descriptor> = match existing {
        Some(idx) if !overwrite => idx.manifests.clone(),
        _ => Vec::new(),
    };
    let mut entries = before.clone();
    for new in added {
        entries.retain(|e| {
            let replaced_platform = !e.is_attestation() && same_platform(e, new);
            let replaced_attestation = e.is_attestation() && e.annotations == new.annotations;
            let duplicate = e.digest == new.digest && same_platform(e, new);
            !(replaced_platform || replaced_attestation || duplicate)
        });
        entries.push(new.clone());
    }
    let present: Vec<Digest> = entries.iter().map(|e| e.digest.clone()).collect();
    entries.retain(|e| !e.is_attestation() || e.attests().is_some_and(|d| present.contains(&d)));
    let was_oci = existing.is_some_and(|i| i.media_type.as_deref() == Some(OCI_INDEX));
    let changed = overwrite || existing.is_none() || !was_oci || entries != before;
    BuiltIndex {
        index: Index {
            schema_version: 2,
            media_type: Some(OCI_INDEX.to_owned()),
            manifests: entries,
        },
        changed,
    }
}

/// Go's `json.MarshalIndent(index, "", "  ")`: what Hangar pushes, byte for byte.
pub fn serialize(index: &Index) -> Bytes {
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"  ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    // Serialising plain structs of strings and numbers into memory cannot fail.
    if serde::Serialize::serialize(index, &mut ser).is_err() {
        unreachable!("serialising an index into memory failed");
    }
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::manifest::{ANNOTATION_REFERENCE_DIGEST, ANNOTATION_REFERENCE_TYPE, OCI_MANIFEST};

    fn entry(seed: &str, arch: &str, variant: Option<&str>) -> Descriptor {
        Descriptor {
            media_type: OCI_MANIFEST.into(),
            digest: Digest::of(seed.as_bytes()),
            size: 10,
            urls: None,
            annotations: None,
            platform: Some(Platform {
                architecture: arch.into(),
                os: "linux".into(),
                variant: variant.map(Into::into),
                ..Default::default()
            }),
        }
    }

    fn attestation(seed: &str, of: &Descriptor) -> Descriptor {
        let mut a = entry(seed, "unknown", None);
        a.platform.as_mut().unwrap().os = "unknown".into();
        a.annotations = Some(BTreeMap::from([
            (
                ANNOTATION_REFERENCE_DIGEST.to_string(),
                of.digest.to_string(),
            ),
            (
                ANNOTATION_REFERENCE_TYPE.to_string(),
                "attestation-manifest".to_string(),
            ),
        ]));
        a
    }

    #[test]
    fn merges_single_arch_runs_into_one_index() {
        let amd = entry("amd", "amd64", None);
        let arm = entry("arm", "arm64", Some("v8"));
        let first = build(None, std::slice::from_ref(&amd), false);
        assert!(first.changed);
        let second = build(Some(&first.index), std::slice::from_ref(&arm), false);
        assert!(second.changed);
        assert_eq!(second.index.manifests, vec![amd.clone(), arm.clone()]);
        let again = build(Some(&second.index), std::slice::from_ref(&arm), false);
        assert!(!again.changed, "re-adding the same entry must not re-push");
        let arm_novariant = entry("arm2", "arm64", None);
        let replaced = build(
            Some(&second.index),
            std::slice::from_ref(&arm_novariant),
            false,
        );
        assert_eq!(replaced.index.manifests, vec![amd.clone(), arm_novariant]);
        let over = build(Some(&second.index), std::slice::from_ref(&amd), true);
        assert_eq!(over.index.manifests, vec![amd]);
    }

    #[test]
    fn drops_orphaned_attestations() {
        let amd = entry("amd", "amd64", None);
        let att = attestation("att", &amd);
        let first = build(None, &[amd.clone(), att.clone()], false);
        assert_eq!(first.index.manifests.len(), 2);
        let newer = entry("amd-new", "amd64", None);
        let second = build(Some(&first.index), std::slice::from_ref(&newer), false);
        assert_eq!(second.index.manifests, vec![newer]);
    }

    #[test]
    fn serialises_like_go_marshal_indent() {
        let mut e = entry("x", "arm", Some("v7"));
        e.annotations = Some(BTreeMap::from([
            ("b".into(), "2".into()),
            ("a".into(), "1".into()),
        ]));
        let built = build(None, &[e.clone()], false);
        let text = String::from_utf8(serialize(&built.index).to_vec()).unwrap();
        let expected = format!(
            "{{\n  \"schemaVersion\": 2,\n  \"mediaType\": \"application/vnd.oci.image.index.v1+json\",\n  \"manifests\": [\n    {{\n      \"mediaType\": \"application/vnd.oci.image.manifest.v1+json\",\n      \"digest\": \"{}\",\n      \"size\": 10,\n      \"annotations\": {{\n        \"a\": \"1\",\n        \"b\": \"2\"\n      }},\n      \"platform\": {{\n        \"architecture\": \"arm\",\n        \"os\": \"linux\",\n        \"variant\": \"v7\"\n      }}\n    }}\n  ]\n}}",
            e.digest
        );
        assert_eq!(text, expected);
    }
}
