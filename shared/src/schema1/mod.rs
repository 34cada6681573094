//! Docker schema 1 manifests, converted to schema 2 as Hangar (containers/image) does when it
//! copies one: the layers that are not `throwaway`, oldest first; a config made from the top
//! layer's `v1Compatibility` without its v1 identifiers, plus `rootfs.diff_ids` (the SHA-256
//! of each layer uncompressed) and a `history` entry per v1 layer. The digest changes: a
//! schema 1 image has no config blob for the new manifest to keep.
//!
//! A signed manifest (`…+prettyjws`) is named by the digest of its payload, the document
//! without its JWS signatures, as registries name it, and only that payload is read.
//! Signatures are not verified: they are libtrust keys nobody distributes, and Hangar does
//! not verify them either. The layout is containers/image's, the bytes not exactly: nested
//! objects keep serde's order and escaping, so a converted digest may differ from Hangar's.

use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::manifest::{DOCKER_MANIFEST, Descriptor};

mod diff_id;
pub use diff_id::{MAX_INFLATED, diff_id};

pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";

/// Layers one schema 1 manifest may list (Docker capped images at 127; the 4 MiB manifest
/// limit holds far more).
pub const MAX_LAYERS: usize = 1000;

/// The bytes a signed manifest's digest covers: the document as it was before signing,
/// rebuilt from its first signature's `formatLength` and `formatTail` (each signature must
/// agree). `None` for an unsigned manifest.
pub fn signed_payload(bytes: &[u8]) -> Result<Option<Vec<u8>>> {
    #[derive(Deserialize)]
    struct Signed {
        #[serde(default)]
        signatures: Vec<Signature>,
    }
    #[derive(Deserialize)]
    struct Signature {
        protected: String,
    }
    #[derive(Deserialize)]
    struct Protected {
        #[serde(rename = "formatLength")]
        format_length: usize,
        #[serde(rename = "formatTail")]
        format_tail: String,
    }
    let bad = |why: String| Error::invalid(format!("signed schema1 manifest: {why}"));
    let signed: Signed =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    if signed.signatures.len() > MAX_SIGNATURES {
        return Err(bad(format!(
            "{} signatures; at most {MAX_SIGNATURES} are accepted",
            signed.signatures.len()
        )));
    }
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut format: Option<(usize, Vec<u8>)> = None;
    for s in &signed.signatures {
        let header = b64
            .decode(s.protected.trim_end_matches('='))
            .map_err(|e| bad(format!("protected header is not base64url: {e}")))?;
        let header: Protected =
            serde_json::from_slice(&header).map_err(|e| bad(format!("protected header: {e}")))?;
        let tail = b64
            .decode(header.format_tail.trim_end_matches('='))
            .map_err(|e| bad(format!("formatTail is not base64url: {e}")))?;
        if header.format_length > bytes.len() {
            return Err(bad(format!(
                "formatLength {} is past the document's end",
                header.format_length
            )));
        }
        let this = (header.format_length, tail);
        match &format {
            Some(first) if *first != this => {
                return Err(bad("its signatures sign different payloads".into()));
            }
            _ => format = Some(this),
        }
    }
    Ok(format.map(|(len, tail)| [&bytes[..len], &tail].concat()))
}

/// Signatures a signed manifest may carry (Docker signed with one key).
const MAX_SIGNATURES: usize = 16;

/// The fields of a schema 1 manifest the conversion reads.
#[derive(Debug, Clone)]
pub struct Schema1 {
    /// Newest first, as the manifest lists them.
    layers: Vec<V1Layer>,
    /// The newest layer's `v1Compatibility`, which becomes the config.
    top: Map<String, Value>,
}

#[derive(Debug, Clone)]
struct V1Layer {
    blob: Digest,
    compat: V1Compat,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct V1Compat {
    #[serde(default)]
    created: Option<String>,
    #[serde(default)]
    author: String,
    #[serde(default)]
    comment: String,
    #[serde(default)]
    container_config: Option<ContainerConfig>,
    #[serde(default)]
    throwaway: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct ContainerConfig {
    #[serde(rename = "Cmd", default)]
    cmd: Option<Vec<String>>,
}

/// One layer of the converted image: its blob as stored, and its digest uncompressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    pub blob: Digest,
    pub size: u64,
    pub diff_id: Digest,
    /// Stored gzip (the rule); else a plain tar.
    pub gzip: bool,
}

/// The converted image: its config blob and its schema 2 manifest.
#[derive(Debug, Clone)]
pub struct Converted {
    pub config: Bytes,
    pub manifest: Bytes,
}

#[derive(Serialize)]
struct History<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    created: Option<&'a str>,
    #[serde(skip_serializing_if = "str::is_empty")]
    author: &'a str,
    #[serde(skip_serializing_if = "String::is_empty")]
    created_by: String,
    #[serde(skip_serializing_if = "str::is_empty")]
    comment: &'a str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    empty_layer: bool,
}

// containers/image's schema 2 descriptor field order.
#[derive(Serialize)]
struct Schema2Descriptor<'a> {
    #[serde(rename = "mediaType")]
    media_type: &'a str,
    size: u64,
    digest: &'a Digest,
}

#[derive(Serialize)]
struct Schema2<'a> {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType")]
    media_type: &'a str,
    config: Schema2Descriptor<'a>,
    layers: Vec<Schema2Descriptor<'a>>,
}

impl Schema1 {
    /// Parses what `bytes`' digest covers: a signed manifest's payload, without the rest.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        #[derive(Deserialize)]
        struct Doc {
            #[serde(rename = "fsLayers", default)]
            fs_layers: Vec<FsLayer>,
            #[serde(default)]
            history: Vec<HistoryEntry>,
        }
        #[derive(Deserialize)]
        struct FsLayer {
            #[serde(rename = "blobSum")]
            blob_sum: Digest,
        }
        #[derive(Deserialize)]
        struct HistoryEntry {
            #[serde(rename = "v1Compatibility")]
            v1_compatibility: String,
        }
        let bad = |why: String| Error::invalid(format!("schema1 manifest: {why}"));
        // What the digest covers, and nothing else: a signed manifest's payload.
        let payload = signed_payload(bytes)?;
        let bytes = payload.as_deref().unwrap_or(bytes);
        let doc: Doc = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        if doc.fs_layers.is_empty() {
            return Err(bad("it lists no layers".into()));
        }
        if doc.fs_layers.len() != doc.history.len() {
            return Err(bad(format!(
                "{} layers but {} history entries",
                doc.fs_layers.len(),
                doc.history.len()
            )));
        }
        if doc.fs_layers.len() > MAX_LAYERS {
            return Err(bad(format!(
                "{} layers; at most {MAX_LAYERS} are accepted",
                doc.fs_layers.len()
            )));
        }
        let mut layers = Vec::with_capacity(doc.fs_layers.len());
        for (n, (fs, h)) in doc.fs_layers.into_iter().zip(&doc.history).enumerate() {
            let compat: V1Compat = serde_json::from_str(&h.v1_compatibility)
                .map_err(|e| bad(format!("history entry {n}: v1Compatibility: {e}")))?;
            layers.push(V1Layer {
                blob: fs.blob_sum,
                compat,
            });
        }
        let top: Map<String, Value> = serde_json::from_str(&doc.history[0].v1_compatibility)
            .map_err(|e| bad(format!("history entry 0: v1Compatibility: {e}")))?;
        Ok(Self { layers, top })
    }

    /// The blobs that become the image's layers, oldest first (`throwaway` ones are left
    /// out, as containers/image leaves them).
    pub fn layer_blobs(&self) -> Vec<Digest> {
        self.layers
            .iter()
            .rev()
            .filter(|l| !l.compat.throwaway)
            .map(|l| l.blob.clone())
            .collect()
    }

    /// The schema 2 image for these layers (in [`Self::layer_blobs`] order, measured).
    pub fn to_schema2(&self, layers: &[Layer]) -> Result<Converted> {
        let wanted = self.layer_blobs();
        let given: Vec<Digest> = layers.iter().map(|l| l.blob.clone()).collect();
        if wanted != given {
            return Err(Error::internal("schema1 conversion given other layers"));
        }
        let history: Vec<History> = self
            .layers
            .iter()
            .rev()
            .map(|l| History {
                created: l.compat.created.as_deref(),
                author: &l.compat.author,
                created_by: l
                    .compat
                    .container_config
                    .as_ref()
                    .and_then(|c| c.cmd.as_ref())
                    .map(|c| c.join(" "))
                    .unwrap_or_default(),
                comment: &l.compat.comment,
                empty_layer: l.compat.throwaway,
            })
            .collect();
        let mut config = self.top.clone();
        for v1_only in ["id", "parent", "parent_id", "layer_id", "throwaway", "Size"] {
            config.remove(v1_only);
        }
        let json = |e: serde_json::Error| Error::internal(format!("schema1 conversion: {e}"));
        let diff_ids: Vec<String> = layers.iter().map(|l| l.diff_id.to_string()).collect();
        config.insert(
            "rootfs".into(),
            serde_json::json!({"type": "layers", "diff_ids": diff_ids}),
        );
        config.insert(
            "history".into(),
            serde_json::to_value(history).map_err(json)?,
        );
        let config = Bytes::from(serde_json::to_vec(&config).map_err(json)?);
        let config_digest = Digest::of(&config);
        let manifest = Schema2 {
            schema_version: 2,
            media_type: DOCKER_MANIFEST,
            config: Schema2Descriptor {
                media_type: DOCKER_CONFIG,
                size: config.len() as u64,
                digest: &config_digest,
            },
            layers: layers
                .iter()
                .map(|l| Schema2Descriptor {
                    media_type: match l.gzip {
                        true => DOCKER_LAYER_GZIP,
                        false => DOCKER_LAYER_TAR,
                    },
                    size: l.size,
                    digest: &l.blob,
                })
                .collect(),
        };
        let manifest = Bytes::from(serde_json::to_vec(&manifest).map_err(json)?);
        Ok(Converted { config, manifest })
    }
}

impl Converted {
    pub fn config_descriptor(&self) -> Descriptor {
        Descriptor {
            media_type: DOCKER_CONFIG.into(),
            digest: Digest::of(&self.config),
            size: self.config.len() as u64,
            urls: None,
            annotations: None,
            platform: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compat(id: &str, cmd: &str, throwaway: bool) -> String {
        serde_json::json!({
            "id": id, "parent": "p", "created": "2016-01-02T03:04:05.123456789Z",
            "container_config": {"Cmd": ["/bin/sh", "-c", cmd]},
            "throwaway": throwaway, "Size": 12, "architecture": "arm64", "os": "linux"
        })
        .to_string()
    }

    fn digest(n: u8) -> Digest {
        Digest::of(&[n])
    }

    fn manifest() -> Vec<u8> {
        serde_json::json!({
            "schemaVersion": 1, "name": "lib/app", "tag": "v1", "architecture": "arm64",
            "fsLayers": [{"blobSum": digest(3).to_string()}, {"blobSum": digest(2).to_string()}, {"blobSum": digest(1).to_string()}],
            "history": [
                {"v1Compatibility": compat("c", "CMD [\"run\"]", true)},
                {"v1Compatibility": compat("b", "ADD file", false)},
                {"v1Compatibility": compat("a", "ADD base", false)},
            ]
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn converts_oldest_first_without_throwaway_layers_or_v1_ids() {
        let s1 = Schema1::parse(&manifest()).unwrap();
        assert_eq!(s1.layer_blobs(), vec![digest(1), digest(2)]);
        let layers = vec![
            Layer {
                blob: digest(1),
                size: 10,
                diff_id: digest(11),
                gzip: true,
            },
            Layer {
                blob: digest(2),
                size: 20,
                diff_id: digest(12),
                gzip: false,
            },
        ];
        let out = s1.to_schema2(&layers).unwrap();
        let config: Value = serde_json::from_slice(&out.config).unwrap();
        for gone in ["id", "parent", "throwaway", "Size"] {
            assert!(config.get(gone).is_none(), "{gone} kept");
        }
        assert_eq!(config["architecture"], "arm64");
        assert_eq!(
            config["rootfs"]["diff_ids"],
            serde_json::json!([digest(11).to_string(), digest(12).to_string()])
        );
        let history = config["history"].as_array().unwrap();
        assert_eq!(history.len(), 3);
        assert_eq!(history[0]["created_by"], "/bin/sh -c ADD base");
        assert_eq!(history[2]["empty_layer"], true);
        assert!(history[0].get("empty_layer").is_none());
        let m: Value = serde_json::from_slice(&out.manifest).unwrap();
        assert_eq!(m["mediaType"], DOCKER_MANIFEST);
        assert_eq!(m["config"]["digest"], Digest::of(&out.config).to_string());
        assert_eq!(m["layers"][1]["digest"], digest(2).to_string());
        assert_eq!(m["layers"][1]["size"], 20);
        assert_eq!(m["layers"][0]["mediaType"], DOCKER_LAYER_GZIP);
        assert_eq!(m["layers"][1]["mediaType"], DOCKER_LAYER_TAR);
        // The same manifest converts to the same bytes: validation relies on it.
        assert_eq!(s1.to_schema2(&layers).unwrap().manifest, out.manifest);
    }

    #[test]
    fn refuses_mismatched_history_and_too_many_layers() {
        let doc = serde_json::json!({"schemaVersion": 1, "fsLayers": [{"blobSum": digest(1).to_string()}], "history": []});
        let e = Schema1::parse(doc.to_string().as_bytes()).unwrap_err();
        assert!(e.message.contains("1 layers but 0 history"), "{e}");
        let many: Vec<Value> = (0..=MAX_LAYERS)
            .map(|_| serde_json::json!({"blobSum": digest(1).to_string()}))
            .collect();
        let hist: Vec<Value> = (0..=MAX_LAYERS)
            .map(|_| serde_json::json!({"v1Compatibility": "{}"}))
            .collect();
        let doc = serde_json::json!({"schemaVersion": 1, "fsLayers": many, "history": hist});
        let e = Schema1::parse(doc.to_string().as_bytes()).unwrap_err();
        assert!(e.message.contains("at most 1000"), "{e}");
    }

    #[test]
    fn a_signed_manifest_is_named_by_its_payload() {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let payload = b"{\n   \"schemaVersion\": 1,\n   \"name\": \"x\"\n}".to_vec();
        let cut = payload.len() - 2;
        let protected = b64.encode(format!(
            "{{\"formatLength\":{cut},\"formatTail\":\"{}\"}}",
            b64.encode(&payload[cut..])
        ));
        let signed = format!(
            "{},\n   \"signatures\": [{{\"protected\": \"{protected}\", \"signature\": \"x\"}}]\n}}",
            String::from_utf8_lossy(&payload[..cut])
        );
        assert_eq!(signed_payload(signed.as_bytes()).unwrap(), Some(payload));
        assert_eq!(signed_payload(b"{\"schemaVersion\":1}").unwrap(), None);
        let past = format!(
            "{{\"signatures\":[{{\"protected\":\"{}\"}}]}}",
            b64.encode("{\"formatLength\":99999,\"formatTail\":\"\"}")
        );
        assert!(signed_payload(past.as_bytes()).is_err());
    }

    #[test]
    fn only_the_signed_payload_is_read() {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let payload = manifest();
        let cut = payload.len() - 1;
        let protected = b64.encode(format!(
            "{{\"formatLength\":{cut},\"formatTail\":\"{}\"}}",
            b64.encode(&payload[cut..])
        ));
        // Layers of someone else's after the payload, outside what the digest covers.
        let signed = format!(
            "{},\"fsLayers\":[{{\"blobSum\":\"{}\"}}],\"history\":[{{\"v1Compatibility\":\"{{}}\"}}],\"signatures\":[{{\"protected\":\"{protected}\"}}]}}",
            String::from_utf8_lossy(&payload[..cut]),
            digest(9)
        );
        let s1 = Schema1::parse(signed.as_bytes()).unwrap();
        assert_eq!(s1.layer_blobs(), vec![digest(1), digest(2)]);
    }

    #[test]
    fn more_signatures_than_sixteen_are_refused() {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let payload = b"{\n   \"schemaVersion\": 1\n}".to_vec();
        let cut = payload.len() - 2;
        let protected = b64.encode(format!(
            "{{\"formatLength\":{cut},\"formatTail\":\"{}\"}}",
            b64.encode(&payload[cut..])
        ));
        let one = format!("{{\"protected\": \"{protected}\", \"signature\": \"x\"}}");
        let signed = |n: usize| {
            format!(
                "{},\n   \"signatures\": [{}]\n}}",
                String::from_utf8_lossy(&payload[..cut]),
                vec![one.as_str(); n].join(",")
            )
        };
        assert_eq!(
            signed_payload(signed(MAX_SIGNATURES).as_bytes()).unwrap(),
            Some(payload.clone())
        );
        let e = signed_payload(signed(MAX_SIGNATURES + 1).as_bytes()).unwrap_err();
        assert!(e.message.contains("17 signatures"), "{e}");
    }
}
