//! Tasks and events: the small serialisable messages between the coordinator and the
//! workers. A task names its stores by reference only and never carries credentials.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{Error, FailureClass};
use crate::manifest::{Descriptor, RawManifest};
use crate::store::RepoRef;

pub type JobId = String;
pub type TaskId = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TaskKind {
    Blob,
    Manifest,
    Index,
    Assemble,
    Sign,
    Scan,
    Check,
}

impl TaskKind {
    /// The subject suffix on the bus (`hangar.task.<kind>`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Blob => "blob",
            Self::Manifest => "manifest",
            Self::Index => "index",
            Self::Assemble => "assemble",
            Self::Sign => "sign",
            Self::Scan => "scan",
            Self::Check => "check",
        }
    }

    /// What makes a `hangar-worker` take tasks of this kind.
    pub fn how_to_take(self) -> &'static str {
        match self {
            Self::Blob => "--blob-concurrency above 0",
            Self::Manifest => "--manifest-concurrency above 0",
            Self::Index => "--index-concurrency above 0",
            Self::Assemble => "--cache and --assemble-concurrency above 0",
            Self::Sign => "--sign-key naming the job's key, and --sign-concurrency above 0",
            Self::Scan => "--scan-concurrency above 0",
            Self::Check => "--check-concurrency above 0",
        }
    }
}

/// Ensure blob `desc` is in `dest`: skip if present, mount from a candidate on the same
/// registry, else stream it from `source`, verified.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BlobTask {
    pub desc: Descriptor,
    pub source: RepoRef,
    pub dest: RepoRef,
    #[serde(default)]
    pub mount_from: Vec<RepoRef>,
    /// The blob's bytes when the planner already read them (a small config): pushed from
    /// here, verified, instead of fetching the source a second time.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_b64")]
    pub inline: Option<Bytes>,
}

/// Push manifest bytes unchanged (digest preserved) to `dest` at `reference`
/// (its digest, or a tag).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManifestTask {
    pub dest: RepoRef,
    pub reference: String,
    pub manifest: ManifestBody,
}

/// Write the destination index at `tag`: the source index unchanged when it is complete
/// and nothing else lives under the tag, otherwise built and merged by Hangar's rules.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IndexTask {
    pub dest: RepoRef,
    pub tag: String,
    pub added: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_index: Option<ManifestBody>,
    pub overwrite: bool,
    /// The tag held nothing when the run looked at it, and no other image of the run
    /// writes it: the index goes up without the tag being read again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub absent: bool,
}

/// Write an archive (or one volume) from blobs in the worker's cache. The images to write
/// are a document in the cache (`images`), since a list of hundreds outgrows a message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AssembleTask {
    /// Where the archive goes: `s3://bucket/key.zip?…`, or a path on the worker.
    pub output: String,
    /// The archive whose entries come first (`sync`), re-read at write time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    /// The cache key of the index entries to write (JSON).
    pub images: String,
    /// Their bytes' digest: the bucket is every worker's to write, and a plan rewritten
    /// there would put other images into the archive under the names asked for.
    pub images_digest: Digest,
}

/// Sign `digest` in `dest` with the worker's key named `key` (the worker maps names to its
/// own key files; no key material or path travels).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignTask {
    pub dest: RepoRef,
    pub digest: Digest,
    /// The repository the signature names (cosign's `docker-reference`).
    pub identity: String,
    pub key: String,
    /// Set when `digest` is an index a worker wrote and reported: the entries the job
    /// planned for it, which bound what the key will vouch for ([`crate::sign::vouch`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_of: Option<Vec<Descriptor>>,
}

/// Read the package inventory of one platform image (its layers, from the worker's cache
/// when there) and keep it in the cache by manifest digest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScanTask {
    /// Where the layers are (the destination just written, or the cache for a save).
    pub store: RepoRef,
    pub manifest: ManifestBody,
}

/// A read-only check of one image where it is; its verdict comes back as the outcome.
/// The commands that validate (`mirror validate`, `sign validate`) plan these and report.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "check", rename_all = "kebab-case")]
pub enum CheckTask {
    /// The manifest at `reference` in `store` is `whole`, or lists every digest of
    /// `expect` (a mirrored image holds what its source selected).
    Contains {
        store: RepoRef,
        reference: String,
        expect: Vec<Descriptor>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        whole: Option<Digest>,
    },
    /// Every manifest of `expect` is in `store` by its digest (an archive that should
    /// hold what a list's sources select: `save validate`).
    Present {
        store: RepoRef,
        expect: Vec<Descriptor>,
    },
    /// A cosign signature of `digest` in `store` verifies with `public_key` (PEM: a public
    /// key is no secret); with `identity`, its payload must name that repository.
    Signature {
        store: RepoRef,
        digest: Digest,
        public_key: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        identity: Option<String>,
    },
}

/// What a check found: one type for every validate and verify.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "kebab-case")]
pub enum Verdict {
    /// As expected; a verified signature's payload.
    Pass {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        payload: Option<String>,
    },
    /// Nothing there to judge (no signature): a warning, not a failure.
    Absent,
    /// Not as expected, and why.
    Fail { why: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Task {
    Blob(Box<BlobTask>),
    Manifest(ManifestTask),
    Index(IndexTask),
    Assemble(AssembleTask),
    Sign(SignTask),
    Scan(ScanTask),
    Check(CheckTask),
}

impl Task {
    /// A task that reads no blob from a source and that an image waits on to finish: a
    /// manifest, an index, a signature, a mount (or a blob whose few bytes the task
    /// carries). The embedded queue serves these before copies.
    pub fn is_quick(&self) -> bool {
        match self {
            Self::Blob(b) => !b.mount_from.is_empty() || b.inline.is_some(),
            Self::Manifest(_) | Self::Index(_) | Self::Sign(_) => true,
            Self::Assemble(_) | Self::Scan(_) | Self::Check(_) => false,
        }
    }

    pub fn kind(&self) -> TaskKind {
        match self {
            Self::Blob(_) => TaskKind::Blob,
            Self::Manifest(_) => TaskKind::Manifest,
            Self::Index(_) => TaskKind::Index,
            Self::Assemble(_) => TaskKind::Assemble,
            Self::Sign(_) => TaskKind::Sign,
            Self::Scan(_) => TaskKind::Scan,
            Self::Check(_) => TaskKind::Check,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskEnvelope {
    pub job: JobId,
    pub id: TaskId,
    /// A random number the coordinator gives each task it publishes and every event about
    /// it must carry back ([`Event::about`]): task ids are a count, and without it any
    /// worker could report on tasks it was never given (fail images, pass checks, name the
    /// digest a sign task signs).
    #[serde(default)]
    pub nonce: u64,
    /// Stable across re-publication: the de-duplication key on the bus.
    pub key: String,
    /// W3C `traceparent` of the job's trace, when tracing is on. On NATS it travels in the
    /// message's `traceparent` header, not in the body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
    pub task: Task,
}

/// Manifest bytes for transport (base64 in JSON, so the bytes stay exact).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestBody {
    pub media_type: String,
    pub digest: Digest,
    #[serde(with = "b64")]
    pub bytes: Bytes,
}

impl From<&RawManifest> for ManifestBody {
    fn from(m: &RawManifest) -> Self {
        Self {
            media_type: m.media_type.clone(),
            digest: m.digest.clone(),
            bytes: m.bytes.clone(),
        }
    }
}

impl ManifestBody {
    /// The manifest, once its bytes are checked against its digest: a task's body is a
    /// message's words, and the digest is what outcomes report and indexes name.
    /// (A signed schema 1 manifest is named by its payload, as `RawManifest::from_bytes`
    /// works it out.)
    pub fn to_raw(&self) -> crate::error::Result<RawManifest> {
        let checked = RawManifest::from_bytes(self.bytes.clone(), Some(&self.digest))
            .map_err(|e| e.context("a task's manifest"))?;
        Ok(RawManifest {
            media_type: self.media_type.clone(),
            ..checked
        })
    }
}

mod opt_b64 {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &Option<Bytes>, s: S) -> Result<S::Ok, S::Error> {
        match b {
            Some(b) => s.serialize_str(&STANDARD.encode(b)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Bytes>, D::Error> {
        let s = Option::<String>::deserialize(d)?;
        s.map(|s| {
            STANDARD
                .decode(s)
                .map(Bytes::from)
                .map_err(serde::de::Error::custom)
        })
        .transpose()
    }
}

mod b64 {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(b))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        let s = String::deserialize(d)?;
        STANDARD
            .decode(s)
            .map(Bytes::from)
            .map_err(serde::de::Error::custom)
    }
}

/// What a handler did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum Outcome {
    /// `cached`: served from the blob cache, no upstream fetch.
    BlobCopied {
        bytes: u64,
        #[serde(default)]
        cached: bool,
    },
    BlobPresent,
    BlobMounted {
        from: String,
    },
    ManifestPushed,
    IndexPushed {
        digest: Digest,
        preserved: bool,
    },
    IndexUnchanged {
        digest: Digest,
    },
    Assembled {
        images: usize,
        entries: usize,
        bytes: u64,
    },
    /// `added` is false when this key's signature was already there.
    Signed {
        added: bool,
    },
    /// The inventory travels back (tens of KB); matching happens where the database is.
    Scanned {
        inventory: Box<crate::scan::Inventory>,
        cached: bool,
    },
    Checked {
        verdict: Verdict,
    },
}

impl Outcome {
    /// Whether this answers a task of `kind`. A worker answering otherwise (an index write
    /// with "manifest pushed", which would skip the index's signature) did not do the task
    /// it was given, and the task fails.
    pub fn answers(&self, kind: TaskKind) -> bool {
        let of = match self {
            Self::BlobCopied { .. } | Self::BlobPresent | Self::BlobMounted { .. } => {
                TaskKind::Blob
            }
            Self::ManifestPushed => TaskKind::Manifest,
            Self::IndexPushed { .. } | Self::IndexUnchanged { .. } => TaskKind::Index,
            Self::Assembled { .. } => TaskKind::Assemble,
            Self::Signed { .. } => TaskKind::Sign,
            Self::Scanned { .. } => TaskKind::Scan,
            Self::Checked { .. } => TaskKind::Check,
        };
        of == kind
    }

    /// The outcome's name on the bus, for errors (without what it carries).
    pub fn name(&self) -> &'static str {
        match self {
            Self::BlobCopied { .. } => "blob-copied",
            Self::BlobPresent => "blob-present",
            Self::BlobMounted { .. } => "blob-mounted",
            Self::ManifestPushed => "manifest-pushed",
            Self::IndexPushed { .. } => "index-pushed",
            Self::IndexUnchanged { .. } => "index-unchanged",
            Self::Assembled { .. } => "assembled",
            Self::Signed { .. } => "signed",
            Self::Scanned { .. } => "scanned",
            Self::Checked { .. } => "checked",
        }
    }

    /// A task of `kind` answered with this: the task failed (a worker that did something
    /// else, or nothing).
    pub fn mismatch(&self, kind: TaskKind) -> crate::error::Error {
        crate::error::Error::internal(format!(
            "a {} task was answered {:?}, which is no answer to it",
            kind.as_str(),
            self.name()
        ))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum EventKind {
    Done {
        outcome: Outcome,
    },
    /// `last` is false when the task will be delivered again.
    Failed {
        class: FailureClass,
        message: String,
        attempt: u32,
        last: bool,
    },
    /// A worker took the task (each delivery); said best-effort, for the job's view of
    /// what is in flight.
    Started {
        worker: String,
        attempt: u32,
    },
    /// The task waits on something outside it (a blob lease held by another worker).
    Waiting {
        on: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    pub job: JobId,
    pub task: TaskId,
    /// The task's [`TaskEnvelope::nonce`]: an event without the right one is not about a
    /// task its sender was given, and is ignored.
    #[serde(default)]
    pub nonce: u64,
    pub kind: EventKind,
}

/// A task's nonce: random, so that it cannot be guessed from the tasks one was given.
pub fn new_nonce() -> u64 {
    rand::random()
}

impl Event {
    /// An event about the task `env` carries.
    pub fn about(env: &TaskEnvelope, kind: EventKind) -> Self {
        Self {
            job: env.job.clone(),
            task: env.id,
            nonce: env.nonce,
            kind,
        }
    }

    pub fn done(env: &TaskEnvelope, outcome: Outcome) -> Self {
        Self::about(env, EventKind::Done { outcome })
    }

    pub fn started(env: &TaskEnvelope, worker: &str, attempt: u32) -> Self {
        Self::about(
            env,
            EventKind::Started {
                worker: worker.to_owned(),
                attempt,
            },
        )
    }

    pub fn failed(env: &TaskEnvelope, err: &Error, attempt: u32, last: bool) -> Self {
        Self::about(
            env,
            EventKind::Failed {
                class: err.class,
                message: err.message.clone(),
                attempt,
                last,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_bytes_survive_json_exactly() {
        let raw = RawManifest::from_bytes(
            Bytes::from_static(b"{\"schemaVersion\":2,\"manifests\":[]}  \n"),
            None,
        )
        .unwrap();
        let body = ManifestBody::from(&raw);
        let json = serde_json::to_string(&body).unwrap();
        let back: ManifestBody = serde_json::from_str(&json).unwrap();
        assert_eq!(back.to_raw().unwrap(), raw);
        let forged = ManifestBody {
            bytes: Bytes::from_static(b"{}"),
            ..back
        };
        let e = forged.to_raw().unwrap_err();
        assert_eq!(e.class, crate::error::FailureClass::DigestMismatch);
    }
}
