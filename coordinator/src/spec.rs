//! The job specification: what `POST /jobs` takes, what a schedule file names and what
//! `--server` sends. It is its own versioned type, apart from the command-line structs, so
//! a renamed flag never changes the API: the CLI builds a `JobSpec` from its flags, and
//! the coordinator runs a `JobSpec`. Unknown fields are refused, naming the field.
//!
//! ```json
//! {"version": 1, "kind": "mirror", "list": "nginx:1.25\nredis:7\n",
//!  "source": {"registry": "docker.io"},
//!  "destination": {"registry": "harbor.local:5000", "project": "mirror"},
//!  "options": {"arch": ["amd64"], "jobs": 10, "sign_key": "release"}}
//! ```

use serde::{Deserialize, Serialize};

use crate::cli::{ArchiveListArgs, ListArgs, LoadArgs, MirrorArgs, PlatformArgs};

/// The only version this coordinator reads.
pub const VERSION: u32 = 1;

/// What a job does. Every kind has a name in the specification; `serve` runs the kinds
/// its fleet backend supports (see [`JobSpec::check`]) and refuses the others by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobKind {
    Mirror,
    MirrorValidate,
    Save,
    SaveValidate,
    Sync,
    SyncValidate,
    Load,
    LoadValidate,
    Sign,
    SignValidate,
    Scan,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Mirror => "mirror",
            JobKind::MirrorValidate => "mirror-validate",
            JobKind::Save => "save",
            JobKind::SaveValidate => "save-validate",
            JobKind::Sync => "sync",
            JobKind::SyncValidate => "sync-validate",
            JobKind::Load => "load",
            JobKind::LoadValidate => "load-validate",
            JobKind::Sign => "sign",
            JobKind::SignValidate => "sign-validate",
            JobKind::Scan => "scan",
        }
    }
}

/// Where images come from or go to. A registry, with the project that replaces each
/// line's (Hangar's `--source-project` / `--destination-project`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// An archive (save, sync: the destination; load: the source): `s3://bucket/key.zip?…`
    /// or a path, inside the coordinator's `--archive-root`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<String>,
}

/// How the job runs. Everything has Hangar's default when left out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Options {
    /// Architectures to select (Hangar: amd64, arm64).
    pub arch: Vec<String>,
    /// Operating systems to select (Hangar: linux).
    pub os: Vec<String>,
    /// Images resolved at once, 1 to 20.
    pub jobs: i64,
    /// Bound on one image's planning and one transfer attempt, e.g. "10m".
    pub timeout: String,
    /// Copy buildx provenance attestations too.
    pub provenance: bool,
    /// Replace the destination index instead of merging into it.
    pub overwrite: bool,
    /// Leave cosign signatures and attestations behind.
    pub remove_signatures: bool,
    /// Blob and manifest transfers at once (default two per image; one for save and sync).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transfers: Option<usize>,
    /// Sign every image as it lands (mirror), or sign the list's images (sign), with the
    /// workers' key of this name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sign_key: Option<String>,
    /// The public key (PEM) a sign-validate job verifies with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// sign-validate: accept only signatures naming this repository.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exact_repository: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        let platforms = PlatformArgs::default();
        Self {
            arch: platforms.arch,
            os: platforms.os,
            jobs: 1,
            timeout: "10m".into(),
            provenance: true,
            overwrite: false,
            remove_signatures: false,
            transfers: None,
            sign_key: None,
            public_key: None,
            exact_repository: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Always [`VERSION`]; a document of another version is refused, not guessed at.
    pub version: u32,
    pub kind: JobKind,
    /// The image list's text, in either of Hangar's formats.
    pub list: String,
    #[serde(default)]
    pub source: Endpoint,
    #[serde(default)]
    pub destination: Endpoint,
    #[serde(default)]
    pub options: Options,
}

impl JobSpec {
    /// Reads a specification, with serde's own error (which names an unknown field and
    /// the line and column) on bad input.
    pub fn from_json(bytes: &[u8]) -> Result<Self, String> {
        let spec: JobSpec = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        spec.check()?;
        Ok(spec)
    }

    /// Refuses what this coordinator cannot run: another version, a kind its fleet backend
    /// does not take yet.
    pub fn check(&self) -> Result<(), String> {
        if self.version != VERSION {
            return Err(format!(
                "job specification version {} is not supported (this coordinator reads version {VERSION})",
                self.version
            ));
        }
        match self.kind {
            JobKind::Mirror | JobKind::MirrorValidate | JobKind::Scan => Ok(()),
            JobKind::Sign if self.options.sign_key.is_none() => {
                Err("a sign job names the workers' key: options.sign_key".into())
            }
            JobKind::Sign => Ok(()),
            JobKind::Save | JobKind::Sync | JobKind::SaveValidate | JobKind::SyncValidate
                if self.destination.archive.is_none() =>
            {
                Err(format!(
                    "a {} job names its archive: destination.archive",
                    self.kind.as_str()
                ))
            }
            JobKind::Load | JobKind::LoadValidate if self.source.archive.is_none() => Err(format!(
                "a {} job names its archive: source.archive",
                self.kind.as_str()
            )),
            JobKind::Load | JobKind::LoadValidate if self.destination.registry.is_none() => {
                Err(format!(
                    "a {} job names its registry: destination.registry",
                    self.kind.as_str()
                ))
            }
            JobKind::Save
            | JobKind::Sync
            | JobKind::Load
            | JobKind::SaveValidate
            | JobKind::SyncValidate
            | JobKind::LoadValidate => Ok(()),
            JobKind::SignValidate => match &self.options.public_key {
                None => Err("a sign-validate job needs options.public_key (PEM)".into()),
                Some(pem) => hangar_shared::sign::PublicKey::from_pem(pem, "options.public_key")
                    .map(drop)
                    .map_err(|e| e.message),
            },
        }
    }

    /// A mirror job from the command line's flags and the list's text.
    pub fn mirror(list: String, args: &MirrorArgs) -> Self {
        let some = |s: &str| (!s.trim().is_empty()).then(|| s.trim().to_owned());
        Self {
            version: VERSION,
            kind: JobKind::Mirror,
            list,
            source: Endpoint {
                registry: some(&args.source),
                project: some(&args.source_project),
                archive: None,
            },
            destination: Endpoint {
                registry: some(&args.destination),
                project: some(&args.destination_project),
                archive: None,
            },
            options: Options {
                arch: args.platforms.arch.clone(),
                os: args.platforms.os.clone(),
                jobs: args.jobs,
                timeout: args.timeout.clone(),
                provenance: args.provenance,
                overwrite: args.overwrite,
                remove_signatures: args.remove_signatures,
                transfers: args.transfers,
                sign_key: args.sign_key.clone(),
                ..Options::default()
            },
        }
    }

    /// A save or sync job: the list's images (`-s` is the source registry) into `archive`.
    pub fn into_archive(
        kind: JobKind,
        list: String,
        args: &ArchiveListArgs,
        archive: &str,
    ) -> Self {
        let some = |s: &str| (!s.trim().is_empty()).then(|| s.trim().to_owned());
        Self {
            version: VERSION,
            kind,
            list,
            source: Endpoint {
                registry: some(&args.source),
                ..Endpoint::default()
            },
            destination: Endpoint {
                archive: Some(archive.to_owned()),
                ..Endpoint::default()
            },
            options: Options {
                arch: args.platforms.arch.clone(),
                os: args.platforms.os.clone(),
                jobs: args.jobs,
                timeout: args.timeout.clone(),
                provenance: args.provenance,
                transfers: args.transfers,
                ..Options::default()
            },
        }
    }

    /// A load job: the archive's images (those of `list` when it is not empty) into the
    /// destination registry.
    pub fn load(list: String, args: &LoadArgs) -> Self {
        let some = |s: &str| (!s.trim().is_empty()).then(|| s.trim().to_owned());
        Self {
            version: VERSION,
            kind: JobKind::Load,
            list,
            source: Endpoint {
                registry: some(&args.source_registry),
                archive: args.source.clone(),
                ..Endpoint::default()
            },
            destination: Endpoint {
                registry: args.destination.as_deref().and_then(some),
                project: some(&args.project),
                ..Endpoint::default()
            },
            options: Options {
                arch: args.platforms.arch.clone(),
                os: args.platforms.os.clone(),
                jobs: args.jobs,
                timeout: args.timeout.clone(),
                provenance: args.provenance,
                overwrite: args.overwrite,
                transfers: args.transfers,
                sign_key: args.sign_key.clone(),
                ..Options::default()
            },
        }
    }

    /// A job over a list's images where they are (sign, sign-validate, scan): `--registry`
    /// and `--project` are the source endpoint.
    pub fn images(kind: JobKind, list: String, args: &ListArgs) -> Self {
        let some = |s: &str| (!s.trim().is_empty()).then(|| s.trim().to_owned());
        Self {
            version: VERSION,
            kind,
            list,
            source: Endpoint {
                registry: some(&args.registry),
                project: some(&args.project),
                archive: None,
            },
            destination: Endpoint::default(),
            options: Options {
                arch: args.platforms.arch.clone(),
                os: args.platforms.os.clone(),
                jobs: args.jobs,
                timeout: args.timeout.clone(),
                ..Options::default()
            },
        }
    }

    /// The list flags a job over images where they are runs with.
    pub fn list_args(&self) -> ListArgs {
        let o = &self.options;
        ListArgs {
            file: None,
            platforms: PlatformArgs {
                arch: o.arch.clone(),
                os: o.os.clone(),
            },
            registry: self.source.registry.clone().unwrap_or_default(),
            project: self.source.project.clone().unwrap_or_default(),
            failed: None,
            jobs: o.jobs,
            timeout: o.timeout.clone(),
            access: Default::default(),
            skip_login: false,
            yes: false,
            rate: Default::default(),
            bus: Default::default(),
        }
    }

    /// The flags a mirror job runs with (the server adds its own TLS, credentials, cache).
    pub fn mirror_args(&self) -> MirrorArgs {
        let o = &self.options;
        MirrorArgs {
            platforms: PlatformArgs {
                arch: o.arch.clone(),
                os: o.os.clone(),
            },
            source: self.source.registry.clone().unwrap_or_default(),
            source_project: self.source.project.clone().unwrap_or_default(),
            destination: self.destination.registry.clone().unwrap_or_default(),
            destination_project: self.destination.project.clone().unwrap_or_default(),
            jobs: o.jobs,
            timeout: o.timeout.clone(),
            provenance: o.provenance,
            overwrite: o.overwrite,
            remove_signatures: o.remove_signatures,
            transfers: o.transfers,
            sign_key: o.sign_key.clone(),
            ..MirrorArgs::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_round_trips_through_the_flags() {
        let spec = JobSpec::from_json(
            br#"{"version":1,"kind":"mirror","list":"a/b:1\n",
                 "destination":{"registry":"reg:5000","project":"mirror"},
                 "options":{"arch":["amd64"],"jobs":4,"overwrite":true,"sign_key":"release"}}"#,
        )
        .expect("valid");
        let args = spec.mirror_args();
        assert_eq!(args.destination, "reg:5000");
        assert_eq!(args.destination_project, "mirror");
        assert_eq!(args.platforms.arch, vec!["amd64"]);
        assert_eq!(args.platforms.os, vec!["linux"]);
        assert_eq!((args.jobs, args.overwrite), (4, true));
        assert!(args.provenance, "Hangar's default when left out");
        assert_eq!(JobSpec::mirror(spec.list.clone(), &args), spec);
    }

    #[test]
    fn unknown_fields_other_versions_and_kinds_are_refused_by_name() {
        let e = JobSpec::from_json(br#"{"version":1,"kind":"mirror","list":"","schedule":"x"}"#)
            .unwrap_err();
        assert!(e.contains("unknown field `schedule`"), "{e}");
        let e = JobSpec::from_json(
            br#"{"version":1,"kind":"mirror","list":"","options":{"tls_verify":false}}"#,
        )
        .unwrap_err();
        assert!(e.contains("unknown field `tls_verify`"), "{e}");
        let e = JobSpec::from_json(br#"{"version":2,"kind":"mirror","list":""}"#).unwrap_err();
        assert!(e.contains("version 2 is not supported"), "{e}");
        let e = JobSpec::from_json(br#"{"version":1,"kind":"sign","list":""}"#).unwrap_err();
        assert!(e.contains("options.sign_key"), "{e}");
        let e = JobSpec::from_json(
            br#"{"version":1,"kind":"sign-validate","list":"","options":{"public_key":"x"}}"#,
        )
        .unwrap_err();
        assert!(e.contains("options.public_key"), "{e}");
        let e = JobSpec::from_json(br#"{"version":1,"kind":"save","list":""}"#).unwrap_err();
        assert!(e.contains("destination.archive"), "{e}");
        let e =
            JobSpec::from_json(br#"{"version":1,"kind":"load-validate","list":""}"#).unwrap_err();
        assert!(e.contains("source.archive"), "{e}");
        let e = JobSpec::from_json(br#"{"version":1,"kind":"copy","list":""}"#).unwrap_err();
        assert!(e.contains("unknown variant `copy`"), "{e}");
    }
}
