//! Single-registry commands: `inspect`, `list-tags`, `delete`, `merge-manifest`, `login`,
//! `logout`.

use std::path::PathBuf;

use clap::Args;

use super::{RegistryArgs, VerifyingRegistryArgs};

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Image reference (`docker://` is assumed when no transport is given).
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
}
