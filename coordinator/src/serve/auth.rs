//! Who may use the coordinator's API, and for what.
//!
//! `serve --api-tokens FILE` names the callers: per bearer token its name, the SHA-256 of
//! the token (the file never holds a token itself, so reading it grants nothing), a role
//! and a policy. A request without a valid token is 401 on every route but `/healthz` and
//! `/metrics`; a request outside its token's role or policy is 403 naming the rule.
//!
//! ```yaml
//! tokens:
//!   - name: nightly
//!     sha256: 5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8
//!     role: submit            # read | submit | admin
//!     policy:
//!       sources: ["docker.io/**", "quay.io/rancher/*"]
//!       destinations: ["harbor.local:5000/mirror/**"]
//!       sign_keys: [release]
//!       overwrite: false
//! ```
//!
//! A policy list that is left out allows nothing for `read` and `submit` tokens, and
//! anything for `admin` tokens (an operator's token should not need a policy to work).

use std::path::Path;
use std::sync::Arc;

use hangar_shared::glob::{Glob, any_matches};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

use crate::cli::MirrorArgs;
use crate::engine::planner::ImageJob;

#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("reading API token file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("API token file {path}: {message}")]
    Invalid { path: String, message: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read jobs and their status.
    Read,
    /// Also submit jobs within the policy, and cancel its own.
    Submit,
    /// Also cancel anyone's job; no policy needed.
    Admin,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Submit => "submit",
            Role::Admin => "admin",
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// `registry/repository` globs a job may read from.
    pub sources: Option<Vec<Glob>>,
    /// `registry/repository` globs a job may write to.
    pub destinations: Option<Vec<Glob>>,
    /// Names of the workers' signing keys a job may sign with.
    pub sign_keys: Option<Vec<String>>,
    /// Whether a job may replace a destination tag's index (`overwrite`) instead of merging.
    #[serde(default)]
    pub overwrite: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    name: String,
    sha256: String,
    role: Role,
    #[serde(default)]
    policy: Policy,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    tokens: Vec<TokenEntry>,
}

/// The identity a request was made with.
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: String,
    pub role: Role,
    policy: Policy,
}

impl Caller {
    /// The caller of a coordinator that checks no tokens (loopback or `--insecure-no-auth`).
    pub fn unauthenticated() -> Self {
        Self {
            name: "anonymous".into(),
            role: Role::Admin,
            policy: Policy::default(),
        }
    }

    /// The owner of a stored job whose token is no longer in the file: allowed nothing.
    pub fn nobody() -> Self {
        Self {
            name: "(a token no longer in the token file)".into(),
            role: Role::Read,
            policy: Policy::default(),
        }
    }

    /// Refuses, naming the rule, what the caller's role does not allow.
    pub fn require(&self, role: Role, what: &str) -> Result<(), String> {
        if self.role >= role {
            Ok(())
        } else {
            Err(format!(
                "token {:?} has role {}; {what} needs role {}",
                self.name,
                self.role.as_str(),
                role.as_str()
            ))
        }
    }

    /// Whether this caller may cancel a job submitted by `owner`.
    pub fn may_cancel(&self, owner: Option<&str>) -> Result<(), String> {
        self.require(Role::Submit, "cancelling a job")?;
        if self.role == Role::Admin || owner == Some(self.name.as_str()) {
            Ok(())
        } else {
            Err(format!(
                "token {:?} may cancel only its own jobs (this one was submitted by {})",
                self.name,
                owner.unwrap_or("another caller")
            ))
        }
    }

    /// Whether this caller may read the per-image outcomes of a job submitted by `owner`.
    pub fn may_read_results(&self, owner: Option<&str>) -> Result<(), String> {
        self.require(Role::Read, "reading a job")?;
        if self.role == Role::Admin || owner == Some(self.name.as_str()) {
            Ok(())
        } else {
            Err(format!(
                "token {:?} may read the results only of its own jobs (this one was submitted by {})",
                self.name,
                owner.unwrap_or("another caller")
            ))
        }
    }

    /// Checks a job against the caller's role and policy: every source and destination
    /// repository, the signing key, overwrite.
    pub fn authorise_job(&self, images: &[ImageJob], args: &MirrorArgs) -> Result<(), String> {
        let repo =
            |r: &hangar_shared::reference::ImageRef| format!("{}/{}", r.registry, r.repository());
        let reads: Vec<String> = images.iter().map(|i| repo(&i.name.source)).collect();
        let writes: Vec<String> = images.iter().map(|i| repo(&i.name.dest)).collect();
        self.authorise_images(&reads, &writes, args.sign_key.as_deref())?;
        self.authorise_overwrite(args.overwrite)
    }

    /// Replacing destination indexes (`--overwrite`) is allowed by `policy.overwrite`.
    pub fn authorise_overwrite(&self, overwrite: bool) -> Result<(), String> {
        let admin = self.role == Role::Admin;
        if overwrite && !self.policy.overwrite.unwrap_or(admin) {
            return Err(format!(
                "token {:?} may not overwrite destination indexes: policy.overwrite is not true",
                self.name
            ));
        }
        Ok(())
    }

    /// A job reading the repositories `reads` (`registry/repository`), writing `writes`
    /// and signing with `sign_key`, against this caller's role and policy.
    pub fn authorise_images(
        &self,
        reads: &[String],
        writes: &[String],
        sign_key: Option<&str>,
    ) -> Result<(), String> {
        self.require(Role::Submit, "submitting a job")?;
        let admin = self.role == Role::Admin;
        let rule = |list: &Option<Vec<Glob>>, key: &str, side: &str, repo: &str| {
            let allowed = match list {
                None if admin => return Ok(()),
                None => &[][..],
                Some(globs) => globs.as_slice(),
            };
            if any_matches(allowed, repo) {
                return Ok(());
            }
            let globs: Vec<&str> = allowed.iter().map(Glob::as_str).collect();
            Err(format!(
                "token {:?} may not {side} {repo}: policy.{key} allows only [{}]",
                self.name,
                globs.join(", ")
            ))
        };
        for src in reads {
            rule(&self.policy.sources, "sources", "read from", src)?;
        }
        for dst in writes {
            rule(&self.policy.destinations, "destinations", "write to", dst)?;
        }
        if let Some(key) = sign_key {
            let ok = match &self.policy.sign_keys {
                None => admin,
                Some(keys) => keys.iter().any(|k| k == key),
            };
            if !ok {
                return Err(format!(
                    "token {:?} may not sign with key {key:?}: policy.sign_keys does not name it",
                    self.name
                ));
            }
        }
        Ok(())
    }
}

/// The token file, loaded.
#[derive(Debug)]
pub struct Tokens {
    entries: Vec<(Arc<Caller>, [u8; 32])>,
}

impl Tokens {
    pub fn load(path: &Path) -> Result<Self, TokenFileError> {
        let text = hangar_shared::local_file::read_text(path, hangar_shared::local_file::CONFIG)
            .map_err(|source| TokenFileError::Read {
                path: path.display().to_string(),
                source,
            })?;
        Self::parse(&text).map_err(|message| TokenFileError::Invalid {
            path: path.display().to_string(),
            message,
        })
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let file: TokenFile = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
        let mut names = std::collections::HashSet::new();
        let mut entries = Vec::new();
        for (i, t) in file.tokens.into_iter().enumerate() {
            let at = format!("token {} ({:?})", i + 1, t.name);
            if t.name.is_empty() || !names.insert(t.name.clone()) {
                return Err(format!("{at}: every token needs a unique name"));
            }
            let mut hash = [0u8; 32];
            hex::decode_to_slice(t.sha256.trim(), &mut hash).map_err(|_| {
                format!("{at}: sha256 must be the 64 hex digits of the token's SHA-256")
            })?;
            entries.push((
                Arc::new(Caller {
                    name: t.name,
                    role: t.role,
                    policy: t.policy,
                }),
                hash,
            ));
        }
        if entries.is_empty() {
            return Err("no tokens".into());
        }
        Ok(Self { entries })
    }

    /// The caller of this name (a stored job's owner, when the job is resumed).
    pub fn by_name(&self, name: &str) -> Option<Arc<Caller>> {
        self.entries
            .iter()
            .find(|(c, _)| c.name == name)
            .map(|(c, _)| c.clone())
    }

    /// The caller a bearer token belongs to. Every entry is compared, in constant time, so
    /// the answer's timing tells nothing about which hash came close.
    pub fn authenticate(&self, token: &str) -> Option<Arc<Caller>> {
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for (caller, hash) in &self.entries {
            if bool::from(hash.ct_eq(&presented)) {
                found = Some(caller.clone());
            }
        }
        found
    }
}

/// The token in an `Authorization: Bearer …` header value.
pub fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hangar_shared::imagelist::ListEntry;
    use hangar_shared::reference::ImageRef;

    fn sha(token: &str) -> String {
        hex::encode(Sha256::digest(token.as_bytes()))
    }

    fn tokens() -> Tokens {
        let text = format!(
            r#"
tokens:
  - name: reader
    sha256: {}
    role: read
  - name: ci
    sha256: {}
    role: submit
    policy:
      sources: ["src.io/library/*"]
      destinations: ["dst.io/mirror/**"]
      sign_keys: [release]
  - name: ops
    sha256: {}
    role: admin
"#,
            sha("r-token"),
            sha("ci-token"),
            sha("ops-token")
        );
        Tokens::parse(&text).expect("valid token file")
    }

    fn job(src: &str, dst: &str) -> ImageJob {
        ImageJob::between_registries(
            ListEntry {
                index: 1,
                line_no: 1,
                original: src.into(),
                kind: hangar_shared::imagelist::LineKind::Default(
                    ImageRef::parse(src).expect("ref"),
                ),
            },
            ImageRef::parse(src).expect("ref"),
            ImageRef::parse(dst).expect("ref"),
        )
    }

    #[test]
    fn tokens_map_to_their_callers_and_nothing_else() {
        let t = tokens();
        assert_eq!(
            t.authenticate("ci-token").map(|c| c.name.clone()),
            Some("ci".into())
        );
        assert_eq!(t.authenticate("r-token").map(|c| c.role), Some(Role::Read));
        assert!(t.authenticate("ci-token ").is_none());
        assert!(t.authenticate("").is_none());
        assert!(t.authenticate(&sha("ci-token")).is_none());
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
    }

    #[test]
    fn policy_names_the_rule_it_refuses_by() {
        let t = tokens();
        let ci = t.authenticate("ci-token").expect("ci");
        let args = MirrorArgs::default();
        let ok = job("src.io/library/nginx:1", "dst.io/mirror/library/nginx:1");
        assert!(ci.authorise_job(std::slice::from_ref(&ok), &args).is_ok());
        let out = job("src.io/private/db:1", "dst.io/mirror/private/db:1");
        let e = ci.authorise_job(&[out], &args).expect_err("source outside");
        assert!(
            e.contains("policy.sources") && e.contains("src.io/private/db"),
            "{e}"
        );
        let exfil = job("src.io/library/nginx:1", "evil.io/x/nginx:1");
        let e = ci
            .authorise_job(&[exfil], &args)
            .expect_err("destination outside");
        assert!(e.contains("policy.destinations"), "{e}");
        let signing = MirrorArgs {
            sign_key: Some("other".into()),
            ..MirrorArgs::default()
        };
        let e = ci
            .authorise_job(std::slice::from_ref(&ok), &signing)
            .expect_err("key");
        assert!(e.contains("policy.sign_keys"), "{e}");
        let overwrite = MirrorArgs {
            overwrite: true,
            ..MirrorArgs::default()
        };
        let e = ci
            .authorise_job(std::slice::from_ref(&ok), &overwrite)
            .expect_err("overwrite");
        assert!(e.contains("policy.overwrite"), "{e}");
        let reader = t.authenticate("r-token").expect("reader");
        let e = reader
            .authorise_job(std::slice::from_ref(&ok), &args)
            .expect_err("read role");
        assert!(e.contains("needs role submit"), "{e}");
        let ops = t.authenticate("ops-token").expect("ops");
        assert!(ops.authorise_job(&[ok], &overwrite).is_ok());
    }

    #[test]
    fn only_the_owner_or_an_admin_cancels() {
        let t = tokens();
        let ci = t.authenticate("ci-token").expect("ci");
        assert!(ci.may_cancel(Some("ci")).is_ok());
        assert!(ci.may_cancel(Some("other")).is_err());
        assert!(
            t.authenticate("r-token")
                .expect("r")
                .may_cancel(Some("reader"))
                .is_err()
        );
        assert!(
            t.authenticate("ops-token")
                .expect("ops")
                .may_cancel(Some("ci"))
                .is_ok()
        );
    }

    #[test]
    fn a_bad_token_file_is_refused_with_the_entry() {
        let e = Tokens::parse("tokens:\n  - {name: a, sha256: xyz, role: read}\n").unwrap_err();
        assert!(e.contains("token 1") && e.contains("64 hex"), "{e}");
        let e = Tokens::parse(&format!(
            "tokens:\n  - {{name: a, sha256: {}, role: root}}\n",
            sha("x")
        ))
        .unwrap_err();
        assert!(e.contains("root"), "{e}");
        let e = Tokens::parse(&format!(
            "tokens:\n  - {{name: a, sha256: {s}, role: read}}\n  - {{name: a, sha256: {s}, role: read}}\n",
            s = sha("x")
        ))
        .unwrap_err();
        assert!(e.contains("unique"), "{e}");
        assert!(Tokens::parse("tokens: []").is_err());
    }
}
