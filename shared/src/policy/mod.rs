//! containers' signature policy (`policy.json`, containers-policy.json(5)), as Hangar
//! honours it through containers/image: read from `$HOME/.config/containers/policy.json`,
//! else `/etc/containers/policy.json`; the requirements of the most specific scope that
//! matches the source image apply, and every one of them must be satisfied before any of
//! the image is copied.
//!
//! Evaluated here: `insecureAcceptAnything`, `reject` and `sigstoreSigned` with public keys
//! (`keyPath`, `keyPaths`, `keyData`, `keyDatas`; ECDSA P-256 as cosign makes them),
//! checked against the cosign signatures (`sha256-<hex>.sig`) of the source's top
//! manifest with [`crate::sign::cosign::verify`], with the `signedIdentity` rules
//! `matchRepoDigestOrExact` (the default), `matchExact`, `matchRepository`,
//! `exactReference` and `exactRepository`. `signedBy` (GPG), `remapIdentity` and keyless
//! or Rekor-backed `sigstoreSigned` are parsed and refused, by name, for the images whose
//! scope requires them. An unknown requirement type or field makes the whole file
//! invalid, as containers/image's strict parser does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;

use crate::error::{Error, FailureClass, Result};
use crate::reference::ImageRef;
use crate::sign::PublicKey;
use crate::sign::cosign;
use crate::store::ImageStore;

mod name;
mod parse;
mod verify;

use name::DockerName;
use parse::{only_fields, requirements, validate_docker_scope};
use verify::{signed, top_digest};

/// Under `$HOME`.
pub const USER_POLICY: &str = ".config/containers/policy.json";
pub const SYSTEM_POLICY: &str = "/etc/containers/policy.json";

/// Where containers/image reads the policy: the user's file when it exists, else the
/// system's; `None` when neither does.
pub fn default_path() -> Option<PathBuf> {
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty());
    default_path_in(home.as_deref().map(Path::new), Path::new(SYSTEM_POLICY))
}

fn default_path_in(home: Option<&Path>, system: &Path) -> Option<PathBuf> {
    home.map(|h| h.join(USER_POLICY))
        .into_iter()
        .chain([system.to_path_buf()])
        .find(|p| p.exists())
}

/// What the signature must claim about the image (`signedIdentity`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Identity {
    MatchRepoDigestOrExact,
    MatchExact,
    MatchRepository,
    ExactReference(DockerName),
    ExactRepository(DockerName),
}

impl Identity {
    fn describe(&self) -> String {
        match self {
            Self::MatchRepoDigestOrExact => "matchRepoDigestOrExact".into(),
            Self::MatchExact => "matchExact".into(),
            Self::MatchRepository => "matchRepository".into(),
            Self::ExactReference(r) => format!("exactReference {r}"),
            Self::ExactRepository(r) => format!("exactRepository {}", r.name),
        }
    }

    /// containers/image's `matchesDockerReference`: whether a signature claiming
    /// `signed` is accepted for the image known as `intended`.
    fn matches(&self, intended: &DockerName, signed: &str) -> bool {
        let Some(signed) = DockerName::parse(signed) else {
            return false;
        };
        match self {
            Self::MatchRepository => signed.name == intended.name,
            Self::ExactRepository(r) => signed.name == r.name,
            Self::MatchExact => {
                !signed.is_name_only() && !intended.is_name_only() && signed == *intended
            }
            Self::ExactReference(r) => !signed.is_name_only() && signed == *r,
            Self::MatchRepoDigestOrExact => {
                if signed.is_name_only() {
                    false
                } else if intended.tag.is_some() {
                    signed == *intended
                } else {
                    intended.digest.is_some() && signed.name == intended.name
                }
            }
        }
    }

    /// The identity a signature most likely carries when it is accepted, for
    /// [`cosign::verify`] to look for among several signatures by the same key.
    fn hint(&self, image: &ImageRef, intended: &DockerName) -> Option<String> {
        match self {
            Self::MatchRepository => Some(cosign::docker_reference(
                &image.registry,
                &image.repository(),
            )),
            Self::ExactRepository(r) => Some(r.name.clone()),
            Self::ExactReference(r) => Some(r.to_string()),
            Self::MatchExact => Some(intended.to_string()),
            Self::MatchRepoDigestOrExact => intended.tag.is_some().then(|| intended.to_string()),
        }
    }
}

/// Where a `sigstoreSigned` requirement's public keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum KeySource {
    Path(PathBuf),
    /// Base64 of the PEM text; `n` is its place in `keyData`/`keyDatas`.
    Data(String, usize),
}

impl KeySource {
    fn load(&self) -> std::result::Result<PublicKey, String> {
        match self {
            Self::Path(p) => {
                let what = format!("keyPath {}", p.display());
                let text = crate::local_file::read_text(p, crate::local_file::CONFIG)
                    .map_err(|e| format!("{what}: {e}"))?;
                PublicKey::from_pem(&text, &what).map_err(|e| e.message)
            }
            Self::Data(b64, n) => {
                let what = format!("keyData #{}", n + 1);
                let raw = STANDARD
                    .decode(b64.trim())
                    .map_err(|e| format!("{what}: not base64: {e}"))?;
                let text = String::from_utf8(raw).map_err(|_| format!("{what}: not PEM text"))?;
                PublicKey::from_pem(&text, &what).map_err(|e| e.message)
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Rule {
    Accept,
    Reject,
    Sigstore {
        keys: Vec<KeySource>,
        identity: Identity,
    },
    /// A requirement containers/image knows and this project cannot evaluate.
    Unsupported(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Requirement {
    rule: Rule,
    /// For messages: the requirement as the file states it.
    text: String,
}

/// A parsed `policy.json`.
#[derive(Debug, Clone)]
pub struct Policy {
    path: PathBuf,
    default: Vec<Requirement>,
    /// Transport → scope (`""` for the transport's default) → requirements.
    transports: BTreeMap<String, BTreeMap<String, Vec<Requirement>>>,
}

/// The requirements that apply to one image, and where they were found.
struct Scoped<'a> {
    label: String,
    requirements: &'a [Requirement],
}

impl Policy {
    /// The policy containers/image would use ([`default_path`]); `None` without one.
    pub fn load_default() -> Result<Option<Self>> {
        default_path().map(|p| Self::load(&p)).transpose()
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = crate::local_file::read_text(path, crate::local_file::CONFIG)
            .map_err(|e| Error::invalid(format!("policy {}: {e}", path.display())))?;
        Self::parse(path, &text)
    }

    /// Parses `text`, read from `path` (named in every message).
    pub fn parse(path: &Path, text: &str) -> Result<Self> {
        let bad = |why: String| Error::invalid(format!("policy {}: {why}", path.display()));
        let doc: Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        let top = doc
            .as_object()
            .ok_or_else(|| bad("not a JSON object".into()))?;
        only_fields(top, &["default", "transports"], "the policy").map_err(bad)?;
        let default = requirements(
            top.get("default")
                .ok_or_else(|| bad("the \"default\" policy is missing".into()))?,
            "default",
        )
        .map_err(bad)?;
        let mut transports = BTreeMap::new();
        if let Some(t) = top.get("transports").filter(|t| !t.is_null()) {
            let t = t
                .as_object()
                .ok_or_else(|| bad("\"transports\" is not an object".into()))?;
            for (transport, scopes) in t {
                let scopes = scopes
                    .as_object()
                    .ok_or_else(|| bad(format!("transports.{transport} is not an object")))?;
                let mut parsed = BTreeMap::new();
                for (scope, list) in scopes {
                    let label = format!("transports.{transport}[{scope:?}]");
                    if transport == "docker" && !scope.is_empty() {
                        validate_docker_scope(scope)
                            .map_err(|why| bad(format!("{label}: {why}")))?;
                    }
                    parsed.insert(scope.clone(), requirements(list, &label).map_err(bad)?);
                }
                transports.insert(transport.clone(), parsed);
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            default,
            transports,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The most specific scope of the `docker` transport matching `image`, as
    /// containers/image looks it up: the reference with its tag or digest, the
    /// repository, each parent namespace, the registry `host[:port]`, wildcarded
    /// parent domains (`*.example.com`), the transport's `""`, then `default`.
    fn docker_scope(&self, image: &ImageRef) -> Scoped<'_> {
        let scopes = self.transports.get("docker");
        if let (Some(scopes), Some(intended)) = (scopes, DockerName::parse(&image.to_string())) {
            for candidate in intended.scopes() {
                if let Some(r) = scopes.get(&candidate) {
                    return Scoped {
                        label: format!("transports.docker[{candidate:?}]"),
                        requirements: r,
                    };
                }
            }
        }
        self.transport_default("docker")
    }

    fn transport_default(&self, transport: &str) -> Scoped<'_> {
        match self.transports.get(transport).and_then(|s| s.get("")) {
            Some(r) => Scoped {
                label: format!("transports.{transport}[\"\"]"),
                requirements: r,
            },
            None => Scoped {
                label: "default".into(),
                requirements: &self.default,
            },
        }
    }

    fn refusal(&self, image: &ImageRef, scope: &Scoped, req: &Requirement, reason: &str) -> Error {
        Error::new(
            FailureClass::InvalidInput,
            format!(
                "{image}: Source image rejected: {reason} (policy {}, {}: {})",
                self.path.display(),
                scope.label,
                req.text
            ),
        )
    }

    fn unsupported(&self, image: &ImageRef, scope: &Scoped, what: &str) -> Error {
        Error::invalid(format!(
            "{image}: policy {}, {}: {what} is not supported by hangar-coord, so the image is not \
             copied (use sigstoreSigned with public keys, or --insecure-policy)",
            self.path.display(),
            scope.label,
        ))
    }

    /// Whether `image`, read from `store` (its registry), may be copied: `Ok` when every
    /// requirement of its scope is satisfied; otherwise the first refusal, naming the
    /// image, this file, the scope and the requirement. Registry errors pass through.
    pub async fn check(&self, store: &dyn ImageStore, image: &ImageRef) -> Result<()> {
        self.check_at(store, image, image).await
    }

    /// [`Self::check`] for `image` read from elsewhere (a `registries.conf` mirror): the
    /// scope and the identity are the image's own name, the manifest and signatures are
    /// read at `read_at` in `store`.
    pub async fn check_at(
        &self,
        store: &dyn ImageStore,
        read_at: &ImageRef,
        image: &ImageRef,
    ) -> Result<()> {
        let scope = self.docker_scope(image);
        let mut digest = image.digest.clone();
        for req in scope.requirements {
            match &req.rule {
                Rule::Accept => {}
                Rule::Reject => {
                    let reason = format!("Running image docker://{image} is rejected by policy.");
                    return Err(self.refusal(image, &scope, req, &reason));
                }
                Rule::Unsupported(what) => return Err(self.unsupported(image, &scope, what)),
                Rule::Sigstore { keys, identity } => {
                    let d = match &digest {
                        Some(d) => d.clone(),
                        None => top_digest(store, read_at).await?,
                    };
                    digest = Some(d.clone());
                    let repo = read_at.repository();
                    if let Err(reason) = signed(store, &repo, image, &d, keys, identity).await? {
                        return Err(self.refusal(image, &scope, req, &reason));
                    }
                }
            }
        }
        Ok(())
    }

    /// The same for an image loaded from an archive: containers/image copies it from an
    /// `oci:` layout, so `transports.oci[""]` or `default` applies, and an archive carries
    /// no sigstore signatures to satisfy `sigstoreSigned`.
    pub fn check_archived(&self, image: &ImageRef) -> Result<()> {
        let scope = self.transport_default("oci");
        for req in scope.requirements {
            match &req.rule {
                Rule::Accept => {}
                Rule::Reject => {
                    let reason =
                        format!("Running image {image} (from the archive) is rejected by policy.");
                    return Err(self.refusal(image, &scope, req, &reason));
                }
                Rule::Unsupported(what) => return Err(self.unsupported(image, &scope, what)),
                Rule::Sigstore { .. } => {
                    let reason = "A signature was required, but no signature exists";
                    return Err(self.refusal(image, &scope, req, reason));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(text: &str) -> Policy {
        Policy::parse(Path::new("/p/policy.json"), text).unwrap()
    }

    fn scope_of(p: &Policy, image: &str) -> String {
        p.docker_scope(&ImageRef::parse(image).unwrap()).label
    }

    #[test]
    fn the_most_specific_scope_wins() {
        let p = policy(
            r#"{"default":[{"type":"reject"}],"transports":{"docker":{
                "":[{"type":"insecureAcceptAnything"}],
                "reg.io:5000":[{"type":"reject"}],
                "reg.io:5000/team":[{"type":"reject"}],
                "reg.io:5000/team/app":[{"type":"reject"}],
                "reg.io:5000/team/app:v1":[{"type":"reject"}],
                "*.example.com":[{"type":"reject"}],
                "docker.io/library/busybox":[{"type":"reject"}]},
              "docker-daemon":{"":[{"type":"insecureAcceptAnything"}]}}}"#,
        );
        assert_eq!(
            scope_of(&p, "reg.io:5000/team/app:v1"),
            r#"transports.docker["reg.io:5000/team/app:v1"]"#
        );
        assert_eq!(
            scope_of(&p, "reg.io:5000/team/app:v2"),
            r#"transports.docker["reg.io:5000/team/app"]"#
        );
        assert_eq!(
            scope_of(&p, "reg.io:5000/team/other/x:1"),
            r#"transports.docker["reg.io:5000/team"]"#
        );
        assert_eq!(
            scope_of(&p, "reg.io:5000/x/y"),
            r#"transports.docker["reg.io:5000"]"#
        );
        assert_eq!(
            scope_of(&p, "a.b.example.com/x/y"),
            r#"transports.docker["*.example.com"]"#
        );
        assert_eq!(
            scope_of(&p, "busybox"),
            r#"transports.docker["docker.io/library/busybox"]"#
        );
        assert_eq!(scope_of(&p, "other.io/x/y"), r#"transports.docker[""]"#);
        let q = policy(r#"{"default":[{"type":"reject"}]}"#);
        assert_eq!(scope_of(&q, "other.io/x/y"), "default");
    }

    #[test]
    fn strict_parsing() {
        let bad = |t: &str| Policy::parse(Path::new("/p.json"), t).unwrap_err().message;
        assert!(bad(r#"{}"#).contains("\"default\" policy is missing"));
        assert!(bad(r#"{"default":[]}"#).contains("must not be empty"));
        assert!(
            bad(r#"{"default":[{"type":"nope"}]}"#)
                .contains("unknown policy requirement type \"nope\"")
        );
        assert!(bad(r#"{"default":[{"type":"reject","x":1}]}"#).contains("unknown field \"x\""));
        assert!(bad(r#"{"default":[{"type":"reject"}],"transports":{"docker":{"busybox":[{"type":"reject"}]}}}"#)
            .contains("not a fully expanded reference"));
        assert!(
            bad(r#"{"default":[{"type":"sigstoreSigned"}]}"#).contains("exactly one of keyPath")
        );
        assert!(
            bad(r#"{"default":[{"type":"sigstoreSigned","keyPath":"/k","keyData":"x"}]}"#)
                .contains("exactly one of keyPath")
        );
        let p = policy(
            r#"{"default":[{"type":"signedBy","keyType":"GPGKeys","keyPath":"/k.gpg"}],
                "transports":{"docker":{"reg.io":[{"type":"sigstoreSigned","keyPath":"/k",
                "signedIdentity":{"type":"remapIdentity","prefix":"a.io","signedPrefix":"b.io"}}]}}}"#,
        );
        assert!(matches!(&p.default[0].rule, Rule::Unsupported(w) if w.contains("signedBy")));
        let scoped = p.docker_scope(&ImageRef::parse("reg.io/a/b").unwrap());
        assert!(
            matches!(&scoped.requirements[0].rule, Rule::Unsupported(w) if w.contains("remapIdentity"))
        );
    }

    #[test]
    fn identities_as_containers_image_matches_them() {
        let intended_tag = DockerName::parse("reg.io/team/app:v1").unwrap();
        let intended_digest =
            DockerName::parse(&format!("reg.io/team/app@sha256:{}", "a".repeat(64))).unwrap();
        let digest_ref = format!("reg.io/team/app@sha256:{}", "b".repeat(64));
        use Identity::*;
        // cosign's payloads name only the repository.
        assert!(!MatchRepoDigestOrExact.matches(&intended_tag, "reg.io/team/app"));
        assert!(!MatchRepoDigestOrExact.matches(&intended_digest, "reg.io/team/app"));
        assert!(MatchRepoDigestOrExact.matches(&intended_tag, "reg.io/team/app:v1"));
        assert!(!MatchRepoDigestOrExact.matches(&intended_tag, "reg.io/team/app:v2"));
        assert!(MatchRepoDigestOrExact.matches(&intended_digest, "reg.io/team/app:v2"));
        assert!(MatchRepoDigestOrExact.matches(&intended_digest, &digest_ref));
        assert!(!MatchExact.matches(&intended_digest, "reg.io/team/app:v2"));
        assert!(MatchExact.matches(&intended_tag, "reg.io/team/app:v1"));
        assert!(MatchRepository.matches(&intended_tag, "reg.io/team/app"));
        assert!(MatchRepository.matches(&intended_digest, "reg.io/team/app:v9"));
        assert!(!MatchRepository.matches(&intended_tag, "reg.io/team/other"));
        let hub = DockerName::parse("docker.io/library/nginx:1").unwrap();
        assert!(MatchRepository.matches(&hub, "index.docker.io/library/nginx"));
        assert!(MatchRepository.matches(&hub, "nginx"));
        let elsewhere = DockerName::parse("vendor.io/app").unwrap();
        assert!(ExactRepository(elsewhere.clone()).matches(&intended_tag, "vendor.io/app"));
        assert!(!ExactRepository(elsewhere).matches(&intended_tag, "reg.io/team/app"));
        let exact = DockerName::parse("vendor.io/app:1").unwrap();
        assert!(ExactReference(exact.clone()).matches(&intended_tag, "vendor.io/app:1"));
        assert!(!ExactReference(exact).matches(&intended_tag, "vendor.io/app"));
    }

    #[test]
    fn user_policy_before_the_systems() {
        let home = tempfile::tempdir().unwrap();
        let system = home.path().join("system.json");
        assert_eq!(default_path_in(Some(home.path()), &system), None);
        std::fs::write(&system, "{}").unwrap();
        assert_eq!(
            default_path_in(Some(home.path()), &system),
            Some(system.clone())
        );
        let user = home.path().join(USER_POLICY);
        std::fs::create_dir_all(user.parent().unwrap()).unwrap();
        std::fs::write(&user, "{}").unwrap();
        assert_eq!(default_path_in(Some(home.path()), &system), Some(user));
    }
}
