//! Single-registry commands: `inspect` (and `inspect list`), `list-tags`, `delete`,
//! `merge-manifest`, `login`, `logout`.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::{RegistryArgs, VerifyingRegistryArgs};

#[derive(Args, Debug)]
pub struct InspectArgs {
    #[command(subcommand)]
    pub list: Option<InspectSub>,
    /// Image reference (`docker://` is assumed when no transport is given).
    // Required unless `list` is given; the hidden empty default only lets `inspect list`
    // parse without one (a default never satisfies `required`).
    #[arg(required = true, default_value = "", hide_default_value = true)]
    pub reference: String,
    /// Print the raw manifest as served.
    #[arg(long)]
    pub raw: bool,
    /// Print the raw config blob.
    #[arg(long)]
    pub config: bool,
    /// Architecture to choose from an index (empty: this machine's).
    #[arg(long = "override-arch", default_value = "")]
    pub override_arch: String,
    /// Operating system to choose from an index (empty: linux).
    #[arg(long = "override-os", default_value = "")]
    pub override_os: String,
    /// Architecture variant to choose from an index, e.g. v8 (empty: any).
    #[arg(long = "override-variant", default_value = "")]
    pub override_variant: String,
    #[command(flatten)]
    pub access: VerifyingRegistryArgs,
    /// Bound on the whole command, every request and body included (beyond Hangar), e.g.
    /// 10m, 90s.
    #[arg(long = "timeout", default_value = "10m")]
    pub timeout: String,
}

#[derive(Subcommand, Debug)]
pub enum InspectSub {
    /// Inspect the images of a list: report their platforms and digests.
    List(InspectListArgs),
}

/// `inspect list -f LIST`, Hangar's flags and defaults.
#[derive(Args, Debug)]
pub struct InspectListArgs {
    /// Image list (default format).
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// Report file (default: inspect-report.FORMAT).
    #[arg(short = 'r', long = "report")]
    pub report: Option<PathBuf>,
    /// Report format: txt, json, yaml or csv (anything else: txt).
    #[arg(long = "format", default_value = "txt")]
    pub format: String,
    /// Override the registry of every line.
    #[arg(long = "registry", default_value = "")]
    pub registry: String,
    /// Override the project of every line.
    #[arg(long = "project", default_value = "")]
    pub project: String,
    /// Images inspected at once (1-20).
    #[arg(
        short = 'j',
        long = "jobs",
        default_value_t = 1,
        allow_negative_numbers = true
    )]
    pub jobs: i64,
    /// Bound on one image (0: none), e.g. 10m, 90s.
    #[arg(long = "timeout", default_value = "10m")]
    pub timeout: String,
    /// File that receives the lines that failed.
    #[arg(short = 'o', long = "failed", default_value = "inspect-failed.txt")]
    pub failed: PathBuf,
    #[command(flatten)]
    pub access: VerifyingRegistryArgs,
    /// Overwrite an existing report without asking.
    #[arg(short = 'y', long = "auto-yes")]
    pub yes: bool,
}

#[derive(Args, Debug)]
pub struct RepoArgs {
    /// Repository (`docker://` is assumed when no transport is given).
    pub repository: String,
    #[command(flatten)]
    pub access: VerifyingRegistryArgs,
    /// Bound on the whole command, every request and body included (beyond Hangar), e.g.
    /// 10m, 90s.
    #[arg(long = "timeout", default_value = "10m")]
    pub timeout: String,
}

#[derive(Args, Debug)]
pub struct DeleteArgs {
    /// Image reference (`docker://` is assumed when no transport is given).
    pub reference: String,
    #[command(flatten)]
    pub access: VerifyingRegistryArgs,
    /// Do not ask for confirmation.
    #[arg(short = 'y', long = "auto-yes")]
    pub yes: bool,
    /// Bound on the whole command, every request and body included (beyond Hangar), e.g.
    /// 10m, 90s.
    #[arg(long = "timeout", default_value = "10m")]
    pub timeout: String,
}

#[derive(Args, Debug)]
pub struct MergeManifestArgs {
    /// TARGET SRC1 SRC2 [...]
    #[arg(num_args = 3.., required = true)]
    pub refs: Vec<String>,
    /// Print the index instead of pushing it.
    #[arg(long = "dry-run")]
    pub dry_run: bool,
    #[command(flatten)]
    pub access: VerifyingRegistryArgs,
    /// Bound on the whole command, every request and body included (beyond Hangar), e.g.
    /// 10m, 90s.
    #[arg(long = "timeout", default_value = "10m")]
    pub timeout: String,
}

#[derive(Args, Debug)]
pub struct LoginArgs {
    /// The registry (host[:port]).
    pub registry: String,
    /// User name (asked for on a terminal when left out).
    #[arg(short = 'u', long = "username")]
    pub username: Option<String>,
    /// Password (prefer --password-stdin: arguments are visible to other processes).
    #[arg(short = 'p', long = "password")]
    pub password: Option<String>,
    /// Read the password from stdin (its first line).
    #[arg(long = "password-stdin")]
    pub password_stdin: bool,
    /// Print the stored username for the registry.
    #[arg(long = "get-login")]
    pub get_login: bool,
    /// Say which auth file was written.
    #[arg(short = 'v', long = "verbose")]
    pub verbose: bool,
    /// Bound on the login check, e.g. 30s (0: none).
    #[arg(long = "timeout", default_value = "0")]
    pub timeout: String,
    /// Retries of the login check after a transient failure (a connection error, a 5xx).
    #[arg(long = "retry-times", default_value_t = 3)]
    pub retry_times: u32,
    /// Write the credentials to this Docker-format config file instead of the auth file.
    #[arg(long = "compat-auth-file", conflicts_with = "authfile")]
    pub compat_auth_file: Option<PathBuf>,
    #[command(flatten)]
    pub access: RegistryArgs,
}

#[derive(Args, Debug)]
pub struct LogoutArgs {
    /// The registry whose credentials to remove (or --all).
    pub registry: Option<String>,
    /// Auth file to remove the credentials from (default: the one `login` writes).
    #[arg(long = "authfile")]
    pub authfile: Option<PathBuf>,
    /// Remove every stored credential.
    #[arg(short = 'a', long = "all")]
    pub all: bool,
    /// Remove the credentials from this Docker-format config file instead of the auth file.
    #[arg(long = "compat-auth-file", conflicts_with = "authfile")]
    pub compat_auth_file: Option<PathBuf>,
    /// Taken for Hangar's scripts: logout asks no registry, so TLS does not apply.
    #[arg(long = "tls-verify", num_args = 0..=1, require_equals = true, default_missing_value = "true", hide = true)]
    pub tls_verify: Option<bool>,
    /// Taken for Hangar's scripts: logout asks no registry.
    #[arg(long = "timeout", hide = true)]
    pub timeout: Option<String>,
    /// Taken for Hangar's scripts: logout asks no registry.
    #[arg(long = "retry-times", hide = true)]
    pub retry_times: Option<u32>,
}
