//! Cosign's signature storage, key-based: a simple-signing payload naming the image's
//! repository and manifest digest, signed, stored as a layer of an OCI manifest at the tag
//! `sha256-<hex>.sig` in the image's own repository. Signing appends to what is there
//! (other keys' signatures stay) and adds nothing when this key's signature already is.

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use serde::Deserialize;
use serde_json::{Value, json};

use super::keys::{KeyPair, PublicKey};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::manifest::{Descriptor, OCI_MANIFEST, RawManifest};
use crate::registry::Side;
use crate::store::ImageStore;
use crate::verify::verified;

pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
pub const PAYLOAD_TYPE: &str = "cosign container image signature";
const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const PAYLOAD_LIMIT: u64 = 1 << 20;
/// Signatures checked per image and key. A `.sig` manifest is the source registry's to
/// write: thousands of layers would each be fetched and verified, once per key.
pub const MAX_SIGNATURES: usize = 64;

/// `sha256-<hex>.sig`: where cosign keeps the signatures of `digest`.
pub fn signature_tag(digest: &Digest) -> String {
    format!("sha256-{}.sig", digest.hex())
}

/// The repository name cosign puts in a payload (go-containerregistry's form: Docker Hub
/// is `index.docker.io`).
pub fn docker_reference(registry: &str, repository: &str) -> String {
    let registry = if registry == "docker.io" {
        "index.docker.io"
    } else {
        registry
    };
    format!("{registry}/{repository}")
}

/// Cosign's simple-signing payload, in its Go field order.
pub fn payload(docker_reference: &str, digest: &Digest) -> Vec<u8> {
    // Written out by hand: serde_json's maps would sort the keys.
    format!(
        r#"{{"critical":{{"identity":{{"docker-reference":{}}},"image":{{"docker-manifest-digest":{}}},"type":{}}},"optional":null}}"#,
        Value::String(docker_reference.to_owned()),
        Value::String(digest.to_string()),
        Value::String(PAYLOAD_TYPE.to_owned()),
    )
    .into_bytes()
}

#[derive(Debug, Deserialize)]
struct PayloadDoc {
    critical: Critical,
}

#[derive(Debug, Deserialize)]
struct Critical {
    identity: Identity,
    image: Image,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Debug, Deserialize)]
struct Identity {
    #[serde(rename = "docker-reference")]
    docker_reference: String,
}

#[derive(Debug, Deserialize)]
struct Image {
    #[serde(rename = "docker-manifest-digest")]
    digest: String,
}

/// One signature layer of a `.sig` manifest.
#[derive(Debug, Clone)]
struct SigLayer {
    desc: Descriptor,
    signature: Option<String>,
    raw: Value,
}

fn layers_of(manifest: &RawManifest) -> Result<Vec<SigLayer>> {
    let doc: Value = serde_json::from_slice(&manifest.bytes)
        .map_err(|e| Error::invalid(format!("signature manifest {}: {e}", manifest.digest)))?;
    let mut out = Vec::new();
    for raw in doc["layers"].as_array().cloned().unwrap_or_default() {
        let desc: Descriptor = serde_json::from_value(raw.clone()).map_err(|e| {
            Error::invalid(format!(
                "signature manifest {}: layer: {e}",
                manifest.digest
            ))
        })?;
        let signature = desc.annotation(SIGNATURE_ANNOTATION).map(str::to_owned);
        out.push(SigLayer {
            desc,
            signature,
            raw,
        });
    }
    Ok(out)
}

async fn put_bytes(
    store: &dyn ImageStore,
    repo: &str,
    media_type: &str,
    bytes: Vec<u8>,
) -> Result<Descriptor> {
    let desc = Descriptor {
        media_type: media_type.to_owned(),
        digest: Digest::of(&bytes),
        size: bytes.len() as u64,
        urls: None,
        annotations: None,
        platform: None,
    };
    if !store
        .blob_exists(repo, &desc.digest, Side::Destination)
        .await?
    {
        let once = futures_util::stream::once(std::future::ready(Ok(Bytes::from(bytes)))).boxed();
        let stream = verified(once, desc.digest.clone(), desc.size, None);
        store.put_blob(repo, &desc, stream).await?;
    }
    Ok(desc)
}

async fn read_small(store: &dyn ImageStore, repo: &str, desc: &Descriptor) -> Result<Bytes> {
    if desc.size > PAYLOAD_LIMIT {
        return Err(Error::invalid(format!(
            "signature payload {} is {} bytes, too large",
            desc.digest, desc.size
        )));
    }
    let chunks: Vec<Bytes> = store
        .get_blob(repo, desc, None)
        .await?
        .try_collect()
        .await?;
    Ok(Bytes::from(chunks.concat()))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signed {
    Added,
    AlreadySigned,
}

/// Signs `digest` in `repo` of `store` as `identity`, appending to its `.sig` manifest.
pub async fn sign(
    store: &dyn ImageStore,
    repo: &str,
    digest: &Digest,
    identity: &str,
    key: &KeyPair,
) -> Result<Signed> {
    let tag = signature_tag(digest);
    let body = payload(identity, digest);
    let payload_digest = Digest::of(&body);
    let existing = match store.get_manifest(repo, &tag, Side::Destination).await? {
        Some(m) => layers_of(&m)?,
        None => Vec::new(),
    };
    let public = key.public();
    if existing.iter().any(|l| {
        l.desc.digest == payload_digest
            && l.signature
                .as_deref()
                .is_some_and(|s| public.verify(&body, s).is_ok())
    }) {
        return Ok(Signed::AlreadySigned);
    }
    let signature = key.sign(&body);
    let mut layer = put_bytes(store, repo, SIMPLE_SIGNING, body).await?;
    layer.annotations = Some([(SIGNATURE_ANNOTATION.to_owned(), signature)].into());
    let mut layers: Vec<Value> = existing.iter().map(|l| l.raw.clone()).collect();
    layers.push(json!({
        "mediaType": layer.media_type,
        "size": layer.size,
        "digest": layer.digest.to_string(),
        "annotations": layer.annotations,
    }));
    let diff_ids: Vec<String> = layers
        .iter()
        .filter_map(|l| l["digest"].as_str().map(str::to_owned))
        .collect();
    let history: Vec<Value> = diff_ids
        .iter()
        .map(|_| json!({"created": "0001-01-01T00:00:00Z"}))
        .collect();
    let config = json!({
        "architecture": "",
        "created": "0001-01-01T00:00:00Z",
        "history": history,
        "os": "",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "config": {},
    });
    let config = put_bytes(
        store,
        repo,
        CONFIG_TYPE,
        serde_json::to_vec(&config).map_err(|e| Error::internal(e.to_string()))?,
    )
    .await?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": CONFIG_TYPE, "size": config.size, "digest": config.digest.to_string()},
        "layers": layers,
    });
    let bytes = serde_json::to_vec(&manifest).map_err(|e| Error::internal(e.to_string()))?;
    let raw = RawManifest {
        media_type: OCI_MANIFEST.to_owned(),
        digest: Digest::of(&bytes),
        bytes: Bytes::from(bytes),
    };
    store.put_manifest(repo, &tag, &raw).await?;
    Ok(Signed::Added)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A signature by the key over a payload naming this digest; the payload's text.
    Verified {
        payload: String,
    },
    NoSignature,
    Invalid(String),
}

/// Checks the signatures of `digest` in `repo` against `key`. With `exact_repository`,
/// the payload's identity must name that repository (Hangar's `--exact-repository`, for
/// images validated after being mirrored away from where they were signed).
pub async fn verify(
    store: &dyn ImageStore,
    repo: &str,
    digest: &Digest,
    key: &PublicKey,
    exact_repository: Option<&str>,
) -> Result<Verdict> {
    let Some(manifest) = store
        .get_manifest(repo, &signature_tag(digest), Side::Source)
        .await?
    else {
        return Ok(Verdict::NoSignature);
    };
    let mut reasons = Vec::new();
    let signatures: Vec<SigLayer> = layers_of(&manifest)?
        .into_iter()
        .filter(|l| l.desc.media_type == SIMPLE_SIGNING)
        .collect();
    if signatures.len() > MAX_SIGNATURES {
        reasons.push(format!(
            "{} signatures on {}: only the newest {MAX_SIGNATURES} were checked",
            signatures.len(),
            signature_tag(digest)
        ));
    }
    // Newest first: cosign (and `sign`) add a signature at the end, so after a key's
    // rotation the one that counts is among the last.
    for layer in signatures.into_iter().rev().take(MAX_SIGNATURES) {
        let Some(signature) = &layer.signature else {
            reasons.push(format!("layer {} has no signature", layer.desc.digest));
            continue;
        };
        let body = read_small(store, repo, &layer.desc).await?;
        if let Err(e) = key.verify(&body, signature) {
            reasons.push(e.message);
            continue;
        }
        let doc: PayloadDoc = match serde_json::from_slice(&body) {
            Ok(d) => d,
            Err(e) => {
                reasons.push(format!(
                    "payload {} is not a simple-signing document: {e}",
                    layer.desc.digest
                ));
                continue;
            }
        };
        if doc.critical.kind != PAYLOAD_TYPE {
            reasons.push(format!(
                "payload type {:?} is not {PAYLOAD_TYPE:?}",
                doc.critical.kind
            ));
            continue;
        }
        if doc.critical.image.digest != digest.to_string() {
            reasons.push(format!(
                "the signed payload names {}, not {digest}",
                doc.critical.image.digest
            ));
            continue;
        }
        let identity = &doc.critical.identity.docker_reference;
        if let Some(expected) = exact_repository
            && identity != expected
            && identity.trim_start_matches("index.") != expected.trim_start_matches("index.")
        {
            reasons.push(format!(
                "Signature for identity {identity:?} is not accepted (expected {expected:?})"
            ));
            continue;
        }
        return Ok(Verdict::Verified {
            payload: String::from_utf8_lossy(&body).into_owned(),
        });
    }
    if reasons.is_empty() {
        return Ok(Verdict::NoSignature);
    }
    reasons.dedup();
    Ok(Verdict::Invalid(reasons.join("; ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_is_cosigns_document() {
        let d: Digest = format!("sha256:{}", "a".repeat(64)).parse().unwrap();
        let p = String::from_utf8(payload("index.docker.io/library/nginx", &d)).unwrap();
        assert_eq!(
            p,
            format!(
                r#"{{"critical":{{"identity":{{"docker-reference":"index.docker.io/library/nginx"}},"image":{{"docker-manifest-digest":"{d}"}},"type":"cosign container image signature"}},"optional":null}}"#
            )
        );
        assert_eq!(signature_tag(&d), format!("sha256-{}.sig", "a".repeat(64)));
    }
}
